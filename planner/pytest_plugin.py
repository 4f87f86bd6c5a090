"""vramplan's pytest plugin: a memory budget beside your other tests.

Installed with the package (entry point ``pytest11``: ``vramplan``), so any pytest session
in an environment with vramplan has it::

    from planner.pytest_plugin import assert_fits, assert_within_baseline

    def test_stage1_fits_24gb():
        assert_fits("configs/stage1.yaml", gpu="24GB", margin=0.05)

    def test_train_step_did_not_grow(vram):          # the fixture: paths from the rootdir
        vram.assert_within_baseline("steps/train.py", baseline="vram.json", knobs={"width": 64})

A ``setup`` is a built-in config YAML (analytic estimate) or a step file ``.py`` (traced,
through the trace cache), with the step options ``batch``, ``accum``, ``precision``,
``checkpoint`` and ``knobs`` for a step file: the same setups, names and baseline file as
``vramplan check``. A failure is an AssertionError whose message is ``vramplan check``'s
report (what grew, by category, network and module; the budget; the setup and the card).

``pytest --vram-update-baseline`` makes every ``assert_within_baseline`` write its setup's
entry into the baseline file (created when missing; the other entries kept) instead of comparing.

Relative setup and baseline paths are taken from the pytest rootdir (``base_dir`` to choose
another folder), whatever the working directory when the test runs.

Importing this module is cheap (pytest loads it in every session): it imports nothing but
pytest; vramplan's estimator, and torch for a step file, load on the first check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

_state: dict[str, Any] = {"update": False, "rootdir": None}


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("vramplan", "vramplan memory budgets")
    group.addoption("--vram-update-baseline", action="store_true", default=False,
                    help="vramplan: assert_within_baseline writes its setup's entry into the baseline file "
                         "instead of comparing.")


def pytest_configure(config: Any) -> None:
    _state["update"] = bool(config.getoption("vram_update_baseline", default=False))
    _state["rootdir"] = Path(config.rootpath)


def pytest_unconfigure(config: Any) -> None:
    _state["update"] = False
    _state["rootdir"] = None


def _base(base_dir: str | Path | None) -> Path | None:
    """Where relative paths start: ``base_dir``, else the pytest rootdir (in a pytest session),
    else the working directory (None)."""
    if base_dir is not None:
        return Path(base_dir)
    return _state["rootdir"]


def _flags(batch: int | None, accum: int | None, precision: str | None, checkpoint: str | None,
           knobs: dict[str, Any] | list[str] | tuple[str, ...] | None) -> dict[str, Any]:
    from planner.errors import PlannerError, quote

    if isinstance(knobs, dict):
        if not all(isinstance(k, str) for k in knobs):
            raise PlannerError(f"knobs: names must be strings, got {quote(next(k for k in knobs if not isinstance(k, str)))}")
        knob_list = [f"{k}={','.join(map(str, v)) if isinstance(v, (tuple, list)) else v}" for k, v in knobs.items()]
    elif knobs is None or (isinstance(knobs, (list, tuple)) and all(isinstance(k, str) for k in knobs)):
        knob_list = list(knobs or [])
    else:
        raise PlannerError(f"knobs: {quote(knobs)} is not knobs (valid: a dict such as {{'width': 64}}, or a list of "
                           "'name=value' strings)")
    return {"batch": batch, "accum": accum, "precision": precision, "checkpoint": checkpoint, "knob": knob_list or None}


def update_command(target: Any, flags: dict[str, Any], gpu: str, baseline: str | Path, base: Path | None) -> str:
    """The shell command that adds this setup's entry to ``baseline`` (``vramplan check
    --update-baseline`` merges: the other entries stay), run from ``base`` when given."""
    import shlex

    from planner.check import STEP_FLAGS

    words = ["vramplan", "check", target.arg]
    if target.kind == "step":
        for key, flag in STEP_FLAGS:
            values = flags.get(key) if key == "knob" else [flags.get(key)]
            words += [w for v in (values or []) if v is not None and key != "jobs" for w in (flag, str(v))]
    words += ["--gpu", gpu, "--baseline", str(baseline), "--update-baseline"]
    cmd = shlex.join(words)
    return f"cd {shlex.quote(str(base))} && {cmd}" if base is not None else cmd


def _measure(setup: str | Path, gpu: str, flags: dict[str, Any], base_dir: Path | None) -> tuple[Any, Any]:
    from planner import check as C
    from planner.config import check_gpu_flag
    from planner.gpus import parse_gpu

    check_gpu_flag(gpu, "gpu")
    card = parse_gpu(gpu)
    ts = C.targets([str(setup)], flags, base_dir)
    measured, _ = C.measure(ts, card, flags, jobs=1)
    return card, measured[0]


def assert_fits(setup: str | Path, gpu: str = "24GB", margin: float = 0.05, *, batch: int | None = None,
                accum: int | None = None, precision: str | None = None, checkpoint: str | None = None,
                knobs: dict[str, Any] | list[str] | None = None, base_dir: str | Path | None = None) -> Any:
    """AssertionError unless the setup's device total is within ``capacity * (1 - margin)`` of
    ``gpu``. Returns the outcome (``.measured.report`` is the MemoryReport)."""
    from planner import check as C

    C.check_margin(margin, "margin")
    flags = _flags(batch, accum, precision, checkpoint, knobs)
    card, m = _measure(setup, gpu, flags, _base(base_dir))
    outcome = C.judge([m], card, margin)[0]
    if not outcome.fits:
        raise AssertionError("\n".join([f"vramplan: {outcome.headline()}", C.gpu_line(card, margin),
                                        card.capacity_note(), *outcome.lines(None)]))
    return outcome


def assert_within_baseline(setup: str | Path, baseline: str | Path = "vram.json", tolerance: float = 0.02, *,
                           gpu: str | None = None, batch: int | None = None, accum: int | None = None,
                           precision: str | None = None, checkpoint: str | None = None,
                           knobs: dict[str, Any] | list[str] | None = None, base_dir: str | Path | None = None,
                           update: bool | None = None) -> Any:
    """AssertionError when the setup's peak_allocated or device_total grew by more than
    ``tolerance`` (a fraction) against its entry in ``baseline`` (a ``vramplan check`` baseline
    file), or when the file has no entry for it. ``gpu``: default the baseline's. With
    ``update`` (default: ``pytest --vram-update-baseline``) the entry is written instead."""
    from planner import check as C

    C.check_tolerance(tolerance, "tolerance")
    base = _base(base_dir)
    bpath = Path(baseline)
    if base is not None and not bpath.is_absolute():
        bpath = base / bpath
    flags = _flags(batch, accum, precision, checkpoint, knobs)
    if _state["update"] if update is None else update:
        if gpu is None and bpath.is_file():
            gpu = C.read_baseline(bpath, "baseline").gpu["key"]
        card, m = _measure(setup, gpu or "24GB", flags, base)
        C.merge_into_baseline(bpath, card, C.DEFAULT_MARGIN, [m], "baseline")
        return None
    old = C.read_baseline(bpath, "baseline", "pytest --vram-update-baseline")
    card, m = _measure(setup, gpu or old.gpu["key"], flags, base)
    if m.target.name not in old.setups:
        raise AssertionError(
            f"vramplan: no baseline entry for {m.target.name!r} in {str(baseline)!r} "
            f"(it has: {', '.join(map(repr, old.setups)) or 'none'}); add it (the others are kept) with "
            f"`pytest --vram-update-baseline` or `{update_command(m.target, flags, card.key, baseline, base)}`")
    margin = old.margin if old.margin is not None else C.DEFAULT_MARGIN
    outcome = C.judge([m], card, margin, old, tolerance)[0]
    grown = [k for k, g in outcome.growth.items() if g["over_tolerance"]]
    if grown:
        what = "; ".join(f for f in outcome.failures if not f.startswith("does not fit"))
        grew = outcome.grew_text()
        raise AssertionError("\n".join([f"vramplan: {m.target.name}: {what}" + (f"; grew: {grew}" if grew else ""),
                                        f"baseline: {baseline}, tolerance {tolerance:.1%}", *outcome.lines(tolerance)]))
    return outcome


class VramBudget:
    """The ``vram`` fixture: :func:`assert_fits` and :func:`assert_within_baseline` with relative
    setup and baseline paths taken from the pytest rootdir."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir

    def assert_fits(self, setup: str | Path, gpu: str = "24GB", margin: float = 0.05, **options: Any) -> Any:
        options.setdefault("base_dir", self.base_dir)
        return assert_fits(setup, gpu, margin, **options)

    def assert_within_baseline(self, setup: str | Path, baseline: str | Path = "vram.json", tolerance: float = 0.02,
                               **options: Any) -> Any:
        options.setdefault("base_dir", self.base_dir)
        return assert_within_baseline(setup, baseline, tolerance, **options)


@pytest.fixture
def vram(request: Any) -> VramBudget:
    """Memory budgets of training setups (vramplan): ``vram.assert_fits(setup, gpu="24GB")``,
    ``vram.assert_within_baseline(setup, baseline="vram.json")``."""
    return VramBudget(Path(request.config.rootpath))
