"""User code runs in a child process, where it can be stopped. Torch-free on this side.

A step file, a ``--model`` factory: code vramplan does not control. Every call into it (the
import that reads a step file's knobs, each trace) runs in a spawned worker process that
this module starts and keeps for the whole command (a worker imports torch and the user's
file once, then serves call after call), so that:

* **a hang is stopped.** Each call has a deadline (``--timeout``, :data:`DEFAULT_TIMEOUT`).
  At the deadline the worker is asked for its Python stack (``faulthandler.register`` on
  SIGUSR1, written by C code that needs no GIL, so a loop inside a C extension is sampled
  too), then killed; the error names the innermost frame in the user's own files and exits
  with :data:`EXIT_TIMEOUT`. A new worker replaces it.
* **an exit is not a result.** ``sys.exit``, ``os._exit``, ``KeyboardInterrupt``, a
  segfault or any signal in user code ends the call without one: one line saying what
  happened and where (``os._exit`` is wrapped to note its caller, ``faulthandler.enable``
  dumps the stack of a fatal signal), exit code :data:`EXIT_ENDED`.
* **stdout stays the command's.** In the worker file descriptor 1 is file descriptor 2, so
  ``print()`` and C code writing to stdout land on stderr, and ``--json`` stays parseable.

What comes back is the called function's return value, pickled by ``multiprocessing``
between this process and the worker it spawned (never read from disk). Exit codes: 2 bad
input (the user's code rejected the setup), :data:`EXIT_TIMEOUT` = 3 stopped at the timeout,
:data:`EXIT_ENDED` = 4 ended without a result; 130 stays Ctrl-C at the terminal (workers
ignore SIGINT; the parent's KeyboardInterrupt kills them).
"""

from __future__ import annotations

import atexit
import functools
import math
import os
import re
import signal
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from planner.errors import PlannerError

DEFAULT_TIMEOUT = 600.0
"""Seconds one call into user code may take (one trace). Measured here (2-core build machine,
loaded, cache off, whole `estimate --step` command at the file's defaults): ldm_stage2.py 10.9 s,
guided_unet.py 10.1 s, ldm_stage1.py 10.0 s, voxel_grid.py 6.3 s, the others about 4 s; 600 s
leaves more than 50x for bigger models and busier machines."""
EXIT_TIMEOUT = 3
"""Exit code when user code ran past the timeout and was stopped."""
EXIT_ENDED = 4
"""Exit code when user code ended its process (sys.exit, os._exit, KeyboardInterrupt, a signal) without a result."""
STACK_WAIT = 2.0
"""Seconds to wait for a stopped worker's stack dump before killing it anyway."""

TIMEOUT_HELP = (f"Seconds each trace of your code (import, networks, step) may take before it is stopped, "
                f"naming the file:line it was at (exit code {EXIT_TIMEOUT}); default {DEFAULT_TIMEOUT:g}.")


class UserCodeTimeout(PlannerError):
    exit_code = EXIT_TIMEOUT


class UserCodeEnded(PlannerError):
    exit_code = EXIT_ENDED


_timeout = DEFAULT_TIMEOUT


def set_timeout(seconds: float | None) -> None:
    """The deadline of every later call (``--timeout``; None: the default)."""
    global _timeout
    if seconds is None:
        _timeout = DEFAULT_TIMEOUT
        return
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise PlannerError(f"--timeout: {seconds!r} is not a positive number of seconds")
    _timeout = float(seconds)


def timeout() -> float:
    return _timeout


# --- where the user's code was ---------------------------------------------------------------------

_FRAME = re.compile(r'^\s*File "(.*)", line (\d+) in (.*)$')


@functools.lru_cache(maxsize=1)
def library_dirs() -> tuple[str, ...]:
    """Folders that are not the user's code: vramplan, the standard library, installed packages."""
    dirs = {str(Path(__file__).resolve().parents[1])}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p:
            dirs.add(str(Path(p).resolve()))
    return tuple(d.rstrip(os.sep) + os.sep for d in dirs)


def short_path(filename: str) -> str:
    """``filename`` relative to the working directory where it is under it."""
    try:
        rel = os.path.relpath(filename)
    except ValueError:
        return filename
    return filename if rel.startswith("..") else rel


def user_site(dump: str) -> str:
    """``file:line in function()`` of the innermost user frame in a faulthandler dump (most
    recent call first); where it holds none, the innermost frame, said to be not the user's;
    '' for an empty dump."""
    lib = library_dirs()
    frames = [m.groups() for m in map(_FRAME.match, dump.splitlines()) if m]
    for path, line, fn in frames:
        if not path.startswith("<") and not str(Path(path).resolve()).startswith(lib):
            return f"{short_path(path)}:{line} in {fn.strip()}()"
    if frames:
        path, line, fn = frames[0]
        return f"{short_path(path)}:{line} in {fn.strip()}() (not in your code: none of it was running)"
    return ""


def _frame_lines(frame: Any) -> str:
    """A Python stack in faulthandler's layout (most recent call first)."""
    lines = []
    while frame is not None:
        lines.append(f'  File "{frame.f_code.co_filename}", line {frame.f_lineno} in {frame.f_code.co_name}')
        frame = frame.f_back
    return "\n".join(lines) + "\n"


# --- the worker --------------------------------------------------------------------------------------


def _serve(conn: Any, stack_path: str, parent: int) -> None:
    """The worker's loop: receive (cwd, environ, warm, fn, args); import ``warm`` (torch, the
    tracer: the timeout does not count them) and say "started"; run ``fn(*args)``; send the
    outcome."""
    import faulthandler
    import importlib
    import traceback

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _die_with_parent(parent)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    stack = open(stack_path, "w")  # noqa: SIM115 - open for the worker's life
    faulthandler.enable(file=stack, all_threads=True)
    if hasattr(signal, "SIGUSR1"):  # not on Windows: a timeout there names no line
        faulthandler.register(signal.SIGUSR1, file=stack, all_threads=True)
    real_exit = os._exit

    def _exit(code: int) -> None:  # os._exit: note who called it, then exit
        stack.write(_frame_lines(sys._getframe(1)))
        stack.flush()
        real_exit(code)

    os._exit = _exit  # type: ignore[assignment]
    while True:
        try:
            cwd, env, warm, fn, args = conn.recv()
        except (EOFError, OSError):
            return
        for name in warm:
            try:
                importlib.import_module(name)
            except ImportError:
                pass  # the call that needs it says what is missing
        conn.send(("started",))
        try:
            os.chdir(cwd)
            if env != dict(os.environ):
                os.environ.clear()
                os.environ.update(env)
            outcome: tuple = ("ok", fn(*args))
        except PlannerError as exc:
            outcome = ("error", str(exc), getattr(exc, "exit_code", 2))
        except SystemExit as exc:
            outcome = ("ended", f"called sys.exit({exc.code!r})", _where(exc))
        except KeyboardInterrupt as exc:
            outcome = ("ended", "raised KeyboardInterrupt", _where(exc))
        except BaseException as exc:  # noqa: BLE001 - vramplan's own bug: its traceback, in the parent
            outcome = ("bug", "".join(traceback.format_exception(exc)))
        sys.stderr.flush()
        try:
            conn.send(outcome)
        except Exception as exc:  # noqa: BLE001 - a result that does not pickle (a knob default such as a lambda)
            conn.send(("error", f"step: what your code returned cannot be passed back from the worker process "
                                f"(not picklable: {exc}); knob defaults must be plain values", 2))


def _die_with_parent(parent: int) -> None:
    """Linux: SIGKILL this worker when the process that started it dies, even by SIGKILL or
    SIGTERM (no atexit then), so that user code looping in it does not run on as an orphan
    (prctl PR_SET_PDEATHSIG = 1)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


def _where(exc: BaseException) -> str:
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    return user_site("\n".join(f'  File "{f.filename}", line {f.lineno} in {f.name}' for f in reversed(frames)))


class _Worker:
    def __init__(self) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        # the worker opens the file by name; this process keeps its own descriptor and removes the
        # name once the worker has it open (_started), so nothing is left behind however either ends
        self._fd, self.stack_path = tempfile.mkstemp(prefix="vramplan-stack-", suffix=".txt")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, self.stack_path, os.getpid()), daemon=True)
        self.proc.start()
        child.close()

    def send(self, fn: Callable, args: tuple, warm: tuple[str, ...]) -> None:
        self.conn.send((os.getcwd(), dict(os.environ), warm, fn, args))

    def stack(self) -> str:
        try:
            os.lseek(self._fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(self._fd, 1 << 16):
                chunks.append(chunk)
        except OSError:
            return ""
        return b"".join(chunks).decode(errors="replace")

    def unlink(self) -> None:
        try:
            os.unlink(self.stack_path)
        except OSError:
            pass

    def sample(self) -> str:
        """Ask for the stack (SIGUSR1: faulthandler writes it), wait until written, return it."""
        try:
            os.kill(self.proc.pid, signal.SIGUSR1)
        except (OSError, AttributeError):
            return ""
        end = time.monotonic() + STACK_WAIT
        last = ""
        while time.monotonic() < end:
            time.sleep(0.05)
            text = self.stack()
            if text and text == last:
                return text
            last = text
        return last

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()
        self.unlink()
        try:
            os.close(self._fd)
        except OSError:
            pass


def _ending(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code} (os._exit, or C code exiting)"


class Workers:
    """Worker processes, started on first use and reused call after call."""

    def __init__(self) -> None:
        self._idle: list[_Worker] = []

    def imap(self, fn: Callable, items: Iterable[Any], label: Callable[[Any], str], jobs: int = 1,
             warm: tuple[str, ...] = ()) -> Iterator[tuple[Any, Any]]:
        """``(item, fn(item))`` as each call ends, each run in a worker, at most ``jobs`` at a
        time, under the timeout (counted once the worker has imported ``warm``). A PlannerError
        raised there is raised here; a timeout raises UserCodeTimeout, an end without a result
        UserCodeEnded (both name ``label(item)`` and the user's frame)."""
        from multiprocessing.connection import wait

        pending = list(items)
        running: dict[Any, list] = {}  # conn -> [worker, item, deadline (inf until "started")]
        try:
            while pending or running:
                while pending and len(running) < max(1, jobs):
                    w = self._take()
                    item = pending.pop(0)
                    try:
                        w.send(fn, (item,), warm)
                    except (OSError, ValueError):  # an idle worker that died: a fresh one
                        w.kill()
                        w = _Worker()
                        w.send(fn, (item,), warm)
                    running[w.conn] = [w, item, math.inf]
                left = min(r[2] for r in running.values()) - time.monotonic()
                for conn in wait(list(running), timeout=None if left == math.inf else max(0.0, left)):
                    w, item, deadline = running[conn]
                    if deadline == math.inf and self._started(w):  # the clock starts now
                        running[conn][2] = time.monotonic() + _timeout
                        continue
                    del running[conn]
                    yield item, self._outcome(w, item, label)
                now = time.monotonic()
                for conn, (w, item, deadline) in list(running.items()):
                    if now >= deadline:
                        del running[conn]
                        where = user_site(w.sample())
                        w.kill()
                        raise UserCodeTimeout(
                            f"--timeout: {label(item)} ran longer than {_timeout:g} s and was stopped"
                            + (f" at {where}" if where else "")
                            + f"; if it is only slow, give --timeout SECONDS (exit code {EXIT_TIMEOUT})")
        finally:
            for w, _, _ in running.values():  # interrupted mid-call: no reuse
                w.kill()

    def _take(self) -> _Worker:
        """An idle worker that is still alive, else a new one."""
        while self._idle:
            w = self._idle.pop()
            if w.proc.is_alive():
                return w
            w.kill()
        return _Worker()

    @staticmethod
    def _started(w: _Worker) -> bool:
        """Read the worker's "started" (False where it died instead: its outcome says how)."""
        if not w.conn.poll():
            return False
        try:
            started = w.conn.recv() == ("started",)
        except (EOFError, OSError):
            return False
        w.unlink()  # the worker has the stack file open by now
        return started

    def _outcome(self, w: _Worker, item: Any, label: Callable[[Any], str]) -> Any:
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):
            w.proc.join(5)
            where = user_site(w.stack())
            code = w.proc.exitcode
            w.kill()
            raise UserCodeEnded(f"{label(item)}: the tracing process {_ending(code)} without a result"
                                + (f", at {where}" if where else "") + f" (exit code {EXIT_ENDED})") from None
        self._idle.append(w)  # an exception unwound the call: the worker serves the next one
        kind = msg[0]
        if kind == "ended":
            raise UserCodeEnded(f"{label(item)}: your code {msg[1]}" + (f" at {msg[2]}" if msg[2] else "")
                                + f"; the trace ended without a result (exit code {EXIT_ENDED})")
        if kind == "ok":
            return msg[1]
        if kind == "error":
            exc = PlannerError(msg[1])
            exc.exit_code = msg[2]
            raise exc
        raise RuntimeError(f"in the tracing process:\n{msg[1]}")

    def call(self, fn: Callable, item: Any, label: Callable[[Any], str], warm: tuple[str, ...] = ()) -> Any:
        for _, value in self.imap(fn, [item], label, warm=warm):
            return value
        raise AssertionError("unreachable")

    def close(self) -> None:
        while self._idle:
            self._idle.pop().kill()


_shared: Workers | None = None


def shared() -> Workers:
    """The command's workers, closed when the process exits."""
    global _shared
    if _shared is None:
        _shared = Workers()
        atexit.register(_close_shared)
    return _shared


def _close_shared() -> None:
    if _shared is not None:
        _shared.close()


# --- the calls into user code -------------------------------------------------------------------------


LOADING = ("planner.measure.stepfile",)
"""What a worker imports before the clock starts on reading a step file: torch and the tracer."""
TRACING = LOADING + ("torch._dynamo",)
"""... and before a trace: FakeTensorMode imports torch._dynamo on first use (2-4 s here)."""


@dataclass(frozen=True)
class StepInfo:
    """What the command needs of a step file, read in a worker: its knobs, the default batch,
    its TERMS (validated). Duck-types ``stepfile.StepFile`` for knob checks."""

    path: str
    knobs: dict[str, Any]  # name -> stepfile.Knob
    batch_default: Any
    terms: dict[str, str]


def _load_step(setup: Any) -> StepInfo:
    try:
        from planner.measure import stepfile
    except ImportError as exc:
        raise PlannerError(f"--step needs the measuring extra ({exc.name} is missing): "
                           "pip install torch==2.13.0 'vramplan[profile]'") from None
    from planner.terms import terms_of

    sf = stepfile.load(setup.path)
    stepfile.knob_values(sf, setup)  # unknown knobs and wrong types, before any tracing
    return StepInfo(setup.path, sf.knobs, sf.batch_default, terms_of(sf.module, setup.path))


def load_step(setup: Any) -> StepInfo:
    """Import ``setup``'s step file in a worker (its import-time code runs there), check the
    knobs given, and describe it."""
    return shared().call(_load_step, setup, lambda s: f"importing step file '{s.path}'", warm=LOADING)


def _run_step(args: tuple) -> tuple[Any, Any]:
    setup, backend, rollup, kw = args
    from planner.measure.stepfile import run

    if backend != "cuda":
        return run(setup, backend, **kw), None
    import time

    import torch

    from planner.measure.cuda_backend import measured_report

    torch.cuda.empty_cache()
    t0 = time.perf_counter()
    record = run(setup, backend, **kw)
    return record, measured_report(record, t0, rollup)  # torch's counters: this process's


def run_step(setup: Any, backend: str, rollup: int = 0, **kw: Any) -> tuple[Any, Any]:
    """``stepfile.run`` in a worker: the StepRecord, and on ``cuda`` the measured MemoryReport
    (torch's peak counters are the worker's, read there)."""
    return shared().call(_run_step, (setup, backend, rollup, kw), lambda a: f"tracing {a[0].label()}", warm=TRACING)


def _profile_model(args: tuple) -> Any:
    from planner.measure.profile import profile

    setup, backend, kw = args
    return profile(setup, backend, **kw)


def profile_model(setup: Any, backend: str, **kw: Any) -> Any:
    """``profile --model``: the factory imported, called and traced in a worker; the MemoryReport."""
    return shared().call(_profile_model, (setup, backend, kw),
                         lambda a: f"profiling --model {a[2].get('custom_model') or 'the built-in step'}",
                         warm=TRACING + ("planner.measure.builtin_trace",))
