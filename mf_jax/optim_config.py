"""The `optim` config section and the EMA fields (top level), declared once
(mf_jax/config_fields.py); train_state.make_optimizer and mf_jax/ema.py read them."""
from mf_jax.config_fields import (NON_NEGATIVE, POSITIVE, Field, choice, number, number_tuple,
                                  text_tuple)

OPTIM = dict(
    # "muon": optax.contrib.muon, Muon on the 2-D parameters and AdamW (b1, b2, nesterov) on the
    # rest, both with weight_decay and the schedule (pMF).
    name=Field("adamw", choice("adamw", "adam", "muon"),
               "adamw, adam (no weight decay term), or muon (Muon on 2-D weights, Adam on the "
               "rest)",
               shape=True),
    learning_rate=Field(1e-4, number(0.0, lo_open=True), "1e-4 (MeanFlow ImageNet)"),
    b1=Field(0.9, number(0.0, 1.0, hi_open=True), "0.9"),  # Adam's (also muon's Adam part).
    b2=Field(0.95, number(0.0, 1.0, hi_open=True), "0.95"),
    # name="muon" only: Muon's own (Nesterov) momentum on the 2-D parameters.
    muon_beta=Field(0.95, number(0.0, 1.0, hi_open=True), "0.95 (optax's and pMF's)"),
    # name="muon" only: 2-D parameters whose path ("params/class_tokens": keys joined by "/")
    # matches one of these regular expressions (re.search) go to Adam too; () = every 2-D one to
    # Muon (optax's rule).
    muon_exclude=Field((), text_tuple, "() or regular expressions of parameter paths, e.g. "
                                       "('_tokens$', 'embedding$')", shape=True),
    weight_decay=Field(0.0, number(0.0), "0.0"),
    warmup_steps=Field(0, NON_NEGATIVE, "0"),
    # > 0: warmup over this many epochs of data.num_train_examples instead.
    warmup_epochs=Field(0.0, number(0.0), "0.0, or e.g. 200 (CIFAR-10; needs "
                                          "data.num_train_examples)"),
    schedule=Field("constant", choice("constant", "cosine"), "constant"),
    # Global-norm clip; 0 disables. (The clip's state is part of the optimizer state.)
    grad_clip=Field(0.0, number(0.0), "0 (off) or e.g. 2.0", shape=True),
)

# Top-level fields: one EMA copy of the parameters per decay, or per half-life (mf_jax/ema.py).
EMA = dict(
    ema_decays=Field((0.9999,), number_tuple(0.0, 1.0, hi_open=True),
                     "e.g. (0.9999,), or () with ema_half_lives_kimg", shape=True),
    # EMA updated every k steps with decay^k (k > 1 saves time on big batches).
    ema_every=Field(1, POSITIVE, "1, or e.g. 16 (decay^16 every 16 steps)"),
    # Non-empty: one copy per EDM half-life in thousands of images instead of ema_decays (which
    # must then be ()), decaying by 0.5 ** (global batch / min(K * 1000, step * batch * ratio)).
    ema_half_lives_kimg=Field((), number_tuple(0.0, lo_open=True),
                              "() (use ema_decays), or e.g. (500, 1000, 2000) (pMF)", shape=True),
    ema_rampup_ratio=Field(0.05, number(0.0, lo_open=True), "0.05 (EDM, pMF)"),
)
