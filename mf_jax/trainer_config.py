"""The trainer's own config fields, declared once (mf_jax/config_fields.py): the run's seed and
method (top level) and the `train`, `sharding` and `sample` sections that mf_jax/train.py reads."""
from mf_jax import objectives
from mf_jax.config_fields import (NON_NEGATIVE, POSITIVE, Field, boolean, choice, integer,
                                  interval_tuple, number, text)



def registered_method(value):
  """config.method names a registered objective (mf_jax/objectives), built in or added."""
  names = objectives.names()
  return None if value in names else f"allowed values are {list(names)}"


TOP = dict(
    seed=Field(0, integer(), "any integer, e.g. 0"),
    method=Field("meanflow", registered_method,
                 "meanflow (default), drifting, mae (drifting's encoder), imf, pmf, or a registered "
                 "method", shape=True),
)

TRAIN = dict(
    global_batch_size=Field(256, POSITIVE, "a multiple of the device count, e.g. 256"),
    # ~240 epochs of ImageNet at batch 256.
    num_steps=Field(1_200_000, POSITIVE, "the step to train to, e.g. 1200000"),
    log_every=Field(100, POSITIVE, "e.g. 100"),
    checkpoint_every=Field(5000, POSITIVE, "e.g. 5000"),
    keep_checkpoints=Field(3, POSITIVE, "e.g. 3"),
    # Sample grids to TensorBoard and WORKDIR/samples/; 0 disables.
    sample_every=Field(10_000, NON_NEGATIVE, "0 (off) or e.g. 10000"),
    # CLU profiler action around a few early steps.
    profile=Field(False, boolean(), "False"),
)

SHARDING = dict(
    # Devices per FSDP group; parameters and optimizer state are sharded over them.
    fsdp=Field(1, POSITIVE, "1 (data parallel) or a divisor of the device count"),
)

# --mode=sample and the sample grids of training.
SAMPLE = dict(
    num_samples=Field(64, POSITIVE, "e.g. 64, or 50000 for FID"),
    num_steps=Field(1, POSITIVE, "1 (1-NFE) or 2"),
    # "meanflow": z <- z - (t - r) u(z, r, t); "euler": flow-matching Euler steps with the
    # instantaneous velocity u(z, t, t) (the r = t baseline). Sample grids and evaluation use it.
    sampler=Field("meanflow", choice("meanflow", "euler"),
                  "meanflow, or euler (flow-matching Euler with u(z, t, t))"),
    batch_size=Field(64, POSITIVE, "a multiple of the device count"),
    use_ema=Field(True, boolean(), "True"),
    ema_index=Field(0, NON_NEGATIVE, "an index into the EMA copies (ema_decays or "
                                     "ema_half_lives_kimg), e.g. 0"),
    # Non-empty: the EMA copy of this name (mf_jax/ema.py ema_names) instead of ema_index.
    ema_name=Field("", text(), "'' (use sample.ema_index) or a copy's name, e.g. '1000kimg' "
                               "or '0.9999'"),
    seed=Field(1, integer(), "any integer"),
    # Sampling-time guidance of --mode=sample; 1.0 = none (MeanFlow trains guidance into its
    # target; for a drifting generator it is the alpha condition).
    cfg_scale=Field(1.0, number(0.0, lo_open=True), "1.0 (none); iMF: omega, e.g. 8.0"),
    # (t_min, t_max): the guidance interval of a method that conditions on one (iMF); () = [0, 1].
    guidance_interval=Field((), interval_tuple, "() ([0, 1]), or e.g. (0.4, 0.65) (iMF B/2)"),
)
