"""The `optim` config section and the EMA fields (top level), declared once
(mf_jax/config_fields.py); train_state.make_optimizer reads them."""
from mf_jax.config_fields import NON_NEGATIVE, POSITIVE, Field, choice, number, number_tuple

OPTIM = dict(
    name=Field("adamw", choice("adamw", "adam"), "adamw, or adam (no weight decay term)"),
    learning_rate=Field(1e-4, number(0.0, lo_open=True), "1e-4 (MeanFlow ImageNet)"),
    b1=Field(0.9, number(0.0, 1.0, hi_open=True), "0.9"),
    b2=Field(0.95, number(0.0, 1.0, hi_open=True), "0.95"),
    weight_decay=Field(0.0, number(0.0), "0.0"),
    warmup_steps=Field(0, NON_NEGATIVE, "0"),
    # > 0: warmup over this many epochs of data.num_train_examples instead.
    warmup_epochs=Field(0.0, number(0.0), "0.0, or e.g. 200 (CIFAR-10; needs "
                                          "data.num_train_examples)"),
    schedule=Field("constant", choice("constant", "cosine"), "constant"),
    # Global-norm clip; 0 disables. (The clip's state is part of the optimizer state.)
    grad_clip=Field(0.0, number(0.0), "0 (off) or e.g. 2.0", shape=True),
)

# Top-level fields: one EMA copy of the parameters per decay.
EMA = dict(
    ema_decays=Field((0.9999,), number_tuple(0.0, 1.0, hi_open=True), "e.g. (0.9999,)",
                     shape=True),
    # EMA updated every k steps with decay^k (k > 1 saves time on big batches).
    ema_every=Field(1, POSITIVE, "1, or e.g. 16 (decay^16 every 16 steps)"),
)
