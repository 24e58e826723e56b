"""TA-Lib in batch over one symbol's series: the reference the streaming indicators must match
(shared by the unit tests and the real-data integration test)."""

from __future__ import annotations

import numpy as np
import talib

from tradingd.features import talib_stream as ts


def talib_reference(ind, o, h, lo, c, v) -> dict[str, np.ndarray]:
    """TA-Lib in batch over one symbol's series, keyed like the streaming outputs."""
    if isinstance(ind, ts.Roc):
        x = c if ind.field == "close" else v
        return {ind.name: talib.ROC(x, timeperiod=ind.period)}
    if isinstance(ind, ts.Rsi):
        return {"rsi": talib.RSI(c, timeperiod=ind.period)}
    if isinstance(ind, ts.Macd):
        m, s, hist = talib.MACD(
            c, fastperiod=ind.fast, slowperiod=ind.slow, signalperiod=ind.signal
        )
        return {"macd": m, "macd_signal": s, "macd_hist": hist}
    if isinstance(ind, ts.Stoch):
        k, d = talib.STOCH(
            h,
            lo,
            c,
            fastk_period=ind.fastk,
            slowk_period=ind.slowk,
            slowk_matype=0,
            slowd_period=ind.slowd,
            slowd_matype=0,
        )
        return {"stoch_k": k, "stoch_d": d}
    if isinstance(ind, ts.Adx):
        return {"adx": talib.ADX(h, lo, c, timeperiod=ind.period)}
    if isinstance(ind, ts.BBands):
        u, m, lw = talib.BBANDS(
            c, timeperiod=ind.period, nbdevup=ind.nbdev, nbdevdn=ind.nbdev, matype=0
        )
        return {"bb_upper": u, "bb_middle": m, "bb_lower": lw}
    if isinstance(ind, ts.Atr):
        return {
            "atr": talib.ATR(h, lo, c, timeperiod=ind.period),
            "natr": talib.NATR(h, lo, c, timeperiod=ind.period),
        }
    if isinstance(ind, ts.TRange):
        return {"trange": talib.TRANGE(h, lo, c)}
    if isinstance(ind, ts.Obv):
        return {"obv": talib.OBV(c, v)}
    if isinstance(ind, ts.Mfi):
        return {"mfi": talib.MFI(h, lo, c, v, timeperiod=ind.period)}
    raise TypeError(type(ind))
