#!/usr/bin/env bash
# The GPU table of docs/benchmarks.md in one call of a few minutes: I3D-mini and I3D-original,
# bf16 and fp32, the step alone and fed from a device-resident split, each beside the PyTorch
# peer (AMP for bf16) timed in the same call; then I3D-mini (bf16, batch 4 a member) as 1, 2, 4
# and 8 runs in one program, the member axis vmapped and looped (compute.members); last,
# EchoNet-Dynamic's R(2+1)D-18 (32 frames every 2nd) at its batch of 20, bf16 and fp32. Needs JAX
# with CUDA, Flax, optax, Orbax, einops, absl-py, ml_collections and PyTorch; no TensorFlow.
# Prints JSON lines; tee them to a file.
#
#   bash benchmarks/gpu.sh 2>&1 | tee gpu.jsonl        # STEPS=20 BATCH=32 by default
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import ml_collections, flax, optax, torch" || {
  echo "error: install the project's dependencies (ml_collections, flax, optax) and torch" >&2
  exit 1
}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
steps="${STEPS:-20}" batch="${BATCH:-32}"
bench() { python3 -m lvef_jax.bench --steps="$steps" --batch="$batch" "$@"; }
for model in i3d_mini i3d_original; do
  bench --model="$model" --precision=bf16 --peer=torch
  bench --model="$model" --precision=fp32 --peer=torch
  bench --model="$model" --precision=bf16 --data=resident
done
bench --model=i3d_mini --precision=bf16 --peer=torch --peer_compile
bench --model=i3d_mini_3x3x3 --precision=bf16 --peer=torch
# Several runs in one program, at the paper's batch whatever BATCH: each K in one process, every
# line's clips_per_s_vs_one its clips/s over K=1's.
for form in vmap loop; do
  bench --model=i3d_mini --precision=bf16 --batch=4 --members=1,2,4,8 \
    --config.compute.members="$form"
done
# EchoNet-Dynamic's R(2+1)D-18 at its own clip (32x112x112) and batch (20) whatever BATCH; no
# peer (the PyTorch peer implements the I3D family only).
for precision in bf16 fp32; do
  bench --model=r2plus1d_18 --precision="$precision" --batch=20
done
