"""A backtest keeps the audit folder at the newest `log.audit_keep_runs` backtests' logs.

Every backtest left its `<run_id>.jsonl` in the audit folder for good (14.5 MB for the
README's S&P 500 run): a hundred variants a day, 1.5 GB a day that nothing removed. Live
runs' logs, and a log whose backtest is going on in another process, are never removed."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import make_panel
from structlog.testing import capture_logs

from tradingd.audit import AuditLog
from tradingd.core.errors import ConfigError


def _config(engine_config, run_id: str, keep: int):
    """A replay of its own run id on a memory store (a sweep's variants), sharing the audit
    folder of engine_config."""
    return dataclasses.replace(
        engine_config,
        storage=dataclasses.replace(engine_config.storage, url="sqlite:///:memory:"),
        run=dataclasses.replace(engine_config.run, run_id=run_id),
        log=dataclasses.replace(engine_config.log, audit_keep_runs=keep),
    )


def _replay(config, panel):
    from tradingd.app import build_engine

    return build_engine(config, "backtest", panel=panel)


def _logs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.jsonl*") if not p.name.endswith(".live"))


def _age(path: Path, days: float) -> None:
    """The file's last write `days` ago: older than every run of the test."""
    t = datetime.now(UTC).timestamp() - days * 86400
    os.utime(path, (t, t))


async def test_n_plus_3_backtests_leave_the_newest_n_logs_and_say_so(engine_config):
    audit = Path(engine_config.log.audit_dir)
    panel = make_panel(n_bars=120, split_at=None)
    with capture_logs() as logs:
        for i in range(5):
            config = _config(engine_config, f"bt-{i}", keep=2)
            result = await _replay(config, panel).run_until_done()
            assert result.fills > 0
    assert _logs(audit) == ["bt-3.jsonl", "bt-4.jsonl"]
    removed = [e for e in logs if e["event"] == "audit.old_runs_removed"]
    # One line per backtest that removed any (the third, fourth and fifth: one each).
    assert [e["runs"] for e in removed] == [1, 1, 1]
    assert all(e["folder"] == str(audit) and e["keep"] == 2 for e in removed)
    # The lock files stay (never unlinked: instance_lock), one per run id.
    assert len(list(audit.glob("*.lock"))) == 5


async def test_a_rerun_counts_as_the_newest_and_zero_keeps_every_log(engine_config):
    audit = Path(engine_config.log.audit_dir)
    panel = make_panel(n_bars=120, split_at=None)
    for run_id in ("a", "b", "c"):
        await _replay(_config(engine_config, run_id, keep=0), panel).run_until_done()
    assert _logs(audit) == ["a.jsonl", "b.jsonl", "c.jsonl"]
    # "a" again: the newest, with "c"; "b" is the oldest left and goes.
    await _replay(_config(engine_config, "a", keep=2), panel).run_until_done()
    assert _logs(audit) == ["a.jsonl", "c.jsonl"]


async def test_a_live_runs_log_is_never_removed_by_a_backtest(engine_config):
    audit = Path(engine_config.log.audit_dir)
    # A live run's log (its session marks it) and one written before the marks existed
    # (a session line, no mark), both older than every backtest, and a set-aside one.
    live = AuditLog(audit, "paper-1", flush_interval_s=0.0)
    live.session(started_at=datetime.now(UTC), resumed=False)
    live.close()
    old = audit / "paper-0.jsonl"
    old.write_text('{"event": "session", "pid": 1, "resumed": false}\n{"event": "order"}\n')
    aside = audit / "paper-2.before-20260101T000000Z.jsonl"
    aside.write_text('{"event": "order"}\n')
    rotated = audit / "paper-1.jsonl.1"
    rotated.write_text('{"event": "order"}\n')
    for p in (live.path, old, aside, rotated):
        _age(p, 30)
    panel = make_panel(n_bars=120, split_at=None)
    for i in range(3):
        await _replay(_config(engine_config, f"bt-{i}", keep=1), panel).run_until_done()
    assert _logs(audit) == sorted(
        ["bt-2.jsonl", "paper-0.jsonl", "paper-1.jsonl", "paper-1.jsonl.1", aside.name]
    )
    assert (audit / "paper-1.jsonl.live").exists()


async def test_a_log_of_a_backtest_going_on_in_another_process_is_kept(engine_config):
    """Two runs at once: the first is held in its 60th bar with its log on disk and older
    than every other; the second's start removes the other old log but not the first's."""
    audit = Path(engine_config.log.audit_dir)
    panel = make_panel(n_bars=200)
    await _replay(_config(engine_config, "done", keep=0), panel).run_until_done()
    _age(audit / "done.jsonl", 20)
    solo = await _replay(_config(engine_config, "solo", keep=0), panel).run_until_done()
    (audit / "solo.jsonl").unlink()

    first = _replay(_config(engine_config, "going", keep=0), panel)
    held, go_on = asyncio.Event(), asyncio.Event()
    on_bar, seen = first.broker.on_bar, {"bars": 0}

    async def held_on_bar(bar):
        seen["bars"] += 1
        if seen["bars"] == 60:
            first.audit.flush(force=True)  # its lines so far on disk
            held.set()
            await go_on.wait()
        return await on_bar(bar)

    first.broker.on_bar = held_on_bar
    task = asyncio.create_task(first.run_until_done())
    try:
        await asyncio.wait_for(held.wait(), 60)
        going = audit / "going.jsonl"
        assert going.stat().st_size > 0
        _age(going, 30)
        await _replay(_config(engine_config, "second", keep=1), panel).run_until_done()
        assert _logs(audit) == ["going.jsonl", "second.jsonl"]  # "done" went, "going" stays
    finally:
        go_on.set()
    result = await asyncio.wait_for(task, 120)
    assert result.fills == solo.fills
    # Its log is whole: every fill the run booked is in it.
    lines = going.read_text().splitlines()
    assert sum('"event": "fill"' in line for line in lines) == solo.fills


@pytest.mark.parametrize("value", ["-1", '"ten"', "2.5", "true"])
def test_a_bad_keep_runs_value_is_a_config_error_naming_the_key(tmp_path, value):
    from tradingd.config import load_config

    cfg = tmp_path / "bad.toml"
    cfg.write_text(f"[log]\naudit_keep_runs = {value}\n")
    # (named as invalid, not as an unknown key)
    named = r"^log\.audit_keep_runs (= -1 is invalid|must be an int)"
    with pytest.raises(ConfigError, match=named):
        load_config([cfg], env={})


def test_the_default_keeps_twenty_and_the_environment_sets_it(tmp_path):
    from tradingd.config import load_config

    cfg = tmp_path / "empty.toml"
    cfg.write_text("")
    assert load_config([cfg], env={}).log.audit_keep_runs == 20
    env = {"TRADINGD_LOG__AUDIT_KEEP_RUNS": "3"}
    assert load_config([cfg], env=env).log.audit_keep_runs == 3


async def test_files_tradingd_never_wrote_are_kept_and_get_no_lock_file(engine_config):
    """A `*.jsonl` or `*.jsonl.<n>` of another tool in the folder, older than every run, is
    kept while real old backtests' logs go: any name matching the pattern counted as a
    backtest's log before, was removed, and was left a lock file of its own."""
    from tradingd.instance_lock import MEMORY, lock_file_path

    audit = Path(engine_config.log.audit_dir)
    panel = make_panel(n_bars=120, split_at=None)
    for i in range(2):
        await _replay(_config(engine_config, f"old-{i}", keep=0), panel).run_until_done()
        _age(audit / f"old-{i}.jsonl", 20)
    foreign = {
        "my-notes.jsonl": '{"note": "try a lower threshold"}\n',
        "trials.jsonl.3": '{"trial": 3, "sharpe": 0.4}\n',
        # an audit-looking line in a file whose name no run took: no run lock file
        "copied.jsonl": '{"event": "fill", "time": "2026-01-02T00:00:00+00:00"}\n',
    }
    for name, text in foreign.items():
        (audit / name).write_text(text)
        _age(audit / name, 30)
    # A run's name with a file of another tool beside its log: the name is kept whole.
    await _replay(_config(engine_config, "mixed", keep=0), panel).run_until_done()
    (audit / "mixed.jsonl.4").write_text("not an audit record\n")
    for p in audit.glob("mixed.jsonl*"):
        _age(p, 25)
    locks_before = set(audit.glob("*.lock"))
    with capture_logs() as logs:
        await _replay(_config(engine_config, "new", keep=1), panel).run_until_done()
    assert _logs(audit) == sorted([*foreign, "mixed.jsonl", "mixed.jsonl.4", "new.jsonl"])
    removed = [e for e in logs if e["event"] == "audit.old_runs_removed"]
    assert [e["runs"] for e in removed] == [2]  # old-0 and old-1
    lock = lock_file_path(f"sqlite:///{MEMORY}", "replay:new.jsonl", lock_dir=audit)
    assert set(audit.glob("*.lock")) == locks_before | {lock}


def test_delete_runs_files_keeps_a_log_tradingd_never_wrote(tmp_path):
    """`remove_run_log` (`tradingd delete-runs --files`) shares the rule: a name without a
    run lock file, or with a file that is no audit record, is kept with a reason."""
    from tradingd.audit_prune import remove_run_log
    from tradingd.instance_lock import MEMORY, lock_file_path

    (tmp_path / "gone.jsonl").write_text('{"event": "order"}\n')
    kept = remove_run_log(tmp_path, "gone", live=False)
    assert kept.files == 0 and "no run lock file" in kept.kept
    assert (tmp_path / "gone.jsonl").exists() and not list(tmp_path.glob("*.lock"))

    lock = lock_file_path(f"sqlite:///{MEMORY}", "replay:run.jsonl", lock_dir=tmp_path)
    lock.touch()
    (tmp_path / "run.jsonl").write_text('{"event": "order"}\n')
    (tmp_path / "run.jsonl.2").write_text("id,price\n1,2\n")
    kept = remove_run_log(tmp_path, "run", live=False)
    assert kept.files == 0 and "does not start with an audit record" in kept.kept
    assert (tmp_path / "run.jsonl.2").exists() and (tmp_path / "run.jsonl").exists()

    (tmp_path / "run.jsonl.2").unlink()
    done = remove_run_log(tmp_path, "run", live=False)
    assert (done.files, done.kept) == (1, "") and not (tmp_path / "run.jsonl").exists()
