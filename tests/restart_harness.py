"""Kill-and-restart cycles of a real `tradingd run` process (restart safety, issue 9).

The daemon runs a recorded-live configuration (the live clock releasing recorded bars fast,
the simulated broker, an SQLite store) and is killed with SIGKILL, either after a random
delay or at a named point of a bar (`TRADINGD_KILL_AT`, see `tradingd.faults`): between the
stored intent and the send, between the send and the recorded acknowledgement, with a bar's
fills applied but not recorded, inside a store transaction. It is restarted until it finishes
the run by itself. What it stored must equal what an uninterrupted run stores: every order
with its final state, every order event, every fill, every position change, the equity curve.

Used by tests/integration/test_restart_kill.py (a few cycles) and benchmarks/kill_restart.py
(50 and more).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KILL_POINTS = ("intent", "sent", "fill", "flush")


def write_config(workdir: Path, db_name: str, *, start: str, end: str, rate: float) -> Path:
    cfg = workdir / f"{db_name}.toml"
    cfg.write_text(f"""
[run]
name = "kill"
run_id = "killtest"
start = "{start}"
end = "{end}"
[live]
bars_per_second = {rate}
[orders]
brackets = true
[storage]
url = "sqlite:///{workdir / db_name}.db"
[health]
enabled = false
[log]
audit_dir = "{workdir / db_name}-audit"
""")
    return cfg


def db_of(cfg: Path) -> Path:
    return cfg.with_suffix(".db")


def start_daemon(cfg: Path, kill_at: str | None = None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APCA_", "TRADINGD_"))}
    if kill_at:
        env["TRADINGD_KILL_AT"] = kill_at
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tradingd",
            "run",
            "-c",
            str(ROOT / "config/default.toml"),
            "-c",
            str(cfg),
        ],
        cwd=cfg.parent,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@dataclass
class KillReport:
    cycles: int = 0
    kills: dict[str, int] = field(default_factory=dict)
    resumed_exits: int = 0
    seconds: float = 0.0
    # Rows stored up to a killed process's last checkpoint: (table, rowid, key) that the
    # restarted process must keep as they are (continue, not start over).
    kept: set[tuple[str, int, str]] = field(default_factory=set)


def checkpointed_rows(db: Path) -> set[tuple[str, int, str]]:
    """The rows up to the stored checkpoint, with their row ids."""
    if not db.exists():
        return set()
    con = sqlite3.connect(db)
    try:
        try:
            row = con.execute("SELECT bar_time FROM checkpoints").fetchone()
        except sqlite3.OperationalError:  # killed before the schema was created
            return set()
        if row is None:
            return set()
        tc = row[0]
        out: set[tuple[str, int, str]] = set()
        for table, key, column in (
            ("fills", "fill_id", "time"),
            ("order_events", "client_order_id || status || filled_quantity", "time"),
            ("equity", "time", "time"),
        ):
            for rowid, k in con.execute(
                f"SELECT rowid, {key} FROM {table} WHERE {column} <= ?", (tc,)
            ):
                out.add((table, rowid, str(k)))
        return out
    finally:
        con.close()


def rows_kept(db: Path, kept: set[tuple[str, int, str]]) -> list[tuple[str, int, str]]:
    """Those of `kept` that are not in the store any more as they were (should be none)."""
    con = sqlite3.connect(db)
    try:
        keys = {
            "fills": "fill_id",
            "order_events": "client_order_id || status || filled_quantity",
            "equity": "time",
        }
        lost = []
        for table, rowid, k in sorted(kept):
            found = con.execute(
                f"SELECT {keys[table]} FROM {table} WHERE rowid = ?", (rowid,)
            ).fetchone()
            if found is None or str(found[0]) != k:
                lost.append((table, rowid, k))
        return lost
    finally:
        con.close()


def run_to_completion(cfg: Path, timeout_s: float = 300.0) -> None:
    proc = start_daemon(cfg)
    _, err = proc.communicate(timeout=timeout_s)
    if proc.returncode != 0:
        raise AssertionError(f"daemon exited {proc.returncode}: {err.decode()[-3000:]}")


def kill_cycles(
    cfg: Path, cycles: int, seed: int, *, max_delay_s: float = 6.0, timeout_s: float = 300.0
) -> KillReport:
    """`cycles` processes killed (alternating a random delay and a random kill point), then
    one more run that must finish the run by itself."""
    rng = random.Random(seed)
    report = KillReport()
    started = time.monotonic()
    for k in range(cycles):
        if k % 2 == 0:
            point = f"{rng.choice(KILL_POINTS)}:{rng.randint(1, 4)}"
            proc = start_daemon(cfg, point)
            label = point.split(":")[0]
            try:
                _, err = proc.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
        else:
            proc = start_daemon(cfg)
            label = "random"
            try:
                _, err = proc.communicate(timeout=rng.uniform(0.5, max_delay_s))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                _, err = proc.communicate(timeout=30)
        if proc.returncode == -signal.SIGKILL:
            report.kills[label] = report.kills.get(label, 0) + 1
            report.kept |= checkpointed_rows(db_of(cfg))
        elif proc.returncode == 0:
            report.resumed_exits += 1  # the run finished before the kill came
        else:
            raise AssertionError(
                f"cycle {k}: daemon exited {proc.returncode}: {err.decode()[-3000:]}"
            )
        report.cycles += 1
    run_to_completion(cfg, timeout_s)
    report.seconds = time.monotonic() - started
    return report


def stored(db: Path) -> dict[str, Any]:
    """What a run stored, in a form two runs can be compared by (floats rounded to 1e-9)."""

    def r(x: Any) -> Any:
        return round(x, 9) if isinstance(x, float) else x

    con = sqlite3.connect(db)
    try:
        q = lambda sql: [tuple(r(v) for v in row) for row in con.execute(sql)]  # noqa: E731
        return {
            "orders": q(
                "SELECT client_order_id, symbol, side, type, quantity, limit_price, stop_price,"
                " status, filled_quantity, avg_fill_price, reason FROM orders"
                " ORDER BY client_order_id"
            ),
            "order_events": q(
                "SELECT client_order_id, status, filled_quantity, reason, time FROM order_events"
                " ORDER BY client_order_id, time, status, filled_quantity"
            ),
            "fills": q(
                "SELECT fill_id, client_order_id, side, quantity, price, commission, time"
                " FROM fills ORDER BY fill_id"
            ),
            "positions": q(
                "SELECT time, symbol, quantity, avg_price FROM positions ORDER BY time, symbol"
            ),
            "equity": q("SELECT time, cash, equity FROM equity ORDER BY time"),
            "signals": q("SELECT time, symbol, target_weight FROM signals ORDER BY time, symbol"),
            "runs": q("SELECT run_id, ended_at IS NOT NULL FROM runs"),
        }
    finally:
        con.close()


def audit_records(directory: Path) -> tuple[list[dict[str, Any]], int]:
    """The order and fill records of a run's audit files, oldest file first, and the number
    of session markers (one per process)."""
    import json

    files = sorted(
        directory.glob("*.jsonl*"),
        key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0,
    )
    records, sessions = [], 0
    for f in files:
        for line in f.read_text().splitlines():
            row = json.loads(line)
            if row["event"] == "session":
                sessions += 1
            else:
                records.append(row)
    return records, sessions


def differences(reference: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """Each table whose rows differ, with the first differing row of each side."""
    out = []
    for table, rows in reference.items():
        got = other[table]
        if rows != got:
            first = next(
                (i for i, (a, b) in enumerate(zip(rows, got, strict=False)) if a != b),
                min(len(rows), len(got)),
            )
            out.append(
                f"{table}: {len(rows)} rows vs {len(got)}; first difference at row {first}: "
                f"{rows[first] if first < len(rows) else None} vs "
                f"{got[first] if first < len(got) else None}"
            )
    return out
