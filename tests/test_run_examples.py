"""``vramplan run`` on the two example scripts (issue 22): the MONAI 3D segmentation script against
its step file, and the Hugging Face Trainer script against its step file, at tiny sizes. Run beside the zoo in CI
(scripts/test.sh), off the main pytest run's clock: together about 40 s here."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.script_setup import ScriptSetup

pytest.importorskip("torch")
from planner.measure.script_run import trace  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


MONAI = ROOT / "examples/scripts/monai_seg/train.py"


def test_monai_example_peak_equals_its_step_file(tmp_path: Path) -> None:
    pytest.importorskip("monai")
    from planner.measure import stepfile
    from planner.step_setup import StepSetup

    args = ("--data-dir", str(tmp_path), "--size", "48", "--roi", "32", "--filters", "8,16,32,64", "--volumes", "4",
            "--val-every", "1000", "--workers", "0")
    r = trace(ScriptSetup(argv=(str(MONAI), *args)))
    ss = StepSetup(path=str(ROOT / "examples/steps/monai_seg.py"), knobs=(("filters", (8, 16, 32, 64)), ("roi", 32)),
                   batch_size=2, precision="amp-fp16")
    step = stepfile.run(ss, "fake").tracker.peak_bytes
    # The script's peak is the step file's + 512 B: DynUNet.__init__ keeps `self.heads = [torch.rand(1)]`, a plain
    # CPU tensor (not a parameter or buffer: it stays on the host in a real run). The script builds its network
    # while the tracker runs and counts it (4 B -> one 512-B block); the step file builds networks() before the
    # tracker starts and does not. Everything else (parameters, AdamW state, the batch, outputs/loss kept into
    # the next step, GradScaler) is the same storage for storage.
    assert r.record.tracker.peak_bytes == step + 512
    assert [s.label for s in r.segments] == ["step 1", "step 2"]
    with_val = trace(ScriptSetup(argv=(str(MONAI), *args[:-4], "--val-every", "1", "--workers", "0")))
    parts = {s.label: s.peak_bytes for s in with_val.segments}
    # the sliding-window validation ran and was measured: its output buffers (made with device=inputs.device) are
    # device memory, 3 classes x 48^3 fp32 = 1,327,104 B for the aggregated logits alone
    assert parts["evaluation after step 1"] > parts["step 1"]
    assert with_val.record.tracker.peak_bytes == max(parts.values())
    assert any("torch.save at" in n for n in with_val.notes)


HF_KNOBS = (("layers", 2), ("width", 64), ("heads", 4), ("seq", 128), ("vocab", 1000))


@pytest.fixture(scope="module")
def hf_run():
    """``vramplan run`` on the Trainer script at tiny sizes, ``--batch 2`` (traced once for both tests)."""
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    script = ROOT / "examples/scripts/hf_trainer/train.py"
    args = [a for name, v in HF_KNOBS for a in (f"--{name}", str(v))]
    return trace(ScriptSetup(argv=(str(script), *args, "--batch", "4"), batch=2))


def test_hf_trainer_example_runs_unchanged(hf_run) -> None:
    r = hf_run
    assert r.steps == 2 and list(r.networks) == ["GPT2LMHeadModel"]
    assert [s.label for s in r.segments] == ["step 1", "step 2"]
    assert r.record.setup["precision"] == "the script's own CUDA autocast (bfloat16)"  # TrainingArguments(bf16=True)
    assert r.record.setup["optimizers"] == {"GPT2LMHeadModel": "AdamW"}
    # Trainer's train DataLoader samples with a RandomSampler: --batch sets it (4 -> 2)
    assert any("--batch 2: DataLoader at" in n and "4 -> 2" in n for n in r.notes)
    # wte 1000*64 = 64,000 (tied with lm_head) + wpe 128*64 = 8,192 + 2 blocks x (ln_1 128 + c_attn 64*192+192 =
    # 12,480 + attn c_proj 64*64+64 = 4,160 + ln_2 128 + c_fc 64*256+256 = 16,640 + mlp c_proj 256*64+64 = 16,448)
    # = 2 x 49,984 + ln_f 128: 172,288
    assert r.record.params == {"GPT2LMHeadModel": 172_288}


def test_hf_trainer_example_peak_equals_its_step_file(hf_run) -> None:
    from planner.measure import stepfile
    from planner.step_setup import StepSetup

    ss = StepSetup(path=str(ROOT / "examples/steps/hf_gpt2_trainer.py"), knobs=HF_KNOBS, batch_size=2,
                   precision="amp-bf16")
    step = stepfile.run(ss, "fake").tracker
    script = hf_run.record.tracker
    # Equal to the byte (5,569,024 B with torch 2.13, transformers 5.25, accelerate 1.15): the step file does what
    # Trainer + accelerate do per step, down to the 0-dim device tensors the loop holds. At the peak (the log-softmax
    # backward of step 2) both hold, besides parameters, AdamW state, the batch and the activations, seven 512-B
    # blocks: Trainer._tr_loss, step 1's detached loss and clipped total norm (loop variables until reassigned),
    # step 2's num_items_in_batch, its loss, accelerate's `loss / gradient_accumulation_steps` and the backward's
    # ones_like. Leaving out any one of them (e.g. a local grad_norm freed when step() returns) is -512 B here.
    assert script.peak_bytes == step.peak_bytes
    assert (script.peak_op, script.peak_phase) == (step.peak_op, step.peak_phase) == ("_log_softmax_backward_data",
                                                                                     "backward")
    # the same storages, size for size (their ops differ: parameters are made by the script, registered by the step)
    assert sorted(i.nbytes for i in script.live_at_peak) == sorted(i.nbytes for i in step.live_at_peak)
