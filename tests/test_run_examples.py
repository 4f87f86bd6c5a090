"""``vramplan run`` on the two example scripts (issue 22): the MONAI 3D segmentation script against
its step file, and the Hugging Face Trainer script, at tiny sizes. Run beside the zoo in CI
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


def test_hf_trainer_example_runs_unchanged() -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    script = ROOT / "examples/scripts/hf_trainer/train.py"
    r = trace(ScriptSetup(argv=(str(script), "--layers", "2", "--width", "64", "--heads", "4", "--seq", "128",
                                "--vocab", "1000", "--batch", "4"), batch=2))
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
