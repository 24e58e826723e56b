"""The garbage collector during a replay (the start-up heap frozen, young objects collected
in larger batches) and during a live run (the start-up heap frozen): one owner of the
process's freeze.

A replay allocates orders, fills, row tuples and bar objects by the hundred thousand, and the
rows the store buffers survive until their batch is handed to the writer. With CPython's
default thresholds (700, 10, 10) that meant about 200 collections in a 496-symbol replay,
whose full ones walked everything start-up built (data, features, plugins, imported modules):
80-110 ms of a `tradingd backtest` replay of ~1.3 s, whose replay span went from 1.357 to
1.266 s without them (benchmarks/RESULTS.md, thirteenth session). The benchmark strategy's
whole replay leaves no cyclic garbage (`gc.collect()` at its end finds none); the default ML
strategy leaves about 1.6 objects a bar.

So while a replay runs: `gc.freeze()` moves what exists at its start out of the collected
generations (freed by reference counting as before; a cycle among them waits for the end of
the replay), and the youngest generation is collected every `REPLAY_GEN0` net allocations of
container objects instead of 700, the older ones at their usual ratios to it. What that
bounds: cyclic garbage still young is found within `REPLAY_GEN0` allocations; garbage that
had survived a collection before it became unreachable waits for the next collection of its
generation (every 10 young ones for the middle one, 500,000 allocations). The trigger counts
objects, not bytes: a plugin that leaves large arrays in reference cycles every bar would
hold more of them between collections than before. At the end the thresholds are put back
and the frozen objects returned to the collector.

Process-wide state: replays that overlap in one process (threads, or engines on one event
loop) share one such period, from the first one's start to the last one's end. A freeze that
exists when it starts (a live engine's, `live_started`, or the host process's own) is left
as it is and not undone at the end; the raised threshold does apply to everything running in
the process meanwhile (a live engine in the same process included).

Live (`live_started`): after its warm-up a live engine collects and freezes what start-up
built (data, models, history, caches: millions of objects that live as long as the daemon).
Without it each full collection walked them all: 190-330 ms, about once a bar with 500
symbols, and when one fell between a bar's release and its orders that bar took 300+ ms
(benchmarks/RESULTS.md). The thresholds are kept. Whoever froze first unfreezes: a live
engine that found a freeze leaves it at its stop, and one whose freeze a running replay
shares hands it over to that replay period, whose end unfreezes.
"""

from __future__ import annotations

import gc
import threading

import structlog

log = structlog.get_logger(__name__)

# Net allocations of container objects between two collections of the youngest generation
# during a replay (CPython's default is 700).
REPLAY_GEN0 = 50_000

_lock = threading.Lock()
_active = 0
_saved: tuple[int, int, int] = (700, 10, 10)
_froze = False  # this module froze the heap (nothing was frozen when the period began)


def replay_started() -> None:
    """A replay begins: the first of overlapping replays freezes and raises the threshold."""
    global _active, _saved, _froze
    with _lock:
        if _active == 0:
            _saved = gc.get_threshold()
            _froze = gc.get_freeze_count() == 0
            if _froze:
                gc.freeze()
            if _saved[0] > 0:  # 0: the owner of this process turned collection off
                gc.set_threshold(max(REPLAY_GEN0, _saved[0]), *_saved[1:])
        _active += 1


def replay_ended() -> None:
    """A replay ends (however it ends): the last one puts the collector back as it was."""
    global _active, _froze
    with _lock:
        if _active == 0:
            # Ends outnumber starts: a caller's bug, which would otherwise end another
            # replay's period early; nothing to undo here.
            log.warning("gc.replay_end_without_start")
            return
        _active -= 1
        if _active == 0:
            gc.set_threshold(*_saved)
            if _froze:
                gc.unfreeze()
                _froze = False


def live_started() -> bool:
    """A live engine has warmed up: collect, then freeze everything (frozen objects are still
    freed by reference counting; only cycles among them wait for the unfreeze). True when
    this call made the process's freeze: pass it to `live_ended`."""
    with _lock:
        owner = gc.get_freeze_count() == 0
        gc.collect()
        gc.freeze()
        log.info("engine.gc_frozen", objects=gc.get_freeze_count())
        return owner


def live_ended(owner: bool) -> None:
    """A live engine stops: it unfreezes the heap if it froze it, unless a replay is running
    in the process, whose period then owns the freeze (its last end unfreezes)."""
    global _froze
    with _lock:
        if not owner:
            return
        if _active:
            _froze = True
        else:
            gc.unfreeze()  # back to the collector: an in-process caller may build more
