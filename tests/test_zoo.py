"""The zoo (issue 19): third-party models traced as their libraries document them.

Every step file under ``examples/zoo/`` (MONAI, Hugging Face transformers, diffusers; small sizes
here, full sizes in ``benchmarks/bench_zoo.py --full``) is traced in fp32 and checked two ways
(``benchmarks/zoo_harness.py``):

* its parameter count in the trace equals the same ``networks()`` built normally on the CPU;
* vramplan's peak equals, to the byte, torch's own ``MemTracker`` run inside the same trace
  (same fake tensors, same CUDA emulation, same op stream) with the same counting rules:
  512-byte rounding per storage, host-side optimizer step counters excluded, the peak of
  iteration 2. Every entry that traces agrees exactly: no difference needs explaining.

Every entry traces: the ones that read values off constant tensors (MONAI's Dice/Tversky losses:
``torch.arange(2, ndim).tolist()``; SwinUNETR's constructor: ``.item()`` over a ``linspace``;
transformers' ViT initialisation: ``nn.init.trunc_normal_``'s rejection loop) get them from
planner/measure/values.py. Any failure fails the test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from zoo_harness import Entry, available, entries, real_params, trace  # noqa: E402

def _cases() -> list:
    out = []
    for e in entries():
        for variant in e.variants:
            marks = [pytest.mark.skipif(not available(e.library), reason=f"{e.library} is not installed "
                                        f"(pip install -e '.[zoo]')")]
            tag = ",".join(f"{k}={v}" for k, v in variant)
            out.append(pytest.param(e, variant, marks=marks, id=e.name + (f"[{tag}]" if tag else "")))
    return out


def test_the_zoo_is_whole():
    # issue 19's list: 16 MONAI networks (SPADE as its autoencoder and its diffusion UNet: 17 files),
    # 6 transformers models each with attn_implementation sdpa and eager, 4 diffusers models
    names = {e.name for e in entries()}
    assert len([n for n in names if n.startswith("monai_")]) == 17
    assert len([n for n in names if n.startswith("hf_")]) == 6
    assert len([n for n in names if n.startswith("diffusers_")]) == 4
    for e in entries():
        if e.library == "transformers":
            assert (("attn_implementation", "eager"),) in e.variants, e.name
        assert e.full, f"{e.name}: no FULL size for the benchmark"


@pytest.mark.parametrize(("entry", "variant"), _cases())
def test_zoo_entry_traces_and_agrees_with_memtracker(entry: Entry, variant: tuple):
    out = trace(entry, "fp32", knobs=variant)
    if out.error is not None:
        pytest.fail(f"{entry.path}: {out.error}")
    assert out.params == real_params(entry, variant)
    # MemTracker counts the same storages after the same ops: equal to the byte
    assert out.memtracker == out.peak, (out.peak, out.memtracker)
    assert out.peak > 0


_TEMPLATE = Entry("torch", "template", "examples/steps/template.py", (("depth", 2),), None)
_STAGE1 = Entry("monai", "ldm-stage1", "examples/steps/ldm_stage1.py",
                (("channels", (16, 16, 16)), ("voxel", (16, 16, 16)), ("disc_layers", 2), ("perceptual", False)), None)


@pytest.mark.parametrize(("entry", "precision"), [(_TEMPLATE, "fp32"), (_TEMPLATE, "amp-fp16"), (_STAGE1, "amp-fp16")],
                         ids=["template-fp32", "template-amp-fp16", "ldm-stage1-amp-fp16"])
def test_harness_agrees_on_the_examples_and_changes_nothing(entry: Entry, precision: str):
    """The harness itself, before the zoo: on the template step and the built-in stage-1 step
    (small; two optimizers, a network called three times per iteration, GradScalers), MemTracker
    inside the trace equals vramplan's peak, and entering it leaves vramplan's own peak unchanged
    (it holds no tensor and adds no op)."""
    with_mt = trace(entry, precision, full=True)
    without = trace(entry, precision, full=True, memtracker=False)
    assert with_mt.error is None and without.error is None, (with_mt.error, without.error)
    assert with_mt.memtracker == with_mt.peak == without.peak, (with_mt.peak, with_mt.memtracker, without.peak)


def test_the_comparison_can_tell_a_rule_apart():
    """Left to its own rule (Adam's ``state["step"]`` counters are device tensors to MemTracker;
    on a CUDA run with capturable=False they live on the host), MemTracker counts exactly the
    step counters more. template.py at depth 2 has 16 parameter tensors (inp and out: weight and
    bias, 2 + 2; each of 2 blocks: norm, fc1, fc2 weight and bias, 6): 16 fp32 0-dim counters of
    4 B, each rounded to one 512-byte block, alive through iteration 2: 16 * 512 = 8,192 B."""
    out = trace(_TEMPLATE, "fp32", full=True, host_counters=True)
    assert out.error is None, out.error
    assert out.memtracker - out.peak == 16 * 512
