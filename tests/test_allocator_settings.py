"""PYTORCH_CUDA_ALLOC_CONF settings in the caching-allocator replay, against
hand-derived segment layouts (c10/cuda/CUDACachingAllocator.cpp, functions named in
planner/allocator.py), and the parser against c10's AllocatorConfig::parseArgs."""

from __future__ import annotations

import pytest

from planner.allocator import (
    ROUNDUP_INTERVALS,
    AllocatorConfig,
    CachingAllocatorModel,
    ConfiguredAllocatorModel,
    parse_alloc_conf,
    replay,
    roundup_power2_next_division,
)
from planner.errors import PlannerError

MiB = 2**20


def _free_blocks(model, small=False):
    """(address, size) in MiB of the cached free blocks of a pool."""
    return sorted((b.addr / MiB, b.size / MiB) for _, _, b in model._pools[small])


# --- fragmentation_bytes (default config) ---------------------------------------------


def test_fragmentation_at_the_reserved_peak_default():
    # three 12 MiB requests: each a 12 MiB segment (>= 10 MiB: rounded to 2 MiB), no split;
    # free the middle one (a cached 12 MiB block); 13 MiB does not fit it: a new 14 MiB
    # segment. Reserved peak 12+12+12+14 = 50 MiB, reached with 12+12+13 = 37 MiB live.
    ev = [(1, 12 * MiB), (2, 12 * MiB), (3, 12 * MiB), (2, -12 * MiB), (4, 13 * MiB)]
    st = replay(ev)
    assert st.peak_reserved_bytes == 50 * MiB
    assert st.segments == 4
    assert st.fragmentation_bytes == 50 * MiB - 37 * MiB
    assert st.config == AllocatorConfig()


def test_fragmentation_counts_unsplit_remainders():
    # 11 MiB -> a 12 MiB segment whose 1 MiB remainder is not split (not > kSmallSize):
    # allocated 12 MiB, requested 11 MiB, fragmentation 1 MiB.
    st = replay([(1, 11 * MiB)])
    assert (st.peak_reserved_bytes, st.peak_allocated_bytes, st.fragmentation_bytes) == (12 * MiB, 12 * MiB, 1 * MiB)
    m = CachingAllocatorModel()
    m.malloc(1, 11 * MiB)
    assert m.requested == 11 * MiB
    m.free(1)
    assert m.requested == 0 and m.extra == 0


# --- expandable_segments -------------------------------------------------------------

EXP = AllocatorConfig(expandable_segments=True)


def test_expandable_three_12mib_free_middle_then_13mib():
    # Large-pool pages are 20 MiB (kLargeBuffer); every block splits (should_split:
    # remainder >= 512 B with expandable segments).
    #  A 12: map 1 page [0,20): A [0,12), free tail [12,20) 8 MiB            reserved 20
    #  B 12: no free block >= 12; the tail (8) grows by ceil(4/20) = 1 page: [12,40) 28,
    #        split: B [12,24), tail [24,40) 16                               reserved 40
    #  C 12: the tail (16) is the only fit: C [24,36), tail [36,40) 4        reserved 40
    #  free B: [12,24) 12 MiB free (A and C allocated: no merge)
    #  D 13: no fit (12, 4); the tail (4) grows by ceil(9/20) = 1 page: [36,60) 24,
    #        split: D [36,49), tail [49,60) 11                               reserved 60
    # (the default config holds 50 MiB here: 20 MiB pages can cost more on a toy)
    m = ConfiguredAllocatorModel(EXP)
    for key, size in ((1, 12), (2, 12), (3, 12)):
        m.malloc(key, size * MiB)
    assert m.reserved == 40 * MiB
    assert _free_blocks(m) == [(36, 4)]
    m.free(2)
    m.malloc(4, 13 * MiB)
    assert m.reserved == 60 * MiB
    assert _free_blocks(m) == [(12, 12), (49, 11)]
    st = m.stats()
    assert st.peak_reserved_bytes == 60 * MiB
    assert st.segments == 1  # one expandable segment for the large pool
    assert st.fragmentation_bytes == 60 * MiB - 37 * MiB
    assert st.peak_allocated_bytes == 37 * MiB  # blocks split to the request


def test_expandable_grown_request_reuses_the_segment():
    # The batch-grows case of Note [Expandable Segments]: 30 MiB, freed, then 32 MiB.
    # Default: a 30 MiB segment, cached; 32 does not fit: a new 32 MiB one -> 62 MiB.
    # Expandable: 30 maps 2 pages (40 MiB) and splits (A [0,30), tail [30,40));
    # freeing A merges it with the tail: one free 40 MiB block; 32 fits -> 40 MiB.
    ev = [(1, 30 * MiB), (1, -30 * MiB), (2, 32 * MiB)]
    assert replay(ev).peak_reserved_bytes == 62 * MiB
    st = replay(ev, config=EXP)
    assert st.peak_reserved_bytes == 40 * MiB
    assert st.fragmentation_bytes == 40 * MiB - 30 * MiB  # reached when A mapped 40 for 30 live


def test_expandable_best_fit_skips_the_growable_tail():
    #  A 16: map [0,20): A [0,16), tail [16,20) 4
    #  B 4:  exact fit of the tail, no remainder: B [16,20) is the last mapped block
    #  C 6:  no free block: map a page after B: C [20,26), tail [26,40) 14
    #  free A: [0,16) free
    #  D 10: best fit by size would be the 14 MiB tail, but get_free_block ranks it by
    #        the size it can grow to (expandable_size) and takes A's 16 MiB block:
    #        D [0,10), free [10,16) 6, tail [26,40) 14 untouched.
    m = ConfiguredAllocatorModel(EXP)
    m.malloc(1, 16 * MiB)
    m.malloc(2, 4 * MiB)
    m.malloc(3, 6 * MiB)
    assert _free_blocks(m) == [(26, 14)]
    m.free(1)
    m.malloc(4, 10 * MiB)
    assert _free_blocks(m) == [(10, 6), (26, 14)]
    assert m.reserved == 40 * MiB


def test_expandable_small_pool_pages_are_2mib():
    # small requests (<= 1 MiB) get their own expandable segment with 2 MiB pages:
    # 3 x 1 MiB -> 2 pages (4 MiB); large 12 MiB -> one 20 MiB page elsewhere.
    m = ConfiguredAllocatorModel(EXP)
    for key in range(3):
        m.malloc(key, 1 * MiB)
    assert m.reserved == 4 * MiB
    m.malloc(9, 12 * MiB)
    assert m.reserved == 24 * MiB
    assert m.stats().segments == 2


# --- max_split_size_mb ----------------------------------------------------------------


def test_max_split_oversize_block_not_given_to_a_smaller_request():
    # 24 MiB (a 24 MiB segment), freed; then 12 MiB.
    # Default: the cached 24 MiB block is split (remainder 12 > 1 MiB): reserved 24.
    # max_split_size_mb:21: the block is oversize (>= 21 MiB) and the request is not:
    # get_free_block refuses it -> a new 12 MiB segment: reserved 36.
    ev = [(1, 24 * MiB), (1, -24 * MiB), (2, 12 * MiB)]
    assert replay(ev).peak_reserved_bytes == 24 * MiB
    st = replay(ev, config=AllocatorConfig(max_split_size_mb=21))
    assert st.peak_reserved_bytes == 36 * MiB
    assert st.segments == 2
    assert st.fragmentation_bytes == 36 * MiB - 12 * MiB


def test_max_split_oversize_request_reuses_within_20mib_unsplit():
    cfg = AllocatorConfig(max_split_size_mb=21)
    # (max_split_size_mb:21) 40 MiB freed, then 22 MiB (oversize): 40 < 22 + kLargeBuffer (42) -> reused whole,
    # not split (should_split: size >= max_split_size): allocated 40 MiB, reserved 40.
    m = ConfiguredAllocatorModel(cfg)
    m.malloc(1, 40 * MiB)
    m.free(1)
    m.malloc(2, 22 * MiB)
    assert (m.reserved, m.allocated, m.requested) == (40 * MiB, 40 * MiB, 22 * MiB)
    # 44 MiB freed, then 22 MiB: 44 >= 42 -> not reused: a new 22 MiB segment (66 MiB).
    m = ConfiguredAllocatorModel(cfg)
    m.malloc(1, 44 * MiB)
    m.free(1)
    m.malloc(2, 22 * MiB)
    assert (m.reserved, m.allocated) == (66 * MiB, 22 * MiB)
    # max_non_split_rounding_mb:32 widens the window: 44 < 22 + 32 -> reused, unsplit.
    m = ConfiguredAllocatorModel(AllocatorConfig(max_split_size_mb=21, max_non_split_rounding_mb=32))
    m.malloc(1, 44 * MiB)
    m.free(1)
    m.malloc(2, 22 * MiB)
    assert (m.reserved, m.allocated) == (44 * MiB, 44 * MiB)


def test_max_split_small_requests_still_split_below_it():
    # 6 MiB under max_split_size_mb:128: a 20 MiB kLargeBuffer segment, split (remainder
    # 14 > 1 MiB and 6 < 128 MiB) as by default; a second 6 MiB comes from the rest.
    ev = [(1, 6 * MiB), (2, 6 * MiB)]
    st = replay(ev, config=AllocatorConfig(max_split_size_mb=128))
    assert (st.peak_reserved_bytes, st.peak_allocated_bytes, st.segments) == (20 * MiB, 12 * MiB, 1)


# --- roundup_power2_divisions ----------------------------------------------------------


def test_roundup_power2_next_division():
    assert roundup_power2_next_division(1200, 4) == 1280  # the source's own example
    assert roundup_power2_next_division(33 * MiB, 4) == 40 * MiB  # 32 + 8k MiB steps
    assert roundup_power2_next_division(33 * MiB, 8) == 36 * MiB
    assert roundup_power2_next_division(32 * MiB, 4) == 32 * MiB  # a power of two stays
    assert roundup_power2_next_division(33 * MiB, 1) == 33 * MiB  # divisions <= 1: unchanged


def test_roundup_divisions_replay():
    # three 33 MiB requests. Default: 34 MiB segments (2 MiB rounding), remainder 1 MiB
    # unsplit: reserved = allocated = 102 MiB, fragmentation 102 - 99 = 3 MiB.
    # roundup_power2_divisions:4: each rounds to 40 MiB -> 120 MiB, fragmentation 21 MiB.
    ev = [(k, 33 * MiB) for k in range(3)]
    d = replay(ev)
    assert (d.peak_reserved_bytes, d.peak_allocated_bytes, d.fragmentation_bytes) == (102 * MiB, 102 * MiB, 3 * MiB)
    r = replay(ev, config=AllocatorConfig(roundup_power2_divisions=4))
    assert (r.peak_reserved_bytes, r.peak_allocated_bytes, r.fragmentation_bytes) == (120 * MiB, 120 * MiB, 21 * MiB)
    # ... and where it pays: 33 MiB freed, then 34.5 MiB. Default: the cached 34 MiB
    # block is too small -> a new 36 MiB segment (70 MiB); rounded: both are 40 MiB -> 40.
    ev = [(1, 33 * MiB), (1, -33 * MiB), (2, 34 * MiB + 512 * 1024)]
    assert replay(ev).peak_reserved_bytes == 70 * MiB
    assert replay(ev, config=AllocatorConfig(roundup_power2_divisions=4)).peak_reserved_bytes == 40 * MiB


def test_roundup_divisions_per_interval():
    # "[64:8,>:2]": 64 sets entry log2(64) = 6 and, being first, entries 0-5; ">" then
    # sets entries 6-15 (from the last one set, inclusive) to 2. So requests under
    # 64 MiB get 8 divisions and from 64 MiB 2.
    cfg = parse_alloc_conf("roundup_power2_divisions:[64:8,>:2]")
    assert cfg.roundup_power2_divisions == (8,) * 6 + (2,) * 10
    m = ConfiguredAllocatorModel(cfg)
    assert m.round_size(33 * MiB) == 36 * MiB  # 8 divisions of [32, 64)
    assert m.round_size(65 * MiB) == 96 * MiB  # 2 divisions of [64, 128)
    assert m.round_size(1000) == 1024  # 1000 <= 512 x 8: plain 512 rounding
    st = replay([(1, 33 * MiB), (2, 65 * MiB)], config=cfg)
    assert st.peak_reserved_bytes == 36 * MiB + 96 * MiB


# --- garbage_collection_threshold ------------------------------------------------------


def test_garbage_collection_frees_old_cached_blocks():
    # capacity 100 MiB, threshold 0.5: collect when reserved > 50 MiB before a cudaMalloc.
    # get_free_block calls on the large pool count the age.
    #  A 30 (call 1): new 30 MiB segment; free A: cached, base 1
    #  B 40 (call 2): no fit; reserved 30 <= 50, no GC; new 40 -> 70; free B: base 2
    #  C 50 (call 3): no fit; 70 > 50: GC, target 20. Unsplit cached blocks: 30 (age 2),
    #     40 (age 1), average 1.5: the 30 MiB one is freed (reclaimed 30 >= 20, stop).
    #     new 50 -> reserved 40 + 50 = 90 (without GC: 120).
    ev = [(1, 30 * MiB), (1, -30 * MiB), (2, 40 * MiB), (2, -40 * MiB), (3, 50 * MiB)]
    cfg = AllocatorConfig(garbage_collection_threshold=0.5)
    assert replay(ev).peak_reserved_bytes == 120 * MiB
    assert replay(ev, config=cfg).peak_reserved_bytes == 120 * MiB  # no capacity: no fraction set, no GC
    st = replay(ev, config=cfg, capacity_bytes=100 * MiB)
    assert st.peak_reserved_bytes == 90 * MiB
    assert st.segments == 2
    assert st.fragmentation_bytes == 90 * MiB - 50 * MiB
    # under the threshold nothing is collected
    assert replay(ev, config=cfg, capacity_bytes=1000 * MiB).peak_reserved_bytes == 120 * MiB
    # the allowed memory is capacity x per_process_memory_fraction: 200 MiB x 0.5 = 100 MiB
    frac = parse_alloc_conf("garbage_collection_threshold:0.5,per_process_memory_fraction:0.5")
    assert frac == AllocatorConfig(garbage_collection_threshold=0.5, per_process_memory_fraction=0.5)
    assert replay(ev, config=frac, capacity_bytes=200 * MiB).peak_reserved_bytes == 90 * MiB
    # expandable segments: every block is split (the last mapped one borders the unmapped
    # rest), so GC finds nothing to free. A 30 maps 40; freed, A's block and the tail merge
    # (40 free); B 40 fits it; freed; C 50 grows the free 40 by one 20 MiB page -> 60.
    both = AllocatorConfig(garbage_collection_threshold=0.5, expandable_segments=True)
    st = replay(ev, config=both, capacity_bytes=100 * MiB)
    assert (st.peak_reserved_bytes, st.fragmentation_bytes) == (60 * MiB, 10 * MiB)
    assert replay(ev, config=EXP).peak_reserved_bytes == 60 * MiB


def test_garbage_collection_second_round():
    # As above, then free C (cached, base 3) and ask for D 60 (call 4): no fit (40, 50);
    # reserved 90 > 50, target 40. Unsplit cached: 40 (age 2), 50 (age 1), average 1.5:
    # the 40 MiB block goes (reclaimed 40 >= 40); new 60 -> reserved 50 + 60 = 110.
    ev = [(1, 30 * MiB), (1, -30 * MiB), (2, 40 * MiB), (2, -40 * MiB), (3, 50 * MiB), (3, -50 * MiB), (4, 60 * MiB)]
    cfg = AllocatorConfig(garbage_collection_threshold=0.5)
    st = replay(ev, config=cfg, capacity_bytes=100 * MiB)
    assert st.peak_reserved_bytes == 110 * MiB
    assert st.fragmentation_bytes == 110 * MiB - 60 * MiB
    assert replay(ev).peak_reserved_bytes == 180 * MiB


def test_reset_peak_after_garbage_collection_restarts_the_reserved_peak():
    # capacity 100 MiB, threshold 0.5 (50 MiB).
    #  A 60, B 10: segments of 60 and 10 MiB (B's GC finds no cached block) -> 70, peak 70
    #  free A, free B (cached, both base 2)
    #  C 65 (call 3): no fit; GC: 70 > 50, target 20, ages 1 and 1, average 1: both go
    #     -> 0; new 66 MiB segment (65 rounded to 2 MiB) -> reserved 66 < the 70 peak
    #  reset here: the measured peak restarts at 66 (65 live: fragmentation 1 MiB)
    #  D 1 MiB: small pool, a new 2 MiB segment -> 68 (66 live): peak 68, fragmentation 2
    ev = [(1, 60 * MiB), (2, 10 * MiB), (1, -60 * MiB), (2, -10 * MiB), (3, 65 * MiB), (4, 1 * MiB)]
    cfg = AllocatorConfig(garbage_collection_threshold=0.5)
    whole = replay(ev, config=cfg, capacity_bytes=100 * MiB)
    assert (whole.peak_reserved_bytes, whole.fragmentation_bytes) == (70 * MiB, 0)
    st = replay(ev, reset_peak_at=5, config=cfg, capacity_bytes=100 * MiB)
    assert (st.peak_reserved_bytes, st.fragmentation_bytes) == (68 * MiB, 2 * MiB)
    assert st.peak_allocated_bytes == 66 * MiB + 1 * MiB


# --- parser ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (None, AllocatorConfig()),
        ("", AllocatorConfig()),
        ("backend:native", AllocatorConfig()),
        ("expandable_segments:True", AllocatorConfig(expandable_segments=True)),
        ("expandable_segments:False", AllocatorConfig()),
        ("max_split_size_mb:128,garbage_collection_threshold:0.8",
         AllocatorConfig(max_split_size_mb=128, garbage_collection_threshold=0.8)),
        (" max_split_size_mb : 21 , roundup_power2_divisions : 4 ",
         AllocatorConfig(max_split_size_mb=21, roundup_power2_divisions=4)),
        ("roundup_power2_divisions:[256:1,512:2,1024:4,>:8]",
         AllocatorConfig(roundup_power2_divisions=(1,) * 9 + (2,) + (8,) * 6)),
        ("max_non_split_rounding_mb:64,max_split_size_mb:256",
         AllocatorConfig(max_split_size_mb=256, max_non_split_rounding_mb=64)),
        # the last of a repeated key wins, as in torch
        ("max_split_size_mb:64,max_split_size_mb:128", AllocatorConfig(max_split_size_mb=128)),
        ("throw_on_cudamalloc_oom:True,graph_capture_record_stream_reuse:False,pinned_reserve_segment_size_mb:64",
         AllocatorConfig()),
        ("release_lock_on_cudamalloc:True,pinned_use_cuda_host_register:False,pinned_num_register_threads:8,"
         "expandable_segments:True", AllocatorConfig(expandable_segments=True)),
    ],
)
def test_parse_valid(text, expected):
    assert parse_alloc_conf(text) == expected


@pytest.mark.parametrize(
    "cfg",
    [
        AllocatorConfig(expandable_segments=True, max_split_size_mb=64, garbage_collection_threshold=0.7),
        AllocatorConfig(roundup_power2_divisions=8),
        AllocatorConfig(garbage_collection_threshold=0.6, per_process_memory_fraction=0.9),
        AllocatorConfig(roundup_power2_divisions=(1,) * 9 + (2,) + (8,) * 6, max_non_split_rounding_mb=40),
    ],
)
def test_to_alloc_conf_round_trips(cfg):
    assert parse_alloc_conf(cfg.to_alloc_conf()) == cfg


@pytest.mark.parametrize(
    "text, words",
    [
        ("foo:1", ["foo", "valid", "expandable_segments", "max_split_size_mb"]),
        ("max_split_size_mb:20", ["max_split_size_mb", "> kLargeBuffer / 1 MiB = 20", "parseMaxSplitSize"]),
        ("max_split_size_mb:abc", ["max_split_size_mb", "'abc'"]),
        ("max_split_size_mb:-30", ["max_split_size_mb"]),
        ("max_split_size_mb", ["max_split_size_mb", "max_split_size_mb:<value>"]),
        ("max_non_split_rounding_mb:4", ["max_non_split_rounding_mb", ">= kLargeBuffer"]),
        ("garbage_collection_threshold:1.0", ["garbage_collection_threshold", "(0.0, 1.0)"]),
        ("garbage_collection_threshold:0", ["garbage_collection_threshold", "(0.0, 1.0)"]),
        ("garbage_collection_threshold:high", ["garbage_collection_threshold", "'high'"]),
        ("roundup_power2_divisions:3", ["roundup_power2_divisions", "power of 2"]),
        ("roundup_power2_divisions:0", ["roundup_power2_divisions", "power of 2"]),
        ("roundup_power2_divisions:[256:3]", ["roundup_power2_divisions", "power of 2"]),
        ("roundup_power2_divisions:[100:2]", ["roundup_power2_divisions", "power of 2", "100"]),
        ("roundup_power2_divisions:[256:2", ["roundup_power2_divisions", "']'"]),
        ("roundup_power2_divisions:[256:2;512:4]", ["roundup_power2_divisions"]),
        ("expandable_segments:true", ["expandable_segments", "True or False"]),
        ("expandable_segments:1", ["expandable_segments", "True or False"]),
        ("backend:cudaMallocAsync", ["backend", "native"]),
        ("per_process_memory_fraction:1.5", ["per_process_memory_fraction", "(0.0, 1.0]"]),
        ("pinned_num_register_threads:3", ["pinned_num_register_threads", "power of 2"]),
        ("large_segment_size_mb:64", ["large_segment_size_mb", "valid"]),
        ("expandable_segments:True max_split_size_mb:64", ["expandable_segments"]),
        ("max_split_size_mb:64 garbage_collection_threshold:0.5", ["max_split_size_mb"]),
    ],
)
def test_parse_invalid_names_the_key(text, words):
    with pytest.raises(PlannerError) as exc:
        parse_alloc_conf(text)
    msg = str(exc.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


def test_config_validates_directly():
    with pytest.raises(PlannerError, match="max_split_size_mb"):
        AllocatorConfig(max_split_size_mb=20)
    assert AllocatorConfig(max_non_split_rounding_mb=20).max_non_split_rounding_mb == 20
    with pytest.raises(PlannerError, match="garbage_collection_threshold"):
        AllocatorConfig(garbage_collection_threshold=1.5)
    with pytest.raises(PlannerError, match="16 entries"):
        AllocatorConfig(roundup_power2_divisions=(4, 4))
    with pytest.raises(PlannerError, match="power of 2"):
        AllocatorConfig(roundup_power2_divisions=6)
    with pytest.raises(PlannerError, match="expandable_segments"):
        AllocatorConfig(expandable_segments="yes")
    uniform = AllocatorConfig(roundup_power2_divisions=[2] * ROUNDUP_INTERVALS)
    assert uniform == AllocatorConfig(roundup_power2_divisions=2)
    assert parse_alloc_conf("roundup_power2_divisions:[]") == AllocatorConfig()  # an empty table: no rounding
    with pytest.raises(PlannerError, match="capacity_bytes"):
        replay([], capacity_bytes=0)


# --- the default path and a realistic step ---------------------------------------------


@pytest.fixture(scope="module")
def step_events():
    from planner.analytic.simulate import simulate
    from planner.config import Overrides, resolve_setup

    setup = resolve_setup(None, Overrides(voxel="64x64x32"))
    res = simulate(setup)
    return res.events, res.iteration2_start


def _replay_configured(events, start, cfg, capacity=None):
    m = ConfiguredAllocatorModel(cfg, capacity)
    for i, (key, delta) in enumerate(events):
        if i == start and i:
            m.reset_peaks()
        if delta > 0:
            m.malloc(key, delta)
        elif delta < 0:
            m.free(key)
    return m.stats()


def test_default_config_is_the_fast_model_and_unchanged(step_events):
    events, start = step_events
    fast = replay(events, start)
    assert replay(events, start, AllocatorConfig()) == fast
    assert replay(events, start, parse_alloc_conf("backend:native"), capacity_bytes=1 << 40) == fast
    # the general model under the default config agrees exactly with the fast one
    assert _replay_configured(events, start, AllocatorConfig()) == fast
    # settings that change nothing here: divisions of 1 below 512 MiB (requests are smaller)
    one = AllocatorConfig(roundup_power2_divisions=(1,) * 16)
    st = replay(events, start, one)
    assert (st.peak_reserved_bytes, st.peak_allocated_bytes, st.fragmentation_bytes) == (
        fast.peak_reserved_bytes, fast.peak_allocated_bytes, fast.fragmentation_bytes)


def test_realistic_step_expandable_segments_reduce_reserved_and_fragmentation(step_events):
    events, start = step_events
    default = replay(events, start)
    exp = replay(events, start, parse_alloc_conf("expandable_segments:True"))
    rows = {"default": default, "expandable_segments:True": exp}
    for text in ("max_split_size_mb:21", "roundup_power2_divisions:4", "garbage_collection_threshold:0.5"):
        rows[text] = replay(events, start, parse_alloc_conf(text), capacity_bytes=default.peak_reserved_bytes)
    for name, st in rows.items():
        print(
            f"{name:34s} allocated {st.peak_allocated_bytes / MiB:9.1f} MiB"
            f"  reserved {st.peak_reserved_bytes / MiB:9.1f} MiB"
            f"  fragmentation {st.fragmentation_bytes / MiB:8.1f} MiB  segments {st.segments}"
        )
    assert exp.peak_reserved_bytes <= default.peak_reserved_bytes
    assert exp.fragmentation_bytes < default.fragmentation_bytes
    assert exp.segments <= 2
    assert 0 <= exp.fragmentation_bytes <= exp.peak_reserved_bytes
    # every variant holds at least what is live at its peak
    for st in rows.values():
        assert st.fragmentation_bytes >= 0
        assert st.peak_reserved_bytes >= st.peak_allocated_bytes or st.config.garbage_collection_threshold
    gc = rows["garbage_collection_threshold:0.5"]
    assert gc.peak_reserved_bytes <= default.peak_reserved_bytes


@pytest.mark.parametrize(
    "conf, capacity",
    [
        ("", None),
        ("expandable_segments:True", None),
        ("max_split_size_mb:21", None),
        ("max_split_size_mb:32,max_non_split_rounding_mb:40", None),
        ("roundup_power2_divisions:[2:8,16:4,>:2]", None),
        ("garbage_collection_threshold:0.3", 400 * MiB),
        ("expandable_segments:True,roundup_power2_divisions:4,max_split_size_mb:24", None),
    ],
)
def test_random_streams_keep_the_books(conf, capacity):
    # reserved == allocated + cached free blocks after every step, blocks chain within
    # their segments without gaps, and the default config agrees with the fast model.
    import random

    rng = random.Random(12)
    cfg = parse_alloc_conf(conf)
    m = ConfiguredAllocatorModel(cfg, capacity)
    fast = CachingAllocatorModel()
    live = []
    sizes = [512, 4096, 300 * 1024, MiB, 3 * MiB, 9 * MiB + 512, 12 * MiB, 25 * MiB, 41 * MiB + 4096]
    for step in range(1500):
        if live and rng.random() < 0.45:
            key = live.pop(rng.randrange(len(live)))
            m.free(key)
            fast.free(key)
        else:
            size = rng.choice(sizes) + 512 * rng.randrange(4)
            m.malloc(step, size)
            fast.malloc(step, size)
            live.append(step)
        cached = sum(b.size for pool in m._pools.values() for _, _, b in pool)
        assert m.reserved == m.allocated + cached, step
        assert 0 <= m.requested <= m.allocated
        if not cfg.expandable_segments:
            assert m.reserved == sum(b.size for b in _all_blocks(m))
    if cfg.is_default:
        assert m.stats() == fast.stats()


def _all_blocks(m):
    blocks = {id(b): b for pool in m._pools.values() for _, _, b in pool}
    blocks.update({id(b): b for b in m._live.values()})
    for b in blocks.values():  # each block's neighbours are adjacent
        if b.next is not None:
            assert b.next.addr == b.addr + b.size and b.next.prev is b
    return blocks.values()


# --- issue 23: the cache when the live tensors peak (not at the reserved peak) ----------------------------


def test_free_cache_and_largest_block_at_the_allocated_peak():
    # A 30 MiB and B 20 MiB: own segments (>= 10 MiB: rounded to 2 MiB), allocated peak 50 MiB, nothing free.
    # Free A: a cached 30 MiB block. C 10 MiB takes it (best fit), split: 20 MiB stays free (> kSmallSize).
    # D 25 MiB: 20 MiB is too small, a new 26 MiB segment (25 rounded up to 2 MiB), its 1 MiB remainder not
    # split (<= kSmallSize, so allocated as part of D): allocated 20 + 10 + 26 = 56 MiB, a new peak, with
    # reserved 30 + 20 + 26 = 76 MiB: 76 - 56 = 20 MiB free, the largest free block 20 MiB.
    ev = [(1, 30 * MiB), (2, 20 * MiB), (1, -30 * MiB), (3, 10 * MiB), (4, 25 * MiB)]
    for st in (replay(ev), replay(ev, config=AllocatorConfig(max_split_size_mb=1000))):
        assert (st.peak_allocated_bytes, st.peak_reserved_bytes) == (56 * MiB, 76 * MiB)
        assert st.free_at_allocated_peak_bytes == 20 * MiB
        assert st.largest_free_block_at_allocated_peak_bytes == 20 * MiB
        # the old figure, at the reserved peak: 76 MiB - (20 + 10 + 25 MiB requested) = 21 MiB
        assert st.fragmentation_bytes == 21 * MiB
