"""`vramplan estimate`."""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer

from planner.commands.app import command, err, out, print_json
from planner.commands.options import takes_setup, ENGINE_TEXT, EngineOpt, JsonOpt
from planner.commands.render import library_terms_json, print_library_terms, print_verdict, render_step, step_profile
from planner.errors import PlannerError
from planner.gpu_rule import GPU_HELP
from planner.setup_flags import SetupFlags, builtin_setup, filled, load_step, step_params
from planner.step_setup import StepSetup


@command()
@takes_setup
def estimate(
    gpu: Annotated[
        Optional[str], typer.Option("--gpu", help=f"Card to check against. {GPU_HELP}")
    ] = None,
    compare: Annotated[
        bool, typer.Option("--compare", help="Also run the profiler (fake backend) and show the error per category.")
    ] = False,
    profile_name: Annotated[
        Optional[str], typer.Option("--profile", help="Device profile from profiles/ (see `vramplan profiles`).")
    ] = None,
    engine: EngineOpt = None,
    as_json: JsonOpt = False,
    flags: SetupFlags | None = None,
) -> None:
    """Estimate where every byte of the reference training step goes, and whether it fits. No GPU, no torch.
    With --step, your own step, by trace (cached).

    Example: vramplan estimate --voxel 256x256x64 --gpu 24GB

    Example: vramplan estimate --step examples/steps/template.py --knob width=256 --precision amp-bf16 --gpu 8GB

    Example: vramplan estimate --model nets.py:make_net --input 2x1x96x96x96 --gpu 24GB
    """
    assert flags is not None  # takes_setup
    ss = step_params(flags, "estimate", engine=engine, refused={"compare": compare}, gpu=gpu)
    if ss is not None:
        estimate_step_file(ss, gpu=gpu, profile_name=profile_name, backend="fake", as_json=as_json)
        return
    from planner.analytic.estimate import estimate as run_estimate
    from planner.analytic.estimate import verdict
    from planner.gpus import parse_gpu

    setup = builtin_setup(flags, gpu=gpu, profile_name=profile_name)
    from planner import profiles

    card = parse_gpu(gpu) if gpu else None
    prof = profiles.load_for(profile_name, "analytic") if profile_name else (profiles.for_gpu(card.key) if card else None)
    chosen = engine.value if engine else "analytic"
    if chosen == "trace":
        if compare:
            raise PlannerError("--compare: with --engine trace the estimate is the trace already")
        from planner.measure.profile import profile as run_profile

        with err.status("tracing the built-in step (fake backend)"):
            report = run_profile(setup, "fake", source="estimate:trace",
                                 capacity_bytes=card.capacity_bytes if card else None)
    else:
        report = run_estimate(setup, card.capacity_bytes if card else None)
    if prof is not None:
        report = prof.apply(report)
    def _recommend_command() -> str:
        import shlex

        args = ["vramplan", "recommend", *flags.as_args(), "--gpu", gpu]
        return " ".join(shlex.quote(a) for a in args)

    v = verdict(report, card, setup, _recommend_command()) if card else None
    measured = None
    if compare:
        try:
            from planner.measure.profile import profile as run_profile
        except ImportError as exc:
            raise PlannerError(f"--compare needs the measuring extra ({exc.name} is missing): pip install 'vramplan[profile]'") from None
        with err.status("profiling (fake backend) for --compare"):
            measured = run_profile(setup, "fake")
    if as_json:
        data = report.to_json()
        data["fits"] = v.fits if v else None
        data["gpu"] = v.to_json() if v else None
        data["next_step"] = v.next_step if v and not v.fits else None
        data["library_terms"] = library_terms_json(report, card)
        from planner.band import band_json

        data["device_band"] = band_json(report, card)
        data["engine"] = chosen
        from planner.report.terminal import setup_line
        from planner.spec import spec_to_dict

        # what was estimated: the one-line summary the text prints, and the full setup
        data["setup"] = {"summary": setup_line(setup), "config": spec_to_dict(setup)}
        data["profile"] = (
            {"name": prof.name, "calibrated": prof.hardware, "device": prof.device.get("name", ""),
             "context_bytes": report.context_bytes, "source": report.context_basis}
            if prof is not None
            else {"name": "default", "calibrated": False, "context_bytes": report.context_bytes,
                  "source": report.context_basis}
        )
        if measured is not None:
            data["compare"] = measured.to_json()
        print_json(data)
        return
    from planner.report.terminal import render_comparison, render_report

    render_report(report, setup, out, title="vramplan estimate")
    out.print(f"engine: {ENGINE_TEXT[chosen]}", markup=False)
    if v is not None:
        style = "bold green" if v.fits else "bold red"
        plabel = prof.label if prof is not None else "default, uncalibrated"
        out.print(f"[{style}]{v.sentence()}[/{style}] (device_total {report.device_total_bytes / 2**30:.2f} GiB; profile: {plabel})")
        out.print(f"[dim]{card.capacity_note()}[/dim]")
        for line in v.next_lines():
            out.print(line)
    print_library_terms(report, card, out)
    if measured is not None:
        render_comparison(report, measured, out)


def estimate_step_file(ss: StepSetup, *, gpu: str | None, profile_name: str | None, backend: str, as_json: bool,
                       fresh: bool = False) -> None:
    """estimate --step (by trace, cached) and profile --step (traced now, any backend)."""
    from planner.gpus import parse_gpu

    card = parse_gpu(gpu) if gpu else None
    sf = load_step(ss)
    ss = filled(ss, sf)
    from planner.measure.profile import report_from

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
        prof = step_profile(profile_name)
        if prof is not None:
            report = prof.apply(report)
    from planner.analytic.estimate import verdict

    v = verdict(report, card) if card is not None else None
    if as_json:
        data = report.to_json()
        data["fits"] = v.fits if v else None
        data["gpu"] = v.to_json() if v else None
        data["step_setup"] = ss.to_json()
        data["how"] = how
        data["engine"] = "trace"
        from planner.band import band_json

        data["device_band"] = band_json(report, card)
        print_json(data)
        return
    render_step(report, ss, out, "vramplan " + ("profile" if fresh else "estimate") + f" --step ({how})")
    if v is not None:
        print_verdict(v, report, ss, out)
    out.print(f"[dim]{report.wall_seconds:.1f} s[/dim]")
