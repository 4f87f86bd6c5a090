"""Per-rank memory of a step file under DDP and FSDP2 (issue 13; planner/measure/distributed.py),
checked to the byte on a tiny model written here: torch.distributed's own
DistributedDataParallel and fully_shard run inside the trace under a fake process group, rank 0
of N traced. Every storage is counted as the CUDA caching allocator would: rounded up to its
512-byte block (``kMinBlockSize``).

The tiny network (as in tests/test_stepfile_knobs.py): ``depth`` residual ``Block``s
``x + fc2(relu(fc1(x)))`` (fc1: width -> hidden, fc2: hidden -> width) and a ``head`` Linear
(width -> width, or width -> classes with a cross-entropy loss); AdamW (foreach, as on CUDA);
fp32. Parameter order: blocks.0.fc1.weight, .fc1.bias, .fc2.weight, .fc2.bias, blocks.1...,
head.weight, head.bias.
"""

from __future__ import annotations

import json
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from planner.cli import app
from planner.measure.profile import breakdown_of
from planner.measure.stepfile import run
from planner.measure.tracker import category_of
from planner.step_setup import StepSetup

from tiny_step import TINY  # noqa: E402
from tiny_step import numel as _numel  # noqa: E402
from tiny_step import rounded as _round  # noqa: E402
from tiny_step import shapes as _shapes  # noqa: E402

BIG = (("hidden", 4096), ("width", 1024))  # 71 MB of parameters: three DDP buckets
TEN = (("classes", 10),)  # a head of 10 rows: FSDP pads it to a multiple of the world size

runner = CliRunner()


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VRAMPLAN_CACHE", str(tmp_path / "traces"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    p = Path(tmp_path_factory.mktemp("dist_steps")) / "tiny_dist.py"
    p.write_text(textwrap.dedent(TINY))
    return str(p)


def _run(path: str, **kw):
    return run(StepSetup(path, **kw))


def _peak_cats(record) -> Counter:
    c: Counter = Counter()
    for s in record.tracker.live_at_peak:
        c[category_of(s).value] += s.nbytes
    return c


def _live_at(record, when, key=lambda info: category_of(info).value) -> dict:
    """Bytes per category (or per ``key(info)``) live after the first mark of iteration 2 where
    ``when(op, phase, next_phase)`` holds (replaying the trace's alloc/free events up to that mark)."""
    marks = record.marks
    live: dict[int, int] = {}
    done = 0
    for i, (n, op, phase, step) in enumerate(marks):
        for uid, d in record.events[done:n]:
            if d > 0:
                live[uid] = d
            else:
                live.pop(uid, None)
        done = n
        nxt = marks[i + 1][2] if i + 1 < len(marks) else ""
        if step == "it2" and when(op, phase, nxt):
            c: Counter = Counter()
            for uid, d in live.items():
                c[key(record.info[uid])] += d
            return dict(c)
    raise AssertionError("no such point in iteration 2")


def _end_of_forward(record) -> dict[str, int]:
    return _live_at(record, lambda op, phase, nxt: phase == "forward" and nxt == "backward")


def _optimizer_start(record) -> dict[str, int]:
    """At the optimizer step's first op (a profiler marker: it allocates nothing): what the step
    holds once backward is over."""
    return _live_at(record, lambda op, phase, nxt: phase == "optimizer")


# --- DDP: exactly its buckets -----------------------------------------------------------------


def test_ddp_adds_exactly_its_gradient_buckets(tiny):
    """DistributedDataParallel with torch's defaults (gradient_as_bucket_view=False) keeps every
    gradient twice: in ``param.grad`` and in a flat bucket the allreduce reads and writes. Before
    the first backward there is one bucket (torch/nn/parallel/distributed.py
    ``_BucketCapacityConfig.compute_bucket_size_limits``: ``[sys.maxsize]`` when
    find_unused_parameters is False); before the second forward the C++ Reducer rebuilds them in
    gradient-ready order with the limits [first bucket ``dist._DEFAULT_FIRST_BUCKET_BYTES`` = 1 MiB,
    then ``bucket_cap_mb`` 25 MiB] (reducer.cpp ``Reducer::rebuild_buckets`` ->
    ``compute_bucket_assignment_by_size``: a bucket closes once its bytes reach its limit). Here the
    gradients become ready in reverse parameter order, bias before weight:

      bucket 0 (limit 1 MiB):  head.bias 1024*4 = 4,096 + head.weight 1024*1024*4 = 4,194,304
                               -> 4,198,400 >= 1,048,576, closed
      bucket 1 (limit 25 MiB): blocks.1 fc2.bias 4,096 + fc2.weight 16,777,216 + fc1.bias 16,384
                               + fc1.weight 16,777,216 -> 33,574,912 >= 26,214,400, closed
      bucket 2 (limit 25 MiB): blocks.0, the same 33,574,912

    Each bucket is one fp32 storage (all multiples of 512). At the peak (AdamW's foreach step, as
    on one GPU) the buckets are the only difference."""
    import torch
    import torch.distributed as dist

    shapes = _shapes(width=1024, hidden=4096)
    buckets = [4_096 + 4_194_304, 4_096 + 16_777_216 + 16_384 + 16_777_216, 33_574_912]
    assert buckets == [4_198_400, 33_574_912, 33_574_912]
    assert sum(buckets) == sum(_numel(s) * 4 for s in shapes) == 71_348_224
    # torch's own assignment of those tensors (reverse order) agrees
    ready = [torch.empty(s, device="meta") for s in reversed(shapes)]
    assignment, limits = dist._compute_bucket_assignment_by_size(ready, [dist._DEFAULT_FIRST_BUCKET_BYTES, 25 * 2**20])
    assert dist._DEFAULT_FIRST_BUCKET_BYTES == 2**20
    assert [sum(_numel(tuple(ready[i].shape)) * 4 for i in b) for b in assignment] == buckets

    one = _run(tiny, knobs=BIG)
    ddp = _run(tiny, knobs=BIG, gpus=2, strategy="ddp")
    assert one.tracker.peak_op == ddp.tracker.peak_op == "_foreach_sqrt"
    comm = sorted(s.nbytes for s in ddp.tracker.live_at_peak if category_of(s).value == "communication")
    assert comm == sorted(buckets)
    c1, c2 = _peak_cats(one), _peak_cats(ddp)
    assert c2["communication"] == 71_348_224
    assert {k: v for k, v in c2.items() if k != "communication"} == dict(c1)  # replicated: the rest as on one GPU
    assert ddp.tracker.peak_bytes - one.tracker.peak_bytes == 71_348_224
    # DDP replicates: 4 ranks hold what 2 hold
    assert _run(tiny, knobs=BIG, gpus=4, strategy="ddp").tracker.peak_bytes == ddp.tracker.peak_bytes
    assert ddp.setup["layout"]["net"].startswith("replicated (DDP)")
    assert ddp.setup["effective_batch"] == 64 * 2


# --- FSDP2: sharded parameters, gradients and optimizer state ----------------------------------


def _sharded(world: int, **kw) -> list[int]:
    """Each parameter's bytes on one rank: fully_shard chunks dim 0 into ``world`` pieces and pads
    every rank's piece to the first chunk's rows, ceil(dim0 / world)
    (torch/distributed/fsdp/_fully_shard/_fsdp_param.py ``FSDPParam._init_sharded_param``:
    ``torch.chunk`` then ``new_zeros(chunks[0].size())``); one storage per parameter."""
    out = []
    for shape in _shapes(**kw):
        rows = -(-shape[0] // world)
        out.append(_round(rows * _numel(shape[1:]) * 4))
    return out


def _unit_grads(world: int, **kw) -> int:
    """The sharded gradients: one reduce-scatter output per FSDP unit (each Block, then the root
    with the head), the parameters' padded shards back to back
    (torch/distributed/fsdp/_fully_shard/_fsdp_collectives.py ``foreach_reduce``: the sharded
    grads are ``as_strided`` views of ``reduce_output``)."""
    shapes = _shapes(**kw)
    block, head = shapes[:4], shapes[8:]

    def flat(group):
        return _round(sum(-(-s[0] // world) * _numel(s[1:]) * 4 for s in group))
    return 2 * flat(block) + flat(head)


@pytest.mark.parametrize("world", [2, 4])
def test_fsdp_shards_parameters_gradients_and_adamw_state(tiny, world):
    """fully_shard on each Block, then on the network (ZeRO-3). Per rank, derived by hand with
    classes=10 (a 10-row head, padded):

      world 2: fc1.weight 256x128x4 = 131,072; fc1.bias 256x4 = 1,024; fc2.weight 64x512x4 = 131,072;
               fc2.bias 64x4 = 256 -> 512; two blocks 527,360; head.weight 5x128x4 = 2,560;
               head.bias 5x4 = 20 -> 512: 530,432
      world 4: 65,536 + 512 + 65,536 + 128 -> 512, two blocks 264,192; head.weight ceil(10/4) = 3
               rows (not 2.5) x128x4 = 1,536; head.bias 12 -> 512: 266,240

    AdamW's exp_avg and exp_avg_sq have the shards' shapes: twice that. The gradients at the
    step are the reduce-scatter outputs, one per unit: world 2: blocks 65,856 floats = 263,424 ->
    263,680 each, root 645 floats = 2,580 -> 3,072: 530,432; world 4: 32,928 floats = 131,712 ->
    132,096 each, root 387 floats = 1,548 -> 2,048: 266,240 (the same totals as the parameter
    shards here, by the rounding). Activations are not sharded: the same bytes as on one GPU at
    the same per-rank batch."""
    one = _run(tiny, knobs=TEN)
    rec = _run(tiny, knobs=TEN, gpus=world, strategy="fsdp")
    shards = _sharded(world, classes=10)
    sharded = {2: 530_432, 4: 266_240}[world]
    assert sum(shards) == sharded
    assert shards[8] == {2: 2_560, 4: 1_536}[world]  # the padded head
    grads = _unit_grads(world, classes=10)
    assert grads == {2: 530_432, 4: 266_240}[world]

    full = sum(_round(_numel(s) * 4) for s in _shapes(classes=10))
    assert full == 1_059_328
    assert _optimizer_start(one) == {"parameters": full, "gradients": full, "optimizer_state": 2 * full,
                                     "activations": 36_352}
    # x 64x128x4 = 32,768, y 64 int64 -> 512, the step's logits 64x10x4 = 2,560, the loss 512
    assert 32_768 + 512 + 2_560 + 512 == 36_352
    # after backward: every unsharded parameter and gradient freed, every buffer freed
    assert _optimizer_start(rec) == {"parameters": sharded, "gradients": grads, "optimizer_state": 2 * sharded,
                                     "activations": 36_352}

    # activations at the end of forward: x, y, per block relu's output 64x512x4 = 131,072 and the
    # block's output 32,768, the logits and log_softmax's output (2,560 each), the loss and
    # nll_loss's total_weight (512 each); with FSDP only the (sharded) parameters differ
    acts = 32_768 + 512 + 2 * (131_072 + 32_768) + 2 * 2_560 + 512 + 512
    assert acts == 367_104
    assert _end_of_forward(one) == {"parameters": full, "optimizer_state": 2 * full, "activations": acts}
    assert _end_of_forward(rec) == {"parameters": sharded, "optimizer_state": 2 * sharded, "activations": acts}
    assert rec.tracker.peak_bytes < one.tracker.peak_bytes
    assert rec.setup["layout"]["net"].startswith("sharded (FSDP2 fully_shard, ZeRO-3")
    assert rec.setup["effective_batch"] == 64 * world


@pytest.mark.parametrize("gpus, strategy", [(4, "fsdp"), (2, "ddp")])
def test_sharded_state_is_filed_under_its_network(tiny, gpus, strategy):
    """Issue 23: FSDP's optimizer state is DTensors; it was filed under the network 'losses' (the
    hint for ops outside any module) because the network was looked up by the DTensor's global
    storage, not its local shard's. At the optimizer step's start (world 4, classes=10, derived in
    test_fsdp_shards_parameters_gradients_and_adamw_state): parameters 266,240, gradients 266,240,
    AdamW state 2 x 266,240 = 532,480 B, all on 'net'; DDP's are the full 1,059,328 B each."""
    rec = _run(tiny, knobs=TEN, gpus=gpus, strategy=strategy)
    at = _live_at(rec, lambda op, phase, nxt: phase == "optimizer", key=lambda i: (category_of(i).value, i.network))
    per = {4: 266_240, 2: 1_059_328}[gpus]
    # DDP also keeps its one gradient bucket (all 1,059,328 B of gradients, under the 25 MiB cap)
    bucket = {("communication", "net"): per} if strategy == "ddp" else {}
    assert {k: v for k, v in at.items() if k[0] != "activations"} == {
        ("parameters", "net"): per, ("gradients", "net"): per, ("optimizer_state", "net"): 2 * per, **bucket}
    # every storage the step tagged as state is the network's, never the losses'
    assert {i.network for i in rec.info.values() if category_of(i).value in ("parameters", "gradients",
                                                                             "optimizer_state")} == {"net"}
    # at the peak 'losses' is the loss alone (a 0-dim fp32 tensor: one 512-B block; was 532,992 B
    # under fsdp: the AdamW state with it), 'data' is x 64x128x4 = 32,768 and y 64 int64 -> 512
    peak = breakdown_of(rec)
    assert peak.by_network["losses"] == 512 and peak.by_network["data"] == 33_280
    assert sum(peak.by_network.values()) == sum(peak.by_category.values())


def test_fsdp_peak_holds_one_block_gathered_and_its_buffers(tiny):
    """The ZeRO-3 peak on 2 ranks, derived: the second block's backward has begun re-gathering
    block 0 (FSDP2 prefetches the next unit in backward, _fsdp_param_group.py
    ``FSDPParamGroup._backward_prefetch``) while block 1's reduce-scatter input is still held
    (``comm_ctx.reduce_scatter_state``, freed at the next reduce-scatter):

      parameters      530,432 shards + block 0 unsharded (its own parameter storages: 262,144 +
                      2,048 + 262,144 + 512 = 526,848) + the root's head unsharded (5,120 + 512)
      optimizer_state 2 x 530,432
      communication   block 0's all-gather output 131,712 x 4 = 526,848 (freed after the copy-out)
                      + block 1's reduce-scatter input, 526,848
      gradients       block 1's reduce-scatter output 263,680 + the head's unsharded gradients
                      (5,120 + 512)"""
    rec = _run(tiny, knobs=TEN, gpus=2, strategy="fsdp")
    c = _peak_cats(rec)
    assert rec.tracker.peak_phase == "backward"
    assert c["parameters"] == 530_432 + 526_848 + 5_632
    assert c["optimizer_state"] == 2 * 530_432
    assert c["communication"] == 2 * 526_848
    assert c["gradients"] == 263_680 + 5_632


def test_fsdp_grad_op_keeps_unsharded_parameters_from_forward_to_backward(tiny):
    """reshard_after_forward=False (~ZeRO-2): at the end of forward every unit's unsharded
    parameters are still allocated (each parameter's full storage, 1,059,328 in all) beside the
    shards; with ZeRO-3 only the shards are. Its peak is at least ZeRO-3's."""
    zero3 = _run(tiny, knobs=TEN, gpus=2, strategy="fsdp")
    zero2 = _run(tiny, knobs=TEN, gpus=2, strategy="fsdp-grad-op")
    full = 1_059_328
    assert _end_of_forward(zero3)["parameters"] == 530_432
    assert _end_of_forward(zero2)["parameters"] == 530_432 + full
    assert _end_of_forward(zero2)["activations"] == _end_of_forward(zero3)["activations"]
    assert zero2.tracker.peak_bytes >= zero3.tracker.peak_bytes
    assert _optimizer_start(zero2) == _optimizer_start(zero3)  # resharded after backward either way
    assert "no reshard after forward" in zero2.setup["layout"]["net"]


def test_frozen_network_stays_replicated(tiny, tmp_path):
    """A network without trainable parameters (a perceptual net, an EMA copy) is not wrapped."""
    text = textwrap.dedent(TINY).replace(
        'return {"net": Net(width, hidden, depth, classes)}',
        'return {"net": Net(width, hidden, depth, classes), "frozen": Net(width, hidden, 1, 0).requires_grad_(False)}')
    p = tmp_path / "with_frozen.py"
    p.write_text(text)
    for strategy in ("ddp", "fsdp"):
        rec = _run(str(p), gpus=2, strategy=strategy)
        assert rec.setup["layout"]["frozen"] == "replicated (frozen: not wrapped)"


BATCHNORM = '''
import torch
import torch.nn as nn
import torch.nn.functional as F


def networks(width: int = 64):
    return {"net": nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                 nn.Conv2d(width, 3, 3, padding=1))}


def optimizers(nets):
    return {"net": torch.optim.SGD(nets["net"].parameters(), lr=1e-3, momentum=0.9)}


def batch(batch_size: int = 8):
    return torch.randn(batch_size, 3, 32, 32, device="cuda")


def step(nets, opts, x, vp):
    vp.zero_grad(opts["net"])
    with vp.autocast():
        loss = F.mse_loss(nets["net"](x), x)
    vp.backward(loss, opts["net"])
    vp.step(opts["net"])
'''


def test_ddp_buffer_broadcast_leaves_the_buffers_parameters(tmp_path):
    """BatchNorm's buffers: DDP broadcasts them before each forward (broadcast_buffers=True) through
    a flat copy, which is communication; the buffers themselves stay parameters. The one bucket:
    conv 64x3x3x3 + 64, BN 64 + 64, conv 3x64x3x3 + 3 = 3,651 floats = 14,604 -> 14,848."""
    p = tmp_path / "bn.py"
    p.write_text(BATCHNORM)
    one = _run(str(p))
    ddp = _run(str(p), gpus=2, strategy="ddp")
    c1, c2 = _peak_cats(one), _peak_cats(ddp)
    assert c2["parameters"] == c1["parameters"]
    assert c2["communication"] == 14_848 == _round((64 * 27 + 64 + 64 + 64 + 3 * 64 * 9 + 3) * 4)
    assert ddp.tracker.peak_bytes - one.tracker.peak_bytes == 14_848
    flat = [i for i in ddp.info.values() if i.op == "cat" and i.category is not None]
    assert [i.category.value for i in flat] == ["communication", "communication"]  # one per forward


def test_a_method_other_than_forward_is_one_line_with_the_reason(tmp_path):
    """DDP wraps forward() only (a DDP script calls model.module.method()); under FSDP the
    parameters outside forward() are sharded DTensors."""
    from planner.errors import PlannerError

    text = textwrap.dedent(TINY).replace(
        "    def forward(self, x):\n        return self.head(self.blocks(x))",
        "    def forward(self, x):\n        return self.head(self.blocks(x))\n\n"
        "    def embed(self, x):\n        return self.head(self.blocks(x))").replace(
        'out = nets["net"](b["x"])', 'out = nets["net"].embed(b["x"])')
    p = tmp_path / "method.py"
    p.write_text(text)
    assert _run(str(p)).tracker.peak_bytes == 5_729_792  # one GPU: as tests/test_stepfile_knobs.py's baseline
    with pytest.raises(PlannerError, match=r"no attribute 'embed'.*; DDP runs forward\(\) only"):
        _run(str(p), gpus=2, strategy="ddp")
    with pytest.raises(PlannerError, match=r"DTensor.*; under fsdp the trained parameters are sharded DTensors"):
        _run(str(p), gpus=2, strategy="fsdp")


def test_derived_batch_sizes_match_direct_traces_under_fsdp(tiny):
    """Batch derivation (traces at 2, 3, 4) holds for a sharded step too."""
    from dataclasses import replace

    from planner.measure import traces

    s = StepSetup(tiny, gpus=2, strategy="fsdp", knobs=TEN)
    d = traces.derivation_for(s, jobs=1)
    assert d is not None
    for b in (5, 9):
        direct = traces.trace(replace(s, batch_size=b), use_cache=False)
        assert d.record_at(b).tracker.peak_bytes == direct.tracker.peak_bytes
    assert d.record_at(5).setup["effective_batch"] == 10


@pytest.mark.parametrize("gpus,strategy", [(2, "ddp"), (2, "fsdp"), (4, "fsdp-grad-op")])
def test_fake_trace_equals_real_cpu_run(tiny, gpus, strategy):
    """The same step on real CPU tensors (the fake group's collectives are no-ops either way;
    DDP's bucket rebuild runs on real index tensors): the fake trace's patches change nothing."""
    fake = _run(tiny, knobs=TEN, gpus=gpus, strategy=strategy)
    real = run(StepSetup(tiny, knobs=TEN, gpus=gpus, strategy=strategy), "cpu")
    assert fake.tracker.peak_bytes == real.tracker.peak_bytes
    assert fake.tracker.peak_op == real.tracker.peak_op
    assert _peak_cats(fake) == _peak_cats(real)


# --- the commands -----------------------------------------------------------------------------


def test_estimate_json_per_rank(tiny):
    r = runner.invoke(app, ["estimate", "--step", tiny, "--gpus", "2", "--strategy", "ddp", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["step_setup"]["gpus"] == 2 and data["step_setup"]["strategy"] == "ddp"
    assert data["setup"]["effective_batch"] == 128 and data["setup"]["batch_size"] == 64
    assert data["breakdown"]["by_category"]["communication"] == 1_119_744  # one bucket: 279,936 floats
    # NCCL's buffers: outside the trace, given as planner/workspaces.py nccl_term (2 channels x 9,633,792 B)
    assert any("NCCL" in n and "not in these figures" in n and "18.38 MiB" in n and "9,633,792" in n
               for n in data["notes"])
    r1 = runner.invoke(app, ["estimate", "--step", tiny, "--json"])
    assert r1.exit_code == 0, r1.output
    one = json.loads(r1.stdout)
    assert "communication" not in one["breakdown"]["by_category"]
    assert data["peak_allocated_bytes"] - one["peak_allocated_bytes"] == 1_119_744


def test_table_sweeps_gpus_with_a_strategy(tiny):
    r = runner.invoke(app, ["table", "--step", tiny, "--sweep", "gpus=1,2", "--strategy", "fsdp", "--jobs", "1"])
    assert r.exit_code == 0, r.output
    rows = [line for line in r.stdout.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    assert len(rows) == 2
    assert "FSDP (ZeRO-3), per rank" in rows[1] and "GPUs" not in rows[0]
    assert "communication (GiB)" in r.stdout


@pytest.mark.parametrize("args,needle", [
    (["profile", "--strategy", "fsdp"], "parallel.gpus (--gpus): strategy fsdp needs 2 or more GPUs"),
    (["recommend", "--gpus", "4"], "parallel.strategy (--strategy): 4 GPUs need ddp, fsdp or fsdp-grad-op"),
    (["table", "--sweep", "gpus=1,2"], "--sweep gpus=2: parallel.strategy (--strategy): 2 GPUs need ddp"),
    (["estimate", "--strategy", "ddp"], "parallel.gpus (--gpus): strategy ddp needs 2 or more GPUs"),
    (["estimate", "--gpus", "2", "--strategy", "zero3"], "parallel.strategy (--strategy): got 'zero3'"),
    (["profile", "--gpus", "2", "--strategy", "ddp", "--backend", "cuda"], "--backend: cuda"),
    (["estimate", "--step", "{tiny}", "--gpus", "2"], "give --strategy ddp|fsdp|fsdp-grad-op"),
    (["estimate", "--step", "{tiny}", "--strategy", "ddp"], "--strategy ddp: needs --gpus 2 or more"),
    (["estimate", "--step", "{tiny}", "--gpus", "2", "--strategy", "zero3"], "valid: ddp, fsdp, fsdp-grad-op"),
    (["profile", "--step", "{tiny}", "--gpus", "0", "--strategy", "ddp"], "--gpus: must be an integer in 1..4096"),
    (["table", "--step", "{tiny}", "--gpus", "2", "--sweep", "strategy=ddp,zero"], "--sweep strategy: got 'zero', valid: ddp"),
    (["recommend", "--step", "{tiny}", "--gpus", "2", "--strategy", "zero", "--gpu", "8GB"], "valid: ddp, fsdp, fsdp-grad-op"),
])
def test_bad_parallel_flags_are_one_line_exit_2(tiny, args, needle):
    r = runner.invoke(app, [a.replace("{tiny}", tiny) for a in args])
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output


def test_a_missing_torch_internal_is_one_line(monkeypatch):
    """A torch release that moves an internal the per-rank trace wraps: one line naming it."""
    from torch.distributed.fsdp._fully_shard import _fsdp_param

    from planner.errors import PlannerError
    from planner.measure.distributed import check_internals

    for strategy in ("ddp", "fsdp", "fsdp-grad-op"):
        check_internals(strategy)  # torch 2.13 has them all
    monkeypatch.delattr(_fsdp_param, "alloc_storage")
    with pytest.raises(PlannerError, match=r"--strategy fsdp: this torch \(.*\) has no "
                                           r"torch.distributed.fsdp._fully_shard._fsdp_param.alloc_storage"):
        check_internals("fsdp")
