"""A one-minute study: MeanFlow Table 1a's two key arms (0% and 25% r != t) on the digits, one seed.

The same runner and outputs as studies/meanflow_table1.py (README, "Reproducibility studies"),
at a size that shows the workflow in about a minute on a laptop-class CPU: the 4x512 MLP of
studies/meanflow_table1.py for 200 steps, scored by the pixel Frechet distance of 500 samples. At
this budget the numbers say nothing about the methods; the full study does.
"""
from studies import meanflow_table1
from studies.spec import Row, Study, Table

QUICK = dict(meanflow_table1.DIGITS_MLP, **{
    "train.num_steps": 200,
    "train.checkpoint_every": 200,
    "train.log_every": 100,
    "optim.warmup_steps": 20,
    "eval.every_steps": 200,
    "eval.num_samples": 500,
})


def get_study() -> Study:
  return Study(
      name="quick",
      description=__doc__,
      config="configs/default.py",
      overrides=QUICK,
      tables=[Table("1a", "ratio of r != t (200 steps)", [
          Row("0% (flow matching)", {"meanflow.r_neq_t_ratio": 0.0}, 328.91),
          Row("25%", {"meanflow.r_neq_t_ratio": 0.25}, 61.06),
      ])],
      seeds=(0,),
      metrics=("fd_pixels_1nfe", "fd_pixels_2nfe"),
      headline="fd_pixels_1nfe",
      paper_metric="FID-50K at 1-NFE, DiT-B/4, ImageNet 256, 80 epochs (docs/meanflow.md)",
      lower_is_better=True,
  )
