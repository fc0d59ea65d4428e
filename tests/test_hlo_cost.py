"""lvef_jax.hlo_cost: the counting rules on small hand-written HLO modules (optimized GPU-style
text), and agreement of its FLOPs with XLA's own cost analysis on real lowered programs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lvef_jax import hlo_cost
from tests.conftest import load_config

# The backend_config of a cuDNN convolution as XLA prints it (compiled.as_text()).
CUDNN_CONFIG = (
  '{"operation_queue_id":"0","wait_on_operation_queues":[],"cudnn_conv_backend_config":'
  '{"activation_mode":"kNone","conv_result_scale":1,"side_input_scale":0,"leakyrelu_alpha":0},'
  '"force_earliest_schedule":false}'
)


def _cost(text: str, listing: bool = False) -> hlo_cost.Cost:
  return hlo_cost.Program(text).cost(listing=listing)


# (a) cuDNN convolutions.


def _cudnn_conv_module(target: str, operands: list[str], result: str, scratch: int) -> str:
  """One cuDNN convolution custom call with a tuple result (its output, the scratch space)."""
  params = "\n".join(f"  %p{i} = {shape} parameter({i})" for i, shape in enumerate(operands))
  args = ", ".join(f"{shape} %p{i}" for i, shape in enumerate(operands))
  signature = ", ".join(f"p{i}: {shape.split('{')[0]}" for i, shape in enumerate(operands))
  tuple_shape = f"({result}, u8[{scratch}]{{0}})"
  return f"""\
HloModule jit_conv, is_scheduled=true

ENTRY %main.4 ({signature}) -> {result.split("{")[0]} {{
{params}
  %cudnn-conv.1 = {tuple_shape} custom-call({args}), window={{size=3x3 pad=1_1x1_1}}, \
dim_labels=bf01_oi01->bf01, custom_call_target="{target}", \
metadata={{op_type="conv_general_dilated" op_name="jit(f)/conv_general_dilated"}}, \
backend_config={CUDNN_CONFIG}
  ROOT %get-tuple-element.1 = {result} get-tuple-element({tuple_shape} %cudnn-conv.1), index=0
}}
"""


X = "bf16[2,2,4,4]{3,2,1,0}"  # batch 2, 2 input features, 4x4 (bf01): 128 bytes
W = "bf16[3,2,3,3]{3,2,1,0}"  # 3 output features, 2 input features, 3x3 (oi01): 108 bytes
Y = "bf16[2,3,4,4]{3,2,1,0}"  # batch 2, 3 output features, 4x4: 192 bytes
BIAS = "bf16[3]{0}"  # 6 bytes
# Per spatial dimension (4 inputs, 4 outputs, 3 taps, padding 1 on each side), the tap k reads
# input o - 1 + k for output o: tap 0 reads input for outputs 1..3 (3), tap 1 for all 4, tap 2
# for outputs 0..2 (3): 10 of the 12 pairs. 10 x 10 = 100 (output position, tap) pairs in 2-D,
# each a multiply-add per batch (2) x output feature (3) x input feature (2):
# 2 FLOPs x 2 x 3 x 2 x 100 = 2400 (counting the padded taps too would give 2 x 2 x 3 x 2 x 16 x 9
# = 3456).
CONV_FLOPS = 2400


@pytest.mark.parametrize(
  "target, operands, result, scratch, bytes_",
  [
    # x, kernel -> y: 128 + 108 read, 192 written.
    ("__cudnn$convForward", [X, W], Y, 0, 128 + 108 + 192),
    # x, kernel, bias -> y.
    ("__cudnn$convBiasActivationForward", [X, W, BIAS], Y, 0, 128 + 108 + 6 + 192),
    # dy, kernel -> dx: 192 + 108 read, 128 written (the 4 KiB of scratch space not counted).
    ("__cudnn$convBackwardInput", [Y, W], X, 4096, 192 + 108 + 128),
    # x, dy -> dkernel: 128 + 192 read, 108 written.
    ("__cudnn$convBackwardFilter", [X, Y], W, 4096, 128 + 192 + 108),
  ],
)
def test_cudnn_convolutions_count_the_taps_that_read_input(
  target, operands, result, scratch, bytes_
):
  """Forward, data-gradient and filter-gradient calls of one geometry: the same FLOPs."""
  cost = _cost(_cudnn_conv_module(target, operands, result, scratch), listing=True)
  assert cost.flops == CONV_FLOPS
  assert cost.matmul_flops == CONV_FLOPS
  assert cost.transcendentals == 0
  assert cost.bytes == bytes_
  assert cost.kernels == {"library": 1}
  (kernel,) = cost.listing
  assert (kernel.name, kernel.kind, kernel.what) == ("cudnn-conv.1", "library", target)
  assert kernel.op_name == "jit(f)/conv_general_dilated"
  assert (kernel.flops, kernel.bytes, kernel.times) == (CONV_FLOPS, bytes_, 1.0)


def test_valid_pairs_and_conv_flops_by_hand():
  # 4 inputs, 4 outputs, 3 taps, padding 1 (the count above); stride 2 with 2 outputs: output 0
  # reads inputs -1, 0, 1 (2 valid), output 1 reads 1, 2, 3 (3 valid): 5.
  assert hlo_cost._valid_pairs(4, 4, 3, 1, 1, 1, 1) == 10
  assert hlo_cost._valid_pairs(4, 2, 3, 2, 1, 1, 1) == 5
  # No padding: every pair reads input.
  assert hlo_cost._valid_pairs(6, 4, 3, 1, 0, 1, 1) == 12
  x, y, k = (hlo_cost.parse_shape(s)[0] for s in (X, Y, W))
  window = "{size=3x3 pad=1_1x1_1}"
  assert hlo_cost._conv_flops(x, y, k, "bf01_oi01->bf01", window) == CONV_FLOPS


# (b) While loops.

LOOP = """\
HloModule jit_loop, is_scheduled=true, entry_computation_layout={(f32[8]{0})->f32[8]{0}}

%fused_step (param_0: f32[8]) -> f32[8] {
  %param_0 = f32[8]{0} parameter(0)
  %multiply.1 = f32[8]{0} multiply(f32[8]{0} %param_0, f32[8]{0} %param_0)
  %add.1 = f32[8]{0} add(f32[8]{0} %multiply.1, f32[8]{0} %param_0)
  ROOT %tanh.1 = f32[8]{0} tanh(f32[8]{0} %add.1)
}

%fused_increment (param_0.1: s32[]) -> s32[] {
  %param_0.1 = s32[] parameter(0)
  %constant.1 = s32[] constant(1)
  ROOT %add.2 = s32[] add(s32[] %param_0.1, s32[] %constant.1)
}

%fused_compare (param_0.2: s32[]) -> pred[] {
  %param_0.2 = s32[] parameter(0)
  %constant.2 = s32[] constant(5)
  ROOT %compare.1 = pred[] compare(s32[] %param_0.2, s32[] %constant.2), direction=LT
}

%body (loop_param: (s32[], f32[8])) -> (s32[], f32[8]) {
  %loop_param = (s32[], f32[8]{0}) parameter(0)
  %get-tuple-element.1 = s32[] get-tuple-element((s32[], f32[8]{0}) %loop_param), index=0
  %get-tuple-element.2 = f32[8]{0} get-tuple-element((s32[], f32[8]{0}) %loop_param), index=1
  %increment = s32[] fusion(s32[] %get-tuple-element.1), kind=kLoop, calls=%fused_increment
  %step = f32[8]{0} fusion(f32[8]{0} %get-tuple-element.2), kind=kLoop, calls=%fused_step
  ROOT %tuple.1 = (s32[], f32[8]{0}) tuple(s32[] %increment, f32[8]{0} %step)
}

%condition (cond_param: (s32[], f32[8])) -> pred[] {
  %cond_param = (s32[], f32[8]{0}) parameter(0)
  %get-tuple-element.3 = s32[] get-tuple-element((s32[], f32[8]{0}) %cond_param), index=0
  ROOT %less = pred[] fusion(s32[] %get-tuple-element.3), kind=kLoop, calls=%fused_compare
}

ENTRY %main.9 (x: f32[8]) -> f32[8] {
  %x = f32[8]{0} parameter(0)
  %constant.0 = s32[] constant(0)
  %tuple.0 = (s32[], f32[8]{0}) tuple(s32[] %constant.0, f32[8]{0} %x)
  %while.0 = (s32[], f32[8]{0}) while((s32[], f32[8]{0}) %tuple.0), condition=%condition, \
body=%body, backend_config={"known_trip_count":{"n":"5"}}
  ROOT %get-tuple-element.4 = f32[8]{0} get-tuple-element((s32[], f32[8]{0}) %while.0), index=1
}
"""
# Per trip, the body: %increment (1 FLOP; reads 4 bytes, writes 4) and %step (multiply and add,
# 16 FLOPs, and 8 tanh; reads 32 bytes, writes 32): 2 kernels, 17 FLOPs, 8 transcendentals,
# 72 bytes. Per test, the condition: %less (1 FLOP; reads 4 bytes, writes 1): 1 kernel, 5 bytes.


def test_while_loop_counts_its_body_per_known_trip():
  cost = _cost(LOOP, listing=True)
  # 5 trips of the body, 6 tests of the condition.
  assert cost.kernels == {"fusion": 5 * 2 + 6 * 1}
  assert cost.flops == 5 * 17 + 6 * 1
  assert cost.transcendentals == 5 * 8
  assert cost.bytes == 5 * 72 + 6 * 5
  assert cost.unknown_trip_counts == 0
  assert [(k.name, k.times) for k in cost.listing] == [("increment", 5), ("step", 5), ("less", 6)]
  assert [(k.flops, k.bytes) for k in cost.listing] == [(1, 8), (16, 64), (1, 5)]
  assert cost.total_kernels == 16


def test_while_loop_without_known_trip_count_is_counted_once_and_reported():
  text = LOOP.replace(', backend_config={"known_trip_count":{"n":"5"}}', "")
  assert "known_trip_count" not in text
  cost = _cost(text)
  assert cost.unknown_trip_counts == 1
  # One trip: the body once, the condition twice.
  assert cost.kernels == {"fusion": 2 + 2}
  assert cost.flops == 17 + 2
  assert cost.transcendentals == 8


# (c) Fusions that slice their operands or update them in place.

SLICING = """\
HloModule jit_slicing, is_scheduled=true

%fused_dynamic_slice (param_0: f32[16,8], param_1: s32[]) -> f32[2,8] {
  %param_0 = f32[16,8]{1,0} parameter(0)
  %param_1 = s32[] parameter(1)
  %constant.1 = s32[] constant(0)
  %compare.1 = pred[] compare(s32[] %param_1, s32[] %constant.1), direction=LT
  %constant.2 = s32[] constant(16)
  %add.1 = s32[] add(s32[] %param_1, s32[] %constant.2)
  %select.1 = s32[] select(pred[] %compare.1, s32[] %add.1, s32[] %param_1)
  %dynamic-slice.1 = f32[2,8]{1,0} dynamic-slice(f32[16,8]{1,0} %param_0, s32[] %select.1, \
s32[] %constant.1), dynamic_slice_sizes={2,8}
  ROOT %negate.1 = f32[2,8]{1,0} negate(f32[2,8]{1,0} %dynamic-slice.1)
}

%fused_slices (param_0.1: bf16[16,8]) -> bf16[4,8] {
  %param_0.1 = bf16[16,8]{1,0} parameter(0)
  %slice.1 = bf16[2,8]{1,0} slice(bf16[16,8]{1,0} %param_0.1), slice={[0:2], [0:8]}
  %slice.2 = bf16[2,8]{1,0} slice(bf16[16,8]{1,0} %param_0.1), slice={[8:10], [0:8]}
  ROOT %concatenate.1 = bf16[4,8]{1,0} concatenate(bf16[2,8]{1,0} %slice.1, \
bf16[2,8]{1,0} %slice.2), dimensions={0}
}

%fused_update (param_0.2: f32[16,8], param_1.1: f32[2,8], param_2: s32[]) -> f32[16,8] {
  %param_0.2 = f32[16,8]{1,0} parameter(0)
  %param_1.1 = f32[2,8]{1,0} parameter(1)
  %multiply.1 = f32[2,8]{1,0} multiply(f32[2,8]{1,0} %param_1.1, f32[2,8]{1,0} %param_1.1)
  %param_2 = s32[] parameter(2)
  %constant.3 = s32[] constant(0)
  ROOT %dynamic-update-slice.1 = f32[16,8]{1,0} dynamic-update-slice(f32[16,8]{1,0} \
%param_0.2, f32[2,8]{1,0} %multiply.1, s32[] %param_2, s32[] %constant.3)
}

ENTRY %main.12 (p0: f32[16,8], p1: s32[], p2: bf16[16,8], p3: f32[2,8]) -> f32[16,8] {
  %p0 = f32[16,8]{1,0} parameter(0)
  %p1 = s32[] parameter(1)
  %p2 = bf16[16,8]{1,0} parameter(2)
  %p3 = f32[2,8]{1,0} parameter(3)
  %row = f32[2,8]{1,0} fusion(f32[16,8]{1,0} %p0, s32[] %p1), kind=kLoop, \
calls=%fused_dynamic_slice
  %rows = bf16[4,8]{1,0} fusion(bf16[16,8]{1,0} %p2), kind=kLoop, calls=%fused_slices
  ROOT %update = f32[16,8]{1,0} fusion(f32[16,8]{1,0} %p0, f32[2,8]{1,0} %p3, s32[] %p1), \
kind=kLoop, calls=%fused_update, output_to_operand_aliasing={{}: (0, {})}
}
"""


def test_fusions_read_only_what_they_slice_and_write_only_what_they_update():
  kernels = {k.name: k for k in _cost(SLICING, listing=True).listing}
  assert set(kernels) == {"row", "rows", "update"}
  # %row: reads the 2x8 f32 slice of its 16x8 operand (64 bytes, not 512) and the s32 index
  # (4; also read by compare, add and select, as JAX's index wrapping fuses), writes 2x8 f32
  # (64). FLOPs: compare, add, select of the index (3) and the negation (16).
  assert (kernels["row"].bytes, kernels["row"].flops) == (64 + 4 + 64, 3 + 16)
  # %rows: two 2x8 bf16 slices of a 16x8 operand (2 x 32 bytes, not 256), writes 4x8 bf16 (64).
  assert (kernels["rows"].bytes, kernels["rows"].flops) == (2 * 32 + 64, 0)
  # %update: writes the 2x8 f32 update in place (64 bytes) and neither reads nor writes the
  # 16x8 buffer (512); reads the update's input (64) and the index (4). FLOPs: the multiply.
  assert (kernels["update"].bytes, kernels["update"].flops) == (64 + 64 + 4, 16)
  assert all(k.kind == "fusion" and k.what == "kLoop" for k in kernels.values())


def test_dynamic_slice_index_parameter_counts_its_own_bytes():
  text = """\
HloModule jit_slice, is_scheduled=true

%fused_dynamic_slice (param_0: f32[16,8], param_1: s32[]) -> f32[2,8] {
  %param_0 = f32[16,8]{1,0} parameter(0)
  %param_1 = s32[] parameter(1)
  %constant.1 = s32[] constant(0)
  ROOT %dynamic-slice.1 = f32[2,8]{1,0} dynamic-slice(f32[16,8]{1,0} %param_0, s32[] %param_1, \
s32[] %constant.1), dynamic_slice_sizes={2,8}
}

ENTRY %main.3 (p0: f32[16,8], p1: s32[]) -> f32[2,8] {
  %p0 = f32[16,8]{1,0} parameter(0)
  %p1 = s32[] parameter(1)
  ROOT %row = f32[2,8]{1,0} fusion(f32[16,8]{1,0} %p0, s32[] %p1), kind=kLoop, \
calls=%fused_dynamic_slice
}
"""
  # Reads the 64-byte slice and the 4-byte index, writes 64 bytes (hlo_cost gives 192: the
  # index, consumed only by the dynamic-slice, is counted as the 64-byte slice).
  assert _cost(text).bytes == 64 + 4 + 64


# (d) Copies, and instructions that launch nothing.

VIEWS = """\
HloModule jit_views, is_scheduled=true

ENTRY %main.7 (p0: f32[4,8], p1: bf16[16]) -> (f32[8,4], bf16[4,4], f32[]) {
  %p0 = f32[4,8]{1,0} parameter(0)
  %p1 = bf16[16]{0} parameter(1)
  %constant.1 = f32[] constant(0)
  %copy.1 = f32[4,8]{0,1} copy(f32[4,8]{1,0} %p0)
  %bitcast.1 = f32[8,4]{1,0} bitcast(f32[4,8]{0,1} %copy.1)
  %bitcast.2 = bf16[4,4]{1,0} bitcast(bf16[16]{0} %p1)
  %tuple.1 = (f32[8,4]{1,0}, bf16[4,4]{1,0}) tuple(f32[8,4]{1,0} %bitcast.1, \
bf16[4,4]{1,0} %bitcast.2)
  %get-tuple-element.1 = f32[8,4]{1,0} get-tuple-element((f32[8,4]{1,0}, bf16[4,4]{1,0}) \
%tuple.1), index=0
  ROOT %tuple.2 = (f32[8,4]{1,0}, bf16[4,4]{1,0}, f32[]) tuple(f32[8,4]{1,0} \
%get-tuple-element.1, bf16[4,4]{1,0} %bitcast.2, f32[] %constant.1)
}
"""


def test_only_the_copy_launches_a_kernel():
  cost = _cost(VIEWS, listing=True)
  assert cost.kernels == {"copy": 1}
  # The transposing copy reads and writes 4x8 f32: 128 + 128 bytes.
  assert cost.bytes == 128 + 128
  assert cost.flops == 0
  assert [(k.name, k.kind, k.what) for k in cost.listing] == [("copy.1", "copy", "copy")]


CONTROL = """\
HloModule jit_control, is_scheduled=true

%fused_negate (param_0: f32[8]) -> f32[8] {
  %param_0 = f32[8]{0} parameter(0)
  ROOT %negate.1 = f32[8]{0} negate(f32[8]{0} %param_0)
}

%fused_exp (param_0.1: f32[8]) -> f32[8] {
  %param_0.1 = f32[8]{0} parameter(0)
  ROOT %exponential.1 = f32[8]{0} exponential(f32[8]{0} %param_0.1)
}

%branch_small (small_param: f32[8]) -> f32[8] {
  %small_param = f32[8]{0} parameter(0)
  ROOT %small = f32[8]{0} fusion(f32[8]{0} %small_param), kind=kLoop, calls=%fused_negate
}

%branch_large (large_param: f32[8]) -> f32[8] {
  %large_param = f32[8]{0} parameter(0)
  %large.1 = f32[8]{0} fusion(f32[8]{0} %large_param), kind=kLoop, calls=%fused_negate
  ROOT %large.2 = f32[8]{0} fusion(f32[8]{0} %large.1), kind=kLoop, calls=%fused_exp
}

%command_buffer (buffer_param: f32[8]) -> f32[8] {
  %buffer_param = f32[8]{0} parameter(0)
  %all-reduce-start.1 = f32[8]{0} all-reduce-start(f32[8]{0} %buffer_param), \
replica_groups={{0,1}}, to_apply=%fused_negate
  %all-reduce-done.1 = f32[8]{0} all-reduce-done(f32[8]{0} %all-reduce-start.1)
  ROOT %called = f32[8]{0} fusion(f32[8]{0} %all-reduce-done.1), kind=kLoop, calls=%fused_exp
}

ENTRY %main.5 (p0: s32[], p1: f32[8]) -> f32[8] {
  %p0 = s32[] parameter(0)
  %p1 = f32[8]{0} parameter(1)
  %conditional.1 = f32[8]{0} conditional(s32[] %p0, f32[8]{0} %p1, f32[8]{0} %p1), \
branch_computations={%branch_small, %branch_large}
  ROOT %call.1 = f32[8]{0} call(f32[8]{0} %conditional.1), to_apply=%command_buffer
}
"""


def test_conditional_counts_its_largest_branch_and_call_inlines():
  cost = _cost(CONTROL, listing=True)
  # The large branch (2 fusions: 8 FLOPs, 8 exponentials) and, inside the call, the
  # all-reduce-start (a collective; -done launches nothing) and one fusion (8 exponentials).
  assert cost.kernels == {"fusion": 2 + 1, "collective": 1}
  assert cost.flops == 8
  assert cost.transcendentals == 8 + 8
  # Every kernel reads and writes 8 f32 (32 + 32 bytes).
  assert cost.bytes == 4 * 64
  assert [k.name for k in cost.listing] == ["large.1", "large.2", "all-reduce-start.1", "called"]


# (e) cuBLAS and custom fusions.

GEMM_CONFIG = (
  '{"operation_queue_id":"0","wait_on_operation_queues":[],"gemm_backend_config":'
  '{"alpha_real":1,"beta":0,"dot_dimension_numbers":{"lhs_contracting_dimensions":["0"],'
  '"rhs_contracting_dimensions":["0"],"lhs_batch_dimensions":[],"rhs_batch_dimensions":[]},'
  '"alpha_imag":0,"precision_config":{"operand_precision":["DEFAULT","DEFAULT"],'
  '"algorithm":"ALG_UNSET"},"epilogue":"DEFAULT","lhs_stride":"512","rhs_stride":"768",'
  '"grad_x":false,"grad_y":false,"damax_output":false},"force_earliest_schedule":false}'
)
# lhs^T (32x16, contracting dimension 0) times rhs (32x24): M=16, N=24, K=32, and a 2560-byte
# workspace (cuBLAS's, s8, as XLA's gemm rewriter adds it).
GEMM = (
  """\
HloModule jit_gemm, is_scheduled=true

ENTRY %main.3 (p0: bf16[32,16], p1: bf16[32,24]) -> bf16[16,24] {
  %p0 = bf16[32,16]{1,0} parameter(0)
  %p1 = bf16[32,24]{1,0} parameter(1)
  %cublas-gemm.1 = (bf16[16,24]{1,0}, s8[2560]{0}) custom-call(bf16[32,16]{1,0} %p0, \
bf16[32,24]{1,0} %p1), custom_call_target="__cublas$gemm", \
metadata={op_type="dot_general" op_name="jit(f)/dot_general"}, backend_config="""
  + GEMM_CONFIG
  + """
  ROOT %get-tuple-element.1 = bf16[16,24]{1,0} get-tuple-element((bf16[16,24]{1,0}, \
s8[2560]{0}) %cublas-gemm.1), index=0
}
"""
)


def test_cublas_gemm_flops_come_from_its_dot_dimensions():
  cost = _cost(GEMM, listing=True)
  assert cost.flops == 2 * 16 * 24 * 32
  assert cost.matmul_flops == 2 * 16 * 24 * 32
  assert cost.kernels == {"library": 1}
  (kernel,) = cost.listing
  assert (kernel.what, kernel.op_name) == ("__cublas$gemm", "jit(f)/dot_general")


def test_cublas_workspace_is_not_counted_as_bytes():
  # Reads 32x16 and 32x24 bf16 (1024 + 1536 bytes), writes 16x24 bf16 (768); the s8 workspace
  # of the gemm rewriter is the library's scratch, not an output.
  assert _cost(GEMM).bytes == 1024 + 1536 + 768


TRITON = """\
HloModule jit_triton, is_scheduled=true

%triton_gemm_dot (param_0: bf16[16,32], param_1: bf16[32,24]) -> bf16[16,24] {
  %param_0 = bf16[16,32]{1,0} parameter(0)
  %param_1 = bf16[32,24]{1,0} parameter(1)
  ROOT %dot.1 = bf16[16,24]{1,0} dot(bf16[16,32]{1,0} %param_0, bf16[32,24]{1,0} %param_1), \
lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main.3 (p0: bf16[16,32], p1: bf16[32,24]) -> bf16[16,24] {
  %p0 = bf16[16,32]{1,0} parameter(0)
  %p1 = bf16[32,24]{1,0} parameter(1)
  ROOT %triton_gemm = bf16[16,24]{1,0} fusion(bf16[16,32]{1,0} %p0, bf16[32,24]{1,0} %p1), \
kind=kCustom, calls=%triton_gemm_dot, backend_config={"operation_queue_id":"0",\
"wait_on_operation_queues":[],"fusion_backend_config":{"kind":"__triton_gemm",\
"triton_gemm_config":{"block_m":"16","block_n":"16","block_k":"32","split_k":"1",\
"num_stages":"1","num_warps":"4","num_ctas":"1"}},"force_earliest_schedule":false}
}
"""


def test_custom_fusion_is_a_library_kernel_with_its_dot_flops():
  cost = _cost(TRITON, listing=True)
  assert cost.kernels == {"library": 1}
  assert cost.flops == cost.matmul_flops == 2 * 16 * 24 * 32
  # Reads 16x32 and 32x24 bf16 (1024 + 1536 bytes), writes 16x24 bf16 (768).
  assert cost.bytes == 1024 + 1536 + 768
  assert cost.listing[0].what == "__triton_gemm"


# (f) Bytes per element type.

MIXED = """\
HloModule jit_mixed, is_scheduled=true

%fused_mixed (param_0: bf16[8], param_1: s32[8]) -> (f32[8], pred[8]) {
  %param_0 = bf16[8]{0} parameter(0)
  %param_1 = s32[8]{0} parameter(1)
  %convert.1 = f32[8]{0} convert(bf16[8]{0} %param_0)
  %convert.2 = f32[8]{0} convert(s32[8]{0} %param_1)
  %compare.1 = pred[8]{0} compare(f32[8]{0} %convert.1, f32[8]{0} %convert.2), direction=GT
  ROOT %tuple.1 = (f32[8]{0}, pred[8]{0}) tuple(f32[8]{0} %convert.1, pred[8]{0} %compare.1)
}

%fused_sum (param_0.1: f32[8,4]) -> f32[8] {
  %param_0.1 = f32[8,4]{1,0} parameter(0)
  %constant.1 = f32[] constant(0)
  ROOT %reduce.1 = f32[8]{0} reduce(f32[8,4]{1,0} %param_0.1, f32[] %constant.1), \
dimensions={1}, to_apply=%region_add
}

%region_add (lhs: f32[], rhs: f32[]) -> f32[] {
  %lhs = f32[] parameter(0)
  %rhs = f32[] parameter(1)
  ROOT %add.1 = f32[] add(f32[] %lhs, f32[] %rhs)
}

ENTRY %main.4 (p0: bf16[8], p1: s32[8], p2: f32[8,4]) -> ((f32[8], pred[8]), f32[8]) {
  %p0 = bf16[8]{0} parameter(0)
  %p1 = s32[8]{0} parameter(1)
  %p2 = f32[8,4]{1,0} parameter(2)
  %mixed = (f32[8]{0}, pred[8]{0}) fusion(bf16[8]{0} %p0, s32[8]{0} %p1), kind=kLoop, \
calls=%fused_mixed
  %sum = f32[8]{0} fusion(f32[8,4]{1,0} %p2), kind=kInput, calls=%fused_sum
  ROOT %tuple.2 = ((f32[8]{0}, pred[8]{0}), f32[8]{0}) tuple(%mixed, %sum)
}
"""


def test_bytes_follow_the_element_types():
  kernels = {k.name: k for k in _cost(MIXED, listing=True).listing}
  # Reads 8 bf16 (16 bytes) and 8 s32 (32), writes 8 f32 (32) and 8 pred (8). FLOPs: two
  # converts and a compare of 8 elements.
  assert (kernels["mixed"].bytes, kernels["mixed"].flops) == (16 + 32 + 32 + 8, 3 * 8)
  # Reads 8x4 f32 (128), writes 8 f32 (32). FLOPs: 32 inputs reduced to 8, 24 additions.
  assert (kernels["sum"].bytes, kernels["sum"].flops) == (128 + 32, 24)
  assert kernels["sum"].what == "kInput"


@pytest.mark.parametrize(
  "shape, bytes_",
  [
    ("bf16[3,5]", 30),
    ("f32[3,5]", 60),
    ("pred[3,5]", 15),
    ("s32[3,5]", 60),
    ("u8[7]", 7),
    ("f8e4m3fn[4]", 4),
    ("s4[6]", 3),
    ("f32[]", 4),
  ],
)
def test_array_bytes(shape, bytes_):
  (array,) = hlo_cost.parse_shape(shape)
  assert array.bytes == bytes_


# 3. Parsing.


def test_parse_shape_reads_tuples_with_index_comments_and_layouts():
  text = (
    "(s32[], f32[8,4]{1,0}, bf16[2,3,5]{2,1,0:T(8,128)(2,1)}, u32[1]{0}, pred[], "
    "/*index=5*/u8[0]{0}, f32[16]{0})"
  )
  assert hlo_cost.parse_shape(text) == [
    hlo_cost.Array("s32", ()),
    hlo_cost.Array("f32", (8, 4)),
    hlo_cost.Array("bf16", (2, 3, 5)),
    hlo_cost.Array("u32", (1,)),
    hlo_cost.Array("pred", ()),
    hlo_cost.Array("u8", (0,)),
    hlo_cost.Array("f32", (16,)),
  ]


def test_instruction_attr_reads_balanced_blocks_and_strings():
  config = '{"a":{"b":"x}y{","c":[1,{"d":2}]},"e":"say \\"}\\" {"}'
  text = f"""\
HloModule m

ENTRY %main (p: f32[2]) -> (f32[2], u8[0]) {{
  %p = f32[2]{{0}} parameter(0)
  ROOT %cc = (f32[2]{{0}}, /*index=1*/u8[0]{{0}}) custom-call(f32[2]{{0}} %p), \
custom_call_target="my$target", backend_config={config}, api_version=API_VERSION_STATUS_RETURNING, \
metadata={{op_name="jit(f)/g" source_file="a{{b}}.py"}}
}}
"""
  program = hlo_cost.Program(text)
  ins = program.computations["main"].by_name["cc"]
  assert ins.opcode == "custom-call"
  assert ins.operands == ["p"]
  assert ins.shape == [hlo_cost.Array("f32", (2,)), hlo_cost.Array("u8", (0,))]
  assert ins.attr("backend_config") == config
  assert ins.backend_config() == {"a": {"b": "x}y{", "c": [1, {"d": 2}]}, "e": 'say "}" {'}
  assert ins.attr("custom_call_target") == "my$target"
  assert ins.attr("api_version") == "API_VERSION_STATUS_RETURNING"
  assert ins.attr("metadata") == '{op_name="jit(f)/g" source_file="a{b}.py"}'
  assert ins.attr("window") is None
  assert program.computations["main"].root is ins


def test_lowered_text_parses_without_percent_signs():
  text = """\
HloModule jit_f, entry_computation_layout={(f32[4,3]{1,0})->f32[4]{0}}

region_0.1 {
  reduce_sum.1 = f32[] parameter(0)
  reduce_sum.2 = f32[] parameter(1)
  ROOT reduce_sum.3 = f32[] add(reduce_sum.1, reduce_sum.2)
}

ENTRY main.5 {
  x.1 = f32[4,3]{1,0} parameter(0)
  mul.1 = f32[4,3]{1,0} multiply(x.1, x.1)
  constant.1 = f32[] constant(0)
  ROOT reduce_sum.4 = f32[4]{0} reduce(mul.1, constant.1), dimensions={1}, to_apply=region_0.1
}
"""
  program = hlo_cost.Program(text)
  assert program.entry == "main.5"
  assert program.computations["main.5"].by_name["reduce_sum.4"].operands == ["mul.1", "constant.1"]
  # 12 multiplies, 12 - 4 = 8 additions.
  assert program.cost().flops == 12 + 8


# 2. Agreement with XLA's cost analysis on lowered programs.


def _agree(fn, *args) -> hlo_cost.Cost:
  lowered = jax.jit(fn).lower(*args)
  cost = hlo_cost.Program(lowered.as_text(dialect="hlo")).cost()
  xla = lowered.cost_analysis()
  assert cost.flops == pytest.approx(xla["flops"], rel=0.02)
  assert cost.transcendentals == pytest.approx(xla.get("transcendentals", 0.0), rel=0.02)
  return cost


def _conv3d(x, w):
  return jax.lax.conv_general_dilated(
    x, w, (2, 2, 2), "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
  )


def test_strided_3d_convolution_agrees_with_xla():
  x = jax.ShapeDtypeStruct((2, 5, 9, 9, 3), jnp.float32)
  w = jax.ShapeDtypeStruct((3, 3, 3, 3, 4), jnp.float32)
  cost = _agree(_conv3d, x, w)
  assert cost.matmul_flops == cost.flops > 0


def test_matmul_elementwise_and_reduction_agree_with_xla():
  def fn(a, b, c):
    y = jnp.tanh(a @ b * 2.0 + c)
    return jnp.sum(jnp.maximum(y, 0.0), axis=1) / 3.0

  shapes = [(16, 32), (32, 24), (24,)]
  cost = _agree(fn, *(jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes))
  assert cost.matmul_flops == 2 * 16 * 24 * 32
  assert cost.flops > cost.matmul_flops
  assert cost.transcendentals == 16 * 24


def test_gradient_of_conv_relu_mean_agrees_with_xla():
  def loss(w, x):
    y = jax.lax.conv_general_dilated(
      x, w, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jnp.mean(jax.nn.relu(y))

  w = jax.ShapeDtypeStruct((3, 3, 2, 4), jnp.float32)
  x = jax.ShapeDtypeStruct((2, 7, 7, 2), jnp.float32)
  # Both gradients: the data gradient is a convolution with lhs_dilate, the filter gradient
  # one with rhs_dilate.
  cost = _agree(jax.grad(loss, argnums=(0, 1)), w, x)
  assert cost.matmul_flops > 0.8 * cost.flops


def test_pooling_agrees_with_xla():
  def pool(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "SAME")

  # 2x4x4x3 = 96 outputs, a 3x3 window: XLA counts 96 x 8 = 768, hlo_cost 96 x 9 = 864.
  _agree(pool, jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32))


def test_real_train_step_agrees_with_xla():
  """The project's I3D train step (forward, backward, optimizer) on one device."""
  from lvef_jax import sharding
  from lvef_jax.training import state as state_lib
  from lvef_jax.training import steps

  config = load_config("i3d", "variant=mini")
  config.data.update(clip_frames=8, image_size=32)
  mesh = sharding.make_mesh(jax.devices()[:1])
  graphdef, state, tx = state_lib.create(config, steps_per_epoch=10)
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  shapes = {
    "video": jax.ShapeDtypeStruct((2, 8, 32, 32, 1), np.uint8),
    "ef": jax.ShapeDtypeStruct((2,), np.float32),
  }
  lowered = steps.make_train_step(graphdef, tx, mesh).lower(state, shapes)
  cost = hlo_cost.Program(lowered.as_text(dialect="hlo")).cost()
  assert cost.flops == pytest.approx(lowered.cost_analysis()["flops"], rel=0.02)
  assert cost.matmul_flops > 0.8 * cost.flops


def test_an_asynchronous_copy_writes_its_destination_only():
  """``copy-start``'s result is (destination, source, context): 128 bytes read, 128 written."""
  text = """\
HloModule m, is_scheduled=true

ENTRY %main (p: f32[4,8]) -> f32[4,8] {
  %p = f32[4,8]{1,0} parameter(0)
  %copy-start = (f32[4,8]{1,0:S(5)}, f32[4,8]{1,0}, u32[]) copy-start(f32[4,8]{1,0} %p)
  ROOT %copy-done = f32[4,8]{1,0:S(5)} copy-done(%copy-start)
}
"""
  cost = hlo_cost.Program(text).cost()
  assert cost.kernels == {"copy": 1} and cost.bytes == 256
