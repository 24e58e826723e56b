"""The garbage collector during a replay: the start-up heap frozen, young objects collected
in larger batches.

A replay allocates orders, fills, row tuples and bar objects by the hundred thousand, and the
rows the store buffers survive until their batch is handed to the writer. With CPython's
default thresholds (700, 10, 10) that meant about 200 collections in a 496-symbol replay,
whose full ones walked everything start-up built (data, features, plugins, imported modules):
80-110 ms of a 1.0-1.3 s replay, and a replay about 10% slower than without them, the
traversals' cache misses included (benchmarks/RESULTS.md). A whole replay of the benchmark's
strategy leaves no cyclic garbage at all (`gc.collect()` at its end finds none), so
collecting rarely costs nothing there.

So while a replay runs: `gc.freeze()` moves what exists at its start out of the collected
generations (freed by reference counting as before; a cycle among them waits for the end of
the replay), and the youngest generation is collected every `REPLAY_GEN0` net allocations
instead of 700. What that bounds: cyclic garbage a plugin makes waits for at most that many
container objects' worth of allocations, not for the end of the run. At the end the
thresholds are put back and the frozen objects returned to the collector.

Process-wide state: replays that overlap in one process (threads, or engines on one event
loop) share one such period, from the first one's start to the last one's end. A live daemon
freezes its own start-up heap instead (`Engine._freeze_start_up`) and keeps the thresholds.
"""

from __future__ import annotations

import gc
import threading

# Net allocations of container objects between two collections of the youngest generation
# during a replay (CPython's default is 700).
REPLAY_GEN0 = 50_000

_lock = threading.Lock()
_active = 0
_saved: tuple[int, int, int] = (700, 10, 10)


def replay_started() -> None:
    """A replay begins: the first of overlapping replays freezes and raises the threshold."""
    global _active, _saved
    with _lock:
        if _active == 0:
            _saved = gc.get_threshold()
            gc.freeze()
            if _saved[0] > 0:  # 0: the owner of this process turned collection off
                gc.set_threshold(max(REPLAY_GEN0, _saved[0]), *_saved[1:])
        _active += 1


def replay_ended() -> None:
    """A replay ends (however it ends): the last one puts the collector back as it was."""
    global _active
    with _lock:
        if _active == 0:
            return
        _active -= 1
        if _active == 0:
            gc.set_threshold(*_saved)
            gc.unfreeze()
