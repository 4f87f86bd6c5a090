"""The analytic estimator's per-rank terms (planner/analytic/parallel.py, issue 13): DDP's buckets and
buffer broadcasts, FSDP2's padded shards, all-gathers and reduce-scatters, transcribed from torch
2.13 and exact against torch's own DDP / fully_shard traced under a fake process group
(``benchmarks/bench_parallel.py`` runs 14 configurations; a few are repeated here with the cases that
found bugs). Every storage is 512-byte rounded (the caching allocator's kMinBlockSize).
"""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from typer.testing import CliRunner

from planner.analytic.estimate import estimate
from planner.analytic.parallel import BUCKET_BYTES, FIRST_BUCKET_BYTES, assign
from planner.analytic.simulate import simulate
from planner.cli import app
from planner.config import setup_from_dict
from tiny_step import rounded as _round  # noqa: E402

runner = CliRunner()

# the small stage-2 UNet of tests/test_ldm_stage2_step.py: 131,475 parameters
UNET = {"num_channels": [8, 8, 16], "attention_levels": [False, False, True], "num_head_channels": [0, 0, 16],
        "num_res_blocks": [1, 1, 1], "norm_num_groups": 8}
UNET_PARAMS = 131_475


def _stage2(gpus: int = 1, strategy: str = "none", **training):
    return setup_from_dict({"kind": "ldm-stage2", "data": {"voxel_size": [32, 32, 32]},
                            "diffusion": dict(UNET, training={"batch_size": 2, **training}),
                            "device": {"mixed_precision": False},
                            "parallel": {"gpus": gpus, "strategy": strategy}})


def _stage1(gpus: int = 1, strategy: str = "none", **training):
    return setup_from_dict({"kind": "ldm-stage1", "data": {"voxel_size": [48, 48, 32]},
                            "autoencoder": {"training": {"use_perceptual_loss": False, **training}},
                            "parallel": {"gpus": gpus, "strategy": strategy}})


def _cats(res) -> Counter:
    c: Counter = Counter()
    for info in res.live_at_peak:
        c[info.category or "activations"] += info.nbytes
    return c


# --- DDP ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_bucket_assignment_is_torchs(seed):
    """``assign`` is reducer.cpp's compute_bucket_assignment_by_size: checked against torch's own
    binding on random parameter lists, fp32 and fp16 mixed, with DDP's limits both ways (the first
    buckets: [sys.maxsize], sorted; the rebuild: [1 MiB, 25 MiB] in the given ready order)."""
    import torch
    import torch.distributed as dist

    rng = random.Random(seed)
    shapes = [(rng.choice([1, 3, 64, 512, 1024, 4096]), rng.choice([1, 8, 256, 1024])) for _ in range(rng.randint(1, 40))]
    dtypes = [rng.choice([torch.float32, torch.float32, torch.float16]) for _ in shapes]
    tensors = [torch.empty(s, dtype=d, device="meta") for s, d in zip(shapes, dtypes)]
    sizes = [({torch.float32: "f32", torch.float16: "f16"}[t.dtype], t.numel() * t.element_size()) for t in tensors]
    order = list(range(len(tensors)))
    rng.shuffle(order)  # a gradient-ready order
    ours = assign([sizes[i] for i in order], [FIRST_BUCKET_BYTES, BUCKET_BYTES], sort=False)
    theirs, _ = dist._compute_bucket_assignment_by_size([tensors[i] for i in order], [FIRST_BUCKET_BYTES, BUCKET_BYTES],
                                                        [False] * len(order), order)
    # the same buckets; with two dtypes torch adds the buckets still open at the end in its
    # unordered_map's order (ours: first dtype first), which does not change any bucket's bytes
    ours_r, theirs_r = [[order[i] for i in b] for b in ours], [list(b) for b in theirs]
    assert sorted(ours_r) == sorted(theirs_r)
    closed = len(ours_r) - len({d for d, _ in sizes})
    assert ours_r[:max(closed, 0)] == theirs_r[:max(closed, 0)]  # those that closed: in the same order
    ours, theirs = assign(sizes, [2**63 - 1], sort=True), dist._compute_bucket_assignment_by_size(tensors, [2**63 - 1])[0]
    assert ours == [list(b) for b in theirs]


def test_ddp_adds_one_bucket_on_the_small_unet():
    """131,475 fp32 parameters = 525,900 B: below the 1 MiB first-bucket limit, so the rebuilt
    assignment is one bucket too; 512-rounded 526,336 B, the only difference from one GPU at the
    peak, the same on 2, 4 and 8 ranks (DDP replicates). The same figure as the trace's
    (tests/test_ldm_stage2_step.py)."""
    assert UNET_PARAMS * 4 == 525_900 < FIRST_BUCKET_BYTES
    one = simulate(_stage2())
    assert sum(one.params.values()) == UNET_PARAMS
    for n in (2, 4, 8):
        ddp = simulate(_stage2(n, "ddp"))
        assert ddp.peak_bytes - one.peak_bytes == _round(525_900) == 526_336
        c1, c2 = _cats(one), _cats(ddp)
        assert c2.pop("communication") == 526_336
        assert c2 == c1


def test_ddp_rebuild_splits_the_autoencoder_at_the_first_bucket_limit():
    """Stage 1's AutoencoderKL: 2,299,208 fp32 parameters = 9,196,832 B, one bucket before the first
    backward (9,197,056 rounded); rebuilt before the second forward in gradient-ready order into a
    first bucket that closes once it reaches 1 MiB and a second holding the rest (< 25 MiB). The
    discriminator (2,771,873 parameters, BatchNorm) also broadcasts its buffers each forward: one
    flat fp32 copy and one int64 copy (num_batches_tracked), freed at once."""
    res = simulate(_stage1(2, "ddp"))
    assert res.params == {"autoencoder": 2_299_208, "discriminator": 2_771_873}
    made = [(res.mem.info[u], b) for u, b in res.mem.events if b > 0 and res.mem.info[u].category == "communication"]
    ae = [b for i, b in made if i.network == "autoencoder" and i.op != "cat"]
    assert ae[0] == _round(2_299_208 * 4) == 9_197_056
    first, second = ae[1:]
    assert first >= FIRST_BUCKET_BYTES and second < BUCKET_BYTES
    assert first + second - 1024 < 2_299_208 * 4 <= first + second  # each rounded up by < 512
    flat = {(i.op, b) for i, b in made if i.network == "discriminator" and i.op == "cat"}
    assert flat == {("cat", 3_584), ("cat", 512)}  # 3 BN x (mean + var) fp32 = (64+128+256)*2*4 = 3,584; 3 int64


# --- FSDP2 ---------------------------------------------------------------------------------------


def test_fsdp_pads_dim_0_to_the_world_size():
    """FSDPParam._init_sharded_param: torch.chunk on dim 0, every rank padded to the first chunk.
    The discriminator's first conv (32 x 1 x 4x4x4 fp32 = 8,192 B) shards to 8 x 64 x 4 = 2,048 B on
    4 ranks; its last conv has one output channel (1 x 256 x 4x4x4 = 65,536 B): one row cannot be
    split, so every rank holds a padded copy of all of it."""
    from planner.analytic.parallel import FSDP, wrap_networks
    from planner.analytic.simulate import _Ctx
    from planner.analytic.models import PatchDiscriminator

    setup = _stage1(4, "fsdp")
    ctx = _Ctx(setup)
    disc = ctx.register("discriminator", PatchDiscriminator(ctx.sim, setup))
    first, last = disc.parameters()[0], [p for p in disc.parameters() if len(p.shape) == 5][-1]
    assert first.shape == (32, 1, 4, 4, 4) and last.shape == (1, 256, 4, 4, 4)
    wrapped = wrap_networks(ctx.sim, {"discriminator": disc}, "fsdp", 4)["discriminator"]
    assert isinstance(wrapped, FSDP) and wrapped.blocks is None  # no repeated block: one unit
    unit = wrapped.units[0]
    shard = dict(zip(map(id, unit.params), unit.sharded))
    assert shard[id(first)].nbytes == 2_048 and shard[id(last)].nbytes == 65_536
    assert first.st.nbytes == last.st.nbytes == 0  # the whole parameters are not kept


@pytest.mark.parametrize("strategy", ["fsdp", "fsdp-grad-op"])
def test_fsdp_on_the_small_unet_equals_the_trace(strategy):
    from planner.measure.builtin_trace import run_step

    s = _stage2(2, strategy, gradient_accumulation_steps=2)
    assert estimate(s).peak_allocated_bytes == run_step(s, "fake", keep_timeline=False).tracker.peak_bytes


def test_fsdp_recomputation_in_backward_unshards_every_recomputed_unit():
    """MONAI's AutoencoderKL checkpoints its whole encoder and decoder: in backward the recomputation
    runs each ResBlock unit's forward again while its state is idle, so FSDP2 all-gathers it
    (FSDPState._pre_forward) and does not reshard it after (FSDPParamGroup.post_forward skips
    reshard under is_bw()): every decoder unit stays unsharded until its own post-backward. The
    transcription missed this once (3.55 MB short); now exact against the trace."""
    from planner.measure.builtin_trace import run_step

    from planner.measure.profile import breakdown_of

    s = _stage1(4, "fsdp", use_gradient_checkpointing=True)
    est, rec = estimate(s), run_step(s, "fake", keep_timeline=False)
    assert est.peak_allocated_bytes == rec.tracker.peak_bytes == 197_151_744
    # issue 23: and every byte on the same network: the sharded optimizer state (DTensors) and the
    # all-gather / reduce-scatter buffers of the autoencoder, the discriminator and the perceptual
    # network were filed under 'backward' in the trace (the phase's hint), not their network
    assert breakdown_of(rec).by_network == est.breakdown.by_network


def test_sharding_saves_state_not_activations():
    """Per rank, FSDP holds a 1/N share of parameters, gradients and optimizer state (plus
    padding and one unit's all-gathered copy); activations are untouched."""
    one, fsdp = _cats(simulate(_stage2())), _cats(simulate(_stage2(8, "fsdp")))
    assert fsdp["optimizer_state"] < one["optimizer_state"] / 4
    r1, r8 = simulate(_stage2()), simulate(_stage2(8, "fsdp"))
    assert r8.peak_bytes < r1.peak_bytes


# --- the commands ---------------------------------------------------------------------------------


def test_estimate_json_is_per_rank_with_the_layout_and_nccl():
    """NCCL's ring buffers, listed beside device_total: per channel one receive connection with a
    buffer per protocol, LL 8 lines x 512 threads x 8 steps x 16 B = 524,288 + LL128 120 x 640 x 8
    x 8 B = 4,915,200 + Simple 4 MiB = 4,194,304 -> 9,633,792 B, x 2 channels (assumed) = 19,267,584 B."""
    r = runner.invoke(app, ["estimate", "--voxel", "64x64x32", "--no-perceptual", "--gpus", "4", "--strategy", "fsdp",
                            "--gpu", "24GB", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    extra = data["extra"] if "extra" in data else data
    assert extra["gpus"] == 4 and extra["strategy"] == "fsdp" and extra["effective_batch"] == 4
    assert extra["layout"]["autoencoder"].startswith("sharded (FSDP2 fully_shard, ZeRO-3")
    assert "each AEKLResBlock (10)" in extra["layout"]["autoencoder"]
    nccl = [t for t in data["library_terms"]["terms"] if t["name"] == "NCCL ring buffers"]
    assert nccl and nccl[0]["bytes"] == 2 * (524_288 + 4_915_200 + 4_194_304) == 19_267_584
    assert not nccl[0]["calibrated"]
    text = runner.invoke(app, ["estimate", "--voxel", "64x64x32", "--no-perceptual", "--gpus", "4", "--strategy", "fsdp"])
    assert "4 GPUs fsdp, figures per rank (global batch 4)" in text.stdout
    assert "per rank: rank 0 of 4 (fsdp)" in text.stdout


def test_profile_per_rank_equals_estimate():
    args = ["--voxel", "64x64x32", "--no-perceptual", "--gpus", "2", "--strategy", "ddp", "--json"]
    p = json.loads(runner.invoke(app, ["profile", *args]).stdout)
    e = json.loads(runner.invoke(app, ["estimate", *args]).stdout)
    assert p["peak_allocated_bytes"] == e["peak_allocated_bytes"]
    assert p["setup"]["gpus"] == 2 and p["setup"]["layout"]["discriminator"].startswith("replicated (DDP)")


def test_per_rank_profile_on_a_gpu_is_refused_before_anything_runs():
    from planner.errors import PlannerError
    from planner.measure.builtin_trace import run_step

    with pytest.raises(PlannerError, match="--gpus: per-rank figures are traced on the fake"):
        run_step(_stage2(2, "ddp"), "cuda")


def test_table_sweeps_gpus_and_strategy_one_row_for_one_gpu():
    r = runner.invoke(app, ["table", "--voxel", "64x64x32", "--sweep", "gpus=1,2", "--sweep", "strategy=ddp,fsdp",
                            "--format", "json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [(x["gpus"], x["strategy"]) for x in rows] == [("1", "none"), ("2", "ddp"), ("2", "fsdp")]


def test_recommend_max_gpus_builtin():
    """Seed 004's 256x256x64 at global batch 4 on 80 GB cards: activation-bound, nothing fits up to 4
    GPUs and sharding saves only the state (docs/multi-gpu.md); a small volume fits one GPU."""
    r = runner.invoke(app, ["recommend", "--voxel", "256x256x64", "--batch", "4", "--max-gpus", "8", "--gpu", "80GB",
                            "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["answer"] is None and data["verdict"]["text"].startswith("more GPUs do not help: up to 4 GPUs")
    assert [(o["gpus"], o["strategy"]) for o in data["tried"]][:4] == [(1, "none")] * 3 + [(2, "ddp")]
    small = json.loads(runner.invoke(app, ["recommend", "--voxel", "64x64x32", "--batch", "2", "--max-gpus", "4",
                                           "--gpu", "24GB", "--json"]).stdout)
    assert small["answer"]["gpus"] == 1 and small["verdict"]["text"].startswith("one GPU suffices")


def test_plot_breakdown_per_rank(tmp_path):
    out = tmp_path / "b.png"
    r = runner.invoke(app, ["plot", "breakdown", "--voxel", "64x64x32", "--sweep", "gpus=1,2", "--strategy", "fsdp",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.stat().st_size > 10_000


def test_time_per_sample_counts_every_ranks_samples():
    """N ranks step at once on their own micro-batches: per sample, DDP on N GPUs is about the one-GPU
    roofline over N times the samples; less than N x faster because DDP's buckets and broadcasts
    add written bytes (on this tiny UNet, whose step writes little, 3.7x on 4 GPUs). Communication
    is not modelled, so this is the compute-only bound, and the table says so."""
    from planner.analytic.cost import seconds_per_sample
    from planner.gpus import parse_gpu

    gpu = parse_gpu("rtx4090")
    one, four = _stage2(), _stage2(4, "ddp")
    t1 = seconds_per_sample(one, estimate(one), gpu)
    t4 = seconds_per_sample(four, estimate(four), gpu)
    assert 3.5 < t1 / t4 < 4.0
    r = runner.invoke(app, ["table", "--voxel", "64x64x32", "--sweep", "gpus=1,2", "--strategy", "ddp"])
    assert "relative speed (est., no communication)" in r.stdout
