"""PostgreSQL and Redis outages of a real `tradingd run` process (issue 9, point 7).

The test runs its own PostgreSQL cluster and redis-server on free ports (tests/private_servers,
never the shared ones) and a live daemon on them: recorded daily bars released through the
live path at `RATE` bars per second, the simulated broker, the store on the private
PostgreSQL (its spool in the test's directory), the cache and publisher on the private Redis,
the health server on a free port.

Mid-run it stops PostgreSQL (`pg_ctl stop -m fast`) and kills Redis. While both are down the
daemon keeps processing bars (the bar count of /status rises), `/ready` answers 503 naming
the database (degraded, batches spooled), the cache and the publisher, the spool file holds
the bars' orders, fills and checkpoints, and the process stays alive. Both servers start
again: `/ready` returns to 200 while the run still has bars to go (the spool replayed), and
the run finishes with exit code 0.

What PostgreSQL then holds for the run (orders, order events, fills, positions, equity,
signals, decisions, the checkpoint, the run row, the bars) equals, row for row and with no row
twice, what an uninterrupted run of the same configuration stored in another database of the
same server; the spool directory is empty at the end. Every wait is on a condition with a
deadline. Without PostgreSQL binaries or redis-server the test skips (with the reason), unless
TRADINGD_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from private_servers import PgServer, RedisServer, free_port, private_postgres, private_redis
from private_servers import wait_for as _wait_for

from tradingd.storage.schema import TABLES
from tradingd.storage.spool import decode_line

ROOT = Path(__file__).resolve().parents[2]
RUN_ID = "outages"
# One year of daily bars (251), after 18 months of history for the signal's look-back (a short
# warm-up: the bundled series start in 1999). At 16 bars per second the bars take about 16 s:
# room to stop and start both servers mid-run and for the spool's replay backoff (0.5 s
# doubling, up to 30 s) to find the database again well before the last bar.
WINDOW = ("2000-07-03", "2001-06-29")
RATE = 16.0
OUTAGE_AFTER_BARS = 25  # the servers go down once this many bars are processed
BARS_DURING_OUTAGE = 15  # ... and stay down until this many more are
# Columns that differ between two correct runs: wall-clock times and the configuration (it
# names the database). The insertion counters (`seq`) are not read: they are not row data.
VOLATILE = {
    "runs": {"started_at", "ended_at", "config_json"},
    "checkpoints": {"written_at"},
    # A process start's time; its build (version, commit) is compared.
    "run_builds": {"started_at"},
}


def _get(url: str) -> tuple[int | None, Any]:
    """(HTTP status, parsed JSON or text); (None, error) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            code, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        code, text = e.code, e.read().decode()
    except OSError as e:
        return None, str(e)
    try:
        return code, json.loads(text)
    except ValueError:
        return code, text


class Daemon:
    """A `tradingd run` process with its health server and its JSON log (stderr)."""

    def __init__(self, workdir: Path, name: str, db_url: str, redis_url: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.spool_dir = workdir / f"{name}-spool"
        self.log_path = workdir / f"{name}.log"
        self.cfg = workdir / f"{name}.toml"
        self.cfg.write_text(f"""
[run]
name = "outages"
run_id = "{RUN_ID}"
start = "{WINDOW[0]}"
end = "{WINDOW[1]}"
output_dir = "{workdir / name}-runs"
[[signals]]
name = "momentum"
params = {{ lookback = 20 }}
[orders]
brackets = true
[live]
bars_per_second = {RATE}
[storage]
url = "{db_url}"
flush_interval_s = 0.2
spool_dir = "{self.spool_dir}"
[cache]
url = "{redis_url}"
publish_interval_s = 0.2
[health]
enabled = true
port = {self.port}
[log]
format = "json"
audit_dir = "{workdir / name}-audit"
""")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("APCA_", "TRADINGD_"))}
        self._stderr = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tradingd", "run", "-c", str(ROOT / "config/default.toml"),
             "-c", str(self.cfg)],
            cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=self._stderr,
        )  # fmt: skip

    def alive(self) -> str | None:
        """None while running; else how it ended, with the end of its log."""
        if self.proc.poll() is None:
            return None
        return f"the daemon exited with {self.proc.returncode}:\n{self.log_tail()}"

    def log_tail(self, n: int = 30) -> str:
        self._stderr.flush()
        return "\n".join(self.log_path.read_text().splitlines()[-n:])

    def records(self) -> list[dict[str, Any]]:
        """The JSON log lines (an unfinished last line is skipped)."""
        out = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.records() if e.get("event") == name]

    def wait_for(self, predicate: Any, what: str, timeout_s: float = 30.0) -> Any:
        return _wait_for(predicate, what, timeout_s, alive=self.alive)

    def status(self) -> dict[str, Any] | None:
        code, body = _get(f"{self.base}/status")
        return body if code == 200 and isinstance(body, dict) else None

    def bars(self) -> int:
        st = self.status()
        return int(st["bars"]) if st is not None else -1

    def ready(self) -> tuple[int | None, dict[str, Any]]:
        code, body = _get(f"{self.base}/ready")
        return code, body if isinstance(body, dict) else {}

    def metric(self, name: str, labels: str = "") -> float | None:
        code, text = _get(f"{self.base}/metrics")
        if code != 200 or not isinstance(text, str):
            return None
        m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
        return float(m.group(1)) if m else None

    def finish(self, timeout_s: float) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the run did not finish within {timeout_s} s:\n{self.log_tail()}"
            ) from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._stderr.close()


def spool_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.spool")) if directory.exists() else []


def spooled_rows(path: Path) -> Counter[str]:
    """Rows per table in a spool file (a record being appended is skipped)."""
    rows: Counter[str] = Counter()
    with path.open("rb") as f:
        for line in f:
            record = decode_line(line)
            if record is not None and record.get("kind") == "batch":
                for table, batch in record["tables"].items():
                    rows[table] += len(batch)
    return rows


def _plain(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return "NaN"  # NaN != NaN: compare it by name
    return v


def stored(url: str) -> dict[str, Counter[tuple[Any, ...]]]:
    """Every row of the run in every table (the bars too), as a multiset per table: two
    correct runs give equal multisets, and a row written twice counts twice."""

    async def read() -> dict[str, Counter[tuple[Any, ...]]]:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            out: dict[str, Counter[tuple[Any, ...]]] = {}
            for name, table in TABLES.items():
                if name == "spool_applied":
                    continue
                drop = VOLATILE.get(name, set())
                cols = [c for c in table.insert_columns if c not in drop]
                where = " WHERE run_id = $1" if table.run_scoped or name == "runs" else ""
                args = (RUN_ID,) if where else ()
                rows = await conn.fetch(f"SELECT {', '.join(cols)} FROM {name}{where}", *args)
                out[name] = Counter(tuple(_plain(r[c]) for c in cols) for r in rows)
                if name == "runs":  # the run ended (the summary is compared as a column)
                    ended = await conn.fetchval(
                        "SELECT ended_at FROM runs WHERE run_id = $1", *args
                    )
                    assert ended is not None, "the run is not marked ended"
            return out
        finally:
            await conn.close()

    return asyncio.run(read())


def differences(want: dict[str, Counter], got: dict[str, Counter]) -> list[str]:
    out = []
    for table, rows in want.items():
        missing, extra = rows - got[table], got[table] - rows
        if missing or extra:
            out.append(
                f"{table}: {sum(rows.values())} rows in the reference, {sum(got[table].values())}"
                f" after the outage; missing {sorted(missing.items(), key=str)[:3]}, "
                f"extra or doubled {sorted(extra.items(), key=str)[:3]}"
            )
    return out


@pytest.fixture
def servers(tmp_path: Path):
    with private_postgres() as pg, private_redis(tmp_path) as redis:
        redis.start()
        yield pg, redis


def test_daemon_rides_out_postgres_and_redis_outages_and_loses_or_doubles_nothing(
    servers: tuple[PgServer, RedisServer], tmp_path: Path
) -> None:
    pg, redis = servers
    reference_url = pg.create_database("reference")
    outage_url = pg.create_database("outage")
    took: dict[str, float] = {}

    # The uninterrupted run.
    t = time.monotonic()
    ref = Daemon(tmp_path, "reference", reference_url, redis.url)
    try:
        assert ref.finish(120) == 0, ref.log_tail()
    finally:
        ref.close()
    took["reference run"] = time.monotonic() - t
    want = stored(reference_url)
    assert sum(want["fills"].values()) >= 20, "the window must trade, or the test proves little"

    # The same run with both servers stopped in the middle.
    t = time.monotonic()
    d = Daemon(tmp_path, "outage", outage_url, redis.url)
    try:
        d.wait_for(lambda: d.bars() >= OUTAGE_AFTER_BARS, "the first bars", 60)
        code, body = d.ready()
        assert code == 200, body
        assert spool_files(d.spool_dir) == []  # nothing spooled while the database writes

        down = time.monotonic()
        pg.stop()
        redis.kill()
        at_stop = d.bars()

        def not_ready() -> dict[str, Any] | None:
            code, body = d.ready()
            failing = set(body.get("failing", ()))
            return body if code == 503 and {"database", "cache", "publisher"} <= failing else None

        body = d.wait_for(not_ready, "/ready to name the database, the cache, the publisher")
        db = body["checks"]["database"]
        assert db["data"]["state"] == "degraded" and db["data"]["down_since"], db
        assert "unreachable" in db["detail"] and "spooled to" in db["detail"], db
        assert db["data"]["spool_path"].startswith(str(d.spool_dir)), db
        assert body["checks"]["cache"]["data"]["backend"] == "memory", body["checks"]["cache"]
        # The daemon keeps trading on its in-memory state; each bar's rows go to the spool.
        d.wait_for(lambda: d.bars() >= at_stop + BARS_DURING_OUTAGE, "bars while both are down")
        code, body = d.ready()
        assert code == 503 and body["checks"]["database"]["data"]["spooled_batches"] > 0, body
        assert d.metric("tradingd_check_ok", '{check="database"}') == 0.0
        assert d.metric("tradingd_check_ok", '{check="cache"}') == 0.0
        assert _get(f"{d.base}/health")[0] == 200 and d.alive() is None
        [spool] = spool_files(d.spool_dir)
        spooled = spooled_rows(spool)
        # Trading went on: order intents, their events and fills, the checkpoint are spooled.
        for table in ("orders", "order_events", "fills", "equity", "checkpoints", "bars"):
            assert spooled[table] > 0, (table, spooled)
        outage_bars = d.bars() - at_stop

        redis.start()
        pg.start()
        back = time.monotonic()
        _, body = d.wait_for(
            lambda: (r := d.ready())[0] == 200 and r, "/ready 200 again (spool replayed)", 60
        )
        db = body["checks"]["database"]["data"]
        assert db["spooled_batches"] == 0 and db["replayed_batches"] > 0 and db["outages"] == 1
        recovered_at = d.bars()
        took["outage"] = back - down
        took["recovery"] = time.monotonic() - back
        assert d.finish(120) == 0, d.log_tail()
    finally:
        d.close()
    took["outage run"] = time.monotonic() - t

    [finished] = d.events("tradingd.exit")
    assert recovered_at < finished["bars"], "recovered only as the run ended: proves less"
    assert finished["bars_never_traded"] == 0  # the store's outage cost no bar
    assert spool_files(d.spool_dir) == []  # replayed, then removed at stop
    assert len(d.events("storage.database.down")) == 1
    # Nothing went wrong beyond the outages themselves: no error logged, no traceback.
    errors = [e for e in d.records() if e.get("level") in ("error", "critical")]
    assert errors == [] and "Traceback" not in d.log_path.read_text(), errors
    replayed = d.events("storage.spool.replayed")
    # At most one batch is found already written at replay: with one outage and a clean
    # restart (as here), the one write in flight when the server stopped, whose commit can
    # reach PostgreSQL while the client sees only the lost connection (one writer, one
    # transaction at a time, and after the first failure every batch goes to the spool). It
    # was spooled and then skipped by its batch id: the idempotent path, no loss or double
    # (checked below row by row). It happened in 1 of 7 full runs. A second outage, or a
    # replay cut off at its commit, could legitimately add one more each; neither occurs here.
    assert replayed and sum(e["already_written"] for e in replayed) <= 1, replayed
    [recovered] = d.events("storage.database.recovered")
    assert recovered["replay_attempts"] >= 1
    assert recovered["replayed_batches"] == sum(e["batches"] for e in replayed)
    assert len(d.events("cache.redis.down")) == len(d.events("cache.redis.recovered")) == 1
    assert d.events("storage.stop.spool_not_written") == []

    got = stored(outage_url)
    assert differences(want, got) == []
    print(
        f"\n{outage_bars} bars while down, ready again at bar {recovered_at} of "
        f"{finished['bars']}; spooled rows {dict(spooled)}; "
        f"{sum(e['batches'] for e in replayed)} batches replayed; "
        + ", ".join(f"{k} {v:.1f} s" for k, v in took.items())
    )
