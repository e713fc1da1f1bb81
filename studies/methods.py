"""MeanFlow vs flow matching (one and several Euler steps) vs Drifting on the digits, equal compute.

  nice -n 5 python -m studies.run --study=studies/methods.py --workdir=/tmp/study_methods

Every method trains the same network, the 4x512 SiLU MLP of studies/meanflow_table1.py
(docs/measurements.md), from configs/default.py, and is scored by the pixel Frechet distance of 1000 samples
against the 297 held-out digits.

How compute is equated: by network evaluations per training run, counted in forward-equivalents F
per sample (a backward pass = 2F), the measure of docs/measurements.md's XLA counts:
  * MeanFlow, 25% of rows with r != t: 3.26F per image (forward and backward, plus the jvp's
    tangent pass on a quarter of the batch); 1000 steps x 128 images = 417k F.
  * Flow matching (r = t everywhere, no jvp): 3F per image; 1087 steps x 128 = 417k F.
  * Drifting: 3F per generated sample, 10 classes x 64 generated = 640 per step, and the real
    positives never pass through the network (raw-pixel features); 217 steps x 640 x 3F = 417k F.
    The kernel (640 x 1280 distances per step) is not counted; on 64-d pixels it is small.
Drifting's EMA decay is 0.977 = 0.995^(1000/217): the same horizon, relative to the run, as the
0.995 of the 1000-step runs (its recipe's 0.999 would leave 80% of the initialisation in the EMA
parameters after 217 steps). Flow matching is sampled with Euler steps of its instantaneous velocity u(z, t, t)
(sample.sampler="euler") at 1, 2, 4 and 8 steps; MeanFlow with its own k-step rule at the same
NFEs; the drifting generator is one-step only. The reference column holds the longer runs of
docs/measurements.md (MeanFlow and flow matching 6000 steps x 256 - 50 Euler steps for flow
matching's multi-step figure is not among our columns - and drifting 4000 steps), for scale.
"""
from studies import meanflow_table1
from studies.spec import Row, Study, Table

NFES = (1, 2, 4, 8)


def get_study() -> Study:
  meanflow = {"eval.num_steps": NFES}
  flow_matching = {"meanflow.r_neq_t_ratio": 0.0, "sample.sampler": "euler",
                   "train.num_steps": 1087, "eval.every_steps": 1087, "eval.num_steps": NFES}
  drifting = {  # configs/drifting_digits.py on this study's base, at 217 steps.
      "method": "drifting", "drifting.classes_per_step": 10, "drifting.num_pos": 64,
      "drifting.num_neg": 64, "drifting.num_unc": 0, "drifting.queue_len": 128,
      "optim.warmup_steps": 0, "ema_decays": (0.977,), "train.num_steps": 217,
      "train.checkpoint_every": 100, "eval.every_steps": 217, "eval.num_steps": (1,)}
  return Study(
      name="methods_equal_compute",
      description=__doc__,
      config="configs/default.py",
      overrides=dict(meanflow_table1.DIGITS_MLP, **{"train.log_every": 100}),
      tables=[Table("M", "one network, 417k forward-equivalents of training each", [
          Row("MeanFlow (1000 steps)", meanflow, 0.37, name="meanflow"),
          Row("flow matching, Euler (1087 steps)", flow_matching, 0.66,
              name="flow_matching_euler"),
          Row("Drifting (217 steps)", drifting, 0.058, name="drifting"),
      ])],
      seeds=(0, 1, 2),
      metrics=("fd_pixels_1nfe",),
      extra_metrics=tuple(f"fd_pixels_{k}nfe" for k in NFES[1:]),
      headline="fd_pixels_1nfe",
      paper_metric="docs/measurements.md, 1-NFE pixel FD of longer runs (MeanFlow, one-step "
                   "flow matching: 6000 x 256; drifting: 4000 steps), for scale only",
  )
