"""A method added from outside the project: registered here, trained and sampled through main.py.

The toy is plain flow matching under its own name (the network sees t only; Euler sampling). No
project file knows it: if the trainer, the step, the checks or the sampler branched on the method,
this run would fail or take MeanFlow's path.
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from mf_jax import generate, objectives, sampling, train_state
from mf_jax.objectives import base


class ToyFlowMatching(base.Objective):
  """v(z_t, t) regressed on e - x; z_t = (1 - t) x + t e with t ~ U[0, 1)."""
  name = "toy_flow_matching"
  grid_steps = (1,)

  def condition_names(self, config):
    return ("t",)

  def make_step_grads(self, config, model, mesh):
    def loss(params, x, labels, key):
      k_t, k_e = jax.random.split(key)
      t = jax.random.uniform(k_t, (x.shape[0],))
      e = jax.random.normal(k_e, x.shape)
      z = (1 - t[:, None, None, None]) * x + t[:, None, None, None] * e
      v = model.apply(params, z, (t,), labels).reshape(x.shape)
      value = jnp.mean(jnp.square(v - (e - x)))
      return value, {"toy_fm_loss": value}

    return base.loss_step_grads(loss)

  def make_sample_fn(self, config, model):
    def sample(params, noise, labels, num_steps, cfg_scale):
      del cfg_scale
      velocity = lambda z, r, t, y: model.apply(params, z, (t,), y).reshape(z.shape)
      return sampling.euler_steps(velocity, noise, labels, num_steps)
    return sample


LAUNCHER = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
from absl import app
import main
from mf_jax import objectives
from test_objective_plugin import ToyFlowMatching
objectives.register(ToyFlowMatching())
app.run(main.main, flags_parser=main.parse_flags)
"""


def run_main(tmp_path, argv):
  """`python main.py ARGV` with the toy registered first: main.py's own path (flags, checks,
  hand-off), in a process of its own as a user's launcher script would run it."""
  tests = os.path.dirname(os.path.abspath(__file__))
  launcher = tmp_path / "launch.py"
  launcher.write_text(LAUNCHER.format(root=os.path.dirname(tests), tests=tests))
  done = subprocess.run([sys.executable, str(launcher)] + argv, capture_output=True, text=True,
                        timeout=600, cwd=os.path.dirname(tests))
  assert done.returncode == 0, done.stderr[-3000:]


def test_a_method_registered_outside_the_project_trains_and_samples_through_main(tmp_path):
  workdir = str(tmp_path / "toy")
  common = ["--config=configs/tiny.py", f"--workdir={workdir}",
            f"--config.method={ToyFlowMatching.name}", "--config.model.name=mlp",
            "--config.model.mlp_widths=(32,)"]
  run_main(tmp_path, common)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = [json.loads(line) for line in f]
  logged = [line for line in lines if "toy_fm_loss" in line]
  assert [line["step"] for line in logged] == [2, 4]  # train.log_every=2, num_steps=4.
  assert all(np.isfinite(line["toy_fm_loss"]) for line in logged)

  run_main(tmp_path, common + ["--mode=sample", "--config.sample.num_steps=3"])
  saved = np.load(os.path.join(workdir, "samples", "step_00000004_3nfe_ema.npz"))
  images, labels = saved["arr_0"], saved["arr_1"]
  assert images.shape == (16, 8, 8, 1) and images.dtype == np.uint8

  # The same images from the toy's own sampler, recomputed here on the checkpoint's EMA copy.
  objectives.register(ToyFlowMatching())
  from configs import tiny  # pylint: disable=import-outside-toplevel
  from mf_jax import train  # pylint: disable=import-outside-toplevel
  config = tiny.get_config()
  config.method, config.model.name, config.model.mlp_widths = ToyFlowMatching.name, "mlp", (32,)
  state, _, _ = train.restore_trained(config, workdir, "sample")
  model = train_state.build_model(config)
  noise, want_labels = generate.sample_inputs(jax.random.fold_in(jax.random.key(
      config.sample.seed), 0), 0, 16, (8, 8, 1), config.data.num_classes)
  velocity = lambda z, r, t, y: model.apply(state.ema_params[0], z, (t,), y).reshape(z.shape)
  x = sampling.euler_steps(velocity, noise, want_labels, 3)
  np.testing.assert_array_equal(labels, np.asarray(want_labels))
  np.testing.assert_array_equal(images, generate.to_uint8(x, config))
