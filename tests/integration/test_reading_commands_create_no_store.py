"""A command that only reads a stored run must not create the store it looks in. Sandbox
trial: `tradingd reset-halt RUN` run without the unit's DATABASE_URL answered "no checkpoint
in this store" after creating an empty var/paper.db and its lock files, and a start the
account lock refused still left var/other.db (its run lookup opened the store first)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tradingd.app import continued_live_run
from tradingd.config import load_config
from tradingd.core.errors import ConfigError
from tradingd.stored_run import reset_halt

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, url: str):  # type: ignore[no-untyped-def]
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f'[run]\nname = "readonly"\n[data]\nsymbols = ["AAA"]\n[feed]\nsource = "yahoo"\n'
        f'[broker]\nkind = "simulated"\n[storage]\nurl = "{url}"\n'
        f'[log]\naudit_dir = "{tmp_path / "audit"}"\n'
    )
    return load_config([ROOT / "config/default.toml", cfg], env={})


async def test_reset_halt_names_a_missing_sqlite_store_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, "sqlite:///var/paper.db")  # relative: the working directory's
    with pytest.raises(ConfigError) as refused:
        await reset_halt(config, "paper-live-0123456789ab")
    text = str(refused.value)
    assert "no store at sqlite:///var/paper.db" in text
    assert str(tmp_path / "var" / "paper.db") in text  # where it looked, absolute
    assert "DATABASE_URL" in text and "systemd/README.md" in text
    assert not (tmp_path / "var").exists()  # no database, no lock files, no folder


async def test_the_live_run_lookup_of_a_missing_sqlite_store_creates_nothing(tmp_path):
    config = _config(tmp_path, f"sqlite:///{tmp_path / 'var' / 'other.db'}")
    assert await continued_live_run(config) is None
    assert not (tmp_path / "var").exists()
