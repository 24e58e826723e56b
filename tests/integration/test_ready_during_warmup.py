"""/ready's `last_bar` check while a live start's warm-up steps its history: the bars are
behind by design, and the detail said "last bar 2009-03-02 older than expected ..." as for a
feed that is late, or "last bar None" before the first. It now says the warm-up is running
(an expected failure, logged at info), and "no bar yet" when none has come."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from restart_harness import ROOT, write_config


async def test_last_bar_check_names_the_warm_up_then_passes_once_trading(tmp_path: Path):
    from tradingd.app import build_engine, health_inputs
    from tradingd.config import load_config

    cfg = write_config(tmp_path, "warm", start="2017-01-03", end="2017-01-06", rate=1000.0)
    engine = build_engine(load_config([ROOT / "config/default.toml", cfg], env={}), "live")
    # The recorded demo's clock is accelerated (no expected bar); a wall-clock live clock
    # expects the newest closed session's bar, after all the warm-up's history.
    expected = datetime(2017, 1, 3, 21, 0, tzinfo=UTC)
    engine.clock.expected_latest = lambda now=None: expected  # type: ignore[method-assign]
    checks, _status, _controls = health_inputs(engine)
    [last_bar] = [c for c in checks if c.name == "last_bar"]
    before = last_bar.probe()
    seen: list[Any] = []
    heartbeat = engine.on_heartbeat

    def watched(*, busy: bool = False) -> None:
        if busy and engine.warmup_bars in (0, 100):
            seen.append((engine.warmup_bars, last_bar.probe()))
        heartbeat(busy=busy)

    engine.on_heartbeat = watched
    await engine.run_until_done()
    after = last_bar.probe()

    assert not before.ok and before.detail == (
        "no bar yet: the first was expected at 2017-01-03 21:00:00+00:00"
    )
    assert [n for n, _ in seen] == [0, 100]
    for n, result in seen:
        assert not result.ok and result.expected, result
        assert result.detail.startswith(
            "warming up: no history bar stepped yet;"
            if n == 0
            else f"warming up: 100 history bars stepped, the last {result.data['last']};"
        )
        assert result.detail.endswith(f"(expected {expected})")
        assert "older than expected" not in result.detail
        assert result.data is not None and result.data["expected"] == expected
    assert engine.warmup_bars > 100 and not engine.warming_up
    assert after.ok and after.detail == f"last bar {engine.last_bar_time}"


async def test_last_bar_check_passes_while_the_newest_bar_is_fetched_not_when_it_failed(
    tmp_path: Path,
):
    """A slow vendor's fetch of the newest bar (minutes at Alpha Vantage's rate) failed /ready
    from the bar's release until the fetch ended, as if the feed were late. While the bar is
    fetched the check passes, naming it; once the source has failed it (asked for again
    later), the check fails as before."""
    import asyncio

    from tradingd.app import build_engine, health_inputs
    from tradingd.config import load_config
    from tradingd.core.errors import RetryableError

    cfg = write_config(tmp_path, "slow", start="2017-01-03", end="2017-01-06", rate=1000.0)
    engine = build_engine(load_config([ROOT / "config/default.toml", cfg], env={}), "live")
    checks, _status, _controls = health_inputs(engine)
    [last_bar] = [c for c in checks if c.name == "last_bar"]
    bars = engine.feed.bars
    seen: dict[datetime, Any] = {}
    fetching = asyncio.Event()
    go_on = asyncio.Event()

    async def slow(t):  # type: ignore[no-untyped-def]
        if t == datetime(2017, 1, 4, tzinfo=UTC):
            engine.clock.expected_latest = lambda now=None: t  # type: ignore[method-assign]
            fetching.set()
            await go_on.wait()  # the vendor's fetch takes its time
        if t == datetime(2017, 1, 5, tzinfo=UTC):
            engine.clock.expected_latest = lambda now=None: t  # type: ignore[method-assign]
            raise RetryableError("alphavantage: no bar yet")
        return await bars(t)

    engine.feed.bars = slow
    # Said once the source failed the bar (it is then asked for again, or missed).
    engine.on_bar_unavailable.append(lambda t: seen.__setitem__(t, last_bar.probe()))

    async def probe_while_fetching() -> None:
        await fetching.wait()
        seen[datetime(2017, 1, 4, tzinfo=UTC)] = last_bar.probe()
        go_on.set()

    prober = asyncio.create_task(probe_while_fetching())
    await engine.run_until_done()
    await prober
    during = seen[datetime(2017, 1, 4, tzinfo=UTC)]
    assert during.ok, during
    assert during.detail.startswith("bar 2017-01-04 00:00:00+00:00 released: being fetched")
    # The next bar's fetch failed: from then on, not ready, the bar named late.
    failed = seen[datetime(2017, 1, 5, tzinfo=UTC)]
    assert not failed.ok
    assert failed.detail == (
        "last bar 2017-01-04 00:00:00+00:00 older than expected 2017-01-05 00:00:00+00:00"
    )
    assert engine.bar_in_progress is None
