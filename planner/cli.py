"""The ``vramplan`` command line: the commands of ``planner/commands/`` on one Typer app.

Each command is a small module (``planner/commands/estimate.py`` ...): its options parsed
into the setup once (``planner/setup_flags.py``), the library called, the result rendered.
Importing this module registers every command (the help, the tests); ``main`` loads only
the module of the command named on the command line (start-up of the main job).
Torch is imported only inside the commands that trace or measure.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer

from planner.commands import app as _app
from planner.errors import usage_message

try:  # typer >= 0.16 vendors click; older ones depend on it
    from typer._click.exceptions import UsageError as _UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import UsageError as _UsageError

# command name -> its module in planner/commands, in the order of the help
COMMANDS = {
    "profile": "profile", "estimate": "estimate", "calibrate": "calibrate", "record": "record",
    "compare": "compare", "snapshot": "snapshot", "profiles": "profiles", "recommend": "recommend",
    "table": "table", "plot": "plot", "oom": "oom", "check": "check", "gpus": "gpus", "run": "run",
}


def load(names: Any = None) -> Any:
    """Register the commands ``names`` (default: all) on the app, and return it."""
    app = _app.app
    for name in names if names is not None else COMMANDS:
        importlib.import_module(f"planner.commands.{COMMANDS[name]}")
    order = list(COMMANDS)
    app.registered_commands.sort(key=lambda c: order.index(_command_name(c)) if _command_name(c) in order else len(order))
    return app


def __getattr__(name: str) -> Any:
    """``planner.cli.app``: the app with every command registered (the tests, the help); ``main``
    registers only the command named on the command line."""
    if name == "app":
        return load()
    raise AttributeError(name)


def _command_name(info: Any) -> str:
    return info.name or info.callback.__name__.replace("_", "-")


def main() -> None:
    """Console-script entry: usage errors become one line and exit code 2.

    When the first argument names a command, only that command's module is imported and
    registered: typer turns every registered command's signature into click parameters
    before parsing, and the others cost start-up of the main job (the root callback keeps
    the command group, so usage and errors read the same).
    """
    wanted = sys.argv[1] if len(sys.argv) > 1 else None
    app = load([wanted] if wanted in COMMANDS else None)
    registered = app.registered_commands
    only = [c for c in registered if _command_name(c) == wanted]
    try:
        if len(only) == 1:
            app.registered_commands = only
        rv = app(standalone_mode=False)
    except _UsageError as exc:
        msg = exc.format_message()
        if type(exc).__name__ == "NoArgsIsHelpError":  # `vramplan` alone: the help, as click prints it
            sys.stderr.write(msg + "\n")
        else:
            sys.stderr.write(f"error: {usage_message(msg)}\n")
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    finally:
        app.registered_commands = registered
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
