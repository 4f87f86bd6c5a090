"""The zoo's two checks, shared by tests/test_zoo.py and benchmarks/bench_zoo.py.

Each step file under ``examples/zoo/`` builds one third-party model as its library documents it
(MONAI, Hugging Face transformers, diffusers: from config objects, never downloaded weights).
An entry is checked two ways:

* parameters: the count in the trace (``StepRecord.params``) against the same ``networks()``
  built normally on the CPU with real tensors;
* peak: vramplan's fp32 peak against torch's own ``MemTracker``
  (``torch/distributed/_tools/mem_tracker.py``) entered *inside* vramplan's trace around each of
  the two iterations (``stepfile.run(observer=...)``): the same fake tensors, the same CUDA
  emulation, the same op stream. MemTracker is made to count as the tracker does:

  - 512-byte rounding for every storage: MemTracker rounds only storages on a ``cuda`` device
    (``_WeakRefInfo._calculate_mem_consumed``) and the traced tensors are on the CPU, so the same
    formula is applied whatever the device;
  - host-side optimizer step counters excluded: on a CUDA run Adam's ``state["step"]`` tensors and
    the 0-dim scalars added to them live on the host (``torch/optim/adam.py``, capturable=False;
    ``planner/measure/tracker.py`` skips 0-dim outputs inside ``optimizer.step()``); MemTracker
    skips the same (its ``_in_opt`` window is the same ``optimizer.step()`` call);
  - the peak of iteration 2: MemTracker resets its peak to the live total when entered
    (``MemTracker.__enter__``), which happens where vramplan resets its own.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "examples" / "zoo"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing is downloaded: every model is built from a config
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

LIBRARIES = {"monai": "monai", "hf": "transformers", "diffusers": "diffusers"}


@dataclass(frozen=True)
class Entry:
    library: str  # the package that must be importable (monai, transformers, diffusers)
    model: str  # what the step file builds (its MODEL constant)
    path: str  # examples/zoo/<file>.py, relative to the repository root
    full: tuple[tuple[str, Any], ...]  # the benchmark's full-size knobs (the step file's FULL)
    full_batch: int | None  # the benchmark's batch size (FULL_BATCH), None: the file's default
    variants: tuple[tuple[tuple[str, Any], ...], ...] = ((),)  # knob sets traced besides the defaults (VARIANTS)

    @property
    def name(self) -> str:
        return Path(self.path).stem


def entries() -> list[Entry]:
    """Every step file under examples/zoo/ (the ones not starting with '_'), in name order."""
    out = []
    for p in sorted(ZOO.glob("*.py")):
        if p.name.startswith("_"):
            continue
        mod = _read_constants(p)
        prefix = p.stem.split("_", 1)[0]
        variants = ((),) + tuple(tuple(sorted(v.items())) for v in mod.get("VARIANTS", ()))
        out.append(Entry(LIBRARIES[prefix], mod["MODEL"], str(p.relative_to(ROOT)),
                         tuple(sorted(mod.get("FULL", {}).items())), mod.get("FULL_BATCH"), variants))
    return out


def _read_constants(path: Path) -> dict[str, Any]:
    """MODEL, FULL, FULL_BATCH and VARIANTS from a step file's source, without importing it (literals only)."""
    import ast

    found: dict[str, Any] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in ("MODEL", "FULL", "FULL_BATCH", "VARIANTS"):
                found[name] = ast.literal_eval(node.value)
    if "MODEL" not in found:
        raise ValueError(f"{path}: no MODEL = '...' constant")
    return found


def available(library: str) -> bool:
    return importlib.util.find_spec(library) is not None


# --- MemTracker counting as vramplan counts --------------------------------------------------------


@contextlib.contextmanager
def _rounded_everywhere() -> Iterator[None]:
    """MemTracker's 512-byte rounding (``_PYTORCH_MIN_ALLOCATE``) on every device, not only cuda."""
    from torch.distributed._tools import mem_tracker as mt

    orig = mt._WeakRefInfo._calculate_mem_consumed

    def rounded(self: Any) -> int:
        mem = self.size * self.element_size
        return math.ceil(mem / mt._PYTORCH_MIN_ALLOCATE) * mt._PYTORCH_MIN_ALLOCATE

    mt._WeakRefInfo._calculate_mem_consumed = rounded
    try:
        yield
    finally:
        mt._WeakRefInfo._calculate_mem_consumed = orig


def _same_rules_tracker(host_counters: bool = False) -> Any:
    """MemTracker with the tracker's rules; ``host_counters=True`` leaves MemTracker's own rule
    (Adam's step counters counted as device memory) to show that the comparison can tell."""
    from torch.distributed._tools.mem_tracker import MemTracker

    class SameRules(MemTracker):
        def _track(self, reftype: Any, t: Any) -> None:
            if self._in_opt and t.dim() == 0 and not host_counters:
                return  # a host-side step counter (or the scalar added to it)
            super()._track(reftype, t)

        def _track_optimizer_states(self, reftype: Any, optimizer: Any) -> None:
            import torch

            for state in optimizer.state.values():
                for key, val in state.items():
                    if isinstance(val, torch.Tensor) and (key != "step" or host_counters):
                        self._update_and_maybe_create_winfos(val, reftype)

    mt = SameRules()
    mt._mod_tracker = _NoModules()
    return mt


class _NoModules:
    """MemTracker's ModTracker switched off. Its per-module statistics are not compared, and its
    hooks would change what is measured: multi-grad hooks on every module's inputs and outputs
    (``torch/distributed/_tools/mod_tracker.py``) keep tensors referenced, and ``_pre_fw_hook``
    refuses a root module called twice in one iteration (a discriminator on fake and real
    images). What gives the peak is untouched: every op's outputs tracked in
    ``__torch_dispatch__``, the optimizer-step hooks, ``UntypedStorage.resize_``. Without it
    MemTracker files backward-pass storages as activations rather than temporaries, which changes
    no total."""

    is_bw = False
    parents = {"Global"}

    def register_user_hooks(self, *hooks: Any) -> None:
        pass

    def clear_user_hooks(self) -> None:
        pass

    def __enter__(self) -> "_NoModules":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


@dataclass
class Outcome:
    entry: Entry
    precision: str
    full: bool
    knobs: tuple[tuple[str, Any], ...] = ()
    peak: int | None = None  # vramplan's peak_allocated_bytes (iteration 2)
    memtracker: int | None = None  # MemTracker's peak over iteration 2, same rules
    params: int | None = None  # parameters in the trace
    seconds: float = 0.0
    error: str | None = None  # the one-line error when the trace stopped
    record: Any = field(default=None, repr=False)


def trace(entry: Entry, precision: str = "fp32", full: bool = False, memtracker: bool = True,
          knobs: tuple[tuple[str, Any], ...] = (), host_counters: bool = False) -> Outcome:
    """Trace the entry under vramplan (fake backend), MemTracker inside it when asked; ``knobs``
    (a variant) over the small or full size's; ``host_counters``: see :func:`_same_rules_tracker`."""
    from planner.errors import PlannerError
    from planner.measure import stepfile
    from planner.step_setup import StepSetup

    merged = dict(entry.full if full else ())
    merged.update(knobs)
    batch = entry.full_batch if full else None
    setup = StepSetup(path=str(ROOT / entry.path), knobs=tuple(sorted(merged.items())), batch_size=batch,
                      precision=precision)
    out = Outcome(entry, precision, full, tuple(knobs))
    trackers: list[Any] = []

    def observer(nets: dict, opts: dict) -> Any:
        mt = _same_rules_tracker(host_counters)
        mt.track_external(*nets.values(), *opts.values())
        trackers.append(mt)
        return mt

    t0 = time.perf_counter()
    try:
        with _rounded_everywhere() if memtracker else contextlib.nullcontext():
            record = stepfile.run(setup, "fake", keep_timeline=False, observer=observer if memtracker else None)
    except PlannerError as exc:
        out.error = str(exc)
        out.seconds = time.perf_counter() - t0
        return out
    out.seconds = time.perf_counter() - t0
    out.record = record
    out.peak = record.tracker.peak_bytes
    out.params = sum(record.params.values())
    if trackers:
        out.memtracker = sum(snap["Total"] for snap in trackers[0].get_tracker_snapshot("peak").values())
    return out


def real_params(entry: Entry, knobs: tuple[tuple[str, Any], ...] = ()) -> int:
    """Parameters of ``networks()`` (default knobs, ``knobs`` over them) built normally on the
    CPU, real tensors."""
    import torch

    from planner.measure import stepfile

    sf = stepfile.load(str(ROOT / entry.path))
    values = {k.name: k.default for k in sf.knobs.values() if "networks" in k.owners}
    values.update((k, v) for k, v in knobs if k in values)
    torch.manual_seed(0)
    nets = sf.fn("networks")(**values)
    nets = nets if isinstance(nets, dict) else {"model": nets}
    return sum(p.numel() for net in nets.values() for p in net.parameters())
