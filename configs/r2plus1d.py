r"""torchvision's video ResNets as EchoNet-Dynamic trained them (Ouyang et al., Nature 2020).

  python launch.py --config=configs/r2plus1d.py --workdir=runs/r2plus1d \
      --config.data.root=/path/to/EchoNet-Dynamic \
      --config.model.init_from=/path/to/r2plus1d_18-91a641e6.pth   # Kinetics-400 start
  python launch.py --mode=import --config=configs/r2plus1d.py --workdir=runs/echonet_released \
      --config.model.init_from=/path/to/r2plus1d_18_32_2_pretrained.pt \
      --config.data.root=/path/to/EchoNet-Dynamic   # or --config.model.input_mean/input_std

Argument (optional): arch (r2plus1d_18|r3d_18|mc3_18, default r2plus1d_18).

Training as EchoNet-Dynamic: 32-frame clips every 2nd frame from a random start, pad-12 random
crops, SGD with momentum 0.9 at 1e-4 (weight decay 1e-4), the rate x0.1 every 15 epochs,
45 epochs at batch 20, the best epoch by validation error, then val and test scored with every
clip of a video (one starting at each frame) averaged.
BatchNorm as PyTorch's (momentum 0.1 of the new batch, epsilon 1e-5, its running averages kept).
``model.input_mean`` / ``input_std`` (pixel units, one number or three) are computed on the
train split when not given, and recorded in the run's config.json.
"""

from ml_collections import config_dict

from lvef_jax.config_base import base_config, model_config, parse_arg

DEFAULTS = dict(arch="r2plus1d_18")
ECHONET_EF_BIAS = 55.6  # EchoNet-Dynamic's initial output bias, the mean EF of its train split


def get_config(arg: str | None = None):
  config = base_config()
  config.model = model_config(
    "r2plus1d",
    **parse_arg(arg, DEFAULTS),
    input_mean=config_dict.placeholder(object),  # None: computed on the train split
    input_std=config_dict.placeholder(object),
    init_from="",  # a PyTorch weights file to start from (torchvision's or EchoNet-Dynamic's)
  )
  config.model.update(ef_offset=ECHONET_EF_BIAS, bn_momentum=0.9)
  config.data.update(clip_frames=32, period=2, augment_pad=12, train_clip_start="random")
  config.train.update(
    batch_size=20,
    num_epochs=45,
    optimizer="sgd",
    momentum=0.9,
    learning_rate=1e-4,
    weight_decay=1e-4,
    lr_decay_epochs=15,
    lr_decay_factor=0.1,
    early_stopping_patience=45,  # none: the best of all 45 epochs by validation error
    bn_recalibration_batches=0,  # PyTorch's running averages, as EchoNet-Dynamic
  )
  # The final scores as EchoNet-Dynamic's: val and test, every clip (one from each frame).
  config.eval.update(clips="all", clip_stride=1, splits=("val", "test"))
  return config
