"""Signals of the live daemon, as a process: SIGTERM and SIGINT stop it cleanly with exit code
0 at any moment (during start-up too), never with a traceback; SIGHUP reloads what is safe to
change and says what needs a restart; an invalid configuration on SIGHUP is refused and the
daemon keeps running. Then `tradingd.reload` without signals, the routing of standard-library
log records (APScheduler) into the JSON log, and the live clock's quiet shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import structlog

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 60

RISK = """
[[risk]]
name = "max_position"
params = {{ max_position_pct = {max_position} }}
[[risk]]
name = "max_open_positions"
params = {{ max_open_positions = 10 }}
[[risk]]
name = "max_gross_exposure"
params = {{ max_gross_exposure = 1.0 }}
[[risk]]
name = "drawdown_guard"
params = {{ max_drawdown_pct = 0.20, daily_loss_limit_pct = 0.05 }}
"""


def _config_text(tmp_path: Path, *, bars_per_second: float = 20.0, extra: str = "") -> str:
    """The demo (bundled bars through the live path), writing only under tmp_path."""
    return f"""
[run]
name = "signals"
start = "2017-01-01"
output_dir = "{tmp_path / "runs"}"
[live]
bars_per_second = {bars_per_second}
[storage]
url = "sqlite:///{tmp_path / "daemon.db"}"
[health]
port = 0
[log]
format = "json"
audit_dir = "{tmp_path / "audit"}"
{extra}
"""


class Daemon:
    """`tradingd run` in a subprocess, its standard error in a file read as JSON lines."""

    def __init__(self, tmp_path: Path, config: Path) -> None:
        self.err_path = tmp_path / "stderr.log"
        self.out_path = tmp_path / "stdout.log"
        env = {**os.environ}
        for name in ("DATABASE_URL", "REDIS_URL", "TRADINGD_LOG__LEVEL", "TRADINGD_LOG__FORMAT"):
            env.pop(name, None)
        with self.err_path.open("w") as err, self.out_path.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tradingd", "run", "-c", str(config)],
                cwd=tmp_path,
                env=env,
                stdout=out,
                stderr=err,
            )

    def lines(self) -> list[dict]:
        out = []
        for line in self.err_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": "<not json>", "text": line})
        return out

    def events(self, event: str) -> list[dict]:
        return [r for r in self.lines() if r.get("event") == event]

    def wait_for(self, event: str, count: int = 1, **fields: object) -> dict:
        """The `count`-th line of `event` (with `fields`), waiting at most TIMEOUT_S."""
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            found = [r for r in self.events(event) if all(r.get(k) == v for k, v in fields.items())]
            if len(found) >= count:
                return found[count - 1]
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(
            f"no {event} {fields} (exit code {self.proc.poll()}); log:\n"
            + self.err_path.read_text()[-3000:]
        )

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self) -> int:
        try:
            return self.proc.wait(timeout=TIMEOUT_S)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def assert_clean_output(self) -> None:
        """No traceback anywhere; every line of standard error is one JSON object."""
        err, out = self.err_path.read_text(), self.out_path.read_text()
        assert "Traceback" not in err and "Traceback" not in out, err[-3000:]
        bad = [r["text"] for r in self.lines() if r["event"] == "<not json>"]
        assert not bad, bad


@pytest.fixture
def daemon(tmp_path):
    started: list[Daemon] = []

    def start(config: Path) -> Daemon:
        d = Daemon(tmp_path, config)
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "daemon.toml"
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- processes


def test_sigterm_during_startup_exits_0_and_a_second_signal_only_logs(tmp_path, daemon):
    d = daemon(_write(tmp_path, _config_text(tmp_path)))
    d.wait_for("startup.phase", phase="loading data")
    d.signal(signal.SIGTERM)
    d.wait_for("tradingd.stop_requested")
    d.signal(signal.SIGINT)  # while stopping: logged, not a traceback, not a kill
    assert d.wait() == 0, d.err_path.read_text()[-3000:]
    d.assert_clean_output()
    stop = d.wait_for("tradingd.stop_requested")
    assert stop["signal"] == "SIGTERM"
    assert d.wait_for("tradingd.already_stopping")["signal"] == "SIGINT"
    exit_line = d.events("tradingd.exit")
    assert len(exit_line) == 1
    assert exit_line[0]["reason"].startswith("stopped during start-up: "), exit_line
    assert exit_line[0]["reason"] == f"stopped during start-up: {stop['phase']}"
    # Start-up stopped where it was: the engine never connected, warmed up or traded.
    assert not d.events("engine.start") and not d.events("clock.live.start")


def test_sigusr1_and_sigusr2_are_said_and_ignored_during_startup(tmp_path, daemon):
    """SIGUSR1 (what operators send other daemons to reopen their logs) killed tradingd
    without a word: exit 138, no stop line, no exit line, nothing flushed. Both user signals
    are now a warning naming them, and the daemon goes on to a clean stop by SIGTERM."""
    d = daemon(_write(tmp_path, _config_text(tmp_path)))
    d.wait_for("startup.phase", phase="loading data")
    d.signal(signal.SIGUSR1)
    assert d.wait_for("tradingd.signal_ignored")["signal"] == "SIGUSR1"
    d.signal(signal.SIGUSR2)
    assert d.wait_for("tradingd.signal_ignored", count=2)["signal"] == "SIGUSR2"
    assert d.proc.poll() is None  # still running
    d.signal(signal.SIGTERM)
    assert d.wait() == 0, d.err_path.read_text()[-3000:]
    d.assert_clean_output()
    assert d.wait_for("tradingd.stop_requested")["signal"] == "SIGTERM"
    assert len(d.events("tradingd.exit")) == 1


def test_third_stop_signal_forces_an_exit_with_a_nonzero_code(tmp_path, daemon):
    # The first signal stops start-up after its current step, so the daemon may finish that
    # step and exit 0 before the third signal arrives (seen in CI): that attempt proves
    # nothing and is made again; a forced exit must be seen within three attempts.
    code = 0
    for _attempt in range(3):
        d = daemon(_write(tmp_path, _config_text(tmp_path)))
        d.wait_for("startup.phase", phase="loading data")
        # One at a time: the kernel merges a signal into the same one still pending.
        d.signal(signal.SIGTERM)
        d.wait_for("tradingd.stop_requested")
        # The second and third back to back (two different signals are never merged), so
        # the clean stop has almost no time to finish between them.
        d.signal(signal.SIGINT)
        d.signal(signal.SIGTERM)
        code = d.wait()
        if code == 0:  # the clean stop won the race with the third signal
            d.assert_clean_output()
            continue
        break
    # Whichever of the two pending signals is handled last is the third: 128 + its number.
    assert code in (128 + signal.SIGINT, 128 + signal.SIGTERM)
    d.assert_clean_output()
    d.wait_for("tradingd.already_stopping")
    forced = d.wait_for("tradingd.forced_exit")
    assert forced["exit_code"] == code and forced["signals"] == 3


def test_ready_is_503_until_trading_then_sigint_finishes_the_bar_and_exits_0(tmp_path, daemon):
    """/ready means trading, as systemd's READY=1 does: during start-up and the warm-up
    replay it answers 503 with the phase, and the first 200 comes after the clock started.
    Then SIGINT while trading: the bar is finished and the daemon exits 0. (One daemon for
    both: its warm-up takes ~20 s.)"""
    import urllib.error
    import urllib.request

    d = daemon(_write(tmp_path, _config_text(tmp_path)))
    url = d.wait_for("health.listening")["url"]
    answers: list[tuple[int, dict]] = []
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and d.proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=5) as r:
                answers.append((r.status, json.loads(r.read())))
        except urllib.error.HTTPError as e:
            answers.append((e.code, json.loads(e.read())))
        except (urllib.error.URLError, TimeoutError) as e:
            raise AssertionError(f"/ready: {e}; log:\n{d.err_path.read_text()[-3000:]}") from e
        if answers[-1][0] == 200:
            # Ready only once trading: the clock had started before this answer.
            assert d.events("clock.live.start"), d.err_path.read_text()[-3000:]
            break
        time.sleep(0.02)
    else:
        raise AssertionError(f"never ready; last answers {answers[-3:]}")
    waiting = [body for code, body in answers if code == 503]
    assert waiting, answers[:3]
    for body in waiting:
        assert body["failing"] == ["trading"], body
        check = body["checks"]["trading"]
        assert check["detail"] == f"not trading yet: {check['data']['phase']}", check
    assert "warm-up" in {body["checks"]["trading"]["data"]["phase"] for body in waiting}
    assert answers[-1][1]["checks"]["trading"] == {"ok": True, "detail": "trading"}
    # A normal start is no warning: the check's failures were expected. (Its one warning
    # of the health server is that /status and /metrics are open: no token is set here.)
    said = [r for r in d.lines() if r.get("level") == "warning" and "health" in r["event"]]
    assert [r["event"] for r in said] == ["health.reads_open"], said

    d.signal(signal.SIGINT)
    assert d.wait() == 0, d.err_path.read_text()[-3000:]
    d.assert_clean_output()
    assert d.wait_for("tradingd.stop_requested")["phase"] == "trading"
    assert d.wait_for("engine.stop")["stopped_early"] is True
    exit_line = d.wait_for("tradingd.exit")
    assert exit_line["reason"] == "stopped by SIGINT" and exit_line["stopped_early"] is True
    assert d.lines()[-1] == exit_line, "the exit line is the last, after the listener's stop"
    assert not d.events("tradingd.already_stopping")


def test_health_answers_while_the_start_waits_for_postgresql(tmp_path, daemon, monkeypatch):
    """A live start waits storage.start_retry_s for a PostgreSQL that is not up yet (systemd
    starting both). Meanwhile /health answers (the process is alive), /ready and /status name
    the phase, a control is refused with 409 (there is no run to keep it for yet), and a
    SIGTERM stops the start at once. Before, nothing listened until the engine was built: a
    probe saw a dead process for up to a minute."""
    import socket
    import urllib.error
    import urllib.request

    with socket.socket() as s:  # a port nothing listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "t" * 24
    monkeypatch.setenv("TRADINGD_HEALTH_TOKEN", token)
    text = _config_text(tmp_path).replace(
        f'url = "sqlite:///{tmp_path / "daemon.db"}"',
        f'url = "postgresql://127.0.0.1:{port}/test"\nstart_retry_s = 300',
    )
    assert f"127.0.0.1:{port}" in text
    d = daemon(_write(tmp_path, text))
    url = d.wait_for("health.listening")["url"]
    d.wait_for("startup.phase", phase="finding the run to continue")

    def get(path: str, method: str = "GET", headers: dict | None = None) -> tuple[int, dict]:
        request = urllib.request.Request(f"{url}{path}", method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    code, body = get("/health")
    assert code == 200 and body["alive"] is True and not body["problems"], body
    code, body = get("/ready")
    assert code == 503 and body["failing"] == ["trading"], body
    assert body["checks"]["trading"] == {"ok": False}, body  # details need the token
    code, body = get("/ready", "GET", {"Authorization": f"Bearer {token}"})
    assert code == 503 and body["failing"] == ["trading"], body
    phase = "finding the run to continue"
    detail = body["checks"]["trading"]["detail"]
    assert detail.startswith(f"not trading yet: {phase}"), body
    # ... and what it waits for: the database, as its last attempt failed.
    assert "waiting for the database: " in detail and f"127.0.0.1:{port}" in detail, body
    code, body = get("/status")  # the token is set: /status needs it
    assert code == 401 and "phase" not in body, body
    code, body = get("/status", "GET", {"Authorization": f"Bearer {token}"})
    assert code == 200 and body["phase"] == phase and body["run_id"] is None, body
    code, body = get("/pause", "POST", {"Authorization": f"Bearer {token}"})
    assert code == 409 and body["ok"] is False and "starting" in body["error"], body
    code, _ = get("/pause", "POST")  # the token is still required
    assert code == 401

    d.signal(signal.SIGTERM)
    assert d.wait() == 0, d.err_path.read_text()[-3000:]
    d.assert_clean_output()
    assert d.wait_for("tradingd.exit")["reason"] == f"stopped during start-up: {phase}"
    assert d.events("health.stopped"), "the listener is closed on the way out"
    assert d.lines()[-1]["event"] == "tradingd.exit", "the exit line is the last"
    assert token not in d.err_path.read_text()


def test_the_trading_check_names_the_phase_and_a_stop():
    from tradingd.__main__ import trading_check

    engine = SimpleNamespace(catching_up_to=None)
    d = SimpleNamespace(stopping=False, ready=False, phase="connecting", engine=engine)
    checkpoint = datetime(2020, 1, 3, tzinfo=UTC)
    seen = []
    for change in (
        {},
        {"phase": "warm-up"},
        # A resumed demo replays its completed bars after the clock started.
        {"ready": True, "phase": "trading", "behind": checkpoint},
        {"behind": None},
        {"stopping": True},
    ):
        engine.catching_up_to = change.pop("behind", engine.catching_up_to)
        vars(d).update(change)
        r = trading_check(d)
        seen.append((r.ok, r.detail, r.expected, (r.data or {}).get("phase")))
    assert seen == [
        (False, "not trading yet: connecting", True, "connecting"),
        (False, "not trading yet: warm-up", True, "warm-up"),
        (False, "not trading yet: catching up", True, "catching up"),
        (True, "trading", False, None),
        (False, "stopping", True, "stopping"),
    ]
    engine.catching_up_to = checkpoint
    vars(d).update(stopping=False)
    assert trading_check(d).data == {"phase": "catching up", "through": checkpoint.isoformat()}


def test_sighup_applies_limits_and_level_reports_the_rest_and_refuses_invalid(tmp_path, daemon):
    base = _config_text(tmp_path, bars_per_second=5.0)
    path = _write(tmp_path, base + RISK.format(max_position=0.05))
    d = daemon(path)
    d.wait_for("clock.live.start")

    # A risk limit and the log level (applied), and the universe (restart needed).
    changed = base.replace('format = "json"', 'format = "json"\nlevel = "debug"')
    changed += RISK.format(max_position=0.04) + '\n[data]\nsymbols = ["SP500"]\n'
    path.write_text(changed)
    d.signal(signal.SIGHUP)
    applied = d.wait_for("config.reloaded")
    assert applied["applied"] == ["risk[0].params.max_position_pct", "log.level"]
    assert applied["changes"]["risk[0].params.max_position_pct"] == [0.05, 0.04]
    assert applied["changes"]["log.level"] == ["info", "debug"]
    rest = d.wait_for("config.not_reloaded")
    assert rest["keys"] == ["data.symbols"] and rest["detail"] == "not reloaded: restart needed"

    # An invalid configuration is refused as a whole; the daemon keeps running on the old one.
    path.write_text(changed.replace("max_position_pct = 0.04", "max_position_pct = 3.0"))
    d.signal(signal.SIGHUP)
    rejected = d.wait_for("config.reload_rejected")
    assert "risk[0].params" in rejected["error"] and "max_position_pct" in rejected["error"]
    path.write_text("[run\nbroken toml")
    d.signal(signal.SIGHUP)
    assert "not valid TOML" in d.wait_for("config.reload_rejected", 2)["error"]
    assert d.proc.poll() is None

    # The running configuration is the applied one: the same file again changes nothing
    # more, only the universe still needs the restart.
    path.write_text(changed)
    d.signal(signal.SIGHUP)
    assert d.wait_for("config.not_reloaded", 2)["keys"] == ["data.symbols"]
    assert len(d.events("config.reloaded")) == 1

    d.signal(signal.SIGTERM)
    assert d.wait() == 0, d.err_path.read_text()[-3000:]
    d.assert_clean_output()
    assert d.wait_for("tradingd.exit")["reason"] == "stopped by SIGTERM"


def test_a_restart_after_a_sighup_limit_continues_the_run(tmp_path, daemon):
    """The operator's way: a limit changed in the file and applied by SIGHUP, then a restart
    (a reboot, a deploy). The file now hashes to another run id; the daemon began a new run,
    its simulated account from the start. It continues the run it was running."""
    base = _config_text(tmp_path, bars_per_second=20.0)
    path = _write(tmp_path, base + RISK.format(max_position=0.05))
    d = daemon(path)
    run_id = d.wait_for("engine.start")["run_id"]
    d.wait_for("alert.event")  # a bar was traded and checkpointed
    path.write_text(base + RISK.format(max_position=0.04))
    d.signal(signal.SIGHUP)
    assert d.wait_for("config.reloaded")["applied"] == ["risk[0].params.max_position_pct"]
    d.signal(signal.SIGTERM)
    assert d.wait() == 0, d.err_path.read_text()[-3000:]

    again = daemon(path)
    said = again.wait_for("run.continued")
    assert said["run_id"] == run_id and said["instead_of"] != run_id
    assert said["differing"] == ["risk[0].params.max_position_pct"]
    assert again.wait_for("engine.start")["run_id"] == run_id
    assert again.wait_for("run.resumed")["run_id"] == run_id
    again.signal(signal.SIGTERM)
    assert again.wait() == 0, again.err_path.read_text()[-3000:]
    again.assert_clean_output()
    assert not again.events("run.not_continued")


def test_a_stop_while_the_warm_up_retries_a_source_that_is_down_names_the_warm_up(tmp_path, daemon):
    """With Yahoo down the daemon retries its history (with backoff); a stop meanwhile said
    "stopped during start-up: connecting", a phase it had left."""
    text = f"""
[run]
name = "offline"
output_dir = "{tmp_path / "runs"}"
[data]
symbols = ["AAPL", "MSFT"]
[feed]
source = "yahoo"
[feed.yahoo]
base_url = "http://127.0.0.1:1"
[broker]
kind = "simulated"
[storage]
url = "sqlite:///{tmp_path / "daemon.db"}"
[health]
port = 0
[log]
format = "json"
audit_dir = "{tmp_path / "audit"}"
"""
    d = daemon(_write(tmp_path, text))
    d.wait_for("warmup.retry")
    assert d.wait_for("startup.phase", phase="warm-up")
    d.signal(signal.SIGTERM)
    assert d.wait() == 0, d.err_path.read_text()[-3000:]
    d.assert_clean_output()
    assert d.wait_for("tradingd.exit")["reason"] == "stopped during start-up: warm-up"


def test_sighup_during_startup_is_applied_once_the_engine_is_built(tmp_path, daemon):
    """SIGHUP's default action would kill the process: during start-up it is remembered."""
    d = daemon(_write(tmp_path, _config_text(tmp_path, bars_per_second=5.0)))
    d.wait_for("startup.phase", phase="loading data")
    d.signal(signal.SIGHUP)
    assert d.wait_for("config.reload_deferred")["phase"] == "loading data"
    d.wait_for("config.reload_unchanged")  # nothing changed in the file meanwhile
    d.wait_for("clock.live.start")
    d.signal(signal.SIGTERM)
    assert d.wait() == 0, d.err_path.read_text()[-3000:]
    d.assert_clean_output()


def test_an_embedded_run_gives_the_signal_handlers_back(tmp_path):
    from tradingd.__main__ import EX_CONFIG, main

    bad = tmp_path / "bad.toml"
    bad.write_text("[costs]\ncommission_pct = 5.0\n")
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    before = {s: signal.getsignal(s) for s in signals}
    assert main(["run", "-c", str(bad)]) == EX_CONFIG
    assert {s: signal.getsignal(s) for s in signals} == before


# ----------------------------------------------------------------------------- reload unit


@pytest.fixture
def running():
    """A running pipeline as `reload_config` sees it (an engine's pipeline and symbols)."""
    from tradingd.app import build_pipeline
    from tradingd.config import load_config

    config = load_config([], env={})
    symbols = ("AAA", "BBB")
    engine = SimpleNamespace(pipeline=build_pipeline(config, symbols), symbols=symbols)
    return engine, config


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    logging.captureWarnings(False)
    structlog.reset_defaults()


def _with_risk(config, index, **params):
    risk = list(config.risk)
    risk[index] = replace(risk[index], params={**risk[index].params, **params})
    return replace(config, risk=tuple(risk))


def test_reload_replaces_a_risk_limit_and_keeps_the_plugin_state(running, restore_logging):
    from tradingd.logs import configure_logging, current_level
    from tradingd.reload import reload_config

    engine, old = running
    configure_logging("info", "json")
    g = [r.name for r in old.risk].index("drawdown_guard")
    guard = engine.pipeline.risks[g]
    assert guard.name == "drawdown_guard"
    guard._peak, guard._halted_bars = 123_456.0, 4  # state of a running guard
    new = _with_risk(old, g, max_drawdown_pct=0.1)
    new = _with_risk(new, 0, max_position_pct=0.02)
    new = replace(new, log=replace(new.log, level="warning"))

    report = reload_config(engine, old, new)

    assert report.ok and report.not_reloaded == []
    assert report.applied == [
        "risk[0].params.max_position_pct",
        f"risk[{g}].params.max_drawdown_pct",
        "log.level",
    ]
    assert report.changes[f"risk[{g}].params.max_drawdown_pct"] == [0.2, 0.1]
    assert engine.pipeline.risks[0].config.max_position_pct == 0.02
    assert guard.config.max_drawdown_pct == 0.1 and guard.config.daily_loss_limit_pct == 0.05
    assert (guard._peak, guard._halted_bars) == (123_456.0, 4)  # the same instance, its state
    assert current_level() == "warning"
    assert report.config is not None and report.config.risk == new.risk
    assert report.config.log.level == "warning"


def test_reload_rejects_an_invalid_limit_and_applies_nothing(running, restore_logging):
    from tradingd.logs import configure_logging, current_level
    from tradingd.reload import reload_config

    engine, old = running
    configure_logging("info", "json")
    before = engine.pipeline.risks[0].config
    for bad in ({"max_position_pct": 2.0}, {"max_postion_pct": 0.1}):
        new = replace(_with_risk(old, 0, **bad), log=replace(old.log, level="debug"))
        if "max_postion_pct" in bad:  # a typo: an unknown key, not a silent default
            risk = list(new.risk)
            risk[0] = replace(risk[0], params=bad)
            new = replace(new, risk=tuple(risk))
        report = reload_config(engine, old, new)
        assert not report.ok and "risk[0].params" in (report.error or "")
        assert report.applied == [] and report.config is old
        assert engine.pipeline.risks[0].config is before
        assert current_level() == "info"


def test_reload_does_not_apply_a_window_longer_than_the_engine_keeps(running):
    """The history buffer is sized at start: a SIGHUP raising portfolio_var's window was
    applied, and its next check asked for more bars than kept and stopped the daemon."""
    from tradingd.config import PluginSpec
    from tradingd.engine.history import HistoryBuffer
    from tradingd.reload import reload_config

    engine, old = running
    symbols = engine.symbols
    old = replace(
        old, risk=(PluginSpec("portfolio_var", params={"window": 60, "min_history": 20}),)
    )
    from tradingd.app import build_pipeline

    pipeline = build_pipeline(old, symbols)
    engine = SimpleNamespace(
        pipeline=pipeline, symbols=symbols, history=HistoryBuffer(2, pipeline.history_bars())
    )
    var = pipeline.risks[0]
    kept = engine.history.capacity  # the longest window of any plugin (a signal's, here)
    window = kept + 10
    longer = replace(
        old, risk=(PluginSpec("portfolio_var", params={"window": window, "min_history": 20}),)
    )
    report = reload_config(engine, old, longer)
    assert report.ok and report.applied == []
    assert report.not_reloaded == ["risk[0].params.window"]
    assert f"{window + 1} bars" in report.notes[-1] and f"keeps {kept}" in report.notes[-1]
    assert var.config.window == 60 and report.config.risk == old.risk
    # A shorter window fits: applied.
    shorter = replace(
        old, risk=(PluginSpec("portfolio_var", params={"window": 40, "min_history": 20}),)
    )
    report = reload_config(engine, old, shorter)
    assert report.applied == ["risk[0].params.window"] and var.config.window == 40


def test_reload_recomputes_what_a_risk_plugin_derived_from_its_config(running, tmp_path):
    """Logged as applied, yet in force only in part: the VaR quantile and the sector map are
    derived from the params when the plugin is built, and a reload only swapped `config`."""
    from tradingd.app import build_pipeline
    from tradingd.config import PluginSpec
    from tradingd.reload import reload_config

    engine, old = running
    symbols = engine.symbols
    sectors = tmp_path / "sectors.csv"
    sectors.write_text("symbol,sector\nAAA,Energy\nBBB,Energy\n")
    old = replace(
        old,
        risk=(
            PluginSpec("portfolio_var", params={"confidence": 0.95}),
            PluginSpec("sector_exposure", params={"max_sector_pct": 0.5}),
        ),
    )
    pipeline = build_pipeline(old, symbols)
    engine = SimpleNamespace(pipeline=pipeline, symbols=symbols)
    var, sector = pipeline.risks
    assert sector.sector_names == ("unknown:AAA", "unknown:BBB")  # no map: its own sector
    new = replace(
        old,
        risk=(
            PluginSpec("portfolio_var", params={"confidence": 0.99}),
            PluginSpec(
                "sector_exposure", params={"max_sector_pct": 0.5, "sectors_csv": str(sectors)}
            ),
        ),
    )
    report = reload_config(engine, old, new)
    assert report.ok and len(report.applied) == 2
    assert var.alpha == pytest.approx(0.01)
    assert sector.sector_names == ("Energy",) and sector.sector_id.tolist() == [0, 0]
    assert pipeline.risks == [var, sector]  # the same instances


def test_reload_reports_what_needs_a_restart(running):
    from tradingd.config import PluginSpec
    from tradingd.reload import reload_config

    engine, old = running
    new = replace(
        old,
        data=replace(old.data, symbols=("AAA",)),
        storage=replace(old.storage, url="sqlite:///elsewhere.db"),
        sizing=replace(old.sizing, params={**old.sizing.params, "refit_bars": 3}),
        risk=(*old.risk, PluginSpec("max_position", params={"max_position_pct": 0.01})),
    )
    report = reload_config(engine, old, new)
    assert report.ok and report.applied == []
    assert sorted(report.not_reloaded) == [
        "data.symbols",
        "risk",
        "sizing.params.refit_bars",
        "storage.url",
    ]
    assert any("added, removed or reordered" in n for n in report.notes)
    assert report.config is old  # nothing applied: the running configuration is unchanged

    # Only key names are reported, never values (a storage URL may hold a password).
    secret = replace(old, storage=replace(old.storage, url="postgresql://u:hunter2@db/x"))
    report = reload_config(engine, old, secret)
    assert report.not_reloaded == ["storage.url"]
    assert "hunter2" not in json.dumps(report.not_reloaded + report.notes)


def test_reload_refuses_an_unknown_plugin_even_where_a_restart_is_needed(running):
    from tradingd.reload import reload_config

    engine, old = running
    new = replace(old, sizing=replace(old.sizing, name="no_such_sizing"))
    report = reload_config(engine, old, new)
    assert not report.ok and "no_such_sizing" in (report.error or "")


def test_reload_alerts_through_the_alerter_or_reports_them(running):
    from tradingd.alerts import AlertsConfig, AlertTarget
    from tradingd.reload import reload_config

    engine, old = running
    if not hasattr(old, "alerts"):
        pytest.skip("no [alerts] section in this configuration")
    target = AlertTarget(url="https://hooks.example.com/services/T0/B0/xyz", format="json")
    new = replace(old, alerts=AlertsConfig(targets=(target,)))

    report = reload_config(engine, old, new)  # the engine has no alerter
    assert report.ok and report.not_reloaded == ["alerts"]
    assert any("alerter" in n for n in report.notes)

    calls = []
    alerter = SimpleNamespace(reconfigure=calls.append)
    report = reload_config(engine, old, new, alerter=alerter)
    assert report.ok and report.applied == ["alerts"] and calls == [new.alerts]

    def refuse(config):
        raise ValueError("target unreachable")

    riskier = _with_risk(new, 0, max_position_pct=0.01)
    report = reload_config(engine, old, riskier, alerter=SimpleNamespace(reconfigure=refuse))
    assert not report.ok and "target unreachable" in (report.error or "")
    assert engine.pipeline.risks[0].config.max_position_pct == 0.05  # nothing applied


def test_reload_from_files_rejects_a_file_that_does_not_load(running, tmp_path):
    from tradingd.reload import reload_from_files

    engine, old = running
    bad = tmp_path / "bad.toml"
    bad.write_text("[costs]\ncommission_pct = 5.0\n")
    report = reload_from_files(engine, old, [bad], env={})
    assert not report.ok and "costs.commission_pct" in (report.error or "")
    report = reload_from_files(engine, old, [tmp_path / "missing.toml"], env={})
    assert not report.ok and "not found" in (report.error or "")
    good = tmp_path / "good.toml"
    good.write_text("[log]\nlevel = 'info'\n")
    report = reload_from_files(engine, old, [good], env={})
    assert report.ok and report.applied == [] and report.not_reloaded == []


# ----------------------------------------------------------------------------- logs, clock


def test_library_records_are_json_lines_with_their_traceback_inside(capsys, restore_logging):
    from tradingd.logs import configure_logging

    configure_logging("debug", "json")
    sched = logging.getLogger("apscheduler.executors.default")
    sched.info('Running job "bar-close"')  # per firing: below APScheduler's deliberate level
    try:
        raise asyncio.CancelledError
    except asyncio.CancelledError as exc:
        sched.error("Error running job %s", "bar-close", exc_info=exc)
    logging.getLogger("asyncio").warning("Executing %s took %.3f seconds", "<Task>", 0.25)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 2, err
    first, second = (json.loads(line) for line in lines)
    assert first["event"] == "Error running job bar-close" and first["level"] == "error"
    assert first["logger"] == "apscheduler.executors.default"
    assert "Traceback" in first["exception"] and "CancelledError" in first["exception"]
    assert first["timestamp"].endswith("Z")
    assert second["logger"] == "asyncio" and second["level"] == "warning"


def test_live_clock_stops_without_a_scheduler_error(caplog):
    """A firing due when the clock stops: APScheduler defers both the firing and its own
    shutdown to the loop, so the firing's job task was created and then cancelled by the
    shutdown before it ran, logged as "Error running job" with a CancelledError traceback."""
    from datetime import UTC, datetime, timedelta

    from tradingd.clock.live import LiveClock
    from tradingd.config import LiveConfig

    calendar = [datetime(2020, 1, 1, tzinfo=UTC) + timedelta(days=i) for i in range(1000)]

    async def run() -> None:
        clock = LiveClock(LiveConfig(bars_per_second=1000.0), calendar)
        await clock.start()
        sched = clock._scheduler
        assert sched is not None
        time.sleep(0.01)  # a firing is due ...
        sched.wakeup()  # ... and its processing queued on the loop (as its timer does)
        await clock.stop()
        await asyncio.sleep(0.01)

    caplog.set_level(logging.WARNING, logger="apscheduler")
    for _ in range(20):
        asyncio.run(run())
    assert not [r for r in caplog.records if r.name.startswith("apscheduler")], caplog.text


def test_an_error_exit_ends_with_the_exit_line_too(tmp_path, daemon):
    """An error exit (here a configuration mistake found at start: 78, EX_CONFIG) printed the
    error and left no `tradingd.exit` line: a log reader could not tell where and why it
    stopped."""
    from tradingd.__main__ import EX_CONFIG

    text = _config_text(tmp_path).replace(
        f'url = "sqlite:///{tmp_path / "daemon.db"}"', f'url = "sqlite:///{tmp_path}"'
    )
    d = daemon(_write(tmp_path, text))
    assert d.wait() == EX_CONFIG
    last = d.lines()[-1]
    assert last["event"] == "tradingd.exit" and last["exit_code"] == EX_CONFIG, last
    assert "folder" in last["reason"] and last["phase"], last
