"""How a run report looks: its plotly figures and the HTML page around them.

`report.py` decides *what* is in a report (every number, as plain JSON-like data); this
module only draws it. Figures are built with `plotly.graph_objects`, which validates every
property name (a typo is an error here, not a silently missing line in a browser), and are
kept as plain dicts so the page can embed them as JSON.

The page is one file that opens offline: plotly.js is embedded inline (never a CDN link),
and every chart is drawn by one `Plotly.newPlot` call whose promise joins
`window.reportReady`, so a browser (or a test) can wait for the charts to be drawn instead
of guessing with a delay. A chart that fails to draw is logged with `console.error`.

Colours: data is drawn in saturated colours and everything else (text, axes, grid) in greys,
so "is the data drawn" is a question about coloured pixels inside the plot area (the browser
test asks it).
"""

from __future__ import annotations

import html
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "CHART_IDS",
    "COLORS",
    "distribution_figure",
    "drawdown_figure",
    "equity_figure",
    "exposure_figure",
    "monthly_figure",
    "render_page",
    "rolling_sharpe_figure",
    "trades_figure",
    "verdicts_figure",
]

# The data colours (saturated: see the module docstring).
COLORS = {
    "strategy": "#1f77b4",
    "benchmark": "#ff7f0e",
    "drawdown": "#d62728",
    "rolling_sharpe": "#2ca02c",
    "returns": "#17becf",
    "var_historical": "#d62728",
    "var_parametric": "#9467bd",
    "win": "#2ca02c",
    "loss": "#d62728",
    "exposure": "#9467bd",
    "verdicts": "#8c564b",
}
_INK = "#333333"  # text and annotations: grey, never mistaken for data
_HEIGHT = 360

# The page's charts in order: element id -> title.
CHART_IDS = {
    "chart-equity": "Equity against the benchmark",
    "chart-drawdown": "Underwater (drawdown from the running peak)",
    "chart-rolling-sharpe": "Rolling Sharpe ratio",
    "chart-monthly": "Monthly returns",
    "chart-distribution": "Distribution of bar returns, with the VaR",
    "chart-trades": "Round-trip PnL",
    "chart-exposure": "Gross exposure",
    "chart-verdicts": "Risk verdicts by rule",
}


def _go() -> Any:
    import plotly.graph_objects as go  # ~0.1 s: only when a report is drawn

    return go


def _layout(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "template": "plotly_white",
        "height": _HEIGHT,
        "margin": {"l": 70, "r": 30, "t": 30, "b": 50},
        "font": {"color": _INK, "size": 12},
        "hovermode": "x unified",
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0.0},
    }
    base.update(kw)
    return base


def _as_dict(fig: Any) -> dict[str, Any]:
    """A validated figure as plain JSON data (lists, not numpy's base64 arrays)."""
    import plotly.io as pio

    out: dict[str, Any] = json.loads(pio.to_json(fig, validate=False))
    return out


def _empty(fig: Any, why: str) -> None:
    """A chart with nothing to draw says so, rather than showing bare axes."""
    fig.add_annotation(
        text=why,
        showarrow=False,
        xref="paper",
        yref="paper",
        x=0.5,
        y=0.5,
        font={"color": _INK, "size": 14},
    )


def _bins(edges: Sequence[float]) -> tuple[list[float], list[float]]:
    """Histogram bin centres and widths from the edges."""
    pairs = list(itertools.pairwise(edges))
    return [(a + b) / 2 for a, b in pairs], [b - a for a, b in pairs]


def equity_figure(
    times: Sequence[str],
    equity: Sequence[float | None],
    benchmark: Sequence[float | None] | None,
    benchmark_name: str,
) -> dict[str, Any]:
    go = _go()
    fig = go.Figure(layout=_layout(yaxis={"title": {"text": "equity"}, "tickformat": ",.0f"}))
    fig.add_trace(
        go.Scatter(
            x=list(times),
            y=list(equity),
            name="strategy",
            mode="lines",
            line={"color": COLORS["strategy"], "width": 2},
        )
    )
    if benchmark is not None and any(v is not None for v in benchmark):
        fig.add_trace(
            go.Scatter(
                x=list(times),
                y=list(benchmark),
                name=f"{benchmark_name} (same initial capital)",
                mode="lines",
                line={"color": COLORS["benchmark"], "width": 1.5},
                connectgaps=False,
            )
        )
    else:
        _empty(fig, "no benchmark for these dates")
    return _as_dict(fig)


def drawdown_figure(times: Sequence[str], drawdown: Sequence[float | None]) -> dict[str, Any]:
    go = _go()
    fig = go.Figure(
        layout=_layout(yaxis={"title": {"text": "below peak"}, "tickformat": ".0%"}),
    )
    fig.add_trace(
        go.Scatter(
            x=list(times),
            y=[None if v is None else -v for v in drawdown],
            name="drawdown",
            mode="lines",
            fill="tozeroy",
            line={"color": COLORS["drawdown"], "width": 1.5},
            fillcolor="rgba(214,39,40,0.35)",
        )
    )
    return _as_dict(fig)


def rolling_sharpe_figure(
    times: Sequence[str],
    sharpe: Sequence[float | None],
    window: int,
    full: float | None,
    risk_free: str = "",
) -> dict[str, Any]:
    """`risk_free`: the rate the ratios are in excess of, as the axis says it ("risk-free
    2%")."""
    go = _go()
    axis = f"Sharpe ({risk_free}), {window} bars" if risk_free else f"Sharpe, {window} bars"
    fig = go.Figure(layout=_layout(yaxis={"title": {"text": axis}}))
    fig.add_trace(
        go.Scatter(
            x=list(times),
            y=list(sharpe),
            name=f"rolling {window}-bar Sharpe",
            mode="lines",
            line={"color": COLORS["rolling_sharpe"], "width": 1.5},
        )
    )
    if full is not None:
        fig.add_hline(
            y=full,
            line={"color": "#888888", "dash": "dash", "width": 1},
            annotation={"text": f"whole run {full:.2f}", "font": {"color": _INK}},
        )
    if all(v is None for v in sharpe):
        _empty(fig, f"the run is shorter than the {window}-bar window")
    return _as_dict(fig)


def monthly_figure(
    years: Sequence[int], values: Sequence[Sequence[float | None]]
) -> dict[str, Any]:
    """Years down, months across, in percent; red losses, green gains, white at zero."""
    go = _go()
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    z = [[None if v is None else 100.0 * v for v in row] for row in values]
    text = [["" if v is None else f"{v:.1f}" for v in row] for row in z]
    finite = [abs(v) for row in z for v in row if v is not None]
    bound = max(finite, default=1.0) or 1.0
    fig = go.Figure(
        layout=_layout(
            height=max(_HEIGHT // 2, 60 + 28 * len(years)),
            yaxis={"autorange": "reversed", "type": "category"},
            xaxis={"side": "top"},
            hovermode="closest",
            margin={"l": 70, "r": 30, "t": 40, "b": 20},
        )
    )
    fig.add_trace(
        go.Heatmap(
            x=months,
            y=[str(y) for y in years],
            z=z,
            text=text,
            texttemplate="%{text}",
            colorscale="RdYlGn",
            zmid=0.0,
            zmin=-bound,
            zmax=bound,
            xgap=2,
            ygap=2,
            colorbar={"title": {"text": "%"}},
            hovertemplate="%{y} %{x}: %{z:.2f}%<extra></extra>",
        )
    )
    return _as_dict(fig)


def distribution_figure(
    edges: Sequence[float],
    counts: Sequence[int],
    var: Mapping[str, float | None],
    confidence: float,
) -> dict[str, Any]:
    """The histogram of bar returns and the one-bar VaR as vertical lines at -VaR."""
    go = _go()
    fig = go.Figure(
        layout=_layout(
            xaxis={"title": {"text": "return per bar"}, "tickformat": ".1%"},
            yaxis={"title": {"text": "bars"}},
            bargap=0.02,
            hovermode="closest",
        )
    )
    centers, widths = _bins(edges)
    fig.add_trace(
        go.Bar(
            x=centers,
            y=list(counts),
            width=widths,
            name="bars",
            marker={"color": COLORS["returns"]},
        )
    )
    level = f"{confidence:.0%}"
    for key, label, dash in (
        ("var_historical", "historical", "solid"),
        ("var_parametric", "parametric", "dash"),
    ):
        v = var.get(key)
        if v is None or not math.isfinite(v):
            continue
        # A vertical line as a trace, so that it has a legend entry.
        fig.add_trace(
            go.Scatter(
                x=[-v, -v],
                y=[0, max(counts, default=1)],
                mode="lines",
                name=f"{level} VaR, {label}: {v:.2%}",
                line={"color": COLORS[key], "width": 2, "dash": dash},
            )
        )
    if not counts or sum(counts) == 0:
        _empty(fig, "no returns")
    return _as_dict(fig)


def trades_figure(edges: Sequence[float], counts: Sequence[int]) -> dict[str, Any]:
    """Round trips by PnL: losing bins red, winning bins green."""
    go = _go()
    fig = go.Figure(
        layout=_layout(
            xaxis={"title": {"text": "PnL per round trip"}, "tickformat": ",.0f"},
            yaxis={"title": {"text": "round trips"}},
            hovermode="closest",
        )
    )
    centers, widths = _bins(edges)
    fig.add_trace(
        go.Bar(
            x=centers,
            y=list(counts),
            width=widths,
            name="round trips",
            marker={
                "color": [COLORS["win"] if c > 0 else COLORS["loss"] for c in centers],
                "line": {"color": "#ffffff", "width": 1},
            },
            showlegend=False,
        )
    )
    if not counts or sum(counts) == 0:
        _empty(fig, "no finished round trip")
    return _as_dict(fig)


def exposure_figure(times: Sequence[str], exposure: Sequence[float | None]) -> dict[str, Any]:
    go = _go()
    fig = go.Figure(layout=_layout(yaxis={"title": {"text": "of equity"}, "tickformat": ".0%"}))
    fig.add_trace(
        go.Scatter(
            x=list(times),
            y=list(exposure),
            name="gross exposure",
            mode="lines",
            fill="tozeroy",
            line={"color": COLORS["exposure"], "width": 1.5},
            fillcolor="rgba(148,103,189,0.35)",
        )
    )
    if not exposure or all(v is None for v in exposure):
        _empty(fig, "the run recorded no exposure")
    return _as_dict(fig)


def verdicts_figure(by_rule: Mapping[str, int] | None) -> dict[str, Any]:
    """Verdicts per `plugin/rule`, largest on top (None: the record does not say)."""
    go = _go()
    items = sorted((by_rule or {}).items(), key=lambda kv: (kv[1], kv[0]))
    fig = go.Figure(
        layout=_layout(
            height=max(_HEIGHT // 2, 80 + 30 * len(items)),
            xaxis={"title": {"text": "verdicts (orders cut or blocked)"}},
            yaxis={"automargin": True},
            hovermode="closest",
        )
    )
    fig.add_trace(
        go.Bar(
            x=[v for _, v in items],
            y=[k for k, _ in items],
            orientation="h",
            marker={"color": COLORS["verdicts"]},
            text=[str(v) for _, v in items],
            textposition="auto",
            name="verdicts",
            showlegend=False,
        )
    )
    if by_rule is None:
        _empty(fig, "the run record has no risk verdict counts")
    elif not items:
        _empty(fig, "no risk rule changed an order")
    return _as_dict(fig)


# ----------------------------------------------------------------------------- the page

_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: #222; margin: 0 auto; max-width: 1200px; padding: 0 16px 48px; }
h1 { font-size: 1.6em; margin: 24px 0 4px; }
h2 { font-size: 1.2em; margin: 32px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 1.0em; margin: 16px 0 6px; }
.sub { color: #666; margin: 0 0 16px; }
.chart { width: 100%; height: 360px; }
.tiles { display: flex; flex-wrap: wrap; gap: 8px; margin: 16px 0; }
.tile { border: 1px solid #ddd; border-radius: 6px; padding: 8px 12px; min-width: 120px; }
.tile .k { color: #666; font-size: 0.8em; } .tile .v { font-size: 1.3em; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.9em; }
th, td { border: 1px solid #e3e3e3; padding: 3px 8px; text-align: left; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f6f6f6; }
.grid2 { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 0 24px; }
.note { color: #666; font-size: 0.85em; }
"""

_PLOT_CONFIG = {"responsive": True, "displaylogo": False, "scrollZoom": False}


def _script_json(data: Any) -> str:
    """JSON safe inside a <script> element (no '</' to close it early)."""
    return json.dumps(data, allow_nan=False, separators=(",", ":")).replace("</", "<\\/")


def render_page(
    *,
    title: str,
    subtitle: str,
    tiles: Sequence[tuple[str, str]],
    figures: Mapping[str, Mapping[str, Any]],
    blocks: Sequence[tuple[str, str]],
    plotly_js: str,
) -> str:
    """The whole page. `figures`: element id -> figure dict, drawn in `CHART_IDS` order;
    `blocks`: (heading, HTML) of the table sections below the charts."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>",
        f"<style>{_CSS}</style>",
        # Inline, so the file opens offline; before the figures that use it.
        f'<script type="text/javascript">{plotly_js}</script>',
        "</head><body>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="sub">{esc(subtitle)}</p>',
        '<div class="tiles">',
        *(
            f'<div class="tile"><div class="k">{esc(k)}</div><div class="v">{esc(v)}</div></div>'
            for k, v in tiles
        ),
        "</div>",
    ]
    order = [cid for cid in CHART_IDS if cid in figures]
    for cid in order:
        height = figures[cid].get("layout", {}).get("height", _HEIGHT)
        parts.append(f"<h2>{esc(CHART_IDS[cid])}</h2>")
        parts.append(f'<div class="chart" id="{cid}" style="height:{int(height)}px"></div>')
    for heading, body in blocks:
        parts.append(f"<h2>{esc(heading)}</h2>")
        parts.append(body)
    figs = {cid: figures[cid] for cid in order}
    parts.append(
        '<script type="text/javascript">\n'
        f"const FIGURES = {_script_json(figs)};\n"
        f"const CONFIG = {_script_json(_PLOT_CONFIG)};\n"
        "window.reportReady = Promise.all(Object.entries(FIGURES).map(([id, f]) =>\n"
        "  Plotly.newPlot(id, f.data, f.layout, CONFIG).then(() => id).catch(e => {\n"
        "    console.error('chart ' + id + ' failed: ' + e); throw e; })))\n"
        "  .then(ids => { document.body.dataset.chartsDrawn = ids.length; return ids; });\n"
        "</script>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)
