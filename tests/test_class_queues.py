"""Per-class queues: class purity, first-in-first-out eviction, sampling without replacement."""
import jax
import jax.numpy as jnp
import numpy as np

from mf_jax import class_queues


def _push_all(queues, ids, labels, batch):
  """Pushes samples whose value is their id (shape [B, 2]: id and label) in batches of `batch`."""
  push = jax.jit(class_queues.push)
  for s in range(0, len(ids), batch):
    x = np.stack([ids[s:s + batch], labels[s:s + batch]], 1).astype(np.float32)
    queues = push(queues, jnp.asarray(x), jnp.asarray(labels[s:s + batch]))
  return queues


def test_draw_returns_only_requested_class_and_most_recent_samples():
  rng = np.random.default_rng(0)
  num_classes, queue_len = 5, 4
  labels = rng.integers(0, num_classes, 200)
  labels[labels == 3] = 4
  labels[:7] = 3  # Class 3: 7 > queue_len samples, all inside the first push.
  ids = np.arange(len(labels))
  queues = _push_all(class_queues.init(num_classes, queue_len, (2,)), ids, labels, batch=16)

  draw = jax.jit(class_queues.draw, static_argnums=3)
  classes = jnp.arange(num_classes)
  for seed in range(3):
    out = np.asarray(draw(queues, jax.random.key(seed), classes, queue_len))
    for c in range(num_classes):
      assert np.all(out[c, :, 1] == c)
      # The queue keeps exactly the last queue_len pushed samples of the class (FIFO eviction);
      # drawing queue_len of them without replacement gives each once.
      expected = ids[labels == c][-queue_len:]
      np.testing.assert_array_equal(np.sort(out[c, :, 0]), np.sort(expected))
  np.testing.assert_array_equal(np.asarray(queues.count), queue_len)


def test_partial_queue_and_skipped_labels():
  queues = class_queues.init(3, 8, (2,))
  labels = np.array([0, 0, -1, 2, 7, 0])  # -1 and 7 are outside [0, 3): skipped.
  ids = np.arange(len(labels))
  queues = _push_all(queues, ids, labels, batch=6)
  np.testing.assert_array_equal(np.asarray(queues.count), [3, 0, 1])
  assert not bool(class_queues.ready(queues, 1))
  out = np.asarray(jax.jit(class_queues.draw, static_argnums=3)(
      queues, jax.random.key(1), jnp.array([0, 2, 1]), 6))
  # Class 0 holds 3 samples: 6 draws cycle through a random order, each sample exactly twice.
  np.testing.assert_array_equal(np.sort(out[0, :, 0]), [0, 0, 1, 1, 5, 5])
  np.testing.assert_array_equal(out[1, :, 0], 3)
  np.testing.assert_array_equal(out[2], 0)  # Empty class: zeros.


def test_draw_is_uniform_over_stored_samples():
  queues = _push_all(class_queues.init(1, 6, (2,)), np.arange(10), np.zeros(10, int), batch=5)
  keys = jax.random.split(jax.random.key(0, impl="rbg"), 3000)  # rbg: quick to compile on CPU.
  out = jax.jit(jax.vmap(lambda k: class_queues.draw(queues, k, jnp.array([0]), 2)))(keys)
  ids = np.asarray(out[:, 0, :, 0]).astype(int)
  assert np.all(ids[:, 0] != ids[:, 1])  # Without replacement.
  freq = np.bincount(ids.ravel(), minlength=10)[4:] / ids.size
  # Each of the 6 stored samples: 1/6; binomial std over 6000 draws is about 0.005.
  np.testing.assert_allclose(freq, 1 / 6, atol=0.025)


def test_fill_from_class_ordered_latent_shards(tmp_path):
  """One class per shard: the fill reads the sampler's stream from step 0 until every class is full
  (or stops at drifting.fill_max_examples with an error that names it); each queue then holds
  exactly the most recent examples of its class in that stream's order."""
  import pytest
  from configs import drifting_digits
  from input_pipeline import records, sampler
  from mf_jax import sharding as sharding_lib, train
  from mf_jax import train_state as ts

  num_classes, per_class, shape = 6, 10, (4, 4, 2)
  labels = np.repeat(np.arange(num_classes), per_class)  # Class-ordered.
  number = np.arange(len(labels))  # Each sample's value is its example number.
  value = np.broadcast_to(number[:, None, None, None], labels.shape + shape).astype(np.float32)
  arrays = {"mean": value, "flip_mean": value, "std": np.zeros_like(value),
            "flip_std": np.zeros_like(value), "label": labels, "index": np.arange(len(labels))}
  records.write_arrays(str(tmp_path), arrays, shard_size=per_class, num_classes=num_classes)

  config = drifting_digits.get_config()
  config.data.update(name="imagenet_latents", path=str(tmp_path), image_size=4, channels=2,
                     num_classes=num_classes, latent_scale=1.0)
  config.model.mlp_widths = (8,)
  config.drifting.update(classes_per_step=2, num_pos=8, num_neg=2, num_unc=2, queue_len=8,
                         uncond_queue_len=8, fill_max_examples=len(labels))  # One epoch.
  config.train.global_batch_size = 8
  mesh = sharding_lib.make_mesh(1)
  model, opt = ts.build_model(config), ts.make_optimizer(config)
  state, shardings = ts.create_sharded_state(config, model, opt, mesh, jax.random.key(0))
  filled = train.prepare_first_step(config, state, mesh, shardings)
  queues = jax.device_get(filled.aux["queues"])
  assert np.all(queues.count >= config.drifting.num_pos)
  pushed, step = [[] for _ in range(num_classes)], 0  # Independent replay of the fill.
  while min(map(len, pushed)) < config.drifting.num_pos:
    for i in sampler.step_indices(step, num_examples=len(labels), global_batch_size=8,
                                  seed=config.seed):
      pushed[labels[i]].append(i)
    step += 1
  for c in range(num_classes):  # The k-th push of class c sits in slot k mod queue_len.
    seq, queue_len = pushed[c], config.drifting.queue_len
    for k in range(max(0, len(seq) - queue_len), len(seq)):
      np.testing.assert_array_equal(queues.samples[c, k % queue_len], seq[k])
  assert int(filled.aux["uncond_queue"].count[0]) == config.drifting.uncond_queue_len

  config.drifting.fill_max_examples = 16
  state, _ = ts.create_sharded_state(config, model, opt, mesh, jax.random.key(0))
  with pytest.raises(ValueError, match=r"drifting.fill_max_examples=16: after 16 examples"):
    train.prepare_first_step(config, state, mesh, shardings)


def test_uint8_bank_keeps_every_level_and_draws_the_pipelines_pixels():
  """A uint8 bank (drifting.bank_dtype) fed the pixel pipeline's float32 images stores each 8-bit
  level exactly and draws what the float32 bank draws, to within 2^-24 (half a float32 ulp at 1:
  both round v / 127.5 - 1 to float32, in different orders), on the jitted path."""
  from input_pipeline import pixels  # pylint: disable=import-outside-toplevel
  levels = np.arange(256, dtype=np.uint8)
  # Each level as the pixel pipeline makes it (cifar10's formula gives the same floats).
  level_values = pixels.to_batch(levels[:, None, None, None], levels, levels)["x"].ravel()
  np.testing.assert_array_equal(level_values, levels.astype(np.float32) / 127.5 - 1.0)
  rng = np.random.default_rng(0)
  images = rng.permutation(np.tile(levels, 6)).reshape(24, 4, 4, 4)  # Each level 6 times.
  x = jnp.asarray(pixels.to_batch(images, np.zeros(24), np.arange(24))["x"])
  labels = jnp.asarray(rng.integers(0, 3, 24))
  push = jax.jit(class_queues.push)
  banks = {dtype: push(class_queues.init(3, 10, (4, 4, 4), dtype), x, labels)
           for dtype in (jnp.float32, jnp.uint8)}
  assert banks[jnp.uint8].samples.dtype == jnp.uint8
  stored = np.arange(10)[None] < np.asarray(banks[jnp.uint8].count)[:, None]  # [class, slot]
  np.testing.assert_array_equal(  # The bank holds the 8-bit levels themselves.
      np.asarray(banks[jnp.uint8].samples)[stored],
      np.round((np.asarray(banks[jnp.float32].samples)[stored] + 1) * 127.5).astype(np.uint8))
  draw = jax.jit(class_queues.draw, static_argnums=3)
  got, want = (draw(banks[d], jax.random.key(1), jnp.arange(3), 10) for d in (jnp.uint8, jnp.float32))
  assert got.dtype == jnp.float32
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert np.max(np.abs(got - want)) <= 2.0**-24
  assert len(np.unique(want)) > 200  # The draws hold (almost) every level.
  # Decoding is the same on every level, and decodes back to it.
  decoded = np.asarray(jax.jit(class_queues.pixel_values)(jnp.asarray(levels)), np.float64)
  assert np.max(np.abs(decoded - level_values)) <= 2.0**-24
  np.testing.assert_array_equal(
      np.asarray(jax.jit(class_queues.pixel_levels)(jnp.asarray(decoded, jnp.float32))), levels)
