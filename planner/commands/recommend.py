"""`vramplan recommend`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from planner.band import check_fit_at
from planner.commands.app import command, err, out, print_json
from planner.commands.options import takes_setup, JobsOpt, JsonOpt, Prefer
from planner.commands.render import step_profile, progress, write_setup
from planner.errors import PlannerError
from planner.gpu_rule import GPU_HELP
from planner.search import SAFETY, TIER_NAMES, check_margin, parse_freeze
from planner.setup_flags import SetupFlags, builtin_setup, filled, load_step, step_params
from planner.step_setup import StepSetup, parse_value


def _builtin_max_gpus(setup: Any, card: Any, margin: float, limit: int, as_json: bool, band_kw: dict) -> None:
    """recommend --max-gpus on a built-in step (planner/recommend.py ``max_gpus``)."""
    from planner import gpusearch as G
    from planner.recommend import max_gpus
    from planner.report.terminal import setup_line

    answer, tried, verdict, seconds = max_gpus(setup, card, margin, limit, **band_kw)
    budget = card.capacity_bytes * (1 - margin)
    if as_json:
        from planner.spec import spec_to_dict

        print_json({"gpu": {"key": card.key, "name": card.name, **card.capacity_json()}, "budget_bytes": int(budget),
                     "input": spec_to_dict(setup), "answer": answer.to_json() if answer else None,
                     "tried": [o.to_json() for o in tried], "verdict": verdict, "seconds": round(seconds, 2),
                     "not_counted": G.NOT_COUNTED})
        return
    G.render(out, f"vramplan recommend --max-gpus {limit}", setup_line(setup), budget, card.capacity_bytes, margin,
             card.name, answer, tried, verdict, "estimated: DDP / FSDP2 transcribed, exact against their trace",
             f"{len(tried)} estimates, {seconds:.1f} s")
    out.print(f"[dim]{card.capacity_note()}[/dim]")


# recommend's searches: each answers one question; the flags that shape the full recommendation
# (and --max-knob's own) are errors with another, never ignored
_SEARCHES = (("max_batch", "--max-batch"), ("max_voxel", "--max-voxel"), ("max_knob", "--max-knob"),
             ("max_gpus", "--max-gpus"))


_FULL_ONLY = (("write", "--write"), ("freeze", "--freeze"), ("prefer", "--prefer"), ("search", "--search"))


def _one_search(**params: Any) -> None:
    modes = [flag for key, flag in _SEARCHES if params.get(key)]
    if len(modes) > 1:
        raise PlannerError(f"{modes[1]}: give one search at a time ({', '.join(modes)} given; "
                           f"valid: one of {', '.join(f for _, f in _SEARCHES)}, or none for the full recommendation)")
    if modes:
        for key, flag in _FULL_ONLY:
            if params.get(key) not in (None, []):
                raise PlannerError(f"{flag}: does not apply to {modes[0]} (it reports one size; {flag} shapes the "
                                   f"full recommendation)")
    if "--max-knob" not in modes:
        for key, flag in (("knob_step", "--knob-step"), ("knob_min", "--knob-min")):
            if params.get(key) is not None:
                raise PlannerError(f"{flag}: only with --max-knob NAME")


@command()
@takes_setup
def recommend(
    gpu: Annotated[str, typer.Option("--gpu", help=f"Card to fit. {GPU_HELP}")] = "24GB",
    margin: Annotated[float, typer.Option("--margin", help="Safety margin as a fraction of the card.")] = 0.05,
    prefer: Annotated[Optional[Prefer], typer.Option("--prefer", help="risk (default): lowest quality risk, then fastest; speed; quality.")] = None,
    freeze: Annotated[Optional[str], typer.Option("--freeze", help="Knobs not to touch, e.g. channels,attention or precision,sdpa,checkpoint,batch,allocator (amp, flash, checkpointing are the same as precision, sdpa, checkpoint).")] = None,
    max_batch: Annotated[bool, typer.Option("--max-batch", help="Only report the largest batch that fits this configuration.")] = False,
    max_voxel: Annotated[bool, typer.Option("--max-voxel", help="Only report the largest volume (same aspect) that fits.")] = False,
    write: Annotated[Optional[Path], typer.Option("--write", help="Write the recommended full configuration as YAML.")] = None,
    jobs: JobsOpt = 0,
    search: Annotated[Optional[list[str]], typer.Option("--search", help="--step: also search a knob of the step file, knob=v1/v2 (repeatable).")] = None,
    max_knob: Annotated[Optional[str], typer.Option("--max-knob", help="--step: only report the largest value of this integer knob that fits.")] = None,
    max_gpus: Annotated[Optional[int], typer.Option("--max-gpus", min=2, help="The fewest GPUs (up to this many) and the DDP/FSDP strategy whose per-rank step fits, at the input's global batch (batch x accumulation).")] = None,
    knob_step: Annotated[Optional[int], typer.Option("--knob-step", min=1, help="--max-knob: search multiples of this (e.g. 16 for a resolution that must divide by 16).")] = None,
    knob_min: Annotated[Optional[int], typer.Option("--knob-min", min=1, help="--max-knob: the smallest value to try (default: the step's own value, rounded down to --knob-step).")] = None,
    # issue 24 (band): where in the device_total band a plan must fit; a GPU profile collapses the band
    fit_at: Annotated[str, typer.Option("--fit-at", help="high (default): a plan fits when the top of its device_total band does (planner/band.py); point: the point figure.")] = "high",
    profile_name: Annotated[Optional[str], typer.Option("--profile", help="Device profile to apply to every estimate (default for the built-in kinds: the GPU-measured profile of --gpu, if any).")] = None,
    as_json: JsonOpt = False,
    command: Annotated[Optional[list[str]], typer.Argument(
        help="After --: your training script, python train.py ARGS (or python -m package.module ARGS); "
        "recommends what vramplan run can change, in the script's own terms.", show_default=False)] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="With -- python train.py: optimizer steps "
                                                 "each trace runs (default 2).")] = None,
    flags: SetupFlags | None = None,
) -> None:
    """The cheapest configuration that fits a GPU, with what each change saves.

    Example: vramplan recommend --voxel 256x256x64 --gpu 24GB

    Example: vramplan recommend --step examples/steps/rgbd_policy.py --gpu 24GB

    Example: vramplan recommend --model nets.py:make_net --input 2x1x96x96x96 --gpu 24GB --max-batch

    Example: vramplan recommend --voxel 256x256x64 --batch 4 --max-gpus 8 --gpu 80GB

    Example: vramplan recommend --step examples/steps/ldm_stage1.py --knob voxel=256,256,64 --batch 4 --max-gpus 8 --gpu 80GB

    Example: vramplan recommend --gpu 24GB -- python train.py --batch-size 8
    """
    assert flags is not None  # takes_setup
    _one_search(max_batch=max_batch, max_voxel=max_voxel, max_knob=max_knob, max_gpus=max_gpus, write=write,
                freeze=freeze, prefer=prefer, search=search, knob_step=knob_step, knob_min=knob_min)
    if command or steps is not None:  # issue 22: recommend on a script (planner/commands/recommend_script.py)
        from planner.commands.recommend_script import recommend_script

        if not command:
            raise PlannerError("--steps: only with a script after -- (vramplan recommend [OPTIONS] -- python train.py)")
        recommend_script(command, flags, steps=steps, gpu=gpu, margin=margin, prefer=prefer.value if prefer else "risk",
                         freeze=freeze, fit_at=check_fit_at(fit_at), as_json=as_json, max_batch=max_batch, other={
                             "--max-voxel": max_voxel, "--write": write, "--jobs": jobs,
                             "--search": search, "--max-knob": max_knob, "--max-gpus": max_gpus,
                             "--knob-step": knob_step, "--knob-min": knob_min, "--profile": profile_name})
        return
    ss = step_params(flags, "recommend", jobs=jobs, refused={"max_voxel": max_voxel, "write": write}, gpu=gpu,
                     margin=margin, max_gpus=max_gpus)
    if ss is not None:
        recommend_step_file(ss, gpu=gpu, margin=margin, jobs=jobs, max_batch=max_batch, max_knob=max_knob,
                            knob_step=knob_step, knob_min=knob_min, max_gpus=max_gpus, search=list(search or []),
                            freeze=freeze, prefer=prefer.value if prefer else "risk", as_json=as_json, fit_at=check_fit_at(fit_at),
                            profile_name=profile_name)
        return
    prefer = prefer or Prefer.risk
    for value, flag in ((search, "--search"), (max_knob, "--max-knob"), (knob_step, "--knob-step"), (knob_min, "--knob-min")):
        if value:
            raise PlannerError(f"{flag}: only with --step")
    from planner import recommend as R
    from planner.gpus import parse_gpu

    setup = builtin_setup(flags, gpu=gpu, write=write)
    card = parse_gpu(gpu)
    from planner import profiles  # issue 24 (band): the profile as `estimate` picks it

    prof = profiles.load_for(profile_name, "analytic") if profile_name else profiles.for_gpu(card.key)
    band_kw = {"fit_at": fit_at, "profile": prof}
    if max_gpus:
        _builtin_max_gpus(setup, card, margin, max_gpus, as_json, band_kw)
        return
    if max_batch or max_voxel:
        cap_json = {"key": card.key, "name": card.name, "memory_bytes": card.memory_bytes, **card.capacity_json()}
        if max_batch:
            res = R.max_batch(setup, card, margin, **band_kw)
            rep, b = res.report, res.value
            result = {"max_batch": b, "device_total_bytes": rep.device_total_bytes if rep else None,
                      "capped": res.capped, "search_cap": res.cap, "smaller_not_fitting": res.smaller_not_fitting}
            if rep is None:
                line = f"even batch 1 does not fit {card.name}"
            elif res.capped:
                line = (f"batch {b} (the search cap) still fits {card.name} (device_total {rep.device_total_bytes / 2**30:.2f} GiB): "
                        f"the largest batch is at least {b}, not found")
            else:
                line = f"largest batch that fits {card.name}: {b} (device_total {rep.device_total_bytes / 2**30:.2f} GiB)"
            bad_small = [str(x) for x in res.smaller_not_fitting]
        else:
            res = R.max_voxel(setup, card, margin, **band_kw)
            rep, v = res.report, res.value
            cons = res.constraints
            result = {"max_voxel": list(v) if v else None, "device_total_bytes": rep.device_total_bytes if rep else None,
                      "capped": res.capped, "search_cap": list(res.cap) if res.cap else None,
                      "smaller_not_fitting": [list(x) for x in res.smaller_not_fitting],
                      "step": cons["step"], "min_side": cons["min_side"],
                      "constraints": {k: {"step": c["step"], "min_side": c["min_side"], "why": c["why"]}
                                      for k, c in cons["networks"].items()}}
            why = "; ".join(c["why"] + (f", side >= {c['min_side']}" if c["step"] == 1 else "") for c in cons["networks"].values())
            if rep is None:
                line = (f"even the smallest valid volume does not fit {card.name} (sizes step by {cons['step']} from "
                        f"{cons['min_side']} on the smallest side: {why})")
            elif res.capped:
                line = (f"{'x'.join(map(str, v))} (the search cap) still fits {card.name} "
                        f"(device_total {rep.device_total_bytes / 2**30:.2f} GiB): the largest volume is at least that")
            else:
                line = (f"largest volume that fits {card.name}: {'x'.join(map(str, v))} (device_total {rep.device_total_bytes / 2**30:.2f} GiB; "
                        f"sizes step by {cons['step']}: {why})")
            bad_small = ["x".join(map(str, x)) for x in res.smaller_not_fitting]
        result["gpu"] = cap_json
        result["budget_bytes"] = int(card.capacity_bytes * (1 - margin))
        if as_json:
            print_json(result)
        else:
            out.print(line)
            if bad_small:
                out.print(f"[yellow]note: smaller sizes that do NOT fit (memory is not monotone in the size): "
                          f"{', '.join(bad_small)}[/yellow]")
            out.print(f"[dim]{card.capacity_note()}; margin {margin:.0%}[/dim]")
        return
    frozen = parse_freeze(freeze, R.FREEZE)
    with err.status("searching"):
        rec = R.recommend(setup, card, margin, prefer.value, frozen, **band_kw)
    best = rec.best
    if as_json:
        from planner.spec import spec_to_dict

        def cand(c):
            return {"changes": c.labels, "tier": TIER_NAMES[c.tier], "device_total_bytes": c.exact.device_total_bytes,
                    "seconds_per_sample": c.seconds, "diff": R.yaml_diff(setup, c.setup)}
        print_json({
            "gpu": {"key": card.key, "name": card.name, "memory_bytes": card.memory_bytes, **card.capacity_json()},
            "budget_bytes": rec.budget_bytes,
            "input": spec_to_dict(setup),
            "input_device_total_bytes": rec.base.device_total_bytes,
            "input_fits": rec.input_fits,
            "headroom_bytes": rec.headroom_bytes if rec.input_fits else None,
            "faster_that_fit": [dict(cand(c), speedup=(rec.base_seconds / c.seconds) if c.seconds and rec.base_seconds else None)
                                for c in rec.faster],
            "recommended": cand(best) if best else None,
            "slowdown": (best.seconds / rec.base_seconds) if best and best.seconds and rec.base_seconds else None,
            "savings_alone_bytes": rec.savings,
            "alternatives": [cand(c) for c in rec.alternatives],
            "considered": rec.considered, "verified": rec.verified, "seconds": round(rec.seconds, 3),
            "nothing_fits": best is None,
            "smallest_device_total_bytes": rec.smallest.exact.device_total_bytes if rec.smallest else None,
            "card_needed": rec.needed_gpu.key if rec.needed_gpu else None,
            "band_margin": rec.margin_json(best) if best else None,  # issue 24 (band)
            "notes": rec.notes,
        })
        if best and write:
            write_setup(write, best.setup)
        return
    from rich.table import Table

    from planner.report.terminal import render_report, setup_line

    out.print(f"[bold]vramplan recommend[/bold] for {card.name} ({card.capacity_bytes / 2**30:.2f} GiB CUDA-reported, margin {margin:.0%}: "
              f"budget {rec.budget_bytes / 2**30:.2f} GiB); input needs {rec.base.device_total_bytes / 2**30:.2f} GiB"
              + (" per rank" if setup.parallel.gpus > 1 else ""))
    out.print("input: " + setup_line(setup), markup=False)
    out.print(f"[dim]{card.capacity_note()}[/dim]")
    out.print(f"[dim]{rec.considered:,} candidates considered, {rec.verified} estimated exactly, {rec.seconds:.2f} s[/dim]")
    if rec.input_fits and best is rec.input:  # --prefer speed: the fastest that fits, which may be another
        out.print(f"[bold green]The input already fits {card.name}[/bold green]: device total "
                  f"{rec.base.device_total_bytes / 2**30:.2f} GiB of the {rec.budget_bytes / 2**30:.2f} GiB budget, "
                  f"{rec.headroom_bytes / 2**30:.2f} GiB headroom "
                  f"({'below the top of its band' if rec.fit_at == 'high' else 'below its point'}). Nothing needs to change.")
        out.print("Band: " + rec.margin_line(best), markup=False)  # issue 24 (band)
        if rec.faster:
            fast = Table(title="Faster settings that still fit (estimated, roofline model, uncalibrated)", title_justify="left")
            for col in ("changes", "risk", "device total GiB", "headroom GiB", "time/sample vs input"):
                fast.add_column(col)
            for c in rec.faster:
                rel = f"{c.seconds / rec.base_seconds:.2f}x" if c.seconds and rec.base_seconds else "-"
                fast.add_row(", ".join(c.labels), TIER_NAMES[c.tier], f"{c.exact.device_total_bytes / 2**30:.2f}",
                             f"{(rec.budget_bytes - c.exact.device_total_bytes) / 2**30:.2f}", rel)
            out.print(fast)
            out.print(f"YAML diff of the first ({', '.join(rec.faster[0].labels)}): "
                      + "; ".join(R.yaml_diff(setup, rec.faster[0].setup)))
        else:
            out.print("No faster setting in the search space fits.")
        if write:
            write_setup(write, best.setup)
            out.print(f"wrote {write} (the input, unchanged)")
        return
    if best is None:  # the line a step file's and a script's recommend print, at the figure the fit was judged on
        print_nothing_fits_or_fits_as_is(rec, rec.fit_at)
        for note in rec.notes:
            out.print("note: " + note, markup=False)
        return
    if not best.labels:
        out.print("[bold green]The input already fits; nothing to change.[/bold green]")
    else:
        if rec.input_fits:
            out.print(f"[bold green]The input already fits[/bold green] ({rec.headroom_bytes / 2**30:.2f} GiB headroom); "
                      "--prefer speed: the fastest configuration that fits, whatever its quality risk, is below.")
        out.print("[bold]Recommended changes[/bold] (YAML diff against the input):")
        for line in R.yaml_diff(setup, best.setup):
            out.print(f"  {line}")
        why = Table(title="Why each change (allocated peak saved by the change alone)", title_justify="left")
        why.add_column("change")
        why.add_column("risk")
        why.add_column("saves GiB", justify="right")
        for st in best.settings:
            if st.label != "as is":
                why.add_row(st.label, TIER_NAMES[st.tier], f"{rec.savings.get(st.label, 0) / 2**30:.2f}")
        out.print(why)
    if best.seconds and rec.base_seconds:
        out.print(f"estimated time per effective sample: {best.seconds / rec.base_seconds:.2f}x the input's (roofline model, uncalibrated)")
    render_report(best.exact, best.setup, out, title="recommended configuration")
    out.print(f"[bold green]FITS[/bold green] {card.name}: {best.exact.device_total_bytes / 2**30:.2f} of {card.capacity_bytes / 2**30:.2f} GiB (CUDA-reported)")
    out.print("Band: " + rec.margin_line(best), markup=False)  # issue 24 (band)
    if rec.alternatives:
        alt = Table(title="Next alternatives", title_justify="left")
        for col in ("changes", "risk", "device total GiB", "time/sample vs input"):
            alt.add_column(col)
        for c in rec.alternatives:
            rel = f"{c.seconds / rec.base_seconds:.2f}x" if c.seconds and rec.base_seconds else "-"
            alt.add_row(", ".join(c.labels) or "as is", TIER_NAMES[c.tier], f"{c.exact.device_total_bytes / 2**30:.2f}", rel)
        out.print(alt)
    if write:
        write_setup(write, best.setup)
        out.print(f"wrote {write}")


KNOB_LIMIT = 4096  # --max-knob: the largest value tried


def recommend_step_file(ss: StepSetup, *, gpu: str, margin: float, jobs: int, max_batch: bool, max_knob: str | None,
                        knob_step: int | None, knob_min: int | None, max_gpus: int | None, search: list[str],
                        freeze: str | None, prefer: str, as_json: bool, fit_at: str = "high",
                        profile_name: str | None = None) -> None:
    """recommend --step: the full search (planner/measure/search.py recommend), or one of --max-batch,
    --max-knob NAME, --max-gpus N."""
    from planner.gpus import parse_gpu
    from planner.measure import search as S

    profile = step_profile(profile_name)  # issue 24 (band): a GPU-measured profile collapses the band
    card = parse_gpu(gpu)
    check_margin(margin)
    sf = load_step(ss)
    terms = sf.terms
    ss = filled(ss, sf)
    cap = {"key": card.key, "name": card.name, "capacity_bytes": card.capacity_bytes, "margin": margin,
           "budget_bytes": int(card.capacity_bytes * (1 - margin))}
    if max_gpus:  # alone: _one_search
        max_gpus_step_file(ss, sf, card, margin, cap, limit=max_gpus, jobs=jobs, as_json=as_json, fit_at=fit_at,
                           profile=profile)
        return
    if max_batch or max_knob:
        prog, tick = progress(err, "tracing")
        with prog:
            if max_knob:
                knob = sf.knobs.get(max_knob)
                if knob is None or isinstance(knob.default, bool) or not isinstance(knob.default, int):
                    valid = ", ".join(k for k, v in sf.knobs.items() if isinstance(v.default, int) and not isinstance(v.default, bool))
                    raise PlannerError(f"--max-knob: '{max_knob}' is not an integer knob of '{ss.path}' (valid: {valid or 'none'})")
                step = knob_step or 1
                if max_knob in ss.knob_dict:
                    raise PlannerError(f"--knob {max_knob}: is what --max-knob searches; leave it out (--knob-min sets "
                                       f"where the search starts)")
                start = knob_min or knob.default
                res, stats = S.max_knob(ss, max_knob, step, card, margin, max(KNOB_LIMIT, start), tick,
                                        profile=profile, start=start, floor=knob_min or step, fit_at=fit_at)
                what = f"{max_knob}"
            else:
                res, stats = S.max_batch(ss, card, margin, jobs=jobs, progress=tick, profile=profile, fit_at=fit_at)
                what = "micro-batch"
        value, rep = res.value, res.report
        result = {"knob": what, "max": value or None, "device_total_bytes": rep.device_total_bytes if rep else None,
                  "capped": res.capped, "search_cap": res.cap, "smaller_not_fitting": res.smaller_not_fitting,
                  "start": res.start, "rejected": {str(k): v for k, v in res.rejected.items()},
                  "gpu": cap, "setup": ss.to_json(), "traces": stats.traces, "cached_traces": stats.cached,
                  "derived": stats.derived, "traced_directly": stats.direct, "seconds": round(stats.seconds, 2),
                  "with_allocator": stats.allocator, "notes": stats.notes}  # issue 21: --max-batch's allocator note
        if as_json:
            print_json(result)
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
    search_knobs: dict[str, list[Any]] = {}
    for text in search:
        name, _, raw = text.partition("=")
        name = name.strip().replace("-", "_")
        if not raw or name not in sf.knobs:
            valid = ", ".join(sorted(sf.knobs)) or "none"
            raise PlannerError(f"--search: {text!r} must be knob=v1/v2/... with a knob of '{ss.path}' (valid: {valid})")
        search_knobs[name] = [parse_value(v.strip()) for v in raw.split("/") if v.strip()]
    frozen = parse_freeze(freeze, S.FREEZE, " for --step")
    prog, tick = progress(err, "tracing")
    with prog:
        found, stats = S.recommend(ss, card, margin, prefer, frozen, search_knobs, sf.batch_default or 1, jobs, tick,
                                   profile=profile, fit_at=fit_at)
    best = found.best
    # the input first where it is the answer; else every candidate in preference order
    ordered = [best] + [c for c in found.ordered if c is not best] if best is found.input else found.ordered
    from planner.band import margin_json, margin_line  # issue 24 (band): how the chosen plan's margin splits

    band = (lambda f: f(best.report, card, cap["budget_bytes"], fit_at)) if best else None
    exact = sum(1 for c in ordered if c.report is not None)
    failed = sum(1 for c in ordered if c.error)
    summary = (f"{len(ordered)} candidates: {exact} evaluated exactly ({stats.derived} derived, "
               f"{stats.direct} traced directly) from {stats.traces} traces ({stats.cached} cached), {stats.predicted} "
               f"predicted (each change's exact ratio alone, multiplied; verified in preference order where predicted "
               f"within the budget + {SAFETY:.0%})" + (f", {failed} failed or not run" if failed else "")
               + f"; {stats.seconds:.1f} s")
    if as_json:
        from planner.terms import say

        print_json({"gpu": cap, "input": ss.to_json(),
                     "best": {**_step_candidate_json(best), "in_the_steps_terms": say(best.parts, terms),
                              "band_margin": band(margin_json)} if best else None,
                     "candidates": [_step_candidate_json(c) for c in ordered], "considered": len(ordered),
                     "smallest": _step_candidate_json(found.smallest) if found.smallest else None,
                     "card_needed": found.needed_gpu.key if found.needed_gpu else None,
                     "evaluated": exact, "predicted": stats.predicted, "traces": stats.traces,
                     "cached_traces": stats.cached, "derived": stats.derived, "traced_directly": stats.direct,
                     "failed": stats.failed, "notes": stats.notes, "seconds": round(stats.seconds, 2),
                     "time_model": "roofline over the traced step's FLOPs and bytes, uncalibrated (relative)"})
        return
    out.print(f"[bold]vramplan recommend --step[/bold] for {card.name} "
              f"(budget {cap['budget_bytes'] / 2**30:.2f} GiB = capacity {card.capacity_bytes / 2**30:.2f} GiB - {margin:.0%})")
    out.print("input: " + ss.label(), markup=False)
    if best is None or not best.changes:
        print_nothing_fits_or_fits_as_is(found, fit_at)
    else:
        out.print(f"[bold green]cheapest that fits[/bold green] (prefer {prefer}): {'; '.join(best.changes) or 'as is'} "
                  f"-> device_total {best.total / 2**30:.2f} GiB")
        out.print("  " + best.setup.label(), markup=False)
        if best.parts and terms:
            from planner.terms import say

            out.print("  in the step's own terms (its TERMS): " + "; ".join(say(best.parts, terms)), markup=False)
    if best is not None:
        out.print("Band: " + band(margin_line), markup=False)
    out.print(candidate_table(ordered, cap["budget_bytes"]))
    for label, e in stats.failed.items():
        out.print(f"[yellow]could not trace {label}: {e}[/yellow]", markup=True)
    for note in stats.notes:
        out.print(f"note: {note}", markup=False)
    out.print(f"[dim]{summary}. Time per sample: roofline over the traced FLOPs and bytes ({card.name} rates), "
              f"uncalibrated, relative to 'as is'.[/dim]")


def candidate_table(ordered: list, budget: int) -> Any:
    """The first 12 candidates (planner/search.py ``Candidate``) in preference order, figures against
    ``budget``; time per sample relative to the input's ("as is")."""
    from planner.report.text import TextTable

    t = TextTable(title="Candidates (first 12 in preference order; GiB = 2**30 bytes; ~ predicted, not traced)")
    for col in ("changes", "risk", "device_total GiB", "fits", "rel. time/sample", "how"):
        t.add_column(col)
    base_secs = next((c.seconds for c in ordered if not c.changes), None) or 1.0
    for c in ordered[:12]:
        pre = "" if c.report is not None else "~"
        total = "-" if c.total == float("inf") else f"{pre}{c.total / 2**30:.2f}"
        t.add_row("; ".join(c.changes) or "as is", TIER_NAMES[c.tier], total,
                  "-" if c.total == float("inf") else pre + ("yes" if c.fit_total <= budget else "no"),
                  f"{pre}{c.seconds / base_secs:.2f}" if c.seconds < float("inf") else "-",
                  "not run" if c.error and c.error.startswith("not run") else c.how)
    return t


def print_nothing_fits_or_fits_as_is(found: Any, fit_at: str) -> None:
    """recommend's verdict line (planner/search.py ``Outcome``) where nothing fits (the smallest
    candidate at the figure the fit was judged on, and the card it needs; every step, the built-in
    one included) or, on a step file or a script, the input fits as it is (the faster settings that
    also fit, fastest first)."""
    best = found.best
    if best is None:
        low, need = found.smallest or found.input, found.needed_gpu
        out.print("[bold red]nothing fits[/bold red]: ", end="")  # the rest as plain text (labels hold brackets)
        at = "at the top of its band" if fit_at == "high" else "at its point"
        out.print(f"the smallest candidate needs {low.fit_total / 2**30:.2f} GiB {at} (device_total "
                  f"{low.total / 2**30:.2f} GiB; {'; '.join(low.labels) or 'as is'})"
                  + (f"; it would fit a {need.name} ({need.capacity_bytes / 2**30:.2f} GiB CUDA-reported)" if need
                     else "; no catalog card is that large"), markup=False)
        return
    out.print(f"[bold green]fits as is[/bold green]: device_total {best.total / 2**30:.2f} GiB of the "
              f"{found.budget_bytes / 2**30:.2f} GiB budget; nothing needs to change")
    if found.faster:
        out.print("faster settings that also fit (traced; --prefer speed picks the first): " + "; ".join(
            f"{', '.join(c.labels)} ({c.seconds / best.seconds:.2f}x the time per sample, {c.total / 2**30:.2f} GiB)"
            for c in sorted(found.faster, key=lambda c: c.seconds)[:3]), markup=False)


def _step_candidate_json(c: Any) -> dict:
    """A step file's (or a script's) candidate (planner/search.py ``Candidate``) as recommend --json gives it."""
    r = c.report
    return {"changes": c.changes, "tier": TIER_NAMES[c.tier], "setup": c.setup.to_json() if c.setup else None,
            "peak_allocated_bytes": r.peak_allocated_bytes if r else None,
            "device_total_bytes": r.device_total_bytes if r else None,
            "predicted_device_total_bytes": (None if r or c.predicted_total in (None, float("inf"))
                                             else int(c.predicted_total)),
            "seconds_per_sample": c.seconds_per_sample if r else c.predicted_seconds,
            "fit_bytes": c.fit if r else None, "how": c.how, "error": c.error}


def max_gpus_step_file(ss: StepSetup, sf: Any, card: Any, margin: float, cap: dict, *, limit: int, jobs: int,
                       as_json: bool, fit_at: str = "high", profile: Any = None) -> None:
    from planner import gpusearch as G
    from planner.measure import search as S

    prog, tick = progress(err, "tracing")
    with prog:
        answer, tried, verdict, stats = S.max_gpus(ss, card, margin, limit, sf.batch_default or 1,
                                                   jobs, tick, profile=profile, fit_at=fit_at)
    if as_json:
        print_json({"gpu": cap, "input": ss.to_json(), "answer": answer.to_json() if answer else None,
                     "tried": [o.to_json() for o in tried], "verdict": verdict, "traces": stats.traces,
                     "cached_traces": stats.cached, "seconds": round(stats.seconds, 2), "not_counted": G.NOT_COUNTED})
        return
    G.render(out, f"vramplan recommend --step --max-gpus {limit}", ss.label(), cap["budget_bytes"],
             card.capacity_bytes, margin, card.name, answer, tried, verdict, "traced, not measured on GPUs",
             f"{stats.traces} traces ({stats.cached} cached), {stats.seconds:.1f} s")
