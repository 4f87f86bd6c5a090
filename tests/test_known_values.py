"""Values that do not depend on data keep their value through a trace (planner/measure/values.py);
values that do get a stand-in the output names; sizes computed from data stop with one line;
reduced losses hold the storage a real kernel leaves them (planner/measure/tracker.py)."""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from planner.errors import PlannerError
from planner.measure.tracker import Category, LiveStorageTracker
from planner.measure.values import DataDependentSize, DataInt, KnownValues, SizeGuard, fake_mode_with_values
from planner.step_setup import StepSetup


def _fake() -> FakeTensorMode:
    return fake_mode_with_values(FakeTensorMode(allow_non_fake_inputs=True))


# --- known values ------------------------------------------------------------------------------


def test_values_built_from_python_numbers_are_real() -> None:
    with _fake():
        rates = torch.linspace(0, 0.3, 4)
        assert [round(r.item(), 6) for r in rates] == [0.0, 0.1, 0.2, 0.3]
        assert torch.arange(2, 5).tolist() == [2, 3, 4]  # MONAI DiceLoss: torch.arange(2, ndim).tolist()
        pos = torch.stack(torch.meshgrid(torch.arange(2), torch.arange(3), indexing="ij")).flatten(1)
        rel = pos[:, :, None] - pos[:, None, :]
        assert int(rel.max()) == 2 and int(rel.min()) == -2  # a relative-position table, as Swin builds one
        mask = torch.zeros(4)
        mask[1:3] = 1.0  # an in-place write with known inputs keeps the value, through the view too
        assert mask.tolist() == [0.0, 1.0, 1.0, 0.0]
        assert torch.nonzero(mask).flatten().tolist() == [1, 2]  # a data-dependent shape, on known data
        assert mask[mask > 0].shape == (2,)
        assert bool(torch.equal(mask, mask.clone()))


def test_a_write_from_data_makes_every_alias_unknown() -> None:
    mode = KnownValues()
    with FakeTensorMode(allow_non_fake_inputs=True), mode:
        base = torch.ones(6)
        view = base[2:]
        assert mode.value(view) is not None
        base.add_(torch.randn(6))  # a random draw: the storage's values are data now
        assert mode.value(base) is None and mode.value(view) is None
        fresh = torch.empty(3)
        assert mode.value(fresh) is None  # uninitialised memory has no value
        fresh.fill_(2.5)  # overwritten whole from a known value
        assert mode.value(fresh).tolist() == [2.5, 2.5, 2.5]


def test_a_known_tensor_still_costs_device_memory() -> None:
    with _fake():
        tracker = LiveStorageTracker()
        with tracker:
            idx = torch.arange(1000)  # 1000 x int64 = 8,000 B -> 8,192 B (512-byte rounding)
            assert idx[999].item() == 999
        assert tracker.peak == 8192


# --- init-time inspection and stand-ins ----------------------------------------------------------


class InspectsItself(nn.Module):
    """A constructor that reads its own tensors, as SwinUNETR (linspace .item()) and ViT
    initialisation (nn.init.trunc_normal_'s rejection loop: `if not mask.any()`) do."""

    def __init__(self, depth: int = 3) -> None:
        super().__init__()
        rates = [x.item() for x in torch.linspace(0, 0.2, depth)]
        self.blocks = nn.ModuleList(nn.Dropout(r) for r in rates)
        self.proj = nn.Linear(8, 8)
        nn.init.trunc_normal_(self.proj.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(self.proj(x))
        return x


def test_a_constructor_that_inspects_its_tensors_builds() -> None:
    mode = KnownValues()
    with FakeTensorMode(allow_non_fake_inputs=True), mode:
        net = InspectsItself()
    assert [round(b.p, 6) for b in net.blocks] == [0.0, 0.1, 0.2]
    # the random draws tested in trunc_normal_ got a stand-in: False for `mask.any()`
    (user, lib, value), = mode.standins
    assert value == "False" and lib.endswith("torch/nn/init.py:119") and user.endswith(
        f"{Path(__file__).name}:{inspect.getsourcelines(InspectsItself)[1] + 9}")


def test_stand_ins_and_the_lines_that_used_them() -> None:
    mode = KnownValues()
    with FakeTensorMode(allow_non_fake_inputs=True), mode, SizeGuard(mode):
        loss = F.mse_loss(torch.randn(4, 4), torch.randn(4, 4))
        logged = loss.item()  # logging: 1.0
        nan = bool(torch.isnan(loss))  # a check: False (healthy)
        finite = bool(torch.isfinite(loss).all())  # True (healthy)
        count = (loss > 0).long().item()  # an integer: 1, marked as read from data
    assert (logged, nan, finite, count) == (1.0, False, True, 1)
    assert isinstance(count, DataInt)
    lines = mode.notes()
    assert len(lines) == 4 and all("stand-in value" in n and Path(__file__).name in n for n in lines)


def test_a_size_computed_from_data_stops() -> None:
    with _fake():
        x = torch.randn(8, 3)
        k = (x > 0).sum().item()
        assert (x * k).shape == (8, 3)  # a value use is fine
        with pytest.raises(DataDependentSize, match="new_zeros"):
            x.new_zeros(k, 3)
        with pytest.raises(DataDependentSize):
            x[: k + 1]
        with pytest.raises(DataDependentSize):  # a mark whose value is 0 is still a mark
            x.new_zeros(k - 1)


# --- step files: the library as written ------------------------------------------------------------

SIZE_FROM_DATA = '''
import torch, torch.nn as nn, torch.nn.functional as F

def networks(width: int = 16):
    return {"net": nn.Linear(16, width)}

def optimizers(nets):
    return {"net": torch.optim.SGD(nets["net"].parameters(), lr=0.1)}

def batch(batch_size: int = 8):
    return torch.randn(batch_size, 16, device="cuda")

def step(nets, opts, batch, vp):
    vp.zero_grad(opts["net"])
    with vp.autocast():
        y = nets["net"](batch)
        n = (y > 0).sum().item()
        pad = y.new_zeros(n, y.shape[1])
        loss = torch.cat([y, pad]).pow(2).mean()
    vp.backward(loss, opts["net"])
    vp.step(opts["net"])
'''


def _trace(path: Path, **kw):
    from planner.measure.stepfile import run

    return run(StepSetup(str(path), **kw), "fake", keep_timeline=False)


def test_a_size_from_data_in_a_step_is_one_line_with_a_declare_that_works(tmp_path: Path) -> None:
    step = tmp_path / "size_step.py"
    step.write_text(SIZE_FROM_DATA)
    with pytest.raises(PlannerError) as err:
        _trace(step)
    text = str(err.value)
    assert "\n" not in text and text.startswith("step: a size computed from a value read from data")
    assert "size_step.py:17" in text and "size_step.py:18" in text and "reaches new_zeros" in text
    assert 'DECLARE = {"aten::_local_scalar_dense": lambda x: N}' in text
    step.write_text(SIZE_FROM_DATA + '\nDECLARE = {"aten::_local_scalar_dense": lambda x: 5}\n')
    record = _trace(step)
    # with N = 5 the padded batch is 13 x 16 fp32: its cat output 832 B -> 1,024 B exists in the trace
    assert any(i.raw == 13 * 16 * 4 for i in record.info.values())


def test_monai_swinunetr_with_dice_ce_traces_as_written(tmp_path: Path) -> None:
    pytest.importorskip("monai")
    step = tmp_path / "swin_step.py"
    step.write_text(textwrap.dedent('''
        import torch
        from monai.losses import DiceCELoss
        from monai.networks.nets import SwinUNETR

        def networks(feature_size: int = 12):
            return {"net": SwinUNETR(in_channels=1, out_channels=3, feature_size=feature_size)}

        def optimizers(nets):
            return {"net": torch.optim.AdamW(nets["net"].parameters(), lr=1e-4)}

        def batch(batch_size: int = 1, size: int = 64):
            return (torch.randn(batch_size, 1, size, size, size, device="cuda"),
                    torch.randint(0, 3, (batch_size, 1, size, size, size), device="cuda"))

        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)

        def step(nets, opts, batch, vp):
            x, y = batch
            vp.zero_grad(opts["net"])
            with vp.autocast():
                loss = loss_fn(nets["net"](x), y)
            vp.backward(loss, opts["net"])
            vp.step(opts["net"])
    '''))
    record = _trace(step, precision="amp-fp16")
    from monai.networks.nets import SwinUNETR

    assert record.params["net"] == sum(p.numel() for p in SwinUNETR(in_channels=1, out_channels=3,
                                                                     feature_size=12).parameters())
    assert record.tracker.peak_bytes > 0 and not any("stand-in" in n for n in record.tracker.notes)


# --- reduced losses hold the unreduced storage ---------------------------------------------------


@pytest.mark.parametrize("fake", [True, False])
def test_reduced_losses_keep_the_unreduced_storage(fake: bool) -> None:
    import contextlib

    with FakeTensorMode() if fake else contextlib.nullcontext():
        a = torch.randn(1000, 1000, requires_grad=True)
        b = torch.randn(1000, 1000)
        tracker = LiveStorageTracker()
        with tracker:
            tracker.track([a, b], Category.PARAMETERS)
            base = tracker.current
            mse = F.mse_loss(a, b)
            # 1000 x 1000 fp32 = 4,000,000 B -> 4,000,256 B (512-byte blocks) kept by the 0-dim result;
            # while the op runs, the impl's own unreduced output is live too: peak +2 x 4,000,256
            assert mse.shape == () and tracker.current - base == 4_000_256
            assert tracker.peak - base == 8_000_512
            l1 = F.l1_loss(a.detach(), b)  # composite: mean(abs(a - b)): a 4-byte (512 B) result, diff freed
            assert tracker.current - base == 4_000_256 + 512
            del mse, l1
            p = torch.sigmoid(a)  # 4,000,256 B
            before = tracker.current
            bce = F.binary_cross_entropy(p, torch.rand(1000, 1000))  # target 4,000,256 + result 4,000,256
            assert tracker.current - before == 2 * 4_000_256 and bce.shape == ()


# --- when autocast costs memory ---------------------------------------------------------------------


def test_amp_costing_memory_is_said_with_the_op_that_holds_fp32_outputs() -> None:
    from planner.measure.precision_note import amp_costs_more

    step = str(Path(__file__).resolve().parents[1] / "examples" / "steps" / "ldm_stage1.py")
    amp, fp32 = _trace(Path(step), precision="amp-fp16"), _trace(Path(step), precision="fp32")
    # MONAI's AutoencoderKL at its default 96x96x64 (the analytic estimate agrees:
    # `vramplan estimate --voxel 96x96x64 [--no-amp] --json`: 3,934,089,216 vs 3,771,077,120 B)
    assert (amp.tracker.peak_bytes, fp32.tracker.peak_bytes) == (3_934_089_216, 3_771_077_120)
    note = amp_costs_more(amp, fp32)
    assert note.startswith("under CUDA autocast (amp-fp16) this step uses MORE memory than fp32 (3.66 vs 3.51 GiB")
    assert "native_group_norm runs in fp32 under CUDA autocast" in note
    assert amp_costs_more(fp32, amp) is None  # the other way round there is nothing to say


def test_a_data_dependent_shape_inside_a_library_names_the_library_line(tmp_path: Path, monkeypatch) -> None:
    from planner.measure import user_code

    lib = tmp_path / "site"
    lib.mkdir()
    (lib / "fakelib.py").write_text("def positives(x):\n    return x[x > 0]\n")
    monkeypatch.syspath_prepend(str(lib))
    dirs = user_code._library_dirs()
    monkeypatch.setattr(user_code, "_library_dirs", lambda: (*dirs, str(lib) + "/"))
    step = tmp_path / "lib_step.py"
    step.write_text(SIZE_FROM_DATA.replace("        n = (y > 0).sum().item()\n        pad = y.new_zeros(n, y.shape[1])\n"
                                           "        loss = torch.cat([y, pad]).pow(2).mean()",
                                           "        import fakelib\n        loss = fakelib.positives(y).mean()"))
    with pytest.raises(PlannerError) as err:
        _trace(step)
    text = str(err.value)
    assert "aten::index (boolean-mask indexing x[mask]) has a data-dependent output shape" in text
    # the user's line (the call into the library: lib_step.py:18) and the library's own line
    assert "lib_step.py:18, in the libra" in text and "fakelib.py:2)" in text
