"""Tests for planner.gpus: the --gpu parser and the GPU catalog."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from planner.errors import PlannerError
from planner.gpus import CATALOG, GB, GIB, GPU, catalog_rows, cc_tuple, parse_gpu

REPO_ROOT = Path(__file__).resolve().parents[1]


# --- constants ----------------------------------------------------------------


def test_constants():
    assert GIB == 1073741824  # 2**30
    assert GB == 1000000000  # 10**9


# --- sizes ---------------------------------------------------------------------


@pytest.mark.parametrize("text", ["24GB", "24 GB", "24gb", "24Gb", " 24GB "])
def test_marketed_gb(text):
    # Issue 9 defect 5: a whole "24GB" is a card sold as 24 GB: 24 GiB of DRAM, and the
    # budget is what CUDA reports for that size class, not 24 * 10**9 B = 22.35 GiB.
    gpu = parse_gpu(text)
    assert gpu.memory_bytes == 25769803776  # 24 * 2**30
    # median of the sourced 24 GB cards: a10 21.99, rtx4090 23.64, rtx3090 23.70 GiB -> 23.64 GiB
    # = round(23.64 * 2**30) = round(25383256719.36) = 25383256719 B
    assert gpu.capacity_bytes == 25383256719
    assert gpu.key == "24GB"
    assert gpu.bf16 is False
    assert gpu.fp16_tflops is None
    assert gpu.fp32_tflops is None
    assert gpu.bandwidth_gbs is None
    assert gpu.compute_capability is None
    assert gpu.is_generic


@pytest.mark.parametrize("text", ["24GiB", "24 GiB", "24gib", "24GIB", "24576MiB", "24576MB", "24.0GB", "24.00GiB"])
def test_binary_gib(text):
    # The one rule (planner/gpu_rule.py): a bare size is a card as sold, a vendor's GB being GiB,
    # so every spelling of 24 GiB names the card sold as 24 GB (before issue 23, "24576MiB" and
    # "24.0GB" were exact figures while "24GiB" was the card: the rule changed here)
    gpu = parse_gpu(text)
    assert gpu.memory_bytes == 25769803776  # 24 * 2**30 = 25769803776
    assert gpu.capacity_bytes == 25383256719  # 23.64 GiB, as for "24GB"
    assert gpu.key == "24GB" and gpu.name == "card sold as 24 GB"
    assert gpu.bf16 is False
    # the output names what it took
    assert gpu.capacity_note().startswith(f"capacity used: {text} -> card sold as 24 GB: 23.64 GiB (25,383,256,719 B) "
                                          "as CUDA reports it")


def test_exact_fractional_gib_rounds_to_nearest_byte():
    for text in ("exact:23.55GiB", "=23.55GiB", "EXACT: 23.550 gib"):
        gpu = parse_gpu(text)
        # 23.55 * 2**30 = 25286619955.2 -> nearest byte 25286619955; an exact figure is taken literally
        assert gpu.memory_bytes == gpu.capacity_bytes == 25286619955
        assert gpu.capacity_source.startswith("exact figure as given")
        assert gpu.key == "exact:23.55GiB" and gpu.name == "exactly 23.55 GiB"
    assert parse_gpu("exact:23.55GiB").capacity_note() == (
        "capacity used: exact:23.55GiB -> exactly 23.55 GiB (25,286,619,955 B) as CUDA reports it; "
        "source: exact figure as given (--gpu exact:23.55GiB)")


def test_exact_si_units_are_decimal():
    # 0.5 * 10**9 = 500000000; 10.75 * 10**9 = 10750000000; 24.0 * 10**9 = 24000000000
    assert parse_gpu("exact:0.5GB").memory_bytes == 500000000
    assert parse_gpu("exact:10.75 GB").memory_bytes == 10750000000
    assert parse_gpu("exact:24.0GB").capacity_bytes == 24000000000
    assert parse_gpu("exact:100GiB").key == "exact:100GiB"  # not "1E+2GiB"


def test_exact_bytes_taken_literally_and_labelled_in_gib():
    gpu = parse_gpu("exact:25769803776B")
    assert gpu.memory_bytes == gpu.capacity_bytes == 25769803776
    # labels never show raw bytes: 25769803776 / 2**30 = 24.00 GiB
    assert gpu.key == "exact:24.00GiB" and gpu.label == "exactly 24.00 GiB"


@pytest.mark.parametrize("text, exact", [("23.55GiB", "exact:23.55GiB"), (".5GB", "exact:.5GB"),
                                         ("24000MB", "exact:24000MB"), ("10.75 GB", "exact:10.75 GB"),
                                         ("25769803775B", "exact:25769803775B")])
def test_bare_size_that_is_no_card_as_sold_names_the_exact_spelling(text, exact):
    # before issue 23 these were silently exact figures; a bare size is now always a card as sold
    with pytest.raises(PlannerError) as err:
        parse_gpu(text)
    msg = str(err.value)
    assert "\n" not in msg and repr(text) in msg and f"write {exact}" in msg


def test_marketed_size_without_a_sourced_card_is_an_assumption():
    from planner.gpus import ESTIMATE_RATIO

    gpu = parse_gpu("100GB")
    assert gpu.memory_bytes == 100 * GIB
    assert gpu.capacity_bytes == int(100 * GIB * ESTIMATE_RATIO)
    assert gpu.capacity_source.startswith("assumption")
    assert gpu.capacity_estimated
    # the ratio is the median reported/physical of the sourced non-ECC cards, about 0.98
    assert 0.97 < ESTIMATE_RATIO < 0.99


def test_exact_mib_and_mb():
    # nvidia-smi total of an H200: 143771 * 2**20 = 150754820096
    assert parse_gpu("exact:143771MiB").memory_bytes == 150754820096
    assert parse_gpu("exact:143771MiB").capacity_bytes == 150754820096
    # 24000 * 10**6 = 24000000000
    assert parse_gpu("exact:24000MB").capacity_bytes == 24000000000
    # a bare MB is the vendor's (binary): 8192 MB on the box = 8 GiB = the card sold as 8 GB
    assert parse_gpu("8192MB").key == "8GB"


@pytest.mark.parametrize("text", ["0GB", "0 GiB", "0.0GiB", "-24GB", "-1 GiB", "0.0000000001GB", "exact:0B",
                                  "exact:-1GiB", "exact:0.1B"])
def test_non_positive_sizes_rejected(text):
    with pytest.raises(PlannerError) as err:
        parse_gpu(text)
    msg = str(err.value)
    assert repr(text) in msg
    assert "\n" not in msg
    assert "24GB" in msg and "exact:23.55GiB" in msg


@pytest.mark.parametrize("text", ["1" * 300 + "GB", "exact:" + "9" * 30 + "B", "2000000GB", "exact:2000TiB",
                                  "exact:1126000000000000001B"])
def test_absurd_sizes_are_one_line(text):
    # issue 23: "--gpu <300 digits>GB" raised OverflowError; 2**50 B = 1,048,576 GiB is the most accepted
    with pytest.raises(PlannerError) as err:
        parse_gpu(text)
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 300 and "at most 1,048,576 GiB" in msg


# --- catalog lookups ------------------------------------------------------------


@pytest.mark.parametrize(
    "text, key",
    [
        ("rtx4090", "rtx4090"),
        ("RTX 4090", "rtx4090"),
        ("rtx-4090", "rtx4090"),
        ("rtx_4090", "rtx4090"),
        ("4090", "rtx4090"),
        ("NVIDIA GeForce RTX 4090", "rtx4090"),
        ("GeForce RTX 4090", "rtx4090"),
        ("a100-80gb", "a100-80gb"),
        ("A100 80GB", "a100-80gb"),
        ("NVIDIA A100-SXM4-80GB", "a100-80gb"),  # nvidia-smi's name
        ("a100-40gb", "a100-40gb"),
        ("h100", "h100-sxm"),
        ("H100", "h100-sxm"),
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),  # nvidia-smi's name
        ("h100-pcie", "h100-pcie"),
        ("NVIDIA H100 PCIe", "h100-pcie"),  # nvidia-smi's name
        ("h200", "h200"),
        ("Tesla T4", "t4"),
        ("T4", "t4"),
        ("Tesla V100-SXM2-32GB", "v100-32gb"),  # nvidia-smi's name
        ("v100 16gb", "v100-16gb"),
        ("RTX A6000", "rtxa6000"),
        ("a6000", "rtxa6000"),
        ("RTX 6000 Ada Generation", "rtx6000ada"),
        ("L40S", "l40s"),
        ("l4", "l4"),
        ("A10", "a10"),
        ("GTX 1080 Ti", "gtx1080ti"),
        ("1080ti", "gtx1080ti"),
        ("Titan RTX", "titanrtx"),
        ("RTX 3060", "rtx3060"),
        ("rtx 3080", "rtx3080"),
        ("3090", "rtx3090"),
        ("3090 Ti", "rtx3090ti"),
        ("RTX 4060 Ti 16GB", "rtx4060ti-16gb"),
        ("4070 Ti", "rtx4070ti"),
    ],
)
def test_catalog_lookup(text, key):
    assert parse_gpu(text).key == key


def test_catalog_entry_is_the_catalog_object():
    gpu = parse_gpu("RTX 4090")
    assert gpu is next(g for g in CATALOG if g.key == "rtx4090")
    assert gpu.memory_bytes == 25769803776  # 24 * 2**30 = 25769803776 (card sold as "24 GB")
    # CUDA reports 23.64 GiB (public OOM messages): round(23.64 * 2**30) = 25383256719
    assert gpu.capacity_bytes == 25383256719
    assert "github.com" in gpu.capacity_source
    assert gpu.bf16 is True


def test_selected_memory_sizes():
    # 80 * 2**30 = 85899345920
    assert parse_gpu("a100-80gb").memory_bytes == 85899345920
    # 40 * 2**30 = 42949672960
    assert parse_gpu("a100-40gb").memory_bytes == 42949672960
    # 141 * 2**30 = 151397597184 (nvidia-smi shows 143771 MiB = 150754820096 bytes, just below)
    assert parse_gpu("h200").memory_bytes == 151397597184
    # 11 * 2**30 = 11811160064
    assert parse_gpu("2080ti").memory_bytes == 11811160064
    # 10 * 2**30 = 10737418240
    assert parse_gpu("rtx3080").memory_bytes == 10737418240


def test_every_key_name_and_alias_resolves_to_its_card():
    for gpu in CATALOG:
        for text in (gpu.key, gpu.name, *gpu.aliases):
            assert parse_gpu(text) is gpu, text
            assert parse_gpu(text.upper()) is gpu, text


# --- errors ---------------------------------------------------------------------


@pytest.mark.parametrize("text", ["rtx9999", "", "   ", "banana", "24", "24 G", "1e3GB", "nvidia"])
def test_unknown_gpu(text):
    with pytest.raises(PlannerError) as err:
        parse_gpu(text)
    msg = str(err.value)
    assert msg.startswith(f"unknown GPU {text!r}")
    assert "\n" not in msg
    assert "24GB" in msg and "exact:23.55GiB" in msg
    assert "rtx4090" in msg and "h100-sxm" in msg  # lists the catalog keys


def test_unknown_message_exact_start():
    with pytest.raises(PlannerError) as err:
        parse_gpu("rtx9999")
    assert str(err.value).startswith(
        "unknown GPU 'rtx9999': give a size as sold like 24GB, an exact capacity like exact:23.55GiB, or one of: gtx1080ti, rtx2080ti,"
    )


@pytest.mark.parametrize(
    "text, keys",
    [
        ("a100", ["a100-40gb", "a100-80gb"]),
        ("A100", ["a100-40gb", "a100-80gb"]),
        ("v100", ["v100-16gb", "v100-32gb"]),
        ("rtx30", ["rtx3060", "rtx3080", "rtx3090", "rtx3090ti"]),
    ],
)
def test_ambiguous_gpu(text, keys):
    with pytest.raises(PlannerError) as err:
        parse_gpu(text)
    msg = str(err.value)
    assert msg.startswith(f"ambiguous GPU {text!r}")
    assert "\n" not in msg
    for key in keys:
        assert key in msg


@pytest.mark.parametrize("text, suggestion", [("l40", "l40s"), ("rtx 6000", "rtx6000ada"), ("4060ti", "rtx4060ti-16gb")])
def test_unique_prefix_is_suggested_not_guessed(text, suggestion):
    with pytest.raises(PlannerError) as err:
        parse_gpu(text)
    msg = str(err.value)
    assert msg.startswith(f"unknown GPU {text!r} (did you mean {suggestion}?)")


def test_non_string_input():
    with pytest.raises(PlannerError) as err:
        parse_gpu(None)  # type: ignore[arg-type]
    assert "None" in str(err.value)


def test_planner_error_is_value_error():
    with pytest.raises(ValueError):
        parse_gpu("rtx9999")


# --- catalog integrity ------------------------------------------------------------


def _norm(text):
    # Mirrors planner.gpus._norm: only letters and digits, lower case, and a
    # leading vendor/brand word dropped.
    import re

    s = re.sub(r"[^a-z0-9]", "", text.lower())
    changed = True
    while changed:
        changed = False
        for prefix in ("nvidia", "geforce", "tesla", "quadro"):
            if s.startswith(prefix) and len(s) > len(prefix):
                s = s[len(prefix):]
                changed = True
    return s


def test_catalog_size():
    assert 20 <= len(CATALOG) <= 40


def test_keys_unique():
    keys = [g.key for g in CATALOG]
    assert len(keys) == len(set(keys))
    assert len({_norm(k) for k in keys}) == len(keys)


def test_no_name_or_alias_selects_two_cards():
    owner = {}
    for gpu in CATALOG:
        for text in (gpu.key, gpu.name, *gpu.aliases):
            form = _norm(text)
            assert owner.setdefault(form, gpu.key) == gpu.key, (
                f"{text!r} names both {owner[form]} and {gpu.key}"
            )


def test_no_alias_looks_like_a_size():
    for gpu in CATALOG:
        for text in (gpu.key, gpu.name, *gpu.aliases):
            # a catalog name must never be read as a generic size
            assert not parse_gpu(text).is_generic, text


@pytest.mark.parametrize("gpu", CATALOG, ids=lambda g: g.key)
def test_entry_is_well_formed(gpu):
    assert isinstance(gpu, GPU)
    assert gpu.source.strip()
    assert gpu.name.strip()
    assert gpu.compute_capability is not None
    assert gpu.bf16 == (cc_tuple(gpu.compute_capability) >= (8, 0))
    assert isinstance(gpu.memory_bytes, int)
    assert gpu.memory_bytes > 0
    assert gpu.memory_bytes % GIB == 0  # catalog cards have whole GiB
    # CUDA reports less than the physical size: 90 % (ECC on GDDR) to 99.5 %
    assert 0.90 * gpu.memory_bytes < gpu.capacity_bytes < 0.995 * gpu.memory_bytes
    assert gpu.capacity_source
    assert gpu.capacity_estimated or "https://github.com/" in gpu.capacity_source
    assert gpu.fp32_tflops is not None and gpu.fp32_tflops > 0
    assert gpu.bandwidth_gbs is not None and gpu.bandwidth_gbs > 0
    # only Pascal (no tensor cores) lacks an fp16 tensor figure
    if cc_tuple(gpu.compute_capability) >= (7, 0):
        assert gpu.fp16_tflops is not None and gpu.fp16_tflops > gpu.fp32_tflops
    else:
        assert gpu.fp16_tflops is None
    assert isinstance(gpu.aliases, tuple)


def test_required_cards_present():
    keys = {g.key for g in CATALOG}
    for key in [
        "gtx1080ti", "rtx2080ti", "titanrtx", "rtx3060", "rtx3080", "rtx3090", "rtx3090ti",
        "rtx4060ti-16gb", "rtx4070ti", "rtx4080", "rtx4090", "rtxa4000", "rtxa5000", "rtxa6000",
        "rtx6000ada", "t4", "v100-16gb", "v100-32gb", "a10", "a100-40gb", "a100-80gb", "l4",
        "l40s", "h100-sxm", "h100-pcie", "h200",
    ]:
        assert key in keys


def test_gpu_is_frozen():
    gpu = parse_gpu("rtx4090")
    with pytest.raises(dataclasses.FrozenInstanceError):
        gpu.memory_bytes = 1  # type: ignore[misc]


def test_catalog_rows():
    rows = catalog_rows()
    assert len(rows) == len(CATALOG)
    assert [r["key"] for r in rows] == [g.key for g in CATALOG]
    row = next(r for r in rows if r["key"] == "rtx4090")
    assert row["memory_bytes"] == 25769803776  # 24 * 2**30
    assert row["memory_gib"] == 24.0
    assert row["cuda_total_gib"] == 23.64
    assert row["bf16"] is True
    assert row["compute_capability"] == "8.9"
    assert isinstance(row["aliases"], str)
    assert row["source"]
    for r in rows:
        assert set(r) == set(rows[0])


# --- import hygiene ---------------------------------------------------------------


def test_import_does_not_pull_heavy_modules():
    code = (
        "import planner.gpus, sys; "
        "heavy = [m for m in ('torch', 'numpy', 'pandas') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


# --- capacity CUDA reports (issue 9, defect 5) ----------------------------------------


@pytest.mark.parametrize("key, gib", [
    ("rtx3090", "23.70"), ("rtx4090", "23.64"), ("a100-80gb", "79.25"), ("h100-sxm", "79.11"),
    ("t4", "14.75"), ("v100-32gb", "31.74"), ("rtx3060", "11.76"), ("a100-40gb", "39.50"),
])
def test_sourced_cuda_totals(key, gib):
    from decimal import Decimal

    gpu = parse_gpu(key)
    # the OOM messages print GiB to two decimals: bytes = round(x * 2**30)
    assert gpu.capacity_bytes == int((Decimal(gib) * GIB).to_integral_value())
    assert not gpu.capacity_estimated


def test_marketed_classes():
    # 80 GB: median(h100-sxm 79.11, a100-80gb 79.25) = 79.18 GiB
    assert parse_gpu("80GB").capacity_bytes == int((round(79.11 * GIB) + round(79.25 * GIB)) / 2)
    # 12 GB: median(rtx4070ti 11.70, rtx3060 11.76) = 11.73 GiB
    assert abs(parse_gpu("12GiB").capacity_bytes / GIB - 11.73) < 0.005


# --- issue 23: --gpu accepted and ignored -------------------------------------------------------


def test_calibrate_gpu_needs_the_cuda_backend_and_a_catalog_card():
    from typer.testing import CliRunner

    from planner.cli import app
    from planner.gpus import calibration_card

    # fake backend: the profile is never picked by --gpu (profiles.for_gpu takes hardware profiles only)
    res = CliRunner().invoke(app, ["calibrate", "--name", "x", "--gpu", "rtx4090"])
    assert res.exit_code == 2 and res.output.strip().startswith("error: --gpu: only with --backend cuda"), res.output
    with pytest.raises(PlannerError, match="not a size"):
        calibration_card("24GB", "cuda")
    assert calibration_card("rtx4090", "cuda").key == "rtx4090"
    assert calibration_card(None, "fake") is None


def test_timeline_draws_the_cards_capacity_labelled_by_name():
    from planner.report import plot as P

    card = parse_gpu("exact:25769803776B")
    points = [(0, {"activations": 2**30}), (1, {"activations": 2 * 2**30})]
    fig = P.timeline_figure(points, [(0, "forward")], 1, gpus=[card])
    ax = fig.axes[0]
    # the capacity line at 25769803776 / 2**30 = 24.0 GiB, and the axis reaches it
    assert any(list(line.get_ydata()) == [24.0, 24.0] for line in ax.get_lines())
    assert ax.get_ylim()[1] >= 24.0
    labels = [t.get_text() for t in ax.texts]
    assert "exactly 24.00 GiB (24.00 GiB CUDA-reported)" in labels
    assert not any("25769803776" in t for t in labels)  # never raw bytes


@pytest.mark.parametrize("command", ["profile", "estimate", "recommend", "table", "plot", "oom", "check"])
def test_every_gpu_flag_states_the_one_rule(command):
    from typer.testing import CliRunner

    from planner.cli import app

    res = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "400"})
    assert res.exit_code == 0
    text = " ".join(res.stdout.split())
    assert "A bare size is a card as sold, a whole number of GB" in text and "exact:SIZE is exactly that capacity" in text
