"""Start-up validation as the `tradingd` command applies it (issue 7, points 5, 6, 7 and 11).

Every command that takes a configuration goes through one validation path before doing any
work; errors are `tradingd: error: ...` with exit code 2 (78, EX_CONFIG, from `run` and
`retrain`: `config_error_code`), never a traceback, and never after
data was loaded or a replay ran. Most tests call `main()` in-process with the expensive steps
replaced by tripwires (fast, and proof that they were never reached); a few run the real
command in a subprocess. Service checks use the real local PostgreSQL and Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
from cli_runs import Tripwire, config_error_code, in_process, tripwires, write_config
from conftest import deep_path

from tradingd.__main__ import DEFAULT_RETRAIN_ROOT, DEFAULT_TRAIN_OUT, _parser, main
from tradingd.config import load_config
from tradingd.core.errors import ConfigError
from tradingd.preflight import TRAIN_MODULES, check_config, check_services, check_writable_dir

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cret"
ALL_COMMANDS = ("config", "features", "backtest", "run", "fetch", "train", "retrain")


@pytest.fixture
def cli(monkeypatch, tmp_path, capsys):
    """`main(argv)` in a fresh working directory and environment, with every step that loads
    data or starts a run replaced by a tripwire. Returns (exit code, stdout, stderr)."""
    import tradingd.app
    import tradingd.backtest

    tripwires(
        monkeypatch,
        [
            (tradingd.app, "load_data"),
            (tradingd.app, "import_bars"),
            (tradingd.app, "build_engine"),
            (tradingd.backtest, "run_backtest"),
        ],
        "validation let the command start its work",
    )
    return in_process(monkeypatch, tmp_path, capsys)


def tradingd(args, cwd, env=None):
    e = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    return subprocess.run(
        [sys.executable, "-m", "tradingd", *args],
        cwd=cwd,
        env={**e, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


# ----------------------------------------------------------------------------- one path


@pytest.mark.parametrize("command", ALL_COMMANDS)
def test_unknown_plugin_is_rejected_by_every_command(cli, tmp_path, command):
    cfg = write_config(tmp_path, '[[signals]]\nname = "momentom"\n')
    code, out, err = cli(command, "-c", str(cfg))
    assert code == config_error_code(command)
    assert "tradingd: error: signals[0].name = 'momentom'" in err
    assert "momentum" in err  # the valid choices
    assert out == ""
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", ["config", "features", "backtest"])
def test_bad_plugin_params_are_rejected_by_every_command(cli, tmp_path, command):
    cfg = write_config(
        tmp_path, '[[risk]]\nname = "max_position"\nparams = { max_position_pct = "5%" }\n'
    )
    code, _, err = cli(command, "-c", str(cfg))
    assert code == 2
    assert "risk[0].params.max_position_pct must be a number" in err
    assert "'5%'" in err


def test_a_plugin_of_the_wrong_kind_is_rejected(tmp_path):
    cfg = load_config([write_config(tmp_path, '[sizing]\nname = "momentum"\n')], env={})
    with pytest.raises(ConfigError, match=r"sizing.name = 'momentum' is a 'signal' plugin"):
        check_config(cfg, "config")


def test_a_plugin_that_crashes_on_start_is_named(tmp_path, monkeypatch):
    """Not only ValueError/TypeError: whatever a plugin's constructor raises (a missing model
    file, say) is reported with its key instead of a traceback."""
    from tradingd.core.errors import PluginError
    from tradingd.engine import plugins as registry

    class Broken:
        kind = "signal"

        @dataclasses.dataclass(frozen=True)
        class Config:
            path: str = "x"

        def __init__(self, config, symbols):
            raise FileNotFoundError(f"no model in {config.path}")

    class EntryPoint:
        name, value = "broken", "test:Broken"

        def load(self):
            return Broken

    eps = {**registry.available(), "broken": EntryPoint()}
    monkeypatch.setattr(registry, "available", lambda: eps)
    cfg = load_config([write_config(tmp_path, '[[signals]]\nname = "broken"\n')], env={})
    with pytest.raises(PluginError, match=r"signals\[0\].name = 'broken'.*no model in x"):
        check_config(cfg, "config")


def test_unknown_extra_feature_is_rejected_at_start(tmp_path):
    cfg = load_config([write_config(tmp_path, '[features]\nextra = ["rsi_14", "wobble_3"]\n')])
    with pytest.raises(ConfigError, match=r"features.extra\[1\] = 'wobble_3'"):
        check_config(cfg, "config")


def test_static_errors_come_out_the_same_way(cli, tmp_path):
    cfg = write_config(tmp_path, '[live]\nbar = "4pm"\n')
    code, _, err = cli("config", "-c", str(cfg))
    assert code == 2 and err.startswith("tradingd: error: live.bar = '4pm'")


def test_binary_config_file_through_the_command(tmp_path):
    db = tmp_path / "tradingd.db"
    db.write_bytes(b"SQLite format 3\x00" + bytes(range(256)))
    r = tradingd(["config", "-c", str(db)], cwd=tmp_path)
    assert r.returncode == 2
    assert "not a UTF-8 TOML file" in r.stderr and str(db) in r.stderr
    assert "Traceback" not in r.stderr


def test_misspelt_environment_override_through_the_command(tmp_path):
    r = tradingd(
        ["config", "-c", str(write_config(tmp_path))],
        cwd=tmp_path,
        env={"TRADINGD_COSTS_COMMISSION_PCT": "0.002"},
    )
    assert r.returncode == 2
    assert "TRADINGD_COSTS_COMMISSION_PCT" in r.stderr and "__<KEY>" in r.stderr


# ----------------------------------------------------------------------------- secrets


def test_config_command_masks_every_password(tmp_path):
    cfg = write_config(tmp_path)
    cfg.write_text(
        cfg.read_text().replace(
            "[storage]\nurl", '[cache]\nurl = "redis://:s3cret@h:6379/0"\n[storage]\nurl'
        )
    )
    r = tradingd(["config", "-c", str(cfg)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "redis://:***@h:6379/0" in r.stdout
    env = {
        "DATABASE_URL": "postgresql://u:s3cret@h:5432/db",
        "REDIS_URL": "rediss://user:s3cret@h:6380/1?password=s3cret",
    }
    r = tradingd(["config", "-c", str(cfg)], cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert SECRET not in r.stdout and SECRET not in r.stderr
    assert "postgresql://u:***@h:5432/db" in r.stdout
    assert "rediss://user:***@h:6380/1?password=***" in r.stdout


def test_fetch_prints_the_masked_url(tmp_path):
    db = tmp_path / "f.db"
    cfg = write_config(tmp_path, '[data]\nsymbols = ["SP500"]\n')
    r = tradingd(
        ["fetch", "-c", str(cfg)],
        cwd=tmp_path,
        env={"DATABASE_URL": f"sqlite:///{db}?password={SECRET}"},
    )
    assert r.returncode == 0, r.stderr
    assert f"sqlite:///{db}?password=***" in r.stdout
    assert SECRET not in r.stdout
    assert db.exists()


def test_fetch_to_postgres_with_a_password(cli, tmp_path, pg_url, monkeypatch):
    """The password (ignored by a trust-auth server) reaches the connection check, and only
    its mask reaches the output."""
    import tradingd.app

    u = urlparse(pg_url)
    if u.password:
        pytest.skip("the test database has a real password; cannot add a dummy one")
    with_pw = pg_url.replace(f"{u.username}@", f"{u.username}:{SECRET}@", 1)
    monkeypatch.setenv("DATABASE_URL", with_pw)

    async def fake_import(config, chunk=250):
        assert config.storage.url == with_pw  # the code still gets the real URL
        return 7

    monkeypatch.setattr(tradingd.app, "import_bars", fake_import)
    code, out, err = cli("fetch", "-c", str(write_config(tmp_path)))
    assert code == 0, err
    assert out.strip() == f"stored 7 bars in {with_pw.replace(SECRET, '***')}"
    assert SECRET not in out + err


# ----------------------------------------------------------------------------- folders


def unwritable_dir(tmp_path: Path) -> Path:
    """A folder this process really cannot write to. Permission bits do not stop root, so as
    root use /sys (sysfs refuses new files to everyone)."""
    if os.geteuid() != 0:
        d = tmp_path / "locked"
        d.mkdir()
        d.chmod(0o500)
        return d
    try:
        check_writable_dir("/sys", "probe")
    except ConfigError:
        return Path("/sys")
    pytest.skip("running as root and /sys is writable: no unwritable folder available")


@pytest.fixture(params=["under_a_file", "unwritable"])
def bad_dir(request, tmp_path) -> Path:
    if request.param == "under_a_file":
        f = tmp_path / "a_file"
        f.write_text("")
        return f / "sub"
    return unwritable_dir(tmp_path) / "tradingd-out"


@pytest.mark.parametrize(
    ("command", "section", "key"),
    [
        ("backtest", "run", "output_dir"),
        ("backtest", "log", "audit_dir"),
        ("run", "log", "audit_dir"),
    ],
)
def test_unwritable_folders_stop_the_command_before_it_starts(
    cli, tmp_path, monkeypatch, bad_dir, command, section, key
):
    cfg = write_config(tmp_path)
    monkeypatch.setenv(f"TRADINGD_{section.upper()}__{key.upper()}", f'"{bad_dir}"')
    code, _, err = cli(command, "-c", str(cfg))
    assert code == config_error_code(command)
    assert f"{section}.{key} = '{bad_dir}' is invalid" in err
    assert "must be a folder this user can create or write to" in err


@pytest.mark.parametrize("command", ["run", "backtest"])
def test_a_folder_on_a_full_disk_stops_the_start_as_a_restartable_error(
    cli, tmp_path, monkeypatch, command
):
    """A full disk is no set-up mistake (README, "Exit codes"): `tradingd run` exits 2, as
    for a full storage spool, and a systemd unit restarts it until space is freed. The
    probe's ENOSPC was a ConfigError: exit 78 (not restarted) and "must be a folder this
    user can create or write to". A read-only folder stays 78 (the operator must act)."""
    import errno
    import tempfile

    audit = tmp_path / "audit"
    audit.mkdir()
    real = tempfile.TemporaryFile
    refusal = [errno.ENOSPC]

    def probe(*args, **kwargs):  # type: ignore[no-untyped-def]
        if Path(kwargs.get("dir", "")) == audit:
            raise OSError(refusal[0], os.strerror(refusal[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", probe)
    cfg = write_config(tmp_path)
    monkeypatch.setenv("TRADINGD_LOG__AUDIT_DIR", f'"{audit}"')
    code, _, err = cli(command, "-c", str(cfg))
    assert code == 2
    assert f"log.audit_dir = '{audit}': a file could not be created there" in err
    assert "No space left on device" in err and "free space on its disk" in err
    refusal[0] = errno.EROFS
    code, _, err = cli(command, "-c", str(cfg))
    assert code == config_error_code(command)
    assert "Read-only file system" in err and "is invalid" in err


def test_unwritable_output_option_fails_before_the_replay(cli, tmp_path, bad_dir):
    code, _, err = cli("backtest", "-c", str(write_config(tmp_path)), "--output", str(bad_dir))
    assert code == 2  # the run_backtest tripwire was not reached
    assert f"--output = '{bad_dir}' is invalid" in err


@pytest.mark.parametrize(
    "options",
    [
        ("--analysis-config", "/nonexistent.toml"),
        ("--no-validation",),
        ("--analysis-config", "/nonexistent.toml", "--no-validation"),
    ],
)
def test_report_options_without_report_are_a_usage_error_before_the_replay(cli, tmp_path, options):
    """`backtest --analysis-config X --no-validation` without --report replayed, exited 0 and
    wrote no report: both options were dropped without a word, a missing X included."""
    code, _, err = cli("backtest", "-c", str(write_config(tmp_path)), *options)
    assert code == 2  # the run_backtest tripwire was not reached
    named = [o for o in options if o.startswith("--")]
    assert f"tradingd: error: backtest: {' and '.join(named)} only configure" in err
    assert "add --report" in err


def test_a_validation_runs_root_that_is_not_a_folder_fails_before_the_replay(cli, tmp_path):
    """`backtest --report` with `[validation] runs_root = "var/runz"` (a typo) replayed the
    whole run and wrote its record before the report refused the folder."""
    analysis = tmp_path / "analysis.toml"
    analysis.write_text(f'[validation]\nruns_root = "{tmp_path / "runz"}"\n')
    args = ("backtest", "-c", str(write_config(tmp_path)), "--report")
    code, _, err = cli(*args, "--analysis-config", str(analysis))
    assert code == 2  # the run_backtest tripwire was not reached
    assert f"analysis config {analysis}: [validation] runs_root" in err
    assert "is not a folder" in err and "Traceback" not in err
    # Counted from nowhere when both figures are given: the folder is not read, nor refused.
    analysis.write_text(
        f'[validation]\nruns_root = "{tmp_path / "runz"}"\ntrials = 3\n'
        "trials_sharpe_variance = 0.5\n"
    )
    with pytest.raises(Tripwire):  # passed the start-up checks: the replay was reached
        cli(*args, "--analysis-config", str(analysis))


def test_an_output_path_too_long_for_the_records_files_fails_before_the_replay(cli, tmp_path):
    """A 4,075-character --output passed the start-up check (its folders could be made) and
    the whole replay ran before the record's files, 20-odd characters more, could not be
    named (ENAMETOOLONG), with the advice to free space."""
    out = deep_path(tmp_path, 4075)
    code, _, err = cli("backtest", "-c", str(write_config(tmp_path)), "--output", str(out))
    assert code == 2  # the run_backtest tripwire was not reached
    assert "--output = " in err and "over this file system's limit of 4,095" in err
    assert "give a shorter path" in err and "4,075 characters" in err  # the path, shortened
    # A name over NAME_MAX: in a folder still to be made, and directly in an existing one
    # (where even the look-up for the nearest existing folder ended in a traceback).
    for folder, said in (
        (tmp_path / "new" / ("n" * 300), "limit of 255 for a file or folder name"),
        (tmp_path / ("n" * 300), "cannot be looked up (File name too long)"),
    ):
        code, _, err = cli("backtest", "-c", str(write_config(tmp_path)), "--output", str(folder))
        assert code == 2 and said in err and "give a shorter path" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.toml"]  # nothing made


def test_the_output_length_check_takes_exactly_the_paths_the_record_can_be_written_to(
    tmp_path,
):
    """The bound is the record's own: the longest folder the check lets through holds a
    whole record, and one character more is refused."""
    import json
    from datetime import UTC, datetime

    from tradingd import backtest
    from tradingd.config import Config
    from tradingd.engine.engine import EngineResult

    longest = max(len(n) for n in backtest.record_names())
    limit = os.pathconf(tmp_path, "PC_PATH_MAX") - 1  # bytes of a path, without its NUL
    fits = deep_path(tmp_path, limit - 1 - longest)
    assert check_writable_dir(fits, "--output", names=backtest.record_names()) == fits
    result = EngineResult("r", 1, [datetime(2024, 3, 8, tzinfo=UTC)], [1e5], [0.0], 0, 0, 0)
    backtest.write_outputs(fits, Config(), result, {"run_id": "r"}, [], [])
    assert json.loads((fits / "summary.json").read_text())["run_id"] == "r"
    with pytest.raises(ConfigError, match="give a shorter path"):
        check_writable_dir(Path(f"{fits}x"), "--output", names=backtest.record_names())


def test_unwritable_sqlite_folder_stops_fetch(cli, tmp_path, bad_dir, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{bad_dir}/x.db")
    code, _, err = cli("fetch", "-c", str(write_config(tmp_path)))
    assert code == 2 and "storage.url (DATABASE_URL) folder" in err


def test_the_sqlite_folder_error_names_the_variable_that_set_the_url(
    cli, tmp_path, bad_dir, monkeypatch
):
    """Set by TRADINGD_STORAGE__URL, the error named DATABASE_URL, a variable never set."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("TRADINGD_STORAGE__URL", f"sqlite:///{bad_dir}/x.db")
    code, _, err = cli("fetch", "-c", str(write_config(tmp_path)))
    assert code == 2 and "storage.url (TRADINGD_STORAGE__URL) folder" in err
    assert "DATABASE_URL" not in err


def test_a_url_set_in_a_config_file_is_named_by_the_file_not_by_database_url(
    cli, tmp_path, monkeypatch
):
    """Security trial F6: with DATABASE_URL unset and `storage.url` set in a -c file, the
    error named `storage.url (DATABASE_URL)`, a variable never set."""
    for var in ("DATABASE_URL", "TRADINGD_STORAGE__URL", "DB_HOST"):
        monkeypatch.delenv(var, raising=False)
    folder = tmp_path / "db"
    folder.mkdir()
    cfg = write_config(tmp_path)
    cfg.write_text(
        cfg.read_text().replace(f"sqlite:///{tmp_path / 'cli.db'}", f"sqlite:///{folder}")
    )
    code, _, err = cli("backtest", "-c", str(cfg))
    assert code == config_error_code("backtest")
    assert f"storage.url (set in {cfg}) names the folder {folder}" in err
    assert "DATABASE_URL" not in err


def test_a_default_url_is_named_as_the_default(tmp_path):
    from tradingd.config import url_label

    config = load_config([], env={})
    assert url_label(config, "storage.url", "DATABASE_URL") == (
        "storage.url (the default; set it in a -c file or DATABASE_URL)"
    )


@pytest.mark.parametrize("command", ["backtest", "run", "fetch"])
def test_a_sqlite_url_naming_a_folder_is_refused_before_anything_is_made(
    cli, tmp_path, monkeypatch, command
):
    """SQLite said "unable to open database file" only after the instance lock had made
    `<folder>.locks/` beside it."""
    folder = tmp_path / "db"
    folder.mkdir()
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{folder}")
    code, _, err = cli(command, "-c", str(write_config(tmp_path)))
    assert code == config_error_code(command)
    assert f"storage.url (DATABASE_URL) names the folder {folder}, not a database file" in err
    assert f"sqlite:///{folder}/tradingd.db" in err
    assert not (tmp_path / "db.locks").exists()


def test_a_sqlite_url_naming_a_folder_by_home_or_a_final_slash_is_refused(
    cli, tmp_path, monkeypatch
):
    """`~` is expanded by the store and its locks, so the check must expand it too; a path
    ending in a slash is a folder even before it exists (SQLite made a file of that name)."""
    home = tmp_path / "home"
    (home / "db").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("DATABASE_URL", "sqlite:///~/db")
    code, _, err = cli("backtest", "-c", str(write_config(tmp_path)))
    assert code == 2 and f"names the folder {home / 'db'}, not a database file" in err
    assert not (home / "db.locks").exists()
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/not-yet/")
    code, _, err = cli("backtest", "-c", str(write_config(tmp_path)))
    assert code == 2 and f"names the folder {tmp_path / 'not-yet'}" in err
    assert not (tmp_path / "not-yet").exists()


def test_config_command_does_not_check_folders_it_never_writes(cli, tmp_path, bad_dir):
    cfg = write_config(tmp_path)
    text = cfg.read_text().replace(str(tmp_path / "runs"), str(bad_dir))
    cfg.write_text(text.replace(str(tmp_path / "audit"), str(bad_dir)))
    code, out, err = cli("config", "-c", str(cfg))
    assert code == 0, err
    assert str(bad_dir) in out


def test_writable_folders_are_not_created_by_the_check(tmp_path):
    target = tmp_path / "a" / "b"
    assert check_writable_dir(target, "run.output_dir") == target
    assert not (tmp_path / "a").exists()


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("module", sorted(TRAIN_MODULES))
@pytest.mark.parametrize("command", ["train", "retrain"])
def test_training_without_the_extra_says_what_to_install(
    cli, tmp_path, monkeypatch, command, module
):
    # A None entry makes the module unimportable (find_spec returns None), whether or not the
    # training packages are installed here.
    monkeypatch.setitem(sys.modules, module, None)
    code, out, err = cli(command, "-c", str(write_config(tmp_path)))
    assert code == config_error_code(command)  # and the load_data tripwire was not reached
    assert "pip install '.[train]'" in err and "tradingd[train]" in err
    assert TRAIN_MODULES[module] in err
    assert out == ""


def test_training_check_asks_find_spec(cli, tmp_path, monkeypatch):
    absent = [m for m in TRAIN_MODULES if importlib.util.find_spec(m) is None]
    if absent:  # the message would name those too
        pytest.skip(f"the train extra is not installed (missing {', '.join(absent)})")
    real = importlib.util.find_spec
    asked = []

    def fake(name, *a, **k):
        asked.append(name)
        return None if name == "skl2onnx" else real(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    code, _, err = cli("train", "-c", str(write_config(tmp_path)))
    assert code == 2 and "missing: skl2onnx" in err
    assert {"keras", "tensorflow", "sklearn", "onnx"} <= set(asked)


def test_model_folders_default_outside_the_source_tree():
    train = _parser().parse_args(["train"])
    retrain = _parser().parse_args(["retrain"])
    assert train.out == DEFAULT_TRAIN_OUT == "var/models/trained"
    assert retrain.root == DEFAULT_RETRAIN_ROOT == "var/models"
    for p in (train.out, retrain.root):
        assert not Path(p).is_relative_to("models")


def test_train_checks_out_folder_and_reports_where_it_wrote(cli, tmp_path, monkeypatch, bad_dir):
    import tradingd_models.training as training

    import tradingd.app
    from tradingd import preflight

    monkeypatch.setattr(preflight, "_importable", lambda module: True)
    cfg = str(write_config(tmp_path))
    code, _, err = cli("train", "-c", cfg, "--out", str(bad_dir))
    assert code == 2 and f"--out = '{bad_dir}' is invalid" in err

    written = []
    monkeypatch.setattr(tradingd.app, "load_data", lambda config: "panel")
    monkeypatch.setattr(training, "train", lambda config, panel, out, mc, log: written.append(out))
    code, out, err = cli("train", "-c", cfg)
    assert code == 0, err
    assert written == [DEFAULT_TRAIN_OUT]
    assert str(tmp_path / DEFAULT_TRAIN_OUT) in out


@pytest.mark.parametrize(
    ("option", "value", "rule"),
    [
        ("--window-bars", "0", "--window-bars) must be a whole number >= 1"),
        ("--window-bars", "-1500", "--window-bars) must be a whole number >= 1"),
        ("--min-directional-accuracy", "1.5", "--min-directional-accuracy) must be in [0, 1]"),
        ("--min-directional-accuracy", "-0.1", "--min-directional-accuracy) must be in [0, 1]"),
        ("--min-directional-accuracy", "nan", "--min-directional-accuracy) must be in [0, 1]"),
        ("--max-mse-ratio", "0", "--max-mse-ratio) must be > 0"),
        ("--max-mse-ratio", "-1", "--max-mse-ratio) must be > 0"),
        ("--max-mse-ratio", "nan", "--max-mse-ratio) must be > 0"),
    ],
)
def test_retrain_options_out_of_range_stop_before_the_data(
    cli, tmp_path, monkeypatch, option, value, rule
):
    """--window-bars 0 trained on the whole history (times[-0:]), a negative window on all but
    its first bars, and the floors took any number: refused, naming the option and the rule,
    before the data is loaded (the load_data tripwire)."""
    from tradingd import preflight

    monkeypatch.setattr(preflight, "_importable", lambda module: True)
    code, out, err = cli("retrain", "-c", str(write_config(tmp_path)), option, value)
    assert code == config_error_code("retrain") and out == ""
    assert "tradingd: error: retrain " in err and rule in err and f"got {value}" in err


def test_retrain_options_in_range_reach_the_retraining(cli, tmp_path, monkeypatch):
    import tradingd_models.retrain as retraining

    import tradingd.app
    from tradingd import preflight

    monkeypatch.setattr(preflight, "_importable", lambda module: True)
    monkeypatch.setattr(tradingd.app, "load_data", lambda config: "panel")
    policies = []

    def retrain(config, panel, root, policy):  # type: ignore[no-untyped-def]
        policies.append(policy)
        return retraining.RetrainOutcome(True, "v1", "ok", {})

    monkeypatch.setattr(retraining, "retrain", retrain)
    cfg = str(write_config(tmp_path))
    edges = ("--window-bars", "1", "--min-directional-accuracy", "0", "--max-mse-ratio", "1e9")
    assert cli("retrain", "-c", cfg, *edges)[0] == 0
    assert cli("retrain", "-c", cfg, "--min-directional-accuracy", "1")[0] == 0
    assert [(p.window_bars, p.min_directional_accuracy, p.max_mse_ratio) for p in policies] == [
        (1, 0.0, 1e9),
        (1260, 1.0, 1.05),
    ]


@pytest.mark.parametrize("epochs", ["0", "-3"])
def test_train_refuses_epochs_below_one(cli, tmp_path, monkeypatch, epochs):
    """--epochs 0 was taken for "not given" and the configured 50 epochs were trained; a
    negative count ended in ModelConfig's ValueError, a traceback."""
    from tradingd import preflight

    monkeypatch.setattr(preflight, "_importable", lambda module: True)
    code, out, err = cli("train", "-c", str(write_config(tmp_path)), "--epochs", epochs)
    assert (code, out) == (2, "")
    assert f"tradingd: error: --epochs must be >= 1, got {epochs}" in err


# ----------------------------------------------------------------------------- services


def _host_port(url: str) -> tuple[str, int]:
    u = urlparse(url)
    return u.hostname or "127.0.0.1", u.port or 0


def _services(tmp_path, storage="", cache=""):
    env = {}
    if storage:
        env["DATABASE_URL"] = storage
    if cache:
        env["REDIS_URL"] = cache
    return load_config([write_config(tmp_path)], env=env)


def test_reachable_services_pass(tmp_path, pg_url, redis_url):
    asyncio.run(check_services(_services(tmp_path, pg_url, redis_url)))


def test_redis_database_index_the_server_does_not_have(tmp_path, redis_url):
    host, port = _host_port(redis_url)
    url = f"redis://:{SECRET}@{host}:{port}/99"
    with pytest.raises(ConfigError) as e:
        asyncio.run(check_services(_services(tmp_path, cache=url)))
    msg = str(e.value)
    assert "cache.url (REDIS_URL)" in msg and "database index 99" in msg and "0..15" in msg
    assert SECRET not in msg


def test_redis_refusing_the_credentials_says_so_not_check_host_and_port(tmp_path, redis_url):
    """redis-py's AuthenticationError is a ConnectionError: a wrong password was told to
    "check host and port, and that a Redis server listens there", which it did."""
    host, port = _host_port(redis_url)
    url = f"redis://no-such-user:{SECRET}@{host}:{port}/0"
    with pytest.raises(ConfigError) as e:
        asyncio.run(check_services(_services(tmp_path, cache=url)))
    msg = str(e.value)
    assert "refused the credentials" in msg and "check host and port" not in msg
    assert SECRET not in msg and "no-such-user" in msg


def test_a_redis_url_option_redis_py_cannot_read_is_a_config_error_not_a_traceback(tmp_path):
    url = f"redis://:{SECRET}@127.0.0.1:6379/0?health_check_interval=x"
    with pytest.raises(ConfigError) as e:
        asyncio.run(check_services(_services(tmp_path, cache=url)))
    msg = str(e.value)
    assert msg.startswith("cache.url (REDIS_URL) = ") and "health_check_interval" in msg
    assert "query options" in msg and SECRET not in msg


def test_redis_url_pointing_at_postgres_is_a_warning_naming_it(tmp_path, pg_url):
    """Redis is a cache: another service on its port only degrades it, as mid-run."""
    from structlog.testing import capture_logs

    host, port = _host_port(pg_url)
    with capture_logs() as logs:
        asyncio.run(check_services(_services(tmp_path, cache=f"redis://{host}:{port}/0")))
    [warned] = [e for e in logs if e["event"] == "preflight.redis_unreachable"]
    assert warned["url"] == f"redis://{host}:{port}/0" and warned["found"]


@contextlib.asynccontextmanager
async def _answering(answer: bytes):
    """A TCP server on a free port that answers `answer` to whatever it is sent, then
    leaves the connection open; yields the port."""

    async def reply(reader, writer):
        with contextlib.suppress(ConnectionError):
            await reader.read(1024)
            writer.write(answer)
            await writer.drain()
            await reader.read()  # until the client closes
        writer.close()

    server = await asyncio.start_server(reply, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@pytest.mark.parametrize(
    ("answer", "found"),
    [
        (b"-LOADING Redis is loading the dataset in memory\r\n", "Redis is loading its dataset"),
        (
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
            "not a Redis server: it answered b'HTTP/1.1 400 Bad Request'",
        ),
        (b"SSH-2.0-OpenSSH_9.2p1 " + b"x" * 500 + b"\r\n", "not a Redis server: it answered"),
        (b"\x00\x01\xfegarbage\r\n", "not a Redis server: it answered"),
        (b"-MASTERDOWN Link with MASTER is down\r\n", "Redis refused: Link with MASTER"),
        (None, "host not found"),
    ],
    ids=["loading", "http", "ssh", "garbage", "masterdown", "no-such-host"],
)
def test_a_redis_loading_another_service_or_no_such_host_is_a_warning_not_an_error(
    tmp_path, answer, found
):
    """They stopped `tradingd run` with exit 2 (a Redis loading its dump: "check host and
    port, and that a Redis server (not another service) listens there"), while mid-run the
    same states only degrade the cache; under systemd a Redis loading for a minute left the
    unit in start-limit-hit. Now a warning naming what was found, as for a Redis down."""
    from structlog.testing import capture_logs

    async def check() -> None:
        if answer is None:
            url = f"redis://:{SECRET}@no-such-host.invalid:6379/0"
            await check_services(_services(tmp_path, cache=url), timeout_s=2.0)
            return
        async with _answering(answer) as port:
            url = f"redis://:{SECRET}@127.0.0.1:{port}/0"
            await check_services(_services(tmp_path, cache=url), timeout_s=2.0)

    with capture_logs() as logs:
        asyncio.run(check())
    [warned] = [e for e in logs if e["event"] == "preflight.redis_unreachable"]
    assert warned["found"].startswith(found)
    assert len(warned["found"]) < 120  # a 500-byte banner is not quoted whole
    assert SECRET not in str(warned)


def test_redis_requiring_a_password_none_configured_says_so(tmp_path):
    """redis-py's words ("HELLO must be called with the client already authenticated")
    spoke of credentials refused when none were given."""

    async def check(url_of) -> str:
        async with _answering(b"-NOAUTH Authentication required.\r\n") as port:
            with pytest.raises(ConfigError) as e:
                await check_services(_services(tmp_path, cache=url_of(port)), timeout_s=2.0)
        return str(e.value)

    msg = asyncio.run(check(lambda port: f"redis://127.0.0.1:{port}/0"))
    assert "Redis requires a password and none is configured" in msg
    assert "REDIS_URL (redis://:PASSWORD@host:port) or REDIS_PASSWORD (with REDIS_HOST" in msg
    assert "HELLO" not in msg and "refused the credentials" not in msg
    # With a password given, it is the credentials that were refused.
    msg = asyncio.run(check(lambda port: f"redis://:{SECRET}@127.0.0.1:{port}/0"))
    assert "refused the credentials" in msg and "none is configured" not in msg
    assert SECRET not in msg


def test_postgres_url_pointing_at_redis(tmp_path, redis_url):
    host, port = _host_port(redis_url)
    url = f"postgresql://u:{SECRET}@{host}:{port}/db"
    with pytest.raises(ConfigError) as e:
        asyncio.run(check_services(_services(tmp_path, storage=url), timeout_s=0.5))
    msg = str(e.value)
    assert "storage.url (DATABASE_URL)" in msg and "PostgreSQL" in msg
    assert SECRET not in msg


def test_a_url_made_of_db_or_redis_variables_is_named_by_them(tmp_path, pg_url, redis_url):
    """DB_HOST=::1 (a trial's mistake of old, now bracketed) failed blaming DATABASE_URL,
    which the operator never set: the error names the variables the URL was made of."""
    from structlog.testing import capture_logs

    pg_host, _ = _host_port(pg_url)
    redis_host, redis_port = _host_port(redis_url)
    env = {"DB_HOST": pg_host, "DB_PORT": str(redis_port), "DB_PASSWORD": SECRET}
    config = load_config([write_config(tmp_path)], env=env)
    with pytest.raises(ConfigError) as e:
        asyncio.run(check_services(config, timeout_s=0.5))
    msg = str(e.value)
    assert "storage.url (DB_HOST, DB_PORT, DB_NAME, DB_USER, DB_PASSWORD)" in msg
    assert "DATABASE_URL" not in msg and SECRET not in msg
    env = {"REDIS_HOST": redis_host, "REDIS_PORT": str(_host_port(pg_url)[1])}
    config = load_config([write_config(tmp_path)], env=env)
    with capture_logs() as logs:  # Redis is a cache: a warning, naming the variables
        asyncio.run(check_services(config, timeout_s=0.5))
    [warned] = [e for e in logs if e["event"] == "preflight.redis_unreachable"]
    assert warned["setting"] == "cache.url (REDIS_HOST, REDIS_PORT, REDIS_PASSWORD, REDIS_DB)"
    # Set by a TRADINGD_ override (which wins over DB_HOST): named as that.
    env = {
        "TRADINGD_STORAGE__URL": f"postgresql://u@{pg_host}:{redis_port}/db",
        "DB_HOST": pg_host,
    }
    config = load_config([write_config(tmp_path)], env=env)
    with pytest.raises(ConfigError) as e:
        asyncio.run(check_services(config, timeout_s=0.5))
    assert "storage.url (TRADINGD_STORAGE__URL)" in str(e.value)


def test_an_unreachable_url_from_a_config_file_is_named_by_the_file(tmp_path, redis_url):
    """Security trial F6: `storage.url (DATABASE_URL) = ...: cannot connect` for a URL a -c
    file set, DATABASE_URL unset."""
    host, port = _host_port(redis_url)
    cfg = write_config(tmp_path, "")
    cfg.write_text(
        cfg.read_text().replace(
            f"sqlite:///{tmp_path / 'cli.db'}", f"postgresql://u:{SECRET}@{host}:{port}/db"
        )
    )
    config = load_config([cfg], env={})
    with pytest.raises(ConfigError) as e:
        asyncio.run(check_services(config, timeout_s=0.5))
    msg = str(e.value)
    assert f"storage.url (set in {cfg})" in msg and "PostgreSQL" in msg
    assert "DATABASE_URL" not in msg and SECRET not in msg


def test_postgres_database_that_does_not_exist(tmp_path, pg_url):
    url = pg_url.rsplit("/", 1)[0] + "/tradingd_no_such_db"
    with pytest.raises(ConfigError) as e:
        asyncio.run(check_services(_services(tmp_path, storage=url)))
    assert "storage.url (DATABASE_URL)" in str(e.value)
    assert "tradingd_no_such_db" in str(e.value)


def test_a_live_start_leaves_an_unreachable_postgres_to_the_stores_wait(
    tmp_path, pg_url, redis_url
):
    """`tradingd run` waits storage.start_retry_s for a database that is down (README); its
    preflight check exited at once (0.7 s), so under systemd a database restarting beside
    the daemon failed the unit. A server that answers and refuses stays an error at once."""
    import socket

    from structlog.testing import capture_logs

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = f"postgresql://u:{SECRET}@127.0.0.1:{port}/test"
    config = _services(tmp_path, storage=down)
    with capture_logs() as logs:
        asyncio.run(check_services(config, live=True))
    [event] = [e for e in logs if e["event"] == "preflight.database_unavailable"]
    assert event["waits_s"] == config.storage.start_retry_s > 0
    assert SECRET not in str(event)
    with pytest.raises(ConfigError, match="cannot connect to PostgreSQL"):
        asyncio.run(check_services(config))  # a backtest does not wait
    missing = pg_url.rsplit("/", 1)[0] + "/tradingd_no_such_db"
    with pytest.raises(ConfigError, match="tradingd_no_such_db"):
        asyncio.run(check_services(_services(tmp_path, storage=missing), live=True))
    # Something that is not a PostgreSQL listens there, or no such host: said at once.
    host, redis_port = _host_port(redis_url)
    for wrong in (
        f"postgresql://u@{host}:{redis_port}/db",
        "postgresql://u@no-such-host.invalid/db",
    ):
        with pytest.raises(ConfigError, match=r"storage\.url"):
            asyncio.run(check_services(_services(tmp_path, storage=wrong), 2.0, live=True))


def test_backtest_with_a_bad_redis_stops_before_the_replay(tmp_path, redis_url):
    host, port = _host_port(redis_url)
    r = tradingd(
        ["backtest", "-c", str(write_config(tmp_path))],
        cwd=tmp_path,
        env={"REDIS_URL": f"redis://{host}:{port}/99"},
    )
    assert r.returncode == 2
    assert "tradingd: error: cache.url (REDIS_URL)" in r.stderr and "99" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cli.db").exists()


def test_redis_down_at_start_is_a_warning_not_an_error(tmp_path):
    """Redis is a cache: a daemon (re)started while it is down runs from the process cache
    (issue 9), so preflight says so instead of refusing to start."""
    import socket

    from structlog.testing import capture_logs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    url = f"redis://:{SECRET}@127.0.0.1:{port}/0"
    with capture_logs() as logs:
        asyncio.run(check_services(_services(tmp_path, cache=url), timeout_s=1.0))
    warned = [e for e in logs if e["event"] == "preflight.redis_unreachable"]
    assert len(warned) == 1 and SECRET not in str(warned[0])


def test_a_redis_that_accepts_but_never_answers_is_a_warning_not_an_error(tmp_path):
    """A hung Redis (the port accepts, nothing answers) stopped the daemon with exit 2
    ("cannot talk to Redis: TimeoutError"): redis-py's own TimeoutError is not the builtin
    one, so it missed the warning a refused port gets. Redis is a cache either way."""
    import socket
    import time

    from structlog.testing import capture_logs

    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)  # the kernel completes the connection; nothing ever reads or answers
        port = hung.getsockname()[1]
        url = f"redis://:{SECRET}@127.0.0.1:{port}/0"
        began = time.monotonic()
        with capture_logs() as logs:
            asyncio.run(check_services(_services(tmp_path, cache=url), timeout_s=0.3))
        took = time.monotonic() - began
    [warned] = [e for e in logs if e["event"] == "preflight.redis_unreachable"]
    assert "Timeout" in warned["error"] and SECRET not in str(warned)
    assert took < 5.0  # bounded by the check's timeout, not left hanging


def test_help_says_what_tradingd_is(capsys):
    """The first line of --help is a whole sentence: it was a list of some of the commands,
    cut off mid-way ("... fetch | features |")."""
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "tradingd: a paper-trading daemon and replay backtester, one engine for both.\n" in out


def test_report_help_says_attribution_replays_with_the_runs_own_configuration(capsys):
    """It said the replay used "the -c configuration": without -c it uses the run's own
    config.json (the README's word, and what `_report` does)."""
    with pytest.raises(SystemExit) as e:
        main(["report", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal
    attribution = out[out.rindex("--attribution") : out.rindex("--no-validation")]
    assert "config.json" in attribution and "the -c configuration" not in attribution


def test_report_help_names_every_table_the_analysis_config_reads(capsys):
    """--analysis-config's help named only [analysis] and [report]; [validation] and
    [attribution] are read too (docs/REPORTS.md, `_analysis_tables`)."""
    from tradingd.__main__ import _ANALYSIS_TABLES

    with pytest.raises(SystemExit) as e:
        main(["report", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal
    option = out[out.rindex("--analysis-config") : out.rindex("--attribution")]
    assert [t for t in _ANALYSIS_TABLES if f"[{t}]" not in option] == []


def test_a_retraining_window_too_short_for_the_model_is_an_error_not_a_traceback(
    cli, tmp_path, monkeypatch
):
    """`--window-bars 5` passed the option check and ended in training's ValueError with a
    traceback ("no complete window ...")."""
    import tradingd_models.retrain as retraining

    import tradingd.app
    from tradingd import preflight

    monkeypatch.setattr(preflight, "_importable", lambda module: True)
    monkeypatch.setattr(tradingd.app, "load_data", lambda config: "panel")

    def retrain(config, panel, root, policy):  # type: ignore[no-untyped-def]
        raise ValueError("no complete window of 60 bars in 5 bars")

    monkeypatch.setattr(retraining, "retrain", retrain)
    code, out, err = cli("retrain", "-c", str(write_config(tmp_path)), "--window-bars", "5")
    assert code == 2 and out == "" and "Traceback" not in err
    assert "retraining failed: no complete window" in err and "--window-bars 5" in err


def test_retrain_keep_is_checked():
    from tradingd_models.retrain import RetrainPolicy

    with pytest.raises(ConfigError, match="keep"):
        RetrainPolicy(keep=0)


def test_a_credential_of_the_environment_in_the_wrong_setting_is_not_printed(
    cli, tmp_path, monkeypatch
):
    """`TRADINGD_HEALTH__PORT=$TRADINGD_HEALTH_TOKEN` printed the token in the error line
    (`health.port must be an integer, got '...'`): log lines had the environment's mask,
    the printed line had not."""
    token = "SEKRIT-HEALTH-TOKEN-4242"
    monkeypatch.setenv("TRADINGD_HEALTH_TOKEN", token)
    monkeypatch.setenv("TRADINGD_HEALTH__PORT", token)
    code, out, err = cli("config", "-c", str(write_config(tmp_path)))
    assert code == 2
    assert token not in out + err
    assert "health.port" in err and "***" in err


def test_a_relative_folders_error_names_its_absolute_path_too(tmp_path, monkeypatch):
    """Sandbox trial: "log.audit_dir = 'var/audit' ... nearest existing folder var" under a
    service, where the working directory (WorkingDirectory=) is nowhere in the message."""
    unwritable = unwritable_dir(tmp_path)
    monkeypatch.chdir(unwritable)
    with pytest.raises(ConfigError) as refused:
        check_writable_dir("var/audit", "log.audit_dir")
    text = str(refused.value)
    assert f"log.audit_dir = 'var/audit' ({unwritable / 'var' / 'audit'})" in text
    assert f"nearest existing folder {unwritable})" in text
    monkeypatch.chdir(tmp_path)
    (tmp_path / "var").write_text("a file")
    with pytest.raises(ConfigError) as refused:
        check_writable_dir("var/audit", "log.audit_dir")
    text = str(refused.value)
    assert f"'var/audit' ({tmp_path / 'var' / 'audit'})" in text
    assert f"{tmp_path / 'var'} exists and is not a folder" in text
