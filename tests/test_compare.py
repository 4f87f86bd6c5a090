"""``vramplan compare``, ``calibrate --from`` and ``record`` on run files written by hand in the
format planner/record.py writes (tests/data/runs/*.json).

The two tiny-step runs (tests/tiny_step.py, fp32 AdamW) as if measured on an H100:

* estimates (the fake trace, derived to the byte in tests/test_stepfile_knobs.py): batch 64:
  5 * P32 + acts = 5 * 1,119,744 + (3 * 64*128*4 + 512) = 5,697,536 B; batch 128: 5,598,720 +
  3 * 128*128*4 + 512 = 5,795,840 B. Modelled reserved: every tensor is under 1 MiB, so the
  allocator model serves them from 2 MiB small-pool segments: ceil(5.4 MiB / 2 MiB) = 3 -> 6 MiB
  for both.
* measured (steps 2.. count): allocated = estimate + 8 MiB (8,388,608: a cuBLAS workspace) ->
  14,086,144 and 14,184,448 B; reserved 22 MiB and 24 MiB; context: used after step 1 - reserved
  then - used before init = 922 - 22 - 300 = 600 MiB and 934 - 24 - 300 = 610 MiB; device used
  922 - 300 = 622 MiB and 634 MiB.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from planner import profiles
from planner.cli import app
from planner.errors import PlannerError
from planner.record import load_run, measured

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_step import TINY  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "runs"
MIB = 2**20
CTX_DEFAULT = 426 * MIB  # planner/result.py DEFAULT_CONTEXT_BYTES


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """The hand-written runs beside the tiny step file they name (step_file "tiny.py")."""
    for p in DATA.glob("*.json"):
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "tiny.py").write_text(TINY)
    monkeypatch.setattr(profiles, "PROFILE_DIR", tmp_path / "profiles")
    return tmp_path


def _cli(*args):
    return CliRunner().invoke(app, list(map(str, args)))


def test_measured_figures_of_the_hand_written_runs(runs):
    a = measured(load_run(runs / "h100-tiny-b64.json"))
    assert a["peak_allocated_bytes"] == 5_729_792 + 8 * MIB == 14_118_400  # the tiny step's trace + 8 MiB
    assert a["peak_reserved_bytes"] == 22 * MIB
    assert a["context_bytes"] == (922 - 22 - 300) * MIB == 600 * MIB
    assert a["device_used_bytes"] == (922 - 300) * MIB
    assert a["inactive_split_bytes"] == 512 * 1024 and a["segments"] == 6
    c = measured(load_run(runs / "h100-s1-32-fp32.json"))
    # one step only: it counts; no first-step reading: the context is not measured
    assert c["peak_allocated_bytes"] == 200 * MIB and c["context_bytes"] is None
    assert c["device_used_bytes"] == 760 * MIB  # no NVML reading before init: nothing subtracted


def test_compare_per_figure_json(runs):
    r = _cli("compare", runs / "h100-tiny-b64.json", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    fig = {f["figure"]: f for f in data["figures"]}
    assert fig["allocated"]["estimated_bytes"] == 5_729_792
    assert fig["allocated"]["error_bytes"] == -8 * MIB
    assert fig["reserved"]["estimated_bytes"] == 6 * MIB and fig["reserved"]["error_bytes"] == -16 * MIB
    assert fig["context"]["error_bytes"] == (426 - 600) * MIB
    # device: 6 MiB reserved + the 426 MiB default context = 432 MiB vs 622 MiB used
    assert fig["device"]["estimated_bytes"] == 432 * MIB and fig["device"]["error_bytes"] == -190 * MIB
    assert fig["device"]["error_pct"] == round(-100 * 190 / 622, 4)
    assert data["underestimates"] == ["allocated", "reserved", "context", "device"]
    cats = data["categories_estimated_bytes"]
    p32 = 1_119_744
    assert (cats["parameters"], cats["optimizer_state"]) == (p32, 2 * p32)
    assert cats["not in the estimate (workspaces, kernel scratch)"] == 8 * MIB


def test_compare_text_and_the_builtin_basis(runs):
    r = _cli("compare", runs / "h100-tiny-b64.json")
    assert r.exit_code == 0, r.output
    assert "device              432.0         622.0   -30.55%" in r.output  # -190 / 622
    assert "UNDER-ESTIMATED: allocated, reserved, context, device" in r.output
    r = _cli("compare", runs / "h100-s1-32-fp32.json", "--json")
    data = json.loads(r.output)
    assert data["basis"] == "analytic"
    ctx = next(f for f in data["figures"] if f["figure"] == "context")
    assert ctx["measured_bytes"] is None and ctx["error_bytes"] is None


def test_calibrate_from_fits_workspace_reserved_and_context_then_validates(runs):
    r = _cli("calibrate", "--from", runs / "h100-tiny-b64.json", runs / "h100-tiny-b128.json", "--name", "h100",
             "--json")
    assert r.exit_code == 0, r.output
    prof = profiles.load("h100")
    assert prof.hardware and prof.basis == "trace" and prof.device["name"] == "NVIDIA H100 80GB HBM3"
    assert prof.workspace_bytes == 8 * MIB  # both runs: measured - estimated = 8 MiB
    # modelled reserved is 6 MiB for both points (constant x): slope 1, offset mean(22, 24) - 6 = 17 MiB
    assert (prof.reserved_scale, prof.reserved_offset_bytes) == (1.0, 17 * MIB)
    assert prof.context_bytes == 605 * MIB  # mean(600, 610)
    # residuals: allocated 0; reserved 22 - 23 = -1 MiB of 22 and 24 - 23 = +1 MiB of 24
    assert prof.residuals["allocated"]["max_abs_pct"] == 0
    assert prof.residuals["reserved"]["max_abs_pct"] == round(100 / 22, 4)
    # the profile applied: allocated exact, reserved 6 + 17 = 23 vs 22 MiB, context 605 vs 600,
    # device 23 + 605 = 628 vs 622 MiB
    r = _cli("compare", runs / "h100-tiny-b64.json", "--profile", "h100", "--json")
    fig = {f["figure"]: f["error_bytes"] for f in json.loads(r.output)["figures"]}
    assert fig == {"allocated": 0, "reserved": MIB, "context": 5 * MIB, "device": 6 * MIB}
    r = _cli("calibrate", "--from", str(runs / "h100-tiny-*.json"), "--validate", "h100", "--json")
    assert r.exit_code == 0, r.output
    val = json.loads(r.output)
    assert val["underestimated_runs"] == 1  # b128: reserved 23 MiB modelled vs 24 measured
    assert val["worst_abs_error_pct"]["allocated"] == 0


def test_record_fake_backend_writes_a_run_that_compares_to_identity(runs):
    out = runs / "mine.json"
    r = _cli("record", "--step", runs / "tiny.py", "--batch", 64, "--backend", "fake", "--out", out)
    assert r.exit_code == 0, r.output
    got = measured(load_run(out))
    assert got["peak_allocated_bytes"] == 5_729_792 and got["context_bytes"] == CTX_DEFAULT
    r = _cli("compare", out, "--json")
    assert [f["error_bytes"] for f in json.loads(r.output)["figures"]] == [0, 0, 0, 0]


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(schema="vramplan-run/0"), "'schema' must be 'vramplan-run/1'"),
    (lambda d: d["steps"][1].update(max_allocated_bytes=-1), "steps[1]: 'max_allocated_bytes' must be an integer"),
    (lambda d: d["steps"][1].update(max_allocated_bytes=30 * MIB), "exceeds 'max_reserved_bytes'"),
    (lambda d: d["steps"][2].update(step=2), "steps[2]: 'step' must be >= 1 and increasing"),
    (lambda d: d["device"].update(backend="rocm"), "'device.backend' must be one of cuda, fake"),
    (lambda d: d["context"].update(used_after_init_bytes="800"), "context: 'used_after_init_bytes' must be null or"),
    (lambda d: d["setup"]["step"].update(precision="fp8"), "--precision: got 'fp8'"),
    (lambda d: d["setup"].update(kind="script"), "'setup.kind' must be one of step, builtin, none"),
    (lambda d: d.update(pickle="x"), "unknown key 'pickle'"),
])
def test_bad_run_files_are_one_line_exit_2(runs, edit, message):
    data = json.loads((runs / "h100-tiny-b64.json").read_text())
    edit(data)
    bad = runs / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(PlannerError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        load_run(bad)
    r = _cli("compare", bad)
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and message in r.output


@pytest.mark.parametrize("args, message", [
    (["compare", "nope.json"], "compare: no such file 'nope.json'"),
    (["calibrate", "--from", "nope/*.json"], "--from: no file matches 'nope/*.json'"),
    (["calibrate", "--from", "a.json", "--step", "x.py"], "--step: does not apply to --from"),
    (["record", "--out", "r.json", "--backend", "cuda"], "--backend: cuda needs a CUDA GPU"),
    (["record", "--out", "r.json", "--backend", "cpu"], "--backend: got 'cpu', valid: cuda, fake"),
])
def test_bad_flags_one_line(runs, monkeypatch, args, message):
    monkeypatch.chdir(runs)
    r = _cli(*args)
    assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_mixed_bases_and_devices_are_refused(runs):
    r = _cli("calibrate", "--from", runs / "h100-tiny-b64.json", runs / "h100-s1-32-fp32.json", "--name", "x")
    assert r.exit_code == 2 and "is a analytic run but earlier ones are trace runs" in r.output


def test_help_has_examples():
    for cmd in ("record", "compare", "calibrate", "snapshot"):
        r = _cli(cmd, "--help")
        assert r.exit_code == 0 and "Example: vramplan " + cmd in r.output
