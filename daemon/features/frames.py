"""The reference specification's `FeatureEngineer` API, on pandas DataFrames.

A thin layer over the catalogue: each method builds the same features as the engine computes
(the same code), for one symbol's DataFrame or a dict of them. Use `compute_batch` directly for
a whole universe; this is for notebooks and research scripts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ..core.errors import DataError
from ..feeds.panel import Panel
from .catalog import Catalog, cross_section
from .engineer import compute_batch, prepare_ml_data
from .indicators import IndicatorConfig

BASIC = ("ret_1", "log_ret_1", "hl_range", "oc_range")
ADVANCED = (
    "natr_14",
    "rsi_macd",
    "support_20",
    "resistance_20",
    "ret_mean_20",
    "ret_std_20",
    "vol_regime_20_120",
    "trend_50_200",
    "lag_1_ret_1",
    "lag_5_ret_1",
)


def frame_to_panel(df: pd.DataFrame, symbol: str = "X") -> Panel:
    cols = {c.lower(): c for c in df.columns}
    need = ("open", "high", "low", "close", "volume")
    missing = [c for c in need if c not in cols]
    if missing:
        raise DataError(
            f"DataFrame lacks column(s) {missing}; has {list(df.columns)}", symbol=symbol
        )
    idx = pd.DatetimeIndex(df.index)
    if idx.tz is not None:
        idx = idx.tz_convert("UTC").tz_localize(None)
    t = len(df)

    def col(name: str, default: float) -> np.ndarray:
        if name in cols:
            return df[cols[name]].to_numpy(dtype=np.float64).reshape(t, 1)
        return np.full((t, 1), default)

    return Panel(
        idx.to_numpy(dtype="datetime64[ns]"),
        (symbol,),
        col("open", 0),
        col("high", 0),
        col("low", 0),
        col("close", 0),
        col("volume", 0),
        col("split", 1.0),
        col("dividend", 0.0),
    )


class FeatureEngineer:
    def __init__(
        self,
        indicators: IndicatorConfig | None = None,
        cross_sectional: str = "rank",
        zscore_window: int = 60,
    ) -> None:
        self.catalog = Catalog(indicators, cross_sectional)
        self.zscore_window = zscore_window

    def _add(self, df: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
        values = compute_batch(frame_to_panel(df), names, self.catalog)
        out = df.copy()
        for n in names:
            out[n] = values[n][:, 0]
        return out

    def generate_basic_features(self, df: pd.DataFrame) -> pd.DataFrame:
        """Return, log return, high-low and open-close ranges normalised by price."""
        return self._add(df, BASIC)

    def generate_advanced_features(self, df: pd.DataFrame) -> pd.DataFrame:
        """Volatility ratio (ATR / price), RSI-MACD interaction, support and resistance,
        rolling statistics, volatility regime, trend and lags."""
        return self._add(df, ADVANCED)

    def cross_sectional_normalize(
        self, df_dict: Mapping[str, pd.DataFrame], feature_cols: Sequence[str]
    ) -> dict[str, pd.DataFrame]:
        """Adds `cs_<col>`: each bar's value normalised across the symbols that have one at
        that time (rank in [-1, 1] or z-score, as configured). Only that bar is used."""
        index = sorted(set().union(*(pd.DatetimeIndex(d.index) for d in df_dict.values())))
        out = {s: d.copy() for s, d in df_dict.items()}
        for col in feature_cols:
            mat = pd.DataFrame({s: d[col] for s, d in df_dict.items()}).reindex(index)
            arr = mat.to_numpy(dtype=np.float64)
            norm = np.vstack([cross_section(row, self.catalog.cross_method) for row in arr])
            for j, s in enumerate(mat.columns):
                out[s][f"cs_{col}"] = pd.Series(norm[:, j], index=index).reindex(out[s].index)
        return out

    def time_series_standardize(
        self, df: pd.DataFrame, feature_cols: Sequence[str], symbol: str = ""
    ) -> pd.DataFrame:
        """Adds `<col>_z`: the z-score over the trailing `zscore_window` values only (never
        the full-sample mean, which would leak the future into the past)."""
        out = df.copy()
        n = self.zscore_window
        for col in feature_cols:
            x = df[col].to_numpy(dtype=np.float64)
            z = np.full(x.shape, np.nan)
            if x.size >= n:
                from numpy.lib.stride_tricks import sliding_window_view

                from .catalog import window_op

                z[n - 1 :] = window_op("zscore", sliding_window_view(x, n).T)
            out[f"{col}_z"] = z
        return out

    def prepare_ml_data(
        self,
        df: pd.DataFrame,
        target_column: str = "close",
        time_steps: int = 60,
        feature_cols: Sequence[str] | None = None,
        horizon: int = 1,
        validation_fraction: float = 0.2,
    ) -> dict[str, np.ndarray]:
        """Windows of `feature_cols` (default: every numeric column but OHLCV) with the forward
        log return of `target_column` as target; chronological split with a purge."""
        skip = {"open", "high", "low", "close", "volume", "split", "dividend"}
        cols = list(
            feature_cols
            or [
                c
                for c in df.columns
                if c.lower() not in skip and pd.api.types.is_numeric_dtype(df[c])
            ]
        )
        if not cols:
            raise DataError("no feature columns to window")
        t = len(df)
        feats = {c: df[c].to_numpy(dtype=np.float64).reshape(t, 1) for c in cols}
        close = df[target_column].to_numpy(dtype=np.float64).reshape(t, 1)
        split = (
            df["split"].to_numpy(dtype=np.float64).reshape(t, 1)
            if "split" in df
            else np.ones((t, 1))
        )
        return prepare_ml_data(
            feats,
            cols,
            close,
            split,
            pd.DatetimeIndex(df.index).to_numpy(),
            window=time_steps,
            horizon=horizon,
            validation_fraction=validation_fraction,
        )
