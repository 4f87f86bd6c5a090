"""A step file's own words for vramplan's knobs (``TERMS``), so that a recommendation reads in the
terms of the user's training script. Torch-free.

A step file may define::

    TERMS = {
        "amp-bf16": "Trainer(bf16=True)",
        "amp-fp16": "Trainer(fp16=True)",
        "checkpoint": "Trainer(gradient_checkpointing=True)",
        "accumulation": "per_device_train_batch_size={batch}, gradient_accumulation_steps={accum}",
    }

Keys: a precision (``fp32``, ``amp-fp16``, ``amp-bf16``, ``fp16-master``, ``bf16-master``,
``fp16``, ``bf16``), ``checkpoint`` (``{classes}``: the checkpointed classes; ``checkpoint-off``
for turning it off), ``accumulation`` (``{batch}``, ``{accum}``, ``{effective}`` = batch x accum). A change with no entry is said
in vramplan's flags; the file's own knobs are its own terms already (``name=value``).
"""

from __future__ import annotations

from typing import Any

from planner.errors import PlannerError, quote
from planner.step_setup import PRECISIONS

KEYS = tuple(PRECISIONS) + ("checkpoint", "checkpoint-off", "accumulation")
FIELDS = {"checkpoint": ("classes",), "accumulation": ("batch", "accum", "effective")}


def terms_of(module: Any, where: str) -> dict[str, str]:
    """The validated ``TERMS`` of a step file's module ({} when it has none)."""
    table = getattr(module, "TERMS", None)
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise PlannerError(f"step: TERMS in {where} is {type(table).__name__}; it must be a dict "
                           f"{{knob: 'your words'}} with keys among {', '.join(KEYS)}")
    for key, text in table.items():
        if key not in KEYS:
            raise PlannerError(f"step: TERMS key {quote(key)} in {where} (valid: {', '.join(KEYS)})")
        if not isinstance(text, str) or not text.strip():
            raise PlannerError(f"step: TERMS[{quote(key)}] in {where} must be a non-empty string, got {quote(text)}")
        try:
            text.format(**{f: 0 for f in FIELDS.get(key, ())})
        except (KeyError, IndexError, ValueError) as exc:
            fields = ", ".join("{" + f + "}" for f in FIELDS.get(key, ())) or "none"
            raise PlannerError(f"step: TERMS[{quote(key)}] in {where}: bad placeholder ({exc}); valid: {fields}") from None
    return dict(table)


def say(parts: tuple[tuple[str, Any], ...], terms: dict[str, str]) -> list[str]:
    """A candidate's changes (``planner.search.Candidate.parts``) in the step's own words where it
    has them, in vramplan's flags where not."""
    out = []
    for kind, value in parts:
        if kind == "precision":
            out.append(terms.get(value, f"--precision {value}"))
        elif kind == "checkpoint":
            if value:
                classes = ",".join(value)
                out.append(terms["checkpoint"].format(classes=classes) if "checkpoint" in terms
                           else f"--checkpoint {classes}")
            else:
                out.append(terms.get("checkpoint-off", "checkpointing off"))
        elif kind == "split":
            b, a = value
            out.append(terms["accumulation"].format(batch=b, accum=a, effective=b * a) if "accumulation" in terms
                       else f"--batch {b} --accum {a}")
        elif kind.startswith("knob "):
            v = ",".join(map(str, value)) if isinstance(value, tuple) else value
            out.append(f"{kind[5:]}={v}")
        elif kind == "sdpa":
            out.append(f"--sdpa {value} (leave the attention kernel to CUDA)")
        elif kind == "allocator":
            out.append(f"PYTORCH_CUDA_ALLOC_CONF={value} (the environment, no code change)")
    return out
