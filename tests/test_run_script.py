"""``vramplan run -- python train.py`` (issue 22): an unchanged training script traced with CUDA
emulated (planner/measure/script_run.py). Tiny scripts written to tmp_path, traced in-process
(``script_run.trace``) where the figure is the point; the CLI (its worker process) where the exit
code or stdout is."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from planner.cli import app
from planner.errors import PlannerError
from planner.measure import isolate
from planner.script_setup import ScriptSetup, parse_command

torch = pytest.importorskip("torch")
from planner.measure.script_run import trace  # noqa: E402

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]

# a Linear(256, 256, bias=False) trained with Adam on 8 x 256 batches from a real DataLoader
TRAIN = '''
import json, sys
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

OUT = sys.argv[1]
log = {"batches": [], "val_batches": []}
model = nn.Linear(256, 256, bias=False).cuda()
opt = torch.optim.Adam(model.parameters())
loader = DataLoader(TensorDataset(torch.randn(64, 256)), batch_size=8, shuffle=True, num_workers=2, pin_memory=True)
val = DataLoader(TensorDataset(torch.randn(16, 256)), batch_size=4)
'''


def _script(tmp_path: Path, body: str, name: str = "train.py") -> Path:
    p = tmp_path / name
    p.write_text(TRAIN + textwrap.dedent(body))
    return p


def _trace(path: Path, *args: str, **kw) -> object:
    return trace(ScriptSetup(argv=(str(path), str(path.parent / "log.json"), *args), **kw))


def _log(path: Path) -> dict:
    return json.loads((path.parent / "log.json").read_text())


def test_cuda_queries_answer_from_the_trace(tmp_path: Path) -> None:
    p = _script(tmp_path, '''
        props = torch.cuda.get_device_properties(0)
        x = torch.zeros(1000, device="cuda")
        host = torch.randn(100_000) * 2  # host memory on a GPU too: not counted
        d = torch.zeros(1000, device=x.device)  # on x's device: counted
        log["now"] = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        y = torch.ones(2000, device="cuda"); del y
        log["peak"] = torch.cuda.max_memory_allocated()
        log.update(available=torch.cuda.is_available(), name=torch.cuda.get_device_name(0), total=props.total_memory,
                   bf16=torch.cuda.is_bf16_supported(), summary=torch.cuda.memory_summary(), device=str(x.device))
        torch.cuda.synchronize(); torch.cuda.empty_cache()
        json.dump(log, open(OUT, "w"))
        for (b,) in loader:
            opt.zero_grad(); model(b.cuda()).sum().backward(); opt.step()
    ''')
    r = _trace(p, gpu_name="NVIDIA GeForce RTX 4090", gpu_total=25_393_692_672, gpu_capability=(8, 9))
    log = _log(p)
    # the Linear weight (256*256*4 = 262,144 B) is live, then x and d, 1000 floats each: 4,000 B -> 4,096 B (512-B
    # blocks); `host` (400,000 B) is not device memory
    assert log["now"] == 262_144 + 2 * 4_096
    # reset at 270,336 B, then 2000 floats (8,000 B -> 8,192 B) on top before they are freed
    assert log["peak"] == 270_336 + 8_192
    assert log["available"] is True and log["bf16"] is True
    assert (log["name"], log["total"]) == ("NVIDIA GeForce RTX 4090", 25_393_692_672)
    assert "allocated now: 270,336 B" in log["summary"]
    assert any("empty_cache() at" in n and "train.py:" in n for n in r.notes)
    assert any("num_workers=2 run as 0" in n for n in r.notes)


def test_stops_after_the_given_optimizer_steps(tmp_path: Path) -> None:
    p = _script(tmp_path, '''
        n = 0
        while True:  # an endless loop: vramplan stops it
            for (b,) in loader:
                opt.zero_grad()
                model(b.cuda()).pow(2).mean().backward()
                n += 1
                log["calls"] = n
                json.dump(log, open(OUT, "w"))
                opt.step()
    ''')
    r = _trace(p, steps=3)
    assert r.steps == 3 and _log(p)["calls"] == 3
    assert [s.label for s in r.segments] == ["step 1", "step 2", "step 3"]
    # params 262,144 + grads 262,144 + Adam exp_avg, exp_avg_sq 2 x 262,144 are all live at the peak
    assert r.record.tracker.peak_bytes >= 4 * 262_144


def test_validation_pass_is_measured_and_in_the_overall_peak(tmp_path: Path) -> None:
    p = _script(tmp_path, '''
        for (b,) in loader:
            opt.zero_grad(); model(b.cuda()).pow(2).mean().backward(); opt.step()
            model.eval()
            with torch.no_grad():
                big = torch.randn(4096, 256, device="cuda")
                out = model(big)
                log["score"] = out.mean().item()  # a stand-in value
                del big, out  # else they stay alive into the next step, as on a GPU
            model.train()
    ''')
    r = _trace(p, steps=2)
    parts = {s.label: s.peak_bytes for s in r.segments}
    assert list(parts) == ["step 1", "evaluation after step 1", "step 2"]
    # at the evaluation peak: weight, grad, exp_avg, exp_avg_sq (4 x 262,144 B) + big and out (2 x 4096*256*4 =
    # 2 x 4,194,304 B) = 9,437,184 B, plus what the training step left alive (the 8 x 256 batch, 8,192 B, its
    # output and loss): under 64 KiB more
    evaluation = parts["evaluation after step 1"]
    assert 9_437_184 <= evaluation < 9_437_184 + 65_536
    assert r.record.tracker.peak_bytes == evaluation > parts["step 2"]
    assert r.record.tracker.peak_step == "evaluation after step 1"
    assert any("stand-in" in n and "train.py" in n for n in r.record.tracker.notes)


DTYPES = '''
    for (b,) in loader:
        opt.zero_grad()
        {enter}
            out = model(b.cuda())
        log["dtype"] = str(out.dtype)
        json.dump(log, open(OUT, "w"))
        out.float().pow(2).mean().backward(); opt.step()
'''


@pytest.mark.parametrize("own, precision, expected", [
    ("torch.autocast('cuda', dtype=torch.float16)", None, "torch.float16"),  # the script's own
    ("torch.autocast('cuda', dtype=torch.float16)", "amp-bf16", "torch.bfloat16"),  # its dtype replaced
    ("torch.cuda.amp.autocast()", "fp32", "torch.float32"),  # its region disabled
    ("torch.enable_grad()", "amp-bf16", "torch.bfloat16"),  # no autocast: added around forward
])
def test_precision_from_outside(tmp_path: Path, own: str, precision: str | None, expected: str) -> None:
    p = _script(tmp_path, DTYPES.replace("{enter}", f"with {own}:"))
    r = _trace(p, steps=1, precision=precision)
    assert _log(p)["dtype"] == expected
    if precision == "amp-bf16" and "enable_grad" in own:
        assert any("autocast (bfloat16) entered around each network's forward" in n for n in r.notes)


def test_grad_scaler_emulated_and_disabled_by_fp32(tmp_path: Path) -> None:
    body = '''
        scaler = torch.cuda.amp.GradScaler()
        for (b,) in loader:
            opt.zero_grad()
            with torch.autocast("cuda"):
                loss = model(b.cuda()).float().pow(2).mean()
            scaled = scaler.scale(loss)
            log["scaled_is_loss"] = scaled is loss
            json.dump(log, open(OUT, "w"))
            scaled.backward(); scaler.unscale_(opt); scaler.step(opt); scaler.update()
    '''
    p = _script(tmp_path, body)
    r = _trace(p, steps=2)
    assert r.steps == 2 and _log(p)["scaled_is_loss"] is False  # torch's own would skip the step (found_inf stand-in)
    r32 = _trace(p, steps=2, precision="fp32")
    assert _log(p)["scaled_is_loss"] is True and any("GradScaler disabled" in n for n in r32.notes)


CKPT = '''
class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(256, 1024), torch.nn.Linear(1024, 256)
    def forward(self, x):
        return x + self.b(torch.relu(self.a(x)))

net = torch.nn.Sequential(*[Block() for _ in range(4)]).cuda()
opt2 = torch.optim.SGD(net.parameters(), lr=0.1)
for (b,) in loader:
    opt2.zero_grad(); net(b.cuda().repeat(512, 1)).pow(2).mean().backward(); opt2.step()
'''


def test_checkpoint_named_classes(tmp_path: Path) -> None:
    p = _script(tmp_path, CKPT)
    plain = _trace(p, steps=1).record.tracker.peak_bytes
    ckpt = _trace(p, steps=1, checkpoint=("Block",))
    # without checkpointing each block keeps relu(a(x)) for backward (ReLU saves its output, b its input: the same
    # tensor; a(x) itself is freed): 4096 x 1024 x 4 B = 16 MiB per block, 4 blocks. Checkpointed, the blocks keep
    # only their inputs (kept either way: the residual sums) and one block's 16 MiB is recomputed at a time during
    # backward: 3 x 16 MiB = 50,331,648 B less
    assert plain - ckpt.record.tracker.peak_bytes == 3 * 16 * 2**20
    with pytest.raises(PlannerError, match="no module of class 'Nope'.*repeated blocks: Block"):
        _trace(p, steps=1, checkpoint=("Nope",))


def test_batch_sets_the_training_loader_only(tmp_path: Path) -> None:
    p = _script(tmp_path, '''
        for (b,) in loader:
            log["batches"].append(b.shape[0])
            log["val_batches"] = [v.shape[0] for (v,) in val]
            json.dump(log, open(OUT, "w"))
            opt.zero_grad(); model(b.cuda()).pow(2).mean().backward(); opt.step()
    ''')
    r = _trace(p, steps=1, batch=16)
    assert _log(p)["batches"] == [16] and _log(p)["val_batches"] == [4, 4, 4, 4]
    assert any("--batch 16: DataLoader at" in n and "8 -> 16" in n for n in r.notes)


@pytest.mark.parametrize("body, message", [
    ("print('no training here')", r"ran to its end \(.*train.py\) after 0 optimizer steps"),
    ("import sys\nsys.exit(3)", r"called sys.exit\(3\) at .*train.py:\d+ in <module>\(\) after 0 optimizer steps"),
    ("import flash_attn_not_installed", r"imports flash_attn_not_installed .*train.py:\d+"),
    ("raise ValueError('bad config')", r"raised ValueError: bad config \(.*train.py:\d+\) after 0"),
])
def test_a_script_that_ends_early_says_where(tmp_path: Path, body: str, message: str) -> None:
    p = _script(tmp_path, body)
    with pytest.raises(isolate.UserCodeEnded, match=message) as info:
        _trace(p)
    assert info.value.exit_code == isolate.EXIT_ENDED


def test_bad_input_is_one_line() -> None:
    with pytest.raises(PlannerError, match="--precision: 'fp16-master' cannot be applied"):
        ScriptSetup(argv=("x.py",), precision="fp16-master")
    with pytest.raises(PlannerError, match="'accelerate' launches are not traced"):
        parse_command(["accelerate", "launch", "train.py"])
    with pytest.raises(PlannerError, match="no such script 'missing.py'"):
        parse_command(["python", "missing.py"])
    assert parse_command(["python", "-m", "pkg.train", "--lr", "1"]) == ("-m", "pkg.train", "--lr", "1")
    r = runner.invoke(app, ["run", "--accum", "4", "--", "python", "x.py"])
    assert r.exit_code == 2 and "cannot be applied from outside" in r.stderr


def test_cli_json_stays_clean_and_timeout_names_the_line(tmp_path: Path) -> None:
    p = _script(tmp_path, '''
        for (b,) in loader:
            print("the script prints")
            opt.zero_grad(); model(b.cuda()).pow(2).mean().backward(); opt.step()
    ''')
    r = runner.invoke(app, ["run", "--alloc-conf", "max_split_size_mb:bogus", "--", "python", str(p), "x"])
    assert r.exit_code == 2 and "max_split_size_mb" in r.stderr  # refused before the script runs
    r = runner.invoke(app, ["run", "--json", "--gpu", "24GB", "--alloc-conf", "expandable_segments:True", "--",
                            "python", str(p), str(tmp_path / "log.json")])
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)  # the script's print went to stderr
    assert data["alloc_conf"] == "expandable_segments:True"  # the allocator model's settings
    assert data["fits"] is True and data["run"]["optimizer_steps"] == 2
    assert [s["label"] for s in data["run"]["parts"]] == ["step 1", "step 2"]
    assert data["peak_allocated_bytes"] == max(s["peak_allocated_bytes"] for s in data["run"]["parts"])
    hang = tmp_path / "hang.py"
    hang.write_text("import torch\nwhile True:\n    pass\n")
    r = runner.invoke(app, ["run", "--timeout", "2", "--", "python", str(hang)])
    assert r.exit_code == isolate.EXIT_TIMEOUT
    assert "hang.py:2" in r.stderr or "hang.py:3" in r.stderr


SDPA = '''
attn = torch.nn.MultiheadAttention(64, 4, batch_first=True).cuda()
opt3 = torch.optim.SGD(attn.parameters(), lr=0.1)
for (b,) in loader:
    x = b.cuda().reshape(1, 32, 64).repeat(1, 32, 1)  # 1 x 1024 tokens x 64
    opt3.zero_grad(); attn(x, x, x, need_weights=False)[0].pow(2).mean().backward(); opt3.step()
'''


def test_sdpa_backend_from_outside(tmp_path: Path) -> None:
    p = _script(tmp_path, SDPA)
    auto = _trace(p, steps=1).record.tracker.peak_bytes
    math = _trace(p, steps=1, sdpa="math").record.tracker.peak_bytes
    # fp32 4 heads x 1024 x 64: CUDA's choice is the memory-efficient kernel (no score matrix); the math kernel keeps
    # the 4 x 1024 x 1024 fp32 attention weights for backward: 16 MiB, and its softmax input beside them while it runs
    assert math - auto >= 16 * 2**20


def test_module_form_and_compile_run_eagerly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    _script(pkg, '''
        model = torch.compile(model)
        for (b,) in loader:
            opt.zero_grad(); model(b.cuda()).pow(2).mean().backward(); opt.step()
    ''')
    monkeypatch.chdir(tmp_path)
    r = trace(ScriptSetup(argv=("-m", "pkg.train", str(tmp_path / "log.json")), steps=1))
    assert r.steps == 1 and list(r.networks) == ["Linear"]
    assert any("torch.compile at" in n and "runs eagerly" in n for n in r.notes)


def test_empty_cache_is_replayed_by_the_allocator_model(tmp_path: Path) -> None:
    from planner.allocator import EMPTY_CACHE, parse_alloc_conf, replay
    from planner.measure.profile import report_from

    mib = 2**20
    # a 30 MiB request gets a 30 MiB segment (>= 10 MiB: rounded to 2 MiB); freed, it stays cached and cannot serve
    # 40 MiB: reserved 30 + 40 = 70 MiB. empty_cache() in between releases it: a 40 MiB peak.
    events = [(1, 30 * mib), (1, -30 * mib), (EMPTY_CACHE, 0), (2, 40 * mib)]
    kept = [e for e in events if e[0] != EMPTY_CACHE]
    assert replay(events).peak_reserved_bytes == 40 * mib and replay(kept).peak_reserved_bytes == 70 * mib
    split = parse_alloc_conf("max_split_size_mb:512")
    assert replay(events, 0, split).peak_reserved_bytes == 40 * mib
    expandable = parse_alloc_conf("expandable_segments:True")  # not modelled there: the cache is kept
    assert replay(events, 0, expandable).peak_reserved_bytes == replay(kept, 0, expandable).peak_reserved_bytes
    body = '''
        x = torch.empty(30 * 2**20, dtype=torch.uint8, device="cuda"); del x
        {call}
        y = torch.empty(40 * 2**20, dtype=torch.uint8, device="cuda")
        for (b,) in loader:
            opt.zero_grad(); model(b.cuda()).pow(2).mean().backward(); opt.step()
    '''
    reserved = {}
    for call in ("torch.cuda.empty_cache()", "pass"):
        p = _script(tmp_path, body.replace("{call}", call))
        reserved[call] = report_from(_trace(p, steps=1).record, "fake", "", 0.0).peak_reserved_bytes
    # the training step's small tensors (< 1 MiB each) use the small pool either way
    assert reserved["pass"] - reserved["torch.cuda.empty_cache()"] == 30 * mib


DDP = '''
import json, os, sys
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

dist.init_process_group("nccl")
rank = int(os.environ["LOCAL_RANK"])
torch.cuda.set_device(rank)
log = {"world": dist.get_world_size(), "rank": dist.get_rank(), "env": os.environ["WORLD_SIZE"],
       "devices": torch.cuda.device_count()}
model = nn.Linear(256, 256, bias=False).cuda(rank)
if log["world"] > 1:
    model = DDP(model, device_ids=[rank])
opt = torch.optim.Adam(model.parameters())
ds = TensorDataset(torch.randn(64, 256))
loader = DataLoader(ds, batch_size=8, sampler=DistributedSampler(ds))
for (b,) in loader:
    log["batch"] = b.shape[0]
    log["samples_per_rank"] = len(loader.sampler)
    json.dump(log, open(sys.argv[1], "w"))
    opt.zero_grad()
    model(b.cuda()).pow(2).mean().backward()
    opt.step()
'''


def test_ddp_launched_by_torchrun_is_rank_0_of_a_fake_group(tmp_path: Path) -> None:
    import torch.distributed as dist

    from planner.measure.profile import report_from
    from planner.script_setup import parse_launch, script_setup

    p = tmp_path / "ddp.py"
    p.write_text(DDP)
    log = str(tmp_path / "log.json")
    assert parse_launch(["torchrun", "--standalone", "--nproc_per_node=2", str(p), log]) == ((str(p), log), 2)
    assert parse_launch(["python", "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "4", str(p)]) \
        == ((str(p),), 8)
    peaks, comm = {}, {}
    for n in (1, 2):
        r = trace(script_setup(["torchrun", "--nproc-per-node", str(n), str(p), log]))
        rep = report_from(r.record, "fake", "", 0.0)
        peaks[n], comm[n] = rep.peak_allocated_bytes, rep.to_json()["breakdown"]["by_category"].get("communication", 0)
        got = json.loads((tmp_path / "log.json").read_text())
        # torchrun's environment, the fake group's answers, the DistributedSampler's share (64 samples / n ranks)
        assert got == {"world": n, "rank": 0, "env": str(n), "devices": n, "batch": 8, "samples_per_rank": 64 // n}
        assert not dist.is_initialized()  # the group is destroyed after the run
    # DDP's one gradient bucket holds a flat copy of the one 256 x 256 fp32 weight: 256 * 256 * 4 = 262,144 B of
    # communication, and nothing else changes. The same step as a step file (Linear(256, 256, bias=False), Adam,
    # an 8 x 256 batch, fp32) measured here with profile --step --gpus 2 --strategy ddp: 1,581,568 B against
    # 1,319,424 B on one GPU, the same +262,144 B; its peak is 8,704 B above the script's because the step's batch
    # (8 x 256 x 4 = 8,192 B) and loss (512 B) are still alive in its optimizer step, the script's b.cuda() is not
    assert comm == {1: 0, 2: 262_144} and peaks[2] - peaks[1] == 262_144
    assert r.record.setup["gpus"] == 2 and r.record.setup["strategy"] == "ddp"
    assert r.notes[0].startswith("per rank: rank 0 of 2 traced (ddp, the script's own DistributedDataParallel")
    assert any(f"init_process_group('nccl') at {p}:9: answered by torch's fake process group, rank 0 of 2" in n
               for n in r.notes)
    assert any("device_ids=[0] dropped" in n for n in r.notes)
    with pytest.raises(PlannerError, match="--gpus 3: torchrun launches 2 processes"):
        script_setup(["torchrun", "--nproc-per-node", "2", str(p)], gpus=3)
    with pytest.raises(PlannerError, match="--strategy fsdp: a script's own wrapping is what is traced"):
        script_setup(["python", str(p)], gpus=2, strategy="fsdp")
    with pytest.raises(PlannerError, match="torchrun --nproc-per-node gpu .*gpu/auto with vramplan's --gpus N"):
        parse_launch(["torchrun", "--nproc-per-node", "gpu", str(p)])
    assert parse_launch(["torchrun", "--nproc-per-node", "gpu", str(p)], gpus=4) == ((str(p),), 4)  # one per GPU
    r = runner.invoke(app, ["run", "--gpus", "2", "--json", "--", "python", str(p), log])
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["run"]["gpus"] == 2 and data["peak_allocated_bytes"] == peaks[2]
