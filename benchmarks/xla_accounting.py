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


def collectives(hlo_text: str) -> dict:
  """Collectives of a partitioned HLO module: {op: {count, operand_bytes, result_bytes}} per device.

  Async pairs (op-start / op-done) count once, at the start. Operand bytes are what a device
  contributes; result bytes what it receives (e.g. all-gather: result = operand x group size).
  """
  sizes, found = {}, []
  for line in hlo_text.splitlines():
    m = INSTR_RE.match(line)
    if not m:
      continue
    name, type_text, op, args = m.groups()
    sizes[name] = _type_bytes(type_text)
    base = op[:-len("-start")] if op.endswith("-start") else op
    if base in COLLECTIVES:
      found.append((base, sizes[name], _operand_names(args)))
  out = {op: {"count": 0, "operand_bytes": 0, "result_bytes": 0} for op in COLLECTIVES}
  for op, result_bytes, operands in found:
    out[op]["count"] += 1
    out[op]["result_bytes"] += result_bytes
    out[op]["operand_bytes"] += sum(sizes.get(o, 0) for o in operands)
  return out


def projections(flops_per_device: float, images: int, compute_dtype: str, mfu: float) -> dict:
  """Step time and images/s per chip at `mfu` of each peak; `h100` picks bf16 or TF32 by dtype."""
  out = {"mfu": mfu}
  for name, tflops in PEAK_TFLOPS.items():
    step_s = flops_per_device / (tflops * 1e12 * mfu)
    out[name] = {"peak_tflops": tflops, "step_s": step_s, "images_per_s": images / step_s}
  out["h100"] = out["h100_bf16" if compute_dtype == "bfloat16" else "h100_tf32"]
  return out
