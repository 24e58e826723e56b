"""How many strategy variants were tried, from the run records: a configuration's identity
as a variant (`config_hash`) and the count of distinct ones with the spread of their Sharpe
ratios (`count_trials`), which the deflated Sharpe ratio needs. Reads run folders, so it is
apart from the pure tests.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from .return_metrics import per_bar_rate, simple_returns
from .run_records import WALKFORWARD_FILE, _json_file, is_walkforward_folder, record_folder
from .stat_common import _clean
from .trial_ledger import (
    DEFAULT_IGNORED_CONFIG,
    HASH_VERSION,
    TRIALS_LEDGER,
    config_hash,
    config_hash_v2,
    config_hash_v3,
    ledger_entries,
    legacy_config_hash,
    plugin_code_in,
    record_trial,
)

__all__ = [
    "DEFAULT_IGNORED_CONFIG",
    "TRIALS_LEDGER",
    "TrialCount",
    "config_hash",
    "count_trials",
    "record_trial",
]

_NAN = math.nan

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class TrialCount:
    """The strategy variants the run records show: distinct configurations, each with the
    annualised Sharpe ratio of its first run (sorted by folder name) that has an equity
    curve. `walkforward_folders`: the walk-forward results folders under the root, which
    are not counted (`count_trials`)."""

    root: str
    runs: int
    configs: Mapping[str, tuple[str, ...]]
    sharpe_ratios: Mapping[str, float]
    walkforward_folders: tuple[str, ...] = ()

    @property
    def trials(self) -> int:
        return len(self.configs)

    @property
    def sharpe_variance(self) -> float:
        """Sample variance (ddof = 1) of the variants' annualised Sharpe ratios (NaN for
        fewer than two)."""
        s = np.array([v for v in self.sharpe_ratios.values() if math.isfinite(v)])
        return float(np.var(s, ddof=1)) if s.size >= 2 else _NAN

    def as_dict(self) -> dict[str, Any]:
        return _clean(
            {
                "root": self.root,
                "runs": self.runs,
                "trials": self.trials,
                "sharpe_variance": self.sharpe_variance,
                "configs": {k: list(v) for k, v in self.configs.items()},
                "sharpe_ratios": dict(self.sharpe_ratios),
                "walkforward_folders": list(self.walkforward_folders),
            }
        )


def _skipped(folder: Path, why: str) -> None:
    """A folder that is no run record is no trial: said, since a stray notes folder beside
    the runs turned the deflated Sharpe ratio's verdict (one more trial) or stopped every
    report under the root (an error)."""
    log.warning("trials.folder_skipped", folder=str(folder), reason=why, counted=False)


def _summary(folder: Path) -> dict[str, Any]:
    """A run folder's summary.json ({} without one). ValueError naming the file for one that
    cannot be read (`_json_file`): read as {}, it said silently that the run decided from
    no model and no other input, and counted it as a rerun of its config's variant."""
    file = folder / "summary.json"
    return _json_file(file) if file.exists() else {}


def models_of(folder: Path) -> list[str]:
    """The versions of the models a run folder's run loaded (its summary's `models`); none
    when the summary says none. What hash_version 3 counted by. ValueError for a summary
    that cannot be read (`_summary`)."""
    models = _summary(folder).get("models")
    if not isinstance(models, list):
        return []
    return [str(m.get("version")) for m in models if isinstance(m, dict)]


def run_inputs_of(folder: Path) -> list[Any]:
    """What a run folder's plugins decided from besides their params (its summary's
    `run_inputs`: the list its run id hashed); none when the summary says none or was
    written before summaries kept them (its models' versions then stand in: `models_of`,
    under their own key). ValueError for a summary that cannot be read (`_summary`)."""
    summary = _summary(folder)
    inputs = summary.get("run_inputs")
    if isinstance(inputs, list):
        return inputs
    versions = models_of(folder)
    return [{"versions": versions}] if versions else []


def count_trials(
    runs_root: str | Path,
    *,
    risk_free_rate: float = 0.02,
    periods_per_year: float = 252.0,
    ignore: Iterable[str] = DEFAULT_IGNORED_CONFIG,
) -> TrialCount:
    """Count the strategy variants tried from the run folders under `runs_root` (as
    `tradingd backtest` writes them: `<root>/<run_id>/config.json`, `equity.csv`,
    `summary.json`). Folders with the same `config_hash` are reruns of one variant; a folder
    without config.json, or whose config.json cannot be read (`trials.config_unread`), or
    its summary.json (`trials.summary_unread`: the models it ran are unknown), counts as its
    own variant (by its run id): one trial too many makes the deflated Sharpe ratio
    stricter, one too few laxer. A folder with neither summary.json nor equity.csv is
    no run record and no trial; one with a config.json is said (`trials.folder_skipped`),
    not an error, which stopped the report of every run beside it. A walk-forward's results
    folder (`is_walkforward_folder`: `tradingd walkforward` writes them under
    `run.output_dir` too) is no trial either: it tests a variant, but its stitched
    out-of-sample curve is no backtest of it (each fold's parameters were refitted), so
    neither its own variant nor a Sharpe ratio of one; those left out are listed
    (`walkforward_folders`) and said in one line (`trials.walkforward_skipped`). The root's ledger
    (`record_trial`) adds the variants whose folders a rerun under their run id replaced,
    and a folder's own ledger (an --output folder's) those a rerun into it replaced.
    A ledger line of an earlier scheme (no hash_version: the whole file's hash; version 2:
    `config_hash_v2`; version 3: `config_hash_v3`, models by version; version 4: without
    the plugins' code) names a folder's variant when a folder's config hashed so, else a
    replaced one of its own. A folder's third-party plugins' code (its environment.json:
    `plugin_code_in`) is part of its variant; one whose environment.json cannot be read
    (`trials.environment_unread`) counts as its own variant."""
    root = Path(runs_root)
    if not root.is_dir():
        raise ValueError(f"runs root {str(root)!r} is not a folder")
    ignore = tuple(ignore)
    configs: dict[str, list[str]] = {}
    # A folder's hashes of earlier schemes (old ledger lines: the whole file's, version 2's):
    # its key.
    legacy: dict[str, str] = {}
    v2: dict[str, str] = {}
    v3: dict[str, str] = {}
    v4: dict[str, str] = {}
    without_models: dict[str, str] = {}
    runs = 0
    walkforward: list[str] = []
    subfolders = sorted(p for p in root.iterdir() if p.is_dir())
    for folder in subfolders:
        if is_walkforward_folder(folder):
            walkforward.append(folder.name)
            continue
        cfg_file = folder / "config.json"
        if not ((folder / "summary.json").exists() or (folder / "equity.csv").exists()):
            if cfg_file.exists():
                _skipped(folder, "a config.json without summary.json or equity.csv: no run record")
            continue  # not a run record
        cfg = None
        if cfg_file.exists():
            try:
                cfg = _json_file(cfg_file)
            except ValueError as exc:  # as one without a config.json is
                _own_variant("trials.config_unread", folder, exc)
        inputs: list[Any] = []
        models: list[str] = []
        if cfg is not None:
            try:
                inputs, models = run_inputs_of(folder), models_of(folder)
            except ValueError as exc:  # what it decided with besides its config (models)
                _own_variant("trials.summary_unread", folder, exc)
                cfg = None
        code: list[dict[str, Any]] = []
        if cfg is not None:
            try:
                code = plugin_code_in(folder)
            except ValueError as exc:  # the plugins' code it decided with
                _own_variant("trials.environment_unread", folder, exc)
                cfg = None
        if cfg is not None:
            key = config_hash(cfg, ignore, inputs, code)
            # A line written before the plugins' code was hashed names the rest.
            v4[config_hash(cfg, ignore, inputs)] = key
            v3[config_hash_v3(cfg, ignore, models)] = key
            # A line written before the models were hashed names the config alone.
            without_models[config_hash(cfg, ignore)] = key
            legacy[legacy_config_hash(cfg, ignore)] = key
            v2[config_hash_v2(cfg, ignore)] = key
        else:
            key = "run:" + folder.name
        runs += 1
        configs.setdefault(key, []).append(folder.name)
    rf_bar = per_bar_rate(risk_free_rate, periods_per_year)
    sharpes: dict[str, float] = {}
    default_ignore = ignore == DEFAULT_IGNORED_CONFIG
    # The root's ledger, and those inside its folders (an --output folder's own:
    # `backtest._note_trial`), each line once. Also a folder that holds no record now: its
    # lines are finished backtests (one whose rerun stopped early removed the record).
    ledgers = [root / TRIALS_LEDGER, *(f / TRIALS_LEDGER for f in subfolders)]
    entries = [e for ledger in ledgers if ledger.exists() for e in ledger_entries(ledger)]
    # A folder counted as a variant of its own (its config or summary unread) is the run its
    # ledger's last line for that run id notes: not a replaced variant besides it.
    own_last: dict[object, int] = {}
    for i, e in enumerate(entries):
        if f"run:{e.get('run_id')}" in configs:
            own_last[e.get("run_id")] = i
    skip = set(own_last.values())
    for i, entry in enumerate(entries if default_ignore else []):
        if i in skip:
            continue
        key = entry["config_hash"]
        version = entry.get("hash_version")
        if version == 4:
            key = v4.get(key, key)
        elif version == 3:
            key = v3.get(key) or without_models.get(key, key)
        elif version != HASH_VERSION:
            key = (v2 if version == 2 else legacy).get(key, key)
        if key in configs:
            continue  # a folder holds this variant (its Sharpe ratio is read from it)
        configs[key] = [f"{entry.get('run_id')} (folder replaced by a rerun)"]
        runs += 1
        mean, std = entry.get("mean"), entry.get("std")
        if isinstance(mean, int | float) and isinstance(std, int | float):
            sharpes[key] = (
                (float(mean) - rf_bar) / float(std) * math.sqrt(periods_per_year)
                if std > 0
                else _NAN
            )
    for key, folders in configs.items():
        if key in sharpes:
            continue
        for name in folders:
            if not (root / name / "equity.csv").exists():
                continue
            try:
                # The equity curve alone: a sibling's fills (its reading, their checks) are
                # not what its Sharpe ratio is made of.
                rec = record_folder(root / name, warn_unrestated=False, with_fills=False)
            except ValueError as exc:
                # Counted, but its Sharpe ratio is not in the variance: said, as the next
                # rerun of the variant (if any) stands in for it.
                log.warning("trials.sharpe_unread", folder=str(root / name), reason=str(exc))
                continue
            r = simple_returns(rec.equity, rec.initial_capital)
            if r.size >= 3 and np.all(np.isfinite(r)):
                x = r - rf_bar
                sd = float(np.std(x, ddof=1))
                sharpes[key] = (
                    float(np.mean(x)) / sd * math.sqrt(periods_per_year) if sd > 0 else _NAN
                )
            break
    if walkforward:
        # Once for all of them: one line per folder was noise in every report's log.
        log.info(
            "trials.walkforward_skipped",
            root=str(root),
            count=len(walkforward),
            folders=walkforward,
            marker=WALKFORWARD_FILE,
            counted=False,
        )
    return TrialCount(
        str(root),
        runs,
        {k: tuple(v) for k, v in configs.items()},
        sharpes,
        tuple(walkforward),
    )


def _own_variant(event: str, folder: Path, exc: ValueError) -> None:
    """A part of a record that cannot be read (its config, summary or environment): the
    record counts as a variant of its own. Counting one trial too many only makes the
    deflated Sharpe ratio stricter; skipping it made the verdict laxer."""
    log.warning(event, folder=str(folder), reason=str(exc), counted="as a variant of its own")
