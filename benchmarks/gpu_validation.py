"""The GPU kit: measure vramplan's figures on a real CUDA card, keep the raw data, fit a profile.

    python benchmarks/gpu_validation.py                 # on a CUDA machine (budget: 480 s; never yet run on one)
    python benchmarks/gpu_validation.py --dry-run       # the same code on the fake backend (CI, < 60 s)

Plan: a dozen configurations of the built-in grid (benchmarks/grid.py) and the note examples
(examples/steps/*.py at their default knobs); ``--dry-run`` takes a reduced plan (one built-in
configuration, one step file) through every code path.

Phase 1 (the device): per item, two iterations of its step on the backend through
planner/record.py ``Session.run`` — the very code ``vramplan record`` uses — giving a run file
(schema ``vramplan-run/1``): iteration 2's ``max_memory_allocated`` / ``max_memory_reserved``,
``memory_stats()``'s peak segments, alloc retries and inactive split bytes, the device's used
bytes (``mem_get_info``), and the context readings: NVML before CUDA init, ``mem_get_info`` after
init, and after each item's step (lazily loaded kernels). GPU name, driver, CUDA, torch and cuDNN
versions are in each run's ``device``. A CUDA OOM or any error is recorded for the item, never fatal.

Phase 2 (the CPU): each run against its estimate (planner/compare.py: the analytic estimate of a
built-in configuration, the fake-tensor trace of a step file); the allocated difference is the
workspace (cuBLAS/cuDNN/attention scratch that goes through the allocator). Then
``calibrate --from`` on the run files fits one profile per basis (analytic, trace).

Writes under ``--out`` (default ``profiles/gpu_validation/<device>/``): ``runs/*.json`` (raw data,
one run file per item), ``kit.json`` (the command, the plan, the context readings, per-item
comparisons and errors) and ``<name>-analytic.json`` / ``<name>-trace.json`` (the fitted profiles,
read back to check them). Prints estimate vs measured per figure for every item.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from grid import GRID  # noqa: E402

GPU_GRID = ("s1 tutorial default 96x96x64", "s1 32^3 fp32", "s1 64^3", "s1 128x128x64", "s1 256x256x64 flash",
            "s1 128x128x64 ckpt", "s1 ch 32,64,128 att FTT", "s1 no perceptual", "s1 batch 4", "s1 bf16",
            "s2 latent of 128x128x64 b4", "s2 fp32 b4", "s2 bf16")
"""A dozen grid configurations spanning stage 1/2, sizes, attention, checkpointing and precisions,
each small enough for an 80 GB card in seconds."""
DRY_GRID = ("s1 32^3 fp32",)
DRY_STEPS = ("radar_vae.py",)
BUDGET_S = 480


def plan(dry: bool) -> list[tuple[str, dict]]:
    """(item name, run-file setup block) for every item."""
    from planner.record import setup_json

    by_name = dict(GRID)
    names = DRY_GRID if dry else GPU_GRID
    items = [(name, setup_json(config=by_name[name])) for name in names]
    steps = sorted(p for p in (ROOT / "examples" / "steps").glob("*.py") if not p.name.startswith("_"))
    for p in steps:
        if dry and p.name not in DRY_STEPS:
            continue
        items.append((f"step {p.name}", setup_json(str(p.relative_to(ROOT)))))
    return items


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower()[:64] or "device"


def measure_all(items: list[tuple[str, dict]], session: "Session", runs_dir: Path,  # noqa: F821
                deadline: float) -> tuple[dict, list[dict]]:
    """Phase 1: each item on the session's backend; returns the session's context readings and
    per item its run file path or its error."""
    from planner.errors import PlannerError
    from planner.record import nvml_used_bytes, write_run

    backend = session.backend
    results = []
    for i, (name, setup) in enumerate(items):
        entry: dict = {"name": name, "setup": setup}
        if time.monotonic() > deadline:
            entry["error"] = "skipped: the time budget ran out"
            results.append(entry)
            continue
        t0 = time.perf_counter()
        try:
            run = session.run(setup, ROOT)
            path = write_run(runs_dir / f"{i:02d}-{slug(name)}.json", run)
            entry["run"] = str(path)
            if backend == "cuda":  # the device as NVML sees it too (mem_get_info's figure is in the run)
                entry["nvml_used_bytes"] = nvml_used_bytes()
        except PlannerError as exc:
            entry["error"] = str(exc)
        except Exception as exc:  # noqa: BLE001 - a CUDA OOM or a kernel error is a finding, not a crash
            entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        finally:
            _free(backend)
        entry["measure_s"] = round(time.perf_counter() - t0, 2)
        sys.stderr.write(f"[{i + 1}/{len(items)}] measured {name}: {entry.get('error', 'ok')} ({entry['measure_s']} s)\n")
        results.append(entry)
    ctx = {"used_before_init_bytes": session.before, "used_after_init_bytes": session.after_init}
    if ctx["used_before_init_bytes"] is not None:
        ctx["context_at_init_bytes"] = session.after_init - session.before
    return ctx, results


def _free(backend: str) -> None:
    if backend == "cuda":
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()


def compare_all(results: list[dict], deadline: float) -> None:
    """Phase 2: each measured run against vramplan's estimate (in place: ``comparison``)."""
    from planner.compare import compare_file

    for entry in results:
        if "run" not in entry:
            continue
        if time.monotonic() > deadline:
            entry["compare_error"] = "skipped: the time budget ran out"
            continue
        t0 = time.perf_counter()
        try:
            cmp = compare_file(entry["run"], base=ROOT)
            entry["comparison"] = {"figures": cmp["figures"], "measured": cmp["measured"], "basis": cmp["basis"],
                                   "workspace_by_difference_bytes": cmp["measured"]["peak_allocated_bytes"]
                                   - cmp["figures"][0]["estimated_bytes"]}
        except Exception as exc:  # noqa: BLE001 - reported per item
            entry["compare_error"] = f"{type(exc).__name__}: {exc}"
        entry["estimate_s"] = round(time.perf_counter() - t0, 2)


def fit_profiles(results: list[dict], name: str, out: Path) -> dict[str, str]:
    """``calibrate --from`` per basis over the compared runs; each profile written and read back."""
    from planner import profiles
    from planner.compare import calibrate_from

    fitted = {}
    for basis in ("analytic", "trace"):
        paths = [e["run"] for e in results if e.get("comparison", {}).get("basis") == basis]
        if not paths:
            continue
        prof = calibrate_from(f"{name}-{basis}", paths, base=ROOT)
        path = profiles.save(prof, out)
        back = profiles.load(str(path))
        assert back.to_json() == prof.to_json(), f"{path} does not read back as written"
        fitted[basis] = str(path)
    return fitted


def render(results: list[dict]) -> list[str]:
    from planner.compare import figure_header, figure_lines

    lines = [figure_header()]
    for e in results:
        if "comparison" not in e:
            lines.append(f"{e['name'][:34]:<34} {e.get('error') or e.get('compare_error')}")
            continue
        lines += figure_lines(e["comparison"]["figures"], e["name"])
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="the fake backend and a reduced plan (no GPU; CI)")
    ap.add_argument("--out", type=Path, help="output folder (default profiles/gpu_validation/<device>)")
    ap.add_argument("--budget-s", type=float, default=BUDGET_S, help="stop starting items after this many seconds")
    a = ap.parse_args(argv)
    from planner.errors import PlannerError
    from planner.record import Session

    backend = "fake" if a.dry_run else "cuda"
    t0 = time.monotonic()
    try:
        session = Session(backend)  # first: NVML reads the device before CUDA is initialised
    except PlannerError as exc:
        sys.stderr.write(f"error: {exc} (--dry-run checks the kit without a GPU)\n")
        return 2
    if backend == "cuda":
        import torch

        device = torch.cuda.get_device_name(0)
    else:
        device = "fake"
    out = a.out or ROOT / "profiles" / "gpu_validation" / slug(device)
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    deadline = t0 + a.budget_s
    items = plan(a.dry_run)
    context, results = measure_all(items, session, runs_dir, deadline)
    compare_all(results, deadline)
    fitted = fit_profiles(results, slug(device), out)
    kit = {"command": " ".join(["python", "benchmarks/gpu_validation.py"] + (argv if argv is not None else sys.argv[1:])),
           "backend": backend, "context": context, "items": results, "profiles": fitted,
           "wall_s": round(time.monotonic() - t0, 1)}
    (out / "kit.json").write_text(json.dumps(kit, indent=1) + "\n")
    print("\n".join(render(results)))
    failed = [e["name"] for e in results if "comparison" not in e]
    print(json.dumps({"benchmark": "gpu_validation", "backend": backend, "items": len(results),
                      "failed": failed, "profiles": fitted, "out": str(out), "wall_s": kit["wall_s"]}))
    return 1 if failed and a.dry_run else 0


if __name__ == "__main__":
    sys.exit(main())
