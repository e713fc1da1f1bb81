"""The `eval` config section, declared once (mf_jax/config_fields.py); eval/evaluators.py reads
it and checks what involves other sections, the device count or files."""
from mf_jax.config_fields import (NON_NEGATIVE, POSITIVE, Field, boolean, choice, int_tuple,
                                  integer, interval_tuples, number, number_tuple, text)
from mf_jax.generate import LABEL_SAMPLING, UINT8_ROUNDING

FEATURES = ("pixels", "inception")

CONFIG = dict(
    # Sample-quality evaluation every N steps and at the end; 0 disables.
    every_steps=Field(0, NON_NEGATIVE, "0 (off) or a step count"),
    # FID-50K. (A covariance needs two samples.)
    num_samples=Field(50_000, integer(lo=2), "50000 (FID-50K)"),
    # Samples per chunk, split over all devices (a multiple of the device count).
    batch_size=Field(256, POSITIVE, "a multiple of the device count, e.g. 256"),
    # One score per entry (sampling steps = NFE): 1-NFE and 2-NFE sampling.
    num_steps=Field((1, 2), int_tuple(), "e.g. (1, 2)"),
    # Sampling-time guidance; 1.0 = none (MeanFlow trains it into the target).
    cfg_scale=Field(1.0, number(0.0, lo_open=True), "1.0 (none)"),
    # "cycle": N / num_classes per class; "uniform": random (official).
    label_sampling=Field("cycle", choice(*LABEL_SAMPLING), "cycle, or uniform (official)"),
    # "half_even": round(127.5 (x + 1)); "half_up": floor(127.5 x + 128).
    uint8_rounding=Field("half_even", choice(*UINT8_ROUNDING), "half_even, or half_up (official)"),
    # Non-empty: score every listed scale instead of cfg_scale (fd_..._cfg<s>) and report the
    # best as fd_<k>nfe, its scale as best_cfg_<k>nfe (the Drifting release's CFG sweep).
    cfg_scales=Field((), number_tuple(0.0, lo_open=True), "() (use eval.cfg_scale), or e.g. "
                                                          "(1.0, 1.5, 2.0) to report the best"),
    use_ema=Field(True, boolean(), "True"),
    # Which EMA copy (of ema_decays or ema_half_lives_kimg); ema_name, when set, instead.
    ema_index=Field(0, NON_NEGATIVE, "an index into the EMA copies, e.g. 0"),
    ema_name=Field("", text(), "'' (use eval.ema_index) or a copy's name, e.g. '1000kimg' or "
                               "'0.9999'"),
    # "inception" (FID, IS) | "pixels" (Frechet distance of raw pixels).
    features=Field("inception", choice(*FEATURES), "inception or pixels"),
    # FID Inception .pth/.npz; "" = eval.fid's default path; "random": tests.
    inception_path=Field("", text(), "the FID Inception .pth, or '' for the default path"),
    # .npz with mu/sigma; required for inception, optional for pixels (held-out).
    ref_stats=Field("", text(), "an .npz with mu/sigma"),
    seed=Field(2, integer(), "any integer"),
    # Guidance intervals (t_min, t_max) to score, each with every scale (iMF); () = the sampler's
    # own (sample.guidance_interval). The best is reported as with cfg_scales.
    guidance_intervals=Field((), interval_tuples, "() (the sampler's), or e.g. ((0.4, 0.65),)"),
    # --mode=eval and --mode=sample read exactly this checkpoint (-1: the newest) or stop naming
    # it; they never move a checkpoint. The two below allow, explicitly, an older good checkpoint
    # when that one is damaged, and one saved without recorded sha256 (unverified).
    checkpoint_step=Field(-1, integer(lo=-1), "-1 (the newest) or a step in WORKDIR/checkpoints"),
    allow_older_checkpoint=Field(False, boolean(),
                                 "False (stop if that checkpoint is damaged)"),
    allow_unverified_checkpoint=Field(False, boolean(),
                                      "False (refuse checkpoints without sha256)"),
)
