"""Ops a trace without data cannot run (issue 10, "When the trace cannot run"): one line naming
the op, the module and the user's file:line; with a DECLARE the trace goes on and counts the
declared output. Traced as planner/measure/builtin_trace.py's _run_custom does: FakeTensorMode, then
ModuleContext and LiveStorageTracker, with DeclaredOps and OpSite inside the fake mode."""

from __future__ import annotations

import inspect
import os

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from planner.errors import PlannerError
from planner.measure.declared_ops import DeclaredOps, OpSite, declared_for, explain
from planner.measure.tracker import Category, LiveStorageTracker, ModuleContext

HERE = os.path.relpath(__file__) if not os.path.relpath(__file__).startswith("..") else __file__  # as user_frame prints it

# A custom op with a CPU kernel and no fake kernel (torch.library.define + impl), and a
# torch.library.custom_op without register_fake. The Library must stay alive.
_LIB = torch.library.Library("vramplan_untraceable", "DEF")
_LIB.define("voxelize(Tensor x) -> Tensor")
_LIB.impl("voxelize", lambda x: x.new_zeros(x.shape[0], 64), "CPU")


@torch.library.custom_op("vramplan_untraceable::scatter_points", mutates_args=())
def scatter_points(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


def _line(fn, text: str) -> str:
    """file:line of the line of ``fn``'s source containing ``text``."""
    lines, start = inspect.getsourcelines(fn)
    return f"{HERE}:{start + next(i for i, ln in enumerate(lines) if text in ln)}"


class MaskTokens(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.proj = nn.Linear(16, 16)

    def forward(self, x):
        x = self.proj(x)
        if self.kind == "nonzero":
            return torch.nonzero(x > 0)
        if self.kind == "mask":
            return x[x[:, 0] > 0]
        if self.kind == "item":
            k = int((x > 0).sum().item())
            return x.new_zeros(k, 3)
        if self.kind == "mylib":
            return torch.ops.vramplan_untraceable.voxelize(x)
        if self.kind == "custom_op":
            return scatter_points(x)
        if self.kind == "extension":
            return _extension_forward(x)
        raise ValueError(self.kind)


def _extension_forward(x):
    # what a compiled CUDA extension's TORCH_CHECK raises from its Python call site
    raise RuntimeError("points must be a CUDA tensor")


class Net(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(16, 16), MaskTokens(kind))

    def forward(self, x):
        return self.encoder(x)


def _trace(kind: str, declare: dict | None = None):
    """(output, tracker, exception or None) of Net(kind) on an (8, 16) batch."""
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = Net(kind)
        modules = ModuleContext({"model": model})
        tracker = LiveStorageTracker(modules)
        tracker.track(list(model.parameters()), Category.PARAMETERS)
        site = OpSite(modules)
        with DeclaredOps(declare or {}), modules, tracker, site:
            x = torch.randn(8, 16)
            try:
                return model(x), tracker, None
            except Exception as exc:  # noqa: BLE001 - what the runner catches
                return None, tracker, exc


def _explained(kind: str) -> str:
    _, _, exc = _trace(kind)
    assert exc is not None
    err = explain(exc, OpSite())  # the op and module were noted on the exception as it happened
    assert isinstance(err, PlannerError), repr(exc)
    text = str(err)
    assert "\n" not in text and "…" not in text and "Traceback" not in text
    return text


# --- the message ------------------------------------------------------------------------------


def test_nonzero_names_op_module_and_line() -> None:
    text = _explained("nonzero")
    assert text.startswith("step: aten::nonzero has a data-dependent output shape")
    assert "in model.encoder.1" in text and f"at {_line(MaskTokens.forward, 'torch.nonzero')}" in text
    assert 'DECLARE = {"aten::nonzero": lambda x: torch.empty(N, x.dim(), dtype=torch.long, device=x.device)}' in text


def test_bool_mask_names_the_index_op() -> None:
    # the fake kernel of x[mask] fails inside its own nonzero; the declarable op is aten::index
    text = _explained("mask")
    assert "aten::index (boolean-mask indexing x[mask])" in text and "data-dependent output shape" in text
    assert "in model.encoder.1" in text and _line(MaskTokens.forward, "x[x[:, 0] > 0]") in text
    assert '"aten::index": lambda x, idx:' in text


def test_item_names_local_scalar_dense() -> None:
    text = _explained("item")
    assert "aten::_local_scalar_dense (.item()" in text and "reads a tensor's value" in text
    assert "in model.encoder.1" in text and _line(MaskTokens.forward, ".item()") in text
    assert '{"aten::_local_scalar_dense": lambda x: 0}' in text


def test_custom_op_without_fake_kernel() -> None:
    text = _explained("mylib")
    assert "vramplan_untraceable::voxelize has no fake (meta) kernel" in text
    assert "in model.encoder.1" in text and _line(MaskTokens.forward, "voxelize(x)") in text
    assert text.endswith("or register one with torch.library.register_fake")
    text = _explained("custom_op")  # torch.library.custom_op: a RuntimeError from its default fake impl
    assert "vramplan_untraceable::scatter_points has no fake (meta) kernel" in text
    assert "in model.encoder.1" in text and _line(MaskTokens.forward, "scatter_points(x)") in text


def test_cuda_extension_names_the_module() -> None:
    # no op failed: the module comes from OpSite's forward hook as the exception leaves it
    text = _explained("extension")
    assert "needs CUDA outside torch's operators (RuntimeError: points must be a CUDA tensor)" in text
    assert "in model.encoder.1" in text and _line(_extension_forward, "raise RuntimeError") in text
    assert "torch.library.custom_op" in text


def test_explain_without_site_and_unrelated_errors() -> None:
    _, _, exc = _trace("nonzero")
    exc.__dict__.pop("_vramplan_site")
    text = str(explain(exc, "model.blocks.3", origin="--model"))
    assert text.startswith("--model: aten::nonzero") and "in model.blocks.3" in text and "the model's file" in text
    assert explain(ValueError("bad"), "model") is None
    assert explain(RuntimeError("mat1 and mat2 shapes cannot be multiplied (8x16 and 3x4)"), "model") is None
    with pytest.raises(AssertionError) as info:
        torch.cuda.current_stream()  # torch's own CUDA error (its frames): user_code.cuda_error's case
    assert explain(info.value) is None


def test_wrapped_exception_is_explained() -> None:
    _, _, exc = _trace("nonzero")
    with pytest.raises(RuntimeError) as info:
        raise RuntimeError("my model failed") from exc
    text = str(explain(info.value, OpSite()))
    assert "aten::nonzero" in text and "in model.encoder.1" in text
    info.value._vramplan_site = ("", "model")  # OpSite's hook notes a wrapper where it leaves a module
    assert "in model.encoder.1" in str(explain(info.value))  # the failing op's own note wins


# --- declaring outputs -----------------------------------------------------------------------


def _bytes_by_op(tracker: LiveStorageTracker, op: str) -> list[tuple[int, str]]:
    return [(i.nbytes, i.module) for i in tracker.info.values() if i.op == op]


def test_declared_nonzero_is_traced_and_counted() -> None:
    seen = []

    def declare(x):
        out = torch.empty(1000, x.dim(), dtype=torch.long, device=x.device)
        seen.append(isinstance(out, FakeTensor))  # torch.empty inside the fake mode is fake
        return out

    out, tracker, exc = _trace("nonzero", {"aten::nonzero": declare})
    assert exc is None and isinstance(out, FakeTensor) and seen == [True]
    assert tuple(out.shape) == (1000, 2) and out.dtype == torch.long
    # 1000 x 2 int64 = 16000 bytes, rounded up to the 512-byte block: 32 blocks = 16384
    assert _bytes_by_op(tracker, "nonzero") == [(16384, "model.encoder.1")]
    assert tracker.peak >= tracker.current >= 16384


def test_declared_bool_mask_index() -> None:
    declare = {"aten::index": lambda x, idx: x.new_empty(100, *x.shape[idx[0].dim():])}
    out, tracker, exc = _trace("mask", declare)
    assert exc is None and tuple(out.shape) == (100, 16)
    # 100 x 16 fp32 = 6400 bytes -> 13 blocks of 512 = 6656
    assert _bytes_by_op(tracker, "index") == [(6656, "model.encoder.1")]


def test_declared_item_value_flows_on() -> None:
    out, tracker, exc = _trace("item", {"aten::_local_scalar_dense": lambda x: 7})
    assert exc is None and tuple(out.shape) == (7, 3)
    # new_zeros(7, 3) fp32 = 84 bytes -> one 512-byte block
    assert (512, "model.encoder.1") in _bytes_by_op(tracker, "new_zeros")


def test_declared_custom_op() -> None:
    out, tracker, exc = _trace("mylib", {"vramplan_untraceable::voxelize.default": lambda x: x.new_empty(x.shape[0], 64)})
    assert exc is None and tuple(out.shape) == (8, 64)
    # 8 x 64 fp32 = 2048 bytes: already a multiple of 512
    assert _bytes_by_op(tracker, "voxelize") == [(2048, "model.encoder.1")]
    out, tracker, exc = _trace("custom_op", {"vramplan_untraceable::scatter_points": lambda x: x.new_empty(5, 3)})
    # 5 x 3 fp32 = 60 bytes -> 512
    assert exc is None and _bytes_by_op(tracker, "scatter_points") == [(512, "model.encoder.1")]


@pytest.mark.parametrize("kind", ["nonzero", "mask", "item", "mylib", "custom_op"])
def test_the_suggested_declaration_runs(kind: str) -> None:
    text = _explained(kind)
    suggested = text[text.index("DECLARE = ") + len("DECLARE = "):].split("} or register")[0]
    if not suggested.endswith("}"):
        suggested += "}"
    declare = eval(suggested, {"torch": torch, "N": 3})  # noqa: S307 - our own message
    out, tracker, exc = _trace(kind, declare)
    assert exc is None and isinstance(out, FakeTensor)


def test_declared_op_is_used_only_where_the_trace_fails() -> None:
    calls = []
    out, _, exc = _trace("mask", {"aten::index": lambda x, idx: calls.append(1) or x.new_empty(3, 16)})
    assert exc is None and calls == [1]  # x[:, 0] is a select, x[mask] the one failing index
    with FakeTensorMode(allow_non_fake_inputs=True), DeclaredOps({"aten::index": lambda *a: 1 / 0}):
        assert tuple(torch.randn(8, 16)[torch.tensor([1, 2])].shape) == (2, 16)  # integer indexing runs as usual


def test_declaration_errors() -> None:
    with pytest.raises(PlannerError, match=r"'aten::nonzer' is not an operator \(did you mean 'aten::nonzero'\?\); valid: \"namespace::op\[\.overload\]\""):
        DeclaredOps({"aten::nonzer": lambda x: x})
    with pytest.raises(PlannerError, match=r"'nonzero' is not an operator.*namespace::op\[\.overload\]"):
        DeclaredOps({"nonzero": lambda x: x})
    with pytest.raises(PlannerError, match=r"'aten::nonzero\.bogus' has no such overload"):
        DeclaredOps({"aten::nonzero.bogus": lambda x: x})
    with pytest.raises(PlannerError, match=r"DECLARE\['aten::nonzero'\] is int, not a function"):
        DeclaredOps({"aten::nonzero": 3})
    _, _, exc = _trace("nonzero", {"aten::nonzero": lambda x: [1, 2]})
    assert isinstance(exc, PlannerError) and "returned list, but aten::nonzero returns a tensor" in str(exc)
    _, _, exc = _trace("item", {"aten::_local_scalar_dense": lambda x: x})
    assert isinstance(exc, PlannerError) and "returns a Python number" in str(exc)
    _, _, exc = _trace("nonzero", {"aten::nonzero": lambda x: x.no_such_attribute})
    assert isinstance(exc, PlannerError) and str(exc).startswith("step: DECLARE['aten::nonzero'] raised AttributeError")
    assert HERE in str(exc)


def test_declared_for_reads_the_module() -> None:
    import types

    mod = types.ModuleType("user_step")
    assert declared_for(mod) == {}
    mod.DECLARE = {"aten::nonzero": len}
    assert declared_for(mod) == {"aten::nonzero": len}
    mod.DECLARE = ["aten::nonzero"]
    with pytest.raises(PlannerError, match=r"--model: DECLARE in user_step is list; it must be a dict"):
        declared_for(mod, origin="--model")
    assert declared_for(test_declared_for_reads_the_module) == {}  # a factory: its module's DECLARE


# --- through a step file (planner/measure/stepfile.py runs OpSite and explain) -----------------

MASK_STEP = '''
import torch
from torch import nn


class Keep(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 16)

    def forward(self, x):
        x = self.proj(x)
        return x[x[:, 0] > 0]


def networks():
    return {"net": nn.Sequential(nn.Linear(16, 16), Keep())}


def optimizers(nets):
    return {"net": torch.optim.SGD(nets["net"].parameters(), lr=0.1)}


def batch(batch_size: int = 8):
    return torch.randn(batch_size, 16, device="cuda")


def step(nets, opts, b, vp):
    vp.zero_grad(opts["net"])
    loss = nets["net"](b).sum()
    vp.backward(loss, opts["net"])
    vp.step(opts["net"])
'''


def test_step_file_mask_names_op_module_line_and_declaration(tmp_path):
    from planner.measure.stepfile import run
    from planner.step_setup import StepSetup

    path = tmp_path / "mask_step.py"
    path.write_text(MASK_STEP)
    line = next(i for i, ln in enumerate(MASK_STEP.splitlines(), 1) if "x[x[:, 0] > 0]" in ln)
    with pytest.raises(PlannerError) as e:
        run(StepSetup(str(path)))
    text = str(e.value)
    assert "\n" not in text
    assert text.startswith("step: aten::index (boolean-mask indexing x[mask]) has a data-dependent output shape")
    assert "in net.1" in text and f"mask_step.py:{line}" in text
    assert 'DECLARE = {"aten::index":' in text


def test_step_file_declare_lets_the_trace_go_on(tmp_path):
    from planner.measure.stepfile import run
    from planner.step_setup import StepSetup

    path = tmp_path / "mask_step.py"
    # 5 of the 8 rows kept: x[mask] of an (8, 16) fp32 tensor declared as (5, 16)
    path.write_text(MASK_STEP + '\nDECLARE = {"aten::index": lambda x, idx: x.new_empty(5, *x.shape[1:])}\n')
    rec = run(StepSetup(str(path)))
    assert rec.tracker.peak_bytes > 0
    kept = [i for i in rec.info.values() if i.op == "index"]
    # 5 x 16 x 4 = 320 bytes, rounded to the allocator's 512
    assert kept and {i.nbytes for i in kept} == {512}


def test_an_error_in_the_step_prints_nothing_but_the_one_line(tmp_path, capfd):
    # a shape mismatch in the user's code: the meta kernel raises, and torch's fake-tensor
    # logger would print the whole traceback at ERROR level before the one-line PlannerError
    from planner.measure.stepfile import run
    from planner.step_setup import StepSetup

    path = tmp_path / "bad_step.py"
    path.write_text(MASK_STEP.replace("return x[x[:, 0] > 0]", "return x @ torch.ones(3, 3, device=x.device)"))
    capfd.readouterr()
    with pytest.raises(PlannerError, match=r"a and b must have same reduction dim.*bad_step.py:\d+"):
        run(StepSetup(str(path)))
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


CONV_METHOD_STEP = '''
import torch
from torch import nn


class Enc(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x)

    def encode(self, x):  # called by the step instead of forward
        return self.conv(x)


def networks():
    return {"net": Enc()}


def optimizers(nets):
    return {"net": torch.optim.SGD(nets["net"].parameters(), lr=0.1)}


def batch(batch_size: int = 2):
    return torch.randn(batch_size, 4, 16, device="cuda")


def step(nets, opts, b, vp):
    vp.zero_grad(opts["net"])
    loss = nets["net"].encode(b).float().sum()
    vp.backward(loss, opts["net"])
    vp.step(opts["net"])
'''


def test_master_weights_dtype_mismatch_says_what_vramplan_cast(tmp_path):
    # fp16-master halves the trained network and casts forward()'s inputs (apex O2); a step
    # that calls another method feeds it fp32: torch's dtype error, plus what was cast
    from planner.measure.stepfile import run
    from planner.step_setup import StepSetup

    path = tmp_path / "method_step.py"
    path.write_text(CONV_METHOD_STEP)
    run(StepSetup(str(path)))  # fp32 runs
    with pytest.raises(PlannerError, match=r"should be the same .*; --precision fp16-master casts only "
                                           r"forward\(\)'s inputs to half \(apex O2\)"):
        run(StepSetup(str(path), precision="fp16-master"))
