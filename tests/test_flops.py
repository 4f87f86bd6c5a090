"""The estimator's FLOP count against fvcore's (the roofline cost model's input)."""

from __future__ import annotations

import warnings

import pytest

from planner.analytic import ops as O
from planner.analytic.engine import Sim
from planner.analytic.models import AutoencoderKL
from planner.config import Overrides, resolve_setup


def test_forward_macs_match_fvcore():
    torch = pytest.importorskip("torch")
    fvcore = pytest.importorskip("fvcore.nn")
    pytest.importorskip("monai")
    from planner.stepfiles import ldm_stage1, step_setup_of

    setup = resolve_setup(None, Overrides(voxel="32x32x32", amp=False))
    warnings.filterwarnings("ignore")
    autoencoder = ldm_stage1.networks(**step_setup_of(setup).knob_dict)["autoencoder"]  # what the tracer builds
    fa = fvcore.FlopCountAnalysis(autoencoder.eval(), torch.randn(1, 1, 32, 32, 32))
    fa.unsupported_ops_warnings(False)
    fa.uncalled_modules_warnings(False)
    ops = fa.by_operator()
    # fvcore counts one multiply-add as one flop; conv, the attention einsums and linears
    fv_macs = ops["conv"] + ops["einsum"] + ops["linear"]

    sim = Sim()
    O.use(sim)
    model = AutoencoderKL(sim, setup)
    model.name_tree("autoencoder")
    sim.grad_enabled = False  # forward only
    model(O.randn((1, 1, 32, 32, 32)))
    assert sim.flops / 2 == pytest.approx(fv_macs, rel=1e-4)


def test_backward_and_recomputation_are_counted():
    from planner.analytic.estimate import estimate

    base = estimate(resolve_setup(None, Overrides(voxel="32x32x32", perceptual=False, no_discriminator=True)))
    ckpt = estimate(resolve_setup(None, Overrides(voxel="32x32x32", perceptual=False, no_discriminator=True, checkpointing=True)))
    # recomputing the encoder and decoder adds at most one forward (a third of fwd + 2 bwd)
    ratio = ckpt.extra["flops"] / base.extra["flops"]
    assert 1.2 < ratio < 1.34
