"""The data files' digest (`feeds.fingerprint`): what a backtest's run id and record name
its data by, kept under the data cache's key so that an unchanged file is not read again."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tradingd.app import run_id_for
from tradingd.config import load_config
from tradingd.feeds import fingerprint
from tradingd.feeds.fingerprint import MEMO_FILE, data_fingerprint


@pytest.fixture(autouse=True)
def _fresh_memo(monkeypatch):
    monkeypatch.setattr(fingerprint, "_memo", type(fingerprint._memo)())


def _count_reads(monkeypatch) -> list[str]:
    read: list[str] = []
    real = hashlib.file_digest

    def counting(fh, digest):
        read.append(fh.name)
        return real(fh, digest)

    monkeypatch.setattr(fingerprint.hashlib, "file_digest", counting)
    return read


def test_a_file_is_its_sha256_and_a_folder_the_sha256_of_its_listing(tmp_path):
    f = tmp_path / "bars.csv"
    f.write_bytes(b"time,symbol,close\n2020-01-02,AAA,1.0\n")
    sha = hashlib.sha256(f.read_bytes()).hexdigest()
    assert data_fingerprint("csv", str(f)) == {
        "source": "csv",
        "sha256": sha,
        "files": 1,
        "bytes": f.stat().st_size,
    }
    folder = tmp_path / "per_symbol"
    folder.mkdir()
    (folder / "BBB.csv").write_bytes(b"b")
    (folder / "AAA.csv").write_bytes(b"aa")
    (folder / "notes.txt").write_bytes(b"not data")
    listing = "".join(
        f"{hashlib.sha256(data).hexdigest()}  {name}\n"
        for name, data in (("AAA.csv", b"aa"), ("BBB.csv", b"b"))
    )
    got = data_fingerprint("csv", str(folder))
    assert got == {
        "source": "csv",
        "sha256": hashlib.sha256(listing.encode()).hexdigest(),
        "files": 2,
        "bytes": 3,
    }
    assert data_fingerprint("bundled", None) is None
    assert data_fingerprint("csv", str(tmp_path / "missing.csv")) is None


def test_a_rewrite_of_the_same_size_and_mtime_is_another_digest(tmp_path):
    f = tmp_path / "bars.csv"
    f.write_bytes(b"2020-01-02,AAA,10.5\n")
    first = data_fingerprint("csv", str(f), tmp_path / "cache")
    st = f.stat()
    f.write_bytes(b"2020-01-02,AAA,15.0\n")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    again = data_fingerprint("csv", str(f), tmp_path / "cache")
    assert first is not None and again is not None
    assert again["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest() != first["sha256"]


def test_an_unchanged_file_is_not_read_again_in_a_new_process(tmp_path, monkeypatch):
    f = tmp_path / "bars.csv"
    f.write_bytes(b"2020-01-02,AAA,10.5\n")
    cache = tmp_path / "cache"
    read = _count_reads(monkeypatch)
    first = data_fingerprint("csv", str(f), cache)
    assert len(read) == 1 and (cache / MEMO_FILE).is_file()
    assert data_fingerprint("csv", str(f), cache) == first and len(read) == 1
    monkeypatch.setattr(fingerprint, "_memo", type(fingerprint._memo)())  # a new process
    assert data_fingerprint("csv", str(f), cache) == first and len(read) == 1
    # A damaged memo is a hash, never a wrong digest or an error.
    (cache / MEMO_FILE).write_text("{not json")
    monkeypatch.setattr(fingerprint, "_memo", type(fingerprint._memo)())
    assert data_fingerprint("csv", str(f), cache) == first and len(read) == 2


def test_the_memo_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(fingerprint, "MEMO_ENTRIES", 3)
    cache = tmp_path / "cache"
    for i in range(5):
        f = tmp_path / f"bars{i}.csv"
        f.write_bytes(b"x" * (i + 1))
        data_fingerprint("csv", str(f), cache)
    assert len(fingerprint._memo) == 3
    import json

    assert len(json.loads((cache / MEMO_FILE).read_text())["digests"]) == 3


def test_a_folder_of_more_files_than_the_memo_holds_is_read_once(tmp_path, monkeypatch):
    """One memo entry a file: a folder of 1,100 files (the memo holds 1,024) had 76 of them
    read again at every call, in a new process too. A folder's version is one entry now."""
    folder = tmp_path / "per_symbol"
    folder.mkdir()
    for i in range(1100):
        (folder / f"S{i:04d}.csv").write_bytes(f"{i}".encode())
    cache = tmp_path / "cache"
    read = _count_reads(monkeypatch)
    first = data_fingerprint("csv", str(folder), cache)
    assert first is not None and first["files"] == 1100 and len(read) == 1100
    assert data_fingerprint("csv", str(folder), cache) == first and len(read) == 1100
    monkeypatch.setattr(fingerprint, "_memo", type(fingerprint._memo)())  # a new process
    assert data_fingerprint("csv", str(folder), cache) == first and len(read) == 1100
    import json

    assert len(json.loads((cache / MEMO_FILE).read_text())["digests"]) == 1
    (folder / "S0007.csv").write_bytes(b"changed")  # another version of the folder
    assert data_fingerprint("csv", str(folder), cache)["sha256"] != first["sha256"]


def _config(tmp_path: Path, data: Path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[data]\nsource = "csv"\npath = "{data.as_posix()}"\n'
        f'[cache]\ndata_dir = "{(tmp_path / "cache").as_posix()}"\n'
    )
    return load_config([cfg], env={})


def test_a_backtests_run_id_names_its_data_a_live_runs_does_not(tmp_path):
    data = tmp_path / "bars.csv"
    data.write_bytes(b"2020-01-02,AAA,10.5\n")
    config = _config(tmp_path, data)
    backtest, live = run_id_for(config, "backtest"), run_id_for(config, "live")
    assert run_id_for(config, "backtest") == backtest  # stable for the same bytes
    st = data.stat()
    data.write_bytes(b"2020-01-02,AAA,15.0\n")
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert run_id_for(config, "backtest") != backtest
    assert run_id_for(config, "live") == live
    # The bundled series: the id it always had (no data digest in it).
    bundled = load_config([], env={})
    assert run_id_for(bundled, "backtest").startswith("default-backtest-")


def test_a_walk_forwards_id_names_its_data_too(tmp_path):
    """A walk-forward's id is its output folder's name and its folds' prefix: on a file
    rewritten in place (its mtime restored) the rerun used the same folder and replaced
    the first analysis."""
    from tradingd.analysis.walkforward_cli import default_out
    from tradingd.analysis.walkforward_folds import WalkForwardConfig

    data = tmp_path / "bars.csv"
    data.write_bytes(b"2020-01-02,AAA,10.5\n")
    config = _config(tmp_path, data)
    wf = WalkForwardConfig()
    first, folder = run_id_for(config, "walkforward"), default_out(config, wf)
    assert run_id_for(config, "walkforward") == first  # stable for the same bytes
    st = data.stat()
    data.write_bytes(b"2020-01-02,AAA,15.0\n")
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert run_id_for(config, "walkforward") != first
    assert default_out(config, wf) != folder
