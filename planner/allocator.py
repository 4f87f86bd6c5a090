"""A model of PyTorch's CUDA caching allocator, replayed over an alloc/free stream.

Gives ``peak_reserved_bytes`` (what ``torch.cuda.max_memory_reserved()`` reports)
from the sequence of tensor allocations the tracker (or the estimator) produced.
It follows ``c10/cuda/CUDACachingAllocator.cpp`` (read at pytorch commit
eb42ad6eca0ce61e7c581212b4bf32f991425571; functions are cited by name, the file
being too large to fetch whole here for line numbers) with one stream. Default
configuration (``AllocatorConfig()``):

* every request is rounded up to 512 bytes (``kMinBlockSize``, ``round_size``);
* requests of at most 1 MiB (``kSmallSize``) use the small pool, others the large;
* a request takes the smallest cached free block of its pool that fits
  (``get_free_block``: best fit by size, then address);
* with none, a new segment is ``cudaMalloc``-ed: 2 MiB (``kSmallBuffer``) for small
  requests, 20 MiB (``kLargeBuffer``) for requests under 10 MiB (``kMinLargeAlloc``),
  else the request rounded up to 2 MiB (``kRoundLarge``; ``get_allocation_size``);
* a block is split when the remainder is >= 512 B (small pool) or > 1 MiB (large
  pool, ``should_split``); a freed block merges with free neighbours in its segment
  (``free_block``/``try_merge_blocks``);
* segments are returned to the driver only by an ``empty_cache`` event (:data:`EMPTY_CACHE`, which
  ``vramplan run`` records where a script calls it; :func:`release_cached_blocks`).

``PYTORCH_CUDA_ALLOC_CONF`` settings (:class:`AllocatorConfig`, :func:`parse_alloc_conf`)
change this as the source does, on the path where no ``cudaMalloc`` fails:

* ``max_split_size_mb`` — ``should_split`` never splits a large-pool block for a
  request >= max_split_size; ``get_free_block`` never hands a cached block of size
  >= max_split_size ("oversize") to a smaller request, and hands one to an oversize
  request only when it is less than ``kLargeBuffer`` (``max_non_split_rounding_mb``
  in newer releases) larger than the request, unsplit.
* ``roundup_power2_divisions`` — ``round_size`` rounds a request above
  512 × divisions up to the next of ``divisions`` equal steps between the powers of
  two around it (``roundup_power2_next_division``); the divisions can differ per
  power-of-two size interval (``CUDAAllocatorConfig::roundup_power2_divisions(size)``,
  16 intervals: [0, 2 MiB), [2, 4) MiB, …, [32 GiB, ∞)).
* ``expandable_segments`` — ``alloc_block`` → ``try_allocate_expandable_block``: one
  segment per pool (and stream) whose mapped part grows by pages of 2 MiB (small
  pool) / 20 MiB (large pool) (``find_expandable_block``: ``segment_size = is_small ?
  kSmallBuffer : kLargeBuffer``); a request that no free block fits extends the
  free block at the end of the mapped range (if any) by just enough pages
  (``ExpandableSegment::map`` rounds to whole pages), so reserved = pages mapped.
  Every block splits when the remainder is >= 512 B (``should_split``), and best fit
  skips the block at the end of the mapped range when another free block fits
  (``get_free_block``'s ``expandable_size``). Pages are unmapped only by
  ``release_cached_blocks`` (``empty_cache`` or a failed allocation), never here.
* ``garbage_collection_threshold`` — before a ``cudaMalloc``, if reserved exceeds
  threshold × the allowed memory, unsplit cached large blocks at least as old as the
  average (age = ``get_free_block`` calls on the pool since the block was cached)
  are ``cudaFree``-d, repeatedly, until reserved is back under the threshold
  (``garbage_collect_cached_blocks``). PyTorch runs this only when a per-process
  memory fraction is set (``set_fraction``: ``torch.cuda.set_per_process_memory_fraction``
  or, in torch 2.13, ``per_process_memory_fraction`` in the conf; the allowed memory
  ``allowed_memory_maximum`` is then fraction × device total), so the replay needs
  the device total as ``capacity_bytes`` and collects only when it is given.

Sources (function names; line numbers only where a local copy could be read):
c10/cuda/CUDACachingAllocator.cpp at pytorch commit eb42ad6e (``round_size``,
``roundup_power2_next_division``, ``get_free_block``, ``should_split``,
``get_allocation_size``, ``alloc_block``, ``try_allocate_expandable_block``,
``find_expandable_block``, ``map_block``, ``ExpandableSegment::map``,
``garbage_collect_cached_blocks``, ``free_block``, ``try_merge_blocks``, ``malloc``);
c10/core/AllocatorConfig.cpp at commit 065861fb (``lexArgs``, ``parseArgs``,
``parseMaxSplitSize``: > kLargeBuffer / 1 MiB up to torch 2.8, ``parseGarbageCollectionThreshold``:
in (0, 1), ``parseRoundUpPower2Divisions``, ``roundup_power2_divisions(size)``);
torch 2.13.0's installed headers: c10/core/AllocatorConfig.h:80-95
(``ConfigTokenizer::toBool``: only "True"/"False"), :180-214 (the settings'
accessors), c10/cuda/CUDAAllocatorConfig.h:160-175 (the CUDA-specific keys).

Not modelled: fragmentation across streams, the retry after a failed ``cudaMalloc``
(``release_available_cached_blocks``, ``release_cached_blocks``), the
``cudaMallocAsync`` backend, or cuDNN/cuBLAS workspaces (device-profile terms). Torch-free.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import replace
from typing import Iterable

from planner.records import dataclass
from planner.errors import PlannerError, quote

K_MIN_BLOCK = 512
K_SMALL_SIZE = 1 << 20
K_SMALL_BUFFER = 2 << 20
K_LARGE_BUFFER = 20 << 20
K_MIN_LARGE_ALLOC = 10 << 20
K_ROUND_LARGE = 2 << 20
MiB = 1 << 20

ROUNDUP_INTERVALS = 16
"""``kRoundUpPowerOfTwoIntervals``: divisions are set per power-of-two size interval,
from 1 MiB (``kRoundUpPowerOfTwoStart``) to 64 GiB (``kRoundUpPowerOfTwoEnd``)."""


def round_size(size: int) -> int:
    if size < K_MIN_BLOCK:
        return K_MIN_BLOCK
    return -(-size // K_MIN_BLOCK) * K_MIN_BLOCK


def allocation_size(size: int) -> int:
    """Segment size cudaMalloc-ed for a request that found no cached block."""
    if size <= K_SMALL_SIZE:
        return K_SMALL_BUFFER
    if size < K_MIN_LARGE_ALLOC:
        return K_LARGE_BUFFER
    return -(-size // K_ROUND_LARGE) * K_ROUND_LARGE


def roundup_power2_next_division(size: int, divisions: int) -> int:
    """``DeviceCachingAllocator::roundup_power2_next_division``: ``size`` rounded up to
    the next of ``divisions`` equal steps between the powers of two around it
    (1200 B, 4 divisions: 1024, 1280, 1536, 1792 -> 1280). Sizes <= 4, powers of two
    and ``divisions <= 1`` come back unchanged."""
    if size <= 4 or divisions <= 1:
        return size
    if size & (size - 1) == 0:
        return size
    power2_floor = 1 << (size.bit_length() - 1)
    step = power2_floor >> (divisions.bit_length() - 1)  # 63 - clz(divisions)
    if step == 0:
        return power2_floor << 1
    floor = size & ~(step - 1)
    return size if floor == size else floor + step


def roundup_interval(size: int) -> int:
    """Index of ``size``'s interval in the divisions table
    (``AllocatorConfig::roundup_power2_divisions(size)``: log2(size) - 20, clamped to
    0..15; interval 0 is everything under 2 MiB, 15 everything from 32 GiB)."""
    return min(max(size.bit_length() - 1 - 20, 0), ROUNDUP_INTERVALS - 1)


MIN_MAX_SPLIT_SIZE_MB = K_LARGE_BUFFER // MiB + 1
"""Smallest max_split_size_mb accepted: CUDAAllocatorConfig::parseMaxSplitSize checks
``val > kLargeBuffer / 1 MiB`` (> 20) up to torch 2.8; torch 2.9+'s
AcceleratorAllocatorConfig::parseMaxSplitSize accepts 20 too. 21 is valid on all."""
_MIN_MB_SOURCE = {
    "max_split_size_mb": "must be > kLargeBuffer / 1 MiB = 20: CUDAAllocatorConfig::parseMaxSplitSize",
    "max_non_split_rounding_mb": "must be >= kLargeBuffer / 1 MiB: AllocatorConfig::parseMaxNonSplitRoundingSize",
}


@dataclass(frozen=True)
class AllocatorConfig:
    """The ``PYTORCH_CUDA_ALLOC_CONF`` settings the replay models (defaults = PyTorch's).

    ``roundup_power2_divisions``: one number for every size (``roundup_power2_divisions:4``)
    or the 16-entry table :func:`parse_alloc_conf` builds from the list form
    (``roundup_power2_divisions:[256:1,512:2,>:8]``), entry *i* for requests in
    [2^(20+i), 2^(21+i)) bytes (entry 0 also covers smaller ones, entry 15 larger
    ones). 0 disables rounding (the default), else a power of two.
    ``max_non_split_rounding_mb``: newer releases' name for how much larger than an
    oversize request a cached oversize block may be (default ``kLargeBuffer``, 20 MiB).
    """

    expandable_segments: bool = False
    max_split_size_mb: int | None = None
    roundup_power2_divisions: int | tuple[int, ...] = 0
    garbage_collection_threshold: float | None = None
    max_non_split_rounding_mb: int | None = None
    per_process_memory_fraction: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.expandable_segments, bool):
            raise PlannerError(f"expandable_segments: expected True or False, got {quote(self.expandable_segments)}")
        mins = (("max_split_size_mb", MIN_MAX_SPLIT_SIZE_MB), ("max_non_split_rounding_mb", K_LARGE_BUFFER // MiB))
        for key, least in mins:
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < least):
                raise PlannerError(f"{key}: must be an integer >= {least}, got {quote(v)} ({_MIN_MB_SOURCE[key]})")
        g = self.garbage_collection_threshold
        if g is not None and (isinstance(g, bool) or not isinstance(g, (int, float)) or not 0.0 < g < 1.0):
            raise PlannerError(
                f"garbage_collection_threshold: must be in (0.0, 1.0), got {quote(g)} "
                "(AllocatorConfig::parseGarbageCollectionThreshold)"
            )
        f = self.per_process_memory_fraction
        if f is not None and (isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 < f <= 1.0):
            raise PlannerError(f"per_process_memory_fraction: must be in (0.0, 1.0], got {quote(f)}")
        d = self.roundup_power2_divisions
        if isinstance(d, list):
            object.__setattr__(self, "roundup_power2_divisions", d := tuple(d))
        values = d if isinstance(d, tuple) else (d,)
        if isinstance(d, tuple) and len(d) != ROUNDUP_INTERVALS:
            raise PlannerError(
                f"roundup_power2_divisions: a table needs {ROUNDUP_INTERVALS} entries (one per power-of-two "
                f"size interval from 1 MiB), got {len(d)}"
            )
        if isinstance(d, tuple) and len(set(d)) == 1 and isinstance(d[0], int) and not isinstance(d[0], bool):
            object.__setattr__(self, "roundup_power2_divisions", d[0])  # a uniform table is one number
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v & (v - 1):
                raise PlannerError(
                    f"roundup_power2_divisions: the divisions have to be a power of 2 (or 0 to disable), "
                    f"got {quote(v)} (AllocatorConfig::parseRoundUpPower2Divisions)"
                )

    @property
    def divisions_table(self) -> tuple[int, ...]:
        d = self.roundup_power2_divisions
        return d if isinstance(d, tuple) else (d,) * ROUNDUP_INTERVALS

    @property
    def is_default(self) -> bool:
        return self == _DEFAULT_CONFIG

    def to_alloc_conf(self) -> str:
        """The ``PYTORCH_CUDA_ALLOC_CONF`` string for these settings ("" for the default).
        A per-interval table is written entry by entry (``[1:d0,2:d1,...]``, sizes in MiB)."""
        parts = []
        if self.expandable_segments:
            parts.append("expandable_segments:True")
        if self.max_split_size_mb is not None:
            parts.append(f"max_split_size_mb:{self.max_split_size_mb}")
        if self.max_non_split_rounding_mb is not None:
            parts.append(f"max_non_split_rounding_mb:{self.max_non_split_rounding_mb}")
        d = self.roundup_power2_divisions
        if isinstance(d, tuple):
            if any(d):
                parts.append("roundup_power2_divisions:[" + ",".join(f"{1 << i}:{v}" for i, v in enumerate(d)) + "]")
        elif d:
            parts.append(f"roundup_power2_divisions:{d}")
        if self.garbage_collection_threshold is not None:
            parts.append(f"garbage_collection_threshold:{self.garbage_collection_threshold}")
        if self.per_process_memory_fraction is not None:
            parts.append(f"per_process_memory_fraction:{self.per_process_memory_fraction}")
        return ",".join(parts)


_DEFAULT_CONFIG = AllocatorConfig()

# Options of torch 2.13's parser (CUDAAllocatorConfig.h getKeys, AllocatorConfig.h) that do
# not change device memory on the path modelled here: accepted, validated, ignored.
_BOOL_KEYS_IGNORED = (
    "release_lock_on_cudamalloc",
    "release_lock_on_hipmalloc",
    "pinned_use_cuda_host_register",
    "pinned_use_hip_host_register",
    "pinned_use_background_threads",
    "graph_capture_record_stream_reuse",
    "pinned_free_catch_all",
    "throw_on_cudamalloc_oom",
)
_INT_KEYS_IGNORED = ("pinned_num_register_threads", "pinned_reserve_segment_size_mb")
_MODELLED_KEYS = (
    "expandable_segments",
    "max_split_size_mb",
    "max_non_split_rounding_mb",
    "roundup_power2_divisions",
    "garbage_collection_threshold",
    "per_process_memory_fraction",
    "backend",
)
VALID_KEYS = _MODELLED_KEYS + _BOOL_KEYS_IGNORED + _INT_KEYS_IGNORED
MAX_ALLOC_CONF_CHARS = 4096


def _lex(text: str) -> list[str]:
    """``AllocatorConfig::lexArgs``: ``, : [ ]`` are tokens of their own, spaces dropped."""
    tokens: list[str] = []
    buf: list[str] = []
    for c in text:
        if c in ",:[]":
            if buf:
                tokens.append("".join(buf))
                buf.clear()
            tokens.append(c)
        elif c != " ":
            buf.append(c)
    if buf:
        tokens.append("".join(buf))
    return tokens


def _int(key: str, token: str | None, what: str) -> int:
    if token is None or not token.isdigit() or len(token) > 20:
        raise PlannerError(f"{key}: expected {what}, got {quote(token) if token is not None else 'nothing'}")
    return int(token)


def parse_alloc_conf(text: str | None) -> AllocatorConfig:
    """Parse a ``PYTORCH_CUDA_ALLOC_CONF`` string the way ``AllocatorConfig::parseArgs``
    (c10/core/AllocatorConfig.cpp; CUDAAllocatorConfig::parseArgs in older releases)
    does: comma-separated ``key:value``, ``roundup_power2_divisions`` also as a list
    ``[<MiB>:<divisions>,...,>:<divisions>]``.

    Modelled keys: expandable_segments (True/False), max_split_size_mb (> 20),
    max_non_split_rounding_mb (>= 20), roundup_power2_divisions (powers of 2),
    garbage_collection_threshold (in (0, 1)), backend (native only). Accepted and
    ignored (no effect on device memory): release_lock_on_cudamalloc,
    pinned_use_cuda_host_register, pinned_num_register_threads,
    pinned_use_background_threads. Anything else raises :class:`PlannerError` naming
    the key and what is valid.
    """
    if text is None:
        return _DEFAULT_CONFIG
    if not isinstance(text, str):
        raise PlannerError(f"PYTORCH_CUDA_ALLOC_CONF: expected a string, got {quote(text)}")
    if len(text) > MAX_ALLOC_CONF_CHARS:
        raise PlannerError(
            f"PYTORCH_CUDA_ALLOC_CONF is {len(text):,} characters (valid: at most {MAX_ALLOC_CONF_CHARS:,})"
        )
    tok = _lex(text)
    n = len(tok)
    fields: dict[str, object] = {}
    i = 0

    def value_after_colon(key: str) -> str | None:
        nonlocal i
        if i + 1 >= n or tok[i + 1] != ":":
            raise PlannerError(f"{key}: expected '{key}:<value>' (e.g. {_EXAMPLES.get(key, key + ':...')})")
        i += 2
        return tok[i] if i < n and tok[i] not in ",:[]" else None

    while i < n:
        key = tok[i]
        if key == ",":  # tolerate empty items ("a:1,,b:2" / a trailing comma)
            i += 1
            continue
        if key == "expandable_segments" or key in _BOOL_KEYS_IGNORED:
            v = value_after_colon(key)
            if v not in ("True", "False"):
                got = quote(v) if v else "nothing"
                raise PlannerError(f"{key}: expected True or False (as PyTorch spells them), got {got}")
            fields[key] = v == "True"
        elif key in ("max_split_size_mb", "max_non_split_rounding_mb"):
            least = MIN_MAX_SPLIT_SIZE_MB if key == "max_split_size_mb" else K_LARGE_BUFFER // MiB
            v = _int(key, value_after_colon(key), f"an integer number of MiB >= {least}")
            if v < least:
                raise PlannerError(f"{key}: {_MIN_MB_SOURCE[key]}, got {v}")
            fields[key] = v
        elif key == "per_process_memory_fraction":
            v = value_after_colon(key)
            try:
                f = float(v) if v is not None else None
            except ValueError:
                f = None
            if f is None or not 0.0 < f <= 1.0:
                raise PlannerError(f"{key}: must be a number in (0.0, 1.0], got {quote(v) if v else 'nothing'}")
            fields[key] = f
        elif key == "garbage_collection_threshold":
            v = value_after_colon(key)
            try:
                g = float(v) if v is not None else None
            except ValueError:
                g = None
            if g is None or not 0.0 < g < 1.0:
                raise PlannerError(
                    f"{key}: must be a number in (0.0, 1.0), got {quote(v) if v else 'nothing'} "
                    "(AllocatorConfig::parseGarbageCollectionThreshold)"
                )
            fields[key] = g
        elif key == "roundup_power2_divisions":
            v = value_after_colon(key)
            if v is None and i < n and tok[i] == "[":
                fields[key], i = _parse_divisions_list(tok, i)
            else:
                d = _int(key, v, "a power of 2 or a list [<MiB>:<divisions>,...,>:<divisions>]")
                if d == 0 or d & (d - 1):
                    raise PlannerError(
                        f"{key}: the divisions have to be a power of 2, got {d} "
                        "(AllocatorConfig::parseRoundUpPower2Divisions)"
                    )
                fields[key] = d
        elif key == "backend":
            v = value_after_colon(key)
            if v != "native":
                raise PlannerError(
                    f"backend: only 'native' (the caching allocator) is modelled, got {quote(v) if v else 'nothing'} "
                    "(cudaMallocAsync is not)"
                )
            fields[key] = v
        elif key == "pinned_num_register_threads":
            v = _int(key, value_after_colon(key), "a power of 2")
            if v == 0 or v & (v - 1) or v > 128:
                raise PlannerError(f"{key}: has to be a power of 2 up to 128, got {v}")
            fields[key] = v
        elif key in _INT_KEYS_IGNORED:
            fields[key] = _int(key, value_after_colon(key), "a non-negative integer")
        else:
            raise PlannerError(f"PYTORCH_CUDA_ALLOC_CONF: unknown option {quote(key)} (valid: {', '.join(VALID_KEYS)})")
        i += 1
        if i < n:
            if tok[i] != ",":
                raise PlannerError(f"{key}: expected ',' after its value, got {quote(tok[i])}")
            i += 1
    return AllocatorConfig(**{k: v for k, v in fields.items() if k in AllocatorConfig.__dataclass_fields__})


_EXAMPLES = {
    "expandable_segments": "expandable_segments:True",
    "max_split_size_mb": "max_split_size_mb:128",
    "max_non_split_rounding_mb": "max_non_split_rounding_mb:64",
    "roundup_power2_divisions": "roundup_power2_divisions:4 or roundup_power2_divisions:[256:1,>:4]",
    "garbage_collection_threshold": "garbage_collection_threshold:0.8",
    "backend": "backend:native",
}


def with_expandable_segments(alloc_conf: str | None) -> str | None:
    """``alloc_conf`` with ``expandable_segments:True`` added, the allocator change every search
    offers (the same step and speed, less reserved beyond the live tensors); None where the
    settings have it already."""
    conf = parse_alloc_conf(alloc_conf or None)
    return None if conf.expandable_segments else replace(conf, expandable_segments=True).to_alloc_conf()


def _parse_divisions_list(tok: list[str], i: int) -> tuple[tuple[int, ...], int]:
    """``AllocatorConfig::parseRoundUpPower2Divisions``, list form; ``tok[i] == '['``.
    Returns the 16-entry table and the index of the closing ']'.

    As the source: ``<MiB>:<d>`` sets the entry log2(MiB) (clamped to 0..15), the
    first pair also every entry below it; ``>:<d>`` sets every entry from the last
    one set onwards (that one included, so ``[...,1024:4,>:8]`` leaves 8, not 4, for
    [1, 2) GiB). PyTorch's documentation reads the sizes one interval lower; this
    follows the code.
    """
    key = "roundup_power2_divisions"
    table = [0] * ROUNDUP_INTERVALS
    first, last_index = True, 0
    n = len(tok)
    i += 1
    while i < n and tok[i] != "]":
        size_tok = tok[i]
        if i + 2 >= n or tok[i + 1] != ":":
            raise PlannerError(f"{key}: expected <MiB>:<divisions> or >:<divisions> in the list, got {quote(size_tok)}")
        d = _int(key, tok[i + 2], "a number of divisions (a power of 2, or 0)")
        if d & (d - 1):
            raise PlannerError(
                f"{key}: the divisions have to be a power of 2 or 0, got {d} "
                "(AllocatorConfig::parseRoundUpPower2Divisions)"
            )
        if size_tok == ">":
            for j in range(last_index, ROUNDUP_INTERVALS):
                table[j] = d
        else:
            mb = _int(key, size_tok, "a size in MiB (a power of 2) or '>'")
            if mb == 0 or mb & (mb - 1):
                raise PlannerError(f"{key}: the interval sizes have to be a power of 2 (MiB), got {mb}")
            index = min(mb.bit_length() - 1, ROUNDUP_INTERVALS - 1)
            if first:
                for j in range(index):
                    table[j] = d
                first = False
            table[index] = d
            last_index = index
        i += 3
        if i < n and tok[i] == ",":
            i += 1
        elif i < n and tok[i] != "]":
            raise PlannerError(f"{key}: expected ',' or ']' in the list, got {quote(tok[i])}")
    if i >= n:
        raise PlannerError(f"{key}: the list has no closing ']'")
    return tuple(table), i


class _Block:
    __slots__ = ("addr", "size", "free", "prev", "next", "small", "req", "gc_base")

    def __init__(self, addr: int, size: int, small: bool) -> None:
        self.addr = addr
        self.size = size
        self.free = True
        self.prev: _Block | None = None
        self.next: _Block | None = None
        self.small = small
        self.req = 0  # the 512-rounded request it serves while allocated (default model: only if unsplit and larger)
        self.gc_base = 0  # get_free_block calls on its pool when it was last cached (GC age)


@dataclass(frozen=True)
class AllocatorStats:
    peak_allocated_bytes: int
    """Peak of the allocator's allocated_bytes stat (block sizes, incl. unsplit remainders)."""
    peak_reserved_bytes: int
    """Peak of the bytes held in cudaMalloc-ed segments (mapped pages with expandable_segments)."""
    segments: int
    """Number of segments at the end (expandable segments count once each)."""
    fragmentation_bytes: int = 0
    """Reserved minus requested bytes at the reserved peak: at the instant reserved
    first reached ``peak_reserved_bytes`` (right after the cudaMalloc / page mapping
    that got it there, the request that caused it included), reserved minus the sum
    of the live requests, each rounded to 512 B only. So it counts free cached blocks,
    unsplit remainders, segment and page rounding and ``roundup_power2_divisions``
    rounding. (If ``reset_peak_at`` finds reserved below its earlier peak, as only
    garbage collection can make it, the measured window's peak starts there.)"""
    config: AllocatorConfig = _DEFAULT_CONFIG
    """The allocator settings replayed."""
    free_at_allocated_peak_bytes: int = 0
    """Reserved minus allocated when allocated first reaches its peak: the cached free blocks while the
    live tensors peak (what fragmentation costs when it matters; at the reserved peak the cache may be
    full of free blocks, which says little)."""
    largest_free_block_at_allocated_peak_bytes: int = 0
    """The largest cached free block of the large pool at that moment: the largest request (> 1 MiB) the
    cache could have served then; a larger one needs a new segment from the driver."""


class _AllocatedPeak:
    """What both models record when allocated reaches a new peak (AllocatorStats' *_at_allocated_peak_bytes)."""

    def _allocated_peak(self) -> None:
        self.peak_allocated = self.allocated
        self.free_at_peak = self.reserved - self.allocated
        large = self._pools[False]
        self.largest_at_peak = large[-1][0] if large else 0

    def stats(self) -> AllocatorStats:
        return AllocatorStats(self.peak_allocated, self.peak_reserved, self.segments, self.fragmentation, self.config,
                              self.free_at_peak, self.largest_at_peak)


class CachingAllocatorModel(_AllocatedPeak):
    """The default configuration (fast path: ~13,000 events per estimate)."""

    config = _DEFAULT_CONFIG

    def __init__(self) -> None:
        self._pools: dict[bool, list[tuple[int, int, _Block]]] = {True: [], False: []}
        self._next_addr = 0
        self.reserved = 0
        self.allocated = 0
        self.extra = 0  # allocated - requested: unsplit remainders of live blocks
        self.peak_reserved = 0
        self.peak_allocated = 0
        self.fragmentation = 0
        self.segments = 0
        self.free_at_peak = 0
        self.largest_at_peak = 0
        self._live: dict[int, _Block] = {}

    @property
    def requested(self) -> int:
        """Live requested bytes (each rounded to 512 B)."""
        return self.allocated - self.extra

    # malloc/free run once per simulated allocation (~6,400 each per stage-1 estimate):
    # helpers inlined, module-level bisect functions.
    def malloc(self, key: int, nbytes: int) -> None:
        if nbytes <= 0:
            return
        size = K_MIN_BLOCK if nbytes < K_MIN_BLOCK else -(-nbytes // K_MIN_BLOCK) * K_MIN_BLOCK  # round_size
        small = size <= K_SMALL_SIZE
        pool = self._pools[small]
        i = bisect_left(pool, (size, -1))
        if i < len(pool):
            block = pool.pop(i)[2]
        else:
            seg = allocation_size(size)
            block = _Block(self._next_addr, seg, small)
            self._next_addr += seg
            self.reserved += seg
            self.segments += 1
            if self.reserved > self.peak_reserved:
                self.peak_reserved = self.reserved
                self.fragmentation = self.reserved - (self.allocated - self.extra) - size
        remaining = block.size - size
        if (remaining >= K_MIN_BLOCK) if small else (remaining > K_SMALL_SIZE):
            rest = _Block(block.addr + size, remaining, small)
            nxt = block.next
            rest.prev, rest.next = block, nxt
            if nxt is not None:
                nxt.prev = rest
            block.next = rest
            block.size = size
            insort(pool, (remaining, rest.addr, rest))
        elif remaining:  # an unsplit remainder: allocated, not requested (rare; kept off the hot path)
            block.req = size
            self.extra += remaining
        block.free = False
        self._live[key] = block
        self.allocated += block.size
        if self.allocated > self.peak_allocated:
            self._allocated_peak()

    def free(self, key: int) -> None:
        block = self._live.pop(key, None)
        if block is None:
            return
        self.allocated -= block.size
        if block.req:
            self.extra -= block.size - block.req
            block.req = 0
        block.free = True
        pool = self._pools[block.small]
        prev = block.prev
        if prev is not None and prev.free:  # merge with the free block before
            del pool[bisect_left(pool, (prev.size, prev.addr))]
            prev.size += block.size
            prev.next = block.next
            if block.next is not None:
                block.next.prev = prev
            block = prev
        nxt = block.next
        if nxt is not None and nxt.free:  # and with the free block after
            del pool[bisect_left(pool, (nxt.size, nxt.addr))]
            block.size += nxt.size
            block.next = nxt.next
            if nxt.next is not None:
                nxt.next.prev = block
        insort(pool, (block.size, block.addr, block))

    def reset_peaks(self) -> None:
        """``torch.cuda.reset_peak_memory_stats()``: peaks restart from the current values."""
        self._allocated_peak()
        if self.reserved < self.peak_reserved:  # never here (reserved never shrinks); kept for symmetry
            self.peak_reserved = self.reserved
            self.fragmentation = self.reserved - self.requested


_NO_MAX_SPLIT = 1 << 62  # max_split_size's default, std::numeric_limits<size_t>::max()
_EXPANDABLE_VA = 1 << 48  # virtual address range one expandable segment reserves (only its start matters)


class ConfiguredAllocatorModel(_AllocatedPeak):
    """The caching allocator under any :class:`AllocatorConfig` (slower than
    :class:`CachingAllocatorModel`, which :func:`replay` uses for the default; with the
    default config both give identical results).

    ``capacity_bytes``: the device's total memory. Only ``garbage_collection_threshold``
    uses it, with the allowed memory ``allowed_memory_maximum`` = capacity ×
    ``per_process_memory_fraction`` (1.0 when the config sets none). None disables
    garbage collection, as PyTorch does when no memory fraction is set
    (``garbage_collect_cached_blocks`` runs only when ``set_fraction``). Exceeding the
    allowed memory is not modelled (no OOM, no retry): the replay carries on.
    """

    def __init__(self, config: AllocatorConfig = _DEFAULT_CONFIG, capacity_bytes: int | None = None) -> None:
        self.config = config
        self._max_split = config.max_split_size_mb * MiB if config.max_split_size_mb is not None else _NO_MAX_SPLIT
        self._non_split_rounding = (
            config.max_non_split_rounding_mb * MiB if config.max_non_split_rounding_mb is not None else K_LARGE_BUFFER
        )
        table = config.divisions_table
        self._divisions = table if any(table) else None
        self._expandable = config.expandable_segments
        self._gc_threshold: int | None = None
        # garbage_collect_cached_blocks frees only unsplit blocks; an expandable segment's
        # blocks are always split (the last mapped one borders the unmapped rest), so GC
        # never finds one there.
        if config.garbage_collection_threshold is not None and capacity_bytes is not None and not self._expandable:
            fraction = config.per_process_memory_fraction or 1.0
            allowed = int(fraction * capacity_bytes)  # setMemoryFraction: allowed_memory_maximum
            self._gc_threshold = int(config.garbage_collection_threshold * allowed)
        self._pools: dict[bool, list[tuple[int, int, _Block]]] = {True: [], False: []}
        self._calls = {True: 0, False: 0}  # BlockPool::get_free_blocks_call_count
        self._es_end: dict[bool, int] = {}  # expandable: first unmapped address of the pool's segment
        self._es_last: dict[bool, _Block | None] = {}  # expandable: the last mapped block
        self._next_addr = 0
        self.reserved = 0
        self.allocated = 0
        self.requested = 0
        self.peak_reserved = 0
        self.peak_allocated = 0
        self.fragmentation = 0
        self.segments = 0
        self.free_at_peak = 0
        self.largest_at_peak = 0
        self.gc_released_bytes = 0
        self._live: dict[int, _Block] = {}

    def round_size(self, nbytes: int) -> int:
        """``DeviceCachingAllocator::round_size`` with this config's divisions."""
        if nbytes < K_MIN_BLOCK:
            return K_MIN_BLOCK
        if self._divisions is not None:
            d = self._divisions[roundup_interval(nbytes)]
            if d > 0 and nbytes > K_MIN_BLOCK * d:
                return roundup_power2_next_division(nbytes, d)
        return -(-nbytes // K_MIN_BLOCK) * K_MIN_BLOCK

    def _get_free_block(self, small: bool, size: int) -> _Block | None:
        """``get_free_block``."""
        pool = self._pools[small]
        if self._gc_threshold is not None:
            self._calls[small] += 1  # tracked only when garbage collection is on
        i = bisect_left(pool, (size, -1))
        if i >= len(pool):
            return None
        block = pool[i][2]
        if self._expandable and block is self._es_last.get(small) and i + 1 < len(pool):
            # expandable_size: the block bordering the unmapped rest counts as the size
            # it can grow to, so best fit takes the next larger free block first
            i += 1
            block = pool[i][2]
        if size < self._max_split and block.size >= self._max_split:
            return None  # do not return an oversized block for a smaller request
        if size >= self._max_split and block.size >= size + self._non_split_rounding:
            return None  # an oversize block is reused only within kLargeBuffer of the request
        del pool[i]
        return block

    def _grew(self, req: int) -> None:
        if self.reserved > self.peak_reserved:
            self.peak_reserved = self.reserved
            self.fragmentation = self.reserved - self.requested - req

    def _alloc_segment(self, small: bool, size: int, req: int) -> _Block:
        """``alloc_block``: a new cudaMalloc-ed segment."""
        seg = allocation_size(size)
        block = _Block(self._next_addr, seg, small)
        self._next_addr += seg
        self.reserved += seg
        self.segments += 1
        self._grew(req)
        return block

    def _alloc_expandable(self, small: bool, size: int, req: int) -> _Block:
        """``try_allocate_expandable_block`` on the no-OOM path: map whole pages after
        the segment's mapped end, merging with the free block there if there is one."""
        page = K_SMALL_BUFFER if small else K_LARGE_BUFFER
        if small not in self._es_end:  # find_expandable_block: a new ExpandableSegment
            self._es_end[small] = self._next_addr
            self._es_last[small] = None
            self._next_addr += _EXPANDABLE_VA
            self.segments += 1
        last = self._es_last[small]
        if last is not None and last.free:
            pool = self._pools[small]
            del pool[bisect_left(pool, (last.size, last.addr))]
            mapped = max(0, -(-(size - last.size) // page) * page)
            last.size += mapped
            block = last
        else:
            mapped = -(-size // page) * page
            block = _Block(self._es_end[small], mapped, small)
            block.prev = last
            if last is not None:
                last.next = block
            self._es_last[small] = block
        self._es_end[small] += mapped
        self.reserved += mapped
        self._grew(req)
        return block

    def _garbage_collect(self) -> None:
        """``garbage_collect_cached_blocks``: free unsplit cached large blocks, oldest
        (>= average age) first, pass after pass, until reserved is under the threshold."""
        threshold = self._gc_threshold
        if threshold is None or self.reserved <= threshold:
            return
        target = self.reserved - threshold
        pool = self._pools[False]
        calls = self._calls[False]
        candidates = [b for _, _, b in pool if b.prev is None and b.next is None]
        if not candidates:
            return
        total_age = float(sum(calls - b.gc_base for b in candidates))
        count = len(candidates)
        reclaimed = 0
        freed = True
        while reclaimed < target and freed and count > 0:
            age_threshold = total_age / count
            freed = False
            kept = []
            for b in candidates:  # in pool (size, address) order, as the source walks large_blocks
                age = calls - b.gc_base
                if age >= age_threshold:
                    freed = True
                    reclaimed += b.size
                    total_age -= age
                    count -= 1
                    del pool[bisect_left(pool, (b.size, b.addr))]  # release_block: cudaFree
                    self.reserved -= b.size
                    self.segments -= 1
                    self.gc_released_bytes += b.size
                else:
                    kept.append(b)
            candidates = kept

    def malloc(self, key: int, nbytes: int) -> None:
        if nbytes <= 0:
            return
        req = K_MIN_BLOCK if nbytes < K_MIN_BLOCK else -(-nbytes // K_MIN_BLOCK) * K_MIN_BLOCK
        size = self.round_size(nbytes)
        small = size <= K_SMALL_SIZE
        block = self._get_free_block(small, size)
        if block is None:
            if self._gc_threshold is not None:
                self._garbage_collect()
            if self._expandable:
                block = self._alloc_expandable(small, size, req)
            else:
                block = self._alloc_segment(small, size, req)
        remaining = block.size - size
        if small or self._expandable:  # should_split
            split = remaining >= K_MIN_BLOCK
        else:
            split = size < self._max_split and remaining > K_SMALL_SIZE
        if split:  # alloc_found_block
            rest = _Block(block.addr + size, remaining, small)
            nxt = block.next
            rest.prev, rest.next = block, nxt
            if nxt is not None:
                nxt.prev = rest
            block.next = rest
            block.size = size
            rest.gc_base = self._calls[small]
            insort(self._pools[small], (remaining, rest.addr, rest))
            if self._expandable and self._es_last.get(small) is block:
                self._es_last[small] = rest
        block.free = False
        block.req = req
        self._live[key] = block
        self.requested += req
        self.allocated += block.size
        if self.allocated > self.peak_allocated:
            self._allocated_peak()

    def free(self, key: int) -> None:
        """``free_block``: merge with free neighbours (``try_merge_blocks``), cache."""
        block = self._live.pop(key, None)
        if block is None:
            return
        self.allocated -= block.size
        self.requested -= block.req
        block.free = True
        small = block.small
        pool = self._pools[small]
        es_last = self._es_last.get(small) if self._expandable else None
        prev = block.prev
        if prev is not None and prev.free:
            del pool[bisect_left(pool, (prev.size, prev.addr))]
            prev.size += block.size
            prev.next = block.next
            if block.next is not None:
                block.next.prev = prev
            if es_last is block:
                self._es_last[small] = es_last = prev
            block = prev
        nxt = block.next
        if nxt is not None and nxt.free:
            del pool[bisect_left(pool, (nxt.size, nxt.addr))]
            block.size += nxt.size
            block.next = nxt.next
            if nxt.next is not None:
                nxt.next.prev = block
            if es_last is nxt:
                self._es_last[small] = block
        block.gc_base = self._calls[small]  # insert_into_blocks
        insort(pool, (block.size, block.addr, block))

    def reset_peaks(self) -> None:
        """``torch.cuda.reset_peak_memory_stats()``: peaks restart from the current values."""
        self._allocated_peak()
        if self.reserved < self.peak_reserved:
            self.peak_reserved = self.reserved
            self.fragmentation = self.reserved - self.requested



def make_model(
    config: AllocatorConfig = _DEFAULT_CONFIG, capacity_bytes: int | None = None
) -> CachingAllocatorModel | ConfiguredAllocatorModel:
    """The fast default model for the default config, else the configured one."""
    if config.is_default:
        return CachingAllocatorModel()
    return ConfiguredAllocatorModel(config, capacity_bytes)


EMPTY_CACHE = -1
"""The key of a ``(EMPTY_CACHE, 0)`` event: ``torch.cuda.empty_cache()`` at that point of the stream
(``vramplan run`` records one where the script calls it; see :func:`release_cached_blocks`)."""


def release_cached_blocks(model: "CachingAllocatorModel | ConfiguredAllocatorModel") -> bool:
    """``torch.cuda.empty_cache()``: ``release_cached_blocks`` in ``c10/cuda/CUDACachingAllocator.cpp``
    calls ``release_blocks`` on the large and the small pool, which ``cudaFree``-s (``release_block``)
    every cached block that is a whole segment (``!block->prev && !block->next``); a free block of a
    segment that still holds a live block stays. Reserved drops; the peaks do not. With
    ``expandable_segments`` the source unmaps the free pages instead (``unmap_block``): not modelled,
    the cache is kept (returns False)."""
    if getattr(model, "_expandable", False):
        return False
    for small in (True, False):
        pool = model._pools[small]
        kept = []
        for entry in pool:
            block = entry[2]
            if block.prev is None and block.next is None:
                model.reserved -= block.size
                model.segments -= 1
            else:
                kept.append(entry)
        pool[:] = kept
    return True


def replay(
    events: Iterable[tuple[int, int]],
    reset_peak_at: int = 0,
    config: AllocatorConfig = _DEFAULT_CONFIG,
    capacity_bytes: int | None = None,
) -> AllocatorStats:
    """Replay (key, +bytes) allocations and (key, -bytes) frees; return the peaks.

    ``reset_peak_at``: index of the event where the measured iteration starts
    (``torch.cuda.reset_peak_memory_stats()``); reserved never shrinks (except by
    garbage collection), so normally only the allocated peak is affected.
    ``config``: the ``PYTORCH_CUDA_ALLOC_CONF`` settings (:func:`parse_alloc_conf`).
    ``capacity_bytes``: the device's total memory; used only by
    ``garbage_collection_threshold`` (threshold × capacity × ``per_process_memory_fraction``,
    the fraction 1.0 when the config sets none), which has no effect when it is None.
    PyTorch collects only when a memory fraction is set (``set_per_process_memory_fraction``
    or ``per_process_memory_fraction``): pass the capacity only then, to match it.
    """
    if config is None:
        config = _DEFAULT_CONFIG
    if not isinstance(config, AllocatorConfig):
        raise TypeError(f"config: expected an AllocatorConfig, got {type(config).__name__}")
    if capacity_bytes is not None and (
        isinstance(capacity_bytes, bool) or not isinstance(capacity_bytes, int) or capacity_bytes <= 0
    ):
        raise PlannerError(f"capacity_bytes: expected a positive integer, got {quote(capacity_bytes)}")
    model = make_model(config, capacity_bytes)
    events = events if isinstance(events, list) else list(events)
    malloc, free = model.malloc, model.free
    for part, tail in ((events[:reset_peak_at], False), (events[reset_peak_at:], True)):
        if tail and part:  # as the event-by-event loop: reset only when that event exists
            model.reset_peaks()
        for key, delta in part:
            if delta > 0:
                malloc(key, delta)
            elif delta < 0:
                free(key)
            elif key == EMPTY_CACHE:
                release_cached_blocks(model)
    return model.stats()


def allocator_label(conf: str | None) -> str:
    """How a report names the allocator settings it assumes."""
    return f"PYTORCH_CUDA_ALLOC_CONF={conf}" if conf else "default allocator settings"

