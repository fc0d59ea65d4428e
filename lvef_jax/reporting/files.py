"""Writing report files: atomically (a reader never sees a half-written file), CSV as text."""

from __future__ import annotations

import csv
import io
import pathlib
from typing import Iterable, Sequence


def write_text(path: pathlib.Path, text: str) -> None:
  """Writes ``text`` to a temporary sibling, then renames it over ``path`` (folders made)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(text)
  tmp.replace(path)


def csv_text(header: Sequence[str], rows: Iterable[Sequence]) -> str:
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(header)
  writer.writerows(rows)
  return buffer.getvalue()
