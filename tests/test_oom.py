"""`vramplan oom`: the OOM parser on real messages from public issue threads, the
explanation, note 002's numbers, and the command (argument, stdin, --json, errors, --config).

Rounding rule for the expected bytes: a printed figure "v U" stands for
v x U (U = 1 for "bytes", 2**10 KiB, 2**20 MiB, 2**30 GiB), rounded half-even to a whole
byte, computed exactly with Decimal (``B`` below, written independently of planner.oom).
The true size is within half a unit of the last printed digit of that (± 0.005 U).
"""

from __future__ import annotations

import json
from pathlib import Path
from decimal import ROUND_HALF_EVEN, Decimal

import pytest
from typer.testing import CliRunner

from planner.cli import app
from planner.errors import PlannerError
from planner.oom import (MAX_INPUT_BYTES, causes, diagnosis, explain, explain_json, match_request, parse_oom,
                         recommendation_card)

runner = CliRunner()
_U = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def B(text: str) -> int:
    number, unit = text.split()
    return int((Decimal(number) * _U[unit]).to_integral_value(rounding=ROUND_HALF_EVEN))


# --- real messages, quoted verbatim from public GitHub threads ---------------------------------------
# Each: (url, message, expected figures). Expected: fmt, req, gpu, cap, free, alloc, reserved
# (1.x: "reserved in total"; 2.x: allocated + reserved-but-unallocated), unalloc, in_use,
# other processes, diagnosis.

REAL = [
    pytest.param(
        # https://github.com/pytorch/pytorch/issues/59778 (GTX with 6 GB; "If memory is available then why...")
        "`CUDA out of memory. Tried to allocate 2.26 GiB (GPU 0; 6.00 GiB total capacity; 781.59 MiB already "
        "allocated; 3.03 GiB free; 1.24 GiB reserved in total by PyTorch) `",
        dict(format="1.x", req="2.26 GiB", gpu=0, cap="6.00 GiB", free="3.03 GiB", alloc="781.59 MiB",
             reserved="1.24 GiB", diag="free_but_refused"),
        id="pytorch-59778-1x-6GiB",
    ),
    pytest.param(
        # https://github.com/nianticlabs/monodepth2/issues/236 (PyTorch 1.6, a traceback around it)
        "Exception has occurred: RuntimeError\n"
        "CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 7.93 GiB total capacity; 2.81 GiB already "
        "allocated; 25.38 MiB free; 3.06 GiB reserved in total by PyTorch)\n"
        '  File "/media/cvlab/cvlab1/hamza/ETRI/codes/monodepth2/layers.py", line 248, in forward\n'
        "    SSIM_d = (mu_x ** 2 + mu_y ** 2 + self.C1) * (sigma_x + sigma_y + self.C2)\n"
        '  File "/media/cvlab/cvlab1/hamza/ETRI/codes/monodepth2/trainer.py", line 412, in compute_reprojection_loss\n'
        "    ssim_loss = self.ssim(pred, target).mean(1, True)\n",
        # issue 23: 7.93 GiB - 25.38 MiB - 3.06 GiB = 4.85 GiB (61 %) is held outside this process's PyTorch:
        # that comes first (was "fragmentation")
        dict(format="1.x", req="20.00 MiB", gpu=0, cap="7.93 GiB", free="25.38 MiB", alloc="2.81 GiB",
             reserved="3.06 GiB", diag="other_memory"),
        id="monodepth2-236-1x-traceback",
    ),
    pytest.param(
        # https://github.com/pytorch/pytorch/issues/16417 (title; torch 1.0's layout ends in "cached")
        "RuntimeError: CUDA out of memory. Tried to allocate 12.50 MiB (GPU 0; 10.92 GiB total capacity; 8.57 MiB "
        "already allocated; 9.28 GiB free; 4.68 MiB cached)",
        dict(format="1.x", req="12.50 MiB", gpu=0, cap="10.92 GiB", free="9.28 GiB", alloc="8.57 MiB",
             reserved=("8.57 MiB", "4.68 MiB"), unalloc="4.68 MiB", diag="free_but_refused"),
        id="pytorch-16417-1.0-cached",
    ),
    pytest.param(
        # https://github.com/pytorch/pytorch/issues/40863 (Tesla K80; albanD: another program holds the memory)
        "RuntimeError: CUDA out of memory. Tried to allocate 60.00 MiB (GPU 0; 11.17 GiB total capacity; 505.96 MiB "
        "already allocated; 12.50 MiB free; 530.00 MiB reserved in total by PyTorch)",
        # issue 23: 11.17 GiB - 12.50 MiB - 530.00 MiB = 10.64 GiB (95 %) outside: other memory first (was "capacity")
        dict(format="1.x", req="60.00 MiB", gpu=0, cap="11.17 GiB", free="12.50 MiB", alloc="505.96 MiB",
             reserved="530.00 MiB", diag="other_memory"),
        id="pytorch-40863-1x-K80-other-program",
    ),
    pytest.param(
        # https://github.com/pytorch/pytorch/issues/32101 (V100 32 GB; 5.8 GiB cached, 152 MiB refused)
        "RuntimeError: CUDA out of memory. Tried to allocate 152.00 MiB (GPU 0; 31.72 GiB total capacity; 24.89 GiB "
        "already allocated; 6.12 MiB free; 30.70 GiB reserved in total by PyTorch)",
        dict(format="1.x", req="152.00 MiB", gpu=0, cap="31.72 GiB", free="6.12 MiB", alloc="24.89 GiB",
             reserved="30.70 GiB", diag="fragmentation"),
        id="pytorch-32101-1x-V100-fragmentation",
    ),
    pytest.param(
        # https://github.com/SYLan2019/DSTAGNN/issues/4 ("0 bytes free", the max_split_size_mb hint)
        "CUDA out of memory. Tried to allocate 12.00 MiB (GPU 0; 2.00 GiB total capacity; 1.68 GiB already "
        "allocated; 0 bytes free; 1.71 GiB reserved in total by PyTorch) If reserved memory is >> allocated memory "
        "try setting max_split_size_mb to avoid fragmentation.  See documentation for Memory Management and "
        "PYTORCH_CUDA_ALLOC_CONF",
        dict(format="1.x", req="12.00 MiB", gpu=0, cap="2.00 GiB", free="0 bytes", alloc="1.68 GiB",
             reserved="1.71 GiB", diag="fragmentation", max_split=True),
        id="DSTAGNN-4-1x-0-bytes-free",
    ),
    pytest.param(
        # https://github.com/YingqianWang/iPASSR/issues/9 (allocated > capacity: the figures do not add up)
        "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 10.73 GiB (GPU 0; 8.00 GiB total "
        "capacity; 17.20 GiB already allocated; 0 bytes free; 19.15 GiB reserved in total by PyTorch) If reserved "
        "memory is >> allocated memory try setting max_split_size_mb to avoid fragmentation.  See documentation for "
        "Memory Management and PYTORCH_CUDA_ALLOC_CONF",
        dict(format="1.x", req="10.73 GiB", gpu=0, cap="8.00 GiB", free="0 bytes", alloc="17.20 GiB",
             reserved="19.15 GiB", diag="request_exceeds_card", max_split=True),
        id="iPASSR-9-1x-over-capacity",
    ),
    pytest.param(
        # https://github.com/zai-org/CogVideo/issues/36 (RTX 4090 at 23.68 GiB)
        "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 4.56 GiB (GPU 0; 23.68 GiB total "
        "capacity; 18.96 GiB already allocated; 2.84 GiB free; 18.97 GiB reserved in total by PyTorch) If reserved "
        "memory is >> allocated memory try setting max_split_size_mb to avoid fragmentation.",
        dict(format="1.x", req="4.56 GiB", gpu=0, cap="23.68 GiB", free="2.84 GiB", alloc="18.96 GiB",
             reserved="18.97 GiB", diag="capacity", max_split=True),
        id="CogVideo-36-1x-4090",
    ),
    pytest.param(
        # https://github.com/murong-xu/CADS/issues/4 (RTX 5090 class, 31.47 GiB)
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 22.78 GiB. GPU 0 has a total capacity of "
        "31.47 GiB of which 12.73 GiB is free. Including non-PyTorch memory, this process has 18.73 GiB memory in "
        "use. Of the allocated memory 9.08 GiB is allocated by PyTorch, and 9.35 GiB is reserved by PyTorch but "
        "unallocated. If reserved but unallocated memory is large try setting "
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory "
        "Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)\n\n"
        "During handling of the above exception, another exception occurred:",
        dict(format="2.x", req="22.78 GiB", gpu=0, cap="31.47 GiB", free="12.73 GiB", alloc="9.08 GiB",
             unalloc="9.35 GiB", in_use="18.73 GiB", diag="capacity", expandable=True),
        id="CADS-4-2x",
    ),
    pytest.param(
        # https://github.com/carolchenyx/MGFN./issues/35 (torch 2.1's "capacty", no process line)
        "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.70 GiB. GPU 0 has a total capacty of "
        "6.00 GiB of which 0 bytes is free. Of the allocated memory 2.93 GiB is allocated by PyTorch, and 2.30 GiB "
        "is reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting "
        "max_split_size_mb to avoid fragmentation.  See documentation for Memory Management and "
        "PYTORCH_CUDA_ALLOC_CONF",
        dict(format="2.x", req="1.70 GiB", gpu=0, cap="6.00 GiB", free="0 bytes", alloc="2.93 GiB",
             unalloc="2.30 GiB", diag="fragmentation", max_split=True),
        id="MGFN-35-2.1-capacty",
    ),
    pytest.param(
        # https://github.com/pytorch/pytorch/issues/16417 (comment by WangFengtu1996, 2024-03-13; 24 GB card)
        "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 22.00 MiB. GPU 0 has a total capacity "
        "of 23.65 GiB of which 11.06 MiB is free. Including non-PyTorch memory, this process has 23.60 GiB memory in "
        "use. Of the allocated memory 22.90 GiB is allocated by PyTorch, and 194.87 MiB is reserved by PyTorch but "
        "unallocated. If reserved but unallocated memory is large try setting "
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory "
        "Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)",
        dict(format="2.x", req="22.00 MiB", gpu=0, cap="23.65 GiB", free="11.06 MiB", alloc="22.90 GiB",
             unalloc="194.87 MiB", in_use="23.60 GiB", diag="fragmentation", expandable=True),
        id="pytorch-16417-comment-2x",
    ),
    pytest.param(
        # https://github.com/3DTopia/Phidias-Diffusion/issues/8 (RTX 4090; a 125537 GiB request; another process)
        "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 125537.24 GiB. GPU 0 has a total "
        "capacty of 23.64 GiB of which 8.26 GiB is free. Process 3419336 has 470.64 MiB memory in use. Including "
        "non-PyTorch memory, this process has 14.56 GiB memory in use. Of the allocated memory 13.86 GiB is "
        "allocated by PyTorch, and 213.20 MiB is reserved by PyTorch but unallocated. If reserved but unallocated "
        "memory is large try setting max_split_size_mb to avoid fragmentation.  See documentation for Memory "
        "Management and PYTORCH_CUDA_ALLOC_CONF",
        dict(format="2.x", req="125537.24 GiB", gpu=0, cap="23.64 GiB", free="8.26 GiB", alloc="13.86 GiB",
             unalloc="213.20 MiB", in_use="14.56 GiB", procs=[(3419336, "470.64 MiB")],
             diag="request_exceeds_card", max_split=True),
        id="Phidias-8-2x-other-process",
    ),
    pytest.param(
        # https://github.com/awslabs/keys_values/issues/92 (A100 40GB; "[rank0]: " log prefix; four processes)
        "[rank0]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 572.00 MiB. GPU 0 has a total "
        "capacity of 39.49 GiB of which 321.31 MiB is free. Process 3721648 has 414.00 MiB memory in use. Including "
        "non-PyTorch memory, this process has 37.46 GiB memory in use. Process 1374765 has 414.00 MiB memory in use. "
        "Process 1374763 has 414.00 MiB memory in use. Process 1374764 has 414.00 MiB memory in use. Of the allocated "
        "memory 36.04 GiB is allocated by PyTorch, and 321.37 MiB is reserved by PyTorch but unallocated. If reserved "
        "but unallocated memory is large try setting PYTORCH_ALLOC_CONF=expandable_segments:True to avoid "
        "fragmentation.  See documentation for Memory Management  "
        "(https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)",
        dict(format="2.x", req="572.00 MiB", gpu=0, cap="39.49 GiB", free="321.31 MiB", alloc="36.04 GiB",
             unalloc="321.37 MiB", in_use="37.46 GiB",
             procs=[(3721648, "414.00 MiB"), (1374765, "414.00 MiB"), (1374763, "414.00 MiB"), (1374764, "414.00 MiB")],
             diag="fragmentation_and_capacity", expandable=True),
        id="keys_values-92-2x-four-processes",
    ),
    pytest.param(
        # https://github.com/pytorch/pytorch/pull/99699 (the PR that introduced the 2.x layout; wrapped lines)
        "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 138.00 MiB.\n"
        "GPU 0 has a total capacty of 15.90 GiB of which 8.44 MiB is free.\n"
        "Process 1246069 has 577.00 MiB memory in use. Including non-PyTorch memory,\n"
        "this process has 15.32 GiB memory in use. Of the allocated memory\n"
        "14.12 GiB is allocated by PyTorch, and 410.41 MiB is reserved\n"
        "by PyTorch but unallocated. If reserved but unallocated memory is large\n"
        "try setting max_split_size_mb to avoid fragmentation.  See documentation\n"
        " for Memory Management and PYTORCH_CUDA_ALLOC_CONF\n",
        dict(format="2.x", req="138.00 MiB", gpu=0, cap="15.90 GiB", free="8.44 MiB", alloc="14.12 GiB",
             unalloc="410.41 MiB", in_use="15.32 GiB", procs=[(1246069, "577.00 MiB")],
             diag="fragmentation", max_split=True),
        id="pytorch-pr-99699-2x-wrapped",
    ),
    pytest.param(
        # https://github.com/ali-vilab/VGen/issues/104 (RTX 4090, 23.64 GiB)
        "`torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 550.00 MiB. GPU 0 has a total capacity "
        "of 23.64 GiB of which 319.38 MiB is free. Including non-PyTorch memory, this process has 22.88 GiB memory "
        "in use. Of the allocated memory 19.75 GiB is allocated by PyTorch, and 999.90 MiB is reserved by PyTorch but "
        "unallocated. If reserved but unallocated memory is large try setting "
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory "
        "Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)`",
        dict(format="2.x", req="550.00 MiB", gpu=0, cap="23.64 GiB", free="319.38 MiB", alloc="19.75 GiB",
             unalloc="999.90 MiB", in_use="22.88 GiB", diag="fragmentation", expandable=True),
        id="VGen-104-2x-4090",
    ),
    pytest.param(
        # https://github.com/DINGYANB/MTVCrafter/issues/21 (RTX 6000 Ada, 44.43 GiB with ECC)
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 26.00 MiB. GPU 0 has a total capacity of "
        "44.43 GiB of which 19.00 MiB is free. Including non-PyTorch memory, this process has 44.40 GiB memory in "
        "use. Of the allocated memory 43.94 GiB is allocated by PyTorch, and 41.95 MiB is reserved by PyTorch but "
        "unallocated. If reserved but unallocated memory is large try setting "
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory "
        "Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)",
        dict(format="2.x", req="26.00 MiB", gpu=0, cap="44.43 GiB", free="19.00 MiB", alloc="43.94 GiB",
             unalloc="41.95 MiB", in_use="44.40 GiB", diag="fragmentation", expandable=True),
        id="MTVCrafter-21-2x-rtx6000ada",
    ),
    pytest.param(
        # https://github.com/huggingface/meshgen/issues/7 (8 GiB card, 13.98 GiB allocated: Windows' shared memory)
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1002.00 MiB. GPU 0 has a total capacity of "
        "8.00 GiB of which 0 bytes is free. Of the allocated memory 13.98 GiB is allocated by PyTorch, and 129.48 MiB "
        "is reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting "
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory "
        "Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)",
        dict(format="2.x", req="1002.00 MiB", gpu=0, cap="8.00 GiB", free="0 bytes", alloc="13.98 GiB",
             unalloc="129.48 MiB", diag="capacity", expandable=True),
        id="meshgen-7-2x-over-capacity",
    ),
]


@pytest.mark.parametrize("message, want", REAL)
def test_real_messages_parse_to_exact_bytes(message, want):
    r = parse_oom(message)
    assert r.format == want["format"]
    assert r.request_bytes == B(want["req"])
    assert r.gpu_index == want["gpu"]
    assert r.capacity_bytes == B(want["cap"])
    assert r.free_bytes == B(want["free"])
    assert r.allocated_bytes == B(want["alloc"])
    if want["format"] == "1.x":
        res = want["reserved"]
        reserved = B(res[0]) + B(res[1]) if isinstance(res, tuple) else B(res)
        assert r.reserved_bytes == reserved
        assert r.reserved_unallocated_bytes == (B(want["unalloc"]) if "unalloc" in want else reserved - B(want["alloc"]))
        # 1.x: outside this process's PyTorch = capacity - free - reserved
        assert r.non_pytorch_bytes == B(want["cap"]) - B(want["free"]) - reserved
        assert r.process_in_use_bytes is None
    else:
        assert r.reserved_unallocated_bytes == B(want["unalloc"])
        assert r.reserved_bytes == B(want["alloc"]) + B(want["unalloc"])
        if "in_use" in want:
            assert r.process_in_use_bytes == B(want["in_use"])
            assert r.non_pytorch_bytes == B(want["in_use"]) - r.reserved_bytes
        else:
            assert r.process_in_use_bytes is None and r.non_pytorch_bytes is None
        assert list(r.other_processes) == [(pid, B(s)) for pid, s in want.get("procs", [])]
    assert r.outside_pytorch_bytes == B(want["cap"]) - B(want["free"]) - r.reserved_bytes
    assert r.shortfall_bytes == B(want["req"]) - B(want["free"])
    assert r.hint_expandable_segments is want.get("expandable", False)
    assert r.hint_max_split_size is want.get("max_split", False)
    assert diagnosis(r) == want["diag"]
    lines = explain(r)
    assert all("\n" not in ln for ln in lines)
    assert any(ln.startswith("Diagnosis:") for ln in lines)


def test_real_messages_cover_both_layouts_and_several_cards():
    formats = {p.values[1]["format"] for p in REAL}
    caps = {p.values[1]["cap"] for p in REAL}
    assert formats == {"1.x", "2.x"} and len(REAL) >= 10 and len(caps) >= 8


def _by_id(name):
    return next(p.values[0] for p in REAL if p.id == name)


def test_fragmentation_names_the_setting_and_quotes_the_message_itself():
    text = "\n".join(explain(parse_oom(_by_id("pytorch-16417-comment-2x"))))
    assert "lack of a contiguous block" in text
    assert "Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True." in text
    # the quote is this message's own sentence, verbatim
    assert ('The message itself says: "If reserved but unallocated memory is large try setting '
            'PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."') in text
    # torch 1.x: expandable segments did not exist yet; max_split_size_mb with a value from the message:
    # the 152.00 MiB request -> 152; 30.70 - 24.89 GiB = 5.81 GiB reserved but unallocated
    one = "\n".join(explain(parse_oom(_by_id("pytorch-32101-1x-V100-fragmentation"))))
    assert "Set PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:152 (152 = the 152.00 MiB request in MiB" in one
    assert "5.81 GiB was reserved but unallocated" in one
    # that message carries no advice sentence: nothing is quoted, and no torch-2 text appears
    assert "The message itself says" not in one and "expandable_segments" not in one


def test_other_program_and_other_processes_are_named():
    k80 = "\n".join(explain(parse_oom(_by_id("pytorch-40863-1x-K80-other-program"))))
    assert "Outside PyTorch's allocator: 10.64 GiB" in k80 and "more than vramplan's default CUDA context" in k80
    four = "\n".join(explain(parse_oom(_by_id("keys_values-92-2x-four-processes"))))
    assert "other processes 1.62 GiB" in four and "PID 1374764 414.00 MiB" in four


def test_requests_larger_than_the_card_and_inconsistent_figures():
    big = "\n".join(explain(parse_oom(_by_id("Phidias-8-2x-other-process"))))
    assert "larger than the card" in big
    over = parse_oom(_by_id("meshgen-7-2x-over-capacity"))
    assert over.outside_pytorch_bytes < 0
    assert "system RAM" in "\n".join(explain(over))


def test_segment_sizes_are_explained():
    r = parse_oom(_by_id("monodepth2-236-1x-traceback"))
    assert "any tensor between 1 and 10 MiB" in "\n".join(explain(r))


# --- note 002 (shared/seeds/002): 23.55 GiB card, 22.63 GiB in use, 21.89 GiB by PyTorch, 131.75 MiB free,
# a 20 MiB request. The note does not give the reserved-but-unallocated figure: the message is rebuilt in
# torch 2.x's layout (c10/cuda/CUDACachingAllocator.cpp) without it, and with a few values for it.

NOTE_002 = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity "
            "of 23.55 GiB of which 131.75 MiB is free. Including non-PyTorch memory, this process has 22.63 GiB "
            "memory in use. Of the allocated memory 21.89 GiB is allocated by PyTorch{rest}")


def test_note_002_without_the_unallocated_figure():
    r = parse_oom(NOTE_002.format(rest="."))
    assert r.format == "2.x"
    assert (r.capacity_bytes, r.process_in_use_bytes, r.allocated_bytes, r.free_bytes, r.request_bytes) == (
        B("23.55 GiB"), B("22.63 GiB"), B("21.89 GiB"), B("131.75 MiB"), 20 * 2**20)
    assert r.reserved_bytes is None and r.non_pytorch_bytes is None
    text = "\n".join(explain(r))
    # this process outside PyTorch is at most in use - allocated = 0.74 GiB
    assert "at most 757.76 MiB" in text
    # 23.55 - 0.13 - 22.63 GiB is held outside this process
    assert "Not in this process at all: 810.33 MiB" in text
    # 20.00 MiB is the segment of a 1-10 MiB tensor; more than it was free: the card was full
    assert "any tensor between 1 and 10 MiB" in text
    assert diagnosis(r) == "free_but_refused"


@pytest.mark.parametrize("unalloc", ["0 bytes", "12.00 MiB", "338.71 MiB", "620.20 MiB"])
def test_note_002_explanation(unalloc):
    r = parse_oom(NOTE_002.format(rest=f", and {unalloc} is reserved by PyTorch but unallocated."))
    assert r.reserved_bytes == B("21.89 GiB") + B(unalloc)
    # non-PyTorch = 22.63 - (21.89 + reserved-but-unallocated)
    assert r.non_pytorch_bytes == B("22.63 GiB") - (B("21.89 GiB") + B(unalloc))
    assert r.outside_pytorch_bytes == B("23.55 GiB") - B("131.75 MiB") - r.reserved_bytes
    # issue 23: 131.75 MiB free > the 20 MiB request, refused: "free_but_refused" first whatever the cache held
    # (was "fragmentation" for 338.71 and 620.20 MiB); the cache's share follows where it exceeds the request
    expected = ["free_but_refused", "fragmentation"] if B(unalloc) >= 20 * 2**20 else ["free_but_refused"]
    assert causes(r) == expected and diagnosis(r) == "free_but_refused"
    data = explain_json(r)
    assert data["causes"] == expected and data["shortfall_bytes"] == 20 * 2**20 - B("131.75 MiB")


# --- format variants from the allocator's source, and robustness ----------------------------------------

def test_private_pools_allowed_hip_and_missing_index():
    # the layout of c10/cuda/CUDACachingAllocator.cpp with a memory fraction and CUDA-graph pools set
    msg = ("HIP out of memory. Tried to allocate 2.00 MiB. GPU  has a total capacity of 63.98 GiB of which "
           "1.00 GiB is free. Including non-PyTorch memory, this process has 31.50 GiB memory in use. 32.00 GiB "
           "allowed; Of the allocated memory 30.00 GiB is allocated by PyTorch, with 1.50 GiB allocated in private "
           "pools (e.g., CUDA Graphs), and 1.00 GiB is reserved by PyTorch but unallocated.")
    r = parse_oom(msg)
    assert r.backend == "HIP" and r.gpu_index is None
    assert r.allowed_bytes == 32 * 2**30 and r.private_pool_bytes == 3 * 2**29
    assert r.reserved_bytes == 31 * 2**30 and r.non_pytorch_bytes == 2**29
    assert "set_per_process_memory_fraction" in "\n".join(explain(r))
    assert "any tensor of at most 1 MiB" in "\n".join(explain(r))


def test_last_message_of_a_repeated_traceback_is_read():
    a = _by_id("pytorch-16417-comment-2x")
    b = _by_id("VGen-104-2x-4090")
    r = parse_oom(f"Traceback (most recent call last):\n{a}\n\nDuring handling...\n{b}\n")
    assert r.messages_found == 2 and r.request_bytes == B("550.00 MiB") and r.capacity_bytes == B("23.64 GiB")


@pytest.mark.parametrize("text", ["", "hello", "RuntimeError: CUDA error: out of memory", "x" * 5000])
def test_no_message_is_one_line_naming_what_was_expected(text):
    with pytest.raises(PlannerError) as exc:
        parse_oom(text)
    msg = str(exc.value)
    assert "\n" not in msg and "CUDA out of memory. Tried to allocate" in msg and len(msg) < 400
    assert "xxxxxxxxxx" not in msg


def test_input_is_capped():
    with pytest.raises(PlannerError, match="at most"):
        parse_oom("a" * (MAX_INPUT_BYTES + 1))
    with pytest.raises(PlannerError, match="at most"):
        parse_oom(b"a" * (MAX_INPUT_BYTES + 1))


def test_context_line_uses_planner_results_default():
    from planner.result import DEFAULT_CONTEXT_BYTES

    text = "\n".join(explain(parse_oom(_by_id("VGen-104-2x-4090"))))
    # 22.88 - 19.75 GiB - 999.90 MiB = 2.15 GiB of this process outside PyTorch: 1.74 GiB over a context
    assert f"more than vramplan's default CUDA context ({DEFAULT_CONTEXT_BYTES / 2**20:.2f} MiB" in text
    assert "That is 1.74 GiB more" in text and "a second framework" in text


def test_module_is_torch_free_and_light():
    import subprocess
    import sys

    code = ("import sys, planner.oom; bad = [m for m in ('torch', 'pandas', 'matplotlib', 'rich', 'yaml') "
            "if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- the command ------------------------------------------------------------------------------------------

def test_cli_argument_text():
    res = runner.invoke(app, ["oom", _by_id("VGen-104-2x-4090")])
    assert res.exit_code == 0, res.output
    assert "Diagnosis: fragmentation" in res.stdout and "expandable_segments:True" in res.stdout
    assert "--config" in res.stdout  # the hint to give the setup


def test_cli_stdin_and_dash():
    msg = _by_id("CogVideo-36-1x-4090")
    for args in (["oom"], ["oom", "-"]):
        res = runner.invoke(app, args, input=msg)
        assert res.exit_code == 0, res.output
        assert "torch 1.x layout" in res.stdout and "Diagnosis: capacity" in res.stdout


def test_cli_json():
    res = runner.invoke(app, ["oom", "--json", _by_id("keys_values-92-2x-four-processes")])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["format"] == "2.x" and data["capacity_bytes"] == B("39.49 GiB")
    assert [p["pid"] for p in data["other_processes"]] == [3721648, 1374765, 1374763, 1374764]
    assert data["diagnosis"] == "fragmentation_and_capacity" and data["explanation"]
    assert "setup" not in data


@pytest.mark.parametrize("args, stdin", [(["oom", "no message here"], None), (["oom"], "garbage\n" * 100),
                                         (["oom", "--gpu", "", _by_id("CogVideo-36-1x-4090")], None),
                                         (["oom", "--gpu", "24GB", _by_id("CogVideo-36-1x-4090")], None)])
def test_cli_bad_input_is_one_line_exit_2(args, stdin):
    res = runner.invoke(app, args, input=stdin)
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert "garbage" not in lines[0]


def test_cli_tty_without_message_errors(monkeypatch):
    import io
    import sys

    import typer

    from planner.commands import oom as cli

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdin", Tty(""))
    with pytest.raises(typer.Exit) as exc:
        cli.oom(message=None, config=None, kind=None, voxel=None, batch=None,
                channels=None, attention=None, amp=None, checkpointing=None,
                flash_attention=None, perceptual=None, disc_layers=None,
                disc_channels=None, no_discriminator=False, accum=None,
                optimizer=None, gpu=None, margin=None, as_json=False)
    assert exc.value.exit_code == 2


SMALL = """\
kind: ldm-stage1
data: {voxel_size: [64, 64, 32], in_channels: 1}
autoencoder:
  num_channels: [16, 32, 64]
  norm_num_groups: 8
  attention_levels: [false, false, true]
  training:
    batch_size: 1
    use_perceptual_loss: false
device: {mixed_precision: true}
"""


def _format_size(n: int) -> str:
    # c10/cuda/CUDACachingAllocator.cpp format_size: bytes up to 1 KiB, then KiB/MiB/GiB with two decimals
    for unit, scale in (("KiB", 2**10), ("MiB", 2**20)):
        if n <= scale * 1024:
            return f"{n / scale:.2f} {unit}"
    return f"{n / 2**30:.2f} GiB"


def test_cli_config_names_the_tensor(tmp_path):
    from planner.analytic.simulate import simulate
    from planner.config import Overrides, resolve_setup

    cfg = tmp_path / "small.yaml"
    cfg.write_text(SMALL)
    sim = simulate(resolve_setup(cfg, Overrides()))
    # sizes of the step that at most two kinds of allocation make, one of them inside a module
    kinds: dict[int, set] = {}
    for info in sim.mem.info.values():
        kinds.setdefault(info.nbytes, set()).add((info.op, info.module, info.phase))
    wanted = {n for n, k in kinds.items() if n > 2**20 and len(k) <= 2 and any(m for _, m, _ in k)}
    assert wanted
    # the first such allocation in step order, and the bytes alive just before it
    live = 0
    for uid, d in sim.mem.events:
        if d > 0 and d in wanted and sim.mem.info[uid].module:
            target = sim.mem.info[uid]
            break
        live += d
    size = target.nbytes
    # the message PyTorch would print had the card been full right there: everything PyTorch held
    # was live, 1 MiB free, a default CUDA context besides
    in_use = live + 426 * 2**20
    msg = (f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate {_format_size(size)}. GPU 0 has a total "
           f"capacity of {_format_size(in_use + 2**20)} of which 1.00 MiB is free. Including non-PyTorch memory, "
           f"this process has {_format_size(in_use)} memory in use. Of the allocated memory {_format_size(live)} is "
           "allocated by PyTorch, and 0 bytes is reserved by PyTorch but unallocated.")
    report = parse_oom(msg)
    top = match_request(report, sim.mem)
    assert top and (top[0].op, top[0].module, top[0].nbytes) == (target.op, target.module, size)
    assert top[0].how == "tensor"

    res = runner.invoke(app, ["oom", msg, "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert f"Most likely: {_format_size(size)} = the" in res.stdout
    assert f"{target.op} in {target.module}" in res.stdout

    data = json.loads(runner.invoke(app, ["oom", msg, "--config", str(cfg), "--json"]).stdout)
    m = data["setup"]["request_matches"][0]
    assert (m["op"], m["module"], m["nbytes"]) == (target.op, target.module, size)
    assert data["setup"]["gpu"]["capacity_bytes"] == B(_format_size(in_use + 2**20))
    assert data["setup"]["recommendation"] is not None


def test_cli_recommends_for_the_card_of_the_message(tmp_path):
    # seed 004's high-resolution setup with explicit attention OOMs on 16.00 GiB of fp32 scores (65,536²)
    msg = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 16.00 GiB. GPU 0 has a total capacity of "
           "23.55 GiB of which 5.31 GiB is free.")
    res = runner.invoke(app, ["oom", msg, "--config", "examples/seed004_high_res.yaml", "--no-flash-attention",
                              "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    m = data["setup"]["request_matches"][0]
    assert m["nbytes"] == 65536**2 * 4 and "attn" in m["module"] and m["phase"] == "forward"
    rec = data["setup"]["recommendation"]
    assert rec["changes"] and rec["device_total_bytes"] <= rec["budget_bytes"]


# --- issue 23: real messages stored as data (tests/data/oom_messages/*.txt, first line "# source: URL") -------
# Each row: the file, the figures as printed (B() of the text), and the causes in order (first = the verdict).
# Derivations of the causes from the printed figures are in the comments (GiB = 1024 MiB).

DATA = Path(__file__).parent / "data" / "oom_messages"

FIXTURES = {
    # 432 MiB asked with 7.12 GiB free: refused with room -> free_but_refused; ROCm named, its own variable
    "comfyui-9529-hip-free-refused": dict(fmt="2.x", backend="HIP", req="432.00 MiB", cap="15.92 GiB", free="7.12 GiB",
                                          alloc="8.08 GiB", unalloc="321.96 MiB", causes=["free_but_refused"]),
    # 112.89 GiB > 79.14 GiB; Process 4078482 (11.29 GiB) is another program beside "this process" (9.25 GiB)
    "control-gic-6-other-process-request-over-card": dict(
        fmt="2.x", req="112.89 GiB", cap="79.14 GiB", free="58.59 GiB", alloc="8.27 GiB", unalloc="500.38 MiB",
        in_use="9.25 GiB", procs=[(4078482, "11.29 GiB")], causes=["request_exceeds_card"]),
    # 460.38 MiB free >= 246 MiB: free_but_refused; 27.88 - 26.00 = 1.88 GiB cached >= 246 MiB: fragmentation too
    "fairseq-2442-1x-malloc-suffix": dict(fmt="1.x", req="246.00 MiB", cap="31.75 GiB", free="460.38 MiB",
                                          alloc="26.00 GiB", reserved="27.88 GiB",
                                          causes=["free_but_refused", "fragmentation"]),
    # 30.29 GiB > 10.74 GiB
    "framepack-369-elided-prefix": dict(fmt="2.x", req="30.29 GiB", cap="10.74 GiB", free="3.69 GiB", alloc="6.10 GiB",
                                        unalloc="396.58 MiB", in_use="6.68 GiB", causes=["request_exceeds_card"]),
    # container: no "this process" line; Process 20398 (14.52 GiB >= reserved 14.06 GiB + 330.42 MiB) is this
    # process. 235.06 MiB free < 496 MiB, 330.42 MiB cached < 496 MiB, together 565.48 MiB >= 496 MiB
    "generateu-10-container-t4": dict(fmt="2.x", req="496.00 MiB", cap="14.75 GiB", free="235.06 MiB",
                                      alloc="14.06 GiB", unalloc="330.42 MiB", procs=[(20398, "14.52 GiB")],
                                      own=20398, causes=["fragmentation_and_capacity"]),
    # torch 1.0: a 1024.00 KiB (= 1 MiB) tensor: small pool
    "generativegraph-5-1.0-small-1024KiB": dict(fmt="1.x", req="1024.00 KiB", cap="11.17 GiB", free="576.00 KiB",
                                                alloc="10.90 GiB", cached="30.96 MiB", causes=["small_pool"]),
    # torch 2.1 ("capacty", max_split hint): 4.84 GiB cached >= 3.00 GiB, 1.66 GiB free < 3.00 GiB
    "lerf-73-2.1-fragmentation": dict(fmt="2.x", req="3.00 GiB", cap="23.65 GiB", free="1.66 GiB", alloc="12.09 GiB",
                                      unalloc="4.84 GiB", in_use="20.81 GiB", causes=["fragmentation"],
                                      setting="PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:3072"),
    # "0 bytes fre⏎e" wrapped through the word; 2.00 GiB - 0 - 796.00 MiB = 1252 MiB (61 %) outside this process's
    # PyTorch; then 796.00 - 748.12 = 47.88 MiB cached >= 20 MiB
    "mhformer-27-1x-wrapped-word": dict(fmt="1.x", req="20.00 MiB", cap="2.00 GiB", free="0 bytes", alloc="748.12 MiB",
                                        reserved="796.00 MiB", causes=["other_memory", "fragmentation"],
                                        repairs=["fre⏎e; read as free;"]),
    # 41.56 MiB free >= 32 MiB
    "mygirlgpt-11-2.1-free-refused": dict(fmt="2.x", req="32.00 MiB", cap="4.00 GiB", free="41.56 MiB",
                                          alloc="2.58 GiB", unalloc="1.90 MiB", in_use="3.44 GiB",
                                          causes=["free_but_refused"]),
    # 1.02 GiB - 788.51 MiB = 255.97 MiB cached, 145.93 MiB free: each < 264 MiB, together 401.90 MiB >= 264;
    # outside: 2048 - 145.93 - 1044.48 = 857.59 MiB = 42 % (< 50 %: not first)
    "opixray-5-1x-2GiB": dict(fmt="1.x", req="264.00 MiB", cap="2.00 GiB", free="145.93 MiB", alloc="788.51 MiB",
                              reserved="1.02 GiB", causes=["fragmentation_and_capacity"]),
    # 7.10 GiB cached >= 6.64 GiB; 6.22 GiB free < 6.64 GiB
    "pytorch-138002-hip-fragmentation": dict(fmt="2.x", backend="HIP", req="6.64 GiB", cap="19.92 GiB", free="6.22 GiB",
                                             alloc="5.34 GiB", unalloc="7.10 GiB", causes=["fragmentation"],
                                             setting="PYTORCH_HIP_ALLOC_CONF=expandable_segments:True"),
    # 11.17 GiB - 12.50 MiB - 530.00 MiB = 10.64 GiB (95 %) held outside; then 12.50 + 24.04 MiB < 60 MiB
    "pytorch-40863-1x-other-program": dict(fmt="1.x", req="60.00 MiB", cap="11.17 GiB", free="12.50 MiB",
                                           alloc="505.96 MiB", reserved="530.00 MiB",
                                           causes=["other_memory", "capacity"]),
    # the 2 MiB segment of a <= 1 MiB tensor
    "pytorch-67971-1x-small-2MiB": dict(fmt="1.x", req="2.00 MiB", cap="6.00 GiB", free="0 bytes", alloc="4.88 GiB",
                                        reserved="4.96 GiB", causes=["small_pool"]),
    # no "CUDA out of memory." prefix; 2.88 MiB free + (1.25 - 1.24 GiB = 10.24 MiB) cached = 13.12 MiB < 20 MiB
    "self-explaining-6-1x-no-prefix": dict(fmt="1.x", req="20.00 MiB", cap="1.96 GiB", free="2.88 MiB",
                                           alloc="1.24 GiB", reserved="1.25 GiB", causes=["capacity"], no_prefix=True),
    # 3.47 - 3.08 GiB = 399.36 MiB cached >= 192 MiB; torch 1.x: max_split_size_mb:192 (the request in MiB)
    "stable-diffusion-702-1x-4GiB": dict(fmt="1.x", req="192.00 MiB", cap="4.00 GiB", free="0 bytes", alloc="3.08 GiB",
                                         reserved="3.47 GiB", causes=["fragmentation"],
                                         setting="PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:192"),
    # GPU 1; 5.28 - 3.53 = 1.75 GiB cached >= 1.65 GiB; 1.65 GiB = 1689.6 MiB -> 1690
    "stripformer-21-1x-gpu1": dict(fmt="1.x", gpu=1, req="1.65 GiB", cap="7.79 GiB", free="1.40 GiB", alloc="3.53 GiB",
                                   reserved="5.28 GiB", causes=["fragmentation"],
                                   setting="PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:1690"),
    # torch 1.0 "cached": 8.20 GiB free >= 8.13 GiB
    "structureflow-35-1.0-cached-free-refused": dict(fmt="1.x", req="8.13 GiB", cap="10.76 GiB", free="8.20 GiB",
                                                     alloc="643.57 MiB", cached="32.43 MiB",
                                                     causes=["free_but_refused"]),
    # 16.00 GiB > 15.24 GiB
    "therock-1054-hip-request-over-card": dict(fmt="2.x", backend="HIP", req="16.00 GiB", cap="15.24 GiB",
                                               free="15.09 GiB", alloc="0 bytes", unalloc="0 bytes",
                                               causes=["request_exceeds_card"]),
    # 1017.01 + 54.99 MiB = 1072.00 MiB reserved + 2 MiB = 1074 MiB vs 1.05 GiB = 1075.2 MiB allowed (printed to
    # +-5 MiB): the cap binds with 244.65 GiB free; then the small pool
    "therock-2118-hip-allowed-small": dict(fmt="2.x", backend="HIP", req="2.00 MiB", cap="255.98 GiB",
                                           free="244.65 GiB", alloc="1017.01 MiB", unalloc="54.99 MiB",
                                           allowed="1.05 GiB", private="17.00 MiB",
                                           causes=["per_process_cap", "small_pool"]),
    # container (Process 2417585 21.65 GiB >= 21.32 GiB + 1018 KiB): 4.06 MiB + 1018 KiB < 518 MiB
    "vllm-2140-container-2.1": dict(fmt="2.x", req="518.00 MiB", cap="21.67 GiB", free="4.06 MiB", alloc="21.32 GiB",
                                    unalloc="1018.00 KiB", procs=[(2417585, "21.65 GiB")], own=2417585,
                                    causes=["capacity"]),
    # container (Process 3909982 44.34 GiB >= 43.67 GiB + 335.07 MiB): 187.94 + 335.07 MiB < 16 GiB
    "vllm-7721-container-16GiB": dict(fmt="2.x", req="16.00 GiB", cap="44.53 GiB", free="187.94 MiB",
                                      alloc="43.67 GiB", unalloc="335.07 MiB", procs=[(3909982, "44.34 GiB")],
                                      own=3909982, causes=["capacity"]),
    # 27.93 - 27.91 GiB = 20.48 MiB cached + 565.31 MiB free < 1.63 GiB; outside 16.08 GiB = 36 % (not first)
    "vllm-783-1x-other-processes": dict(fmt="1.x", req="1.63 GiB", cap="44.56 GiB", free="565.31 MiB",
                                        alloc="27.91 GiB", reserved="27.93 GiB", causes=["capacity"]),
    # CUDA graphs' private pools; 611.60 MiB cached >= 138 MiB
    "vllm-9290-private-pools-h100": dict(fmt="2.x", req="138.00 MiB", cap="79.15 GiB", free="2.19 MiB",
                                         alloc="71.57 GiB", unalloc="611.60 MiB", in_use="79.12 GiB",
                                         private="39.77 MiB", causes=["fragmentation"]),
    # 1.70 GiB free + 279.78 MiB cached = 1.97 GiB >= 1.88 GiB, neither alone
    "z-image-103-hip": dict(fmt="2.x", backend="HIP", req="1.88 GiB", cap="23.98 GiB", free="1.70 GiB",
                            alloc="21.65 GiB", unalloc="279.78 MiB", causes=["fragmentation_and_capacity"]),
    # 1.04 GiB free + 10.24 MiB cached < 1.71 GiB
    "zero-dce-52-1x": dict(fmt="1.x", req="1.71 GiB", cap="6.00 GiB", free="1.04 GiB", alloc="3.49 GiB",
                           reserved="3.50 GiB", causes=["capacity"]),
}


def _fixture(name: str) -> tuple[str, str]:
    head, text = (DATA / f"{name}.txt").read_text(encoding="utf-8").split("\n", 1)
    return head, text


def test_fixture_files_are_all_listed_and_sourced():
    names = {p.stem for p in DATA.glob("*.txt")}
    assert names == set(FIXTURES) and len(names) >= 20
    for name in names:
        head, text = _fixture(name)
        assert head.startswith("# source: https://github.com/") and ("out of memory" in text.lower() or "Tried" in text)
    kinds = {c for w in FIXTURES.values() for c in w["causes"]}
    assert kinds >= {"other_memory", "small_pool", "per_process_cap", "free_but_refused", "fragmentation",
                     "fragmentation_and_capacity", "capacity", "request_exceeds_card"}


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_figures_and_first_cause(name):
    want = FIXTURES[name]
    r = parse_oom(_fixture(name)[1])
    assert r.format == want["fmt"] and r.backend == want.get("backend", "CUDA")
    assert r.gpu_index == want.get("gpu", 0)
    assert (r.request_bytes, r.capacity_bytes, r.free_bytes, r.allocated_bytes) == (
        B(want["req"]), B(want["cap"]), B(want["free"]), B(want["alloc"]))
    if "reserved" in want:  # torch 1.x "reserved in total"
        assert r.reserved_bytes == B(want["reserved"])
        assert r.reserved_unallocated_bytes == B(want["reserved"]) - B(want["alloc"])
    elif "cached" in want:  # torch 1.0: "cached" = reserved - allocated
        assert r.reserved_unallocated_bytes == B(want["cached"])
        assert r.reserved_bytes == B(want["alloc"]) + B(want["cached"])
    else:
        assert r.reserved_unallocated_bytes == B(want["unalloc"])
        assert r.reserved_bytes == B(want["alloc"]) + B(want["unalloc"])
    assert r.process_in_use_bytes == (B(want["in_use"]) if "in_use" in want else None)
    assert list(r.other_processes) == [(p, B(b)) for p, b in want.get("procs", [])]
    assert r.allowed_bytes == (B(want["allowed"]) if "allowed" in want else None)
    assert r.private_pool_bytes == (B(want["private"]) if "private" in want else None)
    assert (r.own_process[0] if r.own_process else None) == want.get("own")
    assert r.prefix_missing is want.get("no_prefix", False)
    assert list(r.repairs) == want.get("repairs", [])
    assert causes(r) == want["causes"] and diagnosis(r) == want["causes"][0]
    lines = explain(r)
    assert all("\n" not in ln for ln in lines) and lines[-len(want["causes"][:3]):][0].startswith("Diagnosis: ")
    text = "\n".join(lines)
    if r.backend == "HIP":
        assert text.startswith("HIP (ROCm) out-of-memory message")
    if "setting" in want:
        assert f"Set {want['setting']}" in text
    if r.hint_max_split_size and r.format == "1.x" and r.hint_text:
        # torch 1.x: only that version's own sentence is quoted
        assert 'The message itself says: "If reserved memory is >> allocated memory' in text or \
            "fragmentation" not in want["causes"]


def test_other_memory_comes_first_and_says_so():
    text = "\n".join(explain(parse_oom(_fixture("pytorch-40863-1x-other-program")[1])))
    # 11.17 GiB - 12.50 MiB - 530.00 MiB = 10.64 GiB; 10.64 / 11.17 = 95 %
    assert "Diagnosis: memory held outside this process: 10.64 GiB of the card's 11.17 GiB (95 %)" in text
    assert "expandable_segments" not in text.split("Diagnosis:")[1]


def test_container_process_is_not_another_process():
    r = parse_oom(_fixture("generateu-10-container-t4")[1])
    # Process 20398 is this process: nothing foreign, nothing subtracted
    assert r.foreign_processes == () and r.foreign_bytes == 0
    assert r.elsewhere_bytes == B("14.75 GiB") - B("235.06 MiB") - B("14.52 GiB")
    card = recommendation_card(r)
    assert card.capacity_bytes == B("14.75 GiB") and card.name == "exactly 14.75 GiB"
    assert "not counted as one" in "\n".join(explain(r))
    # with another program listed beside this process, that one is subtracted, and labels stay in GiB
    other = parse_oom(_fixture("control-gic-6-other-process-request-over-card")[1])
    card = recommendation_card(other)
    assert card.capacity_bytes == B("79.14 GiB") - B("11.29 GiB")  # 67.85 GiB
    assert card.name == "exactly 67.85 GiB" and "B" not in card.key.replace("GiB", "")


# a real message (https://github.com/googlecolab/colabtools/issues/2001) with its reserved figure split by a
# terminal wrap, as issue 23 saw "16.9⏎4 GiB": read apart, "8 GiB reserved" < "14.23 GiB allocated" is
# impossible; read joined, 14.28 GiB is consistent
COLAB = ("RuntimeError: CUDA out of memory. Tried to allocate 3.35 GiB (GPU 0; 15.78 GiB total capacity; 14.23 GiB "
         "already allocated; 210.75 MiB free; {reserved} reserved in total by PyTorch)")


def test_wrapped_figure_is_repaired_where_one_reading_is_consistent():
    r = parse_oom(COLAB.format(reserved="14.2\n8 GiB"))
    assert r.reserved_bytes == B("14.28 GiB") and r.repairs == ("14.2⏎8 read as 14.28",)
    assert r.reserved_unallocated_bytes == B("14.28 GiB") - B("14.23 GiB") > 0
    assert "Line wrap repaired: 14.2⏎8 read as 14.28" in "\n".join(explain(r))
    # wraps through "Tried to allocate", "capacity" and "already allocated" too: each break is read joined only
    # where that reads more figures, or the same with fewer contradictions ("14.2⏎8" pays only once "allocated"
    # is read: 8 GiB reserved contradicts 14.23 GiB allocated)
    r = parse_oom(COLAB.format(reserved="14.2\n8 GiB").replace("allocate", "allo\ncate").replace("capacity", "capa\ncity"))
    assert (r.request_bytes, r.capacity_bytes, r.allocated_bytes, r.reserved_bytes) == (
        B("3.35 GiB"), B("15.78 GiB"), B("14.23 GiB"), B("14.28 GiB"))
    assert r.repairs == ("allo⏎cate read as allocate", "capa⏎city; read as capacity;", "allo⏎cated; read as allocated;",
                         "14.2⏎8 read as 14.28")
    # a paste whose line break replaced a space is left alone
    assert parse_oom(COLAB.format(reserved="14.28 GiB").replace("already ", "already\n")).repairs == ()


@pytest.mark.parametrize("text, says", [
    (COLAB.format(reserved="1.28 GiB"), "reserved by PyTorch 1.28 GiB < allocated 14.23 GiB"),
    (COLAB.format(reserved="14.28 GiB").replace("15.78 GiB total", "0 bytes total"), "a total capacity of 0 bytes"),
    (COLAB.format(reserved="14.28 GiB").replace("210.75 MiB free", "16.00 GiB free"), "free 16.00 GiB > total capacity"),
    (COLAB.format(reserved="14.28 GiB").replace("3.35 GiB (", "0 bytes ("), "a request of 0 bytes"),
    (NOTE_002.format(rest=", and 1.00 GiB is reserved by PyTorch but unallocated."),
     "this process has 22.63 GiB in use < PyTorch's reserved 22.89 GiB"),
])
def test_impossible_figures_are_one_clear_line(text, says):
    with pytest.raises(PlannerError) as exc:
        parse_oom(text)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("MESSAGE: the figures contradict each other: ") and says in msg


@pytest.mark.parametrize("digits", [13, 50_000])
def test_absurd_figures_are_one_line(digits):
    # issue 23: a 50,000-digit figure raised ValueError (int/str conversion limit)
    with pytest.raises(PlannerError) as exc:
        parse_oom(f"CUDA out of memory. Tried to allocate {'9' * digits}.00 GiB (GPU 0; 8.00 GiB total capacity)")
    assert "\n" not in str(exc.value) and len(str(exc.value)) < 350
    # the line counts the digits in words ('13 digits before its point and 2 after'), never '13+2'
    assert f"a figure of {digits:,} digits before its point and 2 after" in str(exc.value)


def test_cpu_allocator_message_is_not_a_cuda_one():
    with pytest.raises(PlannerError, match="not a CUDA out-of-memory message"):
        parse_oom("RuntimeError: DefaultCPUAllocator: not enough memory: you tried to allocate 4593152000 bytes.")


def test_cli_container_message_never_sends_a_small_step_to_a_smaller_card(tmp_path):
    cfg = tmp_path / "small.yaml"
    cfg.write_text(SMALL)
    # before issue 23 the recommendation subtracted Process 20398 (this process) as another one: 0.23 GiB left
    res = runner.invoke(app, ["oom", _fixture("generateu-10-container-t4")[1], "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "This setup fits exactly 14.75 GiB" in res.stdout and "it would take" not in res.stdout


def test_cli_margin_without_a_setup_is_refused():
    res = runner.invoke(app, ["oom", "--margin", "0.2", _fixture("zero-dce-52-1x")[1]])
    assert res.exit_code == 2 and res.output.strip().startswith("error: --margin: only used with a setup")


def test_cli_other_process_holding_the_card_is_named_not_a_larger_card(tmp_path, monkeypatch):
    # the 2.x layout (c10/cuda/CUDACachingAllocator.cpp) with another program holding 23.20 of 23.64 GiB and this
    # process 440 MiB: 23.64 GiB - 4.00 MiB - 440.00 MiB = 23.21 GiB (98 %) outside this process
    msg = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of "
           "23.64 GiB of which 4.00 MiB is free. Process 4242 has 23.20 GiB memory in use. Including non-PyTorch "
           "memory, this process has 440.00 MiB memory in use. Of the allocated memory 10.00 MiB is allocated by "
           "PyTorch, and 2.00 MiB is reserved by PyTorch but unallocated.")
    r = parse_oom(msg)
    assert causes(r) == ["other_memory", "capacity"]
    assert r.elsewhere_bytes == B("23.64 GiB") - B("4.00 MiB") - B("440.00 MiB")
    text = "\n".join(explain(r))
    assert "Diagnosis: memory held outside this process: 23.21 GiB of the card's 23.64 GiB (98 %)" in text
    assert "--gpu exact:23.64GiB" in text and "larger card" not in text
    cfg = tmp_path / "small.yaml"
    cfg.write_text(SMALL)
    # the recommendation is for what the other program leaves: 23.64 - 23.20 GiB = 0.44 GiB. Nothing fits it (the
    # search proving that takes over a minute, so its answer is stubbed here, with the card it would name) and the
    # answer is to free the card, not "it would take a <larger card>"
    from types import SimpleNamespace

    from planner.gpus import parse_gpu

    seen = {}

    def nothing_fits(setup, card, margin, prefer, frozen):
        seen["card"] = card
        return SimpleNamespace(best=None, input_fits=False, budget_bytes=int(card.capacity_bytes * (1 - margin)),
                               needed_gpu=parse_gpu("rtx3080"), notes=[])

    monkeypatch.setattr("planner.recommend.recommend", nothing_fits)
    res = runner.invoke(app, ["oom", msg, "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert seen["card"].capacity_bytes == B("23.64 GiB") - B("23.20 GiB") and seen["card"].name == "exactly 0.44 GiB"
    assert "it would take" not in res.stdout
    assert "23.21 GiB of the card is held outside this process: free that first" in res.stdout
