"""One CLI for every foreign checkpoint format (tables in mf_jax/convert/formats/).

  python -m mf_jax.convert SOURCE --src=PATH (--workdir=DIR | --out=FILE) [--config=CONFIG]

SOURCE          --src                                       writes       --config
meanflow_official  official MeanFlow JAX checkpoint_<step>, --workdir    same DiT (configs/imagenet_b4.py)
                   its folder, or an Orbax folder
py_meanflow_unet   py-meanflow CIFAR-10 .pth (--network)     --workdir    configs/cifar10_unet.py
imf_official       iMF release: unzipped JAX folder          --workdir    configs/imagenet_imf.py:B/2
                   (checkpoint_<step>) or PyTorch .pth                    (M/2, L/2, XL/2)
pmf_official       pMF release: unzipped JAX folder          --workdir    configs/imagenet_pmf.py:
                   (checkpoint_<step>, 3 EMAs) or PyTorch .pt             B/16 (L/16, B/32, L/32)
drifting_generator Drifting release artifact folder         --workdir    same generator
drifting_mae       Drifting release MAE artifact folder     --workdir    a config with that mae section
convnext           Hugging Face ConvNeXt-V2 folder/file     --out .npz   its drifting.convnext_* sizes
sd_vae             diffusers AutoencoderKL folder/file      --out .safetensors (float32, no torch needed)
inception          FID Inception .pth (pytorch-fid)         --out .npz (no torch needed to read)
lpips_vgg16        torchvision VGG16 .pth, plus --lin=      --out .npz (LPIPS for pMF)
                   the lpips package's weights/v0.1/vgg.pth

A workdir gets one Orbax checkpoint of this project's TrainState (then `main.py --mode=eval` or
`--mode=sample` on it, or resume training). Every problem of a source (unmapped names, misshaped
tensors, missing parameters) is listed at once; user errors print one
`python -m mf_jax.convert: error: <file or flag>: problem. Fix: ...` (plus the problem list) and
exit 2. `--config.x=y` overrides config fields as in main.py.
"""
import dataclasses
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from mf_jax.convert import engine

PROG = "python -m mf_jax.convert"


@dataclasses.dataclass(frozen=True)
class Source:
  output: str  # "workdir" or "out"
  needs_config: bool
  run: Callable  # (src, config, output path, parsed flags) -> a one-line summary


def _meanflow_official(src, config, out, fv):
  from mf_jax.convert.formats import meanflow_official  # pylint: disable=g-import-not-at-top
  from mf_jax.convert import workdir  # pylint: disable=g-import-not-at-top
  state, directory = meanflow_official.convert_to_workdir(src, config, out)
  return (f"official checkpoint {src} (step {int(state.step)}, "
          f"{workdir.parameter_count(state.params)} parameters) -> {directory}")


def _release(format_name: str, label: str) -> Callable:
  """The CLI step of a release format whose convert_to_workdir returns (state, note, folder)."""
  def run(src, config, out, fv):
    import importlib  # pylint: disable=g-import-not-at-top
    from mf_jax.convert import workdir  # pylint: disable=g-import-not-at-top
    fmt = importlib.import_module(f"mf_jax.convert.formats.{format_name}")
    state, note, directory = fmt.convert_to_workdir(src, config, out)
    return (f"{label} {src} (step {int(state.step)}, {workdir.parameter_count(state.params)} "
            f"parameters; {note}) -> {directory}")
  return run


def _py_meanflow_unet(src, config, out, fv):
  from mf_jax.convert.formats import py_meanflow_unet  # pylint: disable=g-import-not-at-top
  directory = py_meanflow_unet.convert(src, out, config, fv.network)
  return f"{fv.network} of {src} -> {directory} (step 0)"


def _drifting(kind):
  def run(src, config, out, fv):
    from mf_jax.convert import workdir  # pylint: disable=g-import-not-at-top
    if kind == "generator":
      from mf_jax.convert.formats import drifting_generator as fmt  # pylint: disable=g-import-not-at-top
      state, directory = fmt.convert_to_workdir(src, config, out)
    else:
      from mf_jax.convert.formats import drifting_mae as fmt  # pylint: disable=g-import-not-at-top
      state, directory = fmt.convert_encoder_to_workdir(src, config, out)
    return (f"Drifting {kind} {src} (step {int(state.step)}, "
            f"{workdir.parameter_count(state.params)} parameters) -> {directory}")
  return run


def _convnext(src, config, out, fv):
  from mf_jax.convert.formats import convnext  # pylint: disable=g-import-not-at-top
  from mf_jax.convert import workdir  # pylint: disable=g-import-not-at-top
  variables, path = convnext.convert_convnext_to_file(src, config, out)
  return f"ConvNeXt-V2 {src} ({workdir.parameter_count(variables)} parameters) -> {path}"


def _sd_vae(src, config, out, fv):
  from mf_jax.convert.formats import sd_vae  # pylint: disable=g-import-not-at-top
  layout, path = sd_vae.convert_to_file(src, out)
  return f"VAE {src} (layout {layout}) checked -> {path}"


def _lpips_vgg16(src, config, out, fv):
  from mf_jax.convert.formats import lpips_vgg16  # pylint: disable=g-import-not-at-top
  from mf_jax.convert import workdir  # pylint: disable=g-import-not-at-top
  if not fv.lin:
    raise engine.UserError("--lin", "is required for lpips_vgg16",
                           "give the lpips package's linear weights, lpips/weights/v0.1/vgg.pth")
  variables, path = lpips_vgg16.convert_to_file(src, fv.lin, out)
  return (f"LPIPS VGG16 {src} + {fv.lin} ({workdir.parameter_count(variables)} parameters) "
          f"-> {path}")


def _inception(src, config, out, fv):
  from eval import inception  # pylint: disable=g-import-not-at-top
  from mf_jax.convert.formats import inception as fmt  # pylint: disable=g-import-not-at-top
  return f"FID Inception {src} checked -> " + fmt.pth_to_npz(
      src, out, inception.param_shapes(), fv.sha256 or None)


SOURCES: Dict[str, Source] = {
    "meanflow_official": Source("workdir", True, _meanflow_official),
    "py_meanflow_unet": Source("workdir", True, _py_meanflow_unet),
    "imf_official": Source("workdir", True, _release("imf_official", "iMF release")),
    "pmf_official": Source("workdir", True, _release("pmf_official", "pMF release")),
    "drifting_generator": Source("workdir", True, _drifting("generator")),
    "drifting_mae": Source("workdir", True, _drifting("MAE encoder")),
    "convnext": Source("out", True, _convnext),
    "sd_vae": Source("out", False, _sd_vae),
    "inception": Source("out", False, _inception),
    "lpips_vgg16": Source("out", False, _lpips_vgg16),
}


def _flag_values() -> flags.FlagValues:
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "This project's config of the same model.",
                                  flag_values=fv, lock_config=True)
  flags.DEFINE_string("src", None, "The foreign checkpoint (file or folder).", flag_values=fv)
  flags.DEFINE_string("workdir", None, "Empty workdir to write (checkpoint sources).",
                      flag_values=fv)
  flags.DEFINE_string("out", None, "Weights file to write (convnext, sd_vae, inception, "
                      "lpips_vgg16).", flag_values=fv)
  flags.DEFINE_string("lin", None, "lpips_vgg16: the lpips package's weights/v0.1/vgg.pth.",
                      flag_values=fv)
  flags.DEFINE_enum("network", "net_ema1", ["net", "net_ema", "net_ema1", "net_ema2"],
                    "py_meanflow_unet: which copy (the release evaluates net_ema1).", flag_values=fv)
  flags.DEFINE_string("sha256", "auto", "inception: expected sha256 (prefix); 'auto' takes it "
                      "from a NAME-HEX.pth file name; '' checks nothing.", flag_values=fv)
  return fv


def fail(prog: str, error: engine.UserError) -> None:
  """Prints `prog: error: <subject>: problem. Fix: ...` (then any detail lines); exits 2."""
  # UserError's own form, also for a ConversionError (whose str() leaves the file to the caller).
  print(f"{prog}: error: {engine.UserError.__str__(error)}", file=sys.stderr)
  sys.exit(2)


def run(argv: Sequence[str], prog: str = PROG) -> str:
  """Parses argv (argv[0] the program), converts; returns the summary line. Raises
  engine.UserError or FileNotFoundError / FileExistsError / PermissionError for a user's mistake."""
  fv = _flag_values()
  try:
    rest = fv(list(argv))
  except SyntaxError as e:  # The config file is parsed while the flags are.
    raise engine.UserError(f"--config={e.filename}", f"has a syntax error at line {e.lineno} "
                           f"({e.msg})", "correct the file") from e
  except Exception as e:  # Flag errors (unknown flag, bad value, a --config.x override).
    text = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
    raise engine.UserError("flags", f"a flag or --config.x override was rejected ({text})",
                           f"see {prog} --help and the config's field names") from e
  names = ", ".join(SOURCES)
  if len(rest) != 2 or rest[1] not in SOURCES:
    got = " ".join(rest[1:]) or "nothing"
    raise engine.UserError("SOURCE", f"got {got}; expected one of {names}",
                           f"{PROG} SOURCE --src=... (--workdir=... | --out=...) [--config=...]")
  name, source = rest[1], SOURCES[rest[1]]
  out = fv[source.output].value
  if not fv.src:
    raise engine.UserError("--src", "is required", f"give the {name} checkpoint to convert")
  if not out:
    raise engine.UserError(f"--{source.output}", f"is required for {name}", "give the "
                           f"{'empty workdir' if source.output == 'workdir' else 'file'} to write")
  if source.needs_config and fv.config is None:
    raise engine.UserError("--config", f"is required for {name}", "give this project's config "
                           "of the same model, e.g. --config=configs/imagenet_b4.py")
  if source.needs_config and not isinstance(fv.config, ml_collections.ConfigDict):
    path = fv["config"].config_filename
    if not os.path.isfile(path):
      raise engine.UserError(f"--config={path}", "does not exist",
                             "give an existing config file, e.g. configs/imagenet_b4.py")
    try:  # config_flags defers a file's load error to the first use of the config.
      getattr(fv.config, "method")
    except Exception as e:  # pylint: disable=broad-except
      raise engine.UserError(f"--config={path}", f"cannot be loaded ({e})",
                             "give an existing config file, e.g. configs/imagenet_b4.py") from e
  return source.run(fv.src, fv.config, out, fv)


def main(argv: Optional[Sequence[str]] = None, prog: str = PROG) -> None:
  argv = list(sys.argv if argv is None else argv)
  if any(a in ("--help", "-h", "--helpfull") for a in argv[1:]):
    print(__doc__)
    sys.exit(0)
  src = argv_value(argv, "--src")
  try:
    summary = run(argv, prog)
  except engine.ConversionError as e:
    e.subject = src  # The one file every problem of the list is about.
    fail(prog, e)
  except engine.UserError as e:
    fail(prog, e)
  except (FileNotFoundError, FileExistsError, PermissionError) as e:
    # Raised with a complete sentence by the formats (the Inception and VAE loaders keep these
    # types for their other callers) or by the OS (then with its file name).
    subject = e.filename or src
    problem = e.strerror if e.filename else str(e)
    fail(prog, engine.UserError(subject, problem.rstrip(".")))
  print(f"{prog}: converted {summary}")


def argv_value(argv: Sequence[str], flag: str) -> str:
  for i, a in enumerate(argv):
    if a.startswith(flag + "="):
      return a.split("=", 1)[1]
    if a == flag and i + 1 < len(argv):
      return argv[i + 1]
  return flag


def alias(prog: str, source: str, renames: Dict[str, str], argv: Optional[Sequence[str]] = None,
          defaults: Sequence[str] = ()) -> None:
  """An old entry point: renames its flags (old -> new) and runs `source` under its own name."""
  argv = list(sys.argv if argv is None else argv)
  new: List[str] = [argv[0], source, *defaults]
  for a in argv[1:]:
    head, eq, tail = a.partition("=")
    new.append(renames.get(head, head) + eq + tail)
  main(new, prog)


if __name__ == "__main__":
  main()
