"""This project's benchmark beside the paper: Tables 1-10, error by EF range, Figures 15-16,
EchoNet-Dynamic's models beside EchoNet-Dynamic's published figures ("Past the paper"), and
the runs scored on external datasets ("External validation").

  python -m lvef_jax.report --root=runs/paper --root=runs/improved --out=runs/report

Each ``--root`` is one sweep (``python -m lvef_jax.sweep --root=...``): one run directory per
experiment, all of one recipe (read from the runs' config.json). Writes, into ``--out``:
tables.md, tables.csv, comparisons.csv, error_by_ef_range.csv, generalization_gap.png,
performance_vs_generalization.png and performance_vs_generalization.csv; and external.csv
when some run was scored on an external dataset (``launch.py --mode=eval`` with another
``data.format`` or ``data.root``: the run's ``eval/external/<dataset>/``). A run of several
seeds (``sweep --seeds=K``) shows its mean ± SD. Reads run directories only: no JAX, no
TensorFlow, so it runs wherever the results were copied to. A problem with the input ends the
program with one ``error: ...`` line on stderr and exit status 1.
"""

from __future__ import annotations

import pathlib
import sys

from absl import app, flags

from lvef_jax.errors import LvefError
from lvef_jax.reporting import paper_report

ROOTS = flags.DEFINE_multi_string(
  "root",
  None,
  "A sweep directory (ROOT/<experiment>/...: ROOT/table3/B2/, ROOT/echonet/r2plus1d_32_2/); "
  "repeat for several recipes.",
)
OUT = flags.DEFINE_string("out", None, "Folder for the report files (created if absent).")
flags.mark_flags_as_required(["root", "out"])


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    summary = paper_report.write_report(
      [pathlib.Path(r) for r in ROOTS.value], pathlib.Path(OUT.value)
    )
  except LvefError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(summary)
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
