"""FID / Inception Score of image batches, with pluggable feature functions, and its CLI.

Feature function interface: feature_fn(images) -> [N, D] float features, images [N, H, W, C] uint8
in [0, 255] or float. Two are provided:
  - eval.inception.InceptionFeatures(apply_fn, params): 2048-d pool features of the FID Inception
    (it also has .pool_and_logits for the Inception Score);
  - pixel_features: the flattened pixels scaled to [0, 1] (Frechet distance in pixel space, for
    small data sets such as scikit-learn digits where no Inception applies).

Usage:
  python -m eval.fid --samples=SAMPLES.npz --ref=VIRTUAL_imagenet256_labeled.npz \
      [--inception=pt_inception-2015-12-05-6726825d.pth]
  python -m eval.fid --images=DIR_OR_NPZ --write_stats=ref_stats.npz [--inception=...]
  python -m eval.fid --images=tfds:cifar10:train --tfds_data_dir=DIR --write_stats=cifar10_train.npz
SAMPLES is an ADM batch (.npz with arr_0 uint8 [N, H, W, 3]) or a directory of images; --ref is
an .npz with mu/sigma (ADM's reference batch has them) or an images-only .npz / directory whose
statistics are computed on the fly. Prints one JSON object; progress (images, rate, ETA) goes to
stderr. Images must be uint8 NHWC (3 channels for Inception); float images are refused unless
--float_range=0,1 or -1,1 says how to round them to uint8. Shapes, dtypes and the reference's
dimension are checked before the network loads.
"""
import argparse
import json
import os
import sys
import time
import zipfile
from typing import Callable, Dict, Iterator, Optional

import numpy as np

# Re-exported: eval.fid is the one import an evaluator needs.
from eval.stats import (StatsAccumulator, frechet_distance, has_stats,  # noqa: F401
                        inception_score, load_stats, merge_across_processes, save_stats,
                        sharded_moments)

FeatureFn = Callable[[np.ndarray], np.ndarray]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DEFAULT_INCEPTION_PATH = os.environ.get(
    "FID_INCEPTION_WEIGHTS",
    os.path.expanduser("~/.cache/fid/pt_inception-2015-12-05-6726825d.pth"))


def pixel_features(images) -> np.ndarray:
  """[N, ...] images -> [N, prod(...)] float32; uint8 is scaled to [0, 1], floats pass unchanged."""
  images = np.asarray(images)
  x = images.astype(np.float32)
  if images.dtype == np.uint8:
    x = x / 255.0
  return x.reshape(len(x), -1)


def _npz_member(path, archive, key):
  member = key + ".npy"
  if member not in archive.namelist():
    raise ValueError(f"{path!r} has no {key!r} array (it holds "
                     f"{[n[:-4] for n in archive.namelist()]}); ADM batches store images in "
                     "arr_0.")
  return member


def _read_npy_header(f):
  version = np.lib.format.read_magic(f)
  read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                 else np.lib.format.read_array_header_2_0)
  return read_header(f)


def describe_images(path: str, key: str = "arr_0"):
  """(shape, dtype) of the images at `path` (an .npz's header, or a directory's first image)."""
  if os.path.isdir(path):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    files = _image_files(path)
    with Image.open(files[0]) as img:
      return (len(files), img.size[1], img.size[0], 3), np.dtype(np.uint8)  # Read as RGB.
  with zipfile.ZipFile(path) as archive:
    with archive.open(_npz_member(path, archive, key)) as f:
      shape, _, dtype = _read_npy_header(f)
  return tuple(shape), dtype


FLOAT_RANGES = {"0,1": (0.0, 1.0), "-1,1": (-1.0, 1.0)}


def check_image_layout(shape, dtype, features: str, float_range: Optional[str], flag: str) -> None:
  """Raises ValueError unless images of `shape`/`dtype` are what the features need: NHWC, uint8
  (or floats with --float_range), and 3 channels for Inception."""
  if len(shape) != 4:
    raise ValueError(f"--{flag}: images of shape {tuple(shape)}; expected [N, H, W, C].")
  if shape[1] in (1, 3, 4) and shape[3] not in (1, 3, 4):
    raise ValueError(f"--{flag}: images of shape {tuple(shape)} look channels-first (NCHW); "
                     "expected NHWC: store np.transpose(x, (0, 2, 3, 1)).")
  if features == "inception" and shape[3] != 3:
    raise ValueError(f"--{flag}: Inception needs 3-channel RGB images, got {shape[3]} channels "
                     f"(shape {tuple(shape)}); repeat grayscale to 3 channels, drop alpha.")
  if dtype == np.uint8:
    return
  if np.issubdtype(dtype, np.floating):
    if float_range is None:
      raise ValueError(
          f"--{flag}: {dtype} images; FID is defined on uint8 images in [0, 255] (floats in [0, 1] "
          "read as uint8 give a meaningless score). Store uint8, or pass --float_range=0,1 or "
          "--float_range=-1,1 to have them rounded to uint8 here.")
    return
  raise ValueError(f"--{flag}: {dtype} images; expected uint8 in [0, 255] (x.astype(np.uint8)).")


def to_uint8(images: np.ndarray, float_range: Optional[str], flag: str) -> np.ndarray:
  """uint8 images unchanged; floats in `float_range` rounded to uint8 (out-of-range values refused)."""
  if images.dtype == np.uint8 or float_range is None:
    return images
  lo, hi = FLOAT_RANGES[float_range]
  tol = 1e-3 * (hi - lo)
  if images.min() < lo - tol or images.max() > hi + tol:
    raise ValueError(f"--{flag}: float values in [{images.min():.4g}, {images.max():.4g}] lie "
                     f"outside --float_range={float_range}: pick the range the images were saved in.")
  x = (images.astype(np.float64) - lo) * (255.0 / (hi - lo))
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


class Progress:
  """Images done, rate and ETA to stderr, at most every `every_s` seconds (and at the end)."""

  def __init__(self, label: str, total: int, every_s: float = 10.0, stream=None):
    self.label, self.total, self.every_s = label, total, every_s
    self.stream = stream or sys.stderr
    self.done, self.start, self.last = 0, time.time(), time.time()

  def update(self, n: int) -> None:
    self.done += n
    now = time.time()
    if now - self.last >= self.every_s or self.done >= self.total:
      rate = self.done / max(now - self.start, 1e-9)
      eta = int((self.total - self.done) / rate) if rate > 0 else 0
      print(f"[fid] {self.label}: {self.done}/{self.total} images ({100 * self.done // self.total}%), "
            f"{rate:.1f} img/s, ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}",
            file=self.stream, flush=True)
      self.last = now


def checked_batches(path: str, batch_size: int, features: str, float_range: Optional[str],
                    flag: str, progress_every_s: float = 10.0) -> Iterator[np.ndarray]:
  """image_batches(path) validated (layout checked before the first read), as uint8, with progress."""
  shape, dtype = describe_images(path)
  check_image_layout(shape, dtype, features, float_range, flag)
  progress = Progress(f"--{flag}", shape[0], progress_every_s)
  for images in image_batches(path, batch_size):
    images = to_uint8(images, float_range, flag)
    progress.update(len(images))
    yield images


def npz_image_batches(path: str, batch_size: int, key: str = "arr_0") -> Iterator[np.ndarray]:
  """Streams `key` of an .npz in batches of rows without loading the whole array (ADM sample
  batches of 50,000 256x256 images are ~10 GB)."""
  with zipfile.ZipFile(path) as archive:
    with archive.open(_npz_member(path, archive, key)) as f:
      shape, fortran, dtype = _read_npy_header(f)
      if fortran or len(shape) != 4:
        raise ValueError(f"{path!r}:{key} has shape {shape} (fortran={fortran}); expected C-order "
                         "[N, H, W, C] images.")
      row = int(np.prod(shape[1:])) * dtype.itemsize
      for start in range(0, shape[0], batch_size):
        n = min(batch_size, shape[0] - start)
        yield np.frombuffer(f.read(n * row), dtype).reshape((n,) + tuple(shape[1:]))


def _image_files(directory: str):
  files = sorted(f for f in os.listdir(directory) if f.lower().endswith(IMAGE_EXTENSIONS))
  if not files:
    raise ValueError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) in directory {directory!r}.")
  return [os.path.join(directory, f) for f in files]


def directory_image_batches(directory: str, batch_size: int) -> Iterator[np.ndarray]:
  """RGB uint8 batches [n, H, W, 3] of the images in a directory (sorted by name, same size)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  files = _image_files(directory)
  size = None
  for start in range(0, len(files), batch_size):
    batch = []
    for name in files[start:start + batch_size]:
      with Image.open(name) as img:
        array = np.asarray(img.convert("RGB"))
      if size is None:
        size = array.shape
      elif array.shape != size:
        raise ValueError(f"{name}: size {array.shape[:2]} differs from the first image's "
                         f"{size[:2]}; resize or centre-crop the directory to one size first.")
      batch.append(array)
    yield np.stack(batch)


TFDS_PREFIX = "tfds:"
TFDS_SETS = ("cifar10",)


def _parse_tfds(path: str):
  """'tfds:cifar10:train' -> ('cifar10', 'train'); the split defaults to train."""
  name, _, split = path[len(TFDS_PREFIX):].partition(":")
  if name not in TFDS_SETS:
    raise SystemExit(f"--images={path!r}: TFDS data sets supported here are {list(TFDS_SETS)}.")
  return name, split or "train"


def image_batches(path: str, batch_size: int, tfds_data_dir: str = "") -> Iterator[np.ndarray]:
  if path.startswith(TFDS_PREFIX):
    _, split = _parse_tfds(path)
    from input_pipeline import cifar10  # pylint: disable=g-import-not-at-top
    return cifar10.uint8_image_batches(tfds_data_dir, split, batch_size)
  if os.path.isdir(path):
    return directory_image_batches(path, batch_size)
  if os.path.isfile(path) and path.endswith(".npz"):
    return npz_image_batches(path, batch_size)
  raise FileNotFoundError(f"{path!r} is neither a directory of images nor an .npz file.")


def feature_statistics(batches, feature_fn: FeatureFn, logits: bool = False):
  """Streams image batches through feature_fn -> (StatsAccumulator, [N, K] logits or None).

  logits=True needs a feature_fn with .pool_and_logits (InceptionFeatures)."""
  acc, all_logits = None, []
  for images in batches:
    if logits:
      feats, batch_logits = feature_fn.pool_and_logits(images)
      all_logits.append(batch_logits)
    else:
      feats = feature_fn(images)
    feats = np.asarray(feats)
    if acc is None:
      acc = StatsAccumulator(feats.shape[1])
    acc.update(feats)
  if acc is None:
    raise ValueError("No images to compute statistics from.")
  return acc, (np.concatenate(all_logits) if logits else None)


def evaluate(batches, ref_mu, ref_sigma, feature_fn: FeatureFn, splits: int = 10,
             with_inception_score: Optional[bool] = None) -> Dict[str, float]:
  """FID (and IS when the feature_fn gives logits) of a stream of image batches against mu/sigma."""
  if with_inception_score is None:
    with_inception_score = hasattr(feature_fn, "pool_and_logits")
  acc, logits = feature_statistics(batches, feature_fn, logits=with_inception_score)
  result = {"fid": frechet_distance(acc.mean, acc.cov, ref_mu, ref_sigma), "count": acc.count}
  if logits is not None and len(logits) >= splits:
    result["inception_score"], result["inception_score_std"] = inception_score(logits, splits)
  return result


def _make_feature_fn(args) -> FeatureFn:
  if args.features == "pixels":
    return pixel_features
  from eval import inception  # pylint: disable=g-import-not-at-top
  if args.random_inception_weights:
    import jax  # pylint: disable=g-import-not-at-top
    print("WARNING: random Inception weights (--random_inception_weights): the numbers are for "
          "testing the pipeline only, not FID.", file=sys.stderr)
    apply_fn = inception.make_apply_fn(args.preprocess)
    params = inception.random_inception_params(jax.random.key(0))
  else:
    apply_fn, params = inception.load_inception(args.inception, args.inception_sha256 or None,
                                                args.preprocess)
  return inception.InceptionFeatures(apply_fn, params, args.batch_size)


def _feature_name(args) -> str:
  if args.features == "pixels":
    return "pixels"
  return "inception_pool_random" if args.random_inception_weights else "inception_pool"


def _check_input(path: str, flag: str) -> None:
  if not (os.path.isdir(path) or (os.path.isfile(path) and path.endswith(".npz"))):
    raise SystemExit(f"--{flag}={path!r}: not found, or neither an .npz nor a directory of images.")


def main(argv=None) -> Dict[str, float]:
  parser = argparse.ArgumentParser(prog="python -m eval.fid", description=__doc__.split("\n")[0])
  parser.add_argument("--samples", help="images to evaluate: ADM .npz (arr_0) or a directory")
  parser.add_argument("--ref", help="reference: .npz with mu/sigma, or images (.npz / directory)")
  parser.add_argument("--images", help="with --write_stats: images to compute statistics of "
                      "(.npz, directory, or tfds:cifar10[:split] with --tfds_data_dir)")
  parser.add_argument("--tfds_data_dir", default="", help="TFDS data_dir for --images=tfds:...")
  parser.add_argument("--write_stats", help="write mu/sigma of --images to this .npz")
  parser.add_argument("--features", choices=("inception", "pixels"), default="inception")
  parser.add_argument("--inception", default=DEFAULT_INCEPTION_PATH,
                      help="FID Inception weights (pytorch-fid / torch-fidelity .pth)")
  parser.add_argument("--inception_sha256", default="auto",
                      help="sha256 (or prefix) to check; 'auto': the file name's hash; '': skip")
  parser.add_argument("--preprocess", choices=("tf1", "pytorch_fid"), default="tf1")
  parser.add_argument("--random_inception_weights", action="store_true",
                      help="TESTS ONLY: random Inception weights instead of --inception")
  parser.add_argument("--batch_size", type=int, default=100)
  parser.add_argument("--splits", type=int, default=10, help="Inception Score splits")
  parser.add_argument("--float_range", choices=sorted(FLOAT_RANGES), default=None,
                      help="accept float images in this range and round them to uint8 (default: "
                           "refuse floats; FID is defined on uint8 images)")
  parser.add_argument("--progress_every_s", type=float, default=10.0,
                      help="seconds between progress lines (images done, rate, ETA) on stderr")
  args = parser.parse_args(argv)

  # Validate every path before loading the network or reading images.
  if args.write_stats:
    if not args.images:
      parser.error("--write_stats needs --images=DIR_OR_NPZ.")
    if args.images.startswith(TFDS_PREFIX):
      _parse_tfds(args.images)
      if not args.tfds_data_dir:
        parser.error("--images=tfds:... needs --tfds_data_dir=DIR (the prepared TFDS data).")
    else:
      _check_input(args.images, "images")
  else:
    if not (args.samples and args.ref):
      parser.error("give --samples and --ref (or --images with --write_stats).")
    _check_input(args.samples, "samples")
    _check_input(args.ref, "ref")
  if args.features == "inception" and not args.random_inception_weights \
      and not os.path.isfile(args.inception):
    from mf_jax.convert.formats import inception as inception_format  # pylint: disable=g-import-not-at-top
    raise SystemExit(inception_format.missing_weights_message(args.inception))

  name = _feature_name(args)
  ref_is_stats = not args.write_stats and os.path.isfile(args.ref) and has_stats(args.ref)
  if ref_is_stats:
    _check_feature_tag(args.ref, name)
  _check_shapes(args, ref_is_stats)  # Before the network loads or any image is read.

  def batches(flag):
    return checked_batches(getattr(args, flag), args.batch_size, args.features, args.float_range,
                           flag, args.progress_every_s)

  feature_fn = _make_feature_fn(args)
  if args.write_stats:
    if args.images.startswith(TFDS_PREFIX):  # uint8 NHWC RGB by construction (cifar10 reader).
      images = image_batches(args.images, args.batch_size, args.tfds_data_dir)
    else:
      images = batches("images")
    acc, _ = feature_statistics(images, feature_fn)
    save_stats(args.write_stats, acc.mean, acc.cov, acc.count, feature=name,
               preprocess=args.preprocess)
    result = {"wrote": args.write_stats, "count": acc.count, "dim": acc.dim, "feature": name}
  else:
    if ref_is_stats:
      ref_mu, ref_sigma = load_stats(args.ref)
    else:
      ref_acc, _ = feature_statistics(batches("ref"), feature_fn)
      ref_mu, ref_sigma = ref_acc.mean, ref_acc.cov
    result = evaluate(batches("samples"), ref_mu, ref_sigma, feature_fn, args.splits)
    result["feature"] = name
  print(json.dumps(result))
  return result


def _check_shapes(args, ref_is_stats: bool) -> None:
  """Image layout of every input, and the reference's feature dimension; SystemExit if wrong."""
  flags_in = ["images"] if args.write_stats else ["samples"] + ([] if ref_is_stats else ["ref"])
  if args.write_stats and args.images.startswith(TFDS_PREFIX):
    flags_in = []  # The TFDS reader yields uint8 NHWC RGB images.
  dims = {}
  try:
    for flag in flags_in:
      shape, dtype = describe_images(getattr(args, flag))
      check_image_layout(shape, dtype, args.features, args.float_range, flag)
      dims[flag] = 2048 if args.features == "inception" else int(np.prod(shape[1:]))
  except ValueError as e:
    raise SystemExit(str(e)) from e
  if ref_is_stats:
    with np.load(args.ref) as data:
      ref_dim = int(data["mu"].shape[0])
    if ref_dim != dims["samples"]:
      raise SystemExit(f"--ref={args.ref!r} holds {ref_dim}-d statistics but --samples give "
                       f"{dims['samples']}-d {args.features} features: use statistics of the same "
                       "features and image size.")
  elif "ref" in dims and dims["ref"] != dims["samples"]:
    raise SystemExit(f"--ref images give {dims['ref']}-d {args.features} features but --samples "
                     f"give {dims['samples']}-d: resize them to one image size.")


def _check_feature_tag(path: str, name: str) -> None:
  with np.load(path) as data:
    tag = str(data["feature"]) if "feature" in data.files else None
  if tag is not None and tag != name:
    raise SystemExit(f"--ref={path!r} holds statistics of {tag!r} features but the samples use "
                     f"{name!r}; recompute one of them with the same --features.")


if __name__ == "__main__":
  from mf_jax import cli  # pylint: disable=g-import-not-at-top
  with cli.user_errors("eval.fid"):
    main()
