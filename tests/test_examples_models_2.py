"""The example models of seeds 002 and 003 (examples/rgbd_policy.py, examples/guided_unet.py):
they build, the default sizes are the stated ones, a real CPU forward of a tiny configuration
has the right shape, and ``vramplan profile --model`` runs them (through a tiny wrapper
factory written to tmp_path, since the factories' defaults are full size)."""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from planner.cli import app

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
runner = CliRunner()


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


rgbd = _load("rgbd_policy")
unet = _load("guided_unet")

TINY_RGBD = dict(image_size=32, width=32, depth=2, heads=2, queries=16, steps=4, patch_size=8)
TINY_UNET = dict(image_size=16, model_channels=32, num_res_blocks=1, attention_resolutions=(8,),
                 channel_mult=(1, 2), num_heads=2)


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- seed 002: the RGB-D policy --------------------------------------------------------------


def test_rgbd_policy_default_has_about_82m_parameters():
    with torch.device("meta"):
        model = rgbd.make_rgbd_policy()
    # C = 768, h = int(3.5 C) = 2688, patch 16, N = (224/16)^2 = 196 tokens, Q = 512, T = 24, A = 3:
    #   patch embedding 4*16^2*C + C                                    =    787,200
    #   position + queries (N + Q) * C                                  =    543,744
    #   resampler cross-attention 4C^2 + 4C, two LayerNorms 4C          =  2,365,440
    #   12 blocks * (4C^2 + 4C + 2Ch + h + C + 2 LayerNorms 4C)         = 77,971,968
    #   final LayerNorm 2C + action Linear(C, A) + Linear(Q, T)         =     16,155
    assert _count(model) == 787_200 + 543_744 + 2_365_440 + 77_971_968 + 16_155 == 81_684_507
    assert 75_000_000 <= _count(model) <= 90_000_000  # the note: 82,190,602


@pytest.mark.parametrize("checkpointing", [False, True])
def test_rgbd_policy_tiny_forward_and_backward(checkpointing):
    torch.manual_seed(0)
    model = rgbd.make_rgbd_policy(**TINY_RGBD, gradient_checkpointing=checkpointing)
    out = model(torch.randn(2, 4, 32, 32))
    assert out.shape == (2, 4, 3)  # (B, steps, action_dim)
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


# --- seed 003: the guided-diffusion UNet -----------------------------------------------------


def test_guided_unet_default_size():
    with torch.device("meta"):
        model = unet.make_guided_unet()
    # Equal (state-dict names and shapes) to guided_diffusion.script_util.create_model(64, 128, 2,
    # attention_resolutions="16,8", num_heads=4, use_scale_shift_norm=True), checked against
    # openai/guided-diffusion's own unet.py when the example was written.
    assert _count(model) == 92_025_731


def test_guided_unet_tiny_forward_with_and_without_timesteps():
    torch.manual_seed(0)
    model = unet.make_guided_unet(**TINY_UNET)
    x = torch.randn(2, 3, 16, 16)
    out = model(x)  # t defaults to zeros, as the --model step calls it
    assert out.shape == x.shape
    assert torch.equal(out, model(x, torch.zeros(2, dtype=torch.long)))
    out.square().mean().backward()
    sigma = unet.make_guided_unet(**TINY_UNET, learn_sigma=True, use_fp16=True)
    out = sigma(x, torch.tensor([3, 999]))
    assert out.shape == (2, 6, 16, 16) and out.dtype == torch.float32  # fp16 torso, fp32 out


# --- vramplan profile --model ----------------------------------------------------------------


WRAPPER = '''
import importlib.util

_spec = importlib.util.spec_from_file_location("{modname}", {path!r})
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)


def tiny():
    return _mod.{factory}(**{kwargs!r})
'''


@pytest.mark.parametrize(
    "example, factory, kwargs, shape, flags, precision",
    [
        ("rgbd_policy", "make_rgbd_policy", {**TINY_RGBD, "gradient_checkpointing": True}, [2, 4, 32, 32],
         ["--optimizer", "adamw"], "autocast fp16 + GradScaler"),
        ("guided_unet", "make_guided_unet", TINY_UNET, [2, 3, 16, 16], [], "autocast fp16 + GradScaler"),
        # guided-diffusion's use_fp16: fp16 convolutions, fp32 embeddings and norms, fp32 input;
        # the stated precision names the mix (element counts from the built model below)
        ("guided_unet", "make_guided_unet", {**TINY_UNET, "use_fp16": True}, [2, 3, 16, 16], ["--no-amp"], "fp32"),
    ],
)
def test_profile_model_runs_the_examples(tmp_path, example, factory, kwargs, shape, flags, precision):
    wrapper = tmp_path / f"tiny_{example}.py"
    wrapper.write_text(textwrap.dedent(WRAPPER.format(
        modname=f"_tiny_{example}_{tmp_path.name.replace('-', '_')}", path=str(EXAMPLES / f"{example}.py"),
        factory=factory, kwargs=kwargs,
    )))
    spec = f"{wrapper}:tiny"
    res = runner.invoke(app, ["profile", "--model", spec, "--input", "x".join(map(str, shape)), *flags, "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["peak_allocated_bytes"] > 0
    model = getattr(rgbd if example == "rgbd_policy" else unet, factory)(**kwargs)
    assert data["params"] == {"model": _count(model)}
    dtypes: dict[str, int] = {}
    for p in model.parameters():
        key = {torch.float32: "fp32", torch.float16: "fp16"}[p.dtype]
        dtypes[key] = dtypes.get(key, 0) + p.numel()
    if len(dtypes) > 1:
        mixed = ", ".join(f"{k} {v:,}" for k, v in sorted(dtypes.items(), key=lambda kv: -kv[1]))
        precision += f"; mixed parameter dtypes ({mixed} elements)"
    assert data["setup"] == {
        "step": "custom MSE step (--model)",
        "model": spec,
        "input_shape": shape,
        "input_dtype": "fp32",
        "precision": precision,
        "optimizer": "adamw" if "--optimizer" in flags else "adam",
        "gradient_accumulation_steps": 1,
        "backend": "fake",
        "parameter_dtypes": dtypes,
    }
