"""`tradingd delete-runs`: finished runs' rows removed from the store by a command. The
README told users to delete them by hand, table by table, with the daemon stopped: each
quick-start backtest added about 3.6 MB to the store for good, and a hundred a day nothing
removed.

The store here is made by the real writers: three `tradingd backtest` runs and a live run,
in one SQLite file (and on PostgreSQL when it is reachable)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_runs import in_process
from conftest import engine_toml, live_run

from tradingd.app import build_engine
from tradingd.config import load_config
from tradingd.storage.schema import RUN_TABLES

BACKTESTS = ("bt-old", "bt-mid", "bt-new")
LIVE = "test-live"


def _backtest_config(tmp_path: Path, run_id: str) -> str:
    """engine.toml's store and folders, one year of the bundled data, this run id."""
    p = tmp_path / f"{run_id}.toml"
    p.write_text(
        textwrap.dedent(f"""
            [run]
            run_id = "{run_id}"
            start = "2017-01-01"
            end = "2017-12-31"
        """)
    )
    return str(p)


def _make_store(tmp_path: Path, run, cfg: Path | None = None) -> str:  # type: ignore[no-untyped-def]
    """A live run and then the three backtests (oldest first) in one store (engine.toml's,
    or `cfg`'s); the config file to pass with -c."""
    cfg = cfg or engine_toml(tmp_path)
    config = load_config([cfg], env={})
    panel, live_config = live_run(config)
    engine = build_engine(live_config, "live", panel=panel)
    asyncio.run(engine.run_until_done())
    for run_id in BACKTESTS:
        code, _, err = run("backtest", "-c", str(cfg), "-c", _backtest_config(tmp_path, run_id))
        assert code == 0, err
    return str(cfg)


def _rows(db: Path) -> dict[str, dict[str, int]]:
    """Rows per run id of every run table (and `runs`)."""
    out: dict[str, dict[str, int]] = {}
    with contextlib.closing(sqlite3.connect(db)) as con:
        for table in (*RUN_TABLES, "runs"):
            out[table] = dict(
                con.execute(f"SELECT run_id, COUNT(*) FROM {table} GROUP BY run_id").fetchall()
            )
    return out


def _bars(db: Path) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(db)) as con:
        return con.execute("SELECT * FROM bars ORDER BY symbol, time").fetchall()


def test_keep_the_newest_backtest_deletes_the_others_whole_and_leaves_the_rest(
    tmp_path, monkeypatch, capsys
):
    run = in_process(monkeypatch, tmp_path, capsys)
    cfg = _make_store(tmp_path, run)
    db = tmp_path / "store.db"
    before, bars = _rows(db), _bars(db)
    assert bars  # the live run recorded its bars
    for run_id in (*BACKTESTS, LIVE):
        assert before["runs"][run_id] == 1 and before["equity"][run_id] > 0

    audit = tmp_path / "audit"
    assert list(audit.glob("bt-old.jsonl*")) and (tmp_path / "runs" / "bt-old").is_dir()

    # The dry run lists the two older backtests and deletes nothing.
    code, out, err = run("delete-runs", "-c", cfg, "--backtests", "--keep", "1")
    assert code == 0, err
    assert "would delete 2 run(s)" in out and "a dry run: nothing was deleted" in out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  bt")]
    assert listed == ["bt-old", "bt-mid"]
    assert f"equity {before['equity']['bt-old']}" in out
    assert _rows(db) == before

    code, out, err = run("delete-runs", "-c", cfg, "--backtests", "--keep", "1", "--yes", "--files")
    assert code == 0, err
    assert "deleted 2 run(s)" in out and "does not shrink until it is vacuumed" in out
    after = _rows(db)
    for table, per_run in after.items():
        assert "bt-old" not in per_run and "bt-mid" not in per_run, table
        for kept in ("bt-new", LIVE):
            assert per_run.get(kept) == before[table].get(kept), (table, kept)
    assert _bars(db) == bars
    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == ["bt-new"]
    assert not list(audit.glob("bt-old.jsonl*")) and not list(audit.glob("bt-mid.jsonl*"))
    assert list(audit.glob(f"{LIVE}.jsonl*"))  # the live run's log is not touched

    # The kept run still reads as before.
    code, out, err = run("compare", "-c", cfg, "bt-new", "bt-new")
    assert code == 0, err
    code, out, err = run("report", "-c", cfg, "bt-new", "--no-validation")
    assert code == 0, err
    assert (runs / "bt-new" / "report.html").is_file()

    # The file shrinks with --vacuum.
    size = db.stat().st_size
    code, out, err = run("delete-runs", "-c", cfg, "--vacuum")
    assert code == 0, err
    assert "vacuumed" in out and db.stat().st_size < size


def test_a_live_run_is_refused_without_live_and_deleted_whole_with_it(
    tmp_path, monkeypatch, capsys
):
    run = in_process(monkeypatch, tmp_path, capsys)
    cfg = _make_store(tmp_path, run)
    db = tmp_path / "store.db"
    before, bars = _rows(db), _bars(db)
    assert before["checkpoints"][LIVE] == 1 and before["decisions"][LIVE] > 0

    code, out, err = run("delete-runs", "-c", cfg, LIVE, "--yes")
    assert code == 2
    assert "tradingd: error:" in err and repr(LIVE) in err and "--live" in err
    assert _rows(db) == before

    # Selected by a filter, it is listed as kept (with why), not deleted.
    code, out, err = run("delete-runs", "-c", cfg, "--before", "2999-01-01", "--yes")
    assert code == 0, err
    assert f"{LIVE}  live: a live run" in out
    assert {run_id for run_id in _rows(db)["runs"]} == {LIVE}

    code, out, err = run("delete-runs", "-c", cfg, LIVE, "--live", "--yes")
    assert code == 0, err
    after = _rows(db)
    assert all(not per_run for per_run in after.values()), after
    assert _bars(db) == bars


@contextlib.contextmanager
def _held_by_another_process(cfg: str, run_id: str) -> Iterator[None]:
    """The run lock a running backtest of `run_id` holds (app._run_lock), held by a child
    process until the block ends."""
    code = textwrap.dedent(f"""
        import asyncio, sys
        from tradingd.app import _run_lock
        from tradingd.config import load_config

        async def main():
            config = load_config([{cfg!r}, {_id_file(cfg, run_id)!r}], env={{}})
            lock = _run_lock(config, {run_id!r})
            await lock.start()
            print("held", flush=True)
            sys.stdin.readline()
            await lock.stop()

        asyncio.run(main())
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADINGD_")}
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None
        # (structlog's lines go to stdout too)
        for line in child.stdout:
            if line.strip() == "held":
                break
        else:
            pytest.fail("the child process did not take the run lock")
        yield
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)


def _id_file(cfg: str, run_id: str) -> str:
    p = Path(cfg).with_name(f"{run_id}.toml")
    assert p.is_file()
    return str(p)


def test_a_run_held_by_a_running_process_is_refused_and_vacuum_too(tmp_path, monkeypatch, capsys):
    run = in_process(monkeypatch, tmp_path, capsys)
    cfg = _make_store(tmp_path, run)
    db = tmp_path / "store.db"
    before = _rows(db)
    with _held_by_another_process(cfg, "bt-old"):
        code, out, err = run("delete-runs", "-c", cfg, "bt-old", "bt-mid", "--yes")
        assert code == 2
        assert "'bt-old' is in use by another tradingd (pid" in err
        assert "nothing was deleted" in err
        assert _rows(db) == before
        # Selected by a filter, it is kept with why; the others go.
        code, out, err = run("delete-runs", "-c", cfg, "--backtests", "--yes")
        assert code == 0, err
        assert "bt-old  backtest: in use by another tradingd" in out
        assert set(_rows(db)["runs"]) == {"bt-old", LIVE}
        code, out, err = run("delete-runs", "-c", cfg, "--vacuum")
        assert code == 2
        assert "--vacuum refused" in err and "holds the store" in err
    code, out, err = run("delete-runs", "-c", cfg, "bt-old", "--yes")
    assert code == 0, err
    assert set(_rows(db)["runs"]) == {LIVE}


def test_an_unknown_run_id_is_an_error_naming_it_and_deletes_nothing(tmp_path, monkeypatch, capsys):
    run = in_process(monkeypatch, tmp_path, capsys)
    cfg = engine_toml(tmp_path)
    code, _, err = run("backtest", "-c", str(cfg), "-c", _backtest_config(tmp_path, "bt-new"))
    assert code == 0, err
    db = tmp_path / "store.db"
    before = _rows(db)
    code, _, err = run("delete-runs", "-c", str(cfg), "bt-new", "bt-typo", "--yes")
    assert code == 2
    (line,) = [x for x in err.splitlines() if x.startswith("tradingd: error:")]
    assert "'bt-typo'" in line and "bt-new'" not in line
    assert _rows(db) == before


def test_a_missing_store_is_named_and_not_created(tmp_path, monkeypatch, capsys):
    run = in_process(monkeypatch, tmp_path, capsys)
    cfg = engine_toml(tmp_path)
    code, _, err = run("delete-runs", "-c", str(cfg), "--backtests", "--yes")
    assert code == 2 and "no store at" in err
    assert not (tmp_path / "store.db").exists()


def test_postgres_keep_the_newest_backtest(tmp_path, monkeypatch, capsys, pg_url):
    import asyncpg
    from pg_schemas import schema_name

    run = in_process(monkeypatch, tmp_path, capsys)
    schema = schema_name()
    url = f"{pg_url}{'&' if '?' in pg_url else '?'}search_path={schema}"

    async def execute(sql: str) -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(execute(f'CREATE SCHEMA "{schema}"'))
    try:
        cfg = engine_toml(tmp_path)
        cfg.write_text(cfg.read_text().replace(f"sqlite:///{tmp_path / 'store.db'}", url))
        _make_store(tmp_path, run, cfg)

        async def rows() -> dict[str, dict[str, int]]:
            conn = await asyncpg.connect(pg_url)
            try:
                out = {}
                for table in (*RUN_TABLES, "runs", "bars"):
                    got = await conn.fetch(
                        f'SELECT run_id, COUNT(*) FROM "{schema}".{table} GROUP BY run_id'
                        if table != "bars"
                        else f"SELECT 'bars', COUNT(*) FROM \"{schema}\".bars"
                    )
                    out[table] = {r[0]: r[1] for r in got}
                return out
            finally:
                await conn.close()

        before = asyncio.run(rows())
        assert before["bars"]["bars"] > 0
        code, out, err = run("delete-runs", "-c", str(cfg), "--backtests", "--keep", "1", "--yes")
        assert code == 0, err
        assert "PostgreSQL reuses the space" in out
        after = asyncio.run(rows())
        for table, per_run in after.items():
            assert "bt-old" not in per_run and "bt-mid" not in per_run, table
        assert after["bars"] == before["bars"]
        assert set(after["runs"]) == {"bt-new", LIVE}
        code, _, err = run("delete-runs", "-c", str(cfg), "--vacuum")
        assert code == 2 and "--vacuum is for a SQLite store" in err

        # A spool a dead live daemon left would write a deleted live run's rows back at
        # the next live start: refused while it holds files.
        from tradingd.storage.postgres import default_spool_dir

        spooled = tmp_path / default_spool_dir(url, None) / "dead-writer.spool"
        spooled.parent.mkdir(parents=True, exist_ok=True)
        spooled.write_bytes(b"")
        code, _, err = run("delete-runs", "-c", str(cfg), LIVE, "--live", "--yes")
        assert code == 2 and "the spool folder" in err and "start the daemon once" in err
        assert set(asyncio.run(rows())["runs"]) == {"bt-new", LIVE}
        spooled.unlink()
        code, _, err = run("delete-runs", "-c", str(cfg), LIVE, "--live", "--yes")
        assert code == 0, err
        after = asyncio.run(rows())
        assert all(LIVE not in per_run for per_run in after.values())
        assert after["bars"] == before["bars"]
    finally:
        asyncio.run(execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ((), "name the runs to delete"),
        (("--keep", "1"), "--keep N goes with --backtests"),
        (("--backtests", "--keep", "-1"), "must be 0 or more"),
        (("--before", "2026-13-01"), "is not a date"),
    ],
)
def test_command_line_mistakes_are_named(tmp_path, monkeypatch, capsys, argv, message):
    run = in_process(monkeypatch, tmp_path, capsys)
    cfg = engine_toml(tmp_path)
    code, _, err = run("delete-runs", "-c", str(cfg), *argv)
    assert code == 2 and message in err
    assert not (tmp_path / "store.db").exists()


def test_every_run_table_is_emptied_of_the_run_and_only_of_it(tmp_path):
    """One row of two runs in every table the schema declares (whatever the real runs
    above happened to write: `adjustments` only when an operator adopted): the store's
    delete removes each of the run's and none of the other's, nor `bars`."""
    from tradingd.storage.schema import TABLES
    from tradingd.storage.sqlite import SqliteStore

    db = tmp_path / "t.db"

    async def main() -> None:
        store = SqliteStore(db, process=False)
        await store.start()
        await store.stop()
        with contextlib.closing(sqlite3.connect(db)) as con, con:
            for table in TABLES.values():
                cols = [c for c in table.columns if c.kind != "serial"]
                for run_id in ("gone", "kept"):
                    values = [run_id if c.name == "run_id" else f"{run_id}-{c.name}" for c in cols]
                    con.execute(
                        f"INSERT INTO {table.name} ({', '.join(c.name for c in cols)}) "
                        f"VALUES ({', '.join('?' * len(cols))})",
                        values,
                    )
        store = SqliteStore(db, process=False)
        await store.start()
        try:
            await store.delete_run("gone")
        finally:
            await store.stop()

    asyncio.run(main())
    rows = _rows(db)
    for table in (*RUN_TABLES, "runs"):
        assert rows[table] == {"kept": 1}, table
    with contextlib.closing(sqlite3.connect(db)) as con:
        assert con.execute("SELECT COUNT(*) FROM bars").fetchone() == (2,)
        assert con.execute("SELECT COUNT(*) FROM spool_applied").fetchone() == (2,)
