"""``vramplan oom``: read a CUDA out-of-memory message and say what its numbers mean.

Torch-free, and cheap to import (``re``, ``dataclasses``, ``decimal`` only; the
analytic estimator is imported inside :func:`match_request`'s caller when a setup is
given).

What the message says comes from ``c10/cuda/CUDACachingAllocator.cpp``
(``DeviceCachingAllocator::malloc``, pytorch/pytorch), two layouts:

* torch 1.x (about 1.5 .. 2.0, judging by the versions the public reports name)::

    CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 7.93 GiB total capacity;
    2.81 GiB already allocated; 25.38 MiB free; 3.06 GiB reserved in total by PyTorch)

  Older releases (about 1.0 .. 1.4) ended with ``4.68 MiB cached)`` instead of the reserved total:
  there the figure is reserved minus allocated (in every such message found it is
  smaller than "already allocated", which a reserved total never is).
* torch 2.x (2.1 on; introduced by pytorch/pytorch pull request #99699)::

    CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of
    23.55 GiB of which 131.75 MiB is free. [Process N has X memory in use.]
    Including non-PyTorch memory, this process has 22.63 GiB memory in use.
    [X allowed; ]Of the allocated memory 21.89 GiB is allocated by PyTorch,
    [with X allocated in private pools (e.g., CUDA Graphs), ]and 620.20 MiB is
    reserved by PyTorch but unallocated. If reserved but unallocated memory is large
    try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True ...

  The process lines come from NVML (``reportProcessMemoryInfo``): one per compute
  process on the card, the own one worded "Including non-PyTorch memory, this
  process has"; in a container whose PID namespace hides the own PID, the own
  process appears as a plain "Process N" line. torch 2.1 printed "total capacty".

What the figures say, in order (:func:`causes`): a request larger than the card; a per-process cap
that binds; memory held outside this process when it is most of the card (other processes, other
ranks on the same GPU: free that before anything else); a small-pool request (<= 1 MiB tensors);
memory free but refused; fragmentation of PyTorch's cache; capacity. Fragmentation advice names the
setting this message's torch advises (expandable_segments, or max_split_size_mb with a value
derived from the request) and quotes only the message's own sentence. Figures that cannot all be
true are refused (:func:`problems`) after a line break inside the message was tried as a terminal
wrap through a word or figure (:func:`parse_oom`). The 25 real messages behind the tests are in
tests/data/oom_messages/, each with its source.

Every size is printed by ``format_size``: "N bytes" for small ones, else KiB, MiB
or GiB with two decimals, the next unit only past 1024 of one (the public messages
show "0 bytes", "1002.00 MiB" and "125537.24 GiB"). "Tried to
allocate" prints ``alloc_size = get_allocation_size(round_size(request))``: the
segment the allocator tried to cudaMalloc, not the tensor. A tensor of at most
1 MiB asks for a 2 MiB segment (kSmallBuffer), one under 10 MiB for 20 MiB
(kLargeBuffer), a larger one for itself rounded up to 2 MiB
(:func:`planner.allocator.allocation_size`). "20.00 MiB" is therefore any tensor
between 1 and 10 MiB. (The oldest layout printed other sizes: "12.50 MiB" in
pytorch/pytorch issue #16417 is no segment size.)
"""

from __future__ import annotations

import re
from dataclasses import asdict, replace
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from planner.records import dataclass
from planner.errors import PlannerError
from planner.result import DEFAULT_CONTEXT_BYTES

MAX_INPUT_BYTES = 1 << 20
"""Largest message text read (1 MiB): a whole traceback fits; a whole training log does not."""


SOURCE = "c10/cuda/CUDACachingAllocator.cpp (pytorch/pytorch), DeviceCachingAllocator::malloc"
_UNITS = {"bytes": 1, "byte": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = r"(?<![\d.])(\d++(?:\.\d++)?)\s*(bytes|byte|B|KiB|MiB|GiB|TiB)\b"
# possessive digits, never starting inside a run of them: linear time on a 50,000-digit figure
_FLAGS = re.IGNORECASE

_PREFIX = r"(?:CUDA|HIP) out of memory"
_START = r"(?:(?:CUDA|HIP) out of memory\.?\s*)?Tried to allocate\s+" + _SIZE
_ALLOC_CONF = r"\b(PYTORCH_(?:CUDA_|HIP_)?ALLOC_CONF)\b"
_GPU2 = r"GPU\s*(\d*)\s*has a total capac(?:i)?ty of\s+" + _SIZE + r"\s+of which\s+" + _SIZE + r"\s+is free"
_PROC = r"Process\s+(\d+)\s+has\s+" + _SIZE + r"\s+memory in use"
_SELF = r"Including non-PyTorch memory,\s*this process has\s+" + _SIZE + r"\s+memory in use"
_ALLOWED = _SIZE + r"\s+allowed;"
_ALLOC2 = r"Of the allocated memory\s+" + _SIZE + r"\s+is allocated by PyTorch"
_PRIVATE = r"with\s+" + _SIZE + r"\s+allocated in private pools"
_UNALLOC2 = _SIZE + r"\s+is reserved by PyTorch but unallocated"
_GPU1 = r"\(\s*GPU\s*(\d+)\s*;"
_CAP1 = _SIZE + r"\s+total capacity"
_ALLOC1 = _SIZE + r"\s+already allocated"
_FREE1 = _SIZE + r"\s+free\b"
_RESERVED1 = _SIZE + r"\s+reserved in total by PyTorch"
_CACHED1 = _SIZE + r"\s+cached\)"
_EXPANDABLE = r"expandable_segments"
_MAX_SPLIT = r"max_split_size_mb"
# Patterns are compiled on first use (re's own cache), not at import: compiling all of them
# cost ~10 ms of `import planner.oom`.


def _search(pattern: str, text: str) -> re.Match | None:
    return re.search(pattern, text, _FLAGS)


def _finditer(pattern: str, text: str):
    return re.finditer(pattern, text, _FLAGS)


_WINDOW = 3000  # characters after "Tried to allocate" that belong to one message


@dataclass(frozen=True)
class Size:
    """One printed figure: its text and the bytes it stands for."""

    text: str
    """As printed, e.g. '23.55 GiB'."""
    nbytes: int
    """value x unit, rounded half-even to a whole byte (the rule the tests use)."""
    tolerance: int
    """Half a unit of the last printed digit: the true size is within nbytes ± tolerance."""


MAX_FIGURE_DIGITS = 12
"""Most digits a figure of the message may have on either side of its point: format_size prints two decimals,
and 12 integer digits of GiB (~10**21 B) is past any size_t the allocator can print (2**64 B = 16 EiB)."""


def size_bytes(number: str, unit: str) -> Size:
    """'23.55', 'GiB' -> Size(23.55 * 2**30 rounded half-even to a byte, ± 0.005 GiB)."""
    whole, _, frac = number.partition(".")
    if len(whole) > MAX_FIGURE_DIGITS or len(frac) > MAX_FIGURE_DIGITS:
        digits = f"{len(whole):,} digits" + (f" before its point and {len(frac):,} after" if frac else "")
        raise PlannerError(f"MESSAGE: a figure of {digits} ('{number[:12]}... {unit}'; at most {MAX_FIGURE_DIGITS} "
                           f"either side of the point): "
                           f"no allocator prints that (format_size prints at most 2 decimals of a size_t); "
                           "paste the message as PyTorch printed it")
    try:
        value = Decimal(number)
    except InvalidOperation:  # pragma: no cover - the regex admits only decimals
        raise PlannerError(f"bad size {number!r} in the message") from None
    scale = _UNITS[unit.lower()]
    decimals = len(number.split(".")[1]) if "." in number else 0
    nbytes = int((value * scale).to_integral_value(rounding=ROUND_HALF_EVEN))
    tol = int(Decimal(scale) / (2 * 10**decimals)) if scale > 1 else 0
    return Size(f"{number} {unit}", nbytes, tol)


def _size(m: re.Match | None, group: int = 1) -> Size | None:
    return size_bytes(m.group(group), m.group(group + 1)) if m else None


def fmt(nbytes: int | None) -> str:
    """Bytes as PyTorch's format_size prints them (2 decimals; 'bytes' up to 1 KiB)."""
    if nbytes is None:
        return "?"
    sign = "-" if nbytes < 0 else ""
    n = abs(nbytes)
    if n <= 1024:
        return f"{sign}{n} bytes"
    for unit, scale in (("KiB", 2**10), ("MiB", 2**20), ("GiB", 2**30)):
        if n <= scale * 1024 or unit == "GiB":
            return f"{sign}{n / scale:.2f} {unit}"
    raise AssertionError  # pragma: no cover


@dataclass(frozen=True)
class OomReport:
    """The figures of one CUDA out-of-memory message, in bytes (None: not in the message)."""

    format: str
    """'1.x' (parenthesised list) or '2.x' ('GPU N has a total capacity of ...')."""
    request_bytes: int
    """'Tried to allocate': the segment the allocator tried to cudaMalloc (see module docstring)."""
    gpu_index: int | None
    capacity_bytes: int | None
    """'total capacity': what cudaMemGetInfo reports as total (physical memory less the driver's share)."""
    free_bytes: int | None
    """Free on the device when the allocation failed (cudaMemGetInfo)."""
    allocated_bytes: int | None
    """Live tensors (PyTorch's allocated_bytes; 2.x includes private pools)."""
    reserved_bytes: int | None
    """Held by PyTorch's caching allocator: 1.x 'reserved in total'; 2.x allocated + reserved-but-unallocated."""
    reserved_unallocated_bytes: int | None
    """Reserved but holding no tensor: cached blocks left after the allocator freed what it could."""
    process_in_use_bytes: int | None = None
    """2.x: NVML's figure for this process (PyTorch + CUDA context + other libraries)."""
    non_pytorch_bytes: int | None = None
    """2.x: this process's memory outside PyTorch's allocator (in use - reserved); 1.x: capacity -
    free - reserved (everything on the card outside this process's PyTorch, other processes included)."""
    other_processes: tuple[tuple[int, int], ...] = ()
    """2.x: (pid, bytes) of every 'Process N has X memory in use' line."""
    allowed_bytes: int | None = None
    """'X allowed;': a cap set by torch.cuda.set_per_process_memory_fraction."""
    private_pool_bytes: int | None = None
    """2.x: 'with X allocated in private pools (e.g., CUDA Graphs)'."""
    hint_expandable_segments: bool = False
    """The message itself suggests PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (torch >= 2.2)."""
    hint_max_split_size: bool = False
    """The message itself suggests max_split_size_mb (torch 1.x .. 2.1)."""
    request_text: str = ""
    capacity_text: str = ""
    request_tolerance: int = 0
    """Half a unit of the request's last printed digit."""
    backend: str = "CUDA"
    """'CUDA' or 'HIP' (ROCm builds print the same message)."""
    messages_found: int = 1
    """How many OOM messages the text held (the last one is read)."""
    prefix_missing: bool = False
    """The paste lacks "CUDA out of memory." (its GPU figures are there: :func:`parse_oom` requires them)."""
    alloc_conf_env: str = ""
    """The allocator setting's variable the message names (PYTORCH_CUDA_ALLOC_CONF, PYTORCH_HIP_ALLOC_CONF, ...)."""
    hint_text: str = ""
    """The message's own advice sentence, verbatim ("If reserved ... to avoid fragmentation.")."""
    repairs: tuple[str, ...] = ()
    """Line breaks read as a terminal's wrap through a word or figure ('16.9⏎4 read as 16.94')."""

    @property
    def outside_pytorch_bytes(self) -> int | None:
        """Used on the card but not by this process's PyTorch allocator: capacity - free - reserved
        (CUDA context, libraries' own buffers, other processes)."""
        if self.capacity_bytes is None or self.free_bytes is None or self.reserved_bytes is None:
            return None
        return self.capacity_bytes - self.free_bytes - self.reserved_bytes

    @property
    def other_processes_bytes(self) -> int:
        """Every 'Process N has X memory in use' line, this process's own one in a container included."""
        return sum(b for _, b in self.other_processes)

    @property
    def own_process(self) -> tuple[int, int] | None:
        """2.x without a 'this process has' line (a container whose PID namespace hides the own PID from
        NVML): the 'Process N' line that is this process, i.e. the smallest one at least as large as
        PyTorch's reserve (allocated where the reserve is not printed). None when there is a 'this
        process' line or no line is that large."""
        if self.format != "2.x" or self.process_in_use_bytes is not None:
            return None
        floor = self.reserved_bytes if self.reserved_bytes is not None else self.allocated_bytes
        if floor is None:
            return None
        fits = sorted((b, p) for p, b in self.other_processes if b + _SLACK >= floor)
        return (fits[0][1], fits[0][0]) if fits else None

    @property
    def foreign_processes(self) -> tuple[tuple[int, int], ...]:
        """The 'Process N' lines that are other programs (this process's own line in a container excluded)."""
        own = self.own_process
        return tuple(pb for pb in self.other_processes if own is None or pb[0] != own[0])

    @property
    def foreign_bytes(self) -> int:
        return sum(b for _, b in self.foreign_processes)

    @property
    def own_bytes(self) -> int | None:
        """This process on the card as NVML sees it: the 'this process has' figure, or its container line."""
        if self.process_in_use_bytes is not None:
            return self.process_in_use_bytes
        own = self.own_process
        return own[1] if own else None

    @property
    def elsewhere_bytes(self) -> int | None:
        """Held on the card outside this process: capacity - free - this process (NVML's figure); where the
        message has none, capacity - free - reserved, which also counts this process's CUDA context."""
        if self.capacity_bytes is None or self.free_bytes is None:
            return None
        own = self.own_bytes
        return self.capacity_bytes - self.free_bytes - own if own is not None else self.outside_pytorch_bytes

    @property
    def shortfall_bytes(self) -> int | None:
        """How much more free memory the request needed: request - free."""
        return None if self.free_bytes is None else self.request_bytes - self.free_bytes

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["other_processes"] = [{"pid": p, "bytes": b} for p, b in self.other_processes]
        d["outside_pytorch_bytes"] = self.outside_pytorch_bytes
        d["other_processes_bytes"] = self.other_processes_bytes
        d["own_process"] = {"pid": self.own_process[0], "bytes": self.own_process[1]} if self.own_process else None
        d["foreign_processes_bytes"] = self.foreign_bytes
        d["elsewhere_bytes"] = self.elsewhere_bytes
        d["repairs"] = list(self.repairs)
        d["shortfall_bytes"] = self.shortfall_bytes
        return d


def _read_text(text: str | bytes) -> str:
    if isinstance(text, bytes):
        if len(text) > MAX_INPUT_BYTES:
            raise PlannerError(f"MESSAGE: {len(text):,} bytes (valid: at most {MAX_INPUT_BYTES:,}; "
                               "paste the OOM message or the traceback's last lines, e.g. tail -n 50 train.log)")
        text = text.decode("utf-8", errors="replace")
    if len(text) > MAX_INPUT_BYTES:
        raise PlannerError(f"MESSAGE: {len(text):,} characters (valid: at most {MAX_INPUT_BYTES:,}; "
                           "paste the OOM message or the traceback's last lines, e.g. tail -n 50 train.log)")
    return text


_SLACK = 11 << 20
"""Two printed figures compared: each is good to half its last digit (0.005 GiB ~ 5.4 MiB), so two of
them may differ by up to ~10.7 MiB without contradicting each other."""
_MAX_BREAKS = 64
"""Line breaks inside the message tried as terminal wraps (each is one more parse of a ~3000-character window)."""
_BACK = 80  # characters before "Tried to allocate" that belong to the message (its prefix, wrapped)


def _collapse(text: str) -> str:
    """Whitespace runs -> one space, except a bare line break between two word characters, kept as '\n':
    a terminal's hard wrap inside a word or a figure ('16.9⏎4 GiB', 'fre⏎e'), or a paste whose line
    ends replaced a space ('memory⏎14.12 GiB'); which of the two it is, only the figures tell."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")

    def one(m: re.Match) -> str:
        i, j = m.start(), m.end()
        soft = (m.group(0) == "\n" and 0 < i and j < len(text)
                and (text[i - 1].isalnum() or text[i - 1] == ".") and (text[j].isalnum() or text[j] == "."))
        return "\n" if soft else " "
    return re.sub(r"\s+", one, text)


def _score(rep: OomReport | None) -> tuple:
    """Better reading first: found, most figures read, then fewest contradictions (a wrap through a word hides a
    figure; one through a number misreads it, which the contradiction with another figure shows)."""
    if rep is None:
        return (0, 0, 0)
    figures = sum(v is not None for v in (rep.capacity_bytes, rep.free_bytes, rep.allocated_bytes,
                                          rep.reserved_bytes, rep.reserved_unallocated_bytes,
                                          rep.process_in_use_bytes, rep.allowed_bytes, rep.gpu_index))
    return (1, figures + len(rep.other_processes), -len(problems(rep)))


def _try(pieces: list[str], joins: set[int]) -> OomReport | None:
    """Parse the window cut at its line breaks (``pieces``), break ``i`` joined when i is in ``joins``."""
    spaced = pieces[0] + "".join(("" if i in joins else " ") + p for i, p in enumerate(pieces[1:]))
    try:
        return _parse_spaced(spaced)
    except PlannerError:
        return None


def parse_oom(text: str | bytes) -> OomReport:
    """The figures of the last CUDA (or HIP) out-of-memory message in ``text``.

    ``text`` may be the bare message, a wrapped copy of it, a whole pasted traceback, or the
    message without its "CUDA out of memory." prefix (then its GPU figures must be there); at
    most :data:`MAX_INPUT_BYTES`. Figures the message lacks are None. A line break inside the
    message may be a terminal's wrap through a word or a figure: each is read both ways and kept
    joined only where that reading is the better one (:func:`_score`: more figures read, then
    fewer contradictions), recorded in ``repairs``. Raises :class:`PlannerError` (one line, never
    quoting the input) when no message is found and when the figures contradict each other
    whichever way the breaks are read (:func:`problems`).
    """
    text = _collapse(_read_text(text))
    spaced = text.replace("\n", " ")  # same indices as text
    starts = list(_finditer(_START, spaced))
    if starts:
        lo = max(0, starts[-1].start() - _BACK)
        window = text[lo: min(len(text), starts[-1].end() + _WINDOW)]
    else:  # perhaps a wrap through "Tried to allocate" itself: a short paste is worth trying
        window = text if len(text) <= 2 * _WINDOW else ""
    pieces = window.split("\n")
    breaks = list(range(min(len(pieces) - 1, _MAX_BREAKS)))
    joins: set[int] = set()
    best = _try(pieces, joins)
    for _ in range(3):  # greedy, to a fixpoint: a join may only pay once another figure is read
        changed = False
        for i in breaks:
            if i in joins:
                continue
            cand = _try(pieces, joins | {i})
            if _score(cand) > _score(best):
                joins.add(i)
                best, changed = cand, True
        if not changed:
            break
    if best is None:
        _parse_spaced(spaced)  # raises the one-line "no message" error
        raise AssertionError  # pragma: no cover
    wrong = problems(best)
    if wrong:
        wrapped = " (a figure split by a line wrap? paste the message unwrapped)" if breaks else ""
        raise PlannerError(f"MESSAGE: the figures contradict each other: {'; '.join(wrong)}{wrapped}")
    ends = [(pieces[i].split(" ")[-1][-12:], pieces[i + 1].split(" ")[0][:12]) for i in sorted(joins)]
    repairs = tuple(f"{a}⏎{b} read as {a}{b}" for a, b in ends)
    return replace(best, messages_found=max(len(starts), 1), repairs=repairs)


def problems(oom: OomReport) -> list[str]:
    """What no real message can say: each an impossible pair of figures, beyond print precision
    (:data:`_SLACK`). Allocated above the capacity is not here: Windows' shared GPU memory does
    that (see :func:`explain`)."""
    out: list[str] = []
    cap, free, alloc, res = oom.capacity_bytes, oom.free_bytes, oom.allocated_bytes, oom.reserved_bytes
    if oom.request_bytes <= 0:
        out.append("a request of 0 bytes (the allocator never fails on one)")
    if cap is not None and cap <= 0:
        out.append("a total capacity of 0 bytes")
    if cap is not None and free is not None and cap > 0 and free > cap + _SLACK:
        out.append(f"free {fmt(free)} > total capacity {fmt(cap)}")
    if alloc is not None and res is not None and res + _SLACK < alloc:
        out.append(f"reserved by PyTorch {fmt(res)} < allocated {fmt(alloc)} (reserved includes allocated)")
    if oom.process_in_use_bytes is not None and res is not None and oom.process_in_use_bytes + _SLACK < res:
        out.append(f"this process has {fmt(oom.process_in_use_bytes)} in use < PyTorch's reserved {fmt(res)}")
    if oom.private_pool_bytes is not None and alloc is not None and oom.private_pool_bytes > alloc + _SLACK:
        out.append(f"private pools {fmt(oom.private_pool_bytes)} > allocated {fmt(alloc)} (pools are part of it)")
    if oom.allowed_bytes is not None and cap is not None and cap > 0 and oom.allowed_bytes > cap + _SLACK:
        out.append(f"allowed {fmt(oom.allowed_bytes)} > total capacity {fmt(cap)} (a fraction of it)")
    if cap is not None and cap > 0 and oom.other_processes_bytes > cap + _SLACK:
        out.append(f"other processes {fmt(oom.other_processes_bytes)} > total capacity {fmt(cap)}")
    return out


def _parse_spaced(text: str) -> OomReport:
    """parse_oom on text whose whitespace is single spaces."""
    starts = list(_finditer(_START, text))
    if not starts:
        hint = ("it mentions 'out of memory' but not 'Tried to allocate N MiB'"
                if re.search(r"out of memory", text, _FLAGS) else "none found")
        raise PlannerError("MESSAGE: no CUDA out-of-memory message (expected 'CUDA out of memory. Tried to "
                           f"allocate <size> ...' from torch 1.x or 2.x; {hint})")
    start = starts[-1]
    head = start.group(0)
    prefixed = bool(re.match(_PREFIX, head, _FLAGS))
    backend = "HIP" if head.upper().startswith("HIP") else "CUDA"
    request = _size(start)
    # the message runs to the next one (a repeated traceback) or a window's end
    end = min(start.end() + _WINDOW, len(text))
    body = text[start.end():end]
    nxt = re.search(_PREFIX + r"|Tried to allocate", body, _FLAGS)
    if nxt:
        body = body[: nxt.start()]
    env = _search(_ALLOC_CONF, body)
    hint = _search(r"If reserved (?:but unallocated )?memory is .{0,80}? to avoid fragmentation\.", body)
    common = dict(
        request_bytes=request.nbytes, request_text=request.text, request_tolerance=request.tolerance,
        hint_expandable_segments=bool(_search(_EXPANDABLE, body)), hint_max_split_size=bool(_search(_MAX_SPLIT, body)),
        backend=backend, messages_found=len(starts), prefix_missing=not prefixed,
        alloc_conf_env=env.group(1) if env else "", hint_text=hint.group(0) if hint else "",
    )
    g2 = _search(_GPU2, body)
    if g2 or _search(_ALLOC2, body) or _search(_UNALLOC2, body):
        rep = _parse_2x(body, g2, common)
    else:
        rep = _parse_1x(body, common)
    if not prefixed and (rep.capacity_bytes is None or rep.free_bytes is None):
        raise PlannerError("MESSAGE: 'Tried to allocate' without 'CUDA out of memory' and without the GPU's total "
                           "capacity and free figures: not a CUDA out-of-memory message (paste the whole message)")
    return rep


def _parse_2x(body: str, g2: re.Match | None, common: dict) -> OomReport:
    cap = free = None
    gpu = None
    if g2:
        gpu = int(g2.group(1)) if g2.group(1) else None
        cap, free = _size(g2, 2), _size(g2, 4)
    own = _size(_search(_SELF, body))
    procs = tuple((int(m.group(1)), size_bytes(m.group(2), m.group(3)).nbytes) for m in _finditer(_PROC, body))
    alloc = _size(_search(_ALLOC2, body))
    private = _size(_search(_PRIVATE, body))
    unalloc = _size(_search(_UNALLOC2, body))
    allowed = _size(_search(_ALLOWED, body))
    reserved = alloc.nbytes + unalloc.nbytes if alloc and unalloc else None
    return OomReport(
        format="2.x", gpu_index=gpu,
        capacity_bytes=cap.nbytes if cap else None, capacity_text=cap.text if cap else "",
        free_bytes=free.nbytes if free else None,
        allocated_bytes=alloc.nbytes if alloc else None,
        reserved_bytes=reserved,
        reserved_unallocated_bytes=unalloc.nbytes if unalloc else None,
        process_in_use_bytes=own.nbytes if own else None,
        non_pytorch_bytes=own.nbytes - reserved if own and reserved is not None else None,
        other_processes=procs,
        allowed_bytes=allowed.nbytes if allowed else None,
        private_pool_bytes=private.nbytes if private else None,
        **common,
    )


def _parse_1x(body: str, common: dict) -> OomReport:
    gpu = _search(_GPU1, body)
    cap = _size(_search(_CAP1, body))
    alloc = _size(_search(_ALLOC1, body))
    free = _size(_search(_FREE1, body))
    reserved = _size(_search(_RESERVED1, body))
    cached = _size(_search(_CACHED1, body))
    allowed = _size(_search(_ALLOWED, body))
    if reserved is not None:
        res_b = reserved.nbytes
        unalloc_b = res_b - alloc.nbytes if alloc else None
    elif cached is not None:  # torch 1.0-1.4: 'cached' = reserved - allocated
        unalloc_b = cached.nbytes
        res_b = alloc.nbytes + cached.nbytes if alloc else None
    else:
        res_b = unalloc_b = None
    non_pt = cap.nbytes - free.nbytes - res_b if cap and free and res_b is not None else None
    return OomReport(
        format="1.x", gpu_index=int(gpu.group(1)) if gpu else None,
        capacity_bytes=cap.nbytes if cap else None, capacity_text=cap.text if cap else "",
        free_bytes=free.nbytes if free else None,
        allocated_bytes=alloc.nbytes if alloc else None,
        reserved_bytes=res_b, reserved_unallocated_bytes=unalloc_b,
        non_pytorch_bytes=non_pt, allowed_bytes=allowed.nbytes if allowed else None,
        **common,
    )


# --- explanation -------------------------------------------------------------------------------

OTHER_MEMORY_SHARE = 0.5
"""Memory held outside this process counts as the cause first when it is more than this share of the card."""
MIN_MAX_SPLIT_MB = 21
"""max_split_size_mb must be above kLargeBuffer / 1 MiB = 20 (c10/cuda/CUDACachingAllocator.cpp,
parseMaxSplitSize: 'max_split_size_mb too small, must be > 20')."""


def causes(oom: OomReport) -> list[str]:
    """What ran out, most decisive first (:func:`diagnosis` is the first):

    * ``request_exceeds_card``: the request alone is larger than the card (or the allowed cap);
    * ``per_process_cap``: a per-process cap ('X allowed') binds: reserved + request > allowed (within
      the figures' print precision, :data:`_SLACK`);
    * ``other_memory``: memory held outside this process (other processes, other ranks, another
      program) is most of the card (> :data:`OTHER_MEMORY_SHARE`): free that first;
    * ``small_pool``: a request of at most 2 MiB (a <= 1 MiB tensor's kSmallBuffer segment, or
      the tensor itself in old releases): only the small pool serves it, cached large blocks
      cannot, so it means the card was full;
    * ``free_but_refused``: the driver reported at least the request free and still refused it
      (not fragmentation of PyTorch's cache unless the figures show that too: then
      ``fragmentation`` follows it);
    * ``fragmentation``: PyTorch held more reserved-but-unallocated memory than the request, in
      blocks none of which could take it;
    * ``fragmentation_and_capacity``: free + reserved-but-unallocated would have covered it,
      neither alone;
    * ``capacity``: even every free and cached byte together was too little;
    * ``unknown``: the message lacks the figures to tell.
    """
    req = oom.request_bytes
    cap, allowed = oom.capacity_bytes, oom.allowed_bytes
    limit = min(x for x in (cap, allowed) if x is not None) if (cap is not None or allowed is not None) else None
    out: list[str] = []
    if limit is not None and req > limit:
        out.append("request_exceeds_card")
    if allowed is not None and oom.reserved_bytes is not None and oom.reserved_bytes + req + _SLACK > allowed \
            and "request_exceeds_card" not in out:  # binds within print precision
        out.append("per_process_cap")
    away = oom.elsewhere_bytes
    if away is not None and cap and away > OTHER_MEMORY_SHARE * cap:
        out.append("other_memory")
    small = req <= (2 << 20) + oom.request_tolerance
    if small:
        out.append("small_pool")
    unalloc, free = oom.reserved_unallocated_bytes, oom.free_bytes
    if free is not None and free >= req and not small:
        out.append("free_but_refused")
    if unalloc is not None and not small and unalloc >= req:
        out.append("fragmentation")
    elif unalloc is not None and free is not None and not small and free < req <= unalloc + free:
        out.append("fragmentation_and_capacity")
    if free is not None and not small and not {"request_exceeds_card", "free_but_refused", "fragmentation",
                                                "fragmentation_and_capacity"} & set(out):
        out.append("capacity")
    return out or ["unknown"]


def diagnosis(oom: OomReport) -> str:
    """The first of :func:`causes`: what to act on first."""
    return causes(oom)[0]


def max_split_mb(oom: OomReport) -> int:
    """The max_split_size_mb value for this message: the request in MiB, rounded up, at least
    :data:`MIN_MAX_SPLIT_MB`. Blocks at least that large are then never split for smaller tensors
    (c10/cuda/CUDACachingAllocator.cpp, get_free_block: an oversize block serves only a request of
    max_split_size or more), so a block that fits this request stays whole for it."""
    return max(MIN_MAX_SPLIT_MB, -(-oom.request_bytes // (1 << 20)))


def fragmentation_setting(oom: OomReport) -> str:
    """The allocator setting to try, in the variable this message names: expandable_segments where the
    message itself advises it (torch >= 2.2), else max_split_size_mb with :func:`max_split_mb`."""
    env = oom.alloc_conf_env or ("PYTORCH_HIP_ALLOC_CONF" if oom.backend == "HIP" else "PYTORCH_CUDA_ALLOC_CONF")
    if oom.hint_expandable_segments or (oom.format == "2.x" and not oom.hint_max_split_size):
        return f"{env}=expandable_segments:True"
    return f"{env}=max_split_size_mb:{max_split_mb(oom)}"


def _segment_note(oom: OomReport) -> str:
    r, tol = oom.request_bytes, oom.request_tolerance
    if abs(r - (2 << 20)) <= tol:
        return ("PyTorch prints the segment it tried to cudaMalloc, not the tensor: 2.00 MiB is the segment of "
                "any tensor of at most 1 MiB (kSmallBuffer)")
    if abs(r - (20 << 20)) <= tol:
        return ("PyTorch prints the segment it tried to cudaMalloc, not the tensor: 20.00 MiB is the segment of "
                "any tensor between 1 and 10 MiB (kLargeBuffer), or of one of 18-20 MiB")
    off = r % (2 << 20)
    if r > (10 << 20) and min(off, (2 << 20) - off) > tol:
        return ("It is not a whole number of 2 MiB, so this torch printed the tensor's own (512-rounded) size, "
                "not a segment")
    if r > (10 << 20):
        return ("PyTorch prints the segment it tried to cudaMalloc: the tensor rounded up to 2 MiB, so the tensor "
                "is at most 2 MiB smaller")
    return "A request under 10 MiB that is neither 2 nor 20 MiB: this torch printed the tensor's own size"


def explain(oom: OomReport) -> list[str]:
    """What each figure means, in lines of plain text (no markup)."""
    lines: list[str] = []
    gpu = f"GPU {oom.gpu_index}" if oom.gpu_index is not None else "The GPU"
    ver = "torch 2.x" if oom.format == "2.x" else "torch 1.x"
    more = f" ({oom.messages_found} OOM messages in the text; the last one is read)" if oom.messages_found > 1 else ""
    backend = "HIP (ROCm)" if oom.backend == "HIP" else oom.backend
    prefix = (" (pasted without the 'CUDA out of memory.' prefix; read as a CUDA or HIP message of that layout)"
              if oom.prefix_missing else "")
    lines.append(f"{backend} out-of-memory message, {ver} layout{more}{prefix}.")
    for r in oom.repairs:
        lines.append(f"Line wrap repaired: {r} (the only reading whose figures are consistent and complete).")
    if oom.capacity_bytes is not None:
        lines.append(f"Capacity: {gpu} has {fmt(oom.capacity_bytes)} in total as CUDA reports it "
                     f"({oom.capacity_bytes:,} B; physical memory less what the driver keeps).")
    if oom.allowed_bytes is not None:
        lines.append(f"Allowed: {fmt(oom.allowed_bytes)}: torch.cuda.set_per_process_memory_fraction caps this "
                     "process below the card's capacity.")
    if oom.free_bytes is not None:
        lines.append(f"Free when it failed: {fmt(oom.free_bytes)}.")
    if oom.allocated_bytes is not None:
        pp = f" (of which {fmt(oom.private_pool_bytes)} in CUDA-graph private pools)" if oom.private_pool_bytes else ""
        lines.append(f"Allocated by PyTorch: {fmt(oom.allocated_bytes)}{pp}: the tensors alive at that moment, "
                     "each rounded up to 512 B.")
    if oom.reserved_unallocated_bytes is not None:
        lines.append(f"Reserved by PyTorch but unallocated: {fmt(oom.reserved_unallocated_bytes)} "
                     f"(reserved in total {fmt(oom.reserved_bytes)}): cached blocks holding no tensor. Before raising, "
                     "the allocator already returned every wholly free segment to the driver, so what is left are "
                     "free pieces of segments that also hold live tensors.")
    out = oom.outside_pytorch_bytes
    if out is not None:
        others = oom.foreign_bytes
        own = oom.own_process
        parts = []
        if oom.non_pytorch_bytes is not None and oom.format == "2.x":
            parts.append(f"this process outside PyTorch {fmt(oom.non_pytorch_bytes)} "
                         f"(in use {fmt(oom.process_in_use_bytes)} - reserved {fmt(oom.reserved_bytes)})")
        elif own is not None and oom.reserved_bytes is not None:
            parts.append(f"this process (PID {own[0]}) outside PyTorch {fmt(own[1] - oom.reserved_bytes)} "
                         f"(in use {fmt(own[1])} - reserved {fmt(oom.reserved_bytes)})")
        if oom.foreign_processes:
            listed = ", ".join(f"PID {p} {fmt(b)}" for p, b in oom.foreign_processes)
            parts.append(f"other processes {fmt(others)} ({listed})")
        detail = f": {'; '.join(parts)}" if parts else ""
        lines.append(f"Outside PyTorch's allocator: {fmt(out)} = capacity - free - reserved (CUDA context, "
                     f"cuDNN/cuBLAS/NCCL buffers, other processes){detail}.")
        if oom.format == "2.x" and oom.non_pytorch_bytes is not None:
            own_outside = oom.non_pytorch_bytes
        elif own is not None and oom.reserved_bytes is not None:
            own_outside = own[1] - oom.reserved_bytes
        else:
            own_outside = out - others
        ctx = DEFAULT_CONTEXT_BYTES
        if out < 0:
            lines.append("  Negative: PyTorch holds more than the card has, which a card's own memory cannot do. "
                         "Most likely the driver pages GPU memory out to system RAM (Windows' 'shared GPU "
                         "memory' fallback): the step already exceeds the card and runs slowly before it fails.")
        elif own_outside > ctx + (512 << 20):
            who = ("this process holds it outside PyTorch's allocator: libraries' own buffers (cuDNN/cuBLAS "
                   "workspaces, NCCL), a second framework, or CUDA modules loaded eagerly"
                   if oom.format == "2.x" and (oom.non_pytorch_bytes is not None or own is not None) else
                   "another process or library holds memory PyTorch cannot see or free (check nvidia-smi, "
                   "other notebooks, a second framework)")
            lines.append(f"  That is {fmt(own_outside - ctx)} more than vramplan's default CUDA context "
                         f"({fmt(ctx)}, planner/result.py): {who}.")
        else:
            lines.append(f"  About what a CUDA context takes (vramplan's default: {fmt(ctx)}, planner/result.py)"
                         + (", other processes aside." if others else "."))
        if own is not None:
            lines.append(f"  No 'this process' line: PID {own[0]} (at least PyTorch's reserve) is this process seen "
                         "from outside its container's PID namespace, not another program; it is not counted as one.")
    if out is None and oom.process_in_use_bytes is not None and oom.allocated_bytes is not None:
        lines.append(f"This process outside PyTorch's allocator: at most {fmt(oom.process_in_use_bytes - oom.allocated_bytes)} "
                     f"= in use {fmt(oom.process_in_use_bytes)} - allocated {fmt(oom.allocated_bytes)} (the message "
                     "lacks the reserved-but-unallocated figure that would make it exact; a CUDA context is about "
                     f"{fmt(DEFAULT_CONTEXT_BYTES)}, planner/result.py).")
    if oom.process_in_use_bytes is not None and oom.capacity_bytes is not None and oom.free_bytes is not None:
        elsewhere = oom.capacity_bytes - oom.free_bytes - oom.process_in_use_bytes
        if elsewhere > (256 << 20):
            listed = oom.other_processes_bytes
            lines.append(f"Not in this process at all: {fmt(elsewhere)} = capacity - free - this process's "
                         f"{fmt(oom.process_in_use_bytes)} (other processes"
                         + (f", {fmt(listed)} of them listed" if listed else ", none listed: a display, "
                            "another container, or the driver") + ").")
    lines.append(f"The failing request: {oom.request_text} ({oom.request_bytes:,} B). {_segment_note(oom)}.")
    if oom.shortfall_bytes is not None:
        if oom.shortfall_bytes > 0:
            lines.append(f"  It needed {fmt(oom.shortfall_bytes)} more than was free (request - free).")
        else:
            lines.append(f"  {fmt(-oom.shortfall_bytes)} more than the request was free, yet the driver "
                         "refused it" + (" (and a fraction cap applies)." if oom.allowed_bytes else "."))
    found = causes(oom)
    lines.append("Diagnosis: " + _cause_text(oom, found[0], found))
    lines.extend("Also: " + _cause_text(oom, c, found) for c in found[1:3])
    return lines


def _cause_text(oom: OomReport, cause: str, found: list[str]) -> str:
    """One sentence per cause of :func:`causes`; the advice quotes only what this message itself says."""
    setting = fragmentation_setting(oom)
    why = ""
    if "max_split_size_mb" in setting:
        why = (f" ({max_split_mb(oom)} = the {oom.request_text} request in MiB, rounded up: blocks at least that large "
               "are then never split for smaller tensors, so one stays whole for a request like this; "
               f"{SOURCE.split(',')[0]}, get_free_block)")
    quote = f" The message itself says: \"{oom.hint_text}\"" if oom.hint_text else ""
    if cause == "request_exceeds_card":
        limit = "the allowed cap" if oom.allowed_bytes and oom.allowed_bytes < (oom.capacity_bytes or 1 << 62) else "the card"
        return (f"the request alone is larger than {limit}: no allocator setting helps. A shape far larger than "
                "intended (a wrong dimension, an unintended broadcast) or a setup for a bigger card.")
    if cause == "per_process_cap":
        total = (oom.reserved_bytes or 0) + oom.request_bytes
        return (f"the per-process cap binds: {fmt(oom.allowed_bytes)} allowed (torch.cuda.set_per_process_memory_fraction "
                f"or per_process_memory_fraction in the allocator setting), PyTorch held {fmt(oom.reserved_bytes)} and "
                f"asked {oom.request_text} more = {fmt(total)}, while the card had {fmt(oom.free_bytes)} free. Raise or "
                "drop the fraction where the card is yours; otherwise the step needs less memory.")
    if cause == "other_memory":
        away, cap = oom.elsewhere_bytes or 0, oom.capacity_bytes or 1
        own = oom.own_bytes
        how = (f"capacity - free - this process's {fmt(own)}" if own is not None else
               "capacity - free - reserved by PyTorch (this process's CUDA context, about "
               f"{fmt(DEFAULT_CONTEXT_BYTES)}, included)")
        listed = (f"; listed: {', '.join(f'PID {p} {fmt(b)}' for p, b in oom.foreign_processes)}"
                  if oom.foreign_processes else "")
        return (f"memory held outside this process: {fmt(away)} of the card's {fmt(cap)} ({100 * away / cap:.0f} %) = "
                f"{how}{listed}. Other processes (a second training run, other ranks placed on this GPU, a notebook) "
                "or another program hold it: free them or use another GPU (nvidia-smi lists them) before changing "
                "the step, the allocator setting or the card.")
    if cause == "small_pool":
        return ("a small-pool request: PyTorch serves tensors of at most 1 MiB from 2 MiB segments (kSmallBuffer) that "
                "only such tensors share; none had room and the driver refused a new 2 MiB segment, and reserved-but-"
                f"unallocated memory ({fmt(oom.reserved_unallocated_bytes)}) of the large pool cannot serve it. The card "
                "was full: allocator settings do not help; the step needs less memory or a larger card.")
    if cause == "free_but_refused":
        return (f"the card was full. The driver reported {fmt(oom.free_bytes)} free, more than the request, and still "
                "refused it: the last tens of MiB of a card are often not allocatable (in pieces, or kept by the "
                "driver), and Windows' WDDM keeps more. Treat it as capacity: the step needs less memory (see the "
                "recommendation) or a larger card.")
    if cause == "fragmentation":
        if "free_but_refused" in found:
            return (f"PyTorch's cache also held {fmt(oom.reserved_unallocated_bytes)} reserved but unallocated, more "
                    f"than the request, in blocks too small for it: {setting}{why} may let it reuse them.{quote}")
        return (f"fragmentation. {fmt(oom.reserved_unallocated_bytes)} was reserved but unallocated, more than the "
                f"{oom.request_text} requested, yet no free block was large enough: the request failed for lack of a "
                f"contiguous block. Set {setting}{why}.{quote}")
    if cause == "fragmentation_and_capacity":
        return (f"mostly capacity, partly fragmentation: free ({fmt(oom.free_bytes)}) plus reserved-but-unallocated "
                f"({fmt(oom.reserved_unallocated_bytes)}) would have covered the request, neither alone. {setting}{why} "
                f"may be enough; otherwise the step needs less memory.{quote}")
    if cause == "capacity" and "other_memory" in found:
        whole = f"exact:{oom.capacity_text.replace(' ', '')}" if oom.capacity_text else "the card"
        return ("capacity of what the others left: even the free memory and every cached byte together were too "
                "little for the request. Free the memory held outside this process first; whether the step fits "
                f"the whole card is a recommendation with --gpu {whole}.")
    if cause == "capacity":
        return ("capacity. Even the free memory and every cached byte together were too little; allocator settings "
                "will not help: the step needs less memory (see the recommendation) or a larger card.")
    return "the message lacks the figures to tell fragmentation from capacity."


def explain_json(oom: OomReport) -> dict[str, Any]:
    return {**oom.to_json(), "diagnosis": diagnosis(oom), "causes": causes(oom), "explanation": explain(oom),
            "default_context_bytes": DEFAULT_CONTEXT_BYTES, "source": SOURCE}


# --- which tensor of the step -------------------------------------------------------------------

@dataclass(frozen=True)
class TensorMatch:
    """An allocation of the simulated step that would make the failing request."""

    nbytes: int
    """The tensor's storage, 512-rounded."""
    op: str
    module: str
    network: str
    phase: str
    step: str
    category: str | None
    live_before_bytes: int
    """Allocated bytes of the step just before this allocation (the simulation's)."""
    how: str
    """'tensor': its size is the printed figure; 'segment': the segment it asks for is;
    'near': within 1 % of the printed figure."""
    same_kind: int = 1
    """How many allocations of the step share its op, module and phase and match too."""

    def sentence(self, request_text: str) -> str:
        if self.module:
            where = f" in {self.module}"
        elif self.network and self.network not in (self.phase, f"{self.phase} temporaries"):
            where = f" ({self.network})"
        else:
            where = ""
        size = fmt(self.nbytes)
        what = (f"{request_text} = the {size} output of {self.op}{where}" if self.how == "tensor"
                else f"{request_text} = the segment for the {size} output of {self.op}{where}" if self.how == "segment"
                else f"{request_text} ~ the {size} output of {self.op}{where} (within 1 %)")
        extra = f"; {self.same_kind} such allocations" if self.same_kind > 1 else ""
        return f"{what} ({self.phase}, step {self.step or '-'}{extra})"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def match_request(oom: OomReport, mem: Any, limit: int = 3) -> list[TensorMatch]:
    """The step's allocations that the failing request most likely is, most likely first.

    ``mem`` is the simulation's :class:`planner.analytic.engine.Memory` (its event log
    and ``info``). An allocation matches when its 512-rounded size, or the segment it
    would ask the driver for (:func:`planner.allocator.allocation_size`), equals the
    printed request within its print precision; with none, the nearest within 1 %.
    The step stops at its first failing allocation, so the first match in step order
    that would not have fitted the card's room for PyTorch (capacity - outside PyTorch,
    or - the default CUDA context) comes first; then the matches whose allocated-before
    figure is nearest the message's "allocated by PyTorch" (without it: the largest),
    one per (op, module, phase), each with the count of its kind.
    """
    from planner.allocator import allocation_size

    req, tol = oom.request_bytes, max(oom.request_tolerance, 0)
    exact: list[tuple[int, Any, str]] = []
    near: list[tuple[int, Any]] = []
    live = 0
    info = mem.info
    for uid, d in mem.events:
        if d > 0:
            nb = d
            if abs(nb - req) <= tol:
                exact.append((live, info[uid], "tensor"))
            elif abs(allocation_size(nb) - req) <= tol:
                exact.append((live, info[uid], "segment"))
            elif abs(nb - req) <= req // 100:
                near.append((live, info[uid]))
        live += d
    found = exact or [(lv, a, "near") for lv, a in near]
    if not found:
        return []
    # The step stops at its first failing allocation: with the card's room for PyTorch known,
    # the first match (in step order) that would not have fitted is the one; it comes first.
    room = None
    if oom.capacity_bytes is not None:
        cap = min(oom.capacity_bytes, oom.allowed_bytes or oom.capacity_bytes)
        outside = oom.outside_pytorch_bytes
        room = cap - (outside if outside is not None else DEFAULT_CONTEXT_BYTES)
    first = next((i for i, (lv, a, _h) in enumerate(found) if room is not None and lv + a.nbytes > room), None)
    target = oom.allocated_bytes
    if target is not None:
        key = lambda t: (abs(t[0] - target), t[2] != "tensor")  # noqa: E731
    else:
        key = lambda t: (-t[0], t[2] != "tensor")  # noqa: E731
    rest = sorted((t for i, t in enumerate(found) if i != first), key=key)
    found = ([found[first]] if first is not None else []) + rest
    kinds: dict[tuple[str, str, str], int] = {}
    for _, a, _h in found:
        k = (a.op, a.module, a.phase)
        kinds[k] = kinds.get(k, 0) + 1
    out: list[TensorMatch] = []
    seen: set[tuple[str, str, str]] = set()
    for lv, a, how in found:
        k = (a.op, a.module, a.phase)
        if k in seen:
            continue
        seen.add(k)
        out.append(TensorMatch(a.nbytes, a.op, a.module, a.network, a.phase, a.step, a.category, lv, how, kinds[k]))
        if len(out) == limit:
            break
    return out


def recommendation_card(oom: OomReport):
    """The card the recommendation is for: the message's capacity (or the allowed cap), less what other
    processes held (they will hold it again; this process's own line in a container is not one of them),
    named in GiB. None without a capacity or when nothing is left."""
    from planner.gpus import exact_gpu

    if oom.capacity_bytes is None:
        return None
    cap = min(oom.allowed_bytes or oom.capacity_bytes, oom.capacity_bytes)
    cap -= oom.foreign_bytes
    if cap <= 0:
        return None
    what = "allowed cap" if oom.allowed_bytes and oom.allowed_bytes < oom.capacity_bytes else "total capacity"
    less = f" less other processes' {fmt(oom.foreign_bytes)}" if oom.foreign_bytes else ""
    return exact_gpu(cap, f"the OOM message's {what} {fmt(cap + oom.foreign_bytes)}{less}")


__all__ = ["MAX_INPUT_BYTES", "OomReport", "Size", "TensorMatch", "causes", "diagnosis", "explain", "explain_json",
           "fmt", "fragmentation_setting", "match_request", "max_split_mb", "parse_oom", "problems",
           "recommendation_card", "size_bytes"]
