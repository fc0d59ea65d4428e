"""Left-ventricle masks drawn from the expert tracings of VolumeTracings.csv.

A traced frame is a long axis (row 0) and short-axis chords (rows 1...), each row X1, Y1, X2, Y2
in pixels (x the column, y the row). EchoNet-Dynamic's segmentation targets are the polygon
through the chords' first end points followed by their second end points in reverse, its
vertices rounded to whole pixels and filled with ``skimage.draw.polygon``; `mask_from_chords`
draws the same pixels with numpy alone (scikit-image is not a dependency), so that a model
trained here is trained and scored on EchoNet-Dynamic's masks.

Only numpy is used: the TFDS builder draws the masks while it prepares the data.
"""

from __future__ import annotations

import math

import numpy as np

# skimage's point-in-polygon test calls a pixel centre within this distance of a vertex (in
# both coordinates) the vertex itself. The vertices are whole pixels, so this is exact equality.
_VERTEX_TOLERANCE = 1e-12


def outline(chords) -> tuple[np.ndarray, np.ndarray]:
  """The traced outline's vertices, as EchoNet-Dynamic forms them.

  Args:
    chords: [n, 4] X1, Y1, X2, Y2 of one traced frame; row 0, the long axis, is not on it.
      Or [n, 2], the outline's X, Y points in order (EchoNet-Pediatric's layout).

  Returns:
    (x, y), float64 [2 * (n - 1)] each: ``concat(X1[1:], reversed(X2[1:]))`` and the same of
    Y (or the points' X and Y, [n] each), rounded to whole pixels with ``np.rint`` (halves to
    even, as numpy rounds).

  Raises:
    ValueError: chords is neither [n, 4] nor [n, 2].
  """
  c = np.asarray(chords, np.float64)
  if c.ndim != 2 or c.shape[1] not in (2, 4):
    raise ValueError(
      f"chords must be [rows, 4] (X1, Y1, X2, Y2) or [points, 2] (X, Y), got shape {c.shape}"
    )
  if c.shape[1] == 2:
    return np.rint(c[:, 0]), np.rint(c[:, 1])
  c = c[1:]
  x = np.rint(np.concatenate([c[:, 0], c[::-1, 2]]))
  y = np.rint(np.concatenate([c[:, 1], c[::-1, 3]]))
  return x, y


def fill_polygon(x, y, height: int, width: int) -> np.ndarray:
  """The pixels of a polygon, as ``skimage.draw.polygon(rows=y, cols=x, shape=(H, W))`` sets them.

  A pixel (r, c) is set when its centre, the point (x=c, y=r), is inside the polygon or on its
  outline, by scikit-image's point-in-polygon test (O'Rourke's crossing test): a point on an
  edge or at a vertex counts as inside, whichever side of the polygon that edge bounds, so a
  rectangle with whole-pixel corners includes its border rows and columns. Inside is decided by
  the even-odd rule (a self-intersecting outline's overlaps alternate). Pixels outside the
  frame are dropped. Only the polygon's bounding box is tested, one edge at a time, each edge
  over the whole box at once.

  Args:
    x, y: The vertices' columns and rows, in pixels (any number, in order; closed implicitly).
    height, width: The frame's size.

  Returns:
    uint8 [height, width] of 0/1; all zeros for no vertices.
  """
  x = np.asarray(x, np.float64).ravel()
  y = np.asarray(y, np.float64).ravel()
  mask = np.zeros((height, width), np.uint8)
  if x.size == 0:
    return mask
  # skimage's bounding box, clipped to the frame.
  r0, r1 = int(max(0, y.min())), min(height - 1, math.ceil(y.max()))
  c0, c1 = int(max(0, x.min())), min(width - 1, math.ceil(x.max()))
  if r1 < r0 or c1 < c0:
    return mask
  rows = np.arange(r0, r1 + 1, dtype=np.float64)[:, None]
  cols = np.arange(c0, c1 + 1, dtype=np.float64)[None, :]
  box = (len(rows), cols.shape[1])
  vertex, right, left = np.zeros(box, bool), np.zeros(box, bool), np.zeros(box, bool)
  x1, y1 = x[-1] - cols, y[-1] - rows  # The edge from the previous vertex (1) to this one (0).
  for xi, yi in zip(x, y):
    x0, y0 = xi - cols, yi - rows
    vertex |= (np.abs(x0) < _VERTEX_TOLERANCE) & (np.abs(y0) < _VERTEX_TOLERANCE)
    # Where the edge meets the point's row, relative to the point, has the sign of this
    # product wherever the edge straddles the row (y1 != y0 there): skimage divides instead.
    side = (x0 * y1 - x1 * y0) * (y1 - y0)
    right ^= ((y0 > 0) != (y1 > 0)) & (side > 0)
    left ^= ((y0 < 0) != (y1 < 0)) & (side < 0)
    x1, y1 = x0, y0
  # Odd crossings to the right: inside. Different parities to the right and left: on an edge.
  mask[r0 : r1 + 1, c0 : c1 + 1] = vertex | right | left
  return mask


def mask_from_chords(chords, height: int, width: int) -> np.ndarray:
  """The LV mask of one traced frame, as EchoNet-Dynamic draws it.

  Args:
    chords: [n, 4] X1, Y1, X2, Y2 of the frame (VolumeTracings.csv's rows, long axis first),
      in pixels of the video.
    height, width: The frame's size, in pixels.

  Returns:
    uint8 [height, width], 1 inside the traced outline (`outline`), drawn by `fill_polygon`
    (its border pixels included, clipped to the frame), 0 elsewhere. A tracing that cannot
    form a mask (`mask_problem`) may give an empty or degenerate one.
  """
  x, y = outline(chords)
  return fill_polygon(x, y, height, width)


def _area(x: np.ndarray, y: np.ndarray) -> float:
  """The shoelace area of a polygon, in square pixels (overlaps of a self-crossing one cancel)."""
  return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def mask_problem(chords, height: int, width: int) -> str | None:
  """Why one traced frame cannot form an LV mask in a height x width frame, or None if it can.

  The reasons: the rows are not [n, 4] finite numbers; fewer than 2 short-axis chords (the
  outline needs at least 3 vertices); fewer than 3 distinct vertices once rounded to whole
  pixels; an outline of zero area (its vertices on one line); no pixel of it inside the frame.
  """
  c = np.asarray(chords, np.float64)
  if c.ndim != 2 or c.shape[1] not in (2, 4):
    return f"its rows have shape {c.shape}, expected [rows, 4] or [points, 2]"
  if not np.isfinite(c).all():
    return "it has coordinates that are not finite numbers"
  if c.shape[1] == 2 and len(c) < 3:
    return f"it has {len(c)} outline points, fewer than the 3 an outline needs"
  if c.shape[1] == 4 and len(c) < 3:
    return f"it has {max(0, len(c) - 1)} short-axis chords, fewer than the 2 an outline needs"
  x, y = outline(c)
  if len(set(zip(x.tolist(), y.tolist()))) < 3:
    return "its outline has fewer than 3 distinct vertices (rounded to whole pixels)"
  if _area(x, y) == 0:
    return "its outline encloses no area (its vertices, rounded to whole pixels, are on one line)"
  if not fill_polygon(x, y, height, width).any():
    return f"its outline lies outside the {height}x{width} frame"
  return None
