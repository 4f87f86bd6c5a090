"""The zoo benchmark (issue 19): third-party models as their libraries document them, traced.

    python benchmarks/bench_zoo.py [--full] [--precision amp-fp16|amp-bf16] [--only NAME] [--json]

For every step file under ``examples/zoo/`` (and every ``VARIANTS`` knob set: transformers' eager
attention) at its small size, or its ``FULL`` size with ``--full``: the parameters in the trace,
vramplan's peak in fp32 and under AMP (``--precision``, default amp-fp16), each against torch's
own MemTracker run inside the same trace with the same counting rules
(``benchmarks/zoo_harness.py``), the fp32 trace's seconds, and the coverage (traced / tried).
Exits 1 when a traced entry disagrees with MemTracker; entries that do not trace are listed with
their one-line error. Not in CI (tests/test_zoo.py runs the small sizes there).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from zoo_harness import Outcome, available, entries, trace  # noqa: E402

AMP = ("amp-fp16", "amp-bf16")


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.1f}"


def _agreement(o: Outcome) -> str:
    if o.peak is None or o.memtracker is None:
        return "-"
    d = o.peak - o.memtracker
    return "equal" if d == 0 else f"{d:+,} B"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="the step files' FULL sizes (default: the small CI sizes)")
    ap.add_argument("--precision", default="amp-fp16", help="the AMP column's precision: amp-fp16 or amp-bf16")
    ap.add_argument("--only", default="", help="entries whose file name contains this")
    ap.add_argument("--json", action="store_true", help="one JSON object per entry instead of the table")
    args = ap.parse_args(argv)
    if args.precision not in AMP:
        print(f"--precision: got {args.precision!r}, valid: {', '.join(AMP)}", file=sys.stderr)
        return 2
    chosen = [e for e in entries() if args.only in e.name]
    if not chosen:
        print(f"--only: no zoo entry's name contains {args.only!r} "
              f"(names: {', '.join(e.name for e in entries())})", file=sys.stderr)
        return 2
    rows, tried, traced, disagree = [], 0, 0, 0
    for e in chosen:
        if not available(e.library):
            print(f"skipped {e.name}: {e.library} is not installed (pip install -e '.[zoo]')", file=sys.stderr)
            continue
        for variant in e.variants:
            tried += 1
            fp32 = trace(e, "fp32", full=args.full, knobs=variant)
            amp = trace(e, args.precision, full=args.full, knobs=variant) if fp32.error is None else None
            ok = fp32.error is None and amp is not None and amp.error is None
            traced += ok
            disagree += any(o is not None and o.peak is not None and o.peak != o.memtracker for o in (fp32, amp))
            rows.append({
                "library": e.library,
                "model": e.model + "".join(f" {k}={v}" for k, v in variant),
                "file": e.path,
                "parameters": fp32.params,
                "peak_fp32_bytes": fp32.peak,
                "memtracker_fp32_bytes": fp32.memtracker,
                f"peak_{args.precision}_bytes": amp.peak if amp else None,
                f"memtracker_{args.precision}_bytes": amp.memtracker if amp else None,
                "trace_seconds_fp32": round(fp32.seconds, 2),
                "error": fp32.error or (amp.error if amp else None),
                "_fp32": fp32, "_amp": amp,
            })
            if args.json:
                print(json.dumps({k: v for k, v in rows[-1].items() if not k.startswith("_")}), flush=True)
            else:
                _print_row(rows[-1], args.precision, header=len(rows) == 1)
    size = "full" if args.full else "small"
    print(f"\ncoverage ({size} sizes): {traced}/{tried} traced; MemTracker disagrees on {disagree}", flush=True)
    return 1 if disagree else 0


def _print_row(r: dict, precision: str, header: bool) -> None:
    fmt = "{:<12} {:<48} {:>13} {:>10} {:>10} {:>12} {:>12} {:>8}"
    if header:
        print(fmt.format("library", "model", "parameters", "fp32 MiB", f"{precision[4:]} MiB", "MemTr fp32",
                         f"MemTr {precision[4:]}", "trace s"))
    fp32, amp = r["_fp32"], r["_amp"]
    print(fmt.format(r["library"], r["model"][:48], "-" if r["parameters"] is None else f"{r['parameters']:,}",
                     _mib(fp32.peak), _mib(amp.peak if amp else None), _agreement(fp32),
                     _agreement(amp) if amp else "-", f"{r['trace_seconds_fp32']:.1f}"), flush=True)
    if r["error"]:
        print(f"    {r['error']}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
