"""The store's durable spool (tradingd.storage.spool) and the buffered store's outage logic.

The file format, its checksum (a record torn by a crash mid-append is ignored with a warning;
a bad record with good ones after it is corruption), the bound, the order, and, with a fake
database that can be taken down, the store's degraded mode: flush() returns once a batch is
fsynced to the spool, the spool is replayed with backoff in order and exactly once, a refused
statement is an error and never spooled. The real PostgreSQL outage is
tests/integration/test_postgres_outage.py.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
import zlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tradingd.core.errors import ConfigError, StorageError
from tradingd.core.types import Order, RunInfo, Side
from tradingd.storage import spool as spool_mod
from tradingd.storage.buffered import Backoff, BufferedStore, DatabaseUnavailable
from tradingd.storage.postgres import PostgresStore, default_spool_dir, spool_target, unavailable
from tradingd.storage.spool import (
    Spool,
    SpoolBatch,
    SpoolCorrupt,
    SpoolError,
    SpoolFull,
    claim_orphans,
    decode_line,
    encode_line,
    safe_name,
)

T0 = datetime(2024, 3, 1, 21, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def batch(seq: int, writer: str = "w1", **tables: list[tuple[Any, ...]]) -> SpoolBatch:
    return SpoolBatch(writer, seq, 1_700_000_000.0 + seq, tables or {"equity": [("r", seq)]})


def read_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


# ---------------------------------------------------------------------------------- format


def test_values_round_trip_with_tagged_times_and_non_finite_floats(tmp_path: Path) -> None:
    rows = [
        (
            "r1",
            T0,
            datetime(2024, 3, 1, 16, 0, tzinfo=UTC).astimezone(),  # another offset
            1.5,
            math.nan,
            math.inf,
            -math.inf,
            None,
            7,
            True,
            'text with\nnewline, é, "quotes" and {"$dt": 1}',
            '{"bar":3,"portfolio":{"quantity":[1.0,2.0]}}',  # a checkpoint's JSON state
        )
    ]
    sp = Spool(tmp_path, "w1", "fake://db")
    b = SpoolBatch("w1", 1, 1.25, {"checkpoints": rows}, (("end_run", ("{}", T0, "r1")),))
    sp.append(b)
    got = sp.next_pending()
    assert got is not None and got.id == "w1:1" and got.created == 1.25
    [row] = got.tables["checkpoints"]
    want = rows[0]
    assert len(row) == len(want)
    for a, w in zip(row, want, strict=True):
        if isinstance(w, float) and math.isnan(w):
            assert isinstance(a, float) and math.isnan(a)
        else:
            assert a == w and type(a) is type(w)
    assert row[2].utcoffset() == want[2].utcoffset()  # the offset itself survives
    assert got.ops == (("end_run", ("{}", T0, "r1")),)


def test_file_is_a_header_then_one_checksummed_json_line_per_batch(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "d", "w1", "fake://db")
    assert not (tmp_path / "d").exists()  # nothing on disk until the first spooled batch
    for i in (1, 2, 3):
        sp.append(batch(i))
    lines = read_lines(sp.path)
    assert len(lines) == 4
    for line in lines:
        crc, _, body = line.rstrip(b"\n").partition(b" ")
        assert int(crc, 16) == zlib.crc32(body)
        json.loads(body)
    header = json.loads(lines[0].split(b" ", 1)[1])
    assert header["kind"] == "spool" and header["writer"] == "w1"
    assert header["target"] == "fake://db" and header["v"] == 1
    assert [json.loads(x.split(b" ", 1)[1])["seq"] for x in lines[1:]] == [1, 2, 3]
    assert sp.pending_batches == 3 and sp.pending_bytes == sum(map(len, lines[1:]))
    assert sp.oldest == 1_700_000_001.0
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["w1.spool"]  # no temp file left


def test_every_append_is_fsynced_before_it_returns(tmp_path: Path, monkeypatch) -> None:
    synced: list[int] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        synced.append(os.fstat(fd).st_size)
        real(fd)

    monkeypatch.setattr(spool_mod.os, "fdatasync", fdatasync)
    sp = Spool(tmp_path, "w1", "fake://db")
    for i in (1, 2):
        sp.append(batch(i))
        assert synced[-1] == sp.path.stat().st_size  # synced with this batch in the file
    assert len(synced) == 2


def test_batches_come_back_in_order_and_the_spool_empties(tmp_path: Path) -> None:
    sp = Spool(tmp_path, "w1", "fake://db")
    for i in range(1, 6):
        sp.append(batch(i))
    seen = []
    while (b := sp.next_pending()) is not None:
        seen.append(b.seq)
        sp.mark_applied()
        if b.seq == 2:
            sp.append(batch(6))  # appended while replaying: comes after the others
    assert seen == [1, 2, 3, 4, 5, 6]
    assert sp.pending_batches == 0 and sp.pending_bytes == 0
    sp.reset()
    assert len(read_lines(sp.path)) == 1  # the header only
    sp.append(batch(7))
    assert sp.next_pending().seq == 7  # type: ignore[union-attr]
    sp.mark_applied()
    sp.reset()
    sp.close()
    assert not sp.path.exists()  # nothing left to write: removed


def test_replaying_past_the_read_ahead_never_overwrites_pending_batches(tmp_path: Path) -> None:
    """Found by the fault soak: the reader shared the appender's file offset (a dup'ed
    descriptor), so reading a batch (64 KiB read-ahead) moved where the next append wrote,
    over batches still pending; the spool then failed as corrupt and rows were lost."""
    sp = Spool(tmp_path, "w1", "fake://db")
    big = [("r", i, "x" * 200) for i in range(100)]  # ~25 kB per batch
    for i in range(1, 9):
        sp.append(batch(i, equity=big))
    seen = []
    while (b := sp.next_pending()) is not None:
        seen.append(b.seq)
        sp.mark_applied()
        if b.seq <= 2:
            sp.append(batch(100 + b.seq, equity=big))  # a new bar's rows, during the replay
    assert seen == [1, 2, 3, 4, 5, 6, 7, 8, 101, 102]
    sp.close()


def test_a_spool_with_batches_left_stays_for_the_next_start(tmp_path: Path) -> None:
    sp = Spool(tmp_path, "w1", "fake://db")
    sp.append(batch(1))
    with capture_logs() as logs:
        sp.close()
    assert sp.path.exists() and sp.pending_batches == 0
    assert [e["event"] for e in logs] == ["storage.spool.left"]
    [orphan] = claim_orphans(tmp_path)
    assert [b.seq for b in orphan.batches()] == [1]
    orphan.remove()
    assert not sp.path.exists()


def test_a_torn_last_record_is_ignored_with_a_warning(tmp_path: Path) -> None:
    """A crash in the middle of an append leaves part of a line: its flush never returned."""
    sp = Spool(tmp_path, "w1", "fake://db")
    for i in (1, 2):
        sp.append(batch(i))
    sp.close()
    torn = encode_line(spool_mod.encode_batch(batch(3)))
    with sp.path.open("ab") as f:
        f.write(torn[: len(torn) // 2])
    with capture_logs() as logs:
        [orphan] = claim_orphans(tmp_path)
        assert [b.seq for b in orphan.batches()] == [1, 2]
    orphan.release()
    [warning] = [e for e in logs if e["event"] == "storage.spool.torn_record_ignored"]
    assert warning["log_level"] == "warning" and warning["path"] == str(sp.path)


def test_a_last_record_failing_its_checksum_is_ignored_with_a_warning(tmp_path: Path) -> None:
    sp = Spool(tmp_path, "w1", "fake://db")
    for i in (1, 2):
        sp.append(batch(i))
    sp.close()
    data = bytearray(sp.path.read_bytes())
    data[-5] ^= 0x01  # a flipped bit in the last record's JSON (complete line)
    sp.path.write_bytes(bytes(data))
    with capture_logs() as logs:
        [orphan] = claim_orphans(tmp_path)
        assert [b.seq for b in orphan.batches()] == [1]
    orphan.release()
    assert [e["event"] for e in logs] == ["storage.spool.torn_record_ignored"]


def test_a_bad_record_before_good_ones_is_corruption(tmp_path: Path) -> None:
    sp = Spool(tmp_path, "w1", "fake://db")
    for i in (1, 2, 3):
        sp.append(batch(i))
    sp.close()
    lines = read_lines(sp.path)
    offset = len(lines[0]) + len(lines[1])
    lines[2] = lines[2].replace(b'"seq":2', b'"seq":9')
    sp.path.write_bytes(b"".join(lines))
    [orphan] = claim_orphans(tmp_path)
    with pytest.raises(SpoolCorrupt) as e:
        list(orphan.batches())
    orphan.release()
    assert str(sp.path) in str(e.value) and f"byte {offset}" in str(e.value)


def test_decode_line_rejects_what_is_not_a_whole_record() -> None:
    line = encode_line({"kind": "batch", "seq": 1})
    assert decode_line(line) == {"kind": "batch", "seq": 1}
    assert decode_line(line[:-1]) is None  # no newline
    assert decode_line(b"zzzzzzzz {}\n") is None
    assert decode_line(b"\n") is None
    assert b"\n" not in encode_line({"s": "a\nb"})[:-1]


def test_the_bound_raises_naming_the_path_and_size_and_writes_nothing(tmp_path: Path) -> None:
    sp = Spool(tmp_path, "w1", "fake://db", max_bytes=4096)
    big = batch(1, equity=[("r", "x" * 600)])
    n = 0
    with pytest.raises(SpoolFull) as e:
        while True:
            sp.append(SpoolBatch("w1", n + 1, 0.0, big.tables))
            n += 1
    assert n >= 4 and sp.pending_batches == n
    size = sp.path.stat().st_size
    assert size <= 4096 and size == sp.size
    msg = str(e.value)
    assert str(sp.path) in msg and "storage.spool_max_bytes=4096" in msg and "fake://db" in msg
    assert isinstance(e.value, StorageError)
    with pytest.raises(ValueError):
        Spool(tmp_path, "w2", "fake://db", max_bytes=10)


def test_a_disk_that_fills_under_the_spool_says_what_to_do_and_keeps_what_fitted(
    tmp_path: Path,
) -> None:
    """A full disk under the spool while the database was down was "cannot append to storage
    spool ...: OSError: [Errno 28] No space left on device", no advice. It now says nothing
    was dropped, what to free and the database it waits for; the batches that fitted stay
    whole in the file."""
    from conftest import small_tmpfs

    with small_tmpfs(tmp_path / "disk", "64k") as disk:
        sp = Spool(disk, "w1", "fake://db", max_bytes=10**9)
        try:  # closed whatever fails: its open file would keep the tmpfs from unmounting
            big = batch(1, equity=[("r", "x" * 5000)])
            n = 0
            with pytest.raises(SpoolError) as e:
                while n < 100:
                    sp.append(SpoolBatch("w1", n + 1, 0.0, big.tables))
                    n += 1
            assert n >= 2 and sp.pending_batches == n
            msg = str(e.value)
            assert "No space left on device" in msg and "fake://db" in msg
            assert "Nothing was dropped" in msg and f"free space on the disk of {disk}" in msg
            assert sp.path.stat().st_size == sp.size  # the cut batch was taken back out
        finally:
            sp.close()


def test_a_spool_held_by_a_live_writer_is_not_an_orphan(tmp_path: Path) -> None:
    live = Spool(tmp_path, "1-live", "fake://db")
    live.append(batch(1, "1-live"))
    dead = Spool(tmp_path, "0-dead", "fake://db")
    dead.append(batch(1, "0-dead"))
    dead.close()
    (tmp_path / ".0-x.123.tmp").write_bytes(b"")  # a crash while creating: not a spool
    (tmp_path / "2-empty.spool").write_bytes(b"")  # nothing was ever appended
    with capture_logs() as logs:
        orphans = claim_orphans(tmp_path)
    assert [o.path.name for o in orphans] == ["0-dead.spool"]
    assert orphans[0].header["writer"] == "0-dead" and orphans[0].target == "fake://db"
    assert {e["event"] for e in logs} == {"storage.spool.in_use", "storage.spool.empty_removed"}
    assert not (tmp_path / "2-empty.spool").exists()
    assert not (tmp_path / ".0-x.123.tmp").exists()
    for o in orphans:
        o.release()
    live.close()


def test_names_and_targets_carry_no_credentials() -> None:
    url = "postgresql://user:pw-secret@db.example:6543/trading"
    assert spool_target(url, "s1") == "postgres://db.example:6543/trading#s1"
    d = default_spool_dir(url, None)
    assert d == Path("var/spool/db.example_6543_trading_public")
    assert "pw-secret" not in str(d)
    # The schema chosen in the URL names the spool too (it was always `public`): two
    # daemons on two schemas of one database would have shared one spool.
    on_s2 = f"{url}?search_path=s2,public"
    assert spool_target(on_s2, None) == "postgres://db.example:6543/trading#s2"
    assert default_spool_dir(on_s2, None) == Path("var/spool/db.example_6543_trading_s2")
    assert spool_target(on_s2, "s1").endswith("#s1")  # storage.schema wins
    assert safe_name("../../etc/x y") == "etc_x_y"
    store = PostgresStore(url, spool_dir="/tmp/x", spool_max_bytes=1 << 20)
    assert store.spool_dir == Path("/tmp/x") and store.status()["spool_max_bytes"] == 1 << 20
    assert "pw-secret" not in str(store.status())
    unspooled = PostgresStore(url, spool=False).status()
    assert unspooled["spooling"] is False and unspooled["spool_enabled"] is False
    with pytest.raises(ConfigError):
        PostgresStore(url, spool_max_bytes=1)
    with pytest.raises(ConfigError):
        PostgresStore(url, retry_base_s=0)


def test_outage_errors_are_told_from_refused_statements() -> None:
    import asyncpg

    assert unavailable(ConnectionRefusedError(111, "refused"))
    assert unavailable(TimeoutError())
    assert unavailable(asyncpg.exceptions.ConnectionDoesNotExistError("closed"))
    assert unavailable(asyncpg.exceptions.AdminShutdownError("terminating"))
    assert unavailable(asyncpg.exceptions.CannotConnectNowError("starting up"))
    assert unavailable(asyncpg.InterfaceError("connection is closed"))
    assert not unavailable(asyncpg.exceptions.NotNullViolationError("null"))
    assert not unavailable(asyncpg.exceptions.UndefinedTableError("no table"))
    assert not unavailable(asyncpg.InterfaceError("pool is closed"))
    assert not unavailable(ValueError("bad"))


def test_a_failed_rollback_after_a_lost_connection_is_an_outage():
    """The fault soak's crash: PostgreSQL stopped during a COPY, and the transaction's
    ROLLBACK raised "another operation is in progress" with the lost connection as context;
    that ended the daemon as a refused statement instead of spooling."""
    import asyncpg

    try:
        try:
            raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")
        except asyncpg.exceptions.ConnectionDoesNotExistError:
            raise asyncpg.InterfaceError(
                "cannot perform operation: another operation is in progress"
            ) from None
    except asyncpg.InterfaceError as e:
        hidden = e
    assert hidden.__context__ is not None and hidden.__suppress_context__
    assert unavailable(hidden)
    # A refused statement stays a refusal, whatever it was raised from.
    try:
        try:
            raise ValueError("bad row")
        except ValueError:
            raise asyncpg.exceptions.NotNullViolationError("null") from None
    except asyncpg.PostgresError as e:
        assert not unavailable(e)


def test_backoff_grows_with_jitter_up_to_the_cap() -> None:
    b = Backoff(0.5, 4.0, rng=lambda: 1.0)
    assert [b.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    low = Backoff(0.5, 4.0, rng=lambda: 0.0)
    assert [low.next() for _ in range(3)] == [0.25, 0.5, 1.0]


# ---------------------------------------------------------------------------------- store


class FakeDb:
    def __init__(self) -> None:
        self.up = True
        self.refuse: str | None = None
        self.rows: dict[str, list[tuple[Any, ...]]] = {}
        self.ops: list[tuple[str, tuple[Any, ...]]] = []
        self.applied: dict[str, int] = {}
        self.attempts = 0


class FakeStore(BufferedStore):
    """A spooling store over an in-memory database that can be taken down."""

    dialect = "postgres"

    def __init__(self, db: FakeDb, spool_dir: Path, **kw: Any) -> None:
        super().__init__(batch_size=1000, flush_interval_s=3600.0)
        self.db = db
        self._configure_spool(
            spool_dir, "fake://db", **{"retry_base_s": 0.005, "retry_max_s": 0.02, **kw}
        )

    async def start(self) -> None:
        await self._open_with_retry(self._connect)

    async def _connect(self) -> None:
        if not self.db.up:
            raise DatabaseUnavailable("cannot connect to fake://u:***@db: refused")

    async def _close(self) -> None:
        pass

    def _encode_time(self, t: datetime) -> datetime:
        return t

    def _decode_time(self, v: Any) -> datetime:
        return v

    async def _write_batches(self, batches: Any) -> None:
        raise AssertionError("a spooling store writes through _write_batch")

    async def _execute(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        if not self.db.up:
            raise DatabaseUnavailable("fake://db down")

    async def _query(self, sql: str, args: Sequence[Any]) -> list[Sequence[Any]]:
        return []

    async def _write_batch(self, batch: SpoolBatch, check_applied: bool) -> bool:
        self.db.attempts += 1
        await asyncio.sleep(0)
        if not self.db.up:
            raise DatabaseUnavailable("write to fake://u:***@db failed: connection refused")
        if self.db.refuse:
            raise StorageError(self.db.refuse)
        if check_applied and self.db.applied.get(batch.writer, 0) >= batch.seq:
            return False
        for name, rows in batch.tables.items():
            self.db.rows.setdefault(name, []).extend(tuple(r) for r in rows)
        self.db.ops.extend(batch.ops)
        self.db.applied[batch.writer] = batch.seq
        return True


async def wait_until(predicate: Callable[[], object], what: str, timeout_s: float = 5.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.002)


def equity_times(db: FakeDb) -> list[datetime]:
    return [r[1] for r in db.rows.get("equity", [])]


async def test_flush_spools_while_down_and_replays_in_order_exactly_once(tmp_path: Path):
    db = FakeDb()
    store = FakeStore(db, tmp_path / "spool")
    await store.start()
    try:
        for i in range(3):
            store.record_equity("r1", T0 + i * DAY, 1.0, float(i), 0.0, 0.0)
            await store.flush()
        db.up = False
        intent = Order("r1|o", "AAA", Side.BUY, 5.0, T0 + 3 * DAY)
        for i in range(3, 8):
            store.record_equity("r1", T0 + i * DAY, 1.0, float(i), 0.0, math.nan)
            if i == 5:
                store.record_orders("r1", [intent])
            await store.flush()  # returns: the batch is in the spool
            # ... and the spool file holds it now, before any replay.
            assert len(read_lines(store._spool.path)) == 1 + (i - 2)  # type: ignore[union-attr]
        st = store.status()
        assert st["ok"] is False and st["state"] == "degraded"
        assert st["spooled_batches"] == 5 and st["spooled_bytes"] > 0
        assert st["oldest_spooled_at"] and st["down_since"] and "refused" in st["last_error"]
        assert str(store._spool.path) in st["detail"]  # type: ignore[union-attr]
        await wait_until(lambda: store.replay_attempts >= 3, "retries while down")
        assert store.status()["spooled_batches"] == 5  # nothing written, nothing dropped
        db.up = True
        await wait_until(lambda: store.status()["ok"], "the replay")
        for i in range(8, 10):
            store.record_equity("r1", T0 + i * DAY, 1.0, float(i), 0.0, 0.0)
            await store.flush()
    finally:
        await store.stop()
    assert equity_times(db) == [T0 + i * DAY for i in range(10)]
    assert [r[1] for r in db.rows["orders"]] == ["r1|o"]
    assert math.isnan(db.rows["equity"][4][5])
    assert db.applied == {store.writer: 10}
    assert list((tmp_path / "spool").iterdir()) == []


async def test_spooling_says_whether_rows_are_spooled_not_whether_a_spool_is_set(
    tmp_path: Path,
) -> None:
    """/ready's database check said `"spooling": true` with the database healthy and nothing
    spooled: it meant "a spool is configured". It is true while rows go to the spool or
    batches wait in it; `spool_enabled` and `spool_path` say a spool is configured."""
    db = FakeDb()
    store = FakeStore(db, tmp_path / "spool")
    await store.start()
    try:
        store.record_equity("r1", T0, 1.0, 0.0, 0.0, 0.0)
        await store.flush()
        st = store.status()
        assert st["ok"] and st["spooling"] is False and st["spooled_batches"] == 0
        assert st["spool_enabled"] is True and st["spool_path"]
        db.up = False
        store.record_equity("r1", T0 + DAY, 1.0, 1.0, 0.0, 0.0)
        await store.flush()  # to the spool
        st = store.status()
        assert st["spooling"] is True and st["spooled_batches"] == 1
        db.up = True
        await wait_until(lambda: store.status()["ok"], "the replay")
        st = store.status()
        assert st["spooling"] is False and st["spool_enabled"] is True
    finally:
        await store.stop()


async def test_new_rows_wait_behind_spooled_ones(tmp_path: Path) -> None:
    """While anything is spooled, a new batch goes to the spool too, even if the database
    answers again: the order of the rows is kept."""
    db = FakeDb()
    store = FakeStore(db, tmp_path, retry_base_s=30.0, retry_max_s=60.0)  # no replay here
    await store.start()
    try:
        db.up = False
        store.record_equity("r1", T0, 1.0, 0.0, 0.0, 0.0)
        await store.flush()
        db.up = True
        store.record_equity("r1", T0 + DAY, 1.0, 1.0, 0.0, 0.0)
        await store.flush()
        assert equity_times(db) == [] and store.status()["spooled_batches"] == 2
        assert await store.replay_spool() == 2
        assert equity_times(db) == [T0, T0 + DAY] and store.status()["ok"]
    finally:
        await store.stop()


async def test_a_flush_that_slips_in_after_the_last_replayed_batch_reports_the_replay(
    tmp_path: Path,
) -> None:
    """A flush queued as the last spooled batch commits runs once the replay has emptied the
    spool: it writes directly. The recovery the replay logs must count the batches it
    replayed (it once logged 0, found by the daemon outage test)."""
    db = FakeDb()
    store = FakeStore(db, tmp_path, retry_base_s=30.0, retry_max_s=60.0)  # replay by hand
    await store.start()
    flushes: list[asyncio.Task[None]] = []
    try:
        db.up = False
        for i in range(3):
            store.record_equity("r1", T0 + i * DAY, 1.0, float(i), 0.0, 0.0)
            await store.flush()
        db.up = True

        def queue_a_flush(b: SpoolBatch) -> None:
            if b.seq == 3:  # the last spooled batch has committed
                store.record_equity("r1", T0 + 3 * DAY, 1.0, 3.0, 0.0, 0.0)
                flushes.append(asyncio.get_running_loop().create_task(store.flush()))

        store._after_replay_commit = queue_a_flush
        with capture_logs() as logs:
            assert await store.replay_spool() == 3
            await asyncio.gather(*flushes)
    finally:
        await store.stop()
    assert flushes and equity_times(db) == [T0 + i * DAY for i in range(4)]
    [recovered] = [e for e in logs if e["event"] == "storage.database.recovered"]
    assert recovered["replayed_batches"] == 3, recovered


class HangingStore(FakeStore):
    """A FakeStore whose database can stop answering: while `answering` is clear, a write
    waits (inside `_db_wait`, as a dialect's write does, so the stop's budget ends it) and
    sets `hung`. With `commit_first`, the hung write's batch is committed before the wait:
    the answer to its COMMIT is what never comes (its outcome unknown to the store)."""

    def __init__(self, db: FakeDb, spool_dir: Path, **kw: Any) -> None:
        super().__init__(db, spool_dir, **kw)
        self.answering = asyncio.Event()
        self.answering.set()
        self.hung = asyncio.Event()
        self.commit_first = False

    async def _write_batch(self, batch: SpoolBatch, check_applied: bool) -> bool:
        async with self._db_wait(f"the write of batch {batch.id}"):
            if not self.answering.is_set():
                if self.commit_first:
                    await super()._write_batch(batch, check_applied)
                self.hung.set()
                await self.answering.wait()
                if self.commit_first:
                    raise DatabaseUnavailable("fake://db: connection lost at COMMIT")
            return await super()._write_batch(batch, check_applied)


async def test_a_replay_waiting_on_a_silent_database_does_not_hold_up_flushes(
    tmp_path: Path,
) -> None:
    """The storage trial (PostgreSQL hung): each replay attempt held the flush lock while it
    waited for the database (up to storage.command_timeout_s, 15 s), so the engine's flushes
    waited with it and a live run went in bursts. A flush now appends to the spool behind
    the batch being replayed and returns; the same replay writes everything, in order,
    once."""
    db = FakeDb()
    store = HangingStore(db, tmp_path, retry_base_s=30.0, retry_max_s=60.0)  # replay by hand
    await store.start()
    try:
        db.up = False
        for i in range(2):
            store.record_equity("r1", T0 + i * DAY, 1.0, float(i), 0.0, 0.0)
            await store.flush()
        db.up = True
        store.answering.clear()
        replay = asyncio.create_task(store.replay_spool())
        await asyncio.wait_for(store.hung.wait(), 5)  # batch 1's write waits for an answer
        for i in range(2, 6):
            store.record_equity("r1", T0 + i * DAY, 1.0, float(i), 0.0, 0.0)
            await asyncio.wait_for(store.flush(), 1.0)  # spooled behind, not held up
        assert store.status()["spooled_batches"] == 6 and equity_times(db) == []
        assert not replay.done()
        store.answering.set()
        assert await asyncio.wait_for(replay, 5) == 6  # the flushes' batches included
        assert store.status()["ok"] and store.status()["spooled_batches"] == 0
        store.record_equity("r1", T0 + 6 * DAY, 1.0, 6.0, 0.0, 0.0)
        await store.flush()  # the spool is empty: written directly
    finally:
        await store.stop()
    assert equity_times(db) == [T0 + i * DAY for i in range(7)]
    assert db.applied == {store.writer: 7}


async def test_one_replay_at_a_time_writes_each_batch_once(tmp_path: Path) -> None:
    """The background replay, a stop and a run's begin may all replay the spool: the second
    waits for the first (they no longer queue on the flush lock batch by batch), so no batch
    is written twice, even when the database does not tell written batches apart."""
    db = FakeDb()
    store = HangingStore(db, tmp_path, retry_base_s=30.0, retry_max_s=60.0)
    await store.start()
    try:
        db.up = False
        for i in range(3):
            store.record_equity("r1", T0 + i * DAY, 1.0, float(i), 0.0, 0.0)
            await store.flush()
        db.up, db.attempts = True, 0
        store.answering.clear()
        first = asyncio.create_task(store.replay_spool())
        await asyncio.wait_for(store.hung.wait(), 5)
        second = asyncio.create_task(store.replay_spool())
        for _ in range(5):
            await asyncio.sleep(0)
        assert db.attempts == 0  # the second waits for the first, not for the flush lock
        store.answering.set()
        assert sorted(await asyncio.wait_for(asyncio.gather(first, second), 5)) == [0, 3]
    finally:
        await store.stop()
    assert db.attempts == 3 and store.skipped_batches == 0
    assert equity_times(db) == [T0 + i * DAY for i in range(3)]


async def test_a_stop_while_a_replay_waits_leaves_every_batch_for_the_next_start_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM while the background replay waits for the answer to a COMMIT that went in:
    the stop ends within its budget, the flushes made meanwhile are in the spool behind the
    batch, and the next start writes the rest in order, skipping the committed batch."""
    from tradingd.storage import buffered

    monkeypatch.setattr(buffered, "STOP_BUDGET_S", 0.2, raising=False)
    db = FakeDb()
    store = HangingStore(db, tmp_path)  # the background replay retries every 5-20 ms
    await store.start()
    db.up = False
    for i in range(2):
        store.record_equity("r1", T0 + i * DAY, 1.0, float(i), 0.0, 0.0)
        await store.flush()
    store.commit_first = True
    store.answering.clear()
    db.up = True
    await asyncio.wait_for(store.hung.wait(), 5)  # batch 1 committed, its answer lost
    for i in range(2, 4):
        store.record_equity("r1", T0 + i * DAY, 1.0, float(i), 0.0, 0.0)
        await asyncio.wait_for(store.flush(), 1.0)
    t = time.monotonic()
    await store.stop()
    assert time.monotonic() - t < 2
    assert store.spool_left is not None and store.spool_left[0] == 4
    assert equity_times(db) == [T0]
    again = FakeStore(db, tmp_path)
    await again.start()  # replays the file left: batch 1 is skipped by its marker
    await again.stop()
    assert equity_times(db) == [T0 + i * DAY for i in range(4)]
    assert again.skipped_batches == 1 and again.replayed_batches == 3


async def test_a_crash_after_a_replayed_commit_does_not_write_it_twice(tmp_path: Path):
    db = FakeDb()
    store = FakeStore(db, tmp_path, retry_base_s=30.0, retry_max_s=60.0)
    await store.start()
    db.up = False
    for i in range(4):
        store.record_equity("r1", T0 + i * DAY, 1.0, float(i), 0.0, 0.0)
        await store.flush()
    db.up = True

    def crash(b: SpoolBatch) -> None:
        if b.seq == 2:
            raise RuntimeError("killed between commit and truncation")

    store._after_replay_commit = crash
    with pytest.raises(RuntimeError):
        await store.replay_spool()
    assert equity_times(db) == [T0, T0 + DAY]
    # The same process retries: the committed batch is skipped by its marker.
    store._after_replay_commit = None
    assert await store.replay_spool() == 2
    assert store.skipped_batches == 1
    await store.stop()
    assert equity_times(db) == [T0 + i * DAY for i in range(4)]


async def _died_spooling(db: FakeDb, folder: Path) -> FakeStore:
    """A store that spooled three bars of run r1 while `db` was down, then stopped without
    a flush or a replay: its spool file stays in `folder`."""
    dead = FakeStore(db, folder)
    await dead.start()
    db.up = False
    for i in range(3):
        dead.record_equity("r1", T0 + i * DAY, 1.0, float(i), 0.0, 0.0)
        await dead.flush()
    await dead._stop_spool()
    return dead


async def test_a_dead_process_spool_is_replayed_at_start_before_anything_else(tmp_path: Path):
    db = FakeDb()
    await _died_spooling(db, tmp_path)  # "SIGKILL": no flush, no replay

    # Down at start: retried for start_retry_s, then an error naming the database.
    again = FakeStore(db, tmp_path, start_retry_s=0.05)
    with pytest.raises(DatabaseUnavailable, match=r"gave up after \d+ attempts"):
        await again.start()
    db.up = True
    again = FakeStore(db, tmp_path)
    with capture_logs() as logs:
        await again.start()
    assert equity_times(db) == [T0, T0 + DAY, T0 + 2 * DAY]
    assert [e["batches"] for e in logs if e["event"] == "storage.spool.orphan_replayed"] == [3]
    assert list(tmp_path.glob("*.spool")) == []
    await again.stop()


async def test_a_spool_of_another_database_is_left_alone(tmp_path: Path) -> None:
    other = Spool(tmp_path, "0-other", "fake://another-db")
    other.append(batch(1, "0-other"))
    other.close()
    db = FakeDb()
    store = FakeStore(db, tmp_path)
    with capture_logs() as logs:
        await store.start()
    await store.stop()
    assert db.rows == {} and (tmp_path / "0-other.spool").exists()
    assert "storage.spool.other_database" in [e["event"] for e in logs]


async def test_a_refused_statement_is_raised_and_never_spooled(tmp_path: Path) -> None:
    db = FakeDb()
    store = FakeStore(db, tmp_path)
    await store.start()
    db.refuse = "write to fake failed: NotNullViolationError"
    store.record_equity("r1", T0, 1.0, 0.0, 0.0, 0.0)
    with pytest.raises(StorageError, match="NotNullViolation") as e:
        await store.flush()
    assert not isinstance(e.value, DatabaseUnavailable)
    assert store.pending()["equity"] == 1 and store.status()["ok"]
    assert list(tmp_path.iterdir()) == []
    db.refuse = None
    await store.stop()
    assert equity_times(db) == [T0]


async def test_a_refused_replay_fails_loudly_and_keeps_the_spool(tmp_path: Path) -> None:
    db = FakeDb()
    store = FakeStore(db, tmp_path)
    await store.start()
    db.up = False
    store.record_equity("r1", T0, 1.0, 0.0, 0.0, 0.0)
    await store.flush()
    db.refuse = "write to fake failed: UndefinedColumnError"
    db.up = True
    await wait_until(lambda: store.status()["state"] == "failed", "the replay to fail")
    st = store.status()
    assert st["ok"] is False and "UndefinedColumnError" in st["detail"]
    assert st["spooled_batches"] == 1
    store.record_equity("r1", T0 + DAY, 1.0, 1.0, 0.0, 0.0)
    with pytest.raises(StorageError, match="replaying the storage spool") as e:
        await store.flush()
    assert str(store._spool.path) in str(e.value)  # type: ignore[union-attr]
    assert store.pending()["equity"] == 1
    db.refuse = None  # the operator fixed it: a replay (here by stop) writes everything
    await store.stop()
    assert equity_times(db) == [T0, T0 + DAY]


async def test_a_full_spool_raises_and_keeps_the_rows_in_memory(tmp_path: Path) -> None:
    db = FakeDb()
    store = FakeStore(db, tmp_path, max_bytes=4096, retry_base_s=30.0, retry_max_s=60.0)
    await store.start()
    db.up = False
    n = 0
    with pytest.raises(StorageError, match="spool_max_bytes=4096") as e:
        while True:
            store.record_equity("r1", T0 + n * DAY, 1.0, float(n), 0.0, 0.0)
            store.record_checkpoint("r1", T0 + n * DAY, {"bar": n, "pad": "x" * 300})
            await store.flush()
            n += 1
    assert str(store._spool.path) in str(e.value)  # type: ignore[union-attr]
    assert store.pending()["equity"] == 1 and store.pending()["checkpoints"] == 1
    assert store.status()["spooled_batches"] == n
    db.up = True
    await store.replay_spool()
    await store.flush()  # the kept rows go after the spooled ones
    await store.stop()
    assert equity_times(db) == [T0 + i * DAY for i in range(n + 1)]
    assert [json.loads(r[2])["bar"] for r in db.rows["checkpoints"]] == list(range(n + 1))


async def test_end_run_and_a_resumed_run_wait_for_the_spool(tmp_path: Path) -> None:
    db = FakeDb()
    store = FakeStore(db, tmp_path, retry_base_s=30.0, retry_max_s=60.0)
    await store.start()
    db.up = False
    store.record_equity("r1", T0, 1.0, 0.0, 0.0, 0.0)
    await store.end_run("r1", {"bars": 1})  # spooled, with the run's end
    assert store.status()["spooled_batches"] == 2
    with pytest.raises(DatabaseUnavailable):
        await store.begin_run(RunInfo("r2", "live", T0, "{}", ("A",), 1.0))
    db.up = True
    await store.begin_run(RunInfo("r2", "live", T0, "{}", ("A",), 1.0))
    assert store.status()["spooled_batches"] == 0 and equity_times(db) == [T0]
    assert [name for name, _ in db.ops] == ["end_run"]
    await store.stop()


async def test_a_store_that_never_spools_leaves_no_file(tmp_path: Path) -> None:
    db = FakeDb()
    store = FakeStore(db, tmp_path / "spool")
    await store.start()
    store.record_equity("r1", T0, 1.0, 0.0, 0.0, 0.0)
    await store.flush()
    await store.stop()
    # The folder is made (and probed) at start; no file is left in it.
    assert list((tmp_path / "spool").iterdir()) == []


def test_a_connection_caught_mid_exchange_by_an_outage_is_an_outage():
    """CI's outage test ended the daemon: a pooled connection whose server had gone away
    raised asyncpg's InternalClientError ("cannot switch to state 15; another operation (2)
    is in progress", not an InterfaceError) from BEGIN. It is an outage, and the store
    raises DatabaseUnavailable (the daemon spools) rather than letting it escape."""
    import asyncio
    import contextlib

    import asyncpg

    from tradingd.storage.buffered import DatabaseUnavailable
    from tradingd.storage.postgres import PostgresStore

    err = asyncpg.InternalClientError(
        "cannot switch to state 15; another operation (2) is in progress"
    )
    assert unavailable(err)
    assert not unavailable(asyncpg.InternalClientError("unexpected message type"))

    class Transaction:  # asyncpg's Transaction: its BEGIN (`start`) fails
        async def start(self):
            raise err

        async def __aenter__(self):
            await self.start()

        async def __aexit__(self, *exc):
            return False

    class Conn:
        def transaction(self):
            return Transaction()

        def terminate(self):
            pass

        def is_closed(self):  # asked after a failed transaction (postgres._transaction)
            return False

        def is_in_transaction(self):  # BEGIN itself failed
            return False

    class Pool:
        def acquire(self):
            @contextlib.asynccontextmanager
            async def conn():
                yield Conn()

            return conn()

    store = PostgresStore("postgresql://127.0.0.1:5432/test")
    store._get_pool = lambda: Pool()
    with pytest.raises(DatabaseUnavailable):
        asyncio.run(store._write_batches({}))


def test_spools_left_under_the_old_name_of_a_search_path_schema_are_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The schema chosen by `?search_path=` now names the spool; an earlier build named it
    `public`, and what it spooled there would have been stranded without a word."""
    from structlog.testing import capture_logs

    monkeypatch.chdir(tmp_path)
    url = "postgresql://user:pw-secret@db.example:6543/trading"
    old = tmp_path / "var" / "spool" / "db.example_6543_trading_public"
    old.mkdir(parents=True)
    (old / "1-host.123.spool").write_text("")
    with capture_logs() as logs:
        PostgresStore(f"{url}?search_path=s2")
    (said,) = [e for e in logs if e["event"] == "storage.spool.legacy_folder"]
    assert said["files"] == ["1-host.123.spool"] and "pw-secret" not in str(said)
    with capture_logs() as logs:
        PostgresStore(url)  # the public schema's own spool: nothing to say
    assert not [e for e in logs if e["event"] == "storage.spool.legacy_folder"]


# ------------------------------------------------------------------ the folder checked at start


async def test_a_spool_folder_that_cannot_be_made_stops_the_start(tmp_path: Path) -> None:
    """Before, the start passed (no folder, no orphans) and the spool failed at the first
    append of an outage, its batch then in memory only."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the spool folder should be")
    store = FakeStore(FakeDb(), blocker / "spool")
    with pytest.raises(SpoolError) as e:
        await store.start()
    text = str(e.value)
    assert "storage.spool_dir" in text and str(blocker / "spool") in text
    assert "make the folder" in text
    # The operator's to fix: not restarted by systemd into the same refusal (it exited 2).
    from tradingd.__main__ import EX_CONFIG, exit_code

    assert exit_code(e.value, "run") == EX_CONFIG


async def test_a_spool_folder_on_a_full_disk_stays_restartable(tmp_path: Path, monkeypatch):
    """A full disk may be freed, and a restart then goes through: exit 2 (restarted)."""
    import errno
    import os as _os

    from tradingd.__main__ import exit_code

    real_write = _os.write

    def full(fd: int, data: bytes) -> int:
        if data == b"probe\n":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr("tradingd.storage.spool.os.write", full)
    store = FakeStore(FakeDb(), tmp_path / "spool")
    with pytest.raises(SpoolError) as e:
        await store.start()
    assert "No space left" in str(e.value)
    assert exit_code(e.value, "run") == 2


def probe_fails(monkeypatch: pytest.MonkeyPatch, err: int, while_: Callable[[], bool]) -> None:
    """The start's probe write fails with `err` while `while_()` is true."""
    import errno
    import os as _os

    real_write = _os.write

    def write(fd: int, data: bytes) -> int:
        if data == b"probe\n" and while_():
            raise OSError(err, _os.strerror(err) if err != errno.ENOSPC else "No space left")
        return real_write(fd, data)

    monkeypatch.setattr("tradingd.storage.spool.os.write", write)


async def test_a_spool_that_filled_its_disk_is_replayed_before_the_folder_is_probed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spool grew until its disk was full and the process exited. The disk stays full
    while the file is there: the start must write it (which takes no space), remove it,
    then probe the folder. The probe came first and failed with ENOSPC, at every restart,
    telling the operator to point storage.spool_dir elsewhere (the spool then never
    written)."""
    import errno

    db = FakeDb()
    await _died_spooling(db, tmp_path)  # the exit on the full disk
    db.up = True
    probe_fails(monkeypatch, errno.ENOSPC, lambda: bool(list(tmp_path.glob("*.spool"))))

    again = FakeStore(db, tmp_path)
    with capture_logs() as logs:
        await again.start()
    try:
        assert equity_times(db) == [T0, T0 + DAY, T0 + 2 * DAY]
        assert list(tmp_path.glob("*.spool")) == []
        [freed] = [e for e in logs if e["event"] == "storage.spool.space_freed"]
        assert "No space left" in freed["error"]
    finally:
        await again.stop()


@pytest.mark.parametrize("err", ["ENOSPC", "EACCES"])
async def test_a_spool_folder_that_cannot_be_used_names_the_spools_it_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: str
) -> None:
    """A full (or unwritable) spool folder that still holds spool files (here another
    database's, which this start leaves alone): the error must name them and say their
    records are not in the database, so that the operator frees the space (or moves them
    along) rather than point storage.spool_dir elsewhere and leave them behind. It said
    only "point storage.spool_dir at a writable folder"."""
    import errno

    from tradingd.__main__ import EX_CONFIG, exit_code

    other = Spool(tmp_path, "0-other", "fake://another-db")
    other.append(batch(1, "0-other"))
    other.close()
    probe_fails(monkeypatch, getattr(errno, err), lambda: True)
    db = FakeDb()
    store = FakeStore(db, tmp_path)
    with pytest.raises(SpoolError) as e:
        await store.start()
    await store.stop()
    text = str(e.value)
    assert "0-other.spool" in text and "not yet in the database" in text
    assert "rather than point storage.spool_dir elsewhere" in text
    assert "move these files into the new folder" in text
    assert ("free space" in text) == (err == "ENOSPC")
    assert exit_code(e.value, "run") == (2 if err == "ENOSPC" else EX_CONFIG)
    assert (tmp_path / "0-other.spool").exists() and db.rows == {}


async def test_a_spool_folder_without_locks_stops_the_start(tmp_path: Path, monkeypatch) -> None:
    import errno

    from flock_faults import failing_on

    failing_on(monkeypatch, lambda p: p.endswith(".probe.tmp"), errno.ENOLCK)
    store = FakeStore(FakeDb(), tmp_path / "spool")
    with pytest.raises(SpoolError) as e:
        await store.start()
    assert "ENOLCK" in str(e.value) and "storage.spool_dir" in str(e.value)
    assert list((tmp_path / "spool").iterdir()) == []  # the probe is gone


async def test_a_usable_spool_folder_is_left_as_it_was(tmp_path: Path) -> None:
    store = FakeStore(FakeDb(), tmp_path / "spool")
    await store.start()
    try:
        assert (tmp_path / "spool").is_dir()
        assert list((tmp_path / "spool").iterdir()) == []  # made, probed, nothing left
    finally:
        await store.stop()


def test_a_probe_left_by_a_crash_is_removed_with_the_orphans(tmp_path: Path) -> None:
    left = tmp_path / ".1-w.99.probe.tmp"
    left.write_bytes(b"probe\n")
    assert claim_orphans(tmp_path) == []
    assert not left.exists()


def test_a_spool_of_an_earlier_build_is_read_with_null_in_the_columns_added_since():
    """A daemon upgraded during an outage replays the earlier build's spool: its
    order_events rows have no `booked_at` (added since, nullable, at the end)."""
    from tradingd.storage.schema import TABLES
    from tradingd.storage.spool import decode_batch

    old_row = ["r1", "r1|a", "new", 0.0, "", "2020-01-02T21:00:00+00:00"]
    batch = decode_batch(
        {"writer": "w", "seq": 1, "t": 0.0, "tables": {"order_events": [old_row]}, "ops": []}
    )
    [row] = batch.tables["order_events"]
    assert len(row) == len(TABLES["order_events"].insert_columns)
    assert row[: len(old_row)] == tuple(old_row) and row[len(old_row) :] == (None,)
