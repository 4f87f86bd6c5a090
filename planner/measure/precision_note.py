"""Say it when CUDA autocast costs memory instead of saving it.

Under autocast, ops on CUDA's fp32 list (``aten/src/ATen/autocast_mode.h``: group_norm,
layer_norm, softmax, the losses ...) run in fp32 and the next lower-precision op makes an fp16
copy of their output (``cached_cast`` in ``autocast_mode.cpp``): where those fp32 outputs are
saved for backward, both stay alive, and the AMP step can need more than fp32 (SegResNet's
GroupNorms; the built-in stage-1 step at 256x256x64). From two traces of the same step -- the
AMP one and the fp32 one -- :func:`amp_costs_more` names it, with the op the fp32 outputs come
from; :func:`precision_pair` finds the two among a search's candidates.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


def _by_op(record: Any) -> Counter:
    c: Counter = Counter()
    for s in record.tracker.live_at_peak:
        c[s.op] += s.nbytes
    return c


def amp_costs_more(amp: Any, fp32: Any, precision: str = "amp-fp16") -> str | None:
    """One line when the AMP record's peak is above the fp32 record's (records of
    ``planner.measure.recording.StepRecord``), else None."""
    a, f = amp.tracker.peak_bytes, fp32.tracker.peak_bytes
    if a <= f:
        return None
    from planner.measure.cuda_emulation import cuda_policy_table

    fp32_ops = {name.split(".")[0] for name, policy in cuda_policy_table().items() if policy.startswith("fp32")}
    held = _by_op(amp)
    kept = sorted(((n, op) for op, n in held.items() if op in fp32_ops or op.removeprefix("native_") in fp32_ops),
                  reverse=True)
    copies = held.get("_to_copy", 0)
    why = ""
    if kept:
        n, op = kept[0]
        why = (f": {op} runs in fp32 under CUDA autocast and its fp32 outputs ({n / 2**30:.2f} GiB at the peak) "
               f"stay beside the half copies autocast makes of them ({copies / 2**30:.2f} GiB of _to_copy)")
    return (f"under CUDA autocast ({precision}) this step uses MORE memory than fp32 ({a / 2**30:.2f} vs "
            f"{f / 2**30:.2f} GiB peak allocated){why}; autocast buys speed here, not memory")


def precision_pair(candidates: list[Any]) -> tuple[Any, Any] | None:
    """(the AMP candidate, the fp32 candidate) among exactly evaluated candidates that differ
    from the input in precision alone (or are the input), else None."""
    by: dict[str, Any] = {}
    for c in candidates:
        if c.report is None or any(part[0] != "precision" for part in c.parts):
            continue
        by.setdefault(c.setup.precision, c)
    amp = by.get("amp-fp16") or by.get("amp-bf16")
    fp32 = by.get("fp32")
    return (amp, fp32) if amp is not None and fp32 is not None else None
