"""`vramplan profiles`."""

from __future__ import annotations

from planner.commands.app import command, out, print_json
from planner.commands.options import JsonOpt


@command(name="profiles")
def list_profiles(as_json: JsonOpt = False) -> None:
    """List the device profiles and what each was measured on.

    Example: vramplan profiles
    """
    from rich.table import Table

    from planner import profiles

    rows = []
    for n in profiles.available():
        p = profiles.load(n)
        rows.append({"name": p.name, "device": p.device.get("name", ""), "hardware": p.hardware,
                     "gpu_key": p.gpu_key, "measurements": len(p.measurements),
                     "torch": p.device.get("torch", ""), "residuals": p.residuals})
    if as_json:
        print_json(rows)
        return
    t = Table(title="Device profiles (profiles/*.json)", title_justify="left")
    for col in ("name", "measured on", "real GPU", "points", "torch", "allocated residual (max %)"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], r["device"], "yes" if r["hardware"] else "no", str(r["measurements"]), r["torch"],
                  f"{r['residuals'].get('allocated', {}).get('max_abs_pct', '-')}")
    out.print(t)
    if not any(r["hardware"] for r in rows):
        out.print("[dim]no profile was measured on a real GPU yet: estimates use the uncalibrated defaults[/dim]")
