"""Crash points for the restart-safety tests: the process kills itself with SIGKILL at a named
point of the bar (nothing flushed, nothing closed), exactly as `kill -9` would at that moment.

`TRADINGD_KILL_AT=<point>:<n>` kills at the n-th time the point is reached (1-based). Points:
- `intent`: order intents stored, not yet sent to the broker;
- `sent`: the broker accepted the orders, the acknowledgements not yet recorded;
- `fill`: a bar's fills applied to the book, not yet recorded;
- `flush`: inside a store write, the transaction not yet committed.
Unset (always, outside those tests), `reached` is one comparison.
"""

from __future__ import annotations

import os
import signal

POINTS = ("intent", "sent", "fill", "flush")


def _parse(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    point, _, count = value.partition(":")
    if point not in POINTS or not count.isdigit() or int(count) < 1:
        raise ValueError(
            f"TRADINGD_KILL_AT={value!r}: expected <point>:<n> with point one of "
            f"{', '.join(POINTS)} and n >= 1"
        )
    return point, int(count)


_TARGET = _parse(os.environ.get("TRADINGD_KILL_AT"))
_hits = 0


def reached(point: str) -> None:
    global _hits
    if _TARGET is None or point != _TARGET[0]:
        return
    _hits += 1
    if _hits >= _TARGET[1]:
        os.kill(os.getpid(), signal.SIGKILL)
