"""Alerts to webhooks (issue 9, point 10): deduplicated conditions and events, the three body
formats within their platforms' limits, retries, rate limit, bounded queue, no secret in any
log line or message. Against a loopback receiver in a thread; backoff sleeps are recorded,
not slept; waits are on conditions with timeouts."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import tomllib
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from fakes.webhook_server import WebhookReceiver
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs
from tenacity import wait_exponential

from tradingd.alerts import (
    BROKER_DOWN,
    CRITICAL,
    DAILY_SUMMARY,
    DISCORD_COLORS,
    INFO,
    KILL_SWITCH,
    KINDS,
    RECONCILIATION,
    RESOLVED,
    SOURCE_DOWN,
    STALE_DATA,
    WARNING,
    Alert,
    Alerter,
    AlertsConfig,
    AlertTarget,
    _AlertQueue,
    mask_webhook_url,
    parse_retry_after,
    render_discord,
    render_slack,
    scrub_webhook,
)
from tradingd.core.errors import ConfigError

pytestmark = pytest.mark.unit

# Slack and Discord put the token in the path: it must never show.
TOKEN = "xoxTOKENq8Zr2mK4vN7pL0sW9"
PATH = f"/services/T0ABCDEFG/B0HIJKLMN/{TOKEN}"
JSON_KEYS = {"source", "run", "kind", "key", "severity", "state", "title", "text", "fields", "time"}


class Sleeps:
    """Records backoff waits instead of sleeping them."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def receiver():
    r = WebhookReceiver()
    r.start_in_thread()
    yield r
    r.stop_thread()


def config(url: str, fmt: str = "json", **overrides) -> AlertsConfig:
    settings_ = {
        "timeout_s": 2.0,
        "backoff_s": 0.01,
        "backoff_max_s": 0.05,
        "rate_per_minute": 1000.0,
        "run_name": "paper-1",
    }
    settings_.update(overrides)
    return AlertsConfig(targets=(AlertTarget(url=url, format=fmt),), **settings_)


def alerter(url: str, fmt: str = "json", *, sleeps: Sleeps | None = None, **overrides) -> Alerter:
    return Alerter(config(url, fmt, **overrides), sleep=sleeps or Sleeps())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def no_secret(*things: object) -> None:
    for thing in things:
        text = thing if isinstance(thing, str) else json.dumps(thing, default=str)
        assert TOKEN not in text, text
        assert PATH not in text, text


# ----------------------------------------------------------------------------- deduplication


async def test_an_outage_sends_one_alert_and_one_recovery(receiver):
    url = receiver.url + PATH
    async with alerter(url) as a:
        for _ in range(1000):
            a.condition(SOURCE_DOWN, "yahoo", True, "yahoo down", "HTTP 503 from yahoo")
        assert await a.flush(5)
        for _ in range(1000):
            a.condition(SOURCE_DOWN, "yahoo", False, "yahoo back", "answering again")
        assert await a.flush(5)
        bodies = receiver.delivered(PATH)
        assert [b["state"] for b in bodies] == ["firing", "resolved"]
        assert len(receiver.received()) == 2  # no other request went out
        assert (a.sent, a.failed, a.dropped, a.suppressed) == (2, 0, 0, 999)
        firing, resolved = bodies
        assert firing["kind"] == "source_down" and firing["key"] == "yahoo"
        assert firing["text"] == "HTTP 503 from yahoo"
        assert resolved["title"] == "yahoo back"
        assert resolved["severity"] == firing["severity"] == "warning"
        assert "failing_for" in resolved["fields"] and "failing_since" in resolved["fields"]
        assert a.firing() == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), max_size=60))
def test_firing_and_resolved_alternate_starting_with_firing(reports):
    a = Alerter(AlertsConfig(repeat_after_s=0))  # no target: the reports' alerts only
    states = []
    for failing in reports:
        alert = a.condition(BROKER_DOWN, "alpaca", failing, "broker down")
        if alert is not None:
            states.append(alert.state)
    assert states[::2] == ["firing"] * len(states[::2])
    assert states[1::2] == ["resolved"] * len(states[1::2])
    transitions = sum(
        1 for prev, cur in zip([False, *reports], reports, strict=False) if cur != prev
    )
    assert len(states) == transitions
    assert bool(a.firing()) == bool(reports and reports[-1])
    assert a.suppressed == sum(
        1 for prev, cur in zip([False, *reports], reports, strict=False) if cur and prev
    )


def test_reminder_after_repeat_after_s_and_escalation():
    clock = Clock()
    a = Alerter(AlertsConfig(repeat_after_s=100), clock=clock)
    first = a.condition(STALE_DATA, "SPY", True, "SPY stale", severity=WARNING)
    assert first is not None and first.state == "firing" and not first.reminder
    clock.t += 99
    assert a.condition(STALE_DATA, "SPY", True, "SPY stale") is None
    clock.t += 1
    again = a.condition(STALE_DATA, "SPY", True, "")
    assert again is not None and again.state == "firing" and again.reminder
    assert again.title == "SPY stale"  # the firing title when none is given
    assert again.fields["failing_for"] == "1m40s"
    assert a.condition(STALE_DATA, "SPY", True, "SPY stale") is None  # timer restarted
    worse = a.condition(STALE_DATA, "SPY", True, "SPY stale", severity=CRITICAL)
    assert worse is not None and worse.severity == CRITICAL and not worse.reminder
    assert a.condition(STALE_DATA, "SPY", True, "SPY stale", severity=WARNING) is None
    back = a.condition(STALE_DATA, "SPY", False, "SPY fresh")
    assert back is not None and back.state == RESOLVED and back.severity == CRITICAL

    never = Alerter(AlertsConfig(repeat_after_s=0), clock=clock)
    never.condition(STALE_DATA, "SPY", True, "x")
    clock.t += 10**7
    assert never.condition(STALE_DATA, "SPY", True, "x") is None


def test_a_condition_firing_before_a_restart_is_not_alerted_again_and_resolves():
    """A restarted daemon's new alerter alerted a kill switch halted since before the
    restart as if it had just tripped. Given what was firing (from the checkpoint), it stays
    firing without an alert, and its resolved alert says since when it failed."""
    clock = Clock()
    wall = datetime(2020, 1, 31, 12, tzinfo=UTC)
    before = Alerter(AlertsConfig(), clock=clock, wall_clock=lambda: wall - timedelta(hours=2))
    assert before.condition(KILL_SWITCH, "drawdown_guard", True, "halted", severity=CRITICAL)
    kept = json.loads(json.dumps(before.firing()))

    after = Alerter(AlertsConfig(), clock=clock, wall_clock=lambda: wall)
    after.assume_firing(kept)
    assert after.condition(KILL_SWITCH, "drawdown_guard", True, "halted", severity=CRITICAL) is None
    assert after.alerts == 0 and after.firing() == kept
    back = after.condition(KILL_SWITCH, "drawdown_guard", False, "reset")
    assert back is not None and back.state == RESOLVED and back.severity == CRITICAL
    assert back.fields["failing_since"] == (wall - timedelta(hours=2)).isoformat()
    assert back.fields["failing_for"] == "2h00m"


def test_events_are_deduplicated_by_kind_and_key_within_the_window():
    clock = Clock()
    a = Alerter(AlertsConfig(dedup_window_s=300), clock=clock)
    assert a.event(KILL_SWITCH, "drawdown", "Kill switch tripped", severity=CRITICAL)
    assert a.event(KILL_SWITCH, "drawdown", "Kill switch tripped", severity=CRITICAL) is None
    assert a.event(KILL_SWITCH, "manual", "Kill switch tripped")  # another key
    assert a.event(RECONCILIATION, "drawdown", "diff")  # another kind
    clock.t += 299
    assert a.event(KILL_SWITCH, "drawdown", "again") is None
    clock.t += 1
    assert a.event(KILL_SWITCH, "drawdown", "again") is not None
    assert a.event(KILL_SWITCH, "drawdown", "again", dedup_s=0) is not None
    assert a.suppressed == 2
    assert a.alerts == 5


def test_reports_never_raise_into_the_caller():
    a = Alerter(AlertsConfig())
    assert a.condition(None, None, True, None, None, severity="bogus") is not None  # type: ignore[arg-type]
    assert a.event("", 3, severity="loud", fields={"x": object(), "nan": float("nan")}) is not None  # type: ignore[arg-type]
    assert set(KINDS) >= {KILL_SWITCH, DAILY_SUMMARY, SOURCE_DOWN, BROKER_DOWN}


# ----------------------------------------------------------------------------- bodies


LONG_TEXT = "price <below> limit & falling. " * 600  # 18600 characters, Slack escapes
MANY_FIELDS = {f"field {i:02d} " + "n" * 300: "v" * 3000 for i in range(30)}


async def test_generic_json_body(receiver):
    now = datetime(2024, 3, 6, 21, 0, tzinfo=UTC)
    a = Alerter(config(receiver.url + PATH), sleep=Sleeps(), wall_clock=lambda: now)
    async with a:
        a.event(
            DAILY_SUMMARY,
            "2024-03-06",
            "Daily summary",
            "equity 101,234.50",
            INFO,
            {"equity": 101234.5, "orders": 7, "halted": False, "dsn": "postgresql://u:pw1234@h/db"},
        )
        (body,) = await receiver.wait_for(1)
    assert set(body) == JSON_KEYS
    assert body["source"] == "tradingd" and body["run"] == "paper-1"
    assert (body["kind"], body["key"], body["state"]) == ("daily_summary", "2024-03-06", "event")
    assert body["severity"] == "info" and body["title"] == "Daily summary"
    assert body["time"] == "2024-03-06T21:00:00+00:00"
    assert body["fields"]["equity"] == 101234.5 and body["fields"]["orders"] == 7
    assert body["fields"]["halted"] is False
    assert "pw1234" not in body["fields"]["dsn"]  # credentials in alert texts are masked
    headers = receiver.received()[0].headers
    assert headers["Content-Type"] == "application/json"


async def test_slack_body_shape_and_limits(receiver):
    async with alerter(receiver.url + PATH, "slack") as a:
        a.condition(RECONCILIATION, "AAPL", True, "T" * 500, LONG_TEXT, CRITICAL, MANY_FIELDS)
        (body,) = await receiver.wait_for(1)
    assert set(body) == {"text", "blocks"}
    assert len(body["text"]) <= 3000 and body["text"].endswith("…")
    blocks = body["blocks"]
    assert len(blocks) <= 50
    header = blocks[0]
    assert header["type"] == "header" and header["text"]["type"] == "plain_text"
    assert len(header["text"]["text"]) == 150 and header["text"]["text"].startswith("FIRING: TTT")
    section = blocks[1]
    assert section["type"] == "section" and section["text"]["type"] == "mrkdwn"
    text = section["text"]["text"]
    assert len(text) <= 3000 and text.endswith("…")
    assert "&lt;below&gt;" in text and "<below>" not in text and "&amp;" in text
    assert not text[:-1].rstrip("&amp;lgt").endswith("&")  # no half entity before the "…"
    field_sections = [b for b in blocks if b["type"] == "section" and "fields" in b]
    shown = [f for b in field_sections for f in b["fields"]]
    assert all(len(b["fields"]) <= 10 for b in field_sections)
    assert all(len(f["text"]) <= 2000 and f["type"] == "mrkdwn" for f in shown)
    assert len(shown) == 24  # 25 at most: 24 fields and a note of the rest
    context = blocks[-1]
    assert context["type"] == "context"
    note = context["elements"][0]["text"]
    assert note.startswith("+6 more fields") and "reconciliation/AAPL" in note


async def test_discord_body_shape_and_limits(receiver):
    receiver.ok_status = 204  # what Discord answers
    async with alerter(receiver.url + PATH, "discord") as a:
        a.condition(
            RISK_KIND := "risk_limit", "gross", True, "T" * 500, LONG_TEXT, CRITICAL, MANY_FIELDS
        )
        a.condition(RISK_KIND, "gross", False, "gross exposure back within limit")
        bodies = await receiver.wait_for(2)
    assert a.sent == 2
    body, resolved = bodies
    assert set(body) == {"content", "embeds", "allowed_mentions"}
    assert body["allowed_mentions"] == {"parse": []}  # no @everyone from an alert text
    assert len(body["content"]) <= 2000 and body["content"].startswith("**[FIRING]**")
    (embed,) = body["embeds"]
    assert len(embed["title"]) == 256 and embed["title"].endswith("…")
    assert len(embed["description"]) <= 4096
    assert len(embed["fields"]) <= 25
    assert all(len(f["name"]) <= 256 and 0 < len(f["value"]) <= 1024 for f in embed["fields"])
    assert all(f["inline"] is True for f in embed["fields"] if f["name"] != "more")
    total = (
        len(embed["title"])
        + len(embed["description"])
        + len(embed["footer"]["text"])
        + sum(len(f["name"]) + len(f["value"]) for f in embed["fields"])
    )
    assert total <= 6000
    assert embed["color"] == DISCORD_COLORS[CRITICAL]
    assert resolved["embeds"][0]["color"] == DISCORD_COLORS[RESOLVED]
    assert resolved["content"].startswith("**[RESOLVED]**")


def _alert(title: str, text: str, fields: dict[str, str], state: str = "firing") -> Alert:
    return Alert("risk_limit", "k", state, WARNING, title, text, fields, datetime.now(UTC), "r")


@settings(max_examples=60, deadline=None)
@given(
    title=st.text(min_size=1, max_size=400),
    text=st.text(max_size=9000),
    fields=st.dictionaries(st.text(max_size=300), st.text(max_size=1500), max_size=30),
)
def test_bodies_stay_within_platform_limits_for_any_text(title, text, fields):
    d = render_discord(_alert(title, text, fields))
    (embed,) = d["embeds"]
    assert len(d["content"]) <= 2000 and len(embed["title"]) <= 256
    assert len(embed["description"]) <= 4096 and len(embed["fields"]) <= 25
    assert all(1 <= len(f["name"]) <= 256 and 1 <= len(f["value"]) <= 1024 for f in embed["fields"])
    total = len(embed["title"]) + len(embed["description"]) + len(embed["footer"]["text"])
    assert total + sum(len(f["name"]) + len(f["value"]) for f in embed["fields"]) <= 6000
    s = render_slack(_alert(title, text, fields))
    assert len(s["text"]) <= 3000 and len(s["blocks"]) <= 50
    assert 1 <= len(s["blocks"][0]["text"]["text"]) <= 150
    for block in s["blocks"][1:]:
        if "fields" in block:
            assert len(block["fields"]) <= 10
            assert all(len(f["text"]) <= 2000 for f in block["fields"])
        else:
            texts = [block["text"]] if "text" in block else block["elements"]
            assert all(0 < len(t["text"]) <= 3000 for t in texts)


# ----------------------------------------------------------------------------- delivery


async def test_retries_after_500_then_succeeds_once(receiver):
    receiver.fail_next(2, status=500)
    sleeps = Sleeps()
    async with alerter(receiver.url + PATH, sleeps=sleeps) as a:
        a.event(KILL_SWITCH, "drawdown", "Kill switch tripped", severity=CRITICAL)
        assert await a.flush(5)
        assert [r.status for r in receiver.received()] == [500, 500, 200]
        assert len(receiver.delivered()) == 1
        assert (a.sent, a.failed) == (1, 0)
        assert a.status()["targets"][0]["retries"] == 2
    assert len(sleeps.waits) == 2 and all(0 <= w <= 0.05 for w in sleeps.waits)


async def test_retries_after_429_honouring_retry_after_capped(receiver):
    receiver.throttle(1, retry_after="0.04")
    receiver.throttle(1, retry_after="3600")  # capped at backoff_max_s
    sleeps = Sleeps()
    async with alerter(receiver.url + PATH, sleeps=sleeps) as a:
        a.event(RECONCILIATION, "AAPL", "position differs")
        assert await a.flush(5)
        assert [r.status for r in receiver.received()] == [429, 429, 200]
        assert len(receiver.delivered()) == 1 and a.sent == 1
    assert sleeps.waits == [0.04, 0.05]


@pytest.mark.parametrize("when", ["an hour ago", "0 s"])
async def test_a_retry_after_already_past_waits_the_ordinary_backoff(receiver, monkeypatch, when):
    """A Retry-After date already past (the receiver's clock behind ours) reads as 0 s: taken
    as the wait, the retries of an alert came at once, into the throttle. The hint is a floor
    under the backoff; a longer one is still waited (capped)."""
    # Without the jitter, so that the backoff's waits can be told exactly.
    monkeypatch.setattr("tradingd.alerts.wait_random_exponential", wait_exponential)
    past = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    receiver.throttle(3, retry_after=past if when == "an hour ago" else "0")
    sleeps = Sleeps()
    async with alerter(receiver.url + PATH, sleeps=sleeps) as a:
        a.event(RECONCILIATION, "AAPL", "position differs")
        assert await a.flush(5)
        assert [r.status for r in receiver.received()] == [429, 429, 429, 200]
    assert sleeps.waits == [0.01, 0.02, 0.04]

    receiver.throttle(3, retry_after="0.03")
    sleeps = Sleeps()
    async with alerter(receiver.url + PATH, sleeps=sleeps) as a:
        a.event(RECONCILIATION, "AAPL", "position differs")
        assert await a.flush(5)
    assert sleeps.waits == [0.03, 0.03, 0.04]


async def test_a_timeout_is_retried_and_delivered_once(receiver):
    receiver.slow_next(1, 3.0)
    async with alerter(receiver.url + PATH, timeout_s=0.2) as a:
        a.event(BROKER_DOWN, "alpaca", "broker unreachable", severity=CRITICAL)
        assert await a.flush(5)
        assert (a.sent, a.failed) == (1, 0)
    assert len(receiver.delivered()) == 1
    assert receiver.received()[0].fault == "slow"


async def test_no_retry_on_400_and_the_status_is_logged(receiver):
    receiver.fail_next(1, status=400)
    with capture_logs() as logs:
        async with alerter(receiver.url + PATH) as a:
            a.event(KILL_SWITCH, "x", "tripped")
            assert await a.flush(5)
            assert (a.sent, a.failed) == (0, 1)
            assert len(receiver.received()) == 1
            st_ = a.status()
    failed = [e for e in logs if e["event"] == "alerts.failed"]
    assert len(failed) == 1 and failed[0]["status"] == 400 and failed[0]["retried"] is False
    assert st_["ok"] is False and st_["targets"][0]["last_error"]["status"] == 400
    no_secret(logs, st_)


async def test_gives_up_after_max_attempts_and_keeps_delivering(receiver):
    receiver.fail_next(3, status=503)
    async with alerter(receiver.url + PATH, max_attempts=3) as a:
        a.event(KILL_SWITCH, "a", "first")
        assert await a.flush(5)
        assert (a.sent, a.failed) == (0, 1)
        a.event(KILL_SWITCH, "b", "second")
        assert await a.flush(5)
        assert (a.sent, a.failed) == (1, 1)
        assert a.status()["ok"] is True  # the last delivery worked
    assert [b["key"] for b in receiver.delivered()] == ["b"]
    assert len(receiver.received()) == 4


async def test_rate_limit_holds_per_target(receiver):
    # A burst of 4, then one per 0.25 s (4 per second: the minute shrunk for the test). Times
    # are arrivals at the receiver's thread: on a loaded machine one arrives up to a tenth of
    # a second late, so a spacing of 0.1 s with 0.06 s of slack failed now and then; half a
    # spacing of slack still fails a limiter that lets the burst through twice.
    burst, period = 4, 1.0
    rate = burst / period
    cfg = config(receiver.url + PATH, rate_per_minute=float(burst))
    n = 10
    async with Alerter(cfg, sleep=Sleeps(), rate_period_s=period) as a:
        for i in range(n):
            a.event(STALE_DATA, f"S{i}", "stale")
        await receiver.wait_for(n, timeout=10)
        assert await a.flush(5)
    times = sorted(r.at for r in receiver.received())
    assert len(times) == n
    # Leaky bucket: any k consecutive requests span at least (k - burst) / rate seconds.
    slack = 0.5 / rate  # arrival jitter between the two threads: half a spacing
    for i in range(n):
        for j in range(i + 1, n):
            k = j - i + 1
            assert times[j] - times[i] >= (k - burst) / rate - slack, (i, j, times)


async def test_a_full_queue_drops_the_oldest_and_counts(receiver):
    a = alerter(receiver.url + PATH, queue_size=3)
    with capture_logs() as logs:
        for i in range(5):  # not started yet: nothing drains
            a.event(RECONCILIATION, f"k{i}", f"diff {i}")
    assert a.dropped == 2 and a.status()["targets"][0]["queued"] == 3
    warnings = [e for e in logs if e["event"] == "alerts.dropped"]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"  # not one per drop
    assert warnings[0]["reason"] == "queue full"
    async with a:
        await receiver.wait_for(3)
        assert await a.flush(5)
    assert [b["key"] for b in receiver.delivered()] == ["k2", "k3", "k4"]
    assert (a.sent, a.dropped) == (3, 2)


async def test_a_full_queue_drops_routine_info_before_a_transition(receiver):
    """A full queue drops the lowest-priority oldest alert: info summaries go before a
    condition's firing or resolved, and an info alert arriving at a queue holding only more
    important ones is the one dropped."""
    a = alerter(receiver.url + PATH, queue_size=3)
    with capture_logs() as logs:  # not started yet: nothing drains
        for day in ("d1", "d2", "d3"):
            a.event(DAILY_SUMMARY, day, f"summary {day}", severity=INFO)
        a.condition(SOURCE_DOWN, "yahoo", True, "yahoo down")
        a.condition(SOURCE_DOWN, "yahoo", False, "yahoo back")
        a.event(DAILY_SUMMARY, "d4", "summary d4", severity=INFO)
        a.event(RECONCILIATION, "AAPL", "position differs", severity=WARNING)
        a.event(DAILY_SUMMARY, "d5", "summary d5", severity=INFO)
    assert a.dropped == 5 and a.status()["targets"][0]["queued"] == 3
    async with a:
        await receiver.wait_for(3)
        assert await a.flush(5)
    assert [(b["kind"], b["state"]) for b in receiver.delivered()] == [
        (SOURCE_DOWN, "firing"),
        (SOURCE_DOWN, "resolved"),
        (RECONCILIATION, "event"),
    ]
    dropped = [e for e in logs if e["event"] == "alerts.dropped"]
    assert len(dropped) == 1  # not one per drop
    assert (dropped[0]["kind"], dropped[0]["key"], dropped[0]["severity"]) == (
        DAILY_SUMMARY,
        "d1",
        INFO,
    )


async def test_delivery_prefers_severity_and_keeps_a_conditions_order(receiver):
    """Critical first, then warnings and transitions, then info; arrival order within each.
    A condition escalated to critical takes its earlier (warning) firing along, so its
    firing still precedes its resolved."""
    a = alerter(receiver.url + PATH)
    a.event(DAILY_SUMMARY, "d1", "summary", severity=INFO)
    a.event(KILL_SWITCH, "drawdown", "halted", severity=CRITICAL)
    a.condition(STALE_DATA, "info-cond", True, "late bars", severity=INFO)
    a.condition(SOURCE_DOWN, "yahoo", True, "yahoo down", severity=WARNING)
    a.event(DAILY_SUMMARY, "d2", "summary", severity=INFO)
    a.condition(SOURCE_DOWN, "yahoo", True, "yahoo down hard", severity=CRITICAL)
    a.condition(SOURCE_DOWN, "yahoo", False, "yahoo back")
    a.condition(STALE_DATA, "info-cond", False, "bars on time")
    async with a:
        await receiver.wait_for(8)
        assert await a.flush(5)
    assert [(b["key"], b["state"], b["severity"]) for b in receiver.delivered()] == [
        ("drawdown", "event", CRITICAL),
        ("yahoo", "firing", WARNING),
        ("yahoo", "firing", CRITICAL),
        ("yahoo", "resolved", CRITICAL),
        ("info-cond", "firing", INFO),
        ("info-cond", "resolved", INFO),
        ("d1", "event", INFO),
        ("d2", "event", INFO),
    ]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([SOURCE_DOWN, DAILY_SUMMARY]),
            st.sampled_from(["a", "b"]),
            st.sampled_from(["firing", "resolved", "event"]),
            st.sampled_from([INFO, WARNING, CRITICAL]),
        ),
        max_size=40,
    ),
    st.integers(1, 8),
)
def test_the_queue_keeps_each_conditions_order_and_its_bound(reports, limit):
    q = _AlertQueue()
    pushed, dropped = [], []
    for n, (kind, key, state, severity) in enumerate(reports):
        alert = Alert(kind, key, state, severity, str(n), "", {}, datetime(2024, 1, 2, tzinfo=UTC))
        pushed.append(alert)
        lost = q.push(alert, limit)
        if lost is not None:
            dropped.append(lost)
        assert len(q) <= limit
    taken = []
    while q:
        taken.append(q.pop())
    assert len(taken) + len(dropped) == len(pushed)
    assert {id(a) for a in taken} | {id(a) for a in dropped} == {id(a) for a in pushed}
    for ident in {(a.kind, a.key) for a in taken}:
        order = [int(a.title) for a in taken if (a.kind, a.key) == ident]
        assert order == sorted(order), ident  # a condition's alerts in arrival order


async def test_stop_delivers_a_transition_before_queued_summaries(receiver):
    """A slow target with many info summaries queued, then a warning fired and resolved, then
    a stop with a short timeout: the firing and the resolved are delivered, and what the stop
    gives up is info summaries, named in the log. In arrival order the two waited behind
    every summary and were lost (`alerts.stop.undelivered`)."""
    summaries = 30
    receiver.slow_next(summaries + 2, 0.2)  # every request answers after 0.2 s
    a = alerter(receiver.url + PATH, timeout_s=5.0)
    await a.start()
    for day in range(summaries):
        a.event(DAILY_SUMMARY, f"day{day}", "daily summary", severity=INFO)
    a.condition(STALE_DATA, "bars", True, "bars late", severity=WARNING)
    a.condition(STALE_DATA, "bars", False, "bars on time")
    with capture_logs() as logs:
        await a.stop(timeout_s=2.0)  # a summary in flight, then 0.4 s for the two
    delivered = receiver.delivered()
    transitions = [(b["kind"], b["state"]) for b in delivered if b["kind"] == STALE_DATA]
    assert transitions == [(STALE_DATA, "firing"), (STALE_DATA, "resolved")]
    lost = summaries + 2 - len(delivered)
    assert lost > 0 and a.dropped == lost
    undelivered = [e for e in logs if e["event"] == "alerts.stop.undelivered"]
    assert len(undelivered) == 1
    assert set(undelivered[0]["kinds"]) == {DAILY_SUMMARY}
    assert set(undelivered[0]["severities"]) == {INFO}
    cancelled = [e for e in logs if e["event"] == "alerts.dropped"]
    assert all(e["kind"] == DAILY_SUMMARY for e in cancelled)
    assert undelivered[0]["dropped"] + len(cancelled) == lost


async def test_min_severity_per_target(receiver):
    cfg = AlertsConfig(
        targets=(
            AlertTarget(url=receiver.url + "/all", format="json"),
            AlertTarget(url=receiver.url + "/pager", format="slack", min_severity=CRITICAL),
        ),
        backoff_s=0.01,
        backoff_max_s=0.05,
    )
    async with Alerter(cfg, sleep=Sleeps()) as a:
        a.event(DAILY_SUMMARY, "d", "summary", severity=INFO)
        a.condition(SOURCE_DOWN, "yahoo", True, "down", severity=WARNING)
        a.condition(BROKER_DOWN, "alpaca", True, "broker down", severity=CRITICAL)
        a.condition(BROKER_DOWN, "alpaca", False, "broker up")
        await receiver.wait_for(4, path="/all")
        assert await a.flush(5)
    assert len(receiver.delivered("/all")) == 4
    pager = receiver.delivered("/pager")
    assert [b["blocks"][0]["text"]["text"] for b in pager] == [
        "FIRING: broker down",
        "RESOLVED: broker up",
    ]


async def test_reports_from_another_thread_are_delivered(receiver):
    async with alerter(receiver.url + PATH) as a:
        await asyncio.to_thread(a.event, KILL_SWITCH, "thread", "from a thread")
        await receiver.wait_for(1, timeout=5)
        assert await a.flush(5)
    assert a.sent == 1


async def test_stop_is_bounded_and_counts_what_is_lost(receiver):
    receiver.slow_next(1, 5.0)
    a = alerter(receiver.url + PATH, timeout_s=10.0)
    await a.start()
    a.event(KILL_SWITCH, "a", "first")
    a.event(KILL_SWITCH, "b", "second")
    await receiver.wait_arrived(1)  # the first is in flight, the second queued
    began = time.monotonic()
    await a.stop(timeout_s=0.2)
    assert time.monotonic() - began < 2.0
    assert (a.sent, a.dropped) == (0, 2)
    assert a.status()["running"] is False
    await a.stop()  # idempotent


async def test_no_targets_means_logged_only():
    with capture_logs() as logs:
        async with Alerter(AlertsConfig()) as a:
            a.condition(SOURCE_DOWN, "yahoo", True, "yahoo down")
            assert await a.flush(1)
    assert [e["event"] for e in logs if e["event"].startswith("alert.")] == ["alert.firing"]
    assert a.status()["enabled"] is False and a.status()["ok"] is True


# ----------------------------------------------------------------------------- secrets


async def test_the_webhook_url_never_appears_in_logs_or_errors(receiver):
    dead = f"http://127.0.0.1:{free_port()}{PATH}"
    live = receiver.url + PATH
    receiver.fail_next(1, status=403)
    receiver.fail_next(2, status=500)
    cfg = AlertsConfig(
        targets=(AlertTarget(url=dead, format="slack"), AlertTarget(url=live, format="discord")),
        max_attempts=2,
        backoff_s=0.01,
        backoff_max_s=0.02,
        run_name="r",
    )
    with capture_logs() as logs:
        async with Alerter(cfg, sleep=Sleeps()) as a:
            a.event(KILL_SWITCH, "k1", "tripped", f"posting to {live} failed")
            a.event(KILL_SWITCH, "k2", "tripped again")
            a.event(KILL_SWITCH, "k3", f"see {dead}", f"posting to {live} failed", CRITICAL)
            assert await a.flush(5)
            st_ = a.status()
    # k1: 403; k2: 500 twice; k3 delivered; all three failed to the dead target.
    assert (a.sent, a.failed) == (1, 5)
    kinds = {e.get("error_kind") for e in logs if e["event"] == "alerts.failed"}
    assert kinds == {"connection", "http_4xx", "http_5xx"}
    no_secret(logs, st_, repr(cfg), repr(cfg.targets[0]), cfg.public(), str(cfg))
    # An alert text quoting a webhook URL is scrubbed too, in every body sent.
    assert len(receiver.delivered()) == 1
    for request in receiver.received():
        no_secret(request.raw.decode())
    errors = []
    for bad in (
        f"ftp://hooks.example.com{PATH}",
        f"https://hooks.example.com:notaport{PATH}",
        f"https://{TOKEN}@{PATH}",
        f"https://hooks.example.com{PATH} trailing",
    ):
        with pytest.raises(ConfigError) as info:
            AlertTarget(url=bad, format="slack")
        errors.append(str(info.value))
    with pytest.raises(ConfigError) as info:
        AlertsConfig.from_mapping({"targets": [{"url": f"x{PATH}", "format": "teams"}]})
    errors.append(str(info.value))
    with pytest.raises(ConfigError) as info:
        AlertsConfig.from_mapping({"targets": [{"url": 5}]})
    errors.append(str(info.value))
    no_secret(*errors)
    assert "url" in errors[0]


def test_masking_helpers():
    url = f"https://hooks.slack.com{PATH}?token=abcd12345678"
    assert mask_webhook_url(url) == "https://hooks.slack.com/***"
    text = scrub_webhook(f"POST {url} failed; path {PATH}; token alone {TOKEN}", [url])
    no_secret(text)
    assert "abcd12345678" not in text
    assert mask_webhook_url("not a url") == "***"
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after("-1") is None and parse_retry_after("soon") is None
    now = datetime(2024, 3, 6, 12, 0, tzinfo=UTC)
    http_date = (now + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert parse_retry_after(http_date, now) == 30.0


# ----------------------------------------------------------------------------- configuration


TOML = """
[alerts]
timeout_s = 3
max_attempts = 5
backoff_s = 0.5
backoff_max_s = 30
rate_per_minute = 10
repeat_after_s = 0
dedup_window_s = 120
queue_size = 50
run_name = "paper"

[[alerts.targets]]
url = "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXX"
format = "slack"
min_severity = "warning"

[[alerts.targets]]
url_env = "DISCORD_WEBHOOK_URL"
format = "discord"

[[alerts.targets]]
url = "https://alerts.example.com/tradingd"
"""


def test_from_mapping_parses_the_toml_table():
    data = tomllib.loads(TOML)["alerts"]
    env = {"DISCORD_WEBHOOK_URL": "https://discord.com/api/webhooks/123/abc"}
    cfg = AlertsConfig.from_mapping(data, env=env)
    assert cfg.timeout_s == 3.0 and isinstance(cfg.timeout_s, float)
    assert (cfg.max_attempts, cfg.queue_size, cfg.repeat_after_s) == (5, 50, 0.0)
    assert [t.format for t in cfg.targets] == ["slack", "discord", "json"]
    assert cfg.targets[0].min_severity == "warning" and cfg.targets[2].min_severity == "info"
    assert cfg.targets[1].url == env["DISCORD_WEBHOOK_URL"]
    assert cfg.targets[1].host == "discord.com"
    assert cfg.enabled and not AlertsConfig().enabled
    assert AlertsConfig.from_mapping({}) == AlertsConfig()


def test_a_tradingd_variable_named_by_url_env_is_no_override(tmp_path, monkeypatch):
    """Security trial F7: config/default.toml's example names TRADINGD_ALERT_URL; set as
    told, every command exited 78 ("not a configuration override"). A variable a target's
    url_env names is the webhook's; any other TRADINGD_ variable is still checked."""
    from tradingd.config import load_config

    cfg = tmp_path / "alerts.toml"
    cfg.write_text('[[alerts.targets]]\nurl_env = "TRADINGD_ALERT_URL"\nformat = "slack"\n')
    monkeypatch.setenv("TRADINGD_ALERT_URL", "https://hooks.example.com/x/y")
    config = load_config([cfg])
    assert [t.url for t in config.alerts.targets] == ["https://hooks.example.com/x/y"]
    assert "hooks.example.com/x/y" not in config.to_public_json()
    # Not named by a target: still a misspelt override.
    with pytest.raises(ConfigError, match="TRADINGD_ALERT_URL is not a configuration override"):
        load_config([], env={"TRADINGD_ALERT_URL": "https://hooks.example.com/x/y"})
    with pytest.raises(ConfigError, match="TRADINGD_ALERT_HOOK is not a configuration override"):
        load_config([cfg], env={"TRADINGD_ALERT_HOOK": "https://hooks.example.com/x/y"})


def test_url_env_from_the_process_environment(monkeypatch):
    monkeypatch.setenv("ALERT_HOOK", "https://hooks.example.com/x/y")
    assert AlertTarget(url_env="ALERT_HOOK").url == "https://hooks.example.com/x/y"
    monkeypatch.delenv("ALERT_HOOK")
    with pytest.raises(ConfigError, match="url_env = 'ALERT_HOOK'"):
        AlertTarget(url_env="ALERT_HOOK")


@pytest.mark.parametrize(
    ("data", "names"),
    [
        ({"timout_s": 3}, ["'timout_s'", "[alerts]", "valid keys"]),
        ({"timeout_s": 0}, ["alerts.timeout_s"]),
        ({"timeout_s": "5"}, ["timeout_s", "[alerts]"]),
        ({"max_attempts": 0}, ["alerts.max_attempts"]),
        ({"max_attempts": 2.5}, ["max_attempts", "integer"]),
        ({"max_attempts": True}, ["max_attempts"]),
        ({"backoff_s": -1}, ["alerts.backoff_s"]),
        ({"backoff_s": 10, "backoff_max_s": 5}, ["alerts.backoff_max_s"]),
        ({"rate_per_minute": 0}, ["alerts.rate_per_minute"]),
        ({"rate_per_minute": float("nan")}, ["rate_per_minute"]),
        ({"repeat_after_s": -5}, ["alerts.repeat_after_s"]),
        ({"dedup_window_s": -1}, ["alerts.dedup_window_s"]),
        ({"queue_size": 0}, ["alerts.queue_size"]),
        ({"run_name": "a\nb"}, ["alerts.run_name"]),
        ({"targets": {"url": "https://x/y"}}, ["targets", "list of tables"]),
        ({"targets": ["https://x/y"]}, ["targets[0]", "table"]),
        ({"targets": [{"url": "https://x/y", "fmt": "slack"}]}, ["targets[0]", "'fmt'"]),
        ({"targets": [{"url": "https://x/y", "format": "teams"}]}, ["targets[0]", "format"]),
        (
            {"targets": [{"url": "https://x/y", "min_severity": "loud"}]},
            ["targets[0]", "min_severity"],
        ),
        ({"targets": [{"format": "json"}]}, ["targets[0]", "url is required"]),
        ({"targets": [{"url": "https://x/y", "url_env": "A"}]}, ["targets[0]", "not both"]),
        ({"targets": [{}, {"url": "mailto:x"}]}, ["targets[0]"]),
        ({"targets": [{"url": "https://x/1"}, {"url": "mailto:x"}]}, ["targets[1]", "url"]),
    ],
)
def test_config_errors_name_the_field(data, names):
    with pytest.raises(ConfigError) as info:
        AlertsConfig.from_mapping(data, env={})
    for name in names:
        assert name in str(info.value)


def test_direct_construction_validates_too():
    with pytest.raises(ConfigError, match=r"alerts\.timeout_s"):
        AlertsConfig(timeout_s=-1)
    with pytest.raises(ConfigError, match=r"alerts\.targets\[0\].*format"):
        AlertsConfig(targets=({"url": "https://x/y", "format": "teams"},))  # type: ignore[arg-type]
    cfg = AlertsConfig(targets=[{"url": "https://x/y"}])  # type: ignore[arg-type]
    assert isinstance(cfg.targets, tuple) and isinstance(cfg.targets[0], AlertTarget)
    with pytest.raises(ConfigError, match="format"):
        AlertTarget(url="https://x/y", format="teams")


# ----------------------------------------------------------------------------- reconfigure


async def test_reconfigure_swaps_targets_without_resending_or_losing_alerts(receiver):
    """SIGHUP's path (tradingd.reload -> Alerter.reconfigure): a kept target keeps its
    worker, a new one delivers at once, a removed one gets nothing more; an open condition is
    neither re-sent nor forgotten, so its recovery still goes out, once, to the new set."""
    first, second = receiver.url + PATH, receiver.url + "/second/" + TOKEN
    async with alerter(first) as a:
        a.condition(SOURCE_DOWN, "yahoo", True, "yahoo down")
        assert await a.flush(5)
        kept = a._targets[0]
        with capture_logs() as logs:
            a.reconfigure(
                AlertsConfig(
                    targets=(AlertTarget(url=second, format="slack"),),
                    timeout_s=2.0,
                    rate_per_minute=1000.0,
                    run_name="paper-1",
                )
            )
        assert a._targets[0] is not kept and kept.task is None  # the old one is stopped
        a.condition(SOURCE_DOWN, "yahoo", True, "yahoo still down")  # no new alert
        a.condition(SOURCE_DOWN, "yahoo", False, "yahoo back")
        assert await a.flush(5)
        assert [b["state"] for b in receiver.delivered(PATH)] == ["firing"]
        slack = receiver.delivered("/second/" + TOKEN)
        assert len(slack) == 1 and "yahoo back" in json.dumps(slack[0])
        (event,) = [e for e in logs if e["event"] == "alerts.reconfigured"]
        host = receiver.url.split("//", 1)[1]
        assert event["targets"] == [f"#0 slack {host}"] and event["dropped"] == 0
        assert event["removed"] == [f"#0 json {host}"]
        no_secret(event)


async def test_reconfigure_keeps_an_unchanged_target_and_can_enable_alerting(receiver):
    url = receiver.url + PATH
    a = Alerter(AlertsConfig(run_name="paper-1"), sleep=Sleeps())  # started with no target
    await a.start()
    try:
        a.reconfigure(config(url))
        assert len(a._targets) == 1 and a._targets[0].task is not None
        worker = a._targets[0].task
        a.reconfigure(config(url, repeat_after_s=5.0))  # other settings only
        assert a._targets[0].task is worker  # the same target: its worker goes on
        a.event("kill_switch", "run", "halted")
        assert await a.flush(5)
        assert [b["kind"] for b in receiver.delivered(PATH)] == ["kill_switch"]
    finally:
        await a.stop()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1:9000", True),
        ("127.1:9000", True),
        ("[::1]:9000", True),
        ("localhost", True),
        ("127.0.0.1.nip.io", False),  # a name: it may point anywhere
        ("127.evil.example:80", False),
        ("10.0.0.1:9000", False),
    ],
)
def test_only_this_machine_is_spared_the_plain_http_warning(host, loopback):
    """A plain-HTTP webhook is warned about (`alerts.insecure_url`) unless it stays on this
    machine; "127." as a prefix counted 127.0.0.1.nip.io, a public name, as this machine."""
    from tradingd.alerts import _loopback_host

    assert _loopback_host(host) is loopback
