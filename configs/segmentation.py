r"""Segmentation of the left ventricle in the traced frames (EchoNet-Dynamic's other model).

  python launch.py --config=configs/segmentation.py --workdir=runs/segmentation \
      --config.data.root=/path/to/EchoNet-Dynamic
  python launch.py --config=configs/segmentation.py:model=unet --workdir=runs/unet

Argument (optional): model (deeplabv3_resnet50 | unet, default deeplabv3_resnet50); for the
U-Net also features (first level's width, default 32) and depth (pooling levels, default 4).

The examples are the traced end-diastolic and end-systolic frame of every video with usable
tracings, each with the LV mask drawn from VolumeTracings.csv, at 112x112 without augmentation.
Training as EchoNet-Dynamic trains DeepLabV3-ResNet50 from random weights: binary cross-entropy
on the logits summed over each frame's pixels, SGD with momentum 0.9 for 50 epochs, no weight
decay, no learning-rate steps, the best epoch by validation loss; Dice is reported overall and
at ED and ES. EchoNet-Dynamic sums the loss over its 20-video batches (40 frames) at a rate of
1e-5; the loss here is the mean over a batch's frames, so the same step takes 20 x 1e-5 = 2e-4
at 40 frames a batch. (EchoNet-Dynamic runs a batch's ED and ES frames through BatchNorm
separately, 20 frames each; here a batch mixes both phases.)
``model.init_from`` loads EchoNet-Dynamic's released ``deeplabv3_resnet50_random.pt`` (or any
torchvision ``deeplabv3_resnet50`` state_dict; a 21-class classifier is skipped).
"""

from ml_collections import config_dict

from lvef_jax.config_base import base_config, model_config, parse_arg
from lvef_jax.errors import ConfigError

MODELS = ("deeplabv3_resnet50", "unet")
DEFAULTS = dict(model="deeplabv3_resnet50", features="32", depth="4")


def get_config(arg: str | None = None):
  values = parse_arg(arg, DEFAULTS)
  model = values.pop("model")
  if model not in MODELS:
    raise ConfigError(
      f"configs/segmentation.py: model must be one of {', '.join(MODELS)}, got {model!r}"
    )
  config = base_config()
  config.task = "segmentation"
  normalisation = dict(
    input_mean=config_dict.placeholder(object),  # None: computed on the train split
    input_std=config_dict.placeholder(object),
  )
  if model == "unet":
    config.model = model_config(
      "unet", features=int(values["features"]), depth=int(values["depth"]), **normalisation
    )
    config.model.init_from = ""
  else:
    config.model = model_config("deeplabv3", arch="resnet50", **normalisation, init_from="")
  for key in ("ef_offset", "ef_scale"):  # no EF output
    del config.model[key]
  config.model.update(bn_momentum=0.9)  # PyTorch's BatchNorm: momentum 0.1 of the new batch
  config.data.update(image_size=112, augment_pad=0)
  config.train.update(
    batch_size=40,  # frames: EchoNet-Dynamic's 20 videos, their ED and ES frames
    num_epochs=50,
    optimizer="sgd",
    momentum=0.9,
    learning_rate=2e-4,  # EchoNet-Dynamic's 1e-5 on a loss summed over 20 videos
    weight_decay=0.0,
    lr_decay_factor=1.0,  # no steps
    early_stopping_patience=50,  # none: the best of all 50 epochs by validation loss
    bn_recalibration_batches=0,  # PyTorch's running averages, as EchoNet-Dynamic
  )
  config.eval.update(batch_size=40, splits=("train", "val", "test"))
  return config
