"""A day's split answer is asked for again once it is `refresh_s` old: a split announced after
the eve's lookup had answered (no split then) was otherwise found only at the ex-date's bar,
after the open at which the broker splits the position under the run's pre-split orders."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, timedelta

from tradingd.engine.splits_ahead import SplitsAhead
from tradingd.feeds.corporate_actions import Split

D0 = date(2026, 12, 7)
REFRESH_S = 3600.0  # the default: an hour


class _Source:
    def __init__(self) -> None:
        self.found: list[Split] = []
        self.asked = 0

    async def splits(self, symbols: Sequence[str], start: date, end: date) -> list[Split]:
        self.asked += 1
        return list(self.found)

    def close(self) -> None:
        pass


async def test_a_split_announced_after_the_day_s_answer_is_learned_at_the_refresh() -> None:
    source, now = _Source(), [0.0]
    learned: list[Mapping[str, Split]] = []
    ahead = SplitsAhead(
        source,
        ["S00", "S01"],
        lambda t: t.date(),
        lambda t: t.date() + timedelta(days=1),
        monotonic=lambda: now[0],
    )
    ahead.on_learned = learned.append
    task = ahead.start(D0)
    assert task is not None
    await task
    assert ahead.known == {} and learned == [] and source.asked == 1

    split = Split("S01", D0, 4.0)  # announced after the answer, ex at D0's open
    source.found = [split]
    now[0] += REFRESH_S - 1.0
    assert ahead.start(D0) is None  # the answer is young: no request on each heartbeat
    assert source.asked == 1

    now[0] += 1.0
    task = ahead.start(D0)
    assert task is not None
    await task
    assert source.asked == 2
    assert ahead.known == {"S01": split} and learned == [{"S01": split}]

    # Asked again an hour later, the same split is not told again; a later day's answer
    # makes D0's refresh moot.
    now[0] += REFRESH_S
    task = ahead.start(D0)
    assert task is not None
    await task
    assert learned == [{"S01": split}]
    task = ahead.start(D0 + timedelta(days=1))
    assert task is not None
    await task
    now[0] += 10 * REFRESH_S
    assert ahead.start(D0) is None
    assert source.asked == 4


async def test_a_failed_refresh_neither_warns_nor_alerts_and_is_asked_again() -> None:
    """A refresh of a day already answered that fails leaves that answer standing: the
    "split lookup failing" warning and alert (a split at the next open not held for) would
    be false, and a flaky source raised one at each of a night's refreshes."""
    from structlog.testing import capture_logs

    from tradingd.feeds.resilience import make_error

    class Flaky(_Source):
        fails = False

        async def splits(self, symbols: Sequence[str], start: date, end: date) -> list[Split]:
            self.asked += 1
            if self.fails:
                raise make_error("alpaca_corporate_actions", "unavailable", "HTTP 503")
            return list(self.found)

    source, now = Flaky(), [0.0]
    told: list[str | None] = []
    ahead = SplitsAhead(
        source,
        ["S00"],
        lambda t: t.date(),
        lambda t: t.date() + timedelta(days=1),
        monotonic=lambda: now[0],
    )
    ahead.on_error = told.append
    held = Split("S00", D0 + timedelta(days=2), 2.0)
    source.found = [held]
    task = ahead.start(D0)
    assert task is not None
    await task
    source.fails = True
    now[0] += REFRESH_S
    with capture_logs() as logs:
        task = ahead.start(D0)
        assert task is not None
        await task
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == []
    assert [e["event"] for e in logs] == ["split.refresh_failed"]
    assert [t for t in told if t is not None] == []
    assert ahead.last_error is None and ahead.known == {"S00": held} and ahead.done_for == D0
    assert ahead.start(D0) is None  # backed off
    source.fails = False
    now[0] += 60.0
    task = ahead.start(D0)
    assert task is not None
    await task
    assert source.asked == 3 and ahead.known == {"S00": held}
