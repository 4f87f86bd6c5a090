"""The example models under examples/ (users' seeds 000 and 001): they build, run a real
CPU forward, and profile through `vramplan profile --model` (the custom MSE step)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from planner.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
VOXEL = "examples/voxel_grid_net.py"
RADAR = "examples/radar_vae.py"


def _load(rel: str):
    spec = importlib.util.spec_from_file_location(Path(rel).stem + "_under_test", ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _profile(monkeypatch, spec: str, shape: str, *flags: str) -> dict:
    monkeypatch.chdir(ROOT)  # the --model paths are relative to the repository root
    res = runner.invoke(app, ["profile", "--model", spec, "--input", shape, *flags, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def _setup(spec: str, shape: list[int], precision: str, params: int) -> dict:
    return {
        "parameter_dtypes": {"fp32": params},  # every parameter of these models is fp32
        "step": "custom MSE step (--model)",
        "model": spec,
        "input_shape": shape,
        "input_dtype": "fp32",
        "precision": precision,
        "optimizer": "adam",
        "gradient_accumulation_steps": 1,
        "backend": "fake",
    }


# --- seed 000: voxel-grid network -----------------------------------------------------------


def test_voxel_net_cpu_forward_keeps_the_input_shape():
    mod = _load(VOXEL)
    torch.manual_seed(0)
    for checkpointing in (False, True):
        net = mod.make_voxel_net(resolution=8, channels=8, checkpointing=checkpointing)
        x = torch.randn(2, 4, 8, 8, 8)
        out = net(x)
        assert out.shape == x.shape and out.dtype == torch.float32
        out.square().mean().backward()
        assert net.grid.grad is not None and net.grid.grad.shape == (1, 8, 8, 8, 8)
    with pytest.raises(ValueError, match=r"expected a 8\^3 voxel grid"):
        net(torch.randn(1, 4, 16, 16, 16))


def test_voxel_net_profiles_with_its_defaults(monkeypatch):
    spec = f"{VOXEL}:make_voxel_net"
    data = _profile(monkeypatch, spec, "1x4x64x64x64", "--no-amp")  # the factory's default resolution 64
    assert data["setup"] == _setup(spec, [1, 4, 64, 64, 64], "fp32", data["params"]["model"])
    params = data["params"]["model"]
    assert params == sum(p.numel() for p in _load(VOXEL).make_voxel_net().parameters())
    # at least the fp32 parameters plus Adam's two moments (the step's second iteration)
    assert data["peak_allocated_bytes"] >= 3 * 4 * params
    assert not any("math kernel" in n for n in data["notes"])  # no attention in this net


def test_voxel_net_wrong_resolution_is_one_line(monkeypatch):
    monkeypatch.chdir(ROOT)
    res = runner.invoke(app, ["profile", "--model", f"{VOXEL}:make_voxel_net", "--input", "1x4x32x32x32"])
    assert res.exit_code == 2
    assert "ValueError: expected a 64^3 voxel grid" in res.output and len(res.output.strip().splitlines()) == 1


# --- seed 001: radar 3D VAE -----------------------------------------------------------------


def test_radar_vae_cpu_forward_keeps_the_input_shape():
    mod = _load(RADAR)
    torch.manual_seed(0)
    vae = mod.make_radar_vae()  # the note's standard configuration: 32, (1, 2, 4)
    x = torch.randn(1, 1, 16, 16, 8)
    recon, mu, logvar = vae.forward_with_posterior(x)
    assert recon.shape == x.shape
    assert mu.shape == logvar.shape == (1, 4, 4, 4, 2)  # two downsamplings, 4 latent channels
    assert vae(x).shape == x.shape
    kl = mod.kl_loss(mu, logvar)
    assert kl.ndim == 0 and kl.item() >= 0
    (torch.nn.functional.mse_loss(recon, x) + 1e-6 * kl).backward()
    assert vae.encoder.mid.attn.q.weight.grad is not None
    assert mod.kl_loss(torch.zeros(2, 4, 2, 2, 2), torch.zeros(2, 4, 2, 2, 2)).item() == 0.0
    # the note's ultra-lightweight configuration builds too, with and without attention
    light = mod.make_radar_vae(16, (1, 2, 2), attention=False, use_checkpoint=True)
    assert light(x).shape == x.shape and light.encoder.mid.attn is None


def test_radar_vae_profile_notes_the_math_kernel(monkeypatch):
    spec = f"{RADAR}:make_radar_vae"
    data = _profile(monkeypatch, spec, "2x1x32x32x16")  # AMP (the default), as the note trains
    assert data["setup"] == _setup(spec, [2, 1, 32, 32, 16], "autocast fp16 + GradScaler", data["params"]["model"])
    assert data["params"]["model"] == sum(p.numel() for p in _load(RADAR).make_radar_vae().parameters())
    # Bottom of (1, 2, 4): two stride-2 downsamplings, 32x32x16 -> 8x8x4, L = 256 tokens;
    # the reshape+transpose views have last-dimension stride L, so the fused kernels refuse
    # them. Math scores: B * H * L * L * 4 (fp32: the math kernel upcasts fp16 q/k)
    # = 2 * 1 * 256 * 256 * 4 = 524,288 B.
    scores = 2 * 1 * 256 * 256 * 4
    for where in ("model.encoder.mid.attn", "model.decoder.mid.attn"):
        assert (
            f"attention in {where} runs the math kernel (last dimension of q not contiguous: stride 256): "
            "its scores take 0.00 GiB"
        ) in data["notes"]
    assert 0 < scores <= data["peak_allocated_bytes"]


def test_radar_vae_profile_at_the_users_shape(monkeypatch):
    spec = f"{RADAR}:make_radar_vae"
    data = _profile(monkeypatch, spec, "1x1x64x64x32", "--no-amp")
    assert data["setup"] == _setup(spec, [1, 1, 64, 64, 32], "fp32", data["params"]["model"])
    # 64x64x32 -> 16x16x8 at the bottom: L = 2048; scores 1 * 1 * 2048 * 2048 * 4
    # = 16,777,216 B = 0.015625 GiB, printed "0.02 GiB".
    scores = 1 * 1 * 2048 * 2048 * 4
    notes = [n for n in data["notes"] if "runs the math kernel" in n]
    assert len(notes) == 2 and all(n.endswith(f"its scores take {scores / 2**30:.2f} GiB") for n in notes)
    assert all("memory-efficient: last dimension of q not contiguous: stride 2048" in n for n in notes)
    assert 0 < scores <= data["peak_allocated_bytes"]
