"""recommend --step defects found by trying it (issue 21): --search without the knob given, a
--max-knob step the network rejects, a step that fits as it is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from planner.cli import app

TEMPLATE = str(Path(__file__).resolve().parents[1] / "examples" / "steps" / "template.py")
SMALL = ["--knob", "depth=1", "--knob", "tokens=16", "--batch", "4"]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VRAMPLAN_CACHE", str(tmp_path / "cache"))


def _run(args: list[str]) -> dict:
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_search_without_the_knob_given_keeps_the_input_as_a_candidate() -> None:
    # a StopIteration traceback before: no candidate had the step's own width (128)
    data = _run(["recommend", "--step", TEMPLATE, *SMALL, "--search", "width=64/96", "--gpu", "8GB",
                 "--freeze", "precision,checkpointing,batch,allocator"])
    widths = sorted(c["setup"]["knobs"].get("width", 128) for c in data["candidates"])  # 128: template's own
    assert widths == [64, 96, 128]
    assert data["best"]["changes"] == []  # it fits as it is: nothing to change


def test_fits_as_is_prints_so_and_only_faster_settings() -> None:
    res = CliRunner().invoke(app, ["recommend", "--step", TEMPLATE, *SMALL, "--gpu", "8GB",
                                   "--freeze", "checkpointing,batch"])
    assert res.exit_code == 0, res.output
    assert "fits as is: device_total" in res.output and "nothing needs to change" in res.output
    assert "cheapest that fits" not in res.output


def test_max_knob_names_the_sizes_the_step_rejects() -> None:
    # width 10**9: the Linear's weight (4e9 x 1e9 elements) overflows; a TypeError traceback before
    res = CliRunner().invoke(app, ["recommend", "--step", TEMPLATE, *SMALL, "--max-knob", "width",
                                   "--knob-step", "1000000000", "--gpu", "8GB"])
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    assert "width 1000000000: the step rejects it" in res.output and "does not fit" in res.output


def test_max_knob_starts_at_the_steps_own_value_or_knob_min() -> None:
    data = _run(["recommend", "--step", TEMPLATE, *SMALL, "--max-knob", "features", "--knob-min", "24",
                 "--knob-step", "8", "--gpu", "exact:0.47GiB"])
    assert data["start"] == 24 and data["knob"] == "features"
    data = _run(["recommend", "--step", TEMPLATE, *SMALL, "--max-knob", "features", "--knob-step", "8",
                 "--gpu", "exact:0.47GiB"])
    assert data["start"] == 32  # template.py's own features=32


def test_max_knob_searches_below_the_steps_own_value_when_it_does_not_fit() -> None:
    # device_total at width 64 and 96: 448,790,528 B; at 128 (template's own): 450,887,680 B
    # (`vramplan estimate --step template.py --knob depth=1 --knob tokens=16 --batch 4 --knob width=W --json`);
    # exact:473MB with the 5 % margin is a budget of 449,350,000 B: 96 is the largest multiple of 32
    # (fitted at the point figure, --fit-at point: the device totals above are points)
    data = _run(["recommend", "--step", TEMPLATE, *SMALL, "--max-knob", "width", "--knob-step", "32",
                 "--gpu", "exact:473MB", "--fit-at", "point"])
    assert (data["start"], data["max"]) == (128, 96)


def test_the_step_search_weighs_the_sdpa_kernel_and_the_allocator_too() -> None:
    """Issue 21: recommend --step weighs the SDPA backend and allocator settings beside precision,
    checkpointing and the split. Forced kernel -> CUDA's choice offered; no expandable segments ->
    offered (the same trace replayed: planner/measure/search.py Evaluator strips alloc_conf);
    each frozen by name."""
    from planner.gpus import parse_gpu
    from planner.measure.search import dims
    from planner.step_setup import StepSetup

    gpu = parse_gpu("24GB")
    base = StepSetup(path=TEMPLATE, batch_size=4, sdpa="math")
    _, space, _ = dims(base, gpu, {"precision", "checkpointing", "batch"}, {})
    assert [[(c.dim, c.value) for c in d] for d in space] == [[("sdpa", "auto")],
                                                              [("allocator", "expandable_segments:True")]]
    changed = space[1][0].apply(base)
    assert changed.alloc_conf == "expandable_segments:True" and changed.sdpa == "math"
    _, space, _ = dims(base, gpu, {"precision", "checkpointing", "batch", "sdpa", "allocator"}, {})
    assert space == []
    from dataclasses import replace

    _, space, _ = dims(replace(base, sdpa="auto", alloc_conf="expandable_segments:True"), gpu,
                       {"precision", "checkpointing", "batch"}, {})
    assert space == []


def test_nothing_fits_on_a_step_file_is_said_plainly_with_why() -> None:
    """A card smaller than the CUDA context: recommend --step says nothing fits (no markup printed
    literally), names the smallest candidate, and why no change can fit (planner/search.py)."""
    res = CliRunner().invoke(app, ["recommend", "--step", TEMPLATE, *SMALL, "--gpu", "exact:300MiB"])
    assert res.exit_code == 0, res.output
    out = " ".join(res.stdout.split())
    assert "nothing fits: the smallest candidate needs" in out and "[bold" not in out
    assert "the CUDA context alone (0.62 GiB at the top of its band) is over the budget (0.28 GiB)" in out
