"""CUDA autocast emulation: op lists, output dtypes, the weight-cast cache, CUDA branches."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from planner.measure.cuda_emulation import (  # noqa: E402
    CudaEmulation,
    _registered,
    _resolve,
    cuda_policy_table,
    sdpa_backend,
)

F = torch.nn.functional
NAMED_TENSOR_OVERLOADS = {
    "prod.dim_Dimname", "softmax.Dimname", "log_softmax.Dimname", "cumprod.dimname",
    "cumsum.dimname", "sum.dim_DimnameList", "norm.names_ScalarOpt_dim",
}


def test_transcription_matches_this_builds_autocast_cuda_kernels():
    # In a CPU wheel the AutocastCUDA kernels are still registered: the set of ops that
    # have one must be exactly the ops our transcription gives a CUDA policy, except the
    # named-tensor overloads that this build does not define at all.
    table = set(cuda_policy_table())
    registered = _registered("AutocastCUDA")
    assert registered == table - NAMED_TENSOR_OVERLOADS
    assert all(_resolve(n) is None for n in NAMED_TENSOR_OVERLOADS)
    for name in ("conv3d", "group_norm", "softmax.int", "upsample_nearest3d", "mse_loss"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"aten::{name}", "AutocastCUDA")


def test_policies_of_the_ops_the_models_use():
    t = cuda_policy_table()
    assert t["conv3d"] == t["convolution"] == t["linear"] == t["einsum"] == t["bmm"] == "lower_precision_fp"
    assert t["group_norm"] == t["l1_loss"] == t["mse_loss"] == t["upsample_nearest3d"] == t["exp"] == "fp32"
    assert t["softmax.int"] == t["sum"] == "fp32_set_opt_dtype"
    assert "cat" not in t and "stack" not in t  # CUDA does not promote cat/stack; CPU does


@pytest.fixture
def fake_autocast():
    with FakeTensorMode(), CudaEmulation() as emu, torch.autocast("cpu", dtype=torch.float16):
        yield emu


def test_output_dtypes_follow_cuda_autocast(fake_autocast):
    x = torch.randn(1, 4, 8, 8, 8)
    conv = torch.nn.Conv3d(4, 8, 3, padding=1)
    y = conv(x)
    assert y.dtype == torch.float16  # conv: lower precision
    assert torch.nn.GroupNorm(2, 8)(y).dtype == torch.float32  # group_norm: fp32 list (CPU keeps fp16)
    assert torch.softmax(y, -1).dtype == torch.float32  # softmax: fp32_set_opt_dtype
    assert F.interpolate(y, scale_factor=2.0, mode="nearest").dtype == torch.float32  # upsample: fp32
    assert F.l1_loss(y, y).dtype == torch.float32
    # cat: no autocast policy on CUDA; plain type promotion applies
    assert torch.cat([y, y]).dtype == torch.float16
    assert torch.cat([y, y.float()]).dtype == torch.float32
    lin = torch.nn.Linear(8, 8)
    assert lin(torch.randn(3, 8)).dtype == torch.float16


def test_autocast_without_emulation_is_cpu_semantics():
    # The contrast that motivates the emulation: CPU autocast keeps group_norm in fp16.
    with FakeTensorMode(), torch.autocast("cpu", dtype=torch.float16):
        y = torch.nn.Conv3d(4, 8, 3, padding=1)(torch.randn(1, 4, 8, 8, 8))
        assert torch.nn.GroupNorm(2, 8)(y).dtype == torch.float16


class _CastCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.casts = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default:
            self.casts += 1
        return func(*args, **(kwargs or {}))


def test_weight_cast_cache_reuses_the_fp16_copy_within_one_region():
    with FakeTensorMode(), CudaEmulation() as emu:
        lin = torch.nn.Linear(8, 8)
        x = torch.randn(2, 8, dtype=torch.float16)
        counter = _CastCounter()
        with counter, torch.autocast("cpu", dtype=torch.float16):
            lin(x)
            after_first = counter.casts
            lin(x)
            assert len(emu.cache) == 2  # weight and bias: leaves that require grad
        # first call casts weight and bias; the second reuses both
        assert after_first == 2
        assert counter.casts == 2
        # leaving the outermost region clears the cache (torch.clear_autocast_cache)
        assert len(emu.cache) == 0


def test_frozen_weights_are_cast_every_time():
    with FakeTensorMode(), CudaEmulation() as emu:
        lin = torch.nn.Linear(8, 8).requires_grad_(False)
        x = torch.randn(2, 8, dtype=torch.float16)
        counter = _CastCounter()
        with counter, torch.autocast("cpu", dtype=torch.float16):
            lin(x)
            lin(x)
        assert counter.casts == 4  # not cached: requires_grad is False
        assert len(emu.cache) == 0


class _OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((func, [getattr(a, "dtype", None) for a in args]))
        return func(*args, **(kwargs or {}))


def test_softmax_of_fp16_to_fp32_is_fused_without_an_fp32_copy(fake_autocast):
    x = torch.randn(2, 64, 64, dtype=torch.float16)
    log = _OpLog()
    with log:
        out = torch.softmax(x, -1)
    assert out.dtype == torch.float32
    funcs = [f for f, _ in log.calls]
    # SoftMax.cpp on CUDA: _softmax(input, dim, half_to_float=True); no _to_copy of the input
    assert funcs == [torch.ops.aten._softmax.default]


def test_sdpa_backend_choice():
    q16 = torch.empty(1, 1, 64, 32, dtype=torch.float16, device="meta")
    q32 = torch.empty(1, 1, 64, 32, dtype=torch.float32, device="meta")
    big = torch.empty(1, 1, 64, 512, dtype=torch.float16, device="meta")
    assert sdpa_backend(q16, q16, q16, None) == "flash"
    assert sdpa_backend(q32, q32, q32, None) == "efficient"
    assert sdpa_backend(big, big, big, None) == "efficient"  # head dim > 256: no flash
    assert sdpa_backend(q16, q16, q16, torch.ones(1)) == "efficient"  # a mask rules out flash


def test_sdpa_is_routed_to_the_flash_kernel_under_fp16(fake_autocast):
    q = torch.randn(1, 1, 128, 32, dtype=torch.float16, requires_grad=True)
    log = _OpLog()
    with log:
        F.scaled_dot_product_attention(q, q, q)
    assert torch.ops.aten._scaled_dot_product_flash_attention.default in [f for f, _ in log.calls]


def test_emulation_is_removed_on_exit():
    with FakeTensorMode():
        with CudaEmulation():
            pass
        with torch.autocast("cpu", dtype=torch.float16):
            y = torch.nn.Conv3d(4, 8, 3, padding=1)(torch.randn(1, 4, 8, 8, 8))
            assert torch.nn.GroupNorm(2, 8)(y).dtype == torch.float16  # CPU policy again


def test_batch_norm_statistics_stay_fp32_for_fp16_input(fake_autocast):
    # CUDA keeps save_mean / save_invstd in the accumulation type; torch._decomp's CPU
    # branch would make them fp16
    x = torch.randn(2, 8, 4, 4, 4, dtype=torch.float16)
    w, b = torch.ones(8), torch.zeros(8)
    out, mean, invstd = torch.ops.aten.native_batch_norm(x, w, b, torch.zeros(8), torch.ones(8), True, 0.1, 1e-5)
    assert out.dtype == torch.float16
    assert mean.dtype == invstd.dtype == torch.float32
