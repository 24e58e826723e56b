"""Monte Carlo of a run: bootstrap of its daily returns and reshuffling of its trade order.

What a researcher asks of one backtest: how much of its final return, Sharpe ratio and worst
drawdown is luck of the order the days (or trades) came in. Three resamplings answer it
(docs/VALIDATION.md has the methods, references and conventions):

* ``iid``: days drawn with replacement (Efron 1979), which keeps the return distribution and
  destroys any serial dependence;
* ``stationary``: the stationary block bootstrap of Politis & Romano (1994), blocks of
  geometric length with mean ``block_length`` (automatic: Politis & White 2004, corrected by
  Patton, Politis & White 2009, the larger of the returns' and their squares'), which keeps
  volatility clustering and short-range autocorrelation, and so gives honest drawdown tails;
* ``trade_order``: the round trips' PnLs (money, after their entry and exit commissions) in
  a random order added to the initial capital, with what no round trip closed (dividends,
  the positions still open at the end) as one more trade, so that the observed path ends at
  the run's equity. Their sum, hence the final return, is the same on every path; the
  drawdown is what the order decides.
* ``permutation`` (not run by default): the same reshuffling for the daily returns, drawn
  without replacement. Every path ends where the run ended, so it isolates what the order
  of the days did to the drawdown; it is the exact null distribution of the validator's
  drawdown test when the days are exchangeable.

Both bootstraps are `arch.bootstrap`'s. Statistics follow docs/ANALYSIS.md: simple returns,
compounded paths starting at the initial capital, sample deviations, Sharpe ratio of the
excess over the per-bar risk-free rate (1 + rf) ** (1 / P) - 1, annualised by sqrt(P).

Scale-out (issue 11 point 7) runs chunks anywhere: a run is cut into `MonteCarloTask`s of
`chunk_size` paths; chunk i of method m draws from its own stream
``SeedSequence(seed, spawn_key=(m, i))`` (= ``SeedSequence(seed).spawn(..)[m].spawn(..)[i]``),
so a chunk's paths depend on (seed, method, i) only, never on which worker ran it or in which
order. `simulate_chunk` is the pure function a worker runs; `combine` puts the chunks back in
index order. Any ``map_fn`` with the builtin ``map``'s signature (a process pool's, Ray's)
gives the same numbers, bit for bit, as the serial run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core.errors import ConfigError
from ..core.types import Fill
from .metrics import _FLAT_TOL
from .return_metrics import check_annual_rate, per_bar_rate, simple_returns
from .run_records import DEFAULT_PERIODS_PER_YEAR, RunRecord, periods_per_year_for, run_record

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "ChunkResult",
    "MonteCarloConfig",
    "MonteCarloInput",
    "MonteCarloSimulator",
    "MonteCarloTask",
    "automatic_block_length",
    "combine",
    "monte_carlo_input",
    "path_statistics",
    "plan_chunks",
    "round_trip_pnls_after_costs",
    "run_trade_pnls",
    "simulate",
    "simulate_chunk",
    "simulate_with_paths",
    "summarize_paths",
    "trade_path_statistics",
]

# The order is part of the random streams' identity (spawn keys): append, never reorder.
METHODS = ("iid", "stationary", "trade_order", "permutation")
DEFAULT_METHODS = ("iid", "stationary", "trade_order")
STATISTICS = ("final_return", "sharpe", "max_drawdown")
_NAN = math.nan

MapFn = Callable[[Callable[[Any], Any], Iterable[Any]], Iterable[Any]]


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class MonteCarloConfig:
    """How many paths, from which seed, with which resamplings.

    `block_length` is the stationary bootstrap's mean block length in bars; 0 picks it from
    the data (Politis & White). `chunk_size` is the unit of parallel work: it fixes which
    random stream each path comes from, so changing it changes the draws (not their
    distribution), while changing the workers never does."""

    paths: int = 1000
    seed: int = 1
    block_length: float = 0.0
    chunk_size: int = 250
    methods: tuple[str, ...] = DEFAULT_METHODS
    risk_free_rate: float = 0.02
    # None: the run's own (its summary's), else 252 (as `PerformanceConfig`'s).
    periods_per_year: float | None = None

    def __post_init__(self) -> None:
        for key in ("paths", "seed", "chunk_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"monte_carlo.{key} must be an integer, got {value!r}")
        for key in ("block_length", "risk_free_rate", "periods_per_year"):
            value = getattr(self, key)
            if key == "periods_per_year" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"monte_carlo.{key} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"monte_carlo.{key} must be finite, got {value!r}")
        if self.paths < 1:
            raise ConfigError(f"monte_carlo.paths must be >= 1, got {self.paths}")
        if self.seed < 0:
            raise ConfigError(f"monte_carlo.seed must be >= 0, got {self.seed}")
        if self.chunk_size < 1:
            raise ConfigError(f"monte_carlo.chunk_size must be >= 1, got {self.chunk_size}")
        if self.block_length != 0 and self.block_length < 1:
            raise ConfigError(
                f"monte_carlo.block_length must be 0 (automatic) or >= 1 bar, got "
                f"{self.block_length}"
            )
        check_annual_rate("monte_carlo.risk_free_rate", self.risk_free_rate)
        if not self.bars_a_year > 0:
            raise ConfigError(
                f"monte_carlo.periods_per_year must be > 0, got {self.periods_per_year}"
            )
        methods = tuple(self.methods)
        object.__setattr__(self, "methods", methods)
        unknown = [m for m in methods if m not in METHODS]
        if unknown or not methods or len(set(methods)) != len(methods):
            raise ConfigError(
                f"monte_carlo.methods {list(methods)!r} must be distinct choices among "
                f"{', '.join(METHODS)} (at least one)"
            )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "monte_carlo") -> MonteCarloConfig:
        """From a TOML table (unknown keys and bad types are ConfigErrors naming the key)."""
        from ..config import build

        return build(cls, data, where)

    @property
    def bars_a_year(self) -> float:
        """`periods_per_year`, or 252 where it is left to a run and there is none."""
        return DEFAULT_PERIODS_PER_YEAR if self.periods_per_year is None else self.periods_per_year

    @property
    def rf_bar(self) -> float:
        return per_bar_rate(self.risk_free_rate, self.bars_a_year)

    def for_run(self, run: RunRecord | None) -> MonteCarloConfig:
        """This configuration with the bars a year to annualise `run` with
        (`run_records.periods_per_year_for`)."""
        ppy = periods_per_year_for(self.periods_per_year, run, "monte_carlo.periods_per_year")
        return dataclasses.replace(self, periods_per_year=ppy)


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class MonteCarloInput:
    """What the resamplings need: per-bar simple returns, the trades' PnLs (money) and the
    capital they start from (trade paths only).

    `unclosed_pnl` is set (and is the last of `trade_pnls`) when the trades come from a run:
    the part of its PnL no round trip closed, kept so the trade paths end at the run's
    equity rather than at a total that leaves out its dividends and open positions.
    `run` is the run the returns are of (None for given returns), whose own bars a year the
    Sharpe ratios are annualised with unless the configuration sets them."""

    returns: np.ndarray
    trade_pnls: np.ndarray
    initial_capital: float = _NAN
    run_id: str = ""
    unclosed_pnl: float | None = None
    run: RunRecord | None = None

    @property
    def round_trips(self) -> int:
        return int(self.trade_pnls.size) - (self.unclosed_pnl is not None)


def _is_returns(x: Any) -> bool:
    if isinstance(x, np.ndarray | pd.Series | pd.Index):
        return True
    if isinstance(x, list | tuple):
        return all(isinstance(v, int | float | np.number) for v in x)
    return False


def _finite_array(x: Any, what: str) -> np.ndarray:
    try:
        r = np.asarray(x, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be numbers") from None
    if r.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {r.shape}")
    bad = np.flatnonzero(~np.isfinite(r))
    if bad.size:
        raise ValueError(f"{what} contain NaN or inf (first at position {int(bad[0])})")
    return r


def _returns_array(x: Any, what: str = "returns") -> np.ndarray:
    r = _finite_array(x, what)
    if np.any(r < -1.0):
        raise ValueError(f"{what} below -1 (a loss of more than everything) are not returns")
    return r


def round_trip_pnls_after_costs(fills: Iterable[Fill]) -> np.ndarray:
    """The PnL of each finished round trip after all its commissions, entry ones included,
    in order of the fill that took the position back to flat.

    `trade_metrics.round_trip_pnls` charges only the closing commissions (its trade
    statistics are the summary's); shuffling those left every trade path short of the run's
    equity by the entry commissions. A round trip's PnL here is its net cash flow: a fill
    that flips a position is split pro rata between the trip it ends and the one it opens,
    as `metrics.closed_trades` splits it."""
    trips: dict[str, tuple[float, float]] = {}  # symbol -> (signed quantity, net cash so far)
    out: list[float] = []
    for f in fills:
        qty = float(f.quantity)
        if qty <= 0:
            continue
        pos, cash = trips.get(f.symbol, (0.0, 0.0))
        sign = f.side.sign
        flow = -sign * f.price * qty - f.commission
        if pos == 0 or (pos > 0) == (sign > 0):
            trips[f.symbol] = (pos + sign * qty, cash + flow)
            continue
        new_pos = pos + sign * qty
        flat = abs(new_pos) <= _FLAT_TOL * max(abs(pos), qty)
        if not flat and (new_pos > 0) == (pos > 0):  # a trim: the trip goes on
            trips[f.symbol] = (new_pos, cash + flow)
            continue
        closing = min(qty, abs(pos)) / qty
        out.append(cash + flow * closing)
        trips[f.symbol] = (0.0, 0.0) if flat else (new_pos, flow * (1.0 - closing))
    return np.asarray(out, dtype=float)


def run_trade_pnls(rec: RunRecord) -> tuple[np.ndarray, float]:
    """The run's round trips after costs and what they leave of its PnL (final equity less
    initial capital less their sum: dividends, positions open at the end and their costs).
    NaN rest for a run whose last equity is undefined."""
    trips = round_trip_pnls_after_costs(rec.fills)
    final = float(rec.equity[-1]) if len(rec.equity) else float(rec.initial_capital)
    rest = final - float(rec.initial_capital) - float(np.sum(trips))
    return trips, rest if math.isfinite(rest) else _NAN


def monte_carlo_input(
    data: Any,
    *,
    trade_pnls: Any = None,
    initial_capital: float | None = None,
) -> MonteCarloInput:
    """Normalise the input: per-bar returns (an array, list or Series: simple returns, not
    prices) with optional `trade_pnls` and `initial_capital`, or anything
    `performance.run_record` accepts (its equity curve's returns and its round trips).

    A run record whose equity went to zero or below has NaN returns from then on; they are
    kept, and every statistic of that run is NaN rather than an invented number.

    A run's trades are its round trips after all their commissions, then what they leave of
    its PnL as one last trade (`run_trade_pnls`), unless it is zero to rounding: the trade
    paths end at the run's final equity, as its `observed` value says. Given `trade_pnls`
    are taken as they are."""
    if isinstance(data, MonteCarloInput):
        return data
    if _is_returns(data):
        r = _returns_array(data)
        pnls = np.zeros(0) if trade_pnls is None else _finite_array(trade_pnls, "trade_pnls")
        cap = _NAN if initial_capital is None else float(initial_capital)
        if pnls.size and not (math.isfinite(cap) and cap > 0):
            raise ValueError("trade_pnls need a positive initial_capital (the first equity)")
        return MonteCarloInput(r, pnls, cap)
    if not isinstance(data, RunRecord | str | Path | Mapping) and not hasattr(data, "result"):
        raise ValueError(
            "Monte Carlo input must be per-bar returns (array, list or Series) or a run "
            f"(what performance.run_record accepts), got {type(data).__name__}"
        )
    rec = run_record(data)
    r = simple_returns(rec.equity, rec.initial_capital)
    if trade_pnls is not None:
        pnls = _finite_array(trade_pnls, "trade_pnls")
        return MonteCarloInput(r, pnls, rec.initial_capital, rec.run_id, run=rec)
    trips, rest = run_trade_pnls(rec)
    if not math.isfinite(rest):  # no final equity to end at
        return MonteCarloInput(r, trips, rec.initial_capital, rec.run_id, run=rec)
    scale = max(abs(float(rec.initial_capital)), float(np.sum(np.abs(trips))))
    if abs(rest) <= 1e-9 * scale:
        return MonteCarloInput(r, trips, rec.initial_capital, rec.run_id, run=rec)
    pnls = np.append(trips, rest)
    return MonteCarloInput(r, pnls, rec.initial_capital, rec.run_id, unclosed_pnl=rest, run=rec)


# ----------------------------------------------------------------------------- statistics


def path_statistics(
    returns: np.ndarray, rf_bar: float = 0.0, periods_per_year: float = 252.0
) -> dict[str, np.ndarray]:
    """Final return, annualised Sharpe ratio and max drawdown of each row of a (paths x bars)
    matrix of simple returns, each path compounding from 1 (the initial capital)."""
    r = np.atleast_2d(np.asarray(returns, dtype=float))
    k, n = r.shape
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        wealth = np.cumprod(1.0 + r, axis=1)
        final = wealth[:, -1] - 1.0 if n else np.zeros(k)
        peak = np.maximum.accumulate(np.concatenate((np.ones((k, 1)), wealth), axis=1), axis=1)
        dd = np.maximum(1.0 - np.concatenate((np.ones((k, 1)), wealth), axis=1) / peak, 0.0)
        mdd = np.max(dd, axis=1)
        x = r - rf_bar
        if n >= 2:
            mean = np.mean(x, axis=1)
            sd = np.std(x, axis=1, ddof=1)
            # A deviation at rounding-noise level is no dispersion: undefined, as in metrics._ratio
            ok = sd > 1e-10 * np.abs(mean)
            sharpe = np.where(ok, mean / np.where(ok, sd, 1.0), np.nan) * math.sqrt(
                periods_per_year
            )
        else:
            sharpe = np.full(k, np.nan)
    bad = ~np.all(np.isfinite(r), axis=1)
    for a in (final, mdd, sharpe):
        a[bad] = np.nan
    return {"final_return": final, "sharpe": sharpe, "max_drawdown": mdd}


def trade_path_statistics(pnls: np.ndarray, initial_capital: float) -> dict[str, np.ndarray]:
    """Final return, per-trade Sharpe ratio and max drawdown of each row of a (paths x trades)
    matrix of round-trip PnLs added in order to the initial capital.

    The Sharpe ratio here is of the per-trade returns pnl_k / equity before trade k, *not*
    annualised (trades do not come at a fixed rate). A drawdown can exceed 1 if the equity
    goes below zero (a leveraged wipe-out), as in `metrics.drawdown_series`."""
    p = np.atleast_2d(np.asarray(pnls, dtype=float))
    k, n = p.shape
    equity = initial_capital + np.cumsum(p, axis=1)
    full = np.concatenate((np.full((k, 1), float(initial_capital)), equity), axis=1)
    peak = np.maximum.accumulate(full, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        dd = np.where(peak > 0, np.maximum(1.0 - full / peak, 0.0), np.nan)
        mdd = np.nanmax(dd, axis=1) if n else np.zeros(k)
        before = full[:, :-1]
        r = np.where(before > 0, p / before, np.nan)
        if n >= 2:
            mean = np.mean(r, axis=1)
            sd = np.std(r, axis=1, ddof=1)
            ok = sd > 1e-10 * np.abs(mean)
            sharpe = np.where(ok, mean / np.where(ok, sd, 1.0), np.nan)
        else:
            sharpe = np.full(k, np.nan)
    final = equity[:, -1] / initial_capital - 1.0 if n else np.zeros(k)
    return {"final_return": final, "sharpe": sharpe, "max_drawdown": mdd}


# The largest share of paths whose statistic is undefined (a constant path's Sharpe ratio)
# that a summary may leave out: below the 5th percentile's share, so where they would lie
# cannot move the percentiles reported much. Above it the summary is NaN.
MAX_UNDEFINED_SHARE = 0.05


def defined(values: np.ndarray) -> np.ndarray | None:
    """The finite values of a statistic over the paths, or None when too many are undefined
    to summarise (`MAX_UNDEFINED_SHARE`). One constant path of a mostly flat strategy made
    its whole Sharpe summary and confidence interval NaN before."""
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v)
    if v.size == 0 or (v.size - int(ok.sum())) > MAX_UNDEFINED_SHARE * v.size:
        return None
    return v if ok.all() else v[ok]


def _describe(values: np.ndarray) -> dict[str, float]:
    v = defined(values)
    undefined = int(np.size(values) - np.isfinite(np.asarray(values, dtype=float)).sum())
    if v is None or v.size == 0:
        out = {k: _NAN for k in ("mean", "std", "p5", "p50", "p95")}
        out["undefined_paths"] = undefined
        return out
    p5, p50, p95 = np.percentile(v, [5.0, 50.0, 95.0])
    return {
        "mean": float(np.mean(v)),
        "std": float(np.std(v, ddof=1)) if v.size > 1 else _NAN,
        "p5": float(p5),
        "p50": float(p50),
        "p95": float(p95),
        "undefined_paths": undefined,
    }


def _rank(observed: float, values: np.ndarray) -> float:
    """Share of paths at or below the observed value (NaN when undefined). NaN too for a
    statistic the method cannot change (a permutation's final return and Sharpe ratio, a
    trade-order shuffle's final return): its paths differ only by rounding, and a rank of
    0.36 read as a result."""
    v = defined(values) if math.isfinite(observed) else None
    if v is None or v.size == 0:
        return _NAN
    if float(np.ptp(v)) <= 1e-9 * max(1.0, abs(observed)):
        return _NAN
    return float(np.mean(v <= observed))


def summarize_paths(
    stats: Mapping[str, np.ndarray], observed: Mapping[str, float] | None = None
) -> dict[str, dict[str, float]]:
    """Mean, sample deviation, 5th, 50th and 95th percentiles (linear interpolation) of each
    statistic over the paths; with `observed`, also the run's own value and the share of
    paths at or below it."""
    out: dict[str, dict[str, float]] = {}
    for key in STATISTICS:
        d = _describe(stats[key])
        if observed is not None:
            d["observed"] = float(observed[key])
            d["observed_rank"] = _rank(float(observed[key]), np.asarray(stats[key]))
        out[key] = d
    return out


# ----------------------------------------------------------------------------- chunks


@dataclass(frozen=True)
class MonteCarloTask:
    """One chunk of paths: everything a worker needs (picklable, no shared state)."""

    method: str
    chunk: int
    paths: int
    seed: int
    data: np.ndarray  # per-bar returns, or round-trip PnLs for trade_order
    block_length: float = 1.0
    rf_bar: float = 0.0
    periods_per_year: float = 252.0
    initial_capital: float = 1.0


@dataclass(frozen=True)
class ChunkResult:
    method: str
    chunk: int
    final_return: np.ndarray
    sharpe: np.ndarray
    max_drawdown: np.ndarray


def _stream(seed: int, method: str, chunk: int) -> np.random.Generator:
    seq = np.random.SeedSequence(seed, spawn_key=(METHODS.index(method), chunk))
    return np.random.default_rng(seq)


def simulate_chunk(task: MonteCarloTask) -> ChunkResult:
    """The paths of one chunk: a pure function of the task (run it on any worker)."""
    from arch.bootstrap import IIDBootstrap, StationaryBootstrap

    rng = _stream(task.seed, task.method, task.chunk)
    x = np.asarray(task.data, dtype=float)
    if task.method in ("trade_order", "permutation"):
        draws = rng.permuted(np.broadcast_to(x, (task.paths, x.size)), axis=1)
    elif task.method in ("iid", "stationary"):
        bs = (
            IIDBootstrap(x, seed=rng)
            if task.method == "iid"
            # A mean block length need not be whole: arch types it int, but uses only 1/it
            # (the geometric probability of a new block).
            else StationaryBootstrap(task.block_length, x, seed=rng)  # type: ignore[arg-type]
        )
        draws = np.empty((task.paths, x.size))
        for i, (pos, _) in enumerate(bs.bootstrap(task.paths)):
            draws[i] = pos[0]
    else:
        raise ValueError(f"unknown Monte Carlo method {task.method!r}; valid: {METHODS}")
    if task.method == "trade_order":
        stats = trade_path_statistics(draws, task.initial_capital)
    else:
        stats = path_statistics(draws, task.rf_bar, task.periods_per_year)
    return ChunkResult(
        task.method, task.chunk, stats["final_return"], stats["sharpe"], stats["max_drawdown"]
    )


def automatic_block_length(returns: Any) -> float:
    """The stationary bootstrap's mean block length: the larger of Politis & White's (2004)
    choice (with the correction of Patton, Politis & White 2009, as
    `arch.bootstrap.optimal_block_length` computes it) for the returns and for their
    squares; at least 1 bar.

    Why the squares: Politis & White choose the block for the variance of the sample mean,
    which only the returns' own autocorrelation matters to. Daily equity returns are close
    to uncorrelated but cluster in volatility, so on the S&P 500's last 1,260 days the
    returns alone gave 1.0 bar (the IID bootstrap: lag-1 autocorrelation of squared returns
    0.29 in the data, 0.00 on the paths), where the squares give 46. Drawdowns are what
    clustering decides, and the method is here to keep it."""
    from arch.bootstrap import optimal_block_length

    r = np.asarray(returns, dtype=float)
    if r.size < 10 or not np.all(np.isfinite(r)) or float(np.std(r)) == 0.0:
        return 1.0
    best = 1.0
    for series in (r, r * r):
        if float(np.std(series)) == 0.0:
            continue
        with np.errstate(divide="ignore", invalid="ignore"):  # near-constant series
            value = float(optimal_block_length(series)["stationary"].iloc[0])
        if math.isfinite(value):
            best = max(best, value)
    return best


def plan_chunks(data: MonteCarloInput, config: MonteCarloConfig) -> list[MonteCarloTask]:
    """The tasks of a run: for each configured method, ceil(paths / chunk_size) chunks."""
    block = float(config.block_length) or automatic_block_length(data.returns)
    tasks: list[MonteCarloTask] = []
    for method in config.methods:
        if method == "trade_order":
            if data.round_trips == 0:  # one lump of unclosed PnL has no order to shuffle
                continue
            series = data.trade_pnls
        else:
            series = data.returns
        done = 0
        chunk = 0
        while done < config.paths:
            size = min(config.chunk_size, config.paths - done)
            tasks.append(
                MonteCarloTask(
                    method=method,
                    chunk=chunk,
                    paths=size,
                    seed=config.seed,
                    data=series,
                    block_length=block,
                    rf_bar=config.rf_bar,
                    periods_per_year=config.bars_a_year,
                    initial_capital=data.initial_capital,
                )
            )
            done += size
            chunk += 1
    return tasks


def combine(results: Iterable[ChunkResult]) -> dict[str, dict[str, np.ndarray]]:
    """Per method, each statistic's values over all paths, chunks in index order (whatever
    order the workers returned them in). Duplicate chunks are a scheduling bug."""
    by_method: dict[str, list[ChunkResult]] = {}
    for res in results:
        by_method.setdefault(res.method, []).append(res)
    out: dict[str, dict[str, np.ndarray]] = {}
    for method, chunks in by_method.items():
        chunks.sort(key=lambda c: c.chunk)
        idx = [c.chunk for c in chunks]
        if idx != list(range(len(idx))):
            raise ValueError(f"Monte Carlo chunks of {method!r} are not 0..k-1 once each: {idx}")
        out[method] = {key: np.concatenate([getattr(c, key) for c in chunks]) for key in STATISTICS}
    return out


def _observed(data: MonteCarloInput, config: MonteCarloConfig) -> dict[str, dict[str, float]]:
    r = path_statistics(data.returns[None, :], config.rf_bar, config.bars_a_year)
    out = {"returns": {k: float(v[0]) for k, v in r.items()}}
    if data.round_trips:
        t = trade_path_statistics(data.trade_pnls[None, :], data.initial_capital)
        out["trade_order"] = {k: float(v[0]) for k, v in t.items()}
    return out


def simulate(
    data: Any,
    config: MonteCarloConfig | None = None,
    *,
    map_fn: MapFn | None = None,
    keep_paths: bool = False,
) -> dict[str, Any]:
    """Run every configured resampling and summarise it (a JSON-serialisable dict).

    `map_fn(simulate_chunk, tasks)` runs the chunks (default: the builtin `map`, serially);
    any map over local processes or a cluster gives the same result. `keep_paths` adds each
    path's statistics as lists (for a histogram)."""
    summary, _ = simulate_with_paths(data, config, map_fn=map_fn, keep_paths=keep_paths)
    return summary


def simulate_with_paths(
    data: Any,
    config: MonteCarloConfig | None = None,
    *,
    map_fn: MapFn | None = None,
    keep_paths: bool = False,
) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """`simulate`'s summary and each method's per-path statistics (arrays), for tests that
    compare an observed value with the bootstrap distribution. A run's Sharpe ratios are
    annualised with its own bars a year unless `config` sets them
    (`MonteCarloConfig.for_run`)."""
    inp = monte_carlo_input(data)
    cfg = (config or MonteCarloConfig()).for_run(inp.run)
    tasks = plan_chunks(inp, cfg)
    results = list((map_fn or map)(simulate_chunk, tasks))
    values = combine(results)
    observed = _observed(inp, cfg)
    block = tasks[0].block_length if tasks else _NAN
    out: dict[str, Any] = {
        "run_id": inp.run_id,
        "bars": int(inp.returns.size),
        "round_trips": inp.round_trips,
        "unclosed_pnl": 0.0 if inp.unclosed_pnl is None else inp.unclosed_pnl,
        "paths": cfg.paths,
        "seed": cfg.seed,
        "chunk_size": cfg.chunk_size,
        "block_length": float(block),
        "block_length_source": "config" if cfg.block_length else "politis-white",
        "config": {**dataclasses.asdict(cfg), "methods": list(cfg.methods)},
        "methods": {},
    }
    for method in cfg.methods:
        if method not in values:  # trade_order without round trips
            out["methods"][method] = {"paths": 0, "skipped": "the run has no round trip"}
            continue
        obs = observed["trade_order" if method == "trade_order" else "returns"]
        entry: dict[str, Any] = {"paths": int(values[method]["sharpe"].size)}
        entry.update(summarize_paths(values[method], obs))
        if method == "trade_order":
            entry["sharpe_is_per_trade"] = True
        if keep_paths:
            entry["values"] = {k: v.tolist() for k, v in values[method].items()}
        out["methods"][method] = entry
    return out, values


class MonteCarloSimulator:
    """The Monte Carlo of issue 11 point 3 over a run or a return series (see the module)."""

    def __init__(self, config: MonteCarloConfig | None = None) -> None:
        self.config = config or MonteCarloConfig()

    def run(
        self,
        data: Any,
        *,
        trade_pnls: Any = None,
        initial_capital: float | None = None,
        map_fn: MapFn | None = None,
        keep_paths: bool = False,
    ) -> dict[str, Any]:
        inp = monte_carlo_input(data, trade_pnls=trade_pnls, initial_capital=initial_capital)
        return simulate(inp, self.config, map_fn=map_fn, keep_paths=keep_paths)
