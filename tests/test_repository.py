"""The repository stands alone: no tracked file points at folders beside the checkout."""

import subprocess

from tests.conftest import ROOT


def test_no_tracked_file_points_outside_the_repository():
  outside = "../" + "shared"  # spelt in two parts so that this file does not match itself
  files = subprocess.run(
    ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
  ).stdout.split()
  offenders = [
    name
    for name in files
    if (ROOT / name).is_file() and outside in (ROOT / name).read_text(errors="ignore")
  ]
  assert not offenders, offenders
