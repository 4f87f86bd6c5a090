"""A step file's own words for vramplan's knobs (planner/terms.py)."""

from __future__ import annotations

import types

import pytest

from planner.errors import PlannerError
from planner.terms import say, terms_of

TRAINER = {
    "amp-bf16": "Trainer(bf16=True)",
    "checkpoint": "Trainer(gradient_checkpointing=True)",
    "accumulation": "per_device_train_batch_size={batch}, gradient_accumulation_steps={accum}",
}


def _mod(**attrs):
    return types.SimpleNamespace(**attrs)


def test_changes_in_the_steps_own_words():
    terms = terms_of(_mod(TERMS=TRAINER), "step.py")
    parts = (("precision", "amp-bf16"), ("checkpoint", ("Block",)), ("split", (8, 2)), ("knob width", 512))
    assert say(parts, terms) == ["Trainer(bf16=True)", "Trainer(gradient_checkpointing=True)",
                                 "per_device_train_batch_size=8, gradient_accumulation_steps=2", "width=512"]


def test_without_terms_vramplans_flags():
    parts = (("precision", "fp16-master"), ("checkpoint", ("ResBlock3D", "Attn")), ("split", (4, 4)),
             ("knob channel_mult", (1, 2, 2)), ("checkpoint", ()))
    assert say(parts, terms_of(_mod(), "step.py")) == [
        "--precision fp16-master", "--checkpoint ResBlock3D,Attn", "--batch 4 --accum 4", "channel_mult=1,2,2",
        "checkpointing off"]


@pytest.mark.parametrize("terms,message", [
    ([("amp-bf16", "x")], "TERMS in step.py is list"),
    ({"bf16=True": "x"}, "TERMS key 'bf16=True' in step.py (valid: fp32,"),
    ({"amp-bf16": ""}, "must be a non-empty string"),
    ({"accumulation": "bs={batch_size}"}, "bad placeholder"),
])
def test_bad_terms_name_the_key(terms, message):
    with pytest.raises(PlannerError, match=message.replace("(", r"\(").replace(")", r"\)")):
        terms_of(_mod(TERMS=terms), "step.py")


def test_recommend_says_the_best_in_the_steps_terms(tmp_path, monkeypatch):
    import json
    from pathlib import Path

    from typer.testing import CliRunner

    from planner.cli import app

    monkeypatch.setenv("VRAMPLAN_CACHE", str(tmp_path / "traces"))
    text = Path("examples/steps/template.py").read_text()
    step = tmp_path / "with_terms.py"
    terms = {"amp-bf16": "Trainer(bf16=True)", "amp-fp16": "Trainer(fp16=True)", "bf16-master": "model.bfloat16()",
             "fp16-master": "model.half()"}
    step.write_text(text + f"\n\nTERMS = {terms!r}\n")
    r = CliRunner().invoke(app, ["recommend", "--step", str(step), "--knob", "width=64", "--gpu", "rtx4090",
                                 "--freeze", "batch,checkpointing", "--prefer", "speed", "--jobs", "1", "--json"])
    assert r.exit_code == 0, r.output
    best = json.loads(r.stdout)["best"]
    # it fits as it is (fp32); asked for speed, a half precision is faster in the time model: the
    # best changes precision, and says it as the file's TERMS does
    assert best["setup"]["precision"] in terms
    assert best["in_the_steps_terms"] == [terms[best["setup"]["precision"]]]
