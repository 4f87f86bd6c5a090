"""rich rendering of reports and catalogs. Numbers come in; text goes out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from planner.allocator import allocator_label
from planner.report.text import TextTable
from planner.result import GIB, MemoryReport
from planner.spec import TrainingSetup

if TYPE_CHECKING:
    from rich.console import Console
else:
    Console = Any


def Table(title: str = "", title_justify: str = "left") -> TextTable:  # noqa: N802 - rich's name
    """The report tables are plain text (planner/report/text.py): no rich on the estimate path."""
    return TextTable(title)


def fmt_gib(nbytes: int | float) -> str:
    return f"{nbytes / GIB:,.3f}"


def setup_line(setup: TrainingSetup | None) -> str:
    if setup is None:
        return ""
    amp = f"AMP {setup.device.amp_dtype}" if setup.device.mixed_precision else "fp32"
    if setup.kind == "ldm-stage1":
        ae = setup.autoencoder
        tr = ae.training
        d = tr.discriminator
        parts = [
            "ldm-stage1",
            f"voxel {'x'.join(map(str, setup.data.voxel_size))}",
            f"batch {tr.batch_size}" + (f" x accum {tr.gradient_accumulation_steps}" if tr.gradient_accumulation_steps > 1 else ""),
            f"channels {list(ae.num_channels)}",
            f"attention {''.join('T' if a else 'F' for a in ae.attention_levels)}",
            "flash" if ae.use_flash_attention else "explicit attention",
            "checkpointing" if tr.use_gradient_checkpointing else "no checkpointing",
            f"perceptual {tr.perceptual.network_type} {tr.perceptual.fake_3d_ratio}" if tr.use_perceptual_loss else "no perceptual",
            f"disc {d.num_layers_d}x{d.num_channels}" if d.enabled else "no discriminator",
            tr.optimizer,
            amp,
        ]
    else:
        df = setup.diffusion
        parts = [
            "ldm-stage2",
            f"input {'x'.join(map(str, setup.unet_input_shape))}",
            f"channels {list(df.num_channels)}",
            f"attention {''.join('T' if a else 'F' for a in df.attention_levels)}",
            "flash" if df.use_flash_attention else "explicit attention",
            df.training.optimizer,
            amp,
        ]
    if setup.device.alloc_conf:
        parts.append(f"alloc_conf {setup.device.alloc_conf}")
    par = getattr(setup, "parallel", None)
    if par is not None and par.gpus > 1:
        parts.append(f"{par.gpus} GPUs {par.strategy}, figures per rank "
                     f"(global batch {setup.batch_size * setup.accumulation_steps * par.gpus})")
    return ", ".join(parts)


def run_line(info: dict) -> str:
    """What a profile ran (``MemoryReport.setup``): step, input, precision, optimizer, backend."""
    if not info:
        return ""
    if "script" in info:  # vramplan run
        parts = [info["script"], f"precision {info.get('precision', '')}",
                 f"checkpoint {','.join(info['checkpoint'])}" if info.get("checkpoint") else "",
                 f"sdpa {info['sdpa']}" if info.get("sdpa", "auto") != "auto" else "",
                 "optimizers " + ", ".join(f"{k} {v}" for k, v in info.get("optimizers", {}).items()),
                 f"rank 0 of {info['gpus']} ({info.get('strategy')}), figures per rank" if info.get("gpus") else "",
                 f"{info.get('backend', '')} backend"]
        return "ran: " + "; ".join(p for p in parts if p)
    if "knobs" in info and "step_file" not in info:  # a step file (the built-in step's, traced, says it as the built-in)
        knobs = ", ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in info["knobs"].items())
        parts = [info.get("step", ""), f"knobs {knobs}" if knobs else "",
                 f"micro-batch {info.get('batch_size')}{' per rank' if info.get('gpus') else ''} x accumulation "
                 f"{info.get('accumulation', 1)}"
                 + (f" x {info['gpus']} GPUs ({info.get('strategy')})" if info.get("gpus") else "")
                 + f" (effective batch {info.get('effective_batch')})",
                 f"precision {info.get('precision', '')}",
                 f"checkpoint {','.join(info['checkpoint'])}" if info.get("checkpoint") else "no checkpointing",
                 f"sdpa {info['sdpa']}" if info.get("sdpa", "auto") != "auto" else "",
                 "optimizers " + ", ".join(f"{k} {v}" for k, v in info.get("optimizers", {}).items()),
                 f"{info.get('backend', '')} backend", info.get("derived", "")]
        return "ran: " + "; ".join(p for p in parts if p)
    shape = "x".join(map(str, info.get("input_shape", ())))
    parts = [info.get("step", "")]
    if info.get("model"):
        parts[0] += f" {info['model']}"
    parts.append(f"input {shape} {info.get('input_dtype', 'fp32')}")
    parts.append(f"precision {info.get('precision', '')}")
    parts.append(f"optimizer {info.get('optimizer', '')}")
    if info.get("gradient_accumulation_steps", 1) > 1:
        parts.append(f"accumulation {info['gradient_accumulation_steps']}")
    if info.get("gpus"):
        parts.append(f"rank 0 of {info['gpus']} ({info.get('strategy')}), figures per rank")
    parts.append(f"{info.get('backend', '')} backend")
    return "ran: " + ", ".join(p for p in parts if p)


def render_report(report: MemoryReport, setup: TrainingSetup | None, console: Console, title: str = "") -> None:
    head = title or f"vramplan {report.source}"
    console.print(f"[bold]{head}[/bold] on {report.device}")
    line = setup_line(setup)
    if line:
        console.print(line)
    ran = run_line(report.setup)
    if ran:
        console.print(ran, markup=False)  # a --model path is not markup
    if report.params:
        console.print("parameters: " + ", ".join(f"{k} {v:,}" for k, v in report.params.items()))
    for name, how in ((report.setup or {}).get("layout") or report.extra.get("layout") or {}).items():
        console.print(f"  {name}: {how}", markup=False)  # --gpus N: what each rank holds

    peak = Table(title="Peak memory (GiB = 2**30 bytes)", title_justify="left")
    peak.add_column("figure")
    peak.add_column("GiB", justify="right")
    peak.add_column("bytes", justify="right")
    peak.add_column("basis")
    peak.add_row("peak_allocated", fmt_gib(report.peak_allocated_bytes), f"{report.peak_allocated_bytes:,}", "live storages at the peak")
    overhead = report.peak_reserved_bytes - report.peak_allocated_bytes
    peak.add_row("  + allocator overhead", fmt_gib(overhead), f"{overhead:,}", "segment rounding and fragmentation")
    peak.add_row("peak_reserved", fmt_gib(report.peak_reserved_bytes), f"{report.peak_reserved_bytes:,}", report.reserved_basis)
    peak.add_row("  + context", fmt_gib(report.context_bytes), f"{report.context_bytes:,}", report.context_basis)
    peak.add_row("device_total", fmt_gib(report.device_total_bytes), f"{report.device_total_bytes:,}", "what must fit on the card")
    console.print(peak)
    if report.free_at_allocated_peak_bytes or report.largest_free_block_bytes:
        # apart from the sum above: a state of the cache, not a term of the total
        console.print(f"allocator cache when the live tensors peak ({allocator_label(report.alloc_conf)}; not a term "
                      f"of the sum above): {fmt_gib(report.free_at_allocated_peak_bytes)} GiB "
                      f"({report.free_at_allocated_peak_bytes:,} B) reserved but free = reserved - allocated; largest "
                      f"free block {fmt_gib(report.largest_free_block_bytes)} GiB "
                      f"({report.largest_free_block_bytes:,} B): a request above it then needs a new segment",
                      markup=False)
    if report.peak_at:
        console.print(f"peak at: {report.peak_at}")

    total = max(1, report.breakdown.total)
    for label, items in (("category", report.breakdown.by_category), ("network", report.breakdown.by_network)):
        t = Table(title=f"At the peak, by {label}", title_justify="left")
        t.add_column(label)
        t.add_column("GiB", justify="right")
        t.add_column("share", justify="right")
        for k, v in items.items():
            t.add_row(k, fmt_gib(v), f"{100 * v / total:.1f}%")
        console.print(t)

    if report.breakdown.top_modules:
        mods = Table(title="Modules holding the most activation bytes at the peak", title_justify="left")
        mods.add_column("module")
        mods.add_column("GiB", justify="right")
        for m, b in report.breakdown.top_modules:
            mods.add_row(m, fmt_gib(b))
        console.print(mods)
    for n in report.notes:
        console.print(f"[dim]note: {n}[/dim]")


def render_gpus(rows: Iterable[dict], console: Console) -> None:
    from rich.table import Table

    t = Table(title="GPU catalog (memory: a card sold as N GB has N GiB)", title_justify="left")
    for col in ("key", "name", "GiB", "CUDA total GiB", "bf16", "fp16 TFLOP/s", "fp32 TFLOP/s", "GB/s", "cc"):
        t.add_column(col, justify="right" if col not in ("key", "name") else "left")
    for r in rows:
        t.add_row(
            r["key"],
            r["name"],
            f"{r['memory_gib']:g}",
            f"{r['cuda_total_gib']:.2f}" + ("*" if r["capacity_source"].startswith("estimate") else ""),
            "yes" if r["bf16"] else "no",
            "-" if r["fp16_tflops"] is None else f"{r['fp16_tflops']:g}",
            "-" if r["fp32_tflops"] is None else f"{r['fp32_tflops']:g}",
            "-" if r["bandwidth_gbs"] is None else f"{r['bandwidth_gbs']:g}",
            r["compute_capability"] or "-",
        )
    console.print(t)
    console.print("[dim]CUDA total: what torch reports as total_memory (OOM 'total capacity'), what verdicts budget "
                  "against; * = estimate, no public report found[/dim]")
    console.print("[dim]sources: vramplan gpus --json lists the spec sheet and the capacity report behind each row[/dim]")


def render_comparison(est: MemoryReport, meas: MemoryReport, console: Console) -> None:
    t = Table(title=f"estimate vs {meas.source} (GiB = 2**30 bytes)", title_justify="left")
    for col in ("figure", "estimate GiB", "measured GiB", "error"):
        t.add_column(col, justify="left" if col == "figure" else "right")

    def row(name: str, e: int, m: int) -> None:
        err = "-" if m == 0 else f"{100 * (e - m) / m:+.2f}%"
        t.add_row(name, fmt_gib(e), fmt_gib(m), err)

    row("peak_allocated", est.peak_allocated_bytes, meas.peak_allocated_bytes)
    row("peak_reserved", est.peak_reserved_bytes, meas.peak_reserved_bytes)
    row("device_total", est.device_total_bytes, meas.device_total_bytes)
    for k in est.breakdown.by_category:
        row(f"  {k}", est.breakdown.by_category.get(k, 0), meas.breakdown.by_category.get(k, 0))
    console.print(t)
