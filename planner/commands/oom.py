"""`vramplan oom`."""

from __future__ import annotations

import sys
from typing import Annotated, Any, Optional

import typer

from planner.commands.app import command, err, out, print_json
from planner.commands.options import takes_setup, JsonOpt
from planner.errors import PlannerError
from planner.gpu_rule import GPU_HELP
from planner.setup_flags import SetupFlags, builtin_setup


@command()
@takes_setup
def oom(
    message: Annotated[
        Optional[str], typer.Argument(help="The out-of-memory message (or a whole traceback); '-' or none: read stdin.")
    ] = None,
    gpu: Annotated[
        Optional[str], typer.Option("--gpu", help=f"With a setup: card to recommend for (default: the message's capacity, less other processes). {GPU_HELP}")
    ] = None,
    margin: Annotated[Optional[float], typer.Option(
        "--margin", help="With a setup: safety margin of the recommendation, a fraction of the card (default 0.05).")] = None,
    as_json: JsonOpt = False,
    flags: SetupFlags | None = None,
) -> None:
    """Explain a CUDA out-of-memory message; with a setup (--config or setup flags), name the tensor it was and what fits.

    Example: vramplan oom "$(tail -n 30 train.log)" --config examples/seed004_high_res.yaml
    """
    from planner import oom as O

    assert flags is not None  # takes_setup
    for name, flag in (("step", "--step"), ("model", "--model"), ("timeout", "--timeout")):
        if flags.is_given(name):
            raise PlannerError(f"{flag}: oom names the tensor from the built-in step's simulation (a --config or "
                               f"the setup flags); for your own step: vramplan estimate {flag} ... --gpu CARD")
    if message is None or message == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise PlannerError("MESSAGE: none given: give the message as an argument or pipe it in "
                               "(e.g. tail -n 30 train.log | vramplan oom)")
        stream = getattr(sys.stdin, "buffer", sys.stdin)
        text = stream.read(O.MAX_INPUT_BYTES + 1)
    else:
        text = message
    report = O.parse_oom(text)
    given = bool(flags.given)
    if gpu is not None and not gpu.strip():
        raise PlannerError("--gpu: empty value (valid: a size as sold like 24GB, an exact capacity like exact:23.55GiB, or a name from `vramplan gpus`)")
    if margin is not None and not 0 <= margin < 1:
        raise PlannerError(f"--margin: {margin} must be in [0, 1)")
    for value, flag in ((gpu, "--gpu"), (margin, "--margin")):
        if value is not None and not given:
            raise PlannerError(f"{flag}: only used with a setup (--config CFG.yaml or the setup flags), for the recommendation")
    margin = 0.05 if margin is None else margin
    data = O.explain_json(report)
    lines = list(data["explanation"])
    setup_data: dict[str, Any] | None = None
    if given:
        from planner.analytic.estimate import estimate as run_estimate
        from planner.analytic.simulate import simulate
        from planner.gpus import parse_gpu
        from planner.report.terminal import setup_line

        setup = builtin_setup(flags, gpu=gpu)
        sim = simulate(setup)
        matches = O.match_request(report, sim.mem)
        card = parse_gpu(gpu) if gpu else O.recommendation_card(report)
        est = run_estimate(setup, card.capacity_bytes if card else None)
        setup_data = {
            "summary": setup_line(setup),
            "request_matches": [m.to_json() for m in matches],
            "estimate": {"peak_allocated_bytes": est.peak_allocated_bytes, "peak_reserved_bytes": est.peak_reserved_bytes,
                         "device_total_bytes": est.device_total_bytes},
            "gpu": None, "recommendation": None,
        }
        if card is not None:
            from planner import recommend as R

            with err.status("searching for a configuration that fits"):
                rec = R.recommend(setup, card, margin, "risk", set())
            best = rec.best
            setup_data["gpu"] = {"key": card.key, "name": card.name, **card.capacity_json()}
            setup_data["recommendation"] = {
                "budget_bytes": rec.budget_bytes, "input_fits": rec.input_fits,
                "changes": best.labels if best else None,
                "device_total_bytes": best.exact.device_total_bytes if best else None,
                "diff": R.yaml_diff(setup, best.setup) if best else None,
                "nothing_fits": best is None,
                "card_needed": rec.needed_gpu.key if best is None and rec.needed_gpu else None,
                "notes": rec.notes,
            }
    if as_json:
        if setup_data is not None:
            data["setup"] = setup_data
        print_json(data)
        return
    out.print("[bold]vramplan oom[/bold]")
    for line in lines:
        out.print(line)
    if setup_data is None:
        out.print("[dim]Give the setup (--config CFG.yaml or the setup flags) to name the tensor and get a "
                  "configuration that fits.[/dim]")
        return
    out.print(f"[bold]Setup:[/bold] {setup_data['summary']}")
    ms = setup_data["request_matches"]
    if ms:
        first = O.TensorMatch(**ms[0])
        out.print(f"Most likely: {first.sentence(report.request_text)}.")
        for m in ms[1:]:
            out.print(f"  or: {O.TensorMatch(**m).sentence(report.request_text)}")
        if report.request_bytes <= (20 << 20) and first.how == "segment":
            out.print("[dim]  A 2 or 20 MiB segment serves any small tensor: these are named by where the step "
                      "first runs out of room (capacity - outside PyTorch), not by their size.[/dim]")
    else:
        out.print(f"No allocation of this setup's step asks for {report.request_text}: the OOM came from another "
                  "setup, or outside the reference step.")
    e = setup_data["estimate"]
    out.print(f"vramplan's estimate of this step: peak allocated {O.fmt(e['peak_allocated_bytes'])}, device total "
              f"{O.fmt(e['device_total_bytes'])}" + (f" vs the card's {report.capacity_text}." if report.capacity_text else "."))
    r = setup_data["recommendation"]
    if r is None:
        out.print("[dim]No capacity in the message and no --gpu: no recommendation.[/dim]")
    elif r["input_fits"]:
        out.print(f"[bold green]This setup fits {setup_data['gpu']['name']}[/bold green] by the estimate "
                  f"(budget {O.fmt(r['budget_bytes'])}, margin {margin:.0%}): the OOM is not this step's peak "
                  "(another setup, other processes, or fragmentation, above).")
    elif r["nothing_fits"]:
        need = f"; it would take a {r['card_needed']}" if r["card_needed"] else ""
        if O.diagnosis(report) == "other_memory":  # a larger card is not the answer to memory others hold
            need = f"; {O.fmt(report.elsewhere_bytes)} of the card is held outside this process: free that first"
        out.print(f"[bold red]Nothing in the search space fits {setup_data['gpu']['name']}[/bold red]{need}.")
        for note in r["notes"]:
            out.print("note: " + note, markup=False)
    else:
        out.print(f"[bold]Recommended for {setup_data['gpu']['name']}[/bold] (budget {O.fmt(r['budget_bytes'])}, "
                  f"margin {margin:.0%}): {', '.join(r['changes'])}; device total {O.fmt(r['device_total_bytes'])}.")
        for line in r["diff"]:
            out.print(f"  {line}")
