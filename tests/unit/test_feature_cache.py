"""The on-disk cache of prepared batch features (features/batch_cache.py): a rerun reads what
the first run prepared, exactly; anything that decides the values is a miss; a damaged,
oversized or unwritable cache never changes a result or fails a run."""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import pandas as pd
import pytest
from structlog.testing import capture_logs

import tradingd.features.source as source_mod
from tradingd.features.batch_cache import FeatureCache
from tradingd.features.catalog import Catalog
from tradingd.features.indicators import IndicatorConfig
from tradingd.features.source import BatchFeatureSource
from tradingd.feeds.panel import Panel

NAMES = ("ret_1", "rsi_14", "bb_position", "cs_ret_1", "vol_regime_20_120", "mfi_14")
BIG = 10**9


def panel(t=260, n=11, seed=3) -> Panel:
    """Random walks, one symbol listed late and one with a gap: NaN features to clean."""
    rng = np.random.default_rng(seed)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, size=(t, n)), axis=0))
    close[:90, 2] = np.nan
    close[150:160, 5] = np.nan
    times = pd.bdate_range("2015-01-01", periods=t).to_numpy(dtype="datetime64[ns]")
    vol = np.where(np.isnan(close), np.nan, 1e6)
    return Panel(times, tuple(f"S{i:02d}" for i in range(n)), close, close * 1.01,
                 close * 0.99, close, vol, np.ones((t, n)), np.zeros((t, n)))  # fmt: skip


@pytest.fixture
def counted(monkeypatch):
    """Counts the feature computations the sources make."""
    calls: list[tuple[str, ...]] = []
    real = source_mod.compute_batch

    def compute(p, names, catalog):
        calls.append(tuple(names))
        return real(p, names, catalog)

    monkeypatch.setattr(source_mod, "compute_batch", compute)
    return calls


def rows(src: BatchFeatureSource, p: Panel, required=("rsi_14",)):
    ready_at = src.prepare(required)
    out = []
    for i, t in enumerate(p.datetimes()):
        bar = p.row(i, t)
        out.append(({k: v.copy() for k, v in src.at(bar).items()}, ready_at(bar)))
    return out


def assert_same_rows(a, b):
    assert len(a) == len(b)
    for (fa, ra), (fb, rb) in zip(a, b, strict=True):
        assert fa.keys() == fb.keys()
        for k in fa:  # the same bits (a NaN's sign and payload, -0.0 against 0.0)
            np.testing.assert_array_equal(fa[k].view(np.uint64), fb[k].view(np.uint64))
        np.testing.assert_array_equal(ra, rb)


def test_a_rerun_reads_exactly_what_the_first_run_prepared(tmp_path, counted):
    p = panel()
    cache = FeatureCache(tmp_path, BIG)
    plain = rows(BatchFeatureSource(p, NAMES, Catalog()), p)
    first = rows(BatchFeatureSource(p, NAMES, Catalog(), cache=cache), p)
    assert len(counted) == 2 and len(list(tmp_path.glob("*.npy"))) == 1
    with capture_logs() as logs:
        again = BatchFeatureSource(p, NAMES, Catalog(), cache=cache)
    assert len(counted) == 2  # not computed again
    assert [e["event"] for e in logs] == ["features.cache_hit"]
    assert_same_rows(first, plain)
    assert_same_rows(rows(again, p), plain)
    # Another readiness set over the same entry: the bits of each feature are kept.
    assert_same_rows(
        rows(BatchFeatureSource(p, NAMES, Catalog(), cache=cache), p, ("ret_1", "bb_position")),
        rows(BatchFeatureSource(p, NAMES, Catalog()), p, ("ret_1", "bb_position")),
    )


def test_unprepared_rows_from_the_cache_have_their_nan_back(tmp_path):
    p = panel()
    cache = FeatureCache(tmp_path, BIG)
    BatchFeatureSource(p, NAMES, Catalog(), cache=cache).prepare(())  # fills the entry
    cached, plain = (BatchFeatureSource(p, NAMES, Catalog(), cache=c) for c in (cache, None))
    for i in (0, 40, 95, 155, 259):
        bar = p.row(i, p.datetimes()[i])
        a, b = cached.at(bar), plain.at(bar)
        for k in NAMES:
            np.testing.assert_array_equal(a[k], b[k])  # NaN where NaN (equal_nan default)
    assert np.isnan(plain.at(p.row(0, p.datetimes()[0]))["rsi_14"]).all()


@pytest.mark.parametrize(
    "change",
    ["a price", "a symbol name", "the names", "an indicator period", "the cross-section"],
)
def test_what_decides_the_values_is_in_the_key(tmp_path, counted, change):
    p, names, catalog = panel(), NAMES, Catalog()
    cache = FeatureCache(tmp_path, BIG)
    key = cache.key(p, names, catalog)
    if change == "a price":
        close = p.close.copy()
        close[200, 3] *= 1.0000001
        p = dataclasses.replace(p, close=close)
    elif change == "a symbol name":
        p = dataclasses.replace(p, symbols=("X", *p.symbols[1:]))
    elif change == "the names":
        names = (*NAMES[:-1], "rsi_7")
    elif change == "an indicator period":
        catalog = Catalog(IndicatorConfig(bb_period=21))
    else:
        catalog = Catalog(cross_method="zscore")
    assert cache.key(p, names, catalog) not in (None, key)
    assert cache.key(panel(), NAMES, Catalog()) == key  # the same inputs: the same key


def test_features_defined_at_run_time_are_never_cached(tmp_path, counted):
    p = panel()
    cat = Catalog()
    cat.register("double_ret", ["ret_1"], lambda r: 2 * r)
    cache = FeatureCache(tmp_path, BIG)
    for _ in range(2):
        BatchFeatureSource(p, ("double_ret",), cat, cache=cache).prepare(())
    assert len(counted) == 2 and not list(tmp_path.iterdir())


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other shape", "fortran order"])
def test_a_damaged_entry_is_deleted_and_the_features_computed(tmp_path, counted, damage):
    p = panel()
    cache = FeatureCache(tmp_path, BIG)
    plain = rows(BatchFeatureSource(p, NAMES, Catalog()), p)
    BatchFeatureSource(p, NAMES, Catalog(), cache=cache).prepare(("rsi_14",))
    (entry,) = tmp_path.glob("*.npy")
    data = entry.read_bytes()
    if damage == "truncated":
        entry.write_bytes(data[: len(data) - 100])
    elif damage == "garbage":
        entry.write_bytes(b"not an array" * 10)
    elif damage == "other shape":
        np.save(entry, np.zeros((len(NAMES), 3, 3)))
    else:  # the right shape and size, the values in another order
        values = np.load(entry, mmap_mode="r")
        with open(entry, "r+b") as fh:
            np.lib.format.write_array_header_1_0(
                fh, {"descr": "<f8", "fortran_order": True, "shape": values.shape}
            )
    with capture_logs() as logs:
        src = BatchFeatureSource(p, NAMES, Catalog(), cache=cache)
    assert [e["event"] for e in logs] == ["features.cache_unreadable"]
    assert len(counted) == 3  # computed again
    assert_same_rows(rows(src, p), plain)  # and written again by its prepare
    assert len(list(tmp_path.glob("*.npy"))) == 1
    with capture_logs() as logs:
        BatchFeatureSource(p, NAMES, Catalog(), cache=cache)
    assert [e["event"] for e in logs] == ["features.cache_hit"]


def test_the_cache_is_bounded_least_recently_used_first(tmp_path):
    cache = FeatureCache(tmp_path, BIG)
    for seed in (1, 2):
        BatchFeatureSource(panel(seed=seed), NAMES, Catalog(), cache=cache).prepare(())
    one = max(f.stat().st_size for f in tmp_path.glob("*.npy"))
    small = FeatureCache(tmp_path, int(one * 2.5))
    # Written long ago, seed 1 first (file times tick coarsely: set them, not wait).
    now = time.time()
    for seed, age in ((1, 200), (2, 100)):
        entry = tmp_path / f"{small.key(panel(seed=seed), NAMES, Catalog())}.npy"
        os.utime(entry, (now - age, now - age))
    BatchFeatureSource(panel(seed=1), NAMES, Catalog(), cache=small)  # a hit: seed 1 is fresh
    BatchFeatureSource(panel(seed=3), NAMES, Catalog(), cache=small).prepare(())
    kept = {f.stem for f in tmp_path.glob("*.npy")}
    keys = {s: small.key(panel(seed=s), NAMES, Catalog()) for s in (1, 2, 3)}
    assert kept == {keys[1], keys[3]}  # seed 2's entry, used longest ago, went
    tiny = FeatureCache(tmp_path / "tiny", one - 1)
    with capture_logs() as logs:
        BatchFeatureSource(panel(seed=4), NAMES, Catalog(), cache=tiny).prepare(())
    assert [e["event"] for e in logs] == ["features.cache_skipped"]
    assert not (tmp_path / "tiny").exists()


def test_an_unwritable_cache_is_a_warning_and_the_run_goes_on(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the folder should be")
    p = panel()
    src = BatchFeatureSource(p, NAMES, Catalog(), cache=FeatureCache(blocker / "sub", BIG))
    with capture_logs() as logs:
        got = rows(src, p)
    assert [e["event"] for e in logs] == ["features.cache_unwritable"]
    assert_same_rows(got, rows(BatchFeatureSource(p, NAMES, Catalog()), p))


def test_an_entry_that_cannot_be_read_now_is_kept(tmp_path, monkeypatch):
    """Out of descriptors, say: a miss for this run, not a damaged entry to delete."""
    import tradingd.features.batch_cache as bc

    p = panel()
    cache = FeatureCache(tmp_path, BIG)
    BatchFeatureSource(p, NAMES, Catalog(), cache=cache).prepare(())
    (entry,) = tmp_path.glob("*.npy")

    def no_descriptors(*a, **k):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(bc.np, "load", no_descriptors)
    with capture_logs() as logs:
        src = BatchFeatureSource(p, NAMES, Catalog(), cache=cache)
    assert [e["event"] for e in logs] == ["features.cache_unavailable"]
    assert entry.exists()
    monkeypatch.undo()
    assert_same_rows(rows(src, p), rows(BatchFeatureSource(p, NAMES, Catalog()), p))


def test_the_cpu_numpy_runs_on_and_catalog_subclasses_are_in_the_key(tmp_path, monkeypatch):
    """numpy's results can depend on the CPU features it uses (NPY_DISABLE_CPU_FEATURES
    changes them); a Catalog subclass may compute what this package's code does not."""
    import tradingd.features.batch_cache as bc

    cache = FeatureCache(tmp_path, BIG)
    key = cache.key(panel(), NAMES, Catalog())
    monkeypatch.setenv("NPY_DISABLE_CPU_FEATURES", "AVX512F")
    bc._cpu.cache_clear()
    try:
        assert cache.key(panel(), NAMES, Catalog()) not in (None, key)
    finally:
        monkeypatch.undo()
        bc._cpu.cache_clear()
    assert cache.key(panel(), NAMES, Catalog()) == key

    class Mine(Catalog):
        pass

    assert cache.key(panel(), NAMES, Mine()) is None
