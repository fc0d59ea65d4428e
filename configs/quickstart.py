r"""The demo: a model of the paper on the built-in synthetic dataset, shrunk to a 2-core CPU.

  python launch.py --config=configs/quickstart.py --workdir=runs/quickstart
  python launch.py --config=configs/quickstart.py:model=two_stream,norm=layer \
      --workdir=runs/quickstart_two_stream_ln

Clips are 16 frames taken every 4th frame (so one clip spans about a heart beat) at 32x32
pixels, trained for 10 epochs in batches of 16. The argument names the family (``model=``,
default i3d: I3D-mini with the 1x1x1 conv2 and head A) and passes every other key=value to
that family's config, e.g. ``model=fusion,kind=new_combination,norm=layer`` or
``model=cnn_rnn,rnn=lstm``. The family keeps its own layers and learning rate. (InceptionV3
needs frames of at least 75 pixels: add ``--config.data.image_size=80`` for it.)
"""

from lvef_jax.config_base import load_config


def get_config(arg: str | None = None):
  items = [item for item in (arg or "").split(",") if item]
  family = "i3d"
  for item in list(items):
    if item.startswith("model="):
      family = item.partition("=")[2]
      items.remove(item)
  config = load_config(family, ",".join(items))
  config.data.update(
    synthetic_num_videos=800,
    synthetic_min_frames=20,
    synthetic_max_frames=96,
    clip_frames=16,
    period=4,
    image_size=32,
    augment_pad=3,
    cache_in_memory=True,
  )
  config.train.update(
    batch_size=16,
    num_epochs=10,
    lr_decay_epochs=4,
    early_stopping_patience=6,
    log_every_steps=10,
    bn_recalibration_batches=16,
  )
  config.eval.update(batch_size=32)
  return config
