"""The I3D family's layer tables, plain data (no imports).

`lvef_jax.models.i3d` builds its layers from them, and the PyTorch peer
(``benchmarks/torch_peer.py``) reads this file too, so the two cannot drift apart.
"""

# (b1, b2_reduce, b2, b3_reduce, b3, pool_proj) per Inception module.
INCEPTION_WIDTHS = {
  "3a": (64, 96, 128, 16, 32, 32),
  "3b": (128, 128, 192, 32, 96, 64),
  "4a": (192, 96, 208, 16, 48, 64),
  "4b": (160, 112, 224, 24, 64, 64),
  "4c": (128, 128, 256, 24, 64, 64),
  "4d": (112, 144, 288, 32, 64, 64),
  "4e": (256, 160, 320, 32, 128, 128),
  "5a": (256, 160, 320, 32, 128, 128),
  "5b": (384, 192, 384, 48, 128, 128),
}
# Each Inception stage: (pooling window, pooling stride) applied before it, then its modules.
STAGES = {
  "im3": (None, ("3a", "3b")),
  "im4": (((3, 3, 3), (2, 2, 2)), ("4a", "4b", "4c", "4d", "4e")),
  "im5": (((2, 3, 3), (2, 2, 2)), ("5a", "5b")),
}
VARIANTS = {
  "original": ("im3", "im4", "im5"),
  "mini": ("im3",),
  "stem": (),
  "stem_im3_im4": ("im3", "im4"),
}
# The adapted Keras code has the 1x1x1 conv2 only; the paper's stacked variant is two
# convolutions with nothing between them (as conv2 itself has no norm and no activation).
CONV2_KERNELS = {
  "1x1x1": ((1, 1, 1),),
  "3x3x3": ((3, 3, 3),),
  "3x1x1": ((3, 1, 1),),
  "2x3x3x3": ((3, 3, 3), (3, 3, 3)),
}
STEM_FEATURES, CONV2_FEATURES = 64, 192
# The paper's regression heads, and the OG head's average pooling window (T, H, W).
HEADS = ("og", "a", "b", "c")
OG_POOL = (2, 4, 4)
