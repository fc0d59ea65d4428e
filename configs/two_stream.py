r"""The paper's Two-Stream model (Table 5): frames and frame differences, fused predictions.

  python launch.py --config=configs/two_stream.py:norm=layer --workdir=runs/two_stream_ln \
      --config.data.root=/path/to/EchoNet-Dynamic

Arguments (comma-separated key=value, all optional): norm (batch|layer|layer_channels, default
batch; the paper's B1 and L1), split (halves|full, default halves: the left half of each frame
to the spatial stream and the right half's differences to the temporal stream, as the adapted
code; full gives both streams whole 112x112 frames, as the paper's text states).

Training as the paper: Adam at 5e-4 halved every 10 epochs, batch 16, dropout 0.05, and the
adapted code's L2 penalty of 0.05 on the Conv3D and hidden Dense kernels.
"""

from lvef_jax.config_base import base_config, model_config, parse_arg

DEFAULTS = dict(norm="batch", split="halves")


def get_config(arg: str | None = None):
  config = base_config()
  config.model = model_config(
    "two_stream",
    **parse_arg(arg, DEFAULTS),
    stream_features=32,
    stream_hidden=64,
    fusion_hidden=1024,
    dropout=0.05,
    l1=0.0,
    l2=0.05,
  )  # kernel penalties added to the loss (Keras convention)
  config.train.update(batch_size=16, learning_rate=5e-4)
  return config
