r"""Encode ImageNet with the SD-VAE into sharded latent records (format: `input_pipeline.records`).

  python -m input_pipeline.prepare_imagenet --src=/data/imagenet/train --out=/data/latents/train \
      --vae=/models/sd-vae-ft-mse [--vae_sha256=...] [--image_size=256] [--shard_size=1024]
  python -m input_pipeline.prepare_imagenet --tfds_data_dir=/data/tfds --tfds_manual_dir=/data/raw \
      --split=train --out=... --vae=...
  python -m input_pipeline.prepare_imagenet --out=/data/latents/train --verify
  python -m input_pipeline.prepare_imagenet --pixels --src=/data/imagenet/train --out=/data/pixels/train
  python -m input_pipeline.prepare_imagenet --pixels --config=configs/imagenet_pmf.py:B/32 \
      --src=/data/imagenet/train --out=/data/pixels512/train     # 512 x 512 from the config

Sources: an image-folder tree (one folder per class holding JPEG/PNG files; class index = sorted
folder order; examples in sorted (class, file) order), or TFDS `imagenet2012` prepared from a local
manual dir (never downloaded). Preprocessing is ADM's center crop (CROP_RULE). Each record holds the
posterior mean and std of the image and of its horizontal flip, the label and the example index;
the manifest also stores the per-channel mean and std of the posterior samples over the split
(`latents.latent_statistics`: data.latent_mean / data.latent_std of per-channel normalisation);
with --pixels (pixel-space models, no VAE) it holds the uint8 centre crop itself, label and index.

Encoding is batched and data-parallel over all local devices (jit + NamedSharding over a 1-D mesh;
the last batch is padded). A shard is written under a temp name and renamed when complete, so a
rerun skips finished shards and resumes; manifest.json is written when every shard exists.
A rerun trusts a finished shard of the right size; --repair also re-hashes each one and rewrites
those whose sha256 changed since writing (what --verify reports).
Several hosts may share one --out with --num_tasks/--task_index (task k writes shards k, k+n, ...);
whichever run finds every shard finished writes the manifest.
"""
import argparse
import collections
import dataclasses
import functools
import hashlib
import importlib.util
import io
import json
import os
import sys
import time
from concurrent import futures
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from PIL import Image

from input_pipeline import latents, records
from mf_jax.models import vae
from mf_jax.convert.formats import sd_vae as vae_convert

CROP_RULE = ("ADM center crop: while min side >= 2*size halve with BOX; BICUBIC resize so the "
             "min side == size; center crop size x size")
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


def center_crop_adm(image: Image.Image, size: int) -> np.ndarray:
  """PIL image -> uint8 [size, size, 3] by CROP_RULE."""
  image = image.convert("RGB")
  while min(image.size) >= 2 * size:
    image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
  scale = size / min(image.size)
  image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
  arr = np.asarray(image)
  top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
  return arr[top:top + size, left:left + size]


def decode_and_crop(name: str, data, size: int) -> np.ndarray:
  """Image file path or encoded bytes -> uint8 [size, size, 3]; errors name the image."""
  try:
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
      return center_crop_adm(im, size)
  except OSError as e:
    raise ValueError(f"Cannot decode image {name}: {e}") from e


@dataclasses.dataclass
class Source:
  """Examples in a fixed order. `items(a, b)` yields cheap (name, path or encoded bytes, label)
  for examples a..b-1; decoding happens in worker threads."""
  count: int
  num_classes: int
  description: dict  # goes into the manifest; also guards resumption against a changed source
  items: Callable[[int, int], Iterator[Tuple[str, object, int]]]
  classes: Optional[List[str]] = None


def folder_source(src: str) -> Source:
  if not os.path.isdir(src):
    raise FileNotFoundError(f"--src={src!r} is not a directory: pass an image-folder split "
                            "(one sub-folder per class holding the JPEGs), e.g. .../imagenet/train.")
  classes = sorted(d for d in os.listdir(src) if os.path.isdir(os.path.join(src, d)))
  files, labels = [], []
  for label, c in enumerate(classes):
    names = sorted(n for n in os.listdir(os.path.join(src, c))
                   if n.lower().endswith(IMAGE_EXTENSIONS))
    files += [os.path.join(src, c, n) for n in names]
    labels += [label] * len(names)
  if not files:
    raise ValueError(f"--src={src!r} is an empty split: {len(classes)} class folders and no "
                     f"{'/'.join(IMAGE_EXTENSIONS)} files under them.")
  listing = hashlib.sha256("\n".join(os.path.relpath(f, src) for f in files).encode()).hexdigest()

  def items(a, b):
    return ((repr(files[i]), files[i], labels[i]) for i in range(a, b))
  return Source(len(files), len(classes), {"kind": "image_folder", "path": os.path.abspath(src),
                                           "listing_sha256": listing}, items, classes)


def tfds_source(data_dir: str, manual_dir: Optional[str], split: str) -> Source:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder("imagenet2012", data_dir=data_dir)
  if not builder.is_prepared():
    if not manual_dir or not os.path.isdir(manual_dir):
      raise FileNotFoundError(
          f"TFDS imagenet2012 is not prepared in --tfds_data_dir={data_dir!r} and "
          f"--tfds_manual_dir={manual_dir!r} is not a directory: place ILSVRC2012_img_train.tar and "
          "ILSVRC2012_img_val.tar there (nothing is downloaded).")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir, download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
  if split not in builder.info.splits or not builder.info.splits[split].num_examples:
    raise ValueError(f"TFDS imagenet2012 in {data_dir!r} has no examples in split {split!r}.")

  def items(a, b):
    ds = builder.as_dataset(split=f"{split}[{a}:{b}]", shuffle_files=False,
                            decoders={"image": tfds.decode.SkipDecoding()})
    for i, ex in enumerate(ds.as_numpy_iterator()):
      yield f"{split}[{a + i}] ({ex.get('file_name', b'').decode()})", ex["image"], int(ex["label"])
  return Source(builder.info.splits[split].num_examples,
                builder.info.features["label"].num_classes,
                {"kind": "tfds", "name": "imagenet2012", "data_dir": os.path.abspath(data_dir),
                 "split": split, "version": str(builder.info.version)}, items)


def _prefetched(pool, fn, iterable, depth: int):
  """pool.map(fn, iterable) in order, with at most `depth` items in flight (bounded memory)."""
  pending = collections.deque()
  for x in iterable:
    pending.append(pool.submit(fn, x))
    if len(pending) >= depth:
      yield pending.popleft().result()
  while pending:
    yield pending.popleft().result()


@functools.lru_cache(maxsize=None)
def _jitted_encode(config: vae.VAEConfig, sharding: NamedSharding):
  """One compiled encoder per (layout, mesh), reused across runs in one process (tests)."""
  def encode(p, images):  # uint8 [B, H, W, 3]
    x = images.astype(jnp.float32) / 127.5 - 1.0
    mean, std = vae.encode_moments(config, p, x)
    flip_mean, flip_std = vae.encode_moments(config, p, x[:, :, ::-1])
    return mean, std, flip_mean, flip_std
  return jax.jit(encode, out_shardings=sharding)


class Encoder:
  """VAE moments of images and their flips, batched and data-parallel over the local devices."""

  def __init__(self, config: vae.VAEConfig, params, batch_size: int):
    devices = np.array(jax.local_devices())
    self.mesh = Mesh(devices, ("data",))
    self.batch_size = -(-batch_size // len(devices)) * len(devices)  # multiple of #devices
    self.data_sharding = NamedSharding(self.mesh, P("data"))
    self.params = jax.device_put(params, NamedSharding(self.mesh, P()))
    self._encode = _jitted_encode(config, self.data_sharding)

  def __call__(self, images: np.ndarray):
    """uint8 [n, H, W, 3], n <= batch_size -> 4 device arrays [batch_size, h, w, c] (padded)."""
    n = images.shape[0]
    if n < self.batch_size:
      images = np.concatenate([images, np.zeros((self.batch_size - n,) + images.shape[1:],
                                                images.dtype)])
    return self._encode(self.params, jax.device_put(images, self.data_sharding))


class PixelCopy:
  """The --pixels stand-in for Encoder: a batch of uint8 crops is stored as it is."""

  def __init__(self, batch_size: int):
    self.batch_size = batch_size

  def __call__(self, images: np.ndarray):
    return (images,)


def _fmt_time(s: float) -> str:
  s = int(s)
  return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def load_model(args):
  if args.vae_random_init_layout:
    # TEST ONLY: random weights give meaningless latents; the manifest marks them as such.
    config = vae.LAYOUTS[args.vae_random_init_layout]
    params = vae.random_params(config, args.vae_random_init_seed)
    return config, params, {"TEST_ONLY_random_weights": True,
                            "random_init_layout": args.vae_random_init_layout,
                            "random_init_seed": args.vae_random_init_seed, "sha256": None}
  if not args.vae:
    raise ValueError("--vae is required: a local diffusers AutoencoderKL folder or weights file "
                     "(e.g. stabilityai/sd-vae-ft-mse downloaded beforehand).")
  config, params, digest = vae_convert.load_vae(args.vae, expected_sha256=args.vae_sha256)
  return config, params, {"path": os.path.abspath(args.vae), "sha256": digest}


def prepare(args) -> Optional[dict]:
  """Runs (or resumes) one preparation; returns the manifest, or None while shards are missing."""
  if args.image_size <= 0 or args.shard_size <= 0 or args.batch_size <= 0:
    raise ValueError("--image_size, --shard_size and --batch_size must be positive.")
  if not 0 <= args.task_index < args.num_tasks:
    raise ValueError(f"--task_index={args.task_index} must lie in [0, --num_tasks={args.num_tasks}).")
  if args.src:
    source = folder_source(args.src)
  elif args.tfds_data_dir:
    source = tfds_source(args.tfds_data_dir, args.tfds_manual_dir, args.split)
  else:
    raise ValueError("Pass --src (image-folder split) or --tfds_data_dir (TFDS imagenet2012).")
  if args.limit:
    source.count = min(source.count, args.limit)
  if args.pixels:
    if args.vae or args.vae_random_init_layout:
      raise ValueError("--pixels stores the images themselves: drop --vae / --vae_random_init_layout.")
    layout = records.RecordLayout((args.image_size, args.image_size, 3), records.PIXEL_DTYPE,
                                  records.PIXEL_FIELDS)
    model_settings = {}
  else:
    config, params, vae_info = load_model(args)
    if args.image_size % config.downsample_factor:
      raise ValueError(f"--image_size={args.image_size} must be a multiple of the VAE downsampling "
                       f"factor {config.downsample_factor}.")
    lat = args.image_size // config.downsample_factor
    layout = records.RecordLayout((lat, lat, config.latent_channels), args.dtype)
    model_settings = {"vae": {**vae_info, "layout": dataclasses.asdict(config)}}
  num_shards = -(-source.count // args.shard_size)
  settings = {"source": source.description, "count": source.count,
              "num_classes": source.num_classes, "image_size": args.image_size,
              "crop": CROP_RULE, "shard_size": args.shard_size, "split": args.split,
              **model_settings, **layout.to_json()}
  settings = json.loads(json.dumps(settings))  # tuples -> lists, as they compare after reloading
  os.makedirs(args.out, exist_ok=True)
  settings_path = os.path.join(args.out, "prepare_settings.json")
  if os.path.exists(settings_path):
    with open(settings_path) as f:
      old = json.load(f)
    diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
    if diff:
      raise ValueError(f"--out={args.out!r} holds a run with different settings ({diff}); resume "
                       "with the same flags, or use a new --out.")
  else:
    records.atomic_write_json(settings_path, settings)

  encoder = PixelCopy(args.batch_size) if args.pixels else Encoder(config, params, args.batch_size)
  paths = [os.path.join(args.out, records.shard_name(args.split, i, num_shards))
           for i in range(num_shards)]
  mine = range(args.task_index, num_shards, args.num_tasks)
  if args.repair:  # Re-hash finished shards: a same-size corruption passes the size check below.
    damaged = [i for i in mine if records.finished_shard(paths[i]) is not None
               and not records.shard_intact(paths[i])]
    for i in damaged:
      records.discard_shard(paths[i])
    print(f"[prepare] --repair: {len(damaged)} finished shards failed their sha256 and will be "
          f"rewritten{': ' + ', '.join(os.path.basename(paths[i]) for i in damaged) if damaged else ''}",
          flush=True)
  # Several tasks (hosts) may split the work on a shared --out: task k writes shards k, k+n, ...
  todo = [i for i in mine if records.finished_shard(paths[i]) is None]
  print(f"[prepare] {source.count} images -> {num_shards} shards in {args.out}; "
        f"{num_shards - len(todo)} already finished, {len(todo)} to write; "
        f"{len(jax.local_devices())} devices, batch {encoder.batch_size}", flush=True)
  images_todo = sum(min(args.shard_size, source.count - i * args.shard_size) for i in todo)
  done_images, t_start, t_log = 0, time.time(), 0.0
  pool = futures.ThreadPoolExecutor(args.num_workers)
  if args.max_shards is not None:
    todo = todo[:args.max_shards]

  def stream():  # cheap items of every shard to write, in order
    for i in todo:
      yield from source.items(i * args.shard_size, min((i + 1) * args.shard_size, source.count))
  # Decoding runs ahead across shard boundaries, bounded to a few batches.
  loaded = _prefetched(pool, lambda item: (decode_and_crop(item[0], item[1], args.image_size),
                                           item[2]), stream(), 4 * encoder.batch_size)

  for written, i in enumerate(todo):
    start, end = i * args.shard_size, min((i + 1) * args.shard_size, source.count)
    payloads, pending = [], None
    for b0 in range(start, end + encoder.batch_size, encoder.batch_size):
      # Encode batch k while the previous batch's results are copied back and serialised.
      current = None
      if b0 < end:
        items = [next(loaded) for _ in range(min(encoder.batch_size, end - b0))]
        imgs = np.stack([im for im, _ in items])
        current = (b0, np.array([lab for _, lab in items], np.int64), encoder(imgs))
      if pending is not None:
        p0, labels, outs = pending
        n = len(labels)
        arrays = dict(zip(layout.arrays, (np.asarray(o)[:n] for o in outs)))
        payloads += layout.encode(**arrays, label=labels, index=np.arange(p0, p0 + n))
        done_images += n
      pending = current
      now = time.time()
      if now - t_log > args.log_every_s and done_images:
        rate = done_images / (now - t_start)
        print(f"[prepare] shard {written + 1}/{len(todo)}: {done_images}/{images_todo} images, "
              f"{rate:.1f} img/s, ETA {_fmt_time((images_todo - done_images) / rate)}", flush=True)
        t_log = now
    records.write_shard(paths[i], payloads, start)
  pool.shutdown()
  unfinished = [p for p in paths if records.finished_shard(p) is None]
  if unfinished:  # --max_shards, or other tasks still working
    print(f"[prepare] wrote {len(todo)} shards; {len(unfinished)} of {num_shards} not finished yet "
          "(--max_shards or other tasks): rerun to resume; the run that finds every shard done "
          "writes the manifest.", flush=True)
    return None

  shards = [records.finished_shard(p) for p in paths]
  manifest = {"format": layout.format, **settings, "classes": source.classes, "shards": shards}
  if not args.pixels:
    manifest["scale_factor_not_applied"] = vae.SCALE_FACTOR
    # One more read of every shard (also those other tasks wrote): the statistics of the whole split.
    stats = latents.compute_latent_statistics(
        {**manifest, "dir": os.path.abspath(args.out), "layout": layout})
    manifest["latent_statistics"] = stats
  records.atomic_write_json(os.path.join(args.out, records.MANIFEST), manifest)
  print(f"[prepare] done: {source.count} images, {num_shards} shards, "
        f"{_fmt_time(time.time() - t_start)}", flush=True)
  if not args.pixels:
    print("[prepare] per-channel latent statistics (posterior samples); for per-channel "
          "normalisation pass --config.data.latent_mean='(" + ", ".join(map(repr, stats["mean"]))
          + ")' --config.data.latent_std='(" + ", ".join(map(repr, stats["std"])) + ")'",
          flush=True)
  return manifest


def parse_args(argv: Sequence[str]):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--src", help="image-folder split: one sub-folder per class")
  p.add_argument("--tfds_data_dir", help="TFDS data_dir holding (or to prepare) imagenet2012")
  p.add_argument("--tfds_manual_dir", help="folder with the ImageNet tars for TFDS")
  p.add_argument("--split", default="train", help="split name (TFDS split; shard file prefix)")
  p.add_argument("--out", required=True, help="output directory of shards and manifest.json")
  p.add_argument("--pixels", action="store_true",
                 help="store the uint8 centre crops (pixel-space models) instead of VAE latents")
  p.add_argument("--vae", help="local diffusers AutoencoderKL folder or weights file")
  p.add_argument("--vae_sha256", help="expected sha256 of the VAE weights file")
  p.add_argument("--vae_random_init_layout", choices=sorted(vae.LAYOUTS),
                 help="TEST ONLY: random VAE weights of this layout instead of --vae")
  p.add_argument("--vae_random_init_seed", type=int, default=0, help="TEST ONLY")
  p.add_argument("--image_size", type=int, default=None,
                 help="crop side (default 256, or --config's data.image_size)")
  p.add_argument("--config", default="",
                 help="a training config (FILE.py or FILE.py:ARG, as main.py takes it): the crop "
                      "side is its data.image_size, and pixel configs need --pixels")
  p.add_argument("--batch_size", type=int, default=64, help="images per encode call (all devices)")
  p.add_argument("--shard_size", type=int, default=1024, help="records per shard")
  p.add_argument("--dtype", default="float32", choices=records.DTYPES,
                 help="stored moment dtype (latents; pixels are uint8)")
  p.add_argument("--num_workers", type=int, default=8, help="image decoding threads")
  p.add_argument("--limit", type=int, default=0, help="only the first N examples (smoke runs)")
  p.add_argument("--max_shards", type=int, default=None,
                 help="stop after writing this many shards (to split a long run; rerun resumes)")
  p.add_argument("--num_tasks", type=int, default=1, help="hosts sharing this --out")
  p.add_argument("--task_index", type=int, default=0, help="this host's task, in [0, num_tasks)")
  p.add_argument("--log_every_s", type=float, default=10.0)
  p.add_argument("--verify", action="store_true",
                 help="only re-read every shard in --out against its manifest")
  p.add_argument("--repair", action="store_true",
                 help="re-hash finished shards and rewrite those that fail (what --verify flags); "
                      "give the original flags too")
  return p.parse_args(argv)


def apply_config(args) -> None:
  """--config sets --image_size to the config's data.image_size (e.g. 512 for
  configs/imagenet_pmf.py:B/32) and checks --pixels against its data set."""
  if not args.config:
    args.image_size = 256 if args.image_size is None else args.image_size
    return
  path, _, arg = args.config.partition(":")
  if not os.path.isfile(path):
    raise ValueError(f"--config={args.config!r}: {path} is not a file. Fix: give a config file "
                     "such as configs/imagenet_pmf.py:B/32.")
  spec = importlib.util.spec_from_file_location("_prepare_imagenet_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  data = (module.get_config(arg) if arg else module.get_config()).data
  if args.image_size is not None and args.image_size != data.image_size:
    raise ValueError(f"--image_size={args.image_size} but --config={args.config!r} trains at "
                     f"data.image_size={data.image_size}. Fix: drop --image_size.")
  pixels = data.name == "imagenet_pixels"
  if pixels != args.pixels:
    raise ValueError(f"--config={args.config!r} reads data.name={data.name!r}. Fix: "
                     + ("add --pixels." if pixels else "drop --pixels (it encodes latents)."))
  args.image_size = data.image_size


def main(argv: Sequence[str]) -> int:
  args = parse_args(argv)
  apply_config(args)
  if args.verify:  # The manifest of --out itself (records.verify reads a missing folder's parent).
    print(json.dumps(records.verify(os.path.join(args.out, records.MANIFEST))))
    return 0
  prepare(args)
  return 0


if __name__ == "__main__":
  from mf_jax import cli  # pylint: disable=g-import-not-at-top
  with cli.user_errors("prepare_imagenet"):
    sys.exit(main(sys.argv[1:]))
