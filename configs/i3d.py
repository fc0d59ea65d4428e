r"""The paper's I3D family on EchoNet-Dynamic (or the synthetic stand-in when data.root is unset).

  python launch.py --config=configs/i3d.py:variant=mini,conv2=3x3x3,norm=batch,head=a \
      --workdir=runs/i3d_mini_3x3x3 --config.data.root=/path/to/EchoNet-Dynamic

Arguments (comma-separated key=value, all optional): variant (original|mini|stem|stem_im3_im4,
default mini), conv2 (1x1x1|3x3x3|3x1x1|2x3x3x3, default 1x1x1), norm (batch|layer|
layer_channels, default batch), head (og|a|b|c, default a).

Training as the paper: Adam at 1e-3 halved every 10 epochs, batch 4, head dropout 0.5.
"""

from lvef_jax.config_base import base_config, model_config, parse_arg

DEFAULTS = dict(variant="mini", conv2="1x1x1", norm="batch", head="a")


def get_config(arg: str | None = None):
  config = base_config()
  config.model = model_config(
    "i3d",
    **parse_arg(arg, DEFAULTS),
    dropout=0.5,
    head_hidden=256,  # head C's hidden Dense width (the paper does not give it)
  )
  config.train.update(batch_size=4, learning_rate=1e-3)
  return config
