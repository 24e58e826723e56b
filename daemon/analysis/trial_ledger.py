"""The trial ledger: a line per finished backtest beside the run folders, so the variants a
rerun under the same run id replaced still count as tried (`trials.count_trials`). Apart
from `trials`, which reads run folders with pandas: a backtest writes a line at its end,
and a rerun of one imports neither."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from .return_metrics import simple_returns

__all__ = [
    "DEFAULT_IGNORED_CONFIG",
    "HASH_VERSION",
    "TRIALS_LEDGER",
    "config_hash",
    "ledger_entries",
    "legacy_config_hash",
    "record_trial",
    "variant_settings",
]

log = structlog.get_logger(__name__)

# Beside the run folders: a line per finished backtest. A rerun under the same run id
# replaces its folder, and with it the record that the earlier variant was tried.
TRIALS_LEDGER = ".trials.jsonl"

# Parts of a run's config.json that do not make it another strategy variant: where it is
# written, its name, the database, caches, logs, alerts, health port and live-only settings.
DEFAULT_IGNORED_CONFIG: tuple[str, ...] = (
    "run.name",
    "run.run_id",
    "run.output_dir",
    "storage",
    "cache",
    "log",
    "alerts",
    "health",
    "live",
)


def _drop(tree: dict[str, Any], dotted: str) -> None:
    parts = dotted.split(".")
    node: Any = tree
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(parts[-1], None)


# The scheme of the ledger's `config_hash`: lines without it hold `legacy_config_hash`es.
HASH_VERSION = 2

# A plugin's place in a list beyond the default list's length: its weight's default.
_PLUGIN_FIELD = re.compile(r"(signals|risk)\[\d+\]\.weight")


def _tree(config: Mapping[str, Any], ignore: Iterable[str]) -> dict[str, Any]:
    tree = json.loads(json.dumps(dict(config), sort_keys=True, default=str))
    for key in ignore:
        _drop(tree, key)
    return tree


def _digest(tree: Any) -> str:
    text = json.dumps(tree, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.cache
def _defaults() -> dict[str, Any]:
    from ..config import Config
    from ..reload import flatten

    return flatten(json.loads(Config().to_public_json()))


def variant_settings(
    config: Mapping[str, Any], ignore: Iterable[str] = DEFAULT_IGNORED_CONFIG
) -> dict[str, Any]:
    """The settings (dotted, `reload.flatten`'s form) that make `config` the variant it is:
    those not at this build's default. A build that adds a setting at its default writes it
    into every later config.json, and the old records lack it: hashing the whole file made
    the same strategy two trials after each upgrade. A setting a config lacks is at its
    default, as `run_continuation.differences` treats one for a live run; a setting whose
    default changed between builds still differs (the run behaves otherwise). A plugin's
    params are kept whole: the default config's plugin in that place may be another."""
    from ..reload import flatten

    defaults = _defaults()
    out: dict[str, Any] = {}
    for key, value in flatten(_tree(config, ignore)).items():
        if ".params" not in key:
            if key in defaults:
                if value == defaults[key]:
                    continue
            elif _PLUGIN_FIELD.fullmatch(key) and value == 1.0:
                continue
        out[key] = value
    return out


def config_hash(config: Mapping[str, Any], ignore: Iterable[str] = DEFAULT_IGNORED_CONFIG) -> str:
    """A run configuration's identity as a strategy variant: sha256 of the canonical JSON of
    its `variant_settings` (without the `ignore`d keys, dotted paths, that do not change
    what the run decides)."""
    return _digest(variant_settings(config, ignore))


def legacy_config_hash(
    config: Mapping[str, Any], ignore: Iterable[str] = DEFAULT_IGNORED_CONFIG
) -> str:
    """The hash ledger lines written before HASH_VERSION 2 hold: of the whole config.json
    (without the `ignore`d keys). Only to tell which folder such a line names."""
    return _digest(_tree(config, ignore))


def record_trial(
    runs_root: str | Path,
    run_id: str,
    config: Mapping[str, Any],
    equity: Any,
    initial_capital: float,
) -> None:
    """Note a finished run in `runs_root`'s ledger, for `count_trials`: its variant
    (`config_hash`) and its per-bar returns' count, mean and standard deviation (a Sharpe
    ratio at any risk-free rate). Five momentum lookbacks run one after the other under one
    `run.run_id` left one folder, and the deflated Sharpe counted 1 trial, not 5. A line is
    added once per run id and variant, so reruns of one configuration do not grow it."""
    root = Path(runs_root)
    key = config_hash(config)
    ledger = root / TRIALS_LEDGER
    for entry in ledger_entries(ledger):
        if (
            entry.get("run_id") == run_id
            and entry.get("config_hash") == key
            and entry.get("hash_version") == HASH_VERSION
        ):
            return
    r = simple_returns(equity, initial_capital)
    stats: dict[str, Any] = {"bars": int(r.size), "mean": None, "std": None}
    if r.size >= 3 and np.all(np.isfinite(r)):
        stats["mean"], stats["std"] = float(np.mean(r)), float(np.std(r, ddof=1))
    line = json.dumps(
        {"run_id": run_id, "config_hash": key, "hash_version": HASH_VERSION, **stats},
        sort_keys=True,
    )
    with ledger.open("a", encoding="utf-8") as fh:
        fh.write(line + "\n")


def ledger_entries(path: Path) -> list[dict[str, Any]]:
    """The ledger's entries; a line that is not an entry (a write cut by a full disk) is
    skipped, said once."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    out, bad = [], 0
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            entry = None
        if isinstance(entry, dict) and isinstance(entry.get("config_hash"), str):
            out.append(entry)
        elif line.strip():
            bad += 1
    if bad:
        log.warning("trials.ledger_lines_skipped", file=str(path), lines=bad)
    return out
