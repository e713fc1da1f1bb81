"""Mutation check of the core: does the test suite notice small, realistic bugs?

Each mutant below is one textual change to one source file (the exact original text, which must
occur exactly once, and its replacement) plus the tests that should notice it. The check copies the
working tree (tracked and untracked, not ignored files) to a temporary folder, runs the union of
the listed tests there once unchanged (they must pass), then for each mutant applies it to the
copy, runs only its tests with `pytest -x`, restores the file, and prints caught / missed per
mutant and the score. The working tree is never modified.

A mutant whose original text is not found exactly once is reported as "stale" before anything
runs (the code moved or changed: update the mutant), never counted as missed.

  python -m scripts.mutation_check             # every mutant (CPU-heavy: minutes to an hour)
  python -m scripts.mutation_check --list      # the declared mutants
  python -m scripts.mutation_check --only ema_per_step_swapped,cfg_anchor_cond
Not part of CI. Exit status: 0 all caught, 1 some missed or failed to run, 2 stale mutants or a
failing baseline. The last recorded result is in tests/README.md.
"""
import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

Mutant = collections.namedtuple("Mutant", "id area path original mutated tests")

MF = "tests/test_meanflow.py"
DRIFT = "tests/test_drifting.py"
HALF_LIFE = "tests/test_ema_half_life.py"
MUON = "tests/test_muon.py"

MUTANTS = (
    # --- The MeanFlow objective ----------------------------------------------------------------
    Mutant("target_sign", "objective", "mf_jax/meanflow.py",
           "u_tgt = v - _bcast(t - r, dudt) * dudt",
           "u_tgt = v + _bcast(t - r, dudt) * dudt",
           [MF]),
    Mutant("jvp_tangents_swapped", "objective", "mf_jax/meanflow.py",
           'JVP_TANGENTS = {"v,0,1": (False, True),',
           'JVP_TANGENTS = {"v,0,1": (True, False),',
           [MF]),
    # Two mutants, one change: each of two independent tests must catch it alone.
    Mutant("target_stop_gradient_dropped/a", "objective", "mf_jax/meanflow.py",
           "return u, jax.lax.stop_gradient(u_tgt)", "return u, u_tgt",
           [MF + "::test_gradient_flows_only_through_primal_u"]),
    Mutant("target_stop_gradient_dropped/b", "objective", "mf_jax/meanflow.py",
           "return u, jax.lax.stop_gradient(u_tgt)", "return u, u_tgt",
           [MF + "::test_gradient_of_a_nonlinear_net_matches_the_hand_derived_first_order_form"]),
    Mutant("adaptive_weight_not_stopped", "objective", "mf_jax/meanflow.py",
           "return jax.lax.stop_gradient(1.0 / jnp.power(d + c, p)) * d, err",
           "return 1.0 / jnp.power(d + c, p) * d, err",
           [MF]),
    Mutant("training_guidance_null_weight", "objective", "mf_jax/meanflow.py",
           "return w_omega * v + w_kappa * u_cond + (1.0 - w_omega - w_kappa) * u_null",
           "return w_omega * v + w_kappa * u_cond + (1.0 - w_omega) * u_null",
           [MF]),
    Mutant("t_minus_r_fed_as_zeros/a", "objective", "mf_jax/meanflow.py",
           '"t_minus_r": lambda: t - r}', '"t_minus_r": lambda: jnp.zeros_like(t)}',
           ["tests/test_dit.py::test_labels_per_sample_and_the_gap_t_minus_r_reach_the_output"]),
    Mutant("t_minus_r_fed_as_zeros/b", "objective", "mf_jax/meanflow.py",
           '"t_minus_r": lambda: t - r}', '"t_minus_r": lambda: jnp.zeros_like(t)}',
           ["tests/test_ablation_knobs.py::test_t_minus_r_network_sees_only_the_gap"]),
    # --- The drifting field --------------------------------------------------------------------
    Mutant("feature_scale_sqrt_c", "field", "mf_jax/drifting_field.py",
           "jnp.maximum(mean_dist / math.sqrt(channels), SCALE_FLOOR))",
           "jnp.maximum(mean_dist / channels, SCALE_FLOOR))",
           [DRIFT + "::test_feature_scale_and_unit_rms_are_statistics_of_the_whole_step",
            DRIFT + "::test_batch_form_matches_pair_loops_and_mean_shift_form"]),
    Mutant("field_rms_entries", "field", "mf_jax/drifting_field.py",
           "return jnp.sqrt(square_sums / float(entries))",
           "return jnp.sqrt(square_sums / float(entries + 1))",
           [DRIFT + "::test_feature_scale_and_unit_rms_are_statistics_of_the_whole_step",
            DRIFT + "::test_batch_form_matches_pair_loops_and_mean_shift_form"]),
    Mutant("softmax_one_axis_twice", "field", "mf_jax/drifting_field.py",
           "prod = jax.nn.softmax(logits, axis=-1) * jax.nn.softmax(logits, axis=-2)",
           "prod = jax.nn.softmax(logits, axis=-1) * jax.nn.softmax(logits, axis=-1)",
           [DRIFT + "::test_batch_form_matches_pair_loops_and_mean_shift_form",
            DRIFT + "::test_guidance_weight_enters_after_the_softmax_normalisers"]),
    # --- Samplers: the data sampler's per-process order, the MeanFlow step -------------------
    Mutant("data_per_process_order_reversed", "sampler", "input_pipeline/sampler.py",
           "process_index * local", "(process_count - 1 - process_index) * local",
           ["tests/test_exact_resume.py::"
            "test_train_iterator_on_two_processes_reads_the_halves_of_the_one_process_batches",
            "tests/test_latent_reader.py::test_resumed_stream_is_the_same_on_any_process_count"]),
    Mutant("sampler_step_r_t_swapped", "sampler", "mf_jax/sampling.py",
           "return z - (t - r) * u_fn(z, r * ones, t * ones, labels)",
           "return z - (t - r) * u_fn(z, t * ones, r * ones, labels)",
           [MF + "::test_one_step_sampling_with_analytic_u_maps_noise_to_data",
            "tests/test_guidance_sampling.py"]),
    # --- EMA -----------------------------------------------------------------------------------
    Mutant("ema_per_step_swapped", "EMA", "mf_jax/train_state.py",
           "lambda e, p: d * e + (1.0 - d) * p, ema, params)",
           "lambda e, p: d * p + (1.0 - d) * e, ema, params)",
           ["tests/test_ema.py"]),
    Mutant("ema_every_decay_not_powered", "EMA", "mf_jax/train_state.py",
           "d ** every * e + (1.0 - d ** every) * p", "d * e + (1.0 - d) * p",
           ["tests/test_cifar_recipe.py::test_ema_every_k_steps_with_decay_to_the_k"]),
    # --- EMA copies by half-life, and their selection (mf_jax/ema.py) ------------------------
    Mutant("ema_rampup_ratio_ignored", "EMA", "mf_jax/ema.py",
           "* (batch_size * rampup_ratio)", "* batch_size",
           [HALF_LIFE]),
    Mutant("ema_half_life_step_off_by_one", "EMA", "mf_jax/train_step.py",
           "ema_lib.decays_at(config, state.step + 1)", "ema_lib.decays_at(config, state.step)",
           [HALF_LIFE + "::test_trainer_half_life_ema_is_the_closed_form_average"]),
    Mutant("ema_half_life_batch_fixed_1024", "EMA", "mf_jax/ema.py",
           "return 0.5 ** (batch_size / half_life)", "return 0.5 ** (1024 / half_life)",
           [HALF_LIFE]),
    Mutant("ema_name_ignored/a", "EMA", "mf_jax/ema.py",
           "  if not fields.ema_name:\n", "  if True:\n",
           [HALF_LIFE + "::test_names_and_selection_by_name_or_index_agree"]),
    Mutant("ema_name_ignored/b", "EMA", "mf_jax/ema.py",
           "  if not fields.ema_name:\n", "  if True:\n",
           [HALF_LIFE + "::test_unknown_name_is_a_clear_error_in_sample_and_eval"]),
    # --- Muon (train_state.make_optimizer) -----------------------------------------------------
    Mutant("muon_routes_rank_2_or_more/a", "optimizer", "mf_jax/train_state.py",
           "if x.ndim == 2 and not any(", "if x.ndim >= 2 and not any(",
           [MUON]),
    Mutant("muon_exclude_ignored", "optimizer", "mf_jax/train_state.py",
           "if x.ndim == 2 and not any(p.search(name) for p in patterns):",
           "if x.ndim == 2:",
           [MUON]),
    Mutant("muon_routes_rank_2_or_more/b", "optimizer", "mf_jax/train_state.py",
           "if x.ndim == 2 and not any(", "if x.ndim >= 2 and not any(",
           [MUON + "::test_routing_by_shape_sends_3d_tokens_and_conv_kernels_to_adam"]),
    Mutant("muon_adam_b2_left_at_optax_default", "optimizer", "mf_jax/train_state.py",
           "adam_b1=o.b1, adam_b2=o.b2,", "adam_b1=o.b1,",
           [MUON + "::test_the_default_muon_is_pmf_optimizer_bit_for_bit"]),
    Mutant("resume_drops_optimizer_state", "checkpoint", "mf_jax/train.py",
           "    state = restored\n", "    state = restored.replace(opt_state=state.opt_state)\n",
           ["tests/test_exact_resume.py::test_muon_and_half_life_emas_resume_bit_identical"]),
    Mutant("converted_state_zero_optimizer", "optimizer", "mf_jax/convert/workdir.py",
           "opt_state = jax.device_get(ts.make_optimizer(config).init(params))",
           "opt_state = zeros(abstract.opt_state)",
           [MUON + "::test_a_converted_workdir_starts_muon_with_its_coefficients"]),
    Mutant("muon_beta_from_adam_b1", "optimizer", "mf_jax/train_state.py",
           "schedule, beta=o.muon_beta,", "schedule, beta=o.b1,",
           [MUON]),
    Mutant("muon_adam_part_without_weight_decay", "optimizer", "mf_jax/train_state.py",
           "adam_weight_decay=o.weight_decay,", "adam_weight_decay=0.0,",
           [MUON]),
    # --- Sampling-time guidance ----------------------------------------------------------------
    Mutant("cfg_anchor_cond", "guidance", "mf_jax/sampling.py",
           "return null + cfg_scale * (cond - null)", "return cond + cfg_scale * (cond - null)",
           ["tests/test_guidance_sampling.py"]),
    # --- Checkpoint integrity ------------------------------------------------------------------
    Mutant("checkpoint_sums_ignored", "checkpoint", "mf_jax/checkpointing.py",
           "if recorded.get(name) != actual.get(name):", "if name not in actual:",
           ["tests/test_workdir_safety.py::"
            "test_bit_flipped_newest_checkpoint_is_set_aside_and_previous_used"]),
    # --- Precision -----------------------------------------------------------------------------
    Mutant("dit_ignores_bf16", "precision", "mf_jax/models/dit.py",
           "depth, width, heads, p = self.dims()\n"
           "    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)",
           "depth, width, heads, p = self.dims()\n"
           "    kw = dict(dtype=jnp.promote_types(self.dtype, jnp.float32), "
           "param_dtype=self.param_dtype)",
           ["tests/test_precision.py::test_every_matmul_of_the_step_runs_in_the_compute_dtype",
            "tests/test_precision.py::test_bf16_network_error_is_bf16_rounding"]),
    # --- Improved and pixel MeanFlow ------------------------------------------------------------
    Mutant("imf_tangent_is_v_t", "objective", "mf_jax/imf.py",
           'V, v, u = compound_velocity(net_fn, avg["z"], avg["r"], avg["t"], v_c, *cond(avg),',
           'V, v, u = compound_velocity(net_fn, avg["z"], avg["r"], avg["t"], avg["v_t"], '
           '*cond(avg),',
           ["tests/test_imf_golden.py"]),
    Mutant("pmf_clip_of_t_dropped", "objective", "mf_jax/pmf.py",
           "return (z - x_hat) / imf.per_row(jnp.clip(t, t_clip, 1.0), z)",
           "return (z - x_hat) / imf.per_row(t, z)",
           ["tests/test_pmf.py::test_x_to_velocity_and_its_jvp_against_finite_differences"]),
    Mutant("pmf_perceptual_mask_inclusive", "objective", "mf_jax/pmf.py",
           'keep = rows["t"] < config.perceptual_max_t',
           'keep = rows["t"] <= config.perceptual_max_t',
           ["tests/test_pmf.py::test_perceptual_terms_mask_weights_and_gradient"]),
    Mutant("pmf_perceptual_weight_not_stopped", "objective", "mf_jax/pmf.py",
           "w = lambda d: d * jax.lax.stop_gradient(1.0 / jnp.power(d + c, p))",
           "w = lambda d: d / jnp.power(d + c, p)",
           ["tests/test_pmf_golden.py::test_loss_with_perceptual_terms_and_gradient"]),
    Mutant("pmf_pred_x_from_compound_velocity", "objective", "mf_jax/pmf.py",
           'pred_x = rows["z"] - imf.per_row(rows["t"], part.u) * part.u',
           'pred_x = rows["z"] - imf.per_row(rows["t"], part.u) * part.V',
           ["tests/test_pmf_golden.py::test_loss_with_perceptual_terms_and_gradient"]),
    Mutant("pmf_sampler_ignores_noise_scale", "sampler", "mf_jax/pmf.py",
           "return imf.sample(net_fn, noise * noise_scale, labels, num_steps, omega, t_min, t_max)",
           "return imf.sample(net_fn, noise, labels, num_steps, omega, t_min, t_max)",
           ["tests/test_pmf.py::test_sampler_noise_scale_and_one_step_is_x_u"]),
    Mutant("pmf_r_eq_t_rows_keep_the_max", "objective", "mf_jax/meanflow.py",
           "return jnp.where(distinct, r, a), jnp.where(distinct, t, a)",
           "return jnp.where(distinct, r, t), t",
           ["tests/test_pmf.py::test_time_pairing_one_draw_on_r_eq_t_rows"]),
    Mutant("pmf_conditional_velocity_unclipped", "objective", "mf_jax/pmf.py",
           "return x_to_velocity(z, x, t, t_clip)",
           "return (z - x) / imf.per_row(t, z)",
           ["tests/test_pmf.py::test_conditional_velocity_and_noise_scale"]),
)


def copy_tree(dest: str) -> None:
  """The working tree as git sees it (tracked and untracked files, ignored ones left out)."""
  names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
  for name in filter(None, names):
    src = os.path.join(ROOT, name)
    if os.path.isfile(src):  # A tracked file deleted in the working tree is skipped.
      os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
      shutil.copy2(src, os.path.join(dest, name))


def stale(mutants, tree: str):
  """[(mutant, why)] for each mutant whose original text is not in its file exactly once."""
  out = []
  for m in mutants:
    path = os.path.join(tree, m.path)
    if not os.path.isfile(path):
      out.append((m, f"{m.path} does not exist"))
      continue
    count = open(path).read().count(m.original)
    if count != 1:
      out.append((m, f"original text found {count} times in {m.path} (must be exactly once)"))
  return out


def run_pytest(tree: str, tests, env, timeout: float):
  """(pytest exit status or 'timeout', seconds, last lines of output)."""
  start = time.time()
  try:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           *tests], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=timeout)
  except subprocess.TimeoutExpired:
    return "timeout", time.time() - start, ""
  lines = (proc.stdout + proc.stderr).strip().splitlines()
  # The test that caught the mutant (pytest's short summary), else the last lines of output.
  failed = [l for l in lines if l.startswith(("FAILED ", "ERROR "))]
  return proc.returncode, time.time() - start, "\n".join(failed[:1] or lines[-3:])


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--list", action="store_true", help="print the mutants and exit")
  parser.add_argument("--only", default="", help="comma-separated mutant ids")
  parser.add_argument("--skip_baseline", action="store_true",
                      help="do not first run the listed tests unchanged")
  parser.add_argument("--timeout", type=float, default=1800, help="seconds per pytest run")
  args = parser.parse_args(argv)
  mutants = MUTANTS
  if args.only:
    wanted = args.only.split(",")
    unknown = sorted(set(wanted) - {m.id for m in MUTANTS})
    if unknown:
      print(f"mutation_check: error: --only: unknown mutant ids {unknown}. Fix: see --list.")
      return 2
    mutants = [m for m in MUTANTS if m.id in wanted]
  if args.list:
    for m in mutants:
      print(f"{m.id:36s} {m.area:10s} {m.path}: {m.original!r} -> {m.mutated!r}\n"
            f"{'':48s}tests: {' '.join(m.tests)}")
    return 0

  with tempfile.TemporaryDirectory(prefix="mf_jax_mutants_") as tmp:
    tree = os.path.join(tmp, "repo")
    copy_tree(tree)
    bad = stale(mutants, tree)
    if bad:
      for m, why in bad:
        print(f"STALE MUTANT {m.id}: {why}. Fix: update its original text in "
              "scripts/mutation_check.py to the code's current form.")
      return 2
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=os.path.join(tmp, "xla_cache"))
    if not args.skip_baseline:
      union = sorted({t for m in mutants for t in m.tests})
      status, secs, tail = run_pytest(tree, union, env, args.timeout)
      print(f"baseline (unmutated, {len(union)} test targets): exit {status} in {secs:.0f} s",
            flush=True)
      if status != 0:
        print(tail)
        print("mutation_check: error: the listed tests fail without any mutant. Fix the tests "
              "first.")
        return 2
    results = []
    for m in mutants:
      path = os.path.join(tree, m.path)
      original = open(path).read()
      with open(path, "w") as f:
        f.write(original.replace(m.original, m.mutated))
      try:
        status, secs, tail = run_pytest(tree, m.tests, env, args.timeout)
      finally:
        with open(path, "w") as f:
          f.write(original)
      # 1: a test failed; 2: collection failed (the mutant broke an import): both are caught.
      verdict = {0: "MISSED", 1: "caught", 2: "caught"}.get(status, f"ERROR (pytest {status})")
      results.append((m, verdict, secs))
      print(f"{m.id:36s} {m.area:10s} {verdict:8s} {secs:6.0f} s", flush=True)
      print("    " + tail.replace("\n", "\n    "), flush=True)
  caught = sum(v == "caught" for _, v, _ in results)
  print(f"score: {caught}/{len(results)} mutants caught")
  return 0 if caught == len(results) else 1


if __name__ == "__main__":
  sys.exit(main())
