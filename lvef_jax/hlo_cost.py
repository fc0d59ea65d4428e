"""What an optimized XLA GPU program does per step, read from its HLO text: kernels, FLOPs, bytes.

A compile-only GPU executable has no ``cost_analysis()``, and XLA's generic cost analysis gives
the cuDNN and cuBLAS calls (most of the arithmetic) no FLOPs. So this module reads the text of
the optimized module (``compiled.as_text()``) and counts, for every kernel the step launches:

- **FLOPs**: 2 per multiply-add of convolutions (cuDNN custom calls, counted from their shapes
  and ``dim_labels``: forward, data gradient and filter gradient alike) and of matmuls (cuBLAS
  calls, from their dot dimensions; ``dot`` instructions); one per element of every other
  arithmetic instruction inside fusions, as XLA's own cost analysis counts them (reductions and
  windows one per element combined); transcendental functions separately.
- **Bytes**: each kernel reads its operands and writes its results once (XLA's own model of a
  kernel's traffic; caches ignored). A fused operand only sliced inside the fusion counts as
  its slices, an in-place ``dynamic-update-slice`` as the update.
- **Kernels**: fusions, library calls (cuDNN, cuBLAS, custom fusions), copies, collectives and
  any other instruction that runs on the device, each once per execution; a ``while`` loop's
  body counts once per trip (its known trip count; the loop condition once more), ``call``
  computations (command buffers) inline, a ``conditional`` as its largest branch.

Nothing here imports JAX: the input is text, so the counts can be tested on small hand-written
modules as well as on compiled ones.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

# Bytes per element of XLA's element types.
DTYPE_BYTES = {
  "pred": 1,
  "s4": 0.5,
  "u4": 0.5,
  "s8": 1,
  "u8": 1,
  "s16": 2,
  "u16": 2,
  "f16": 2,
  "bf16": 2,
  "s32": 4,
  "u32": 4,
  "f32": 4,
  "s64": 8,
  "u64": 8,
  "f64": 8,
  "c64": 8,
  "c128": 16,
  "token": 0,
}
# Element types of 8 bits not listed above (f8e4m3fn, f8e5m2, ...).
_F8 = re.compile(r"f8e\w+")

# One FLOP per output element (XLA's HloCostAnalysis counts elementwise ops so).
ELEMENTWISE = frozenset(
  """add subtract multiply divide remainder maximum minimum negate abs sign compare select clamp
  and or xor not convert round-nearest-afz round-nearest-even floor ceil is-finite
  shift-left shift-right-logical shift-right-arithmetic popcnt clz real imag complex""".split()
)
TRANSCENDENTAL = frozenset(
  """exponential exponential-minus-one log log-plus-one tanh logistic rsqrt sqrt cbrt sine
  cosine tan atan2 power erf""".split()
)
# Instructions that launch nothing: views, tuples and bookkeeping.
NO_KERNEL = frozenset(
  """parameter constant get-tuple-element tuple bitcast after-all add-dependency opt-barrier
  domain copy-done async-done all-reduce-done all-gather-done collective-permute-done
  send-done recv-done partition-id replica-id iota""".split()
)
COLLECTIVES = frozenset(
  """all-reduce all-reduce-start all-gather all-gather-start reduce-scatter all-to-all
  collective-permute collective-permute-start send recv""".split()
)
COPIES = frozenset({"copy", "copy-start"})
CONV_TARGETS = (
  "__cudnn$convForward",
  "__cudnn$convBackwardInput",
  "__cudnn$convBackwardFilter",
  "__cudnn$convBiasActivationForward",
)
GEMM_TARGETS = ("__cublas$gemm", "__cublas$lt$matmul")


@dataclasses.dataclass(frozen=True)
class Array:
  dtype: str
  dims: tuple[int, ...]

  @property
  def size(self) -> int:
    return math.prod(self.dims)

  @property
  def bytes(self) -> float:
    per = DTYPE_BYTES.get(self.dtype, 1 if _F8.fullmatch(self.dtype) else 4)
    return self.size * per


@dataclasses.dataclass
class Instruction:
  name: str
  opcode: str
  shape: list[Array]  # one array, or a tuple's arrays in order
  operands: list[str]
  attrs: str  # the text after the operand list

  def attr(self, key: str) -> str | None:
    """The value of ``key=`` in the attributes: a ``%name``, a ``"string"``, a ``{...}`` block
    (balanced) or a bare token."""
    match = re.search(rf"(?:^|[\s,]){re.escape(key)}=", self.attrs)
    if not match:
      return None
    start = match.end()
    text = self.attrs
    if text.startswith("{", start):
      return text[start : _balanced_end(text, start, "{", "}")]
    if text.startswith('"', start):
      end = start + 1
      while text[end] != '"':
        end += 2 if text[end] == "\\" else 1
      return text[start + 1 : end]
    return re.match(r"[^,\s]*", text[start:]).group(0)

  def called(self, key: str) -> list[str]:
    value = self.attr(key)
    return re.findall(r"%?([\w.\-]+)", value) if value else []

  def backend_config(self) -> dict:
    value = self.attr("backend_config")
    if not value or not value.startswith("{"):
      return {}
    try:
      return json.loads(value)
    except ValueError:
      return {}


@dataclasses.dataclass
class Computation:
  name: str
  instructions: list[Instruction]
  by_name: dict[str, Instruction]
  root: Instruction | None


def _balanced_end(text: str, start: int, open_: str, close: str) -> int:
  """Index just past the ``close`` matching the ``open_`` at ``start`` (quotes respected)."""
  depth, i, quoted = 0, start, False
  while i < len(text):
    c = text[i]
    if quoted:
      if c == "\\":
        i += 1
      elif c == '"':
        quoted = False
    elif c == '"':
      quoted = True
    elif c == open_:
      depth += 1
    elif c == close:
      depth -= 1
      if depth == 0:
        return i + 1
    i += 1
  raise ValueError(f"unbalanced {open_!r} in HLO text: {text[start : start + 80]!r}")


_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
# ``ENTRY %main (p: f32[2]) -> f32[2] {`` as compiled modules print, ``ENTRY main {`` as lowered.
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*(?:\(.*->.*)?\{\s*$")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*")
_ARRAY_SHAPE = re.compile(r"[a-z][a-z0-9]*\[[0-9,]*\](?:\{[^}]*\})?|[a-z]+\[\]")
_OPCODE = re.compile(r"\s*([\w\-]+)\(")


def parse_shape(text: str) -> list[Array]:
  return [
    Array(dtype, tuple(int(d) for d in dims.split(",") if d))
    for dtype, dims in _ARRAY.findall(text)
  ]


def _parse_instruction(line: str) -> Instruction | None:
  match = _INSTRUCTION.match(line)
  if not match:
    return None
  pos = match.end()
  if line.startswith("(", pos):
    end = _balanced_end(line, pos, "(", ")")
  else:
    end = _ARRAY_SHAPE.match(line, pos).end()
  shape = parse_shape(line[pos:end])
  rest = _OPCODE.match(line, end)
  opcode = rest.group(1)
  close = _balanced_end(line, rest.end() - 1, "(", ")")
  operands = [] if opcode == "constant" else _operand_names(line[rest.end() : close - 1])
  return Instruction(match.group(1), opcode, shape, operands, line[close:].lstrip(", "))


def _operand_names(text: str) -> list[str]:
  """The names in an operand list, printed with or without their shapes and ``%``."""
  text = re.sub(r"/\*.*?\*/", "", text)
  names, depth, start = [], 0, 0
  for i, c in enumerate(text + ","):
    if c in "({[":
      depth += 1
    elif c in ")}]":
      depth -= 1
    elif c == "," and depth == 0:
      token = text[start:i].split()
      if token:
        names.append(token[-1].lstrip("%"))
      start = i + 1
  return names


def parse_module(text: str) -> tuple[dict[str, Computation], str]:
  """The computations of an HLO module's text by name, and the entry computation's name."""
  computations, entry, current = {}, None, None
  for line in text.splitlines():
    if current is None:
      header = _HEADER.match(line)
      if header:
        current = Computation(header.group(2), [], {}, None)
        if header.group(1):
          entry = current.name
      continue
    if line.startswith("}"):
      computations[current.name] = current
      current = None
      continue
    instruction = _parse_instruction(line)
    if instruction is not None:
      current.instructions.append(instruction)
      current.by_name[instruction.name] = instruction
      if line.lstrip().startswith("ROOT "):
        current.root = instruction
  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text")
  return computations, entry


@dataclasses.dataclass
class Cost:
  """Per execution of a program: FLOPs, transcendental ops, bytes moved, kernels launched."""

  flops: float = 0.0
  matmul_flops: float = 0.0  # convolutions and matmuls, the part tensor cores run
  transcendentals: float = 0.0
  bytes: float = 0.0
  kernels: dict[str, float] = dataclasses.field(default_factory=dict)
  unknown_trip_counts: int = 0
  # With ``Program.cost(listing=True)``: one :class:`Kernel` per kernel instruction.
  listing: list | None = None

  def add(self, other: "Cost", times: float = 1.0) -> None:
    self.flops += other.flops * times
    self.matmul_flops += other.matmul_flops * times
    self.transcendentals += other.transcendentals * times
    self.bytes += other.bytes * times
    for kind, count in other.kernels.items():
      self.kernels[kind] = self.kernels.get(kind, 0) + count * times
    self.unknown_trip_counts += other.unknown_trip_counts
    if self.listing is not None and other.listing is not None:
      self.listing.extend(dataclasses.replace(k, times=k.times * times) for k in other.listing)

  def count(self, kind: str) -> None:
    self.kernels[kind] = self.kernels.get(kind, 0) + 1

  @property
  def total_kernels(self) -> float:
    return sum(self.kernels.values())


@dataclasses.dataclass(frozen=True)
class Kernel:
  """One kernel instruction: what it is, its work per launch, and launches per execution."""

  name: str
  kind: str  # fusion, library, copy, collective, custom or other
  what: str  # the fusion kind or library call, else the opcode
  op_name: str  # the JAX operation it comes from (metadata), where XLA kept it
  flops: float
  bytes: float
  times: float = 1.0


class Program:
  """An optimized HLO module's text, analysed per execution of its entry computation."""

  def __init__(self, text: str):
    self.computations, self.entry = parse_module(text)

  def cost(self, listing: bool = False) -> Cost:
    """Per execution of the entry computation; ``listing`` also lists every kernel."""
    self._listing = listing
    return self._sequence(self.computations[self.entry])

  # Kernels: instructions of a computation that runs on the host's stream (entry, loop bodies).

  def _sequence(self, computation: Computation) -> Cost:
    cost = Cost(listing=[] if self._listing else None)
    for instruction in computation.instructions:
      flops, bytes_ = cost.flops, cost.bytes
      kind = self._launch(computation, instruction, cost)
      if kind is not None and cost.listing is not None:
        cost.listing.append(
          Kernel(
            instruction.name,
            kind=kind,
            what=_what(instruction),
            op_name=_op_name(instruction),
            flops=cost.flops - flops,
            bytes=cost.bytes - bytes_,
          )
        )
    return cost

  def _launch(self, computation: Computation, ins: Instruction, cost: Cost) -> str | None:
    """Adds what ``ins`` launches to ``cost``; returns the kind of kernel it is itself (None
    for instructions that launch nothing or whose computations were counted instead)."""
    op = ins.opcode
    if op in NO_KERNEL:
      return None
    if op == "while":
      trips = ins.backend_config().get("known_trip_count", {}).get("n")
      if trips is None:
        cost.unknown_trip_counts += 1
      trips = int(trips) if trips is not None else 1
      cost.add(self._sequence(self.computations[ins.called("body")[0]]), trips)
      cost.add(self._sequence(self.computations[ins.called("condition")[0]]), trips + 1)
      return None
    if op in ("call", "async-start"):
      for name in ins.called("to_apply") or ins.called("calls"):
        cost.add(self._sequence(self.computations[name]))
      return None
    if op == "conditional":
      names = ins.called("branch_computations") or [
        *ins.called("true_computation"),
        *ins.called("false_computation"),
      ]
      branches = [self._sequence(self.computations[name]) for name in names]
      if branches:
        cost.add(max(branches, key=lambda c: (c.total_kernels, c.flops)))
      return None
    if op == "fusion":
      kind = "library" if ins.attr("kind") == "kCustom" else "fusion"
      cost.count(kind)
      self._arithmetic(computation, ins, cost)  # the fused computation's
      cost.bytes += self._fusion_bytes(self.computations[ins.called("calls")[0]])
      return kind
    if op == "custom-call":
      target = ins.attr("custom_call_target") or ""
      kind = "library" if target.startswith(("__cudnn", "__cublas")) else "custom"
      cost.count(kind)
      self._arithmetic(computation, ins, cost)
      outputs = ins.shape
      if len(outputs) > 1 and outputs[-1].dtype in ("u8", "s8"):  # the library's workspace
        outputs = outputs[:-1]
      cost.bytes += self._operand_bytes(computation, ins) + sum(a.bytes for a in outputs)
      return kind
    kind = "copy" if op in COPIES else "collective" if op in COLLECTIVES else "other"
    cost.count(kind)
    self._arithmetic(computation, ins, cost)
    # An asynchronous start's result also holds its source and a context: it writes the first.
    written = ins.shape[:1] if op.endswith("-start") else ins.shape
    cost.bytes += self._operand_bytes(computation, ins) + sum(a.bytes for a in written)
    return kind

  # Arithmetic of one instruction.

  def _arithmetic(self, computation: Computation, ins: Instruction, cost: Cost) -> None:
    op = ins.opcode
    out = sum(a.size for a in ins.shape)
    if op in ELEMENTWISE:
      cost.flops += out
    elif op in TRANSCENDENTAL:
      cost.transcendentals += out
    elif op == "reduce":
      inputs = len(ins.operands) // 2
      first = self._shape(computation, ins.operands[0])
      per = self._reducer_flops(ins)
      cost.flops += max(first[0].size - out // max(inputs, 1), 0) * per
    elif op == "reduce-window":
      window = _window_size(ins.attr("window"))
      cost.flops += out * (window - 1) * self._reducer_flops(ins)  # as XLA counts
    elif op == "select-and-scatter":
      source = self._shape(computation, ins.operands[1])[0].size
      cost.flops += source * _window_size(ins.attr("window"))
    elif op == "dot":
      lhs = self._shape(computation, ins.operands[0])[0]
      contracting = [int(d) for d in re.findall(r"\d+", ins.attr("lhs_contracting_dims") or "")]
      flops = 2 * ins.shape[0].size * math.prod(lhs.dims[d] for d in contracting)
      cost.flops += flops
      cost.matmul_flops += flops
    elif op == "convolution":
      x, kernel = (self._shape(computation, name)[0] for name in ins.operands[:2])
      flops = _conv_flops(x, ins.shape[0], kernel, ins.attr("dim_labels"), ins.attr("window"))
      cost.flops += flops
      cost.matmul_flops += flops
    elif op == "custom-call":
      target = ins.attr("custom_call_target") or ""
      if target in CONV_TARGETS:
        operands = [self._shape(computation, name)[0] for name in ins.operands[:2]]
        # The call describes the forward convolution (x, kernel -> y) whichever it computes.
        if target == "__cudnn$convBackwardInput":
          x, y, kernel = ins.shape[0], operands[0], operands[1]
        elif target == "__cudnn$convBackwardFilter":
          x, y, kernel = operands[0], operands[1], ins.shape[0]
        else:
          x, y, kernel = operands[0], ins.shape[0], operands[1]
        flops = _conv_flops(x, y, kernel, ins.attr("dim_labels"), ins.attr("window"))
      elif target in GEMM_TARGETS:
        lhs = self._shape(computation, ins.operands[0])[0]
        dims = ins.backend_config().get("gemm_backend_config", {}).get("dot_dimension_numbers", {})
        contracting = [int(d) for d in dims.get("lhs_contracting_dimensions", [])]
        flops = 2 * ins.shape[0].size * math.prod(lhs.dims[d] for d in contracting)
      else:
        return
      cost.flops += flops
      cost.matmul_flops += flops
    elif op == "fusion":  # the fused computation's instructions (fusions nest)
      fused = self.computations[ins.called("calls")[0]]
      for inside in fused.instructions:
        self._arithmetic(fused, inside, cost)

  def _reducer_flops(self, ins: Instruction) -> int:
    names = ins.called("to_apply")
    if not names:
      return 1
    reducer = self.computations[names[0]]
    count = sum(
      1 for i in reducer.instructions if i.opcode in ELEMENTWISE or i.opcode in TRANSCENDENTAL
    )
    return max(count, 1)

  # Bytes.

  def _shape(self, computation: Computation, name: str) -> list[Array]:
    found = computation.by_name.get(name)
    return found.shape if found is not None else []

  def _operand_bytes(self, computation: Computation, ins: Instruction) -> float:
    return sum(sum(a.bytes for a in self._shape(computation, name)) for name in set(ins.operands))

  def _fusion_bytes(self, fused: Computation) -> float:
    users: dict[str, list[Instruction]] = {}
    for inside in fused.instructions:
      for name in inside.operands:
        users.setdefault(name, []).append(inside)
    # An in-place update writes its update only, and does not read the buffer it updates.
    in_place, written = set(), 0.0
    roots = [fused.root] if fused.root is not None else []
    if roots and roots[0].opcode == "tuple":
      roots = [fused.by_name[name] for name in roots[0].operands if name in fused.by_name]
    for root in roots:
      if root.opcode == "dynamic-update-slice":
        buffer = fused.by_name.get(root.operands[0])
        update = self._shape(fused, root.operands[1])
        if buffer is not None and buffer.opcode == "parameter":
          in_place.add(buffer.name)
        written += sum(a.bytes for a in update)
      else:
        written += sum(a.bytes for a in root.shape)
    read = 0.0
    for inside in fused.instructions:
      if inside.opcode != "parameter" or inside.name in in_place:
        continue
      consumers = users.get(inside.name, [])
      sliced = [u for u in consumers if u.opcode in ("slice", "dynamic-slice")]
      if (
        consumers
        and all(u.operands[0] == inside.name for u in sliced)
        and len(sliced) == len(consumers)
      ):
        read += sum(sum(a.bytes for a in u.shape) for u in consumers)
      else:
        read += sum(a.bytes for a in inside.shape)
    return read + written


def _what(ins: Instruction) -> str:
  if ins.opcode == "fusion":
    custom = ins.backend_config().get("fusion_backend_config", {}).get("kind")
    return custom or ins.attr("kind") or "fusion"
  if ins.opcode == "custom-call":
    return ins.attr("custom_call_target") or "custom-call"
  return ins.opcode


def _op_name(ins: Instruction) -> str:
  match = re.search(r'op_name="([^"]*)"', ins.attrs)
  return match.group(1) if match else ""


def _window_size(window: str | None) -> int:
  if not window:
    return 1
  match = re.search(r"size=([\dx]+)", window)
  return math.prod(int(d) for d in match.group(1).split("x")) if match else 1


def _window(window: str | None, rank: int) -> dict[str, list]:
  """A convolution's ``window={size=… stride=… pad=… lhs_dilate=… rhs_dilate=…}`` per
  spatial dimension (defaults where a field is absent)."""
  fields = dict(re.findall(r"(\w+)=([\d_x-]+)", window or ""))

  def ints(key, default):
    value = fields.get(key)
    return [int(v) for v in value.split("x")] if value else [default] * rank

  pads = fields.get("pad")
  pad = [tuple(int(v) for v in p.split("_")) for p in pads.split("x")] if pads else [(0, 0)] * rank
  return {
    "size": ints("size", 1),
    "stride": ints("stride", 1),
    "pad": pad,
    "lhs_dilate": ints("lhs_dilate", 1),
    "rhs_dilate": ints("rhs_dilate", 1),
  }


def _valid_pairs(
  inputs: int,
  outputs: int,
  kernel: int,
  stride: int,
  pad_low: int,
  lhs_dilate: int,
  rhs_dilate: int,
) -> int:
  """How many (output position, kernel tap) pairs of one spatial dimension read an input
  element rather than padding: XLA's cost analysis counts only those multiply-adds."""
  dilated = (inputs - 1) * lhs_dilate + 1
  count = 0
  for k in range(kernel):
    for o in range(outputs):
      position = o * stride - pad_low + k * rhs_dilate
      if 0 <= position < dilated and position % lhs_dilate == 0:
        count += 1
  return count


def _conv_flops(
  x: Array, y: Array, kernel: Array, dim_labels: str | None, window: str | None
) -> float:
  """2 × the multiply-adds of a convolution that read input rather than padding (XLA's cost
  analysis' convention), the same for its forward pass and both gradients: ``x`` is the
  forward input, ``y`` the forward output and ``kernel`` the filter, laid out as
  ``dim_labels`` (``lhs_rhs->out``) says."""
  parts = re.fullmatch(r"(\w+)_(\w+)->(\w+)", dim_labels or "")
  if not parts or len(parts.group(2)) != len(kernel.dims):
    raise ValueError(f"convolution dim_labels {dim_labels!r} do not fit the filter {kernel}")
  lhs, rhs, out = parts.groups()
  spatial = sorted(c for c in rhs if c.isdigit())
  w = _window(window, len(spatial))
  taps = 1
  for i, label in enumerate(spatial):
    taps *= _valid_pairs(
      x.dims[lhs.index(label)],
      y.dims[out.index(label)],
      kernel.dims[rhs.index(label)],
      w["stride"][i],
      w["pad"][i][0],
      w["lhs_dilate"][i],
      w["rhs_dilate"][i],
    )
  batch = y.dims[out.index("b")]
  features = y.dims[out.index("f")]
  per_group_inputs = kernel.dims[rhs.index("i")]
  return 2.0 * batch * features * per_group_inputs * taps
