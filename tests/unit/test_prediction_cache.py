"""The ML plugin's prediction cache is keyed by what the models see, not by (symbol, bar time).

Cross-sectional features depend on the universe and recursive indicators on where the data
starts, so the same (symbol, bar time) can carry another input in another run. These tests use
the shipped model pair (no train extra) and tiny inputs."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from conftest import make_panel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from structlog.testing import capture_logs

import tradingd_plugins.signals.ml_ensemble as ml
from tradingd.app import build_engine
from tradingd.config import PluginSpec, load_config
from tradingd.core.ports import BarContext
from tradingd.feeds.panel import FIELDS, Panel
from tradingd.inference.onnx import EnsemblePredictor, ModelCard
from tradingd_plugins.signals.ml_ensemble import (
    CACHE_FORMAT,
    MlEnsemble,
    MlEnsembleConfig,
    WindowKeys,
    cache_salt,
    row_digests,
    window_blocks,
    window_keys,
)

T0 = datetime(2020, 1, 1, tzinfo=UTC)
W = 60  # the shipped model's window


def plugin(symbols=("A", "B"), cache_dir="", **kw):
    return MlEnsemble(MlEnsembleConfig(threshold=0.5, cache_dir=str(cache_dir), **kw), symbols)


def inputs(n_bars, n_symbols, seed=0):
    """(bars, symbols, features) float32 feature values, as the engine would hand them over."""
    return np.random.default_rng(seed).normal(size=(n_bars, n_symbols, 20)).astype(np.float32)


def context(p, row, t=T0, i=0, ready=None):
    """The BarContext of one bar whose feature values are row (symbols, features), as the
    plugin reads it. ready: (symbols,) bool, default all ready."""
    r = np.ones(len(p.symbols), bool) if ready is None else ready
    feats = {f: row[:, k].astype(np.float64) for k, f in enumerate(p.features)}
    return BarContext(t, i, p.symbols, None, None, r, None, feats, None, r)  # type: ignore[arg-type]


def feed(p, x, start=T0, ready=None):
    """Score every bar of x (bars, symbols, features); returns (bars, symbols) scores.
    ready: (bars, symbols) bool, default all ready."""
    out = []
    for i, row in enumerate(x):
        r = None if ready is None else ready[i]
        out.append(p.score(context(p, row, start + timedelta(days=i), i, r)))
    return np.array(out)


def cache_file(tmp_path, p):
    return tmp_path / f"{p.version}.npz"


def test_a_hit_returns_exactly_what_inference_returns(tmp_path):
    p = plugin(cache_dir=tmp_path)
    w = inputs(3, 60)  # three windows of (60, 20)
    direct = p.predictor.combine_predictions(p.pair.predict(w))
    first = p.predict(w)
    assert p.model_calls == 1 and p.cache_hits == 0
    np.testing.assert_array_equal(first, direct)
    again = p.predict(w)
    assert p.model_calls == 1 and p.cache_hits == 3
    np.testing.assert_array_equal(again, direct)
    p.close()
    # through the file: the same float64 values, bit for bit
    q = plugin(cache_dir=tmp_path)
    np.testing.assert_array_equal(q.predict(w), direct)
    assert q.model_calls == 0 and q.cache_hits == 3


def test_a_rerun_over_the_same_bars_calls_no_model_and_scores_the_same(tmp_path):
    x = inputs(W + 25, 5, seed=11)
    ready = np.ones(x.shape[:2], bool)
    ready[W + 5, 1] = False  # B restarts its window
    ready[:10, 3] = False  # D starts late
    first = plugin(symbols=tuple("ABCDE"), cache_dir=tmp_path)
    s1 = feed(first, x, ready=ready)
    assert first.model_calls > 0 and first.cache_hits == 0
    first.close()
    again = plugin(symbols=tuple("ABCDE"), cache_dir=tmp_path)
    s2 = feed(again, x, ready=ready)
    assert again.model_calls == 0
    assert again.cache_hits == np.isfinite(s1).sum() == np.isfinite(s2).sum() > 0
    np.testing.assert_array_equal(s1, s2)


def test_another_input_at_the_same_symbol_and_time_is_never_served_from_the_cache(tmp_path):
    x1 = inputs(W + 2, 2, seed=1)
    first = plugin(cache_dir=tmp_path)
    s1 = feed(first, x1)
    first.close()
    # Symbol A's inputs differ (say its cross-sectional rank in another universe); B's do not.
    x2 = x1.copy()
    x2[:, 0] = inputs(W + 2, 1, seed=2)[:, 0]
    second = plugin(cache_dir=tmp_path)
    s2 = feed(second, x2)
    fresh = feed(plugin(), x2)
    np.testing.assert_array_equal(s2, fresh)
    assert not np.array_equal(s2[W - 1 :, 0], s1[W - 1 :, 0])  # the old key would have hit
    np.testing.assert_array_equal(s2[:, 1], s1[:, 1])
    assert second.model_calls == 3 and second.cache_hits == 3  # only B's windows were cached


def test_one_changed_feature_value_misses_exactly_the_windows_that_hold_it(tmp_path):
    x = inputs(W + 9, 3, seed=5)
    first = plugin(symbols=tuple("ABC"), cache_dir=tmp_path)
    feed(first, x)
    first.close()
    y = x.copy()
    bar = 5  # in the windows ending at bars W-1 .. W+4 (6 of the 10 scored bars)
    y[bar, 1, 7] = np.nextafter(y[bar, 1, 7], np.float32(np.inf))  # one ulp, one feature
    second = plugin(symbols=tuple("ABC"), cache_dir=tmp_path)
    s = feed(second, y)
    np.testing.assert_array_equal(s, feed(plugin(symbols=tuple("ABC")), y))
    # the 6 windows of B holding that value were predicted (one model call per bar), the
    # other 24 windows came from the cache
    assert second.model_calls == 6 and second.cache_hits == 3 * 10 - 6


def test_the_same_input_under_another_symbol_and_time_is_a_hit(tmp_path):
    x = inputs(62, 2, seed=3)
    first = plugin(cache_dir=tmp_path)
    s1 = feed(first, x)
    first.close()
    other = plugin(symbols=("Y", "Z"), cache_dir=tmp_path)
    s2 = feed(other, x[:, ::-1], start=T0 + timedelta(days=1000))
    assert other.model_calls == 0 and other.cache_hits == 6
    np.testing.assert_array_equal(s2, s1[:, ::-1])


def test_another_model_version_or_other_weights_never_hit(tmp_path, monkeypatch):
    w = inputs(2, 60, seed=6)
    first = plugin(cache_dir=tmp_path)
    first.predict(w)
    first.close()
    same = plugin(cache_dir=tmp_path)
    same.predict(w)
    assert same.model_calls == 0 and same.cache_hits == 2
    # Other weights, same version (the same file is read): every key differs.
    weights = {"cnn_lstm": 0.5, "random_forest": 0.5}
    monkeypatch.setattr(ml, "EnsemblePredictor", lambda _w, r: EnsemblePredictor(weights, r))
    reweighted = plugin(cache_dir=tmp_path)
    assert reweighted.cache_entries == 2
    got = reweighted.predict(w)
    assert reweighted.model_calls == 1 and reweighted.cache_hits == 0
    np.testing.assert_array_equal(
        got, reweighted.predictor.combine_predictions(reweighted.pair.predict(w))
    )
    monkeypatch.undo()
    # Another version: another file, and another salt were it given this one's file.
    monkeypatch.setattr(ModelCard, "version", property(lambda self: "another-version"))
    other = plugin(cache_dir=tmp_path)
    assert other.cache_entries == 0
    other.predict(w)
    assert other.model_calls == 1 and other.cache_hits == 0
    weights0 = first.predictor.weights
    k = first.cache_keys(w)
    for salt in (cache_salt("another-version", weights0), cache_salt(first.version, weights)):
        first._salt = salt
        assert not (first.cache_keys(w) == k).all(axis=1).any()


def test_other_onnx_files_under_the_same_card_never_hit(tmp_path):
    """The card's model_version is not checked against the files (the shipped model's last
    bits differ by CPU, so it cannot be recomputed at load), yet it was the cache's only
    model identity: a folder with one model's card and another's ONNX files (their hashes
    in the card) was served the first model's predictions and reported its figures."""
    from tiny_models import graph, model_folder

    w = inputs(3, 60, seed=12)
    cache = tmp_path / "cache"
    first = plugin(cache_dir=cache)
    first.predict(w)
    first.close()
    other_rf = graph(tmp_path / "rf.onnx", (1200,), value=0.004)
    folder = model_folder(tmp_path / "other", random_forest=other_rf)
    other = plugin(cache_dir=cache, model_dir=str(folder))
    assert other.version == first.version and other.cache_entries == 3  # the same file
    got = other.predict(w)
    assert other.model_calls == 1 and other.cache_hits == 0
    np.testing.assert_array_equal(got, other.predictor.combine_predictions(other.pair.predict(w)))
    assert not np.array_equal(got, first.predict(w))
    other.close()
    again = plugin(cache_dir=cache, model_dir=str(folder))  # its own entries still hit
    np.testing.assert_array_equal(again.predict(w), got)
    assert again.model_calls == 0 and again.cache_hits == 3


def test_a_card_with_another_scaler_under_the_same_version_and_files_never_hits(tmp_path):
    """The salt named the model version and the ONNX files' hashes, not the card's scaler:
    a card whose scaler.mean was shifted, its model_version and files kept, was served the
    first scaler's predictions by a warm rerun, where a cold one predicted otherwise."""
    from tiny_models import model_folder

    def shift(card):
        card["scaler"]["mean"] = [m + 0.5 for m in card["scaler"]["mean"]]

    w = inputs(3, 60, seed=13)
    cache = tmp_path / "cache"
    first = plugin(cache_dir=cache)
    first.predict(w)
    first.close()
    folder = model_folder(tmp_path / "shifted", edit=shift)
    warm = plugin(cache_dir=cache, model_dir=str(folder))
    assert warm.version == first.version and warm.cache_entries == 3  # the same file
    cold = plugin(model_dir=str(folder))
    np.testing.assert_array_equal(warm.predict(w), cold.predict(w))
    assert warm.model_calls == 1 and warm.cache_hits == 0
    warm.close()


def test_a_cache_written_with_other_onnxruntime_threads_is_not_served(tmp_path):
    """Two threads round the LSTM differently in the last bits: a one-thread rerun must
    predict again, not take the two-thread run's values (which could flip decisions)."""
    w = inputs(2, 60, seed=8)
    two = plugin(cache_dir=tmp_path, threads=2)
    two.predict(w)
    two.close()
    one = plugin(cache_dir=tmp_path, threads=1)
    assert one.cache_entries == 2  # the same file (same model version) was read
    one.predict(w)
    assert one.model_calls == 1 and one.cache_hits == 0
    again = plugin(cache_dir=tmp_path, threads=2)
    again.predict(w)
    assert again.model_calls == 0 and again.cache_hits == 2


def test_keys_in_score_are_the_keys_of_the_windows_the_model_sees(tmp_path):
    x = inputs(W + 30, 4, seed=7)
    ready = np.ones(x.shape[:2], bool)
    ready[W + 3, 0] = False  # A restarts: its next full window is bars W+4 .. 2W+3
    ready[10, 2] = False
    for n_bars in (W, W + 3, W + 10, W + 30):  # stop at various bars, compare
        q = plugin(symbols=tuple("ABCD"))
        feed(q, x[:n_bars], ready=ready[:n_bars])
        full = np.flatnonzero(q._filled >= W)
        assert q._keys.held.tolist() == q._filled.tolist()
        if full.size:
            np.testing.assert_array_equal(
                q._keys.keys(full, q._salt), q.cache_keys(q._windows(full))
            )
            # and the window is the symbol's last W rows, oldest first
            for j, s in enumerate(full):
                np.testing.assert_array_equal(q._windows(full)[j], x[n_bars - W : n_bars, s])


def test_a_window_that_restarts_is_keyed_by_its_own_rows():
    x = inputs(2 * W + 5, 2, seed=8)
    ready = np.ones(x.shape[:2], bool)
    gap = W + 2
    ready[gap, 0] = False  # A misses a bar
    p = plugin()
    s = feed(p, x, ready=ready)
    # A: scored up to the gap, then not until W ready bars after it
    assert np.isfinite(s[W - 1 : gap, 0]).all() and np.isnan(s[gap : gap + W, 0]).all()
    assert np.isfinite(s[gap + W :, 0]).all()
    # its first window after the gap is bars gap+1 .. gap+W: the key of exactly those rows
    q = plugin()
    feed(q, x[: gap + W + 1], ready=ready[: gap + W + 1])
    key = q._keys.keys(np.array([0]), q._salt)
    np.testing.assert_array_equal(key, q.cache_keys(x[gap + 1 : gap + W + 1, 0][None]))
    # which is also what a symbol that never missed a bar has for the same rows
    r = plugin()
    feed(r, x[gap + 1 : gap + W + 1])
    np.testing.assert_array_equal(r._keys.keys(np.array([0]), r._salt), key)


def test_old_format_or_corrupt_files_are_ignored_with_a_warning(tmp_path):
    x = inputs(61, 2, seed=4)
    expected = feed(plugin(), x)
    good_dir = tmp_path / "good"
    p = plugin(cache_dir=good_dir)
    feed(p, x)
    p.close()
    good = cache_file(good_dir, p)
    with np.load(good) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays["header"].tobytes())
    assert header["format"] == CACHE_FORMAT and len(arrays["k0"]) == 4

    def npz(**changes):
        def write(path):
            a = {k: v for k, v in {**arrays, **changes}.items() if v is not None}
            with open(path, "wb") as fh:
                np.savez(fh, **a)

        return write

    def pickled(path):
        with open(path, "wb") as fh:
            np.save(fh, np.array([{}]), allow_pickle=True)

    def hdr(**h):
        return np.frombuffer(json.dumps({**header, **h}).encode(), np.uint8)

    raw = good.read_bytes()
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0xFF
    cases = {
        "not a zip": lambda path: path.write_bytes(b"garbage"),
        "truncated": lambda path: path.write_bytes(raw[: len(raw) // 2]),
        "a flipped byte": lambda path: path.write_bytes(bytes(flipped)),
        "pickled": pickled,
        "another format": npz(header=hdr(format="tradingd-prediction-cache/2")),
        "another version": npz(header=hdr(model_version="x")),
        "a header that is no JSON": npz(header=np.frombuffer(b"{x", np.uint8)),
        "no clock": npz(header=hdr(clock=None)),
        "unsorted": npz(k0=arrays["k0"][::-1].copy()),
        "not residues": npz(k1=arrays["k1"] | np.uint64(1 << 63)),
        "float32 values": npz(value=arrays["value"].astype(np.float32)),
        # written before non-finite model outputs were refused: a NaN was served as a hold
        "a NaN value": npz(value=np.where(np.arange(4) == 1, np.nan, arrays["value"])),
        "an inf value": npz(value=np.where(np.arange(4) == 2, np.inf, arrays["value"])),
        "lengths differ": npz(value=arrays["value"][:-1]),
        "stamps past the clock": npz(stamp=arrays["stamp"] + np.uint32(header["clock"])),
        "an array missing": npz(stamp=None),
    }
    for what, write in cases.items():
        d = tmp_path / what.replace(" ", "_")
        d.mkdir()
        write(cache_file(d, p))
        with capture_logs() as logs:
            q = plugin(cache_dir=d)
            assert q.cache_entries == 0, what  # the file is read at its first use
        events = [(e["event"], e["log_level"]) for e in logs if "prediction_cache" in e["event"]]
        assert events in (
            [("prediction_cache.unreadable", "warning")],
            [("prediction_cache.ignored", "warning")],
        ), what
        np.testing.assert_array_equal(feed(q, x), expected)
        assert q.model_calls == 2, what
        q.close()  # replaced by a good file
        assert plugin(cache_dir=d).cache_entries == 4, what
    # A cache file of the previous format (JSON): never read, said so, removed at the next save.
    d = tmp_path / "legacy"
    d.mkdir()
    legacy = d / f"{p.version}.json"
    legacy.write_text(json.dumps({"format": "tradingd-prediction-cache/2", "entries": []}))
    with capture_logs() as logs:
        q = plugin(cache_dir=d)
        feed(q, x)
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["prediction_cache.ignored"]
    q.close()
    assert not legacy.exists() and cache_file(d, q).exists()


def test_the_bound_holds_and_entries_used_in_this_run_are_kept_first(tmp_path):
    w = inputs(6, 60, seed=9)
    first = plugin(cache_dir=tmp_path, cache_size=4)
    for k in range(4):  # w0 (the least recently used) .. w3
        first.predict(w[k : k + 1])
    first.close()
    second = plugin(cache_dir=tmp_path, cache_size=4)
    assert second.cache_entries == 4
    second.predict(w[0:1])  # the oldest in the file, used again
    assert second.model_calls == 0
    for k in (4, 5):
        second.predict(w[k : k + 1])
        assert second.cache_entries <= 4
    second.close()
    with np.load(cache_file(tmp_path, second)) as z:
        assert len(z["k0"]) == 4
    # kept: w0 (used), w4, w5 (new) and w3 (the most recently used of the others)
    third = plugin(cache_dir=tmp_path, cache_size=4)
    third.predict(w[[0, 3, 4, 5]])
    assert third.model_calls == 0
    third.predict(w[1:3])
    assert third.model_calls == 1 and third.cache_hits == 4
    assert third.cache_entries == 4
    # more new predictions in one batch than the cache holds: the bound still holds
    fourth = plugin(cache_dir=tmp_path, cache_size=2)
    assert fourth.cache_entries == 2  # a file bigger than cache_size is cut when loaded
    fourth.predict(inputs(5, 60, seed=10))
    assert fourth.cache_entries == 2
    fourth.close()
    with np.load(cache_file(tmp_path, fourth)) as z:
        assert len(z["k0"]) == 2


def test_many_merges_keep_every_prediction_findable_and_the_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(ml, "_YOUNG_MAX", 8)  # merge the dict of new entries often
    w = inputs(60, 60, seed=12)
    p = plugin(cache_dir=tmp_path, cache_size=40)
    direct = []
    for k in range(0, 60, 5):
        direct.extend(p.predict(w[k : k + 5]))
        assert p.cache_entries <= 40
        assert len(p._cache) < 8
        assert (p._k0[1:] >= p._k0[:-1]).all()
    direct = np.array(direct)
    calls = p.model_calls
    # the 35 most recent are still there (eviction leaves headroom: 40 - 40 // 16 = 38)
    np.testing.assert_array_equal(p.predict(w[25:]), direct[25:])
    assert p.model_calls == calls
    p.close()
    q = plugin(cache_dir=tmp_path, cache_size=40)
    np.testing.assert_array_equal(q.predict(w[25:]), direct[25:])
    assert q.model_calls == 0


def test_keys_sharing_the_first_lane_are_told_apart():
    p = plugin()
    p._k0 = np.array([1, 5, 5, 5, 9], dtype=np.uint64)
    p._k1 = np.array([0, 3, 2, 1, 0], dtype=np.uint64)
    p._k2 = np.array([0, 7, 7, 7, 0], dtype=np.uint64)
    p._val = np.arange(5, dtype=np.float64)
    p._stamp = np.zeros(5, dtype=np.uint32)
    p._reindex()
    q = np.array([[5, 1, 7], [5, 2, 7], [5, 3, 7], [5, 4, 7], [5, 2, 6], [9, 0, 0], [10, 0, 0]])
    pred, todo = p._lookup(q.astype(np.uint64))
    assert todo.tolist() == [3, 4, 6]
    assert pred[[0, 1, 2, 5]].tolist() == [3.0, 2.0, 1.0, 4.0]


@pytest.mark.parametrize("n", [1, 2, 3, 1000, 5000])
def test_a_bar_finds_exactly_the_entries_present(n):
    rng = np.random.default_rng(n)
    p = plugin()
    keys = rng.integers(0, (1 << 61) - 1, size=(n, 3), dtype=np.uint64)
    keys[n // 2 :: 7, 0] = keys[n // 2, 0]  # some share the first lane
    keys[: n // 3, 0] >>= np.uint64(40)  # crowded buckets at the bottom
    order = np.argsort(keys[:, 0], kind="stable")
    p._k0, p._k1, p._k2 = (keys[order, i].copy() for i in range(3))
    p._val = np.arange(n, dtype=np.float64)
    p._stamp = np.zeros(n, dtype=np.uint32)
    p._reindex()
    absent = rng.integers(0, (1 << 61) - 1, size=(n, 3), dtype=np.uint64)
    other_lanes = keys.copy()
    other_lanes[:, 1 + np.arange(n) % 2] ^= np.uint64(1)
    edges = np.array([[0, 0, 0], [(1 << 61) - 2] * 3], dtype=np.uint64)
    q = np.concatenate([keys[order], absent, other_lanes, edges])
    p._clock = 7
    pred, todo = p._lookup(q)
    assert todo.tolist() == list(range(n, len(q)))
    assert pred[:n].tolist() == list(range(n))
    assert (p._stamp == 7).all()


def test_no_cache():
    p = plugin(cache_size=0)
    w = inputs(2, 60, seed=13)
    p.predict(w)
    p.predict(w)
    assert p.model_calls == 2 and p.cache_entries == 0


def test_bad_cache_settings():
    with pytest.raises(ValueError, match="cache_size"):
        MlEnsembleConfig(cache_size=-1)
    with pytest.raises(ValueError, match="cache_versions"):
        MlEnsembleConfig(cache_versions=0)
    # the default holds a replay of 500 symbols x 20 years of daily bars
    assert MlEnsembleConfig().cache_size >= 500 * 20 * 252


def test_a_warm_rerun_does_not_rewrite_the_file(tmp_path):
    x = inputs(61, 2, seed=14)
    p = plugin(cache_dir=tmp_path)
    feed(p, x)
    p.close()
    path = cache_file(tmp_path, p)
    os.utime(path, (1_000_000, 1_000_000))
    q = plugin(cache_dir=tmp_path)
    feed(q, x)
    q.close()
    assert q.model_calls == 0 and path.stat().st_mtime == 1_000_000


# -- the keys: equal exactly when the windows are ---------------------------------------------

VALUES = st.sampled_from([0.0, 1.0, -1.0, 2.5])  # a small alphabet: rows repeat
SALT = cache_salt("v", {"cnn_lstm": 0.6, "random_forest": 0.4})
SALT2 = cache_salt("v", {"cnn_lstm": 0.5, "random_forest": 0.5})


def keys_of(windows, salt):
    b, w, f = windows.shape
    m = len(window_blocks(w))
    return window_keys(row_digests(windows.reshape(b * w, f), m).reshape(b, w, m, 3), salt)


@st.composite
def window_pairs(draw):
    """Two windows (window, features) float32: the second the first, or a near variant."""
    w = draw(st.sampled_from([1, 2, 3, 4, 7, 59, 60, 61, 62, 120, 121, 125]))
    f = draw(st.integers(1, 2))
    a = draw(arrays(np.float32, (w, f), elements=VALUES))
    b = a.copy()
    how = draw(st.sampled_from(["same", "swap", "change", "roll", "reverse", "other"]))
    i, j = draw(st.integers(0, w - 1)), draw(st.integers(0, w - 1))
    if how == "swap":
        b[[i, j]] = b[[j, i]]
    elif how == "change":
        b[i, j % f] = draw(VALUES)
    elif how == "roll":
        b = np.roll(b, draw(st.integers(1, 3)), axis=0)
    elif how == "reverse":
        b = b[::-1].copy()
    elif how == "other":
        b = draw(arrays(np.float32, (w, f), elements=VALUES))
    return a, b


@settings(max_examples=300, deadline=None)
@given(window_pairs())
def test_keys_are_equal_exactly_when_the_windows_are(pair):
    a, b = pair
    ka, kb = keys_of(np.stack([a, b]), SALT)
    assert np.array_equal(ka, kb) == (a.tobytes() == b.tobytes())
    assert ka.dtype == np.uint64 and (ka < (1 << 61) - 1).all()
    assert not np.array_equal(keys_of(a[None], SALT2)[0], ka)  # other weights: another key


def test_rows_trading_places_anywhere_in_a_long_window_change_its_key():
    w = 125  # three blocks
    base = np.arange(w, dtype=np.float32)[:, None]
    windows = [base]
    for i in range(w):
        for j in (i + 1, i + 59, i + 60, i + 61, i + 120):
            if j < w:
                b = base.copy()
                b[[i, j]] = b[[j, i]]
                windows.append(b)
    keys = keys_of(np.stack(windows), SALT)
    assert len({k.tobytes() for k in keys}) == len(windows)


def test_keys_do_not_depend_on_the_process():
    code = (
        "import numpy as np; from tradingd_plugins.signals.ml_ensemble import *; "
        "x = np.arange(120, dtype=np.float32).reshape(1, 60, 2); "
        "s = cache_salt('v', {'cnn_lstm': 0.6, 'random_forest': 0.4}); "
        "print(window_keys(row_digests(x.reshape(60, 2), 1).reshape(1, 60, 1, 3), s).tolist())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    x = np.arange(120, dtype=np.float32).reshape(1, 60, 2)
    assert json.loads(out.stdout) == keys_of(x, SALT).tolist()


@st.composite
def row_streams(draw):
    w = draw(st.sampled_from([1, 2, 3, 5, 59, 60, 61, 121]))
    n_bars = draw(st.integers(w, w + 25))
    rows = draw(arrays(np.float32, (n_bars, 2, 1), elements=VALUES))
    ready = draw(arrays(bool, (n_bars, 2), elements=st.sampled_from([True, True, True, False])))
    return w, rows, ready


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(row_streams(), st.sampled_from(["python ints", "numpy"]))
def test_keys_kept_up_to_date_row_by_row_are_the_keys_of_the_windows(stream, path):
    w, rows, ready = stream
    keys = WindowKeys(2, w)
    keys.few = 2 if path == "python ints" else 0  # either way of doing the arithmetic
    since = [[], []]  # each symbol's rows since it was last not ready
    for t in range(len(rows)):
        keys.reset(~ready[t])
        idx = np.flatnonzero(ready[t])
        keys.push(idx, rows[t, idx])
        for s in range(2):
            since[s] = [*since[s], rows[t, s]] if ready[t, s] else []
        assert keys.held.tolist() == [len(r) for r in since]
        full = np.flatnonzero(keys.held >= w)
        if full.size:
            windows = np.stack([np.stack(since[s][-w:]) for s in full])
            got = keys.keys(full, SALT)
            assert got.dtype == np.uint64  # the store shifts and sorts keys as uint64
            np.testing.assert_array_equal(got, keys_of(windows, SALT))


def test_the_python_int_arithmetic_is_the_uint64_arithmetic_on_every_edge():
    """The few-symbol path's modular arithmetic against the numpy form on the values where
    they could part: 0, P - 1, P (which _mod must map to 0), P + 7, 2^61, 2^63, 2^64 - 1."""
    from tradingd_plugins.signals import ml_ensemble as ml

    p = (1 << 61) - 1
    edges = [0, 1, 2, p - 1, p, p + 7, 1 << 61, 1 << 63, (1 << 64) - 1, 3 * p]
    rng = np.random.default_rng(3)
    values = edges + rng.integers(0, 1 << 63, 200, dtype=np.uint64).tolist()
    arr = np.array(values, dtype=np.uint64)
    assert ml._mod(arr).tolist() == [ml._mod_int(v) for v in values]
    residues = [ml._mod_int(v) for v in values]
    r = np.array(residues, dtype=np.uint64)
    assert ml._half(r).tolist() == [ml._half_int(v) for v in residues]
    for k in range(61):
        assert ml._times_pow2(r, np.uint64(k)).tolist() == [
            ml._times_pow2_int(v, k) for v in residues
        ]
    pairs = list(zip(residues, reversed(residues), strict=True))
    x = np.array([a for a, _ in pairs], dtype=np.uint64)
    y = np.array([b for _, b in pairs], dtype=np.uint64)
    assert ml._add(x, y).tolist() == [ml._mod_int(a + b) for a, b in pairs]
    assert ml._sub(x, y).tolist() == [ml._mod_int(a + (p - b)) for a, b in pairs]


# A whole run: a 2-symbol backtest after a 6-symbol one in the same cache folder must give what
# it gives in a fresh folder (issue 7, point 2: it reused 505 of 1,150 scores).


def _subset(panel, k):
    return Panel(panel.times, panel.symbols[:k], *(getattr(panel, f)[:, :k] for f in FIELDS))


async def _scores(tmp_path, panel, cache_dir, tag):
    cfg = load_config([], env={})
    cfg = dataclasses.replace(
        cfg,
        run=dataclasses.replace(cfg.run, output_dir=str(tmp_path / "runs")),
        signals=(
            PluginSpec("ml_ensemble", params={"threshold": 0.5, "cache_dir": str(cache_dir)}),
        ),
        storage=dataclasses.replace(cfg.storage, url=f"sqlite:///{tmp_path / tag}.db"),
        log=dataclasses.replace(cfg.log, audit_dir=str(tmp_path / "audit")),
    )
    engine = build_engine(cfg, "backtest", panel=panel)
    p = engine.pipeline.signals[0][0]
    seen = {}
    score = p.score

    def recording(ctx):
        out = score(ctx)
        seen[ctx.time] = out.copy()
        return out

    p.score = recording
    result = await engine.run_until_done()
    times = sorted(seen)
    return np.array([seen[t] for t in times]), result.equity, p


async def test_a_run_does_not_depend_on_what_ran_before_it_in_the_same_cache(tmp_path):
    # 200 bars: the slowest indicator (120 bars) plus a 60-bar window leave ~20 scored bars.
    six = make_panel(n_symbols=6, n_bars=200, split_at=None)
    two = _subset(six, 2)
    shared = tmp_path / "shared"
    a, _, _ = await _scores(tmp_path, six, shared, "a")
    b, b_equity, pb = await _scores(tmp_path, two, shared, "b")
    fresh, fresh_equity, _ = await _scores(tmp_path, two, tmp_path / "fresh", "f")
    scored = ~np.isnan(fresh)
    assert scored.sum() >= 20
    np.testing.assert_array_equal(b, fresh)
    assert b_equity == fresh_equity
    # The same (symbol, bar) had another input in the 6-symbol run (its cross-sectional ranks):
    # had the cache been keyed by (symbol, time), run b would have reused a's scores.
    assert (a[:, :2][scored] != fresh[scored]).any()
    assert pb.cache_hits == 0
    # A rerun still skips onnxruntime entirely.
    again, again_equity, pa = await _scores(tmp_path, two, shared, "b2")
    assert pa.model_calls == 0 and pa.cache_hits == scored.sum()
    np.testing.assert_array_equal(again, fresh)
    assert again_equity == fresh_equity


def test_a_cache_written_by_another_runtime_is_not_served(tmp_path, monkeypatch):
    """onnxruntime's kernels differ between releases and between CPUs (AVX-512, AVX2, NEON):
    a cache file kept across an upgrade or carried to another machine must be predicted
    again, so a warm rerun gives what a cold one would here."""
    w = inputs(2, 60, seed=9)
    monkeypatch.setattr(ml, "runtime_identity", lambda: "onnxruntime 1.0; avx2 fma")
    old = plugin(cache_dir=tmp_path)
    old.predict(w)
    old.close()
    monkeypatch.setattr(ml, "runtime_identity", lambda: "onnxruntime 1.0; avx2 avx512f fma")
    here = plugin(cache_dir=tmp_path)
    assert here.cache_entries == 2  # the same file (same model version) was read
    here.predict(w)
    assert here.model_calls == 1 and here.cache_hits == 0
    monkeypatch.setattr(ml, "runtime_identity", lambda: "onnxruntime 1.0; avx2 fma")
    back = plugin(cache_dir=tmp_path)
    back.predict(w)
    assert back.model_calls == 0 and back.cache_hits == 2


def test_the_runtime_identity_names_onnxruntime_and_the_cpus_vector_sets(tmp_path):
    import onnxruntime

    x86 = tmp_path / "x86"
    x86.write_text(
        "processor\t: 0\nflags\t\t: fpu vme sse sse2 ssse3 sse4_1 avx avx2 fma avx512f hypervisor\n"
        "processor\t: 1\nflags\t\t: fpu vme sse sse2 ssse3 sse4_1 avx avx2 fma avx512f hypervisor\n"
    )
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm aes sve\n")
    assert ml.cpu_isa(x86) == "avx avx2 avx512f fma sse sse2 sse4_1 ssse3"
    assert ml.cpu_isa(arm) == "asimd sve"
    assert ml.cpu_isa(tmp_path / "missing") == ""
    assert ml.runtime_identity().startswith(f"onnxruntime {onnxruntime.__version__}; ")
    salts = {
        cache_salt("v", {"cnn_lstm": 0.6, "random_forest": 0.4}, 1, r).tobytes()
        for r in ("onnxruntime 1.0; avx2", "onnxruntime 1.1; avx2", "onnxruntime 1.0; avx512f")
    }
    assert len(salts) == 3


def test_the_cache_file_is_read_at_the_first_prediction_not_at_start_up(tmp_path):
    """The start-up check builds each plugin once only to see that it starts: reading a
    500-symbol replay's ~70 MB file there, and again in the engine's plugin, doubled the
    cost of a warm rerun's start. The file is read when the plugin first predicts."""
    w = inputs(3, 60, seed=11)
    first = plugin(cache_dir=tmp_path)
    first.predict(w)
    first.close()
    with capture_logs() as logs:
        second = plugin(cache_dir=tmp_path)
    assert not [e for e in logs if e["event"].startswith("prediction_cache")]
    second.close()  # never predicted: the file is left as it is, not emptied
    with capture_logs() as logs:
        third = plugin(cache_dir=tmp_path)
        third.predict(w)
    assert [e["entries"] for e in logs if e["event"] == "prediction_cache.loaded"] == [3]
    assert third.model_calls == 0 and third.cache_hits == 3


def test_a_warm_up_bar_reads_the_cache_file_before_the_first_trading_bar(tmp_path):
    """A live daemon warms up through `observe` (no prediction): the file is read there, not
    inside its first trading bar."""
    w = inputs(2, 60, seed=12)
    first = plugin(cache_dir=tmp_path)
    first.predict(w)
    first.close()
    live = plugin(cache_dir=tmp_path)
    with capture_logs() as logs:
        live.observe(context(live, inputs(1, 2, seed=13)[0]))
    assert [e["entries"] for e in logs if e["event"] == "prediction_cache.loaded"] == [2]
    assert live.model_calls == 0


def test_a_cache_that_cannot_be_written_is_a_warning_not_a_stopped_run(tmp_path, monkeypatch):
    """A full disk under the cache folder: saving the outgoing model's predictions at a model
    switch (inside score()) raised, and the daemon stopped ("plugin 'ml_ensemble' failed in
    score"). The cache is optional: its predictions are computed again."""
    import errno

    from structlog.testing import capture_logs

    p = plugin(cache_dir=tmp_path)
    p.predict(inputs(3, 60))

    def full(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with capture_logs() as logs:
        p.close()
    (said,) = [e for e in logs if e["event"] == "prediction_cache.unwritable"]
    assert said["log_level"] == "warning" and str(tmp_path) in said["path"]
    assert "No space left" in said["error"]
    assert [p.name for p in tmp_path.iterdir()] == [ml.CACHE_LOCK]  # no partial file left


def test_predictions_saved_by_parallel_runs_are_all_kept(tmp_path, monkeypatch):
    """Each run loaded the version's file at its first prediction and replaced it at its
    end: of parallel runs only the last one's predictions were kept (15,090 of 29,174
    entries). Two runs that loaded the same file then save while the other is saving: both
    runs' predictions are kept. Deterministic: A stops inside its write until B has reached
    the lock (or, without one, its own write)."""
    import fcntl
    import threading

    base, wa, wb = inputs(2, 60, seed=31), inputs(3, 60, seed=32), inputs(4, 60, seed=33)
    first = plugin(cache_dir=tmp_path)
    first.predict(base)
    first.close()
    a, b = plugin(cache_dir=tmp_path), plugin(cache_dir=tmp_path)
    for run in (a, b):
        run.pin_model()  # a sweep's points: replays, which wait for the lock at their end
    a.predict(wa)
    b.predict(wb)
    assert a.cache_entries == 2 + 3 and b.cache_entries == 2 + 4  # both loaded the file
    a_inside, b_got_there = threading.Event(), threading.Event()
    real_savez, real_flock = np.savez, fcntl.flock

    def savez(*args, **kwargs):  # type: ignore[no-untyped-def]
        if threading.current_thread().name == "A":
            a_inside.set()
            assert b_got_there.wait(30), "B never reached the lock or its own write"
        else:
            b_got_there.set()
        return real_savez(*args, **kwargs)

    def flock(fd, op):  # type: ignore[no-untyped-def]
        if threading.current_thread().name == "B":
            b_got_there.set()  # about to wait: A holds the lock
        return real_flock(fd, op)

    monkeypatch.setattr(np, "savez", savez)
    monkeypatch.setattr(fcntl, "flock", flock)

    def b_closes() -> None:
        assert a_inside.wait(30)
        b.close()

    threads = [
        threading.Thread(target=a.close, name="A"),
        threading.Thread(target=b_closes, name="B"),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    monkeypatch.undo()
    again = plugin(cache_dir=tmp_path)
    assert again.cache_entries == 2 + 3 + 4
    got = again.predict(np.concatenate([base, wa, wb]))
    assert again.model_calls == 0
    np.testing.assert_array_equal(got, plugin().predict(np.concatenate([base, wa, wb])))
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def test_a_live_save_never_waits_for_another_process_holding_the_cache(tmp_path):
    """A save blocked on the folder's lock while another process (a sweep sharing
    `cache_dir`) merged its ~70 MB file: at a model switch that is inside score() on a live
    daemon's event loop (the stream, health checks and heartbeats stalled), and close() at
    SIGTERM waited the same way. Now the lock is only tried: the save is skipped, said once
    at info, and the predictions are kept in memory for the next save."""
    import fcntl
    import threading

    from structlog.testing import capture_logs

    w = inputs(3, 60, seed=37)
    live = plugin(cache_dir=tmp_path)  # not pinned: a live daemon
    live.predict(w)
    done = threading.Event()

    def saves() -> None:
        live._save_cache()  # what a model switch does (in a worker thread, or in score())
        live.close()  # what the engine does at SIGTERM
        done.set()

    with (tmp_path / ml.CACHE_LOCK).open("a", encoding="utf-8") as held, capture_logs() as logs:
        fcntl.flock(held, fcntl.LOCK_EX)  # the other process's save, in progress
        t = threading.Thread(target=saves)
        t.start()
        returned = done.wait(30)
        fcntl.flock(held, fcntl.LOCK_UN)  # (lets a save that waited end, before failing)
        t.join(30)
        assert returned, "the save waited for the lock"
        assert not cache_file(tmp_path, live).exists()  # nothing written
    said = [e for e in logs if e["event"] == "prediction_cache.save_deferred"]
    assert [e["log_level"] for e in said] == ["info", "debug"]  # said once, then quietly
    assert "another process" in said[0]["reason"] and str(tmp_path) in said[0]["path"]
    assert live.cache_entries == 3  # kept in memory
    live.close()  # the lock is free: the next save writes them
    again = plugin(cache_dir=tmp_path)
    again.predict(w)
    assert again.model_calls == 0 and again.cache_entries == 3


def test_another_runs_predictions_go_first_when_the_merged_file_is_over_the_bound(tmp_path):
    w = inputs(6, 60, seed=34)
    a, b = plugin(cache_dir=tmp_path, cache_size=4), plugin(cache_dir=tmp_path, cache_size=4)
    a.predict(w[:3])
    a.close()
    b.predict(w[3:])  # loaded the file (a's 3) at its first prediction: it has all 6, cut to 4
    b.close()
    c = plugin(cache_dir=tmp_path, cache_size=4)
    c.predict(w[3:])
    assert c.model_calls == 0 and c.cache_entries == 4  # b's own are all kept


def test_a_save_merges_without_reading_a_file_it_wrote_itself(tmp_path, monkeypatch):
    """No other run saved since: the file is not read again at the save (70 MB after a
    500-symbol replay)."""
    p = plugin(cache_dir=tmp_path)
    p.predict(inputs(2, 60, seed=35))
    p.close()
    p.predict(inputs(2, 60, seed=36))
    reads = []
    monkeypatch.setattr(p, "_read_file", lambda *a, **k: reads.append(a))
    p.close()
    assert reads == [] and plugin(cache_dir=tmp_path).cache_entries == 4


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ours=st.lists(st.integers(0, 30), max_size=12, unique=True),
    theirs=st.lists(st.integers(0, 30), max_size=12, unique=True),
)
def test_merging_a_file_gives_the_union_sorted_and_ours_ranked_first(tmp_path, ours, theirs):
    """Whatever two stores hold, merging one's file into the other gives each key once,
    sorted by the first lane, this store's entries with their values and ranked above the
    file's (the bound drops the other run's first)."""
    rng = np.random.default_rng(len(ours) * 100 + len(theirs))
    lanes = rng.integers(0, (1 << 61) - 1, size=(31, 3), dtype=np.uint64)
    lanes[::4, 0] = lanes[0, 0]  # some keys share the first lane
    folder = tmp_path / f"m{len(list(tmp_path.iterdir()))}"

    def store(keys, value):  # type: ignore[no-untyped-def]
        s = plugin(cache_dir=folder)
        s._read_cache()
        if keys:
            s._insert(lanes[keys], np.full(len(keys), value))
            s._merge()
        return s

    mine = store(ours, 1.0)  # loaded the folder before the other run saved
    other = store(theirs, 2.0)
    if theirs:
        other.close()
    mine._merge_file(ml.Path(mine._cache_file()))
    k = np.stack([mine._k0, mine._k1, mine._k2], axis=1)
    assert sorted(map(tuple, k.tolist())) == sorted(
        map(tuple, lanes[sorted({*ours, *theirs})].tolist())
    )
    assert (mine._k0[1:] >= mine._k0[:-1]).all()
    got, todo = mine._lookup(lanes[ours]) if ours else (np.empty(0), np.empty(0))
    assert not len(todo) and (got == 1.0).all()
    mine_only = np.isin(mine._val, [1.0])
    if mine_only.any() and (~mine_only).any():
        assert mine._stamp[mine_only].min() > mine._stamp[~mine_only].max()
