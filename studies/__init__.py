"""Reproducibility studies: grids of config variants x seeds, run as ordinary training runs.

A study file (e.g. studies/meanflow_table1.py) defines `get_study()` returning a `spec.Study`;
`python -m studies.run --study=FILE --workdir=DIR` runs, skips or prints every (arm, seed) run and
writes DIR/results.csv, DIR/results.md and DIR/<headline>.png (studies/results.py).
"""
