"""Alerts to webhooks: one alert when something breaks, one when it recovers, never thousands.

What is alerted (the kinds, constants below): the kill switch, risk-limit breaches, stale
data, a data source, the broker or the database down, repeated errors, reconciliation
differences and the daily summary. Where to: any number of webhook targets, each in one of
three body formats:

- `json`: a generic body for any receiver (a script, an alert manager, a chat bridge):
  `{"source": "tradingd", "run", "kind", "key", "severity", "state", "title", "text",
  "fields", "time"}`, `state` being `firing`, `resolved` or `event`.
- `slack`: what a Slack incoming webhook accepts: `{"text": <fallback>, "blocks": [header,
  section, field sections, context]}` within Block Kit's limits (header 150 characters,
  section text 3000, 10 fields per section of at most 2000 each).
- `discord`: what a Discord webhook accepts: `{"content", "embeds": [{"title", "description",
  "color", "fields", "footer", "timestamp"}], "allowed_mentions": {"parse": []}}` within
  Discord's limits (content 2000 characters, embed title 256, description 4096, 25 fields with
  names of 256 and values of 1024, 6000 characters per embed in all). Nothing in an alert
  can ping `@everyone`.

Text longer than a limit is cut deliberately, ending in "…"; surplus fields are replaced by a
"+N more" note. Every text of an alert goes through `secrets.mask_text` first, so an exception
message quoting a DSN does not carry its password to a chat channel.

Two ways to report, both plain (non-async), cheap, and never raising into the caller:

- `Alerter.condition(kind, key, failing, ...)`: a state that holds until it changes (a source
  down, stale data, a breached limit). The transition to failing sends one `firing` alert, the
  transition back one `resolved` alert; reports that change nothing send nothing (counted as
  `suppressed`), except a reminder after `repeat_after_s` of continuous failure (0 = never)
  and an escalation when the severity of a firing condition rises. Call it as often as the
  state is known (every bar, every poll): that is what deduplicates an outage. Reminders and
  resolved alerts carry the fields `failing_since` (ISO time) and `failing_for` ("1h05m").
- `Alerter.event(kind, key, ...)`: a one-off (orders at the broker this run did not place,
  the daily summary). The same (kind, key) again within `dedup_window_s` is
  suppressed.

Delivery happens in the background, one task per target, from a bounded priority queue per
target: critical alerts first, then warnings and every condition's firing or resolved (of any
severity), then routine info (the daily summary, info events, an info condition's reminder);
in arrival order within each. A condition's alerts keep their order: a later, more important
one (an escalation to critical) takes the earlier ones queued along, so its firing still
precedes its resolved. When a queue is full its lowest-priority oldest alert is dropped (the
one arriving when it is the least important of all), counted in `dropped` and logged as a
warning at most once a minute, so a flood of summaries never pushes out a firing or a
resolved, never blocks the trading loop and never grows memory. Each target
has its own rate limit (aiolimiter, `rate_per_minute`, counted per request, retries included),
each POST an aiohttp timeout (`timeout_s`), and failed attempts are retried with exponential
backoff and full jitter (tenacity; `max_attempts`, `backoff_s` doubling up to `backoff_max_s`)
on timeouts, connection errors, HTTP 429 (its `Retry-After`, seconds or an HTTP date, is
honoured when longer than the backoff, capped at `backoff_max_s`) and 5xx. Any other non-2xx
answer (400 for a malformed body, 403/404 for a revoked webhook) is final and logged with its
status. Redirects are not followed (a webhook must be configured with its final URL).

Webhook URLs are secrets: Slack and Discord put the token in the path. A URL never appears in
a log line, an exception message, a `repr` or `status()`: targets are named by index, format
and host (`target_label`), and any error text is scrubbed of the URL before it is logged.

Wiring (see `Alerter`): build an `AlertsConfig` (`AlertsConfig.from_mapping(toml["alerts"])`),
`alerter = Alerter(config, run=run_id)`, `await alerter.start()` once the event loop runs,
report with `condition`/`event` from anywhere in the daemon, and `await alerter.stop()` at
shutdown (it drains for at most `drain_timeout_s`, then cancels). `alerter.status()` is a
plain dict for the health server's `/status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import math
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog
from aiolimiter import AsyncLimiter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from .core.endpoints import is_loopback
from .core.errors import ConfigError
from .core.retry_after import parse_retry_after
from .secrets import MASK, mask_text

if TYPE_CHECKING:
    import aiohttp  # imported where it is used: config.py imports this module

log = structlog.get_logger(__name__)

# ----------------------------------------------------------------------------- vocabulary

KILL_SWITCH = "kill_switch"


def kill_switch_title(plugin: str) -> str:
    """The kill switch condition's title: the alert rules raise it, and a checkpoint names a
    halt the rules have not seen yet (`Engine._kill_switches`) the same way."""
    return f"{plugin}: trading halted"


RISK_LIMIT = "risk_limit"
STALE_DATA = "stale_data"
SOURCE_DOWN = "source_down"
BROKER_DOWN = "broker_down"
DATABASE_DOWN = "database_down"
REDIS_DOWN = "redis_down"
REPEATED_ERRORS = "repeated_errors"
RECONCILIATION = "reconciliation"
UNTRADABLE_ASSET = "untradable_asset"
DAILY_SUMMARY = "daily_summary"
KINDS = (
    KILL_SWITCH,
    RISK_LIMIT,
    STALE_DATA,
    SOURCE_DOWN,
    BROKER_DOWN,
    DATABASE_DOWN,
    REDIS_DOWN,
    REPEATED_ERRORS,
    RECONCILIATION,
    UNTRADABLE_ASSET,
    DAILY_SUMMARY,
)

INFO, WARNING, CRITICAL = "info", "warning", "critical"
SEVERITIES = (INFO, WARNING, CRITICAL)  # in rising order
_RANK = {s: i for i, s in enumerate(SEVERITIES)}

FIRING, RESOLVED, EVENT = "firing", "resolved", "event"
FORMATS = ("json", "slack", "discord")

# Platform limits (characters). Slack Block Kit: header plain_text 150, section text 3000,
# section fields 10 x 2000, 50 blocks. Discord: content 2000, embed title 256, description
# 4096, 25 fields (name 256, value 1024), footer 2048, 6000 per embed in all.
SLACK_HEADER_MAX = 150
SLACK_TEXT_MAX = 3000
SLACK_FIELD_MAX = 2000
SLACK_FIELDS_PER_SECTION = 10
DISCORD_CONTENT_MAX = 2000
DISCORD_TITLE_MAX = 256
DISCORD_DESCRIPTION_MAX = 4096
DISCORD_FIELDS_MAX = 25
DISCORD_FIELD_NAME_MAX = 256
DISCORD_FIELD_VALUE_MAX = 1024
DISCORD_FOOTER_MAX = 2048
DISCORD_EMBED_TOTAL_MAX = 6000
# Our own bounds for the generic body and for fields on every platform.
MAX_FIELDS = 25
JSON_TITLE_MAX = 1000
JSON_TEXT_MAX = 16000
FIELD_NAME_MAX = 256
FIELD_VALUE_MAX = 1024

ELLIPSIS = "…"
_DROP_LOG_EVERY_S = 60.0

# ----------------------------------------------------------------------------- secrets


def _url_parts(url: str) -> tuple[str, str]:
    """(scheme, host[:port]) of a URL, ("", "") when it cannot be parsed. Never raises."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except (ValueError, TypeError, AttributeError):
        return "", ""
    if ":" in host:
        host = f"[{host}]"
    return parts.scheme.lower(), f"{host}:{port}" if port else host


def mask_webhook_url(url: str) -> str:
    """`scheme://host/***`: what may be shown of a webhook URL (its path and query carry the
    token; the user information is dropped too)."""
    scheme, host = _url_parts(url)
    if not scheme or not host:
        return MASK
    return f"{scheme}://{host}/{MASK}"


def _url_secrets(url: str) -> list[str]:
    """Substrings of `url` that must not appear in text: the URL itself, its path and query,
    and each path segment or query value long enough to be a token (longest first)."""
    out = {url}
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    rest = parts.path + (f"?{parts.query}" if parts.query else "")
    out.update({rest, parts.path, parts.query, parts.netloc.rpartition("@")[0]})
    out.update(seg for seg in parts.path.split("/") if len(seg) >= 8)
    for item in parts.query.split("&"):
        value = item.partition("=")[2]
        if len(value) >= 8:
            out.add(value)
    return sorted((s for s in out if len(s) >= 4 and s != "/"), key=len, reverse=True)


def scrub_webhook(text: object, urls: Iterable[str]) -> str:
    """`text` with every webhook URL of `urls` (and any token-like part of it) replaced by
    `***`, and other credentials masked (`secrets.mask_text`). Never raises."""
    try:
        out = str(text)
        for url in urls:
            if not url:
                continue
            out = out.replace(url, mask_webhook_url(url))
            for secret in _url_secrets(url):
                out = out.replace(secret, MASK)
        return mask_text(out)
    except Exception:  # pragma: no cover - defensive: error paths must not raise
        return "(unprintable)"


# ----------------------------------------------------------------------------- configuration


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class AlertTarget:
    """One webhook: `url` (a secret, never shown), `format` ("json" | "slack" | "discord"),
    `min_severity` (alerts below it are not sent there; "info" = all). Instead of `url`,
    `url_env` names an environment variable holding it (keep tokens out of config files)."""

    url: str = field(default="", repr=False)
    format: str = "json"
    min_severity: str = INFO
    url_env: str = ""

    def __post_init__(self) -> None:
        where = "alerts target"
        if not isinstance(self.url_env, str) or any(c.isspace() for c in self.url_env):
            raise ConfigError(
                f"{where}: url_env = {self.url_env!r} is invalid: must be the name of an "
                "environment variable"
            )
        if not isinstance(self.url, str):
            raise ConfigError(f"{where}: url must be a string (an http(s) webhook URL)")
        if not self.url and self.url_env:
            value = os.environ.get(self.url_env, "").strip()
            if not value:
                raise ConfigError(
                    f"{where}: url_env = {self.url_env!r} names an environment variable that "
                    "is not set or empty: set it to the webhook URL"
                )
            object.__setattr__(self, "url", value)
        check_webhook_url(self.url, where)
        if self.format not in FORMATS:
            raise ConfigError(
                f"{where}: format = {self.format!r} is invalid; valid choices: {', '.join(FORMATS)}"
            )
        if self.min_severity not in SEVERITIES:
            raise ConfigError(
                f"{where}: min_severity = {self.min_severity!r} is invalid; valid choices: "
                f"{', '.join(SEVERITIES)}"
            )

    @property
    def host(self) -> str:
        return _url_parts(self.url)[1]

    def __repr__(self) -> str:
        return (
            f"AlertTarget(url={mask_webhook_url(self.url)!r}, format={self.format!r}, "
            f"min_severity={self.min_severity!r}, url_env={self.url_env!r})"
        )

    def public(self) -> dict[str, str]:
        """The target without its secret, for display and stored configurations."""
        return {
            "url": mask_webhook_url(self.url),
            "format": self.format,
            "min_severity": self.min_severity,
            "url_env": self.url_env,
        }


def check_webhook_url(url: str, where: str) -> None:
    """ConfigError unless `url` is an absolute http(s) URL with a host. The message never
    quotes the URL (it holds a token)."""
    if not url:
        raise ConfigError(f"{where}: url is required (or url_env naming a variable holding it)")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise ConfigError(f"{where}: url is invalid: it contains whitespace or control characters")
    scheme, host = _url_parts(url)
    if scheme not in ("http", "https"):
        raise ConfigError(
            f"{where}: url is invalid: must start with https:// (or http://); "
            "the value is not shown because webhook URLs hold tokens"
        )
    if not host:
        raise ConfigError(
            f"{where}: url is invalid: it names no host or has a bad port "
            f"({scheme}://{MASK}); the value is not shown because webhook URLs hold tokens"
        )


@dataclass(frozen=True)
class AlertsConfig:
    """The `[alerts]` section. No targets (the default) = alerts are only logged."""

    targets: tuple[AlertTarget, ...] = ()
    timeout_s: float = 5.0  # per POST
    max_attempts: int = 4  # per alert and target; 1 = no retry
    backoff_s: float = 1.0  # first retry after up to ~this long, doubling (full jitter)
    backoff_max_s: float = 60.0  # cap of one backoff wait, and of a Retry-After
    rate_per_minute: float = 20.0  # requests per target per minute (a burst of this many)
    repeat_after_s: float = 3600.0  # remind of a condition still failing; 0 = never
    dedup_window_s: float = 600.0  # one event per (kind, key) within this long; 0 = no dedup
    queue_size: int = 1000  # per target; when full the least important oldest is dropped
    drain_timeout_s: float = 10.0  # how long stop() may deliver what is queued
    # How often the source and broker conditions are also checked between bars (daily bars
    # are a day apart); 0 = only after bars.
    check_interval_s: float = 30.0
    run_name: str = ""  # shown in every alert ("run" of the JSON body)

    def __post_init__(self) -> None:
        targets = self.targets
        if isinstance(targets, Mapping) or not isinstance(targets, list | tuple):
            raise ConfigError("alerts.targets must be a list of tables ([[alerts.targets]])")
        built = []
        for i, target in enumerate(targets):
            if isinstance(target, Mapping):
                target = _target_from_mapping(target, f"alerts.targets[{i}]", None)
            elif not isinstance(target, AlertTarget):
                raise ConfigError(f"alerts.targets[{i}] must be a table with url and format")
            built.append(target)
        object.__setattr__(self, "targets", tuple(built))

        def bad(name: str, rule: str) -> ConfigError:
            return ConfigError(
                f"alerts.{name} = {getattr(self, name)!r} is invalid: must be {rule}"
            )

        for name in ("timeout_s", "rate_per_minute", "drain_timeout_s"):
            if not (_is_number(getattr(self, name)) and getattr(self, name) > 0):
                raise bad(name, "a number > 0")
        for name, zero in (
            ("backoff_s", ""),
            ("backoff_max_s", ""),
            ("repeat_after_s", " (0 = never remind)"),
            ("check_interval_s", " (0 = only after bars)"),
            ("dedup_window_s", " (0 = no deduplication)"),
        ):
            if not (_is_number(getattr(self, name)) and getattr(self, name) >= 0):
                raise bad(name, f"a number >= 0{zero}")
        if self.backoff_max_s < self.backoff_s:
            raise bad("backoff_max_s", f">= alerts.backoff_s ({self.backoff_s!r})")
        for name, hi in (("max_attempts", 20), ("queue_size", 1_000_000)):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= hi):
                raise bad(name, f"an integer from 1 to {hi}")
        if not isinstance(self.run_name, str) or "\n" in self.run_name:
            raise bad("run_name", "a single-line string")
        for name in ("timeout_s", "backoff_s", "backoff_max_s", "rate_per_minute"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @property
    def enabled(self) -> bool:
        return bool(self.targets)

    def public(self) -> dict[str, Any]:
        """The section without secrets (targets masked), for display and stored configs."""
        out: dict[str, Any] = {
            f: getattr(self, f) for f in self.__dataclass_fields__ if f != "targets"
        }
        out["targets"] = [t.public() for t in self.targets]
        return out

    @classmethod
    def from_mapping(
        cls, d: Mapping[str, Any], where: str = "[alerts]", env: Mapping[str, str] | None = None
    ) -> AlertsConfig:
        """Parse the `[alerts]` TOML table (targets as `[[alerts.targets]]`). Unknown keys and
        wrong types are a ConfigError naming the key and `where`. `env` (default:
        `os.environ`) resolves `url_env`."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where} must be a table, got {type(d).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                f"valid keys: {', '.join(sorted(known))}"
            )
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key == "targets":
                if not isinstance(value, list | tuple):
                    raise ConfigError(
                        f"{where}: targets must be a list of tables ([[alerts.targets]]), "
                        f"got {type(value).__name__}"
                    )
                kwargs[key] = tuple(
                    _target_from_mapping(t, f"{where} targets[{i}]", env)
                    for i, t in enumerate(value)
                )
                continue
            default = cls.__dataclass_fields__[key].default
            kwargs[key] = _typed(key, value, default, where)
        return cls(**kwargs)


def _typed(key: str, value: Any, default: Any, where: str) -> Any:
    if isinstance(default, bool):  # pragma: no cover - no bool settings yet
        ok = isinstance(value, bool)
        kind = "true or false"
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        kind = "an integer"
    elif isinstance(default, float):
        ok = _is_number(value)
        kind = "a finite number"
    else:
        ok = isinstance(value, str)
        kind = "a string"
    if not ok:
        raise ConfigError(f"{where}: {key} must be {kind}, got {value!r}")
    return float(value) if isinstance(default, float) else value


_TARGET_KEYS = ("url", "url_env", "format", "min_severity")


def _target_from_mapping(t: Any, where: str, env: Mapping[str, str] | None) -> AlertTarget:
    if not isinstance(t, Mapping):
        raise ConfigError(f"{where} must be a table with url and format, got {type(t).__name__}")
    unknown = sorted(set(t) - set(_TARGET_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"valid keys: {', '.join(_TARGET_KEYS)}"
        )
    for key in _TARGET_KEYS:
        if key in t and not isinstance(t[key], str):
            shown = "(not shown)" if key == "url" else repr(t[key])
            raise ConfigError(f"{where}: {key} must be a string, got {shown}")
    url, url_env = t.get("url", ""), t.get("url_env", "")
    if url and url_env:
        raise ConfigError(f"{where}: set url or url_env, not both")
    if url_env and env is not None:
        url = env.get(url_env, "").strip()
        if not url:
            raise ConfigError(
                f"{where}: url_env = {url_env!r} names an environment variable that is not "
                "set or empty: set it to the webhook URL"
            )
    try:
        return AlertTarget(
            url=url,
            format=t.get("format", "json"),
            min_severity=t.get("min_severity", INFO),
            url_env=url_env,
        )
    except ConfigError as exc:
        raise ConfigError(f"{where}: {str(exc).removeprefix('alerts target: ')}") from None


# ----------------------------------------------------------------------------- alerts


@dataclass(frozen=True)
class Alert:
    """One message to send. `fields` values are JSON scalars; texts are already masked."""

    kind: str
    key: str
    state: str  # firing | resolved | event
    severity: str
    title: str
    text: str
    fields: Mapping[str, Any]
    time: datetime
    run: str = ""
    reminder: bool = False  # a firing alert repeated for a condition still failing

    @property
    def label(self) -> str:
        if self.state == RESOLVED:
            return "RESOLVED"
        if self.state == FIRING:
            return "STILL FIRING" if self.reminder else "FIRING"
        return self.severity.upper()


def _clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, ending in "…" when cut."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - 1)] + ELLIPSIS if limit >= 1 else ""


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_clip(escaped: str, limit: int) -> str:
    """Cut Slack-escaped text without leaving half an `&amp;` entity at the end."""
    if len(escaped) <= limit:
        return escaped
    cut = escaped[: max(0, limit - 1)]
    amp = cut.rfind("&", max(0, len(cut) - 5))
    if amp >= 0 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut + ELLIPSIS


def _field_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return mask_text(value) if isinstance(value, str) else value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return mask_text(str(value))


def _as_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _fields(fields: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (fields or {}).items():
        out[_clip(mask_text(str(k)), FIELD_NAME_MAX)] = _field_value(v)
    return out


def _shown_fields(alert: Alert) -> tuple[list[tuple[str, str]], int]:
    """(name, text) pairs to render, at most MAX_FIELDS, and how many were left out."""
    items = [(str(k), _as_text(v)) for k, v in alert.fields.items()]
    if len(items) > MAX_FIELDS:
        return items[: MAX_FIELDS - 1], len(items) - (MAX_FIELDS - 1)
    return items, 0


def render_json(alert: Alert) -> dict[str, Any]:
    return {
        "source": "tradingd",
        "run": alert.run,
        "kind": alert.kind,
        "key": alert.key,
        "severity": alert.severity,
        "state": alert.state,
        "title": _clip(alert.title, JSON_TITLE_MAX),
        "text": _clip(alert.text, JSON_TEXT_MAX),
        "fields": dict(alert.fields),
        "time": alert.time.isoformat(),
    }


_SLACK_ICON = {
    CRITICAL: ":red_circle:",
    WARNING: ":large_orange_circle:",
    INFO: ":information_source:",
}


def _footer(alert: Alert) -> str:
    run = f" · run {alert.run}" if alert.run else ""
    return f"tradingd{run} · {alert.kind}/{alert.key} · {alert.severity}"


def render_slack(alert: Alert) -> dict[str, Any]:
    """A Slack incoming-webhook body: `text` (notification fallback) and Block Kit blocks."""
    icon = ":white_check_mark:" if alert.state == RESOLVED else _SLACK_ICON[alert.severity]
    headline = f"{alert.label}: {alert.title}"
    fallback = f"[{alert.label}] {alert.title}" + (f": {alert.text}" if alert.text else "")
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": _clip(headline, SLACK_HEADER_MAX),
                "emoji": True,
            },
        }
    ]
    if alert.text:
        blocks.append(
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": _slack_clip(f"{icon} {_slack_escape(alert.text)}", SLACK_TEXT_MAX),
                },
            }
        )
    shown, more = _shown_fields(alert)
    for start in range(0, len(shown), SLACK_FIELDS_PER_SECTION):
        chunk = shown[start : start + SLACK_FIELDS_PER_SECTION]
        blocks.append(
            {
                "type": "section",
                "fields": [
                    {
                        "type": "mrkdwn",
                        "text": _slack_clip(
                            f"*{_slack_escape(name)}*\n{_slack_escape(value)}", SLACK_FIELD_MAX
                        ),
                    }
                    for name, value in chunk
                ],
            }
        )
    context = f"{_footer(alert)} · {alert.time.isoformat()}"
    if more:
        context = f"+{more} more fields not shown · {context}"
    blocks.append(
        {
            "type": "context",
            "elements": [
                {"type": "mrkdwn", "text": _slack_clip(_slack_escape(context), SLACK_TEXT_MAX)}
            ],
        }
    )
    return {"text": _clip(fallback, SLACK_TEXT_MAX), "blocks": blocks}


DISCORD_COLORS = {CRITICAL: 0xD32F2F, WARNING: 0xF9A825, INFO: 0x1E88E5, RESOLVED: 0x43A047}


def _discord_text(text: str, limit: int) -> str:
    # Discord rejects an empty field name or value.
    return _clip(text, limit) if text.strip() else "-"


def render_discord(alert: Alert) -> dict[str, Any]:
    """A Discord webhook body (execute webhook): `content` plus one embed, within limits."""
    title = _clip(f"[{alert.label}] {alert.title}", DISCORD_TITLE_MAX)
    footer = _clip(_footer(alert), DISCORD_FOOTER_MAX)
    shown, more = _shown_fields(alert)
    fields: list[dict[str, Any]] = [
        {
            "name": _discord_text(name, DISCORD_FIELD_NAME_MAX),
            "value": _discord_text(value, DISCORD_FIELD_VALUE_MAX),
            "inline": True,
        }
        for name, value in shown
    ]
    if more:
        fields.append({"name": "more", "value": f"+{more} fields not shown", "inline": False})
    fields = fields[:DISCORD_FIELDS_MAX]
    description = _clip(alert.text, DISCORD_DESCRIPTION_MAX)

    def total() -> int:
        return (
            len(title)
            + len(description)
            + len(footer)
            + sum(len(f["name"]) + len(f["value"]) for f in fields)
        )

    # Within 6000 characters per embed: shorten the description (keeping at least 1000
    # characters of it), then drop fields from the end, then shorten the description further.
    excess = total() - DISCORD_EMBED_TOTAL_MAX
    if excess > 0 and len(description) > 1000:
        description = _clip(description, max(1000, len(description) - excess))
    while total() > DISCORD_EMBED_TOTAL_MAX and fields:
        fields.pop()
    excess = total() - DISCORD_EMBED_TOTAL_MAX
    if excess > 0:
        description = _clip(description, max(0, len(description) - excess))
    embed: dict[str, Any] = {
        "title": title,
        "description": description,
        "color": DISCORD_COLORS[RESOLVED if alert.state == RESOLVED else alert.severity],
        "fields": fields,
        "footer": {"text": footer},
        "timestamp": alert.time.isoformat(),
    }
    content = f"**[{alert.label}]** {alert.title}"
    return {
        "content": _clip(content, DISCORD_CONTENT_MAX),
        "embeds": [embed],
        "allowed_mentions": {"parse": []},
    }


RENDERERS: dict[str, Callable[[Alert], dict[str, Any]]] = {
    "json": render_json,
    "slack": render_slack,
    "discord": render_discord,
}


def render(alert: Alert, fmt: str) -> dict[str, Any]:
    return RENDERERS[fmt](alert)


# ----------------------------------------------------------------------------- delivery


class DeliveryError(Exception):
    """One failed POST. `kind`: timeout | connection | http_429 | http_5xx | http_4xx |
    redirect. The message never holds the URL."""

    def __init__(
        self, kind: str, message: str, status: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after_s = retry_after_s

    @property
    def retryable(self) -> bool:
        return self.kind in ("timeout", "connection", "http_429", "http_5xx")


class _RetryableDelivery(DeliveryError):
    pass


class _Wait:
    """tenacity wait: exponential backoff with full jitter, or the last error's Retry-After
    when longer, capped. A floor, not a replacement: a date already past (the receiver's
    clock behind ours) reads as 0 s, and the retries of an alert came at once."""

    def __init__(self, base_s: float, cap_s: float) -> None:
        self.cap = cap_s
        self._inner = wait_random_exponential(multiplier=base_s, max=cap_s)

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        hint = getattr(exc, "retry_after_s", None)
        backoff = float(self._inner(state))
        if hint is not None:
            return float(min(max(hint, backoff), self.cap))
        return backoff


def _priority(alert: Alert) -> int:
    """0 routine info, 1 a warning or a condition's transition, 2 critical. An info
    condition's firing and resolved rank with warnings: the operator must hear both, however
    many daily summaries are waiting; its reminders stay routine."""
    transition = alert.state != EVENT and not alert.reminder
    return max(_RANK[alert.severity], int(transition))


class _AlertQueue:
    """A target's queued alerts, taken by priority, then arrival. A plain FIFO queue lost a
    warning's resolved behind info summaries when a stop's bounded drain ran out, and a full
    one dropped a critical alert to keep an info one.

    An alert of a condition (kind, key) pulls the same condition's queued alerts of lower
    priority up to its own, keeping their arrival order: otherwise an escalation to critical
    and its resolved overtook the warning firing and the receiver saw a condition resolve
    before it fired. Locked: `Alerter.condition` may be called from another thread."""

    def __init__(self) -> None:
        self._tiers: tuple[deque[tuple[int, Alert]], ...] = tuple(deque() for _ in SEVERITIES)
        self._idents: tuple[Counter[tuple[str, str]], ...] = tuple(Counter() for _ in SEVERITIES)
        self._seq = itertools.count()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return sum(len(tier) for tier in self._tiers)

    def push(self, alert: Alert, limit: int) -> Alert | None:
        """Queue `alert`; when `limit` alerts are already queued, drop the lowest-priority
        oldest (possibly `alert` itself) and return it."""
        prio = _priority(alert)
        ident = (alert.kind, alert.key)
        with self._lock:
            self._promote(ident, prio)
            dropped = None
            if len(self) >= limit:
                lowest = next(i for i, tier in enumerate(self._tiers) if tier)
                if lowest > prio:
                    return alert
                dropped = self._take(lowest)
            self._tiers[prio].append((next(self._seq), alert))
            self._idents[prio][ident] += 1
            return dropped

    def pop(self) -> Alert:
        """The most important oldest alert (IndexError when empty)."""
        with self._lock:
            for i in reversed(range(len(self._tiers))):
                if self._tiers[i]:
                    return self._take(i)
        raise IndexError("pop from an empty alert queue")

    def clear(self) -> list[Alert]:
        """Empty the queue; what was in it, most important first."""
        with self._lock:
            out = [a for tier in reversed(self._tiers) for _, a in tier]
            for tier, idents in zip(self._tiers, self._idents, strict=True):
                tier.clear()
                idents.clear()
            return out

    def _take(self, i: int) -> Alert:
        _, alert = self._tiers[i].popleft()
        idents = self._idents[i]
        ident = (alert.kind, alert.key)
        idents[ident] -= 1
        if not idents[ident]:
            del idents[ident]
        return alert

    def _promote(self, ident: tuple[str, str], prio: int) -> None:
        moved: list[tuple[int, Alert]] = []
        for i in range(prio):
            n = self._idents[i].pop(ident, 0)
            if not n:
                continue
            tier = self._tiers[i]
            moved += [e for e in tier if (e[1].kind, e[1].key) == ident]
            kept = [e for e in tier if (e[1].kind, e[1].key) != ident]
            tier.clear()
            tier.extend(kept)
        if moved:
            moved.sort(key=lambda e: e[0])
            tier = self._tiers[prio]
            merged = list(heapq.merge(tier, moved, key=lambda e: e[0]))
            tier.clear()
            tier.extend(merged)
            self._idents[prio][ident] += len(moved)


@dataclass
class _Target:
    index: int
    config: AlertTarget
    queue: _AlertQueue = field(default_factory=_AlertQueue)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    limiter: AsyncLimiter | None = None
    task: asyncio.Task[None] | None = None
    busy: bool = False
    sent: int = 0
    failed: int = 0
    dropped: int = 0
    retries: int = 0
    last_error: dict[str, Any] | None = None
    last_sent_at: datetime | None = None
    last_ok: bool | None = None

    @property
    def label(self) -> str:
        return target_label(self.index, self.config)


def target_label(index: int, target: AlertTarget) -> str:
    """How a target is named in logs and status: `#0 slack hooks.slack.com`."""
    return f"#{index} {target.format} {target.host}"


@dataclass
class _Condition:
    severity: str
    title: str
    since_mono: float
    since: datetime
    last_alert_mono: float


# ----------------------------------------------------------------------------- the alerter


class Alerter:
    """Deduplicates reports into alerts and delivers them to the configured webhooks.

    `condition()` and `event()` are plain methods for any code on the event loop's thread
    (from another thread they work too: the wake-up is passed thread-safely, but two threads
    racing on the same key may both alert). They only update a dict and append to bounded
    queues; they never await, block or raise.

    Injectable for tests: `session` (an aiohttp session; otherwise one is made at start and
    closed at stop), `clock` (monotonic seconds: reminders, dedup windows), `wall_clock`
    (alert times), `sleep` (the backoff sleep), `rate_period_s` (the limiter's period: the
    rate is `rate_per_minute` per `rate_period_s`, 60 s outside tests). `run` overrides
    `config.run_name`.
    """

    def __init__(
        self,
        config: AlertsConfig | None = None,
        *,
        run: str | None = None,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rate_period_s: float = 60.0,
    ) -> None:
        self.config = config or AlertsConfig()
        self.run = self.config.run_name if run is None else run
        self._session = session
        self._own_session = session is None
        self._clock = clock
        self._wall = wall_clock or (lambda: datetime.now(UTC))
        self._sleep = sleep
        self._rate_period_s = rate_period_s
        self._targets = [_Target(i, t) for i, t in enumerate(self.config.targets)]
        self._urls = tuple(t.url for t in self.config.targets)
        self._conditions: dict[tuple[str, str], _Condition] = {}
        self._events: dict[tuple[str, str], float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._progress = asyncio.Event()
        self._running = False
        self._stopped = False
        self._drops_unlogged = 0
        self._last_drop_log = -math.inf
        # Counters (alerts x targets for sent/failed/dropped; reports for suppressed).
        self.alerts = 0  # alerts produced (before fan-out to targets)
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.suppressed = 0

    # -------------------------------------------------------------- reporting (sync, cheap)

    def condition(
        self,
        kind: str,
        key: str,
        failing: bool,
        title: str = "",
        text: str = "",
        severity: str = WARNING,
        fields: Mapping[str, Any] | None = None,
    ) -> Alert | None:
        """Report the current state of a condition. Returns the alert queued (firing on the
        transition to failing, resolved on the way back, a reminder or an escalation), or None
        when the report changes nothing."""
        try:
            return self._condition(kind, key, bool(failing), title, text, severity, fields)
        except Exception as exc:  # never break the caller (the trading loop)
            log.error("alerts.report_failed", kind=str(kind), error=self._scrub(repr(exc)))
            return None

    def _condition(
        self,
        kind: str,
        key: str,
        failing: bool,
        title: str,
        text: str,
        severity: str,
        fields: Mapping[str, Any] | None,
    ) -> Alert | None:
        kind, key, severity = self._names(kind, key, severity)
        ident = (kind, key)
        state = self._conditions.get(ident)
        now = self._clock()
        if not failing:
            if state is None:
                return None  # ok and was ok: nothing to say
            del self._conditions[ident]
            extra = {
                "failing_since": state.since.isoformat(),
                "failing_for": _duration(now - state.since_mono),
            }
            return self._emit(
                kind, key, RESOLVED, state.severity, title or state.title, text, fields, extra
            )
        if state is None:
            wall = self._wall()
            self._conditions[ident] = _Condition(severity, title, now, wall, now)
            return self._emit(kind, key, FIRING, severity, title, text, fields, None, at=wall)
        escalated = _RANK[severity] > _RANK[state.severity]
        repeat = self.config.repeat_after_s
        remind = bool(repeat) and now - state.last_alert_mono >= repeat
        if not (escalated or remind):
            self.suppressed += 1
            return None
        state.severity = max(severity, state.severity, key=_RANK.__getitem__)
        state.last_alert_mono = now
        state.title = title or state.title
        extra = {
            "failing_since": state.since.isoformat(),
            "failing_for": _duration(now - state.since_mono),
        }
        return self._emit(
            kind,
            key,
            FIRING,
            state.severity,
            state.title,
            text,
            fields,
            extra,
            reminder=not escalated,
        )

    def event(
        self,
        kind: str,
        key: str,
        title: str = "",
        text: str = "",
        severity: str = INFO,
        fields: Mapping[str, Any] | None = None,
        *,
        dedup_s: float | None = None,
    ) -> Alert | None:
        """Report a one-off event. The same (kind, key) within `dedup_s` (default
        `dedup_window_s`) of the last one sent is suppressed. Returns the alert queued, or
        None when suppressed."""
        try:
            kind, key, severity = self._names(kind, key, severity)
            window = self.config.dedup_window_s if dedup_s is None else float(dedup_s)
            now = self._clock()
            ident = (kind, key)
            last = self._events.get(ident)
            if last is not None and window > 0 and now - last < window:
                self.suppressed += 1
                return None
            self._events[ident] = now
            if len(self._events) > 1024:  # forget what is outside every window
                horizon = now - max(window, self.config.dedup_window_s)
                self._events = {k: t for k, t in self._events.items() if t > horizon}
            return self._emit(kind, key, EVENT, severity, title, text, fields, None)
        except Exception as exc:  # never break the caller
            log.error("alerts.report_failed", kind=str(kind), error=self._scrub(repr(exc)))
            return None

    def assume_firing(self, conditions: Iterable[Mapping[str, Any]]) -> None:
        """Conditions that were firing, as `firing()` gave them, before a restart (a live
        run's checkpoint keeps its kill switches): they stay firing without a new alert, and
        send their resolved alert when they clear. Without this a restarted daemon alerted a
        halt the operator had been told of as if it had just begun."""
        now, wall = self._clock(), self._wall()
        for c in conditions:
            kind, key, severity = self._names(c.get("kind"), c.get("key"), c.get("severity"))
            since = datetime.fromisoformat(c["since"]) if c.get("since") else wall
            ago = max(0.0, (wall - since).total_seconds())
            self._conditions.setdefault(
                (kind, key), _Condition(severity, str(c.get("title", "")), now - ago, since, now)
            )

    def firing(self) -> list[dict[str, Any]]:
        """The conditions currently failing: kind, key, severity, title, since."""
        return [
            {
                "kind": k,
                "key": key,
                "severity": c.severity,
                "title": self._scrub(c.title),
                "since": c.since.isoformat(),
            }
            for (k, key), c in self._conditions.items()
        ]

    def _names(self, kind: Any, key: Any, severity: Any) -> tuple[str, str, str]:
        kind = ("" if kind is None else str(kind).strip()) or "unknown"
        key = "" if key is None else str(key)
        if severity not in _RANK:
            log.warning("alerts.bad_severity", severity=str(severity), kind=kind, used=WARNING)
            severity = WARNING
        return kind, key, severity

    def _emit(
        self,
        kind: str,
        key: str,
        state: str,
        severity: str,
        title: str,
        text: str,
        fields: Mapping[str, Any] | None,
        extra: Mapping[str, Any] | None,
        *,
        reminder: bool = False,
        at: datetime | None = None,
    ) -> Alert:
        all_fields = {
            k: self._scrub(v) if isinstance(v, str) else v for k, v in _fields(fields).items()
        }
        if extra:
            all_fields.update(extra)
        alert = Alert(
            kind=kind,
            key=key,
            state=state,
            severity=severity,
            title=self._scrub(title) if title else f"{kind} {key}".strip(),
            text=self._scrub(text) if text else "",
            fields=all_fields,
            time=at or self._wall(),
            run=self.run,
            reminder=reminder,
        )
        self.alerts += 1
        level = {INFO: "info", WARNING: "warning", CRITICAL: "error"}[severity]
        if state == RESOLVED:
            level = "info"
        getattr(log, level)(
            f"alert.{state}",
            kind=kind,
            key=key,
            severity=severity,
            title=alert.title,
            **({"reminder": True} if reminder else {}),
        )
        for target in self._targets:
            if _RANK[severity] >= _RANK[target.config.min_severity]:
                self._enqueue(target, alert)
        return alert

    def _enqueue(self, target: _Target, alert: Alert) -> None:
        old = target.queue.push(alert, self.config.queue_size)
        if old is not None:
            target.dropped += 1
            self.dropped += 1
            self._drops_unlogged += 1
            now = self._clock()
            if now - self._last_drop_log >= _DROP_LOG_EVERY_S:
                log.warning(
                    "alerts.dropped",
                    target=target.label,
                    reason="queue full",
                    queue_size=self.config.queue_size,
                    dropped=self._drops_unlogged,
                    dropped_total=self.dropped,
                    kind=old.kind,
                    key=old.key,
                    severity=old.severity,
                    state=old.state,
                )
                self._drops_unlogged = 0
                self._last_drop_log = now
        if old is not alert:
            self._wake(target)

    def _wake(self, target: _Target) -> None:
        loop = self._loop
        if loop is not None and self._loop_thread != threading.get_ident():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to wake
                loop.call_soon_threadsafe(target.wake.set)
            return
        target.wake.set()

    # -------------------------------------------------------------- reconfiguration

    def reconfigure(self, config: AlertsConfig) -> None:
        """Take new alert settings and targets (SIGHUP, `tradingd.reload`) without losing
        what is in flight. A target whose settings are unchanged keeps its queue, worker and
        counters; a removed target's queued alerts are counted as dropped and logged; an
        added target starts delivering at once when the alerter is running. Open conditions
        and dedup windows are kept, so a reload never re-sends a firing alert. Call it on the
        event loop's thread."""
        old = {t.config: t for t in self._targets}
        kept: list[_Target] = []
        for i, target in enumerate(config.targets):
            t = old.pop(target, None) or _Target(i, target)
            t.index = i
            kept.append(t)
        removed = list(old.values())
        rate_changed = (config.rate_per_minute, self._rate_period_s) != (
            self.config.rate_per_minute,
            self._rate_period_s,
        )
        self.config = config
        # Old URLs stay masked too: an alert already rendered may still name one in an error.
        self._urls = tuple(dict.fromkeys((*self._urls, *(t.url for t in config.targets))))
        dropped = 0
        for t in removed:
            if t.task is not None:
                t.task.cancel()
                t.task = None
            lost = len(t.queue.clear())
            dropped += lost
            t.dropped += lost
        self.dropped += dropped
        self._targets = kept
        started = self._loop is not None and not self._stopped
        if started and kept:
            if self._session is None:
                import aiohttp  # with the first target: the config module imports this one

                self._session = aiohttp.ClientSession()
                self._own_session = True
            for t in kept:
                if t.limiter is None or rate_changed:
                    t.limiter = AsyncLimiter(self.config.rate_per_minute, self._rate_period_s)
                if t.task is None:
                    t.task = asyncio.create_task(self._worker(t), name=f"alerts-{t.index}")
                    if t.queue:
                        t.wake.set()
            self._running = True
        log.info(
            "alerts.reconfigured",
            targets=[t.label for t in kept],
            removed=[target_label(t.index, t.config) for t in removed],
            dropped=dropped,
        )

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start one delivery task per target (none when no target is configured)."""
        if self._running:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stopped = False
        if not self._targets:
            log.info("alerts.disabled", reason="no [[alerts.targets]] configured")
            return
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession()
            self._own_session = True
        for t in self._targets:
            t.limiter = AsyncLimiter(self.config.rate_per_minute, self._rate_period_s)
            scheme, host = _url_parts(t.config.url)
            if scheme == "http" and not _loopback_host(host):
                log.warning("alerts.insecure_url", target=t.label, hint="use https://")
            t.task = asyncio.create_task(self._worker(t), name=f"alerts-{t.index}")
            if t.queue:
                t.wake.set()
        self._running = True
        log.info("alerts.started", targets=[t.label for t in self._targets])

    async def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every queue is empty and nothing is in flight, at most `timeout_s`.
        True when idle."""
        if not self._running:
            return self._idle()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            self._progress.clear()
            if self._idle():
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._progress.wait(), remaining)
            except TimeoutError:
                return self._idle()

    async def stop(self, timeout_s: float | None = None) -> None:
        """Deliver what is queued for at most `timeout_s` (default `drain_timeout_s`), then
        cancel the delivery tasks and close the session. Never hangs; what is left is counted
        as dropped."""
        if self._stopped:
            return
        self._stopped = True
        limit = self.config.drain_timeout_s if timeout_s is None else timeout_s
        if self._running:
            try:
                await self.flush(limit)
            finally:
                self._running = False
                tasks = [t.task for t in self._targets if t.task is not None]
                for task in tasks:
                    task.cancel()
                if tasks:
                    await asyncio.wait(tasks, timeout=max(1.0, limit))
                for t in self._targets:
                    t.task = None
                    t.busy = False
        left: list[Alert] = []
        for t in self._targets:
            lost = t.queue.clear()
            t.dropped += len(lost)
            left += lost
        if left:
            self.dropped += len(left)
            log.warning(
                "alerts.stop.undelivered",
                dropped=len(left),
                timeout_s=limit,
                kinds=dict(Counter(a.kind for a in left)),
                severities=dict(Counter(a.severity for a in left)),
                transitions=sum(a.state != EVENT and not a.reminder for a in left),
            )
        if self._own_session and self._session is not None:
            session, self._session = self._session, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.close(), timeout=max(1.0, limit))
        log.info("alerts.stopped", sent=self.sent, failed=self.failed, dropped=self.dropped)

    async def __aenter__(self) -> Alerter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _idle(self) -> bool:
        return all(not t.queue and not t.busy for t in self._targets)

    # -------------------------------------------------------------- delivery

    async def _worker(self, target: _Target) -> None:
        while True:
            if not target.queue:
                target.wake.clear()
                self._progress.set()
                await target.wake.wait()
                continue
            alert = target.queue.pop()
            target.busy = True
            try:
                await self._deliver(target, alert)
            except asyncio.CancelledError:  # stop() gave up on it: the alert is lost
                target.dropped += 1
                self.dropped += 1
                log.warning(
                    "alerts.dropped",
                    target=target.label,
                    reason="stopped while delivering",
                    kind=alert.kind,
                    key=alert.key,
                    severity=alert.severity,
                    state=alert.state,
                )
                raise
            except Exception as exc:  # a bug of ours: count it, keep the worker alive
                target.failed += 1
                self.failed += 1
                log.error(
                    "alerts.internal_error",
                    target=target.label,
                    kind=alert.kind,
                    error=self._scrub(repr(exc)),
                )
            finally:
                target.busy = False
                self._progress.set()

    async def _deliver(self, target: _Target, alert: Alert) -> None:
        body = json.dumps(render(alert, target.config.format), ensure_ascii=False).encode()
        attempts = 0
        try:
            retrying = AsyncRetrying(
                stop=stop_after_attempt(self.config.max_attempts),
                wait=_Wait(self.config.backoff_s, self.config.backoff_max_s),
                retry=retry_if_exception_type(_RetryableDelivery),
                sleep=self._sleep,
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    if attempts > 1:
                        target.retries += 1
                    await self._post(target, body)
        except DeliveryError as exc:
            target.failed += 1
            self.failed += 1
            target.last_ok = False
            target.last_error = {
                "kind": exc.kind,
                "status": exc.status,
                "message": str(exc),
                "at": self._wall().isoformat(),
            }
            log.error(
                "alerts.failed",
                target=target.label,
                kind=alert.kind,
                key=alert.key,
                state=alert.state,
                error_kind=exc.kind,
                status=exc.status,
                error=str(exc),
                attempts=attempts,
                retried=exc.retryable,
            )
            return
        target.sent += 1
        self.sent += 1
        target.last_ok = True
        target.last_sent_at = self._wall()
        log.debug(
            "alerts.sent",
            target=target.label,
            kind=alert.kind,
            key=alert.key,
            state=alert.state,
            attempts=attempts,
        )

    async def _post(self, target: _Target, body: bytes) -> None:
        """One attempt: rate limit, POST with a timeout; raises DeliveryError on failure."""
        import aiohttp

        assert self._session is not None and target.limiter is not None
        await target.limiter.acquire()
        url = target.config.url
        try:
            async with self._session.post(
                url,
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_s),
                allow_redirects=False,
            ) as resp:
                status = resp.status
                if 200 <= status < 300:
                    return
                detail = await _short_body(resp)
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise _RetryableDelivery(
                "timeout", f"no answer within {self.config.timeout_s:g} s"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _RetryableDelivery(
                "connection", self._scrub(f"{type(exc).__name__}: {exc}")[:300]
            ) from None
        detail = self._scrub(detail)
        message = f"HTTP {status}: {detail}"
        if status == 429:
            log.info("alerts.throttled", target=target.label, retry_after_s=retry_after)
            raise _RetryableDelivery("http_429", message, status, retry_after)
        if status >= 500:
            log.info("alerts.retry", target=target.label, status=status)
            raise _RetryableDelivery("http_5xx", message, status, retry_after)
        if 300 <= status < 400:
            raise DeliveryError(
                "redirect",
                f"{message} (redirects are not followed: configure the final URL)",
                status,
            )
        raise DeliveryError("http_4xx", f"{message} (not retried: fix the target)", status)

    def _scrub(self, text: object) -> str:
        return scrub_webhook(text, self._urls)

    # -------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        """A plain dict for the health server (no URL, no token). `ok` is false when the last
        delivery to some target failed."""
        targets = [
            {
                "target": t.index,
                "format": t.config.format,
                "host": t.config.host,
                "min_severity": t.config.min_severity,
                "queued": len(t.queue),
                "sent": t.sent,
                "failed": t.failed,
                "dropped": t.dropped,
                "retries": t.retries,
                "last_sent_at": t.last_sent_at.isoformat() if t.last_sent_at else None,
                "last_error": t.last_error,
            }
            for t in self._targets
        ]
        failing = [t.label for t in self._targets if t.last_ok is False]
        return {
            "ok": not failing,
            "detail": (
                f"last delivery failed: {', '.join(failing)}"
                if failing
                else ("no targets configured" if not self._targets else "ok")
            ),
            "enabled": bool(self._targets),
            "running": self._running,
            "alerts": self.alerts,
            "sent": self.sent,
            "failed": self.failed,
            "dropped": self.dropped,
            "suppressed": self.suppressed,
            "firing": self.firing(),
            "targets": targets,
        }


async def _short_body(resp: aiohttp.ClientResponse, limit: int = 200) -> str:
    try:
        raw = await resp.content.read(2048)
    except Exception:
        return "(body unreadable)"
    text = " ".join(raw.decode("utf-8", "replace").split())
    return _clip(text, limit) or "(empty body)"


def _loopback_host(host: str) -> bool:
    """Whether `host` ("name[:port]", as `_url_parts` gives it) is this machine, read as an
    address (`core.endpoints.is_loopback`): "127." as a prefix passed 127.0.0.1.nip.io, a name
    anyone can point anywhere, as loopback, so its plain-HTTP webhook went unwarned."""
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    return is_loopback(name)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"
