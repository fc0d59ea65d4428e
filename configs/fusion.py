r"""The paper's Fusion family (Tables 6 and 7): I3D-mini bodies combined with Two-Stream inputs.

  python launch.py --config=configs/fusion.py:kind=single_input,conv2=1x1x1,norm=batch \
      --workdir=runs/fusion_si_b1 --config.data.root=/path/to/EchoNet-Dynamic

Arguments (comma-separated key=value, all optional): kind (combination|new_combination|
dual_input|dual_input_truncated|single_input, default single_input), conv2 (1x1x1|3x3x3|3x1x1|
2x3x3x3, default 1x1x1), norm (batch|layer|layer_channels, default batch). The paper's labels:
B1 = norm=batch,conv2=1x1x1; L1 = layer,1x1x1; B2 = batch,3x3x3; L2 = layer,3x3x3.

Training: Combination and New Combination use batch 16 and Adam at 1e-3; Dual-Input and
Single-Input use batch 4 and 1e-4 with gradient clipping (the paper's settings; it gives none
for Dual-Input Truncated, which takes Dual-Input's, nor a clipping norm: 1.0 is this project's
choice); the rate is halved every 10 epochs; head dropout 0.5.
"""

from lvef_jax.config_base import base_config, model_config, parse_arg

DEFAULTS = dict(kind="single_input", conv2="1x1x1", norm="batch")
# The paper lowered the rate "to mitigate exploding gradients" for these and clipped "where
# necessary"; the clipping norm is this project's choice.
SLOW_KINDS = ("dual_input", "dual_input_truncated", "single_input")


def get_config(arg: str | None = None):
  config = base_config()
  model = parse_arg(arg, DEFAULTS)
  config.model = model_config(
    "fusion",
    **model,
    head="a",
    dropout=0.5,
    head_hidden=256,  # head C's hidden width, if head=c is chosen
    task_features=128,  # width of the task-specific convolutions (dual/single input)
    fusion_hidden=1024,  # Dense fusing the per-stream predictions (combination)
  )
  if model["kind"] in SLOW_KINDS:
    config.train.update(batch_size=4, learning_rate=1e-4, grad_clip_norm=1.0)
  else:
    config.train.update(batch_size=16, learning_rate=1e-3)
  return config
