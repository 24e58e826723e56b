"""Which stored live run a `tradingd run` start continues.

A live run's id hashes its configuration (`app.run_id_for`), so that a restart of the same
configuration continues the same run: its simulated account, its operator's pause, its
kill switches, its order ids. But a SIGHUP applies new risk limits to the running run, and
the next restart then derived another id from the same file and began afresh: the
simulated cash from the start, a pause lost, trading resumed. An upgrade that adds a setting
(at its default) did the same to every deployed run. So a start looks at the stored live runs
of the same name whose configuration differs from this one only in settings that do not
define a run (below), and continues the one of them that was active last (its checkpoint
written last) under its own id, saying so (`run.continued`, with the keys that differ) when
that is not the id its configuration derives.

What does not define a live run:
* the sections that never did (`health`, `log`, `cache`, `alerts`: see `app.run_id_for`)
  and `storage` (the run is looked up in this store; how it is written is not what it is);
* a risk plugin's `params` (not its name or place in the chain): SIGHUP applies them to the
  running run, so a restart must not part them from it;
* where the run's files go, pacing and timeouts (`OPERATIONAL_KEYS`, and a plugin's cache
  folder, `config.CACHE_PARAMS`; a demo's
  `live.bars_per_second` while it stays above 0);
* a setting the stored configuration does not have (written by an earlier build) whose value
  here is the default.

Everything else (symbols, data, costs, plugins and their order, models, features, the
broker's base URL and fill rules, initial capital, the live bar and calendar) still makes a
new run, which `Engine._warn_if_not_continuing` announces. `run.run_id` set explicitly is
used as it is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from .config import CACHE_PARAMS, Config
from .reload import flatten

log = structlog.get_logger(__name__)

# Sections whose every key leaves the run as it is.
_SECTIONS = frozenset({"health", "log", "cache", "alerts", "storage"})
# Single settings that leave the run as it is: where files go, pacing, timeouts, retries.
OPERATIONAL_KEYS = frozenset(
    {
        "run.output_dir",
        "live.heartbeat_s",
        "live.reconcile_interval_s",
        "live.reconcile_confirm_s",
        "live.delay_s",
        "orders.retry_attempts",
        "orders.retry_delay_s",
        "broker.alpaca.stream_url",
        "broker.alpaca.stream_enabled",
        "broker.alpaca.poll_interval_s",
        "broker.alpaca.open_orders_check_s",
        "broker.alpaca.request_timeout_s",
        "broker.alpaca.call_timeout_s",
        "broker.alpaca.max_attempts",
        "broker.alpaca.rate_limit_per_minute",
        "broker.alpaca.rate_limit_burst",
        "broker.alpaca.max_in_flight",
        "feed.alpaca.max_symbols_per_request",
    }
)
_RISK_PARAMS = re.compile(r"risk\[\d+\]\.params(\..*)?")
# A plugin's cache folder (`config.CACHE_PARAMS`): where its files go, like the cache section.
_CACHE_PARAM = re.compile(
    r"(signals\[\d+\]|sizing|risk\[\d+\])\.params\.(" + "|".join(sorted(CACHE_PARAMS)) + ")"
)
_FEED_CALL = re.compile(r"feed\.[a-z_]+\.call(\..*)?")


@dataclass(frozen=True)
class StoredLiveRun:
    run_id: str
    config_json: str | None


def defines_the_run(key: str) -> bool:
    """Whether a change of `key` (a dotted path of `reload.changed_keys`' form) makes
    another live run."""
    section = re.split(r"[.\[#]", key, maxsplit=1)[0]
    if section in _SECTIONS or key in OPERATIONAL_KEYS:
        return False
    return not (
        _RISK_PARAMS.fullmatch(key) or _FEED_CALL.fullmatch(key) or _CACHE_PARAM.fullmatch(key)
    )


def _paced(value: Any) -> bool:
    return isinstance(value, int | float) and value > 0


def _change_defines_the_run(key: str, old: Any, new: Any) -> bool:
    if key == "live.bars_per_second":
        # Pacing while both replay recorded bars (> 0); from or to 0 the clock changes
        # between the real one and a replay of run.start..run.end, which ends the run.
        return _paced(old) != _paced(new)
    return defines_the_run(key)


def differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> tuple[bool, list[str]]:
    """(whether `current` continues the run stored with `stored`, the keys that differ).
    Both are public configurations as stored (`Config.to_public_json`, parsed)."""
    a, b = flatten(dict(stored)), flatten(dict(current))
    defaults = flatten(json.loads(Config().to_public_json()))
    keys = [*a, *(k for k in b if k not in a)]
    missing = object()
    differ: list[str] = []
    continues = True
    for k in keys:
        old, new = a.get(k, missing), b.get(k, missing)
        if old == new:
            continue
        # A setting this build added, at its default. Not a plugin's params: the user
        # writes those, and the default config's plugin in that place may be another.
        added = old is missing and ".params" not in k and k in defaults
        if added and new == defaults[k]:
            continue
        differ.append(k)
        if _change_defines_the_run(k, old, new):
            continues = False
    return continues, differ


def choose(
    config: Config, derived: str, stored: Sequence[StoredLiveRun]
) -> tuple[str | None, list[str]]:
    """The id of the stored run that this start continues instead of `derived`, and the
    keys in which its configuration differs: of the runs in `stored` (the least recently
    active first) that fit, the one active last, which is what the daemon was running.
    (None, []) when that is the derived run itself (a plain restart) or none fits (a new
    run). The derived run does not win by its id alone: an operator who went back from a
    run begun by a changed file (before runs were continued) to the earlier one, through
    `run.run_id` or the earlier file, keeps the earlier one."""
    current = json.loads(config.to_public_json())
    for r in reversed(stored):  # the most recently active first
        if r.run_id == derived:
            return None, []  # its config hashes as this one: it fits
        if not r.config_json:
            continue
        try:
            saved = json.loads(r.config_json)
        except ValueError:
            continue
        if not isinstance(saved, Mapping):
            continue
        ok, differ = differences(saved, current)
        if ok:
            return r.run_id, differ
    return None, []


async def continued_run_id(config: Config, derived: str, store: Any) -> str | None:
    """The id this live start runs under when it is not `derived` (see `choose`), read
    from `store` (started); logs `run.continued` when it continues another."""
    if config.run.run_id:
        return None
    name = config.run.name
    shape = re.compile(re.escape(f"{name}-live-") + r"[0-9a-f]{10}")
    rows = await store.live_run_configs(f"{name}-live-")
    stored = [StoredLiveRun(str(i), c) for i, c in rows if shape.fullmatch(str(i))]
    chosen, differ = choose(config, derived, stored)
    if chosen is not None:
        log.info(
            "run.continued",
            run_id=chosen,
            instead_of=derived,
            differing=differ,
            detail="the configuration differs from the stored run's only in settings that "
            "do not define a run (risk limits, timeouts, storage, ...): it continues",
        )
    return chosen
