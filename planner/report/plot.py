"""`vramplan plot`: matplotlib figures (PNG/SVG), titled and labelled with units."""

from __future__ import annotations

from typing import Sequence

from planner.gpus import GPU
from planner.result import ALL_CATEGORIES, CATEGORIES, COMMUNICATION, GIB, PROFILE_TERM

MAX_SERIES = 24
"""Bars (breakdown) or lines (scaling) in one figure: more cannot be told apart, and a
scaling line is seven estimates."""

COLORS = {
    "parameters": "#4c72b0",
    "gradients": "#55a868",
    "optimizer_state": "#c44e52",
    "activations": "#8172b2",
    "temporaries": "#ccb974",
    "communication": "#64b5cd",
    "profile_term": "#8c8c8c",
    "allocator overhead": "#bbbbbb",
    "context": "#666666",
}


def _mpl():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path, flag: str) -> None:
    """fig.savefig(path); an OS error (disk full, a path that changed) is one line."""
    from planner.errors import PlannerError, quote

    try:
        fig.savefig(path, dpi=120)
    except (OSError, ValueError) as exc:
        raise PlannerError(f"{flag}: cannot write {quote(str(path))} ({getattr(exc, 'strerror', None) or exc})") from None


def breakdown_figure(labels: Sequence[str], reports: Sequence, gpus: Sequence[GPU], title: str = ""):
    """Stacked bars of memory by category per configuration; each GPU's capacity as a line."""
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(labels) + 3), 5))
    bottoms = [0.0] * len(labels)
    xs = list(range(len(labels)))
    parts = list(_categories(r.breakdown.by_category for r in reports)) + ["allocator overhead", "context"]
    for part in parts:
        vals = []
        for r in reports:
            if part == "allocator overhead":
                v = r.peak_reserved_bytes - r.peak_allocated_bytes
            elif part == "context":
                v = r.device_total_bytes - r.peak_reserved_bytes
            else:
                v = r.breakdown.by_category.get(part, 0)
            vals.append(v / GIB)
        ax.bar(xs, vals, bottom=bottoms, color=COLORS[part], label=part.replace("_", " "))
        bottoms = [b + v for b, v in zip(bottoms, vals)]
    for g in gpus:
        ax.axhline(g.capacity_bytes / GIB, linestyle="--", color="black", linewidth=1)
        ax.text(len(labels) - 0.5, g.capacity_bytes / GIB, f" {g.label} ({g.capacity_bytes / GIB:.2f} GiB CUDA-reported)", va="bottom", ha="right")
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=20, ha="right")
    ax.set_ylabel("memory (GiB = 2^30 bytes)")
    ax.set_title(title or "Memory of one training step by category (device total)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    return fig


def _categories(dicts) -> tuple[str, ...]:
    """The five categories, communication where any figure has some (--gpus N), and a device
    profile's term where any figure has one (--profile)."""
    dicts = list(dicts)
    cats = ALL_CATEGORIES if any(d.get(COMMUNICATION, 0) for d in dicts) else CATEGORIES
    return cats + ((PROFILE_TERM,) if any(d.get(PROFILE_TERM, 0) for d in dicts) else ())


def crossings(xs: Sequence[float], ys: Sequence[float], level: float) -> list[float]:
    """x values where the piecewise-linear (in log-log) curve crosses `level`."""
    import math

    out = []
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if (y0 - level) * (y1 - level) < 0 or y1 == level:
            lx0, lx1, ly0, ly1 = math.log(x0), math.log(x1), math.log(y0), math.log(y1)
            t = (math.log(level) - ly0) / (ly1 - ly0)
            out.append(math.exp(lx0 + t * (lx1 - lx0)))
    return out


def scaling_figure(series: dict[str, tuple[list[float], list[float]]], gpus: Sequence[GPU], xlabel: str, title: str = ""):
    """Peak (device total, GiB) against voxel count or batch, log axes; GPU lines and crossings."""
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(10, 5))
    for name, (xs, ys) in series.items():
        gib = [y / GIB for y in ys]
        ax.plot(xs, gib, marker="o", label=name)
        for g in gpus:
            for cx in crossings(xs, gib, g.capacity_bytes / GIB):
                ax.plot([cx], [g.capacity_bytes / GIB], marker="x", color="red", markersize=9)
    for g in gpus:
        ax.axhline(g.capacity_bytes / GIB, linestyle="--", color="black", linewidth=1)
        ax.text(ax.get_xlim()[0] if False else min(min(s[0]) for s in series.values()), g.capacity_bytes / GIB,
                f"{g.label} ({g.capacity_bytes / GIB:.2f} GiB CUDA-reported)", va="bottom")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("device total (GiB = 2^30 bytes)")
    ax.set_title(title or "Peak memory against problem size")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    return fig


def timeline_figure(points: list[tuple[int, dict[str, int]]], phases: list[tuple[int, str]], peak_index: int, title: str = "",
                    gpus: Sequence[GPU] = ()):
    """Live memory through one step, category bands stacked, the peak marked, phases shaded; each GPU's
    capacity as a line (live tensors only: the reserve and the CUDA context come on top of it)."""
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(11, 5))
    xs = [p[0] for p in points]
    cats = _categories(p[1] for p in points)
    stacks = [[p[1].get(c, 0) / GIB for p in points] for c in cats]
    ax.stackplot(xs, *stacks, labels=[c.replace("_", " ") for c in cats], colors=[COLORS[c] for c in cats],
                 step="post")
    total = [sum(p[1].values()) / GIB for p in points]
    peak_pos = max(range(len(points)), key=lambda i: total[i]) if points else 0
    if points:
        ax.annotate(f"peak {total[peak_pos]:.2f} GiB", (xs[peak_pos], total[peak_pos]),
                    xytext=(10, 10), textcoords="offset points", arrowprops={"arrowstyle": "->"})
        ax.plot([xs[peak_pos]], [total[peak_pos]], marker="v", color="red")
    ymax = max([*total, *(g.capacity_bytes / GIB for g in gpus)] or [1])
    for g in gpus:
        ax.axhline(g.capacity_bytes / GIB, linestyle="--", color="black", linewidth=1)
        ax.text(xs[0] if xs else 0, g.capacity_bytes / GIB, f"{g.label} ({g.capacity_bytes / GIB:.2f} GiB CUDA-reported)",
                va="top")  # below its line: the phase names sit above the highest line
    span = (xs[-1] - xs[0]) if len(xs) > 1 else 1
    for i, (start, name) in enumerate(phases):
        end = phases[i + 1][0] if i + 1 < len(phases) else (xs[-1] if xs else start)
        if i % 2 == 0:
            ax.axvspan(start, end, color="#eeeeee", zorder=0)
        if end - start >= 0.04 * span:  # label the spans wide enough to read
            ax.text((start + end) / 2, ymax * 1.02, name, ha="center", va="bottom", fontsize=7)
    ax.set_ylim(0, ymax * 1.15)
    ax.set_xlabel("allocation events in iteration 2 (time order)")
    ax.set_ylabel("live memory (GiB = 2^30 bytes)")
    ax.set_title(title or "Live memory through one training step")
    ax.legend(loc="lower center", fontsize=8, ncol=len(cats))
    fig.tight_layout()
    return fig


def timeline_points(events, info_of, categorize, start: int) -> tuple[list, list, int]:
    """Replay (uid, +/-bytes) events from `start`: per-category live bytes after each event,
    the phase changes (by the allocating event's step/phase), and the peak's index."""
    live: dict[int, tuple[str, int]] = {}
    totals = {c: 0 for c in ALL_CATEGORIES}
    # storages alive when iteration 2 starts
    for uid, d in events[:start]:
        if d > 0:
            live[uid] = (categorize(uid), d)
        else:
            live.pop(uid, None)
    for cat, d in live.values():
        totals[cat] += d
    points, phases = [], []
    last = None
    peak_i, peak_v = 0, -1
    for i, (uid, d) in enumerate(events[start:]):
        if d > 0:
            cat = categorize(uid)
            live[uid] = (cat, d)
            totals[cat] += d
            inf = info_of(uid)
            label = f"{inf[0]} {inf[1]}".strip()
            if label != last:
                phases.append((i, label))
                last = label
        else:
            ent = live.pop(uid, None)
            if ent:
                totals[ent[0]] -= ent[1]
        points.append((i, dict(totals)))
        tot = sum(totals.values())
        if tot > peak_v:
            peak_i, peak_v = i, tot
    return points, phases, peak_i
