"""The GPU kit (benchmarks/gpu_validation.py) and the recorder (planner/record.py).

No GPU here: the kit's dry run goes through the same Session/run-file/compare/fit code on the fake
backend; the CUDA readings are exercised with torch.cuda's counters replaced by scripted ones.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from planner import profiles, record
from planner.errors import PlannerError
from planner.result import DEFAULT_CONTEXT_BYTES

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_step import TINY  # noqa: E402

MIB = 2**20


def _kit():
    spec = importlib.util.spec_from_file_location("gpu_validation", ROOT / "benchmarks" / "gpu_validation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_kit_dry_run_writes_runs_reads_them_back_and_fits_both_bases(tmp_path, capsys):
    kit = _kit()
    assert kit.main(["--dry-run", "--out", str(tmp_path)]) == 0
    runs = sorted((tmp_path / "runs").glob("*.json"))
    assert [p.name for p in runs] == ["00-s1-32-3-fp32.json", "01-step-radar_vae.py.json"]
    for p in runs:
        run = record.load_run(p)
        got = record.measured(run)
        # fake device: nothing used before init, the documented 426 MiB context after it
        assert got["context_bytes"] == DEFAULT_CONTEXT_BYTES == 426 * MIB
        assert got["device_used_bytes"] == got["peak_reserved_bytes"] + 426 * MIB
    data = json.loads((tmp_path / "kit.json").read_text())
    assert data["command"] == f"python benchmarks/gpu_validation.py --dry-run --out {tmp_path}"
    trace_item = data["items"][1]["comparison"]
    # a step file's estimate is its fake trace, and the dry run measured that same trace: identity
    assert [f["error_bytes"] for f in trace_item["figures"]] == [0, 0, 0, 0]
    assert trace_item["workspace_by_difference_bytes"] == 0
    for basis in ("analytic", "trace"):
        prof = profiles.load(str(tmp_path / f"fake-{basis}.json"))
        assert prof.basis == basis and not prof.hardware and prof.residuals["points"] == 1
    out = capsys.readouterr().out
    assert "step radar_vae.py                  allocated" in out


# --- the CUDA path, with torch.cuda's counters scripted ------------------------------------------


class FakeCuda:
    """torch.cuda as the recorder calls it: a device of 80 GiB with 300 MiB in use by another
    process before init; init takes a 500 MiB context, the first step's lazy kernels 100 MiB more."""

    def __init__(self):
        self.total = 80 * 2**30
        self.used = 800 * MIB  # what mem_get_info reports at init: 300 other + 500 context
        self.allocated_peaks = [3000 * MIB, 4000 * MIB, 4050 * MIB]
        self.reserved = [3072 * MIB, 4096 * MIB, 4096 * MIB]
        self.i = 0
        self.resets = 0

    def is_available(self):
        return True

    def is_initialized(self):
        return False

    def init(self):
        pass

    def synchronize(self):
        pass

    def mem_get_info(self):
        return self.total - self.used, self.total

    def memory_stats(self):
        return {"segment.all.peak": 7 + self.i, "num_alloc_retries": self.i, "inactive_split_bytes.all.peak": MIB,
                "num_ooms": 0}

    def max_memory_allocated(self):
        return self.allocated_peaks[self.i]

    def max_memory_reserved(self):
        return self.reserved[self.i]

    def memory_reserved(self):
        return self.reserved[self.i]

    def reset_peak_memory_stats(self):
        self.resets += 1


@pytest.fixture
def cuda(monkeypatch):
    import torch

    fake = FakeCuda()
    for name in ("is_available", "is_initialized", "init", "synchronize", "mem_get_info", "memory_stats",
                 "max_memory_allocated", "max_memory_reserved", "memory_reserved", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    monkeypatch.setattr(record, "nvml_used_bytes", lambda: 300 * MIB)
    monkeypatch.setattr(record, "device_info", lambda: {
        "name": "NVIDIA H100 80GB HBM3", "backend": "cuda", "total_memory_bytes": fake.total, "driver": "560.35",
        "cuda": "12.8", "torch": "2.13.0", "cudnn": "91000", "compute_capability": "9.0"})
    return fake


def test_recorder_plain_loop_records_n_steps_and_the_context(cuda, tmp_path):
    path = tmp_path / "run.json"
    with record.record(path, steps=3, config={"kind": "ldm-stage1", "data": {"voxel_size": [32, 32, 32]}}) as rec:
        for i in range(5):  # steps past the window are not recorded
            cuda.i = min(i, 2)
            if i == 0:
                cuda.used = 800 * MIB + 3072 * MIB + 100 * MIB  # + reserved + lazily loaded kernels
            rec.step()
    run = record.load_run(path)
    assert [r["step"] for r in run["steps"]] == [1, 2, 3]
    assert cuda.resets == 1 + 3  # at start, then after each recorded step
    got = record.measured(run)
    # steps 2..3: max(4000, 4050) MiB allocated, 4096 MiB reserved
    assert got["peak_allocated_bytes"] == 4050 * MIB
    assert got["peak_reserved_bytes"] == 4096 * MIB
    # context: used after step 1 (800 + 3072 + 100) - reserved then (3072) - used before init (300) = 600 MiB
    assert got["context_bytes"] == 600 * MIB
    assert run["context"]["used_after_init_bytes"] - run["context"]["used_before_init_bytes"] == 500 * MIB
    assert got["segments"] == 9 and got["alloc_retries"] == 2  # memory_stats at i = 2


def test_framework_callbacks_are_duck_typed(cuda, tmp_path):
    hf = record.HFRecorder(tmp_path / "hf.json", steps=1)
    hf.on_init_end(None, None, None)  # any other hook: a no-op
    hf.on_train_begin(None, None, None)
    assert cuda.resets == 1  # the window opens at the start of training
    hf.on_step_end(None, None, None)
    assert (tmp_path / "hf.json").is_file()
    pl = record.LightningRecorder(tmp_path / "pl.json", steps=2)
    pl.on_fit_start(None, None)
    pl.on_train_batch_end(None, None, None, None, 0)  # not started: this only opens the window
    assert pl.rows == []
    pl.on_train_batch_end(None, None, None, None, 1)
    assert not (tmp_path / "pl.json").exists()  # one of two steps
    pl.on_train_end(None, None)  # stops early: writes what it has
    assert len(record.load_run(tmp_path / "pl.json")["steps"]) == 1
    with pytest.raises(AttributeError):
        pl.not_a_hook  # noqa: B018


def test_session_cuda_measures_iteration_two(cuda, tmp_path, monkeypatch):
    import planner.measure.stepfile as stepfile

    (tmp_path / "tiny.py").write_text(TINY)
    seen = []
    monkeypatch.setattr(stepfile, "run", lambda ss, backend, count_flops: seen.append((ss.batch_size, backend)))
    monkeypatch.setattr("torch.cuda.empty_cache", lambda: None)
    session = record.Session("cuda")
    cuda.i = 1
    cuda.used = 800 * MIB + 4096 * MIB + 100 * MIB
    run = session.run(record.setup_json("tiny.py", batch_size=8), tmp_path)
    assert seen == [(8, "cuda")]
    assert run["steps"][0]["step"] == 2 and run["steps"][0]["max_allocated_bytes"] == 4000 * MIB
    # (800 + 4096 + 100) - 4096 - 300 = 600 MiB
    assert record.measured(run)["context_bytes"] == 600 * MIB


def test_no_cuda_is_one_line():
    with pytest.raises(PlannerError, match="no CUDA device"):
        record.Session("cuda")
    with pytest.raises(PlannerError, match="valid: cuda, fake"):
        record.Session("rocm")


def test_session_cuda_runs_a_builtin_config(cuda, monkeypatch):
    import planner.measure.builtin_trace as step

    seen = []
    monkeypatch.setattr(step, "run_step", lambda setup, backend: seen.append((setup.data.voxel_size, backend)))
    monkeypatch.setattr("torch.cuda.empty_cache", lambda: None)
    session = record.Session("cuda")
    cuda.i = 2
    run = session.run(record.setup_json(config={"kind": "ldm-stage1", "data": {"voxel_size": [32, 32, 32]}}))
    assert seen == [((32, 32, 32), "cuda")]
    assert run["setup"]["kind"] == "builtin" and run["steps"][0]["max_reserved_bytes"] == 4096 * MIB


def test_kit_records_an_item_error_and_the_budget_and_goes_on(tmp_path):
    kit = _kit()

    class Failing:
        backend, before, after_init = "fake", 0, DEFAULT_CONTEXT_BYTES

        def run(self, setup, base):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore lines")

    items = [("a", {"kind": "none"}), ("b", {"kind": "none"})]
    ctx, results = kit.measure_all(items, Failing(), tmp_path, deadline=float("inf"))
    assert [r["error"] for r in results] == ["RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"] * 2
    assert ctx == {"used_before_init_bytes": 0, "used_after_init_bytes": DEFAULT_CONTEXT_BYTES,
                   "context_at_init_bytes": DEFAULT_CONTEXT_BYTES}
    _, results = kit.measure_all(items, Failing(), tmp_path, deadline=0.0)
    assert [r["error"] for r in results] == ["skipped: the time budget ran out"] * 2
    assert kit.render(results)[1].startswith("a ")
