"""A backtest does not import the live service's clients.

redis (with the OpenTelemetry it pulls in), aiohttp and APScheduler cost about 0.8 s of
import on the project's machine, on every `tradingd backtest` of a researcher's day, and a
replay uses none of them. They are imported where the live parts use them; this test runs a
whole backtest through the CLI in a fresh interpreter and fails if one of them comes back as
a module-level import on the backtest's path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# exchange_calendars: the live clock's, and an intraday replay's session filter; a daily
# backtest on the default XNYS calendar needs none of it (0.3 s of import and a calendar
# build that made the replay benchmark's set-up 0.5 s instead of 0.02 s).
LIVE_ONLY = ("redis", "aiohttp", "apscheduler", "exchange_calendars")
# asyncpg: the PostgreSQL client; a backtest into a SQLite file takes its run lock as a lock
# file and never talks to PostgreSQL (its import was most of the replay benchmark's set-up).
POSTGRES_ONLY = ("asyncpg",)

SCRIPT = """
import json, sys
from tradingd.__main__ import main
code = main(["backtest", "-c", sys.argv[1], "--no-progress", "--json"])
print(json.dumps({"code": code, "loaded": sorted(m for m in %r if m in sys.modules)}))
"""


def _momentum_config(tmp_path: Path, run_and_data: str, extra: str = "") -> Path:
    """A momentum top-k backtest on a file store, with the given [run] and [data] tables."""
    cfg = tmp_path / "bt.toml"
    cfg.write_text(f"""{run_and_data}
[[signals]]
name = "momentum"
weight = 1.0
params = {{ lookback = 20 }}
[sizing]
name = "equal_weight"
params = {{ max_positions = 2, gross_exposure = 0.5 }}
[[risk]]
name = "max_position"
params = {{ max_position_pct = 0.3 }}
[storage]
url = "sqlite:///{(tmp_path / "bt.db").as_posix()}"
[log]
level = "warning"
audit_dir = "{(tmp_path / "audit").as_posix()}"
{extra}""")
    return cfg


def _backtest(cfg: Path, modules: tuple[str, ...]) -> tuple[dict, dict]:
    """(summary, {"code", "loaded"}) of `tradingd backtest` in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT % (modules,), str(cfg)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cfg.parent,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    answer = json.loads(lines[-1])
    assert answer["code"] == 0, proc.stderr[-2000:]
    return json.loads(lines[-2]), answer


def test_backtest_leaves_live_clients_unimported(tmp_path: Path) -> None:
    cfg = _momentum_config(
        tmp_path,
        f"""
[run]
start = "2017-06-01"
end = "2017-09-30"
output_dir = "{(tmp_path / "runs").as_posix()}"
[data]
source = "bundled"
""",
    )
    summary, answer = _backtest(cfg, LIVE_ONLY + POSTGRES_ONLY)
    # The run traded: the test is about a real backtest, not an import of the CLI alone.
    assert summary["orders"] > 0
    assert answer["loaded"] == []


HEAVY = ("pandas", "pyarrow", "talib")


def _bars_csv(path: Path, n_symbols: int = 4, n_days: int = 300) -> None:
    """Daily bars of a few made-up symbols, written with the standard library."""
    import csv
    from datetime import date, timedelta

    import numpy as np

    rng = np.random.default_rng(7)
    days = []
    d = date(2016, 1, 4)
    while len(days) < n_days:
        if d.weekday() < 5:
            days.append(d)
        d += timedelta(days=1)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["time", "symbol", "open", "high", "low", "close", "volume"])
        for j in range(n_symbols):
            close = 50 * np.exp(np.cumsum(rng.normal(0.0005, 0.015, n_days)))
            for day, c in zip(days, close, strict=True):
                w.writerow([day.isoformat(), f"S{j}", c, c * 1.01, c * 0.99, c, 1e6])


def test_a_backtest_from_the_panel_cache_imports_neither_pandas_nor_talib(tmp_path: Path) -> None:
    """A rerun whose bars come from the panel cache and whose features need no TA-Lib
    indicator reads no raw file and calls no TA-Lib function: pandas (with pyarrow) and
    TA-Lib (which imports pandas itself) are imported at their first use (core/lazy.py),
    about 0.2 s of every such `tradingd backtest`. The first run, which reads the CSV file,
    needs pandas; the rerun, in a fresh interpreter, must not load it, and decides the
    same."""
    _bars_csv(tmp_path / "bars.csv")
    cfg = _momentum_config(
        tmp_path,
        f"""
[run]
start = "2016-06-01"
end = "2017-02-28T16:00:00-05:00"
output_dir = "{(tmp_path / "runs").as_posix()}"
[data]
source = "csv"
path = "{(tmp_path / "bars.csv").as_posix()}"
layout = "long"
""",
        f"""
[cache]
data_dir = "{(tmp_path / "panels").as_posix()}"
features_dir = "{(tmp_path / "features").as_posix()}"
""",
    )
    answers = [_backtest(cfg, HEAVY) for _ in range(2)]
    (first, first_loaded), (rerun, rerun_loaded) = answers
    assert "pandas" in first_loaded["loaded"]  # it read the CSV file: the check can fail
    assert list((tmp_path / "panels").iterdir())  # and the rerun had a cache entry to use
    assert rerun_loaded["loaded"] == []
    assert first["orders"] > 0 and rerun == first


def test_new_yorks_sessions_a_year_need_no_calendar() -> None:
    """Annualising counts each calendar's own sessions a year, which for Tokyo means building
    its calendar; New York's 252 (its aliases' too) and 24/7's 365 are known by name, so a
    daily backtest on the default calendar still imports no exchange_calendars."""
    script = """
import json, sys
from types import SimpleNamespace
from tradingd.app import run_defaults, sessions_per_year
names = ("XNYS", "NYSE", "NASDAQ", "XNAS", "24/7")
counts = [sessions_per_year(n) for n in names]
defaults = [run_defaults(SimpleNamespace(live=SimpleNamespace(calendar=n))) for n in names]
print(json.dumps([counts, defaults, "exchange_calendars" in sys.modules]))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts, defaults, imported = json.loads(proc.stdout)
    assert counts == [252, 252, 252, 252, 365]
    assert defaults == [{}, {}, {}, {}, {"periods_per_year": 365.0}]
    assert imported is False
