"""Published real-GPU memory figures against vramplan's estimate (issue 24).

    python benchmarks/bench_published.py [--only ID[,ID...]] [--json]

``benchmarks/published/points.json`` (data, validated field by field by :func:`load_points`; never
code) holds figures printed by code in public sources: the source, GPU, versions as stated, the
counter, the setup and the step file + knobs that reproduce it. Per point this traces the step
(``planner/measure/search.py`` Evaluator: the same trace and report as ``vramplan estimate
--step``), takes the figure the counter matches:

* ``max_memory_allocated`` -> peak_allocated, ``max_memory_reserved`` -> peak_reserved: the error
  against the target of 1 %;
* ``nvml_used`` (NVML / nvidia-smi "used": the whole device) -> device_total's point and its band
  (``planner/band.py device_band``, context by the point's module loading): is the figure inside
  the band, and is it above the band's top (an under-estimate the band does not cover)?

and prints a table and the summary lines for the targets. Nothing is fitted to these points.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from planner.errors import PlannerError, quote  # noqa: E402

POINTS = ROOT / "benchmarks" / "published" / "points.json"
SCHEMA = "vramplan-published/1"
COUNTERS = {"max_memory_allocated": "peak_allocated_bytes", "max_memory_reserved": "peak_reserved_bytes",
            "nvml_used": "device_total_bytes"}
UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "MB": 10**6, "GB": 10**9}
PRECISIONS = ("fp32", "amp-fp16", "amp-bf16", "fp16-master", "bf16-master", "fp16", "bf16")
TEXT_FIELDS = ("id", "source", "where", "gpu", "counter_detail", "shape", "step", "module_loading_basis")
ALLOC_TARGET = 0.01  # allocated / reserved within 1 %


@dataclass(frozen=True)
class Point:
    id: str
    source: str
    where: str
    gpu: str
    versions: dict[str, str]
    counter: str
    counter_detail: str
    module_loading: str
    module_loading_basis: str
    shape: str
    figure: float
    unit: str
    step: str
    knobs: dict[str, Any]
    batch: int
    accumulation: int
    precision: str
    checkpoint: tuple[str, ...]

    @property
    def figure_bytes(self) -> int:
        return int(round(self.figure * UNITS[self.unit]))


def _check(p: dict, key: str, kind: Any, where: str) -> Any:
    if key not in p:
        raise PlannerError(f"{where}: '{key}' is missing")
    v = p[key]
    if isinstance(v, bool) and kind is not bool or not isinstance(v, kind):
        raise PlannerError(f"{where}: '{key}' must be {getattr(kind, '__name__', kind)}, got {quote(v)}")
    return v


def load_points(path: Path = POINTS) -> list[Point]:
    """The points of ``path``, every field validated; a PlannerError names the point and the field."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise PlannerError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise PlannerError(f"{path}: 'schema' must be {SCHEMA!r}")
    raw = data.get("points")
    if not isinstance(raw, list) or not raw:
        raise PlannerError(f"{path}: 'points' must be a non-empty list")
    out: list[Point] = []
    seen: set[str] = set()
    for i, p in enumerate(raw):
        where = f"{path.name} point {i}"
        if not isinstance(p, dict):
            raise PlannerError(f"{where}: must be an object, got {quote(p)}")
        for key in TEXT_FIELDS:
            if not _check(p, key, str, where).strip():
                raise PlannerError(f"{where}: '{key}' must not be empty")
        where = f"{path.name} point {p['id']!r}"
        if p["id"] in seen:
            raise PlannerError(f"{where}: 'id' is repeated")
        seen.add(p["id"])
        if not p["source"].startswith("https://"):
            raise PlannerError(f"{where}: 'source' must be an https:// address, got {quote(p['source'])}")
        versions = _check(p, "versions", dict, where)
        if not versions or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in versions.items()):
            raise PlannerError(f"{where}: 'versions' must map names to non-empty strings (say 'not stated')")
        counter = _check(p, "counter", str, where)
        if counter not in COUNTERS:
            raise PlannerError(f"{where}: 'counter' {quote(counter)} (valid: {', '.join(COUNTERS)})")
        loading = _check(p, "module_loading", str, where)
        if loading not in ("LAZY", "EAGER"):
            raise PlannerError(f"{where}: 'module_loading' {quote(loading)} (valid: LAZY, EAGER)")
        figure = _check(p, "figure", (int, float), where)
        if not figure > 0:
            raise PlannerError(f"{where}: 'figure' must be > 0, got {quote(figure)}")
        unit = _check(p, "unit", str, where)
        if unit not in UNITS:
            raise PlannerError(f"{where}: 'unit' {quote(unit)} (valid: {', '.join(UNITS)})")
        step = ROOT / p["step"]
        if not p["step"].endswith(".py") or not step.is_file():
            raise PlannerError(f"{where}: 'step' {quote(p['step'])} is not a step file of this repository")
        knobs = _check(p, "knobs", dict, where)
        for k, v in knobs.items():
            if not isinstance(v, (int, float, str)) or isinstance(v, bool):
                raise PlannerError(f"{where}: knob {k!r} must be a number or a string, got {quote(v)}")
        batch = _check(p, "batch", int, where)
        accum = _check(p, "accumulation", int, where)
        if batch < 1 or accum < 1:
            raise PlannerError(f"{where}: 'batch' and 'accumulation' must be >= 1")
        precision = _check(p, "precision", str, where)
        if precision not in PRECISIONS:
            raise PlannerError(f"{where}: 'precision' {quote(precision)} (valid: {', '.join(PRECISIONS)})")
        ckpt = _check(p, "checkpoint", list, where)
        if not all(isinstance(c, str) and c for c in ckpt):
            raise PlannerError(f"{where}: 'checkpoint' must be a list of class names")
        out.append(Point(p["id"], p["source"], p["where"], p["gpu"], dict(versions), counter, p["counter_detail"],
                         loading, p["module_loading_basis"], p["shape"], float(figure), unit, p["step"], dict(knobs),
                         batch, accum, precision, tuple(ckpt)))
    return out


def setup_of(p: Point) -> Any:
    from planner.step_setup import StepSetup

    return StepSetup(str(ROOT / p.step), knobs=tuple(sorted(p.knobs.items())), batch_size=p.batch,
                     accumulation=p.accumulation, precision=p.precision, checkpoint=p.checkpoint)


def compare(p: Point, report: Any) -> dict[str, Any]:
    """The matching figure of ``report`` against the point; for a device counter, the band."""
    from planner.analytic.estimate import library_terms
    from planner.band import device_band

    est = getattr(report, COUNTERS[p.counter])
    fig = p.figure_bytes
    row: dict[str, Any] = {"id": p.id, "counter": p.counter, "published_bytes": fig, "estimate_bytes": est,
                           "error": (est - fig) / fig}
    if p.counter == "nvml_used":
        workspaces = sum(t.bytes for t in library_terms(report, None) if t.name != "CUDA context")
        band = device_band(report, workspaces, module_loading=p.module_loading)
        row.update(band_low_bytes=band.low, band_high_bytes=band.high, inside=band.low <= fig <= band.high,
                   above_top=fig > band.high, below_low=fig < band.low,
                   band_terms={t.name: [t.low, t.point, t.high] for t in band.terms})
    else:
        row["within_target"] = abs(row["error"]) <= ALLOC_TARGET
    return row


def evaluate(points: list[Point], jobs: int = 0) -> list[dict[str, Any]]:
    from planner.measure.search import Evaluator

    with Evaluator(None, jobs) as ev:
        setups = [setup_of(p) for p in points]
        reports = ev.reports(setups)
    rows = []
    for p, s in zip(points, setups):
        rep, _, how = reports[s]
        rows.append(compare(p, rep) if rep is not None else {"id": p.id, "counter": p.counter, "error_text": how})
    return rows


def summary(rows: list[dict[str, Any]]) -> list[str]:
    mib = 2**20
    alloc = [r for r in rows if r.get("counter") != "nvml_used" and "error" in r]
    dev = [r for r in rows if r.get("counter") == "nvml_used" and "error" in r]
    failed = [r for r in rows if "error_text" in r]
    lines = []
    if alloc:
        ok = sum(r["within_target"] for r in alloc)
        lines.append(f"allocated/reserved within 1 %: {ok} of {len(alloc)} "
                     f"(worst {max(abs(r['error']) for r in alloc):.2%})")
    else:
        lines.append("allocated/reserved within 1 %: no point with a max_memory_allocated/reserved counter "
                     "(target not evaluated)")
    if dev:
        inside = sum(r["inside"] for r in dev)
        above = [r for r in dev if r["above_top"]]
        errs = sorted(r["error"] for r in dev)
        lines.append(f"device figures inside the band: {inside} of {len(dev)}; point error median "
                     f"{errs[len(errs) // 2]:+.1%} (range {errs[0]:+.1%} .. {errs[-1]:+.1%})")
        lines.append(f"under-estimates beyond the band's top: {len(above)}"
                     + (": " + ", ".join(f"{r['id']} ({(r['published_bytes'] - r['band_high_bytes']) / mib:+.0f} MiB "
                                         f"above the top)" for r in above) if above else ""))
        below = [r for r in dev if r["below_low"]]
        if below:
            lines.append(f"below the band's low end (over-estimates): {len(below)}: "
                         + ", ".join(r["id"] for r in below))
    if failed:
        lines.append(f"not traced: {len(failed)}: " + "; ".join(f"{r['id']}: {r['error_text']}" for r in failed))
    return lines


def table(rows: list[dict[str, Any]]) -> list[str]:
    mib = 2**20
    out = [f"{'point':40s} {'counter':10s} {'published MiB':>13s} {'estimate MiB':>12s} {'error':>7s} "
           f"{'band MiB':>15s} {'in band':>7s}"]
    for r in rows:
        if "error_text" in r:
            out.append(f"{r['id']:40s} not traced: {r['error_text']}")
            continue
        band = (f"{r['band_low_bytes'] / mib:.0f}..{r['band_high_bytes'] / mib:.0f}" if "band_low_bytes" in r else "-")
        inside = ("yes" if r["inside"] else "ABOVE" if r["above_top"] else "below") if "inside" in r else \
            ("ok" if r["within_target"] else "MISS")
        out.append(f"{r['id']:40s} {r['counter'][:10]:10s} {r['published_bytes'] / mib:13.0f} "
                   f"{r['estimate_bytes'] / mib:12.0f} {r['error']:+7.1%} {band:>15s} {inside:>7s}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", help="comma-separated point ids")
    ap.add_argument("--json", action="store_true", help="print the rows and summary as one JSON object")
    ap.add_argument("--jobs", type=int, default=0, help="trace worker processes (0: the Evaluator's default)")
    args = ap.parse_args(argv)
    try:
        points = load_points()
        if args.only:
            want = [x.strip() for x in args.only.split(",") if x.strip()]
            known = {p.id for p in points}
            bad = [w for w in want if w not in known]
            if bad:
                raise PlannerError(f"--only: unknown point {bad[0]!r} (valid: {', '.join(sorted(known))})")
            points = [p for p in points if p.id in want]
    except PlannerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    rows = evaluate(points, args.jobs)
    lines = summary(rows)
    if args.json:
        print(json.dumps({"rows": rows, "summary": lines, "seconds": round(time.perf_counter() - t0, 1)}))
        return 0
    print("\n".join(table(rows)))
    print("\n".join(lines))
    print(f"{len(points)} points, {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
