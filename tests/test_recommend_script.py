"""``vramplan recommend -- python train.py`` (issue 22): the one search over what ``vramplan run``
applies from outside, said in the script's own terms (planner/script_search.py). Tiny scripts in
tmp_path, traced in-process (``script_run.trace``) where the figures are the point; the CLI where
the output or the exit code is."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Callable

import pytest
from typer.testing import CliRunner

from planner import script_search as S
from planner.band import fit_bytes
from planner.cli import app
from planner.gpus import parse_gpu
from planner.script_setup import ScriptSetup

runner = CliRunner()

# four residual MLP blocks on 256 copies of each 64-wide sample, SGD; the batch size comes from --batch-size
SCRIPT = '''
import argparse
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

p = argparse.ArgumentParser()
p.add_argument("--batch-size", type=int, default=8)
p.add_argument("--epochs", type=int, default=16)
args = p.parse_args()


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(64, 256), nn.Linear(256, 64)

    def forward(self, x):
        return x + self.b(torch.relu(self.a(x)))


net = nn.Sequential(*[Block() for _ in range(4)]).cuda()
opt = torch.optim.SGD(net.parameters(), lr=0.1)
loader = DataLoader(TensorDataset(torch.randn(64, 64)), batch_size=BATCH, shuffle=True)
for epoch in range(args.epochs):
    for (b,) in loader:
        opt.zero_grad()
        out = net(b.cuda().repeat(256, 1))
        out.pow(2).mean().backward()
        opt.step()
'''


def _script(tmp_path: Path, batch: str = "args.batch_size") -> Path:
    p = tmp_path / "train.py"
    p.write_text(textwrap.dedent(SCRIPT).replace("BATCH", batch))
    return p


def _line(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


# --- torch-free: the script's option -------------------------------------------------------------


FACTS = {"loaders": [{"site": "train.py:9", "batch_size": 4, "training": False},
                     {"site": "train.py:8", "batch_size": 8, "training": True}],
         "options": [{"options": ["-b", "--batch-size"], "dest": "batch_size", "value": 8, "default": 2},
                     {"options": ["--epochs"], "dest": "epochs", "value": 8, "default": 8},
                     {"options": ["--workers"], "dest": "workers", "value": 4, "default": 4}]}


def test_batch_option_is_the_int_option_holding_the_training_loaders_batch() -> None:
    # the training loader (it shuffles) has batch 8; --batch-size and --epochs both parsed to 8: the name decides
    assert S.batch_option(FACTS)["dest"] == "batch_size"
    two = dict(FACTS, options=[dict(FACTS["options"][1]), dict(FACTS["options"][1], dest="steps")])
    assert S.batch_option(two) is None  # two options hold 8, neither named batch: not said
    assert S.batch_option(dict(FACTS, loaders=FACTS["loaders"][:1])) is None  # no training loader


@pytest.mark.parametrize("argv, expected", [
    (("t.py", "--batch-size", "8", "--lr", "1"), ("t.py", "--batch-size", "3", "--lr", "1")),
    (("t.py", "--batch-size=8"), ("t.py", "--batch-size=3")),
    (("t.py", "-b", "8"), ("t.py", "-b", "3")),
    (("-m", "pkg.train", "-b", "8"), ("-m", "pkg.train", "-b", "3")),
    (("t.py", "--batch", "8"), None),  # an abbreviation argparse accepted: not said
])
def test_with_option_rewrites_the_scripts_command_line(argv: tuple, expected: tuple | None) -> None:
    assert S.with_option(argv, FACTS["options"][0], 3) == expected
    # not on the command line and parsed to its default: appended in its long form
    default = dict(FACTS["options"][0], value=2)
    assert S.with_option(("t.py", "--lr", "1"), default, 3) == ("t.py", "--lr", "1", "--batch-size", "3")


def test_run_command_applies_every_knob_from_outside() -> None:
    plan = S.ScriptPlan(ScriptSetup(argv=("t.py", "--lr", "1"), gpus=2, launcher="torchrun", precision="amp-bf16",
                                    checkpoint=("Block",), batch=4), "expandable_segments:True")
    assert S.run_command(plan, "24GB") == ("vramplan run --gpu 24GB --precision amp-bf16 --checkpoint Block --batch 4 "
                                           "--alloc-conf expandable_segments:True -- torchrun --nproc-per-node 2 t.py "
                                           "--lr 1")
    python = S.ScriptPlan(ScriptSetup(argv=("t.py",), gpus=2, steps=3))
    assert S.run_command(python, "rtx4090") == "vramplan run --gpu rtx4090 --steps 3 --gpus 2 -- python t.py"


def test_changes_said_at_the_scripts_own_lines() -> None:
    from planner.search import Change

    facts = dict(FACTS, precision="amp-fp16", autocast_sites=["train.py:40"], scaler_sites=["train.py:30"],
                 networks={"UNet": "train.py:41"}, blocks=[])

    def said(dim: str, value: object) -> dict:
        return S.in_script_terms((Change(dim, value, f"{dim} {value}", 0, lambda x: x),), facts, None)[0]

    assert said("precision", "amp-bf16") == {
        "change": "precision amp-bf16", "run_flag": "--precision amp-bf16",
        "script": "dtype=torch.bfloat16 in the torch.autocast at train.py:40 (the GradScaler at train.py:30 may go: "
                  "bf16 needs none)"}
    assert said("precision", "fp32")["script"] == "remove the torch.autocast at train.py:40 and the GradScaler at train.py:30"
    assert said("sdpa", "efficient")["script"] == ("with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend."
                                                   "EFFICIENT_ATTENTION): around the training step")
    assert said("allocator", "expandable_segments:True") == {
        "change": "allocator expandable_segments:True", "run_flag": "--alloc-conf expandable_segments:True",
        "script": "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True in the environment (no code change)"}
    # the training loader (train.py:8, batch 8) said by its line without an option; 4 is a smaller batch
    assert said("batch", 4)["script"].startswith("batch_size=4 in the DataLoader at train.py:8 (a smaller effective")


# --- traced ---------------------------------------------------------------------------------------

torch = pytest.importorskip("torch")
from planner.measure.script_run import trace  # noqa: E402


def _figures(eng: S.ScriptEngine, argv: Callable[[int], tuple[str, ...]], batches: list[int], card: object) -> dict:
    """The band-top figure on ``card`` of each batch size, the script run with ``argv(b)`` (traces cached in
    ``eng``: the search's own candidates are the same setups). The allocator replay uses the card's capacity only
    for garbage_collection_threshold, not set here, so the figures do not depend on the engine's card."""
    figs = {}
    for b in batches:
        rep = eng.evaluate([S.ScriptPlan(ScriptSetup(argv=argv(b)))])[0][0]
        figs[b] = fit_bytes(rep, card, "high")
    return figs


def test_batch_said_as_the_scripts_option_at_the_largest_size_that_fits(tmp_path: Path) -> None:
    p = _script(tmp_path)
    eng = S.ScriptEngine(parse_gpu("24GB"), trace=trace)
    fig = _figures(eng, lambda b: (str(p), f"--batch-size={b}"), list(range(8, 17)), eng.gpu)
    assert fig[8] < fig[12] < fig[16]  # the activations grow with the batch (256 rows of 64 + 256 per sample)
    # a card whose budget (margin 0) is halfway between batch 8's figure and batch 16's: a batch in 9..15 is the
    # answer: the largest whose figure fits, the next one does not (both traced above)
    cap = (fig[8] + fig[16]) // 2
    card = eng.gpu = parse_gpu(f"exact:{cap}B")
    fig = _figures(eng, lambda b: (str(p), f"--batch-size={b}"), list(range(8, 17)), card)  # cached: no new trace
    want = max(b for b in range(8, 16) if fig[b] <= cap)
    assert fig[want + 1] > cap and 8 < want < 16
    base = S.ScriptPlan(ScriptSetup(argv=(str(p), "--batch-size=16")))
    found, run, notes, knob, refined = S.recommend(base, card, 0.0, "risk", {"precision", "checkpointing",
                                                                             "allocator"}, "high", eng)
    assert not found.input_fits and found.best.labels == ["batch 8"]  # the halvings offered: 8, 4, 2
    assert refined is not None and refined.labels == [f"batch {want}"] and refined.fit <= cap
    assert refined.setup.setup.argv == (str(p), f"--batch-size={want}")  # through the script's own option
    assert knob.option["options"] == ["--batch-size"]
    assert any("--batch-size reaches the DataLoader at" in n and "checked: --batch-size 8 gave it batch_size 8" in n
               for n in notes)
    terms = S.in_script_terms(refined.settings, run.facts, knob.option)
    assert terms[0]["script"].startswith(f"--batch-size {want} on the script's command line")
    assert terms[0]["run_flag"] == f"--batch {want}"
    cmd = S.run_command(refined.setup, f"exact:{cap}B")
    assert cmd == f"vramplan run --gpu exact:{cap}B -- python {p} --batch-size={want}"


def test_max_batch_is_the_largest_dataloader_batch_that_fits(tmp_path: Path) -> None:
    p = _script(tmp_path)
    eng = S.ScriptEngine(parse_gpu("24GB"), trace=trace)
    fig = _figures(eng, lambda b: (str(p), "--batch-size", str(b)), [12, 16], eng.gpu)
    cap = (fig[12] + fig[16]) // 2  # margin 0
    card = eng.gpu = parse_gpu(f"exact:{cap}B")
    base = S.ScriptPlan(ScriptSetup(argv=(str(p), "--batch-size", "4")))
    res, run, knob, notes = S.max_batch(base, card, 0.0, "high", eng, limit=64)
    v = res.value
    fig = _figures(eng, lambda b: (str(p), "--batch-size", str(b)), list(range(max(4, v - 8), v + 5)), card)
    # the band's top is not monotone in the batch (the allocator model's segment rounding: measured here, batch 17
    # fits where 14..16 do not); the answer fits, the next four sizes do not, and the sizes below it that do not fit
    # are named -- each against its own trace
    assert fig[v] <= cap and all(fig[k] > cap for k in range(v + 1, v + 5)) and not res.capped
    assert set(res.smaller_not_fitting) == {k for k in range(max(4, v - 8), v) if fig[k] > cap}
    terms = S.in_script_terms((knob.change(v),), run.facts, knob.option)
    assert terms[0]["script"] == (f"--batch-size {v} on the script's command line (a larger effective batch: "
                                  f"retune the learning rate)")


def test_a_literal_batch_is_said_as_the_dataloaders_line(tmp_path: Path) -> None:
    p = _script(tmp_path, batch="16")
    eng = S.ScriptEngine(parse_gpu("24GB"), trace=trace)
    run = eng.run(ScriptSetup(argv=(str(p),)))
    # --epochs parses to 16, the literal batch is 16: by value alone --epochs is the candidate ...
    assert S.batch_option(run.facts)["dest"] == "epochs"
    space, notes, knob = S.dims(S.ScriptPlan(ScriptSetup(argv=(str(p),))), run, eng.gpu, {"precision"}, eng)
    # ... but the trace with --epochs 8 still gave the DataLoader 16: not said as the option
    assert knob.option is None and [c.value for c in space[1]] == [8, 4, 2]
    line = _line(p, "loader = DataLoader")
    assert any(f"the script's --epochs (16) equals the DataLoader's batch_size but changing it did not set the "
               f"DataLoader at {p}:{line}" in n for n in notes)
    terms = S.in_script_terms((knob.change(8),), run.facts, None)
    assert terms[0]["script"].startswith(f"batch_size=8 in the DataLoader at {p}:{line}")
    assert space[1][0].apply(S.ScriptPlan(ScriptSetup(argv=(str(p),)))).setup.batch == 8  # --batch from outside


def test_precision_and_checkpointing_said_as_code(tmp_path: Path) -> None:
    p = _script(tmp_path)
    eng = S.ScriptEngine(parse_gpu("rtx4090"), trace=trace)
    run = eng.run(ScriptSetup(argv=(str(p),)))
    assert run.facts["precision"] == "fp32" and run.facts["blocks"][0]["class"] == "Block"
    space, _, _ = S.dims(S.ScriptPlan(ScriptSetup(argv=(str(p),))), run, eng.gpu, {"batch", "allocator"}, eng)
    # an RTX 4090 has bf16 (compute capability 8.9); the script runs fp32, no autocast
    assert [c.label for c in space[0]] == ["precision amp-fp16", "precision amp-bf16"]
    assert [c.label for c in space[1]] == ["checkpoint Block"]
    terms = S.in_script_terms((space[0][1], space[1][0]), run.facts, None)
    fwd, cls = _line(p, "out = net("), _line(p, "class Block")
    assert terms[0] == {"change": "precision amp-bf16", "run_flag": "--precision amp-bf16",
                        "script": f'with torch.autocast("cuda", dtype=torch.bfloat16): around the forward at {p}:{fwd}'}
    assert terms[1]["run_flag"] == "--checkpoint Block"
    assert terms[1]["script"].startswith(f"wrap each Block (class at {p}:{cls}) in torch.utils.checkpoint")


def test_cli_json_and_refusals(tmp_path: Path) -> None:
    p = _script(tmp_path)
    r = runner.invoke(app, ["recommend", "--json", "--gpu", "24GB", "--freeze", "precision,checkpointing,allocator",
                            "--", "python", str(p), "--batch-size", "16"])
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    # batch 16: its figure is far below a 24 GB card's budget: the input is the answer, nothing to change
    assert data["input_fits"] is True and data["best"]["changes"] == [] and data["best"]["in_the_scripts_terms"] == []
    assert data["batch_option"] == ["--batch-size"] and data["input"]["command"] == ["python", str(p), "--batch-size", "16"]
    for args, message in ((["--voxel", "64x64x64"], "--voxel: does not apply to a script"),
                          (["--max-gpus", "4"], "--max-gpus: does not apply to a script"),
                          (["--max-batch", "--prefer", "speed"], "--prefer: does not apply to --max-batch"),
                          (["--freeze", "nope"], "--freeze: unknown knob 'nope' for a script")):
        r = runner.invoke(app, ["recommend", *args, "--", "python", str(p)])
        assert r.exit_code == 2 and message in r.stderr, r.stderr
    r = runner.invoke(app, ["recommend", "--steps", "3"])
    assert r.exit_code == 2 and "--steps: only with a script after --" in r.stderr
