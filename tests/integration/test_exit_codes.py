"""The exit codes systemd reads: `tradingd run` and `tradingd retrain` exit with 78
(EX_CONFIG, sysexits.h) on a mistake only the operator can end, which their units do not
restart, and 2 on an error a restart may end. Every error was 2, so `Restart=on-failure` ran a
configuration mistake 5 times in 10 minutes and the unit showed "start-limit-hit", hiding
the cause, while a full storage spool must keep being restarted (its restart replays it).
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_runs import in_process, tripwires, write_config
from flock_faults import failing_on

from tradingd.__main__ import EX_CONFIG, exit_code
from tradingd.app import load_data as LOAD_DATA  # the real one, before the tripwire
from tradingd.core.errors import (
    ConfigError,
    DataError,
    DataFileUnusable,
    PluginError,
    ServiceUnavailable,
    StorageError,
    TradingdError,
)
from tradingd.instance_lock import AnotherDaemonRunning
from tradingd.storage.spool import SpoolFull

ROOT = Path(__file__).resolve().parents[2]
# A `tradingd run` that passes every check: the bundled bars replayed at 20 bars a second,
# logged as JSON (the first line goes into write_config's [log] table).
RUNNABLE = 'format = "json"\n[live]\nbars_per_second = 20\n[health]\nport = 0\n'

Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(monkeypatch, tmp_path, capsys) -> Cli:
    """`main(argv)` in tmp_path, with the steps a refused start must never reach replaced by
    a tripwire; a test may replace `load_data` with its own failure."""
    import tradingd.app

    steps = ("load_data", "import_bars", "build_engine")
    tripwires(monkeypatch, [(tradingd.app, s) for s in steps], "a refused start went on")
    return in_process(monkeypatch, tmp_path, capsys)


def error_line(err: str) -> str:
    """The one error line the command prints."""
    [line] = [x for x in err.splitlines() if x.startswith("tradingd: error: ")]
    return line


def exit_line(err: str) -> dict[str, object]:
    """The daemon's last log line, `tradingd.exit`."""
    lines = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    assert lines and lines[-1]["event"] == "tradingd.exit", err[-2000:]
    return lines[-1]


def test_ex_config_is_sysexits_value():
    assert EX_CONFIG == 78  # sysexits.h; systemd shows it as status=78/CONFIG


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (RUNNABLE + '[[signals]]\nname = "momentom"\n', "signals[0].name = 'momentom'"),
        (
            RUNNABLE
            + '[[signals]]\nname = "ml_ensemble"\nparams = { model_dir = "no/such/model" }\n',
            "model_dir 'no/such/model' does not exist",
        ),
        (
            'format = "json"\n[broker]\nkind = "alpaca"\n[feed]\nsource = "yahoo"\n'
            '[data]\nsymbols = ["AAPL"]\n[health]\nport = 0\n',
            "broker.kind = alpaca needs APCA_API_KEY_ID and APCA_API_SECRET_KEY",
        ),
    ],
    ids=["unknown plugin", "missing model folder", "alpaca without its keys"],
)
def test_a_configuration_mistake_at_run_exits_ex_config(cli, tmp_path, monkeypatch, extra, said):
    for name in ("APCA_API_KEY_ID", "APCA_API_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    code, out, err = cli("run", "-c", str(write_config(tmp_path, extra)))
    assert code == EX_CONFIG, err[-2000:]
    assert said in error_line(err) and out == ""
    line = exit_line(err)
    assert line["exit_code"] == EX_CONFIG and said in str(line["reason"])


def test_a_bad_key_before_logging_is_set_up_exits_ex_config_too(cli, tmp_path):
    code, _, err = cli("run", "-c", str(write_config(tmp_path, "[costs]\ncomission_pct = 0.1\n")))
    assert code == EX_CONFIG and "comission_pct" in error_line(err)


@pytest.mark.parametrize(
    "error",
    [
        SpoolFull("storage spool var/spool is full (268435456 bytes)"),
        StorageError("cannot connect to PostgreSQL at postgresql://db/tradingd"),
        ServiceUnavailable("storage.url (DATABASE_URL): no PostgreSQL answered within 3 s"),
        AnotherDaemonRunning("another tradingd (pid 7 on host h) holds the lock"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_an_error_a_restart_may_end_at_run_exits_2(cli, tmp_path, monkeypatch, error):
    """Raised once the checks passed, where the daemon loads its data: a full spool must be
    restarted (the restart replays it), and so must a service that may come back or a lock
    whose holder may end (AnotherDaemonRunning and ServiceUnavailable are ConfigErrors)."""
    import tradingd.app

    def fail(config: object) -> None:
        raise error

    monkeypatch.setattr(tradingd.app, "load_data", fail)
    code, _, err = cli("run", "-c", str(write_config(tmp_path, RUNNABLE)))
    assert code == 2, err[-2000:]
    assert error_line(err) == f"tradingd: error: {error}"
    assert exit_line(err)["exit_code"] == 2


def test_a_data_file_the_run_cannot_use_exits_ex_config(cli, tmp_path, monkeypatch):
    """A recorded feed's `data.path` missing, header-only or with a bad bar: the operator's to
    fix, and a restart reads the same file. As a plain DataError it exited 2, which the unit
    restarted every 10 s until "start-limit-hit"."""
    import tradingd.app

    monkeypatch.setattr(tradingd.app, "load_data", LOAD_DATA)
    missing = tmp_path / "nope" / "prices.csv"
    header_only = tmp_path / "header.csv"
    header_only.write_text("date,symbol,open,high,low,close,volume\n")
    for path, said in ((missing, "csv path does not exist"), (header_only, "a header only")):
        extra = RUNNABLE + f'[data]\nsource = "csv"\npath = "{path}"\n'
        code, _, err = cli("run", "-c", str(write_config(tmp_path, extra)))
        assert code == EX_CONFIG, err[-2000:]
        assert said in error_line(err) and str(path) in error_line(err)
        assert exit_line(err)["exit_code"] == EX_CONFIG
    # The same errors from other commands keep 2 (only the service commands exit 78).
    assert exit_code(DataFileUnusable("x"), "backtest") == 2
    assert exit_code(DataError("x"), "run") == 2  # a vendor's bar, not the configured file


def test_postgres_at_run_start_not_found_exits_2_and_refusing_the_url_exits_ex_config(
    cli, tmp_path, monkeypatch, pg_url
):
    """preflight's check of storage.url: a host not found (DNS may be down at boot) may end
    by itself; a database that does not exist on a server that answers does not."""
    cfg = str(write_config(tmp_path, RUNNABLE))
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@no-such-host.invalid/db")
    code, _, err = cli("run", "-c", cfg)
    assert code == 2 and "cannot connect to PostgreSQL" in error_line(err)
    assert "no-such-host" in error_line(err)
    monkeypatch.setenv("DATABASE_URL", pg_url.rsplit("/", 1)[0] + "/tradingd_no_such_db")
    code, _, err = cli("run", "-c", cfg)
    assert code == EX_CONFIG and "tradingd_no_such_db" in error_line(err)


def test_retrain_exits_ex_config_and_train_2_without_the_train_extra(cli, tmp_path, monkeypatch):
    """retrain is what tradingd-retrain.service runs; train, run by hand, keeps 2."""
    from tradingd import preflight

    monkeypatch.setattr(preflight, "_importable", lambda module: module != "skl2onnx")
    cfg = str(write_config(tmp_path))
    code, _, err = cli("retrain", "-c", cfg)
    assert code == EX_CONFIG and "missing: skl2onnx" in error_line(err)
    code, _, err = cli("train", "-c", cfg)
    assert code == 2 and "missing: skl2onnx" in error_line(err)


@pytest.mark.parametrize(
    ("error", "run"),
    [
        (ConfigError("x"), EX_CONFIG),
        (ServiceUnavailable("x"), 2),
        (AnotherDaemonRunning("x"), 2),
        (PluginError("x"), 2),
        (SpoolFull("x"), 2),
        (TradingdError("x"), 2),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_only_the_service_commands_exit_ex_config(error, run):
    """The other commands keep 2 for every error, as argparse's usage errors, and as the
    documented codes of compare, replay-check and lookahead-check (0, 1, 2 an error)."""
    assert exit_code(error, "run") == exit_code(error, "retrain") == run
    for command in ("backtest", "config", "report", "compare", "lookahead-check", "train"):
        assert exit_code(error, command) == 2


def unit_settings(path: Path) -> dict[str, list[str]]:
    """A unit file's `Key=value` settings, the values of a key repeated in order."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@pytest.mark.parametrize("unit", ["tradingd.service", "tradingd-retrain.service"])
def test_the_units_do_not_restart_the_code_the_program_uses_for_config_errors(unit):
    settings = unit_settings(ROOT / "systemd" / unit)
    prevented = " ".join(settings.get("RestartPreventExitStatus", [])).split()
    assert prevented == [str(EX_CONFIG)], prevented  # 2 (a full spool) must be restarted
    success = " ".join(settings.get("SuccessExitStatus", [])).split()
    assert str(EX_CONFIG) not in success
    if unit == "tradingd.service":
        assert settings["Restart"] == ["on-failure"]


async def test_a_run_id_held_by_another_engine_exits_as_a_held_lock_not_a_config_mistake(
    tmp_path,
):
    """The run lock's refusal was a plain ConfigError: with exit 78 for configuration
    mistakes, a live start meeting a run id still held (a previous instance ending) would
    exit 78, which systemd does not restart, leaving the daemon down."""
    from tradingd.__main__ import exit_code
    from tradingd.app import RunLock
    from tradingd.instance_lock import AnotherDaemonRunning

    url = f"sqlite:///{tmp_path / 'store.db'}"
    locks = [("the store", url, tmp_path / "store.db.locks", "live-run")]
    first, second = RunLock("live-run", False, locks), RunLock("live-run", False, locks)
    await first.start()
    try:
        with pytest.raises(AnotherDaemonRunning) as refused:
            await second.start()
    finally:
        await first.stop()
    assert "is in use by" in str(refused.value)
    assert exit_code(refused.value, "run") == 2


@pytest.fixture
def started(monkeypatch, tmp_path, capsys) -> Cli:
    """`main(argv)` in tmp_path with no step replaced: the daemon's own start fails."""
    return in_process(monkeypatch, tmp_path, capsys)


# flock's errno on the file under test, and the exit: a filesystem without file locks is a
# set-up mistake (78); another failure of the lock (EIO) may be the disk's, and a restart's.
LOCK_FAULTS = [(errno.ENOLCK, EX_CONFIG), (errno.EIO, 2)]


@pytest.mark.parametrize(("fault", "code"), LOCK_FAULTS, ids=lambda v: errno.errorcode.get(v, v))
def test_a_lock_file_on_a_filesystem_without_locks_exits_ex_config(
    started, tmp_path, monkeypatch, fault, code
):
    """The store's lock file on a filesystem without file locks (an NFS mount without
    lockd) was a StorageError only: the start waited storage.start_retry_s for it as for a
    database that is down ("waiting_for_database"), then exited 2, which systemd restarted
    every 10 s until its start limit. Nothing but moving the store or the lock folder ends
    it."""
    failing_on(monkeypatch, lambda p: p.endswith(".lock"), fault)
    got, _, err = started("run", "-c", str(write_config(tmp_path, RUNNABLE)))
    assert got == code, err[-2000:]
    assert errno.errorcode[fault] in error_line(err)
    assert exit_line(err)["exit_code"] == code
    assert "waiting_for_database" not in err


@pytest.mark.parametrize(("fault", "code"), LOCK_FAULTS, ids=lambda v: errno.errorcode.get(v, v))
def test_a_storage_spool_on_a_filesystem_without_locks_exits_ex_config(
    started, tmp_path, monkeypatch, pg_url, fault, code
):
    """storage.spool_dir on a filesystem without file locks stops the start (the spool has
    no unlocked mode) with a SpoolError, which exited 2 as a full spool does, and systemd
    restarted it to the same refusal. A full spool stays 2 (above)."""
    monkeypatch.setenv("DATABASE_URL", pg_url)
    failing_on(monkeypatch, lambda p: p.endswith(".probe.tmp"), fault)
    got, _, err = started("run", "-c", str(write_config(tmp_path, RUNNABLE)))
    assert got == code, err[-2000:]
    line = error_line(err)
    assert "storage spool" in line and errno.errorcode[fault] in line
    assert exit_line(err)["exit_code"] == code
