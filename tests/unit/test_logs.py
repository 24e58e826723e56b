from __future__ import annotations

import errno
import json
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog

from tradingd.logs import configure_logging


def test_json_lines_for_services_and_console_for_people(capsys):
    try:
        configure_logging("info", "json")
        log = structlog.get_logger("t")
        log.info("order.filled", time=datetime(2020, 1, 2, tzinfo=UTC), qty=3)
        log.debug("hidden")  # below the level
        line = capsys.readouterr().err.strip()
        rec = json.loads(line)  # exactly one JSON object, debug filtered out
        assert rec["event"] == "order.filled" and rec["level"] == "info"
        assert rec["time"] == "2020-01-02T00:00:00+00:00"  # ISO, not a repr
        assert rec["timestamp"].endswith("Z")

        configure_logging("warning", "console")
        log = structlog.get_logger("t")
        log.info("quiet")
        log.warning("risk.halt", reason="drawdown")
        err = capsys.readouterr().err
        assert "quiet" not in err and "risk.halt" in err and "drawdown" in err
        assert not err.lstrip().startswith("{")
    finally:
        structlog.reset_defaults()


def test_log_lines_do_not_overwrite_a_progress_bar(capsys, monkeypatch):
    """While a bar is shown, a log line is written in tqdm's external-write mode (bar cleared
    first, redrawn after); with no bar, lines go straight to stderr."""
    import contextlib
    import sys

    from tqdm import tqdm

    writes: list[str] = []
    real = tqdm.external_write_mode

    @contextlib.contextmanager
    def recording(file=None, nolock=False):
        writes.append("enter")
        with real(file=file, nolock=nolock):
            yield
        writes.append("exit")

    monkeypatch.setattr(tqdm, "external_write_mode", recording)
    try:
        configure_logging("info", "json")
        log = structlog.get_logger("t")
        log.info("before.bar")
        assert writes == []
        bar = tqdm(total=10, file=sys.stderr, disable=False)
        try:
            log.info("during.bar")
        finally:
            bar.close()
        assert writes == ["enter", "exit"]
        err = capsys.readouterr().err
        # The line is whole, on a line of its own, with the bar's clearing before it.
        assert any(
            line.endswith('"event": "during.bar"}') or '"during.bar"' in line
            for line in err.splitlines()
        )
        line = next(x for x in err.split("\n") if "during.bar" in x)
        json.loads(line[line.index("{") :])
    finally:
        structlog.reset_defaults()


def test_the_stop_and_exit_lines_are_written_whatever_the_level(capsys):
    """At `log.level = "warning"` (or after a SIGHUP that raised it) a clean stop left no
    `tradingd.exit` line, though it is the line that says where and why the daemon stopped:
    it and `tradingd.stop_requested` are info lines, and they are written at any level,
    with their own level, in the configured format; other info lines are still filtered."""
    from tradingd.__main__ import _Daemon

    try:
        for level in ("warning", "error"):
            configure_logging(level, "json")
            d = _Daemon([])
            d.ready = True
            d.stop_signal = "SIGTERM"
            d._log_stop("SIGTERM", "trading")
            structlog.get_logger("t").info("other.info")
            assert d.exit_line() == 0
            lines = [json.loads(x) for x in capsys.readouterr().err.splitlines()]
            assert [(r["event"], r["level"]) for r in lines] == [
                ("tradingd.stop_requested", "info"),
                ("tradingd.exit", "info"),
            ], (level, lines)
            assert lines[-1]["reason"] == "stopped by SIGTERM"
        configure_logging("info", "console")  # the format follows a reconfiguration
        _Daemon([]).exit_line()
        err = capsys.readouterr().err
        assert "tradingd.exit" in err and not err.lstrip().startswith("{")
    finally:
        structlog.reset_defaults()


def test_the_environments_credentials_are_masked_in_every_line_and_traceback(capsys, monkeypatch):
    """A library's own log line (alpaca-py's stream logged a websocket close reason quoting
    the key id) and an exception's message in a traceback reached the log in clear: the
    cleaners at each source mask only what they know of. Every credential of the environment
    is masked in the rendered line, whatever logged it."""
    import logging

    key_id, secret = "PKSECRETKEYID4711", "sk-Very/Secret+Value=="
    monkeypatch.setenv("APCA_API_KEY_ID", key_id)
    monkeypatch.setenv("APCA_API_SECRET_KEY", secret)
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres:S3cretPW99@127.0.0.1:5432/test")
    try:
        configure_logging("info", "json")
        logging.getLogger("alpaca.trading.stream").warning(
            "trading stream websocket error: received 1008 auth refused for key %s", key_id
        )
        log = structlog.get_logger("t")
        try:
            raise ConnectionError(f"refused {secret} at S3cretPW99")
        except ConnectionError:
            log.exception("broker.failed", detail=f"key {key_id}")
        lines = [json.loads(x) for x in capsys.readouterr().err.splitlines()]
        assert [r["event"] for r in lines][-1] == "broker.failed" and len(lines) == 2
        text = json.dumps(lines)
        for value in (key_id, secret, "S3cretPW99"):
            assert value not in text
        assert "auth refused for key ***" in lines[0]["event"]
        assert "refused *** at ***" in lines[1]["exception"]
        assert lines[1]["detail"] == "key ***"
    finally:
        structlog.reset_defaults()


def test_a_reload_that_lowers_the_level_still_says_it_was_applied(capsys):
    """A SIGHUP setting `log.level = "warning"` applied it, then its own `config.reloaded`
    (an info line) was filtered out: nothing confirmed the reload. Other info lines stay
    filtered."""
    from tradingd.reload import ReloadReport, log_report

    try:
        configure_logging("warning", "json")
        log_report(
            ReloadReport(applied=["log.level"], changes={"log.level": ["info", "warning"]}),
            signal="SIGHUP",
        )
        log_report(ReloadReport(), signal="SIGHUP")
        structlog.get_logger("t").info("other.info")
        lines = [json.loads(x) for x in capsys.readouterr().err.splitlines()]
        assert [(r["event"], r["level"]) for r in lines] == [
            ("config.reloaded", "info"),
            ("config.reload_unchanged", "info"),
        ]
        assert lines[0]["changes"] == {"log.level": ["info", "warning"]}
    finally:
        structlog.reset_defaults()


def test_a_daemon_that_ends_with_records_only_in_the_spool_exits_ex_tempfail(capsys):
    """A run that finished while the database was down exited 0 with its last rows (its end
    included) only in the storage spool; `storage.spool.left` (a warning) was the only sign.
    It now ends with an error-level exit line naming the spool and what to do, and exit code
    75 (EX_TEMPFAIL), which the unit restarts: the start writes the spool. A stop signal's
    stop still exits 0 (the next start writes the spool, as always)."""
    from types import SimpleNamespace

    from tradingd.__main__ import EX_TEMPFAIL, _Daemon

    try:
        configure_logging("info", "json")
        store = SimpleNamespace(spool_left=(3, Path("/srv/spool/w.spool")))
        d = _Daemon([])
        d.ready = True
        d.engine = SimpleNamespace(store=store)  # type: ignore[assignment]
        result = SimpleNamespace(bars=10, stopped_early=False, bars_never_traded=0)
        assert d.exit_line(result) == EX_TEMPFAIL == 75
        [line] = [json.loads(x) for x in capsys.readouterr().err.splitlines()]
        assert line["event"] == "tradingd.exit" and line["level"] == "error"
        assert line["spool"] == "/srv/spool/w.spool" and line["batches"] == 3
        assert line["reason"].startswith("run finished, but its last records are not in")
        assert "Start the run again" in line["hint"] and line["exit_code"] == 75

        store.spool_left = None  # everything written: 0, as before
        assert d.exit_line(result) == 0
        store.spool_left = (3, Path("/srv/spool/w.spool"))
        d.stop_signal = "SIGTERM"
        assert d.exit_line(result) == 0
    finally:
        structlog.reset_defaults()


class _Disk:
    """Standard error on a disk that can be full: each write raises `error` while `full`,
    and the lines it took are kept."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.full = False
        self.lines: list[str] = []

    def write(self, s: str) -> int:
        if self.full:
            raise self.error
        self.lines.append(s)
        return len(s)

    def flush(self) -> None:
        if self.full:
            raise self.error

    def isatty(self) -> bool:
        return False

    def records(self) -> list[dict]:
        return [json.loads(x) for x in "".join(self.lines).splitlines() if x.strip()]


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EIO, "Input/output error"),
        BrokenPipeError(errno.EPIPE, "Broken pipe"),
        ValueError("I/O operation on closed file."),
    ],
    ids=["ENOSPC", "EIO", "EPIPE", "closed"],
)
def test_a_log_line_stderr_cannot_take_is_counted_and_said_never_raised(monkeypatch, error):
    """A full log disk made every log call raise OSError: an alert's error line ended a live
    daemon mid-bar (exit 1, its run's row never ended) and `tradingd backtest 2>/dev/full`
    exited 1 with no record. Lines stderr does not take are dropped and counted, structlog's
    and the standard library's alike (no `--- Logging error ---` traceback from
    logging.StreamHandler.handleError), and once it takes lines again the first says how
    many were lost, since when and why, in the log's format."""
    from tradingd import metrics

    disk = _Disk(error)
    monkeypatch.setattr(sys, "stderr", disk)
    lost_before = metrics.REGISTRY.get_sample_value("tradingd_log_lines_lost_total") or 0
    try:
        configure_logging("info", "json")
        log = structlog.get_logger("t")
        log.info("before.full")
        disk.full = True
        log.error("alert.failed", rule="drawdown")  # an alert's line, mid-bar
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("rule.failed")
        logging.getLogger("apscheduler.scheduler").error("job failed")
        logging.getLogger("tradingd.x").warning("a library's warning")
        disk.full = False
        log.info("after.full")
        log.info("later")
    finally:
        structlog.reset_defaults()
    records = disk.records()
    assert [r["event"] for r in records] == ["before.full", "log.lines_lost", "after.full", "later"]
    said = records[1]
    assert said["level"] == "warning" and said["lines"] == 4
    assert said["error"] == (getattr(error, "strerror", None) or str(error))
    assert records[0]["timestamp"] <= said["since"] <= said["timestamp"]
    lost = metrics.REGISTRY.get_sample_value("tradingd_log_lines_lost_total")
    assert lost == lost_before + 4
    # The warning starts on a line of its own: a line the disk cut when it filled up ends.
    assert disk.lines[1].startswith("\n")


def test_lines_lost_are_said_once_and_only_when_stderr_takes_lines_again(monkeypatch):
    """While stderr stays full, the warning is not written either (its failure is one more
    line lost, not an error); after it is said, the count starts again from nothing, and a
    reconfiguration (SIGHUP) does not forget lines lost before it."""
    disk = _Disk(OSError(errno.ENOSPC, "No space left on device"))
    monkeypatch.setattr(sys, "stderr", disk)
    try:
        configure_logging("info", "json")
        log = structlog.get_logger("t")
        disk.full = True
        for i in range(5):
            log.warning("bar.late", i=i)
        configure_logging("warning", "json")  # a SIGHUP's reload while the disk is full
        log.warning("bar.late", i=5)
        disk.full = False
        log.warning("back")
        disk.full = True
        log.warning("gone.again")
        disk.full = False
        log.warning("back.again")
    finally:
        structlog.reset_defaults()
    records = disk.records()
    assert [(r["event"], r.get("lines")) for r in records] == [
        ("log.lines_lost", 6),
        ("back", None),
        ("log.lines_lost", 1),
        ("back.again", None),
    ]


def test_a_line_the_full_disk_refused_is_never_written_later(monkeypatch, tmp_path):
    """Through the text stream a refused line stayed in its buffer and came out once the
    disk had space again, though counted lost, and every `log.lines_lost` warning tried
    meanwhile came out with it (five warnings for four lines). The process's own stderr is
    written to its descriptor: a line is written or counted, once."""
    import io
    import os

    from tradingd.logs import _StderrBesideProgressBars

    fd = os.open("/dev/full", os.O_WRONLY)
    stream = io.TextIOWrapper(io.BufferedWriter(io.FileIO(fd, "w")), line_buffering=True)
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(sys, "__stderr__", stream)
    out = _StderrBesideProgressBars()
    try:
        for i in range(4):
            out.write(f"lost {i}\n")
            out.flush()
        with (tmp_path / "err.txt").open("wb") as f:
            os.dup2(f.fileno(), fd)  # the disk has space again
        out.write("after\n")
        out.flush()
    finally:
        stream.close()
    text = (tmp_path / "err.txt").read_text()
    assert "lost " not in text
    assert text.count("log.lines_lost") == 1 and "'lines': 4" in text
    assert text.endswith("after\n")


def test_lines_to_the_journal_carry_their_level_as_a_syslog_priority(tmp_path):
    """Under systemd every JSON line reached the journal at priority info, so `journalctl -p
    err -u tradingd` showed none of the daemon's errors. When standard error is the journal
    (JOURNAL_STREAM names its device and inode) each line starts with `<N>`, which journald
    reads as the priority and strips; anywhere else the lines are as before."""
    import subprocess
    import sys

    code = (
        "import logging, structlog\n"
        "from tradingd.logs import configure_logging\n"
        "configure_logging('info', 'json')\n"
        "log = structlog.get_logger('t')\n"
        "log.info('an.info'); log.warning('a.warning'); log.error('an.error')\n"
        "logging.getLogger('somelib').error('a library error')\n"
        "from tradingd.__main__ import say\n"
        "say('tradingd: error: it failed')\n"
    )
    err = tmp_path / "journal"

    def run(journal: bool) -> list[str]:
        with err.open("w") as fh:
            st = os.fstat(fh.fileno())
            env = {
                **os.environ,
                "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + (0 if journal else 1)}",
            }
            subprocess.run([sys.executable, "-c", code], stderr=fh, env=env, check=True)
        return err.read_text().splitlines()

    lines = run(journal=True)
    assert [line[:3] for line in lines] == ["<6>", "<4>", "<3>", "<3>", "<3>"], lines
    assert json.loads(lines[2][3:])["event"] == "an.error"
    assert lines[4] == "<3>tradingd: error: it failed"
    plain = run(journal=False)  # another file's inode: not the journal
    assert [json.loads(line)["event"] for line in plain[:3]] == ["an.info", "a.warning", "an.error"]
    assert plain[4] == "tradingd: error: it failed"
