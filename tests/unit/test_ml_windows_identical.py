"""`prepare_ml_data` fills its outputs straight from the sliding windows (one allocation per
split) instead of concatenating every symbol's windows, reordering and splitting copies:
the same arrays bit for bit (values, order, dtypes) and the same errors as the code it
replaced, kept here as `_reference` (tradingd up to f73b881)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pytest
from conftest import SP500_PARQUET
from numpy.lib.stride_tricks import sliding_window_view

from tradingd.features.engineer import compute_batch, prepare_ml_data, splits_after


def _reference(
    features: Mapping[str, np.ndarray],
    names: Sequence[str],
    close: np.ndarray,
    split: np.ndarray,
    times: np.ndarray,
    *,
    window: int = 60,
    horizon: int = 1,
    validation_fraction: float = 0.2,
    stride: int = 1,
    dtype: type = np.float32,
    split_at: np.datetime64 | None = None,
    start: np.datetime64 | None = None,
) -> dict[str, np.ndarray]:
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    t_len, n_sym = close.shape
    cube = np.stack([features[n] for n in names], axis=-1)  # (T, N, F)
    after = splits_after(split)
    adj = close / after
    with np.errstate(invalid="ignore", divide="ignore"):
        target = np.full((t_len, n_sym), np.nan)
        target[:-horizon] = np.log(adj[horizon:] / adj[:-horizon])
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    ts_: list[np.ndarray] = []
    syms: list[np.ndarray] = []
    for j in range(n_sym):
        x = cube[:, j, :]
        if t_len < window:
            continue
        win = sliding_window_view(x, window, axis=0)  # (T-window+1, F, window)
        ends = np.arange(window - 1, t_len, stride)
        if start is not None:
            ends = ends[times[ends] >= np.asarray(start).astype("datetime64[ns]")]
        ok = ~np.isnan(win[ends - window + 1]).any(axis=(1, 2)) & np.isfinite(target[ends, j])
        ends = ends[ok]
        if ends.size == 0:
            continue
        xs.append(np.transpose(win[ends - window + 1], (0, 2, 1)).astype(dtype))
        ys.append(target[ends, j].astype(dtype))
        ts_.append(ends)
        syms.append(np.full(ends.size, j))
    if not xs:
        raise ValueError("no complete window: too few bars after the warm-up")
    x_all = np.concatenate(xs)
    y_all = np.concatenate(ys)
    t_idx = np.concatenate(ts_)
    s_idx = np.concatenate(syms)
    order = np.lexsort((s_idx, t_idx))
    x_all, y_all, t_idx, s_idx = x_all[order], y_all[order], t_idx[order], s_idx[order]
    used = np.unique(t_idx)
    if split_at is not None:
        cut = int(np.searchsorted(times, np.asarray(split_at).astype("datetime64[ns]")))
    else:
        cut = used[int(len(used) * (1 - validation_fraction))]  # first validation bar index
    train = t_idx + horizon < cut
    val = t_idx >= cut
    return {
        "x_train": x_all[train],
        "y_train": y_all[train],
        "x_val": x_all[val],
        "y_val": y_all[val],
        "t_train": times[t_idx[train]],
        "t_val": times[t_idx[val]],
        "symbol_train": s_idx[train],
        "symbol_val": s_idx[val],
    }


def _panel(seed: int, t_len: int = 180, n_sym: int = 5, n_feat: int = 4, dtype: type = np.float32):
    """Features with NaN warm-ups, gaps and late starts; closes with splits and gaps."""
    rng = np.random.default_rng(seed)
    times = np.datetime64("2020-01-01", "ns") + np.arange(t_len) * np.timedelta64(1, "D")
    close = np.exp(np.cumsum(rng.normal(0, 0.02, (t_len, n_sym)), axis=0)) * 50
    split = np.ones((t_len, n_sym))
    split[rng.integers(1, t_len, 4), rng.integers(0, n_sym, 4)] = rng.choice([2.0, 0.5, 3.0], 4)
    close[rng.integers(0, t_len, 6), rng.integers(0, n_sym, 6)] = np.nan  # missing bars
    if n_sym > 2:
        close[: t_len // 3, 2] = np.nan  # a symbol listed late
    feats = {}
    for f in range(n_feat):
        a = rng.normal(size=(t_len, n_sym)).astype(dtype)
        a[: 3 + f] = np.nan  # warm-up
        a[rng.integers(0, t_len, 5), rng.integers(0, n_sym, 5)] = np.nan  # gaps
        feats[f"f{f}"] = a
    if n_sym > 3:
        feats["f0"][:, 3] = np.nan  # a symbol with no complete window at all
    return feats, list(feats), close, split, times


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        assert np.array_equal(a[k], b[k]), k


CASES = [
    {},
    {"window": 10},
    {"window": 7, "horizon": 3, "validation_fraction": 0.35},
    {"window": 12, "stride": 3},
    {"window": 8, "start": np.datetime64("2020-03-15")},
    {"window": 8, "start": np.datetime64("2020-02-10T00:00:00", "ns")},
    {"window": 9, "split_at": np.datetime64("2020-05-01")},
    {"window": 9, "split_at": np.datetime64("2020-04-20"), "start": np.datetime64("2020-02-01")},
    {"window": 6, "dtype": np.float64},
    {"window": 5, "stride": 2, "horizon": 2, "split_at": np.datetime64("2021-01-01")},  # no val
    {"window": 5, "split_at": np.datetime64("2019-01-01")},  # no training window
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kwargs", CASES)
def test_same_arrays_as_before(seed: int, kwargs: dict) -> None:
    args = _panel(seed)
    if "window" not in kwargs:
        args = _panel(seed, t_len=260)
    _same(prepare_ml_data(*args, **kwargs), _reference(*args, **kwargs))


@pytest.mark.parametrize("n_sym", [1, 2, 7])
@pytest.mark.parametrize("feat_dtype", [np.float32, np.float64])
def test_same_arrays_other_shapes(n_sym: int, feat_dtype: type) -> None:
    args = _panel(n_sym, t_len=120, n_sym=n_sym, n_feat=3, dtype=feat_dtype)
    for kwargs in ({"window": 10}, {"window": 4, "dtype": np.float64, "stride": 5}):
        _same(prepare_ml_data(*args, **kwargs), _reference(*args, **kwargs))


def test_mixed_feature_dtypes() -> None:
    feats, names, close, split, times = _panel(4)
    feats["f1"] = feats["f1"].astype(np.float64)
    for dtype in (np.float32, np.float64):
        kw = {"window": 10, "dtype": dtype}
        _same(
            prepare_ml_data(feats, names, close, split, times, **kw),
            _reference(feats, names, close, split, times, **kw),
        )


def _error(fn, *args, **kwargs) -> tuple[type, str]:
    with pytest.raises(Exception) as e:
        fn(*args, **kwargs)
    return type(e.value), str(e.value)


@pytest.mark.parametrize(
    "change",
    [
        {"validation_fraction": 1.0},
        {"window": 500},  # fewer bars than a window
        {"start": np.datetime64("2030-01-01")},  # no window ends after start
        {"names": []},
        {"names": ["f0", "nope"]},
        {"shapes": True},
        {"no_symbols": True},
    ],
)
def test_same_errors(change: dict) -> None:
    feats, names, close, split, times = _panel(5)
    kwargs = {"window": 10}
    if "names" in change:
        names = change.pop("names")
    if change.pop("shapes", False):
        feats["f2"] = feats["f2"][:, :3]
    if change.pop("no_symbols", False):
        feats = {n: a[:, :0] for n, a in feats.items()}
        close, split = close[:, :0], split[:, :0]
    kwargs.update(change)
    args = (feats, names, close, split, times)
    assert _error(prepare_ml_data, *args, **kwargs) == _error(_reference, *args, **kwargs)


@pytest.mark.skipif(not SP500_PARQUET.exists(), reason="the shared S&P 500 file is absent")
def test_same_arrays_on_real_stocks() -> None:
    """Six stocks (one listed in 2002, splits), the models' default features, as `tradingd
    train` computes them."""
    from tradingd.features.catalog import Catalog, resolve_set
    from tradingd.feeds.loaders import load_panel

    panel = load_panel(
        "parquet",
        str(SP500_PARQUET),
        symbols=["AAPL", "A", "NVDA", "MSFT", "PRU", "XOM"],
        end="2004-12-31",
    )
    names = resolve_set("default_v1")
    feats = compute_batch(panel, names, Catalog(), dtype=np.float32)
    args = (feats, names, panel.close, panel.split, panel.times)
    for kw in (
        {},
        {"start": np.datetime64("2001-01-01"), "horizon": 5},
        {"split_at": np.datetime64("2003-06-02"), "window": 30},
    ):
        got = prepare_ml_data(*args, **kw)
        assert len(got["x_train"]) > 1000 and len(got["x_val"]) > 100
        _same(got, _reference(*args, **kw))
