r"""The paper's CNN-RNN family (Tables 8 and 9): a per-frame 2-D CNN, GRU or LSTM, Dense(1).

  python launch.py --config=configs/cnn_rnn.py:backbone=i3d_mini_2d,rnn=lstm,norm=batch \
      --workdir=runs/cnn_rnn_lstm_b1 --config.data.root=/path/to/EchoNet-Dynamic
  python launch.py --config=configs/cnn_rnn.py:backbone=inception_v3,train_backbone=last5 \
      --workdir=runs/cnn_rnn_to_b5 --config.data.root=/path/to/EchoNet-Dynamic \
      --config.model.backbone_weights=/path/to/inception_v3_notop.weights.h5

Arguments (comma-separated key=value, all optional): backbone (inception_v3|i3d_mini_2d,
default i3d_mini_2d), rnn (gru|lstm, default gru), norm (batch|layer|mixed|layer_channels,
default batch; mixed = BatchNorm in the CNN and LayerNorm in the recurrent cells, the paper's
"Mixed1"), train_backbone (frozen|last5|last7|all; inception_v3 only, default frozen).

The ImageNet weights: in Python with Keras,
``keras.applications.InceptionV3(include_top=False).save_weights("inception_v3_notop.weights.h5")``
(Keras downloads them once); without a file the backbone starts from random weights, and the
log says so.

Training as the paper: Adam at 1e-3 halved every 10 epochs, dropout 0.4; batch 8 for the
InceptionV3 models and the scratch LSTM, 4 for the scratch GRU.
"""

from lvef_jax.config_base import base_config, model_config, parse_arg

DEFAULTS = dict(backbone="i3d_mini_2d", rnn="gru", norm="batch", train_backbone="")


def get_config(arg: str | None = None):
  config = base_config()
  model = parse_arg(arg, DEFAULTS)
  pretrained = model["backbone"] == "inception_v3"
  # The scratch backbone always trains; the pretrained one is frozen unless asked otherwise.
  model["train_backbone"] = model["train_backbone"] or ("frozen" if pretrained else "all")
  config.model = model_config(
    "cnn_rnn",
    **model,
    backbone_weights="",  # Keras InceptionV3 weights file (inception_v3 only)
    rnn_features=(16, 8),  # the adapted Keras example: GRU(16) -> GRU(8)
    head_hidden=8,
    dropout=0.4,
  )
  batch_size = 8 if pretrained or model["rnn"] == "lstm" else 4
  config.train.update(batch_size=batch_size, learning_rate=1e-3)
  return config
