"""``--step FILE``: every command on the user's own training step. Imported only when
``--step`` is given; torch only where something is traced (``planner/measure``)."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from typing import Any

from planner.config import environment_alloc_conf
from planner.errors import PlannerError
from planner.recommend import SAFETY, TIER_NAMES
from planner.steps import PRECISIONS, StepSetup, parse_knob, parse_value

# Built-in-step flags that a step file does not use, and what sets that instead.
BUILTIN_ONLY: tuple[tuple[str, str, str], ...] = (
    ("config", "--config", "the step file is the setup; its knobs are set with --knob"),
    ("kind", "--kind", "the step file is the step"),
    ("voxel", "--voxel", "sizes are the step file's knobs (--knob name=value)"),
    ("channels", "--channels", "widths are the step file's knobs (--knob name=value)"),
    ("attention", "--attention", "attention is the step file's own (a knob if it has one)"),
    ("flash_attention", "--flash-attention", "use --sdpa flash|efficient|math"),
    ("perceptual", "--perceptual", "the step file's own networks decide"),
    ("disc_layers", "--disc-layers", "the step file's own networks decide"),
    ("disc_channels", "--disc-channels", "the step file's own networks decide"),
    ("model", "--model", "give either --step or --model"),
    ("input_shape", "--input", "the step file's batch() makes the batch"),
    ("compare", "--compare", "a step file's estimate is already a trace"),
    ("max_voxel", "--max-voxel", "use --max-knob NAME for the step file's size knob"),
    ("write", "--write", "the step file is the configuration; the recommendation prints its flags"),
    ("configs", "--configs", "rows of a step file come from --sweep"),
    ("measure", "--measure", "a step file's rows are traces already"),
    ("seed004", "--seed004", "seed 004's table is of the built-in step"),
)


def reject_builtin_flags(p: dict[str, Any]) -> None:
    for key, flag, why in BUILTIN_ONLY:
        v = p.get(key)
        if v is None or v is False or v == []:
            continue
        raise PlannerError(f"{'--no-' + flag[2:] if v is False else flag}: does not apply to "
                           f"{p.get('as_flag', '--step')} ({why})")
    if p.get("no_discriminator"):
        raise PlannerError(f"--no-discriminator: does not apply to {p.get('as_flag', '--step')} (the step file's own "
                           f"networks decide)")


def step_setup(p: dict[str, Any]) -> StepSetup:
    """The StepSetup of a command's flags; built-in-only flags are errors naming them. Sets the
    command's --timeout for the user's code (``planner/measure/isolate.py``)."""
    from planner.measure.isolate import set_timeout

    set_timeout(p.get("timeout"))
    reject_builtin_flags(p)
    precision = p.get("precision")
    amp = p.get("amp")
    if precision is not None and amp is not None:
        want = "amp-fp16" if amp else "fp32"
        if precision != want:
            raise PlannerError(f"--{'amp' if amp else 'no-amp'}: conflicts with --precision {precision}; give one")
    if precision is None:
        precision = "amp-fp16" if amp else "fp32"
    ckpt_flag, ckpt = p.get("checkpointing"), p.get("checkpoint")
    if ckpt is not None and ckpt_flag is not None:
        raise PlannerError("--checkpointing: give --checkpoint CLASS[,CLASS]|auto or --checkpointing, not both")
    checkpoint: tuple[str, ...] = ()
    if ckpt is not None:
        checkpoint = tuple(c.strip() for c in ckpt.split(",") if c.strip())
        if not checkpoint:
            raise PlannerError(f"--checkpoint: {ckpt!r} names no class (valid: auto or ClassName[,ClassName])")
        if "auto" in checkpoint and len(checkpoint) > 1:
            raise PlannerError("--checkpoint: 'auto' stands alone (valid: auto or ClassName[,ClassName])")
    elif ckpt_flag:
        checkpoint = ("auto",)
    if checkpoint == ("auto",) and p.get("gpu") and not p.get("max_gpus"):  # issue 21: auto plans for the card
        from planner.measure.ckpt_plan import auto_for_card

        checkpoint = auto_for_card(p["gpu"], 0.05 if p.get("margin") is None else p["margin"])
    knobs: dict[str, Any] = {}
    for text in p.get("knob") or []:
        name, value = parse_knob(text)
        if name in knobs:
            raise PlannerError(f"--knob: '{name}' given twice")
        knobs[name] = value
    opt = p.get("optimizer")
    sdpa = p.get("sdpa")
    gpus, strategy = parallel_flags(p)
    if any(name in ("gpus", "strategy") for name in _sweep_names(p)):
        gpus, strategy = 1, "none"  # each --sweep row gets its own (sweep_setups)
    return StepSetup(
        path=str(p["step"]), knobs=tuple(knobs.items()), batch_size=p.get("batch"), accumulation=p.get("accum") or 1,
        precision=precision, checkpoint=checkpoint, sdpa="auto" if sdpa is None else getattr(sdpa, "value", sdpa),
        optimizer=getattr(opt, "value", opt), alloc_conf=p.get("alloc_conf") or environment_alloc_conf(),
        gpus=1 if gpus is None else gpus, strategy=strategy or "none",
    )


def parallel_flags(p: dict[str, Any]) -> tuple[Any, str | None]:
    """--gpus and --strategy as given (None where not)."""
    strategy = p.get("strategy")
    return p.get("gpus"), getattr(strategy, "value", strategy)


def _sweep_names(p: dict[str, Any]) -> list[str]:
    return [t.partition("=")[0].strip().replace("-", "_") for t in p.get("sweep") or []]


def _load(ss: StepSetup) -> Any:
    """The step file's knobs, default batch and TERMS, read in a worker process (its import
    runs the user's code: ``planner/measure/isolate.py``); the knobs checked before any tracing."""
    from planner.measure import isolate

    return isolate.load_step(ss)


def _filled(ss: StepSetup, sf: Any) -> StepSetup:
    if ss.batch_size is None:
        if sf.batch_default is None:
            raise PlannerError(f"--batch: '{ss.path}' batch() has no default batch_size; give --batch")
        ss = replace(ss, batch_size=sf.batch_default)
    return ss


def _print_json(obj: Any) -> None:
    from planner.cli import _print_json as print_json

    print_json(obj)


def _progress(err: Any, what: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(TextColumn(f"{what} [progress.description]{{task.description}}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=getattr(err, "rich", err), transient=True)
    task = prog.add_task("", total=None)

    def tick(done: int, total: int, label: str) -> None:
        prog.update(task, completed=done, total=total, description=label[:60])

    return prog, tick


def _print_verdict(v: Any, report: Any, ss: StepSetup, out: Any) -> None:
    """The built-in kinds' verdict line (planner.analytic.estimate.Verdict); the next step of a
    step file is `recommend --step`."""
    style = "bold green" if v.fits else "bold red"
    out.print(f"[{style}]{v.sentence()}[/{style}] (device_total {report.device_total_bytes / 2**30:.2f} GiB)")
    out.print(f"[dim]{v.gpu.capacity_note()}[/dim]")
    from planner.band import band_line

    out.print(band_line(report, v.gpu), markup=False)
    if not v.fits:
        import shlex

        # the --gpu as typed: an exact capacity's key is rounded to 0.01 GiB
        out.print(f"next: vramplan recommend --step {ss.path} --gpu {shlex.quote(v.gpu.given or v.gpu.key)}",
                  markup=False)


def _render(report: Any, ss: StepSetup, out: Any, title: str) -> None:
    from planner.report.terminal import render_report

    render_report(report, None, out, title=title)
    out.print("setup: " + ss.label(), markup=False)


def step_profile(p: dict[str, Any]) -> Any:
    """--profile NAME for a --step command: a profile fitted by ``calibrate --step``."""
    name = p.get("profile_name")
    if not name:
        return None
    from planner import profiles

    return profiles.load_for(name, "trace")


def calibrate(p: dict[str, Any], out: Any, err: Any) -> None:
    """calibrate --step: the step file's trace against --backend at each --sweep row."""
    from planner import profiles
    from planner.calibrate import calibrate_step
    from planner.config import check_cuda_backend, check_gpu_flag
    from planner.gpus import calibration_card

    backend = getattr(p.get("backend"), "value", p.get("backend")) or "fake"
    if backend == "cpu":
        raise PlannerError("--backend: calibrate takes fake or cuda")
    check_cuda_backend(p.get("backend"), valid="fake")
    profiles.check_name(p["name"])
    check_gpu_flag(p.get("gpu"))
    card = calibration_card(p.get("gpu"), backend)
    ss = step_setup(p)
    sf = _load(ss)
    ss = _filled(ss, sf)
    rows = sweep_setups(ss, sf, list(p.get("sweep") or []), parallel_flags(p))
    setups = [(", ".join(f"{k}={v}" for k, v in label.items()) or s.label(), s) for label, s in rows]
    prog, tick = _progress(err, "calibrating")
    with prog:
        prof = calibrate_step(p["name"], setups, backend, card.key if card else None, tick)
    from planner.calibrate import save_and_report

    if save_and_report(prof, p.get("as_json"), out, lambda path: f"wrote {path}: {len(prof.measurements)} points "
                       f"({'; '.join(lab for lab, _ in setups)}) of {ss.label()} on {prof.device.get('name', backend)}"):
        return
    if backend != "cuda":
        out.print("[yellow]fake backend: each point is the step's trace against a fresh trace of itself, so the terms "
                  "are the identity; this checks the pipeline and calibrates nothing (use --backend cuda on a GPU)[/yellow]")
    out.print(f"use it: vramplan estimate --step {ss.path} --profile {prof.name}", markup=False)


def estimate(p: dict[str, Any], out: Any, err: Any, *, fresh: bool = False) -> None:
    """estimate --step (by trace, cached) and profile --step (traced now, any backend)."""
    from planner.gpus import parse_gpu

    ss = step_setup(p)
    card = parse_gpu(p["gpu"]) if p.get("gpu") else None
    sf = _load(ss)
    ss = _filled(ss, sf)
    from planner.measure.profile import report_from

    backend = getattr(p.get("backend"), "value", p.get("backend")) or "fake"
    t0 = time.perf_counter()
    with err.status(f"tracing {ss.label()}"):
        if fresh:
            from planner.measure import isolate

            record, measured = isolate.run_step(ss, backend, rollup=2, count_flops=False)
            how = f"traced now on the {backend} backend"
        else:
            from planner.measure import traces

            hit = traces.cached(ss)
            record = hit if hit is not None else traces.trace(ss)
            how = "from the trace cache" if hit is not None else "traced now (fake backend), cached"
    note = (f"by trace: the step file run under {'FakeTensorMode on the CPU (CUDA emulated)' if backend == 'fake' else backend}, "
            f"{how}; not the analytic estimator",)
    if backend == "cuda":
        report = measured
    else:
        report = report_from(record, backend, ss.alloc_conf, time.perf_counter() - t0,
                             source="profile:" + backend if fresh else "estimate:trace", rollup=2,
                             capacity_bytes=card.capacity_bytes if card else None, extra_notes=note)
        prof = step_profile(p)
        if prof is not None:
            report = prof.apply(report)
    from planner.analytic.estimate import verdict

    v = verdict(report, card) if card is not None else None
    if p.get("as_json"):
        data = report.to_json()
        data["fits"] = v.fits if v else None
        data["gpu"] = v.to_json() if v else None
        data["step_setup"] = ss.to_json()
        data["how"] = how
        from planner.band import band_json

        data["device_band"] = band_json(report, card)
        _print_json(data)
        return
    _render(report, ss, out, "vramplan " + ("profile" if fresh else "estimate") + f" --step ({how})")
    if v is not None:
        _print_verdict(v, report, ss, out)
    out.print(f"[dim]{report.wall_seconds:.1f} s[/dim]")


def recommend(p: dict[str, Any], out: Any, err: Any) -> None:
    from planner.gpus import parse_gpu
    from planner.measure import stepsearch as S

    ss = step_setup(p)
    card = parse_gpu(p["gpu"])
    margin = p.get("margin", 0.05)
    from planner.recommend import _check_margin

    _check_margin(margin)
    sf = _load(ss)
    terms = sf.terms
    ss = _filled(ss, sf)
    jobs = p.get("jobs") or 0
    cap = {"key": card.key, "name": card.name, "capacity_bytes": card.capacity_bytes, "margin": margin,
           "budget_bytes": int(card.capacity_bytes * (1 - margin))}
    max_knob = p.get("max_knob")
    if p.get("max_gpus"):
        if p.get("max_batch") or max_knob:
            raise PlannerError("--max-gpus: give it alone, not with --max-batch/--max-knob")
        _max_gpus(p, ss, sf, card, margin, cap, out, err)
        return
    if p.get("max_batch") or max_knob:
        prog, tick = _progress(err, "tracing")
        with prog:
            if max_knob:
                knob = sf.knobs.get(max_knob)
                if knob is None or isinstance(knob.default, bool) or not isinstance(knob.default, int):
                    valid = ", ".join(k for k, v in sf.knobs.items() if isinstance(v.default, int) and not isinstance(v.default, bool))
                    raise PlannerError(f"--max-knob: '{max_knob}' is not an integer knob of '{ss.path}' (valid: {valid or 'none'})")
                step = p.get("knob_step") or 1
                if p.get("knob") and any(str(k).split("=")[0].strip().replace("-", "_") == max_knob for k in p["knob"]):
                    raise PlannerError(f"--knob {max_knob}: is what --max-knob searches; leave it out (--knob-min sets "
                                       f"where the search starts)")
                start = p.get("knob_min") or knob.default
                res, stats = S.max_knob(ss, max_knob, step, card, margin, max(p.get("knob_limit") or 4096, start), tick,
                                        profile=step_profile(p), start=start, floor=p.get("knob_min") or step)
                what = f"{max_knob}"
            else:
                res, stats = S.max_batch(ss, card, margin, jobs=jobs, progress=tick, profile=step_profile(p))
                what = "micro-batch"
        value, rep = res.value, res.report
        result = {"knob": what, "max": value or None, "device_total_bytes": rep.device_total_bytes if rep else None,
                  "capped": res.capped, "search_cap": res.cap, "smaller_not_fitting": res.smaller_not_fitting,
                  "start": res.start, "rejected": {str(k): v for k, v in res.rejected.items()},
                  "gpu": cap, "setup": ss.to_json(), "traces": stats.traces, "cached_traces": stats.cached,
                  "derived": stats.derived, "traced_directly": stats.direct, "seconds": round(stats.seconds, 2),
                  "with_allocator": stats.allocator, "notes": stats.notes}  # issue 21: --max-batch's allocator note
        if p.get("as_json"):
            _print_json(result)
            return
        if not value:
            out.print(f"even {what} {res.start or 1} does not fit {card.name}" + (" (or the step rejects it)" if res.rejected else ""))
        elif res.capped:
            out.print(f"{what} {value} (the search cap) still fits {card.name} "
                      f"(device_total {rep.device_total_bytes / 2**30:.2f} GiB): the largest is at least that")
        else:
            out.print(f"largest {what} that fits {card.name}: {value} (device_total {rep.device_total_bytes / 2**30:.2f} GiB; "
                      f"budget {cap['budget_bytes'] / 2**30:.2f} GiB with margin {margin:.0%})")
        for k, why in res.rejected.items():
            out.print(f"[yellow]{what} {k}: the step rejects it ({why})[/yellow]", markup=True)
        if res.smaller_not_fitting:
            out.print(f"[yellow]note: smaller sizes that do NOT fit (memory is not monotone in the size): "
                      f"{', '.join(map(str, res.smaller_not_fitting))}[/yellow]")
        for note in stats.notes:  # issue 21: e.g. the next micro-batch fits with expandable segments
            out.print("note: " + note, markup=False)
        out.print("setup: " + ss.label(), markup=False)
        out.print(f"[dim]{stats.traces} traces ({stats.cached} from the cache), {stats.derived} sizes derived, "
                  f"{stats.direct} traced directly, {stats.seconds:.1f} s[/dim]")
        return
    search: dict[str, list[Any]] = {}
    for text in p.get("search") or []:
        name, _, raw = text.partition("=")
        name = name.strip().replace("-", "_")
        if not raw or name not in sf.knobs:
            valid = ", ".join(sorted(sf.knobs)) or "none"
            raise PlannerError(f"--search: {text!r} must be knob=v1/v2/... with a knob of '{ss.path}' (valid: {valid})")
        search[name] = [parse_value(v.strip()) for v in raw.split("/") if v.strip()]
    freeze = {f.strip() for f in (p.get("freeze") or "").split(",") if f.strip()}
    bad = freeze - {"precision", "checkpointing", "batch"}
    if bad:
        raise PlannerError(f"--freeze: unknown knob '{sorted(bad)[0]}' for --step (valid: precision, checkpointing, batch)")
    prefer = getattr(p.get("prefer"), "value", p.get("prefer")) or "risk"
    prog, tick = _progress(err, "tracing")
    with prog:
        best, ordered, stats = S.recommend(ss, card, margin, prefer, freeze, search, sf.batch_default or 1, jobs, tick,
                                         profile=step_profile(p))
    exact = sum(1 for c in ordered if c.report is not None)
    failed = sum(1 for c in ordered if c.error)
    summary = (f"{len(ordered)} candidates: {exact} evaluated exactly ({stats.derived} derived, "
               f"{stats.direct} traced directly) from {stats.traces} traces ({stats.cached} cached), {stats.predicted} "
               f"predicted (each change's exact ratio alone, multiplied; verified in preference order where predicted "
               f"within the budget + {SAFETY:.0%})" + (f", {failed} failed or not run" if failed else "")
               + f"; {stats.seconds:.1f} s")
    if p.get("as_json"):
        from planner.terms import say

        _print_json({"gpu": cap, "input": ss.to_json(),
                     "best": {**best.to_json(), "in_the_steps_terms": say(best.parts, terms)} if best else None,
                     "candidates": [c.to_json() for c in ordered], "considered": len(ordered),
                     "evaluated": exact, "predicted": stats.predicted, "traces": stats.traces,
                     "cached_traces": stats.cached, "derived": stats.derived, "traced_directly": stats.direct,
                     "failed": stats.failed, "notes": stats.notes, "seconds": round(stats.seconds, 2),
                     "time_model": "roofline over the traced step's FLOPs and bytes, uncalibrated (relative)"})
        return
    from planner.report.text import TextTable

    out.print(f"[bold]vramplan recommend --step[/bold] for {card.name} "
              f"(budget {cap['budget_bytes'] / 2**30:.2f} GiB = capacity {card.capacity_bytes / 2**30:.2f} GiB - {margin:.0%})")
    out.print("input: " + ss.label(), markup=False)
    if best is None:
        low = min((c for c in ordered if c.report is not None), key=lambda c: c.total)
        out.print(f"[bold red]nothing fits[/bold red]: the smallest candidate needs {low.total / 2**30:.2f} GiB "
                  f"({'; '.join(low.changes) or 'as is'})")
    elif not best.changes:
        out.print(f"[bold green]fits as is[/bold green]: device_total {best.total / 2**30:.2f} GiB of the "
                  f"{cap['budget_bytes'] / 2**30:.2f} GiB budget; nothing needs to change")
        faster = [c for c in ordered if c.report is not None and c.changes and c.total <= cap["budget_bytes"]
                  and c.seconds < best.seconds]
        if faster:
            out.print("faster settings that also fit (traced): " + "; ".join(
                f"{', '.join(c.changes)} ({c.seconds / best.seconds:.2f}x the time per sample, "
                f"{c.total / 2**30:.2f} GiB)" for c in sorted(faster, key=lambda c: c.seconds)[:3]), markup=False)
    else:
        out.print(f"[bold green]cheapest that fits[/bold green] (prefer {prefer}): {'; '.join(best.changes) or 'as is'} "
                  f"-> device_total {best.total / 2**30:.2f} GiB")
        out.print("  " + best.setup.label(), markup=False)
        if best.parts and terms:
            from planner.terms import say

            out.print("  in the step's own terms (its TERMS): " + "; ".join(say(best.parts, terms)), markup=False)
    t = TextTable(title="Candidates (first 12 in preference order; GiB = 2**30 bytes; ~ predicted, not traced)")
    for col in ("changes", "risk", "device_total GiB", "fits", "rel. time/sample", "how"):
        t.add_column(col)
    base_secs = next((c.seconds for c in ordered if not c.changes), None) or 1.0
    budget = cap["budget_bytes"]
    for c in ordered[:12]:
        pre = "" if c.report is not None else "~"
        total = "-" if c.total == float("inf") else f"{pre}{c.total / 2**30:.2f}"
        t.add_row("; ".join(c.changes) or "as is", TIER_NAMES[c.tier], total,
                  "-" if c.total == float("inf") else pre + ("yes" if c.total <= budget else "no"),
                  f"{pre}{c.seconds / base_secs:.2f}" if c.seconds < float("inf") else "-",
                  "not run" if c.error and c.error.startswith("not run") else c.how)
    out.print(t)
    for label, e in stats.failed.items():
        out.print(f"[yellow]could not trace {label}: {e}[/yellow]", markup=True)
    for note in stats.notes:
        out.print(f"note: {note}", markup=False)
    out.print(f"[dim]{summary}. Time per sample: roofline over the traced FLOPs and bytes ({card.name} rates), "
              f"uncalibrated, relative to 'as is'.[/dim]")


def _max_gpus(p: dict[str, Any], ss: StepSetup, sf: Any, card: Any, margin: float, cap: dict, out: Any, err: Any) -> None:
    from planner import gpusearch as G
    from planner.measure import stepsearch as S

    prog, tick = _progress(err, "tracing")
    with prog:
        answer, tried, verdict, stats = S.max_gpus(ss, card, margin, p["max_gpus"], sf.batch_default or 1,
                                                   p.get("jobs") or 0, tick, profile=step_profile(p))
    if p.get("as_json"):
        _print_json({"gpu": cap, "input": ss.to_json(), "answer": answer.to_json() if answer else None,
                     "tried": [o.to_json() for o in tried], "verdict": verdict, "traces": stats.traces,
                     "cached_traces": stats.cached, "seconds": round(stats.seconds, 2), "not_counted": G.NOT_COUNTED})
        return
    G.render(out, f"vramplan recommend --step --max-gpus {p['max_gpus']}", ss.label(), cap["budget_bytes"],
             card.capacity_bytes, margin, card.name, answer, tried, verdict, "traced, not measured on GPUs",
             f"{stats.traces} traces ({stats.cached} cached), {stats.seconds:.1f} s")


VRAMPLAN_KNOBS = ("batch", "accum", "precision", "checkpoint", "sdpa", "optimizer", "gpus", "strategy")


PARALLEL_KNOBS = ("gpus", "strategy")


def sweep_setups(ss: StepSetup, sf: Any, sweeps: list[str],
                 parallel: tuple[Any, str | None] = (None, None)) -> list[tuple[dict[str, Any], StepSetup]]:
    """--sweep knob=v1,v2 over vramplan's knobs and the file's own (the product of all sweeps).
    ``gpus`` and ``strategy`` are set together once every sweep is applied (``parallel``: the
    --gpus / --strategy flags, for the one not swept); a row of 1 GPU has no strategy."""
    rows: list[tuple[dict[str, Any], StepSetup, dict[str, str]]] = [({}, ss, {})]
    for text in sweeps:
        name, _, raw = text.partition("=")
        name = name.strip().replace("-", "_")
        values = [v.strip() for v in raw.split(",") if v.strip()] if name in VRAMPLAN_KNOBS else \
            [v.strip() for v in raw.split("/" if "/" in raw else ",") if v.strip()]
        if not values:
            raise PlannerError(f"--sweep: {text!r} must be knob=v1,v2 (valid knobs: {', '.join(VRAMPLAN_KNOBS + tuple(sorted(sf.knobs)))})")
        if name in PARALLEL_KNOBS:
            _check_parallel(name, values)
        new = []
        for label, s, par in rows:
            for v in values:
                if name in PARALLEL_KNOBS:
                    new.append(({**label, name: v}, s, {**par, name: v}))
                else:
                    new.append(({**label, name: v}, _set(s, sf, name, v), par))
        rows = new
    out: list[tuple[dict[str, Any], StepSetup]] = []
    seen: set[StepSetup] = set()
    for label, s, par in rows:
        if par:
            try:
                s = _parallel(s, par, parallel)
            except PlannerError as exc:
                raise PlannerError(f"--sweep {', '.join(f'{k}={v}' for k, v in par.items())}: {exc}") from None
            if s.gpus == 1 and "strategy" in label:
                label = {**label, "strategy": "none"}
            if s in seen:  # gpus=1 under each swept strategy: one row
                continue
            seen.add(s)
        out.append((label, s))
    if len(out) > 200:
        raise PlannerError(f"--sweep: {len(out)} rows (valid: at most 200)")
    return out


def _check_parallel(name: str, values: list[str]) -> None:
    from planner.steps import STRATEGIES

    for v in values:
        if name == "strategy" and v not in STRATEGIES[1:]:
            raise PlannerError(f"--sweep strategy: got {v!r}, valid: {', '.join(STRATEGIES[1:])}")
        if name == "gpus" and not (v.isdigit() and int(v) >= 1):
            raise PlannerError(f"--sweep gpus: {v!r} is not a positive integer")


def _parallel(s: StepSetup, swept: dict[str, str], given: tuple[Any, str | None]) -> StepSetup:
    gpus = int(swept["gpus"]) if "gpus" in swept else (1 if given[0] is None else given[0])
    strategy = swept.get("strategy", given[1]) or "none"
    if "gpus" in swept and gpus == 1:
        strategy = "none"  # the one-GPU row of a gpus sweep
    return replace(s, gpus=gpus, strategy=strategy)


def _set(s: StepSetup, sf: Any, name: str, v: str) -> StepSetup:
    def pos_int(flag: str) -> int:
        try:
            n = int(v)
        except ValueError:
            raise PlannerError(f"--sweep {flag}: {v!r} is not a positive integer") from None
        return n

    if name == "batch":
        return replace(s, batch_size=pos_int("batch"))
    if name == "accum":
        return replace(s, accumulation=pos_int("accum"))
    if name == "precision":
        if v not in PRECISIONS:
            raise PlannerError(f"--sweep precision: got {v!r}, valid: {', '.join(PRECISIONS)}")
        return replace(s, precision=v)
    if name == "checkpoint":
        return replace(s, checkpoint=() if v in ("off", "none") else tuple(v.split("+")))
    if name == "sdpa":
        return replace(s, sdpa=v)
    if name == "optimizer":
        return replace(s, optimizer=v)
    if name not in sf.knobs:
        valid = ", ".join(VRAMPLAN_KNOBS + tuple(sorted(sf.knobs)))
        raise PlannerError(f"--sweep: '{name}' is not a knob (valid: {valid})")
    from planner.measure.stepfile import _check_knob

    value = _check_knob(sf, name, parse_value(v.replace("+", ",")))
    return s.with_knobs(**{name: value})


def _evaluate_rows(p: dict[str, Any], err: Any) -> tuple[StepSetup, list[tuple[dict, StepSetup, Any]], Any]:
    from planner.gpus import parse_gpu
    from planner.measure.stepsearch import Evaluator

    ss = step_setup(p)
    sf = _load(ss)
    ss = _filled(ss, sf)
    rows = sweep_setups(ss, sf, list(p.get("sweep") or []), parallel_flags(p))
    gpus = [parse_gpu(g) for g in (p.get("gpu") or [])]
    prog, tick = _progress(err, "tracing")
    with prog, Evaluator(gpus[0] if gpus else parse_gpu("rtx4090"), p.get("jobs") or 0, tick,
                         profile=step_profile(p)) as ev:
        reps = ev.reports([s for _, s in rows])
    for label, s in rows:
        if reps[s][0] is None:
            where = ", ".join(f"{k}={v}" for k, v in label.items())
            raise PlannerError((f"--sweep {where}: " if where else "") + reps[s][2])
    return ss, [(label, s, reps[s]) for label, s in rows], gpus


def table(p: dict[str, Any], out: Any, err: Any) -> None:
    import pandas as pd

    from planner.report import table as T

    ss, rows, gpus = _evaluate_rows(p, err)
    recs = []
    base = rows[0][2][1] or 1.0
    from planner.result import ALL_CATEGORIES, CATEGORIES, COMMUNICATION

    cats = ALL_CATEGORIES if any(r[2][0].breakdown.by_category.get(COMMUNICATION) for r in rows) else CATEGORIES
    for label, s, (rep, secs, how) in rows:
        row = {k: v for k, v in label.items()}
        row["setup"] = s.label()
        row["peak allocated (GiB)"] = round(rep.peak_allocated_bytes / 2**30, 3)
        row["device total (GiB)"] = round(rep.device_total_bytes / 2**30, 3)
        for cat in cats:
            row[f"{cat} (GiB)"] = round(rep.breakdown.by_category.get(cat, 0) / 2**30, 3)
        for g in gpus:
            row[f"fits {g.key}"] = "yes" if rep.device_total_bytes <= g.capacity_bytes else "no"
        row["relative time/sample (est.)"] = round(secs / base, 2) if secs and base else None
        row["how"] = how
        recs.append(row)
    df = pd.DataFrame(recs)
    fmt = getattr(p.get("fmt"), "value", p.get("fmt")) or "markdown"
    text = T.render(df, fmt)
    if fmt == "markdown":
        text += ("\nBy trace (FakeTensorMode on the CPU, CUDA emulated), not measured on a GPU; GiB = 2**30 bytes; "
                 "device total = modelled reserved + 426 MiB uncalibrated context; time/sample: uncalibrated roofline, "
                 "relative to the first row"
                 + ("; with more than one GPU: all ranks' samples, communication not modelled" if any(
                     s.gpus > 1 for _, s, _ in rows) else "") + ".\n")
    if p.get("out_file") is not None:
        T.write_text(p["out_file"], text, "--out")
        err.print(f"wrote {p['out_file']}")
    else:
        sys.stdout.write(text)


def plot(p: dict[str, Any], out: Any, err: Any) -> None:
    from planner.report import plot as P

    what = getattr(p.get("what"), "value", p.get("what"))
    if what != "breakdown":
        raise PlannerError(f"plot {what}: with --step only 'breakdown' (one bar per --sweep row); "
                           "use `vramplan table --step ... --sweep` for sizes")
    ss, rows, gpus = _evaluate_rows(p, err)
    if len(rows) > P.MAX_SERIES:
        raise PlannerError(f"--sweep: {len(rows)} configurations (valid: at most {P.MAX_SERIES} in one figure)")
    labels = [", ".join(f"{k}={v}" for k, v in lab.items()) or "as given" for lab, _, _ in rows]
    fig = P.breakdown_figure(labels, [r[0] for _, _, r in rows], gpus)
    P.save(fig, p["out_file"], "--out")
    err.print(f"wrote {p['out_file']}")
