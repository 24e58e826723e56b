"""The `tradingd` command as a user runs it: in a subprocess, from a fresh working directory."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def tradingd(args, cwd, env=None, **kw):
    e = {**os.environ, **(env or {})}
    e.pop("DATABASE_URL", None)
    e.pop("REDIS_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "tradingd", *args],
        cwd=cwd,
        env=e,
        capture_output=True,
        text=True,
        timeout=240,
        **kw,
    )


def small_config(tmp_path, extra=""):
    p = tmp_path / "small.toml"
    p.write_text(f"""
[run]
start = "2016-01-01"
end = "2018-12-31"
output_dir = "{tmp_path / "runs"}"
[storage]
url = "sqlite:///{tmp_path / "cli.db"}"
[log]
audit_dir = "{tmp_path / "audit"}"
[health]
port = 0
{extra}
""")
    return p


def test_backtest_json_and_outputs(tmp_path):
    cfg = small_config(tmp_path)
    out = tmp_path / "out"
    r = tradingd(
        [
            "backtest",
            "-c",
            str(ROOT / "config/default.toml"),
            "-c",
            str(cfg),
            "--json",
            "--output",
            str(out),
        ],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    for key in (
        "total_return",
        "annual_return",
        "sharpe",
        "sortino",
        "max_drawdown",
        "win_rate",
        "fills",
        "exposure",
        "commission_paid",
        "slippage_paid",
    ):
        assert key in summary
    assert summary["symbols"] == 2 and summary["start"].startswith("2016-01-04")
    equity = list(csv.DictReader((out / "equity.csv").open()))
    assert len(equity) == summary["bars"]
    assert float(equity[-1]["equity"]) == pytest.approx(summary["final_equity"])
    fills = list(csv.DictReader((out / "fills.csv").open()))
    assert len(fills) == summary["fills"] > 0
    assert sum(float(f["commission"]) for f in fills) == pytest.approx(summary["commission_paid"])
    assert json.loads((out / "config.json").read_text())["costs"]["commission_pct"] == 0.001
    # Every order and fill is in the audit log too.
    audit = [
        json.loads(x)
        for f in (tmp_path / "audit").glob("*.jsonl")
        for x in f.read_text().splitlines()
    ]
    assert {a["fill_id"] for a in audit if a["event"] == "fill"} == {f["fill_id"] for f in fills}

    # A rerun of the same run replaces it everywhere: the store's rows and the audit log
    # hold this run's records once (the audit log used to append a second copy).
    again = tradingd(
        ["backtest", "-c", str(ROOT / "config/default.toml"), "-c", str(cfg), "--json"],
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["fills"] == summary["fills"]
    audit = [
        json.loads(x)
        for f in (tmp_path / "audit").glob("*.jsonl*")
        for x in f.read_text().splitlines()
    ]
    audited = sorted(a["fill_id"] for a in audit if a["event"] == "fill")
    assert audited == sorted(f["fill_id"] for f in fills)  # each once
    with sqlite3.connect(tmp_path / "cli.db") as db:
        [(stored,)] = db.execute("SELECT count(*) FROM fills").fetchall()
    assert stored == summary["fills"]


def test_text_summary(tmp_path):
    r = tradingd(["backtest", "-c", str(small_config(tmp_path)), "--no-progress"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Sharpe ratio" in r.stdout and "Max drawdown" in r.stdout


def test_unknown_plugin_stops_startup_with_choices(tmp_path):
    cfg = small_config(tmp_path, '[[signals]]\nname = "momentom"\n')
    r = tradingd(["backtest", "-c", str(cfg)], cwd=tmp_path)
    assert r.returncode == 2
    assert "signals[0].name = 'momentom'" in r.stderr and "momentum" in r.stderr
    assert not (tmp_path / "runs").exists()


def _build_wheel(tmp_path: Path) -> Path:
    """A throwaway third-party plugin package, as a wheel: a signal that only ever wants to
    hold the first symbol of the universe, registered under tradingd.plugins."""
    name, version = "tradingd_throwaway", "0.0.1"
    code = textwrap.dedent("""
        from dataclasses import dataclass
        import numpy as np

        @dataclass(frozen=True)
        class FirstOnlyConfig:
            strength: float = 1.0

        class FirstOnly:
            kind = "signal"
            Config = FirstOnlyConfig

            def __init__(self, config, symbols):
                self.config = config
                self.name = "first_only"

            def required_features(self):
                return ()

            def score(self, ctx):
                s = np.full(len(ctx.symbols), np.nan)
                s[0] = self.config.strength
                return s
    """)
    dist = f"{name}-{version}.dist-info"
    whl = tmp_path / f"{name}-{version}-py3-none-any.whl"
    files = {
        f"{name}/__init__.py": code,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
        f"{dist}/entry_points.txt": f"[tradingd.plugins]\nfirst_only = {name}:FirstOnly\n",
    }
    record = "".join(f"{p},,\n" for p in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(whl, "w") as z:
        for p, text in files.items():
            z.writestr(p, text)
        z.writestr(f"{dist}/RECORD", record)
    return whl


def test_third_party_plugin_package_installs_and_runs(tmp_path):
    whl = _build_wheel(tmp_path)
    site = tmp_path / "site"
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--target",
            str(site),
            str(whl),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pip.returncode == 0, pip.stderr
    cfg = small_config(tmp_path, '[[signals]]\nname = "first_only"\nparams = { strength = 0.8 }\n')
    env = {"PYTHONPATH": str(site)}
    listed = tradingd(["plugins"], cwd=tmp_path, env=env)
    assert "first_only" in listed.stdout and "signal" in listed.stdout
    out = tmp_path / "out"
    r = tradingd(
        ["backtest", "-c", str(cfg), "--json", "--output", str(out)], cwd=tmp_path, env=env
    )
    assert r.returncode == 0, r.stderr
    orders = list(csv.DictReader((out / "orders.csv").open()))
    assert orders, "the plugin's signal produced no orders"
    assert {o["symbol"] for o in orders} == {"NASDAQ"}  # first symbol of the bundled universe
    # Its parameters are validated like a built-in's.
    bad = small_config(tmp_path, '[[signals]]\nname = "first_only"\nparams = { strenght = 1 }\n')
    r = tradingd(["backtest", "-c", str(bad)], cwd=tmp_path, env=env)
    assert r.returncode == 2 and "signals[0].params.strenght" in r.stderr


def test_sigterm_is_a_clean_stop(tmp_path):
    """The live loop over recorded bars (slow accelerated clock) stops on SIGTERM: it exits 0,
    marks the run ended, and everything up to the last processed bar is in the store."""
    cfg = small_config(tmp_path, "[live]\nbars_per_second = 20.0\n")
    log = (tmp_path / "stderr.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tradingd", "run", "-c", str(cfg)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=log,
        env={**os.environ, "TRADINGD_LOG__FORMAT": "json"},
    )
    db = tmp_path / "cli.db"
    deadline = time.monotonic() + 90
    orders = 0
    while time.monotonic() < deadline and proc.poll() is None:
        # Poll the store until the first orders are recorded (not a fixed sleep).
        try:
            with sqlite3.connect(db) as c:
                orders = c.execute("select count(*) from order_events").fetchone()[0]
        except sqlite3.Error:
            orders = 0
        if orders:
            break
        time.sleep(0.1)
    assert orders, "no orders recorded while the daemon ran"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    log.close()
    err = (tmp_path / "stderr.log").read_text()
    assert proc.returncode == 0, err
    assert '"stopped_early": true' in err
    with sqlite3.connect(db) as c:
        ended = c.execute("select ended_at from runs").fetchone()[0]
        bars = c.execute("select count(*) from equity").fetchone()[0]
    assert ended is not None
    assert 0 < bars < 753  # stopped early, and what it did is stored


def test_fetch_stores_bars_idempotently(tmp_path):
    cfg = small_config(tmp_path)
    for _ in range(2):  # a second fetch replaces, never duplicates
        r = tradingd(["fetch", "-c", str(cfg)], cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    with sqlite3.connect(tmp_path / "cli.db") as c:
        n, syms = c.execute("select count(*), count(distinct symbol) from bars").fetchone()
        first = c.execute("select min(time) from bars where symbol = 'SP500'").fetchone()[0]
    # Everything a run from 2016-01-04 uses: its 754 sessions per index and the history
    # before them that warms up its features (the bundled series start in 1999): 5,031 each.
    assert (n, syms) == (2 * 5031, 2)
    assert first.startswith("1999-01-04")


@pytest.mark.parametrize("command", [["config"], ["plugins"]])
def test_a_closed_stdout_ends_a_printing_command_quietly(tmp_path, command):
    """`tradingd config | head` ended in a BrokenPipeError traceback: a reader that closed
    stdout ends the command as SIGPIPE ends a CLI (exit 128 + 13), with nothing said. The
    pipe's reader is closed before the command writes, so the first write finds it gone."""
    read, write = os.pipe()
    os.close(read)
    try:
        e = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        r = subprocess.run(
            [sys.executable, "-m", "tradingd", *command],
            cwd=tmp_path,
            env=e,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write)
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
    assert "Exception ignored" not in r.stderr, r.stderr
    assert r.returncode == 128 + signal.SIGPIPE


def test_a_full_disk_under_stderr_neither_ends_nor_changes_a_command(tmp_path):
    """`tradingd backtest 2>/dev/full` exited 1 with no record: its first log line raised
    OSError. Log lines stderr cannot take are dropped (counted, and said once it takes lines
    again): the backtest's record and its stored run are whole, exit 0; an error still
    exits with its own code, 2, not 1 from the print of its message failing."""
    cfg = small_config(tmp_path)
    out = tmp_path / "out"
    e = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    with open("/dev/full", "w") as full:
        r = subprocess.run(
            [sys.executable, "-m", "tradingd", "backtest", "-c", str(cfg), "--output", str(out)],
            cwd=tmp_path,
            env=e,
            stdout=subprocess.PIPE,
            stderr=full,
            text=True,
            timeout=240,
        )
        assert r.returncode == 0
        summary = json.loads((out / "summary.json").read_text())
        assert f"run {summary['run_id']}:" in r.stdout
        with sqlite3.connect(tmp_path / "cli.db") as db:
            [(ended,)] = db.execute("SELECT ended_at FROM runs").fetchall()
        assert ended is not None
        bad = subprocess.run(
            [sys.executable, "-m", "tradingd", "backtest", "-c", str(tmp_path / "missing.toml")],
            cwd=tmp_path,
            env=e,
            stdout=subprocess.PIPE,
            stderr=full,
            timeout=120,
        )
    assert bad.returncode == 2


def test_a_full_disk_under_stdout_is_an_error_naming_stdout(tmp_path):
    """`tradingd backtest >/dev/full` exited 1 with a raw traceback. It is `tradingd: error:`
    naming stdout and why, exit 2, with the run's record whole and named; a command that
    only prints (`tradingd config`) the same, without Python's "Exception ignored" at exit
    from the summary left in stdout's buffer."""
    cfg = small_config(tmp_path)
    out = tmp_path / "out"
    e = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        with open("/dev/full", "w") as full:
            return subprocess.run(
                [sys.executable, "-m", "tradingd", *args],
                cwd=tmp_path,
                env=e,
                stdout=full,
                stderr=subprocess.PIPE,
                text=True,
                timeout=240,
            )

    r = run("backtest", "-c", str(cfg), "--no-progress", "--output", str(out))
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
    [line] = [x for x in r.stderr.splitlines() if x.startswith("tradingd: error: ")]
    assert "cannot write to stdout (/dev/full): No space left on device" in line
    summary = json.loads((out / "summary.json").read_text())
    assert f"run {summary['run_id']}'s record is complete in {out}" in line
    assert len(list(csv.DictReader((out / "equity.csv").open()))) == summary["bars"]

    r = run("config")
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
    assert "tradingd: error: cannot write to stdout (/dev/full)" in r.stderr


# Runs the tradingd command with Python's EncodingWarning on (`-X warn_default_encoding`):
# an open() without encoding= takes the locale's. The warning names the line that called
# open() (or pathlib's read_text and the like), so a library's own files do not count.
_ENCODING_WATCH = """
import runpy, sys, warnings
ours = tuple(sys.argv[1].split(":"))
def show(message, category, filename, lineno, file=None, line=None):
    # The warning names the line that called open() (pathlib's too): ours, or a library's.
    if category is EncodingWarning and filename.startswith(ours):
        sys.stderr.write(f"LOCALE ENCODING at {filename}:{lineno}\\n")
        sys.stderr.flush()
        raise SystemExit(97)
warnings.simplefilter("always", EncodingWarning)
warnings.showwarning = show
import logging
logging.captureWarnings = lambda capture: None  # tradingd's logging would replace the hook
sys.argv = ["tradingd", *sys.argv[2:]]
runpy.run_module("tradingd", run_name="__main__", alter_sys=True)
"""


def test_the_record_is_utf8_whatever_the_hosts_locale(tmp_path):
    """Under a Latin-1 locale a backtest wrote orders.csv and fills.csv in Latin-1 (a run
    name "stratégie": its order ids), which `tradingd report` then refused for good; with
    "€" in the name the whole run ended in a traceback and left no record, and a UTF-8
    analysis config's title was read as mojibake. Every text file tradingd reads or writes
    names its encoding: the commands run here with an open() that leaves it to the locale
    made an error when tradingd's code made it, whatever this machine's locale is."""
    name = "stratégie-€"
    cfg = small_config(tmp_path)
    analysis = tmp_path / "analysis.toml"
    analysis.write_text(f'[report]\ntitle = "{name} – Q4"\n', encoding="utf-8")
    out = tmp_path / "out"
    ours = ":".join(str(ROOT / d) for d in ("daemon", "plugins", "models"))
    env = {**os.environ, "TRADINGD_RUN__NAME": name}
    for key in ("DATABASE_URL", "REDIS_URL"):
        env.pop(key, None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-X", "warn_default_encoding", "-c", _ENCODING_WATCH, ours, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )

    done = run("backtest", "-c", str(cfg), "--no-progress", "--output", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    fills = (out / "fills.csv").read_text(encoding="utf-8")
    assert name in fills  # the order ids carry the run's name, in UTF-8
    report = run("report", str(out), "--analysis-config", str(analysis))
    assert report.returncode == 0, report.stderr[-3000:]
    html = next(out.glob("report*.html")).read_text(encoding="utf-8")
    assert f"{name} – Q4" in html
