"""`log.audit_dir` with `~` is the home's folder, as for the run lock, preflight and the
store: the audit log went to a folder named "~" in the working folder."""

from __future__ import annotations

import dataclasses

from conftest import make_panel


async def test_a_home_relative_audit_dir_is_the_homes_folder(engine_config, tmp_path, monkeypatch):
    """`log.audit_dir = "~/audit"` wrote a folder named "~" in the working folder (the run
    lock, preflight and `--output` checks took the home's)."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    config = dataclasses.replace(
        engine_config,
        storage=dataclasses.replace(engine_config.storage, url="sqlite:///:memory:"),
    )
    config = dataclasses.replace(config, log=dataclasses.replace(config.log, audit_dir="~/audit"))
    from tradingd.app import build_engine

    await build_engine(
        config, "backtest", panel=make_panel(n_bars=120, split_at=None)
    ).run_until_done()
    assert sorted(p.name for p in (home / "audit").glob("*.jsonl")) == ["test-run.jsonl"]
    assert list(work.iterdir()) == []
