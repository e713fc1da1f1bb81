"""The markdown table of a `benchmarks/scale.py --all` run, and its place in benchmarks/RESULTS.md."""
import os

RESULTS_BEGIN = "<!-- scale.py --all: begin -->"
RESULTS_END = "<!-- scale.py --all: end -->"


def affine_memory_fit(b1: float, m1: float, b2: float, m2: float, device_memory_gb: float):
  """(bytes per image, fixed bytes, largest per-device batch within device memory or None) of the
  line through (batch per device, bytes per device) points (b1, m1) and (b2, m2)."""
  per_image = (m2 - m1) / (b2 - b1)
  fixed = m1 - per_image * b1
  largest = int((device_memory_gb * 1e9 - fixed) // per_image) if per_image > 0 else None
  return per_image, fixed, largest


def fitting_batch(small: dict, large: dict, device_memory_gb: float = 80.0):
  """Largest per-device batch within device memory, from two rows of one config.

  Without FSDP the state per device is the same at every device count, and memory is affine in
  the per-device batch (state + per-sample activations), so the rows at 8 and 64 devices (batch
  per device B/8 and B/64) give the line. `small`/`large`: rows with fewer/more devices.
  """
  if "train" not in small or "train" not in large or small.get("fsdp", 1) != large.get("fsdp", 1):
    return None
  if "does_not_fit" in large["train"]:
    return None
  images = small["train"]["images_per_step"]
  b1, b2 = images / small["devices"], images / large["devices"]
  m2 = large["train"]["memory_per_device"]["total_bytes"]
  if "does_not_fit" in small["train"]:
    # The TPU compiler gave only the temporaries of the overflowing step; its arguments and
    # outputs are taken as the larger row's (the state per device; the banks are a little larger
    # at fewer devices, so the line is slightly optimistic).
    large_memory = large["train"]["memory_per_device"]
    m1 = small["train"]["does_not_fit"]["temporaries_bytes"] + m2 - large_memory["temp_bytes"]
  else:
    m1 = small["train"]["memory_per_device"]["total_bytes"]
  if b1 == b2 or m1 <= m2:
    return None
  return affine_memory_fit(b1, m1, b2, m2, device_memory_gb)[2]


def results_table(rows) -> str:
  """Markdown: one line per config; memory at 8 and 64 devices, per-device FLOPs at 8 and 64."""
  by_config = {}
  for row in rows:
    by_config.setdefault(row["config_path"], {})[row["devices"]] = row
  lines = ["| config | method | GFLOP/image train | GFLOP/image 1-NFE | GB/device at 8 | GB/device "
           "at 64 | largest batch/device (80 GB) | H100 images/s/chip | v5p images/s/chip "
           "| TFLOP/device 8 -> 64 (ratio) | all-reduce / param bytes | compile s at 8, 64 |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for path, per_n in by_config.items():
    r8, r64 = per_n.get(8, {}), per_n.get(64, {})
    name = os.path.basename(path)[:-3]
    if "train" not in r8:
      lines.append(f"| {name} | | {r8.get('error', 'not run')} | | | | | | | | | |")
      continue
    overflow = r8["train"].get("does_not_fit")
    if overflow:
      lines.append(_overflow_line(name, r8, r64, overflow))
      continue
    t, c = r8["train"], r8["config"]
    method = _method(c) + (" (CPU compile)" if r8.get("platform") == "cpu" else "")
    sample = r8.get("sample_1nfe")
    largest = t.get("fit", {}).get("largest_batch_per_device") or fitting_batch(r8, r64)
    if c.get("accum_passes", 1) != r64.get("config", c).get("accum_passes", 1):
      largest = None  # Memory is not one line through rows with and without accumulation.
    if "train" in r64:
      t64 = r64["train"]
      f64 = (f"{t64['flops_per_device'] / 1e12:.3f} "
             f"({t['flops_per_device'] / t64['flops_per_device']:.2f}x)")
      m64 = f"{t64['memory_per_device']['total_bytes'] / 1e9:.1f}"
      c64 = f"{t64['compile_s']:.0f}"
    else:
      f64 = m64 = r64.get("error", "not run")
      c64 = "-"
    cells = [name, method, f"{t['flops_per_image'] / 1e9:.1f}",
             f"{sample['flops_per_image'] / 1e9:.1f}" if sample else "-",
             f"{t['memory_per_device']['total_bytes'] / 1e9:.1f}", m64,
             "-" if largest is None else str(largest),
             f"{t['projection']['h100']['images_per_s'] / 8:.0f}",
             f"{t['projection']['v5p_bf16']['images_per_s'] / 8:.0f}",
             f"{t['flops_per_device'] / 1e12:.3f} -> {f64}",
             f"{t['all_reduce_bytes_per_param_byte']:.2f}",
             f"{t['compile_s']:.0f}, {c64}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _method(c) -> str:
  passes = c.get("accum_passes", 1)
  return (c["method"] + (" guided" if c["guided"] else "") + (" +encoder" if c["feature_encoder"] else "")
          + (f", {passes} accumulation passes at 8" if passes > 1 else ""))


def _overflow_line(name, r8, r64, overflow) -> str:
  """A config whose 8-device step overflows a chip: its temporaries, the rest from 64 devices."""
  gb = lambda b: f"{b / 1e9:.1f}"
  mem8 = f"does not fit: temporaries {gb(overflow['temporaries_bytes'])} > HBM {gb(overflow['hbm_bytes'])}"
  t64 = r64.get("train", {})
  if "flops_per_image" not in t64:
    return f"| {name} | {_method(r8['config'])} | - | - | {mem8} | {r64.get('error', 'not run')} | | | | | | |"
  largest = fitting_batch(r8, r64)
  per_chip = lambda k: f"{t64['projection'][k]['images_per_s'] / r64['devices']:.0f}"
  cells = [name, _method(r8["config"]), f"{t64['flops_per_image'] / 1e9:.1f}", "-", mem8,
           gb(t64["memory_per_device"]["total_bytes"]), "-" if largest is None else str(largest),
           per_chip("h100"), per_chip("v5p_bf16"), f"- -> {t64['flops_per_device'] / 1e12:.3f}",
           f"{t64['all_reduce_bytes_per_param_byte']:.2f}", f"-, {t64['compile_s']:.0f}"]
  return "| " + " | ".join(cells) + " |"


def write_results(path: str, table: str) -> None:
  """Replaces the text between the scale.py markers in RESULTS.md (other sections untouched)."""
  with open(path) as f:
    text = f.read()
  if RESULTS_BEGIN not in text:
    raise ValueError(f"{path} has no '{RESULTS_BEGIN}' marker: add the scale section first.")
  head, rest = text.split(RESULTS_BEGIN, 1)
  tail = rest.split(RESULTS_END, 1)[1]
  with open(path, "w") as f:
    f.write(f"{head}{RESULTS_BEGIN}\n{table}\n{RESULTS_END}{tail}")
