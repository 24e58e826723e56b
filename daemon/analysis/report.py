"""A run report a person wants to read: one self-contained HTML file and one JSON file with
every number in it (`tradingd report RUN`, `tradingd backtest --report`).

What is in it, and why it is computed here rather than in the browser: every number the
charts show (benchmark equity, drawdowns, rolling Sharpe, monthly returns, histogram bins,
round-trip PnLs) is computed once in Python, with the analyzer's conventions
(docs/ANALYSIS.md), and written to the JSON file, so what a reader sees can be checked and
reused without scraping a page. The metrics are `PerformanceAnalyzer.analyze_performance`'s.

Other analyses (statistical tests, Monte Carlo, attribution, walk-forward) join a report as
*sections*: plain JSON-like mappings by title, rendered as tables and copied into the JSON
file (docs/REPORTS.md has the rendering rules). This module imports none of them.

The run's configuration comes from the record's `config.json`, which `tradingd backtest`
writes with credentials masked; it is masked again here (`secrets.redact`), so a record
written by hand or by an older version cannot leak a password into a page that gets shared.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..build_info import Build, recorded_build, this_build
from ..core.atomic_file import write_atomically
from ..core.errors import ConfigError
from ..secrets import redact
from . import report_charts as charts
from .metrics import _REL_NOISE, closed_trades, drawdown_series, short_run, unsigned_zero
from .performance import (
    PerformanceAnalyzer,
    RunRecord,
    level_curve,
    level_returns,
    levels_at,
    per_bar_rate,
    round_trip_pnls,
    run_record,
    simple_returns,
)
from .run_records import _json_file

__all__ = [
    "REPORT_FORMAT",
    "Report",
    "ReportConfig",
    "ReportFiles",
    "build_report",
    "monthly_returns",
    "resolve_run",
    "rolling_sharpe",
    "write_report",
]

REPORT_FORMAT = "tradingd.report/1"
_STEPS = ("loading the run", "benchmark", "metrics", "charts", "writing")


@dataclass(frozen=True)
class ReportConfig:
    """How a report is drawn. The metrics' own settings (risk-free rate, benchmark, VaR
    level) are the analyzer's `PerformanceConfig`."""

    # Bars of the rolling Sharpe ratio: six months, pyfolio's default, long enough that one
    # bad week does not swing it and short enough to show regime changes in a 3-year run.
    rolling_window: int = 126
    return_bins: int = 50  # histogram bins of the per-bar returns
    trade_bins: int = 30  # histogram bins of the round-trip PnLs
    title: str = ""  # default: "Run <run_id>"

    def __post_init__(self) -> None:
        for key, low in (("rolling_window", 2), ("return_bins", 1), ("trade_bins", 1)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"report.{key} must be an integer, got {value!r}")
            if value < low:
                raise ConfigError(f"report.{key} must be >= {low}, got {value}")
        if not isinstance(self.title, str):
            raise ConfigError(f"report.title must be a string, got {self.title!r}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "report") -> ReportConfig:
        """From a TOML table (unknown keys and bad types are ConfigErrors naming the key)."""
        from ..config import build

        return build(cls, data, where)


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    json: Path

    @property
    def html_bytes(self) -> int:
        return self.html.stat().st_size

    @property
    def json_bytes(self) -> int:
        return self.json.stat().st_size


# ----------------------------------------------------------------------------- run lookup


def resolve_run(run: str | Path, runs_root: str | Path = "var/runs") -> Path:
    """The record folder of `run`: a path to a run folder, or a run id under `runs_root`."""
    given = Path(run)
    candidates = [given] if given.is_absolute() else [given, Path(runs_root) / given]
    for path in candidates:
        if path.is_dir():
            if not (path / "equity.csv").exists():
                raise ValueError(f"{path} is not a run record: it has no equity.csv")
            return path
    if given.is_absolute() or len(given.parts) > 1:
        # A path (var/runs/x), not a run id: runs_root joined to it named var/runs/var/runs/x.
        raise ValueError(f"run {str(run)!r} not found: no folder at that path")
    raise ValueError(
        f"run {str(run)!r} not found: no run folder {Path(runs_root) / given} and no folder "
        f"{given} here"
    )


# ----------------------------------------------------------------------------- numbers


def rolling_sharpe(
    returns: Any, window: int, risk_free: float = 0.0, periods_per_year: float = 252.0
) -> np.ndarray:
    """The Sharpe ratio of each trailing `window` bars (the analyzer's formula: sample
    deviation, per-bar risk-free rate, x sqrt(periods_per_year)); NaN for the first
    window - 1 bars, for a window with a NaN return, and where the deviation is zero."""
    r = np.asarray(returns, dtype=float).ravel() - risk_free
    out = np.full(r.size, np.nan)
    if r.size < window:
        return out
    w = np.lib.stride_tricks.sliding_window_view(r, window)
    # Each window divided by its largest magnitude first: the ratio is the same, and returns
    # of 1e-160 no longer square to zero (or to a subnormal), which made tiny windows NaN or
    # off by a third depending on their scale.
    top = np.abs(w).max(axis=1)
    with np.errstate(invalid="ignore"):
        top = np.where(top > 0, top, 1.0)[:, None]
        w = w / top
    mean = w.mean(axis=1)
    sd = w.std(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = np.isfinite(mean) & np.isfinite(sd) & (sd > _REL_NOISE * np.abs(mean))
        out[window - 1 :] = np.where(ok, mean / sd * math.sqrt(periods_per_year), np.nan)
    return out


def monthly_returns(times: pd.DatetimeIndex, returns: Any) -> pd.DataFrame:
    """Compounded returns by calendar month: years down, months 1-12 across (NaN for a month
    without bars or with a NaN return). Times are taken in UTC, as the run records them."""
    idx = _naive_utc(times)
    r = pd.Series(np.asarray(returns, dtype=float), index=idx)
    grouped = (1.0 + r).groupby([idx.year, idx.month])
    table = grouped.apply(lambda g: float(np.prod(g.to_numpy())) - 1.0)
    frame = table.unstack() if len(table) else pd.DataFrame()
    return frame.reindex(columns=range(1, 13))


def _naive_utc(times: Any) -> pd.DatetimeIndex:
    idx = pd.DatetimeIndex(pd.to_datetime(times))
    return idx.tz_convert("UTC").tz_localize(None) if idx.tz is not None else idx


def _labels(times: Any) -> list[str]:
    """Times as plotly reads them: dates for daily bars, UTC times otherwise."""
    idx = _naive_utc(times)
    daily = bool(len(idx)) and bool((idx == idx.normalize()).all())
    return list(idx.strftime("%Y-%m-%d" if daily else "%Y-%m-%d %H:%M:%S"))


def _histogram(x: np.ndarray, bins: int) -> tuple[list[float], list[int]]:
    x = x[np.isfinite(x)]
    if not x.size:
        return [], []
    counts, edges = np.histogram(x, bins=bins)
    return [float(e) for e in edges], [int(c) for c in counts]


def _opt(x: Any) -> float | None:
    """A float for JSON: None where it is NaN or inf."""
    if x is None:
        return None
    f = float(x)
    return f if math.isfinite(f) else None


def _floats(a: Any) -> list[float | None]:
    return [_opt(v) for v in np.asarray(a, dtype=float).ravel()]


def jsonable(value: Any, where: str = "value") -> Any:
    """Plain JSON data (NaN and inf as None); anything else is a ValueError naming where."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return _opt(value)
    if isinstance(value, datetime | date | pd.Timestamp):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray | pd.Series):
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(list(value))]
    raise ValueError(f"{where}: a {type(value).__name__} is not JSON data")


# ----------------------------------------------------------------------------- progress


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str], None]]:
    """A tqdm bar over the report's steps, on stderr (off unless asked: the CLI asks when
    stderr is a terminal)."""
    from tqdm import tqdm

    bar = tqdm(total=len(_STEPS), unit="step", disable=not enabled, file=sys.stderr, leave=False)
    started = [False]

    def step(name: str) -> None:
        if started[0]:
            bar.update(1)  # the previous step is done
        started[0] = True
        bar.set_description(f"report: {name}")  # always redrawn: a step can be long

    try:
        yield step
        bar.update(bar.total - bar.n)
    finally:
        bar.close()


# ----------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Report:
    """`data`: every number of the report, JSON-serialisable (the JSON file); `figures`:
    each chart's plotly figure by element id."""

    data: dict[str, Any]
    figures: dict[str, dict[str, Any]]

    def to_json(self) -> str:
        return json.dumps(self.data, indent=1, allow_nan=False)

    def to_html(self) -> str:
        import plotly.offline

        d = self.data
        a = d["analysis"]
        return charts.render_page(
            title=d["title"],
            subtitle=_subtitle(d),
            tiles=_tiles(a),
            figures=self.figures,
            blocks=_blocks(d),
            plotly_js=plotly.offline.get_plotlyjs(),
        )

    def write(self, directory: str | Path, stem: str = "report") -> ReportFiles:
        """Both files written whole or neither replaced (`core.atomic_file`): a full disk
        raises `FileNotWritten` naming the file, and leaves no part of it."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        files = ReportFiles(out / f"{stem}.html", out / f"{stem}.json")
        write_atomically({files.html: self.to_html(), files.json: self.to_json()})
        return files


def build_report(
    run: Any,
    *,
    analyzer: PerformanceAnalyzer | None = None,
    config: ReportConfig | None = None,
    sections: Mapping[str, Mapping[str, Any]] | None = None,
    run_config: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> Report:
    """The report of `run` (anything `performance.run_record` reads: a record folder, a
    `BacktestOutcome`, a results dict). `sections`: extra tables by title (statistical
    tests, Monte Carlo, attribution ...), plain JSON-like mappings. `run_config`: the run's
    configuration, read from the folder's config.json when `run` is a folder."""
    with _progress(progress) as step:
        return _build(run, analyzer, config, sections, run_config, step)


def write_report(
    run: Any,
    output: str | Path | None = None,
    *,
    runs_root: str | Path = "var/runs",
    analyzer: PerformanceAnalyzer | None = None,
    config: ReportConfig | None = None,
    sections: Mapping[str, Mapping[str, Any]] | None = None,
    run_config: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> ReportFiles:
    """Build and write `report.html` and `report.json` into `output` (default: the run's
    folder). `run` may also be a run id under `runs_root`; the other arguments are
    `build_report`'s."""
    if isinstance(run, str | Path):
        run = resolve_run(run, runs_root)
    if output is None:
        if not isinstance(run, Path):
            raise ValueError("output is required when the run is not a record folder")
        output = run
    with _progress(progress) as step:
        report = _build(run, analyzer, config, sections, run_config, step)
        step("writing")
        return report.write(output)


def _build(
    run: Any,
    analyzer: PerformanceAnalyzer | None,
    config: ReportConfig | None,
    sections: Mapping[str, Mapping[str, Any]] | None,
    run_config: Mapping[str, Any] | None,
    step: Callable[[str], None],
) -> Report:
    cfg = config or ReportConfig()
    analyzer = analyzer or PerformanceAnalyzer()
    extra = _check_sections(sections)

    step("loading the run")
    if run_config is None and isinstance(run, str | Path):
        path = Path(run) / "config.json"
        run_config = _json_file(path) if path.exists() else None
    public_config = jsonable(redact(dict(run_config)), "run_config") if run_config else None
    rec: RunRecord = run_record(run)
    if rec.equity.size == 0:
        raise ValueError("the run has no bars: nothing to report")

    step("benchmark")
    levels = analyzer.benchmark()

    step("metrics")
    analysis = jsonable(analyzer.analyze_performance(rec), "analysis")
    # What the analyzer annualised this run with (its config's, else the run's own): the
    # rolling Sharpe ratio is the metrics' own.
    ppy = float(analysis["config"]["periods_per_year"])
    rf = float(analysis["config"]["risk_free_rate"])
    r = simple_returns(rec.equity, rec.initial_capital)
    at, base = levels_at(rec.times, levels)
    b = level_returns(at, base)
    # From the levels, the last carried over a missing day: compounding the returns lost the
    # move across it (a missing day and the next have no return).
    bench_equity = level_curve(at, base, rec.initial_capital)
    dd = drawdown_series(np.concatenate(([rec.initial_capital], rec.equity)))[1:]
    roll = rolling_sharpe(r, cfg.rolling_window, per_bar_rate(rf, ppy), ppy)
    months = monthly_returns(rec.times, r)
    years_total = [
        _opt(np.prod(1.0 + r[_naive_utc(rec.times).year == y]) - 1.0) for y in months.index
    ]
    ret_edges, ret_counts = _histogram(r, cfg.return_bins)
    pnls = round_trip_pnls(closed_trades(rec.fills))
    pnl_edges, pnl_counts = _histogram(pnls, cfg.trade_bins)
    summary = analysis.get("summary") or {}
    verdicts = summary.get("risk_verdicts_by_rule")
    gx = rec.gross_exposure
    times = _labels(rec.times)

    data: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "title": cfg.title or f"Run {rec.run_id or '(no id)'}",
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "tradingd_version": _version(),
        **_builds(run),
        "source": str(run) if isinstance(run, str | Path) else type(run).__name__,
        "run_id": rec.run_id,
        "analysis": analysis,
        "series": {
            "time": times,
            "equity": _floats(rec.equity),
            "returns": _floats(r),
            "benchmark_returns": _floats(b),
            "benchmark_equity": _floats(bench_equity),
            "drawdown": _floats(dd),
            "rolling_sharpe": _floats(roll),
            "gross_exposure": None if gx is None else _floats(gx),
        },
        "monthly_returns": {
            "years": [int(y) for y in months.index],
            "months": list(range(1, 13)),
            "values": [_floats(row) for row in months.to_numpy()],
            "year_total": years_total,
        },
        "return_distribution": {
            "bin_edges": ret_edges,
            "counts": ret_counts,
            **{k: analysis["risk"][k] for k in _VAR_KEYS},
            "var_confidence": analysis["risk"]["var_confidence"],
        },
        "trades": {"round_trip_pnls": _floats(pnls), "bin_edges": pnl_edges, "counts": pnl_counts},
        "risk_rules": {
            "verdicts_by_rule": verdicts,
            "rejections_by_reason": summary.get("rejections_by_reason"),
            "trading_restricted": summary.get("trading_restricted"),
        },
        "sections": extra,
        "report_config": dataclasses.asdict(cfg),
        "run_config": public_config,
    }

    step("charts")
    bench_name = analysis["benchmark"]["name"] or "benchmark"
    figures = {
        "chart-equity": charts.equity_figure(
            times, data["series"]["equity"], data["series"]["benchmark_equity"], bench_name
        ),
        "chart-drawdown": charts.drawdown_figure(times, data["series"]["drawdown"]),
        "chart-rolling-sharpe": charts.rolling_sharpe_figure(
            times,
            data["series"]["rolling_sharpe"],
            cfg.rolling_window,
            analysis["performance"]["sharpe"],
            _risk_free(analysis),
        ),
        "chart-monthly": charts.monthly_figure(
            data["monthly_returns"]["years"], data["monthly_returns"]["values"]
        ),
        "chart-distribution": charts.distribution_figure(
            ret_edges, ret_counts, analysis["risk"], analysis["risk"]["var_confidence"]
        ),
        "chart-trades": charts.trades_figure(pnl_edges, pnl_counts),
        "chart-exposure": charts.exposure_figure(times, data["series"]["gross_exposure"] or []),
        "chart-verdicts": charts.verdicts_figure(verdicts),
    }
    return Report(data, figures)


_VAR_KEYS = ("var_historical", "var_parametric", "cvar_historical", "cvar_parametric")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tradingd")
    except PackageNotFoundError:
        return "unknown"


def _check_sections(sections: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    if sections is None:
        return {}
    if not isinstance(sections, Mapping):
        raise ValueError(f"sections must be a mapping of title -> table, got {type(sections)}")
    out: dict[str, Any] = {}
    for title, body in sections.items():
        if not isinstance(title, str) or not title.strip():
            raise ValueError(f"a section title must be a non-empty string, got {title!r}")
        if not isinstance(body, Mapping):
            raise ValueError(
                f"section {title!r} must be a mapping (a JSON object), got {type(body).__name__}"
            )
        out[title] = jsonable(body, f"sections[{title!r}]")
    return out


# ----------------------------------------------------------------------------- tables

_PERCENT = {
    "total_return", "annual_return", "excess_return_risk_free", "benchmark_total_return",
    "benchmark_annual_return", "excess_return", "alpha", "win_rate", "exposure",
    "time_in_market", "annual_volatility", "downside_deviation", "max_drawdown",
    "var_historical", "cvar_historical", "var_parametric", "cvar_parametric",
    "tracking_error", "risk_free_rate", "var_confidence",
}  # fmt: skip
_MONEY = {
    "initial_capital", "final_equity", "avg_win", "avg_loss", "commission_paid",
    "slippage_paid", "costs_paid", "dividends_received",
}  # fmt: skip


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if key in _PERCENT:
        return unsigned_zero(f"{value:.2%}")
    if key in _MONEY:
        return unsigned_zero(f"{value:,.2f}")
    if isinstance(value, int):
        return f"{value:,}"
    return unsigned_zero(f"{value:.6g}")  # ratios, statistics, p-values: six significant digits


def _cell(key: str, value: Any) -> str:
    text = html.escape(_fmt(key, value))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f'<td class="n" title="{value!r}">{text}</td>'
    if value is None:
        return '<td class="n" title="not defined for this run (NaN)">—</td>'
    return f"<td>{text}</td>"


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, str | int | float | bool)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            rows.extend(_flatten(v, f"{key}.") if v else [(key, "{}")])
        elif isinstance(v, list) and v and all(isinstance(x, Mapping) for x in v):
            for i, x in enumerate(v):
                rows.extend(_flatten(x, f"{key}[{i}]."))
        elif isinstance(v, list):
            rows.append((key, ", ".join(_fmt("", x) for x in v) if len(v) <= 20 else
                         f"{len(v)} values (see the JSON file)"))  # fmt: skip
        else:
            rows.append((key, v))
    return rows


def key_value_table(d: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> str:
    """Nested mappings flattened to dotted keys, one row each. `labels`: what a key's row
    says beside it (`sharpe (risk-free 2%)`), where the same key means another thing in
    another table of the page."""
    rows = _flatten(d)
    if not rows:
        return '<p class="note">none</p>'
    labels = labels or {}

    def head(k: str) -> str:
        return f"{k} ({labels[k]})" if k in labels else k

    body = "".join(
        f"<tr><th>{html.escape(head(k))}</th>{_cell(k.rsplit('.', 1)[-1], v)}</tr>" for k, v in rows
    )
    return f"<table>{body}</table>"


def grid_table(rows: Sequence[Mapping[str, Any]], first: str | None = None) -> str:
    """One row per mapping, one column per key (the union, in order of appearance)."""
    columns: list[str] = []
    for r in rows:
        columns.extend(k for k in r if k not in columns and k != first)
    head = ([first] if first is not None else []) + columns
    out = ["<table><tr>", *(f"<th>{html.escape(c)}</th>" for c in head), "</tr>"]
    for r in rows:
        out.append("<tr>")
        if first is not None:
            out.append(f"<th>{html.escape(str(r.get(first, '')))}</th>")
        out.extend(_cell(c, r.get(c)) for c in columns)
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def section_html(body: Mapping[str, Any]) -> str:
    """An extra section: entries whose value is a flat mapping (e.g. one test's statistic,
    p-value and verdict) form one grid, a row each; a list of flat mappings is a table of
    its own; everything else is a key / value table."""

    def flat(v: Any) -> bool:
        return isinstance(v, Mapping) and bool(v) and all(_scalar(x) for x in v.values())

    grid = {k: v for k, v in body.items() if flat(v)}
    lists = {
        k: v
        for k, v in body.items()
        if isinstance(v, list) and v and all(flat(x) for x in v) and k not in grid
    }
    rest = {k: v for k, v in body.items() if k not in grid and k not in lists}
    parts = []
    if grid:
        parts.append(grid_table([{"": k, **v} for k, v in grid.items()], first=""))
    for k, v in lists.items():
        parts.append(f"<h3>{html.escape(k)}</h3>{grid_table(v)}")
    if rest or not parts:
        parts.append(key_value_table(rest))
    return "".join(parts)


def _subtitle(d: Mapping[str, Any]) -> str:
    a = d["analysis"]
    p = a["performance"]
    summary = a.get("summary") or {}
    bench = a["benchmark"]
    parts = [f"{(a['start'] or '')[:10]} to {(a['end'] or '')[:10]}", f"{p['bars']:,} bars"]
    if summary.get("symbols"):
        parts.append(f"{summary['symbols']} symbols")
    parts.append(
        f"benchmark {bench['name']} ({bench['bars']} bars aligned)" if bench["name"] else
        "no benchmark"
    )  # fmt: skip
    parts.append(f"generated {d['generated_at']} by tradingd {d['tradingd_version']}")
    if d.get("record_build_differs"):
        parts.append(f"the run was made by {Build(**d['record_build']).label()}")
    return " · ".join(parts)


def _builds(run: Any) -> dict[str, Any]:
    """The build that made a record folder, and whether it is other code than this one's:
    after an upgrade the reader compares numbers across builds, and the report says so."""
    recorded = recorded_build(Path(run)) if isinstance(run, str | Path) else None
    if recorded is None:
        return {"record_build": None, "record_build_differs": False}
    return {
        "record_build": recorded.as_dict(),
        "record_build_differs": recorded.differs_from(this_build()),
    }


def _risk_free(a: Mapping[str, Any]) -> str:
    """The analysis's risk-free rate (annual) as the page says it: "risk-free 2%"."""
    rate = a["config"].get("risk_free_rate")
    return f"risk-free {100 * rate:g}%" if rate is not None else "risk-free rate unknown"


#: The trade statistics the analyzer counts per round trip and the run's summary per closing
#: fill (docs/ANALYSIS.md): the same keys in two tables of the page.
_TRADE_STATS = ("win_rate", "profit_factor", "avg_win", "avg_loss")


def _performance_labels(a: Mapping[str, Any]) -> dict[str, str]:
    rf = _risk_free(a)
    return {
        **{k: rf for k in ("sharpe", "sortino", "alpha")},
        **{k: "per round trip" for k in _TRADE_STATS},
    }


# The run's summary (`metrics.summarize`): a 0% risk-free rate, trades per closing fill.
_SUMMARY_LABELS = {
    **{k: "risk-free 0%" for k in ("sharpe", "sortino")},
    **{k: "per closing fill" for k in _TRADE_STATS},
}


def _tiles(a: Mapping[str, Any]) -> list[tuple[str, str]]:
    p, k = a["performance"], a["risk"]
    level = f"{k['var_confidence']:.0%}" if k["var_confidence"] is not None else ""
    # The analysis's risk-free rate (2% by default) is not the run summary's (0%), printed
    # by `tradingd backtest` and in the page's "Run summary" table: each Sharpe ratio says
    # its own. The win rate likewise: per round trip here, per closing fill there.
    rf = _risk_free(a)
    # A run under a quarter of a year: its annual figures marked (the Metrics note says why).
    ppy = a["config"].get("periods_per_year") or 252.0
    star = " *" if short_run(int(p["bars"]), float(ppy)) else ""
    return [
        ("Total return", _fmt("total_return", p["total_return"])),
        (f"Annual return (CAGR){star}", _fmt("annual_return", p["annual_return"])),
        (f"Sharpe ({rf}){star}", _fmt("sharpe", p["sharpe"])),
        (f"Sortino ({rf}){star}", _fmt("sortino", p["sortino"])),
        ("Max drawdown", _fmt("max_drawdown", k["max_drawdown"])),
        (f"Volatility{star}", _fmt("annual_volatility", k["annual_volatility"])),
        (f"{level} VaR (1 bar)", _fmt("var_historical", k["var_historical"])),
        ("Beta", _fmt("beta", k["beta"])),
        ("Round trips", _fmt("round_trips", p["round_trips"])),
        ("Win rate (per round trip)", _fmt("win_rate", p["win_rate"])),
    ]


def _blocks(d: Mapping[str, Any]) -> list[tuple[str, str]]:
    a = d["analysis"]
    two = '<div class="grid2"><div><h3>{}</h3>{}</div><div><h3>{}</h3>{}</div></div>'
    p, ppy = a["performance"], a["config"].get("periods_per_year") or 252.0
    caveat = (
        f'<p class="note">* annualised from {p["bars"]} bars, under a quarter of a year of '
        f"{ppy:g}: the annual figures (CAGR, volatility, the ratios, alpha) extrapolate them "
        "to a year, and are no rate to expect</p>"
        if short_run(int(p["bars"]), float(ppy))
        else ""
    )
    blocks = [
        (
            "Metrics",
            caveat
            + two.format(
                "Performance",
                key_value_table(a["performance"], _performance_labels(a)),
                "Risk",
                key_value_table(a["risk"], {"downside_deviation": f"target: {_risk_free(a)}"}),
            )
            + two.format(
                "Maximum drawdown",
                key_value_table(a["drawdown"]),
                "Benchmark",
                key_value_table(a["benchmark"]),
            ),
        ),
        ("Monthly returns (%)", _monthly_pct_table(d["monthly_returns"])),
    ]
    rules = d["risk_rules"]
    body = []
    if rules["verdicts_by_rule"] is not None:
        body.append("<h3>Verdicts by rule</h3>" + key_value_table(rules["verdicts_by_rule"]))
    if rules["rejections_by_reason"] is not None:
        body.append(
            "<h3>Orders rejected, by reason</h3>" + key_value_table(rules["rejections_by_reason"])
        )
    if rules["trading_restricted"]:
        body.append(
            "<h3>Periods with trading restricted</h3>" + grid_table(rules["trading_restricted"])
        )
    blocks.append(
        ("Risk rules", "".join(body) or '<p class="note">the run record has no risk counts</p>')
    )
    if a.get("summary"):
        blocks.append(
            ("Run summary (as the run wrote it)", key_value_table(a["summary"], _SUMMARY_LABELS))
        )
    for title, body_data in d["sections"].items():
        blocks.append((title, section_html(body_data)))
    blocks.append(
        (
            "Analysis settings",
            two.format(
                "Analyzer", key_value_table(a["config"]), "Report", key_value_table(
                    d["report_config"]
                ),
            ),
        )
    )  # fmt: skip
    blocks.append(
        (
            "Run configuration",
            key_value_table(d["run_config"])
            if d["run_config"]
            else '<p class="note">the run record has no config.json</p>',
        )
    )
    return blocks


def _monthly_pct_table(m: Mapping[str, Any]) -> str:
    names = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    if not m["years"]:
        return '<p class="note">none</p>'
    head = "".join(f"<th>{c}</th>" for c in ["year", *names, "whole year"])
    rows = []
    for year, values, total in zip(m["years"], m["values"], m["year_total"], strict=True):
        cells = "".join(_cell("total_return", v) for v in [*values, total])
        rows.append(f"<tr><th>{year}</th>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"
