"""Data sets by name. Every training iterator yields host-local numpy batches
{"x": [B, H, W, C], "label": [B] int32, ...}; latent sets add "x_std", "x_flip", "x_flip_std"."""
import jax

DATASETS = ("digits", "imagenet_latents", "imagenet_pixels", "cifar10", "checkerboard")
STEP_KEYS = ("x", "x_std", "x_flip", "x_flip_std", "label")  # What the train step reads.


def check_name(name: str) -> None:
  if name not in DATASETS:
    raise ValueError(f"data.name={name!r}: allowed values are {list(DATASETS)}.")


def train_iterator(config, start_step: int):
  """Host-local batches of config.train.global_batch_size / process_count, resuming at start_step."""
  check_name(config.data.name)
  kw = dict(global_batch_size=config.train.global_batch_size, seed=config.seed, start_step=start_step,
            process_index=jax.process_index(), process_count=jax.process_count())
  if config.data.name in ("digits", "checkerboard"):
    from input_pipeline import digits, in_memory, toy
    load = digits.load if config.data.name == "digits" else toy.load
    return in_memory.batch_iterator(load("train"), **kw)
  # File-backed sets read examples by number in the order of input_pipeline.sampler: the batch
  # of every step is a pure function of (seed, step), so a resumed run - on any process count -
  # reads exactly what the uninterrupted run read (as the in-memory sets do).
  if config.data.name == "imagenet_latents":
    from input_pipeline import latents
    it = latents.make_dataset(config.data.path, flip=config.data.random_flip, **kw)
  elif config.data.name == "imagenet_pixels":
    from input_pipeline import pixels
    it = pixels.make_dataset(config.data.path,
                             random_crop_min_area=config.data.random_crop_min_area, **kw)
  else:
    from input_pipeline import cifar10
    it = cifar10.make_dataset(config.data.path, **kw)
  return ({k: v for k, v in batch.items() if k in STEP_KEYS} for batch in it)


def eval_arrays(config):
  """The held-out split as arrays, for sample quality metrics (digits only for now)."""
  check_name(config.data.name)
  if config.data.name == "digits":
    from input_pipeline import digits
    return digits.load("eval")
  if config.data.name == "checkerboard":
    from input_pipeline import toy
    return toy.load("eval")
  raise NotImplementedError(f"data.name={config.data.name!r} has no in-memory eval split.")
