#!/usr/bin/env bash
# The CPU table of docs/benchmarks.md in one call: I3D-mini (batch 4, 28x112x112, fp32 train
# step) beside the PyTorch peer, then each speed lead for XLA:CPU, one JSON line each, labelled.
# Each row's XLA_FLAGS come on top of the flag the bench sets (lvef_jax/cpu_backend.py), unless
# the row chooses YNNPACK's fusion types itself.
# Needs the `peer` extra (pip install -e .[peer]). Run it on an otherwise idle machine.
#
#   bash benchmarks/cpu_leads.sh 2>/dev/null | tee cpu.jsonl      # STEPS=3 by default
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
# Huge pages for malloc (lvef_jax/hostmem.py), for both frameworks; one lead below goes without.
export GLIBC_TUNABLES="${GLIBC_TUNABLES-glibc.malloc.hugetlb=1}"
steps="${STEPS:-3}"
run() {  # run LABEL XLA_FLAGS [bench flags...]
  local label=$1 flags=$2
  shift 2
  echo "{\"lead\": \"$label\", \"xla_flags\": \"$flags\"}"
  XLA_FLAGS="$flags" "$python" -m lvef_jax.bench --model=i3d_mini --batch=4 --steps="$steps" "$@"
}
run baseline "" --peer=torch
GLIBC_TUNABLES= run malloc_4k_pages "" --peer=torch
run onednn "--xla_cpu_use_onednn=true"
run onednn_fusions "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot,eltwise,reduce"
run onednn_custom_call "--xla_cpu_experimental_onednn_custom_call=true"
run xnn_fusions "--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce"
run xnn_graph_greedy "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY"
run ynn_fusions "--xla_cpu_experimental_ynn_fusion_type=individual_dot,individual_convolution,eltwise,reduce"
# XLA's default, which the bench otherwise changes (lvef_jax/cpu_backend.py): YNNPACK's convolutions.
run ynn_convolutions "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution"
run fast_runtime_preset "--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME"
run no_xnnpack "--xla_cpu_use_xnnpack=false"
run fast_math "--xla_cpu_enable_fast_math=true"
run xla_ops "" --config.compute.kernels=xla
run bf16 "" --precision=bf16
# One core each (taskset, from util-linux): the same step and the peer with one thread.
if command -v taskset >/dev/null; then
  echo '{"lead": "one_core", "xla_flags": ""}'
  taskset -c 0 "$python" -m lvef_jax.bench --model=i3d_mini --batch=4 --steps="$steps"
  taskset -c 0 "$python" benchmarks/torch_peer.py time --variant=mini --batch=4 --steps="$steps" \
    --threads=1
fi
