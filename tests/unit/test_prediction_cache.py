"""The ML plugin's prediction cache is keyed by what the models see, not by (symbol, bar time).

Cross-sectional features depend on the universe and recursive indicators on where the data
starts, so the same (symbol, bar time) can carry another input in another run. These tests use
the shipped model pair (no train extra) and tiny inputs."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from conftest import make_panel
from structlog.testing import capture_logs

from tradingd.app import build_engine
from tradingd.config import PluginSpec, load_config
from tradingd.core.ports import BarContext
from tradingd.feeds.panel import FIELDS, Panel
from tradingd_plugins.signals.ml_ensemble import CACHE_FORMAT, MlEnsemble, MlEnsembleConfig

T0 = datetime(2020, 1, 1, tzinfo=UTC)


def plugin(symbols=("A", "B"), cache_dir="", **kw):
    return MlEnsemble(MlEnsembleConfig(threshold=0.5, cache_dir=str(cache_dir), **kw), symbols)


def inputs(n_bars, n_symbols, seed=0):
    """(bars, symbols, features) float32 feature values, as the engine would hand them over."""
    return np.random.default_rng(seed).normal(size=(n_bars, n_symbols, 20)).astype(np.float32)


def feed(p, x, start=T0):
    """Score every bar of x (bars, symbols, features); returns (bars, symbols) scores."""
    n = len(p.symbols)
    ready = np.ones(n, bool)
    out = []
    for i, row in enumerate(x):
        feats = {f: row[:, k] for k, f in enumerate(p.features)}
        ctx = BarContext(
            start + timedelta(days=i), i, p.symbols, None, None, ready, None, feats, None, ready
        )  # type: ignore[arg-type]
        out.append(p.score(ctx))
    return np.array(out)


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


def test_another_input_at_the_same_symbol_and_time_is_never_served_from_the_cache(tmp_path):
    w = 60
    x1 = inputs(w + 2, 2, seed=1)
    first = plugin(cache_dir=tmp_path)
    s1 = feed(first, x1)
    first.close()
    # Symbol A's inputs differ (say its cross-sectional rank in another universe); B's do not.
    x2 = x1.copy()
    x2[:, 0] = inputs(w + 2, 1, seed=2)[:, 0]
    second = plugin(cache_dir=tmp_path)
    s2 = feed(second, x2)
    fresh = feed(plugin(), x2)
    np.testing.assert_array_equal(s2, fresh)
    assert not np.array_equal(s2[w - 1 :, 0], s1[w - 1 :, 0])  # the old key would have hit
    np.testing.assert_array_equal(s2[:, 1], s1[:, 1])
    assert second.model_calls == 3 and second.cache_hits == 3  # only B's windows were cached


def test_the_same_input_under_another_symbol_and_time_is_a_hit(tmp_path):
    x = inputs(62, 2, seed=3)
    first = plugin(cache_dir=tmp_path)
    s1 = feed(first, x)
    first.close()
    other = plugin(symbols=("Y", "Z"), cache_dir=tmp_path)
    s2 = feed(other, x[:, ::-1], start=T0 + timedelta(days=1000))
    assert other.model_calls == 0 and other.cache_hits == 6
    np.testing.assert_array_equal(s2, s1[:, ::-1])


def test_old_format_or_corrupt_files_are_never_used(tmp_path):
    x = inputs(61, 2, seed=4)
    expected = feed(plugin(), x)
    version = plugin().version
    path = tmp_path / f"{version}.json"
    times = [(T0 + timedelta(days=i)).isoformat() for i in range(61)]
    old = [[s, t, 0.123] for s in ("A", "B") for t in times]  # keyed by (symbol, time)
    bad_entries = {"format": CACHE_FORMAT, "model_version": version, "entries": [["zz", 1.0]]}
    for content, event in (
        (json.dumps(old), "prediction_cache.ignored"),
        ("{not json", "prediction_cache.unreadable"),
        (json.dumps(bad_entries), "prediction_cache.unreadable"),
        (json.dumps({**bad_entries, "entries": 5}), "prediction_cache.unreadable"),
        (json.dumps({**bad_entries, "entries": [[1]]}), "prediction_cache.unreadable"),
    ):
        path.write_text(content)
        with capture_logs() as logs:
            p = plugin(cache_dir=tmp_path)
        assert event in [e["event"] for e in logs], content[:40]
        assert not p._cache
        np.testing.assert_array_equal(feed(p, x), expected)
        assert p.model_calls == 2


def test_the_cache_is_bounded_and_keeps_the_most_recently_used(tmp_path):
    p = plugin(cache_dir=tmp_path, cache_size=2)
    w = inputs(3, 60, seed=5)
    for k in range(3):
        p.predict(w[k : k + 1])
    p.predict(w[1:2])  # w1 used again: w2 is now the least recently used
    p.predict(w[0:1])  # recomputed (evicted), which evicts w2
    assert p.model_calls == 4 and len(p._cache) == 2
    p.close()
    data = json.loads((tmp_path / f"{p.version}.json").read_text())
    assert data["format"] == CACHE_FORMAT and len(data["entries"]) == 2
    q = plugin(cache_dir=tmp_path, cache_size=2)
    q.predict(w[[0, 1]])
    assert q.model_calls == 0
    q.predict(w[2:3])
    assert q.model_calls == 1


def test_bad_cache_settings():
    with pytest.raises(ValueError, match="cache_size"):
        MlEnsembleConfig(cache_size=-1)
    with pytest.raises(ValueError, match="cache_versions"):
        MlEnsembleConfig(cache_versions=0)


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
