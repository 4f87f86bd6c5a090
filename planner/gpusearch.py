"""``recommend --max-gpus N``: the fewest GPUs and the DDP / FSDP strategy whose per-rank step fits,
at the input's global batch, whichever engine answers (the analytic estimate for the built-in steps,
the trace for step files). Torch-free: the engine comes in as ``evaluate``.

Per GPU count (1, 2, 4, ... up to N, and N, dividing the global batch) and strategy (DDP, then FSDP
with reshard_after_forward=False, then FSDP: least communication first), the largest per-rank
micro-batch that fits (its accumulation keeps the global batch). Then what the GPUs buy: the
answer's per-rank total against one GPU at the same micro-batch with the accumulation that keeps
the global batch (what accumulation alone does), so "more GPUs do not help memory" is said with its
figures.
"""

from __future__ import annotations

from typing import Any, Callable

from planner.records import dataclass
from planner.errors import PlannerError
from planner.result import MemoryReport

STRATEGY_ORDER = ("ddp", "fsdp-grad-op", "fsdp")  # least communication first (DDP ~ ZeRO-1 traffic, -2, -3)
GIB = 2**30


@dataclass
class GpuOption:
    setup: Any
    """The setup evaluated (a TrainingSetup or a StepSetup)."""
    gpus: int
    strategy: str
    batch: int
    """Per-rank micro-batch."""
    accumulation: int
    report: MemoryReport | None
    fits: bool
    how: str

    def to_json(self) -> dict:
        r = self.report
        return {"gpus": self.gpus, "strategy": self.strategy, "micro_batch": self.batch,
                "accumulation": self.accumulation, "device_total_bytes": r.device_total_bytes if r else None,
                "peak_allocated_bytes": r.peak_allocated_bytes if r else None,
                "by_category": dict(r.breakdown.by_category) if r else None, "fits": self.fits, "how": self.how}


def gpu_counts(limit: int, total: int) -> list[int]:
    """1, 2, 4, ... up to ``limit`` (and ``limit`` itself) that divide the global batch ``total``."""
    return [n for n in sorted({1 << k for k in range(limit.bit_length()) if 1 << k <= limit} | {limit})
            if total % n == 0]


def search(total: int, limit: int, budget: float,
           make: Callable[[int, int, int, str], Any],
           evaluate: Callable[[Any], tuple[MemoryReport | None, str]],
           smaller: str, fit: Callable[[MemoryReport], int] | None = None,
           ahead: tuple[int, Callable[[list[Any]], None]] | None = None,
           ) -> tuple[GpuOption | None, list[GpuOption], dict[str, Any]]:
    """``make(micro_batch, accumulation, gpus, strategy)`` -> a setup; ``evaluate(setup)`` ->
    (report or None where the setup cannot run, how it was obtained or why it failed); ``smaller``:
    the command that shrinks the per-rank step, for the verdict; ``fit(report)``: the figure held
    against the budget (default device_total; recommend passes planner/band.py ``fit_bytes``).
    ``ahead`` = (width, prepare): an engine that evaluates ``width`` setups side by side (a tracer's
    workers) is asked to ``prepare`` each option with the options after it, as many as it runs at
    once, in the order they are tried when none fits; the options tried and the answer are the same."""
    fit = fit or (lambda r: r.device_total_bytes)
    if limit < 2:
        raise PlannerError(f"--max-gpus: {limit} (valid: 2 or more)")
    counts = gpu_counts(limit, total)
    tried: list[GpuOption] = []
    order = [(total // n // a, a, n, strategy) for n in counts for strategy in (("none",) if n == 1 else STRATEGY_ORDER)
             for a in range(1, total // n + 1) if (total // n) % a == 0]
    prepared: set[tuple] = set()
    answer: GpuOption | None = None

    def run(batch: int, accum: int, gpus: int, strategy: str) -> GpuOption:
        s = make(batch, accum, gpus, strategy)
        option = (batch, accum, gpus, strategy)
        if ahead is not None and answer is None and option in order and option not in prepared:
            width, prepare = ahead
            nxt = order[order.index(option):][:width]
            prepared.update(nxt)
            prepare([make(*o) for o in nxt])
        rep, how = evaluate(s)
        opt = GpuOption(s, gpus, strategy, batch, accum, rep, rep is not None and fit(rep) <= budget,
                        how if rep is not None else f"failed: {how}")
        tried.append(opt)
        return opt

    for n in counts:
        share = total // n  # samples per rank per optimizer step
        for strategy in (("none",) if n == 1 else STRATEGY_ORDER):
            for a in [a for a in range(1, share + 1) if share % a == 0]:
                opt = run(share // a, a, n, strategy)
                if opt.fits or opt.report is None:  # fits, or the step cannot run this way: next strategy
                    break
            if opt.fits:
                answer = opt
                break
        if answer is not None:
            break
    same: GpuOption | None = None
    if answer is not None and answer.gpus > 1:
        same = run(answer.batch, total // answer.batch, 1, "none")
    elif answer is None:
        same = next((o for o in tried if o.gpus == 1 and o.batch == 1), None)
    return answer, tried, _verdict(total, counts, answer, same, tried, smaller)


def _verdict(total: int, counts: list[int], answer: GpuOption | None, same: GpuOption | None,
             tried: list[GpuOption], smaller: str) -> dict[str, Any]:
    verdict: dict[str, Any] = {"global_batch": total}
    smallest = min((o for o in tried if o.report is not None), key=lambda o: o.report.device_total_bytes, default=None)
    if answer is not None and answer.gpus == 1:
        verdict["text"] = (f"one GPU suffices: micro-batch {answer.batch} x accumulation {answer.accumulation} fits "
                           f"({answer.report.device_total_bytes / GIB:.2f} GiB); more GPUs would buy speed, not memory")
    elif answer is not None and same is not None and same.report is not None:
        saved = same.report.device_total_bytes - answer.report.device_total_bytes
        verdict["saved_per_rank_bytes"] = saved
        verdict["text"] = (f"{answer.gpus} GPUs with {answer.strategy} fit at micro-batch {answer.batch} per rank "
                           f"({answer.report.device_total_bytes / GIB:.2f} GiB); one GPU at the same micro-batch x "
                           f"accumulation {same.accumulation} needs {same.report.device_total_bytes / GIB:.2f} GiB: "
                           f"sharding saves {saved / GIB:.2f} GiB per rank")
    elif smallest is not None:
        one = same.report.device_total_bytes if same is not None and same.report is not None else None
        cats = smallest.report.breakdown.by_category
        state = sum(cats.get(k, 0) for k in ("parameters", "gradients", "optimizer_state"))
        verdict["smallest_per_rank_bytes"] = smallest.report.device_total_bytes
        verdict["text"] = (f"more GPUs do not help: up to {counts[-1]} GPUs nothing fits; the smallest per-rank "
                           f"figure is {smallest.report.device_total_bytes / GIB:.2f} GiB ({smallest.gpus} GPUs, "
                           f"{smallest.strategy}, micro-batch {smallest.batch})"
                           + (f", one GPU at micro-batch 1 needs {one / GIB:.2f} GiB" if one else "")
                           + f"; activations ({cats.get('activations', 0) / GIB:.2f} GiB) are not sharded, the "
                           f"networks' state is {state / GIB:.2f} GiB there: shrink the per-rank step (`{smaller}`)")
    return verdict


def render(out: Any, title: str, input_label: str, budget: float, capacity: int, margin: float, card_name: str,
           answer: GpuOption | None, tried: list[GpuOption], verdict: dict[str, Any], basis: str, footer: str) -> None:
    """The terminal report of a search (both engines)."""
    from planner.report.text import TextTable

    out.print(f"[bold]{title}[/bold] for {card_name} per GPU (budget {budget / GIB:.2f} GiB = capacity "
              f"{capacity / GIB:.2f} GiB - {margin:.0%}); global batch {verdict['global_batch']}")
    out.print("input: " + input_label, markup=False)
    t = TextTable(title=f"Tried, fewest GPUs first (per rank; GiB = 2**30 bytes; {basis})")
    for col in ("GPUs", "strategy", "per-rank micro-batch x accum", "device_total GiB", "fits", "how"):
        t.add_column(col)
    for o in tried:
        t.add_row(str(o.gpus), o.strategy, f"{o.batch} x {o.accumulation}",
                  f"{o.report.device_total_bytes / GIB:.2f}" if o.report else "-", "yes" if o.fits else "no", o.how)
    out.print(t)
    out.print(("[bold green]" if answer else "[bold red]") + verdict.get("text", "") + ("[/bold green]" if answer else "[/bold red]"))
    out.print(f"[dim]{footer}; NCCL's own buffers and communication time are not counted[/dim]")


NOT_COUNTED = "NCCL's own buffers and communicator state; communication time"
