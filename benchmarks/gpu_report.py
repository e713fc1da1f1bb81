"""Markdown tables of a gpu_check result (benchmarks/gpu_check.py), with MFU against the measured
matmul peak and the card's datasheet.

Which peak applies: bf16 and fp32_bf16mm rows run bf16 matmuls (bf16 peak); fp32 rows run XLA's
default float32 matmuls, TF32 on NVIDIA Ampere and later (TF32 peak; measured: fp32_default).
"""
from typing import Optional

# Dense (no sparsity) TFLOP/s from NVIDIA's datasheets.
DATASHEET_TFLOPS = {"H100 SXM": {"bf16": 989.0, "tf32": 494.7},
                    "H100 PCIe": {"bf16": 756.0, "tf32": 378.0},
                    "H100 NVL": {"bf16": 835.0, "tf32": 417.5},
                    "H200": {"bf16": 989.0, "tf32": 494.7}}
PEAK_OF_PRECISION = {"bf16": ("bf16", "matmul_bf16_tflops"),
                     "fp32_bf16mm": ("bf16", "matmul_bf16_tflops"),
                     "fp32": ("tf32", "matmul_fp32_default_tflops")}
# Goals of the check's table (issue 27): guided MeanFlow B/2 in bf16 at >= 40% MFU (datasheet), and
# >= 2x the official step's images/s on the same card.
GOAL_MFU, GOAL_SPEEDUP = 0.40, 2.0


def datasheet(device_kind: str) -> Optional[dict]:
  kind = device_kind.upper()
  if "H200" in kind:
    return DATASHEET_TFLOPS["H200"]
  if "H100" in kind:
    if "PCIE" in kind:
      return DATASHEET_TFLOPS["H100 PCIe"]
    return DATASHEET_TFLOPS["H100 NVL" if "NVL" in kind else "H100 SXM"]
  return None


def _f(x, fmt="{:.3g}"):
  if isinstance(x, bool):
    return "yes" if x else "NO"
  return fmt.format(x) if isinstance(x, (int, float)) and x is not None else ("-" if x is None else str(x))


def mfu(row: dict, precision: str, ceilings: dict, sheet: Optional[dict]):
  """(MFU against the measured peak, MFU against the datasheet) of a timed row."""
  which, measured_key = PEAK_OF_PRECISION[precision]
  tflops = row.get("achieved_tflops")
  if tflops is None:
    return None, None
  measured = ceilings.get(measured_key)
  return (tflops / measured if measured else None,
          tflops / sheet[which] if sheet else None)


def step_rows(title: str, rows: dict, ceilings: dict, sheet) -> list:
  lines = [f"### {title}", "",
           "| precision | step | batch | images/s | step ms | compile s | TFLOP/s | MFU (measured) | "
           "MFU (datasheet) | memory GB (compiled) | first-step loss | notes |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for key, row in rows.items():
    if not isinstance(row, dict) or "/" not in key:
      continue
    precision, variant = key.split("/")
    if "images_per_s" not in row:
      lines.append(f"| {precision} | {variant} | | | | | | | | | | "
                   f"{row.get('skipped') or row.get('error', '')[:200]} |")
      continue
    m, d = mfu(row, precision, ceilings, sheet)
    mem = row.get("total_bytes")
    notes = "; ".join(row.get("notes", []) + ([f"attention {row['attention_impl']}"]
                                               if "attention_impl" in row else []))
    lines.append(f"| {precision} | {variant} | {row.get('batch', '')} | {row['images_per_s']:.1f} | "
                 f"{1e3 * row['median_step_s']:.2f} | {row['compile_s']:.1f} | "
                 f"{row['achieved_tflops']:.1f} | {_f(m, '{:.1%}')} | {_f(d, '{:.1%}')} | "
                 f"{_f(mem / 1e9 if mem else None, '{:.2f}')} | "
                 f"{_f(row.get('first_step_loss'), '{:.5f}')} | {notes} |")
  return lines + [""]


def goals(results: dict, sheet) -> list:
  ours = results.get("train_step", {}).get("bf16/meanflow_guided", {})
  theirs = results.get("official", {}).get("fp32/meanflow_guided", {})
  lines = ["### Goals", ""]
  if "achieved_tflops" in ours and sheet:
    value = ours["achieved_tflops"] / sheet["bf16"]
    lines.append(f"- guided MeanFlow bf16 MFU (datasheet): {value:.1%} "
                 f"(goal >= {GOAL_MFU:.0%}): {'met' if value >= GOAL_MFU else 'NOT met'}")
  else:
    lines.append("- guided MeanFlow bf16 MFU: not measured here (no timed row or no datasheet peak)")
  if "images_per_s" in ours and "images_per_s" in theirs:
    ratio = ours["images_per_s"] / theirs["images_per_s"]
    lines.append(f"- images/s vs the official guided step (fp32): {ratio:.2f}x (goal >= "
                 f"{GOAL_SPEEDUP:.0f}x): {'met' if ratio >= GOAL_SPEEDUP else 'NOT met'}")
  else:
    lines.append("- speed-up over the official step: not measured here")
  return lines + [""]


def markdown(results: dict) -> str:
  env = results.get("environment", {})
  kind = env.get("device_kind", "?")
  sheet = datasheet(kind)
  ceilings = results.get("ceilings", {})
  lines = [f"## GPU check: {kind} x{env.get('num_devices', '?')}"
           f"{' (DRY RUN on CPU: tiny sizes, no figure is a GPU figure)' if results.get('dry_run') else ''}",
           "", f"Started {results.get('started', '?')}; total {_f(results.get('total_s'), '{:.0f}')} s "
           f"of a {_f(results.get('budget_s'), '{:.0f}')} s budget. Versions: "
           + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items()), ""]
  if env.get("nvidia_smi"):
    lines += [f"nvidia-smi: {env['nvidia_smi']}", ""]
  lines += ["### Ceilings", "", "| quantity | measured | datasheet |", "|---|---|---|"]
  for key, sheet_key in (("matmul_bf16_tflops", "bf16"), ("matmul_fp32_default_tflops", "tf32"),
                         ("matmul_fp32_highest_tflops", None), ("copy_gb_per_s", None)):
    lines.append(f"| {key} | {_f(ceilings.get(key), '{:.1f}')} | "
                 f"{_f(sheet.get(sheet_key) if sheet and sheet_key else None, '{:.1f}')} |")
  lines.append("")
  lines += step_rows("Train step (this codebase, DiT-B/2)", results.get("train_step", {}), ceilings,
                     sheet)
  lines += step_rows("Official MeanFlow step (same card, same batch)", results.get("official", {}),
                     ceilings, sheet)
  lines += goals(results, sheet)
  att = results.get("attention", {})
  lines += [f"### Attention kernels (bf16, [B, N, heads, d] = {att.get('shape')}), ms", "",
            "| kernel | forward | backward | jvp | grad of jvp |", "|---|---|---|---|---|"]
  for name in ("einsum", "xla", "cudnn"):
    row = att.get(name, {})
    lines.append(f"| {name} | " + " | ".join(_f(row.get(m), "{:.3f}") for m in
                                              ("forward", "backward", "jvp", "grad_of_jvp")) + " |")
  lines.append("")
  lines += ["### Other stages", ""]
  for name in ("correctness", "sampling", "trainer"):
    row = {k: v for k, v in results.get(name, {}).items() if k not in ("traceback", "tail")}
    lines.append(f"- **{name}**: " + ", ".join(f"{k}={_f(v)}" for k, v in row.items()))
  for name in ("ceilings", "train_step", "official", "attention"):
    row = results.get(name, {})
    if "error" in row or "skipped" in row:
      lines.append(f"- **{name}**: {row.get('error') or row.get('skipped')}")
  return "\n".join(lines) + "\n"
