"""DeepLabV3-ResNet50 (lvef_jax/models/deeplabv3.py) computes what torchvision's does, and loads
its weights.

The reference below is ``torchvision.models.segmentation.deeplabv3_resnet50`` in plain
``torch.nn`` (torchvision is not a dependency): ``resnet50(replace_stride_with_dilation=[False,
True, True])`` up to ``layer4`` as ``IntermediateLayerGetter`` keeps it, ``DeepLabHead`` and the
optional ``FCNHead`` auxiliary classifier, the same modules under the same names, so its
``state_dict`` is torchvision's and EchoNet-Dynamic's layout, tensor for tensor.
"""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lvef_jax import models, sharding
from lvef_jax.errors import ConfigError
from lvef_jax.evaluation import beat_to_beat
from lvef_jax.models import deeplabv3, torch_import
from lvef_jax.training import importer
from tests.conftest import load_config
from tests.torch_weights import assert_loaded, capture_logs, eval_forward

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

# torchvision's count for its COCO weights (21 classes, auxiliary classifier): the num_params
# of DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1.
COCO_PARAMS = 42_004_074
COCO_CLASSES = 21
# deeplabv3_resnet50(num_classes=1, aux_loss=False), EchoNet-Dynamic's: ResNet-50 without its
# fc (23,508,032) and the head (ASPP 15,535,104; 3x3 589,824; BN 512; output 257).
ECHONET_PARAMS = 39_633_729

BATCH, SIZE = 2, 64  # layer4's maps are 8x8: the 3x3 atrous branches still see neighbours
MEAN, STD = (30.0, 31.0, 32.0), (50.0, 51.0, 52.0)
LOGIT_SPREAD = 5.0  # the reference's logits: standard deviation over its calibration frames
LOGIT_TOLERANCE = 1e-3  # float32; measured 1.7e-4 (XLA) and 2.2e-4 (the CPU's forms)


# --- torchvision's DeepLabV3-ResNet50, module for module ---------------------------------------


class Bottleneck(nn.Module):
  def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1):
    super().__init__()
    width = planes
    self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(
      width, width, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
    )
    self.bn2 = nn.BatchNorm2d(width)
    self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    identity = x if self.downsample is None else self.downsample(x)
    return self.relu(out + identity)


class ResNet50Features(nn.Module):
  """ResNet-50 with stride replaced by dilation in layer3 and layer4, only the children that
  IntermediateLayerGetter(return_layers={"layer4": "out"}) keeps (no avgpool, no fc)."""

  def __init__(self, dilate=(False, True, True)):
    super().__init__()
    self.inplanes, self.dilation = 64, 1
    self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    self.layer1 = self._make_layer(64, 3)
    self.layer2 = self._make_layer(128, 4, stride=2, dilate=dilate[0])
    self.layer3 = self._make_layer(256, 6, stride=2, dilate=dilate[1])
    self.layer4 = self._make_layer(512, 3, stride=2, dilate=dilate[2])
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
      elif isinstance(m, nn.BatchNorm2d):
        nn.init.constant_(m.weight, 1)
        nn.init.constant_(m.bias, 0)

  def _make_layer(self, planes, blocks, stride=1, dilate=False):
    previous_dilation = self.dilation
    if dilate:
      self.dilation *= stride
      stride = 1
    downsample = None
    if stride != 1 or self.inplanes != planes * 4:
      downsample = nn.Sequential(
        nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
        nn.BatchNorm2d(planes * 4),
      )
    layers = [Bottleneck(self.inplanes, planes, stride, downsample, previous_dilation)]
    self.inplanes = planes * 4
    layers += [Bottleneck(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class ASPPConv(nn.Sequential):
  def __init__(self, in_channels, out_channels, dilation):
    super().__init__(
      nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
      nn.BatchNorm2d(out_channels),
      nn.ReLU(),
    )


class ASPPPooling(nn.Sequential):
  def __init__(self, in_channels, out_channels):
    super().__init__(
      nn.AdaptiveAvgPool2d(1),
      nn.Conv2d(in_channels, out_channels, 1, bias=False),
      nn.BatchNorm2d(out_channels),
      nn.ReLU(),
    )

  def forward(self, x):
    size = x.shape[-2:]
    for module in self:
      x = module(x)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
  def __init__(self, in_channels, rates, out_channels=256):
    super().__init__()
    first = nn.Sequential(
      nn.Conv2d(in_channels, out_channels, 1, bias=False),
      nn.BatchNorm2d(out_channels),
      nn.ReLU(),
    )
    atrous = [ASPPConv(in_channels, out_channels, rate) for rate in rates]
    self.convs = nn.ModuleList([first, *atrous, ASPPPooling(in_channels, out_channels)])
    self.project = nn.Sequential(
      nn.Conv2d(len(self.convs) * out_channels, out_channels, 1, bias=False),
      nn.BatchNorm2d(out_channels),
      nn.ReLU(),
      nn.Dropout(0.5),
    )

  def forward(self, x):
    return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class DeepLabHead(nn.Sequential):
  def __init__(self, in_channels, num_classes):
    super().__init__(
      ASPP(in_channels, [12, 24, 36]),
      nn.Conv2d(256, 256, 3, padding=1, bias=False),
      nn.BatchNorm2d(256),
      nn.ReLU(),
      nn.Conv2d(256, num_classes, 1),
    )


class FCNHead(nn.Sequential):
  def __init__(self, in_channels, channels):
    inter = in_channels // 4
    super().__init__(
      nn.Conv2d(in_channels, inter, 3, padding=1, bias=False),
      nn.BatchNorm2d(inter),
      nn.ReLU(),
      nn.Dropout(0.1),
      nn.Conv2d(inter, channels, 1),
    )


class DeepLabV3(nn.Module):
  """``deeplabv3_resnet50(num_classes=..., aux_loss=...)``; ``forward`` gives the ``"out"``
  logits upsampled to the input."""

  def __init__(self, num_classes=COCO_CLASSES, aux_loss=False):
    super().__init__()
    self.backbone = ResNet50Features()
    self.classifier = DeepLabHead(2048, num_classes)
    self.aux_classifier = FCNHead(1024, num_classes) if aux_loss else None

  def forward(self, x):
    y = self.classifier(self.backbone(x))
    return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


# --- fixtures and helpers ------------------------------------------------------------------------


def echonet_reference(seed: int = 0) -> DeepLabV3:
  """``deeplabv3_resnet50(aux_loss=False)`` with EchoNet-Dynamic's ``classifier[-1] =
  Conv2d(256, 1, 1)``, in eval mode, with random BatchNorm affine parameters and running
  statistics (those of a few random frames, each perturbed, so that BN is tested with
  statistics that keep the activations in range), and the output layer scaled so that the
  logits of those frames have mean 0 and standard deviation ``LOGIT_SPREAD``, as a trained
  model's spread around the LV's border."""
  torch.manual_seed(seed)
  net = DeepLabV3(aux_loss=False)
  net.classifier[-1] = nn.Conv2d(256, 1, kernel_size=1)
  generator = torch.Generator().manual_seed(seed + 1)
  norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
  with torch.no_grad():
    for m in norms:
      m.weight.uniform_(0.5, 1.5, generator=generator)
      m.bias.normal_(0.0, 0.2, generator=generator)
      m.momentum = None  # running statistics: the plain average over the calibration batch
    net.train()
    calibration = torch_input(np.concatenate([grey_frames(seed + 10), grey_frames(seed + 11)]))
    net(calibration)
    for m in norms:
      m.momentum = 0.1
      m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.7, 1.4, generator=generator))
      noise = torch.randn(m.running_mean.shape, generator=generator)
      m.running_mean.add_(0.2 * noise * m.running_var.sqrt())
      m.num_batches_tracked.fill_(123)
    net.eval()
    output = net.classifier[-1]
    y = net(calibration) - output.bias
    scale = LOGIT_SPREAD / y.std()
    output.weight.mul_(scale)
    output.bias.fill_(-float(scale * y.mean()))
  return net


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The torch reference, its state_dict saved as torchvision's layout and as an
  EchoNet-Dynamic checkpoint (DataParallel's ``module.`` names inside a training dict). The
  files (160 MB each) are removed afterwards."""
  net = echonet_reference()
  state_dict = net.state_dict()
  folder = tmp_path_factory.mktemp("deeplabv3")
  plain, echonet = folder / "deeplabv3.pth", folder / "deeplabv3_resnet50_random.pt"
  torch.save(state_dict, plain)
  checkpoint = {
    "epoch": 3,
    "state_dict": {f"module.{name}": tensor for name, tensor in state_dict.items()},
    "opt_dict": {},
    "scheduler_dict": {},
    "best_loss": 0.1,
    "loss": 0.1,
  }
  torch.save(checkpoint, echonet)
  yield types.SimpleNamespace(net=net, state_dict=state_dict, plain=plain, echonet=echonet)
  for path in (plain, echonet):
    path.unlink(missing_ok=True)


@pytest.fixture
def saved(tmp_path):
  """``saved(state_dict) -> path`` of it written by ``torch.save``; removed after the test."""
  paths = []

  def save(state_dict) -> str:
    path = tmp_path / f"weights{len(paths)}.pth"
    torch.save(state_dict, path)
    paths.append(path)
    return path

  yield save
  for path in paths:
    path.unlink(missing_ok=True)


def build(kernels: str = "xla", seed: int = 0, **overrides) -> deeplabv3.Model:
  kwargs = dict(
    clip_frames=1,
    image_size=SIZE,
    input_mean=MEAN,
    input_std=STD,
    init_from="",
    dtype="float32",
    bn_momentum=0.9,
    rngs=nnx.Rngs(params=jax.random.key(seed)),
    ops=models.ops_for(kernels),
  )
  return deeplabv3.Model(**{**kwargs, **overrides})


def grey_frames(seed: int = 0, size: int = SIZE) -> np.ndarray:
  """``BATCH`` uint8 grey frames ``[B, H, W, 1]``, each darker than the one before."""
  noise = np.random.default_rng(seed).integers(0, 256, (BATCH, size, size, 1))
  return (noise // np.arange(1, 2 * BATCH, 2).reshape(-1, 1, 1, 1)).astype(np.uint8)


def torch_input(frames: np.ndarray) -> "torch.Tensor":
  """torchvision's input: the grey channel repeated to three, each normalised, [B, 3, H, W]."""
  x = torch.from_numpy(frames.astype(np.float32)).permute(0, 3, 1, 2).repeat(1, 3, 1, 1)
  mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
  return (x - mean) / std


def torch_forward(net, frames: np.ndarray) -> np.ndarray:
  """The reference's logits ``[B, H, W]``."""
  with torch.no_grad():
    return net(torch_input(frames))[:, 0].numpy()


# --- tests ---------------------------------------------------------------------------------------


def test_every_tensor_has_torchvisions_name_and_shape(reference):
  model = jax.eval_shape(build)
  targets = model.torch_parameters()
  expected = {
    name: tuple(t.shape)
    for name, t in reference.state_dict.items()
    if not name.endswith("num_batches_tracked")
  }
  assert sorted(targets) == sorted(expected)
  for name, (module, attribute) in targets.items():
    shape = torch_import.to_torch_shape(getattr(module, attribute).shape, attribute)
    assert shape == expected[name], name
  for name in (
    "backbone.conv1.weight",
    "backbone.bn1.running_mean",
    "backbone.layer1.0.downsample.0.weight",
    "backbone.layer4.2.bn3.running_var",
    "classifier.0.convs.0.0.weight",
    "classifier.0.convs.3.1.bias",
    "classifier.0.convs.4.1.weight",
    "classifier.0.convs.4.2.running_mean",
    "classifier.0.project.0.weight",
    "classifier.1.weight",
    "classifier.2.weight",
    "classifier.4.weight",
    "classifier.4.bias",
  ):
    assert name in targets, name


def test_dilation_and_parameter_count_are_torchvisions(reference):
  """Output stride 8 with layer3 dilated 1 then 2 and layer4 2 then 4 (torchvision's rule);
  the parameter count is the reference's, and with COCO's 21 classes and the auxiliary
  classifier, torchvision's published one."""
  model = jax.eval_shape(build)
  dilations = [
    [(block.conv2.kernel_dilation, block.conv2.strides) for block in stage]
    for stage in model.stages
  ]
  torch_dilations = [
    [(block.conv2.dilation, block.conv2.stride) for block in getattr(reference.net.backbone, f)]
    for f in ("layer1", "layer2", "layer3", "layer4")
  ]
  assert dilations == torch_dilations
  assert [d[0] for d, _ in dilations[2]] == [1, 2, 2, 2, 2, 2]
  assert [d[0] for d, _ in dilations[3]] == [2, 4, 4]
  ours = models.count_params(model)
  assert ours == sum(p.numel() for p in reference.net.parameters()) == ECHONET_PARAMS
  with torch.device("meta"):  # torchvision's COCO layout: shapes only
    coco = DeepLabV3(num_classes=COCO_CLASSES, aux_loss=True)
  assert sum(p.numel() for p in coco.parameters()) == COCO_PARAMS


@pytest.mark.parametrize(
  "kernels, file", [("xla", "plain"), ("cpu", "echonet")], ids=["xla-torchvision", "cpu-echonet"]
)
def test_logits_match_torchvisions(reference, kernels, file):
  """The same logits as the torch network from the same grey frames: XLA's convolutions (the
  GPU path) from a torchvision state_dict, the CPU's forms from an EchoNet-Dynamic checkpoint."""
  model = build(kernels)
  torch_import.load_into(model, reference.plain if file == "plain" else reference.echonet)
  frames = grey_frames()
  expected = torch_forward(reference.net, frames)
  assert np.ptp(expected) > 1.0  # the logits depend on the input and the position
  got = np.asarray(eval_forward(model, jnp.asarray(frames)))
  assert got.shape == (BATCH, SIZE, SIZE) and got.dtype == np.float32
  np.testing.assert_allclose(got, expected, rtol=0, atol=LOGIT_TOLERANCE)
  # Pixels given as floats in 0-1 are the same input.
  from_floats = model.normalize(jnp.asarray(frames, jnp.float32) / 255.0)
  np.testing.assert_allclose(from_floats, model.normalize(jnp.asarray(frames)), rtol=0, atol=1e-5)


def test_an_imported_echonet_file_is_a_segmentation_run_without_data(reference, tmp_path):
  """``--mode=import`` of EchoNet-Dynamic's segmentation checkpoint, its normalisation given:
  the run directory segments as the torch network does (the masks of its positive logits)."""
  config = load_config("segmentation")
  config.data.image_size = SIZE
  config.eval.batch_size = 8  # one frame per fake device
  config.model.update(init_from=str(reference.echonet), input_mean=list(MEAN), input_std=list(STD))
  workdir = importer.import_run(config, tmp_path / "imported")
  segmenter = beat_to_beat.Segmenter(workdir, sharding.make_mesh())
  frames = grey_frames()
  (masks,) = segmenter.masks(frames[..., 0])
  expected = torch_forward(reference.net, frames)
  clear = np.abs(expected) > 10 * LOGIT_TOLERANCE  # away from the decision boundary
  assert masks.shape == (BATCH, SIZE, SIZE) and 0 < masks.mean() < 1
  np.testing.assert_array_equal(masks[clear], expected[clear] > 0)


@pytest.mark.parametrize(
  "source, size", [((7, 5), (50, 33)), ((8, 8), (64, 64)), ((9, 9), (65, 65)), ((6, 7), (3, 4))]
)
def test_resize_is_torchs_bilinear(source, size):
  x = np.random.default_rng(0).normal(size=(2, *source, 3)).astype(np.float32)
  expected = F.interpolate(
    torch.from_numpy(x).permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False
  )
  got = deeplabv3.resize_bilinear(jnp.asarray(x), size)
  np.testing.assert_allclose(got, expected.permute(0, 2, 3, 1).numpy(), rtol=0, atol=1e-5)


def test_a_coco_file_loads_all_but_its_classifier_and_aux_classifier(monkeypatch, saved):
  """torchvision's COCO layout (21 classes, an auxiliary FCNHead): the output layer keeps its
  fresh initialisation, the auxiliary classifier is skipped, everything else loads."""
  torch.manual_seed(1)
  coco = DeepLabV3(num_classes=COCO_CLASSES, aux_loss=True).state_dict()
  path = saved(coco)
  model = build()
  fresh = [np.array(model.output.kernel[...]), np.array(model.output.bias[...])]
  logged = capture_logs(monkeypatch)
  torch_import.load_into(model, path)
  head = "classifier.4.weight (21, 256, 1, 1), classifier.4.bias (21,) skipped"
  assert any(head in line for line in logged), logged
  aux = [line for line in logged if "aux_classifier.0.weight (256, 1024, 3, 3)" in line]
  assert len(aux) == 1 and "aux_classifier.4.bias (21,)" in aux[0], logged
  loaded = len(model.torch_parameters()) - 2
  assert any(f"{loaded} tensors loaded" in line for line in logged), logged
  np.testing.assert_array_equal(np.array(model.output.kernel[...]), fresh[0])
  np.testing.assert_array_equal(np.array(model.output.bias[...]), fresh[1])
  assert_loaded(model, coco, but=("classifier.4.weight", "classifier.4.bias"))


def test_an_aux_classifier_is_skipped(reference, monkeypatch, saved):
  """EchoNet-Dynamic's layout trained with ``aux_loss=True``: all but the auxiliary
  classifier loads, the one-channel output layer too."""
  state_dict = dict(reference.state_dict)
  aux = FCNHead(1024, 1).state_dict()
  state_dict.update({f"aux_classifier.{name}": tensor for name, tensor in aux.items()})
  path = saved({f"module.{name}": tensor for name, tensor in state_dict.items()})
  model = build()
  logged = capture_logs(monkeypatch)
  torch_import.load_into(model, path)
  assert any("aux_classifier.4.weight (1, 256, 1, 1)" in line for line in logged), logged
  assert any(f"{len(model.torch_parameters())} tensors loaded" in line for line in logged)
  assert_loaded(model, reference.state_dict)


def test_a_mismatched_file_loads_nothing_and_names_every_mismatch(reference, saved):
  state_dict = dict(reference.state_dict)
  state_dict["backbone.layer3.1.bn2.weight"] = torch.ones(255)  # the model's is (256,)
  state_dict["classifier.0.project.0.weight"] = torch.ones(256, 1024, 1, 1)
  path = saved(state_dict)
  model = jax.eval_shape(build)  # nothing is written when any tensor mismatches
  with pytest.raises(ConfigError) as error:
    torch_import.load_into(model, path)
  message = str(error.value)
  assert "2 tensor(s) do not match" in message
  assert "backbone.layer3.1.bn2.weight: shape (255,) in the file, the model's is (256,)" in message
  assert (
    "classifier.0.project.0.weight: shape (256, 1024, 1, 1) in the file, "
    "the model's is (256, 1280, 1, 1)"
  ) in message


def test_arch_and_inputs_are_checked():
  with pytest.raises(ConfigError, match="model.arch must be one of resnet50"):
    jax.eval_shape(lambda: build(arch="resnet101"))
  with pytest.raises(ConfigError, match="model.input_std must be positive"):
    jax.eval_shape(lambda: build(input_std=0.0))


def test_a_jitted_train_step_has_finite_gradients():
  """Train mode (batch statistics, dropout from the key) forward and backward on tiny frames:
  finite gradients for every parameter, the BatchNorm statistics move, dropout follows the
  key."""
  model = build(input_mean=None, input_std=None)
  frames = jnp.asarray(grey_frames(size=32))
  masks = jnp.asarray(np.random.default_rng(2).random((BATCH, 32, 32)) > 0.5, jnp.float32)

  @nnx.jit
  def step(model, key):
    def loss_fn(model):
      logits = model(frames, train=True, dropout_key=key)
      bce = jnp.maximum(logits, 0) - logits * masks + jnp.log1p(jnp.exp(-jnp.abs(logits)))
      return jnp.mean(bce) + model.regularization_loss(), logits

    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    return loss, logits, grads

  running_mean = np.array(model.bn1.mean[...])
  loss, logits, grads = step(model, jax.random.key(0))
  assert logits.shape == (BATCH, 32, 32) and np.isfinite(float(loss))
  leaves = jax.tree.leaves(grads)
  assert len(leaves) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert float(jnp.abs(grads["output"]["kernel"][...]).sum()) > 0
  assert float(jnp.abs(grads["conv1"]["kernel"][...]).sum()) > 0
  assert not np.allclose(np.array(model.bn1.mean[...]), running_mean)
  _, other, _ = step(model, jax.random.key(1))
  assert not np.allclose(other, logits)  # another dropout mask
  assert model.trainable(("conv1", "kernel"))
