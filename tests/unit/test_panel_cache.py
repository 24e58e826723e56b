"""The on-disk Panel cache: hits equal fresh loads, every decisive change is a miss, the
directory stays bounded (LRU), damage and unwritable directories never fail a run, and the
load's repairs are logged again on a hit."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from structlog.testing import capture_logs

from tradingd.core.errors import DataError
from tradingd.feeds import panel_cache
from tradingd.feeds.loaders import load_panel
from tradingd.feeds.panel import FIELDS, Panel
from tradingd.feeds.panel_cache import cached_load_panel, default_cache_dir
from tradingd.feeds.validate import RepairSummary

BIG = 1 << 30
HEADER = "date,symbol,open,high,low,close,volume,split"
# Symbol B has no bar on 2020-01-06: the panel holds NaN there (split 1.0).
ROWS = [
    "2020-01-02,A,10,11,9,10,100,1",
    "2020-01-03,A,10,11,9,10.5,200,1",
    "2020-01-06,A,10.5,12,10,11,300,1",
    "2020-01-07,A,11,12,10,11.5,0,1",
    "2020-01-02,B,20,21,19,20,100,1",
    "2020-01-03,B,20,21,19,20.5,200,1",
    "2020-01-07,B,21,22,20,21.5,400,1",
]


def write_csv(path: Path, rows: list[str] = ROWS, header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


class Counting:
    """A `load` that counts how often the real load ran."""

    def __init__(self, **params: Any) -> None:
        self.params = params
        self.calls = 0

    def __call__(self, summary: RepairSummary) -> Panel:
        self.calls += 1
        return load_panel(**self.params, summary=summary)


def cached(cache: Path, max_bytes: int = BIG, **params: Any) -> tuple[Panel, Counting]:
    load = Counting(**params)
    return cached_load_panel(cache, max_bytes, load, **params), load


def run_twice(cache: Path, first: dict[str, Any], second: dict[str, Any]) -> int:
    """How many real loads two calls made (1: the second was a hit)."""
    load = Counting(**first)
    cached_load_panel(cache, BIG, load, **first)
    load.params = second
    cached_load_panel(cache, BIG, load, **second)
    return load.calls


def assert_same_panel(got: Panel, want: Panel) -> None:
    assert got.symbols == want.symbols
    assert all(type(s) is str for s in got.symbols)
    assert got.times.dtype == np.dtype("datetime64[ns]")
    np.testing.assert_array_equal(got.times, want.times)
    for name in FIELDS:
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype == np.float64, name
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=name)
        np.testing.assert_array_equal(a, b, err_msg=name)


def entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.npz")) if cache.exists() else []


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "bars.csv")


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def params(path: Path, **kw: Any) -> dict[str, Any]:
    return {"source": "csv", "path": str(path), "layout": "long", **kw}


# --- hits -------------------------------------------------------------------------------------


def test_second_call_is_a_hit_equal_to_a_fresh_load(csv_file: Path, cache: Path) -> None:
    first, load = cached(cache, **params(csv_file))
    second = cached_load_panel(cache, BIG, load, **params(csv_file))
    assert load.calls == 1
    fresh = load_panel(**params(csv_file))
    assert np.isnan(fresh.close).sum() == 1  # the missing bar is in the comparison
    assert_same_panel(first, fresh)
    assert_same_panel(second, fresh)
    assert len(entries(cache)) == 1


def test_parquet_per_symbol_directory_hit(tmp_path: Path, cache: Path) -> None:
    d = tmp_path / "bars"
    d.mkdir()
    frame = pd.read_csv(write_csv(tmp_path / "all.csv"))
    for sym, part in frame.groupby("symbol"):
        part.drop(columns="symbol").to_parquet(d / f"{sym}.parquet")
    p = {"source": "parquet", "path": str(d), "layout": "per_symbol"}
    first, load = cached(cache, **p)
    second = cached_load_panel(cache, BIG, load, **p)
    assert load.calls == 1
    assert_same_panel(second, load_panel(**p))
    assert_same_panel(first, second)


def test_load_none_defaults_to_load_panel(csv_file: Path, cache: Path) -> None:
    got = cached_load_panel(cache, BIG, **params(csv_file))
    assert_same_panel(got, load_panel(**params(csv_file)))
    assert len(entries(cache)) == 1


# --- misses -----------------------------------------------------------------------------------


def test_changed_content_is_a_miss(csv_file: Path, cache: Path) -> None:
    _, load = cached(cache, **params(csv_file))
    write_csv(csv_file, [*ROWS, "2020-01-08,A,11.5,13,11,12,500,1"])
    got = cached_load_panel(cache, BIG, load, **params(csv_file))
    assert load.calls == 2
    assert len(got.times) == 5


def test_touched_file_is_a_miss(csv_file: Path, cache: Path) -> None:
    _, load = cached(cache, **params(csv_file))
    st = csv_file.stat()
    os.utime(csv_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    cached_load_panel(cache, BIG, load, **params(csv_file))
    assert load.calls == 2


@pytest.mark.parametrize("how", ["in_place", "renamed_in"])
def test_same_size_content_with_the_old_mtime_is_a_miss(csv_file: Path, cache: Path, how) -> None:
    """What `cp -p`, `rsync -t` or a tar extraction leave: other bytes, the same size, the
    old modification time. Not a stale hit: the ctime (and, renamed in, the inode) differ."""
    _, load = cached(cache, **params(csv_file))
    before = csv_file.stat()
    text = csv_file.read_text()
    changed = text.replace(",100,1", ",101,1", 1)
    assert changed != text and len(changed) == len(text)
    target = csv_file if how == "in_place" else csv_file.with_suffix(".new")
    target.write_text(changed)
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    if how == "renamed_in":
        os.replace(target, csv_file)
    after = csv_file.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert after.st_ctime_ns != before.st_ctime_ns or after.st_ino != before.st_ino
    got = cached_load_panel(cache, BIG, load, **params(csv_file))
    assert load.calls == 2
    assert_same_panel(got, load_panel(**params(csv_file)))


@pytest.mark.parametrize(
    "change",
    [
        {"symbols": ["A"]},
        {"symbols": ["A", "B"]},
        {"start": "2020-01-03"},
        {"end": "2020-01-06"},
        {"repair": ["gaps"]},
        {"max_gap_days": 6.0},
        {"max_spike": 5.0},
        {"max_volume": 1e9},
        {"timezone": "Europe/London"},
        {"layout": "auto"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_any_changed_parameter_is_a_miss(
    csv_file: Path, cache: Path, change: dict[str, Any]
) -> None:
    assert run_twice(cache, params(csv_file), params(csv_file, **change)) == 2
    assert len(entries(cache)) == 2


def test_file_added_to_directory_is_a_miss(tmp_path: Path, cache: Path) -> None:
    d = tmp_path / "bars"
    d.mkdir()
    one = [r.replace(",A,", ",") for r in ROWS if ",A," in r]
    write_csv(d / "A.csv", one, header=HEADER.replace("symbol,", ""))
    p = {"source": "csv", "path": str(d), "layout": "per_symbol", "symbols": ["A"]}
    _, load = cached(cache, **p)
    write_csv(d / "B.csv", one, header=HEADER.replace("symbol,", ""))
    cached_load_panel(cache, BIG, load, **p)
    cached_load_panel(cache, BIG, load, **p)
    assert load.calls == 2


def test_changed_code_is_a_miss(csv_file: Path, cache: Path, monkeypatch) -> None:
    _, load = cached(cache, **params(csv_file))
    changed = {**panel_cache._code_fingerprint(), "validate.py": "0" * 64}
    monkeypatch.setattr(panel_cache, "_code_fingerprint", lambda: changed)
    cached_load_panel(cache, BIG, load, **params(csv_file))
    assert load.calls == 2


# --- bounds -----------------------------------------------------------------------------------


def _entry_size(csv_file: Path, tmp_path: Path) -> int:
    probe = tmp_path / "probe"
    cached(probe, **params(csv_file))
    (entry,) = entries(probe)
    return entry.stat().st_size


def test_eviction_keeps_total_under_max_bytes(csv_file: Path, cache: Path, tmp_path) -> None:
    size = _entry_size(csv_file, tmp_path)
    limit = 2 * size + size // 2  # room for two entries (same data, different keys)
    for spike in (11.0, 12.0, 13.0, 14.0):
        cached(cache, limit, **params(csv_file, max_spike=spike))
        assert sum(e.stat().st_size for e in entries(cache)) <= limit
    assert len(entries(cache)) == 2
    # The last one stored is kept: a repeat of it is a hit.
    _, load = cached(cache, limit, **params(csv_file, max_spike=14.0))
    assert load.calls == 0


def test_eviction_is_least_recently_used(csv_file: Path, cache: Path, tmp_path) -> None:
    size = _entry_size(csv_file, tmp_path)
    limit = 2 * size + size // 2
    old, newer, third = (params(csv_file, max_spike=s) for s in (11.0, 12.0, 13.0))
    cached(cache, limit, **old)
    (old_entry,) = entries(cache)
    cached(cache, limit, **newer)
    (newer_entry,) = [e for e in entries(cache) if e != old_entry]
    now = time.time()
    os.utime(old_entry, (now - 200, now - 200))  # stored first ...
    os.utime(newer_entry, (now - 100, now - 100))
    _, hit = cached(cache, limit, **old)  # ... but used last
    assert hit.calls == 0
    cached(cache, limit, **third)
    assert old_entry.exists()
    assert not newer_entry.exists()
    assert len(entries(cache)) == 2


def test_entry_larger_than_max_bytes_is_not_stored(csv_file: Path, cache: Path) -> None:
    with capture_logs() as logs:
        got, load = cached(cache, 64, **params(csv_file))
        cached_load_panel(cache, 64, load, **params(csv_file))
    assert load.calls == 2
    assert entries(cache) == []
    assert_same_panel(got, load_panel(**params(csv_file)))
    skipped = events(logs, "data.cache_skipped")
    assert len(skipped) == 2 and skipped[0]["log_level"] == "info"
    assert skipped[0]["max_bytes"] == 64


@pytest.mark.parametrize("max_bytes", [0, -1])
def test_max_bytes_not_positive_disables(csv_file: Path, cache: Path, max_bytes: int) -> None:
    assert run_twice_limited(cache, max_bytes, params(csv_file)) == 2
    assert not cache.exists()


def test_no_cache_dir_disables(csv_file: Path) -> None:
    load = Counting(**params(csv_file))
    cached_load_panel(None, BIG, load, **params(csv_file))
    cached_load_panel(None, BIG, load, **params(csv_file))
    assert load.calls == 2


def run_twice_limited(cache: Path, max_bytes: int, p: dict[str, Any]) -> int:
    load = Counting(**p)
    cached_load_panel(cache, max_bytes, load, **p)
    cached_load_panel(cache, max_bytes, load, **p)
    return load.calls


# --- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: len(b) // 2],  # truncated write
        lambda b: b"",  # empty after a crash
        lambda b: b"not a zip file at all",
        lambda b: b[:-200] + bytes(200),  # the end zeroed (the zip directory)
    ],
    ids=["truncated", "empty", "garbage", "zeroed_tail"],
)
def test_corrupt_entry_is_reloaded_and_replaced(csv_file: Path, cache: Path, damage: Any) -> None:
    _, load = cached(cache, **params(csv_file))
    (entry,) = entries(cache)
    entry.write_bytes(damage(entry.read_bytes()))
    with capture_logs() as logs:
        got = cached_load_panel(cache, BIG, load, **params(csv_file))
    assert load.calls == 2
    (warning,) = events(logs, "data.cache_unreadable")
    assert warning["log_level"] == "warning"
    assert warning["path"] == str(entry)
    assert warning["error"]
    assert_same_panel(got, load_panel(**params(csv_file)))
    again = cached_load_panel(cache, BIG, load, **params(csv_file))
    assert load.calls == 2  # stored again, then a hit
    assert_same_panel(again, got)


def test_corrupt_entry_is_deleted_even_when_the_reload_fails(csv_file: Path, cache: Path) -> None:
    cached(cache, **params(csv_file))
    (entry,) = entries(cache)
    entry.write_bytes(b"junk")

    def failing(summary: RepairSummary) -> Panel:
        raise DataError("disk gone", source="x")

    with pytest.raises(DataError, match="disk gone"):
        cached_load_panel(cache, BIG, failing, **params(csv_file))
    assert not entry.exists()


def test_entry_with_a_wrong_array_is_unreadable(csv_file: Path, cache: Path) -> None:
    _, load = cached(cache, **params(csv_file))
    (entry,) = entries(cache)
    with np.load(entry, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["close"] = arrays["close"].astype(np.float32)
    with open(entry, "wb") as f:
        np.savez(f, **arrays)
    with capture_logs() as logs:
        got = cached_load_panel(cache, BIG, load, **params(csv_file))
    assert load.calls == 2
    assert len(events(logs, "data.cache_unreadable")) == 1
    assert got.close.dtype == np.float64


def test_unwritable_cache_dir_warns_once_and_runs(csv_file: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    cache = blocker / "cache"
    with capture_logs() as logs:
        got, load = cached(cache, **params(csv_file))
    assert load.calls == 1
    (warning,) = events(logs, "data.cache_unwritable")
    assert warning["log_level"] == "warning"
    assert str(blocker) in warning["path"]
    assert warning["error"]
    assert not events(logs, "data.cache_unreadable")
    assert_same_panel(got, load_panel(**params(csv_file)))


def test_errors_of_the_load_propagate_unchanged(tmp_path: Path, cache: Path) -> None:
    bad = write_csv(tmp_path / "bad.csv", [*ROWS, "2020-01-08,A,-1,13,11,12,500,1"])
    with pytest.raises(DataError, match="price <= 0"):
        cached(cache, **params(bad))
    assert entries(cache) == []

    def failing(summary: RepairSummary) -> Panel:
        raise DataError("boom", source="x")

    with pytest.raises(DataError, match="boom"):
        cached_load_panel(cache, BIG, failing, **params(bad))


def test_missing_path_is_the_loaders_error(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        cached(cache, **params(tmp_path / "nope.csv"))
    assert not cache.exists()


def test_leftover_temp_file_is_never_an_entry(csv_file: Path, cache: Path) -> None:
    _, load = cached(cache, **params(csv_file))
    (entry,) = entries(cache)
    key = entry.name.removesuffix(".npz")
    stale = cache / f".{key}.1.dead.tmp"
    stale.write_bytes(entry.read_bytes()[:100])
    entry.unlink()
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    cached_load_panel(cache, BIG, load, **params(csv_file))
    assert load.calls == 2
    assert not stale.exists()  # a killed writer's leftover is cleaned up
    assert len(entries(cache)) == 1


# --- logs -------------------------------------------------------------------------------------


def test_repairs_are_logged_again_on_a_hit(tmp_path: Path, cache: Path) -> None:
    rows = [*ROWS[:-1], "2020-01-07,B,14,14.5,13.5,14.3,600,1.49999925"]  # a 3-for-2
    p = params(write_csv(tmp_path / "split.csv", rows))
    with capture_logs() as miss_logs:
        first, load = cached(cache, **p)
    with capture_logs() as hit_logs:
        second = cached_load_panel(cache, BIG, load, **p)
    assert load.calls == 1
    assert first.split[-1, 1] == second.split[-1, 1] == 1.5

    (original,) = events(miss_logs, "data.repairs")
    assert original["rows"] == {"split_snap": 1}
    assert "cached" not in original
    (again,) = events(hit_logs, "data.repairs")
    assert again.pop("cached") is True
    assert again == original  # same event, level and fields
    # So is a suspect value's warning (this file has no dividend column).
    # (B lacks the bar of 2020-01-06 that A has: `missing_bar`, said again too.)
    suspects = events(miss_logs, "data.suspect")
    assert [e["kind"] for e in suspects] == ["no_corporate_actions", "missing_bar"]
    assert all(e["log_level"] == "warning" for e in suspects)
    again_suspects = events(hit_logs, "data.suspect")
    assert [e["kind"] for e in again_suspects] == ["missing_bar", "no_corporate_actions"]
    by_kind = {e["kind"]: e for e in again_suspects}
    assert by_kind["no_corporate_actions"] == suspects[0]

    # The per-symbol detail is the first load's, at debug level: not said again.
    (detail,) = events(miss_logs, "data.repair")
    assert detail["log_level"] == "debug"
    assert not events(hit_logs, "data.repair")

    (hit,) = events(hit_logs, "data.cache_hit")
    (entry,) = entries(cache)
    assert hit["log_level"] == "info"
    assert hit["path"] == str(entry)
    assert entry.name.startswith(hit["key"]) and 8 <= len(hit["key"]) < 64
    (stored,) = events(miss_logs, "data.cache_stored")
    assert stored["log_level"] == "debug"
    assert stored["path"] == str(entry)
    assert not events(miss_logs, "data.cache_hit")
    assert not events(hit_logs, "data.cache_stored")


def test_clean_data_replays_nothing(tmp_path: Path, cache: Path) -> None:
    # Clean: nothing repaired, and split and dividend columns (none is a suspect value).
    # (B's bar of 2020-01-06 given: a bar one symbol lacks is a suspect value too.)
    rows = [*ROWS[:-1], "2020-01-06,B,20.5,21,20,21,300,1", ROWS[-1]]
    clean = write_csv(tmp_path / "clean.csv", [f"{r},0" for r in rows], f"{HEADER},dividend")
    cached(cache, **params(clean))
    with capture_logs() as logs:
        cached(cache, **params(clean))
    assert [e["event"] for e in logs] == ["data.cache_hit"]


# --- bundled and defaults ---------------------------------------------------------------------


def test_bundled_never_touches_the_cache(cache: Path) -> None:
    stub = Panel(
        times=np.array(["2020-01-02"], dtype="datetime64[ns]"),
        symbols=("SP500",),
        **{f: np.ones((1, 1)) for f in FIELDS},
    )
    calls = []

    def load(summary: RepairSummary) -> Panel:
        calls.append(1)
        return stub

    for _ in range(2):
        assert cached_load_panel(cache, BIG, load, source="bundled") is stub
    assert len(calls) == 2
    assert not cache.exists()


def test_default_cache_dir(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "tradingd" / "panels"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "tradingd" / "panels"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert default_cache_dir() == Path.home() / ".cache" / "tradingd" / "panels"
