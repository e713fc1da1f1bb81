"""The CIFAR-10 recipe's trainer options: EMA every k steps, warmup in epochs, plain Adam, checks."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import cifar10_unet, cifar10_unet_v0, tiny
from mf_jax import config_checks
from mf_jax import train_state as ts


def test_ema_every_k_steps_with_decay_to_the_k():
  decay, k = 0.9, 4
  ema_k = ema_1 = (jnp.zeros(()),)
  rng = np.random.default_rng(0)
  for step in range(1, 13):
    p = jnp.asarray(rng.normal())
    ema_k = ts.update_ema(ema_k, p, (decay,), jnp.asarray(step), every=k)
    if step % k:
      continue
    # Every k-th step: ema <- decay^k ema + (1 - decay^k) p, from the last update's value.
    want = decay ** k * float(ema_1[0]) + (1 - decay ** k) * float(p)
    np.testing.assert_allclose(float(ema_k[0]), want, rtol=1e-6)
    ema_1 = ema_k
  # In between, nothing moves.
  before = ema_k
  after = ts.update_ema(before, jnp.asarray(5.0), (decay,), jnp.asarray(13), every=k)
  assert float(after[0]) == float(before[0])


def test_warmup_in_epochs_and_plain_adam():
  c = cifar10_unet.get_config()
  assert ts.warmup_steps(c) == round(200 * 50_000 / 1024)  # 9766 steps at batch 1024.
  params = {"w": jnp.ones((3,))}
  grads = {"w": jnp.asarray([0.1, -0.2, 0.3])}
  opt = ts.make_optimizer(c)
  state = opt.init(params)
  updates, _ = opt.update(grads, state, params)
  # Step 0 of a linear warmup from 0: no movement; plain Adam otherwise (checked against optax).
  np.testing.assert_array_equal(np.asarray(updates["w"]), 0.0)
  c.optim.update(warmup_epochs=0.0)
  updates, _ = ts.make_optimizer(c).update(grads, ts.make_optimizer(c).init(params), params)
  ref = optax.adam(6e-4, b1=0.9, b2=0.999)
  want, _ = ref.update(grads, ref.init(params), params)
  np.testing.assert_allclose(np.asarray(updates["w"]), np.asarray(want["w"]), rtol=1e-6)


def test_cifar_configs_validate(tmp_path):
  for module in (cifar10_unet, cifar10_unet_v0):
    config = module.get_config()
    with pytest.raises(ValueError, match=r"data\.path"):  # The TFDS data_dir must be given.
      config_checks.validate(config)
    config.data.path = str(tmp_path)
    with pytest.raises(ValueError, match=r"eval\.ref_stats"):  # FID needs training-set statistics.
      config_checks.validate(config)
    config.eval.every_steps = 0
    config_checks.validate(config)
    assert config.data.num_classes == 0 and config.meanflow.num_classes == 0


@pytest.mark.parametrize("change, field", [
    (lambda c: c.data.update(num_classes=10), "data.num_classes"),
    (lambda c: c.optim.update(weight_decay=0.1), "optim.weight_decay"),
    (lambda c: c.data.update(num_train_examples=0), "data.num_train_examples"),
    (lambda c: c.update(ema_every=0), "ema_every"),
    (lambda c: c.augment.update(p=-1.0), "augment.p"),
    (lambda c: c.meanflow.update(time_pairing="v1"), "meanflow.time_pairing"),
])
def test_bad_cifar_settings_name_the_field(change, field):
  config = cifar10_unet.get_config()
  config.eval.every_steps = 0
  change(config)
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    config_checks.validate(config)


def test_augmentation_needs_the_unet():
  config = tiny.get_config()
  config.augment.enabled = True
  with pytest.raises(ValueError, match=r"augment\.enabled"):
    config_checks.validate(config)
