"""``vramplan compare run.json`` and ``vramplan calibrate --from runs/*.json``: a recorded run
(planner/record.py) against what vramplan estimates for the same setup.

The estimate of a run is the one the other commands print: a step file's fake-tensor trace
(``estimate --step``, basis ``trace``) or a built-in configuration's analytic estimate
(``estimate``, basis ``analytic``), with ``--profile`` applied when given. Per figure:
allocated (``max_memory_allocated``), reserved (``max_memory_reserved``), context and device
(what ``mem_get_info`` sees, less what was in use before CUDA was initialised); per category the
estimate's bytes at the peak (counters do not split by category) and the measured allocated
bytes the estimate has no tensor for (workspaces, kernel scratch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from planner.errors import PlannerError, quote
from planner.record import load_run, measured, step_setup_of

FIGURES = (("allocated", "peak_allocated_bytes", "peak_allocated_bytes"),
           ("reserved", "peak_reserved_bytes", "peak_reserved_bytes"),
           ("context", "context_bytes", "context_bytes"),
           ("device", "device_total_bytes", "device_used_bytes"))
"""(figure, MemoryReport attribute, measured() key)."""


def basis_of(run: dict[str, Any]) -> str:
    return {"step": "trace", "builtin": "analytic"}.get(run["setup"]["kind"], "none")


def estimate_for(run: dict[str, Any], base: Path | None = None, profile: str | None = None) -> Any:
    """The MemoryReport vramplan gives for a validated run's setup (``profile`` applied)."""
    basis = basis_of(run)
    if basis == "none":
        raise PlannerError("run file: its setup is {\"kind\": \"none\"}: record it with step= or config= "
                           "to compare it with an estimate")
    if basis == "trace":
        from planner.measure import traces
        from planner.measure.profile import report_from

        ss = step_setup_of(run, base)
        report = report_from(traces.trace(ss), "fake", ss.alloc_conf, 0.0, source="estimate:trace")
    else:
        from planner.analytic.estimate import estimate
        from planner.config import setup_from_dict

        report = estimate(setup_from_dict(dict(run["setup"]["config"])))
    if profile:
        from planner import profiles

        report = profiles.load_for(profile, basis).apply(report)
    return report


def comparison(run: dict[str, Any], report: Any) -> dict[str, Any]:
    """Estimate vs measured per figure and per category (JSON-ready)."""
    got = measured(run)
    rows = []
    for figure, attr, key in FIGURES:
        est, meas = int(getattr(report, attr)), got[key]
        rows.append({"figure": figure, "estimated_bytes": est, "measured_bytes": meas,
                     "error_bytes": est - meas if meas is not None else None,
                     "error_pct": round(100.0 * (est - meas) / meas, 4) if meas else None})
    cats = dict(report.breakdown.by_category)
    cats["not in the estimate (workspaces, kernel scratch)"] = max(0, got["peak_allocated_bytes"]
                                                                   - report.peak_allocated_bytes)
    return {"setup": run["setup"], "device": run["device"], "basis": basis_of(run), "figures": rows,
            "categories_estimated_bytes": cats, "measured": got,
            "underestimates": [r["figure"] for r in rows if (r["error_bytes"] or 0) < 0]}


def compare_file(path: str, profile: str | None = None, base: Path | None = None) -> dict[str, Any]:
    """``base``: where a relative step file is looked for when not found from the working
    directory (default: the run file's folder)."""
    run = load_run(path, "compare")
    out = comparison(run, estimate_for(run, base or Path(path).parent, profile))
    out["run"] = str(path)
    return out


def figure_lines(figures: list[dict[str, Any]], label: str | None = None, width: int = 34) -> list[str]:
    """One line per figure: estimated and measured MiB and the error; with ``label`` (an item's
    name) each line starts with it and no header is made (:func:`figure_header`)."""
    out = [] if label is not None else [figure_header(None)]
    head = f"{label[:width]:<{width}} " if label is not None else ""
    for r in figures:
        pct = f"{r['error_pct']:+8.2f}%" if r["error_pct"] is not None else "      n/a"
        meas = f"{r['measured_bytes'] / 2**20:>13.1f}" if r["measured_bytes"] is not None else f"{'not measured':>13}"
        out.append(f"{head}{r['figure']:<10} {r['estimated_bytes'] / 2**20:>14.1f} {meas} {pct}")
    return out


def figure_header(width: int | None = 34) -> str:
    head = f"{'item':<{width}} " if width else ""
    return f"{head}{'figure':<10} {'estimated MiB':>14} {'measured MiB':>13} {'error':>9}"


def render(cmp: dict[str, Any]) -> list[str]:
    lines = [f"run {cmp['run']} on {cmp['device']['name']} ({cmp['device']['backend']}), estimate by {cmp['basis']}"]
    lines += figure_lines(cmp["figures"])
    lines.append("categories at the estimated peak (MiB; counters do not split by category):")
    for name, b in cmp["categories_estimated_bytes"].items():
        lines.append(f"  {name:<48} {b / 2**20:>10.1f}")
    if cmp["underestimates"]:
        lines.append(f"UNDER-ESTIMATED: {', '.join(cmp['underestimates'])} (the run needed more than vramplan said)")
    return lines


# --- calibrate --from -------------------------------------------------------------------------------

def points_from(paths: list[str], base: Path | None = None) -> tuple[list[dict[str, Any]], dict[str, Any], str, bool]:
    """Calibration points (planner/calibrate.fit's layout) from run files, with the device they
    share, the estimate's basis and whether every run is on real hardware."""
    if not paths:
        raise PlannerError("--from: no run files (valid: one or more run JSON files, e.g. runs/*.json)")
    points, device, basis = [], None, None
    for path in paths:
        run = load_run(path, "--from")
        b = basis_of(run)
        if b == "none":
            raise PlannerError(f"--from: {quote(path)} has no setup (kind none); calibration needs the setup of each run")
        if basis is not None and b != basis:
            raise PlannerError(f"--from: {quote(path)} is a {b} run but earlier ones are {basis} runs "
                               "(a profile corrects one estimator; calibrate step-file and built-in runs separately)")
        if device is not None and (run["device"]["name"], run["device"]["backend"]) != (device["name"], device["backend"]):
            raise PlannerError(f"--from: {quote(path)} ran on {run['device']['name']} but earlier runs on "
                               f"{device['name']} (a profile is for one device)")
        basis, device = b, device or dict(run["device"])
        est, got = estimate_for(run, base or Path(path).parent), measured(run)
        points.append({
            "name": Path(path).stem,
            "config": run["setup"],
            "estimated_allocated_bytes": est.peak_allocated_bytes,
            "modelled_reserved_bytes": est.peak_reserved_bytes,
            "measured_allocated_bytes": got["peak_allocated_bytes"],
            "measured_reserved_bytes": got["peak_reserved_bytes"],
            "measured_context_bytes": got["context_bytes"] if run["device"]["backend"] == "cuda" else None,
        })
    return points, device, basis, device["backend"] == "cuda"


def calibrate_from(name: str, paths: list[str], gpu_key: str | None = None, base: Path | None = None) -> Any:
    """A device profile fitted on run files (planner/calibrate.fit)."""
    from planner.calibrate import fit

    points, device, basis, hardware = points_from(paths, base)
    return fit(name, device, points, hardware=hardware, gpu_key=gpu_key, basis=basis)


def validate_profile(profile_name: str, paths: list[str]) -> dict[str, Any]:
    """An existing profile's terms checked on run files: per run, the profiled estimate's error."""
    rows = []
    for path in paths:
        cmp = compare_file(path, profile_name)
        rows.append({"run": path, **{r["figure"]: r["error_pct"] for r in cmp["figures"]},
                     "underestimates": cmp["underestimates"]})
    worst = {f: max((abs(r[f]) for r in rows if r[f] is not None), default=None) for f, _, _ in FIGURES}
    return {"profile": profile_name, "runs": rows, "worst_abs_error_pct": worst,
            "underestimated_runs": sum(1 for r in rows if r["underestimates"])}


# --- the commands (planner/cli.py registers them; the logic is here) -----------------------------------

def run_paths(first: str | None, rest: list[str] | None) -> list[str]:
    """``--from A [B ...]`` as the shell expands ``--from runs/*.json``; a folder stands for its
    ``*.json`` files and a quoted pattern (``'runs/*.json'``) is expanded here."""
    import glob

    given = ([first] if first else []) + [str(p) for p in (rest or [])]
    if rest and not first:
        raise PlannerError(f"{quote(str(rest[0]))}: calibrate takes run files only after --from "
                           "(e.g. vramplan calibrate --from runs/*.json --name mine)")
    paths: list[str] = []
    for g in given:
        if any(c in g for c in "*?["):
            hits = sorted(glob.glob(g))
            if not hits:
                raise PlannerError(f"--from: no file matches {quote(g)}")
            paths += hits
        elif Path(g).is_dir():
            hits = sorted(str(p) for p in Path(g).glob("*.json"))
            if not hits:
                raise PlannerError(f"--from: the folder {quote(g)} holds no .json run files")
            paths += hits
        else:
            paths.append(g)
    return paths


def calibrate_command(p: dict[str, Any], out: Any) -> None:
    """``vramplan calibrate --from RUNS [--validate PROFILE]``."""
    from planner import profiles
    from planner.report.text import print_json as _print_json
    from planner.config import check_gpu_flag
    from planner.gpus import parse_gpu

    paths = run_paths(p.get("from_"), p.get("runs"))
    if p.get("validate"):
        res = validate_profile(p["validate"], paths)
        if p.get("as_json"):
            _print_json(res)
            return
        for r in res["runs"]:
            out.print(f"{r['run']}: " + ", ".join(f"{f} {r[f]:+.2f}%" if r[f] is not None else f"{f} n/a"
                                                   for f, _, _ in FIGURES)
                      + (f"  UNDER: {', '.join(r['underestimates'])}" if r["underestimates"] else ""), markup=False)
        out.print(f"profile {res['profile']}: worst |error| " + ", ".join(
            f"{f} {v:.2f}%" for f, v in res["worst_abs_error_pct"].items() if v is not None)
            + f"; {res['underestimated_runs']} of {len(res['runs'])} runs under-estimated", markup=False)
        return
    profiles.check_name(p["name"])
    check_gpu_flag(p.get("gpu"))
    card = parse_gpu(p["gpu"]) if p.get("gpu") else None
    prof = calibrate_from(p["name"], paths, card.key if card else None)
    from planner.calibrate import save_and_report

    if save_and_report(prof, bool(p.get("as_json")), out, lambda path: f"wrote {path}: {len(paths)} runs on "
                       f"{prof.device.get('name')} (basis {prof.basis}, "
                       f"{'real hardware' if prof.hardware else 'not real hardware'})"):
        return
    out.print(f"use it: vramplan compare {paths[0]} --profile {prof.name}", markup=False)


def compare_command(p: dict[str, Any], out: Any) -> None:
    """``vramplan compare RUN [--profile NAME] [--json]``."""
    from planner.report.text import print_json as _print_json

    cmp = compare_file(str(p["run"]), p.get("profile_name"))
    if p.get("as_json"):
        _print_json(cmp)
        return
    for line in render(cmp):
        out.print(line, markup=False)
