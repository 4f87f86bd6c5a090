"""SDPA backend choice: the port of CUDA's select_sdp_backend (sdp_utils.cpp), one test per
constraint, the math-kernel note, and the torch-free analytic port agreeing with it."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from planner.measure.cuda_emulation import CudaEmulation, SdpaChoice, math_scores_bytes, sdpa_backend  # noqa: E402

F = torch.nn.functional
aten = torch.ops.aten


def t(*shape, dtype=torch.float16, requires_grad=False):
    return torch.empty(*shape, dtype=dtype, device="meta", requires_grad=requires_grad)


def transposed(b, h, L, d, dtype=torch.float16):
    """(b, h, L, d) made by transposing a (b, h, d, L) tensor, as a channels-first model does."""
    return t(b, h, d, L, dtype=dtype).transpose(-1, -2)


# --- one test per constraint ------------------------------------------------------------


def test_fp16_small_head_dim_runs_flash():
    q = t(2, 4, 64, 64)
    c = sdpa_backend(q, q, q)
    assert c == "flash" and isinstance(c, SdpaChoice) and c.reasons == ()


def test_dtype_fp32_runs_efficient_not_flash():
    # check_dtypes_flash_attention: sm80 flash takes fp16/bf16 only; mem-efficient takes fp32
    q = t(2, 4, 64, 64, dtype=torch.float32)
    c = sdpa_backend(q, q, q)
    assert c.backend == "efficient"
    assert c.reasons == ("flash: dtype float32/float32/float32 (needs float16/bfloat16)",)


def test_dtype_bf16_runs_flash():
    q = t(2, 4, 64, 64, dtype=torch.bfloat16)
    assert sdpa_backend(q, q, q) == "flash"


def test_dtype_fp64_runs_math():
    q = t(2, 4, 64, 64, dtype=torch.float64)
    c = sdpa_backend(q, q, q)
    assert c == "math" and "memory-efficient: dtype float64" in c.reasons[1]


def test_head_dim_above_256_is_not_flash():
    # check_head_dim_size_flash: equal head dims <= 256 (CUDA); mem-efficient has no maximum
    q = t(1, 1, 64, 512)
    c = sdpa_backend(q, q, q)
    assert c == "efficient" and c.reasons == ("flash: head dims 512/512/512 (needs equal and <= 256)",)


def test_head_dim_256_is_flash():
    q = t(1, 1, 64, 256)
    assert sdpa_backend(q, q, q) == "flash"


def test_head_dim_not_multiple_of_8_fp16_flash_pads():
    # flash has no alignment check on CUDA: attention.cpp pads the head dim to a multiple of
    # 8 (pad_last_dim<8>) and slices the output back
    q = t(1, 2, 64, 12)
    assert sdpa_backend(q, q, q) == "flash"


def test_head_dim_not_aligned_and_too_big_for_flash_runs_math():
    # 300 > 256 rules out flash; check_head_dim_size_mem_efficient needs multiples of
    # minimum_gemm_alignment = 8 for fp16 on sm80
    q = t(1, 1, 64, 300)
    c = sdpa_backend(q, q, q)
    assert c == "math"
    assert c.reasons[1] == "memory-efficient: head dims 300/300/300 (needs q == k and multiples of 8)"


def test_fp32_head_dim_alignment_is_4():
    assert sdpa_backend(*[t(1, 1, 64, 12, dtype=torch.float32)] * 3) == "efficient"  # 12 % 4 == 0
    c = sdpa_backend(*[t(1, 1, 64, 6, dtype=torch.float32)] * 3)
    assert c == "math" and "multiples of 4" in c.reasons[1]


def test_value_head_dim_differs():
    # flash needs q, k, v head dims equal; mem-efficient only q == k (v aligned)
    q, v = t(1, 1, 64, 64), t(1, 1, 64, 32)
    c = sdpa_backend(q, q, v)
    assert c == "efficient" and c.reasons[0].startswith("flash: head dims 64/64/32")


def test_attn_mask_rules_out_flash():
    q = t(1, 2, 64, 32)
    c = sdpa_backend(q, q, q, t(64, 64))
    assert c == "efficient" and c.reasons == ("flash: an attn_mask is given",)


def test_mask_with_non_contiguous_last_dim_runs_math():
    # check_last_dim_stride_equals_1_dense: on GPU the mask's last dimension needs stride 1
    q = t(1, 2, 64, 32)
    mask = t(64, 64).t()
    c = sdpa_backend(q, q, q, mask)
    assert c == "math" and c.reasons[1] == "memory-efficient: last dimension of attn_mask not contiguous: stride 64"


def test_dropout_does_not_rule_out_fused_kernels_on_sm80():
    # check_for_dropout is a CPU-only check (sdp_utils_cpp.cpp); CUDA flash and mem-efficient
    # have dropout
    q = t(1, 2, 64, 32, requires_grad=True)
    assert sdpa_backend(q, q, q, dropout_p=0.1) == "flash"


def test_sm86_training_head_dim_constraints():
    # check_requires_grad_and_head_dim_gt192_constraints_on_sm86_89_or_120
    g200 = t(1, 1, 64, 200, requires_grad=True)
    c = sdpa_backend(g200, g200, g200, compute_capability=(8, 6))
    assert c == "efficient" and "training with head dim 200 on sm86" in c.reasons[0]
    g240 = t(1, 1, 64, 240, requires_grad=True)
    assert sdpa_backend(g240, g240, g240, compute_capability=(8, 9)) == "flash"  # > 224 without dropout
    assert sdpa_backend(g240, g240, g240, dropout_p=0.1, compute_capability=(8, 9)) == "efficient"
    n200 = t(1, 1, 64, 200)  # no gradient: no constraint
    assert sdpa_backend(n200, n200, n200, compute_capability=(8, 6)) == "flash"
    assert sdpa_backend(g200, g200, g200) == "flash"  # sm80: none of this applies
    with torch.no_grad():  # input_requires_grad needs grad mode too
        assert sdpa_backend(g200, g200, g200, compute_capability=(8, 6)) == "flash"


def test_hardware_below_sm80_has_no_flash():
    q = t(1, 1, 64, 64)
    c = sdpa_backend(q, q, q, compute_capability=(7, 5))
    assert c == "efficient" and c.reasons == ("flash: needs sm80..sm121, GPU is sm75",)
    # below sm80 mem-efficient takes fp16/fp32 only
    b = t(1, 1, 64, 64, dtype=torch.bfloat16)
    assert sdpa_backend(b, b, b, compute_capability=(7, 5)) == "math"


def test_causal_with_non_square_lengths_is_not_flash():
    q, k = t(1, 1, 32, 64), t(1, 1, 64, 64)
    c = sdpa_backend(q, k, k, is_causal=True)
    assert c == "efficient" and "is_causal with query length 32 != key length 64" in c.reasons[0]
    assert sdpa_backend(q, k, k) == "flash"


def test_transposed_q_last_dim_not_contiguous_runs_math():
    q = transposed(1, 2, 4096, 32)
    k = t(1, 2, 4096, 32)
    c = sdpa_backend(q, k, k)
    assert c == "math"
    assert c.reasons == (
        "flash: last dimension of q not contiguous: stride 4096",
        "memory-efficient: last dimension of q not contiguous: stride 4096",
    )
    assert c.why == "last dimension of q not contiguous: stride 4096"


def test_head_dim_1_ignores_the_stride_for_flash_only():
    # check_last_dim_stride_equals_1_dense<ignore_singleton_dim=true> for flash, false for
    # mem-efficient (pytorch issue 116333); head dim 1 is not 8-aligned for mem-efficient anyway
    q = t(1, 1, 1, 64).transpose(-1, -2)  # (1, 1, 64, 1) with stride(-1) 64
    assert q.stride(-1) == 64 and q.shape[-1] == 1
    assert sdpa_backend(q, q, q) == "flash"


def test_three_dimensional_qkv_run_math():
    # check_tensor_shapes: every fused kernel needs 4-D q/k/v; the math kernel takes any
    # batch dims
    q = t(2, 64, 32)
    c = sdpa_backend(q, q, q)
    assert c == "math" and c.why == "q/k/v must be 4-D, got 3-D/3-D/3-D"
    assert sdpa_backend(*[t(2, 3, 4, 64, 32)] * 3) == "math"  # 5-D too


def test_three_dimensional_qkv_do_not_crash_the_emulation():
    with FakeTensorMode(), CudaEmulation() as emu, torch.autocast("cpu", dtype=torch.float16):
        q = torch.randn(2, 64, 32, requires_grad=True)
        out = F.scaled_dot_product_attention(q, q, q)
        out.sum().backward()
    assert out.shape == (2, 64, 32) and out.dtype == torch.float16
    assert emu.notes and "runs the math kernel (q/k/v must be 4-D" in emu.notes[0]


def test_zero_sequence_length_runs_math():
    q, k = t(1, 2, 64, 32), t(1, 2, 0, 32)
    c = sdpa_backend(q, k, k)
    assert c == "math" and c.why == "zero sequence length (query 64, key 0)"


def test_batch_size_mismatch_runs_math():
    q, k = t(2, 2, 64, 32), t(1, 2, 64, 32)
    c = sdpa_backend(q, k, k)
    assert c == "math" and c.why == "q/k/v batch sizes differ (2/1/1)"


def test_num_heads_mismatch_runs_math_unless_gqa():
    q, k = t(1, 8, 64, 32), t(1, 2, 64, 32)
    c = sdpa_backend(q, k, k)
    assert c == "math" and c.why == "q/k/v numbers of heads differ (8/2/2)"
    # enable_gqa: check_grouped_query_attention (k heads == v heads, dividing q heads)
    assert sdpa_backend(q, k, k, enable_gqa=True) == "flash"
    c = sdpa_backend(q, t(1, 3, 64, 32), t(1, 3, 64, 32), enable_gqa=True)
    # (memory-efficient never takes grouped heads: check_batch_size_and_num_heads_dense<false>)
    assert c == "math" and c.why == ("flash: key/value heads (3) do not divide query heads (8); "
                                     "memory-efficient: q/k/v numbers of heads differ (8/3/3)")
    c = sdpa_backend(q, k, t(1, 4, 64, 32), enable_gqa=True)
    assert c == "math" and c.why == ("flash: key and value have different numbers of heads (2/4); "
                                     "memory-efficient: q/k/v numbers of heads differ (8/2/4)")


def test_gqa_is_flash_only_mem_efficient_rejects_grouped_heads():
    # sdp_utils.cpp can_use_mem_efficient_attention instantiates
    # check_batch_size_and_num_heads_dense<false /*supports_grouped_query_attention=*/>: fp32 (flash
    # out by dtype) with 2 k/v heads for 8 query heads runs math even with enable_gqa (a Llama
    # config's grouped-query attention in fp32); equal heads with enable_gqa stay efficient
    q, k = t(1, 8, 64, 32, dtype=torch.float32), t(1, 2, 64, 32, dtype=torch.float32)
    c = sdpa_backend(q, k, k, enable_gqa=True)
    assert c == "math" and "memory-efficient: q/k/v numbers of heads differ (8/2/2)" in c.reasons
    assert sdpa_backend(q, q, q, enable_gqa=True) == "efficient"


def test_misaligned_storage_offset_rules_out_mem_efficient():
    # check_data_ptr_alignment_mem_efficient (sm80+): offset * element size aligned to the
    # gemm alignment; fp32 so flash is out by dtype
    base = t(1, 1, 64, 33, dtype=torch.float32)
    q = base[..., 1:]  # storage offset 1, stride(-1) 1, head dim 32
    k = t(1, 1, 64, 32, dtype=torch.float32)
    c = sdpa_backend(q, k, k)
    assert c == "math" and c.reasons[1] == "memory-efficient: q storage offset 1 not a multiple of 4 elements"


def test_runtime_switches_and_sdpa_kernel_are_honoured():
    q = t(1, 2, 64, 32)
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        c = sdpa_backend(q, q, q)
        assert c == "efficient" and c.reasons[0].startswith("flash: disabled")
    with sdpa_kernel([SDPBackend.MATH]):
        c = sdpa_backend(q, q, q)
        assert c == "math" and len(c.reasons) == 2
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        with pytest.raises(RuntimeError, match="No available kernel"):
            sdpa_backend(transposed(1, 2, 64, 32), q, q)


def test_choice_compares_with_strings():
    q = t(1, 1, 64, 32)
    c = sdpa_backend(q, q, q)
    assert c == "flash" and c != "math" and str(c) == "flash"
    assert c == SdpaChoice("flash")


def test_math_scores_bytes():
    # attention.cpp _scaled_dot_product_attention_math upcasts fp16/bf16 q/k/v to fp32
    q, k = t(2, 4, 128, 32), t(2, 4, 256, 32)
    assert math_scores_bytes(q, k) == 2 * 4 * 128 * 256 * 4
    assert math_scores_bytes(q.float(), k.float()) == 2 * 4 * 128 * 256 * 4
    prev = torch._C._get_math_sdp_allow_fp16_bf16_reduction()
    torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)
    try:
        assert math_scores_bytes(q, k) == 2 * 4 * 128 * 256 * 2
    finally:
        torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(prev)


# --- what the emulated op runs -------------------------------------------------------------


class _OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func)
        return func(*args, **(kwargs or {}))


def _run(q, k, v, **kw):
    log = _OpLog()
    with log:
        out = F.scaled_dot_product_attention(q, k, v, **kw)
    return out, log.ops


def test_emulated_ops_follow_the_choice():
    with FakeTensorMode(), CudaEmulation() as emu:
        h = torch.randn(1, 2, 64, 32, dtype=torch.float16, requires_grad=True)
        _, ops = _run(h, h, h)
        assert aten._scaled_dot_product_flash_attention.default in ops
        # head dim 12: pad_last_dim<8> pads q, k, v to 16; the output is sliced back
        h12 = torch.randn(1, 2, 64, 12, dtype=torch.float16)
        out, ops = _run(h12, h12, h12)
        assert ops.count(aten.constant_pad_nd.default) == 3 and out.shape[-1] == 12
        # a bool mask becomes an additive mask (convert_boolean_attn_mask); mem-efficient
        # gets it padded to 8 and expanded (preprocess_mask)
        m = torch.ones(64, 64, dtype=torch.bool)
        _, ops = _run(h, h, h, attn_mask=m)
        assert aten.where.self in ops and aten._scaled_dot_product_efficient_attention.default in ops
        # transposed q: math, with its explicit scores
        ht = torch.randn(1, 2, 32, 64, dtype=torch.float16).transpose(-1, -2)
        _, ops = _run(ht, h, h)
        assert aten.bmm.default in ops and aten._scaled_dot_product_flash_attention.default not in ops
    assert len(emu.notes) == 1
    assert emu.notes[0] == (
        "attention (outside any tracked module) runs the math kernel "
        "(last dimension of q not contiguous: stride 64): its scores take 0.00 GiB"
    )


def test_emulated_math_path_matches_torchs_own_wrapper_op_for_op():
    # attention.cpp scaled_dot_product_attention's math branch is device-independent: the
    # real CPU wrapper forced onto math (sdpa_kernel) must run exactly the ops the emulated
    # CUDA wrapper runs on fake tensors (mask conversion, fp32 upcast, scores, softmax)
    def ops_of(run):
        log = _OpLog()
        with log:
            run()
        return [f for f in log.ops if f is not torch.ops.prim.device.default]

    q = torch.randn(2, 3, 8, 16, dtype=torch.float16).transpose(-1, -2).detach().requires_grad_()
    m = torch.ones(16, 16, dtype=torch.bool)
    with sdpa_kernel([SDPBackend.MATH]):
        real = ops_of(lambda: F.scaled_dot_product_attention(q, q, q, attn_mask=m).sum().backward())
    with FakeTensorMode(), CudaEmulation():
        # the same tensors with a transposed layout: the fused kernels reject them on CUDA
        qf = torch.randn(2, 3, 8, 16, dtype=torch.float16).transpose(-1, -2).detach().requires_grad_()
        mf = torch.ones(16, 16, dtype=torch.bool)
        fake = ops_of(lambda: F.scaled_dot_product_attention(qf, qf, qf, attn_mask=mf).sum().backward())
    assert aten._safe_softmax.default in real and aten.where.self in real
    assert fake == real


# --- end to end: a model that transposes q/k/v, profiled -----------------------------------


class TransposedAttention(torch.nn.Module):
    """q/k/v made from a channels-first (b, c, N) tensor by a transpose, as a 3D VAE's
    attention does: (b, heads, N, d) views whose last dimension has stride N."""

    def __init__(self, channels: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.qkv = torch.nn.Conv3d(channels, 3 * channels, 1)
        self.heads = heads

    def forward(self, x):
        b, c, *spatial = x.shape
        n = 1
        for s in spatial:
            n *= s
        q, k, v = self.qkv(x).reshape(b, 3, self.heads, c // self.heads, n).unbind(1)
        q, k, v = (self.layout(y.transpose(-1, -2)) for y in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(-1, -2).reshape(b, c, *spatial)

    def layout(self, y):
        return y  # the transposed view itself: last-dimension stride N


class TinyVaeBlock(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = TransposedAttention()

    def forward(self, x):
        return x + self.attn(x)


def tiny_vae_block() -> torch.nn.Module:
    return TinyVaeBlock()


def test_profile_of_transposed_attention_counts_the_math_scores(monkeypatch):
    from planner.measure.profile import profile
    from planner.measure.builtin_trace import run_step
    from planner.spec import TrainingSetup

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.setitem(sys.modules, "sdpa_e2e_models", sys.modules[__name__])
    setup = TrainingSetup()  # AMP float16: q/k/v come out of the conv in fp16
    shape = (2, 32, 16, 16, 8)  # N = 16*16*8 = 2048 tokens, 2 heads of 16 channels
    # The math kernel's scores: B * H * L * L elements; attention.cpp's math kernel upcasts
    # fp16 q/k/v to fp32, so 4 bytes each (2 bytes only with
    # allow_fp16_bf16_reduction_math_sdp): 2 * 2 * 2048 * 2048 * 4 = 67,108,864 B = 0.0625 GiB
    scores = 2 * 2 * 2048 * 2048 * 4
    rec = run_step(setup, "fake", custom_model="sdpa_e2e_models:tiny_vae_block", custom_input=shape)
    assert rec.tracker.notes == [
        "attention in model.attn runs the math kernel (last dimension of q not contiguous: stride 2048): "
        "its scores take 0.06 GiB"
    ]
    # the fp32 softmax output (saved for backward) is live at the peak, and the peak holds it
    live = [i.nbytes for i in rec.tracker.live_at_peak]
    assert scores in live
    assert rec.tracker.peak_bytes >= scores
    # flash (contiguous q/k/v) would need no L x L tensor at all
    assert all(n < scores for n in _flash_variant_live(setup, shape))

    report = profile(setup, "fake", custom_model="sdpa_e2e_models:tiny_vae_block", custom_input=shape)
    assert any(n.startswith("attention in model.attn runs the math kernel") for n in report.notes)
    assert report.peak_allocated_bytes == rec.tracker.peak_bytes
    assert any("runs the math kernel" in n for n in report.to_json()["notes"])


class ContiguousAttention(TransposedAttention):
    def layout(self, y):
        return y.contiguous()  # a copy with stride 1: the fused kernels accept it


def contiguous_block() -> torch.nn.Module:
    m = TinyVaeBlock()
    m.attn = ContiguousAttention()
    return m


def _flash_variant_live(setup, shape):
    from planner.measure.builtin_trace import run_step

    rec = run_step(setup, "fake", custom_model="sdpa_e2e_models:contiguous_block", custom_input=shape)
    assert rec.tracker.notes == []
    return [i.nbytes for i in rec.tracker.live_at_peak]


def test_report_renders_the_note():
    from io import StringIO

    from rich.console import Console

    from planner.report.terminal import render_report
    from planner.result import Breakdown, MemoryReport

    note = "attention in a.b runs the math kernel (last dimension of q not contiguous: stride 4096): its scores take 16.00 GiB"
    rep = MemoryReport(
        source="profile:fake", peak_allocated_bytes=1, peak_reserved_bytes=1, device_total_bytes=1,
        breakdown=Breakdown({"activations": 1}, {"model": 1}), reserved_basis="", context_bytes=0,
        context_basis="", notes=(note,),
    )
    buf = StringIO()
    render_report(rep, None, Console(file=buf, width=400))
    assert note in buf.getvalue()
    assert note in rep.to_json()["notes"]


# --- the torch-free port (planner.analytic.ops.sdpa_choice) agrees case by case ------------

_DT = {torch.float16: "f16", torch.bfloat16: "bf16", torch.float32: "f32", torch.float64: "f64"}


def _torch_free(q, k, v, mask=None, **kw):
    from planner.analytic import ops as O

    rg = (q.requires_grad or k.requires_grad or v.requires_grad) and torch.is_grad_enabled()
    return O.sdpa_choice(
        tuple(q.shape), tuple(k.shape), tuple(v.shape), (_DT[q.dtype], _DT[k.dtype], _DT[v.dtype]),
        requires_grad=rg, mask_stride=None if mask is None else mask.stride(-1),
        strides=(q.stride(-1), k.stride(-1), v.stride(-1)),
        offsets=(q.storage_offset(), k.storage_offset(), v.storage_offset()),
        **{("cc" if n == "compute_capability" else n): x for n, x in kw.items()},
    )


def _cases():
    dtypes = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    head_dims = (1, 6, 12, 32, 200, 240, 256, 300, 512)
    for dt, d in itertools.product(dtypes, head_dims):
        q = t(2, 4, 64, d, dtype=dt)
        yield (q, q, q), {}
        yield (t(2, 4, 64, d, dtype=dt, requires_grad=True),) * 3, {"compute_capability": (8, 6), "dropout_p": 0.1}
        yield (t(2, 4, 64, d, dtype=dt, requires_grad=True),) * 3, {"compute_capability": (8, 9)}
        yield (q, q, q), {"compute_capability": (7, 5)}
        yield (q, q, q), {"mask": t(64, 64, dtype=dt)}
        yield (q, q, q), {"mask": t(64, 64, dtype=dt).t()}
        yield (transposed(2, 4, 64, d, dtype=dt), q, q), {}
        yield (q, transposed(2, 4, 64, d, dtype=dt), q), {}
        yield (t(2, 64, d, dtype=dt),) * 3, {}
        yield (t(2, 4, 0, d, dtype=dt), q, q), {}
        yield (q, t(1, 4, 64, d, dtype=dt), t(1, 4, 64, d, dtype=dt)), {}
        yield (q, t(2, 2, 64, d, dtype=dt), t(2, 2, 64, d, dtype=dt)), {}
        yield (q, t(2, 2, 64, d, dtype=dt), t(2, 2, 64, d, dtype=dt)), {"enable_gqa": True}
        yield (q, t(2, 3, 64, d, dtype=dt), t(2, 3, 64, d, dtype=dt)), {"enable_gqa": True}
        yield (t(2, 4, 32, d, dtype=dt), q, q), {"is_causal": True}
        yield (t(2, 4, 64, d + 1, dtype=dt)[..., 1:], q, q), {}
        yield (q, q, t(2, 4, 64, 32, dtype=dt)), {}
    yield (t(1, 1, 64, 32), t(1, 1, 64, 32, dtype=torch.float32), t(1, 1, 64, 32)), {}


def test_torch_free_port_agrees_with_the_measuring_port():
    n = 0
    for (q, k, v), kw in _cases():
        mask = kw.pop("mask", None)
        want = sdpa_backend(q, k, v, mask, **kw)
        assert _torch_free(q, k, v, mask, **kw) == (want.backend, want.reasons), (q.shape, k.shape, kw)
        n += 1
    assert n > 600


# --- the analytic sdpa rule uses the same choice -------------------------------------------


def _analytic_sdpa(shape, autocast):
    from planner.analytic import ops as O
    from planner.analytic.engine import Sim

    sim = Sim()
    O.use(sim)
    if autocast:
        sim.enter_autocast(True)
    q = O.randn(shape)
    q.requires_grad = True
    return sim, O.sdpa(q, q, q)


def test_analytic_sdpa_follows_the_choice():
    from planner.errors import PlannerError

    sim, out = _analytic_sdpa((1, 2, 64, 32), autocast=True)  # fp16, head dim 32: flash
    assert sim.mem.op == "_scaled_dot_product_flash_attention" and out.dtype == "f16"
    sim, out = _analytic_sdpa((1, 2, 64, 32), autocast=False)  # fp32: memory-efficient
    assert sim.mem.op == "_scaled_dot_product_efficient_attention" and out.dtype == "f32"
    sim, out = _analytic_sdpa((1, 1, 64, 512), autocast=True)  # head dim > 256: memory-efficient
    assert sim.mem.op == "_scaled_dot_product_efficient_attention"
    # the math kernel and padded flash are not modelled: an error, never a silent difference
    with pytest.raises(PlannerError, match=r"runs the math kernel on CUDA \(flash: dtype float32.*multiples of 4\)"):
        _analytic_sdpa((1, 1, 64, 6), autocast=False)
    with pytest.raises(PlannerError, match="padded flash kernel.*pads head dim 12"):
        _analytic_sdpa((1, 2, 64, 12), autocast=True)
    with pytest.raises(PlannerError, match="math kernel"):
        _analytic_sdpa((1, 1, 64, 300), autocast=True)


def test_analytic_ops_stay_torch_free():
    import subprocess

    code = (
        "import sys, planner.analytic.ops as O; "
        "assert O.sdpa_choice(*[(1, 1, 8, 8)] * 3, ('f16',) * 3) == ('flash', ()); "
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


def test_efficient_logsumexp_only_when_an_input_needs_grad_both_sides():
    # attention.cpp should_compute_logsumexp = an input requires grad and grad mode is on;
    # meta__scaled_dot_product_efficient_attention then sizes the logsumexp ceil(L/32)*32 or 0
    class Outs(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.lse = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is aten._scaled_dot_product_efficient_attention.default:
                self.lse.append(tuple(out[1].shape))
            return out

    with FakeTensorMode(), CudaEmulation():
        q = torch.randn(1, 2, 40, 32, requires_grad=True)
        with Outs() as log:
            F.scaled_dot_product_attention(q, q, q)
            with torch.no_grad():
                F.scaled_dot_product_attention(q, q, q)
    assert log.lse == [(1, 2, 64), (1, 2, 0)]

    from planner.analytic import ops as O
    from planner.analytic.engine import Sim

    for grad, want in ((True, 512), (False, 0)):
        sim = Sim()
        O.use(sim)
        sim.grad_enabled = grad
        x = O.randn((1, 2, 40, 32))
        x.requires_grad = True
        before = sim.mem.current
        out = O.sdpa(x, x, x)
        # output 1*2*40*32*4 = 10240 B; two int64 philox scalars 512 each; the logsumexp
        # 1*2*64 fp32 = 512 B, or nothing
        assert sim.mem.peak - before == 10240 + 512 + 512 + want
        del out
