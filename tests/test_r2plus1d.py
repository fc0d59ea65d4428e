"""The video ResNets (configs/r2plus1d.py) compute what torchvision's do, and load their weights.

The reference below is torchvision's ``torchvision/models/video/resnet.py`` in plain
``torch.nn`` (torchvision is not a dependency): the same modules under the same names, so its
``state_dict`` is torchvision's and EchoNet-Dynamic's layout, tensor for tensor.
"""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lvef_jax import models
from lvef_jax.errors import ConfigError
from lvef_jax.models import r2plus1d, torch_import
from lvef_jax.reporting import summary
from tests.conftest import load_config
from tests.torch_weights import arrays, assert_loaded, capture_logs, eval_forward

torch = pytest.importorskip("torch")
nn = torch.nn

# torchvision's own counts, with the 400-class Kinetics classifier (the ``num_params`` of
# R2Plus1D_18_Weights, R3D_18_Weights and MC3_18_Weights in torchvision/models/video/resnet.py).
TORCHVISION_PARAMS = {"r2plus1d_18": 31_505_325, "r3d_18": 33_371_472, "mc3_18": 11_695_440}
KINETICS_CLASSES = 400
# The same networks with EchoNet-Dynamic's Linear(512, 1) in place of the classifier.
EF_PARAMS = {"r2plus1d_18": 31_300_638, "r3d_18": 33_166_785, "mc3_18": 11_490_753}
ARCHS = tuple(TORCHVISION_PARAMS)

BATCH, FRAMES, SIZE = 2, 8, 32  # small clips: every stage still halves time and space
MEAN, STD = (30.0, 31.0, 32.0), (50.0, 51.0, 52.0)
EF_BIAS = 55.6  # EchoNet-Dynamic's initial output bias (configs/r2plus1d.py's ef_offset)
EF_TOLERANCE = 1e-3  # EF points, float32


# --- torchvision's video ResNets, module for module --------------------------------------------


class Conv3DSimple(nn.Conv3d):
  def __init__(self, in_planes, out_planes, midplanes=None, stride=1, padding=1):
    super().__init__(
      in_channels=in_planes,
      out_channels=out_planes,
      kernel_size=(3, 3, 3),
      stride=stride,
      padding=padding,
      bias=False,
    )

  @staticmethod
  def get_downsample_stride(stride):
    return stride, stride, stride


class Conv2Plus1D(nn.Sequential):
  def __init__(self, in_planes, out_planes, midplanes, stride=1, padding=1):
    super().__init__(
      nn.Conv3d(
        in_planes,
        midplanes,
        kernel_size=(1, 3, 3),
        stride=(1, stride, stride),
        padding=(0, padding, padding),
        bias=False,
      ),
      nn.BatchNorm3d(midplanes),
      nn.ReLU(inplace=True),
      nn.Conv3d(
        midplanes,
        out_planes,
        kernel_size=(3, 1, 1),
        stride=(stride, 1, 1),
        padding=(padding, 0, 0),
        bias=False,
      ),
    )

  @staticmethod
  def get_downsample_stride(stride):
    return stride, stride, stride


class Conv3DNoTemporal(nn.Conv3d):
  def __init__(self, in_planes, out_planes, midplanes=None, stride=1, padding=1):
    super().__init__(
      in_channels=in_planes,
      out_channels=out_planes,
      kernel_size=(1, 3, 3),
      stride=(1, stride, stride),
      padding=(0, padding, padding),
      bias=False,
    )

  @staticmethod
  def get_downsample_stride(stride):
    return 1, stride, stride


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, conv_builder, stride=1, downsample=None):
    # One middle width for both convolutions, from inplanes (torchvision's, as here).
    midplanes = (inplanes * planes * 3 * 3 * 3) // (inplanes * 3 * 3 + 3 * planes)
    super().__init__()
    self.conv1 = nn.Sequential(
      conv_builder(inplanes, planes, midplanes, stride),
      nn.BatchNorm3d(planes),
      nn.ReLU(inplace=True),
    )
    self.conv2 = nn.Sequential(conv_builder(planes, planes, midplanes), nn.BatchNorm3d(planes))
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample
    self.stride = stride

  def forward(self, x):
    residual = x if self.downsample is None else self.downsample(x)
    return self.relu(self.conv2(self.conv1(x)) + residual)


class BasicStem(nn.Sequential):
  def __init__(self):
    super().__init__(
      nn.Conv3d(3, 64, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
      nn.BatchNorm3d(64),
      nn.ReLU(inplace=True),
    )


class R2Plus1dStem(nn.Sequential):
  def __init__(self):
    super().__init__(
      nn.Conv3d(3, 45, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
      nn.BatchNorm3d(45),
      nn.ReLU(inplace=True),
      nn.Conv3d(45, 64, kernel_size=(3, 1, 1), stride=(1, 1, 1), padding=(1, 0, 0), bias=False),
      nn.BatchNorm3d(64),
      nn.ReLU(inplace=True),
    )


class VideoResNet(nn.Module):
  def __init__(self, block, conv_makers, layers, stem, num_classes=400):
    super().__init__()
    self.inplanes = 64
    self.stem = stem()
    self.layer1 = self._make_layer(block, conv_makers[0], 64, layers[0], stride=1)
    self.layer2 = self._make_layer(block, conv_makers[1], 128, layers[1], stride=2)
    self.layer3 = self._make_layer(block, conv_makers[2], 256, layers[2], stride=2)
    self.layer4 = self._make_layer(block, conv_makers[3], 512, layers[3], stride=2)
    self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
    self.fc = nn.Linear(512 * block.expansion, num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv3d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
      elif isinstance(m, nn.BatchNorm3d):
        nn.init.constant_(m.weight, 1)
        nn.init.constant_(m.bias, 0)
      elif isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, 0, 0.01)
        nn.init.constant_(m.bias, 0)

  def forward(self, x):
    x = self.stem(x)
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(self.avgpool(x).flatten(1))

  def _make_layer(self, block, conv_builder, planes, blocks, stride=1):
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(
        nn.Conv3d(
          self.inplanes,
          planes * block.expansion,
          kernel_size=1,
          stride=conv_builder.get_downsample_stride(stride),
          bias=False,
        ),
        nn.BatchNorm3d(planes * block.expansion),
      )
    layers = [block(self.inplanes, planes, conv_builder, stride, downsample)]
    self.inplanes = planes * block.expansion
    layers += [block(self.inplanes, planes, conv_builder) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


TORCH_ARCHS = {  # torchvision's r2plus1d_18, r3d_18 and mc3_18
  "r2plus1d_18": ([Conv2Plus1D] * 4, R2Plus1dStem),
  "r3d_18": ([Conv3DSimple] * 4, BasicStem),
  "mc3_18": ([Conv3DSimple] + [Conv3DNoTemporal] * 3, BasicStem),
}


def torch_video_resnet(arch: str, num_classes: int = KINETICS_CLASSES) -> "VideoResNet":
  conv_makers, stem = TORCH_ARCHS[arch]
  return VideoResNet(BasicBlock, conv_makers, [2, 2, 2, 2], stem, num_classes=num_classes)


# --- fixtures and helpers ------------------------------------------------------------------------


def echonet_reference(arch: str, seed: int = 0) -> "VideoResNet":
  """torchvision's ``arch`` as EchoNet-Dynamic sets it up (fc = Linear(512, 1), bias 55.6), in
  eval mode, with random BatchNorm affine parameters and running statistics, so that BN is
  tested. The statistics are those of a few random clips, each perturbed (purely random ones
  would leave the output all but independent of the input), and the output layer's weights
  are 20 times torch's initial ones, so EF spreads over tens of points as a trained model's."""
  torch.manual_seed(seed)
  net = torch_video_resnet(arch)
  net.fc = nn.Linear(net.fc.in_features, 1)
  generator = torch.Generator().manual_seed(seed + 1)
  norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm3d)]
  with torch.no_grad():
    net.fc.weight.mul_(20.0)
    net.fc.bias[0] = EF_BIAS
    for m in norms:
      m.weight.uniform_(0.5, 1.5, generator=generator)
      m.bias.normal_(0.0, 0.2, generator=generator)
      m.momentum = None  # running statistics: the plain average over the calibration batch
    net.train()
    net(torch.randn(4, 3, FRAMES, SIZE, SIZE, generator=generator))
    for m in norms:
      m.momentum = 0.1
      m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.7, 1.4, generator=generator))
      noise = torch.randn(m.running_mean.shape, generator=generator)
      m.running_mean.add_(0.2 * noise * m.running_var.sqrt())
      m.num_batches_tracked.fill_(123)
  return net.eval()


@pytest.fixture(scope="module", params=ARCHS)
def reference(request, tmp_path_factory):
  """One arch's torch reference, its state_dict saved as torchvision's layout and as an
  EchoNet-Dynamic checkpoint (DataParallel's ``module.`` names inside a training dict)."""
  arch = request.param
  net = echonet_reference(arch)
  state_dict = net.state_dict()
  folder = tmp_path_factory.mktemp(arch)
  plain, echonet = folder / f"{arch}.pth", folder / f"{arch}_echonet.pt"
  torch.save(state_dict, plain)
  checkpoint = {
    "epoch": 3,
    "state_dict": {f"module.{name}": tensor for name, tensor in state_dict.items()},
    "opt_dict": {},
    "scheduler_dict": {},
    "best_loss": 1.0,
    "loss": 1.0,
  }
  torch.save(checkpoint, echonet)
  return types.SimpleNamespace(
    arch=arch, net=net, state_dict=state_dict, plain=plain, echonet=echonet
  )


def config_for(arch: str, kernels: str = "xla", init_from: str = ""):
  config = load_config("r2plus1d", f"arch={arch}")  # conftest: compute.kernels=xla
  config.compute.kernels = kernels
  config.data.update(clip_frames=FRAMES, image_size=SIZE)
  config.model.update(input_mean=MEAN, input_std=STD, init_from=init_from)
  return config


def shapes_only(config):
  """The model's parameter shapes without drawing them (fast)."""
  return jax.eval_shape(lambda: models.create_model(config))


def grey_clip(seed: int = 0) -> np.ndarray:
  """``BATCH`` uint8 grey clips ``[B, T, H, W, 1]``, each darker than the one before."""
  noise = np.random.default_rng(seed).integers(0, 256, (BATCH, FRAMES, SIZE, SIZE, 1))
  return (noise // np.arange(1, 2 * BATCH, 2).reshape(-1, 1, 1, 1, 1)).astype(np.uint8)


def torch_forward(net, clip: np.ndarray) -> np.ndarray:
  """torchvision's input: the grey channel repeated to three, each normalised, [B, 3, T, H, W]."""
  x = torch.from_numpy(clip.astype(np.float32)).permute(0, 4, 1, 2, 3).repeat(1, 3, 1, 1, 1)
  mean, std = torch.tensor(MEAN).view(1, 3, 1, 1, 1), torch.tensor(STD).view(1, 3, 1, 1, 1)
  with torch.no_grad():
    return net((x - mean) / std)[:, 0].numpy()


# --- tests ---------------------------------------------------------------------------------------


def test_every_tensor_has_torchvisions_name_and_shape(reference):
  model = shapes_only(config_for(reference.arch))
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


def test_parameter_counts_are_torchvisions(reference):
  arch = reference.arch
  ours = models.count_params(shapes_only(config_for(arch)))
  assert ours == sum(p.numel() for p in reference.net.parameters()) == EF_PARAMS[arch]
  kinetics_fc = KINETICS_CLASSES * 512 + KINETICS_CLASSES
  assert ours - (512 + 1) + kinetics_fc == TORCHVISION_PARAMS[arch]
  with torch.device("meta"):  # torchvision's own classifier: shapes only
    kinetics = torch_video_resnet(arch)
  assert sum(p.numel() for p in kinetics.parameters()) == TORCHVISION_PARAMS[arch]


@pytest.mark.parametrize(
  "kernels, file", [("xla", "plain"), ("cpu", "echonet")], ids=["xla-torchvision", "cpu-echonet"]
)
def test_outputs_match_torchvisions(reference, kernels, file):
  """The same EF as the torch network from the same grey clip: XLA's convolutions (the GPU
  path) from a torchvision state_dict, the CPU's forms from an EchoNet-Dynamic checkpoint
  (through ``model.init_from``, as training starts)."""
  path = reference.plain if file == "plain" else reference.echonet
  config = config_for(reference.arch, kernels, init_from=str(path))
  model = models.create_model(config)
  models.load_initial_weights(model, config.model)
  clip = grey_clip()
  expected = torch_forward(reference.net, clip)
  assert np.ptp(expected) > 1.0  # the output depends on the input, not just on the bias
  got = np.asarray(eval_forward(model, jnp.asarray(clip)))
  assert got.shape == (BATCH,) and got.dtype == np.float32
  np.testing.assert_allclose(got, expected, rtol=0, atol=EF_TOLERANCE)
  # Pixels given as floats in 0-1 (as the data pipeline may hand them) are the same input.
  normalized = model.normalize(jnp.asarray(clip))
  assert normalized.shape == (*clip.shape[:-1], 3)
  from_floats = model.normalize(jnp.asarray(clip, jnp.float32) / 255.0)
  np.testing.assert_allclose(from_floats, normalized, rtol=0, atol=1e-5)


def test_a_kinetics_file_loads_all_but_the_classifier(tmp_path, monkeypatch):
  arch = "mc3_18"
  torch.manual_seed(1)
  kinetics = torch_video_resnet(arch)  # torchvision's 400-class layout
  path = tmp_path / f"{arch}-kinetics.pth"
  torch.save(kinetics.state_dict(), path)
  model = models.create_model(config_for(arch))
  fresh_kernel = np.array(model.fc.kernel[...])
  logged = capture_logs(monkeypatch)
  torch_import.load_into(model, path)
  assert any("fc.weight (400, 512), fc.bias (400,) skipped" in line for line in logged), logged
  loaded = len(model.torch_parameters()) - 2
  assert any(f"{loaded} tensors loaded" in line for line in logged), logged
  np.testing.assert_array_equal(np.array(model.fc.kernel[...]), fresh_kernel)
  np.testing.assert_array_equal(np.array(model.fc.bias[...]), [np.float32(EF_BIAS)])
  assert_loaded(model, kinetics.state_dict(), but=("fc.weight", "fc.bias"))


def test_a_mismatched_file_loads_nothing_and_names_every_mismatch(tmp_path):
  arch = "mc3_18"
  state_dict = dict(echonet_reference(arch).state_dict())
  state_dict["layer1.0.conv1.1.weight"] = torch.ones(63)  # the model's is (64,)
  del state_dict["layer2.0.downsample.0.weight"]
  state_dict["layer5.0.conv1.0.weight"] = torch.ones(3)
  path = tmp_path / "mismatched.pth"
  torch.save(state_dict, path)
  model = models.create_model(config_for(arch))
  before = arrays(model)
  with pytest.raises(ConfigError) as error:
    torch_import.load_into(model, path)
  message = str(error.value)
  assert "3 tensor(s) do not match" in message
  assert "layer1.0.conv1.1.weight: shape (63,) in the file, the model's is (64,)" in message
  assert "layer2.0.downsample.0.weight: not in the file" in message
  assert "layer5.0.conv1.0.weight (3,): no such parameter in the model" in message
  after = arrays(model)
  assert len(before) == len(after)
  for old, new in zip(before, after):
    np.testing.assert_array_equal(old, new)


def test_unreadable_files_are_config_errors(tmp_path):
  model = shapes_only(config_for("mc3_18"))
  with pytest.raises(ConfigError, match="no such file"):
    torch_import.load_into(model, tmp_path / "absent.pth")
  text = tmp_path / "weights.txt"
  text.write_text("not a torch file\n")
  with pytest.raises(ConfigError, match="not a PyTorch weights file"):
    torch_import.load_into(model, text)
  listed = tmp_path / "list.pt"
  torch.save([torch.zeros(2)], listed)
  with pytest.raises(ConfigError, match="expected a state_dict"):
    torch_import.load_into(model, listed)


@pytest.mark.parametrize("arch", ARCHS)
def test_summary_counts_torchvisions_parameters(arch):
  config = config_for(arch)
  config.model.update(input_mean=None, input_std=None)  # --mode=summary needs no data
  table = summary.parameter_table(config)
  assert table.splitlines()[-1] == f"trainable_params: {EF_PARAMS[arch]}"


def test_r2plus1d_middle_widths_are_torchvisions():
  """Both (2+1)D convolutions of a block take the first's middle width (torchvision's
  BasicBlock computes ``midplanes`` once, from its input width)."""
  model = shapes_only(config_for("r2plus1d_18"))
  widths = [
    (block.conv1.spatial.kernel.shape[-1], block.conv2.spatial.kernel.shape[-1])
    for stage in model.stages
    for block in stage
  ]
  first, second = zip(*widths)
  assert first == second == (144, 144, 230, 288, 460, 576, 921, 1152)
  assert r2plus1d.mid_features(64, 128) == 230
