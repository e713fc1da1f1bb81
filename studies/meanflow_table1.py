"""MeanFlow's Table 1 ablations (1a-1f) re-run on scikit-learn's digits, 3 seeds per arm.

  nice -n 5 python -m studies.run --study=studies/meanflow_table1.py --workdir=/tmp/study_table1

Scale: the paper trains DiT-B/4 for 80 epochs on ImageNet 256 latents and reports FID-50K at 1-NFE.
Here every arm is the class-conditional MeanFlow loss of configs/default.py on 8x8 digits, with the
network of docs/measurements.md (a 4x512 SiLU MLP that sees the two times through sinusoidal
features), 1000 steps of batch 128, and the Frechet distance in pixel space of 1000 samples against
the 297 held-out digits at 1 and 2 NFE. 66 runs took 58 min wall on the shared 2-core CPU
machine with 3-5 runners started on the same workdir (docs/studies/meanflow_table1.md). The
baseline - ratio 25%, tangent (v, 0, 1), conditioning (t, t - r), logit-normal(-0.4, 1.0), p = 1,
omega = 1 - is one arm shown in every table. Paper numbers are those docs/meanflow.md lists
(FID-50K, 1-NFE, B/4); arms it gives no number for are left blank.
"""
from studies.spec import Row, Study, Table

# configs/default.py with the 4x512 MLP of docs/measurements.md, 1000 steps (studies/methods.py
# starts from the same runs).
DIGITS_MLP = {
    "model.name": "mlp",
    "model.mlp_widths": (512, 512, 512, 512),
    "train.global_batch_size": 128,
    "train.num_steps": 1000,
    "train.checkpoint_every": 500,
    "train.log_every": 250,
    "train.sample_every": 0,
    "optim.warmup_steps": 100,
    "eval.every_steps": 1000,
}

BASE = {}  # The baseline arm: the config itself.


def _ratio(ratio):
  return {"meanflow.r_neq_t_ratio": ratio}


def _logit_normal(mu, sigma):
  return {"meanflow.time_sampler": "logit_normal", "meanflow.time_mu": mu, "meanflow.time_sigma": sigma}


def get_study() -> Study:
  tables = [
      Table("1a", "ratio of r != t", [
          Row("0% (flow matching)", _ratio(0.0), 328.91),
          Row("25%", _ratio(0.25), 61.06),
          Row("50%", _ratio(0.5)),
          Row("100%", _ratio(1.0), 67.32),
      ]),
      Table("1b", "jvp tangent (z, r, t)", [
          Row("(v, 0, 1)", {"meanflow.jvp_tangent": "v,0,1"}, 61.06),
          Row("(v, 0, 0)", {"meanflow.jvp_tangent": "v,0,0"}, 268.06),
          Row("(v, 1, 0)", {"meanflow.jvp_tangent": "v,1,0"}, 329.22),
          Row("(v, 1, 1)", {"meanflow.jvp_tangent": "v,1,1"}, 137.96),
      ]),
      Table("1c", "time conditioning", [
          Row("(t, t - r)", {"meanflow.time_conditioning": "t,t-r"}, 61.06),
          Row("(r, t)", {"meanflow.time_conditioning": "r,t"}),
          Row("(t, r)", {"meanflow.time_conditioning": "t,r"}),
          Row("t - r only", {"meanflow.time_conditioning": "t-r"}, 63.13),
      ]),
      Table("1d", "time sampler", [
          Row("uniform(0, 1)", {"meanflow.time_sampler": "uniform"}, 65.90),
          Row("lognorm(-0.2, 1.0)", _logit_normal(-0.2, 1.0)),
          Row("lognorm(-0.2, 1.2)", _logit_normal(-0.2, 1.2)),
          Row("lognorm(-0.4, 1.0)", _logit_normal(-0.4, 1.0), 61.06),
          Row("lognorm(-0.4, 1.2)", _logit_normal(-0.4, 1.2)),
      ]),
      Table("1e", "adaptive weight power p", [
          Row("p = 0 (L2)", {"meanflow.adaptive_p": 0.0}, 79.75),
          Row("p = 0.5", {"meanflow.adaptive_p": 0.5}, 63.98),
          Row("p = 1.0", {"meanflow.adaptive_p": 1.0}, 61.06),
          Row("p = 1.5", {"meanflow.adaptive_p": 1.5}),
          Row("p = 2.0", {"meanflow.adaptive_p": 2.0}),
      ]),
      Table("1f", "guidance omega in the target (kappa = 0)", [
          Row("omega = 1.0", {"meanflow.guidance_omega": 1.0}, 61.06),
          Row("omega = 1.5", {"meanflow.guidance_omega": 1.5}),
          Row("omega = 2.0", {"meanflow.guidance_omega": 2.0}, 20.15),
          Row("omega = 3.0", {"meanflow.guidance_omega": 3.0}, 15.53),
          Row("omega = 5.0", {"meanflow.guidance_omega": 5.0}, 20.75),
      ]),
  ]
  return Study(
      name="meanflow_table1",
      description=__doc__,
      config="configs/default.py",
      overrides=DIGITS_MLP,
      tables=tables,
      seeds=(0, 1, 2),
      metrics=("fd_pixels_1nfe", "fd_pixels_2nfe"),
      headline="fd_pixels_1nfe",
      paper_metric="FID-50K at 1-NFE, DiT-B/4, ImageNet 256, 80 epochs (docs/meanflow.md)",
      lower_is_better=True,
  )
