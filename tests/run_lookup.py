"""What a live start reads to find the run it continues (run_continuation), the same on every
store: only live runs, only ids that start with the prefix (whose `_` is no wildcard), the
least recently active first, by the checkpoint written last, else the start."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tradingd.core.types import RunInfo

T0 = datetime(2020, 1, 2, 21, 0, tzinfo=UTC)
SYMS = ("AAA", "BBB")


async def check_live_run_configs(store) -> None:  # type: ignore[no-untyped-def]
    day = timedelta(days=1)
    for run in (
        RunInfo("a_b-live-1", "live", T0, '{"n": 1}', SYMS, 1.0),
        RunInfo("a_b-live-2", "live", T0 + day, '{"n": 2}', SYMS, 1.0),
        RunInfo("a_b-live-3", "live", T0 + 2 * day, '{"n": 3}', SYMS, 1.0),  # never a bar
        RunInfo("a_b-backtest-1", "backtest", T0, '{"n": 4}', SYMS, 1.0),
        RunInfo("axb-live-1", "live", T0, '{"n": 5}', SYMS, 1.0),
    ):
        await store.begin_run(run)
    # Started first, active last: run 1 went on after run 2 was left.
    store.record_checkpoint("a_b-live-2", T0 + day, {"k": 2})
    await store.flush()
    store.record_checkpoint("a_b-live-1", T0 + 3 * day, {"k": 1})
    await store.flush()
    assert await store.live_run_configs("a_b-live-") == [
        ("a_b-live-3", '{"n": 3}'),
        ("a_b-live-2", '{"n": 2}'),
        ("a_b-live-1", '{"n": 1}'),
    ]
    assert await store.live_runs_named("a_b-live-") == ["a_b-live-1", "a_b-live-2", "a_b-live-3"]
