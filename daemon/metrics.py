"""Prometheus metrics of the daemon, defined once, updated where the work happens.

The health server only renders `REGISTRY` (it never computes a metric itself). A registry of
our own, not prometheus-client's global one, so tests and embedded engines do not collide and
`/metrics` shows exactly tradingd's series (plus the process collector).

Label values are bounded sets (stage names, order statuses, rule names, source names): never
a symbol or an order id, which would grow the series without bound in a daemon that runs for
months.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

# Per-bar stages: data, features, signals, sizing, risk, orders, store, total.
_STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

BARS_PROCESSED = Counter(
    "tradingd_bars_processed", "Bars the engine has processed (warm-up included)", registry=REGISTRY
)
STAGE_SECONDS = Histogram(
    "tradingd_stage_seconds",
    "Time spent per bar in each stage of the pipeline",
    ["stage"],
    buckets=_STAGE_BUCKETS,
    registry=REGISTRY,
)


def stage_means_ms() -> dict[str, float]:
    """Mean milliseconds per bar of each stage recorded so far in STAGE_SECONDS (sum / count):
    what the benchmarks print."""
    out: dict[str, float] = {}
    for metric in STAGE_SECONDS.collect():
        sums = {s.labels["stage"]: s.value for s in metric.samples if s.name.endswith("_sum")}
        counts = {s.labels["stage"]: s.value for s in metric.samples if s.name.endswith("_count")}
        out = {k: 1000 * sums[k] / counts[k] for k in sorted(sums) if counts.get(k)}
    return out


ORDERS = Counter("tradingd_orders", "Order state changes by status", ["status"], registry=REGISTRY)
PUBLISHER_DROPPED = Counter(
    "tradingd_publisher_dropped",
    "Live events not published on Redis pub/sub, by reason (Redis down, queue full, refused)",
    ["reason"],
    registry=REGISTRY,
)
LOG_LINES_LOST = Counter(
    "tradingd_log_lines_lost",
    "Log lines standard error did not take (a full or failing disk, a closed stream): "
    "dropped, and said by a log.lines_lost warning once it takes lines again",
    registry=REGISTRY,
)
CONTROL_UNAUTHORIZED = Counter(
    "tradingd_control_unauthorized",
    "Control requests refused for a missing or wrong bearer token",
    registry=REGISTRY,
)
RISK_VERDICTS = Counter(
    "tradingd_risk_verdicts",
    "Risk verdicts by plugin and rule",
    ["plugin", "rule"],
    registry=REGISTRY,
)
EQUITY = Gauge("tradingd_equity", "Account equity at the last bar", registry=REGISTRY)
CASH = Gauge("tradingd_cash", "Cash at the last bar", registry=REGISTRY)
DRAWDOWN = Gauge("tradingd_drawdown", "Drawdown from the peak equity (fraction)", registry=REGISTRY)
MODEL_ACCURACY = Gauge(
    "tradingd_model_directional_accuracy",
    "How often a model's forecasts got the next bar's direction right, over its last 252 "
    "traded bars (NaN before any was scored)",
    ["plugin"],
    registry=REGISTRY,
)
BARS_NEVER_TRADED = Gauge(
    "tradingd_bars_never_traded",
    "Live bars the run never traded: lost, still missing, recovered late, or caught up "
    "untraded after the daemon was stalled or down (the run's count, across restarts)",
    registry=REGISTRY,
)
LAST_BAR_TIME = Gauge(
    "tradingd_last_bar_timestamp_seconds", "Time of the last processed bar", registry=REGISTRY
)
SOURCE_CALLS = Counter(
    "tradingd_source_calls",
    "Calls to an outside system (data vendor, broker)",
    ["source"],
    registry=REGISTRY,
)
SOURCE_ERRORS = Counter(
    "tradingd_source_errors",
    "Failed calls to an outside system by kind (timeout, http_429, http_5xx, malformed, ...)",
    ["source", "kind"],
    registry=REGISTRY,
)
SOURCE_UP = Gauge(
    "tradingd_source_up",
    "1 when the source's last call succeeded and its circuit is closed",
    ["source"],
    registry=REGISTRY,
)
SOURCE_LATENCY = Histogram(
    "tradingd_source_seconds",
    "Latency of calls to an outside system",
    ["source"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
RATE_LIMIT_WAIT = Histogram(
    "tradingd_source_rate_limit_wait_seconds",
    "Time calls waited for an outside system's request budget (kept below its limit)",
    ["source"],
    buckets=(0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    registry=REGISTRY,
)
CACHE_REQUESTS = Counter(
    "tradingd_cache_requests",
    "Response-cache lookups by result (hit, miss, error)",
    ["result"],
    registry=REGISTRY,
)
READY = Gauge("tradingd_ready", "1 when every readiness check passes", registry=REGISTRY)
CHECK_OK = Gauge(
    "tradingd_check_ok", "Readiness check results (1 ok, 0 failing)", ["check"], registry=REGISTRY
)


def render() -> bytes:
    return generate_latest(REGISTRY)
