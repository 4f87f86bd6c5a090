"""`vramplan profile --model`: flags that do not apply, the stated setup, and user code
under the trace (issue 9, defects 2 and 6). Each model is a tiny file written to tmp_path."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from planner.cli import app

runner = CliRunner()
VRAMPLAN = Path(sys.executable).parent / "vramplan"

MODELS = '''
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def conv():
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.SiLU(), nn.Conv3d(4, 1, 3, padding=1))


def as_float():
    return conv().float()


def as_half():
    return conv().half()


def to_fp16():
    return conv().to(torch.float16)


def needs_width(width, depth=2):
    return conv()


class Lin(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8, device="cuda")
        self.b = nn.Linear(8, 8).to("cuda", torch.float32)

    def inner(self, x):
        return self.a(x) * torch.ones(8, device="cuda")

    def forward(self, x):
        x = x.cuda()
        return self.b(checkpoint(self.inner, x, use_reentrant=False))


def cuda_model():
    return Lin().cuda()


class Boom(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)

    def forward(self, x):
        y = self.a(x)
        raise KeyError("no such head " + "h" * 400)


def boom():
    return Boom()


class OwnAutocast(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)

    def forward(self, x):
        with torch.autocast("cuda"):  # disabled with a warning on a CPU-only build, unless mapped
            y = self.a(x)
        if y.dtype != torch.float16:
            raise TypeError(f"autocast(cuda) gave {y.dtype}")
        return y


def own_autocast():
    return OwnAutocast()


class Sync(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)

    def forward(self, x):
        torch.cuda.synchronize()
        return self.a(x)


def sync():
    return Sync()
'''


@pytest.fixture()
def models(tmp_path, monkeypatch):
    """models_<tmp>.py in tmp_path, importable as a module from the current directory."""
    name = f"models_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def _err_line(res) -> str:
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1, res.output  # one line, no traceback
    return lines[0]


def _ok_json(res) -> dict:
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


# --- defect 2: flags that change nothing are errors ------------------------------------------


@pytest.mark.parametrize(
    "flags, line",
    [
        (["--batch", "4"], "error: --batch: does not apply to --model (the batch is the first dimension of --input)"),
        (["--accum", "2"], "error: --accum: does not apply to --model (the --model step is one batch per optimizer step)"),
        (["--checkpointing"], "error: --checkpointing: does not apply to --model"),
        (["--no-checkpointing"], "error: --no-checkpointing: does not apply to --model"),
        (["--channels", "8,16"], "error: --channels: does not apply to --model"),
        (["--voxel", "8x8x8"], "error: --voxel: does not apply to --model"),
        (["--kind", "ldm-stage2"], "error: --kind: does not apply to --model"),
        (["--no-perceptual"], "error: --no-perceptual: does not apply to --model"),
        (["--no-discriminator"], "error: --no-discriminator: does not apply to --model"),
        (["--disc-layers", "2"], "error: --disc-layers: does not apply to --model"),
        (["--flash-attention"], "error: --flash-attention: does not apply to --model"),
        (["--attention", "F,T"], "error: --attention: does not apply to --model"),
        (["--config", "setup.yaml"], "error: --config: does not apply to --model"),
        (["--gpus", "2", "--strategy", "ddp"],
         "error: --gpus: does not apply to --model (the --model step runs on one GPU; write a step file (--step) "
         "for more); nor do --strategy"),
        (["--batch", "4", "--accum", "2"],
         "error: --batch: does not apply to --model (the batch is the first dimension of --input); nor do --accum"),
    ],
)
def test_flags_that_do_not_apply_to_model_are_errors(models, flags, line):
    res = runner.invoke(app, ["profile", "--model", f"{models}:conv", "--input", "2x1x8x8x8", *flags])
    assert res.exit_code == 2
    assert _err_line(res).startswith(line)


def test_flags_that_apply_to_model_change_the_setup(models):
    base = ["profile", "--model", f"{models}:conv", "--input", "2x1x8x8x8", "--json"]
    amp = _ok_json(runner.invoke(app, base))["setup"]
    assert amp == {
        "step": "custom MSE step (--model)",
        "model": f"{models}:conv",
        "input_shape": [2, 1, 8, 8, 8],
        "input_dtype": "fp32",
        "precision": "autocast fp16 + GradScaler",  # AMP is the default, and now it says so
        "optimizer": "adam",
        "gradient_accumulation_steps": 1,
        "backend": "fake",
        "parameter_dtypes": {"fp32": 221},  # conv(): (4*1*27 + 4) + (1*4*27 + 1) = 112 + 109 = 221
    }
    fp32 = _ok_json(runner.invoke(app, [*base, "--no-amp", "--optimizer", "sgd"]))["setup"]
    assert fp32["precision"] == "fp32" and fp32["optimizer"] == "sgd"


def test_text_report_states_the_setup(models):
    res = runner.invoke(app, ["profile", "--model", f"{models}:conv", "--input", "2x1x8x8x8", "--no-amp"])
    assert res.exit_code == 0, res.output
    assert (
        f"ran: custom MSE step (--model) {models}:conv, input 2x1x8x8x8 fp32, precision fp32, "
        "optimizer adam, fake backend"
    ) in res.stdout


def test_builtin_step_states_its_setup_too():
    args = ["profile", "--kind", "ldm-stage2", "--voxel", "32x32x16", "--channels", "32,32", "--attention", "F,F",
            "--batch", "2"]
    data = _ok_json(runner.invoke(app, [*args, "--json"]))
    setup = data["setup"]
    assert setup["step"] == "ldm-stage2"
    assert setup["precision"] == "autocast fp16 + GradScaler" and setup["optimizer"] == "adam"
    assert setup["backend"] == "fake" and setup["input_shape"] == [2, 3, 8, 8, 4]  # the latent: 32x32x16 / 4, 3 channels
    text = runner.invoke(app, [*args, "--no-amp"])
    assert text.exit_code == 0, text.output
    assert "ran: ldm-stage2, input 2x" in text.stdout and "precision fp32, optimizer adam, fake backend" in text.stdout


# --- defect 6: user code under the trace ------------------------------------------------------


def test_float_in_factory_works(models):
    data = _ok_json(runner.invoke(app, ["profile", "--model", f"{models}:as_float", "--input", "2x1x8x8x8", "--json"]))
    same = _ok_json(runner.invoke(app, ["profile", "--model", f"{models}:conv", "--input", "2x1x8x8x8", "--json"]))
    assert data["peak_allocated_bytes"] == same["peak_allocated_bytes"] > 0


@pytest.mark.parametrize("factory", ["as_half", "to_fp16"])
def test_half_in_factory_works_without_amp_and_names_gradscaler_with_it(models, factory):
    base = ["profile", "--model", f"{models}:{factory}", "--input", "2x1x8x8x8"]
    data = _ok_json(runner.invoke(app, [*base, "--no-amp", "--json"]))
    assert data["setup"]["precision"] == "fp16 parameters and input (no autocast)"
    assert data["setup"]["input_dtype"] == "fp16"
    res = runner.invoke(app, base)  # AMP: torch's GradScaler refuses fp16 gradients
    assert res.exit_code == 2
    assert _err_line(res).startswith("error: --amp: the model's parameters are fp16")


def test_factory_with_required_argument_is_one_line(models):
    res = runner.invoke(app, ["profile", "--model", f"{models}:needs_width", "--input", "2x1x8x8x8"])
    assert res.exit_code == 2
    line = _err_line(res)
    assert line.startswith(f"error: --model: factory '{models}:needs_width' has required parameter width")
    assert "depth" not in line  # it has a default


def test_cuda_in_user_code_is_traced_on_the_emulated_device(models):
    # .cuda() on the module and the batch, nn.Linear(device="cuda"), .to("cuda", dtype) and
    # device="cuda" inside a checkpointed block (recomputed during backward)
    data = _ok_json(runner.invoke(app, ["profile", "--model", f"{models}:cuda_model", "--input", "2x8", "--json"]))
    assert data["params"] == {"model": 2 * (8 * 8 + 8)}
    assert data["peak_allocated_bytes"] > 0


def test_models_own_cuda_autocast_runs_as_on_cuda_and_is_stated(models):
    res = runner.invoke(app, ["profile", "--model", f"{models}:own_autocast", "--input", "2x8", "--no-amp", "--json"])
    data = _ok_json(res)
    assert data["setup"]["precision"] == "fp32; the model's own autocast(cuda, fp16) regions"
    assert "Disabling autocast" not in res.output


def test_other_cuda_calls_are_one_line(models):
    res = runner.invoke(app, ["profile", "--model", f"{models}:sync", "--input", "2x8"])
    assert res.exit_code == 2
    line = _err_line(res)
    assert line.startswith("error: --model: the model calls CUDA (AssertionError: Torch not compiled with CUDA enabled")
    assert f"{models}.py:" in line


def test_exception_in_forward_names_type_message_and_line(models):
    res = runner.invoke(app, ["profile", "--model", f"{models}:boom", "--input", "2x8"])
    assert res.exit_code == 2
    line = _err_line(res)
    lineno = MODELS.splitlines().index('        raise KeyError("no such head " + "h" * 400)') + 1
    assert line.startswith("error: --model: the model's forward raised KeyError: 'no such head hhh")
    assert line.endswith(f"… ({models}.py:{lineno})")
    quoted = line[line.index("KeyError: ") + len("KeyError: "): line.rindex(" (")]
    assert len(quoted) == 200  # the message is cut at 200 characters


def test_shape_mismatch_still_says_the_model_rejects_the_shape(models):
    res = runner.invoke(app, ["profile", "--model", f"{models}:conv", "--input", "2x3x8x8x8"])
    assert res.exit_code == 2
    assert _err_line(res).startswith("error: --input: the model rejects shape [2, 3, 8, 8, 8]: RuntimeError: ")


def test_model_from_a_file_path(tmp_path):
    (tmp_path / "net.py").write_text(MODELS)
    data = _ok_json(runner.invoke(app, ["profile", "--model", f"{tmp_path / 'net.py'}:conv", "--input", "2x1x8x8x8", "--json"]))
    assert data["params"] == {"model": 4 * 1 * 27 + 4 + 1 * 4 * 27 + 1}
    res = runner.invoke(app, ["profile", "--model", f"{tmp_path / 'nope.py'}:conv", "--input", "2x1x8x8x8"])
    assert res.exit_code == 2 and _err_line(res).startswith("error: --model: no such file")


def test_model_importable_from_the_current_directory(tmp_path):
    """The console script's sys.path[0] is its bin folder: the cwd must be added."""
    (tmp_path / "cwdnet.py").write_text(textwrap.dedent(MODELS))
    proc = subprocess.run(
        [str(VRAMPLAN), "profile", "--model", "cwdnet:conv", "--input", "2x1x8x8x8", "--no-amp", "--json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["setup"]["model"] == "cwdnet:conv"
    missing = subprocess.run(
        [str(VRAMPLAN), "profile", "--model", "nosuchnet:conv", "--input", "2x8"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: --model: no module 'nosuchnet' in the current directory")
    assert len(missing.stderr.strip().splitlines()) == 1
