"""``vramplan record``: a real run's memory counters, with the setup vramplan would estimate, in one
JSON file (a *run file*). Importing this module imports nothing heavy: torch is imported when a
recorder starts; Lightning and Hugging Face are never imported (their callbacks are duck-typed).

Use it in a plain loop::

    from planner.record import record
    with record("runs/mine.json", step="steps/mine.py", knobs={"width": 64}, batch_size=8,
                precision="amp-bf16", steps=3) as rec:
        for batch in loader:
            train_step(batch)
            rec.step()          # after each optimizer step; the file is written after `steps`

or as a callback: ``LightningRecorder(path, ...)`` (``Trainer(callbacks=[...])``: it starts at
``on_train_start`` and records at ``on_train_batch_end``) and ``HFRecorder(path, ...)``
(``Trainer(callbacks=[...])``: ``on_train_begin``, then ``on_step_end``). Neither subclasses ``lightning.Callback`` / ``transformers.TrainerCallback``
(neither is installed here, so neither was run): both are duck-typed — every other ``on_*`` hook
is a no-op. Hugging Face's ``CallbackHandler`` only calls ``on_*`` hooks; Lightning also calls
``setup``/``teardown``/``state_key``/``state_dict``, so there mix in its base class:
``class Mine(LightningRecorder, lightning.pytorch.Callback): pass``.

The run file (schema ``vramplan-run/1``; every field validated on load by :func:`load_run`)::

    {
      "schema": "vramplan-run/1",
      "setup": {"kind": "step", "step": {StepSetup.to_json()}}     # a step file + its knobs
             | {"kind": "builtin", "config": {YAML-layout mapping}} # a built-in configuration
             | {"kind": "none"},                                    # counters only
      "device": {"name", "backend" ("cuda" | "fake"), "total_memory_bytes", "driver", "cuda",
                 "torch", "cudnn", "compute_capability"},           # strings but total_memory_bytes
      "context": {"used_before_init_bytes", "used_after_init_bytes",
                  "used_after_first_step_bytes", "reserved_after_first_step_bytes"},  # int or null
      "steps": [{"step", "max_allocated_bytes", "max_reserved_bytes", "device_used_bytes",
                 "segments", "alloc_retries", "inactive_split_bytes", "ooms"}, ...]   # ints
    }

Per step: ``torch.cuda.max_memory_allocated()`` / ``max_memory_reserved()`` since the previous
step (``reset_peak_memory_stats()`` after each reading), ``memory_stats()``'s
``segment.all.peak``, ``num_alloc_retries``, ``inactive_split_bytes.all.peak`` and ``num_ooms``,
and the device's used bytes as ``mem_get_info()`` sees it (total - free, every process).
Context: the device's used bytes before CUDA is initialised (NVML, when ``pynvml`` is there and
CUDA is not yet initialised; else null), after ``torch.cuda.init()`` + ``mem_get_info()``, and
after the first step (lazily loaded kernels), with the reserved bytes at that moment.

What a run measured (:func:`measured`): the peaks over steps 2.. (step 1 is the warm-up, as
vramplan's estimate is of iteration 2, optimizer state present), or step 1 when it is the only
one; the context = used after the first step - reserved then - used before init (that reading
0 when NVML was not there; null when the first step was not seen).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from planner.errors import PlannerError, quote

SCHEMA = "vramplan-run/1"
MAX_RUN_BYTES = 16 << 20
MAX_STEPS = 10_000
STEP_KEYS = ("max_allocated_bytes", "max_reserved_bytes", "device_used_bytes", "segments", "alloc_retries",
             "inactive_split_bytes", "ooms")
CONTEXT_KEYS = ("used_before_init_bytes", "used_after_init_bytes", "used_after_first_step_bytes",
                "reserved_after_first_step_bytes")
DEVICE_STR_KEYS = ("name", "backend", "driver", "cuda", "torch", "cudnn", "compute_capability")
BACKENDS = ("cuda", "fake")
SETUP_KINDS = ("step", "builtin", "none")
MAX_BYTES = 2**50


# --- reading the counters (torch imported here, never at module import) -------------------------

def nvml_used_bytes() -> int | None:
    """Device 0's used bytes as NVML sees it (every process), without initialising CUDA in this
    process; None without pynvml or a driver. NVML enumerates devices in PCI order, CUDA in
    ``CUDA_DEVICE_ORDER`` (fastest first by default): with one visible GPU they agree."""
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used)
    except Exception:  # noqa: BLE001 - optional: no pynvml, no driver, no device
        return None


def device_info() -> dict[str, Any]:
    """The CUDA device as the run file records it (planner/measure/cuda_backend.device_description)."""
    from planner.measure.cuda_backend import device_description

    d = device_description()
    return {"name": d["name"], "backend": "cuda", "total_memory_bytes": int(d["total_memory_bytes"]),
            "driver": d["driver"], "cuda": d["cuda_runtime"], "torch": d["torch"], "cudnn": d["cudnn"],
            "compute_capability": d["compute_capability"]}


def device_used_bytes() -> int:
    """total - free from ``cudaMemGetInfo`` (``torch.cuda.mem_get_info``): every process's memory."""
    import torch

    free, total = torch.cuda.mem_get_info()
    return int(total - free)


def read_step(step: int) -> dict[str, int]:
    """One step's counters (since the last ``reset_peak_memory_stats``), then the peaks reset."""
    import torch

    torch.cuda.synchronize()
    stats = torch.cuda.memory_stats()
    row = counters_row(step, torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved(),
                       device_used_bytes(), stats)
    torch.cuda.reset_peak_memory_stats()
    return row


def counters_row(step: int, allocated: int, reserved: int, used: int, stats: dict[str, Any]) -> dict[str, int]:
    """A step entry from torch's counters; ``stats`` holds ``memory_stats()`` keys (absent: 0)."""
    return {"step": step, "max_allocated_bytes": int(allocated), "max_reserved_bytes": int(reserved),
            "device_used_bytes": int(used), "segments": int(stats.get("segment.all.peak", 0)),
            "alloc_retries": int(stats.get("num_alloc_retries", 0)),
            "inactive_split_bytes": int(stats.get("inactive_split_bytes.all.peak", 0)),
            "ooms": int(stats.get("num_ooms", 0))}


def setup_json(step: str | None = None, knobs: dict[str, Any] | None = None, config: dict | None = None,
               **step_options: Any) -> dict[str, Any]:
    """The ``setup`` block: a step file and vramplan's knobs around it (batch_size,
    accumulation, precision, checkpoint, sdpa, optimizer, alloc_conf), a built-in config, or none."""
    if step is not None and config is not None:
        raise PlannerError("record: give step= or config=, not both")
    if step is not None:
        from planner.step_setup import StepSetup

        if "checkpoint" in step_options:
            step_options["checkpoint"] = tuple(step_options["checkpoint"])
        try:
            ss = StepSetup(step, knobs=tuple((knobs or {}).items()), **step_options)
        except TypeError as exc:
            raise PlannerError(f"record: {exc}") from None
        return {"kind": "step", "step": ss.to_json()}
    if knobs or step_options:
        raise PlannerError("record: knobs and step options need step=path/to/step.py")
    if config is not None:
        from planner.config import setup_from_dict

        setup_from_dict(dict(config))  # checked now, not when compared
        return {"kind": "builtin", "config": config}
    return {"kind": "none"}


class Recorder:
    """Records the first ``steps`` steps' counters; :meth:`step` after each optimizer step.

    ``start()`` (or ``with``) reads the device before and after CUDA is initialised; the file is
    written when ``steps`` steps are recorded, or at ``stop()`` / the end of the ``with`` block
    if at least one was. Later calls to :meth:`step` do nothing (no overhead past the window); a
    :meth:`step` before :meth:`start` starts the window instead of recording a step whose peak
    it never saw begin."""

    def __init__(self, path: str | Path, *, steps: int = 3, step: str | None = None,
                 knobs: dict[str, Any] | None = None, config: dict | None = None, **step_options: Any) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
            raise PlannerError(f"record: steps must be an integer in 1..{MAX_STEPS:,}, got {quote(steps)}")
        from planner.config import check_output_path

        self.path = check_output_path(path, "record path")
        self.steps = steps
        self.setup = setup_json(step, knobs, config, **step_options)
        self.context: dict[str, int | None] = dict.fromkeys(CONTEXT_KEYS)
        self.rows: list[dict[str, int]] = []
        self.device: dict[str, Any] | None = None
        self.written = False

    def start(self) -> "Recorder":
        import torch

        if not torch.cuda.is_available():
            raise PlannerError("record: no CUDA device is visible to this torch build")
        if not torch.cuda.is_initialized():
            self.context["used_before_init_bytes"] = nvml_used_bytes()
        torch.cuda.init()
        self.context["used_after_init_bytes"] = device_used_bytes()
        self.device = device_info()
        torch.cuda.reset_peak_memory_stats()
        return self

    def step(self) -> None:
        if self.device is None:  # not started: this call opens the window (its step is not counted)
            self.start()
            return
        if len(self.rows) >= self.steps:
            return
        import torch

        self.rows.append(read_step(len(self.rows) + 1))
        if len(self.rows) == 1:
            self.context["used_after_first_step_bytes"] = self.rows[0]["device_used_bytes"]
            self.context["reserved_after_first_step_bytes"] = int(torch.cuda.memory_reserved())
        if len(self.rows) == self.steps:
            self.stop()

    def stop(self) -> Path | None:
        if self.written or not self.rows or self.device is None:
            return None
        self.written = True
        return write_run(self.path, run_json(self.setup, self.device, self.context, self.rows))

    def __enter__(self) -> "Recorder":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def record(path: str | Path, **kwargs: Any) -> Recorder:
    """``with record("run.json", step=..., steps=3) as rec: ... rec.step()`` (see :class:`Recorder`)."""
    return Recorder(path, **kwargs)


class _Callback(Recorder):
    """Duck-typed framework callback: every hook but the recording one is a no-op."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)


class LightningRecorder(_Callback):
    """Lightning ``Callback``-shaped (``on_train_batch_end``; with gradient accumulation this is
    per batch, so pass ``steps`` in batches)."""

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.start()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.step()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.stop()


class HFRecorder(_Callback):
    """Hugging Face ``TrainerCallback``-shaped (``on_step_end``: after each optimizer step)."""

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.start()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.step()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.stop()


# --- the file -------------------------------------------------------------------------------------

def run_json(setup: dict, device: dict, context: dict, rows: list[dict]) -> dict[str, Any]:
    return {"schema": SCHEMA, "setup": setup, "device": device, "context": context, "steps": rows}


def write_run(path: str | Path, data: dict[str, Any]) -> Path:
    validate_run(data, f"run {quote(str(path))}")  # what is written is what load_run reads back
    p = Path(path)
    p.write_text(json.dumps(data, indent=1) + "\n")
    return p


def load_run(path: str | Path, flag: str = "run file") -> dict[str, Any]:
    """A run file, every field checked (one PlannerError line naming the file and the field)."""
    from planner.config import read_input_file
    from planner.profiles import read_json_file

    read_input_file(path, flag, MAX_RUN_BYTES)  # exists, is a file, under the limit
    where = f"{flag}: {quote(str(path))}"
    return validate_run(read_json_file(Path(path), where, MAX_RUN_BYTES, "a run file"), where)


def _int(obj: dict, key: str, where: str, nullable: bool = False) -> int | None:
    if key not in obj:
        raise PlannerError(f"{where}: missing key '{key}'")
    v = obj[key]
    if v is None and nullable:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_BYTES:
        raise PlannerError(f"{where}: '{key}' must be {'null or ' if nullable else ''}an integer in 0..{MAX_BYTES:,}, "
                           f"got {quote(v)}")
    return v


def _obj(obj: dict, key: str, where: str, kind: type = dict) -> Any:
    v = obj.get(key)
    if not isinstance(v, kind):
        raise PlannerError(f"{where}: '{key}' must be {'an object' if kind is dict else 'a list'}, got {quote(v)}")
    return v


def validate_run(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise PlannerError(f"{where}: must hold a JSON object, got {quote(data)}")
    if data.get("schema") != SCHEMA:
        raise PlannerError(f"{where}: 'schema' must be {SCHEMA!r}, got {quote(data.get('schema'))}")
    extra = sorted(set(data) - {"schema", "setup", "device", "context", "steps", "note"})
    if extra:
        raise PlannerError(f"{where}: unknown key '{extra[0]}' (valid: schema, setup, device, context, steps, note)")
    if "note" in data and not isinstance(data["note"], str):
        raise PlannerError(f"{where}: 'note' must be a string, got {quote(data['note'])}")
    setup = _obj(data, "setup", where)
    kind = setup.get("kind")
    if kind not in SETUP_KINDS:
        raise PlannerError(f"{where}: 'setup.kind' must be one of {', '.join(SETUP_KINDS)}, got {quote(kind)}")
    if kind == "step":
        _step_setup(_obj(setup, "step", f"{where}: setup"), f"{where}: setup.step")
    elif kind == "builtin":
        from planner.config import setup_from_dict

        try:
            setup_from_dict(dict(_obj(setup, "config", f"{where}: setup")))
        except PlannerError as exc:
            raise PlannerError(f"{where}: setup.config: {exc}") from None
    device = _obj(data, "device", where)
    for key in DEVICE_STR_KEYS:
        if not isinstance(device.get(key), str):
            raise PlannerError(f"{where}: 'device.{key}' must be a string, got {quote(device.get(key))}")
    if device["backend"] not in BACKENDS:
        raise PlannerError(f"{where}: 'device.backend' must be one of {', '.join(BACKENDS)}, got {quote(device['backend'])}")
    _int(device, "total_memory_bytes", f"{where}: device")
    context = _obj(data, "context", where)
    for key in CONTEXT_KEYS:
        _int(context, key, f"{where}: context", nullable=True)
    rows = _obj(data, "steps", where, list)
    if not 1 <= len(rows) <= MAX_STEPS:
        raise PlannerError(f"{where}: 'steps' must list 1..{MAX_STEPS:,} steps, got {len(rows)}")
    for i, row in enumerate(rows):
        w = f"{where}: steps[{i}]"
        if not isinstance(row, dict):
            raise PlannerError(f"{w} must be an object, got {quote(row)}")
        n = _int(row, "step", w)
        if n < 1 or (i and n <= rows[i - 1]["step"]):
            raise PlannerError(f"{w}: 'step' must be >= 1 and increasing, got {n}")
        for key in STEP_KEYS:
            _int(row, key, w)
        if row["max_allocated_bytes"] > row["max_reserved_bytes"]:
            raise PlannerError(f"{w}: 'max_allocated_bytes' {row['max_allocated_bytes']:,} exceeds "
                               f"'max_reserved_bytes' {row['max_reserved_bytes']:,} (the allocator reserves what it hands out)")
    return data


def _step_setup(d: dict, where: str) -> Any:
    """The StepSetup a run's ``setup.step`` describes (StepSetup.to_json's layout)."""
    from planner.step_setup import StepSetup

    known = {"step_file", "knobs", "batch_size", "accumulation", "precision", "checkpoint", "sdpa", "optimizer",
             "alloc_conf", "gpus", "strategy"}
    extra = sorted(set(d) - known)
    if extra:
        raise PlannerError(f"{where}: unknown key '{extra[0]}' (valid: {', '.join(sorted(known))})")
    if not isinstance(d.get("step_file"), str):
        raise PlannerError(f"{where}: 'step_file' must be a string, got {quote(d.get('step_file'))}")
    knobs = d.get("knobs", {})
    ckpt = d.get("checkpoint", [])
    if not isinstance(knobs, dict) or not isinstance(ckpt, list) or not all(isinstance(c, str) for c in ckpt):
        raise PlannerError(f"{where}: 'knobs' must be an object and 'checkpoint' a list of class names")
    opts = {k: d[k] for k in ("batch_size", "accumulation", "precision", "sdpa", "optimizer", "alloc_conf", "gpus",
                              "strategy") if k in d}
    for key in ("alloc_conf", "precision", "sdpa", "strategy"):
        if key in opts and not isinstance(opts[key], str):
            raise PlannerError(f"{where}: '{key}' must be a string, got {quote(opts[key])}")
    try:
        return StepSetup(d["step_file"], knobs=tuple((k, tuple(v) if isinstance(v, list) else v)
                                                     for k, v in knobs.items()),
                         checkpoint=tuple(ckpt), **opts)
    except PlannerError as exc:
        raise PlannerError(f"{where}: {exc}") from None


def step_setup_of(run: dict[str, Any], base: Path | None = None) -> Any:
    """The StepSetup of a validated run whose setup is a step file; a relative ``step_file`` that
    does not exist from the working directory is taken relative to ``base`` (the run file's folder)."""
    from dataclasses import replace

    ss = _step_setup(run["setup"]["step"], "setup.step")
    p = Path(ss.path)
    if base is not None and not p.is_absolute() and not p.exists() and (base / p).exists():
        ss = replace(ss, path=str(base / p))
    return ss


def measured(run: dict[str, Any]) -> dict[str, int | None]:
    """What a validated run measured (see the module docstring for which steps count)."""
    rows = run["steps"]
    steady = [r for r in rows if r["step"] >= 2] or rows
    ctx = run["context"]
    context = None  # not measured (the recorder did not see the first step)
    if ctx["used_after_first_step_bytes"] is not None and ctx["reserved_after_first_step_bytes"] is not None:
        context = max(0, ctx["used_after_first_step_bytes"] - ctx["reserved_after_first_step_bytes"]
                      - (ctx["used_before_init_bytes"] or 0))
    return {
        "peak_allocated_bytes": max(r["max_allocated_bytes"] for r in steady),
        "peak_reserved_bytes": max(r["max_reserved_bytes"] for r in steady),
        "device_used_bytes": max(r["device_used_bytes"] for r in steady) - (ctx["used_before_init_bytes"] or 0),
        "context_bytes": context,
        "segments": max(r["segments"] for r in steady),
        "alloc_retries": max(r["alloc_retries"] for r in steady),
        "inactive_split_bytes": max(r["inactive_split_bytes"] for r in steady),
    }


# --- one setup run now (the GPU kit, benchmarks/gpu_validation.py) ------------------------------------

class Session:
    """The device readings a process takes once: used bytes before CUDA is initialised (NVML)
    and right after (``mem_get_info``); then, per setup, :meth:`run` measures one."""

    def __init__(self, backend: str) -> None:
        from planner.result import DEFAULT_CONTEXT_BYTES

        if backend not in BACKENDS:
            raise PlannerError(f"--backend: got {quote(backend)}, valid: {', '.join(BACKENDS)}")
        self.backend = backend
        if backend == "fake":  # the emulated device: nothing before init, the documented context after
            self.before, self.after_init = 0, DEFAULT_CONTEXT_BYTES
            return
        import torch

        if not torch.cuda.is_available():
            raise PlannerError("--backend cuda: no CUDA device is visible to this torch build (use --backend fake)")
        self.before = nvml_used_bytes() if not torch.cuda.is_initialized() else None
        torch.cuda.init()
        self.after_init = device_used_bytes()

    def run(self, setup: dict[str, Any], base: Path | None = None) -> dict[str, Any]:
        """Two iterations of a run file's ``setup`` block on the backend, as a run file (one
        ``steps`` entry: iteration 2, whose peaks the step runners reset at its start)."""
        from planner.measure.profile import report_from

        data = run_json(setup, {}, {}, [])
        if setup.get("kind") == "step":
            from planner.measure.stepfile import run as run_step_file

            ss = step_setup_of(data, base)
            go, conf = (lambda: run_step_file(ss, self.backend, count_flops=False)), ss.alloc_conf
        elif setup.get("kind") == "builtin":
            from planner.config import setup_from_dict
            from planner.measure.builtin_trace import run_step

            ts = setup_from_dict(dict(setup["config"]))
            go, conf = (lambda: run_step(ts, self.backend)), ts.device.alloc_conf
        else:
            raise PlannerError("record: a setup (step file or built-in config) is needed to run it")
        if self.backend == "fake":
            rep = report_from(go(), "fake", conf, 0.0)
            used = rep.peak_reserved_bytes + self.after_init
            row = counters_row(2, rep.peak_allocated_bytes, rep.peak_reserved_bytes, used,
                               {"segment.all.peak": rep.extra["segments"],
                                "inactive_split_bytes.all.peak": rep.fragmentation_bytes})
            device = {"name": "CPU, FakeTensorMode (CUDA emulated)", "backend": "fake", "total_memory_bytes": 0,
                      "driver": "", "cuda": "", "torch": _torch_version(), "cudnn": "", "compute_capability": ""}
            reserved_now = rep.peak_reserved_bytes
        else:
            import torch

            torch.cuda.empty_cache()
            go()  # resets the peak counters where iteration 2 starts (planner/measure/recording.py start_iteration)
            row = read_step(2)
            device, reserved_now = device_info(), int(torch.cuda.memory_reserved())
        data["device"] = device
        data["context"] = {"used_before_init_bytes": self.before, "used_after_init_bytes": self.after_init,
                           "used_after_first_step_bytes": row["device_used_bytes"],
                           "reserved_after_first_step_bytes": reserved_now}
        data["steps"] = [row]
        return validate_run(data, "record")


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def record_command(setup_of: Any, *, out_file: Any, backend: str, as_json: bool, out: Any) -> None:
    """``vramplan record --out run.json``: two iterations of the setup (a step file's StepSetup,
    or the built-in TrainingSetup; ``setup_of()`` makes it, after --out is checked) on
    ``--backend`` (cuda; fake checks the pipeline), written as a run file."""
    from planner.report.text import print_json as _print_json
    from planner.config import check_output_path
    from planner.step_setup import StepSetup

    path = check_output_path(out_file, "--out")
    builtin = setup_of()
    if isinstance(builtin, StepSetup):
        setup = {"kind": "step", "step": builtin.to_json()}
    else:
        from planner.spec import spec_to_dict

        setup = {"kind": "builtin", "config": spec_to_dict(builtin)}
    data = Session(backend).run(setup)
    write_run(path, data)
    if as_json:
        _print_json({"path": str(path), **data})
        return
    got = measured(data)
    out.print(f"wrote {path} ({data['device']['name']}): allocated {got['peak_allocated_bytes']:,} B, reserved "
              f"{got['peak_reserved_bytes']:,} B, context {got['context_bytes']:,} B, device used "
              f"{got['device_used_bytes']:,} B; compare: vramplan compare {path}", markup=False)
