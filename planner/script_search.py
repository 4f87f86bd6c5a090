"""``vramplan recommend -- python train.py ARGS``: the one search (planner/search.py) over what
``vramplan run`` can apply to an unchanged script, answered in the script's own terms. Torch-free:
every figure is a ``vramplan run`` trace in the isolated worker (``planner/script_setup.py``
``trace_in_worker``; each runs the script for ``--steps`` optimizer steps), cached by setup.

The space (``dims``), read off the input's own run (``ScriptRun.facts``):

* precision: fp32, amp-fp16, amp-bf16 (bf16 where the card has it) besides the script's own;
* checkpointing: each of the script's repeated module classes (``stepfile.repeated_blocks``, most
  parameters first, up to ``BLOCKS``), or off where the input checkpoints;
* the training DataLoader's batch size: halvings of the script's (up to ``HALVINGS``), quality tier
  "moderate" (a script's own loop has no accumulation vramplan can add, so the effective batch
  changes); where the answer takes one, the largest batch between it and the next larger option
  that fits the card is searched (``planner/search.py`` ``max_size``);
* the SDPA backend, where the script called scaled_dot_product_attention;
* the allocator: ``expandable_segments:True`` (same trace, another replay).

Saying the answer (``in_script_terms``): the batch size as the script's own argparse option where
one is found (an int option whose parsed value is the training DataLoader's ``batch_size``; if
several, the ones named ``*batch*``) and confirmed by a trace with the option changed on the command
line (the DataLoader got the new value); else the DataLoader's ``file:line``. Every other change as
the code change (with the script's lines: its autocast regions, GradScaler, the class definition)
and the ``vramplan run`` flag that applies it from outside.

Time per sample: the roofline model (``planner.analytic.cost.roofline_seconds``) over the last
training step's matmul/conv/attention FLOPs and written bytes, over the training DataLoader's batch
size; uncalibrated, for ordering candidates.
"""

from __future__ import annotations

import shlex
from dataclasses import replace
from typing import Any, Callable

from planner.records import dataclass
from planner.errors import PlannerError
from planner.script_setup import PRECISIONS, ScriptRun, ScriptSetup
from planner.search import Candidate, Change, Outcome, SizeSearch, apply, exact_ratios, max_size
from planner.result import MemoryReport

BLOCKS = 3  # repeated module classes offered for checkpointing
HALVINGS = 3  # batch sizes offered: the script's halved, up to this many times
BATCH_LIMIT = 1024  # --max-batch: the largest batch size tried
BATCH_TIER = 2  # "moderate": the effective batch changes (no accumulation can be added from outside)
EXPANDABLE = "expandable_segments:True"
AUTOCAST = {"amp-fp16": "torch.float16", "amp-bf16": "torch.bfloat16"}


@dataclass(frozen=True)
class ScriptPlan:
    """A candidate of the script's search: what ``vramplan run`` traces, and the allocator settings
    its trace is replayed with (no new trace)."""

    setup: ScriptSetup
    alloc_conf: str = ""

    def to_json(self) -> dict:
        s = self.setup
        return {"command": s.command_words(), "gpus": s.gpus, "steps": s.steps, "precision": s.precision,
                "checkpoint": list(s.checkpoint), "sdpa": s.sdpa, "batch": s.batch, "alloc_conf": self.alloc_conf}


def training_loader(facts: dict) -> dict | None:
    """The first DataLoader that shuffles and has a batch_size: the one ``--batch`` sets."""
    return next((d for d in facts.get("loaders", ()) if d["training"] and d["batch_size"]), None)


def batch_option(facts: dict) -> dict | None:
    """The script's int argparse option whose parsed value is the training DataLoader's batch size
    (one; among several, the only one whose name says batch), or None."""
    loader = training_loader(facts)
    if loader is None:
        return None
    same = [o for o in facts.get("options", ()) if o["value"] == loader["batch_size"]]
    if len(same) > 1:
        same = [o for o in same if "batch" in o["dest"].lower()]
    return same[0] if len(same) == 1 else None


def with_option(argv: tuple[str, ...], option: dict, value: int) -> tuple[str, ...] | None:
    """``argv`` with ``option`` set to ``value``: its value replaced where given (``--opt V`` or
    ``--opt=V``), appended where not; None where argparse got a value other than the default that no
    token here gave (an abbreviation, ``-b4``): the change cannot be said safely."""
    head = 2 if argv[0] == "-m" else 1
    args, names, found = list(argv[head:]), option["options"], False
    i = 0
    while i < len(args) and args[i] != "--":
        if args[i] in names and i + 1 < len(args):
            args[i + 1], found = str(value), True
            i += 2
            continue
        for n in names:
            if n.startswith("--") and args[i].startswith(n + "="):
                args[i], found = f"{n}={value}", True
        i += 1
    if not found:
        if option["value"] != option["default"]:
            return None
        args += [max(names, key=len), str(value)]
    return (*argv[:head], *args)


def seconds_per_sample(run: ScriptRun, gpu: Any) -> float | None:
    """Roofline seconds of the last training step over its samples (the training DataLoader's batch)."""
    from planner.analytic.cost import roofline_seconds

    facts = run.facts
    steps = sorted((int(k.split()[1]), k) for k in facts.get("work", {}) if k.startswith("step "))
    loader = training_loader(facts)
    if not steps or loader is None or gpu is None:
        return None
    flops, written = facts["work"][steps[-1][1]]
    if not flops:
        return None
    return roofline_seconds(flops, written, gpu, half=facts["precision"] != "fp32") / loader["batch_size"]


class ScriptEngine:
    """``vramplan run`` traces as planner/search.py's engine; every figure a trace of the script."""

    exhaustive = 0  # seconds per trace: walk with the SAFETY filter

    def __init__(self, gpu: Any, trace: Callable[[ScriptSetup], ScriptRun] | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        from planner.script_setup import trace_in_worker

        self.gpu, self.trace, self.progress = gpu, trace or trace_in_worker, progress
        self.runs: dict[ScriptSetup, ScriptRun | str] = {}
        self.traces = 0

    @property
    def evaluations(self) -> int:
        return self.traces

    def run(self, setup: ScriptSetup) -> ScriptRun:
        """The script's run with ``setup`` (cached); its one-line error as a PlannerError."""
        got = self.runs.get(setup)
        if got is None:
            if self.progress:
                self.progress(setup.label())
            self.traces += 1
            try:
                got = self.trace(setup)
            except PlannerError as exc:
                self.runs[setup] = str(exc)
                raise
            self.runs[setup] = got
        if isinstance(got, str):
            raise PlannerError(got)
        return got

    def evaluate(self, plans: list[ScriptPlan]) -> list[tuple[MemoryReport | None, float | None, str]]:
        from planner.measure.profile import report_from

        out: list[tuple[MemoryReport | None, float | None, str]] = []
        for p in plans:
            try:
                run = self.run(p.setup)
            except PlannerError as exc:
                out.append((None, None, str(exc)))
                continue
            rep = report_from(run.record, "fake", p.alloc_conf, 0.0, source="run", rollup=2,
                              capacity_bytes=self.gpu.capacity_bytes,
                              extra_notes=(f"by trace: {p.setup.label()} run under FakeTensorMode on the CPU "
                                           f"(CUDA emulated); peak over the whole run",))
            out.append((rep, seconds_per_sample(run, self.gpu), "traced"))
        return out

    def ratios(self, base: Candidate, singles: list[Candidate],
               verify: Callable[[list[Candidate]], None]) -> dict[Change, tuple[float, float, int] | None]:
        return exact_ratios(base, singles, verify)


def _setup(p: ScriptPlan, **kw: Any) -> ScriptPlan:
    return replace(p, setup=replace(p.setup, **kw))


def batch_change(base: ScriptPlan, facts: dict, engine: ScriptEngine) -> tuple[Callable[[ScriptPlan, int], ScriptPlan],
                                                                                dict | None, str]:
    """How a batch size is applied: through the script's own option where it is found and a trace with
    it changed confirms that the DataLoader got the value (returns that option), else with ``--batch``
    from outside. Returns (apply, option or None, a note)."""
    loader = training_loader(facts)
    assert loader is not None
    outside = (lambda p, n: _setup(p, batch=n))
    if base.setup.batch is not None:
        return outside, None, f"batch size: the input sets it from outside (--batch {base.setup.batch}); changed so"
    option = batch_option(facts)
    if option is None:
        return outside, None, (f"batch size: no argparse option of the script holds the DataLoader's batch_size "
                               f"{loader['batch_size']}; said as the DataLoader at {loader['site']}")
    probe = loader["batch_size"] // 2 if loader["batch_size"] > 1 else 2
    argv = with_option(base.setup.argv, option, probe)
    name = max(option["options"], key=len)
    if argv is not None:
        try:
            got = training_loader(engine.run(replace(base.setup, argv=argv)).facts)
        except PlannerError:
            got = None
        if got is not None and got["batch_size"] == probe:
            def through_option(p: ScriptPlan, n: int) -> ScriptPlan:
                changed = with_option(p.setup.argv, option, n)
                assert changed is not None
                return _setup(p, argv=changed)

            return through_option, option, (f"batch size: the script's {name} reaches the DataLoader at "
                                            f"{loader['site']} (checked: {name} {probe} gave it batch_size {probe})")
    return outside, None, (f"batch size: the script's {name} ({option['value']}) equals the DataLoader's batch_size "
                           f"but changing it did not set the DataLoader at {loader['site']}; said as that line")


@dataclass
class BatchKnob:
    """How the search sets the training DataLoader's batch size (``batch_change``)."""

    apply: Callable[[ScriptPlan, int], ScriptPlan]
    option: dict | None
    """The script's argparse option it goes through (None: ``--batch`` from outside)."""
    script_batch: int

    def change(self, v: int) -> Change:
        return Change("batch", v, f"batch {v}", BATCH_TIER, lambda x, v=v: self.apply(x, v))


def dims(base: ScriptPlan, run: ScriptRun, gpu: Any, freeze: set[str], engine: ScriptEngine
         ) -> tuple[list[list[Change]], list[str], BatchKnob | None]:
    """The script's search space around ``base`` (see the module docstring): the dimensions, notes,
    and how the batch size is set (None: not searched)."""
    facts, s = run.facts, base.setup
    out: list[list[Change]] = []
    notes: list[str] = []
    knob = None
    if "precision" not in freeze:
        own = s.precision or facts["precision"]
        out.append([Change("precision", p, f"precision {p}", 0, lambda x, p=p: _setup(x, precision=p))
                    for p in PRECISIONS if p != own and (gpu.bf16 or "bf16" not in p)])
    if "checkpointing" not in freeze:
        if s.checkpoint:
            out.append([Change("checkpoint", (), "checkpoint off", 0, lambda x: _setup(x, checkpoint=()))])
        else:
            out.append([Change("checkpoint", (b["class"],), f"checkpoint {b['class']}", 0,
                               lambda x, c=b["class"]: _setup(x, checkpoint=(c,)))
                        for b in facts["blocks"][:BLOCKS]])
            if not facts["blocks"]:
                notes.append("checkpointing: the script's networks have no repeated module class to checkpoint")
    loader = training_loader(facts)
    if "batch" not in freeze:
        if loader is None:
            notes.append("batch size: the script made no DataLoader that shuffles with a batch_size; not searched")
        else:
            b = loader["batch_size"]
            values = list(dict.fromkeys(max(1, b >> k) for k in range(1, HALVINGS + 1)))
            values = [v for v in values if v < b]
            if values:
                how, option, note = batch_change(base, facts, engine)
                notes.append(note)
                knob = BatchKnob(how, option, b)
                out.append([knob.change(v) for v in values])
    if "sdpa" not in freeze and facts["sdpa_calls"]:
        out.append([Change("sdpa", k, f"sdpa {k}", 0, lambda x, k=k: _setup(x, sdpa=k))
                    for k in ("flash", "efficient", "math") if k != s.sdpa])
    if "allocator" not in freeze:
        from planner.allocator import with_expandable_segments

        text = with_expandable_segments(base.alloc_conf)
        if text is not None:
            out.append([Change("allocator", text, f"allocator {EXPANDABLE}", 0,
                               lambda x, t=text: replace(x, alloc_conf=t))])
    return [d for d in out if d], notes, knob


def refine_batch(found: Outcome, base: ScriptPlan, space: list[list[Change]], knob: BatchKnob | None,
                 engine: ScriptEngine, margin: float, fit_at: str) -> Candidate | None:
    """Where the answer halves the batch: the largest batch size between its value and the next larger
    one (the next option, or the script's own) that still fits, with the answer's other changes."""
    best = found.best
    ch = next((c for c in best.settings if c.dim == "batch"), None) if best is not None else None
    if ch is None or knob is None:
        return None
    options = sorted(c.value for d in space for c in d if c.dim == "batch")
    top = min([v for v in options if v > ch.value] + [knob.script_batch]) - 1
    if top <= ch.value:
        return None
    others = [c for c in best.settings if c.dim != "batch"]
    res = max_size(lambda k: apply(base, [*others, knob.change(k)]), engine, margin, top, lo=ch.value, fit_at=fit_at)
    if not res.value or res.value <= ch.value or res.report is None:
        return None
    from planner.band import fit_bytes

    settings = tuple(knob.change(res.value) if c is ch else c for c in best.settings)
    plan = apply(base, settings)
    rep, secs, how = engine.evaluate([plan])[0]
    assert rep is not None
    return Candidate(settings, best.tier, plan, rep, secs, fit_bytes(rep, engine.gpu, fit_at), how)


# --- saying the answer --------------------------------------------------------------------------------


def in_script_terms(settings: tuple[Change, ...], facts: dict, option: dict | None) -> list[dict]:
    """Each change of a candidate as {"change", "script": the edit in the script's own terms,
    "run_flag": the ``vramplan run`` flag that applies it from outside}."""
    out = []
    own = facts["precision"]
    autocast = ", ".join(facts["autocast_sites"][:3])
    scaler = ", ".join(facts["scaler_sites"][:2])
    forward = ", ".join(list(facts["networks"].values())[:2])
    for c in settings:
        if c.dim == "precision":
            p = c.value
            if p == "fp32":
                text = (f"remove the torch.autocast at {autocast}" if autocast else "no autocast")
                text += f" and the GradScaler at {scaler}" if scaler else ""
            elif autocast:
                text = f"dtype={AUTOCAST[p]} in the torch.autocast at {autocast}"
                if p == "amp-fp16" and not scaler:
                    text += " and a torch.amp.GradScaler('cuda') for the loss (fp16 gradients underflow without it)"
                if p == "amp-bf16" and scaler:
                    text += f" (the GradScaler at {scaler} may go: bf16 needs none)"
            else:
                text = f'with torch.autocast("cuda", dtype={AUTOCAST[p]}): around the forward at {forward}'
                if p == "amp-fp16":
                    text += " and a torch.amp.GradScaler('cuda') for the loss"
            out.append({"change": c.label, "script": text, "run_flag": f"--precision {p}"})
        elif c.dim == "checkpoint":
            if not c.value:
                out.append({"change": c.label, "script": "call the checkpointed modules directly",
                            "run_flag": "(leave out --checkpoint)"})
                continue
            cls = c.value[0]
            where = next((b["defined_at"] for b in facts["blocks"] if b["class"] == cls), "")
            out.append({"change": c.label, "run_flag": f"--checkpoint {cls}",
                        "script": f"wrap each {cls}{f' (class at {where})' if where else ''} in "
                                  f"torch.utils.checkpoint: call it as checkpoint(block, x, use_reentrant=False) in "
                                  f"its parent's forward (or torch.distributed.algorithms._checkpoint."
                                  f"checkpoint_wrapper.apply_activation_checkpointing on the model)"})
        elif c.dim == "batch":
            loader = training_loader(facts)
            if option is not None:
                text = f"{max(option['options'], key=len)} {c.value} on the script's command line"
            else:
                text = f"batch_size={c.value} in the DataLoader at {loader['site'] if loader else '?'}"
            own = loader["batch_size"] if loader else c.value
            why = (" (a smaller effective batch: retune the learning rate, or accumulate gradients in the loop)"
                   if c.value < own else " (a larger effective batch: retune the learning rate)" if c.value > own else "")
            out.append({"change": c.label, "script": text + why, "run_flag": f"--batch {c.value}"})
        elif c.dim == "sdpa":
            name = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "math": "MATH"}[c.value]
            out.append({"change": c.label, "run_flag": f"--sdpa {c.value}",
                        "script": f"with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.{name}): "
                                  f"around the training step"})
        elif c.dim == "allocator":
            out.append({"change": c.label, "run_flag": f"--alloc-conf {c.value}",
                        "script": f"PYTORCH_CUDA_ALLOC_CONF={c.value} in the environment (no code change)"})
    return out


def run_command(plan: ScriptPlan, gpu_arg: str) -> str:
    """The ``vramplan run`` line that traces ``plan``: its knobs applied from outside as flags, the
    script's command line (with its own option changed where the batch goes through it)."""
    s = plan.setup
    flags = [f"--gpu {shlex.quote(gpu_arg)}"]
    flags += [f"--steps {s.steps}"] if s.steps != 2 else []
    flags += [f"--precision {s.precision}"] if s.precision else []
    flags += [f"--checkpoint {','.join(s.checkpoint)}"] if s.checkpoint else []
    flags += [f"--sdpa {s.sdpa}"] if s.sdpa != "auto" else []
    flags += [f"--batch {s.batch}"] if s.batch is not None else []
    flags += [f"--alloc-conf {shlex.quote(plan.alloc_conf)}"] if plan.alloc_conf else []
    flags += [f"--gpus {s.gpus}"] if s.gpus > 1 and s.launcher != "torchrun" else []
    return "vramplan run " + " ".join(flags) + " -- " + " ".join(shlex.quote(a) for a in s.command_words())


def recommend(base: ScriptPlan, gpu: Any, margin: float, prefer: str, freeze: set[str], fit_at: str,
              engine: ScriptEngine | None = None) -> tuple[Outcome, ScriptRun, list[str], BatchKnob | None,
                                                         Candidate | None]:
    """planner/search.py ``recommend`` over the script's space (:func:`dims`), every figure a trace of
    the script; with the batch refined to the largest that fits (:func:`refine_batch`). Returns the
    outcome, the input's run, notes, the batch knob, the refined answer (None: the outcome's best)."""
    from planner.search import recommend as search_recommend

    engine = engine or ScriptEngine(gpu)
    run = engine.run(base.setup)  # the input: its own exit code and line where it cannot run
    space, notes, knob = dims(base, run, gpu, freeze, engine)
    found = search_recommend(base, space, engine, margin, prefer, fit_at)
    refined = refine_batch(found, base, space, knob, engine, margin, fit_at)
    notes += found.notes  # the search's own (the CUDA context alone over the budget)
    for c in found.ordered:  # every candidate names its setup (the JSON's "setup")
        if c.setup is None:
            c.setup = apply(base, c.settings)
    if run.facts.get("work") and seconds_per_sample(run, gpu) is None:
        notes.append("time per sample: not modelled (no training DataLoader batch size or no FLOPs traced)")
    return found, run, notes, knob, refined


def max_batch(base: ScriptPlan, gpu: Any, margin: float, fit_at: str, engine: ScriptEngine | None = None,
              limit: int = BATCH_LIMIT) -> tuple[SizeSearch, ScriptRun, BatchKnob, list[str]]:
    """``recommend --max-batch -- python train.py``: the largest batch size of the training DataLoader
    (set as :func:`batch_change` sets it) whose run fits ``gpu`` less ``margin``, searched from the
    script's own (planner/search.py ``max_size``: doubling, bisection, a neighbourhood re-check; below
    it where it does not fit)."""
    engine = engine or ScriptEngine(gpu)
    run = engine.run(base.setup)
    loader = training_loader(run.facts)
    if loader is None:
        raise PlannerError("--max-batch: the script made no DataLoader that shuffles with a batch_size, which is what "
                           "vramplan sets (valid: a script with a training DataLoader; else change its own batch "
                           "argument and run vramplan run again)")
    how, option, note = batch_change(base, run.facts, engine)
    knob = BatchKnob(how, option, loader["batch_size"])
    res = max_size(lambda k: knob.apply(base, k), engine, margin, max(limit, loader["batch_size"]),
                   lo=loader["batch_size"], fit_at=fit_at)
    return res, run, knob, [note]
