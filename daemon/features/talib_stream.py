"""Streaming TA-Lib indicators: one bar at a time for a whole universe, no history recomputed.

Each class keeps, per symbol, exactly the state TA-Lib's batch algorithm carries from one bar
to the next (running sums, Wilder averages, EMAs, ring buffers of the last bars), seeded the
way TA-Lib seeds it and updated with the same floating-point operations in the same order,
so that after a symbol's lookback its streamed value equals what `talib.<FUNC>` returns on
that symbol's whole history of valid bars. Against the installed TA-Lib (0.8.x) every output
is bit-identical except the BBANDS bands (~1e-15 relative, see below).

Vectorised over symbols: every `update` works on arrays of shape (N,) and (W, N); symbols
advance independently (a symbol without a bar now keeps its state untouched; a symbol that
lists late starts its own seeding at its first bar), so ring buffers carry per-symbol
positions derived from each symbol's own bar count.

Splits: `split[i] = s != 1` on a symbol's bar means it split s-for-1 before that bar. Before
the bar is used, every price-valued piece of the symbol's state is divided by s and every
volume-valued piece multiplied by s (money flows, price*volume, are unchanged), so the state
is what it would have been had the history been quoted in post-split units. A split on a bar
the symbol does not have (valid False) is ignored, like everything else on such a bar.

TA-Lib details replicated (TA-Lib 0.8 semantics):

* SMA (BBANDS middle band, STOCH slow K/D): a running window total, the new value added, the
  average taken, then the trailing value subtracted, accumulated from 0.0 at the start of the
  series, as `TA_SMA` does.
* MACD: EMAs seeded by the SMA of their first `period` inputs, the fast one on the `fast`
  bars ending on bar slow-1 so both start together; the signal EMA seeded by the SMA of the
  first `signal` MACD values; k = 2/(p+1); each step is fma(k, x - ema, ema) (TA-Lib 0.8
  fuses it; `_fma` reproduces the single rounding); slow < fast are swapped.
* RSI: gains/losses summed over the first `period` changes then scaled by 1/period, Wilder
  steps (avg*(n-1) + delta) * (1/n); 0 when gain+loss is exactly 0.
* ATR/NATR: seeded by the mean of the first `period` true ranges, then
  fma((n-1)/n, atr, (1 - (n-1)/n) * tr); NATR = atr/close*100, 0 for a zero close.
* ADX: n-1 bars of +DM/-DM/TR sums, then Wilder steps `x - x/n (+ today)`; the DX of the
  next n bars are summed and averaged into the first ADX, then (adx*(n-1) + dx)/n. A DM is
  counted only when its delta is positive and strictly larger than the other (ties zero
  both); DX only when the TR sum is > 0 and |+DI + -DI| >= 1e-14.
* STOCH fast %K = (close - lowest)/(highest - lowest)*100, 0 when the range is within 1e-14
  of the extremes' magnitude.
* MFI: money-flow ring buffer with running sums (old flow subtracted before the new one is
  added), a typical-price move inside a 1e-14 relative dead-zone counts as no flow, a window
  of only null flows resets the sums to exactly zero, the positive sum clamped to [0, total],
  0 when the total is <= 0. (TA-Lib 0.8 no longer applies the old `total < 1.0` rule.)
* BBANDS: population standard deviation. TA-Lib 0.8 computes it with a shifted-data variance
  re-anchored on a schedule of its own; here it is computed directly from the window buffer
  (mean, then mean of squared deviations), which agrees to ~1e-15 relative on the bands.
* ROC: (x/x[-n] - 1)*100, 0 when x[-n] is 0. OBV starts at the first bar's volume.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "PRICE_DEGREE",
    "VOLUME_DEGREE",
    "Adx",
    "Atr",
    "BBands",
    "Indicator",
    "Macd",
    "Mfi",
    "Obv",
    "Roc",
    "Rsi",
    "Stoch",
    "TRange",
]

# TA-Lib's dead-zone constant (TA_EPSILON in ta_utility.h).
_EPS = 1e-14

# How each output scales when prices are multiplied by g (g**degree); used by the batch side
# to reproduce the live split semantics from TA-Lib on split-adjusted series. A Roc given
# another output name (Roc(..., name="vroc")) is a ratio: degree 0 (use .get(name, 0)).
PRICE_DEGREE: dict[str, int] = {
    "roc": 0,
    "rsi": 0,
    "macd": 1,
    "macd_signal": 1,
    "macd_hist": 1,
    "stoch_k": 0,
    "stoch_d": 0,
    "adx": 0,
    "bb_upper": 1,
    "bb_middle": 1,
    "bb_lower": 1,
    "atr": 1,
    "natr": 0,
    "trange": 1,
    "obv": 0,
    "mfi": 0,
}
# How each output scales when volumes are multiplied by g.
VOLUME_DEGREE: dict[str, int] = {name: 1 if name == "obv" else 0 for name in PRICE_DEGREE}


@runtime_checkable
class Indicator(Protocol):
    outputs: tuple[str, ...]
    lookback: int

    def update(
        self,
        open: np.ndarray,
        high: np.ndarray,
        low: np.ndarray,
        close: np.ndarray,
        volume: np.ndarray,
        valid: np.ndarray,
        split: np.ndarray,
    ) -> dict[str, np.ndarray]: ...


class _Bar:
    """The current cross-section restricted to the symbols that have a bar now."""

    __slots__ = ("_arrays", "_cache", "idx")

    def __init__(self, idx: np.ndarray, arrays: dict[str, np.ndarray]):
        self.idx = idx
        self._arrays = arrays
        self._cache: dict[str, np.ndarray] = {}

    def __getitem__(self, field: str) -> np.ndarray:
        v = self._cache.get(field)
        if v is None:
            v = np.asarray(self._arrays[field], dtype=np.float64)[self.idx]
            self._cache[field] = v
        return v


def _check_period(name: str, value: int, minimum: int) -> int:
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


class _Streaming:
    """Shared update path: select the symbols with a bar, apply splits, step, scatter."""

    outputs: tuple[str, ...] = ()
    lookback: int = 0
    # Names of state arrays (last axis = symbol) by how they scale with a split.
    _price_state: tuple[str, ...] = ()
    _volume_state: tuple[str, ...] = ()

    def __init__(self, n_symbols: int):
        self.n_symbols = int(n_symbols)
        # Valid bars seen so far, per symbol.
        self.count = np.zeros(self.n_symbols, dtype=np.int64)

    def _zeros(self, rows: int | None = None) -> np.ndarray:
        shape = (self.n_symbols,) if rows is None else (rows, self.n_symbols)
        return np.zeros(shape, dtype=np.float64)

    def update(self, open, high, low, close, volume, valid, split=None) -> dict[str, np.ndarray]:
        n = self.n_symbols
        idx = np.flatnonzero(np.asarray(valid, dtype=bool))
        out = {name: np.full(n, np.nan) for name in self.outputs}
        if idx.size == 0:
            return out
        if split is not None:
            s = np.asarray(split, dtype=np.float64)[idx]
            hit = (s != 1.0) & np.isfinite(s) & (s > 0.0)
            if hit.any():
                self._apply_split(idx[hit], s[hit])
        bar = _Bar(idx, {"open": open, "high": high, "low": low, "close": close, "volume": volume})
        c = self.count[idx]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            res = self._step(idx, c, bar)
        self.count[idx] = c + 1
        for name, values in res.items():
            out[name][idx] = values
        return out

    def _apply_split(self, cols: np.ndarray, s: np.ndarray) -> None:
        for name in self._price_state:
            a = getattr(self, name)
            a[..., cols] = a[..., cols] / s
        for name in self._volume_state:
            a = getattr(self, name)
            a[..., cols] = a[..., cols] * s

    def _step(self, idx: np.ndarray, c: np.ndarray, bar: _Bar) -> dict[str, np.ndarray]:
        raise NotImplementedError


_SPLITTER = 134217729.0  # 2**27 + 1, Dekker's splitting constant for float64


def _fma(a, b, c):
    """a*b + c with a single rounding (as C's fma), vectorised: Dekker's exact product and
    Knuth's two-sum, so the installed TA-Lib's fused multiply-adds are reproduced to the bit
    (but for vanishingly rare double-rounding ties). Finite inputs of moderate magnitude."""
    p = a * b
    t = _SPLITTER * a
    ah = t - (t - a)
    al = a - ah
    t = _SPLITTER * b
    bh = t - (t - b)
    bl = b - bh
    e = ((ah * bh - p) + ah * bl + al * bh) + al * bl  # p + e == a*b exactly
    s = p + c
    z = s - p
    err = (p - (s - z)) + (c - z)  # s + err == p + c exactly
    return s + (err + e)


def _sma_step(
    buf: np.ndarray, total: np.ndarray, j: np.ndarray, cols: np.ndarray, x: np.ndarray
) -> np.ndarray:
    """One step of TA_SMA's running total for the symbols `cols`, whose input series are at
    positions `j` (0-based). Returns the average, NaN while j < period-1."""
    p = buf.shape[0]
    buf[j % p, cols] = x
    t = total[cols] + x
    ready = j >= p - 1
    avg = np.where(ready, t / p, np.nan)
    trailing = buf[(j + 1) % p, cols]  # the input at j-p+1 (the one just written if p == 1)
    total[cols] = np.where(ready, t - trailing, t)
    return avg


def _true_range(high: np.ndarray, low: np.ndarray, prev_close: np.ndarray) -> np.ndarray:
    """TA-Lib's order: high-low, then |prev_close-high|, then |prev_close-low|."""
    greatest = high - low
    greatest = np.maximum(greatest, np.abs(prev_close - high))
    return np.maximum(greatest, np.abs(prev_close - low))


def _nan_unless(ready: np.ndarray, values: np.ndarray) -> np.ndarray:
    return np.where(ready, values, np.nan)


class Roc(_Streaming):
    """TA_ROC: (x / x[-period] - 1) * 100, 0 when the old value is 0."""

    def __init__(self, n_symbols: int, period: int = 10, field: str = "close", name: str = "roc"):
        super().__init__(n_symbols)
        if field not in ("close", "volume"):
            raise ValueError(f"field must be 'close' or 'volume', got {field!r}")
        self.period = _check_period("period", period, 1)
        self.field = field
        self.name = name
        self.outputs = (name,)
        self.lookback = self.period
        self.buf = self._zeros(self.period)
        if field == "close":
            self._price_state = ("buf",)
        else:
            self._volume_state = ("buf",)

    def _step(self, idx, c, bar):
        x = bar[self.field]
        slot = c % self.period
        old = self.buf[slot, idx]
        self.buf[slot, idx] = x
        roc = np.where(old != 0.0, (x / old - 1.0) * 100.0, 0.0)
        return {self.name: _nan_unless(c >= self.period, roc)}


class Rsi(_Streaming):
    """TA_RSI (Wilder): gains/losses summed over the first `period` changes, then smoothed."""

    outputs = ("rsi",)
    _price_state = ("prev", "gain", "loss")

    def __init__(self, n_symbols: int, period: int = 14):
        super().__init__(n_symbols)
        self.period = _check_period("period", period, 2)
        self.lookback = self.period
        self.prev = self._zeros()
        self.gain = self._zeros()
        self.loss = self._zeros()

    def _step(self, idx, c, bar):
        n = self.period
        inv = 1.0 / n
        x = bar["close"]
        g = self.gain[idx]
        lo = self.loss[idx]
        d = x - self.prev[idx]
        gd = np.where(d > 0.0, d, 0.0)
        ld = gd - d
        seed_g = g + gd
        seed_l = lo + ld
        seed_g = np.where(c == n, seed_g * inv, seed_g)
        seed_l = np.where(c == n, seed_l * inv, seed_l)
        wild_g = (g * (n - 1) + gd) * inv
        wild_l = (lo * (n - 1) + ld) * inv
        first = c == 0
        g = np.where(first, 0.0, np.where(c <= n, seed_g, wild_g))
        lo = np.where(first, 0.0, np.where(c <= n, seed_l, wild_l))
        self.gain[idx] = g
        self.loss[idx] = lo
        self.prev[idx] = x
        tot = g + lo
        rsi = np.where(tot > 0.0, 100.0 * (g / tot), 0.0)
        return {"rsi": _nan_unless(c >= n, rsi)}


def _ema_k(period: int) -> float:
    return 2.0 / float(period + 1)


class Macd(_Streaming):
    """TA_MACD: fast/slow EMAs seeded on windows ending on the same bar, signal EMA of MACD."""

    outputs = ("macd", "macd_signal", "macd_hist")
    _price_state = ("sum_slow", "sum_fast", "ema_fast", "ema_slow", "sum_signal", "signal_ema")

    def __init__(self, n_symbols: int, fast: int = 12, slow: int = 26, signal: int = 9):
        super().__init__(n_symbols)
        fast = _check_period("fast", fast, 2)
        slow = _check_period("slow", slow, 2)
        if slow < fast:  # TA-Lib swaps them
            fast, slow = slow, fast
        self.fast, self.slow = fast, slow
        self.signal = _check_period("signal", signal, 1)
        self.lookback = (slow - 1) + (self.signal - 1)
        self.kf = _ema_k(fast)
        self.ks = _ema_k(slow)
        self.kg = _ema_k(self.signal)
        for name in self._price_state:
            setattr(self, name, self._zeros())

    def _step(self, idx, c, bar):
        fast, slow, sig_p = self.fast, self.slow, self.signal
        x = bar["close"]
        seeding = c < slow
        sum_slow = self.sum_slow[idx] + x
        sum_fast = np.where(c >= slow - fast, self.sum_fast[idx] + x, self.sum_fast[idx])
        self.sum_slow[idx] = np.where(seeding, sum_slow, self.sum_slow[idx])
        self.sum_fast[idx] = np.where(seeding, sum_fast, self.sum_fast[idx])

        seed_now = c == slow - 1
        ef = self.ema_fast[idx]
        es = self.ema_slow[idx]
        ef = np.where(seed_now, sum_fast / fast, _fma(self.kf, x - ef, ef))
        es = np.where(seed_now, sum_slow / slow, _fma(self.ks, x - es, es))
        self.ema_fast[idx] = ef
        self.ema_slow[idx] = es
        m = ef - es

        last_seed = slow - 1 + sig_p - 1  # == lookback
        in_signal_seed = (c >= slow - 1) & (c <= last_seed)
        ssum = np.where(seed_now, 0.0, self.sum_signal[idx]) + m
        self.sum_signal[idx] = np.where(in_signal_seed, ssum, self.sum_signal[idx])
        sig = self.signal_ema[idx]
        stepped = m if sig_p == 1 else _fma(self.kg, m - sig, sig)
        sig = np.where(c == last_seed, ssum / sig_p, np.where(c > last_seed, stepped, sig))
        self.signal_ema[idx] = sig

        ready = c >= self.lookback
        return {
            "macd": _nan_unless(ready, m),
            "macd_signal": _nan_unless(ready, sig),
            "macd_hist": _nan_unless(ready, m - sig),
        }


class Stoch(_Streaming):
    """TA_STOCH with SMA slow %K and SMA slow %D."""

    outputs = ("stoch_k", "stoch_d")
    _price_state = ("high_buf", "low_buf")

    def __init__(self, n_symbols: int, fastk: int = 14, slowk: int = 3, slowd: int = 3):
        super().__init__(n_symbols)
        self.fastk = _check_period("fastk", fastk, 1)
        self.slowk = _check_period("slowk", slowk, 1)
        self.slowd = _check_period("slowd", slowd, 1)
        self.lookback = (self.fastk - 1) + (self.slowk - 1) + (self.slowd - 1)
        self.high_buf = self._zeros(self.fastk)
        self.low_buf = self._zeros(self.fastk)
        self.k_buf = self._zeros(self.slowk)
        self.k_total = self._zeros()
        self.d_buf = self._zeros(self.slowd)
        self.d_total = self._zeros()

    def _step(self, idx, c, bar):
        w = self.fastk
        slot = c % w
        self.high_buf[slot, idx] = bar["high"]
        self.low_buf[slot, idx] = bar["low"]
        out_k = np.full(idx.size, np.nan)
        out_d = np.full(idx.size, np.nan)
        j = c - (w - 1)  # position in the fast-K series
        act = j >= 0
        if not act.any():
            return {"stoch_k": out_k, "stoch_d": out_d}
        cols = idx[act]
        hh = self.high_buf[:, cols].max(axis=0)
        ll = self.low_buf[:, cols].min(axis=0)
        rng = hh - ll
        flat = np.abs(rng) <= _EPS * (np.abs(hh) + np.abs(ll))
        fastk = np.where(flat, 0.0, (bar["close"][act] - ll) / rng * 100.0)
        ja = j[act]
        slow_k = _sma_step(self.k_buf, self.k_total, ja, cols, fastk)
        jd = ja - (self.slowk - 1)
        act_d = jd >= 0
        slow_d = np.full(cols.size, np.nan)
        if act_d.any():
            slow_d[act_d] = _sma_step(
                self.d_buf, self.d_total, jd[act_d], cols[act_d], slow_k[act_d]
            )
        ready = c[act] >= self.lookback
        out_k[act] = _nan_unless(ready, slow_k)
        out_d[act] = _nan_unless(ready, slow_d)
        return {"stoch_k": out_k, "stoch_d": out_d}


class Adx(_Streaming):
    """TA_ADX: n-1 bars of DM/TR sums, n Wilder steps whose DX average seeds the ADX."""

    outputs = ("adx",)
    _price_state = ("prev_high", "prev_low", "prev_close", "plus_dm", "minus_dm", "tr")

    def __init__(self, n_symbols: int, period: int = 14):
        super().__init__(n_symbols)
        self.period = _check_period("period", period, 2)
        self.lookback = 2 * self.period - 1
        for name in (*self._price_state, "sum_dx", "adx"):
            setattr(self, name, self._zeros())

    def _step(self, idx, c, bar):
        n = self.period
        h, lo, cl = bar["high"], bar["low"], bar["close"]
        diff_p = h - self.prev_high[idx]
        diff_m = self.prev_low[idx] - lo
        minus_dm1 = np.where((diff_m - diff_p > 0.0) & (diff_m > 0.0), diff_m, 0.0)
        plus_dm1 = np.where((diff_p - diff_m > 0.0) & (diff_p > 0.0), diff_p, 0.0)
        tr1 = _true_range(h, lo, self.prev_close[idx])

        mdm = self.minus_dm[idx]
        pdm = self.plus_dm[idx]
        tr = self.tr[idx]
        summing = c < n  # bars 1..n-1 add up; bar 0 only records the previous values
        mdm = np.where(summing, mdm, mdm - mdm / n) + minus_dm1
        pdm = np.where(summing, pdm, pdm - pdm / n) + plus_dm1
        tr = np.where(summing, tr + tr1, tr - tr / n + tr1)
        first = c == 0
        mdm = np.where(first, 0.0, mdm)
        pdm = np.where(first, 0.0, pdm)
        tr = np.where(first, 0.0, tr)

        minus_di = 100.0 * (mdm / tr)
        plus_di = 100.0 * (pdm / tr)
        di_sum = minus_di + plus_di
        has_dx = (tr > 0.0) & (np.abs(di_sum) >= _EPS) & (c >= n)
        dx = 100.0 * (np.abs(minus_di - plus_di) / di_sum)

        last_seed = 2 * n - 1
        sum_dx = self.sum_dx[idx]
        sum_dx = np.where(has_dx & (c <= last_seed), sum_dx + dx, sum_dx)
        adx = self.adx[idx]
        adx = np.where(
            c == last_seed,
            sum_dx / n,
            np.where(has_dx & (c > last_seed), (adx * (n - 1) + dx) / n, adx),
        )
        self.minus_dm[idx] = mdm
        self.plus_dm[idx] = pdm
        self.tr[idx] = tr
        self.sum_dx[idx] = sum_dx
        self.adx[idx] = adx
        self.prev_high[idx] = h
        self.prev_low[idx] = lo
        self.prev_close[idx] = cl
        return {"adx": _nan_unless(c >= last_seed, adx)}


class BBands(_Streaming):
    """TA_BBANDS with an SMA middle band and nbdevup == nbdevdn."""

    outputs = ("bb_upper", "bb_middle", "bb_lower")
    _price_state = ("buf", "total")

    def __init__(self, n_symbols: int, period: int = 20, nbdev: float = 2.0):
        super().__init__(n_symbols)
        self.period = _check_period("period", period, 2)
        self.nbdev = float(nbdev)
        self.lookback = self.period - 1
        self.buf = self._zeros(self.period)
        self.total = self._zeros()

    def _step(self, idx, c, bar):
        x = bar["close"]
        mid = _sma_step(self.buf, self.total, c, idx, x)
        # The buffer now holds each ready symbol's last `period` closes.
        window = self.buf[:, idx]
        shift = window.mean(axis=0)
        dev = window - shift
        var = (dev * dev).mean(axis=0) - dev.mean(axis=0) ** 2
        width = np.sqrt(np.maximum(var, 0.0)) * self.nbdev
        ready = c >= self.lookback
        return {
            "bb_upper": _nan_unless(ready, mid + width),
            "bb_middle": mid,
            "bb_lower": _nan_unless(ready, mid - width),
        }


class Atr(_Streaming):
    """TA_ATR / TA_NATR: seeded by the mean of the first `period` true ranges, then Wilder."""

    outputs = ("atr", "natr")
    _price_state = ("prev_close", "tr_total", "atr")

    def __init__(self, n_symbols: int, period: int = 14):
        super().__init__(n_symbols)
        self.period = _check_period("period", period, 2)
        self.lookback = self.period
        self.beta = float(self.period - 1) / float(self.period)
        self.alpha = 1.0 - self.beta
        for name in self._price_state:
            setattr(self, name, self._zeros())

    def _step(self, idx, c, bar):
        n = self.period
        cl = bar["close"]
        tr1 = _true_range(bar["high"], bar["low"], self.prev_close[idx])
        total = self.tr_total[idx]
        total = np.where((c >= 1) & (c <= n), total + tr1, total)
        atr = self.atr[idx]
        atr = np.where(
            c == n, total / n, np.where(c > n, _fma(self.beta, atr, self.alpha * tr1), atr)
        )
        self.tr_total[idx] = total
        self.atr[idx] = atr
        self.prev_close[idx] = cl
        ready = c >= n
        natr = np.where(cl != 0.0, (atr / cl) * 100.0, 0.0)
        return {"atr": _nan_unless(ready, atr), "natr": _nan_unless(ready, natr)}


class TRange(_Streaming):
    """TA_TRANGE: max(high-low, |prev close-high|, |prev close-low|)."""

    outputs = ("trange",)
    lookback = 1
    _price_state = ("prev_close",)

    def __init__(self, n_symbols: int):
        super().__init__(n_symbols)
        self.prev_close = self._zeros()

    def _step(self, idx, c, bar):
        tr = _true_range(bar["high"], bar["low"], self.prev_close[idx])
        self.prev_close[idx] = bar["close"]
        return {"trange": _nan_unless(c >= 1, tr)}


class Obv(_Streaming):
    """TA_OBV: starts at the first bar's volume, +/- volume on up/down closes."""

    outputs = ("obv",)
    lookback = 0
    _price_state = ("prev_close",)
    _volume_state = ("obv",)

    def __init__(self, n_symbols: int):
        super().__init__(n_symbols)
        self.prev_close = self._zeros()
        self.obv = self._zeros()

    def _step(self, idx, c, bar):
        x = bar["close"]
        v = bar["volume"]
        prev = self.prev_close[idx]
        obv = self.obv[idx]
        obv = np.where(x > prev, obv + v, np.where(x < prev, obv - v, obv))
        obv = np.where(c == 0, v, obv)
        self.obv[idx] = obv
        self.prev_close[idx] = x
        return {"obv": obv}


class Mfi(_Streaming):
    """TA_MFI: ring buffer of positive/negative money flows with running sums."""

    outputs = ("mfi",)
    _price_state = ("prev_typical",)

    def __init__(self, n_symbols: int, period: int = 14):
        super().__init__(n_symbols)
        self.period = _check_period("period", period, 2)
        self.lookback = self.period
        self.prev_typical = self._zeros()
        self.pos_buf = self._zeros(self.period)
        self.neg_buf = self._zeros(self.period)
        self.pos_total = self._zeros()
        self.neg_total = self._zeros()
        self.null_run = np.zeros(self.n_symbols, dtype=np.int64)

    def _step(self, idx, c, bar):
        n = self.period
        typ = (bar["high"] + bar["low"] + bar["close"]) / 3.0
        prev = self.prev_typical[idx]
        self.prev_typical[idx] = typ
        act = c >= 1
        out = np.full(idx.size, np.nan)
        if not act.any():
            return {"mfi": out}
        cols = idx[act]
        ca = c[act]
        typ_a = typ[act]
        prev_a = prev[act]
        slot = (ca - 1) % n
        # Sliding: drop the flow leaving the window (zero while the window fills).
        pos_total = self.pos_total[cols] - self.pos_buf[slot, cols]
        neg_total = self.neg_total[cols] - self.neg_buf[slot, cols]
        d = typ_a - prev_a
        flat = np.abs(d) <= _EPS * (np.abs(typ_a) + np.abs(prev_a))
        flow = np.where(flat, 0.0, typ_a * bar["volume"][act])
        down = d < 0.0
        pos = np.where(down, 0.0, flow)
        neg = np.where(down, flow, 0.0)
        self.pos_buf[slot, cols] = pos
        self.neg_buf[slot, cols] = neg
        pos_total = pos_total + pos
        neg_total = neg_total + neg
        run = np.where(flow == 0.0, self.null_run[cols] + 1, 0)
        empty = run >= n
        run = np.where(empty, n, run)
        pos_total = np.where(empty, 0.0, pos_total)
        neg_total = np.where(empty, 0.0, neg_total)
        self.null_run[cols] = run
        self.pos_total[cols] = pos_total
        self.neg_total[cols] = neg_total
        tot = pos_total + neg_total
        pos_c = np.clip(pos_total, 0.0, np.maximum(tot, 0.0))
        mfi = np.where(tot <= 0.0, 0.0, 100.0 * (pos_c / tot))
        out[act] = _nan_unless(ca >= n, mfi)
        return {"mfi": out}
