"""The collector during replays (engine/collector.py): process-wide state that overlapping
replays share, put back exactly as it was by the last one to end."""

from __future__ import annotations

import gc

import pytest
from structlog.testing import capture_logs

from tradingd.engine import collector


@pytest.fixture
def thresholds(monkeypatch):
    """Each test starts with no replay running and leaves none running (a failure between a
    start and its end must not make the next test pass without testing anything)."""
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    monkeypatch.setattr(collector, "_active", 0)
    monkeypatch.setattr(collector, "_froze", False)
    yield before
    gc.set_threshold(*before)
    gc.unfreeze()


def test_overlapping_replays_share_one_period_and_the_last_one_restores(thresholds):
    gc.set_threshold(700, 11, 12)
    keep = [object() for _ in range(10)]  # something that exists before the replays
    collector.replay_started()
    frozen = gc.get_freeze_count()
    assert frozen >= len(keep) and gc.get_threshold() == (collector.REPLAY_GEN0, 11, 12)
    fresh = [[] for _ in range(1000)]  # tracked objects that a second freeze would take in
    collector.replay_started()  # a second replay while the first runs: nothing saved again
    assert gc.get_threshold() == (collector.REPLAY_GEN0, 11, 12)
    collector.replay_ended()  # the first ends: the second still runs
    assert gc.get_threshold() == (collector.REPLAY_GEN0, 11, 12)
    # Neither frozen again (the fresh lists would join) nor unfrozen (0). Not "== frozen":
    # a frozen object may die meanwhile, freed by another thread (CI saw 23 of 674,105 go).
    assert frozen // 2 < gc.get_freeze_count() < frozen + len(fresh)
    collector.replay_ended()
    assert gc.get_threshold() == (700, 11, 12) and gc.get_freeze_count() == 0
    with capture_logs() as logs:
        collector.replay_ended()  # an end without a start changes nothing, and says so
    assert gc.get_threshold() == (700, 11, 12)
    assert [e["event"] for e in logs] == ["gc.replay_end_without_start"]


def test_collection_turned_off_stays_off_and_a_higher_threshold_is_kept(thresholds):
    gc.set_threshold(0, 10, 10)  # the process's owner turned automatic collection off
    collector.replay_started()
    assert gc.get_threshold() == (0, 10, 10)
    collector.replay_ended()
    gc.set_threshold(10 * collector.REPLAY_GEN0, 10, 10)
    collector.replay_started()
    assert gc.get_threshold() == (10 * collector.REPLAY_GEN0, 10, 10)
    collector.replay_ended()
    assert gc.get_threshold() == (10 * collector.REPLAY_GEN0, 10, 10)


def test_cyclic_garbage_made_during_a_replay_is_still_collected(thresholds):
    """Rarer collections, not none: a plugin that leaves a reference cycle on every bar does
    not grow the process until the replay ends."""
    import weakref

    class Node:
        pass

    collector.replay_started()
    try:
        refs = []
        for _ in range(200_000):  # ~5 container objects each: 1,000,000 net allocations
            a, b = Node(), Node()
            a.other, b.other = b, a  # a cycle: reference counting alone never frees it
            refs.append(weakref.ref(a))
            del a, b
        alive = sum(r() is not None for r in refs)
    finally:
        collector.replay_ended()
    assert alive < len(refs) // 2  # the youngest generation was collected along the way


def test_a_freeze_made_before_the_replays_is_left_as_it_is(thresholds):
    """A live engine (or the host process) that froze its own start-up heap keeps it frozen
    after a replay in the same process ends."""
    sentinel = [object()]  # a container frozen by its owner, below
    gc.freeze()
    collector.replay_started()
    assert gc.get_threshold()[0] == max(collector.REPLAY_GEN0, thresholds[0])
    collector.replay_ended()
    assert gc.get_threshold() == thresholds
    # Still frozen: the collected generations do not hold it (an unfreeze would put it back).
    assert gc.get_freeze_count() > 0
    assert not any(o is sentinel for o in gc.get_objects())


def test_a_live_engine_unfreezes_only_a_freeze_it_made(thresholds):
    """Whoever froze first unfreezes: a freeze found at a live start (the host's) is left at
    its stop, and the live engine's own is undone at its stop."""
    gc.set_threshold(700, 11, 12)
    assert collector.live_started() is True  # nothing was frozen: its own
    assert gc.get_freeze_count() > 0 and gc.get_threshold() == (700, 11, 12)  # kept
    collector.live_ended(True)
    assert gc.get_freeze_count() == 0

    gc.freeze()  # the host process's own freeze
    host = gc.get_freeze_count()
    assert collector.live_started() is False
    collector.live_ended(False)
    # Left as it was found: not unfrozen (0). A frozen object may die meanwhile (see above).
    assert gc.get_freeze_count() > host // 2 > 0


def test_a_live_freeze_shared_with_a_replay_ends_with_the_last_of_them(thresholds):
    # Live first: the replay finds its freeze; the live engine stops first and hands the
    # freeze over to the replay period, whose end unfreezes.
    owner = collector.live_started()
    collector.replay_started()
    collector.live_ended(owner)
    assert gc.get_freeze_count() > 0  # the replay still runs
    collector.replay_ended()
    assert gc.get_freeze_count() == 0
    # Replay first: the live engine finds the replay's freeze and leaves it to the replay.
    collector.replay_started()
    owner = collector.live_started()
    assert owner is False
    collector.live_ended(owner)
    assert gc.get_freeze_count() > 0
    collector.replay_ended()
    assert gc.get_freeze_count() == 0
    # Both end in the other order: the live engine, last, unfreezes its own.
    owner = collector.live_started()
    collector.replay_started()
    collector.replay_ended()
    assert gc.get_freeze_count() > 0  # the live engine's, still running
    collector.live_ended(owner)
    assert gc.get_freeze_count() == 0
