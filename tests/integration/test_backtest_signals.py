"""`tradingd backtest` stopped by a signal, as a process: SIGTERM or SIGINT stops the replay
after the bar it arrived in (not minutes later at its end, and not as a kill that leaves the
run's record open), exits with 128 + the signal number, writes no report and ends the run's
record marked stopped_early; a second signal exits at once.

The signal comes from a plugin inside the replay (os.kill of its own process at its n-th
scored bar): the test knows the bar it arrived in without timing anything."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tradingd.analysis.trial_ledger import TRIALS_LEDGER

PLUGIN = textwrap.dedent("""
    import os
    import signal
    from dataclasses import dataclass, field

    import numpy as np

    @dataclass(frozen=True)
    class SignalAtConfig:
        at: int = 5
        signals: tuple = ("SIGTERM",)
        group: bool = False  # to the whole process group (a terminal's Ctrl-C, systemd)

    class SignalAt:
        '''Wants the first symbol; at its `at`-th scored bar, sends `signals` to its own
        process, one after the other.'''
        kind = "signal"
        Config = SignalAtConfig

        def __init__(self, config, symbols):
            self.config = config
            self.name = "signal_at"
            self.scored = 0

        def required_features(self):
            return ()

        def observe(self, ctx):
            pass  # warm-up bars are not counted

        def score(self, ctx):
            self.scored += 1
            if self.scored == self.config.at:
                for name in self.config.signals:
                    if self.config.group:
                        os.killpg(os.getpgrp(), getattr(signal, name))
                    else:
                        os.kill(os.getpid(), getattr(signal, name))
            s = np.full(len(ctx.symbols), np.nan)
            s[0] = 1.0
            return s
""")


def _site(tmp_path: Path) -> Path:
    """The plugin as an installed distribution (a dist-info folder on PYTHONPATH)."""
    site = tmp_path / "site"
    dist = site / "signal_at-0.0.1.dist-info"
    dist.mkdir(parents=True)
    (site / "signal_at.py").write_text(PLUGIN)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: signal_at\nVersion: 0.0.1\n")
    (dist / "entry_points.txt").write_text("[tradingd.plugins]\nsignal_at = signal_at:SignalAt\n")
    return site


def _config(tmp_path: Path, at: int, signals: tuple[str, ...], group: bool = False) -> Path:
    p = tmp_path / "small.toml"
    names = ", ".join(f'"{s}"' for s in signals)
    p.write_text(f"""
[run]
start = "2016-01-01"
end = "2018-12-31"
output_dir = "{tmp_path / "runs"}"
[storage]
url = "sqlite:///{tmp_path / "bt.db"}"
[log]
format = "json"
audit_dir = "{tmp_path / "audit"}"
[health]
port = 0
[[signals]]
name = "signal_at"
params = {{ at = {at}, signals = [{names}], group = {str(group).lower()} }}
""")
    return p


def _backtest(
    tmp_path: Path, at: int, signals: tuple[str, ...], group: bool = False
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(_site(tmp_path))}
    for name in ("DATABASE_URL", "REDIS_URL", "TRADINGD_LOG__LEVEL", "TRADINGD_LOG__FORMAT"):
        env.pop(name, None)
    cfg = _config(tmp_path, at, signals, group)
    return subprocess.run(
        [sys.executable, "-m", "tradingd", "backtest", "-c", str(cfg), "--no-progress"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        start_new_session=True,  # a process group of its own: the plugin may signal all of it
    )


def _json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


@pytest.mark.parametrize(
    ("name", "group"), [("SIGTERM", False), ("SIGINT", False), ("SIGTERM", True), ("SIGINT", True)]
)
def test_a_signal_stops_the_replay_after_its_bar(tmp_path, name, group):
    """To the process alone, or to its whole group (a terminal's Ctrl-C; systemd's stop):
    the writer process must outlive the signal, or the stop fails as a write error."""
    at = 7
    r = _backtest(tmp_path, at, (name,), group)
    assert r.returncode == 128 + getattr(signal, name), r.stderr[-3000:]
    said = f"tradingd: {name} received: the backtest stops after the bar under way"
    assert said in r.stderr and f"{name} again exits at once" in r.stderr
    assert f"tradingd: backtest stopped by {name} after" in r.stderr
    assert "no report written" in r.stderr and "Traceback" not in r.stderr
    stopped = [e for e in _json_lines(r.stderr) if e.get("event") == "backtest.stopped"]
    assert len(stopped) == 1 and stopped[0]["signal"] == name
    assert not (tmp_path / "runs").exists()  # no report, not even a partial one
    assert r.stdout == ""  # no summary
    with sqlite3.connect(tmp_path / "bt.db") as c:
        (ended, summary), *more = c.execute("select ended_at, summary from runs").fetchall()
        equity = c.execute("select count(*) from equity").fetchone()[0]
    assert not more
    assert ended is not None
    # The bar the signal arrived in was finished, and no other bar began.
    assert json.loads(summary) == {"bars": at, "stopped_early": True}
    assert equity == at
    assert at <= stopped[0]["bars"] < stopped[0]["of"]  # warm-up + traded bars, of all


def test_a_second_signal_exits_at_once(tmp_path):
    r = _backtest(tmp_path, 3, ("SIGINT", "SIGINT"))
    assert r.returncode == 130, r.stderr[-3000:]
    forced = [e for e in _json_lines(r.stderr) if e.get("event") == "tradingd.forced_exit"]
    assert len(forced) == 1 and forced[0]["signal"] == "SIGINT" and forced[0]["exit_code"] == 130
    assert "backtest stopped" not in r.stderr  # nothing was finished
    assert not (tmp_path / "runs").exists()


def _small(tmp_path: Path):
    from tradingd.config import load_config

    p = tmp_path / "in.toml"
    p.write_text(f"""
[run]
start = "2016-01-01"
end = "2016-06-30"
output_dir = "{tmp_path / "runs"}"
[storage]
url = "sqlite:///{tmp_path / "in.db"}"
[log]
audit_dir = "{tmp_path / "audit"}"
""")
    return load_config([p], env={})


def test_a_stop_before_the_replay_starts_nothing(tmp_path):
    """A request while the data loads or the engine is built: that step finishes, then
    nothing more starts (no run in the store, the built engine's writer process ended)."""
    from tradingd import backtest as bt

    config = _small(tmp_path)
    stop = bt.StopRequest()
    stop.request("SIGTERM")
    with pytest.raises(bt.BacktestStopped, match="before its first bar") as early:
        asyncio.run(bt.run_backtest(config, stop=stop))
    assert early.value.bars == 0 and early.value.run_id is None

    writers = []
    real_build = bt.build_engine

    def build_then_signal(*a, **k):
        engine = real_build(*a, **k)
        writers.append(engine.store.writer_process())
        stop2.request("SIGINT")  # arrives while the engine is built
        return engine

    stop2 = bt.StopRequest()
    bt.build_engine = build_then_signal
    try:
        with pytest.raises(bt.BacktestStopped, match="stopped by SIGINT before its first bar"):
            asyncio.run(bt.run_backtest(config, stop=stop2))
    finally:
        bt.build_engine = real_build
    assert len(writers) == 1 and writers[0] is not None  # a file store prestarts one
    assert writers[0].wait(timeout=30) == 0  # told to end, and ended
    assert not (tmp_path / "runs").exists()
    db = tmp_path / "in.db"
    if db.exists():
        with sqlite3.connect(db) as c:
            assert c.execute("select count(*) from runs").fetchone()[0] == 0


def _stopped_run(config, out, stop_when):
    """run_backtest into `out`, its engine handed to `stop_when(engine, stop)` as built, to
    arrange the stop; the BacktestStopped it raises."""
    from tradingd import backtest as bt

    stop = bt.StopRequest()
    real_build = bt.build_engine

    def build(*a, **k):
        engine = real_build(*a, **k)
        stop_when(engine, stop)
        return engine

    bt.build_engine = build
    try:
        with pytest.raises(bt.BacktestStopped) as stopped:
            asyncio.run(bt.run_backtest(config, output_dir=out, stop=stop))
    finally:
        bt.build_engine = real_build
    return stopped.value


def _once_the_store_starts(engine, stop):
    start = engine.store.start

    async def start_then_signal():
        await start()
        stop.request("SIGTERM")  # the engine is attached: it is asked to stop

    engine.store.start = start_then_signal


def _after_three_bars(engine, stop):
    engine.after_bar.append(
        lambda t, verdicts: stop.request("SIGINT") if engine.bars_processed >= 3 else None
    )


def test_a_stop_while_the_engine_starts_leaves_the_earlier_run(tmp_path):
    """Between the request reaching the engine and the run's start (its parts starting):
    the earlier run of the same run id keeps its rows (a rerun's start deletes them)."""
    from tradingd import backtest as bt

    config = _small(tmp_path)
    done = asyncio.run(bt.run_backtest(config, output_dir=tmp_path / "first"))
    db = tmp_path / "in.db"

    def stored():
        with sqlite3.connect(db) as c:
            return (
                c.execute("select run_id, ended_at, summary from runs").fetchall(),
                c.execute("select count(*) from equity").fetchone()[0],
            )

    before = stored()
    assert before[1] == done.result.bars > 0
    stopped = _stopped_run(config, tmp_path / "second", _once_the_store_starts)
    assert "SIGTERM before its first bar" in str(stopped)
    assert stored() == before
    assert not (tmp_path / "second").exists()


def test_a_reruns_folder_loses_the_earlier_record_when_the_store_does(tmp_path):
    """The run's folder follows its store: a rerun's start drops the earlier run's rows and
    audit log, and now its files too (a rerun stopped early left the earlier, whole record
    there, which the store no longer held; one without --report left the earlier report
    beside its own files). A rerun stopped before it began leaves both as they were; files
    that are not a record's stay."""
    from tradingd import backtest as bt

    config = _small(tmp_path)
    out = tmp_path / "record"
    first = asyncio.run(bt.run_backtest(config, output_dir=out))
    for name in ("report.html", "report.json"):
        (out / name).write_text("the first run's report")
    (out / "notes.txt").write_text("mine")
    record = {p.name: p.read_bytes() for p in out.iterdir()}
    # (and the trial ledger of the runs written to this --output folder: backtest._note_trial)
    assert set(record) == {*bt.RECORD_FILES, bt.RECORD_LOCK, TRIALS_LEDGER, "notes.txt"}

    assert _stopped_run(config, out, _once_the_store_starts).bars == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == record

    stopped = _stopped_run(config, out, _after_three_bars)
    assert stopped.run_id == first.run_id
    # Its bars count the warm-up before run.start (the summary's do not): both are said.
    assert stopped.warmup > 0 and stopped.bars == stopped.warmup + 3
    said = f"after {stopped.bars:,} of {stopped.of:,} bars: {stopped.warmup:,} warm-up, 3 traded"
    assert said in str(stopped)
    import pickle

    again = pickle.loads(pickle.dumps(stopped))
    assert (again.warmup, str(again)) == (stopped.warmup, str(stopped))
    with sqlite3.connect(tmp_path / "in.db") as c:
        assert c.execute("select count(*) from equity").fetchone()[0] == 3  # of 125
    # (the trial ledger stays: the variants this folder held, for count_trials)
    assert sorted(p.name for p in out.iterdir()) == [bt.RECORD_LOCK, TRIALS_LEDGER, "notes.txt"]

    (out / "report.html").write_text("an earlier report")
    again = asyncio.run(bt.run_backtest(config, output_dir=out))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            *(n for n in bt.RECORD_FILES if not n.startswith("report.")),
            bt.RECORD_LOCK,
            TRIALS_LEDGER,
            "notes.txt",
        ]
    )
    assert (out / "summary.json").read_bytes() == record["summary.json"]
    assert again.result.bars == first.result.bars


def test_a_run_into_a_folder_holding_another_runs_record_leaves_it_until_it_finishes(
    tmp_path,
):
    """An --output folder is not tied to a run id: a run stopped midway must not remove
    another run's record from it (the store still holds that one whole); a run that
    finishes replaces the folder's record, and the other run's report with it."""
    import dataclasses

    from tradingd import backtest as bt

    config = _small(tmp_path)
    out = tmp_path / "shared"
    other = asyncio.run(bt.run_backtest(config, output_dir=out))
    (out / "report.html").write_text("the other run's report")
    record = {p.name: p.read_bytes() for p in out.iterdir()}

    mine = dataclasses.replace(config, run=dataclasses.replace(config.run, end="2016-05-31"))
    assert _stopped_run(mine, out, _after_three_bars).run_id != other.run_id
    assert {p.name: p.read_bytes() for p in out.iterdir()} == record

    done = asyncio.run(bt.run_backtest(mine, output_dir=out))
    assert json.loads((out / "summary.json").read_text())["run_id"] == done.run_id
    assert not (out / "report.html").exists()


def test_an_engine_that_stops_on_its_own_reports_nothing(tmp_path):
    """A replay that ends before its last bar without a signal (its instance lock lost)
    is no more a whole run than a signalled one: no report, an error naming the engine."""
    from tradingd import backtest as bt

    config = _small(tmp_path)
    real_build = bt.build_engine

    def build(*a, **k):
        engine = real_build(*a, **k)
        step = engine.step

        async def step_then_stop(bar, trade=None):
            await step(bar, trade)
            if engine.bars_processed == 3:
                engine.request_stop()

        engine.step = step_then_stop
        return engine

    bt.build_engine = build
    try:
        with pytest.raises(bt.BacktestStopped, match="stopped by the engine") as stopped:
            asyncio.run(bt.run_backtest(config, output_dir=tmp_path / "out"))
    finally:
        bt.build_engine = real_build
    assert stopped.value.signal is None and stopped.value.through is not None
    assert not (tmp_path / "out").exists()


def test_after_the_replay_a_signal_interrupts(tmp_path):
    """Once the replay is over (its report being written) a stop request would go
    unnoticed: the signal interrupts instead (`tradingd: interrupted`, 128 + its number);
    the handlers from before come back."""
    from tradingd import __main__ as cli
    from tradingd.backtest import StopRequest

    before = signal.getsignal(signal.SIGTERM)
    stop = StopRequest()
    stop.detach()
    with pytest.raises(cli._Interrupted) as got, cli._backtest_signals(stop):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # (the handler runs between these bytecodes)
            pass
    assert got.value.signum == signal.SIGTERM and stop.reason is None
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_first_signal_says_at_once_that_the_replay_stops_after_its_bar(capfd):
    """A plugin hung inside score: the first Ctrl-C printed nothing (the stop waits for the
    bar), so nothing said the signal was taken nor that a second one exits."""
    from tradingd import __main__ as cli
    from tradingd.backtest import StopRequest

    class Hung:  # an engine whose bar never ends: only the handler runs
        stops = 0

        def request_stop(self):
            self.stops += 1

    stop, engine = StopRequest(), Hung()
    stop.attach(engine)  # type: ignore[arg-type]
    with cli._backtest_signals(stop):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # (the handler runs between these bytecodes)
            pass
    assert stop.reason == "SIGINT" and engine.stops == 1
    err = capfd.readouterr().err
    assert "tradingd: SIGINT received: the backtest stops after the bar under way" in err
    assert "SIGINT again exits at once" in err


def test_a_signal_while_the_data_loads_says_the_load_ends_first(capfd):
    """Ctrl-C during a cold load (4.6-6.4 s) said "the backtest stops after the bar under
    way" when no bar had started: the load (or the engine's build) finishes first."""
    from tradingd import __main__ as cli
    from tradingd.backtest import StopRequest

    stop = StopRequest()  # no engine attached yet: the data is loading
    with cli._backtest_signals(stop):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # (the handler runs between these bytecodes)
            pass
    assert stop.reason == "SIGINT"
    err = capfd.readouterr().err
    assert "tradingd: SIGINT received: the backtest stops once the step under way" in err
    assert "(loading the data, building the engine) ends, before its first bar" in err
    assert "bar under way" not in err and "SIGINT again exits at once" in err


def test_a_stop_request_reaches_an_engine_attached_later():
    from tradingd.backtest import StopRequest

    class Engine:
        stops = 0

        def request_stop(self):
            self.stops += 1

    stop, engine = StopRequest(), Engine()
    stop.request("SIGTERM")
    stop.request("SIGINT")  # the first reason is kept
    stop.attach(engine)
    assert stop.reason == "SIGTERM" and engine.stops == 1
    stop.request("SIGINT")
    assert engine.stops == 2
    stop.detach()
    stop.request("SIGINT")
    assert engine.stops == 2


def test_walkforward_takes_sigterm_as_an_interruption(monkeypatch, capsys):
    """`tradingd walkforward`: SIGTERM interrupts as Ctrl-C does (its folds' worker
    processes are then ended: tests/unit/test_parallel.py), instead of killing the command
    and leaving them training; exit code 128 + the signal, `tradingd: interrupted`."""
    from tradingd import __main__ as cli

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(cli._Interrupted) as got, cli._interrupt_on(signal.SIGTERM):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # (the handler runs between these bytecodes)
            pass
    assert got.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before

    seen = []

    def walkforward(args):
        seen.append(signal.getsignal(signal.SIGTERM))
        raise cli._Interrupted(signal.SIGTERM)

    import tradingd.analysis.walkforward_cli as wf

    monkeypatch.setattr(wf, "run", walkforward)
    assert cli.main(["walkforward"]) == 128 + signal.SIGTERM
    assert "tradingd: interrupted" in capsys.readouterr().err
    assert seen and seen[0] is not before  # the command ran under the handler
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_signal_after_the_last_bar_still_stops_the_command(tmp_path):
    """The signal lands after the last bar, while the run's end is written: the run is
    whole in the store, and the command, asked to stop, writes no report (before, the
    request went unseen and the report was written, exit 0)."""
    import pickle

    from tradingd import backtest as bt

    config = _small(tmp_path)
    stop = bt.StopRequest()
    real_build = bt.build_engine

    def build(*a, **k):
        engine = real_build(*a, **k)
        write_behind = engine.store.write_behind

        async def last_writes_then_signal():
            stop.request("SIGINT")  # after the last bar: nothing is left to stop
            await write_behind()

        engine.store.write_behind = last_writes_then_signal
        return engine

    bt.build_engine = build
    try:
        with pytest.raises(bt.BacktestStopped, match="by SIGINT after its last bar") as got:
            asyncio.run(bt.run_backtest(config, output_dir=tmp_path / "out", stop=stop))
    finally:
        bt.build_engine = real_build
    assert got.value.bars == got.value.of and "holds run" in str(got.value)
    assert not (tmp_path / "out").exists()
    with sqlite3.connect(tmp_path / "in.db") as c:
        (ended, summary), *_ = c.execute("select ended_at, summary from runs").fetchall()
    assert ended is not None and "stopped_early" not in json.loads(summary)
    # Raised in a sweep's worker process too: it crosses a pipe as itself.
    again = pickle.loads(pickle.dumps(got.value))
    assert type(again) is bt.BacktestStopped and str(again) == str(got.value)


def test_a_record_lock_that_fails_stops_the_rerun_before_the_store_drops_anything(
    tmp_path, monkeypatch
):
    """The record folder's lock failing (EIO) at a rerun's start was dropped silently: the
    replay ran to its end and failed there without naming the lock file. Found when the
    earlier record's files were to go, the store had dropped that record's rows already
    while the folder kept its files. Now the rerun stops before it begins, naming the lock
    file and the errno; the store and the folder are left as they were."""
    import errno
    import fcntl

    from tradingd import backtest as bt
    from tradingd.core.errors import TradingdError

    config = _small(tmp_path)
    out = tmp_path / "record"
    asyncio.run(bt.run_backtest(config, output_dir=out))
    record = {p.name: p.read_bytes() for p in out.iterdir()}

    def stored() -> tuple[int, int]:
        with sqlite3.connect(tmp_path / "in.db") as c:
            runs = c.execute("select count(*) from runs").fetchone()[0]
            return runs, c.execute("select count(*) from equity").fetchone()[0]

    before = stored()
    real = fcntl.flock

    def flock(fd, operation):  # type: ignore[no-untyped-def]
        path = os.readlink(f"/proc/self/fd/{fd if isinstance(fd, int) else fd.fileno()}")
        if path.endswith(bt.RECORD_LOCK) and operation & fcntl.LOCK_EX:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    with pytest.raises(TradingdError) as failed:
        asyncio.run(bt.run_backtest(config, output_dir=out))
    assert str(out / bt.RECORD_LOCK) in str(failed.value) and "EIO" in str(failed.value)
    assert stored() == before
    assert {p.name: p.read_bytes() for p in out.iterdir()} == record
