r"""The demo: I3D-mini on the built-in synthetic dataset, shrunk to train on a 2-core CPU.

  python launch.py --config=configs/quickstart.py --workdir=runs/quickstart

Clips are 16 frames taken every 4th frame (so one clip spans about a heart beat) at 32x32
pixels; everything else is the paper's I3D-mini with the 1x1x1 conv2 and head A.
"""

from lvef_jax.config_base import base_config


def get_config():
  config = base_config()
  config.model.update(variant="mini", conv2="1x1x1", norm="batch", head="a")
  config.data.update(
      synthetic_num_videos=800, synthetic_min_frames=20, synthetic_max_frames=96,
      clip_frames=16, period=4, image_size=32, augment_pad=3, cache_in_memory=True)
  config.train.update(batch_size=16, num_epochs=10, learning_rate=1e-3, lr_decay_epochs=4,
                      early_stopping_patience=6, log_every_steps=10,
                      bn_recalibration_batches=16)
  config.eval.update(batch_size=32)
  return config
