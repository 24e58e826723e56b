"""AuditLog off the engine's path: the line encoder gives the JSON the dict encoder gave, the
writer thread writes in order and boundedly, failures surface, live flushes are on disk."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

import tradingd.audit as audit
import tradingd.audit_file as audit_file
from tradingd.audit import AuditLog
from tradingd.core.errors import ConfigError, StorageError
from tradingd.core.types import Fill, Leg, Order, OrderStatus, OrderType, Side

T = datetime(2020, 1, 2, tzinfo=UTC)


def reference_line(event: str, obj: object, booked: datetime | None = None) -> str:
    """How the audit encoded a record before the line encoder: a dict through JSONEncoder."""
    row = {"event": event} | {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}  # type: ignore[arg-type]
    for k, v in row.items():
        if isinstance(v, datetime):
            row[k] = v.isoformat()
        elif v.__class__ is float and not math.isfinite(v):
            row[k] = None
    if booked is not None:
        row["booked_at"] = booked.isoformat()
    return json.JSONEncoder(check_circular=False, default=str, allow_nan=False).encode(row)


floats = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**6), 10**6).map(float)
texts = st.text(max_size=12)  # any unicode: quotes, backslashes, control characters, emoji
times = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)
)


@st.composite
def orders(draw: st.DrawFn) -> Order:
    return Order(
        client_order_id=draw(texts),
        symbol=draw(texts),
        side=draw(st.sampled_from(Side)),
        quantity=draw(floats),
        created_at=draw(times),
        type=draw(st.sampled_from(OrderType)),
        limit_price=draw(st.none() | floats),
        stop_price=draw(st.none() | floats),
        trail_pct=draw(st.none() | floats),
        leg=draw(st.sampled_from(Leg)),
        parent_id=draw(st.none() | texts),
        oco_group=draw(st.none() | texts),
        status=draw(st.sampled_from(OrderStatus)),
        filled_quantity=draw(floats),
        avg_fill_price=draw(floats),
        reason=draw(texts),
        updated_at=draw(st.none() | times),
        bars_open=draw(st.integers(0, 10**6)),
        trail_anchor=draw(st.none() | floats),
    )


@st.composite
def fills(draw: st.DrawFn) -> Fill:
    return Fill(
        draw(texts),
        draw(texts),
        draw(texts),
        draw(st.sampled_from(Side)),
        draw(floats),
        draw(floats),
        draw(floats),
        draw(floats),
        draw(times),
        draw(floats),
    )


@settings(max_examples=300, deadline=None)
@given(
    batch=st.lists(
        st.tuples(st.sampled_from(("order", "fill")), orders(), fills(), st.none() | times),
        min_size=1,
        max_size=6,
    )
)
def test_line_encoder_writes_what_the_dict_encoder_wrote(batch):
    """Byte for byte, in record order: readers of the audit (jq, truncate_after, the restart
    tests) see the lines the per-record dict encoder wrote, with a batch's orders and fills
    each encoded a column at a time (columns that mix types, NaN, None, any text)."""
    items, expected = [], []
    for kind, order_, fill, booked in batch:
        if kind == "order":
            items.append((audit_file._ORDERS, audit._ORDER_RECORDS([order_]), None))
            expected.append(reference_line("order", order_))
        else:
            items.append((audit_file._FILLS, audit._FILL_RECORDS([fill]), booked))
            expected.append(reference_line("fill", fill, booked))
    got = audit_file._encode(items).splitlines()
    assert got == expected
    for line in got:  # strict JSON: no NaN or Infinity tokens
        json.loads(line, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))


def test_numpy_floats_are_written_as_numbers_and_nan_as_null():
    import numpy as np

    nan = np.float64("nan")
    o = Order("c", "A", Side.BUY, np.float64(3.5), T, avg_fill_price=nan)  # type: ignore[arg-type]
    items = [(audit_file._ORDERS, audit._ORDER_RECORDS([o]), None)]
    [line] = audit_file._encode(items).splitlines()
    row = json.loads(line)
    assert row["quantity"] == 3.5 and row["avg_fill_price"] is None


def start_writer(a: AuditLog) -> None:
    """Start the writer process and wait until it has answered (it then takes batches)."""
    a.orders([order(-1)])
    a.flush(force=True)
    a._writer.sync()
    a.orders([order(-2)])
    a.flush(force=True)
    assert a._writer_ready


def order(i: int) -> Order:
    return Order(f"r|{i}", "A", Side.BUY, 1.0 + i, T + timedelta(days=i))


def records(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_a_replay_encodes_and_writes_in_the_writer_process_in_order(tmp_path, monkeypatch):
    def not_here(batch):
        raise AssertionError("encoded in the engine's process")

    a = AuditLog(tmp_path, "r", flush_interval_s=1.0, max_lines=2)
    assert a.background
    start_writer(a)
    monkeypatch.setattr(audit, "_encode", not_here)  # the parent's copy only
    for i in range(8):
        a.orders([order(i)])
        a.flush()  # the first bar, then every second one hands a batch over (max_lines)
        assert a._writer is not None and a._writer.pending <= a.max_pending  # bounded
    assert a._writer._proc.pid != os.getpid()
    a.close()  # the rest, and the process's batches, are on disk
    assert [r["client_order_id"] for r in records(tmp_path / "r.jsonl")] == [
        f"r|{i}"
        for i in range(-1, -3, -1)  # written by start_writer
    ] + [f"r|{i}" for i in range(8)]


def test_force_waits_for_the_writer_and_is_on_disk(tmp_path):
    a = AuditLog(tmp_path, "r", flush_interval_s=1.0, max_lines=1)
    start_writer(a)
    a.orders([order(0)])
    a.flush()  # handed to the writer process
    a.orders([order(1)])
    a.flush(force=True)
    assert [r["client_order_id"] for r in records(tmp_path / "r.jsonl")][2:] == ["r|0", "r|1"]
    a.close()


def test_a_live_flush_is_on_disk_when_it_returns_without_a_writer(tmp_path):
    a = AuditLog(tmp_path, "r", flush_interval_s=0.0)
    assert not a.background
    for i in range(3):
        a.orders([order(i)])
        a.flush()
        assert len(records(tmp_path / "r.jsonl")) == i + 1
    assert a._writer is None
    a.close()


def test_a_failed_write_in_the_writer_raises_at_the_next_flush(tmp_path, monkeypatch):
    a = AuditLog(tmp_path, "r", flush_interval_s=1.0, max_lines=1)
    start_writer(a)
    monkeypatch.setattr(a, "path", tmp_path / "gone" / "r.jsonl")
    a._writer.send("tradingd.audit_file:child_release", None)
    (tmp_path / "r.jsonl").unlink()
    (tmp_path / "r.jsonl").mkdir()  # the writer cannot append to a folder
    a.orders([order(0)])
    a.flush()  # handed over (this flush may already have read the release's answer)
    while a._writer.pending:  # wait for the answers without raising: the error is kept
        a._writer._answer(block=True)
    a.orders([order(1)])
    with pytest.raises(StorageError, match="IsADirectoryError"):
        a.flush()  # the next bar
    with pytest.raises(StorageError):
        a.close()


def test_truncate_after_sees_the_writers_lines(tmp_path):
    a = AuditLog(tmp_path, "r", flush_interval_s=1.0, max_lines=1)
    (tmp_path / "r.jsonl.live").touch()  # a live run's log (a replay's is not cut)
    for i in range(4):
        a.orders([order(i)])
        a.flush()
    assert a.truncate_after(T + timedelta(days=1)) == 2
    a.close()
    assert [r["client_order_id"] for r in records(tmp_path / "r.jsonl")] == ["r|0", "r|1"]


def test_a_restart_keeps_the_checkpointed_bars_order_lines_whatever_the_brokers_clock(tmp_path):
    """Alpaca dates an order state by its own clock (`updated_at`: the wall clock, hours
    after a daily bar's label), and `truncate_after` went by it: every restart of an Alpaca
    run dropped the last bar's order lines as after the checkpoint, and the legs still
    working at the broker had no record left. A live run's line says the bar that recorded
    it (`booked_at`), as a fill's does."""
    a = AuditLog(tmp_path, "r", flush_interval_s=0.0)
    (tmp_path / "r.jsonl.live").touch()
    bar, wall = T, T + timedelta(hours=14, minutes=28)
    placed = [Order(f"r|{k}", "A", Side.BUY, 1.0, bar) for k in range(3)]
    for o in placed:
        o.updated_at = wall  # acknowledged by the broker, at its clock
    a.orders(placed, booked_at=bar)
    interrupted = Order("r|next", "A", Side.BUY, 1.0, bar + timedelta(days=1))
    interrupted.updated_at = wall + timedelta(days=1)
    a.orders([interrupted], booked_at=bar + timedelta(days=1))
    a.orders([order(9)])  # a line of an earlier build: its own time, as before
    a.flush()
    assert a.truncate_after(bar) == 2  # the interrupted bar's, and order 9 (days after)
    a.close()
    rows = records(tmp_path / "r.jsonl")
    assert [r["client_order_id"] for r in rows] == ["r|0", "r|1", "r|2"]
    assert all(r["booked_at"] == bar.isoformat() for r in rows)


def test_after_a_clean_stop_an_earlier_builds_order_lines_are_kept_whatever_their_time(
    tmp_path,
):
    """A build before `booked_at` wrote order lines dated by the broker's clock, after the
    bar's label: the first restart after an upgrade dropped its last bar's lines. A process
    that stopped cleanly wrote nothing of a bar after its checkpoint, so those are kept;
    lines that say their bar, and fills, still go by it."""
    a = AuditLog(tmp_path, "r", flush_interval_s=0.0)
    (tmp_path / "r.jsonl.live").touch()
    bar, wall = T, T + timedelta(hours=14, minutes=28)
    old = Order("r|old", "A", Side.BUY, 1.0, bar)
    old.updated_at = wall
    a.orders([old])  # the earlier build's line: no booked_at
    later = Order("r|later", "A", Side.BUY, 1.0, bar + timedelta(days=1))
    a.orders([later], booked_at=bar + timedelta(days=1))
    a.flush()
    assert a.truncate_after(bar, stopped_cleanly=True) == 1  # the line of the bar after
    a.close()
    assert [r["client_order_id"] for r in records(tmp_path / "r.jsonl")] == ["r|old"]


def test_lines_are_written_here_while_the_writer_starts(tmp_path, monkeypatch):
    """The engine never waits for the writer process to start: until it has answered, a
    batch is encoded and written here; then the process appends, in order."""
    from tradingd.storage.child import ChildWriter

    a = AuditLog(tmp_path, "r", flush_interval_s=1.0, max_lines=1)
    monkeypatch.setattr(ChildWriter, "reap", lambda self, user=None: None)  # still starting
    a.orders([order(0)])
    a.flush()
    assert a._writer is not None and not a._writer_ready
    assert len(records(tmp_path / "r.jsonl")) == 1  # written here, at once
    monkeypatch.undo()
    a._writer.sync()
    for i in (1, 2):
        a.orders([order(i)])
        a.flush()
    assert a._writer_ready
    a.close()
    assert [r["client_order_id"] for r in records(tmp_path / "r.jsonl")] == ["r|0", "r|1", "r|2"]


def test_the_writer_process_makes_nothing_on_disk_before_it_writes(tmp_path):
    """A writer closed before it answered is not waited for: had its open job made the
    folder, the folder could reappear after its owner removed it (CI: a replay's scratch
    `TemporaryDirectory` failed to clean up, "Directory not empty")."""
    state: dict = {}
    audit_file.child_open(state, (str(tmp_path / "later" / "r.jsonl"), 1000, 1))
    assert not (tmp_path / "later").exists()
    audit_file.child_lines(state, [(audit_file._ORDERS, audit._ORDER_RECORDS([order(0)]), None)])
    assert len(records(tmp_path / "later" / "r.jsonl")) == 1  # made when written
    for close in state["_closers"]:
        close()


def test_a_folder_removed_after_close_stays_removed(tmp_path, monkeypatch):
    import shutil

    from tradingd.storage.child import ChildWriter

    scratch = tmp_path / "scratch"
    a = AuditLog(scratch / "audit", "r", flush_interval_s=1.0, max_lines=1)
    monkeypatch.setattr(ChildWriter, "reap", lambda self, user=None: None)  # still starting
    a.orders([order(0)])
    a.flush()  # written here; the process was sent its open job
    writer = a._writer
    assert writer is not None and not a._writer_ready
    a.close()  # not waited for: it never wrote a line
    shutil.rmtree(scratch)
    assert writer.wait(timeout=60) == 0
    assert not scratch.exists()


def test_equal_instants_in_two_zones_are_each_written_as_given():
    """Equal datetimes in two time zones (a bar time in the exchange's zone, a broker's time
    in UTC) are one dict key; the audit's time memos kept the first one's text for both."""
    from zoneinfo import ZoneInfo

    utc = datetime(2024, 1, 2, 21, 0, tzinfo=UTC)
    ny = utc.astimezone(ZoneInfo("America/New_York"))
    assert utc == ny and utc.isoformat() != ny.isoformat()
    assert audit_file._iso(utc) == "2024-01-02T21:00:00+00:00"
    assert audit_file._iso(ny) == "2024-01-02T16:00:00-05:00"
    assert audit_file._time_column([utc, ny, None, utc]) == [
        '"2024-01-02T21:00:00+00:00"',
        '"2024-01-02T16:00:00-05:00"',
        "null",
        '"2024-01-02T21:00:00+00:00"',
    ]


@pytest.mark.parametrize("first_fold", [0, 1])
def test_the_two_wall_times_of_a_dst_fall_back_keep_their_own_offsets(first_fold):
    """01:30 happens twice in New York on 2021-11-07 (EDT, then EST): the two compare and
    hash equal, and the memo wrote the second with the first one's offset."""
    from zoneinfo import ZoneInfo

    import pandas as pd

    audit_file._ISO.clear()
    ny = ZoneInfo("America/New_York")
    first = datetime(2021, 11, 7, 1, 30, tzinfo=ny, fold=first_fold)
    second = first.replace(fold=1 - first_fold)
    assert first == second and hash(first) == hash(second)
    offset = {0: "-04:00", 1: "-05:00"}
    for t in (first, second, first):
        assert audit_file._iso(t) == f"2021-11-07T01:30:00{offset[t.fold]}"
    # The column's own memo too (a line's times: `_time_column`).
    assert audit_file._time_column([first, second, first]) == [
        f'"2021-11-07T01:30:00{offset[t.fold]}"' for t in (first, second, first)
    ]
    # A pandas Timestamp equal to a datetime writes itself as pandas does.
    stamp = pd.Timestamp("2024-01-02 21:00:00.000001", tz="UTC")
    assert audit_file._iso(stamp.to_pydatetime()) == "2024-01-02T21:00:00.000001+00:00"
    assert audit_file._iso(stamp) == stamp.isoformat()


def test_begin_run_removes_an_earlier_runs_files_and_the_writer_starts_a_new_one(tmp_path):
    """A replay starts afresh, as the store does: the earlier run's file and its rotated
    backups go, other runs' files stay, and what this run writes after is all there is."""
    earlier = AuditLog(tmp_path, "r", flush_interval_s=1.0, max_lines=1, max_bytes=200)
    for i in range(6):  # a few hundred bytes a line: rotated on the way
        earlier.orders([order(i)])
        earlier.flush(force=True)
    earlier.close()
    other = AuditLog(tmp_path, "other", flush_interval_s=0.0)
    other.orders([order(9)])
    other.close()
    assert (tmp_path / "r.jsonl.1").exists()
    before = sorted(p.name for p in tmp_path.iterdir())

    a = AuditLog(tmp_path, "r", flush_interval_s=1.0, max_lines=1)
    assert a.begin_run() == len([n for n in before if n.startswith("r.jsonl")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.jsonl"]
    start_writer(a)  # the writer process has the (new) file open: begin_run again
    a.orders([order(5)])
    a.flush(force=True)
    assert a.begin_run() == 1
    a.orders([order(7)])
    a.close()
    assert [r["client_order_id"] for r in records(tmp_path / "r.jsonl")] == ["r|7"]
    assert a.begin_run() == 1 and AuditLog(tmp_path, "new").begin_run() == 0


async def test_a_replays_audit_log_keeps_the_stores_records_and_writes_each_once(
    engine_config, synthetic_panel, monkeypatch
):
    """The engine hands the store's records to the audit log (the same tuples: made once,
    pickled once in the shared writer process), and the file has a line for each order
    state and fill the store holds: no record lost or written twice on the way."""
    from tradingd.app import build_engine
    from tradingd.storage.child import ChildWriter

    # The writer process is ready at its first question (a short run may end before it
    # starts otherwise), so the shared path is the one taken; every message is seen.
    started = ChildWriter.started
    messages: list[tuple[str, ...]] = []
    post = ChildWriter._post
    monkeypatch.setattr(ChildWriter, "started", property(lambda w: (w.sync(), started.fget(w))[1]))
    monkeypatch.setattr(
        ChildWriter,
        "_post",
        lambda w, jobs: (messages.append(tuple(j for j, _ in jobs)), post(w, jobs))[1],
    )
    engine = build_engine(engine_config, "backtest", panel=synthetic_panel)
    log, store = engine.audit, engine.store
    # The store writes at every bar, so the audit lines ride with its rows whatever the
    # machine's speed: the engine sends the log's last lines on their own before the run's
    # row ends, and a run shorter than the store's interval had no other write to ride.
    store.flush_interval_s = 0.0
    calls = {"orders": 0, "fills": 0}
    keep_orders, keep_fills = log.orders, log.fills

    def orders(os_, records=None, booked_at=None):
        assert records is store._orders[-1][1] and len(records) == len(os_)
        calls["orders"] += 1
        keep_orders(os_, records, booked_at)

    def fills(fs, booked_at=None, records=None):
        assert records is store._fills[-1][2] and len(records) == len(fs)
        calls["fills"] += 1
        keep_fills(fs, booked_at, records)

    log.orders, log.fills = orders, fills
    rows = {}

    async def collect(e):
        rows["order_events"] = await e.store.fetch("order_events", e.run.run_id)
        rows["fills"] = await e.store.fetch("fills", e.run.run_id)

    engine._before_stop = collect
    await engine.run_until_done()
    assert calls["orders"] > 10 and calls["fills"] > 10
    rows_ = "tradingd.storage.sqlite_file:child_rows"
    lines_ = "tradingd.audit_file:child_lines"
    assert (lines_, rows_) in messages  # the audit lines rode with the store's rows
    assert not [m for m in messages if m.count(lines_) > 1]
    lines = [json.loads(x) for x in log.path.read_text().splitlines()]
    assert len([r for r in lines if r["event"] == "order"]) == len(rows["order_events"])
    assert sorted(r["fill_id"] for r in lines if r["event"] == "fill") == sorted(
        r["fill_id"] for r in rows["fills"]
    )


def test_records_that_are_not_the_order_fields_are_not_written_as_them(tmp_path):
    """A store whose records have another layout (not storage.rows.ORDER_VALUES): the audit
    log makes its own, rather than writing values under the wrong keys."""
    log = AuditLog(tmp_path, "r1", flush_interval_s=0.0)
    o = Order("r1|0", "AAA", Side.BUY, 2.0, T)
    log.orders([o], [("r1|0", "AAA")])  # as long as the orders, another width
    log.flush(force=True)
    log.close()
    (line,) = (tmp_path / "r1.jsonl").read_text().splitlines()
    assert line == reference_line("order", o)


def test_a_full_disk_under_a_live_audit_log_is_an_error_naming_the_file(tmp_path, monkeypatch):
    """ENOSPC on the live path (written in the engine's process) was a bare OSError: a
    traceback naming no file (exit 1), and a restart loop under systemd saying nothing."""
    import errno

    a = AuditLog(tmp_path, "r", flush_interval_s=0.0)

    def full(self, text):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(audit_file._Sink, "write", full)
    a.orders([order(1)])
    with pytest.raises(StorageError, match="No space left on device") as caught:
        a.flush(force=True)
    assert str(tmp_path / "r.jsonl") in str(caught.value)


def test_dropping_the_records_after_a_checkpoint_needs_no_free_space(tmp_path, monkeypatch):
    """The file was rewritten whole through a temporary copy: a restart after a full disk
    needed the audit file's size free (50 MB by default), failed with a traceback, and left
    the partial copy filling the disk again. The dropped records are its tail: cut in place."""
    a = AuditLog(tmp_path, "r", flush_interval_s=0.0)
    for i in range(4):
        a.orders([order(i)])
        a.flush(force=True)
    a.close()
    path = tmp_path / "r.jsonl"
    with path.open("a", encoding="utf-8") as fh:
        fh.write('{"event": "order", "torn')  # a process killed mid-line
    from pathlib import Path

    def no_space(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", no_space)
    (tmp_path / "r.jsonl.live").touch()  # a live run's log (a replay's is not cut)
    b = AuditLog(tmp_path, "r", flush_interval_s=0.0)
    assert b.truncate_after(T + timedelta(days=1)) == 3  # two bars after it, and the torn line
    b.close()
    assert [r["client_order_id"] for r in records(path)] == ["r|0", "r|1"]
    assert path.read_bytes().endswith(b"\n")
    assert not list(tmp_path.glob("*.tmp"))


def test_a_live_audit_log_on_a_full_disk_closes_without_a_second_error(tmp_path):
    """After the failed write the text stayed in the file's buffer; closing the log at the
    run's end flushed it again and raised a bare OSError, which replaced the StorageError
    (a traceback naming no file, exit 1)."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    os.symlink("/dev/full", tmp_path / "r.jsonl")
    a = AuditLog(tmp_path, "r", flush_interval_s=0.0)
    a.orders([order(1)])
    with pytest.raises(StorageError, match="No space left on device"):
        a.flush(force=True)
    a.close()  # no second error


def test_a_write_cut_short_by_a_full_disk_leaves_the_file_at_its_last_whole_line(tmp_path):
    """A disk that fills up in the middle of a batch took part of it: the file ended in a
    cut line, which jq and every JSON-lines reader stop at (a replay's log keeps it). The
    file is cut back to the batch's start; the batch raises as not written. The kernel's
    own partial write, by a file size limit (as a full disk, it writes what fits)."""
    import resource
    import signal

    a = AuditLog(tmp_path, "r", flush_interval_s=0.0)
    a.orders([order(0)])
    a.flush(force=True)
    path = tmp_path / "r.jsonl"
    before = path.read_bytes()
    for i in range(1, 100):
        a.orders([order(i)])  # a batch far larger than the room left
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    was = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not the signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) + 1000, hard))
    try:
        with pytest.raises(StorageError, match="cannot write the audit log"):
            a.flush(force=True)
        cut = path.stat().st_size
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, was)
    assert cut == len(before) and path.read_bytes() == before
    a.orders([order(100)])  # room again: the next batch follows the whole lines
    a.flush(force=True)
    a.close()
    assert [r["client_order_id"] for r in records(path)] == ["r|0", "r|100"]


def test_records_after_the_checkpoint_in_a_rotated_file_are_dropped_too(tmp_path):
    """The file rotated right after a bar past the checkpoint: that bar's records were in
    `.jsonl.1`, which was not read, so they were kept, and the resumed run wrote them again."""
    a = AuditLog(tmp_path, "r", flush_interval_s=0.0, max_bytes=1)  # rotates after each bar
    (tmp_path / "r.jsonl.live").touch()  # a live run's log (a replay's is not cut)
    for i in range(4):
        a.orders([order(i)])
        a.flush(force=True)
    a.close()
    files = sorted(p.name for p in tmp_path.glob("r.jsonl*"))
    assert "r.jsonl.1" in files and "r.jsonl.2" in files
    b = AuditLog(tmp_path, "r", flush_interval_s=0.0, max_bytes=1)
    assert b.truncate_after(T + timedelta(days=1)) == 2  # bars 2 and 3, in two rotated files
    b.close()
    left = [
        r["client_order_id"]
        for name in ("r.jsonl.4", "r.jsonl.3", "r.jsonl.2", "r.jsonl.1", "r.jsonl")
        if (tmp_path / name).exists()
        for r in records(tmp_path / name)
    ]
    assert left == ["r|0", "r|1"]


def _replay_log(directory, run_id: str = "r") -> str:
    """A backtest's audit log of `run_id` (no live mark), its text."""
    a = AuditLog(directory, run_id, flush_interval_s=1.0, background=False)
    a.begin_run()
    a.orders([order(0), order(1)])
    a.close()
    return (directory / f"{run_id}.jsonl").read_text()


def test_a_fresh_live_start_refuses_a_replays_audit_log_of_its_run_id(tmp_path):
    """A live run given a backtest's run id on another store (the store refuses only its
    own record) appended its session to the backtest's log and marked it live: every later
    replay of that run id was refused."""
    before = _replay_log(tmp_path)
    live = AuditLog(tmp_path, "r", flush_interval_s=0.0)
    with pytest.raises(ConfigError, match=r"r\.jsonl holds a replay's records") as err:
        live.session(started_at=T, resumed=False)
    live.close()
    assert "run.run_id" in str(err.value) and "log.audit_dir" in str(err.value)
    assert (tmp_path / "r.jsonl").read_text() == before
    assert not (tmp_path / "r.jsonl.live").exists()
    AuditLog(tmp_path, "r", flush_interval_s=1.0).check_replayable()  # still a replay's


def test_a_resumed_live_start_neither_cuts_nor_continues_a_replays_audit_log(tmp_path):
    """The refused fresh start left its run in its store: started again, it resumed there,
    and cut the backtest's records as a crashed bar's (`truncate_after`), then wrote on."""
    before = _replay_log(tmp_path)
    live = AuditLog(tmp_path, "r", flush_interval_s=0.0)
    with pytest.raises(ConfigError, match="holds a replay's records"):
        live.truncate_after(None)
    with pytest.raises(ConfigError, match="holds a replay's records"):
        live.session(started_at=T, resumed=True)
    live.close()
    assert (tmp_path / "r.jsonl").read_text() == before
    assert not (tmp_path / "r.jsonl.live").exists()


def test_a_live_log_from_before_the_live_mark_is_still_a_live_runs(tmp_path):
    """A live run's log written before logs were marked carries its session lines: its
    restart continues it (and marks it), as before."""
    old = AuditLog(tmp_path, "r", flush_interval_s=0.0)
    old.session(started_at=T, resumed=False)
    old.orders([order(0), order(5)])
    old.close()
    (tmp_path / "r.jsonl.live").unlink()
    again = AuditLog(tmp_path, "r", flush_interval_s=0.0)
    assert again.truncate_after(T + timedelta(days=1)) == 1
    again.session(started_at=T, resumed=True)
    again.close()
    assert [r["event"] for r in records(tmp_path / "r.jsonl")] == ["session", "order", "session"]
    assert (tmp_path / "r.jsonl.live").exists()


def test_a_fresh_live_start_sets_an_earlier_live_runs_log_aside(tmp_path):
    """The demo's store deleted (as its README suggested) and the demo run again: the new
    run appended to the old run's log, the same fill ids twice, with no warning."""
    old = AuditLog(tmp_path, "r", flush_interval_s=0.0, max_bytes=1000)
    old.session(started_at=T, resumed=False)
    for i in range(4):  # a few hundred bytes a line: rotated once on the way
        old.orders([order(i)])
        old.flush(force=True)
    old.close()
    before = {p.name: p.read_text() for p in tmp_path.glob("r.jsonl*") if p.suffix != ".live"}
    assert "r.jsonl.1" in before and "r.jsonl" in before
    other = tmp_path / "other.jsonl"
    other.write_text("{}\n")

    new = AuditLog(tmp_path, "r", flush_interval_s=0.0, max_bytes=1000)
    with capture_logs() as logs:
        new.session(started_at=T + timedelta(days=9), resumed=False)
    new.orders([order(7)])
    new.close()

    warned = [e for e in logs if e["event"] == "audit.earlier_live_run_set_aside"]
    assert len(warned) == 1 and warned[0]["log_level"] == "warning"
    assert warned[0]["path"] == str(tmp_path / "r.jsonl")
    aside = Path(warned[0]["moved_to"])
    assert aside.parent == tmp_path and aside.name.startswith("r.before-")
    # The old run's files, whole, under the new name (rotated ones keep their number).
    for name, text in before.items():
        assert (tmp_path / (aside.name + name.removeprefix("r.jsonl"))).read_text() == text
    # The new run's log holds its own records alone.
    rows = records(tmp_path / "r.jsonl")
    assert [r["event"] for r in rows] == ["session", "order"]
    assert rows[0]["resumed"] is False and rows[1]["client_order_id"] == "r|7"
    assert not (tmp_path / "r.jsonl.1").exists()
    assert (tmp_path / "r.jsonl.live").exists() and other.read_text() == "{}\n"


def test_a_resumed_live_start_appends_to_its_log(tmp_path):
    """Only a fresh start sets a log aside: a restart continues the same run."""
    first = AuditLog(tmp_path, "r", flush_interval_s=0.0)
    first.session(started_at=T, resumed=False)
    first.orders([order(0)])
    first.close()
    again = AuditLog(tmp_path, "r", flush_interval_s=0.0)
    again.session(started_at=T, resumed=True)
    again.close()
    rows = records(tmp_path / "r.jsonl")
    assert [(r["event"], r.get("resumed")) for r in rows] == [
        ("session", False),
        ("order", None),
        ("session", True),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl", "r.jsonl.live"]


def test_a_fresh_live_start_on_an_empty_live_log_keeps_it(tmp_path):
    (tmp_path / "r.jsonl").touch()
    (tmp_path / "r.jsonl.live").touch()
    live = AuditLog(tmp_path, "r", flush_interval_s=0.0)
    live.session(started_at=T, resumed=False)
    live.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl", "r.jsonl.live"]
    assert [r["event"] for r in records(tmp_path / "r.jsonl")] == ["session"]


def test_a_log_moved_aside_by_the_operator_is_reopened_not_fatal(tmp_path):
    """`mv` of the live audit log (or logrotate's `create`): the lines went on into the
    moved file, and the next size rotation failed on the missing path, which stopped the
    daemon. The sink now writes to a new file at its path; a truncated file (copytruncate)
    is appended to as before."""
    from tradingd.audit_file import _Sink

    path = tmp_path / "r1.jsonl"
    sink = _Sink(path, max_bytes=100, backups=2)
    sink.write("a\n")
    moved = tmp_path / "moved.jsonl"
    path.rename(moved)
    sink.write("b\n")
    assert moved.read_text() == "a\n" and path.read_text() == "b\n"
    sink.write("c" * 120 + "\n")  # past max_bytes: rotates the new file, no error
    assert (tmp_path / "r1.jsonl.1").read_text() == "b\n" + "c" * 120 + "\n"
    assert moved.read_text() == "a\n"
    sink.write("d\n")
    with path.open("r+") as fh:  # copytruncate: the same file, emptied
        fh.truncate(0)
    sink.write("e\n")
    assert path.read_text() == "e\n"
    sink.close()


def test_lines_refuse_extras_that_do_not_match_the_records():
    """A line per record: extras of another length are an error, not lines dropped (the
    lines are joined from columns that end with the shortest)."""
    records = audit._ORDER_RECORDS([order(0), order(1)])
    assert len(audit_file._order_lines(records, ["", ""])) == 2
    with pytest.raises(ValueError, match="1 extras for 2 records"):
        audit_file._order_lines(records, [""])


def test_first_record_time_is_the_earliest_dated_line_of_the_files_read(tmp_path):
    """`Engine._warn_if_audit_behind` compares it with the store's last fill: a session
    line has no bar, and a backup past the first missing one is not read."""
    log = AuditLog(tmp_path, "r", flush_interval_s=0.0, backups=3)
    assert log.first_record_time() is None and not log.files_present()
    log.path.write_text(
        '{"event": "session", "pid": 1, "started_at": "2020-01-01T00:00:00+00:00"}\n'
        '{"event": "order", "booked_at": "2026-03-05T00:00:00+00:00"}\n'
        '{"event": "adjustment", "time": "2026-03-04T00:00:00+00:00", "symbol": "A"}\n'
    )
    (tmp_path / "r.jsonl.1").write_text('{"event": "fill", "time": "2026-03-02T00:00:00+00:00"}\n')
    # past the missing .jsonl.2: not read (last_fill_time stops there too)
    (tmp_path / "r.jsonl.3").write_text('{"event": "fill", "time": "2026-01-01T00:00:00+00:00"}\n')
    assert log.first_record_time() == datetime(2026, 3, 2, tzinfo=UTC)
    log.close()


@pytest.mark.parametrize(
    ("names", "present"),
    [
        (["r.jsonl.live"], True),  # rotated with log.audit_backups = 0
        (["r.jsonl-20261207.gz"], True),  # logrotate dateext + compress
        (["r.jsonl.2.gz"], True),
        (["r.jsonl"], True),
        (["other.jsonl", "r.jsonl.jsonl", "r.before-20260101T000000Z.jsonl"], False),
    ],
)
def test_files_present_sees_the_logs_rotated_files_and_mark_only(tmp_path, names, present):
    for name in names:
        (tmp_path / name).write_text("")
    log = AuditLog(tmp_path, "r", flush_interval_s=0.0)
    assert log.files_present() is present
    log.close()
