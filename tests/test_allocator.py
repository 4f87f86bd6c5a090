"""The caching-allocator model against hand-derived segment behaviour."""

from __future__ import annotations

from planner.allocator import CachingAllocatorModel, allocation_size, replay, round_size

MiB = 2**20


def test_sizes():
    assert round_size(1) == 512
    assert round_size(1000) == 1024
    assert allocation_size(512) == 2 * MiB  # small request -> 2 MiB small segment
    assert allocation_size(1 * MiB) == 2 * MiB  # exactly kSmallSize is still small
    assert allocation_size(1 * MiB + 512) == 20 * MiB  # large but < 10 MiB -> 20 MiB segment
    assert allocation_size(10 * MiB) == 10 * MiB  # >= 10 MiB: rounded up to 2 MiB
    assert allocation_size(11 * MiB) == 12 * MiB


def test_small_requests_share_a_2mib_segment():
    m = CachingAllocatorModel()
    for i in range(4096):  # 4096 x 512 B = 2 MiB exactly: one segment
        m.malloc(i, 512)
    assert m.reserved == 2 * MiB
    m.malloc(9999, 512)  # the 4097th needs a second segment
    assert m.reserved == 4 * MiB
    assert m.allocated == 4097 * 512


def test_large_block_is_not_split_when_the_remainder_is_at_most_1mib():
    m = CachingAllocatorModel()
    m.malloc(1, 11 * MiB)  # new 12 MiB segment; remainder 1 MiB is not > kSmallSize: no split
    assert m.reserved == 12 * MiB
    assert m.allocated == 12 * MiB  # allocated_bytes counts the whole block
    m.free(1)
    m.malloc(2, 4 * MiB)  # reuses the cached 12 MiB block, split (remainder 8 MiB > 1 MiB)
    assert m.reserved == 12 * MiB
    assert m.allocated == 4 * MiB


def test_free_blocks_merge_and_are_reused():
    # 3 x 6 MiB from one 20 MiB segment? No: the first 6 MiB request (< 10 MiB) opens a
    # 20 MiB segment and splits it (remainder 14 MiB); the next two come from the remainder.
    events = [(1, 6 * MiB), (2, 6 * MiB), (3, 6 * MiB), (1, -6 * MiB), (2, -6 * MiB), (4, 12 * MiB)]
    st = replay(events)
    # 1 and 2 merge into one free 12 MiB block that serves request 4: still one segment
    assert st.peak_reserved_bytes == 20 * MiB
    assert st.segments == 1
    assert st.peak_allocated_bytes == 18 * MiB


def test_reset_peak_at_iteration_start():
    events = [(1, 8 * MiB), (1, -8 * MiB), (2, 1 * MiB)]
    assert replay(events).peak_allocated_bytes == 8 * MiB
    assert replay(events, reset_peak_at=2).peak_allocated_bytes == 1 * MiB
