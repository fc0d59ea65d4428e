r"""The project's I3D family in PyTorch: the throughput peer of ``python -m lvef_jax.bench``.

PyTorch is what most EchoNet-Dynamic code trains with, so its clips/s on the same machine is the
figure to beat. This file builds the same layers as ``lvef_jax/models/i3d.py`` (stem, conv2,
Inception stages, regression head; BatchNorm only), with TF-style SAME padding everywhere, and
times the same train step as the JAX bench: forward, MSE against random EF targets, backward and
Adam (learning rate 1e-3) on random uint8 clips placed on the device once.

  python benchmarks/torch_peer.py time --variant=mini --conv2=1x1x1 --head=a --batch=4 \
      --steps=5 --shape=28,112,112,1 [--device=cpu|cuda] [--amp] [--compile] \
      [--channels_last] [--threads=N] [--expect_params=N]
  python benchmarks/torch_peer.py counts [--head=a] [--shape=28,112,112,1]

``time`` prints one JSON line with the JAX bench's keys where they apply (``framework``,
``device``, ``devices``, ``variant``, ``dtype``, ``batch``, ``shape``, ``first_step_s``,
``step_s``, ``clips_per_s``) plus ``params`` (trainable parameters), ``threads``, ``compiled``.
``--expect_params=N`` exits with status 2 when the model's parameter count is not ``N``: pass
the JAX model's count so that a layer mismatch cannot go unnoticed. ``--amp`` computes in
bfloat16 with float32 parameters (``torch.autocast``), like the JAX bench's ``--precision=bf16``.
``--variant`` also takes the bench's full name (``--variant=i3d_mini_conv2_3x3x3``). On CUDA,
Adam is PyTorch's fused implementation (one kernel, as XLA fuses optax's update).
``counts`` prints one JSON line: ``i3d_<variant>_conv2_<conv2>`` -> trainable parameters.

Needs only torch and numpy, from the optional ``peer`` extra: ``pip install -e .[peer]`` (which
pins torch==2.13.0). No JAX or TensorFlow is imported; the layer tables are read from
``lvef_jax/models/i3d_layout.py``, the file the JAX model is built from.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import pathlib
import resource
import sys
import time
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _load_layout():
  """The JAX model's layer tables (lvef_jax/models/i3d_layout.py, plain data), loaded from the
  file so that neither the package nor JAX is imported: the two models cannot drift apart."""
  path = pathlib.Path(__file__).resolve().parents[1] / "lvef_jax" / "models" / "i3d_layout.py"
  spec = importlib.util.spec_from_file_location("i3d_layout", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


_LAYOUT = _load_layout()
INCEPTION_WIDTHS, STAGES, VARIANTS = _LAYOUT.INCEPTION_WIDTHS, _LAYOUT.STAGES, _LAYOUT.VARIANTS
CONV2_KERNELS, HEADS, OG_POOL = _LAYOUT.CONV2_KERNELS, _LAYOUT.HEADS, _LAYOUT.OG_POOL
STEM_FEATURES, CONV2_FEATURES = _LAYOUT.STEM_FEATURES, _LAYOUT.CONV2_FEATURES
# The project's defaults (lvef_jax/config_base.py, configs/i3d.py).
NORM_EPSILON = 1e-3  # Keras' BatchNormalization epsilon
BN_MOMENTUM = 0.99  # Keras/Flax convention: running = 0.99 * running + 0.01 * batch
DROPOUT, HEAD_HIDDEN = 0.5, 256
EF_OFFSET, EF_SCALE = 55.7, 1.0  # EF = offset + scale * linear output
LEARNING_RATE = 1e-3
DEFAULT_SHAPE = (28, 112, 112, 1)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
  """TF/XLA SAME padding of one axis: ``(before, after, output size)``, the odd one at the end."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2, out


def _pad_arg(pads: Sequence[tuple[int, int]]) -> tuple[int, ...]:
  """Per-axis ``(before, after)`` pairs, first axis first, as ``F.pad`` wants (last axis first)."""
  return tuple(p for pair in reversed(pads) for p in pair)


class SameConv3d(nn.Conv3d):
  """``nn.Conv3d`` with TF-style SAME padding (asymmetric where the stride needs it)."""

  def __init__(self, in_features, features, kernel, *, stride=1, bias=True):
    super().__init__(in_features, features, tuple(kernel), stride=stride, padding=0, bias=bias)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    pads = [
      same_padding(n, k, s)[:2] for n, k, s in zip(x.shape[2:], self.kernel_size, self.stride)
    ]
    if all(before == after for before, after in pads):  # the convolution pads by itself
      padding = tuple(before for before, _ in pads)
    else:  # the 7x7x7 stride-2 stem on even sizes: one more zero at the end
      x, padding = F.pad(x, _pad_arg(pads)), 0
    return F.conv3d(x, self.weight, self.bias, self.stride, padding)


def max_pool_same(x: torch.Tensor, window: Sequence[int], strides: Sequence[int]) -> torch.Tensor:
  """TF-style SAME max pooling of an NCDHW tensor (padding never wins the max)."""
  pads = [same_padding(n, k, s) for n, k, s in zip(x.shape[2:], window, strides)]
  # PyTorch's own padding plus ceil_mode skips out-of-range elements, which is SAME padding with
  # -inf whenever it gives the same windows; otherwise pad with -inf explicitly.
  native = True
  for n, k, s, (before, _, out) in zip(x.shape[2:], window, strides, pads):
    torch_out = math.ceil((n + 2 * before - k) / s) + 1
    if (torch_out - 1) * s >= n + before:
      torch_out -= 1
    native = native and before <= k // 2 and torch_out == out
  if native:
    padding = tuple(p[0] for p in pads)
    return F.max_pool3d(x, tuple(window), tuple(strides), padding, ceil_mode=True)
  x = F.pad(x, _pad_arg([p[:2] for p in pads]), value=float("-inf"))
  return F.max_pool3d(x, tuple(window), tuple(strides))


def batch_norm(features: int) -> nn.BatchNorm3d:
  """BatchNorm with the project's epsilon and momentum (PyTorch's momentum is 1 - Keras')."""
  return nn.BatchNorm3d(features, eps=NORM_EPSILON, momentum=1.0 - BN_MOMENTUM)


class ConvNormAct(nn.Module):
  """Conv3d (stride 1, SAME, no bias) -> BatchNorm -> ReLU."""

  def __init__(self, in_features: int, features: int, kernel: int):
    super().__init__()
    self.conv = SameConv3d(in_features, features, (kernel,) * 3, bias=False)
    self.norm = batch_norm(features)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return F.relu(self.norm(self.conv(x)))


class Inception(nn.Module):
  """Inception-v1 module in 3-D, the 5x5 branch as two 3x3x3 convolutions."""

  def __init__(self, in_features: int, widths: Sequence[int]):
    super().__init__()
    b1, b2_reduce, b2, b3_reduce, b3, pool_proj = widths
    self.branch1 = ConvNormAct(in_features, b1, 1)
    self.branch2 = nn.Sequential(
      ConvNormAct(in_features, b2_reduce, 1), ConvNormAct(b2_reduce, b2, 3)
    )
    self.branch3 = nn.Sequential(
      ConvNormAct(in_features, b3_reduce, 1), ConvNormAct(b3_reduce, b3, 3), ConvNormAct(b3, b3, 3)
    )
    self.branch4 = ConvNormAct(in_features, pool_proj, 1)
    self.out_features = b1 + b2 + b3 + pool_proj

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y4 = self.branch4(max_pool_same(x, (3, 3, 3), (1, 1, 1)))
    return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), y4], dim=1)


class Body(nn.Module):
  """Stem, conv2 and Inception stages: NCDHW float clip -> NCDHW feature map."""

  def __init__(self, variant: str, conv2: str, in_features: int = 1):
    super().__init__()
    if variant not in VARIANTS:
      raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    if conv2 not in CONV2_KERNELS:
      raise ValueError(f"conv2 must be one of {sorted(CONV2_KERNELS)}, got {conv2!r}")
    self.stem_conv = SameConv3d(in_features, STEM_FEATURES, (7, 7, 7), stride=2)
    self.stem_norm = batch_norm(STEM_FEATURES)
    features, conv2_layers = STEM_FEATURES, []
    for kernel in CONV2_KERNELS[conv2]:  # with bias; no norm and no activation after it
      conv2_layers.append(SameConv3d(features, CONV2_FEATURES, kernel))
      features = CONV2_FEATURES
    self.conv2 = nn.ModuleList(conv2_layers)
    self.stage_pools, stages = [], []
    self.time_strides, self.space_strides = [2, 1, 1], [2, 2, 2]
    for stage in VARIANTS[variant]:
      pool, names = STAGES[stage]
      modules = []
      for name in names:
        modules.append(Inception(features, INCEPTION_WIDTHS[name]))
        features = modules[-1].out_features
      stages.append(nn.ModuleList(modules))
      self.stage_pools.append(pool)
      if pool is not None:
        self.time_strides.append(pool[1][0])
        self.space_strides.append(pool[1][1])
    self.stages = nn.ModuleList(stages)
    self.out_features = features

  def map_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
    """``(T', H', W')`` of the feature map of a ``frames x height x width`` clip (SAME)."""

    def pooled(size, strides):
      for stride in strides:
        size = -(-size // stride)
      return size

    return (
      pooled(frames, self.time_strides),
      pooled(height, self.space_strides),
      pooled(width, self.space_strides),
    )

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.relu(self.stem_norm(self.stem_conv(x)))
    x = max_pool_same(x, (1, 3, 3), (1, 2, 2))
    for conv in self.conv2:
      x = conv(x)
    x = max_pool_same(x, (1, 3, 3), (1, 2, 2))
    for pool, modules in zip(self.stage_pools, self.stages):
      if pool is not None:
        x = max_pool_same(x, *pool)
      for module in modules:
        x = module(x)
    return x


class Head(nn.Module):
  """The paper's regression heads (``og``, ``a``, ``b``, ``c``) on an NCDHW map -> ``[B]``."""

  def __init__(
    self, kind: str, features: int, map_shape: Sequence[int], *, dropout: float, hidden: int
  ):
    super().__init__()
    if kind not in HEADS:
      raise ValueError(f"head must be one of {HEADS}, got {kind!r}")
    self.kind = kind
    self.dropout = nn.Dropout(dropout)
    if kind == "og":  # AvgPool(2x4x4, stride 1, VALID), cut to smaller maps -> Flatten -> Dense
      self.window = tuple(min(w, s) for w, s in zip(OG_POOL, map_shape))
      pooled = [s - w + 1 for s, w in zip(map_shape, self.window)]
      self.out = nn.Linear(int(np.prod(pooled)) * features, 1)
    elif kind == "a":  # GAP -> Dropout -> Dense(1)
      self.out = nn.Linear(features, 1)
    elif kind == "b":  # Dropout -> Conv(1, 1x1x1) -> GAP
      self.out = nn.Conv3d(features, 1, 1)
    else:  # GAP -> Dense(hidden) -> ReLU -> Dropout -> Dense(1)
      self.hidden = nn.Linear(features, hidden)
      self.out = nn.Linear(hidden, 1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.kind == "og":
      x = F.avg_pool3d(x, self.window, stride=1)
      y = self.out(torch.flatten(self.dropout(x), 1))
    elif self.kind == "a":
      y = self.out(self.dropout(x.mean(dim=(2, 3, 4))))
    elif self.kind == "b":
      y = self.out(self.dropout(x)).mean(dim=(2, 3, 4))
    else:
      y = self.out(self.dropout(F.relu(self.hidden(x.mean(dim=(2, 3, 4))))))
    return y[:, 0]


class I3D(nn.Module):
  """I3D regressor: uint8 clips ``[B, T, H, W, 1]`` (the project's layout) -> EF ``[B]`` in %.

  ``shape`` is the clip's ``(T, H, W)``: only the ``og`` head, which flattens, depends on it.
  """

  def __init__(
    self,
    variant: str = "mini",
    conv2: str = "1x1x1",
    head: str = "a",
    shape: Sequence[int] = DEFAULT_SHAPE[:3],
    *,
    dropout: float = DROPOUT,
    head_hidden: int = HEAD_HIDDEN,
    ef_offset: float = EF_OFFSET,
    ef_scale: float = EF_SCALE,
  ):
    super().__init__()
    self.ef_offset, self.ef_scale = ef_offset, ef_scale
    self.channels_last = False  # set with use_channels_last()
    self.body = Body(variant, conv2)
    map_shape = self.body.map_shape(*shape)
    self.head = Head(head, self.body.out_features, map_shape, dropout=dropout, hidden=head_hidden)
    for module in self.modules():  # Keras' initialisers, as the project: Glorot kernels, 0 bias
      if isinstance(module, (nn.Conv3d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
          nn.init.zeros_(module.bias)

  def use_channels_last(self) -> I3D:
    """Keeps weights and activations channels-last in memory (``channels_last_3d``)."""
    self.channels_last = True
    return self.to(memory_format=torch.channels_last_3d)

  def forward(self, video: torch.Tensor) -> torch.Tensor:
    # The layout change happens here, inside the timed step, as in a training loop fed by the
    # project's pipeline (NTHWC uint8). With one channel the permute is a view (no copy), and
    # the scaling to [0, 1] is the device-side conversion the JAX model does too.
    x = video.permute(0, 4, 1, 2, 3)
    x = x.float() / 255.0 if not torch.is_floating_point(x) else x.float()
    if self.channels_last:
      x = x.contiguous(memory_format=torch.channels_last_3d)
    y = self.head(self.body(x))
    return self.ef_offset + self.ef_scale * y.float()


def count_params(model: nn.Module) -> int:
  """Trainable parameters (BatchNorm running statistics are buffers, not parameters)."""
  return sum(p.numel() for p in model.parameters() if p.requires_grad)


def variant_name(variant: str, conv2: str) -> str:
  """The ``variant`` string of the JAX bench's JSON line."""
  return f"i3d_{variant}_conv2_{conv2}"


def param_counts(head: str = "a", shape: Sequence[int] = DEFAULT_SHAPE[:3]) -> dict[str, int]:
  """Trainable parameters of every variant x conv2 (built on the meta device: no memory)."""
  counts = {}
  with torch.device("meta"):
    for variant in VARIANTS:
      for conv2 in CONV2_KERNELS:
        counts[variant_name(variant, conv2)] = count_params(I3D(variant, conv2, head, shape))
  return counts


class ParamMismatch(Exception):
  """The model's parameter count differs from ``--expect_params``."""


def benchmark(args) -> dict:
  """Builds the model and Adam, times one first step and then ``args.steps`` train steps."""
  device = torch.device(args.device)
  frames, height, width, channels = args.shape
  torch.manual_seed(0)
  model = I3D(args.variant, args.conv2, args.head, (frames, height, width)).to(device)
  if args.channels_last:
    model = model.use_channels_last()
  model.train()  # batch statistics and dropout, as the JAX train step
  params = count_params(model)
  if args.expect_params is not None and params != args.expect_params:
    raise ParamMismatch(
      f"error: {variant_name(args.variant, args.conv2)} head {args.head}: the PyTorch model has "
      f"{params} trainable parameters, expected {args.expect_params}"
    )
  cuda = device.type == "cuda"
  optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, fused=cuda or None)
  forward = torch.compile(model) if args.compile else model
  # Random clips and EF targets, created once and placed on the device, as the JAX bench does.
  rng = np.random.default_rng(0)
  video = torch.from_numpy(
    rng.integers(0, 256, (args.batch, frames, height, width, channels), dtype=np.uint8)
  ).to(device)
  ef = torch.from_numpy(rng.uniform(10, 80, args.batch).astype(np.float32)).to(device)

  def step() -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
      predictions = forward(video)
    loss = torch.mean(torch.square(predictions.float() - ef))
    loss.backward()
    optimizer.step()
    return loss

  def timed() -> float:
    start = time.perf_counter()
    step()
    if cuda:
      torch.cuda.synchronize(device)
    return time.perf_counter() - start

  first = timed()  # includes torch.compile's compilation and cuDNN's autotuning, if any
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  times = [timed() for _ in range(args.steps)]
  faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / args.steps
  step_s = float(np.median(times))
  return {
    "framework": f"torch-{torch.__version__}",
    "device": torch.cuda.get_device_name(device) if cuda else "cpu",
    "devices": 1,
    "variant": variant_name(args.variant, args.conv2),
    "head": args.head,
    "norm": "batch",
    "dtype": "bfloat16" if args.amp else "float32",
    "batch": args.batch,
    "shape": list(args.shape),
    "first_step_s": round(first, 3),
    "step_s": round(step_s, 4),
    "clips_per_s": round(args.batch / step_s, 3),
    "params": params,
    "threads": torch.get_num_threads(),
    "compiled": bool(args.compile),
    "channels_last": bool(args.channels_last),
    "page_faults_per_step": round(faults),
    "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
  }


def _shape(text: str) -> tuple[int, ...]:
  try:
    shape = tuple(int(s) for s in text.split(","))
  except ValueError:
    shape = ()
  if len(shape) != 4 or min(shape) < 1 or shape[3] != 1:
    raise argparse.ArgumentTypeError(f"expected T,H,W,1 (grey clips), got {text!r}")
  return shape


def _positive(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
  return value


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  counts = sub.add_parser("counts", help="trainable parameters of every variant x conv2")
  time_ = sub.add_parser("time", help="train-step throughput of one model")
  for p in (counts, time_):
    p.add_argument("--head", choices=HEADS, default="a")
    p.add_argument(
      "--shape", type=_shape, default=DEFAULT_SHAPE, help="T,H,W,1 (default %(default)s)"
    )
  time_.add_argument(
    "--variant",
    default="mini",
    help=f"one of {', '.join(VARIANTS)}, or the bench's full name (i3d_mini_conv2_3x3x3)",
  )
  time_.add_argument("--conv2", choices=sorted(CONV2_KERNELS), default=None, help="default 1x1x1")
  time_.add_argument("--batch", type=_positive, default=4)
  time_.add_argument("--steps", type=_positive, default=5, help="timed steps after the first")
  time_.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
  time_.add_argument("--amp", action="store_true", help="bfloat16 autocast, float32 parameters")
  time_.add_argument("--compile", action="store_true", help="torch.compile the model")
  time_.add_argument(
    "--channels_last", action="store_true", help="channels_last_3d memory format (NDHWC in memory)"
  )
  time_.add_argument("--threads", type=_positive, default=None, help="torch.set_num_threads")
  time_.add_argument(
    "--expect_params", type=int, default=None, help="exit 2 unless the model has this many"
  )
  args = parser.parse_args(argv)
  if args.command == "time":
    _split_variant(parser, args)
  return args


def _split_variant(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """Accepts ``--variant=i3d_<variant>_conv2_<conv2>``, the JAX bench's name, as well."""
  names = {variant_name(v, c): (v, c) for v in VARIANTS for c in CONV2_KERNELS}
  if args.variant in names:
    variant, conv2 = names[args.variant]
    if args.conv2 not in (None, conv2):
      parser.error(f"--variant={args.variant} and --conv2={args.conv2} disagree")
    args.variant, args.conv2 = variant, conv2
  elif args.variant not in VARIANTS:
    parser.error(f"--variant: expected one of {sorted(VARIANTS)} or {sorted(names)}")
  args.conv2 = args.conv2 or "1x1x1"


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  if args.command == "counts":
    print(json.dumps(param_counts(args.head, args.shape[:3])))
    return 0
  if args.threads:
    torch.set_num_threads(args.threads)
  try:
    result = benchmark(args)
  except ParamMismatch as e:
    print(e, file=sys.stderr)
    return 2
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
