"""Batch features build only the bar fields their indicators read (`indicators.INPUTS`).

The table must be right for every indicator kind: a kind given only its declared fields
computes exactly what it computes with all five, and a missing entry fails loudly."""

from __future__ import annotations

import numpy as np
import pytest

from tradingd.features.catalog import FEATURE_SETS, Catalog, IndicatorNode, topological
from tradingd.features.engineer import bar_fields, compute_batch
from tradingd.features.indicators import INPUTS, talib_outputs
from tradingd.feeds.panel import Panel

FIELDS = ("open", "high", "low", "close", "volume")
PARAMS = {
    "rsi": (14,),
    "roc": (10,),
    "volume_roc": (10,),
    "macd": (12, 26, 9),
    "stoch": (14, 3, 3),
    "adx": (14,),
    "bbands": (20, 2.0),
    "atr": (14,),
    "trange": (),
    "obv": (),
    "mfi": (14,),
}


def _bars(n: int = 300, seed: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, n)))
    open_ = close * np.exp(rng.normal(0, 0.005, n))
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.01, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.01, n))
    volume = rng.integers(100_000, 1_000_000, n).astype(float)
    return {"open": open_, "high": high, "low": low, "close": close, "volume": volume}


def test_every_indicator_kind_has_its_inputs_listed() -> None:
    assert set(PARAMS) == set(INPUTS)
    with pytest.raises(KeyError, match="unknown indicator"):
        talib_outputs("not_a_kind", (), *(np.ones(5) for _ in FIELDS))


@pytest.mark.parametrize("kind", sorted(INPUTS))
def test_a_kind_given_only_its_inputs_computes_the_same(kind: str) -> None:
    bars = _bars()
    full = talib_outputs(kind, PARAMS[kind], *(bars[f] for f in FIELDS))
    only = talib_outputs(
        kind, PARAMS[kind], *(bars[f] if f in INPUTS[kind] else np.empty(0) for f in FIELDS)
    )
    assert full.keys() == only.keys()
    for name in full:
        np.testing.assert_array_equal(only[name], full[name])


@pytest.mark.parametrize("kind", sorted(INPUTS))
def test_a_field_left_out_of_a_kinds_inputs_fails_loudly(kind: str) -> None:
    """The inputs are minimal, and a field missing from them can never pass for values:
    TA-Lib refuses inputs of different lengths, and a lone empty input gives empty outputs,
    which `compute_batch` cannot store (its bars have the symbol's length)."""
    bars = _bars()
    n = len(bars["close"])
    for missing in INPUTS[kind]:
        args = [bars[f] if f in INPUTS[kind] and f != missing else np.empty(0) for f in FIELDS]
        try:
            out = talib_outputs(kind, PARAMS[kind], *args)
        except Exception as exc:
            assert "different" in str(exc) or "length" in str(exc), exc
        else:
            assert all(len(v) != n for v in out.values()), (kind, missing)


def test_bar_fields_of_a_momentum_is_the_close_alone() -> None:
    cat = Catalog()
    nodes = topological([cat.node("return_125")])
    assert bar_fields(nodes) == ("close",)
    nodes = topological([cat.node(n) for n in FEATURE_SETS["default_v1"]])
    kinds = {n.kind for n in nodes if isinstance(n, IndicatorNode)}
    assert "atr" in kinds and "mfi" in kinds  # so every field is read
    assert bar_fields(nodes) == FIELDS


def test_batch_values_do_not_depend_on_the_fields_no_feature_reads() -> None:
    """Garbage in open, high, low and volume changes nothing a close-only feature set
    computes, and the result is the same as with clean fields (a split included)."""
    bars = {f: np.stack([_bars(seed=s)[f] for s in (1, 2)], axis=1) for f in FIELDS}
    split = np.ones_like(bars["close"])
    split[150, 0] = 2.0
    bars["close"][150:, 0] /= 2.0
    times = np.arange(300).astype("datetime64[D]").astype("datetime64[ns]")

    def panel(**over: np.ndarray) -> Panel:
        f = {**bars, **over}
        return Panel(
            times,
            ("A", "B"),
            f["open"],
            f["high"],
            f["low"],
            f["close"],
            f["volume"],
            split,
            np.zeros_like(split),
        )

    names = ["return_20", "rsi_14", "macd_norm", "bb_position", "ret_1"]
    clean = compute_batch(panel(), names)
    junk = np.full_like(bars["close"], np.inf)
    dirty = compute_batch(panel(open=junk, high=junk, low=junk, volume=junk), names)
    for name in names:
        assert np.isfinite(clean[name]).any()
        np.testing.assert_array_equal(dirty[name], clean[name])
