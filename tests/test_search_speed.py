"""Issue 21's speed mechanisms: what runs side by side, and that the searches answer as before.

Torch-free except where a test says so; no trace is taken (the tracer's rounds are replaced by
recorders), so each test takes milliseconds.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from planner import gpusearch
from planner.search import Candidate, Change, _walk


def _cands(n: int) -> list[Candidate]:
    return [Candidate((Change("d", i, f"c{i}", 0, lambda s: s),), 0, setup=i) for i in range(n)]


class _Engine:
    """Candidate i's setup is i; KEYS[i] the trace it needs (None: none); FITS the ones that fit."""

    def __init__(self, width: int, keys: list, fits: set[int]) -> None:
        self.width, self.keys, self.fits = width, keys, fits
        self.calls: list[list[int]] = []

    def batch_key(self, setup: int):
        return self.keys[setup]

    def verify(self, batch: list[Candidate]) -> None:
        self.calls.append([c.setup for c in batch])
        for c in batch:
            c.report = SimpleNamespace()  # verified


# keys: 0 and 1 share trace A (1 is its allocator replay), 2 costs none, 3..6 one trace each
KEYS = ["A", "A", None, "B", "C", "D", "E"]
FITS = {1, 3, 5, 6}


@pytest.mark.parametrize("width, calls", [
    (1, [[0, 1], [2], [3], [4], [5]]),
    # width 2: with 0 the next distinct trace B (1 shares A, 2 costs none); then one still wanted
    (2, [[0, 1, 2, 3], [4], [5]]),
])
def test_the_walk_verifies_ahead_side_by_side_and_finds_what_the_sequential_walk_finds(width, calls):
    """Three fitting wanted among 0..6 (1, 3, 5 fit in walk order): the sequential walk verifies 0
    (with 1, the same trace: a key shared is one evaluation), 3, 4, 5 and stops after 5. Width 2
    verifies 0 with 1, 2 (free) and 3 (trace B) at once; with 1 and 3 fitting, one more is wanted, so
    4 and 5 go one at a time (5 ahead of 4 would be verified for nothing were 4 to fit); 6 is never
    verified. Width 1:
    each candidate alone (with 0 its replay 1, the same trace)."""
    eng = _Engine(width, KEYS, FITS)
    walk = _cands(7)
    found = _walk(walk, lambda c: c.setup in FITS, 3, eng.verify, eng, lambda c: c.setup)
    assert [c.setup for c in found] == [1, 3, 5]
    assert eng.calls == calls
    assert walk[6].report is None


def test_the_walk_never_verifies_free_candidates_past_the_last_trace_of_a_round():
    """Width 2 from 0: 0 (trace A), 1 (A), 2 (free), 3 (trace B) -- 2 lies before B, so it goes; a
    free candidate after the last keyed one would be verified for nothing."""
    eng = _Engine(2, ["A", None, "B", None, None], {0, 1, 2})
    found = _walk(_cands(5), lambda c: c.setup in {0, 1, 2}, 3, eng.verify, eng, lambda c: c.setup)
    assert [c.setup for c in found] == [0, 1, 2]
    assert eng.calls == [[0, 1, 2]]


def _report(total: int) -> SimpleNamespace:
    return SimpleNamespace(device_total_bytes=total, breakdown=SimpleNamespace(by_category={"activations": total}))


def _gpu_search(fitting: set, width: int | None):
    """total 4, up to 4 GPUs; per-rank figure 100 // (micro-batch) + gpus (budget 60): an option fits
    where ``fitting`` holds it."""
    prepared: list[list[tuple]] = []
    evaluated: list[tuple] = []

    def evaluate(s):
        evaluated.append(s)
        return _report(30 if s in fitting else 100), "traced"

    ahead = None if width is None else (width, prepared.append)
    answer, tried, verdict = gpusearch.search(4, 4, 60, lambda b, a, n, st: (b, a, n, st), evaluate, "smaller",
                                              ahead=ahead)
    return answer, [(o.gpus, o.strategy, o.batch, o.accumulation) for o in tried], verdict, prepared


def test_max_gpus_prepares_the_next_options_in_the_order_it_tries_them():
    """DDP on 2 GPUs at micro-batch 1 fits. Tried in order: 1 GPU 4x1, 2x2, 1x4; 2 GPUs DDP 2x1, 1x2
    (fits), then 1 GPU 1x4 again (what the GPUs buy). Width 2 prepares (4x1, 2x2), (1x4, DDP 2x1),
    (DDP 1x2, grad-op 2x1): the last one ahead of a fit is the only one prepared for nothing, and
    nothing is prepared once the answer is known."""
    fit = {(1, 2, 2, "ddp")}
    plain = _gpu_search(fit, None)
    answer, tried, verdict, prepared = _gpu_search(fit, 2)
    assert (answer.gpus, answer.strategy, answer.batch, answer.accumulation) == (2, "ddp", 1, 2)
    assert tried == plain[1] == [(1, "none", 4, 1), (1, "none", 2, 2), (1, "none", 1, 4), (2, "ddp", 2, 1),
                                 (2, "ddp", 1, 2), (1, "none", 1, 4)]
    assert verdict == plain[2]
    assert prepared == [[(4, 1, 1, "none"), (2, 2, 1, "none")], [(1, 4, 1, "none"), (2, 1, 2, "ddp")],
                        [(1, 2, 2, "ddp"), (2, 1, 2, "fsdp-grad-op")]]


def test_max_gpus_with_nothing_fitting_prepares_each_option_once():
    """Nothing fits: all 12 options (3 on one GPU, 2 per strategy on 2, 1 per strategy on 4) are tried
    and prepared, in 6 rounds of 2."""
    answer, tried, _, prepared = _gpu_search(set(), 2)
    assert answer is None and len(tried) == 12
    assert [len(p) for p in prepared] == [2] * 6
    assert sorted(o for p in prepared for o in p) == sorted((b, a, n, s) for n, s, b, a in tried)


# --- the tracer's rounds (torch imported: planner.measure; no trace taken) ------------------------------


def test_a_round_runs_its_side_calls_first_then_the_longest_traces(monkeypatch):
    """trace_many's items to the workers: the side call, then the setups by passes (2 x accumulation)
    descending, ties in the caller's order; the side call's result is set."""
    pytest.importorskip("torch")
    from planner.measure import isolate, traces
    from planner.step_setup import StepSetup

    sent: list = []

    class Workers:
        def imap(self, fn, items, label, jobs=1, warm=()):
            sent.extend(items)
            assert label(items[0]) == "side" and label(items[1]).startswith("tracing ")
            for it in items:
                yield it, fn(it)

    monkeypatch.setattr(isolate, "shared", lambda: Workers())
    monkeypatch.setattr(traces, "cached", lambda s: None)
    monkeypatch.setattr(traces, "_worker", lambda s: (s, f"record {s.batch_size}x{s.accumulation}", None))
    a, b, c = (StepSetup("x.py", batch_size=bs, accumulation=acc) for bs, acc in ((4, 1), (1, 4), (2, 2)))
    side = traces.SideCall(sum, (1, 2), "side")
    out, traced = traces.trace_many([a, b, c], 2, side=[side])
    assert [traces.passes(s) for s in (a, b, c)] == [2, 8, 4]
    assert [it[1] for it in sent] == [(1, 2), b, c, a]
    assert side.result == 3 and traced == 3 and out[b] == "record 1x4"


def test_allocator_variants_of_one_deep_setup_are_one_trace_not_an_accumulation_check(monkeypatch):
    """Micro-batch 1 x accumulation 4 with and without expandable segments: one setup traced as it is
    (DIRECT_ACCUM), not the check pair (2 x 3, 2 x 2) plus 1 x 2 that two different deep setups take."""
    pytest.importorskip("torch")
    from dataclasses import replace

    from planner.measure.search import Evaluator
    from planner.step_setup import StepSetup

    rounds: list[list] = []
    ev = Evaluator(None, 2)
    monkeypatch.setattr(ev, "_trace", lambda setups, side=(): rounds.append(list(dict.fromkeys(setups))))
    s = StepSetup("x.py", batch_size=1, accumulation=4, precision="amp-fp16")
    ev.prepare([s, replace(s, alloc_conf="expandable_segments:True")])
    assert rounds[0] == [s]
    other = StepSetup("x.py", batch_size=2, accumulation=4, precision="amp-fp16")
    rounds.clear()
    ev.prepare([s, other])
    assert rounds[0] == [replace(s, batch_size=2, accumulation=3), replace(s, batch_size=2, accumulation=2)]


def test_a_trace_handed_over_counts_once_and_makes_its_allocator_variants_free(monkeypatch):
    pytest.importorskip("torch")
    from dataclasses import replace

    from planner.measure.search import Evaluator
    from planner.step_setup import StepSetup

    ev = Evaluator(None, 2)
    s = StepSetup("x.py", batch_size=1, accumulation=1)
    assert ev.pending(s) == s
    ev.add(s, "record")
    ev.add(s, "record")
    assert ev.stats.traces == 1
    assert ev.pending(s) is None and ev.pending(replace(s, alloc_conf="expandable_segments:True")) is None


def test_a_walks_round_decides_as_if_each_setup_came_alone(monkeypatch):
    """Micro-batches 5, 6 and 8 at accumulation 2 asked together are three sizes of one class: the
    derivation's traces (2, 3, 4). Asked alone, one after another (a walk that verifies one candidate
    at a time), each is one size, fewer than a derivation is worth: the three traced as they are --
    and a walk's round of them takes those, side by side in one round. Two deep setups alike: alone,
    each traced as it is; together, the accumulation check."""
    pytest.importorskip("torch")
    from dataclasses import replace

    from planner.measure.search import Evaluator
    from planner.step_setup import StepSetup

    s = StepSetup("x.py", batch_size=5, accumulation=2)
    many = [s, replace(s, batch_size=6), replace(s, batch_size=8)]
    for alone, first in ((False, [replace(s, batch_size=b) for b in (2, 3, 4)]), (True, many)):
        rounds: list[list] = []
        ev = Evaluator(None, 2)
        monkeypatch.setattr(ev, "_trace", lambda setups, side=(): rounds.append(list(dict.fromkeys(setups))))
        ev.prepare(many, alone=alone)
        assert rounds[0] == first
    deep = [replace(s, batch_size=1, accumulation=4), replace(s, batch_size=2, accumulation=4)]
    rounds = []
    ev = Evaluator(None, 2)
    monkeypatch.setattr(ev, "_trace", lambda setups, side=(): rounds.append(list(dict.fromkeys(setups))))
    ev.prepare(deep, alone=True)
    assert rounds[0] == deep


# --- the checkpoint plan's own work (planner/measure/ckpt_plan.py; torch-free) ---------------------------


def _module(path, parent, saved, sac=0):
    from planner.measure import ckpt_plan

    return ckpt_plan.Candidate(path, "C", parent, True, saved, 1.0, 0, 0, sac_saved=sac)


def test_the_most_a_plan_removes_is_found_without_the_frontier():
    """A (10 whole) over B (4 whole, 6 selective) and C (5); D (3) beside A. B gives at most 6, C 5,
    so A's children together 11 > A's own 10; with D: 14. A budget's plan no longer builds the whole
    (uncapped) frontier for this figure (4.2 s of choose()'s CPU on the SwinUNETR step, 2.0 s left)."""
    from planner.measure import ckpt_plan

    cands = [_module("A", None, 10), _module("B", "A", 4, 6), _module("C", "A", 5), _module("D", None, 3)]
    assert ckpt_plan.most_removed(cands) == 14
    assert max(p[0] for p in ckpt_plan.frontier(cands)[0]) == 14


def test_the_most_removed_is_the_frontiers_largest_point_on_random_trees():
    import random

    from planner.measure import ckpt_plan

    rng = random.Random(8)
    for _ in range(40):
        cands = [_module(f"m{i}", None if i == 0 or rng.random() < 0.3 else f"m{rng.randrange(i)}",
                         rng.randrange(0, 100), rng.randrange(-20, 60)) for i in range(9)]
        assert ckpt_plan.most_removed(cands) == max(p[0] for p in ckpt_plan.frontier(cands)[0])


def test_the_class_rule_lists_classes_in_the_modules_order_whatever_the_string_hashing():
    """Two classes fully chosen: named in the order their first module comes (Attn before Mlp), not a
    set's (which moves with PYTHONHASHSEED: the label and the trace cache key of the checkpoint
    candidate moved from run to run)."""
    from dataclasses import replace

    from planner.measure import ckpt_plan

    table = [replace(_module(p, None, 1), cls=c) for p, c in (("b0.attn", "Attn"), ("b0.mlp", "Mlp"),
                                                              ("b1.attn", "Attn"), ("b1.mlp", "Mlp"))]
    inst = {"Attn": ["b0.attn", "b1.attn"], "Mlp": ["b0.mlp", "b1.mlp"]}
    assert ckpt_plan.class_rule(("b0.attn", "b0.mlp", "b1.attn", "b1.mlp"), inst, table) == ("Attn", "Mlp")
    assert ckpt_plan.class_rule(("b0.mlp", "b0.attn", "b1.mlp", "b1.attn"), inst, table) == ("Mlp", "Attn")
