"""Entry point: flags, distributed initialisation, hand-off to mf_jax.

  python main.py --config=configs/default.py --workdir=/tmp/digits
  python main.py --config=configs/imagenet_b2.py --workdir=gs://... --config.train.global_batch_size=512
  python main.py --config=configs/default.py --workdir=/tmp/digits --mode=sample --config.sample.num_steps=2
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (get_config()).", lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics, samples and run records.")
flags.DEFINE_enum("mode", "train", ["train", "sample", "eval"], "What to run.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs "
                    "where JAX cannot detect the cluster itself (e.g. several processes on one host).")
flags.DEFINE_integer("num_processes", None, "Process count, with --coordinator_address.")
flags.DEFINE_integer("process_id", None, "This process's index, with --coordinator_address.")
flags.mark_flags_as_required(["config", "workdir"])
HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")


def init_distributed():
  import jax
  if FLAGS.coordinator_address:
    # CPU processes need gloo for cross-process collectives; the option is ignored by accelerators.
    # (Nothing may touch the backend before initialize(), so it is set unconditionally.)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  else:
    try:  # Detects TPU pods, SLURM and other managed clusters; a no-op failure on one host.
      jax.distributed.initialize()
    except (ValueError, RuntimeError) as e:
      logging.info("Single-process run (%s).", str(e).splitlines()[0][:120])


def _config_file_config(argv):
  """The config that --config names, loaded on its own (for messages about bad overrides)."""
  import importlib.util
  path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if path is None:
    return None
  path, _, arg = path.partition(":")
  spec = importlib.util.spec_from_file_location("_config_for_message", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def parse_flags(argv):
  """absl's parser, except that an unknown --config.section.field is one line naming the section
  and the closest valid names (ml_collections raises a bare KeyError/AttributeError for it)."""
  try:
    return FLAGS(argv)
  except SystemExit as e:  # absl's --help exits 1 after printing the help; asking is no error.
    sys.exit(0 if e.code == 1 and any(a in HELP_FLAGS for a in argv[1:]) else e.code)
  except SyntaxError as e:  # A config file that is not valid Python.
    sys.stderr.write(f"main.py: error: {e.filename}:{e.lineno}: invalid Python in the config file "
                     f"({e.msg}). Fix: correct that line.\n")
    sys.exit(2)
  except (KeyError, AttributeError) as e:
    message = None
    try:
      from mf_jax import config_checks
      config = _config_file_config(argv)
      for arg in argv:
        if config is not None and arg.startswith("--config."):
          message = message or config_checks.unknown_field_message(
              config, arg[len("--config."):].split("=", 1)[0])
    except Exception:  # pylint: disable=broad-except
      pass  # Fall back to ml_collections' own words.
    sys.stderr.write(f"main.py: error: {message or str(e).strip(chr(39))}\n")
    sys.exit(2)
  except flags.Error as e:
    sys.stderr.write(f"main.py: error: {e}\nPass --helpshort to see the flags.\n")
    sys.exit(2)


class _QuietLibraries:
  """Drops INFO records from Orbax's per-save internals, which would bury the training log."""

  def filter(self, record):
    return record.levelno > 20 or "/orbax/" not in record.pathname


def hide_accelerators_from_tensorflow():
  """tf.data must never take accelerator memory from JAX. TensorFlow is optional: only TFDS data
  (CIFAR-10) and the legacy TFRecord converter need it."""
  try:
    import tensorflow as tf
  except ImportError:
    return
  tf.config.set_visible_devices([], "GPU")
  tf.config.set_visible_devices([], "TPU") if tf.config.list_physical_devices("TPU") else None


def main(argv):
  del argv
  logging.get_absl_handler().addFilter(_QuietLibraries())
  hide_accelerators_from_tensorflow()

  init_distributed()
  import jax
  from mf_jax import train
  logging.info("JAX process %d of %d; %d local / %d global devices: %s", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(), jax.devices())
  from mf_jax import checkpointing, config_checks, workdir_lock
  try:  # Bad fields, a mismatched workdir: one line naming the field and the fix, exit status 2.
    config_checks.validate(FLAGS.config, FLAGS.workdir, FLAGS.mode, hand_over=True)
    checkpointing.check_writable(FLAGS.workdir, FLAGS.mode)
  except (ValueError, OSError) as e:
    sys.stderr.write(f"main.py: error: {e}\n")
    sys.exit(2)
  except checkpointing.CheckpointError as e:  # A damaged workdir file (e.g. state_signature.json).
    sys.stderr.write(f"main.py: error: {e}\n")
    sys.exit(3)
  run = {"train": train.train_and_evaluate, "sample": train.sample_to_files,
         "eval": train.evaluate_checkpoint}[FLAGS.mode]
  try:
    run(FLAGS.config, FLAGS.workdir)
  except checkpointing.CheckpointError as e:
    sys.stderr.write(f"main.py: error: {e}\n")
    sys.exit(3)
  except (config_checks.ConfigError, workdir_lock.WorkdirBusy, PermissionError) as e:
    sys.stderr.write(f"main.py: error: {e}\n")  # Found only once the run starts: exit 2 too.
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
