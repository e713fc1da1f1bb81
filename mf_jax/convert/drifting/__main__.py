"""Alias of `python -m mf_jax.convert drifting_generator | drifting_mae | convnext`.

  python -m mf_jax.convert.drifting --src=ARTIFACT --workdir=W --config=CONFIG
  python -m mf_jax.convert.drifting --encoder_src=MAE_ARTIFACT --encoder_workdir=W --config=CONFIG
  python -m mf_jax.convert.drifting --convnext_src=HF_DIR --convnext_out=FILE.npz --config=CONFIG
Several pairs in one call convert one after the other.
"""
import sys

from mf_jax.convert import engine
from mf_jax.convert.formats.convnext import (  # pylint: disable=unused-import
    convert_convnext_to_file, read_hf_state_dict)
from mf_jax.convert.formats.drifting_generator import (  # pylint: disable=unused-import
    build_state, convert_to_workdir)
from mf_jax.convert.formats.drifting_mae import (  # pylint: disable=unused-import
    build_encoder_state, convert_encoder_to_workdir)

PROG = "python -m mf_jax.convert.drifting"
# (source, its --src flag, its output flag, the new output flag)
JOBS = (("drifting_generator", "--src", "--workdir", "--workdir"),
        ("drifting_mae", "--encoder_src", "--encoder_workdir", "--workdir"),
        ("convnext", "--convnext_src", "--convnext_out", "--out"))


def main(argv):
  from mf_jax.convert import __main__ as cli  # pylint: disable=g-import-not-at-top
  pair_flags = {f for _, src, out, _ in JOBS for f in (src, out)}
  shared = [a for a in argv[1:] if a.partition("=")[0] not in pair_flags]
  given = {a.partition("=")[0]: a.partition("=")[2] for a in argv[1:]
           if a.partition("=")[0] in pair_flags}
  todo = [job for job in JOBS if job[1] in given or job[2] in given]
  if not todo:
    cli.fail(PROG, engine.UserError(
        "flags", "no source given", "give --src and --workdir (generator), --encoder_src and "
        "--encoder_workdir (MAE encoder), or --convnext_src and --convnext_out (ConvNeXt-V2 of "
        "the pixel configs)"))
  for source, src, out, new_out in todo:
    if not (given.get(src) and given.get(out)):
      cli.fail(PROG, engine.UserError(f"{src} / {out}", f"the {source} needs both",
                                      "give both flags"))
    cli.main([argv[0], source, f"--src={given[src]}", f"{new_out}={given[out]}", *shared], PROG)


if __name__ == "__main__":
  main(sys.argv)
