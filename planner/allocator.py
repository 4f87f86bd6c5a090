"""A model of PyTorch's CUDA caching allocator, replayed over an alloc/free stream.

Gives ``peak_reserved_bytes`` (what ``torch.cuda.max_memory_reserved()`` reports)
from the sequence of tensor allocations the tracker (or the estimator) produced.
It follows ``c10/cuda/CUDACachingAllocator.cpp`` with its default configuration
(no ``expandable_segments``, no ``max_split_size_mb``, one stream):

* every request is rounded up to 512 bytes (``kMinBlockSize``, ``round_size``);
* requests of at most 1 MiB (``kSmallSize``) use the small pool, others the large;
* a request takes the smallest cached free block of its pool that fits
  (``get_free_block``: best fit by size, then address);
* with none, a new segment is ``cudaMalloc``-ed: 2 MiB (``kSmallBuffer``) for small
  requests, 20 MiB (``kLargeBuffer``) for requests under 10 MiB (``kMinLargeAlloc``),
  else the request rounded up to 2 MiB (``kRoundLarge``);
* a block is split when the remainder is >= 512 B (small pool) or > 1 MiB (large
  pool, ``should_split``); a freed block merges with free neighbours in its segment;
* segments are never returned to the driver during a step (no ``empty_cache``).

It does not model fragmentation across streams, the OOM retry that frees cached
segments, or cuDNN/cuBLAS workspaces (those are device-profile terms). Torch-free.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass
from typing import Iterable

K_MIN_BLOCK = 512
K_SMALL_SIZE = 1 << 20
K_SMALL_BUFFER = 2 << 20
K_LARGE_BUFFER = 20 << 20
K_MIN_LARGE_ALLOC = 10 << 20
K_ROUND_LARGE = 2 << 20


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


class _Block:
    __slots__ = ("addr", "size", "free", "prev", "next", "small")

    def __init__(self, addr: int, size: int, small: bool) -> None:
        self.addr = addr
        self.size = size
        self.free = True
        self.prev: _Block | None = None
        self.next: _Block | None = None
        self.small = small


@dataclass(frozen=True)
class AllocatorStats:
    peak_allocated_bytes: int
    """Peak of the allocator's allocated_bytes stat (block sizes, incl. unsplit remainders)."""
    peak_reserved_bytes: int
    """Peak of the bytes held in cudaMalloc-ed segments."""
    segments: int
    """Number of segments at the end."""


class CachingAllocatorModel:
    def __init__(self) -> None:
        self._pools: dict[bool, list[tuple[int, int, _Block]]] = {True: [], False: []}
        self._next_addr = 0
        self.reserved = 0
        self.allocated = 0
        self.peak_reserved = 0
        self.peak_allocated = 0
        self.segments = 0
        self._live: dict[int, _Block] = {}

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
        block.free = False
        self._live[key] = block
        self.allocated += block.size
        if self.allocated > self.peak_allocated:
            self.peak_allocated = self.allocated

    def free(self, key: int) -> None:
        block = self._live.pop(key, None)
        if block is None:
            return
        self.allocated -= block.size
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

    def stats(self) -> AllocatorStats:
        return AllocatorStats(self.peak_allocated, self.peak_reserved, self.segments)


def replay(events: Iterable[tuple[int, int]], reset_peak_at: int = 0) -> AllocatorStats:
    """Replay (key, +bytes) allocations and (key, -bytes) frees; return the peaks.

    ``reset_peak_at``: index of the event where the measured iteration starts
    (``torch.cuda.reset_peak_memory_stats()``); reserved never shrinks, so only the
    allocated peak is affected.
    """
    model = CachingAllocatorModel()
    events = events if isinstance(events, list) else list(events)
    malloc, free = model.malloc, model.free
    for part, tail in ((events[:reset_peak_at], False), (events[reset_peak_at:], True)):
        if tail and part:  # as the event-by-event loop: reset only when that event exists
            model.peak_allocated = model.allocated
        for key, delta in part:
            if delta > 0:
                malloc(key, delta)
            elif delta < 0:
                free(key)
    return model.stats()
