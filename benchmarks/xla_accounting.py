"""XLA's own accounting of a compiled program: FLOPs, bytes per device, collectives, projections.

Pure functions of a `jax.stages.Compiled` (or its HLO text), shared by benchmarks/scale.py and
benchmarks/official_step_flops.py. Figures are per device: with SPMD partitioning every device runs
the same program, so `cost_analysis()` and `memory_analysis()` describe one device's share.
"""
import re

import numpy as np

PEAK_TFLOPS = {"h100_bf16": 989.0, "h100_tf32": 495.0, "v5p_bf16": 459.0}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
               "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
SHAPE_RE = re.compile(r"\b(" + "|".join(DTYPE_BYTES) + r")\[([\d,]*)\]")
INSTR_RE = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)\s([a-z][\w\-]*)\((.*)$")


def cost(compiled) -> dict:
  """cost_analysis() as one dict ({} when the backend gives none)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return cost or {}


def memory_per_device(compiled) -> dict:
  """Bytes per device: arguments, outputs, temporaries, aliased (donated), and the live total."""
  m = compiled.memory_analysis()
  out = {"argument_bytes": m.argument_size_in_bytes, "output_bytes": m.output_size_in_bytes,
         "temp_bytes": m.temp_size_in_bytes, "alias_bytes": m.alias_size_in_bytes,
         "generated_code_bytes": m.generated_code_size_in_bytes}
  # Donated state buffers are reused for the outputs, so aliased bytes count once.
  out["total_bytes"] = (out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"]
                        - out["alias_bytes"])
  return out


_HBM_OVERFLOW = re.compile(r"memory required for HLO temporaries \(([\d.]+)([KMGT])\) exceeds "
                           r"available HBM \(([\d.]+)([KMGT])\)")


def hbm_overflow(error_text: str):
  """{"temporaries_bytes", "hbm_bytes"} from the TPU compiler's RESOURCE_EXHAUSTED message, or None.

  A step that does not fit one chip fails to compile; the message still says how much memory
  its temporaries need, which is the figure the scale table wants.
  """
  m = _HBM_OVERFLOW.search(error_text)
  if m is None:
    return None
  unit = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
  return {"temporaries_bytes": float(m.group(1)) * unit[m.group(2)],
          "hbm_bytes": float(m.group(3)) * unit[m.group(4)]}


def _type_bytes(type_text: str) -> int:
  total = 0
  for dtype, dims in SHAPE_RE.findall(type_text):
    total += DTYPE_BYTES[dtype] * int(np.prod([int(x) for x in dims.split(",") if x], dtype=np.int64))
  return total


def _operand_names(args_text: str):
  """Operand names of an instruction: the %names before the closing parenthesis of its call."""
  depth, end = 1, len(args_text)
  for i, ch in enumerate(args_text):
    depth += {"(": 1, ")": -1}.get(ch, 0)
    if depth == 0:
      end = i
      break
  return re.findall(r"%([\w.\-]+)", args_text[:end])


_COMPUTATION_RE = re.compile(r"^(ENTRY\s+)?%([\w.\-]+)\s*\((.*)\)\s*->\s*.*\{\s*$")
_PARAM_RE = re.compile(r"([\w.\-]+):\s*((?:\([^()]*\))|[a-z]\w*\[[\d,]*\])")
_CALLEE_RE = re.compile(r"\b(?:calls|to_apply|body|condition|true_computation|false_computation)="
                        r"%([\w.\-]+)")
_CALLEE_SET_RE = re.compile(r"\b(?:branch_computations|called_computations)=\{([^}]*)\}")
_TRIP_RE = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def _dims(type_text: str):
  m = SHAPE_RE.search(type_text)
  return [int(x) for x in m.group(2).split(",") if x] if m else []


def _parse_module(hlo_text: str):
  """{computation: {"entry", "types" {name: type text}, "instrs" [(name, type, op, args)]}}."""
  comps, current = {}, None
  for line in hlo_text.splitlines():
    header = _COMPUTATION_RE.match(line)
    if header:
      current = {"entry": bool(header.group(1)), "types": dict(_PARAM_RE.findall(header.group(3))),
                 "instrs": []}
      comps[header.group(2)] = current
      continue
    m = INSTR_RE.match(line)
    if m and current is not None:
      current["types"][m.group(1)] = m.group(2)
      current["instrs"].append(m.groups())
  return comps


def _executions(comps, use_trip_counts: bool = True):
  """How often each computation runs per execution of the module: while bodies and conditions
  times their known trip count (1 when unknown or use_trip_counts is False), callees as often
  as their callers. HLO text defines callees before callers, so callers are visited first in
  reverse order."""
  runs = {name: (1 if c["entry"] else 0) for name, c in comps.items()}
  for name in reversed(list(comps)):
    for _, _, op, args in comps[name]["instrs"]:
      callees = _CALLEE_RE.findall(args)
      for group in _CALLEE_SET_RE.findall(args):
        callees += re.findall(r"%([\w.\-]+)", group)
      trip = _trip_count(comps, args) if op == "while" and use_trip_counts else 1
      for callee in callees:
        if callee in runs:
          runs[callee] += runs[name] * trip
  return runs


def _trip_count(comps, while_args: str) -> int:
  """A while loop's trip count: XLA's known_trip_count annotation (CPU), else a condition
  `i < N` against an integer constant N (the TPU compiler prints no annotation; lax.scan, map and
  fori_loop count i from 0 in steps of 1); 1 when neither is found."""
  known = _TRIP_RE.search(while_args)
  if known:
    return int(known.group(1))
  cond = re.search(r"\bcondition=%([\w.\-]+)", while_args)
  comp = comps.get(cond.group(1)) if cond else None
  if comp is None:
    return 1
  constants = {name: re.match(r"\s*(-?\d+)\)", args) for name, type_text, op, args in
               comp["instrs"] if op == "constant" and re.match(r"[su]32\[\]", type_text)}
  for _, _, op, args in comp["instrs"]:
    if op == "compare" and "direction=LT" in args:
      bound = constants.get((_operand_names(args) + [None, None])[1])
      if bound:
        return int(bound.group(1))
  return 1


def _conv_flops(type_text: str, args: str, types) -> int:
  """XLA's convolution count (HloCostAnalysis): 2 x in features / groups x out features x batch /
  batch groups x the (output, kernel) position pairs that read the input, not its padding."""
  lhs_name, rhs_name = _operand_names(args)[:2]
  lhs, rhs, out = _dims(types.get(lhs_name, "")), _dims(types.get(rhs_name, "")), _dims(type_text)
  labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", args)
  if not (lhs and rhs and out and labels):
    return 0
  lhs_l, rhs_l, out_l = labels.groups()
  group = lambda name: int(re.search(name + r"=(\d+)", args).group(1)) if name in args else 1
  window = re.search(r"window=\{([^}]*)\}", args)
  fields = dict(f.split("=") for f in window.group(1).split()) if window else {}
  per_dim = lambda key, default: ([int(v) for v in fields[key].split("x")] if key in fields
                                  else [default] * len(lhs_l.replace("b", "").replace("f", "")))
  pads = [[int(v) for v in p.split("_")] for p in fields["pad"].split("x")] if "pad" in fields \
      else [[0, 0]] * len(per_dim("size", 1))
  strides, base, dil = per_dim("stride", 1), per_dim("lhs_dilate", 1), per_dim("rhs_dilate", 1)
  positions = 1
  for d in range(len(strides)):
    k, o, i = rhs[rhs_l.index(str(d))], out[out_l.index(str(d))], lhs[lhs_l.index(str(d))]
    index = (np.arange(o)[None, :] * strides[d] - pads[d][0] + np.arange(k)[:, None] * dil[d])
    valid = (index % base[d] == 0) & (index // base[d] >= 0) & (index // base[d] < i)
    positions *= int(valid.sum())
  fma = (lhs[lhs_l.index("f")] // group("feature_group_count") * out[out_l.index("f")]
         * lhs[lhs_l.index("b")] // group("batch_group_count") * positions)
  return 2 * fma


def _dot_flops(type_text: str, args: str, types) -> int:
  lhs = _dims(types.get(_operand_names(args)[0], ""))
  contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", args)
  k = int(np.prod([lhs[int(d)] for d in contracting.group(1).split(",") if d])) if (
      contracting and lhs) else 1
  return 2 * int(np.prod(_dims(type_text), dtype=np.int64)) * k


def loop_flops(hlo_text: str) -> dict:
  """Matmul FLOPs XLA's cost_analysis() leaves out: it counts a while loop's body once, whatever
  its trip count (lax.scan / lax.map: gradient accumulation, per-temperature fields). Returns
  {"missing_flops": dot and convolution FLOPs of the extra iterations, counted as XLA counts
  them; elementwise work of the extra iterations is not added, "loops": [trip counts]}."""
  comps = _parse_module(hlo_text)
  runs, once = _executions(comps), _executions(comps, use_trip_counts=False)
  missing = 0
  for name, comp in comps.items():
    if runs[name] == once[name]:
      continue
    for _, type_text, op, args in comp["instrs"]:
      if op == "dot":
        missing += (runs[name] - once[name]) * _dot_flops(type_text, args, comp["types"])
      elif op == "convolution":
        missing += (runs[name] - once[name]) * _conv_flops(type_text, args, comp["types"])
  trips = [_trip_count(comps, args) for c in comps.values() for _, _, op, args in c["instrs"]
           if op == "while"]
  return {"missing_flops": float(missing), "loops": trips}


def step_accounting(compiled) -> dict:
  """FLOPs (cost_analysis plus loop_flops' missing iterations), bytes accessed and collectives of
  one compiled program, per device."""
  text, xla = compiled.as_text(), cost(compiled)
  loops = loop_flops(text)
  return {"flops_per_device": float(xla.get("flops", 0.0)) + loops["missing_flops"],
          "xla_flops_per_device": float(xla.get("flops", 0.0)), "loop_trip_counts": loops["loops"],
          "bytes_accessed_per_device": float(xla.get("bytes accessed", 0.0)),
          "collectives": collectives(text)}


def collectives(hlo_text: str) -> dict:
  """Collectives of a partitioned HLO module: {op: {count, operand_bytes, result_bytes}} per device
  and step, each counted as often as it runs (inside a loop: times the loop's trip count).

  Async pairs (op-start / op-done) count once, at the start. Operand bytes are what a device
  contributes; result bytes what it receives (e.g. all-gather: result = operand x group size).
  """
  comps = _parse_module(hlo_text)
  runs = _executions(comps)
  out = {op: {"count": 0, "operand_bytes": 0, "result_bytes": 0} for op in COLLECTIVES}
  for name, comp in comps.items():
    for _, type_text, op, args in comp["instrs"]:
      base = op[:-len("-start")] if op.endswith("-start") else op
      if base in COLLECTIVES:
        out[base]["count"] += runs[name]
        out[base]["result_bytes"] += runs[name] * _type_bytes(type_text)
        out[base]["operand_bytes"] += runs[name] * sum(
            _type_bytes(comp["types"].get(o, "")) for o in _operand_names(args))
  return out


def projections(flops_per_device: float, images: int, compute_dtype: str, mfu: float) -> dict:
  """Step time and images/s per chip at `mfu` of each peak; `h100` picks bf16 or TF32 by dtype."""
  out = {"mfu": mfu}
  for name, tflops in PEAK_TFLOPS.items():
    step_s = flops_per_device / (tflops * 1e12 * mfu)
    out[name] = {"peak_tflops": tflops, "step_s": step_s, "images_per_s": images / step_s}
  out["h100"] = out["h100_bf16" if compute_dtype == "bfloat16" else "h100_tf32"]
  return out
