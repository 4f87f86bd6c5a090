"""The one error type users see: a bad input, reported in one line, exit code 2.

Messages quote the bad value, and bad values can be anything: a 2 GB string
expanded from a YAML alias bomb, an integer of 5,000 digits, a list nested 600
deep. :func:`quote` formats a value for a message without ever building its full
``repr``, and :class:`PlannerError` keeps every message to one line of bounded
length, so no input can make an error message itself slow, huge or multi-line.
"""

from __future__ import annotations

import reprlib
from typing import Any

MAX_QUOTE = 80
"""Characters of a bad value an error message quotes (the cut is marked with …)."""
MAX_MESSAGE = 400
"""Characters of a whole error message (long enough for the longest 'valid: ...' list,
the GPU catalog's; a longer message loses its middle, keeping the input's name and the
valid values)."""

_repr = reprlib.Repr()
_repr.maxlevel = 3
_repr.maxlist = _repr.maxtuple = _repr.maxset = _repr.maxfrozenset = _repr.maxdeque = 8
_repr.maxdict = 6
_repr.maxstring = MAX_QUOTE
_repr.maxlong = MAX_QUOTE
_repr.maxother = MAX_QUOTE


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def quote(value: Any, limit: int = MAX_QUOTE) -> str:
    """``repr(value)`` for an error message, at most ``limit`` characters.

    Cheap on any input: long strings and big containers are cut before they are
    formatted, and an integer too long to print (Python refuses ``repr`` beyond
    4,300 digits) is described by its number of digits.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1:,} digits"
    try:
        text = _repr.repr(value)
    except Exception:  # a value whose repr fails (e.g. an int beyond the digit limit deep in a list)
        text = f"<{type(value).__name__}>"
    return _clip(one_line(text, limit=limit), limit)


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` as one printable line of at most ``limit`` characters.

    Control characters (newlines included) are escaped; an over-long text keeps
    its start (which names the input) and its end (which lists the valid values)
    and loses its middle.
    """
    if len(text) > 4 * limit:  # never scan a huge text: only its two ends can survive
        text = text[: 2 * limit] + "…" + text[-2 * limit:]
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(text) <= limit:
        return text
    head = (limit - 1) * 11 // 20
    tail = limit - 1 - head
    return text[:head] + "…" + text[-tail:]


def usage_message(text: str) -> str:
    """An option parser's message (click's) as one line: whitespace runs (its choice
    lists come with newlines and tabs) become one space, and a quoted value longer than
    MAX_QUOTE characters is cut like :func:`quote` cuts it."""
    import re

    text = " ".join(text.split())  # linear: argv (the only source) is at most a few MB
    text = re.sub(r"'([^']{%d,})'" % (MAX_QUOTE + 1), lambda m: quote(m.group(1)), text)
    return one_line(text)


class PlannerError(ValueError):
    """Bad user input (unknown key, impossible shape, unknown GPU, ...).

    The message is one line that names the input and what would be valid; the
    CLI prints it and exits with code 2, never a traceback. It is made one line of
    at most :data:`MAX_MESSAGE` characters here, whatever the raiser passed.
    """

    exit_code = 2

    def __init__(self, message: object = "") -> None:
        super().__init__(one_line(str(message)))


class NotData(ValueError):
    """Bytes that do not hold the JSON document expected; the message says why in a few words
    ("not UTF-8 text (…)", "nested too deeply to be …", "not valid JSON (…)")."""


def parse_json(raw: bytes, kind: str) -> Any:
    """The JSON document in ``raw`` (a profile, a baseline, a trace-cache entry), or NotData
    saying why not. ``json.loads`` raises RecursionError on deep nesting (100,000 ``[``) and a
    bare ValueError on an integer of over 4,300 digits: both are reported, never raised."""
    import json

    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise NotData(f"not UTF-8 text (byte at offset {exc.start})") from None
    except RecursionError:
        raise NotData(f"nested too deeply to be {kind}") from None
    except json.JSONDecodeError as exc:
        raise NotData(f"not valid JSON (line {exc.lineno} column {exc.colno}: {_clip(exc.msg, 80)})") from None
    except ValueError:
        raise NotData("not valid JSON (a number too long)") from None
