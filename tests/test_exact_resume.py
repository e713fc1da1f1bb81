"""Exact resume on file-backed data: a run stopped by the preemption path (what SIGTERM sets) and
resumed ends bit-identical to an uninterrupted one, on fake ImageNet latents and fake CIFAR-10.
(That the resumed stream is the same on 1, 2 or 4 processes is tested on the sampler, in
tests/test_latent_reader.py; tests/test_processes.py runs the trainer on 2 processes.)"""
import os
import shutil

import jax
import numpy as np
import pytest

from configs import tiny
from input_pipeline import cifar10, records, sampler
from mf_jax import checkpointing, train

N, SHARD = 40, 8  # 40 examples, batch 16: steps straddle epochs.


def leaves(state):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(
      jax.device_get((state.params, state.ema_params, state.opt_state)))]


def preempt_after(monkeypatch, steps):
  """The loop's PreemptionFlag reads as set after `steps` steps, as after a SIGTERM."""
  class Flag(train.PreemptionFlag):
    calls = 0

    def __bool__(self):
      Flag.calls += 1
      return Flag.calls >= steps
  monkeypatch.setattr(train, "PreemptionFlag", Flag)


def small_config(**data):
  config = tiny.get_config()
  config.model.update(name="mlp", mlp_widths=(32,))  # The data path is under test: a fast compile.
  config.data.update(data)
  config.train.update(num_steps=5, checkpoint_every=100, global_batch_size=16)
  return config


def interrupted_resumed_and_straight(config, tmp_path, monkeypatch, between=None):
  with monkeypatch.context() as m:
    preempt_after(m, 2)
    assert int(train.train_and_evaluate(config, str(tmp_path / "a")).step) == 2
  if between:
    between(str(tmp_path / "a"))
  resumed = train.train_and_evaluate(config, str(tmp_path / "a"))
  straight = train.train_and_evaluate(config, str(tmp_path / "b"))
  assert int(resumed.step) == int(straight.step) == 5
  for a, b in zip(leaves(resumed), leaves(straight)):
    np.testing.assert_array_equal(a, b)


def test_latents_resume_bit_identical_and_a_corrupt_record_is_named(tmp_path, monkeypatch):
  rng = np.random.RandomState(0)
  arrays = {f: rng.normal(size=(N, 8, 8, 4)).astype(np.float32) for f in records.LATENT_FIELDS}
  arrays["label"] = rng.randint(0, 10, N)
  data = str(tmp_path / "latents")
  records.write_arrays(data, arrays, shard_size=SHARD, num_classes=10)
  config = small_config(name="imagenet_latents", path=data, image_size=8, channels=4, num_classes=10)

  def corrupt_then_repair(workdir):
    # A record that step 2 reads is corrupt: the resumed run names it and writes nothing; the
    # checkpoint of step 2 stays, and once the shard is rewritten the run resumes exactly.
    number = int(sampler.step_indices(2, num_examples=N, global_batch_size=16, seed=config.seed)[0])
    m = records.read_manifest(data)
    shard = os.path.join(data, m["shards"][number // SHARD]["file"])
    shutil.copy(shard, tmp_path / "good")
    stride = os.path.getsize(shard) // SHARD
    with open(shard, "r+b") as f:
      f.seek((number % SHARD) * stride + 100)
      f.write(b"\xff\xfe")
    with pytest.raises(ValueError, match=f"{os.path.basename(shard)}.*record {number % SHARD} is "
                                         "corrupt"):
      train.train_and_evaluate(config, workdir)
    ckpt = checkpointing.Checkpointer(workdir, 3)
    assert ckpt.latest_step() == 2
    ckpt.close()
    shutil.copy(tmp_path / "good", shard)
  interrupted_resumed_and_straight(config, tmp_path, monkeypatch, corrupt_then_repair)


def test_cifar10_resume_bit_identical(tmp_path, monkeypatch):
  rng = np.random.RandomState(1)
  split = {"image": rng.randint(0, 256, (N, 8, 8, 3)).astype(np.uint8),
           "label": rng.randint(0, 10, N).astype(np.int32), "index": np.arange(N)}
  monkeypatch.setattr(cifar10, "load_split", lambda data_dir, name: split)  # stands in for TFDS
  config = small_config(name="cifar10", path=str(tmp_path), image_size=8, channels=3, num_classes=0)
  config.meanflow.update(guidance_omega=1.0, guidance_kappa=0.0, class_dropout=0.0)
  interrupted_resumed_and_straight(config, tmp_path, monkeypatch)


def test_train_iterator_on_two_processes_reads_the_halves_of_the_one_process_batches(tmp_path,
                                                                                    monkeypatch):
  """Resuming on 2 processes (or back on 1) feeds the same global batches: the trainer's iterator
  on process i of 2 yields rows [8i, 8i + 8) of what one process reads at each step."""
  import input_pipeline
  rng = np.random.RandomState(2)
  arrays = {f: rng.normal(size=(N, 2, 2, 4)).astype(np.float32) for f in records.LATENT_FIELDS}
  arrays["label"] = rng.randint(0, 10, N)
  records.write_arrays(str(tmp_path), arrays, shard_size=SHARD, num_classes=10)
  config = small_config(name="imagenet_latents", path=str(tmp_path), image_size=2, channels=4,
                        num_classes=10)

  def stream(process_index, process_count, start_step, count=4):
    monkeypatch.setattr(jax, "process_index", lambda: process_index)
    monkeypatch.setattr(jax, "process_count", lambda: process_count)
    it = input_pipeline.train_iterator(config, start_step)
    return [next(it) for _ in range(count)]
  one = stream(0, 1, 3)
  halves = [stream(i, 2, 3) for i in range(2)]
  for step in range(4):
    for key in one[step]:
      np.testing.assert_array_equal(
          one[step][key], np.concatenate([halves[0][step][key], halves[1][step][key]]))


def test_muon_and_half_life_emas_resume_bit_identical(tmp_path, monkeypatch):
  """optim.name="muon" (optax's partitioned Muon/Adam state, checkpointed and restored) and two
  half-life EMA copies (decays that depend on the restored step) resume bit-identically."""
  config = small_config()  # The digits.
  config.optim.name = "muon"
  config.ema_decays, config.ema_half_lives_kimg, config.ema_rampup_ratio = (), (0.02, 0.1), 1.0
  interrupted_resumed_and_straight(config, tmp_path, monkeypatch)
  state = train.train_and_evaluate(config, str(tmp_path / "b"))  # Already at step 5: restores.
  partition = state.opt_state[-1].inner_states
  assert jax.tree_util.tree_leaves(partition["muon"].inner_state[0].mu)  # Muon has 2-D kernels
  assert jax.tree_util.tree_leaves(partition["adam"].inner_state[0].mu)  # and Adam the biases.
  first, second = (np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(e)])
                   for e in jax.device_get(state.ema_params))
  assert not np.array_equal(first, second)  # Two different decays were applied.
  config.sample.ema_name = "0.1kimg"  # --mode=sample names the copy it sampled in the file.
  train.sample_to_files(config, str(tmp_path / "b"))
  assert os.path.isfile(tmp_path / "b" / "samples" / "step_00000005_1nfe_ema_0.1kimg.npz")
