"""`vramplan gpus`."""

from __future__ import annotations

from planner.commands.app import command, out, print_json
from planner.commands.options import JsonOpt


@command()
def gpus(as_json: JsonOpt = False) -> None:
    """List the GPU catalog that --gpu names come from (memory, bf16, peak TFLOP/s, bandwidth, source).

    Example: vramplan gpus --json
    """
    from planner.gpus import catalog_rows

    rows = catalog_rows()
    if as_json:
        print_json(rows)
        return
    from planner.report.terminal import render_gpus

    render_gpus(rows, out)
