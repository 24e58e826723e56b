"""Technical indicators through TA-Lib, in batch over whole histories.

`IndicatorEngine` keeps the reference specification's method names and works on one symbol's
OHLCV DataFrame. `talib_outputs` is the batch primitive the feature engineer uses: one
indicator over one symbol's own bars (rows without a bar are left out, so a halt or a late
listing does not poison recursive indicators), every output of the indicator by name.

Periods come from `IndicatorConfig` (the specification's defaults).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import DataError
from ..core.lazy import LazyModule

if TYPE_CHECKING:
    import pandas as pd  # in annotations only: the caller's frames
    import talib
else:
    # Imported at the first indicator computed (core/lazy.py): TA-Lib's own import imports
    # pandas, which a strategy without TA-Lib indicators never needs.
    talib = LazyModule("talib")


@dataclass(frozen=True)
class IndicatorConfig:
    rsi: int = 14
    macd_fast: int = 12
    macd_slow: int = 26
    macd_signal: int = 9
    roc: int = 10
    stoch_fastk: int = 14
    stoch_slowk: int = 3
    stoch_slowd: int = 3
    adx: int = 14
    bb_period: int = 20
    bb_nbdev: float = 2.0
    atr: int = 14
    mfi: int = 14
    volume_roc: int = 10

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if value <= 0 or (name != "bb_nbdev" and value < 1):
                raise ValueError(f"{name} must be positive, got {value!r}")
        if self.macd_fast >= self.macd_slow:
            raise ValueError(
                f"macd_fast must be < macd_slow, got {self.macd_fast} >= {self.macd_slow}"
            )


# A bar's fields in `talib_outputs`' argument order (and the columns `IndicatorEngine` reads).
BAR_FIELDS = ("open", "high", "low", "close", "volume")

# The bar fields each indicator kind reads (of BAR_FIELDS), so a batch evaluation builds only
# those: a split-adjusted copy of a field costs as much as many an indicator. The fields not
# listed reach `talib_outputs` as empty arrays: a field missing here fails loudly, never as
# values (TA-Lib refuses inputs of different lengths, and an empty lone input gives empty
# outputs, which the batch cannot store in a symbol's rows).
INPUTS: dict[str, tuple[str, ...]] = {
    "rsi": ("close",),
    "roc": ("close",),
    "volume_roc": ("volume",),
    "macd": ("close",),
    "stoch": ("high", "low", "close"),
    "adx": ("high", "low", "close"),
    "bbands": ("close",),
    "atr": ("high", "low", "close"),
    "trange": ("high", "low", "close"),
    "obv": ("close", "volume"),
    "mfi": ("high", "low", "close", "volume"),
}


def talib_outputs(
    kind: str,
    params: tuple[Any, ...],
    o: np.ndarray,
    h: np.ndarray,
    lo: np.ndarray,
    c: np.ndarray,
    v: np.ndarray,
) -> dict[str, np.ndarray]:
    """One TA-Lib indicator over one symbol's bars (float64 arrays without gaps)."""
    if kind == "rsi":
        return {"rsi": talib.RSI(c, timeperiod=params[0])}
    if kind == "roc":
        return {"roc": talib.ROC(c, timeperiod=params[0])}
    if kind == "volume_roc":
        return {"volume_roc": talib.ROC(v, timeperiod=params[0])}
    if kind == "macd":
        m, s, hist = talib.MACD(
            c, fastperiod=params[0], slowperiod=params[1], signalperiod=params[2]
        )
        return {"macd": m, "macd_signal": s, "macd_hist": hist}
    if kind == "stoch":
        k, d = talib.STOCH(
            h,
            lo,
            c,
            fastk_period=params[0],
            slowk_period=params[1],
            slowk_matype=talib.MA_Type.SMA,
            slowd_period=params[2],
            slowd_matype=talib.MA_Type.SMA,
        )
        return {"stoch_k": k, "stoch_d": d}
    if kind == "adx":
        return {"adx": talib.ADX(h, lo, c, timeperiod=params[0])}
    if kind == "bbands":
        up, mid, low = talib.BBANDS(
            c, timeperiod=params[0], nbdevup=params[1], nbdevdn=params[1], matype=talib.MA_Type.SMA
        )
        return {"bb_upper": up, "bb_middle": mid, "bb_lower": low}
    if kind == "atr":
        return {
            "atr": talib.ATR(h, lo, c, timeperiod=params[0]),
            "natr": talib.NATR(h, lo, c, timeperiod=params[0]),
        }
    if kind == "trange":
        return {"trange": talib.TRANGE(h, lo, c)}
    if kind == "obv":
        return {"obv": talib.OBV(c, v)}
    if kind == "mfi":
        return {"mfi": talib.MFI(h, lo, c, v, timeperiod=params[0])}
    raise KeyError(f"unknown indicator {kind!r}")


class IndicatorEngine:
    """The specification's API: indicator columns added to one symbol's OHLCV DataFrame.

    Rows must be one symbol's bars in time order without NaN (use the loaders' validation and
    repairs first); the result is a new DataFrame, the input is left unchanged."""

    def __init__(self, config: IndicatorConfig | None = None) -> None:
        self.config = config or IndicatorConfig()

    def _arrays(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        cols = {c.lower(): c for c in df.columns}
        missing = [c for c in BAR_FIELDS if c not in cols]
        if missing:
            raise DataError(f"indicator input lacks column(s) {missing}; has {list(df.columns)}")
        out = {c: df[cols[c]].to_numpy(dtype=np.float64) for c in BAR_FIELDS}
        bad = [c for c, a in out.items() if np.isnan(a).any()]
        if bad:
            row = int(np.flatnonzero(np.isnan(out[bad[0]]))[0])
            raise DataError(
                f"NaN in column {bad[0]!r}; repair or drop it first", row=str(df.index[row])
            )
        return out

    def _add(self, df: pd.DataFrame, parts: list[tuple[str, tuple[Any, ...]]]) -> pd.DataFrame:
        a = self._arrays(df)
        out = df.copy()
        for kind, params in parts:
            values = talib_outputs(
                kind, params, a["open"], a["high"], a["low"], a["close"], a["volume"]
            )
            for name, arr in values.items():
                out[name] = arr
        return out

    def calculate_momentum_indicators(self, df: pd.DataFrame) -> pd.DataFrame:
        """RSI, MACD line/signal/histogram, ROC, Stochastic %K/%D, ADX."""
        c = self.config
        return self._add(
            df,
            [
                ("rsi", (c.rsi,)),
                ("macd", (c.macd_fast, c.macd_slow, c.macd_signal)),
                ("roc", (c.roc,)),
                ("stoch", (c.stoch_fastk, c.stoch_slowk, c.stoch_slowd)),
                ("adx", (c.adx,)),
            ],
        )

    def calculate_volatility_indicators(self, df: pd.DataFrame) -> pd.DataFrame:
        """Bollinger Bands upper/middle/lower, ATR, NATR, true range."""
        c = self.config
        return self._add(
            df,
            [
                ("bbands", (c.bb_period, c.bb_nbdev)),
                ("atr", (c.atr,)),
                ("trange", ()),
            ],
        )

    def calculate_volume_indicators(self, df: pd.DataFrame) -> pd.DataFrame:
        """OBV, MFI, volume rate of change."""
        c = self.config
        return self._add(df, [("obv", ()), ("mfi", (c.mfi,)), ("volume_roc", (c.volume_roc,))])

    def calculate_all_indicators(self, df: pd.DataFrame) -> pd.DataFrame:
        out = self.calculate_momentum_indicators(df)
        out = self.calculate_volatility_indicators(out)
        return self.calculate_volume_indicators(out)
