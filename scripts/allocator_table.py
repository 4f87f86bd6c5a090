"""The allocator table of docs/allocator-and-oom.md (tests/test_docs.py holds it equal): seed 004's
configurations estimated with torch's default allocator settings and with expandable_segments:True.

Run: .venv/bin/python scripts/allocator_table.py   (analytic estimates, no torch, a few seconds)
"""

from __future__ import annotations

from planner.analytic.estimate import estimate
from planner.config import setup_from_dict, with_environment
from planner.report.seed004 import seed004_configs

G = 2**30


def main() -> None:
    print("| config | resolution | peak allocated (GiB) | reserved, default (GiB) | free in the cache at the "
          "allocated peak, default (GiB) | largest free block then, default (GiB) | reserved, expandable_segments "
          "(GiB) | free in the cache at the allocated peak, expandable (GiB) | device total default → expandable "
          "(GiB) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for meta, cfg in seed004_configs():
        d, e = (estimate(setup_from_dict(with_environment(
            {**cfg, "device": {**cfg["device"], **({"alloc_conf": conf} if conf else {})}})))
            for conf in ("", "expandable_segments:True"))
        cells = [meta["config"], meta["resolution"]] + [f"{v / G:.2f}" for v in (
            d.peak_allocated_bytes, d.peak_reserved_bytes, d.free_at_allocated_peak_bytes, d.largest_free_block_bytes,
            e.peak_reserved_bytes, e.free_at_allocated_peak_bytes)]
        cells.append(f"{d.device_total_bytes / G:.2f} → {e.device_total_bytes / G:.2f}")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
