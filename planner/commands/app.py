"""The ``vramplan`` Typer app, its consoles, and how a command fails: one line, exit code 2.

Each command lives in its own module of this package and registers itself on ``app``;
``planner/cli.py`` loads them (all for the help and the tests, only the one named for a
command line). Torch is imported only inside the commands that trace or measure.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import typer

from planner.errors import PlannerError, one_line
from planner.report.text import print_json  # noqa: F401  (the commands' --json output)

app = typer.Typer(
    name="vramplan",
    help="VRAM budget planner and profiler for PyTorch training of 3D generative models.\n\n"
    "Example: vramplan estimate --voxel 256x256x64 --gpu 24GB",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # click's plain help formatter: typer's rich help costs ~0.15 s per --help here
    rich_markup_mode=None,
)


def _console(**kwargs: Any) -> Any:
    # Markup strings and the report's text tables print without rich; a rich Console
    # is made on first use for anything else (tables of other commands, spinners).
    from planner.report.text import PlainConsole

    return PlainConsole(**kwargs)


out: Any = _console(highlight=False, soft_wrap=False, width=140)
err: Any = _console(stderr=True, highlight=False)


def fail_cleanly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """PlannerError -> one line on stderr, exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PlannerError as exc:
            sys.stderr.write(f"error: {one_line(str(exc))}\n")
            raise typer.Exit(exc.exit_code) from None  # 2; 3 and 4 for user code stopped or ended (isolate.py)
        finally:  # a command's --timeout ends with it (a process that runs several, e.g. the tests)
            isolate = sys.modules.get("planner.measure.isolate")
            if isolate is not None:
                isolate.set_timeout(None)

    return wrapper


def command(name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a command on ``app``, failing cleanly."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        return app.command(name=name)(fail_cleanly(fn))

    return register


@app.callback()
def _root() -> None:
    """VRAM budget planner and profiler for PyTorch training of 3D generative models.

    Example: vramplan estimate --voxel 256x256x64 --gpu 24GB
    """
