"""Plain-text tables and a console that needs no rich: the fast path of `vramplan estimate`.

Importing rich and laying out its tables cost ~35 ms of the main job's ~190 ms on
the 2-core build machine, so the report tables are formatted here, in rich's
default look (heavy head rule, box-drawn columns). Strings may carry the few
rich-style markup tags the commands use ([bold], [dim], [red], [green] and their
combinations); :class:`PlainConsole` turns them into ANSI styles on a terminal and
drops them otherwise (and under ``NO_COLOR``). Anything else handed to
:meth:`PlainConsole.print` (a rich Table, a progress bar) goes to a real rich
Console, imported then.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any, TextIO

# rich.markup's tag pattern (rich/markup.py RE_TAGS): a tag starts with a letter, '#',
# '/' or '@', so "[32, 64, 64]" is text, as in rich.
_TAG = re.compile(r"((\\*)\[([a-z#/@][^[]*?)])")
_ANSI = {"bold": "1", "dim": "2", "italic": "3", "red": "31", "green": "32", "yellow": "33", "cyan": "36"}


def _styled(text: str, color: bool) -> str:
    """Apply the markup tags in ``text`` as ANSI codes (``color``) or drop them."""
    out: list[str] = []
    stack: list[str] = []
    pos = 0
    for m in _TAG.finditer(text):
        start, end = m.span()
        backslashes, tag = m.group(2), m.group(3)
        out.append(text[pos:start])
        pos = end
        if backslashes:  # "\[bold]" is a literal "[bold]"
            out.append(backslashes[: len(backslashes) // 2] + f"[{tag}]")
            continue
        if tag.startswith("/"):
            if stack:
                stack.pop()
        else:
            stack.append(";".join(_ANSI[w] for w in tag.split() if w in _ANSI))
        if color:
            codes = [c for c in stack if c]
            out.append("\x1b[0m" + (f"\x1b[{';'.join(codes)}m" if codes else ""))
    out.append(text[pos:])
    joined = "".join(out)
    return joined + "\x1b[0m" if color and "\x1b[" in joined else joined


def strip_markup(text: str) -> str:
    return _styled(text, color=False)


class TextTable:
    """A table with a title, named columns (left or right justified) and string cells."""

    def __init__(self, title: str = "") -> None:
        self.title = title
        self.columns: list[tuple[str, str]] = []
        self.rows: list[tuple[str, ...]] = []

    def add_column(self, header: str, justify: str = "left") -> None:
        self.columns.append((header, justify))

    def add_row(self, *cells: str) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"row has {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(tuple(cells))

    def lines(self) -> list[str]:
        widths = [max([len(h), *(len(r[i]) for r in self.rows)]) for i, (h, _) in enumerate(self.columns)]

        def cells(values: tuple[str, ...] | list[str]) -> str:
            parts = []
            for v, w, (_, just) in zip(values, widths, self.columns):
                parts.append(f" {v.rjust(w) if just == 'right' else v.ljust(w)} ")
            return "┃" + "┃".join(parts) + "┃" if values is heads else "│" + "│".join(parts) + "│"

        heads = [h for h, _ in self.columns]
        bar = [("━" * (w + 2)) for w in widths]
        thin = [("─" * (w + 2)) for w in widths]
        out = [self.title] if self.title else []
        out.append("┏" + "┳".join(bar) + "┓")
        out.append(cells(heads))
        out.append("┡" + "╇".join(bar) + "┩")
        out.extend(cells(r) for r in self.rows)
        out.append("└" + "┴".join(thin) + "┘")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def __rich__(self) -> Any:  # printed on a rich Console: the same text, unstyled
        from rich.text import Text

        return Text(str(self))


class PlainConsole:
    """``print`` for markup strings and :class:`TextTable`; rich only for other renderables."""

    def __init__(self, file: TextIO | None = None, stderr: bool = False, **rich_kwargs: Any) -> None:
        self._file = file
        self._stderr = stderr
        self._rich_kwargs = rich_kwargs
        self._rich: Any = None

    @property
    def file(self) -> TextIO:
        return self._file or (sys.stderr if self._stderr else sys.stdout)

    def _color(self) -> bool:
        f = self.file
        return "NO_COLOR" not in os.environ and hasattr(f, "isatty") and f.isatty()

    def print(self, *objects: Any, markup: bool = True, **kwargs: Any) -> None:
        """rich's ``Console.print``: markup in strings unless ``markup=False`` (a path, a
        source line); table cells are always literal."""
        if all(isinstance(o, (str, TextTable)) for o in objects) and not kwargs:
            color = self._color()
            text = " ".join(_styled(o, color) if isinstance(o, str) and markup else str(o) for o in objects)
            self.file.write(text + "\n")
            return
        self.rich.print(*objects, markup=markup, **kwargs)

    @property
    def rich(self) -> Any:
        if self._rich is None:
            from rich.console import Console

            self._rich = Console(file=self._file, stderr=self._stderr, **self._rich_kwargs)
        return self._rich

    def __getattr__(self, name: str) -> Any:  # status(), rule(), ... come from rich
        return getattr(self.rich, name)


def print_json(obj: Any) -> None:
    """A command's --json output: the one document on stdout."""
    import json

    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
