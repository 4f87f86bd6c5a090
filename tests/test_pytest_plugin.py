"""vramplan's pytest plugin (issue 11), run inside throwaway pytest sessions with `pytester`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from test_check import STAGE1, STAGE2, step_source

pytest_plugins = ["pytester"]

TESTS = """
from planner.pytest_plugin import assert_fits, assert_within_baseline


def test_stage1_fits():
    assert_fits("configs/stage1.yaml", gpu="24GB", margin=0.05)


def test_stage1_within_baseline():
    assert_within_baseline("configs/stage1.yaml", baseline="vram.json", tolerance=0.02)


def test_step_within_baseline(vram):
    vram.assert_within_baseline("step.py", baseline="vram.json", knobs={"width": 32}, batch=2)
"""


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """Estimate a config and trace the step file once in this process, before `pytester`
    snapshots sys.modules. An inline `runpytest` (and `pytester` itself, at teardown) drops the
    modules imported after its snapshot; torch cannot be imported a second time in one process,
    and a second copy of vramplan's modules beside the first gives wrong figures (seen: 0.52 GiB
    for a 2.42 GiB stage-2 estimate). Imported here first, torch, the estimator and the tracer
    stay, and the inline sessions reuse them (and the trace)."""
    cache = tmp_path_factory.getbasetemp() / "vp_check_traces"
    root = tmp_path_factory.mktemp("warm")
    (root / "step.py").write_text(step_source(64))
    (root / "stage1.yaml").write_text(STAGE1)
    (root / "stage2.yaml").write_text(STAGE2)
    from planner import check as C
    from planner.gpus import parse_gpu

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VRAMPLAN_CACHE", str(cache))
        flags = {"batch": 2, "knob": ["width=32"]}
        C.measure(C.targets(["stage1.yaml", "stage2.yaml", "step.py"], flags, root), parse_gpu("24GB"), flags, jobs=1)
    return cache


@pytest.fixture
def user(warm, pytester, monkeypatch):
    monkeypatch.setenv("VRAMPLAN_CACHE", str(warm))
    pytester.mkdir("configs")
    (pytester.path / "configs" / "stage1.yaml").write_text(STAGE1)
    (pytester.path / "configs" / "stage2.yaml").write_text(STAGE2)
    (pytester.path / "step.py").write_text(step_source(64))
    pytester.makepyfile(test_vram=TESTS)
    return pytester


def test_update_then_pass_then_regression_fails(user):
    # first run: no baseline file -> the baseline tests fail with how to make it
    res = user.runpytest("-q")
    res.assert_outcomes(passed=1, failed=2)
    res.stdout.fnmatch_lines(["*baseline: no such file '*/vram.json' (make it with pytest --vram-update-baseline)*"])  # from the rootdir

    res = user.runpytest("-q", "--vram-update-baseline")
    res.assert_outcomes(passed=3)
    import json

    data = json.loads((user.path / "vram.json").read_text())
    assert list(data["setups"]) == ["configs/stage1.yaml", "step.py --batch 2 --knob width=32"]  # vramplan check's names

    res = user.runpytest("-q")
    res.assert_outcomes(passed=3)

    (user.path / "configs" / "stage1.yaml").write_text(STAGE1.replace("[32, 64, 64]", "[32, 64, 128]"))
    res = user.runpytest("-q")
    res.assert_outcomes(passed=2, failed=1)
    text = res.stdout.str()
    assert "AssertionError: vramplan: configs/stage1.yaml: peak_allocated grew +" in text
    assert "what grew: activations +" in text and "(autoencoder." in text
    assert "baseline: vram.json, tolerance 2.0%" in text
    assert "setup: ldm-stage1, voxel 64x64x32, batch 1, channels [32, 64, 128]" in text


def test_assert_fits_failure_message(user):
    user.makepyfile(test_fit="""
        from planner.pytest_plugin import assert_fits

        def test_stage2_on_a_small_card():
            assert_fits("configs/stage2.yaml", gpu="exact:2GiB")
    """)
    res = user.runpytest("-q", "test_fit.py")
    res.assert_outcomes(failed=1)
    text = res.stdout.str()
    # budget int(2 * 2**30 * 0.95) = 2040109465 B = 1.90 GiB
    assert "vramplan: FAIL configs/stage2.yaml: does not fit" in text and "budget 1.90 GiB" in text
    assert "capacity used: exact:2GiB -> exactly 2.00 GiB (2,147,483,648 B) as CUDA reports it" in text
    assert "setup: ldm-stage2" in text


def test_missing_entry_says_how_to_add_it(user):
    user.runpytest("-q", "--vram-update-baseline", "-k", "stage1_within")
    user.makepyfile(test_more="""
        from planner.pytest_plugin import assert_within_baseline

        def test_stage2():
            assert_within_baseline("configs/stage2.yaml", baseline="vram.json")
    """)
    res = user.runpytest("-q", "test_more.py")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*no baseline entry for 'configs/stage2.yaml' in 'vram.json'*--vram-update-baseline*"])


def _hinted_command(text: str) -> list[str]:
    """The `cd ROOT && vramplan check ...` command a missing-entry message offers, as argv for
    the CLI (run from ROOT)."""
    import re
    import shlex

    # the message appears in the failure and again in pytest's short summary when the terminal is wide
    (cmd,) = set(re.findall(r"`(cd [^`]*)`", text))
    cd, check = cmd.split(" && ")
    assert shlex.split(cd)[1] == str(Path.cwd()), cd
    argv = shlex.split(check)
    assert argv[:2] == ["vramplan", "check"]
    return argv[1:]


def test_missing_entry_command_keeps_the_other_entries(user, monkeypatch):
    """Issue 23: the offered command adds the missing entry and drops nothing (it rewrote the
    file with that one setup before: 2 entries -> 1)."""
    import json

    from typer.testing import CliRunner

    from planner.cli import app

    (user.path / "configs" / "other.yaml").write_text(STAGE2)
    user.makepyfile(test_other="""
        from planner.pytest_plugin import assert_within_baseline

        def test_other():
            assert_within_baseline("configs/other.yaml", baseline="vram.json")
    """)
    user.runpytest("-q", "--vram-update-baseline", "-k", "stage1_within or test_other")
    two = list(json.loads((user.path / "vram.json").read_text())["setups"])
    assert sorted(two) == ["configs/other.yaml", "configs/stage1.yaml"]
    monkeypatch.chdir(user.path)
    res = user.runpytest("-q", "-k", "step_within")  # the step file with knobs, not in the baseline
    res.assert_outcomes(failed=1, deselected=3)
    argv = _hinted_command(res.stdout.str())
    assert argv == ["check", "step.py", "--batch", "2", "--knob", "width=32", "--gpu", "24GB", "--baseline",
                    "vram.json", "--update-baseline"]
    r = CliRunner().invoke(app, [*argv, "--jobs", "1"])
    assert r.exit_code == 0, r.output
    assert "added 1 (step.py --batch 2 --knob width=32)" in r.stdout
    assert list(json.loads((user.path / "vram.json").read_text())["setups"]) == [*two, "step.py --batch 2 --knob width=32"]
    user.runpytest("-q", "-k", "step_within").assert_outcomes(passed=1, deselected=3)


def test_paths_are_from_the_rootdir_whatever_the_working_directory(user):
    (user.path / "elsewhere").mkdir()
    user.makepyfile(test_cwd="""
        import os

        from planner.pytest_plugin import assert_fits


        def test_from_a_subfolder():
            os.chdir("elsewhere")
            assert assert_fits("configs/stage1.yaml", gpu="24GB").fits
    """)
    user.runpytest("-q", "test_cwd.py").assert_outcomes(passed=1)


@pytest.mark.parametrize("knobs, needle", [
    (5, "knobs: 5 is not knobs (valid: a dict such as {'width': 64}, or a list of 'name=value' strings)"),
    ("width=3", "knobs: 'width=3' is not knobs"),
    ([3], "knobs: [3] is not knobs"),
    ({3: 1}, "knobs: names must be strings, got 3"),
])
def test_knobs_that_are_not_knobs_name_the_argument(knobs, needle):
    from planner.errors import PlannerError
    from planner.pytest_plugin import assert_fits, assert_within_baseline

    for call in (assert_fits, assert_within_baseline):
        with pytest.raises(PlannerError) as info:
            call("step.py", knobs=knobs)
        assert str(info.value) == needle or str(info.value).startswith(needle), str(info.value)


def test_plugin_is_registered_by_entry_point(user):
    # a fresh process: pytest finds the plugin through the installed pytest11 entry point
    res = user.runpytest_subprocess("-q", "--help")
    res.stdout.fnmatch_lines(["*--vram-update-baseline*"])
    res = user.runpytest_subprocess("-q", "--fixtures", "test_vram.py")
    res.stdout.fnmatch_lines(["vram -- *"])


def test_importing_the_plugin_is_cheap():
    code = ("import sys, pytest; before = set(sys.modules); import planner.pytest_plugin; "
            "print(sorted(m for m in set(sys.modules) - before if not m.startswith('planner')))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.stdout.strip() == "[]", p.stdout + p.stderr
