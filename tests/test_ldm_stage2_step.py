"""examples/steps/ldm_stage2.py, the built-in ``ldm-stage2`` step as the step file it ships as:
the built-in's trace (planner/measure/builtin_trace.py ``run_step``: the YAML setup mapped onto
this file's knobs) is this file's, and equals the analytic estimator (planner/analytic/unet.py)
for the same TrainingSetup, to the byte.

Small sizes trace in seconds: a 3-level UNet (8, 8, 16) with one res block per level, 8
GroupNorm groups and one 16-channel attention head at the last level (131,475 parameters) on
the latent of a 32**3 volume (3 x 8**3), batch 2; and the built-in default setup once.
"""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("monai")

from planner.config import setup_from_dict  # noqa: E402
from planner.measure.builtin_trace import run_step  # noqa: E402
from planner.measure.stepfile import load, run  # noqa: E402
from planner.measure.tracker import category_of  # noqa: E402
from planner.spec import TrainingSetup  # noqa: E402
from planner.step_setup import StepSetup  # noqa: E402
from tiny_step import rounded as _round  # noqa: E402

STEP = str(Path(__file__).resolve().parent.parent / "examples" / "steps" / "ldm_stage2.py")
STEP_PACKAGED = str(Path(__file__).resolve().parent.parent / "planner" / "stepfiles" / "ldm_stage2.py")

CHANNELS, HEADS, RES, GROUPS = (8, 8, 16), (0, 0, 16), (1, 1, 1), 8
KNOBS = {"latent": (8, 8, 8), "channels": CHANNELS, "num_head_channels": HEADS, "num_res_blocks": RES,
         "norm_num_groups": GROUPS}
BATCH = 2
UNET_PARAMS = 131_475
AMP = {"fp32": (False, "float16"), "amp-fp16": (True, "float16"), "amp-bf16": (True, "bfloat16")}


def _setup(precision: str, accum: int) -> TrainingSetup:
    amp, dtype = AMP[precision]
    return setup_from_dict({
        "kind": "ldm-stage2",
        "data": {"voxel_size": [32, 32, 32]},  # latent: 3 x 8x8x8 (AutoencoderKL's default 3 levels, 3 channels)
        "diffusion": {"num_channels": list(CHANNELS), "attention_levels": [False, False, True],
                      "num_head_channels": list(HEADS), "num_res_blocks": list(RES), "norm_num_groups": GROUPS,
                      "training": {"batch_size": BATCH, "gradient_accumulation_steps": accum}},
        "device": {"mixed_precision": amp, "amp_dtype": dtype},
    })


@functools.lru_cache(maxsize=None)
def _builtin(precision: str, accum: int):
    return run_step(_setup(precision, accum), "fake", keep_timeline=False)


@functools.lru_cache(maxsize=None)
def _stepfile(precision: str, accum: int, gpus: int = 1, strategy: str = "none"):
    return run(StepSetup(STEP, knobs=tuple(KNOBS.items()), batch_size=BATCH, precision=precision,
                         accumulation=accum, gpus=gpus, strategy=strategy), keep_timeline=False)


def _cats(record) -> Counter:
    c: Counter = Counter()
    for s in record.tracker.live_at_peak:
        c[category_of(s).value] += s.nbytes
    return c


def _where(record) -> tuple[str, str, str, str]:
    t = record.tracker
    return t.peak_op, t.peak_phase, t.peak_step, t.peak_module


def _live(record) -> Counter:
    """What is live at the peak, storage by storage."""
    return Counter((s.nbytes, s.op, s.phase, s.step, s.module, s.network, category_of(s).value)
                   for s in record.tracker.live_at_peak)


def _assert_same(builtin, step) -> None:
    """The same trace: events, peak, where, every storage live at it, the marks."""
    assert step.tracker.peak_bytes == builtin.tracker.peak_bytes
    assert step.events == builtin.events and step.iteration2_start == builtin.iteration2_start
    assert step.marks == builtin.marks and step.params == builtin.params
    assert _where(step) == _where(builtin)
    assert _cats(step) == _cats(builtin)
    assert _live(step) == _live(builtin)


def test_knob_defaults_are_the_builtin_defaults():
    """Every knob defaults to what the built-in builds for the default ldm-stage2 setup."""
    sf = load(STEP)
    d = {k.name: k.default for k in sf.knobs.values()}
    s = TrainingSetup(kind="ldm-stage2")
    u = s.diffusion
    assert d == {
        "latent": s.unet_input_shape[2:],  # the stage-1 latent: (96, 96, 64) / 2**2
        "latent_channels": s.unet_input_shape[1],  # the UNet's in and out channels
        "channels": u.num_channels,
        "attention": u.attention_levels,
        "num_head_channels": u.num_head_channels,
        "num_res_blocks": u.num_res_blocks,
        "norm_num_groups": u.norm_num_groups,
        "flash_attention": u.use_flash_attention,
    }
    assert d["latent"] == (24, 24, 16) and d["latent_channels"] == 3
    assert sf.batch_default == s.batch_size == 16
    assert sf.knobs["latent"].owners == sf.knobs["latent_channels"].owners == ("networks", "batch")


@pytest.mark.parametrize("precision,accum",
                         [("fp32", 1), ("amp-fp16", 1), ("amp-bf16", 1), ("fp32", 2), ("amp-fp16", 2)])
def test_builtin_trace_is_the_step_file_and_equals_analytic(precision, accum):
    """The built-in's trace of the YAML setup is the step file's trace with the same knobs (one
    tracer); the analytic estimator's peak equals it."""
    from planner.analytic.simulate import simulate

    builtin, step = _builtin(precision, accum), _stepfile(precision, accum)
    _assert_same(builtin, step)
    assert builtin.setup["step"] == "ldm-stage2" and builtin.setup["step_file"] == f"step file {STEP_PACKAGED}"
    est = simulate(_setup(precision, accum))
    assert est.peak_bytes == builtin.tracker.peak_bytes
    assert est.params == step.params == {"unet": UNET_PARAMS, "scheduler": 0}
    # the scheduler's alphas_cumprod (1000 fp32, 4,096 B) is a parameters tensor from the start,
    # listed under its own frozen network by both engines
    assert [(s.nbytes, s.op, category_of(s).value) for s in step.tracker.live_at_peak if s.network == "scheduler"] == [
        (_round(1000 * 4), "external", "parameters")]
    assert [(i.nbytes, i.category) for i in est.mem.info.values() if i.network == "scheduler"] == [
        (_round(1000 * 4), "parameters")]


@pytest.mark.parametrize("precision", ["fp32", "amp-fp16"])
def test_accumulation_keeps_only_the_quotient(precision):
    """Accumulation 2: the step divides its loss as the tutorial's script would (``loss = loss /
    accum`` in forward, ``vp.backward(..., divided=True)``), so the loss variable holds only the
    512-B quotient (div): live at the peak, in backward (fp32) as in the next micro-batch's forward
    (amp-fp16), and never mse_loss's unreduced 2 x 3 x 8**3 x 4 = 12,288 B that an undivided
    reduced loss would keep (planner/measure/tracker.py REDUCED_LOSSES)."""
    builtin = _builtin(precision, 2)
    assert builtin.tracker.peak_phase == ("backward" if precision == "fp32" else "forward")
    made = Counter((s.nbytes, s.op, s.step) for s in builtin.tracker.live_at_peak)
    assert made[(2 * 3 * 8**3 * 4, "mse_loss", "it2")] == 0
    assert made[(512, "div", "it2")] == 1


def test_default_setup_equals_builtin():
    """The built-in default (latent 3 x 24x24x16, batch 16, UNet (64, 64, 128), AMP fp16) is the
    step file's defaults with --precision amp-fp16."""
    from planner.analytic.simulate import simulate

    setup = TrainingSetup(kind="ldm-stage2")
    assert setup.device.mixed_precision and setup.device.amp_dtype == "float16"
    builtin = run_step(setup, "fake", keep_timeline=False)
    step = run(StepSetup(STEP, precision="amp-fp16"), keep_timeline=False)
    _assert_same(builtin, step)
    # the previous iteration's loss, live at this forward peak, holds mse_loss's unreduced storage:
    # 16 x 3 x 24x24x16 x 4 B = 1,769,472 B where it was 512 B (2,025,222,144 before REDUCED_LOSSES)
    assert step.tracker.peak_bytes == simulate(setup).peak_bytes == 2_025_222_144 - 512 + 1_769_472 == 2_026_991_104


def test_ddp_adds_one_gradient_bucket():
    """--gpus 2 --strategy ddp: the UNet is wrapped in DistributedDataParallel (torch's defaults,
    gradient_as_bucket_view=False), the scheduler (no trainable parameter) is not. The UNet has no
    buffer of its own, so broadcast_buffers has nothing to broadcast, and its gradients, 525,900 B
    of fp32, fit the Reducer's first rebuilt bucket (limit dist._DEFAULT_FIRST_BUCKET_BYTES = 1 MiB;
    before the first backward there is a single bucket anyway): one flat fp32 bucket holding every
    gradient once more, one storage of 512-rounded 525,900 = 526,336 B. That is the peak's only
    difference from one GPU (replicated: the rest is as on one GPU)."""
    import torch.distributed as dist

    torch_nets = load(STEP).module.networks(**KNOBS)  # built for real on the CPU: small
    unet = torch_nets["unet"]
    numel = sum(p.numel() for p in unet.parameters())
    assert numel == UNET_PARAMS and all(p.requires_grad for p in unet.parameters())
    assert list(unet.buffers()) == []
    assert [n for n, _ in torch_nets["scheduler"].named_buffers()] == ["alphas_cumprod"]
    assert not list(torch_nets["scheduler"].parameters())
    assert numel * 4 < dist._DEFAULT_FIRST_BUCKET_BYTES == 2**20
    bucket = _round(numel * 4)
    assert bucket == 526_336

    one, ddp = _stepfile("fp32", 1), _stepfile("fp32", 1, 2, "ddp")
    assert ddp.setup["layout"]["scheduler"] == "replicated (frozen: not wrapped)"
    assert ddp.setup["layout"]["unet"].startswith("replicated (DDP)")
    assert _where(ddp) == _where(one)
    comm = [s.nbytes for s in ddp.tracker.live_at_peak if category_of(s).value == "communication"]
    assert comm == [bucket]
    c1, c2 = _cats(one), _cats(ddp)
    assert c2.pop("communication") == bucket
    assert c2 == c1
    assert ddp.tracker.peak_bytes - one.tracker.peak_bytes == bucket
    assert ddp.setup["effective_batch"] == BATCH * 2
