"""GPU catalog and the parser for the ``--gpu`` argument.

Standard library only: this module must import without torch, numpy or pandas,
so the planner can answer "does it fit on a 24 GB card?" on a laptop.

Memory sizes
------------
Vendors label GPU memory in "GB", but the memory itself is built from DRAM
chips whose capacities are powers of two, so a card sold as "24 GB" has
24 GiB = 24 * 2**30 bytes. The catalog therefore stores ``memory_bytes`` as
``N * GIB`` for a card labelled "N GB". This is the physical capacity; what
CUDA reports is smaller (next section), and the CUDA context then takes more
out of that (the planner counts it in the device total). Evidence for the binary reading: nvidia-smi reports an "80GB" H100
as 81559 MiB (80 GiB = 81920 MiB, minus 361 MiB reserved) and an "141GB" H200
as 143771 MiB (141 GiB = 144384 MiB, minus 613 MiB reserved); the decimal
reading (141 * 10**9 bytes = 134466 MiB) would be smaller than what the
driver actually reports.

What the planner budgets against
--------------------------------
Not the physical size: CUDA reports less. ``torch.cuda.get_device_properties(i)
.total_memory`` (the "total capacity" of an out-of-memory message) of an RTX
4090 is 23.64 GiB, not 24. Every catalog entry therefore carries
``cuda_total_bytes``, that reported figure, with ``capacity_source`` citing a
public OOM message that shows it (the messages print GiB to two decimals, so a
figure is good to +-5 MiB). Cards with ECC on GDDR memory (T4, A10, L4, L40S,
RTX 6000 Ada with ECC on) lose 1/16 of it to ECC and report about 92 %. Where
no public figure was found the entry says "estimate" and uses
``ESTIMATE_RATIO`` (the median reported/physical ratio of the sourced entries,
ECC-on cards and the others separately). ``GPU.capacity_bytes`` is what every
verdict compares the device total with.

``--gpu`` given as a size: one rule
----------------------------------
:data:`SIZE_RULE` (printed in the ``--help`` of every command that takes ``--gpu``):

* A bare size is the size a card is *sold* as, as written on the box, where a
  vendor's "GB" is GiB (and "MB" MiB): ``24GB``, ``24GiB``, ``8192MB`` all name a
  card sold as 24 (resp. 8) GB. It must come to a whole number of GiB. Its
  capacity is what CUDA reports for such a card: the median of the sourced
  ``cuda_total_bytes`` of the catalog cards of that size (24 GB: 21.99, 23.64,
  23.70 GiB -> 23.64 GiB); for a size no sourced card has, N GiB x
  ``ESTIMATE_RATIO``, and the capacity source says it is an assumption.
* ``exact:SIZE`` (or ``=SIZE``) is exactly that capacity as CUDA reports it, in
  bytes: SI units are decimal (``exact:24GB`` = 24 * 10**9 B), IEC units binary
  (``exact:23.55GiB`` = 23.55 * 2**30 B, rounded to a byte).
* Any other bare size (``23.55GiB``, ``.5GB``, ``24000MB``) is refused with the
  ``exact:`` spelling to use: no card is sold as 23.55 GB, and reading it either
  way silently would be a guess.

The card's name says what was taken: "card sold as 24 GB" or "exactly 23.55 GiB";
:meth:`GPU.capacity_note` prints ``24GB -> card sold as 24 GB: 23.64 GiB as CUDA
reports it (source)``.

Throughput figures
------------------
``fp16_tflops`` is the dense (no 2:4 sparsity) FP16 tensor-core peak with FP32
accumulate where the vendor distinguishes (GeForce cards run FP32 accumulate
at half the FP16-accumulate rate); ``fp32_tflops`` is the non-tensor FP32 peak;
``bandwidth_gbs`` is in GB/s (10**9 bytes per second). All are vendor peaks at
the reference boost clock, not measured rates. Where the vendor quotes only a
with-sparsity tensor figure, the dense figure is half of it; where a number is
derived (SM count x boost clock x per-SM rate) or taken from a secondary
source, the entry's ``source`` says so.
"""

from __future__ import annotations

import re
from dataclasses import replace
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Optional

from planner.records import dataclass
from planner.errors import PlannerError
from planner.gpu_rule import GPU_HELP, SIZE_RULE

GIB = 2**30
"""Bytes in a gibibyte (binary gigabyte)."""

GB = 10**9
"""Bytes in a (decimal) gigabyte."""

MIB = 2**20
MB = 10**6


@dataclass(frozen=True)
class GPU:
    """One GPU model: memory, precision support and vendor peak throughput."""

    key: str
    """Catalog id, e.g. "rtx4090"; for a card given by size, the size as typed, e.g. "24GB"."""
    name: str
    """Marketing name, e.g. "NVIDIA GeForce RTX 4090"."""
    memory_bytes: int
    """Physical memory in bytes; a card labelled "N GB" has N GiB (see module docstring)."""
    bf16: bool
    """Native bf16 support (compute capability >= 8.0); False when unknown."""
    fp16_tflops: Optional[float]
    """Dense FP16 tensor-core peak, FP32 accumulate, no sparsity; None if unknown or no tensor cores."""
    fp32_tflops: Optional[float]
    """Non-tensor FP32 peak in TFLOPS; None if unknown."""
    bandwidth_gbs: Optional[float]
    """Memory bandwidth in GB/s (10**9 bytes per second); None if unknown."""
    compute_capability: Optional[str]
    """CUDA compute capability, e.g. "8.9"; None for a card given only by size."""
    aliases: tuple[str, ...] = ()
    """Extra names that select this card (matched ignoring case, spaces, dashes and underscores)."""
    source: str = ""
    """Where the numbers come from: spec sheet, whitepaper or secondary source."""
    cuda_total_bytes: Optional[int] = None
    """What CUDA reports as the card's total memory (``torch.cuda.get_device_properties(i).total_memory``,
    the "total capacity" of an OOM message); None means "the same as memory_bytes"."""
    capacity_source: str = ""
    """Where ``cuda_total_bytes`` comes from: a public OOM report, an estimate, or the user's exact figure."""
    given: str = ""
    """For a card given by size: the --gpu text as typed (outputs say what it was taken as)."""

    @property
    def capacity_bytes(self) -> int:
        """The capacity verdicts are budgeted against: the CUDA-reported total."""
        return self.cuda_total_bytes if self.cuda_total_bytes is not None else self.memory_bytes

    @property
    def capacity_estimated(self) -> bool:
        """True when the capacity is an estimate or an assumption, not a reported figure."""
        return self.capacity_source.startswith(("estimate", "assumption"))

    def capacity_note(self) -> str:
        """One line for outputs: which capacity was used and where it came from."""
        if not self.given:
            return (f"capacity used: {self.capacity_bytes / GIB:.2f} GiB ({self.capacity_bytes:,} B) "
                    f"CUDA-reported total of {self.name}; source: {self.capacity_source or 'as given'}")
        figure = "" if self.name.startswith("exactly ") else f": {self.capacity_bytes / GIB:.2f} GiB"
        return (f"capacity used: {self.given} -> {self.name}{figure} ({self.capacity_bytes:,} B) as CUDA reports it; "
                f"source: {self.capacity_source or 'as given'}")

    def capacity_json(self) -> dict:
        return {"capacity_bytes": self.capacity_bytes, "capacity_source": self.capacity_source,
                "capacity_estimated": self.capacity_estimated}

    @property
    def label(self) -> str:
        """How figures and tables name the card: the catalog key, or for a card given by size its name
        ("card sold as 24 GB", "exactly 23.55 GiB"), never raw bytes."""
        return self.name if self.is_generic else self.key

    @property
    def memory_gib(self) -> float:
        """Memory in GiB (2**30 bytes)."""
        return self.memory_bytes / GIB

    @property
    def is_generic(self) -> bool:
        """True for a card given only by its memory size (no catalog entry)."""
        return self.compute_capability is None


def cc_tuple(compute_capability: str) -> tuple[int, int]:
    """``"8.9"`` -> ``(8, 9)``, for comparing compute capabilities."""
    major, minor = compute_capability.split(".")
    return int(major), int(minor)


def _card(
    key: str,
    name: str,
    gib: int,
    cc: str,
    fp16: Optional[float],
    fp32: float,
    bw: float,
    source: str,
    aliases: tuple[str, ...] = (),
) -> GPU:
    return GPU(
        key=key,
        name=name,
        memory_bytes=gib * GIB,
        bf16=cc_tuple(cc) >= (8, 0),
        fp16_tflops=fp16,
        fp32_tflops=fp32,
        bandwidth_gbs=bw,
        compute_capability=cc,
        aliases=aliases,
        source=source,
    )


_TURING_WP = "NVIDIA Turing GPU Architecture whitepaper (WP-09183-001)"
_GA102_WP = "NVIDIA Ampere GA102 GPU Architecture whitepaper v2.0"
_ADA_WP = "NVIDIA Ada GPU Architecture whitepaper v2.01"
_A100_DS = (
    "NVIDIA A100 Tensor Core GPU datasheet "
    "(https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/"
    "nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf)"
)
_H100_DS = (
    "NVIDIA H100 Tensor Core GPU datasheet (FP16 tensor 1,979 | 1,513 TFLOPS with sparsity "
    "for SXM | PCIe; dense = half, as in the NVIDIA Hopper architecture whitepaper)"
)
_DERIVED = "dense FP32-accumulate tensor rate derived as SMs x boost clock x per-SM rate of the architecture"

# Grouped by architecture, oldest first. Memory is N * GIB for a card labelled
# "N GB" (see the module docstring for why).
CATALOG: tuple[GPU, ...] = (
    # --- Pascal (no tensor cores, no bf16) -----------------------------------
    _card(
        "gtx1080ti", "NVIDIA GeForce GTX 1080 Ti", 11, "6.1", None, 11.3, 484.0,
        "NVIDIA GeForce GTX 1080 Ti product specs (11 GB GDDR5X, 11 Gbps, 352-bit = 484 GB/s; "
        "11.3 TFLOPS FP32 at 1582 MHz boost); fp16_tflops None: GP102 has no tensor cores",
        aliases=("1080ti",),
    ),
    # --- Turing (tensor cores, no bf16) --------------------------------------
    _card(
        "rtx2080ti", "NVIDIA GeForce RTX 2080 Ti", 11, "7.5", 53.8, 13.4, 616.0,
        f"{_TURING_WP}, reference-clock RTX 2080 Ti (Founders Edition: 14.2 FP32 / 56.9 tensor); "
        "616 GB/s and FE figures cross-checked with Tom's Hardware spec table",
        aliases=("2080ti",),
    ),
    _card(
        "titanrtx", "NVIDIA TITAN RTX", 24, "7.5", 130.0, 16.3, 672.0,
        "NVIDIA TITAN RTX launch specs (130 Tensor TFLOPS, 24 GB GDDR6, 672 GB/s); "
        "FP32 16.3 TFLOPS (4608 cores x 1770 MHz) from Tom's Hardware spec table",
        aliases=("titan-rtx-24gb",),
    ),
    _card(
        "t4", "NVIDIA Tesla T4", 16, "7.5", 65.0, 8.1, 320.0,
        "NVIDIA T4 Tensor Core GPU datasheet (8.1 TFLOPS FP32, 65 TFLOPS FP16/FP32 mixed "
        "precision, 16 GB GDDR6, 320+ GB/s)",
        aliases=("t4-16gb",),
    ),
    # --- Volta (tensor cores, no bf16) ---------------------------------------
    _card(
        "v100-16gb", "NVIDIA Tesla V100 SXM2 16GB", 16, "7.0", 125.0, 15.7, 900.0,
        "NVIDIA Tesla V100 datasheet, SXM2 column (15.7 TFLOPS FP32, 125 TFLOPS tensor, 900 GB/s)",
        aliases=("v100-sxm2-16gb-hbm2",),
    ),
    _card(
        "v100-32gb", "NVIDIA Tesla V100 SXM2 32GB", 32, "7.0", 125.0, 15.7, 900.0,
        "NVIDIA Tesla V100 datasheet, SXM2 column (15.7 TFLOPS FP32, 125 TFLOPS tensor, 900 GB/s)",
        aliases=("v100-sxm2-32gb-hbm2",),
    ),
    # --- Ampere GA10x (bf16) -------------------------------------------------
    _card(
        "rtx3060", "NVIDIA GeForce RTX 3060 (12 GB)", 12, "8.6", 25.5, 12.7, 360.0,
        "NVIDIA GeForce RTX 3060 specs (3584 cores, 1.78 GHz boost, 12 GB GDDR6 192-bit; "
        "13 shader-TFLOPS, 101 tensor-TFLOPS sparse FP16-acc); bandwidth 15 Gbps x 192 bit / 8; "
        f"{_DERIVED} (28 x 1.777 GHz x 512); not from a datasheet table",
        aliases=("3060", "rtx3060-12gb"),
    ),
    _card(
        "rtx3080", "NVIDIA GeForce RTX 3080 (10 GB)", 10, "8.6", 59.5, 29.8, 760.0,
        f"{_GA102_WP}, Table 1 (GeForce RTX 3080 10 GB)",
        aliases=("3080", "rtx3080-10gb"),
    ),
    _card(
        "rtx3090", "NVIDIA GeForce RTX 3090", 24, "8.6", 71.0, 35.6, 936.0,
        f"{_GA102_WP}, Appendix A (GeForce RTX 3090)",
        aliases=("3090",),
    ),
    _card(
        "rtx3090ti", "NVIDIA GeForce RTX 3090 Ti", 24, "8.6", 80.0, 40.0, 1008.0,
        "NVIDIA GeForce RTX 3090 Ti launch specs (10752 cores, 1.86 GHz boost, 40 shader-TFLOPS, "
        "24 GB GDDR6X 21 Gbps 384-bit = 1008 GB/s); "
        f"{_DERIVED} (84 x 1.86 GHz x 512); not from a datasheet table",
        aliases=("3090ti",),
    ),
    _card(
        "rtxa4000", "NVIDIA RTX A4000", 16, "8.6", 76.7, 19.2, 448.0,
        "NVIDIA RTX A4000 datasheet (19.2 TFLOPS FP32, 153.4 tensor TFLOPS with sparsity, "
        "16 GB GDDR6, 448 GB/s)",
        aliases=("a4000",),
    ),
    _card(
        "rtxa5000", "NVIDIA RTX A5000", 24, "8.6", 111.1, 27.8, 768.0,
        "NVIDIA RTX A5000 datasheet (27.8 TFLOPS FP32, 222.2 tensor TFLOPS with sparsity, "
        "24 GB GDDR6, 768 GB/s)",
        aliases=("a5000",),
    ),
    _card(
        "rtxa6000", "NVIDIA RTX A6000", 48, "8.6", 154.8, 38.7, 768.0,
        f"{_GA102_WP}, Appendix C (RTX A6000: 38.7 FP32, 154.8 | 309.7 FP16 tensor FP32-acc); "
        "NVIDIA RTX A6000 datasheet (48 GB GDDR6, 768 GB/s)",
        aliases=("a6000",),
    ),
    _card(
        "a10", "NVIDIA A10", 24, "8.6", 125.0, 31.2, 600.0,
        "NVIDIA A10 Tensor Core GPU datasheet (31.2 TFLOPS FP32, FP16 tensor 125 | 250 TFLOPS "
        "with sparsity, 24 GB GDDR6, 600 GB/s)",
        aliases=("a10-24gb",),
    ),
    # --- Ampere GA100 (bf16) -------------------------------------------------
    _card(
        "a100-40gb", "NVIDIA A100 SXM4 40GB", 40, "8.0", 312.0, 19.5, 1555.0,
        f"{_A100_DS}, SXM 40GB column",
        aliases=("a100-40g",),
    ),
    _card(
        "a100-80gb", "NVIDIA A100 SXM4 80GB", 80, "8.0", 312.0, 19.5, 2039.0,
        f"{_A100_DS}, SXM 80GB column",
        aliases=("a100-80g",),
    ),
    # --- Ada Lovelace (bf16, fp8) --------------------------------------------
    _card(
        "rtx4060ti-16gb", "NVIDIA GeForce RTX 4060 Ti 16GB", 16, "8.9", 44.1, 22.1, 288.0,
        "NVIDIA GeForce RTX 4060 Ti specs (4352 cores, 2.535 GHz boost, 22 shader-TFLOPS, "
        "16 GB GDDR6 18 Gbps 128-bit = 288 GB/s); "
        f"{_DERIVED} (34 x 2.535 GHz x 512); not from a datasheet table",
        aliases=("4060ti-16gb",),
    ),
    _card(
        "rtx4070ti", "NVIDIA GeForce RTX 4070 Ti", 12, "8.9", 80.2, 40.1, 504.0,
        "NVIDIA GeForce RTX 4070 Ti specs (7680 cores, 2.61 GHz boost, 40 shader-TFLOPS, "
        "12 GB GDDR6X 21 Gbps 192-bit = 504 GB/s); "
        f"{_DERIVED} (60 x 2.61 GHz x 512); not from a datasheet table",
        aliases=("4070ti",),
    ),
    _card(
        "rtx4080", "NVIDIA GeForce RTX 4080", 16, "8.9", 97.5, 48.7, 716.8,
        f"{_ADA_WP}, Appendix A (GeForce RTX 4080, 16 GB GDDR6X 22.4 Gbps 256-bit)",
        aliases=("4080", "rtx4080-16gb"),
    ),
    _card(
        "rtx4090", "NVIDIA GeForce RTX 4090", 24, "8.9", 165.2, 82.6, 1008.0,
        f"{_ADA_WP}, Table 1 / Appendix A (GeForce RTX 4090)",
        aliases=("4090",),
    ),
    _card(
        "rtx6000ada", "NVIDIA RTX 6000 Ada Generation", 48, "8.9", 364.2, 91.1, 960.0,
        f"{_ADA_WP}, Appendix A (RTX 6000 Ada: 91.1 FP32, 364.2 FP16 tensor FP32-acc); "
        "NVIDIA RTX 6000 Ada datasheet (48 GB GDDR6, 960 GB/s)",
        aliases=("6000ada", "rtx6000-ada-48gb"),
    ),
    _card(
        "l4", "NVIDIA L4", 24, "8.9", 121.0, 30.3, 300.0,
        "NVIDIA L4 Tensor Core GPU datasheet (30.3 TFLOPS FP32, FP16 tensor 242 TFLOPS with "
        "sparsity, 24 GB GDDR6, 300 GB/s)",
        aliases=("l4-24gb",),
    ),
    _card(
        "l40s", "NVIDIA L40S", 48, "8.9", 362.05, 91.6, 864.0,
        "NVIDIA L40S datasheet (91.6 TFLOPS FP32, FP16 tensor 362.05 | 733 TFLOPS with "
        "sparsity, 48 GB GDDR6, 864 GB/s)",
        aliases=("l40s-48gb",),
    ),
    # --- Hopper (bf16, fp8) --------------------------------------------------
    _card(
        # nvidia-smi calls this card "NVIDIA H100 80GB HBM3"; plain "h100"
        # selects it because it is the common H100 (both H100s have 80 GB).
        "h100-sxm", "NVIDIA H100 SXM5 80GB", 80, "9.0", 989.4, 67.0, 3350.0,
        f"{_H100_DS}, SXM column (67 TFLOPS FP32, 3.35 TB/s HBM3)",
        aliases=("h100", "h100-sxm5", "h100-80gb", "h100-80gb-hbm3"),
    ),
    _card(
        "h100-pcie", "NVIDIA H100 PCIe 80GB", 80, "9.0", 756.0, 51.0, 2000.0,
        f"{_H100_DS}, PCIe column (51 TFLOPS FP32, 2 TB/s HBM2e); "
        "H100 PCIe product brief PB-11133-001 (>2,000 GB/s)",
        aliases=("h100-pcie-80gb-hbm2e",),
    ),
    _card(
        # "141GB" taken as 141 GiB = 151397597184 bytes: nvidia-smi reports
        # 143771 MiB (= 141 GiB less 613 MiB reserved), more than the
        # 134466 MiB that 141 * 10**9 bytes would be.
        "h200", "NVIDIA H200 SXM 141GB", 141, "9.0", 989.4, 67.0, 4800.0,
        "NVIDIA H200 Tensor Core GPU datasheet, SXM column (141 GB HBM3e, 4.8 TB/s, 67 TFLOPS "
        "FP32, FP16 tensor 1,979 TFLOPS with sparsity; dense = half)",
        aliases=("h200-sxm", "h200-141gb"),
    ),
)

# What CUDA reports as total memory (torch total_memory / the OOM message's
# "total capacity", printed in GiB to two decimals), per catalog key, with the
# public reports it is read from. Linux figures; Windows (WDDM) prints the
# physical size ("24.00 GiB") and is not used.
_GH = "https://github.com/"
_REPORTED: dict[str, tuple[str, str]] = {
    "rtx2080ti": ("10.76", f"OOM messages '10.76 GiB total capacity' on RTX 2080 Ti: {_GH}JDAI-CV/image-captioning/issues/11, {_GH}ispc-lab/TMA/issues/5"),
    "t4": ("14.75", f"OOM message 'total capacity of 14.75 GiB' on a Colab T4 (ECC on): {_GH}hpcaitech/Open-Sora/issues/697"),
    "v100-32gb": ("31.74", f"OOM messages '31.74 GiB total capacity' on V100 32GB: {_GH}liucongg/ChatGLM-Finetuning/issues/73, {_GH}haotian-liu/LLaVA/issues/812"),
    "rtx3060": ("11.76", f"OOM message '11.76 GiB total capacity' on RTX 3060 12GB: {_GH}TencentARC/PhotoMaker/issues/47 (11.75 in {_GH}Kunhao-Liu/StyleGaussian/issues/12)"),
    "rtx3080": ("9.78", f"OOM message '9.78 GiB total capacity' on RTX 3080: {_GH}zai-org/CogVideo/issues/34"),
    "rtx3090": ("23.70", f"OOM messages '23.70 GiB total capacity' on RTX 3090: {_GH}GaoLii/DSP/issues/10, {_GH}yandex/YaLM-100B/issues/9"),
    "rtxa4000": ("15.61", f"OOM message 'total capacity of 15.61 GiB' on RTX A4000: {_GH}DengKaiCQ/VGGT-Long/issues/6"),
    "a10": ("21.99", f"OOM message 'total capacty of 21.99 GiB' on a Lambda A10 (ECC on): {_GH}zai-org/CogVLM/issues/236; "
                     f"23.70 GiB with ECC off in {_GH}tatsu-lab/stanford_alpaca/issues/76 (the smaller is kept)"),
    "a100-40gb": ("39.50", f"OOM message 'total capacity of 39.50 GiB' on A100 40GB: {_GH}TianheWu/CoSeR/issues/10 "
                           f"(39.59 in {_GH}raoyongming/DenseCLIP/issues/52; the smaller is kept)"),
    "a100-80gb": ("79.25", f"OOM messages '79.25 GiB total capacity' on A100 80GB: {_GH}levihsu/OOTDiffusion/issues/235, {_GH}wbfwonderful/Vad-R1/issues/11"),
    "rtx4070ti": ("11.70", f"OOM message '11.70 GiB total capacity' with nvidia-smi showing an RTX 4070 Ti: {_GH}Kwai-Kolors/Kolors/issues/11"),
    "rtx4090": ("23.64", f"OOM messages 'total capacity of 23.64 GiB' on RTX 4090: {_GH}ali-vilab/VGen/issues/104, {_GH}3DTopia/Phidias-Diffusion/issues/8 "
                         f"(23.65 in {_GH}TRI-ML/packnet-sfm/issues/250)"),
    "rtx6000ada": ("44.43", f"OOM message 'total capacity of 44.43 GiB' with nvidia-smi showing an RTX 6000 Ada (ECC on): {_GH}DINGYANB/MTVCrafter/issues/21"),
    "h100-sxm": ("79.11", f"OOM message 'total capacity of 79.11 GiB' on H100 80GB: {_GH}vllm-project/vllm/issues/27508"),
}
_ECC_ON = frozenset({"t4", "a10", "rtx6000ada", "l4", "l40s"})
"""Cards whose reported (or, for L4/L40S, expected) capacity has GDDR ECC on (1/16 of the memory)."""


def _gib_text_to_bytes(text: str) -> int:
    return int((Decimal(text) * GIB).to_integral_value(rounding=ROUND_HALF_EVEN))


def _median(values) -> float:
    """statistics.median, without importing statistics (2 ms of `vramplan estimate`'s start-up)."""
    v = sorted(values)
    m = len(v) // 2
    return v[m] if len(v) % 2 else (v[m - 1] + v[m]) / 2


def _ratio(ecc: bool) -> float:
    vals = [_gib_text_to_bytes(v) / g.memory_bytes for g in CATALOG for k, (v, _) in _REPORTED.items()
            if g.key == k and (k in _ECC_ON) == ecc]
    return _median(vals)


ESTIMATE_RATIO = _ratio(False)
"""Median reported/physical ratio of the sourced non-ECC entries (about 0.98); used for estimates."""
ESTIMATE_RATIO_ECC = _ratio(True)
"""The same over the sourced ECC-on entries (T4, A10, RTX 6000 Ada; about 0.92)."""


def _with_capacity(gpu: GPU) -> GPU:
    if gpu.key in _REPORTED:
        text, src = _REPORTED[gpu.key]
        return replace(gpu, cuda_total_bytes=_gib_text_to_bytes(text), capacity_source=src)
    ecc = gpu.key in _ECC_ON
    ratio = ESTIMATE_RATIO_ECC if ecc else ESTIMATE_RATIO
    return replace(
        gpu,
        cuda_total_bytes=int(gpu.memory_bytes * ratio),
        capacity_source=(f"estimate: no public report found; {gpu.memory_gib:g} GiB x {ratio:.4f}, the median "
                         f"reported/physical ratio of the sourced {'ECC-on ' if ecc else ''}catalog cards"),
    )


CATALOG = tuple(_with_capacity(g) for g in CATALOG)


def marketed_capacity(gib: int) -> tuple[int, str]:
    """CUDA-reported capacity of a card sold as ``gib`` GB, and where the figure comes from.

    The median of the sourced catalog figures for cards of that size; for a size no
    sourced card has, ``gib`` GiB x ESTIMATE_RATIO, labelled as an assumption.
    """
    sized = sorted((g.cuda_total_bytes, g.key) for g in CATALOG
                   if g.memory_bytes == gib * GIB and g.key in _REPORTED)
    if sized:
        value = int(_median(v for v, _ in sized))
        listed = ", ".join(f"{k} {v / GIB:.2f}" for v, k in sized)
        return value, (f"median of the CUDA-reported totals of catalog cards sold as {gib} GB "
                       f"({listed} GiB; see `vramplan gpus`)")
    return int(gib * GIB * ESTIMATE_RATIO), (
        f"assumption: no sourced catalog card of {gib} GB; {gib} GiB x {ESTIMATE_RATIO:.4f} (median "
        "reported/physical ratio of the sourced catalog cards); give the exact figure, e.g. --gpu exact:23.55GiB")


_SIZE_UNITS = {"tb": (10**12, "TB"), "tib": (2**40, "TiB"), "gb": (GB, "GB"), "gib": (GIB, "GiB"),
               "mb": (MB, "MB"), "mib": (MIB, "MiB"), "kb": (10**3, "KB"), "kib": (2**10, "KiB"), "b": (1, "B")}
"""Units of ``exact:SIZE``: SI decimal, IEC binary."""
_SOLD_UNITS = {"tb": 2**40, "tib": 2**40, "gb": GIB, "gib": GIB, "mb": MIB, "mib": MIB, "kb": 2**10, "kib": 2**10, "b": 1}
"""Units of a bare (sold-as) size: a vendor's "GB" on the box is GiB (module docstring)."""
_SIZE_RE = re.compile(r"^\s*(exact:|=)?\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*(tib|tb|gib|gb|mib|mb|kib|kb|b)\s*$",
                      re.IGNORECASE)
MAX_SIZE_BYTES = 2**50
"""Largest --gpu size accepted (1 PiB): far above any GPU, small enough for every figure to stay exact."""


_VENDOR_PREFIXES = ("nvidia", "geforce", "tesla", "quadro")


def _norm(text: str) -> str:
    """Lower-case, keep only letters and digits, drop leading vendor/brand words."""
    s = re.sub(r"[^a-z0-9]", "", text.lower())
    changed = True
    while changed:
        changed = False
        for prefix in _VENDOR_PREFIXES:
            if s.startswith(prefix) and len(s) > len(prefix):
                s = s[len(prefix):]
                changed = True
    return s


def _forms(gpu: GPU) -> set[str]:
    """Every normalised string that selects ``gpu``."""
    return {_norm(gpu.key), _norm(gpu.name), *(_norm(a) for a in gpu.aliases)}


def _build_index() -> dict[str, GPU]:
    index: dict[str, GPU] = {}
    for gpu in CATALOG:
        for form in _forms(gpu):
            other = index.get(form)
            if other is not None and other.key != gpu.key:
                raise AssertionError(f"GPU catalog: {form!r} names both {other.key} and {gpu.key}")
            index[form] = gpu
    return index


_INDEX = _build_index()


def _valid_forms() -> str:
    keys = ", ".join(g.key for g in CATALOG)
    return f"give a size as sold like 24GB, an exact capacity like exact:23.55GiB, or one of: {keys}"


def gib_text(nbytes: int) -> str:
    """A capacity as a label: GiB to two decimals (never raw bytes)."""
    return f"{nbytes / GIB:.2f} GiB"


def _parse_size(text: str, exact: bool, number: str, unit: str) -> GPU:
    shown_text = text.strip()
    digits = number.lstrip("+-").split(".")[0]
    if len(digits) > 16:  # Decimal would take it, but no figure downstream should see a 10**300-byte card
        raise PlannerError(f"bad GPU size {shown_text[:40]!r}: {len(digits)} digits; a GPU size is at most "
                           f"{MAX_SIZE_BYTES // GIB:,} GiB; give a size like 24GB or exact:23.55GiB")
    try:
        amount = Decimal(number)
    except InvalidOperation:  # pragma: no cover - the regex admits only decimals
        raise PlannerError(f"bad GPU size {shown_text!r}: {_valid_forms()}") from None
    scale = (_SIZE_UNITS[unit.lower()][0] if exact else _SOLD_UNITS[unit.lower()])
    value = amount * scale
    nbytes = int(value.to_integral_value(rounding=ROUND_HALF_EVEN))
    if amount <= 0 or nbytes <= 0:
        raise PlannerError(f"bad GPU size {shown_text!r}: the size must be greater than zero; give a size like 24GB "
                           "or exact:23.55GiB")
    if nbytes > MAX_SIZE_BYTES:
        raise PlannerError(f"bad GPU size {shown_text!r}: larger than any GPU (at most {MAX_SIZE_BYTES // GIB:,} GiB); "
                           "give a size like 24GB or exact:23.55GiB")
    if not exact:
        if value % GIB:
            raise PlannerError(
                f"bad GPU size {shown_text!r}: a bare size is a card as sold, a whole number of GB (24GB, 24GiB, "
                f"8192MB); for exactly this capacity as CUDA reports it write exact:{shown_text.lstrip('+')}")
        # "24GB" / "24GiB" / "24576MiB": a card sold as 24 GB (24 GiB of DRAM); budget against
        # what CUDA reports for that size class.
        gib = int(value // GIB)
        capacity, source = marketed_capacity(gib)
        return _generic(f"{gib}GB", f"card sold as {gib} GB", gib * GIB,
                        "user-given size as sold; no catalog entry", capacity, source, given=shown_text)
    unit_label = _SIZE_UNITS[unit.lower()][1]
    shown = format(amount.normalize(), "f")
    label = gib_text(nbytes) if nbytes >= 10 * MIB else f"{nbytes / MIB:.3f} MiB"
    key = f"exact:{shown}{unit_label}" if unit_label != "B" else f"exact:{label.replace(' ', '')}"
    return _generic(key, f"exactly {label}", nbytes,
                    "user-given exact capacity; no catalog entry", nbytes,
                    f"exact figure as given (--gpu {shown_text})", given=shown_text)


def _generic(key: str, name: str, memory_bytes: int, source: str, capacity: int, capacity_source: str,
             given: str = "") -> GPU:
    """A card known only by its size: no speed figures, no bf16 claim."""
    return GPU(key=key, name=name, memory_bytes=memory_bytes, bf16=False, fp16_tflops=None, fp32_tflops=None,
               bandwidth_gbs=None, compute_capability=None, aliases=(), source=source,
               cuda_total_bytes=capacity, capacity_source=capacity_source, given=given)


def exact_gpu(nbytes: int, source: str) -> GPU:
    """A card of exactly ``nbytes`` as CUDA reports it (e.g. an OOM message's capacity), named in GiB."""
    return _generic(f"exact:{gib_text(nbytes).replace(' ', '')}", f"exactly {gib_text(nbytes)}", nbytes,
                    "exact capacity; no catalog entry", nbytes, source)


def parse_gpu(text: str) -> GPU:
    """Turn a ``--gpu`` argument into a :class:`GPU`.

    Accepted forms:

    * a size as sold (:data:`SIZE_RULE`): a whole number of GB, a vendor's GB
      being GiB, ``"24GB"``/``"24 gb"``/``"24GiB"``/``"24576MiB"``: a card sold
      as 24 GB (memory_bytes 24 GiB), budgeted against the CUDA-reported
      capacity of that size class (:func:`marketed_capacity`).
    * an exact capacity as CUDA reports it: ``"exact:23.55GiB"`` (rounded to
      the nearest byte), ``"exact:24GB"`` = 24 * 10**9 bytes,
      ``"exact:143771MiB"`` (nvidia-smi's total), ``"=25769803776B"``.
      Either way the result is a generic card: bf16 False, throughput and
      bandwidth None. A bare size that is no whole number of GB is refused.
    * a catalog key, marketing name or alias, ignoring case, spaces, dashes,
      underscores and a leading "NVIDIA"/"GeForce"/"Tesla"/"Quadro":
      ``"RTX 4090"``, ``"rtx-4090"``, ``"4090"``, ``"a100-80gb"``, ``"h100"``.

    Raises :class:`PlannerError` with a one-line message for an unknown or
    ambiguous name (``"a100"``: 40 or 80 GB?), for a size that is not
    greater than zero or above :data:`MAX_SIZE_BYTES`, and for a bare size
    that is no whole number of GB (naming the ``exact:`` spelling).
    """
    if not isinstance(text, str):
        raise PlannerError(f"unknown GPU {text!r}: {_valid_forms()}")

    m = _SIZE_RE.match(text)
    if m:
        return _parse_size(text, bool(m.group(1)), m.group(2), m.group(3))

    form = _norm(text)
    if form in _INDEX:
        return _INDEX[form]

    # Not an exact name: a prefix shared by several cards is ambiguous; a
    # prefix of exactly one card is still refused (e.g. "l40" is a different
    # card from the L40S) but suggested.
    candidates = [g for g in CATALOG if form and any(f.startswith(form) for f in _forms(g))]
    if len(candidates) > 1:
        which = ", ".join(g.key for g in candidates)
        raise PlannerError(f"ambiguous GPU {text!r}: it matches {which}; {_valid_forms()}")
    if len(candidates) == 1:
        raise PlannerError(
            f"unknown GPU {text!r} (did you mean {candidates[0].key}?): {_valid_forms()}"
        )
    raise PlannerError(f"unknown GPU {text!r}: {_valid_forms()}")


def calibration_card(text: str | None, backend: str) -> GPU | None:
    """calibrate's --gpu: the catalog card a hardware profile is for. Only with --backend cuda (a fake-backend
    profile is never picked by --gpu, planner/profiles.py for_gpu), and a catalog name, not a size (a size
    names no card whose profile --gpu could later pick)."""
    if text is None:
        return None
    if backend != "cuda":
        raise PlannerError(f"--gpu: only with --backend cuda (got {backend}): a fake-backend profile is never picked "
                           "by --gpu; give --profile NAME to use it")
    card = parse_gpu(text)
    if card.is_generic:
        raise PlannerError(f"--gpu: calibrate takes a card from `vramplan gpus` (e.g. rtx4090), not a size "
                           f"({text.strip()!r}): the profile is picked by that card's name")
    return card


def catalog_rows() -> list[dict]:
    """The catalog as plain dicts (one per card, catalog order) for tables and JSON."""
    return [
        {
            "key": g.key,
            "name": g.name,
            "memory_bytes": g.memory_bytes,
            "memory_gib": round(g.memory_gib, 2),
            "cuda_total_bytes": g.capacity_bytes,
            "cuda_total_gib": round(g.capacity_bytes / GIB, 2),
            "capacity_source": g.capacity_source,
            "bf16": g.bf16,
            "fp16_tflops": g.fp16_tflops,
            "fp32_tflops": g.fp32_tflops,
            "bandwidth_gbs": g.bandwidth_gbs,
            "compute_capability": g.compute_capability,
            "aliases": ", ".join(g.aliases),
            "source": g.source,
        }
        for g in CATALOG
    ]


__all__ = ["GB", "GIB", "GPU", "GPU_HELP", "CATALOG", "ESTIMATE_RATIO", "MAX_SIZE_BYTES", "SIZE_RULE", "catalog_rows", "cc_tuple",
           "calibration_card", "exact_gpu", "gib_text", "marketed_capacity", "parse_gpu"]
