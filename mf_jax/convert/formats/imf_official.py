"""The released iMF checkpoints (Lyy-iiis/imeanflow) -> this project's iMF TrainState.

Two releases of the same network (the official models/imfDiT.py) and two tables:
  ORBAX_RULES  the JAX release (iMF-{B,M,L,XL}-2[-full].zip): a flax TrainState {step, params,
               ema_params, opt_state} saved by Flax's legacy checkpoint helper (an Orbax folder
               `checkpoint_<step>`, or a msgpack file); the network is under `net/`, Flax layouts.
  TORCH_RULES  the PyTorch branch's state dict (iMF-*-2.pth, `model.load_state_dict` of its
               iMeanFlow): keys `net.<module>.<param>`, PyTorch layouts (linear [out, in], conv
               OIHW, RMSNorm/Embedding `weight`).
Both map onto mf_jax.models.dit_incontext.InContextDiT as the trainer builds it (v_head=True).

What is converted: the official evaluation samples from the EMA copy (`ema_params`), so the
workdir's parameters and every EMA copy are the release's EMA weights (a .pth holds one copy);
the optimizer state is zero and the step is the release's.

The inference releases hold the inference model: the u path, the shared trunk, and the v head's
final layer, but no v-head blocks (the official eval model builds none; its v is the final layer on
the shared trunk). The trainer's model has them, so they are filled with zeros and the summary
says so: a block with zero residual gates is the identity, so the filled model's u AND v equal
the official inference model's; sampling (u only) is exactly the release's; training on from such
a workdir starts the v blocks from zero. A source with some but not all v blocks is an error.
"""
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mf_jax import ema as ema_lib
from mf_jax import train_state as ts
from mf_jax.convert import engine, readers
from mf_jax.convert import workdir as workdir_lib
from mf_jax.convert.formats import meanflow_official

_BLOCKS = {"shared_blocks": "shared_block", "u_heads": "u_block", "v_heads": "v_block"}
V_BLOCK = "v_block_"


def _block(leaf: str) -> Callable:
  """Target of a block row: our block name, then `leaf` expanded from the match."""
  return lambda m: f"{_BLOCKS[m.group('kind')]}_{m.group('i')}/" + m.expand(leaf)


def _table(torch: bool) -> Tuple[engine.Rule, ...]:
  """One table per release. The names differ only in separators, Sequential indices and leaf
  names (PyTorch `weight` for a Dense kernel, an RMSNorm scale, an embedding table)."""
  s = r"\." if torch else "/"
  mlp = lambda i: rf"mlp{s}{i if torch else f'layers_{i}'}"
  kernel = "weight" if torch else "kernel"
  dense = rf"{s}_flax_linear{s}(?P<leaf>{kernel}|bias)"
  norm = "weight" if torch else "kernel"
  lin, conv = ("linear", "conv") if torch else ("copy", "copy")
  leaf = lambda head: lambda m: head(m) + ("kernel" if m.group("leaf") == kernel else "bias")
  at = lambda template: lambda m: m.expand(template)
  blocks = rf"(?P<kind>shared_blocks|u_heads|v_heads){s if torch else '_'}(?P<i>\d+){s}"
  net = r"net\." if torch else ""
  rows = [
      (rf"x_embedder{s}proj{s}(?P<leaf>{kernel}|bias)", leaf(at("patch_embed/")), conv),
      (rf"(?P<e>h|omega)_embedder{s}{mlp(0)}{dense}", leaf(at(r"\g<e>_embedder/mlp_in/")), lin),
      (rf"(?P<e>h|omega)_embedder{s}{mlp(2)}{dense}", leaf(at(r"\g<e>_embedder/mlp_out/")), lin),
      (rf"cfg_t_start_embedder{s}{mlp(0)}{dense}", leaf(at("t_min_embedder/mlp_in/")), lin),
      (rf"cfg_t_start_embedder{s}{mlp(2)}{dense}", leaf(at("t_min_embedder/mlp_out/")), lin),
      (rf"cfg_t_end_embedder{s}{mlp(0)}{dense}", leaf(at("t_max_embedder/mlp_in/")), lin),
      (rf"cfg_t_end_embedder{s}{mlp(2)}{dense}", leaf(at("t_max_embedder/mlp_out/")), lin),
      (rf"y_embedder{s}embedding_table{s}_flax_embedding{s}"
       + ("weight" if torch else "embedding"), "label_embedder/embedding"),
      (r"(class|omega|t_min|t_max|time)_tokens", r"\1_tokens"),
      (rf"(u|v)_final_layer{s}norm{s}{norm}", r"\1_final_norm/scale"),
      (rf"(?P<h>u|v)_final_layer{s}linear{dense}", leaf(at(r"\g<h>_final/")), lin),
      (rf"{blocks}attn{s}(?P<p>q|k|v|out)_proj{s}_flax_linear{s}{kernel}",
       _block(r"attn/\g<p>/kernel"), lin),
      (rf"{blocks}attn{s}(?P<p>q|k)_norm{s}{norm}", _block(r"attn/\g<p>_norm/scale")),
      (rf"{blocks}norm(?P<n>1|2){s}{norm}", _block(r"norm\g<n>/scale")),
      (rf"{blocks}mlp{s}w1{s}_flax_linear{s}{kernel}", _block("mlp_gate/kernel"), lin),
      (rf"{blocks}mlp{s}w3{s}_flax_linear{s}{kernel}", _block("mlp_up/kernel"), lin),
      (rf"{blocks}mlp{s}w2{s}_flax_linear{s}{kernel}", _block("mlp_down/kernel"), lin),
      (rf"{blocks}(?P<g>attn|mlp)_scale", _block(r"\g<g>_scale")),
  ]
  return engine.rules(*((net + src, *rest) for src, *rest in rows))


# Names below the official `net/` (JAX release); the PyTorch state dict's full keys (`net.`...).
ORBAX_RULES = _table(torch=False)
TORCH_RULES = _table(torch=True)
FIX = ("give the config of the same size (configs/imagenet_imf.py:B/2, M/2, L/2 or XL/2; "
       "data.image_size/channels/num_classes as released)")


def target_params(config) -> Dict[str, object]:
  """{path: ShapeDtypeStruct} of the training model's parameters (with the v head)."""
  return engine.flat(workdir_lib.abstract_state(config).params["params"])


def convert_params(source: Mapping, target: Mapping, table: Sequence[engine.Rule] = ORBAX_RULES,
                   problems: Optional[List[str]] = None, prefix: str = "",
                   absent: Tuple[str, ...] = (V_BLOCK,)
                   ) -> Tuple[Dict[str, np.ndarray], List[str]]:
  """Official network params ({name: array} below `net`) -> ({our path: array}, filled paths).

  A source without any v-head block (an inference release) gets the target paths starting with
  `absent` (iMF: the v-head blocks; pMF, whose inference model also drops the v output layer:
  both) as zeros (listed in the second value); every other missing, misshaped or unmapped key is
  a problem (raised at once with problems=None, else appended).
  """
  raise_here = problems is None
  problems = [] if raise_here else problems
  flat = engine.flat(source)
  has_v_blocks = any((engine.map_name(k, table, target)[1] or "").startswith(V_BLOCK)
                     for k in flat)
  filled = [] if has_v_blocks else sorted(p for p in target if p.startswith(absent))
  want = {p: s for p, s in target.items() if p not in filled}
  out = engine.convert(flat, table, want, problems, prefix=prefix, dtype="target")
  for p in filled:
    out[p] = np.zeros(target[p].shape, target[p].dtype)
  if raise_here:
    engine.report(problems, "the official iMF network does not fit the config", FIX)
  return out, filled


def read_release(path: str) -> Tuple[Dict[str, object], str, int, str]:
  """(network params: below `net` of a JAX release, the whole state dict of a .pth; which copy;
  step; "torch" or "orbax") of a release file or folder."""
  if path.endswith(readers.TORCH_SUFFIXES):
    state = readers.read_torch(readers.require_file(
        path, "an iMF PyTorch state dict", "give the released iMF-*-2.pth"))
    if not isinstance(state, Mapping):
      raise engine.SourceError(path, f"holds a {type(state).__name__}, not a state dict",
                               "give the released iMF-*-2.pth")
    return readers.torch_to_numpy(state, np.float32), "the state dict", 0, "torch"
  official = meanflow_official.read_official(path)
  if not isinstance(official, Mapping) or not ({"params", "ema_params"} & set(official)):
    found = sorted(official)[:8] if isinstance(official, Mapping) else type(official).__name__
    raise engine.SourceError(path, f"has neither params nor ema_params (found {found})",
                             "give the unzipped iMF release folder (its checkpoint_<step>)")
  copy = "ema_params" if "ema_params" in official else "params"
  tree = official[copy]
  if not isinstance(tree, Mapping) or "net" not in tree:
    raise engine.SourceError(path, f"{copy} has no 'net' entry", "give an iMF release checkpoint")
  return dict(tree["net"]), copy, int(np.asarray(official.get("step", 0))), "orbax"


def convert(path: str, config) -> Tuple[ts.TrainState, str]:
  """A release (file or folder) -> (TrainState for `config`, one line on what was filled)."""
  if config.method != "imf" or config.model.name != "dit_incontext":
    raise engine.UserError("--config", f"method={config.method!r}, model.name="
                           f"{config.model.name!r}: the iMF release is an in-context DiT trained "
                           "with method='imf'", "use configs/imagenet_imf.py:B/2 (or M/2, L/2, XL/2)")
  net, copy, step, kind = read_release(path)
  table = TORCH_RULES if kind == "torch" else ORBAX_RULES
  abstract = workdir_lib.abstract_state(config)
  target = engine.flat(abstract.params["params"])
  problems: List[str] = []
  params, filled = convert_params(net, target, table, problems,
                                  prefix="" if kind == "torch" else f"{copy}/net/")
  engine.report(problems, f"the iMF release does not fit model.variant={config.model.variant!r} "
                f"(data {config.data.image_size}x{config.data.image_size}x{config.data.channels}, "
                f"{config.data.num_classes} classes)", FIX)
  tree = {"params": engine.nest(params)}
  state = workdir_lib.fresh_state(config, tree, step, ema_params=tuple(
      tree for _ in range(ema_lib.num_emas(config))), abstract=abstract)
  note = (f"{copy} of the release" + (f"; {len(filled)} v-head block parameters absent "
          "(inference release) filled with zeros: v-head blocks are identities, u and sampling "
          "are the release's" if filled else ""))
  return state, note


def convert_to_workdir(path: str, config, workdir: str) -> Tuple[ts.TrainState, str, str]:
  """(state, note, checkpoint folder)."""
  return workdir_lib.release_to_workdir(path, config, workdir, convert,
                                        "the unzipped iMF release folder or the released .pth")
