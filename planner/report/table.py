"""`vramplan table`: comparison tables from sweeps or config files (pandas underneath)."""

from __future__ import annotations

import itertools
import math
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

from planner.records import dataclass
from planner.config import Overrides, resolve_setup
from planner.errors import PlannerError, quote
from planner.gpus import GPU
from planner.result import GIB, MemoryReport
from planner.spec import TrainingSetup

# knob -> (Overrides field, parser of one value). List-valued knobs separate their
# values with '/', the others with ','.
_ONOFF = {"on": True, "off": False, "true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}


def _onoff(knob: str) -> Callable[[str], bool]:
    def parse(v: str) -> bool:
        try:
            return _ONOFF[v.lower()]
        except KeyError:
            raise PlannerError(f"--sweep {knob}: {quote(v)} must be on or off") from None

    return parse


def _int(knob: str) -> Callable[[str], int]:
    def parse(v: str) -> int:
        try:
            n = int(v)
        except ValueError:
            raise PlannerError(f"--sweep {knob}: {quote(v)} is not an integer") from None
        if n < 1:
            raise PlannerError(f"--sweep {knob}: {quote(v)} must be positive")
        return n

    return parse


def _builtin_value(knob: str) -> Callable[[str], dict[str, Any]]:
    """--sweep precision|checkpoint|sdpa=... on the built-in step, in the one vocabulary
    (planner/setup_flags.py BUILTIN_VALUES) -> the Overrides fields they set."""
    from planner.setup_flags import BUILTIN_STEP, BUILTIN_VALUES, refuse

    def parse(v: str) -> dict[str, Any]:
        if v not in BUILTIN_VALUES[knob]:
            raise refuse(f"--sweep {knob}", BUILTIN_STEP, f"cannot take {knob} {quote(v)}", BUILTIN_VALUES[knob])
        if knob == "precision":
            return {"amp": v != "fp32", "amp_dtype": "bfloat16" if v == "amp-bf16" else None if v == "fp32" else "float16"}
        return {"checkpointing" if knob == "checkpoint" else "flash_attention": v == "auto"}

    return parse


# knob -> (Overrides field, or None where the parser gives the fields; parser; separator). The
# one vocabulary (precision, checkpoint, sdpa) and the aliases (amp, checkpointing, flash).
KNOBS: dict[str, tuple[str | None, Callable[[str], Any], str]] = {
    "precision": (None, _builtin_value("precision"), ","),
    "checkpoint": (None, _builtin_value("checkpoint"), ","),
    "sdpa": (None, _builtin_value("sdpa"), ","),
    "batch": ("batch", _int("batch"), ","),
    "voxel": ("voxel", str, ","),
    "amp": ("amp", _onoff("amp"), ","),
    "checkpointing": ("checkpointing", _onoff("checkpointing"), ","),
    "flash": ("flash_attention", _onoff("flash"), ","),
    "perceptual": ("perceptual", _onoff("perceptual"), ","),
    "discriminator": ("no_discriminator", lambda v: not _onoff("discriminator")(v), ","),
    "disc_layers": ("disc_layers", _int("disc_layers"), ","),
    "disc_channels": ("disc_channels", _int("disc_channels"), ","),
    "accum": ("accum", _int("accum"), ","),
    "optimizer": ("optimizer", str.lower, ","),
    "kind": ("kind", str, ","),
    "channels": ("channels", str, "/"),
    "attention": ("attention", str, "/"),
    "gpus": ("gpus", _int("gpus"), ","),
    "strategy": ("strategy", str.lower, ","),
}


MAX_ROWS = 256
"""Rows of one table (the product of the sweeps): more is not a comparison anyone reads,
and each row is one estimate."""


@dataclass(frozen=True)
class Row:
    label: dict[str, str]
    setup: TrainingSetup
    estimate: MemoryReport
    seconds_per_sample: float | None
    measured: MemoryReport | None = None


def parse_sweeps(sweeps: list[str]) -> list[tuple[str, list[tuple[str, Any]]]]:
    """['batch=1,2', 'amp=on,off'] -> [('batch', [('1', 1), ('2', 2)]), ...]."""
    out = []
    for s in sweeps:
        knob, sep, values = s.partition("=")
        knob = knob.strip().replace("-", "_")
        if not sep or not values.strip():
            raise PlannerError(f"--sweep: {quote(s)} must look like knob=v1,v2 (knobs: {', '.join(KNOBS)})")
        if knob not in KNOBS:
            raise PlannerError(f"--sweep: unknown knob {quote(knob)} (valid: {', '.join(KNOBS)})")
        if any(k == knob for k, _ in out):
            raise PlannerError(f"--sweep: knob '{knob}' is swept twice (valid: one --sweep per knob)")
        _, parse, splitter = KNOBS[knob]
        vals = [v.strip() for v in values.split(splitter) if v.strip()]
        if not vals:
            raise PlannerError(f"--sweep {knob}: no values in {quote(s)} (valid: knob=v1,v2)")
        out.append((knob, [(v, parse(v)) for v in vals]))
    rows = math.prod(len(vals) for _, vals in out)
    if rows > MAX_ROWS:
        raise PlannerError(f"--sweep: {rows:,} combinations (valid: at most {MAX_ROWS} rows in one table)")
    return out


def build_rows(
    base_config: str | Path | None,
    base: Overrides,
    sweeps: list[str],
    configs: list[str | Path],
) -> list[tuple[dict[str, str], TrainingSetup]]:
    """The setups of the table, with the label of what varies in each row."""
    if configs:
        return [({"config": Path(c).stem}, resolve_setup(c, base, "--configs")) for c in configs]
    axes = parse_sweeps(sweeps)
    rows = []
    for combo in itertools.product(*[vals for _, vals in axes]) if axes else [()]:
        kw = {f.name: getattr(base, f.name) for f in fields(Overrides)}
        label = {}
        for (knob, vals), (text, value) in zip(axes, combo):
            field = KNOBS[knob][0]
            if field is None:
                kw.update(value)
            else:
                kw[field] = value
            if len(vals) > 1:  # label only what varies
                label[knob] = text
        if kw.get("gpus") == 1 and kw.get("strategy") not in (None, "none"):
            kw["strategy"] = "none"  # a row of one GPU has nothing to share
            if "strategy" in label:
                label["strategy"] = "none"
        try:
            setup = resolve_setup(base_config, Overrides(**kw))
        except PlannerError as exc:
            if not label:
                raise
            raise PlannerError(f"--sweep {', '.join(f'{k}={v}' for k, v in label.items())}: {exc}") from None
        if any(setup == s for _, s in rows):  # gpus=1 under each swept strategy: one row
            continue
        rows.append((label, setup))
    return rows


def evaluate(
    rows: list[tuple[dict[str, str], TrainingSetup]],
    gpu_for_speed: GPU,
    measure: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Row]:
    from planner.analytic.cost import seconds_per_sample
    from planner.analytic.estimate import estimate

    out = []
    for i, (label, setup) in enumerate(rows):
        if progress:
            progress(i, len(rows))
        est = estimate(setup)
        meas = None
        if measure:
            from planner.measure.profile import profile

            meas = profile(setup, measure)
        out.append(Row(label, setup, est, seconds_per_sample(setup, est, gpu_for_speed), meas))
    if progress:
        progress(len(rows), len(rows))
    return out


def frame(rows: list[Row], gpus: list[GPU]):
    import pandas as pd

    base_time = rows[0].seconds_per_sample if rows else None
    speed = ("relative speed (est., no communication)" if any(r.setup.parallel.gpus > 1 for r in rows)
             else "relative speed (est.)")
    records = []
    for r in rows:
        rec: dict[str, Any] = dict(r.label)
        rec["peak allocated (GiB)"] = round(r.estimate.peak_allocated_bytes / GIB, 2)
        rec["device total (GiB)"] = round(r.estimate.device_total_bytes / GIB, 2)
        for g in gpus:
            # against what CUDA reports for the card (planner.gpus), named in the header
            rec[f"fits {g.key} ({g.capacity_bytes / GIB:.2f} GiB)"] = "yes" if r.estimate.device_total_bytes <= g.capacity_bytes else "no"
        if base_time and r.seconds_per_sample:
            rec[speed] = round(base_time / r.seconds_per_sample, 2)
        if r.measured is not None:
            m = r.measured
            rec[f"measured allocated (GiB, {m.source})"] = round(m.peak_allocated_bytes / GIB, 2)
            rec["estimate error"] = f"{100 * (r.estimate.peak_allocated_bytes - m.peak_allocated_bytes) / m.peak_allocated_bytes:+.1f}%"
        records.append(rec)
    return pd.DataFrame.from_records(records)


FORMATS = ("markdown", "csv", "html", "latex", "json")


def render(df, fmt: str) -> str:
    if fmt == "markdown":
        return _markdown(df)
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "html":
        return df.to_html(index=False)
    if fmt == "latex":
        return _latex(df)
    if fmt == "json":
        return df.to_json(orient="records", indent=2) + "\n"
    raise PlannerError(f"--format: {quote(fmt)} (valid: {', '.join(FORMATS)})")


def write_text(path: Path, text: str, flag: str) -> None:
    """Write an output file; an OS error (disk full, a path that changed) is one line."""
    try:
        path.write_text(text)
    except (OSError, ValueError) as exc:
        raise PlannerError(f"{flag}: cannot write {quote(str(path))} ({getattr(exc, 'strerror', None) or exc})") from None


def _cell(v: Any) -> str:
    return str(v).replace("|", "\\|")


def _markdown(df) -> str:
    """A GitHub-flavoured pipe table (no tabulate dependency)."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(_cell(c) for c in cols) + " |",
             "| " + " | ".join("---:" if df[c].dtype.kind in "if" else "---" for c in cols) + " |"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_cell(r[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _latex(df) -> str:
    cols = list(df.columns)
    esc = lambda s: str(s).replace("%", r"\%").replace("_", r"\_").replace("&", r"\&")  # noqa: E731
    lines = [r"\begin{tabular}{" + "l" * len(cols) + "}", r"\hline", " & ".join(esc(c) for c in cols) + r" \\", r"\hline"]
    for _, r in df.iterrows():
        lines.append(" & ".join(esc(r[c]) for c in cols) + r" \\")
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
