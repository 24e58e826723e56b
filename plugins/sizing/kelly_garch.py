"""Kelly x GARCH sizing: the reference specification's `PositionSizer`, for the whole universe.

Target weight per symbol (signed fraction of equity):

    sign(score) x f x kelly_multiplier x |score| x vol_scalar,   capped at +-max_position

* ``score`` is the combined signal in [-1, 1]; its size is the signal confidence. Only symbols
  with |score| > `min_score` get a position, and only long ones unless `allow_short`. A NaN
  score (no view) is no position.
* ``f`` is the Kelly fraction W - (1 - W) / R of the strategy's own closed trades (W: win
  rate, R: average win / average loss, both on trade returns) over the last `kelly_window`
  trades, clamped to [0, max_kelly]. One f for the whole strategy: it measures the edge of
  the strategy, not of a symbol. Until `min_trades` trades have closed, f comes from the prior
  W = 0.55, R = 1.5 (f = 0.25): the specification's target win rate (above 55%) with a
  reward-to-risk between 1 and the 2:1 of its 4% take-profit / 2% stop-loss brackets (not
  every trade ends at a bracket, so 1.5 rather than 2). Then the window's estimate replaces
  the prior outright (20 trades is a thin sample, which is why the estimate is clamped to
  `max_kelly` = 0.5 and then halved by the Kelly multiplier).
* ``vol_scalar`` = target_vol / (sigma x sqrt(252)), clipped to [min_vol_scalar,
  max_vol_scalar], where sigma is the symbol's one-step-ahead conditional volatility (see
  below). A symbol without a variance forecast yet (fewer than `min_vol_obs` returns) gets no
  position: its risk is unknown.

Closed trades are read from the portfolio, with no book of the plugin's own: a trade opens
when a symbol's quantity leaves 0 (or flips side) and closes when it returns to 0 (or flips);
its P&L is the change of the symbol's realized P&L (net of commissions) since just before it
opened, and its return that P&L over the largest entry cost avg_price x |quantity| seen while
it was open. A position opened and closed between two sized bars (a bracket stopped out on the
entry bar) counts too, with what its entry cost (the change of the portfolio's `opened_cost`
between the two bars: the shares bought at their fill price) as its cost: the plugin's own
target would overstate it whenever a risk rule cut the entry, or the fill came at another
price, and understate the loss of these trades, mostly losers, so inflate f. Only for a
portfolio view without `opened_cost` (hand-built) is the cost the plugin's target weight x
equity of the bar that opened it.
A flip counts the whole flip fill's commission in the closing trade.

Volatility (`volatility = "garch"`): each symbol's GARCH(1,1) is fitted with `arch` on its
last `garch_window` log returns (see `garch.py`). Fits are the expensive part (15-25 ms each
on an idle 2-core machine, 40-60 ms when it is busy, twice that for a warm-started refit,
which is fitted from two starts (below); the rest of a bar is under 1 ms for 500
symbols), so they are scheduled: a symbol refits every `refit_bars` sized bars, on the bars where
bars_sized = its index (mod refit_bars), so about N / refit_bars symbols refit per bar and never
all on one bar. With `fit_scope = "active"` (the default) only symbols that could hold a
position (a score that passes `min_score`, or an open position) refit on their slot; the others
keep their last parameters, which is harmless because their vol scalar is not used. On the
first bar sized, every symbol in scope with `min_fit_obs` returns is fitted at once
(`initial_fit`, a one-time cost: 7-12 s for 500 symbols idle, about 20 s busy). Between
fits, the one-step variance of the whole universe is carried forward as arrays by the GARCH
recursion sigma2 = omega + alpha x (r - mu)^2 + beta x sigma2, with each bar's return.

Where fits run (`garch_fits.py`): with `fit_lag_bars = 1` (the default) the fits asked for at
a bar, on the returns up to that bar, apply from the next bar sized, so they run between bars:
in a child process (`fit_executor = "process"`, the default: the other core, while the engine
goes on with the next bar's features and model), a thread, or inline. The bar that asks still
sizes on the previous parameters (its variance is the recursion's); from the next bar on, the
state is bit for bit what applying the fit at once (`fit_lag_bars = 0`, inline only) gives.
Live, this keeps the fits out of a bar's path to its orders; the checkpoint after the bar
waits for them and stores their outcomes, so a restart applies them at the next bar as the
uninterrupted process would. The first bar sized therefore uses EWMA for everyone.

The worker runs at the engine's own priority, live and in a backtest: the engine waits for
the fits (a live bar's checkpoint, a replay's next bar), and at the lowest priority (nice 19,
a live daemon's until 2026-12-04) other work on the machine starved them (two CPU hogs on 2
cores: 280 s against 10 s for a 3-year replay; a demo daemon at 1 bar in 11 s): see
`garch_fits.LIVE_NICE`.

A replay's fits come in bursts (a bar where many symbols enter the scope), and at lag 1 the
engine waits for every burst. `fit_lag_bars = L` > 1 applies a fit L bars after it was asked
for: its parameters, and its variance carried forward by the recursion over the L - 1 bars
in between, so from then on the state is again what applying it at once gives (bit for bit;
up to rounding when a split falls inside the lag, as history is split-adjusted). The bars in
between size on the previous parameters, whose variance is still updated by every return.
Up to L requests are in flight; a symbol whose fit is still on its way is not asked for
again (its slot comes round again in `refit_bars`). `config/backtest.toml` uses L = 3. A lost
worker (killed, out of memory) is logged (`sizing.garch_worker_lost`) and its fits are done
inline. Fit outcomes are cached by their exact inputs (returns, warm start, mean, min_obs) in
`fit_cache_dir` between runs: a rerun of the same replay fits nothing.

A fit that raises, does not converge (`convergence_flag` != 0), is not stationary
(alpha + beta >= 1, or within 1e-6 of 1: arch's constraint boundary, where real index data
often lands) or is degenerate (alpha < 1e-3, `garch.MIN_ALPHA`: arch's other boundary, a
variance no shock moves) falls back to RiskMetrics EWMA (lambda 0.94: the industry's documented
daily estimator, and the same recursion with omega = 0, alpha = 0.06, beta = 0.94), logged as a
warning `sizing.garch_fallback` with the symbol and reason; it is tried again on its next
slot. A refit is warm-started from the symbol's last fit and also fitted from arch's own
starting values, and these rules judge the one with the higher log-likelihood
(`garch.best_garch_fit`): a warm start alone could stay on a lower local maximum of the
likelihood (34 of 723 refits of a 30-stock run, 0.5-34 units below; one MCD forecast 0.37
annualised against 0.24 at the maximum), or keep an interior fit where the window's maximum is
on a boundary these rules refuse, so the same returns sized differently, or were accepted or
refused, according to the previous fit. (It doubles a refit's cost: see garch_fits.) A symbol
whose previous fit had failed too is not warned about again (debug, counted in `again`) until a
fit of it has succeeded, also across a restart (the checkpoint keeps them); the run's totals
are logged at its end (`sizing.garch_fallback_summary`). A replay logs each batch at debug
and its summary as the warning, with the symbols that fell back and the count of each kind
of reason (`for_replay`).
Symbols with fewer than `min_fit_obs` returns (new listings) also use EWMA until they have
enough. `volatility = "ewma"` uses EWMA for all, `"none"` drops the scalar (research: the
strategy with and without it).

`rebalance = "monthly"` recomputes targets only on the first bar sized in each calendar month
(and on the first bar the plugin sizes). In between, a position keeps its previous target while
it is still held on the same side and its fresh score would still hold it on that side; any
other symbol's target is 0. So exits are never delayed (a score that no longer passes, or turns
against the position, closes it at once; a position closed by its stop stays closed) while
entries, flips and resizing wait for the next month.

Untradable symbols (no bar) keep their current weight, as in every sizing plugin.

Missing bars (`log_returns`, `tradingd_plugins.gaps`): a symbol without a bar for some days
that then trades again has a return of 0 into each missing day and the whole move over the
gap as the return out of it, in the fits and in the recursion (which takes the gap's returns
when the symbol reopens: until then the gap is the window's end, and no later price is
assumed). Returns before a listing or after the last bar are NaN and skipped.

State (`state()` / `restore()`, JSON values, kept in the engine's checkpoint): the closed-trade
window, the tracker of open trades, the GARCH parameters and current variances, the fit
schedule's bar count, the month and the previous targets. A restarted daemon therefore sizes
the next bar exactly as the uninterrupted one would. The variance catches up with every bar
since the last one sized (warm-up and catch-up bars are not sized); after a restart that number
is found from the last sized bar's close row in the history, and when it is not there (a gap
longer than the window) the variances are re-filtered over the window with the stored
parameters, which is logged.

No lookahead: only ctx.history (bars up to the current one) and the portfolio are read.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import weakref
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import structlog

from tradingd.core.ports import BarContext, PortfolioView
from tradingd.logs import sparse

from .garch import (
    EWMA_LAMBDA,
    MIN_ALPHA,
    GarchParams,
    ewma_variance,
    garch_filter,
    garch_forecast,
    log_returns,
)
from .garch_fits import (
    EXECUTORS,
    FitCache,
    FitParams,
    FitRunner,
    Pending,
    params_from_json,
    params_to_json,
    submit,
)

log = structlog.get_logger(__name__)

REBALANCE = ("bar", "monthly")
VOLATILITY = ("garch", "ewma", "none")
FIT_SCOPES = ("active", "all")
MEANS = ("constant", "zero")
_NONE, _EWMA, _GARCH = 0, 1, 2  # how a symbol's variance is estimated
#: A fit waited for: (symbol index, (mu, omega, alpha, beta, sigma2, nobs) or None, the
#: reason it failed, the EWMA fallback variance when it failed).
Resolved = tuple[int, FitParams | None, str, float]
STATE_VERSION = 1
#: More would only delay parameters: at 3 the worker already absorbs a replay's bursts.
MAX_FIT_LAG = 10
#: Symbols named (with their reasons) in one fallback log line; the count names them all.
MAX_LOGGED_FALLBACKS = 20


def _reason_kind(why: str) -> str:
    """A fallback's reason without its particulars ("non-stationary fit (alpha + beta =
    0.9999...)" -> "non-stationary fit"), for a run's counts by kind."""
    cut = min((k for k in (why.find("("), why.find(":")) if k >= 0), default=len(why))
    return why[:cut].strip() or why


@dataclass
class _Batch:
    """Fits asked for at one bar, from the request until they are applied."""

    asked_at: int  # the plugin's count of bars sized when they were asked for
    initial: bool
    pending: Pending | None  # on its way (None once resolved, or restored from a checkpoint)
    resolved: list[Resolved] | None = None
    # History rows the variance has moved on by since the request (None: re-filtered over
    # the window meanwhile, or unknown): replayed with the new parameters when applied.
    rows_after: int | None = 0


@dataclass(frozen=True)
class KellyGarchConfig:
    # Kelly: f = W - (1 - W) / R from the last `kelly_window` closed trades, clamped.
    kelly_multiplier: float = 0.5  # half Kelly (the specification)
    max_kelly: float = 0.5
    kelly_window: int = 100
    min_trades: int = 20
    # Closed trades older than this many sized bars leave the window (0 = never). Without it a
    # record that drives f to 0 is absorbing: no position opens, so no trade ever closes to
    # change the estimate, and the strategy stays off for good (found by the research runs,
    # docs/RESEARCH.md). With it, a year without trades brings back the prior.
    kelly_max_age_bars: int = 252
    prior_win_rate: float = 0.55
    prior_win_loss_ratio: float = 1.5
    # Positions.
    max_position: float = 0.05  # the specification's max position size (5% of equity)
    min_score: float = 0.0
    allow_short: bool = False
    rebalance: str = "bar"  # bar | monthly
    # Volatility scalar: target_vol / annualised one-step volatility, clipped.
    volatility: str = "garch"  # garch | ewma | none
    target_vol: float = 0.15
    min_vol_scalar: float = 0.1
    max_vol_scalar: float = 2.0
    periods_per_year: float = 252.0
    garch_window: int = 500  # returns per fit (about two years of daily bars)
    garch_mean: str = "constant"  # constant | zero
    min_fit_obs: int = 250  # fewer returns: EWMA instead of a fit
    min_vol_obs: int = 20  # fewer returns: no variance, no position
    refit_bars: int = 21  # each symbol refits every 21 bars (about monthly)
    fit_scope: str = "active"  # active (could hold a position) | all
    initial_fit: bool = True  # fit every symbol in scope on the first bar sized
    ewma_lambda: float = EWMA_LAMBDA
    # Fits asked for at a bar apply from the next bar sized (1) or L bars later, so they run
    # between bars and never in a bar's path to its orders; 0 applies them on the bar itself
    # (fitted inline).
    fit_lag_bars: int = 1
    fit_executor: str = "process"  # inline | thread | process (where lagged fits run)
    fit_cache_dir: str = "var/cache/garch"  # fit outcomes kept between runs ("" = none)
    # entries, ~390 bytes each in memory (measured): up to ~195 MB at the default, reached by a
    # live daemon of 500 symbols on 1-minute bars in ~54 sessions (README "Bounded by design")
    fit_cache_size: int = 500_000

    def __post_init__(self) -> None:
        for name, choices in (
            ("rebalance", REBALANCE),
            ("volatility", VOLATILITY),
            ("fit_scope", FIT_SCOPES),
            ("garch_mean", MEANS),
            ("fit_executor", EXECUTORS),
        ):
            v = getattr(self, name)
            if v not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, got {v!r}")
        _check(self.kelly_multiplier, "kelly_multiplier", 0.0, 1.0, lo_open=True)
        _check(self.max_kelly, "max_kelly", 0.0, 1.0, lo_open=True)
        _check(self.prior_win_rate, "prior_win_rate", 0.0, 1.0)
        _check(self.prior_win_loss_ratio, "prior_win_loss_ratio", 0.0, math.inf, lo_open=True)
        _check(self.max_position, "max_position", 0.0, 1.0, lo_open=True)
        _check(self.min_score, "min_score", 0.0, 1.0, hi_open=True)
        _check(self.target_vol, "target_vol", 0.0, 5.0, lo_open=True)
        _check(self.min_vol_scalar, "min_vol_scalar", 0.0, math.inf, lo_open=True)
        _check(self.max_vol_scalar, "max_vol_scalar", self.min_vol_scalar, math.inf)
        _check(self.periods_per_year, "periods_per_year", 0.0, math.inf, lo_open=True)
        _check(self.ewma_lambda, "ewma_lambda", 0.0, 1.0, lo_open=True, hi_open=True)
        for name, low in (
            ("kelly_window", 1),
            ("min_trades", 0),
            ("kelly_max_age_bars", 0),
            ("garch_window", 20),
            ("min_fit_obs", 20),
            ("min_vol_obs", 2),
            ("refit_bars", 1),
            ("fit_cache_size", 0),
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
        lag = self.fit_lag_bars
        if isinstance(lag, bool) or not isinstance(lag, int) or not 0 <= lag <= MAX_FIT_LAG:
            raise ValueError(f"fit_lag_bars must be an integer 0-{MAX_FIT_LAG}, got {lag!r}")
        if self.fit_lag_bars == 0 and self.fit_executor != "inline":
            raise ValueError(
                'fit_lag_bars = 0 fits on the bar itself: fit_executor must be "inline", got '
                f"{self.fit_executor!r}"
            )
        if self.min_trades > self.kelly_window:
            raise ValueError(
                f"min_trades ({self.min_trades}) must not exceed kelly_window "
                f"({self.kelly_window}): the estimate would never be used"
            )
        for name in ("min_vol_obs", "min_fit_obs"):
            if getattr(self, name) > self.garch_window:
                raise ValueError(
                    f"{name} ({getattr(self, name)}) must not exceed garch_window "
                    f"({self.garch_window})"
                )


def _check(
    v: Any, name: str, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False
) -> None:
    ok = isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(v)
    if ok:
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ValueError(f"{name} must be in {lb}{lo}, {hi}{rb}, got {v!r}")


# ----------------------------------------------------------------------------- pure parts


def kelly_fraction(win_rate: float, win_loss_ratio: float) -> float:
    """The specification's Kelly fraction W - (1 - W) / R, unclamped (negative: no edge).
    R = inf (no losing trade) gives W; R = 0 (no winning trade) gives -inf."""
    if not 0.0 <= win_rate <= 1.0:
        raise ValueError(f"win_rate must be in [0, 1], got {win_rate!r}")
    if math.isnan(win_loss_ratio) or win_loss_ratio < 0.0:
        raise ValueError(f"win_loss_ratio must be >= 0, got {win_loss_ratio!r}")
    if win_rate == 1.0:
        return 1.0
    if win_loss_ratio == 0.0:
        return -math.inf
    return win_rate - (1.0 - win_rate) / win_loss_ratio


def trade_stats(returns: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """(win rate, average win / average loss) of closed-trade returns. A trade with a return
    of exactly 0 counts in the rate's denominator but is neither a win nor a loss."""
    r = np.asarray(returns, dtype=np.float64)
    if r.size == 0:
        raise ValueError("no trades")
    wins, losses = r[r > 0], -r[r < 0]
    w = wins.size / r.size
    avg_win = float(wins.mean()) if wins.size else 0.0
    avg_loss = float(losses.mean()) if losses.size else 0.0
    if avg_loss == 0.0:
        return w, (math.inf if avg_win > 0 else 1.0)
    return w, avg_win / avg_loss


def vol_scalar(sigma2: np.ndarray, config: KellyGarchConfig) -> np.ndarray:
    """target_vol / annualised volatility, clipped; NaN where there is no usable variance
    (NaN, 0 or below, or infinite: an infinite variance clipped to min_vol_scalar sized a
    position of unknown risk)."""
    s2 = np.asarray(sigma2, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        usable = np.isfinite(s2) & (s2 > 0)
        ann = np.sqrt(np.where(usable, s2, np.nan) * config.periods_per_year)
        return np.clip(config.target_vol / ann, config.min_vol_scalar, config.max_vol_scalar)


def target_weights(
    score: np.ndarray, sigma2: np.ndarray | None, kelly: float, config: KellyGarchConfig
) -> np.ndarray:
    """The sizing rule on arrays: sign(score) x kelly x multiplier x |score| x vol scalar,
    capped at +-max_position; 0 where the score is NaN, does not pass min_score, is short
    without allow_short, or (with a volatility estimator) the variance is unknown or not
    finite and positive.
    `sigma2=None` means no volatility scalar (1)."""
    c = config
    s = np.asarray(score, dtype=np.float64)
    conf = np.minimum(np.abs(s), 1.0)
    ok = np.isfinite(s) & (conf > c.min_score)
    ok &= (s > 0) | (c.allow_short & (s < 0))
    if sigma2 is None:
        scal = np.ones_like(s)
    else:
        scal = vol_scalar(sigma2, c)
        ok &= np.isfinite(scal)
    f = 0.0 if math.isnan(kelly) else min(max(float(kelly), 0.0), c.max_kelly)
    with np.errstate(invalid="ignore"):
        w = np.sign(s) * f * c.kelly_multiplier * conf * scal
    # (+ 0.0 turns the -0.0 of a zero Kelly fraction times a negative sign into 0.0)
    return np.where(ok, np.clip(w, -c.max_position, c.max_position), 0.0) + 0.0


# ----------------------------------------------------------------------------- the plugin


class KellyGarch:
    kind: ClassVar[str] = "sizing"
    Config = KellyGarchConfig

    def __init__(self, config: KellyGarchConfig, symbols: tuple[str, ...]) -> None:
        if importlib.util.find_spec("arch") is None:
            # Imported only where a fit is made (seconds of imports): checked here so that a
            # missing package stops the run at start-up, not as fit errors and EWMA fallbacks.
            raise ImportError(
                "kelly_garch needs the 'arch' package for its GARCH fits: pip install arch"
            )
        self.config = config
        self.name = "kelly_garch"
        self.symbols = tuple(symbols)
        n = len(self.symbols)
        self._phase = np.arange(n) % config.refit_bars
        self._bars = 0  # bars sized so far (the fit schedule's clock)
        self._month: str | None = None
        self._targets: np.ndarray | None = None
        self._equity: float | None = None
        self._trades: deque[float] = deque(maxlen=config.kelly_window)
        self._trade_bars: deque[int] = deque(maxlen=config.kelly_window)  # when each closed
        self._kelly_source = "prior"
        self._source_changes = 0
        # Open-trade tracker: None until the first portfolio with realized P&L is seen.
        self._book: dict[str, np.ndarray] | None = None
        # Variance model per symbol (decimal returns): params of the recursion, the current
        # one-step-ahead variance (NaN: unknown) and how it is estimated.
        self._mu = np.zeros(n)
        self._omega = np.zeros(n)
        self._alpha = np.full(n, 1.0 - config.ewma_lambda)
        self._beta = np.full(n, config.ewma_lambda)
        self._sigma2 = np.full(n, np.nan)
        self._method = np.zeros(n, dtype=np.int8)
        # Where the variance stands in ctx.history: its length at the last bar sized (this
        # process only) and that bar's close row (survives a restart, to recognise the next
        # bar), so every bar since is applied once.
        self._seen_len: int | None = None
        self._last_close: np.ndarray | None = None
        self.fits = 0
        self.fallbacks = 0
        # Symbols whose latest fit fell back: a repeat is not news (logged at debug).
        self._fallen: set[int] = set()
        # A replay's batches are logged at debug and its end sums them up (`for_replay`);
        # `_reasons` counts the fallbacks by the first words of their reason.
        self._quiet = False
        self._reasons: Counter[str] = Counter()
        self._symbols_fallen: set[int] = set()
        self._cache = FitCache(
            config.fit_cache_dir if config.volatility == "garch" else "", config.fit_cache_size
        )
        # Fits asked for and not yet applied, oldest first (at most fit_lag_bars batches).
        self._flight: deque[_Batch] = deque()
        # The worker process starts with the first fits (a plugin built only to be checked,
        # as preflight does, never starts one) and ends with close() or, for a plugin dropped
        # without it, when the plugin is collected.
        self._runner = FitRunner(config.fit_executor)
        weakref.finalize(self, self._runner.close)

    # -- protocol ---------------------------------------------------------------------------
    def required_features(self) -> tuple[str, ...]:
        return ()

    def history_bars(self) -> int:
        """Raw bars read from ctx.history: the GARCH window of returns needs one more price."""
        return self.config.garch_window + 1

    def size(self, score: np.ndarray, ctx: BarContext) -> np.ndarray:
        c = self.config
        pf = ctx.portfolio
        score = np.asarray(score, dtype=np.float64)
        self._track_trades(pf)
        self._expire_trades()
        w, r, source = self.kelly_inputs
        if source != self._kelly_source:
            # The source flips each time the closed trades in the window cross min_trades
            # (trades expire after kelly_max_age_bars): 159 of a quick start's 180 log lines
            # were this. Heard at the 1st, 10th, 100th... change, with the count.
            self._source_changes += 1
            if sparse(self._source_changes):
                log.info(
                    "sizing.kelly_source",
                    plugin=self.name,
                    source=source,
                    trades=len(self._trades),
                    win_rate=w,
                    win_loss_ratio=r,
                    changes_so_far=self._source_changes,
                )
            self._kelly_source = source
        kelly = min(max(kelly_fraction(w, r), 0.0), c.max_kelly)
        sigma2: np.ndarray | None = None
        if c.volatility != "none":
            self._update_variance(score, ctx)
            sigma2 = self._sigma2
        fresh = target_weights(score, sigma2, kelly, c)
        month = f"{ctx.time.year:04d}-{ctx.time.month:02d}"
        if c.rebalance == "monthly" and self._targets is not None and month == self._month:
            prev = self._targets
            side = np.sign(prev)
            keep = (side != 0) & (np.sign(pf.quantity) == side) & (np.sign(fresh) == side)
            fresh = np.where(keep, prev, 0.0)
        # Untradable symbols keep their current weight: no order can be placed for them now.
        out = np.where(ctx.tradable, fresh, pf.weights)
        self._targets = out.copy()
        self._equity = float(pf.equity)
        self._month = month
        self._bars += 1
        return out

    # -- views ------------------------------------------------------------------------------
    @property
    def kelly_inputs(self) -> tuple[float, float, str]:
        """(win rate, win/loss ratio, "prior" or "trades") behind the current Kelly fraction."""
        c = self.config
        if len(self._trades) < max(c.min_trades, 1):
            return c.prior_win_rate, c.prior_win_loss_ratio, "prior"
        w, r = trade_stats(self._trades)
        return w, r, "trades"

    @property
    def kelly(self) -> float:
        """The Kelly fraction in use, clamped to [0, max_kelly] (before the multiplier)."""
        w, r, _ = self.kelly_inputs
        return min(max(kelly_fraction(w, r), 0.0), self.config.max_kelly)

    @property
    def trades(self) -> tuple[float, ...]:
        """Returns of the closed trades in the Kelly window, oldest first."""
        return tuple(self._trades)

    @property
    def forecast_variance(self) -> np.ndarray:
        """(N,) one-step-ahead conditional variance of each symbol's daily return."""
        return self._sigma2.copy()

    @property
    def methods(self) -> dict[str, str]:
        names = {_NONE: "none", _EWMA: "ewma", _GARCH: "garch"}
        return {s: names[int(m)] for s, m in zip(self.symbols, self._method, strict=True)}

    def garch_params(self, symbol: str) -> GarchParams | None:
        """The symbol's current GARCH parameters (sigma2: today's forecast), None on EWMA."""
        return self._params_at(self.symbols.index(symbol))

    # -- closed trades ----------------------------------------------------------------------
    def _expire_trades(self) -> None:
        age = self.config.kelly_max_age_bars
        while age and self._trade_bars and self._bars - self._trade_bars[0] > age:
            self._trade_bars.popleft()
            self._trades.popleft()

    def _track_trades(self, pf: PortfolioView) -> None:
        if pf.realized_pnl is None or pf.avg_price is None:
            return  # a hand-built view without P&L: the prior stays in use
        q = np.asarray(pf.quantity, dtype=np.float64)
        rp = np.asarray(pf.realized_pnl, dtype=np.float64)
        cost = np.asarray(pf.avg_price, dtype=np.float64) * np.abs(q)
        bought = None if pf.opened_cost is None else np.asarray(pf.opened_cost, dtype=np.float64)
        b = self._book
        if b is None:
            # First sight: positions already open are tracked from here (their P&L so far
            # is not attributable to a trade of this plugin's window).
            self._book = {
                "quantity": q.copy(),
                "realized": rp.copy(),
                "open_base": np.where(q != 0, rp, np.nan),
                "entry_cost": np.where(q != 0, cost, np.nan),
            }
            if bought is not None:
                self._book["bought"] = bought
            return
        pq, prp = b["quantity"], b["realized"]
        side_p, side = np.sign(pq), np.sign(q)
        was_open = pq != 0
        changed = side != side_p
        closed = was_open & changed
        quick = ~was_open & (q == 0) & (rp != prp)
        for i in np.flatnonzero(closed | quick).tolist():
            if closed[i]:
                pnl, basis = rp[i] - b["open_base"][i], b["entry_cost"][i]
            else:  # opened and closed between two sized bars
                basis = self._quick_basis(i, bought, b.get("bought"))
                pnl = rp[i] - prp[i]
            if basis > 0 and math.isfinite(basis) and math.isfinite(pnl):
                self._trades.append(float(pnl / basis))
                self._trade_bars.append(self._bars)
        opened = (q != 0) & changed
        base = np.where(opened, np.where(was_open, rp, prp), b["open_base"])
        entry = np.where(opened, cost, np.fmax(b["entry_cost"], cost))
        flat = q == 0
        self._book = {
            "quantity": q.copy(),
            "realized": rp.copy(),
            "open_base": np.where(flat, np.nan, base),
            "entry_cost": np.where(flat, np.nan, entry),
        }
        if bought is not None:
            self._book["bought"] = bought

    def _quick_basis(self, i: int, bought: np.ndarray | None, before: np.ndarray | None) -> float:
        """The cost of a position opened and closed between two sized bars: what was bought
        (or sold short) to open it since the last bar sized; the plugin's own target x
        equity only when the portfolio does not say (a view without `opened_cost`, or a
        checkpoint written before the plugin kept it)."""
        if bought is not None and before is not None:
            cost = float(bought[i] - before[i])
            if cost > 0 and math.isfinite(cost):
                return cost
        prev = self._targets
        return abs(prev[i]) * self._equity if prev is not None and self._equity else 0.0

    # -- volatility -------------------------------------------------------------------------
    def _returns(self, ctx: BarContext, rows: int, cols: np.ndarray | None = None) -> np.ndarray:
        """The last `rows` log returns, (rows', N) or (rows', cols), oldest first."""
        n = min(rows + 1, ctx.history.length)
        width = len(self.symbols) if cols is None else int(np.count_nonzero(cols))
        if n < 2:
            return np.empty((0, width))
        try:
            close = ctx.history.window("close", n)
        except ValueError as exc:
            raise RuntimeError(
                f"ctx.history cannot give {n} bars ({exc}); the engine must keep at least "
                f"history_bars() = {self.history_bars()} bars for this plugin"
            ) from exc
        return log_returns(close if cols is None else close[:, cols])

    def _new_returns(
        self, ctx: BarContext, k: int, cols: np.ndarray | None = None, skip: int = 0
    ) -> np.ndarray:
        """The returns the recursion has not taken yet, as of the bar `skip` rows before this
        one, when it last took returns `k` rows before that (at T0): the last k rows and,
        before them, a symbol's returns into a gap it was in at T0 (no price then: NaN,
        skipped), which exist once it has reopened (0 into the gap, the move out of it: see
        `gaps`), so the recursion takes every return of the window once and in order, as a
        filter over the window would, however the bars were sized (a restart's catch-up, a
        lagged fit's carry-forward). Rows a symbol took already are NaN. Oldest first,
        (k + the longest such gap, N or len(cols))."""
        full = min(self.config.garch_window + 1, ctx.history.length)
        n = min(k + 1, full - skip)
        if n < 2:
            width = len(self.symbols) if cols is None else int(np.count_nonzero(cols))
            return np.empty((0, width))
        close = ctx.history.window("close", n + skip)[:n]
        if cols is not None:
            close = close[:, cols]
        # Without a price at T0 but with one since: the last price before the gap is further
        # back (rare: a reopen, or a listing). Otherwise these k rows are all there is.
        reopened = ~(close[0] > 0) & (close[1:] > 0).any(axis=0)
        if not reopened.any():
            return log_returns(close)
        longer = ctx.history.window("close", full)[: full - skip]
        if cols is not None:
            longer = longer[:, cols]
        t0 = longer.shape[0] - n  # T0's row
        priced = longer[t0::-1, reopened] > 0  # from T0 back
        # The gap at T0 (its closes up to T0), within the window (a run back to the window's
        # start has no price before it: leading, NaN anyway).
        gap = np.where(priced.any(axis=0), priced.argmax(axis=0), t0)
        gap = np.minimum(gap, t0)
        g = np.zeros(close.shape[1], dtype=np.intp)
        g[reopened] = gap
        longest = int(g.max())
        r = log_returns(longer[t0 - longest :])
        taken = r[:longest]  # a view: the rows before the k, each symbol's first longest - g
        taken[np.arange(longest)[:, None] < longest - g] = np.nan  # taken at T0 or before
        return r

    def _update_variance(self, score: np.ndarray, ctx: BarContext) -> None:
        c = self.config
        n = len(self.symbols)
        # Fits asked for fit_lag_bars ago: their variance is the forecast after the bar that
        # asked (carried forward to the last bar), so they go in before this bar's returns.
        first = self._bars == 0 or self._last_close is None
        since = None if first else self._rows_since(ctx)
        self._apply_due(ctx, since)
        ask = np.zeros(n, dtype=bool)
        if first:
            self._init_ewma(ctx, np.ones(n, dtype=bool))
            if c.volatility == "garch" and c.initial_fit:
                ask = self._in_scope(score, ctx)
        else:
            moved = self._catch_up(ctx, since)
            for batch in self._flight:
                if batch.rows_after is not None:
                    batch.rows_after = None if moved is None else batch.rows_after + moved
            # Symbols without a variance yet (listed late) start on EWMA once they can.
            missing = np.isnan(self._sigma2) & ctx.tradable
            if missing.any():
                self._init_ewma(ctx, missing)
        if c.volatility == "garch":
            due = (self._bars % c.refit_bars == self._phase) & self._in_scope(score, ctx)
            ask |= due
            for batch in self._flight:  # still on its way: not asked for twice
                ask[self._batch_idx(batch)] = False
            if ask.any():
                self._request(ctx, ask, initial=first)
                if c.fit_lag_bars == 0:
                    self._apply_due(ctx, 0)
        self._seen_len = ctx.history.length
        self._last_close = ctx.history.window("close", 1)[0].copy()

    def _in_scope(self, score: np.ndarray, ctx: BarContext) -> np.ndarray:
        if self.config.fit_scope == "all":
            return np.ones(len(self.symbols), dtype=bool)
        c = self.config
        with np.errstate(invalid="ignore"):
            could = np.isfinite(score) & (np.abs(score) > c.min_score) & ctx.tradable
            could &= (score > 0) | (c.allow_short & (score < 0))
        return could | (ctx.portfolio.quantity != 0)

    def _init_ewma(self, ctx: BarContext, cols: np.ndarray) -> None:
        """EWMA variance for `cols` over the window (stays NaN below min_vol_obs returns)."""
        idx = np.flatnonzero(cols)
        window = self._returns(ctx, self.config.garch_window, cols)
        enough = np.count_nonzero(np.isfinite(window), axis=0) >= self.config.min_vol_obs
        if not enough.any():
            return
        lam = self.config.ewma_lambda
        sel = idx[enough]
        self._sigma2[sel] = ewma_variance(window[:, enough], lam)
        self._mu[sel], self._omega[sel] = 0.0, 0.0
        self._alpha[sel], self._beta[sel] = 1.0 - lam, lam
        self._method[sel] = _EWMA

    def _rows_since(self, ctx: BarContext) -> int | None:
        """History rows since the last bar sized (None: not within the window, or unknown)."""
        if self._seen_len is not None:
            return ctx.history.length - self._seen_len
        return self._bars_since(ctx)

    def _catch_up(self, ctx: BarContext, k: int | None) -> int | None:
        """Apply the `k` bars since the last one sized to the variance, by the recursion. The
        number of history rows applied; None when the variance was re-filtered instead."""
        if k is not None and k <= 0:
            return 0
        if k is not None and k <= self.config.garch_window:
            s2 = self._sigma2
            for r in self._new_returns(ctx, k):
                s2 = garch_forecast(self._omega, self._alpha, self._beta, s2, r - self._mu)
            self._sigma2 = s2
            return k
        # More bars missed than the window holds, or how many is unknown: re-filter every
        # variance over the window.
        known = self._method != _NONE
        window = self._returns(ctx, self.config.garch_window, known)
        if known.any():
            self._sigma2[known] = garch_filter(
                window,
                self._mu[known],
                self._omega[known],
                self._alpha[known],
                self._beta[known],
            )
        log.info("sizing.variance_resync", plugin=self.name, bars=int(window.shape[0]))
        return None

    def _bars_since(self, ctx: BarContext) -> int | None:
        """After a restart: how many bars back the last bar this plugin sized is, found by its
        close row in the history (None: not within the window). The newest match wins; a row
        matches when at least 90% of the prices both rows have are equal (a split since then
        has divided a few columns; the current bar's split is undone exactly)."""
        last = self._last_close
        if last is None:
            return None
        n = min(ctx.history.length, self.config.garch_window + 1)
        if n < 2:
            return None
        rows = ctx.history.window("close", n)[:-1][::-1]  # newest first, without this bar
        last = last / ctx.bar.split
        both = np.isfinite(rows) & np.isfinite(last)
        same = (rows == last) & both
        hit = same.sum(axis=1) >= np.maximum(0.9 * both.sum(axis=1), 1)
        idx = np.flatnonzero(hit)
        return int(idx[0]) + 1 if idx.size else None

    def _request(self, ctx: BarContext, cols: np.ndarray, initial: bool) -> None:
        """Ask for GARCH(1,1) fits of `cols` with enough returns, warm-started from their last
        fit, on the returns up to this bar (see garch_fits: cached, or sent to the runner)."""
        c = self.config
        idx = np.flatnonzero(cols)
        window = self._returns(ctx, c.garch_window, cols)
        take, jobs = [], []
        for j, i in enumerate(idx.tolist()):
            r = window[:, j]
            r = r[np.isfinite(r)]
            if r.size < c.min_fit_obs:
                continue  # too young for a fit: stays on EWMA (not a failure)
            p = self._params_at(i)
            start = None if p is None else (p.mu, p.omega, p.alpha, p.beta)
            take.append(i)
            jobs.append((r, c.garch_mean, start, c.min_fit_obs))
        if not jobs:
            return
        pending = submit(jobs, self._cache, self._runner, np.asarray(take, dtype=np.int64), initial)
        self._flight.append(_Batch(self._bars, initial, pending))

    @staticmethod
    def _batch_idx(batch: _Batch) -> list[int]:
        if batch.pending is not None:
            return batch.pending.idx.tolist()
        return [r[0] for r in batch.resolved or ()]

    def _resolve(self, batch: _Batch) -> list[Resolved]:
        """A batch's outcomes (waiting for the runner), remembered in the cache; a failure
        carries its EWMA fallback variance."""
        if batch.resolved is not None:
            return batch.resolved
        pending = batch.pending
        assert pending is not None  # a batch is either on its way or resolved
        outcomes = pending.result()
        lam = self.config.ewma_lambda
        out: list[Resolved] = []
        for i, key, job, (params, why) in zip(
            pending.idx.tolist(), pending.keys, pending.jobs, outcomes, strict=True
        ):
            self._cache.put(key, (params, why))
            s2 = math.nan if params is not None else float(ewma_variance(job[0], lam))
            out.append((i, params, why, s2))
        batch.resolved, batch.pending = out, None
        return out

    def _apply_due(self, ctx: BarContext, since: int | None) -> None:
        """Apply, oldest first, every batch asked for fit_lag_bars or more bars sized ago.
        `since`: history rows from the last bar sized to this one (None: unknown)."""
        lag = self.config.fit_lag_bars
        while self._flight and self._flight[0].asked_at + lag <= self._bars:
            self._apply(self._flight.popleft(), ctx, since)

    def _apply(self, batch: _Batch, ctx: BarContext, since: int | None) -> None:
        resolved = self._resolve(batch)
        lam = self.config.ewma_lambda
        failed: dict[str, str] = {}
        news: dict[str, str] = {}  # failed, and the symbol's previous fit had not
        for i, params, why, s2 in resolved:
            self.fits += 1
            if params is not None:
                mu, omega, alpha, beta, sigma2, _ = params
                self._mu[i], self._omega[i], self._alpha[i], self._beta[i] = mu, omega, alpha, beta
                self._sigma2[i] = sigma2
                self._method[i] = _GARCH
                self._fallen.discard(i)
                continue
            failed[self.symbols[i]] = why
            self._reasons[_reason_kind(why)] += 1
            self._symbols_fallen.add(i)
            if i not in self._fallen:
                self._fallen.add(i)
                news[self.symbols[i]] = why
            self._mu[i], self._omega[i], self._alpha[i], self._beta[i] = 0.0, 0.0, 1 - lam, lam
            self._sigma2[i] = s2
            self._method[i] = _EWMA
        if failed:
            # One line per batch, not per symbol, and a warning only for symbols whose
            # previous fit had not failed: on 2008-2010 most fits land on alpha + beta = 1,
            # and a walk-forward logged thousands of warnings repeating the same symbols.
            # The repeats are at debug; close() logs the run's count. A replay logs every
            # batch at debug: the README's S&P 500 run printed 1,190 of these warnings, and
            # its end's summary counts them (`for_replay`).
            shown = news or failed
            first, reason = next(iter(shown.items()))
            (log.warning if news and not self._quiet else log.debug)(
                "sizing.garch_fallback",
                plugin=self.name,
                symbol=first,
                reason=reason,
                symbols=len(shown),
                again=len(failed) - len(news),
                others=dict(list(shown.items())[1:MAX_LOGGED_FALLBACKS]),
                fallback=f"ewma(lambda={lam})",
            )
        self._carry_forward(batch, [r[0] for r in resolved], ctx, since)
        self.fallbacks += len(failed)
        if batch.initial:
            log.info(
                "sizing.garch_initial_fit",
                plugin=self.name,
                symbols=len(resolved),
                fallbacks=failed,
                lag_bars=self.config.fit_lag_bars,
            )

    def _carry_forward(
        self, batch: _Batch, idx: list[int], ctx: BarContext, since: int | None
    ) -> None:
        """The fits' variances are forecasts after the bar that asked; the variance has moved
        on since by `rows_after` rows, up to the last bar sized (`since` rows before this
        one): apply those with the new parameters, as the recursion would have had the fits
        applied at once. (`since` None: this bar re-filters every variance anyway.)"""
        k = batch.rows_after
        if k == 0 or not idx or since is None:
            return
        cols = np.zeros(len(self.symbols), dtype=bool)
        cols[idx] = True
        at = np.flatnonzero(cols)
        mu, om, al, be = self._mu[at], self._omega[at], self._alpha[at], self._beta[at]
        if k is not None and k + since < ctx.history.length:
            # The rows the variance took from the bar that asked to the last bar sized (and
            # the returns into a gap the symbol was in when it asked, once it has reopened).
            rows = self._new_returns(ctx, k, cols, skip=since)
            s2 = self._sigma2[at]
            for r in rows:
                s2 = garch_forecast(om, al, be, s2, r - mu)
            self._sigma2[at] = s2
            return
        # Re-filtered meanwhile (a restart far behind): filter these too, up to the last bar
        # sized, as the re-filter did for the others.
        window = self._returns(ctx, self.config.garch_window + since, cols)
        self._sigma2[at] = garch_filter(window[: window.shape[0] - since], mu, om, al, be)

    def for_replay(self) -> None:
        """A replay waits for every burst of fits: its worker runs at nice 0, the engine's
        priority (as `garch_fits.LIVE_NICE` now is; a worker started at another niceness is
        replaced). Its fallbacks are logged batch by batch at debug, and summed up at its
        end (a warning, with the symbols and reasons): over 19 years of 500 symbols the
        batches' warnings were a thousand lines, where a live operator wants each one."""
        self._runner.set_nice(0)
        self._quiet = True

    async def settle(self) -> None:
        """Wait for fits in flight in a thread: a live engine awaits this before `state()`,
        so the event loop (the broker's stream, the health server) is not blocked meanwhile."""
        for batch in list(self._flight):
            if batch.pending is not None and batch.pending.reply is not None:
                await asyncio.to_thread(batch.pending.result)

    def close(self) -> None:
        """Called by the engine at the end of a run: keep the fit outcomes for the next run."""
        for batch in self._flight:
            self._resolve(batch)  # in the cache too
        self._runner.close()
        self._cache.save()
        if self.fallbacks:
            (log.warning if self._quiet else log.info)(
                "sizing.garch_fallback_summary",
                plugin=self.name,
                fits=self.fits,
                fallbacks=self.fallbacks,
                on_fallback_now=len(self._fallen),
                symbols=len(self._symbols_fallen),
                reasons=dict(self._reasons.most_common()),
                fallback=f"ewma(lambda={self.config.ewma_lambda})",
            )

    def _params_at(self, i: int) -> GarchParams | None:
        if self._method[i] != _GARCH:
            return None
        return GarchParams(
            float(self._mu[i]),
            float(self._omega[i]),
            float(self._alpha[i]),
            float(self._beta[i]),
            float(self._sigma2[i]),
            0,
        )

    # -- durable state ----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything that decides the next bar's targets, as JSON values (NaN as null).
        Fits still running are waited for (the live checkpoint comes after the bar's orders):
        a restarted process applies them at the next bar, as this one would."""
        b = self._book
        pending = [
            {
                "asked_at": batch.asked_at,
                "initial": batch.initial,
                "rows_after": batch.rows_after,
                "fits": [
                    [i, params_to_json(p), why, None if math.isnan(s2) else s2]
                    for i, p, why, s2 in self._resolve(batch)
                ],
            }
            for batch in self._flight
        ]
        return {
            "version": STATE_VERSION,
            "symbols": len(self.symbols),
            "bars": self._bars,
            "month": self._month,
            "targets": _enc(self._targets),
            "equity": self._equity,
            "trades": list(self._trades),
            "trade_bars": list(self._trade_bars),
            "book": None if b is None else {k: _enc(v) for k, v in b.items()},
            "mu": _enc(self._mu),
            "omega": _enc(self._omega),
            "alpha": _enc(self._alpha),
            "beta": _enc(self._beta),
            "sigma2": _enc(self._sigma2),
            "method": self._method.tolist(),
            "last_close": _enc(self._last_close),
            "pending_fits": pending or None,
            # Symbols already warned about (on the fallback since their last good fit): a
            # restarted process repeats at debug, as this one would.
            "fallen": sorted(self._fallen),
        }

    def restore(self, state: dict[str, Any]) -> None:
        if int(state.get("version", 0)) != STATE_VERSION:
            raise ValueError(f"kelly_garch state version {state.get('version')!r} unknown")
        if int(state["symbols"]) != len(self.symbols):
            raise ValueError(
                f"kelly_garch state is for {state['symbols']} symbols, this universe has "
                f"{len(self.symbols)}"
            )
        self._bars = int(state["bars"])
        self._month = state.get("month")
        self._targets = _dec(state.get("targets"))
        eq = state.get("equity")
        self._equity = None if eq is None else float(eq)
        self._trades = deque((float(x) for x in state["trades"]), maxlen=self.config.kelly_window)
        # State written before trades had ages: count them as closed at the checkpoint.
        bars = state.get("trade_bars") or [self._bars] * len(self._trades)
        self._trade_bars = deque((int(b) for b in bars), maxlen=self.config.kelly_window)
        book = state.get("book")
        self._book = None if book is None else {k: _dec(v) for k, v in book.items()}  # type: ignore[misc]
        for name in ("mu", "omega", "alpha", "beta", "sigma2"):
            setattr(self, f"_{name}", _dec(state[name]))
        self._method = np.asarray(state["method"], dtype=np.int8)
        self._last_close = _dec(state.get("last_close"))
        # Absent in earlier checkpoints: their symbols are warned about once more.
        self._fallen = {int(i) for i in state.get("fallen") or ()}
        self._seen_len = None  # another process: its history buffer has its own count
        pending = state.get("pending_fits")  # absent in checkpoints of earlier versions
        if isinstance(pending, dict):  # one batch, asked for at the bar checkpointed (lag 1)
            pending = [{**pending, "asked_at": self._bars - 1, "rows_after": 0}]
        self._flight = deque(
            _Batch(
                asked_at=int(batch["asked_at"]),
                initial=bool(batch["initial"]),
                pending=None,
                resolved=[
                    (int(i), params_from_json(p), str(why), math.nan if s2 is None else float(s2))
                    for i, p, why, s2 in batch["fits"]
                ],
                rows_after=None if batch["rows_after"] is None else int(batch["rows_after"]),
            )
            for batch in pending or ()
        )
        self._drop_degenerate()
        self._kelly_source = self.kelly_inputs[2]

    def _drop_degenerate(self) -> None:
        """A checkpoint written before fits with alpha below MIN_ALPHA were refused holds
        such fits, current or in flight: used until the symbol's next refit (up to
        `refit_bars` bars), their variance moved by no shock. Current ones are dropped (the
        symbol starts on EWMA at the next bar, as a symbol without a variance does); those
        in flight are not applied (the symbol keeps its variance)."""
        with np.errstate(invalid="ignore"):
            bad = (self._method == _GARCH) & ~(self._alpha >= MIN_ALPHA)
        dropped = [self.symbols[i] for i in np.flatnonzero(bad).tolist()]
        for name in ("_mu", "_omega", "_alpha", "_beta", "_sigma2"):
            getattr(self, name)[bad] = np.nan
        self._method[bad] = _NONE
        for batch in self._flight:
            if batch.resolved is None:
                continue
            # FitParams: (mu, omega, alpha, beta, sigma2, nobs)
            kept = [f for f in batch.resolved if f[1] is None or f[1][2] >= MIN_ALPHA]
            dropped += [self.symbols[f[0]] for f in batch.resolved if f not in kept]
            batch.resolved = kept
        if dropped:
            log.warning(
                "sizing.garch_degenerate_restored",
                plugin=self.name,
                symbols=sorted(set(dropped)),
                rule=f"fits with alpha below {MIN_ALPHA:g} from an earlier version's checkpoint "
                "are not used: EWMA until the next refit",
            )


def _enc(a: np.ndarray | None) -> list[float | None] | None:
    if a is None:
        return None
    return [None if not math.isfinite(x) else x for x in np.asarray(a, dtype=float).tolist()]


def _dec(v: list[float | None] | None) -> np.ndarray | None:
    if v is None:
        return None
    return np.array([np.nan if x is None else float(x) for x in v], dtype=np.float64)
