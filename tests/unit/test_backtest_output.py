from __future__ import annotations

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradingd.analysis.metrics import summarize
from tradingd.backtest import _jsonable, split_adjusted
from tradingd.core.types import Fill, Side
from tradingd.feeds.panel import Panel


def test_round_trip_across_a_split_is_scored_by_its_real_profit():
    times = pd.bdate_range("2014-06-05", periods=4).to_numpy(dtype="datetime64[ns]")
    close = np.array([[645.0], [650.0], [93.0], [95.0]])
    split = np.array([[1.0], [1.0], [7.0], [1.0]])
    panel = Panel(
        times,
        ("AAPL",),
        close,
        close,
        close,
        close,
        np.ones_like(close),
        split,
        np.zeros_like(close),
    )
    t = panel.datetimes()
    buy = Fill("b#1", "b", "AAPL", Side.BUY, 10, 645.0, 0.0, 0.0, t[0], 645.0)
    sell = Fill("s#1", "s", "AAPL", Side.SELL, 70, 95.0, 0.0, 0.0, t[3], 95.0)
    adjusted = split_adjusted([buy, sell], panel)
    assert adjusted[0].quantity == 70 and adjusted[0].price == 645.0 / 7
    assert adjusted[1] == sell
    s = summarize(
        np.array([1.0, 1.0, 1.0, 1.0]) * 1e4,
        t,
        adjusted,
        initial_capital=1e4,
        gross_exposure=np.zeros(4),
    )
    assert (
        s["round_trips"] == s["closing_fills"] == 1 and s["win_rate"] == 1.0
    )  # 70 x (95 - 92.14) > 0


def test_jsonable_turns_nan_into_null_and_numpy_into_python():
    out = _jsonable({"a": float("nan"), "b": np.int64(3), "c": datetime(2020, 1, 1, tzinfo=UTC)})
    assert out == {"a": None, "b": 3, "c": "2020-01-01T00:00:00+00:00"}


def test_order_and_fill_csv_rows_are_what_a_dict_writer_writes(tmp_path):
    """orders.csv / fills.csv: one header, the fields in the first row's order, times as
    ISO 8601 in their own zone (equal instants in two zones stay distinct), None empty."""
    import csv
    from zoneinfo import ZoneInfo

    from tradingd.backtest import _write_rows

    t = datetime(2024, 3, 8, 21, 0, tzinfo=UTC)
    rows = [
        {"id": "a", "time": t, "qty": 1.5, "note": None},
        {"id": "b", "time": t.astimezone(ZoneInfo("America/New_York")), "qty": -2.0, "note": "x,y"},
        {"id": "c", "time": t, "qty": 0.1 + 0.2, "note": 'q"q'},
    ]
    _write_rows(tmp_path / "fast.csv", rows)
    with (tmp_path / "ref.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: v.isoformat() if isinstance(v, datetime) else v for k, v in r.items()})
    assert (tmp_path / "fast.csv").read_text() == (tmp_path / "ref.csv").read_text()
    assert "2024-03-08T16:00:00-05:00" in (tmp_path / "fast.csv").read_text()
    _write_rows(tmp_path / "empty.csv", [])
    assert (tmp_path / "empty.csv").read_text() == ""


def test_an_undefined_value_is_an_empty_cell_not_nan(tmp_path):
    """An unfilled order's average price is NaN in the engine: the CSV leaves the cell empty,
    as it does for None (limit_price of a market order), so every reader sees one missing."""
    import csv

    from tradingd.backtest import _write_rows

    rows = [
        {"id": "a", "avg_fill_price": float("nan"), "limit_price": None, "qty": 2.0},
        {"id": "b", "avg_fill_price": 101.25, "limit_price": 99.5, "qty": float("nan")},
    ]
    _write_rows(tmp_path / "o.csv", rows)
    text = (tmp_path / "o.csv").read_text()
    assert "nan" not in text.lower()
    got = list(csv.DictReader(text.splitlines()))
    assert got[0] == {"id": "a", "avg_fill_price": "", "limit_price": "", "qty": "2.0"}
    assert got[1] == {"id": "b", "avg_fill_price": "101.25", "limit_price": "99.5", "qty": ""}


def test_an_engine_result_prints_short_whatever_the_run_length():
    """asyncio.run formats the finished task, result included, when it restores the SIGINT
    handler: the repr must not print every bar's equity."""
    from tradingd.engine.engine import EngineResult

    n = 100_000
    times = list(pd.date_range("2000-01-03", periods=n, freq="min", tz="UTC"))
    r = EngineResult("r1", n, times, [1e5 + i for i in range(n)], [0.5] * n, 7, 9, 2)
    text = repr(r)
    assert len(text) < 300
    assert "run_id='r1'" in text and "bars=100000" in text and "final_equity=199999.00" in text


_cell = st.one_of(
    st.none(),
    st.floats(allow_nan=False),
    st.integers(-(10**6), 10**6),
    st.text(max_size=6),
    st.datetimes(
        min_value=datetime(1990, 1, 1),
        max_value=datetime(2030, 1, 1),
        timezones=st.sampled_from([UTC, None, ZoneInfo("America/New_York")]),
    ),
)


@settings(max_examples=200, deadline=None)
@given(
    fields=st.lists(st.sampled_from(["id", "time", "qty", "note", "px"]), unique=True),
    data=st.data(),
)
def test_csv_rows_are_what_a_dict_writer_writes_whatever_the_values(tmp_path_factory, fields, data):
    """Any mix of values per column (times in several zones or none, None, text, numbers),
    rows missing a field (written empty) or with fields the first row lacks (left out)."""
    import csv

    from tradingd.backtest import _write_rows

    first = {k: data.draw(_cell) for k in fields}
    more = data.draw(
        st.lists(
            st.dictionaries(st.sampled_from(["id", "time", "qty", "note", "px", "x"]), _cell),
            max_size=6,
        )
    )
    rows = [first, *more]
    tmp = tmp_path_factory.mktemp("csv")
    _write_rows(tmp / "fast.csv", rows)
    with (tmp / "ref.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(first), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: v.isoformat() if isinstance(v, datetime) else v for k, v in r.items()})
    assert (tmp / "fast.csv").read_text() == (tmp / "ref.csv").read_text()


def test_csv_times_keep_their_own_offset_when_equal_datetimes_print_differently(tmp_path):
    """Equal datetimes can print differently: the same instant in two zones, and the two
    wall times of the repeated hour of a DST change (`fold`), which compare and hash equal
    in one zone. Each row's time is written with its own offset."""
    from tradingd.backtest import _write_rows

    ny = ZoneInfo("America/New_York")
    first = datetime(2021, 11, 7, 1, 30, tzinfo=ny)  # EDT, -04:00
    second = first.replace(fold=1)  # the same wall time an hour later, EST, -05:00
    assert first == second and hash(first) == hash(second)  # what the cache must not merge
    rows = [{"time": t} for t in (first, second, first.astimezone(UTC), second, first)]
    _write_rows(tmp_path / "t.csv", rows)
    assert (tmp_path / "t.csv").read_text().splitlines() == [
        "time",
        "2021-11-07T01:30:00-04:00",
        "2021-11-07T01:30:00-05:00",
        "2021-11-07T05:30:00+00:00",
        "2021-11-07T01:30:00-05:00",
        "2021-11-07T01:30:00-04:00",
    ]


def _split_adjusted_whole_panel(fills: list[Fill], panel: Panel) -> list[Fill]:
    """The definition (how split_adjusted was first written): the reversed cumulative
    product of every symbol's split coefficients, over the whole panel."""
    import dataclasses

    if not fills or not (panel.split != 1.0).any():
        return fills
    after = np.cumprod(panel.split[::-1], axis=0)[::-1]
    after = np.vstack([after[1:], np.ones((1, after.shape[1]))])
    row = {t: k for k, t in enumerate(panel.datetimes())}
    col = {s: j for j, s in enumerate(panel.symbols)}
    out = []
    for f in fills:
        g = float(after[row[f.time], col[f.symbol]])
        if g != 1.0:
            f = dataclasses.replace(
                f, quantity=f.quantity * g, price=f.price / g, reference_price=f.reference_price / g
            )
        out.append(f)
    return out


_split = st.one_of(
    st.just(1.0), st.just(1.0), st.sampled_from([2.0, 3.0, 0.5, 7.0, 1.5, 0.1]), st.just(np.nan)
)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), days=st.integers(1, 12), width=st.integers(1, 5))
def test_split_adjusted_fills_are_the_whole_panel_definition_to_the_bit(data, days, width):
    """split_adjusted works on the split symbols only; the fills it restates must be those
    of the product over the whole panel, bit for bit (NaN splits, no splits, the last day)."""
    split = np.array(
        data.draw(
            st.lists(st.lists(_split, min_size=width, max_size=width), min_size=days, max_size=days)
        )
    )
    times = pd.bdate_range("2014-06-05", periods=days).to_numpy(dtype="datetime64[ns]")
    symbols = tuple(f"S{j}" for j in range(width))
    close = np.full((days, width), 10.0)
    panel = Panel(times, symbols, close, close, close, close, np.ones_like(close), split, close * 0)
    t = panel.datetimes()
    fills = [
        Fill(f"f{k}#1", f"f{k}", symbols[j], Side.BUY, q, p, 0.5, 0.1, t[d], p * 0.999)
        for k, (d, j, q, p) in enumerate(
            data.draw(
                st.lists(
                    st.tuples(
                        st.integers(0, days - 1),
                        st.integers(0, width - 1),
                        st.floats(1, 1e4),
                        st.floats(0.01, 1e4),
                    ),
                    max_size=8,
                )
            )
        )
    ]
    got = split_adjusted(fills, panel)
    want = _split_adjusted_whole_panel(fills, panel)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        for name in ("quantity", "price", "reference_price"):
            a, b = getattr(g, name), getattr(w, name)
            assert (a == b and np.copysign(1, a) == np.copysign(1, b)) or (a != a and b != b)
        assert (g.fill_id, g.time, g.symbol, g.commission) == (
            w.fill_id,
            w.time,
            w.symbol,
            w.commission,
        )


def test_split_adjusted_refuses_a_fill_the_panel_has_no_bar_or_symbol_for():
    times = pd.bdate_range("2014-06-05", periods=3).to_numpy(dtype="datetime64[ns]")
    close = np.array([[10.0, 5.0], [10.0, 5.0], [5.0, 5.0]])
    split = np.array([[1.0, 1.0], [1.0, 1.0], [2.0, 1.0]])
    panel = Panel(times, ("A", "B"), close, close, close, close, close, split, close * 0)
    t = panel.datetimes()
    ok = Fill("a#1", "a", "B", Side.BUY, 1, 5.0, 0.0, 0.0, t[0], 5.0)
    assert split_adjusted([ok], panel) == [ok]
    for bad in (
        Fill("x#1", "x", "C", Side.BUY, 1, 5.0, 0.0, 0.0, t[0], 5.0),  # no such symbol
        Fill("y#1", "y", "B", Side.BUY, 1, 5.0, 0.0, 0.0, t[0] - (t[1] - t[0]), 5.0),  # no bar
    ):
        with pytest.raises(ValueError, match=f"fill {bad.fill_id}: {bad.symbol} at"):
            split_adjusted([bad], panel)


def test_a_backtest_over_the_models_own_period_says_it_is_in_sample():
    """A backtest over dates the model was trained or validated on ran without a word: the
    summary named the model's version only, so `tradingd train` (fitted up to run.end) then
    a backtest of the same years read like an out-of-sample result."""
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from structlog.testing import capture_logs

    from tradingd.backtest import _models

    card = SimpleNamespace(
        data={
            "train_range": ["2005-01-03", "2005-12-30"],
            "validation_range": ["2006-01-03", "2006-06-30"],
        }
    )
    plugin = SimpleNamespace(
        name="ml_ensemble", version="abc", model_path="m", pair=SimpleNamespace(card=card)
    )
    engine = SimpleNamespace(pipeline=SimpleNamespace(signals=[(plugin, 1.0)]))
    days = [datetime(2006, 6, d, tzinfo=UTC) for d in (28, 29, 30)]
    days += [datetime(2006, 7, d, tzinfo=UTC) for d in (3, 5)]
    with capture_logs() as logs:
        (entry,) = _models(engine, days)["models"]
    # to the last validation target's bar: 2006-07-03 (a card without a horizon: one bar)
    assert entry["fitted_on"] == ["2005-01-03", "2006-07-03"]
    assert entry["in_sample"] == {
        "first": days[0].isoformat(), "last": days[3].isoformat(), "bars": 4, "of": 5
    }  # fmt: skip
    assert [e["bars"] for e in logs if e["event"] == "backtest.in_sample"] == [4]
    with capture_logs() as logs:
        (after,) = _models(engine, days[4:])["models"]
    assert "in_sample" not in after and not [e for e in logs if e["event"] == "backtest.in_sample"]


def test_a_record_that_cannot_be_written_whole_is_removed_and_named(tmp_path, monkeypatch):
    """A full disk cut orders.csv, or left environment.json empty beside a complete
    summary.json: the folder read as a finished record (tradingd report reported it), and
    the error was a traceback (exit 1)."""
    import dataclasses
    import errno
    import json

    from tradingd import backtest
    from tradingd.config import Config
    from tradingd.core.errors import TradingdError
    from tradingd.engine.engine import EngineResult

    t = datetime(2024, 3, 8, tzinfo=UTC)
    result = EngineResult("r", 1, [t], [1e5], [0.0], 0, 0, 0)
    real = backtest.environment

    def full(*_: object) -> dict:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(backtest, "environment", full)
    out = tmp_path / "r"
    with pytest.raises(TradingdError, match="No space left on device") as caught:
        backtest.write_outputs(out, Config(), result, {"run_id": "r"}, [], [])
    assert str(out) in str(caught.value) and "--output" in str(caught.value)
    # nothing half there, no temporary file: only the folder's (empty) lock file
    assert sorted(p.name for p in out.iterdir()) == [backtest.RECORD_LOCK]
    monkeypatch.setattr(backtest, "environment", real)
    backtest.write_outputs(out, dataclasses.replace(Config()), result, {"run_id": "r"}, [], [])
    assert (out / "summary.json").exists() and (out / "environment.json").stat().st_size > 0
    # Which plugin code made the numbers: each configured plugin's module and distribution.
    env = json.loads((out / "environment.json").read_text())
    config = Config()
    specs = (*config.signals, config.sizing, *config.risk)
    assert [(p["name"], p["distribution"]) for p in env["plugins"]] == [
        (s.name, "tradingd") for s in specs
    ]


def test_a_record_interrupted_while_written_leaves_nothing_a_report_would_take(
    tmp_path, monkeypatch
):
    """Ctrl-C (or any error other than a full disk) inside write_outputs skipped the cleanup,
    and equity.csv, written first, made the folder a record for `tradingd report`: no
    fills, no summary, read as a run without trades."""
    from tradingd import backtest
    from tradingd.config import Config
    from tradingd.engine.engine import EngineResult

    t = datetime(2024, 3, 8, tzinfo=UTC)
    result = EngineResult("r", 1, [t], [1e5], [0.0], 0, 0, 0)

    def interrupted(*_: object) -> dict:
        raise KeyboardInterrupt

    monkeypatch.setattr(backtest, "environment", interrupted)
    out = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        backtest.write_outputs(out, Config(), result, {"run_id": "r"}, [], [])
    assert [p.name for p in out.iterdir()] == [backtest.RECORD_LOCK]


def _record_args(run_id: str, rows: int = 3):
    """write_outputs' arguments for a small record whose every file names `run_id`."""
    import dataclasses

    from tradingd.config import Config
    from tradingd.engine.engine import EngineResult

    t = datetime(2024, 3, 8, tzinfo=UTC)
    config = Config()
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, run_id=run_id))
    result = EngineResult(run_id, 1, [t], [1e5], [0.0], 0, 0, 0)
    orders = [{"run_id": run_id, "n": i} for i in range(rows)]
    return config, result, {"run_id": run_id}, orders, orders


def _whole_record_of(out) -> str:
    """The run id the folder's record belongs to, after checking every file is that run's."""
    import json

    from tradingd import backtest

    names = sorted(p.name for p in out.iterdir() if p.name != ".record.lock")
    assert names == sorted(backtest.RECORD_FILES[:7]), names  # whole, no temporary file left
    run_id = json.loads((out / "summary.json").read_text())["run_id"]
    assert json.loads((out / "config.json").read_text())["run"]["run_id"] == run_id
    for name in ("orders.csv", "fills.csv"):
        assert {line.split(",")[0] for line in (out / name).read_text().splitlines()[1:]} == {
            run_id
        }
    return run_id


def test_two_runs_writing_one_folder_at_once_leave_one_whole_record(tmp_path, monkeypatch):
    """Parallel runs sharing an --output folder: with one temporary name for every process,
    the second run renamed the first one's half-written environment.json as its own, the
    first then found no temporary file to rename (ENOENT) and removed the files it had
    written, which were the second's: it exited 2 after its whole replay, and the folder
    held summary.json, equity.csv and environment.json only. Now the second waits for the
    folder's lock: both finish, and the folder holds the second's whole record.

    Deterministic: A stops inside its write (environment.json) until B has reached the
    lock (or, without one, its own environment.json)."""
    import fcntl
    import threading

    from tradingd import backtest

    out = tmp_path / "shared"
    a, b = _record_args("run-a"), _record_args("run-b")
    a_inside, b_got_there = threading.Event(), threading.Event()
    real_env, real_flock = backtest.environment, fcntl.flock

    def environment(config):  # type: ignore[no-untyped-def]
        if config is a[0]:
            a_inside.set()
            assert b_got_there.wait(30), "B never reached the lock or its own write"
        else:
            b_got_there.set()
        return real_env(config)

    def flock(fd, op):  # type: ignore[no-untyped-def]
        if threading.current_thread().name == "B":
            b_got_there.set()  # about to wait: A holds the lock
        return real_flock(fd, op)

    monkeypatch.setattr(backtest, "environment", environment)
    monkeypatch.setattr(fcntl, "flock", flock)
    errors: dict[str, BaseException] = {}

    def write(name: str, args) -> None:  # type: ignore[no-untyped-def]
        if name == "B":
            assert a_inside.wait(30)
        try:
            backtest.write_outputs(out, *args)
        except BaseException as e:  # reported below
            errors[name] = e

    threads = [threading.Thread(target=write, args=(n, x), name=n) for n, x in (("A", a), ("B", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == {}
    assert _whole_record_of(out) == "run-b"  # the last whole one


def _write_in_process(out: str, run_id: str, barrier) -> str:  # type: ignore[no-untyped-def]
    from pathlib import Path

    from tradingd import backtest

    args = _record_args(run_id, rows=20_000)
    barrier.wait()
    try:
        backtest.write_outputs(Path(out), *args)
    except Exception as e:  # the parent asserts on it
        return f"{type(e).__name__}: {e}"
    return ""


def test_four_processes_writing_one_folder_each_finish_and_leave_one_whole_record(tmp_path):
    """The sweep of the report: four real processes, released together, write into one
    folder; each finishes, and the folder holds one of them whole."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")
    out = tmp_path / "shared"
    ids = [f"run-{i}" for i in range(4)]
    with ctx.Manager() as manager:
        barrier = manager.Barrier(len(ids))
        with ProcessPoolExecutor(len(ids), mp_context=ctx) as pool:
            errors = list(pool.map(_write_in_process, [str(out)] * 4, ids, [barrier] * 4))
    assert errors == [""] * 4
    assert _whole_record_of(out) in ids


def test_a_failed_write_removes_only_the_files_it_made(tmp_path, monkeypatch):
    """The clean-up unlinked whatever was at each name it had written, a file another
    writer (one that takes no lock: an older tradingd) had put there since included."""
    import errno
    import os

    from tradingd import backtest
    from tradingd.core.errors import TradingdError

    out = tmp_path / "r"

    def theirs_then_full(config):  # type: ignore[no-untyped-def]
        (out / "other").write_text("another writer's orders")
        os.replace(out / "other", out / "orders.csv")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(backtest, "environment", theirs_then_full)
    with pytest.raises(TradingdError, match="free space"):
        backtest.write_outputs(out, *_record_args("r"))
    assert (out / "orders.csv").read_text() == "another writer's orders"
    assert not (out / "fills.csv").exists()  # this call's


@pytest.mark.parametrize(
    ("code", "advice"),
    [
        ("ENOSPC", "free space"),
        ("EDQUOT", "free space"),
        ("ENAMETOOLONG", "shorter --output path"),
        ("EACCES", "writable for this user"),
        ("EROFS", "writable for this user"),
        ("ENOENT", "once that is resolved"),
    ],
)
def test_a_record_that_cannot_be_written_gets_the_advice_of_its_error(
    tmp_path, monkeypatch, code, advice
):
    """'free space and run it again' was the advice for every error: for a path too long
    (a 4,075-character --output, after the whole replay) and a folder removed meanwhile."""
    import errno
    import os

    from tradingd import backtest
    from tradingd.core.errors import TradingdError

    number = getattr(errno, code)

    def failing(config):  # type: ignore[no-untyped-def]
        raise OSError(number, os.strerror(number))

    monkeypatch.setattr(backtest, "environment", failing)
    with pytest.raises(TradingdError) as caught:
        backtest.write_outputs(tmp_path / "r", *_record_args("r"))
    said = str(caught.value)
    assert os.strerror(number) in said and advice in said and str(tmp_path / "r") in said
    assert ("free space" in said) == (code in ("ENOSPC", "EDQUOT"))


def _engine_with_card(data):
    from types import SimpleNamespace

    card = SimpleNamespace(data=data)
    plugin = SimpleNamespace(
        name="ml_ensemble", version="abc", model_path="m", pair=SimpleNamespace(card=card)
    )
    return SimpleNamespace(pipeline=SimpleNamespace(signals=[(plugin, 1.0)]))


def test_a_backtest_before_the_models_fitted_span_says_the_model_saw_its_future():
    """A model trained from 2012 back-tested on 2005-2010 was silent: no traded bar lies in
    its training or validation dates, yet it was fitted on data after every one of them."""
    from datetime import UTC, datetime

    from structlog.testing import capture_logs

    from tradingd.backtest import _models

    engine = _engine_with_card(
        {
            "train_range": ["2012-01-03", "2015-12-31"],
            "validation_range": ["2016-01-04", "2018-12-28"],
        }
    )
    days = [datetime(2010, 12, d, tzinfo=UTC) for d in (28, 29, 30)]
    with capture_logs() as logs:
        (entry,) = _models(engine, days)["models"]
    assert "in_sample" not in entry
    assert entry["fitted_after"] == {
        "first": days[0].isoformat(), "last": days[-1].isoformat(), "bars": 3, "of": 3
    }  # fmt: skip
    (warned,) = [e for e in logs if e["event"] == "backtest.model_fitted_after"]
    assert warned["fitted_on"] == ["2012-01-03", "2018-12-31"]  # + the 1-bar horizon
    assert warned["run"] == ["2010-12-28", "2010-12-30"] and warned["bars"] == 3
    assert "look-ahead" in warned["rule"]
    # a run after the model's dates: neither warning
    later = [datetime(2019, 1, d, tzinfo=UTC) for d in (2, 3)]
    with capture_logs() as logs:
        (entry,) = _models(engine, later)["models"]
    assert "fitted_after" not in entry and "in_sample" not in entry
    assert not [e for e in logs if e["log_level"] == "warning"]


def test_the_fitted_span_reaches_the_horizon_bars_past_the_last_validation_window():
    """A horizon-5 card's last validation target is the return to 5 bars after the
    validation's last date: those bars were fitted on, and were counted out of sample.
    Counted as weekdays: 2006-07-04 (a holiday) makes the span one bar short."""
    from datetime import UTC, datetime

    from tradingd.backtest import _models

    days = [datetime(2006, 7, d, tzinfo=UTC) for d in (3, 5, 6, 7, 10, 11, 12)]
    card = {
        "train_range": ["2005-01-03", "2005-12-30"],
        "validation_range": ["2006-01-03", "2006-06-30"],
    }
    for horizon, fitted_to, bars in ((5, "2006-07-07", 4), (1, "2006-07-03", 1)):
        data = {**card, "target": {"horizon_bars": horizon}}
        (entry,) = _models(_engine_with_card(data), days)["models"]
        assert entry["fitted_on"] == ["2005-01-03", fitted_to]
        assert entry["in_sample"]["bars"] == bars
    # a card without a target (every card before it was recorded): one bar
    (entry,) = _models(_engine_with_card(card), days)["models"]
    assert entry["in_sample"]["bars"] == 1


def test_a_replay_before_the_models_fitted_span_says_so():
    from datetime import UTC, datetime

    from structlog.testing import capture_logs

    from tradingd.app import check_replay_in_sample

    card = {
        "train_range": ["2012-01-03", "2015-12-31"],
        "validation_range": ["2016-01-04", "2018-12-28"],
    }
    days = [datetime(2011, 12, d, tzinfo=UTC) for d in (29, 30)]
    with capture_logs() as logs:
        check_replay_in_sample(card, days, plugin="ml_ensemble", version="v", path="c.json")
    (warned,) = [e for e in logs if e["event"] == "replay.model_fitted_after"]
    assert (warned["bars"], warned["card"], warned["fitted_on"][0]) == (2, "c.json", "2012-01-03")
    assert not [e for e in logs if e["event"] == "replay.in_sample"]


def test_the_warm_up_bars_before_the_models_first_forecast_are_not_said():
    """The default backtest trades from the data's first bar, and the model has no view
    until its window is full (179 bars): those bars lie before its first training window's
    end, but it decided none of them, so they are no look-ahead through it."""
    from datetime import UTC, datetime

    from structlog.testing import capture_logs

    from tradingd.backtest import _models

    days = [datetime(1999, 1, d, tzinfo=UTC) for d in (4, 5, 6, 7)]
    engine = _engine_with_card(
        {
            "train_range": ["1999-01-06", "2005-12-30"],
            "validation_range": ["2006-01-03", "2006-06-30"],
        }
    )
    ((plugin, _),) = engine.pipeline.signals
    for first, bars in ((days[2], 0), (days[1], 1), (None, 0)):
        plugin.first_forecast = first
        with capture_logs() as logs:
            (entry,) = _models(engine, days)["models"]
        said = [e for e in logs if e["event"] == "backtest.model_fitted_after"]
        assert [e["bars"] for e in said] == ([bars] if bars else [])
        assert entry.get("fitted_after", {}).get("bars", 0) == bars


def _tree(folder) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize(
    "held",
    [
        # a user's project folder: names a record has, and no record of tradingd's
        {"config.json": '{"my": 1}', "equity.csv": "x\n"},
        # a walk-forward's results: its equity.csv is the stitched curve
        {"walkforward.json": "{}", "equity.csv": "time,equity\n", "folds.csv": "fold\n"},
        # a folder of other things (run.output_dir itself given as --output)
        {"notes.txt": "mine"},
    ],
)
def test_a_record_is_not_written_over_a_folder_that_holds_no_backtest_record(tmp_path, held):
    """`--output proj` replaced proj/config.json and proj/equity.csv (no summary.json: no
    record of tradingd's) without a word; into a walk-forward's folder it replaced the
    stitched equity.csv, and `tradingd report` then refused the folder."""
    from tradingd import backtest
    from tradingd.core.errors import TradingdError

    out = tmp_path / "proj"
    out.mkdir()
    for name, text in held.items():
        (out / name).write_text(text)
    before = _tree(out)
    with pytest.raises(TradingdError) as caught:
        backtest.write_outputs(out, *_record_args("run-a"))
    said = str(caught.value)
    assert str(out) in said and "empty or new folder" in said and "--output" in said
    assert all(name in said for name in held)
    after = _tree(out)
    after.pop(backtest.RECORD_LOCK, None)
    assert after == before


def test_a_backtest_refuses_an_output_folder_of_other_files_before_loading(tmp_path, monkeypatch):
    import asyncio

    from tradingd import backtest
    from tradingd.config import Config
    from tradingd.core.errors import TradingdError

    out = tmp_path / "proj"
    out.mkdir()
    (out / "equity.csv").write_text("mine\n")

    def load(*_: object) -> None:
        raise AssertionError("the data was loaded before the folder was checked")

    monkeypatch.setattr(backtest, "load_pinned", load)
    with pytest.raises(TradingdError, match=r"--output .*proj holds files that are no tradingd"):
        asyncio.run(backtest.run_backtest(Config(), output_dir=out))
    assert (out / "equity.csv").read_text() == "mine\n"


def test_a_record_of_another_run_is_replaced_with_a_warning_naming_both(tmp_path):
    """A sweep's variants share an --output folder (README): the last whole record stays,
    and the one it replaces is said (`tradingd report OLD` read the new run silently)."""
    from structlog.testing import capture_logs

    from tradingd import backtest

    out = tmp_path / "shared"
    backtest.write_outputs(out, *_record_args("run-a"))
    with capture_logs() as logs:
        backtest.write_outputs(out, *_record_args("run-b"))
    assert _whole_record_of(out) == "run-b"
    (said,) = [e for e in logs if e["event"] == "backtest.record_of_other_run_replaced"]
    assert (said["run_id"], said["replaced"]) == ("run-b", "run-a")
    with capture_logs() as logs:
        backtest.write_outputs(out, *_record_args("run-b"))  # its own rerun: nothing said
    assert not [e for e in logs if e["event"] == "backtest.record_of_other_run_replaced"]


def test_a_record_left_without_its_summary_is_replaced(tmp_path):
    """A writer killed between its last two renames leaves a record without summary.json:
    the rerun replaces it (its files are tradingd's), with a warning."""
    from structlog.testing import capture_logs

    from tradingd import backtest

    out = tmp_path / "r"
    backtest.write_outputs(out, *_record_args("run-a"))
    (out / "summary.json").unlink()
    with capture_logs() as logs:
        backtest.write_outputs(out, *_record_args("run-a"))
    assert _whole_record_of(out) == "run-a"
    assert [e for e in logs if e["event"] == "backtest.incomplete_record_replaced"]


def test_temporary_files_of_a_killed_writer_go_with_the_next_record_written_there(tmp_path):
    """A run killed while writing its record left `.orders.csv.<pid>.<hex>.tmp` files in the
    folder, still there after every later run. Only the writer's own pattern goes."""
    from tradingd import backtest

    out = tmp_path / "r"
    backtest.write_outputs(out, *_record_args("run-a"))
    left = [".orders.csv.14200.a14382ff.tmp", ".equity.csv.14594.6d8c4e9a.tmp"]
    kept = [".notes.txt.1.a14382ff.tmp", ".orders.csv.x.a14382ff.tmp", "orders.csv.1.tmp"]
    for name in left + kept:
        (out / name).write_text("half")
    backtest.write_outputs(out, *_record_args("run-a"))
    names = {p.name for p in out.iterdir()}
    assert not names & set(left) and set(kept) <= names
    for name in kept:
        (out / name).unlink()
    assert _whole_record_of(out) == "run-a"


def test_the_runs_own_audit_folder_in_its_record_folder_is_no_foreign_file(tmp_path):
    """strategy_api's BacktestEngine puts the run's audit folder beside its record: that
    folder is the run's, not a user's file that would refuse the record."""
    import dataclasses

    from tradingd import backtest
    from tradingd.core.errors import TradingdError

    out = tmp_path / "record"
    (out / "audit").mkdir(parents=True)
    config, *rest = _record_args("run-a")
    mine = dataclasses.replace(
        config, log=dataclasses.replace(config.log, audit_dir=str(out / "audit"))
    )
    backtest.write_outputs(out, mine, *rest)
    assert json.loads((out / "summary.json").read_text())["run_id"] == "run-a"
    other = tmp_path / "other"
    (other / "audit").mkdir(parents=True)
    with pytest.raises(TradingdError, match=r"holds files that are no tradingd record \(audit\)"):
        backtest.write_outputs(other, *_record_args("run-a"))


@pytest.mark.parametrize("where", ["nested", "home"])
def test_the_runs_own_audit_folder_deeper_in_its_record_folder_is_no_foreign_file(
    tmp_path, monkeypatch, where
):
    """Only an audit folder directly in the record folder was excused: `log.audit_dir =
    "rec/logs/audit"`, or one written with `~` (the run expands it, the check did not),
    refused the record after the whole replay, and every rerun at its start."""
    import dataclasses

    from tradingd import backtest

    monkeypatch.setenv("HOME", str(tmp_path))
    out = tmp_path / "record"
    if where == "nested":
        audit, given = out / "logs" / "audit", str(out / "logs" / "audit")
    else:
        audit, given = out / "audit", "~/record/audit"
    audit.mkdir(parents=True)
    (audit / "run-a.jsonl").write_text("{}\n")
    config, *rest = _record_args("run-a")
    mine = dataclasses.replace(config, log=dataclasses.replace(config.log, audit_dir=given))
    backtest.write_outputs(out, mine, *rest)
    assert json.loads((out / "summary.json").read_text())["run_id"] == "run-a"
    assert (audit / "run-a.jsonl").read_text() == "{}\n"


def test_a_users_config_json_alone_is_not_taken_for_a_records(tmp_path):
    """A folder holding only a user's config.json with "run" and "data" tables (a copy kept
    from a record) was taken for a record cut short and replaced, with a warning only."""
    from tradingd import backtest
    from tradingd.core.errors import TradingdError

    out = tmp_path / "mine"
    out.mkdir()
    text = '{"run": {"name": "mine"}, "data": {}, "note": "user file"}'
    (out / "config.json").write_text(text)
    with pytest.raises(TradingdError, match=r"no tradingd record \(config.json\)"):
        backtest.write_outputs(out, *_record_args("run-a"))
    assert (out / "config.json").read_text() == text
