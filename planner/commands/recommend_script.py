"""``vramplan recommend [OPTIONS] -- python train.py ARGS``: the search of planner/script_search.py
on an unchanged script, rendered in the script's own terms. Called by ``planner/commands/recommend.py``
when a command follows ``--``; torch is imported only in the tracing worker."""

from __future__ import annotations

from typing import Any

from planner.commands.app import err, out, print_json
from planner.errors import PlannerError
from planner.search import SAFETY, parse_freeze

# recommend's setup flags a script takes (the input's knobs, as `vramplan run` applies them)
SCRIPT_FLAGS = ("precision", "amp", "checkpoint", "sdpa", "batch", "alloc_conf", "timeout", "gpus", "strategy")


def recommend_script(command: list[str], flags: Any, *, steps: int | None, gpu: str, margin: float, prefer: str,
                     freeze: str | None, fit_at: str, as_json: bool, other: dict[str, Any],
                     max_batch: bool = False) -> None:
    """``other``: recommend's options that do not apply to a script (flag -> value), refused when given."""
    from planner.config import environment_alloc_conf
    from planner.gpus import parse_gpu
    from planner.measure.isolate import set_timeout
    from planner.script_setup import script_setup
    from planner import script_search as S
    from planner.search import check_margin

    for name, value in flags.given:
        if name not in SCRIPT_FLAGS and value not in (None, False, [], ()):
            raise PlannerError(f"--{name.replace('_', '-')}: does not apply to a script (valid with -- python "
                               f"train.py: --precision, --checkpoint, --sdpa, --batch, --alloc-conf, --timeout, --steps, --gpus, "
                               f"--strategy ddp)")
    for flag, value in other.items():
        if value not in (None, False, [], ()):
            raise PlannerError(f"{flag}: does not apply to a script (valid with -- python train.py: --gpu, --margin, "
                               f"--prefer, --freeze, --fit-at, --steps, --json and the input's --precision, "
                               f"--checkpoint, --sdpa, --batch, --alloc-conf)")
    check_margin(margin)
    card = parse_gpu(gpu)
    set_timeout(flags.timeout)
    setup = script_setup(command, steps=steps or 2, card=card, precision=flags.precision,
                         checkpoint=flags.checkpoint, sdpa=flags.sdpa, batch=flags.batch, gpus=flags.gpus,
                         strategy=flags.strategy)
    conf = flags.alloc_conf or environment_alloc_conf() or ""
    from planner.allocator import parse_alloc_conf

    parse_alloc_conf(conf or None)  # a bad setting is one line before the script runs
    from planner.measure.search import FREEZE  # a script's search has a step file's dimensions

    frozen = parse_freeze(freeze, FREEZE, " for a script")
    base = S.ScriptPlan(setup, conf)
    if max_batch:
        _max_batch(base, card, gpu, margin, fit_at, as_json)
        return
    with err.status(f"tracing {setup.script}") as status:
        engine = S.ScriptEngine(card, progress=lambda label: status.update(f"tracing {label[:100]}"))
        found, run, notes, knob, refined = S.recommend(base, card, margin, prefer, frozen, fit_at, engine)
    best = refined or found.best
    option = knob.option if knob else None
    facts = run.facts
    budget = found.budget_bytes
    cap = {"key": card.key, "name": card.name, "capacity_bytes": card.capacity_bytes, "margin": margin,
           "budget_bytes": budget}
    terms = S.in_script_terms(best.settings, facts, option) if best else []
    command_line = S.run_command(best.setup, gpu) if best else None
    # the answer first, then every candidate in preference order
    ordered = list(dict.fromkeys([c for c in (best, found.best) if c is not None] + found.ordered))
    if refined is not None and found.best is not None:
        k = next(c.value for c in refined.settings if c.dim == "batch")
        notes.append(f"batch size: {'; '.join(found.best.labels)} fits; batch {k} is the largest below the next "
                     f"larger option that still fits (with the same other changes)")
    from planner.band import margin_json, margin_line
    from planner.commands.recommend import _step_candidate_json, candidate_table, print_nothing_fits_or_fits_as_is

    if as_json:
        print_json({"gpu": cap, "input": base.to_json(), "input_fits": found.input_fits,
                    "best": {**_step_candidate_json(best), "in_the_scripts_terms": terms, "run_command": command_line,
                             "band_margin": margin_json(best.report, card, budget, fit_at)} if best else None,
                    "candidates": [_step_candidate_json(c) for c in ordered], "considered": len(ordered),
                    "smallest": _step_candidate_json(found.smallest) if found.smallest else None,
                    "card_needed": found.needed_gpu.key if found.needed_gpu else None,
                    "batch_option": option["options"] if option else None, "traces": engine.traces,
                    "notes": notes, "seconds": round(found.seconds, 2),
                    "time_model": "roofline over the last training step's traced FLOPs and bytes, uncalibrated "
                                  "(relative)"})
        return
    out.print(f"[bold]vramplan recommend[/bold] for {card.name} (budget {budget / 2**30:.2f} GiB = capacity "
              f"{card.capacity_bytes / 2**30:.2f} GiB - {margin:.0%})")
    out.print("input: " + setup.label() + (f"; PYTORCH_CUDA_ALLOC_CONF={conf}" if conf else ""), markup=False)
    if best is None or not best.settings:
        print_nothing_fits_or_fits_as_is(found, fit_at)
    else:
        out.print(f"[bold green]cheapest that fits[/bold green] (prefer {prefer}): {'; '.join(best.labels)} "
                  f"-> device_total {best.total / 2**30:.2f} GiB")
        out.print("in the script's own terms:")
        for t in terms:
            out.print(f"  - {t['script']}", markup=False)
        out.print("to check it without editing: " + (command_line or ""), markup=False)
    if best is not None:
        out.print("Band: " + margin_line(best.report, card, budget, fit_at), markup=False)
    out.print(candidate_table(ordered, budget))
    for c in ordered:
        if c.error and not c.error.startswith("not run"):
            out.print(f"[yellow]could not trace {'; '.join(c.labels)}: {c.error}[/yellow]")
    for note in notes:
        out.print(f"note: {note}", markup=False)
    out.print(f"[dim]{len(ordered)} candidates, {engine.traces} traces of the script ({setup.steps} optimizer steps "
              f"each), the others predicted from each change's exact ratio alone and verified in preference order "
              f"where predicted within the budget + {SAFETY:.0%}; {found.seconds:.1f} s. Time per sample: roofline "
              f"over the traced FLOPs and bytes ({card.name} rates), uncalibrated, relative to 'as is'.[/dim]")


def _max_batch(base: Any, card: Any, gpu: str, margin: float, fit_at: str, as_json: bool) -> None:
    """recommend --max-batch -- python train.py (planner/script_search.py ``max_batch``)."""
    from planner import script_search as S

    with err.status(f"tracing {base.setup.script}") as status:
        engine = S.ScriptEngine(card, progress=lambda label: status.update(f"tracing {label[:100]}"))
        res, run, knob, notes = S.max_batch(base, card, margin, fit_at, engine)
    value, rep = res.value, res.report
    terms = S.in_script_terms((knob.change(value),), run.facts, knob.option) if value and rep else []
    plan = knob.apply(base, value) if value and rep else None
    budget = int(card.capacity_bytes * (1 - margin))
    if as_json:
        print_json({"gpu": {"key": card.key, "name": card.name, "capacity_bytes": card.capacity_bytes,
                            "margin": margin, "budget_bytes": budget},
                    "input": base.to_json(), "script_batch": knob.script_batch, "max_batch": value or None,
                    "device_total_bytes": rep.device_total_bytes if rep else None, "capped": res.capped,
                    "search_cap": res.cap, "smaller_not_fitting": res.smaller_not_fitting,
                    "in_the_scripts_terms": terms, "run_command": S.run_command(plan, gpu) if plan else None,
                    "batch_option": knob.option["options"] if knob.option else None, "traces": engine.traces,
                    "notes": notes})
        return
    if not value or rep is None:
        out.print(f"even batch 1 does not fit {card.name} (budget {budget / 2**30:.2f} GiB)")
    else:
        head = "(the search cap) still fits" if res.capped else "is the largest batch that fits"
        out.print(f"batch {value} {head} {card.name}: device_total {rep.device_total_bytes / 2**30:.2f} GiB, budget "
                  f"{budget / 2**30:.2f} GiB (the script's own: {knob.script_batch})")
        out.print("in the script's own terms: " + terms[0]["script"], markup=False)
        out.print("to check it without editing: " + S.run_command(plan, gpu), markup=False)
    if res.smaller_not_fitting:
        out.print(f"note: smaller sizes that do NOT fit (memory is not monotone in the size): "
                  f"{', '.join(map(str, res.smaller_not_fitting))}", markup=False)
    for note in notes:
        out.print(f"note: {note}", markup=False)
    out.print(f"[dim]{engine.traces} traces of the script ({base.setup.steps} optimizer steps each)[/dim]")
