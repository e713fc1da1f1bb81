"""The released pMF checkpoints (Lyy-iiis/pMF) -> this project's pMF TrainState.

Two releases of the official models/pmfDiT.py, mapped onto mf_jax.models.dit_pixel.PixelDiT:
  the JAX release (pMF-{B,L,H}-{16,32}[-full].zip): a flax TrainState saved by Flax's legacy
      checkpoint helper (an Orbax folder `checkpoint_<step>`, or a msgpack file) whose EMA copies
      are a dict by half-life in kimg: `ema_params/{500,1000,2000}/net/...` (keys read back as
      strings); Flax layouts;
  the PyTorch branch's state dict (pMF-*-*.pt, `load_state_dict` of its pixelMeanFlow): keys
      `net.<module>.<param>`, PyTorch layouts, one copy (the file does not say which EMA), and
      the 2-D rotary table as a buffer `net.rope_freqs` (not a parameter: dropped).
The names are iMF's (imf_official's tables, reused) except the bottleneck patch embedding
(`x_embedder/proj1`, `proj2`), the position table `pos_embed` and the label table, which pMF's
JAX code keeps 3-D ([1, classes + 1, w]) and its PyTorch code 2-D.

EMA copies: this project keeps the EMAs as a tuple ordered by `ema_half_lives_kimg` (default
(500, 1000, 2000), the release's); copy i is the release's EMA of half-life K_i, and a half-life
the release lacks is an error. A .pt holds one copy: every EMA copy is that copy (the summary says
so). The workdir's parameters are the EMA copy eval.ema_name (else eval.ema_index) names (the official evaluation
samples from an EMA); the release's online parameters are not used; the optimizer state is zero
and the step is the release's.

Inference releases hold the inference model: no v-head blocks and no v output layer (the
official eval model builds neither and its v image is zero). The trainer's model has them, so
they are filled with zeros (the summary says so): the filled model's u path is the release's and
its v image is zero, as the official eval model's.
"""
from typing import Dict, List, Mapping, Tuple

import numpy as np

from mf_jax import ema as ema_lib
from mf_jax import train_state as ts
from mf_jax.convert import engine, readers
from mf_jax.convert import workdir as workdir_lib
from mf_jax.convert.formats import imf_official, meanflow_official
from mf_jax.errors import ConfigError
from mf_jax.models import dit_pixel
from mf_jax.objectives import pmf as pmf_objective

RELEASE_HALF_LIVES = (500.0, 1000.0, 2000.0)  # kimg; the official configs' ema_val.
ABSENT_IN_INFERENCE = (imf_official.V_BLOCK, "v_final")
FIX = ("give the config of the same size (configs/imagenet_pmf.py:B/16, L/16, B/32, L/32, H/16 "
       "or H/32; data.image_size/channels/num_classes as released)")


def _pmf_rows(torch: bool) -> Tuple[engine.Rule, ...]:
  """The rows whose names differ from iMF's; they come before iMF's table."""
  part = {"1": "reduce", "2": "expand"}
  if torch:
    return engine.rules(
        (r"net\.x_embedder\.proj(?P<n>1|2)\.(?P<leaf>weight|bias)",
         lambda m: f"patch_embed/{part[m.group('n')]}/"
         + ("kernel" if m.group("leaf") == "weight" else "bias"), "conv"),
        (r"net\.pos_embed", "pos_embed"),
        (r"net\.y_embedder\.embedding_table\._flax_embedding\.weight", "label_embedder/embedding",
         "add_batch_axis"),
        (r"net\.rope_freqs", None),  # A buffer: the fixed 2-D rotary table.
    )
  return engine.rules(
      (r"x_embedder/proj(?P<n>1|2)/(?P<leaf>kernel|bias)",
       lambda m: f"patch_embed/{part[m.group('n')]}/{m.group('leaf')}"),
      (r"pos_embed", "pos_embed"),
      (r"y_embedder/embedding_table/embedding", "label_embedder/embedding"),
  )


# Names below the official `net/` (JAX release); the PyTorch state dict's full keys (`net.`...).
ORBAX_RULES = _pmf_rows(torch=False) + imf_official.ORBAX_RULES
TORCH_RULES = _pmf_rows(torch=True) + imf_official.TORCH_RULES


def half_lives(config) -> Tuple[float, ...]:
  """The EMA copies' half-lives in kimg, in the order of the state's ema_params; the release's
  when the config names none (the field absent or empty)."""
  return tuple(float(k) for k in (config.get("ema_half_lives_kimg") or RELEASE_HALF_LIVES))


def model_params(model: dit_pixel.PixelDiT) -> Dict[str, object]:
  """{path: ShapeDtypeStruct} of a PixelDiT's parameters (nothing allocated)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  s = jnp.zeros((1,), jnp.float32)
  x = jnp.zeros((1, model.image_size, model.image_size, model.channels), jnp.float32)
  return engine.abstract_params(lambda: model.init(jax.random.key(0), x, s, s + 1.0, s, s + 1.0,
                                                   jnp.zeros((1,), jnp.int32)))


def target_params(config) -> Dict[str, object]:
  """{path: ShapeDtypeStruct} of the training model's parameters (with the v head)."""
  return model_params(pmf_objective.build_pixel_dit(config))


def _dropped(key: str) -> bool:
  rule, target = engine.map_name(key, TORCH_RULES)
  return rule is not None and target is None


def read_release(path: str) -> Tuple[Dict[float, Mapping], int, str]:
  """({half-life kimg (None for a .pt's one copy): network params below `net` (the whole state
  dict of a .pt)}, step, "torch" or "orbax") of a release file or folder."""
  if path.endswith(readers.TORCH_SUFFIXES):
    state = readers.read_torch(readers.require_file(
        path, "a pMF PyTorch state dict", "give the released pMF-*-*.pt"))
    if not isinstance(state, Mapping):
      raise engine.SourceError(path, f"holds a {type(state).__name__}, not a state dict",
                               "give the released pMF-*-*.pt")
    # Keys the table drops (the complex rotary buffer) are left out before the float32 cast.
    kept = {k: v for k, v in state.items() if not _dropped(k)}
    return {None: readers.torch_to_numpy(kept, np.float32)}, 0, "torch"
  official = meanflow_official.read_official(path)
  emas = official.get("ema_params") if isinstance(official, Mapping) else None
  if not isinstance(emas, Mapping) or not emas:
    found = sorted(official)[:8] if isinstance(official, Mapping) else type(official).__name__
    raise engine.SourceError(path, f"has no ema_params (found {found})",
                             "give the unzipped pMF release folder (its checkpoint_<step>)")
  copies = {}
  for key, tree in emas.items():
    try:
      kimg = float(key)
    except ValueError:
      raise engine.SourceError(path, f"ema_params/{key} is not a half-life in kimg (pMF keeps "
                               "ema_params/<half-life>/net)", "give a pMF release") from None
    if not isinstance(tree, Mapping) or "net" not in tree:
      raise engine.SourceError(path, f"ema_params/{key} has no 'net' entry",
                               "give a pMF release checkpoint")
    copies[kimg] = dict(tree["net"])
  return copies, int(np.asarray(official.get("step", 0))), "orbax"


def convert_copies(copies: Mapping, kind: str, config, target: Mapping
                   ) -> Tuple[Tuple[Dict[str, np.ndarray], ...], str]:
  """The release's copies -> (one flat {our path: array} per EMA copy of `config`, in the order
  of its half-lives; a note on what was filled). Raises ConversionError listing every problem."""
  table = TORCH_RULES if kind == "torch" else ORBAX_RULES
  wanted = half_lives(config)
  problems: List[str] = []
  if kind == "torch":
    sources = [(copies[None], "") for _ in wanted]
  else:
    missing = [k for k in wanted if k not in copies]
    if missing:
      raise engine.UserError("--config.ema_half_lives_kimg", f"{wanted} asks for the EMA of "
                             f"{missing} kimg, which the release lacks (it holds "
                             f"{tuple(sorted(copies))})", "set --config.ema_half_lives_kimg to "
                             "some of the release's half-lives")
    sources = [(copies[k], f"ema_params/{k:g}/net/") for k in wanted]
  out, converted, filled = [], {}, []
  for source, prefix in sources:
    if id(source) not in converted:  # A .pt's one copy is converted once.
      converted[id(source)] = imf_official.convert_params(
          source, target, table, problems, prefix=prefix, absent=ABSENT_IN_INFERENCE)
    params, filled = converted[id(source)]
    out.append(params)
  engine.report(problems, f"the pMF release does not fit model.variant={config.model.variant!r} "
                f"(data {config.data.image_size}x{config.data.image_size}x{config.data.channels}, "
                f"{config.data.num_classes} classes)", FIX)
  note = ("one copy (a .pt) in every EMA copy" if kind == "torch" else
          "EMA copies " + ", ".join(f"{k:g}" for k in wanted) + " kimg of the release")
  if filled:
    note += (f"; {len(filled)} v-head parameters absent (inference release) filled with zeros: "
             "u and sampling are the release's, the v image is zero")
  return tuple(out), note


def convert(path: str, config) -> Tuple[ts.TrainState, str]:
  """A release (file or folder) -> (TrainState for `config`, one line on what was converted)."""
  if config.model.name != "dit_pixel":
    raise engine.UserError("--config", f"model.name={config.model.name!r}: the pMF release is the "
                           "pixel in-context DiT", "use configs/imagenet_pmf.py:B/16 (or L/16, "
                           "B/32, L/32, H/16, H/32)")
  copies, step, kind = read_release(path)
  abstract = workdir_lib.abstract_state(config)
  if len(abstract.ema_params) != len(half_lives(config)):
    raise engine.UserError("--config", f"the state keeps {len(abstract.ema_params)} EMA copies "
                           f"but the release's EMAs are taken by half-life {half_lives(config)}",
                           "set --config.ema_half_lives_kimg=(500.,1000.,2000.) (or some of "
                           "them) and --config.ema_decays=()")
  target = engine.flat(abstract.params["params"])
  flats, note = convert_copies(copies, kind, config, target)
  emas = tuple({"params": engine.nest(f)} for f in flats)
  try:
    index = ema_lib.ema_index(config, "eval")  # The copy --mode=eval evaluates.
  except ConfigError as e:
    raise engine.UserError("--config.eval.ema_name", str(e)) from None
  if not 0 <= index < len(emas):
    raise engine.UserError("--config.eval.ema_index", f"{index} is not an index into the "
                           f"{len(emas)} EMA copies", f"give 0 ... {len(emas) - 1}")
  state = workdir_lib.fresh_state(config, emas[index], step, ema_params=emas, abstract=abstract)
  return state, note + f"; parameters = EMA copy {index}"


def convert_to_workdir(path: str, config, workdir: str) -> Tuple[ts.TrainState, str, str]:
  """(state, note, checkpoint folder)."""
  return workdir_lib.release_to_workdir(path, config, workdir, convert,
                                        "the unzipped pMF release folder or the released .pt")


def from_official(tree: Mapping, v_head: bool = True) -> dict:
  """Nested official network params (below `net`, Flax layouts) -> nested PixelDiT params (numpy
  arrays), by ORBAX_RULES; for golden-file tests (the network's parameters and gradients).

  v_head=False (the inference model) drops the v head's blocks and output layer.
  """
  out = {}
  for name, value in engine.flat(dict(tree)).items():
    rule, ours = engine.map_name(name, ORBAX_RULES)
    if rule is None or ours is None:
      raise ValueError(f"official pMF parameter {name!r} has no counterpart in PixelDiT.")
    if v_head or not ours.startswith(ABSENT_IN_INFERENCE):
      out[ours] = np.asarray(value)
  return engine.nest(out)
