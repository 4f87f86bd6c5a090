"""vramplan's knobs around a step file (planner/measure/stepfile.py), checked to the byte on a tiny
model written here, whose every tensor is a multiple of the allocator's 512-byte block except
a few biases and scalars (each rounded up to 512, as the CUDA caching allocator does).

The tiny network: ``depth`` residual ``Block``s ``x + fc2(relu(fc1(x)))`` (``fc1``: width ->
hidden, ``fc2``: hidden -> width) and a ``head`` Linear (width -> width, or width -> classes
with a cross-entropy loss). Defaults: width 128, hidden 512, depth 2, batch 64, AdamW.

Two setups:

* MSE (the defaults): activations are small, so the peak of iteration 2 is AdamW's foreach step
  (params + grads + two moments + one parameter-sized ``_foreach_sqrt`` temporary + the few
  activations still referenced by the step's locals);
* ``HEAVY``: batch 256, ``classes=4096``: the (256, 4096) logits dominate; the peak is
  ``_log_softmax_backward_data`` at the very start of backward, before any gradient of this
  iteration exists, which makes the accumulation and checkpointing differences exact.

Parameter bytes of the defaults (fp32), per tensor rounded to 512:
  per block: fc1.weight 512*128*4 = 262,144, fc1.bias 512*4 = 2,048, fc2.weight 262,144,
  fc2.bias 128*4 = 512 -> 526,848; two blocks 1,053,696; head 128*128*4 = 65,536 + bias 512
  -> P32 = 1,119,744 (279,936 parameters).
"""

from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path

import pytest

from planner.errors import PlannerError
from planner.measure.stepfile import run
from planner.measure.tracker import category_of
from planner.step_setup import StepSetup

from tiny_step import TINY  # noqa: E402
from tiny_step import numel as _numel  # noqa: E402
from tiny_step import rounded as _round  # noqa: E402
from tiny_step import shapes as _shapes  # noqa: E402

HEAVY = dict(knobs=(("classes", 4096),), batch_size=256)


def _bytes(shapes: list[tuple[int, ...]], itemsize: int) -> int:
    return sum(_round(_numel(s) * itemsize) for s in shapes)


P32 = _bytes(_shapes(), 4)  # 1,119,744
P16 = _bytes(_shapes(), 2)  # 560,640: the same shapes in fp16 (the biases 256 / 512 / 1,024 B -> 512 / 512 / 1,024)


@pytest.fixture(scope="module")
def steps(tmp_path_factory) -> dict[str, str]:
    """The tiny step file and its variants, written once."""
    folder = tmp_path_factory.mktemp("tiny_steps")
    variants = {
        "tiny": TINY,
        # loss.backward() instead of vp.backward(loss, opt)
        "no_backward": TINY.replace('vp.backward(loss, opts["net"])', "loss.backward()"),
        # the forward outside vp.autocast()
        "no_autocast": TINY.replace("with vp.autocast():", "if True:"),
        # fused AdamW (the Hugging Face Trainer's default optim with torch >= 2.8)
        "fused": TINY.replace("lr=1e-3)", "lr=1e-3, fused=True)"),
    }
    paths = {}
    for name, text in variants.items():
        assert name == "tiny" or text != TINY
        p = Path(folder) / f"tiny_{name}.py"
        p.write_text(textwrap.dedent(text))
        paths[name] = str(p)
    return paths


def _run(path: str, timeline: bool = False, **kw):
    return run(StepSetup(path, **kw), keep_timeline=timeline)


def _cats(record) -> Counter:
    c: Counter = Counter()
    for s in record.tracker.live_at_peak:
        c[category_of(s).value] += s.nbytes
    return c


def _end_of_forward(record) -> int:
    """Live bytes after the last forward op of iteration 2 (the loss), before backward starts."""
    points = [p for p in record.tracker.timeline if p.step == "it2"]
    first_backward = next(i for i, p in enumerate(points) if p.phase == "backward")
    assert points[first_backward - 1].phase == "forward"
    return points[first_backward - 1].live_bytes


# --- the baseline the other tests compare with --------------------------------------------------


def test_fp32_adamw_peak_is_the_optimizer_step_to_the_byte(steps):
    rec = _run(steps["tiny"])
    c = _cats(rec)
    assert rec.params == {"net": 279_936}  # 2 * (128*512 + 512 + 512*128 + 128) + 128*128 + 128
    assert rec.tracker.peak_phase == "optimizer"
    # activations still referenced at the step: x and y (64*128*4 = 32,768 each), the step's
    # local `out` (32,768) and the loss, whose 0-dim result keeps mse_loss's unreduced storage
    # (64*128*4 = 32,768; planner/measure/tracker.py REDUCED_LOSSES)
    acts = 4 * 64 * 128 * 4
    # parameters, gradients (set_to_none at zero_grad, all back after backward), exp_avg +
    # exp_avg_sq, one parameter-sized _foreach_sqrt temporary
    assert c == {"parameters": P32, "gradients": P32, "optimizer_state": 2 * P32, "temporaries": P32,
                 "activations": acts}
    assert rec.tracker.peak_bytes == 5 * P32 + acts == 5_729_792
    assert rec.setup["precision"] == "fp32" and rec.setup["optimizers"] == {"net": "AdamW"}


# --- precision: fp32 master weights ---------------------------------------------------------------


def test_fp16_master_weights_half_model_fp32_masters_half_grads_kept(steps):
    """guided-diffusion's MixedPrecisionTrainer with Adam: the network in fp16, Adam over fp32
    master copies, the fp16 gradients zeroed in place (never freed) between steps, each master's
    gradient an fp32 copy made at the step and dropped after it."""
    fp32 = _run(steps["tiny"], optimizer="adam")
    half = _run(steps["tiny"], optimizer="adam", precision="fp16-master")
    c32, c16 = _cats(fp32), _cats(half)
    assert half.setup["precision"] == "fp16 networks, fp32 master weights, loss scaling"
    assert half.setup["optimizers"] == {"net": "Adam"} and fp32.setup["optimizers"] == {"net": "Adam"}
    assert half.setup["parameter_dtypes"] == {"fp16": 279_936}
    assert fp32.tracker.peak_phase == half.tracker.peak_phase == "optimizer"
    # parameters: the fp16 model copy + one fp32 master copy; fp32 alone: P32
    assert c16["parameters"] == P16 + P32 == 1_680_384
    assert c32["parameters"] == P32
    assert c16["parameters"] - c32["parameters"] == P16 == 560_640
    # gradients at the step: the fp16 model grads (allocated in iteration 1, still live) + the
    # fp32 master grads (p.grad.float(), made for this step)
    assert c16["gradients"] == P16 + P32
    half_grads_from_it1 = sum(s.nbytes for s in half.tracker.live_at_peak
                              if category_of(s).value == "gradients" and s.step == "it1")
    assert half_grads_from_it1 == P16
    # Adam's two moments over the fp32 masters in both; the same foreach temporary
    assert c16["optimizer_state"] == c32["optimizer_state"] == 2 * P32
    assert c16["temporaries"] == c32["temporaries"] == P32
    # activations: x, y, the forward's output cast back to fp32 (apex O2's patch_forward) and
    # the loss, as in fp32
    assert c16["activations"] == c32["activations"] == 4 * 64 * 128 * 4  # the loss: 64*128*4 (REDUCED_LOSSES)
    assert half.tracker.peak_bytes - fp32.tracker.peak_bytes == 2 * P16 == 1_121_280


# --- activation checkpointing --------------------------------------------------------------------


def test_checkpointing_a_block_saves_only_its_input(steps):
    """Without checkpointing each Block keeps relu's output (B x hidden, saved by relu and by fc2)
    until backward; fc1's output is freed by relu, fc2's by the residual add, the block's input
    and output are kept by fc1 of this block / the next layer either way. With
    checkpoint_wrapper(NO_REENTRANT) around Block only its input is kept (by the wrapper's
    recomputation), so end-of-forward live bytes drop by depth * B * hidden * 4, and so does
    the peak (at the start of backward, before any block is recomputed)."""
    plain = _run(steps["tiny"], timeline=True, **HEAVY)
    ckpt = _run(steps["tiny"], timeline=True, checkpoint=("Block",), **HEAVY)
    assert ckpt.setup["checkpoint"] == ["Block"] and plain.setup["checkpoint"] == []
    relu_out = _round(256 * 512 * 4)  # 524,288 per block
    assert _end_of_forward(plain) - _end_of_forward(ckpt) == 2 * relu_out == 1_048_576
    # end of forward, fp32, no checkpointing, derived: parameters (3,167,232: the blocks'
    # 1,053,696 + head 4096*128*4 + 4096*4) + two moments + x (256*128*4) + y (256 int64) + per
    # block relu out (524,288) + block out (131,072) + logits (the step's local `out`, 4 MiB) +
    # log_softmax's saved output (4 MiB) + the loss (512); nll_loss's total_weight (512) too
    p = _bytes(_shapes(classes=4096), 4)
    assert p == 3_167_232
    saved = 256 * 128 * 4 + 256 * 8 + 2 * (relu_out + 256 * 128 * 4) + 2 * 256 * 4096 * 4 + 512 + 512
    assert _end_of_forward(plain) == 3 * p + saved == 19_335_168
    assert plain.tracker.peak_op == ckpt.tracker.peak_op == "_log_softmax_backward_data"
    assert plain.tracker.peak_bytes - ckpt.tracker.peak_bytes == 2 * relu_out


def test_checkpoint_unknown_class_lists_the_repeated_blocks(steps):
    with pytest.raises(PlannerError, match=r"no module of class 'NoSuchClass'.*repeated blocks: Block"):
        _run(steps["tiny"], checkpoint=("NoSuchClass",))


# --checkpoint auto (the per-module plan): tests/test_ckpt_plan.py


# --- gradient accumulation -----------------------------------------------------------------------


def test_accumulation_keeps_micro_batch_1_gradients_through_micro_batch_2(steps):
    """HEAVY peaks at _log_softmax_backward_data, the second backward op, before any gradient
    of the micro-batch exists. With accumulation 1, zero_grad(set_to_none) freed last
    iteration's gradients, so none are live there. With accumulation 2, micro-batch 2 reaches
    the same op with all of micro-batch 1's gradients live (zero_grad acts on micro-batch 1
    only), and vp.backward's ``loss / 2`` adds one 512-byte scalar: the peak grows by exactly
    the gradients' bytes + 512."""
    one = _run(steps["tiny"], **HEAVY)
    two = _run(steps["tiny"], accumulation=2, **HEAVY)
    p = _bytes(_shapes(classes=4096), 4)  # 3,167,232
    assert one.tracker.peak_op == two.tracker.peak_op == "_log_softmax_backward_data"
    assert _cats(one)["gradients"] == 0
    assert _cats(two)["gradients"] == p
    assert two.tracker.peak_bytes - one.tracker.peak_bytes == p + 512 == 3_167_744
    # accumulation 1's peak, derived: parameters + two moments + the saved activations of the
    # checkpointing test less nll_loss's total_weight (released by its backward node, which ran)
    # + the step's loss (512) + backward's temporaries: the loss's grad (512), nll_loss's grad
    # and log_softmax's grad (256 * 4096 * 4 each)
    acts = 256 * 128 * 4 + 256 * 8 + 2 * (256 * 512 * 4 + 256 * 128 * 4) + 2 * 256 * 4096 * 4 + 512
    temps = 512 + 2 * 256 * 4096 * 4
    assert _cats(one) == {"parameters": p, "optimizer_state": 2 * p, "activations": acts, "temporaries": temps}
    assert one.tracker.peak_bytes == 3 * p + acts + temps == 27_723_776
    assert two.setup["accumulation"] == 2 and two.setup["effective_batch"] == 512 and two.setup["batch_size"] == 256


# --- the optimizer knob --------------------------------------------------------------------------


def test_optimizer_sgd_replaces_adamw_one_momentum_buffer(steps):
    """--optimizer sgd: torch.optim.SGD with momentum 0.9 and AdamW's lr / weight_decay (0.01)
    kept: one momentum buffer per parameter instead of AdamW's two moments. The peak is SGD's
    foreach step: params + grads + momentum + the ``grads + wd * params`` temporary + the same
    activations."""
    sgd = _run(steps["tiny"], optimizer="sgd")
    adamw = _run(steps["tiny"])
    assert sgd.setup["optimizers"] == {"net": "SGD"} and adamw.setup["optimizers"] == {"net": "AdamW"}
    assert _cats(sgd)["optimizer_state"] == P32
    assert _cats(adamw)["optimizer_state"] == 2 * P32
    acts = 4 * 64 * 128 * 4  # x, y, out and the loss's unreduced storage (REDUCED_LOSSES)
    assert _cats(sgd) == {"parameters": P32, "gradients": P32, "optimizer_state": P32, "temporaries": P32,
                          "activations": acts}
    assert adamw.tracker.peak_bytes - sgd.tracker.peak_bytes == P32


@pytest.mark.xfail(strict=True, reason="runner bug: fused (and capturable) Adam/AdamW keep their 'step' "
                   "counters on the parameters' device (torch/optim/adam.py _init_group: device=p.device "
                   "if capturable or fused), but the tracker drops every 0-dim tensor made inside "
                   "optimizer.step() as a host scalar")
def test_fused_adamw_step_counters_are_device_tensors(steps):
    rec = _run(steps["fused"])
    # two moments + one fp32 0-dim 'step' per parameter tensor (10 of them) on the GPU
    assert _cats(rec)["optimizer_state"] == 2 * P32 + 10 * 512


# --- the file's own knobs ------------------------------------------------------------------------


def test_knob_overrides_the_factory_default(steps):
    rec = _run(steps["tiny"], knobs=(("width", 256),))
    # per block 256*512 + 512 + 512*256 + 256 = 262,912; head 256*256 + 256 = 65,792
    assert rec.params == {"net": 2 * 262_912 + 65_792} == {"net": 591_616}
    assert rec.setup["knobs"] == {"classes": 0, "depth": 2, "hidden": 512, "width": 256}
    # width is a knob of networks() and batch() both: the batch follows (x, y: 64 x 256 fp32)
    assert _cats(rec)["parameters"] == _bytes(_shapes(width=256), 4)
    assert _cats(rec)["activations"] == 4 * 64 * 256 * 4  # x, y, out, the loss (REDUCED_LOSSES)


def test_unknown_knob_names_the_valid_ones(steps):
    with pytest.raises(PlannerError, match=r"no knob 'widht' \(valid: classes, depth, hidden, width\)"):
        _run(steps["tiny"], knobs=(("widht", 64),))


@pytest.mark.parametrize("value", ["three", 2.5, True])
def test_knob_of_the_wrong_type(steps, value):
    with pytest.raises(PlannerError, match=r"--knob depth: expected an integer \(default 2\)"):
        _run(steps["tiny"], knobs=(("depth", value),))


# --- steps that do not let vramplan apply its knobs ---------------------------------------------


def test_step_without_vp_backward(steps):
    with pytest.raises(PlannerError, match=r"never calls vp.backward\(loss, opt\)"):
        _run(steps["no_backward"])


def test_amp_step_without_vp_autocast(steps):
    with pytest.raises(PlannerError, match=r"--precision amp-bf16: the step never enters vp.autocast\(\)"):
        _run(steps["no_autocast"], precision="amp-bf16")
    # fp32 has nothing to apply there: the same step traces
    assert _run(steps["no_autocast"]).tracker.peak_bytes == 5_729_792


# --- FLOP counting -------------------------------------------------------------------------------


def test_counting_flops_leaves_the_memory_stream_alone(steps):
    """Iteration 2's FLOPs are counted while tracing (for the time model). torch's FlopCounterMode
    would track modules with multi-grad hooks that a checkpointed block's recomputed outputs keep
    alive into the next micro-batch; the counter here must not change one allocation.

    FLOPs, derived (HEAVY: B 256, width 128, hidden 512, 2 blocks, head 128 -> 4096; a linear
    (in, out) costs 2*B*in*out per matmul): forward 2 blocks x (fc1 + fc2) 4 x 33,554,432 +
    head 268,435,456 = 402,653,184; backward: head grad input + grad weight 2 x 268,435,456,
    the blocks' recomputation 2 x 33,554,432 (fc1 only: non-reentrant checkpoint stops
    recomputing once the last saved tensor, relu's output, exists -- torch/utils/checkpoint.py,
    set_checkpoint_early_stop, on by default -- so fc2 is not rerun), their four linears' grad
    input + grad weight 8 x 33,554,432 less block 0 fc1's grad input (the batch needs none) =
    234,881,024; per micro-batch 1,241,513,984; three micro-batches 3,724,541,952."""
    kw = dict(checkpoint=("Block",), accumulation=3, **HEAVY)
    counted = run(StepSetup(steps["tiny"], **kw), count_flops=True)
    plain = run(StepSetup(steps["tiny"], **kw))
    assert counted.events == plain.events
    assert counted.tracker.peak_bytes == plain.tracker.peak_bytes
    assert counted.setup["flops_iteration2"] == 3 * 1_241_513_984 == 3_724_541_952
