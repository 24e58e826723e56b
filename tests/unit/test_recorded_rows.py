"""`Store.recorded`: a backtest's orders and fills made from the store's records while the
writer commits its last batch must be exactly what `fetch` reads once it has: the same rows,
values, types and order, whatever the states, times and floats were."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from tradingd.core.types import Fill, Order, OrderStatus, OrderType, RunInfo, Side
from tradingd.storage.postgres import PostgresStore
from tradingd.storage.sqlite import SqliteStore

T0 = datetime(2021, 3, 1, 21, 0, tzinfo=UTC)
RUN = "r1"


def _run(run_id: str = RUN) -> RunInfo:
    return RunInfo(run_id, "backtest", T0, "{}", ("AAA", "BBB"), 100_000.0)


def _same_rows(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """Equal rows, value by value: the same type, NaN where NaN, the sign of a zero, a
    time's zone, offset and fold."""
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        assert list(g) == list(w), k
        for name in g:
            a, b = g[name], w[name]
            assert type(a) is type(b), (k, name, a, b)
            if isinstance(a, datetime):
                assert (a.isoformat(), a.tzinfo, a.fold) == (b.isoformat(), b.tzinfo, b.fold)
            elif isinstance(a, float):
                if math.isnan(b):
                    assert math.isnan(a), (k, name, a, b)
                else:
                    assert a == b and math.copysign(1.0, a) == math.copysign(1.0, b), (k, name)
            else:
                assert a == b, (k, name, a, b)


# Times of every kind an order or fill may carry: UTC, another offset, naive (UTC), a
# pandas Timestamp with nanoseconds (stored to the microsecond), the two instants of a DST
# change's repeated hour (equal in Python: `fold` is not compared), several of them equal.
_NY = ZoneInfo("America/New_York")
_TIMES = [
    datetime(2021, 11, 7, 1, 30, tzinfo=_NY),
    datetime(2021, 11, 7, 1, 30, fold=1, tzinfo=_NY),
    datetime(2021, 11, 7, 5, 30, tzinfo=UTC),
    T0,
    T0 + timedelta(hours=1),
    (T0 + timedelta(hours=1)).astimezone(timezone(timedelta(hours=-5))),
    (T0 + timedelta(days=1)).replace(tzinfo=None),
    pd.Timestamp(T0 + timedelta(days=1)) + pd.Timedelta(nanoseconds=700),
    pd.Timestamp(T0 + timedelta(days=1)) + pd.Timedelta(nanoseconds=300),
    T0 + timedelta(days=2, microseconds=1),
]
_FLOATS = st.sampled_from([0.0, -0.0, 1.5, -2.25, 1e300, math.inf, math.nan, 7.0, 1e-310])
_OPTIONAL = st.one_of(st.none(), _FLOATS)
_TEXT = st.sampled_from(["", "done", "risk: max_position", "é", "a\x00b"])


# Order ids sort by code point, as SQLite's text does: "Z" < "a" < "o" < "é".
_IDS = ["o0", "o1", "é2", "Z3", "a4", "o10"]


@st.composite
def _order_state(draw: st.DrawFn) -> tuple[int, dict[str, Any]]:
    return draw(st.integers(0, len(_IDS) - 1)), {
        "symbol": draw(st.sampled_from(["AAA", "BBB", np.str_("CCC")])),
        "side": draw(st.sampled_from(list(Side))),
        "quantity": draw(_FLOATS),
        "created_at": draw(st.sampled_from(_TIMES)),
        "type": draw(st.sampled_from(list(OrderType))),
        "limit_price": draw(_OPTIONAL),
        "stop_price": draw(_OPTIONAL),
        "status": draw(st.sampled_from(list(OrderStatus))),
        "filled_quantity": draw(_FLOATS),
        "avg_fill_price": draw(_FLOATS),
        "reason": draw(_TEXT),
        "updated_at": draw(st.one_of(st.none(), st.sampled_from(_TIMES))),
    }


@st.composite
def _fill(draw: st.DrawFn) -> tuple[Fill, datetime | None]:
    fill = Fill(
        f"f{draw(st.integers(0, 6))}",  # repeated ids: the first row stays
        draw(st.sampled_from(_IDS)),
        draw(st.sampled_from(["AAA", "BBB"])),
        draw(st.sampled_from(list(Side))),
        draw(_FLOATS),
        draw(_FLOATS),
        draw(_FLOATS),
        draw(_FLOATS),
        draw(st.sampled_from(_TIMES)),
        draw(_FLOATS),
    )
    return fill, draw(st.one_of(st.none(), st.sampled_from(_TIMES)))


_BATCH = st.tuples(
    st.lists(_order_state(), max_size=6), st.lists(_fill(), max_size=5), st.booleans()
)


async def _recorded_and_fetched(
    batches: list[Any], store: SqliteStore
) -> tuple[dict[str, list], dict[str, list]]:
    await store.start()
    try:
        assert store.keep_records()  # before the run begins, as run_backtest does
        await store.begin_run(_run())
        if store.writer_process() is not None:
            # Past its start-up (`sync` waits for its jobs): the batches go to the writer
            # process, as a backtest's do after its first bars.
            store.writer_process().sync()
        orders: dict[int, Order] = {}
        other = Order("x9", "AAA", Side.BUY, 5.0, T0)  # another run's: never in r1's rows
        store.record_orders("r0", [other])
        store.record_fills("r0", [Fill("f0", "x9", "AAA", Side.BUY, 5.0, 1.0, 0.0, 0.0, T0)])
        for states, fills, flush in batches:
            for k, values in states:
                # An order's later state changes the same object, as the engine's do.
                o = orders.setdefault(
                    k, Order(_IDS[k], values["symbol"], values["side"], 1.0, values["created_at"])
                )
                for name, v in values.items():
                    if name != "created_at" or o.status is OrderStatus.NEW:
                        setattr(o, name, v)
                store.record_orders(RUN, [o])
            for fill, booked in fills:
                store.record_fills(RUN, [fill], booked)
            if flush:
                await store.write_behind()
        await store.write_behind()  # as the engine does after its last bar
        made = {t: await store.recorded(t, RUN) for t in ("orders", "fills")}
        await store.flush()
        read = {t: await store.fetch(t, RUN) for t in ("orders", "fills")}
        return made, read
    finally:
        await store.stop()


@settings(max_examples=60, deadline=None)
@given(batches=st.lists(_BATCH, min_size=1, max_size=4))
def test_recorded_rows_are_the_rows_fetch_reads(batches: list[Any], tmp_path_factory) -> None:
    path = tmp_path_factory.mktemp("rec") / "store.db"
    made, read = asyncio.run(_recorded_and_fetched(batches, SqliteStore(path)))
    for table in ("orders", "fills"):
        _same_rows(made[table], read[table])


def test_the_cases_the_property_covers_occur() -> None:
    """The edge cases above, in one fixed sequence: a state in a later batch, ties of
    created_at broken by id, a repeated fill id, -0.0, NaN and a naive time."""
    d = {
        "symbol": "AAA",
        "side": Side.SELL,
        "quantity": -0.0,
        "type": OrderType.LIMIT,
        "limit_price": math.nan,
        "stop_price": None,
        "status": OrderStatus.NEW,
        "filled_quantity": 0.0,
        "avg_fill_price": math.nan,
        "reason": "",
        "updated_at": None,
    }
    batches = [
        ([(3, {**d, "created_at": T0}), (1, {**d, "created_at": T0.replace(tzinfo=None)})], [], 1),
        (
            [(3, {**d, "created_at": T0, "status": OrderStatus.FILLED, "updated_at": _TIMES[1]})],
            [
                (Fill("f1", "o3", "AAA", Side.SELL, 2.0, 10.0, 0.0, -0.0, T0), None),
                (Fill("f1", "o3", "AAA", Side.SELL, 9.0, 10.0, 0.0, 0.0, T0), T0),
            ],
            0,
        ),
    ]
    made, read = asyncio.run(_recorded_and_fetched(batches, SqliteStore(":memory:")))
    _same_rows(made["orders"], read["orders"])
    _same_rows(made["fills"], read["fills"])
    # The same created_at (naive means UTC): by id, in code point order ("Z" < "o").
    assert [o["client_order_id"] for o in made["orders"]] == ["Z3", "o1"]
    assert [o["status"] for o in made["orders"]] == ["filled", "new"]
    first = made["orders"][1]
    assert first["limit_price"] is None and math.isnan(first["avg_fill_price"])
    assert math.copysign(1.0, first["quantity"]) == 1.0  # SQLite's 0.0
    assert made["orders"][0]["updated_at"] == datetime(2021, 11, 7, 6, 30, tzinfo=UTC)  # fold=1
    assert [f["quantity"] for f in made["fills"]] == [2.0]


def test_a_dst_fold_is_stored_as_its_own_instant(tmp_path: Path) -> None:
    """01:30 in New York on 2021-11-07 happens twice (05:30 and 06:30 UTC). The two compare
    and hash equal in Python, so one memo entry for both stored the second as the first."""
    first = datetime(2021, 11, 7, 1, 30, tzinfo=_NY)
    second = first.replace(fold=1)
    d = {"symbol": "AAA", "side": Side.BUY, "quantity": 1.0, "created_at": first}
    batches = [([(0, {**d, "updated_at": first}), (1, {**d, "updated_at": second})], [], 0)]
    made, read = asyncio.run(_recorded_and_fetched(batches, SqliteStore(tmp_path / "s.db")))
    assert [o["updated_at"].hour for o in read["orders"]] == [5, 6]
    _same_rows(made["orders"], read["orders"])


def _fill(fill_id: str, quantity: float) -> Fill:
    return Fill(fill_id, "o1", "AAA", Side.BUY, quantity, 10.0, 0.0, 0.0, T0)


async def _ends(store: SqliteStore, run_id: str = RUN) -> tuple[list, list]:
    await store.write_behind()
    made = await store.recorded("fills", run_id)
    await store.flush()
    return made, await store.fetch("fills", run_id)


def test_a_rerun_of_a_run_id_keeps_only_its_own_records(tmp_path: Path) -> None:
    async def go() -> tuple[list, list]:
        store = SqliteStore(tmp_path / "s.db")
        await store.start()
        try:
            assert store.keep_records()
            await store.begin_run(_run())
            store.record_fills(RUN, [_fill("f1", 1.0)])
            await store.begin_run(_run())  # again: its rows deleted, the fill id free
            store.record_fills(RUN, [_fill("f1", 2.0)])
            return await _ends(store)
        finally:
            await store.stop()

    made, read = asyncio.run(go())
    assert [f["quantity"] for f in made] == [2.0] and made == read


def test_records_kept_after_the_run_began_are_not_used(tmp_path: Path) -> None:
    async def go() -> tuple[list, list]:
        store = SqliteStore(tmp_path / "s.db")
        await store.start()
        try:
            await store.begin_run(_run())
            store.record_fills(RUN, [_fill("f1", 1.0)])
            assert store.keep_records(("fills",))  # too late for f1: read back instead
            store.record_fills(RUN, [_fill("f2", 2.0)])
            return await _ends(store)
        finally:
            await store.stop()

    made, read = asyncio.run(go())
    assert [f["fill_id"] for f in made] == ["f1", "f2"] and made == read


def test_a_live_run_keeps_no_records(tmp_path: Path) -> None:
    async def go() -> None:
        store = SqliteStore(tmp_path / "s.db")
        await store.start()
        try:
            store.keep_records()
            with pytest.raises(RuntimeError, match="live run"):
                await store.begin_run(RunInfo("live1", "live", T0, "{}", ("AAA",), 1.0))
            with pytest.raises(RuntimeError, match="live run"):
                await store.resume_run(RunInfo("live1", "live", T0, "{}", ("AAA",), 1.0))
        finally:
            await store.stop()

    asyncio.run(go())


def test_a_value_sqlite_would_change_is_read_back_with_a_warning(tmp_path: Path) -> None:
    """A text column holding a number (SQLite stores it as text) cannot be made from the
    record: the rows are read back once written, and the log says so."""
    d = {"symbol": "AAA", "side": Side.BUY, "quantity": 1.0, "created_at": T0, "reason": 7}
    with capture_logs() as logs:
        made, read = asyncio.run(
            _recorded_and_fetched([([(0, d)], [], 0)], SqliteStore(tmp_path / "s.db"))
        )
    assert made["orders"] == read["orders"] and read["orders"][0]["reason"] == "7"
    assert [e["table"] for e in logs if e["event"] == "storage.recorded.read_back"] == ["orders"]


def test_without_kept_records_the_rows_are_read_back_once_written(tmp_path: Path) -> None:
    async def go() -> tuple[list, list]:
        store = SqliteStore(tmp_path / "s.db", batch_size=100_000, flush_interval_s=3600)
        await store.start()
        try:
            await store.begin_run(_run())
            store.record_orders(RUN, [Order("o1", "AAA", Side.BUY, 3.0, T0)])
            made = await store.recorded("orders", RUN)  # nothing kept: flushed, read back
            return made, await store.fetch("orders", RUN)
        finally:
            await store.stop()

    made, read = asyncio.run(go())
    assert len(made) == 1 and made == read


def test_keep_records_is_refused_where_the_database_orders_text_itself() -> None:
    store = PostgresStore("postgresql://127.0.0.1:1/none")
    assert store.keep_records() is False
    with pytest.raises(ValueError, match="equity"):
        SqliteStore(":memory:").keep_records(("orders", "equity"))


async def test_a_backtest_makes_its_report_without_reading_it_back(
    engine_config, monkeypatch, tmp_path: Path
) -> None:
    """run_backtest's orders and fills come from the records (nothing is fetched), and they
    are what the database holds once the run has ended."""
    from conftest import make_panel

    from tradingd.backtest import run_backtest

    fetched: list[str] = []
    real_fetch = SqliteStore.fetch

    async def spy(self: SqliteStore, table: str, run_id: str) -> list[dict[str, Any]]:
        fetched.append(table)
        return await real_fetch(self, table, run_id)

    monkeypatch.setattr(SqliteStore, "fetch", spy)
    out = await run_backtest(engine_config, panel=make_panel(), output_dir=tmp_path / "out")
    monkeypatch.undo()
    assert not {"orders", "fills"} & set(fetched)
    store = SqliteStore(tmp_path / "store.db")
    await store.start()
    try:
        read = {t: await store.fetch(t, out.run_id) for t in ("orders", "fills")}
    finally:
        await store.stop()
    assert len(read["orders"]) > 10 and len(read["fills"]) > 10
    _same_rows(out.orders, read["orders"])
    _same_rows(out.fills, read["fills"])


async def test_a_failed_report_still_ends_the_runs_record(engine_config, tmp_path: Path) -> None:
    """Every bar ran: the run's record is ended (ended_at, the summary) even when the
    after_last_bar hook fails, and the error reaches the caller."""
    from conftest import make_panel

    from tradingd.app import build_engine

    async def fail(engine: Any) -> None:
        raise ValueError("the report failed")

    engine = build_engine(engine_config, "backtest", panel=make_panel(), after_last_bar=fail)
    with pytest.raises(ValueError, match="the report failed"):
        await engine.run_until_done()
    store = SqliteStore(tmp_path / "store.db")
    await store.start()
    try:
        [run] = await store.fetch("runs", engine.run.run_id)
    finally:
        await store.stop()
    assert run["ended_at"] is not None and run["summary"]["bars"] > 100


def test_only_each_orders_latest_state_is_kept_for_the_report(tmp_path: Path) -> None:
    """An order's superseded states are not held for the report (it has the latest state of
    each order, at its first one's place): the records kept were every state of the run,
    and a dict of them was built after the last bar, on the replay's clock. The report's
    rows are still the ones `fetch` reads."""
    import dataclasses
    import gc
    import weakref

    class Reason(str):  # a value of the first state that a weak reference can follow
        pass

    async def go() -> tuple[bool, list, list]:
        store = SqliteStore(tmp_path / "s.db", process=False)
        await store.start()
        try:
            assert store.keep_records(("orders",))
            await store.begin_run(_run())
            first = Reason("submitted")
            a = Order("r1|a", "AAA", Side.BUY, 2.0, T0, reason=first)
            b = Order("r1|b", "BBB", Side.SELL, 1.0, T0)
            store.record_orders(RUN, [a, b])
            later = T0 + timedelta(days=1)
            filled = dataclasses.replace(
                a,
                status=OrderStatus.FILLED,
                filled_quantity=2.0,
                avg_fill_price=9.0,
                reason="done",
                updated_at=later,
            )
            store.record_orders(RUN, [filled])
            await store.flush()  # the buffers written: only what is kept holds records now
            gone = weakref.ref(first)
            del a, first
            gc.collect()
            held = gone() is not None  # (before the report takes the records)
            made = await store.recorded("orders", RUN)
            return held, list(made), await store.fetch("orders", RUN)
        finally:
            await store.stop()

    held, made, read = asyncio.run(go())
    assert not held  # the first state of r1|a was let go once superseded
    assert [(o["client_order_id"], o["reason"]) for o in made] == [("r1|a", "done"), ("r1|b", "")]
    _same_rows(made, read)
