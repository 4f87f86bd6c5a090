"""`vramplan check` (issue 11): a throwaway user repository with two built-in configs, a small
step file and a baseline, driven through the CLI as a CI job would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from planner.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]

STAGE1 = """\
kind: ldm-stage1
data: {voxel_size: [64, 64, 32], in_channels: 1}
autoencoder:
  num_channels: [32, 64, 64]
  attention_levels: [false, false, true]
  training: {batch_size: 1}
device: {mixed_precision: true}
"""
STAGE2 = "kind: ldm-stage2\n"
STEP = '''\
import torch
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(8, width), nn.GELU(), nn.Linear(width, width))
        self.decoder = nn.Linear(width, 8)

    def forward(self, x):
        return self.decoder(self.encoder(x))


def networks(width: int = WIDTH):
    return {"net": Net(width)}


def optimizers(nets):
    return {"net": torch.optim.SGD(nets["net"].parameters(), lr=0.1)}


def batch(batch_size: int = 4, tokens: int = 128):
    return torch.randn(batch_size, tokens, 8, device="cuda")


def step(nets, opts, batch, vp):
    vp.zero_grad(opts["net"])
    with vp.autocast():
        loss = F.mse_loss(nets["net"](batch).float(), batch)
    vp.backward(loss, opts["net"])
    vp.step(opts["net"])
'''


def step_source(width: int) -> str:
    return STEP.replace("WIDTH", str(width))


def param_bytes(w: int) -> int:
    """The step file's fp32 parameters, each storage rounded up to 512 B: Linear(8, w) weight 8w
    and bias w, Linear(w, w) w*w and w, Linear(w, 8) 8w and a bias of 8 (32 B -> 512 B)."""
    r = lambda n: -(-n * 4 // 512) * 512  # noqa: E731
    return r(8 * w) + r(w) + r(w * w) + r(w) + r(8 * w) + r(8)


@pytest.fixture(scope="module")
def trace_cache(tmp_path_factory):
    # shared with tests/test_pytest_plugin.py in one session: the step file is traced once
    return tmp_path_factory.getbasetemp() / "vp_check_traces"


@pytest.fixture
def repo(tmp_path, monkeypatch, trace_cache):
    """A user's repository: two built-in configs and a step file, run from its root."""
    monkeypatch.setenv("VRAMPLAN_CACHE", str(trace_cache))
    for var in ("GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "stage1.yaml").write_text(STAGE1)
    (tmp_path / "configs" / "stage2.yaml").write_text(STAGE2)
    (tmp_path / "step.py").write_text(step_source(64))
    monkeypatch.chdir(tmp_path)
    return tmp_path


SETUPS = ["configs/stage1.yaml", "configs/stage2.yaml", "step.py"]


def check(*args: str):
    return runner.invoke(app, ["check", *args, "--jobs", "1"] if "step.py" in args else ["check", *args])


def check_json(*args: str) -> tuple[int, dict]:
    r = check(*args, "--json")
    assert r.exit_code in (0, 1), r.output
    return r.exit_code, json.loads(r.stdout)


def make_baseline(gpu: str = "24GB") -> dict:
    r = check(*SETUPS, "--gpu", gpu, "--baseline", "vram.json", "--update-baseline")
    assert r.exit_code == 0, r.output
    return json.loads(Path("vram.json").read_text())


def test_update_then_unchanged_passes(repo):
    data = make_baseline()
    assert data["version"] == 1 and data["gpu"]["key"] == "24GB"
    assert list(data["setups"]) == SETUPS
    step = data["setups"]["step.py"]
    assert step["by_category"]["parameters"] == param_bytes(64) == 22016  # 2048+512+16384+512+2048+512
    assert set(step["by_category"]) == {"parameters", "gradients", "optimizer_state", "activations", "temporaries"}
    for entry in data["setups"].values():
        assert entry["peak_allocated_bytes"] <= entry["device_total_bytes"]
        assert sum(entry["by_category"].values()) == entry["peak_allocated_bytes"]
        assert all(m.count(".") <= 1 for m in entry["top_modules"])  # rolled up to network.child

    code, out = check_json(*SETUPS, "--gpu", "24GB", "--baseline", "vram.json")
    assert code == 0 and out["exit_code"] == 0 and out["failed"] == 0
    assert [s["status"] for s in out["setups"]] == ["ok", "ok", "ok"]
    for s in out["setups"]:
        assert s["growth"]["peak_allocated_bytes"]["delta"] == 0 and s["diff"] is None
    # text: every setup states what it describes and the card's capacity
    r = check(*SETUPS, "--gpu", "24GB", "--baseline", "vram.json")
    assert r.exit_code == 0, r.output
    assert "capacity used: 24GB -> card sold as 24 GB: 23.64 GiB (25,383,256,719 B) as CUDA reports it" in r.stdout
    assert "setup: ldm-stage1, voxel 64x64x32, batch 1, channels [32, 64, 64]" in r.stdout
    assert "setup: step.py, batch 4, fp32" in r.stdout
    assert "result: all 3 setups pass (exit 0)" in r.stdout


def test_wider_channels_fail_naming_category_and_module(repo):
    make_baseline()
    Path("configs/stage1.yaml").write_text(STAGE1.replace("[32, 64, 64]", "[32, 64, 128]"))
    Path("step.py").write_text(step_source(128))
    code, out = check_json(*SETUPS, "--gpu", "24GB", "--baseline", "vram.json")
    assert code == 1 and out["failed"] == 2
    s1, s2, st = out["setups"]
    assert (s1["status"], s2["status"], st["status"]) == ("fail", "ok", "fail")
    # stage 1: wider last level -> more parameters and activations, in the autoencoder
    assert s1["growth"]["peak_allocated_bytes"]["over_tolerance"]
    assert s1["diff"]["by_category"]["parameters"] > 0 and s1["diff"]["by_category"]["activations"] > 0
    grown_module = max(s1["diff"]["top_modules"].items(), key=lambda kv: kv[1])
    assert grown_module[0].startswith("autoencoder.") and grown_module[1] > 0
    assert "activations +" in s1["grew"]
    assert "activations +" in s1["message"] and grown_module[0] in s1["message"]
    # the step file: parameters grow by exactly param_bytes(128) - param_bytes(64)
    # = (4096+512+65536+512+4096+512) - 22016 = 75264 - 22016 = 53248 B
    assert st["diff"]["by_category"]["parameters"] == param_bytes(128) - param_bytes(64) == 53248
    assert st["diff"]["by_network"]["net"] > 0 and st["diff"]["top_modules"]["net.encoder"] > 0
    # the text report says what grew and where, old -> new
    r = check(*SETUPS, "--gpu", "24GB", "--baseline", "vram.json")
    assert r.exit_code == 1
    block = r.stdout.split("FAIL configs/stage1.yaml", 1)[1].split("\n\n", 1)[0]
    assert "peak_allocated:" in block and " -> " in block and "over the 2.0% tolerance" in block
    assert "what grew: activations +" in block and f"({grown_module[0]} +" in block
    assert "by network: autoencoder +" in block
    assert "result: 2 of 3 setups failed (exit 1)" in r.stdout


def test_tolerance_lets_small_growth_pass(repo):
    make_baseline()
    Path("configs/stage1.yaml").write_text(STAGE1.replace("[32, 64, 64]", "[32, 64, 128]"))
    code, out = check_json("configs/stage1.yaml", "--gpu", "24GB", "--baseline", "vram.json", "--tolerance", "10")
    assert code == 0 and out["setups"][0]["status"] == "ok"
    assert out["setups"][0]["diff"]["by_category"]["activations"] > 0  # reported, within tolerance


def test_setup_that_stops_fitting_fails(repo):
    # --gpu 2.0GiB is taken literally: 2 * 2**30 B; budget int(2147483648 * (1 - 0.05)) = 2040109465 B
    code, out = check_json("configs/stage1.yaml", "configs/stage2.yaml", "--gpu", "exact:2GiB")
    assert code == 1
    assert out["gpu"]["capacity_bytes"] == 2 * 2**30 and out["gpu"]["budget_bytes"] == 2040109465
    fits = {s["name"]: s["fits"] for s in out["setups"]}
    by_total = {s["name"]: s["device_total_bytes"] for s in out["setups"]}
    assert fits == {n: by_total[n] <= 2040109465 for n in by_total}
    assert fits["configs/stage1.yaml"] and not fits["configs/stage2.yaml"]
    bad = out["setups"][1]
    assert bad["status"] == "fail" and bad["failures"][0].startswith("does not fit")
    # a larger margin moves the budget: 2147483648 * 0.5 = 1073741824 B
    code, out = check_json("configs/stage1.yaml", "--gpu", "exact:2GiB", "--margin", "0.5")
    assert out["gpu"]["budget_bytes"] == 1073741824
    assert code == (0 if out["setups"][0]["device_total_bytes"] <= 1073741824 else 1)


def test_update_baseline_writes_but_fails_when_not_fitting(repo):
    r = check("configs/stage2.yaml", "--gpu", "exact:2GiB", "--baseline", "vram.json", "--update-baseline")
    assert r.exit_code == 1
    assert json.loads(Path("vram.json").read_text())["setups"]["configs/stage2.yaml"]["device_total_bytes"] > 0
    assert "DOES NOT FIT" in r.stdout


def test_new_setup_without_baseline_does_not_fail(repo):
    r = check("configs/stage1.yaml", "--gpu", "24GB", "--baseline", "vram.json", "--update-baseline")
    assert r.exit_code == 0, r.output
    code, out = check_json("configs/stage1.yaml", "configs/stage2.yaml", "--gpu", "24GB", "--baseline", "vram.json")
    assert code == 0
    assert [s["status"] for s in out["setups"]] == ["ok", "new"]
    assert "new (no baseline)" in out["setups"][1]["message"]


ENTRY = ('{"version": 1, "gpu": {"key": "24GB"}, "setups": {"a.yaml": {"setup": "x", "peak_allocated_bytes": 1, '
         '"peak_reserved_bytes": 1, "device_total_bytes": 1, "by_category": {}, "by_network": {}, "top_modules": {}}}}')
BAD_BASELINES = [
    ("{", "not valid JSON (line 1 column 2"),
    ("[]", "must hold a JSON object, got list"),
    ('{"gpu": {"key": "24GB"}, "setups": {}}', "no 'version' field"),
    ('{"version": 2, "gpu": {"key": "24GB"}, "setups": {}}', "'version' is 2"),
    ('{"version": 1, "setups": {}}', "'gpu' must be an object with a 'key' string"),
    ('{"version": 1, "gpu": {"key": "24GB"}, "setups": []}', "'setups' must be an object"),
    ('{"version": 1, "gpu": {"key": "24GB"}, "setups": {"a.yaml": {"setup": "x", "peak_allocated_bytes": "12"}}}',
     "setups['a.yaml'].peak_allocated_bytes must be a positive integer of bytes, got '12'"),
    ('{"version": 1, "gpu": {"key": "24GB"}, "setups": {"a.yaml": {"setup": "x", "peak_allocated_bytes": 1, '
     '"peak_reserved_bytes": 1, "device_total_bytes": 1, "by_category": {"activations": -5}, "by_network": {}, '
     '"top_modules": {}}}}', "setups['a.yaml'].by_category['activations'] must be a non-negative integer"),
    ('{"version": 1, "gpu": {"key": "24GB"}, "setups": {"a.yaml": {"setup": "x", "peak_allocated_bytes": 1, '
     '"peak_reserved_bytes": 1, "device_total_bytes": 1, "by_category": {}, "by_network": {}}}}',
     "setups['a.yaml'].top_modules must be an object"),
    # issue 23: a value of 0 (growth would be "+inf %"), out-of-order totals, deep nesting, long numbers,
    # unknown fields (a typo would otherwise pass unseen)
    (ENTRY.replace('"peak_allocated_bytes": 1,', '"peak_allocated_bytes": 0,'),
     "setups['a.yaml'].peak_allocated_bytes must be a positive integer of bytes, got 0"),
    (ENTRY.replace('"device_total_bytes": 1,', '"device_total_bytes": -3,'), "device_total_bytes must be a positive"),
    (ENTRY.replace('"peak_reserved_bytes": 1,', '"peak_reserved_bytes": 2,'),
     "setups['a.yaml']: figures out of order (peak_allocated_bytes 1 <= peak_reserved_bytes 2 <= device_total_bytes 1"),
    (ENTRY.replace('"setup": "x",', '"setup": "x", "peak_allocated_byte": 1,'),
     "setups['a.yaml'] has unknown field 'peak_allocated_byte' (valid: setup, engine,"),
    (ENTRY.replace('"setup": "x",', '"setup": "x", "engine": 4,'), "setups['a.yaml'].engine must be a string, got 4"),
    (ENTRY.replace('"key": "24GB"', '"key": "24GB", "capacity_bytes": 0'), "gpu.capacity_bytes must be a positive"),
    (ENTRY.replace('"version": 1,', '"version": 1, "tolerance": 0.5,'), "the file has unknown field 'tolerance'"),
    pytest.param('{"version": 1, "gpu": {"key": "24GB"}, "setups": ' + "[" * 100_000 + "]" * 100_000 + "}",
                 "nested too deeply to be a baseline", id="nested-100000"),
    pytest.param('{"version": 1, "margin": ' + "9" * 5000 + "}", "not valid JSON (a number too long", id="5000-digits"),
]


def test_a_profiles_signed_term_is_a_valid_baseline_entry(tmp_path):
    # issue 23: a device profile's term is filed in the breakdown (planner/result.py PROFILE_TERM) and
    # may be negative; every other entry stays non-negative
    from planner.check import read_baseline
    from planner.errors import PlannerError

    ok = ENTRY.replace('"by_category": {}', '"by_category": {"profile_term": -10685}')
    (tmp_path / "ok.json").write_text(ok)
    assert read_baseline(tmp_path / "ok.json").setups["a.yaml"]["by_category"] == {"profile_term": -10685}
    (tmp_path / "bad.json").write_text(ok.replace("-10685", '"x"'))
    with pytest.raises(PlannerError, match=r"by_category\['profile_term'\] must be an integer of bytes, got 'x'"):
        read_baseline(tmp_path / "bad.json")


@pytest.mark.parametrize("text,needle", BAD_BASELINES)
def test_bad_baseline_is_exit_2_naming_file_and_field(repo, text, needle):
    Path("vram.json").write_text(text)
    r = check("configs/stage1.yaml", "--gpu", "24GB", "--baseline", "vram.json")
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: --baseline: 'vram.json': ") and needle in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and r.stdout == ""


def test_bad_baseline_console_script_one_line_no_traceback(repo):
    Path("vram.json").write_text('{"version": 1, "gpu": {"key": "24GB"}, "setups": {"x": 3}}')
    p = subprocess.run([sys.executable, "-m", "planner.entry", "check", "configs/stage1.yaml", "--gpu", "24GB",
                        "--baseline", "vram.json"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr == "error: --baseline: 'vram.json': setups['x'] must be an object, got 3\n"
    assert p.stdout == ""


@pytest.mark.parametrize("args,needle", [
    (["configs/stage1.yaml", "--gpu", "24GB", "--baseline", "missing.json"], "--baseline: no such file 'missing.json'"),
    (["configs/stage1.yaml", "--gpu", "24GB", "--batch", "2"], "--batch: applies to step files (.py) only"),
    (["configs/stage1.yaml", "--gpu", "24GB", "--knob", "width=3"], "--knob: applies to step files (.py) only"),
    (["configs/stage1.yaml", "--gpu", "24GB", "--precision", "amp-bf16"], "--precision: applies to step files"),
    (["configs/stage1.yaml", "--gpu", "24GB", "--tolerance", "0.1"], "--tolerance: applies to a baseline comparison"),
    (["configs/stage1.yaml", "--gpu", "24GB", "--baseline", "v.json", "--tolerance", "-0.1"], "--tolerance: -0.1 must be"),
    (["configs/stage1.yaml", "--gpu", "24GB", "--baseline", "v.json", "--tolerance", "nan"], "--tolerance: nan must be"),
    (["configs/stage1.yaml", "--gpu", "24GB", "--update-baseline"], "--update-baseline: give --baseline FILE"),
    (["configs/stage1.yaml", "--gpu", "24GB", "--margin", "1.5"], "--margin: 1.5 must be in [0, 1)"),
    (["configs/stage1.yaml", "--gpu", "nonsense-card"], "nonsense-card"),
    (["configs/nope.yaml", "--gpu", "24GB"], "check: setup file 'configs/nope.yaml' does not exist"),
    (["notes.txt", "--gpu", "24GB"], "check: 'notes.txt' is not a setup file"),
    (["configs/stage1.yaml", "./configs/stage1.yaml", "--gpu", "24GB"], "given twice"),
    (["step.py", "--gpu", "24GB", "--knob", "wdth=3"], "wdth"),
])
def test_bad_input_exit_2(repo, args, needle):
    if "notes.txt" in args:
        Path("notes.txt").write_text("x")
    r = runner.invoke(app, ["check", *args])
    assert r.exit_code == 2, r.output
    assert needle in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_step_flags_name_the_setup(repo):
    code, out = check_json("step.py", "--gpu", "24GB", "--batch", "2", "--knob", "width=32", "--knob", "tokens=64")
    assert code == 0
    s = out["setups"][0]
    assert s["name"] == "step.py --batch 2 --knob tokens=64 --knob width=32"  # knobs sorted by name
    assert s["setup_detail"]["batch_size"] == 2 and s["setup_detail"]["knobs"] == {"tokens": 64, "width": 32}
    assert s["breakdown"]["by_category"]["parameters"] == param_bytes(32)


def test_ci_outputs_junit_annotations_summary(repo, monkeypatch):
    make_baseline()
    Path("configs/stage1.yaml").write_text(STAGE1.replace("[32, 64, 64]", "[32, 64, 128]"))
    Path("configs/new.yaml").write_text(STAGE2)
    summary = repo / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    args = ["configs/stage1.yaml", "configs/stage2.yaml", "configs/new.yaml", "--gpu", "24GB",
            "--baseline", "vram.json", "--junit", "out.xml"]
    r = check(*args)
    assert r.exit_code == 1, r.output

    suite = ET.parse("out.xml").getroot().find("testsuite")
    assert suite.get("tests") == "3" and suite.get("failures") == "1" and suite.get("errors") == "0"
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["gpu"] == "24GB" and props["baseline"] == "vram.json" and props["tolerance"] == "0.02"
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert list(cases) == ["configs/stage1.yaml", "configs/stage2.yaml", "configs/new.yaml"]
    failure = cases["configs/stage1.yaml"].find("failure")
    assert failure is not None and failure.get("type") == "memory regression"
    assert "grew" in failure.get("message") and "activations +" in failure.get("message")
    assert "what grew: activations +" in failure.text
    assert cases["configs/stage2.yaml"].find("failure") is None and cases["configs/new.yaml"].find("failure") is None

    ann = [line for line in r.stdout.splitlines() if line.startswith("::")]
    assert len(ann) == 2
    assert ann[0].startswith("::error file=configs/stage1.yaml,title=vramplan check%3A memory grew::FAIL configs/stage1.yaml: ")
    assert "%25" in ann[0] and "activations +" in ann[0]  # '%' escaped as GitHub requires
    assert "[setup: ldm-stage1, voxel 64x64x32, batch 1, channels [32, 64, 128]" in ann[0]
    assert "GPU card sold as 24 GB (24GB): budget 22.46 GiB = capacity 23.64 GiB" in ann[0]
    assert ann[1].startswith("::warning file=configs/new.yaml,title=vramplan check%3A no baseline::new configs/new.yaml")

    md = summary.read_text()
    assert md.startswith("earlier step\n### vramplan check: 1 of 3 setups failed\n")  # appended
    rows = [line for line in md.splitlines() if line.startswith("| `")]
    assert len(rows) == 3
    assert rows[0].startswith("| `configs/stage1.yaml` | **FAIL** |") and "activations +" in rows[0]
    assert rows[1].startswith("| `configs/stage2.yaml` | pass |")
    assert rows[2].startswith("| `configs/new.yaml` | pass (new, no baseline) |")
    assert "| setup | result | peak allocated | device total | change (allocated / total) | fits budget | what grew |" in md
    assert rows[1].split(" | ")[4] == "+0.0% / +0.0%"  # unchanged stage 2

    # --json keeps stdout JSON: the annotations go to stderr and into the JSON
    r = check(*args, "--json")
    data = json.loads(r.stdout)
    assert data["github_annotations"][0].startswith("::error file=configs/stage1.yaml")
    assert "::error file=configs/stage1.yaml" in r.stderr


def test_config_path_does_not_import_torch(repo):
    code = ("import sys; sys.argv = ['vramplan', 'check', 'configs/stage1.yaml', 'configs/stage2.yaml', "
            "'--gpu', '24GB']\nfrom planner.cli import main\ntry:\n    main()\nexcept SystemExit as e:\n"
            "    print('exit', e.code, 'torch' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.stdout.splitlines()[-1] == "exit 0 False", p.stdout + p.stderr


def test_estimate_rollup_changes_only_module_names():
    from planner.analytic.estimate import estimate
    from planner.config import resolve_setup

    setup = resolve_setup(str(ROOT / "examples" / "seed004_high_res.yaml"))
    flat, rolled = estimate(setup), estimate(setup, rollup=2)
    assert flat.peak_allocated_bytes == rolled.peak_allocated_bytes
    assert flat.device_total_bytes == rolled.device_total_bytes
    assert flat.breakdown.by_category == rolled.breakdown.by_category
    assert all(m.count(".") <= 1 for m, _ in rolled.breakdown.top_modules)
    assert rolled.breakdown.top_modules[0][0] == "autoencoder.encoder"  # the bottom-level attention's encoder


def test_committed_project_baseline_is_valid():
    from planner.check import read_baseline
    from planner.errors import PlannerError

    b = read_baseline(ROOT / "benchmarks" / "vram_baseline.json")
    assert "examples/seed004_high_res.yaml" in b.setups
    assert any(name.startswith("examples/steps/") for name in b.setups)
    assert os.path.exists(ROOT / "scripts" / "test.sh")
    assert "benchmarks/vram_baseline.json" in (ROOT / "scripts" / "test.sh").read_text()


# --- issue 23: baselines are never lost; one failing setup does not hide the others -----------------


def test_valid_minimal_entry_reads(repo):
    Path("vram.json").write_text(ENTRY)  # the base of the bad cases above is itself valid
    from planner.check import read_baseline
    from planner.errors import PlannerError

    assert read_baseline("vram.json").setups["a.yaml"]["device_total_bytes"] == 1


def test_update_baseline_merges_and_says_what_changed(repo):
    before = make_baseline()  # stage1, stage2, step.py
    Path("configs/stage1.yaml").write_text(STAGE1.replace("[32, 64, 64]", "[32, 64, 128]"))
    Path("configs/new.yaml").write_text(STAGE2)
    code, out = check_json("configs/stage1.yaml", "configs/stage2.yaml", "configs/new.yaml", "--gpu", "24GB",
                           "--baseline", "vram.json", "--update-baseline")
    assert code == 0
    assert out["baseline"]["changes"] == {"added": ["configs/new.yaml"], "changed": ["configs/stage1.yaml"],
                                          "unchanged": ["configs/stage2.yaml"], "removed": [], "kept": ["step.py"]}
    after = json.loads(Path("vram.json").read_text())["setups"]
    assert list(after) == [*SETUPS, "configs/new.yaml"]  # nothing dropped, the new one added
    assert after["step.py"] == before["setups"]["step.py"] and after["configs/stage2.yaml"] == after["configs/new.yaml"]
    assert after["configs/stage1.yaml"]["peak_allocated_bytes"] > before["setups"]["configs/stage1.yaml"]["peak_allocated_bytes"]
    r = check("configs/stage1.yaml", "--gpu", "24GB", "--baseline", "vram.json", "--update-baseline")
    assert ("baseline: updated vram.json: added 0; changed 0; unchanged 1 (configs/stage1.yaml); removed 0; "
            "kept 3 (configs/stage2.yaml, step.py, configs/new.yaml) not checked now (--prune-baseline removes them)"
            in r.stdout), r.stdout
    # removal only when asked
    code, out = check_json("configs/stage1.yaml", "--gpu", "24GB", "--baseline", "vram.json", "--update-baseline",
                           "--prune-baseline")
    assert out["baseline"]["changes"]["removed"] == ["configs/stage2.yaml", "step.py", "configs/new.yaml"]
    assert list(json.loads(Path("vram.json").read_text())["setups"]) == ["configs/stage1.yaml"]


@pytest.mark.parametrize("args, needle", [
    (["--baseline", "vram.json", "--prune-baseline"], "--prune-baseline: applies with --update-baseline"),
    (["--baseline", "vram.json", "--update-baseline", "--tolerance", "0.1"], "--tolerance: applies to a comparison"),
])
def test_baseline_flags_that_would_be_ignored_are_refused(repo, args, needle):
    r = runner.invoke(app, ["check", "configs/stage1.yaml", "--gpu", "24GB", *args])
    assert r.exit_code == 2 and needle in r.stderr and r.stderr.count("\n") == 1, r.output


def test_update_refuses_to_overwrite_a_baseline_it_cannot_read(repo):
    Path("vram.json").write_text('{"version": 1, "gpu": {"key": "24GB"}, "setups": {"x": 3}}')
    r = check("configs/stage1.yaml", "--gpu", "24GB", "--baseline", "vram.json", "--update-baseline")
    assert r.exit_code == 2 and "setups['x'] must be an object" in r.stderr
    assert Path("vram.json").read_text() == '{"version": 1, "gpu": {"key": "24GB"}, "setups": {"x": 3}}'


BROKEN_STEP = STEP.replace("WIDTH", "16").replace("loss = F.mse_loss(nets[\"net\"](batch).float(), batch)",
                                                   "loss = F.mse_loss(nets[\"net\"](batch[..., :3]).float(), batch)")


def test_failing_step_file_is_an_error_case_beside_the_others(repo):
    make_baseline()  # step.py now in the trace cache
    Path("broken.py").write_text(BROKEN_STEP)  # Linear(8, w) fed 3 features: the user's code raises
    Path("syntax.py").write_text("def networks(:\n")
    args = [*SETUPS, "broken.py", "syntax.py", "--gpu", "24GB", "--baseline", "vram.json", "--junit", "out.xml"]
    r = check(*args)
    assert r.exit_code == 2, r.output
    errs = r.stderr.splitlines()
    assert len(errs) == 2 and all(e.startswith("error: ") for e in errs), r.stderr
    assert errs[0].startswith("error: broken.py: step: step() raised RuntimeError: ") and "(broken.py:13)" in errs[0]
    assert errs[1] == "error: --step: importing 'syntax.py' failed: SyntaxError: invalid syntax (syntax.py:1)"
    assert "ok   step.py" in r.stdout and "ok   configs/stage1.yaml" in r.stdout
    assert "ERROR broken.py\n  not measured: " in r.stdout and "ERROR syntax.py" in r.stdout
    assert "result: 2 of 5 setups not measured, 0 failed (exit 2)" in r.stdout

    suite = ET.parse("out.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("5", "0", "2")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert list(cases) == [*SETUPS, "broken.py", "syntax.py"]
    assert cases["broken.py"].find("error").get("message").startswith("ERROR broken.py: not measured: ")
    assert cases["step.py"].find("error") is None and cases["step.py"].find("failure") is None
    # every case carries a time, the cached step file's included (step files: an equal share of their traces')
    times = {n: c.get("time") for n, c in cases.items()}
    assert all(t is not None and float(t) >= 0 for t in times.values()), times
    assert times["step.py"] == times["broken.py"] == times["syntax.py"]

    r = check(*args, "--json")
    out = json.loads(r.stdout)
    assert r.exit_code == 2 and out["errors"] == 2 and out["exit_code"] == 2
    assert [s["status"] for s in out["setups"]] == ["ok", "ok", "ok", "error", "error"]
    # the baseline keeps what could not be measured
    r = check(*SETUPS[:2], "broken.py", "--gpu", "24GB", "--baseline", "vram.json", "--update-baseline")
    assert r.exit_code == 2
    assert list(json.loads(Path("vram.json").read_text())["setups"]) == SETUPS


def test_invalid_config_is_an_error_case_with_a_time(repo):
    Path("configs/bad.yaml").write_text("kind: ldm-stage9\n")
    r = check("configs/stage1.yaml", "configs/bad.yaml", "--gpu", "24GB", "--junit", "out.xml")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "configs/bad.yaml: kind: got 'ldm-stage9'" in r.stderr
    assert "ok   configs/stage1.yaml" in r.stdout and "ERROR configs/bad.yaml" in r.stdout
    cases = ET.parse("out.xml").getroot().find("testsuite").findall("testcase")
    assert [c.find("error") is not None for c in cases] == [False, True]
    assert all(float(c.get("time")) >= 0 for c in cases)
