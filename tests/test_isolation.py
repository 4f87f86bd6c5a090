"""User code runs isolated (issue 23): a step file or --model factory that hangs, exits,
interrupts or prints cannot hang vramplan, fake a success or spoil --json
(planner/measure/isolate.py). Tiny step files written to tmp_path; the CLI in-process
(its worker processes are the test session's, reused from test to test) except where the
file descriptors themselves are the point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from planner.cli import app
from planner.measure import isolate

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]

BASE = '''import torch
import torch.nn as nn


def networks(width: int = 8):
    return {"net": nn.Linear(width, width)}


def optimizers(nets):
    return {"net": torch.optim.SGD(nets["net"].parameters(), lr=0.1)}


def batch(batch_size: int = 2, width: int = 8):
    return torch.randn(batch_size, width, device="cuda")


def step(nets, opts, batch, vp):
    vp.zero_grad(opts["net"])
    with vp.autocast():
        loss = nets["net"](batch).float().pow(2).mean()
    vp.backward(loss, opts["net"])
    vp.step(opts["net"])
'''
STEP_FIRST = '    vp.zero_grad(opts["net"])\n'  # step()'s first line: line 18 of BASE


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VRAMPLAN_CACHE", str(tmp_path / "traces"))


def write(tmp_path: Path, name: str, old: str = "", new: str = "") -> Path:
    assert old in BASE
    p = tmp_path / name
    p.write_text(BASE.replace(old, new, 1))
    return p


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def one_line_error(r, code: int, *needles: str) -> str:
    assert r.exit_code == code, (r.exit_code, r.output)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert r.stdout == ""
    return lines[0]


@pytest.mark.parametrize("where,old,new,marker", [
    ("step", STEP_FIRST, "    while True:\n        pass\n", "pass"),
    ("import", "import torch\n", "import torch\nwhile True:\n    x = 1\n", "x = 1"),
])
def test_a_loop_is_stopped_at_the_timeout_naming_the_line(tmp_path, where, old, new, marker):
    # Before: `estimate --step` never returned (killed by `timeout 20`, rc 124). After: stopped
    # after --timeout 5 s plus the sampling, exit code 3, the loop's own file:line named
    p = write(tmp_path, f"loop_{where}.py", old, new)
    t0 = time.perf_counter()
    r = runner.invoke(app, ["estimate", "--step", str(p), "--timeout", "5", "--json"])
    took = time.perf_counter() - t0
    line = one_line_error(r, isolate.EXIT_TIMEOUT, "ran longer than 5 s", f"loop_{where}.py:")
    fn = "step()" if where == "step" else "<module>()"
    allowed = {line_of(p, marker), line_of(p, marker) - 1}  # the `while` line or its body, wherever sampled
    assert any(f"loop_{where}.py:{n} in {fn}" in line for n in allowed), line
    assert took < 5 + 30  # 5 s, the sampling (<= STACK_WAIT) and a fresh worker's start-up


def test_sleep_in_networks_is_stopped_after_timeout_5(tmp_path):
    p = write(tmp_path, "sleepy.py", '    return {"net": nn.Linear(width, width)}\n',
              '    import time\n    time.sleep(3600)\n    return {"net": nn.Linear(width, width)}\n')
    r = runner.invoke(app, ["estimate", "--step", str(p), "--timeout", "5", "--json"])
    one_line_error(r, isolate.EXIT_TIMEOUT, "ran longer than 5 s",
                   f"sleepy.py:{line_of(p, 'time.sleep')} in networks()", "--timeout SECONDS")


def test_the_timeout_does_not_count_the_workers_start(tmp_path):
    # a step that takes 1.5 s in networks() passes under --timeout 3 even in a fresh worker,
    # whose start-up (spawn, torch and the tracer imported) is longer than that on its own
    isolate.shared().close()  # the next call starts a fresh worker
    p = write(tmp_path, "slow.py", '    return {"net": nn.Linear(width, width)}\n',
              '    import time\n    time.sleep(1.5)\n    return {"net": nn.Linear(width, width)}\n')
    r = runner.invoke(app, ["estimate", "--step", str(p), "--timeout", "3", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["peak_allocated_bytes"] > 0


@pytest.mark.parametrize("name,new,needle", [
    ("sys_exit", "    import sys\n    sys.exit(0)\n", "called sys.exit(0) at"),
    ("os_exit", "    import os\n    os._exit(0)\n", "exited with code 0"),
    ("interrupt", "    raise KeyboardInterrupt\n", "raised KeyboardInterrupt at"),
])
def test_an_exit_in_user_code_is_an_error_not_a_result(tmp_path, name, new, needle):
    # Before: sys.exit(0) and os._exit(0) made `estimate --json` exit 0 with empty stdout, and
    # KeyboardInterrupt exit 130 without a word. After: exit code 4, one line with the file:line
    p = write(tmp_path, f"{name}.py", STEP_FIRST, new)
    r = runner.invoke(app, ["estimate", "--step", str(p), "--json"])
    one_line_error(r, isolate.EXIT_ENDED, needle, f"{name}.py:{line_of(p, new.strip().splitlines()[-1])} in step()")


def test_a_segfault_in_user_code_names_the_signal_and_the_line(tmp_path):
    p = write(tmp_path, "crash.py", STEP_FIRST, "    import ctypes\n    ctypes.string_at(0)\n")
    r = runner.invoke(app, ["estimate", "--step", str(p), "--json"])
    one_line_error(r, isolate.EXIT_ENDED, "killed by SIGSEGV", f"crash.py:{line_of(p, 'string_at')} in step()")


def test_a_worker_after_a_failure_serves_the_next_call(tmp_path):
    bad = write(tmp_path, "bad.py", STEP_FIRST, "    import os\n    os._exit(3)\n")
    assert runner.invoke(app, ["estimate", "--step", str(bad)]).exit_code == isolate.EXIT_ENDED
    good = write(tmp_path, "good.py")
    r = runner.invoke(app, ["estimate", "--step", str(good), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["params"] == {"net": 8 * 8 + 8}  # nn.Linear(8, 8): weight and bias


def test_print_in_user_code_goes_to_stderr_and_json_parses(tmp_path):
    # Before: `estimate --step X --json` printed "hello from step" (and the C-level write)
    # into stdout, which then did not parse. A subprocess: the file descriptors are the point
    p = write(tmp_path, "chatty.py", STEP_FIRST,
              "    print('hello from step')\n    import os\n    os.write(1, b'fd one\\n')\n" + STEP_FIRST)
    env = dict(os.environ, VRAMPLAN_CACHE="off")
    proc = subprocess.run([sys.executable, "-m", "planner.cli", "estimate", "--step", str(p), "--json"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["step_setup"]["step_file"] == str(p) and data["params"] == {"net": 8 * 8 + 8}
    assert proc.stderr.count("hello from step") == 2 and proc.stderr.count("fd one") == 2  # two iterations


def test_a_byte_that_is_not_utf8_is_refused_as_python_refuses_it(tmp_path):
    # Before: traced (importlib compiles the bytes, and CPython 3.11 lets a bad byte in a
    # comment through); `python file.py` stops with "SyntaxError: Non-UTF-8 code starting
    # with '\xe9' ... on line 5". After: the same refusal, one line, exit 2
    p = tmp_path / "latin1.py"
    p.write_bytes(BASE.replace("def networks", "# caf\xe9\ndef networks").encode("latin-1"))
    n = BASE[:BASE.index("def networks")].count("\n") + 1  # the comment's line
    py = subprocess.run([sys.executable, str(p)], capture_output=True, text=True)
    assert "Non-UTF-8 code starting with '\\xe9'" in py.stderr and f"line {n}," in py.stderr
    r = runner.invoke(app, ["estimate", "--step", str(p)])
    one_line_error(r, 2, f"latin1.py' line {n}: byte 0xe9 is not utf-8")
    declared = tmp_path / "declared.py"  # with its encoding declared, Python runs it, and so do we
    declared.write_bytes(b"# -*- coding: latin-1 -*-\n" + p.read_bytes())
    assert runner.invoke(app, ["estimate", "--step", str(declared)]).exit_code == 0


@pytest.mark.parametrize("args,needle", [
    (["--step", ""], "--step: give a step file"),
    (["--sdpa", ""], "--sdpa: the step"),
    (["--checkpoint", ""], "--checkpoint: '' names no class"),
    (["--checkpoint", ","], "--checkpoint: ',' names no class"),
    (["--knob", "width=0"], "--knob width=0: networks()"),
    (["--timeout", "0"], "--timeout: 0.0 is not a positive number"),
    (["--timeout", "inf"], "--timeout: inf is not a positive number"),
])
def test_empty_and_zero_inputs_are_refused(tmp_path, args, needle):
    # Before: each of these ran (exit 0): --step '' the built-in estimate, '' and ',' as no
    # checkpointing, '' as SDPA auto, width=0 a trace of 0 x 0 weights (a torch warning only)
    p = write(tmp_path, "base.py")
    cmd = ["estimate", *args] if args[0] == "--step" else ["estimate", "--step", str(p), *args]
    one_line_error(runner.invoke(app, cmd), 2, needle)


def test_zero_is_refused_only_where_it_empties_a_tensor(tmp_path):
    # a knob whose 0 leaves every tensor non-empty (a count of extra layers) is a valid value
    p = write(tmp_path, "extra.py", 'def networks(width: int = 8):\n    return {"net": nn.Linear(width, width)}\n',
              'def networks(width: int = 8, extra: int = 2):\n'
              '    return {"net": nn.Sequential(nn.Linear(width, width), *[nn.Linear(width, width) for _ in range(extra)])}\n')
    r = runner.invoke(app, ["estimate", "--step", str(p), "--knob", "extra=0", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["params"] == {"net": 8 * 8 + 8}  # one Linear(8, 8) left, not 3


def test_timeout_without_user_code_is_refused():
    r = runner.invoke(app, ["estimate", "--timeout", "5"])
    one_line_error(r, 2, "--timeout: only with --step or --model")


def test_help_states_the_default_and_the_exit_codes():
    text = runner.invoke(app, ["estimate", "--help"], terminal_width=400).stdout
    assert f"Default {isolate.DEFAULT_TIMEOUT:g}" in " ".join(text.split())
    assert f"exit code {isolate.EXIT_TIMEOUT}" in text and f"exit {isolate.EXIT_ENDED}" in text


def test_model_factory_runs_isolated(tmp_path):
    f = tmp_path / "factory.py"
    f.write_text("import time\nimport torch\n\n\ndef make():\n    time.sleep(3600)\n    return torch.nn.Linear(4, 4)\n")
    r = runner.invoke(app, ["profile", "--model", f"{f}:make", "--input", "2x4", "--backend", "fake",
                            "--timeout", "3", "--json"])
    one_line_error(r, isolate.EXIT_TIMEOUT, "--model", f"factory.py:6 in make()")


def test_check_takes_timeout_for_step_files_only(tmp_path):
    one_line_error(runner.invoke(app, ["check", "examples/seed004_high_res.yaml", "--gpu", "24GB", "--timeout", "3"]),
                   2, "--timeout: applies to step files (.py) only")


def test_search_commands_stop_a_hang_too(tmp_path):
    # recommend/table trace through the worker pool (traces.trace_many): the same stop, exit 3
    p = write(tmp_path, "loops.py", STEP_FIRST, "    while True:\n        pass\n")
    r = runner.invoke(app, ["table", "--step", str(p), "--sweep", "batch=2,3", "--timeout", "5"])
    line = one_line_error(r, isolate.EXIT_TIMEOUT, "ran longer than 5 s")
    assert any(f"loops.py:{n} in step()" in line for n in (line_of(p, "pass"), line_of(p, "pass") - 1)), line


def test_a_knob_default_that_cannot_come_back_is_one_line(tmp_path):
    # the worker returns the knobs' defaults; a lambda cannot be pickled back
    p = write(tmp_path, "lam.py", "def networks(width: int = 8):", "def networks(width: int = 8, act=lambda x: x):")
    one_line_error(runner.invoke(app, ["estimate", "--step", str(p)]), 2, "not picklable", "knob defaults must be plain values")
