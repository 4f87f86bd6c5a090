"""Tests for planner.workspaces: library workspaces and the CUDA context, term by term.

Every expected figure is derived by hand in a comment from the source the module cites
(CublasHandlePool.cpp, Conv_v8.cpp, flash_api.cpp mha_bwd, kernel_backward.h).
"""

import subprocess
import sys
from pathlib import Path

import pytest

from planner.errors import PlannerError
from planner.result import DEFAULT_CONTEXT_BYTES
from planner.workspaces import (
    CUBLAS_DEFAULT_BYTES,
    CUBLAS_DEFAULT_BYTES_SM90_PLUS,
    EAGER_LOADING_EXTRA_BYTES,
    Term,
    context_term,
    cublas_workspace_bytes,
    efficient_backward_kernel,
    efficient_backward_scratch_bytes,
    flash_backward_scratch_bytes,
    parse_cublas_workspace_config,
    render_lines,
    total_bytes,
    workspace_terms,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _terms(**kw):
    args = dict(compute_capability=(8, 0), gpu_key=None, cublas_workspace_config=None,
                cudnn_benchmark=False, conv_workspace_hint_bytes=0, attention=())
    args.update(kw)
    return {t.name: t for t in workspace_terms(**args)}


# --- cuBLAS ----------------------------------------------------------------------------


def test_cublas_default_constants():
    # ":4096:2:16:8": 4096 KiB x 2 + 16 KiB x 8 = 8,388,608 + 131,072 = 8,519,680 B
    assert CUBLAS_DEFAULT_BYTES == 8_519_680
    # ":4096:8": 4096 KiB x 8 = 33,554,432 B = 32 MiB
    assert CUBLAS_DEFAULT_BYTES_SM90_PLUS == 33_554_432


@pytest.mark.parametrize("config, expected", [
    (":4096:8", 33_554_432),        # 4096 * 1024 * 8
    (":16:8", 131_072),             # 16 * 1024 * 8
    (":4096:2:16:8", 8_519_680),    # 4096 * 1024 * 2 + 16 * 1024 * 8
    (" :0:0 ", 0),                  # accepted by PyTorch too: no workspace
])
def test_parse_cublas_workspace_config(config, expected):
    assert parse_cublas_workspace_config(config) == expected


@pytest.mark.parametrize("config", ["4096:8", ":4096", ":a:8", "", ":4096:8 junk", ":4096:8:", "4096"])
def test_parse_cublas_workspace_config_rejects(config):
    with pytest.raises(PlannerError, match="CUBLAS_WORKSPACE_CONFIG"):
        parse_cublas_workspace_config(config)


def test_bad_config_through_workspace_terms_names_the_variable():
    with pytest.raises(PlannerError, match="CUBLAS_WORKSPACE_CONFIG"):
        workspace_terms(compute_capability=(8, 0), gpu_key=None, cublas_workspace_config="4096x8",
                        cudnn_benchmark=False, conv_workspace_hint_bytes=0)


@pytest.mark.parametrize("cc, expected", [
    ((7, 0), 8_519_680), ((7, 5), 8_519_680), ((8, 0), 8_519_680), ((8, 6), 8_519_680), ((8, 9), 8_519_680),
    ((9, 0), 33_554_432), ((10, 0), 33_554_432), ((12, 0), 33_554_432),
    (None, 33_554_432),  # unknown generation: the larger default
])
def test_cublas_workspace_per_generation(cc, expected):
    assert cublas_workspace_bytes(cc) == expected


def test_cublas_term_default_sm80():
    # 8,519,680 B per (handle, stream) x 2 handles (Python thread + autograd thread) x 1 stream
    t = _terms()["cuBLAS workspaces"]
    assert t.bytes == 17_039_360
    assert t.calibrated is False
    assert "CublasHandlePool.cpp" in t.source


def test_cublas_term_hopper_and_config():
    # sm90 default: 33,554,432 B x 2 = 67,108,864 B
    assert _terms(compute_capability=(9, 0))["cuBLAS workspaces"].bytes == 67_108_864
    # CUBLAS_WORKSPACE_CONFIG=":16:8" overrides the default: 131,072 B x 2 = 262,144 B
    assert _terms(compute_capability=(9, 0), cublas_workspace_config=":16:8")["cuBLAS workspaces"].bytes == 262_144
    # two streams, two threads: 8,519,680 B x 4 = 34,078,720 B
    assert _terms(streams=2)["cuBLAS workspaces"].bytes == 34_078_720
    # one thread, one stream: a single workspace
    assert _terms(threads=1)["cuBLAS workspaces"].bytes == 8_519_680


def test_cublaslt_only_when_not_unified():
    assert "cuBLASLt workspaces" not in _terms()
    # TORCH_CUBLASLT_UNIFIED_WORKSPACE=0: 1024 KiB per (handle, stream) x 2 = 2,097,152 B
    assert _terms(cublaslt_unified=False)["cuBLASLt workspaces"].bytes == 2_097_152


# --- cuDNN conv ---------------------------------------------------------------------------


def test_conv_workspace_terms():
    assert "cuDNN conv workspace" not in _terms()  # no conv, no term
    # heuristic: 1.0 x (input+output) = 1,000,000 B
    t = _terms(conv_workspace_hint_bytes=1_000_000)["cuDNN conv workspace"]
    assert t.bytes == 1_000_000
    assert "Conv_v8.cpp" in t.source and "assumption" in t.note and t.calibrated is False
    # cudnn.benchmark: 2.0 x (input+output) = 2,000,000 B
    t = _terms(conv_workspace_hint_bytes=1_000_000, cudnn_benchmark=True)["cuDNN conv workspace"]
    assert t.bytes == 2_000_000
    assert "benchmark" in t.note


def test_conv_hint_must_be_non_negative_int():
    with pytest.raises(PlannerError, match="conv_workspace_hint_bytes"):
        _terms(conv_workspace_hint_bytes=-1)


# --- flash attention backward ------------------------------------------------------------


def test_flash_scratch_65536_queries():
    # batch 1, 1 head, 65,536 queries, head dim 64, fp16 (mha_bwd):
    # seqlen_q_rounded = round(65536, 128) = 65,536; head_size_rounded = round(64, 32) = 64
    # dq_accum  = 1 * 65,536 * 1 * 64 * 4 B = 16,777,216 B
    # softmax_d = 1 * 1 * 65,536 * 4 B      =    262,144 B
    assert flash_backward_scratch_bytes(1, 1, 65536, 64) == 17_039_360


def test_flash_scratch_rounding():
    # seq 1000 -> 1024; head dim 40 (<= 128) -> multiple of 32: 64
    # dq_accum = 2 * 1024 * 3 * 64 * 4 = 1,572,864; softmax_d = 2 * 3 * 1024 * 4 = 24,576
    assert flash_backward_scratch_bytes(2, 3, 1000, 40) == 1_597_440
    # head dim 160 (> 128) -> multiple of 64: 192; seq 128 stays 128
    # dq_accum = 128 * 192 * 4 = 98,304; softmax_d = 128 * 4 = 512
    assert flash_backward_scratch_bytes(1, 1, 128, 160) == 98_816
    # head dim 36 is padded to 40 first, then to 64: same as 40
    assert flash_backward_scratch_bytes(2, 3, 1000, 36) == 1_597_440


# --- memory-efficient attention backward ---------------------------------------------------


def test_efficient_kernel_choice():
    # first kernel of cutlassB.h's dispatch order whose kMaxK covers the head dim
    assert efficient_backward_kernel(32, "float16", (8, 0)) == (64, 64, 32)
    assert efficient_backward_kernel(64, "bfloat16", (8, 0)) == (64, 64, 64)
    assert efficient_backward_kernel(128, "float16", (8, 0)) == (128, 128, 128)
    assert efficient_backward_kernel(128, "float16", (9, 0)) == (128, 128, 128)
    assert efficient_backward_kernel(96, "float16", (8, 6)) == (128, 64, 96)    # sm86/89 only
    assert efficient_backward_kernel(128, "float16", (8, 9)) == (64, 64, 128)   # 128x128 assumed too big
    assert efficient_backward_kernel(128, "float16", (7, 5)) == (128, 64, 128)  # sm70/75 list
    assert efficient_backward_kernel(512, "float16", (8, 0)) == (128, 64, 65536)
    assert efficient_backward_kernel(512, "float32", (8, 0)) == (64, 64, 65536)


def test_efficient_scratch_head128_by_generation():
    # B=1, H=8, 1,024 queries and keys, D=128, fp16
    # sm80: 128x128 k128, kMaxK 128 <= 128 -> dK/dV in registers
    # gq = ceil(1024/128) * ceil(128/128) * (16 + 4*128*128)/4 = 8 * 1 * 16,388 = 131,104 floats
    # workspace = 8 * 131,104 * 4 B = 4,195,328 B
    assert efficient_backward_scratch_bytes(1, 8, 1024, 1024, 128, "float16", (8, 0)) == 4_195_328
    # sm86: 64x64 k128, kMaxK 128 > 64 -> dK/dV in gmem
    # splits = min(ceil(1024/64) = 16, 200 // 8 = 25) = 16
    # gk = gv = 16 * 64 * align_up(128, 64) = 131,072; gq = 16 * 2 * 4,100 = 131,200
    # workspace = 8 * (131,072 * 2 + 131,200) * 4 B = 8 * 393,344 * 4 = 12,587,008 B
    assert efficient_backward_scratch_bytes(1, 8, 1024, 1024, 128, "float16", (8, 6)) == 12_587_008


def test_efficient_scratch_head64():
    # fp16, D=64: kernel 64x64, kMaxK 64 <= kBlockSizeI 64 -> dK/dV stay in registers
    # gq = ceil(4096/64) * ceil(64/64) * (16 + 4*64*64)/4 floats = 64 * 1 * 4,100 = 262,400
    # workspace = 1 * 1 * align4(262,400) * 4 B = 1,049,600 B
    assert efficient_backward_scratch_bytes(1, 1, 4096, 4096, 64, "float16", (8, 0)) == 1_049_600
    # fp32: no dK/dV accumulators (accumulator type == output type); dQ still accumulated
    # (split keys on sm >= 70): the same 1,049,600 B
    assert efficient_backward_scratch_bytes(1, 1, 4096, 4096, 64, "float32", (8, 0)) == 1_049_600
    # fp32 before sm70: no split keys, no accumulators at all
    assert efficient_backward_scratch_bytes(1, 1, 4096, 4096, 64, "float32", (6, 1)) == 0


def test_efficient_scratch_monai_single_head_512():
    # MONAI AutoencoderKL bottleneck attention: B=1, one head, 65,536 tokens, D=512, fp16
    # kernel 128x64, kMaxK 65536 -> dK/dV accumulated in gmem
    # num_splits_key = ceil(65536/64) = 1,024 -> min(1,024, 200 // (1*1)) = 200
    # gk = gv = 200 * 64 * align_up(512, 128) = 6,553,600 floats
    # gq = ceil(65536/128) * ceil(512/64) * (16 + 4*128*64)/4 = 512 * 8 * 8,196 = 33,570,816 floats
    # total = 6,553,600 * 2 + 33,570,816 = 46,678,016 floats * 4 B = 186,712,064 B
    assert efficient_backward_scratch_bytes(1, 1, 65536, 65536, 512, "float16", (8, 0)) == 186_712_064


def test_efficient_scratch_split_key_cap():
    # B*H = 256 >= 256 and num_keys 128 <= 2*64 -> 1 split; then min(1, 200 // 256 = 0) = 0 -> 1
    # D=256 fp16: kernel 128x64 kMaxK 65536 -> dK/dV in gmem
    # gk = gv = 1 * 64 * align_up(256, 128) = 16,384; gq = 1 * 4 * 8,196 = 32,784
    # per (b, h): 65,552 floats; total = 256 * 65,552 * 4 B = 67,125,248 B
    assert efficient_backward_scratch_bytes(8, 32, 128, 128, 256, "float16", (8, 0)) == 67_125_248


def test_attention_term_takes_the_largest_call():
    calls = [(1, 1, 65536, 65536, 64, "float16", "flash"),
             (1, 1, 65536, 65536, 512, "float16", "efficient"),
             (1, 1, 4096, 4096, 512, "float32", "math")]
    t = _terms(attention=calls)["attention backward scratch"]
    assert t.bytes == 186_712_064  # the efficient call (flash: 17,039,360; math: 0)
    assert "17,039,360" in t.note and "mha_bwd" in t.source and "kernel_backward.h" in t.source
    assert t.calibrated is False


def test_attention_math_only_is_zero_and_cudnn_is_reported():
    assert _terms(attention=[(1, 1, 64, 64, 64, "f32", "math")])["attention backward scratch"].bytes == 0
    t = _terms(attention=[(1, 1, 64, 64, 64, "bf16", "cudnn")])["attention backward scratch"]
    assert t.bytes == 0 and "not modelled" in t.note


@pytest.mark.parametrize("call, match", [
    ((1, 1, 64, 64, 64, "float16"), "attention\\[0\\]"),
    ((1, 1, 64, 64, 64, "float32", "flash"), "flash"),
    ((1, 1, 64, 64, 512, "float16", "flash"), "flash"),
    ((1, 1, 64, 64, 64, "float16", "fastest"), "backend"),
    ((0, 1, 64, 64, 64, "float16", "efficient"), "batch"),
    ((1, 1, 64, 64, 64, "int8", "efficient"), "dtype"),
])
def test_attention_call_errors(call, match):
    with pytest.raises(PlannerError, match=match):
        _terms(attention=[call])


# --- CUDA context -----------------------------------------------------------------------


def test_context_by_card_generation_and_fallback():
    # RTX 3090 reading: 256 MiB = 268,435,456 B (InvokeAI issue #9413)
    assert context_term((8, 6), "rtx3090").bytes == 268_435_456
    # another sm86 card gets the same-generation reading
    t = context_term((8, 6), "a10")
    assert t.bytes == 268_435_456 and "same generation" in t.note
    # sm89: 426 MiB = 446,693,376 B (unsloth-zoo pull request #1053)
    assert context_term((8, 9), None).bytes == 446_693_376
    # sm90: no public reading found -> planner/result.py DEFAULT_CONTEXT_BYTES
    t = context_term((9, 0), "h100-sxm")
    assert t.bytes == DEFAULT_CONTEXT_BYTES == 446_693_376
    assert "no public reading" in t.note and t.calibrated is False
    assert context_term(None, None).bytes == DEFAULT_CONTEXT_BYTES


def test_context_eager_loading():
    # pull request #86509: 666,632,192 - 287,047,680 = 379,584,512 B more with EAGER
    assert EAGER_LOADING_EXTRA_BYTES == 379_584_512
    assert context_term((8, 6), "rtx3090", "eager").bytes == 268_435_456 + 379_584_512
    with pytest.raises(PlannerError, match="CUDA_MODULE_LOADING"):
        context_term((8, 6), None, "sometimes")


# --- the whole breakdown ----------------------------------------------------------------------


def test_workspace_terms_order_total_and_render():
    terms = workspace_terms(compute_capability=(8, 6), gpu_key="rtx3090", cublas_workspace_config=None,
                            cudnn_benchmark=False, conv_workspace_hint_bytes=1_000_000,
                            attention=[(1, 1, 65536, 65536, 64, "float16", "flash")])
    assert [t.name for t in terms] == ["cuBLAS workspaces", "cuDNN conv workspace",
                                       "attention backward scratch", "CUDA context"]
    # 17,039,360 (cuBLAS) + 1,000,000 (conv) + 17,039,360 (flash) + 268,435,456 (context)
    assert total_bytes(terms) == 303_514_176
    assert all(t.source and t.calibrated is False for t in terms)
    lines = render_lines(terms)
    assert lines[-1].startswith("total") and "303,514,176 B" in lines[-1]
    assert sum("uncalibrated" in line for line in lines) == 4


@pytest.mark.parametrize("kw, match", [
    (dict(compute_capability=(8,)), "compute_capability"),
    (dict(compute_capability="8.0"), "compute_capability"),
    (dict(streams=0), "streams"),
    (dict(threads=True), "threads"),
])
def test_workspace_terms_argument_errors(kw, match):
    with pytest.raises(PlannerError, match=match):
        _terms(**kw)


def test_term_rejects_negative_bytes():
    with pytest.raises(PlannerError, match="bytes"):
        Term("x", -1, "src")


def test_torch_free_import():
    code = "import sys, planner.workspaces; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)
