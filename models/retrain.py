"""Safe retraining: train on a rolling window, publish only a model that clears the floor.

Layout under a model root (default `var/models` under the working directory: never inside the
source tree or the installed package):

    root/versions/<model_version>/   card.json + both ONNX files, never modified once written
    root/current -> versions/<v>     a symlink, replaced atomically (rename over the old link)

A candidate is trained into `versions/.staging-*`; it is published (renamed into `versions/`
and `current` switched in one `os.replace`) only if its test metrics (`metrics.test`: the
windows held out of early stopping and calibration) beat the floor. Otherwise the current
model stays and the rejection is logged with the numbers. A card without a test split
(trained before there was one) is judged on its validation metrics, said so. A daemon whose
ML plugin points at `root/current` (an empty `model_dir` means `var/models/current` when it
exists) picks the new version up at its next bar. Old versions beyond `keep` are removed
(bounded disk), oldest published first by their cards' `created_at`, never the current one
nor the one it replaced (the rollback target); a folder that is not a version retrain
published (its name is not its card's `model_version`) is left alone, and said.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from numbers import Integral
from pathlib import Path
from typing import Any

import structlog

from tradingd.config import Config
from tradingd.core.errors import ConfigError
from tradingd.feeds.panel import FIELDS, Panel
from tradingd.inference.onnx import DEFAULT_MODEL_ROOT

from .config import ModelConfig
from .training import process_umask, train

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RetrainPolicy:
    window_bars: int = 1260  # about five years of daily bars
    min_directional_accuracy: float = 0.5
    # The ensemble's test MSE may exceed the zero forecast's by at most this factor.
    max_mse_ratio: float = 1.05
    keep: int = 5

    def __post_init__(self) -> None:
        """Refused here, as `tradingd retrain` options: a window of 0 bars slices the whole
        history (`times[-0:]`), a negative one all but its first bars, and a floor outside
        these ranges, or NaN, lets every model through or none, without a word."""
        w = self.window_bars
        if isinstance(w, bool) or not isinstance(w, Integral) or w < 1:
            raise ConfigError(
                f"retrain window_bars (--window-bars) must be a whole number >= 1 "
                f"(the latest bars to train on), got {w!r}"
            )
        if not 0 <= self.min_directional_accuracy <= 1:
            raise ConfigError(
                "retrain min_directional_accuracy (--min-directional-accuracy) must be in "
                f"[0, 1] (a share of the test windows), got {self.min_directional_accuracy!r}"
            )
        if isinstance(self.keep, bool) or not isinstance(self.keep, Integral) or self.keep < 1:
            raise ConfigError(
                f"retrain keep must be a whole number >= 1 (versions kept), got {self.keep!r}"
            )
        if not self.max_mse_ratio > 0:
            raise ConfigError(
                "retrain max_mse_ratio (--max-mse-ratio) must be > 0 (the ensemble's test MSE "
                f"over the zero forecast's), got {self.max_mse_ratio!r}"
            )


@dataclass(frozen=True)
class RetrainOutcome:
    published: bool
    version: str
    reason: str
    metrics: dict[str, Any]  # of the split the gate judged
    judged_on: str = "test"  # that split: "test", or "validation" for a card without one


def _current_card(root: Path) -> dict[str, Any] | None:
    """The card of `root/current` (None when there is none or it cannot be read)."""
    path = root / "current" / "card.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _model_config_of(card: Mapping[str, Any]) -> ModelConfig | None:
    """The hyperparameters a card was trained with (its `model_config`), or None."""
    raw = card.get("model_config")
    if not isinstance(raw, Mapping):
        return None
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    values = {k: v for k, v in raw.items() if k in known}
    if isinstance(values.get("ensemble_weights"), list):
        values["ensemble_weights"] = tuple(values["ensemble_weights"])
    try:
        mc = ModelConfig(**values)
    except (TypeError, ValueError) as exc:
        log.warning("model.retrain.current_config_unreadable", error=str(exc))
        return None
    log.info("model.retrain.hyperparameters", source="the current model's card")
    return mc


def _same_shape(candidate: Mapping[str, Any], current: Mapping[str, Any]) -> tuple[bool, str]:
    """A candidate a running daemon can take up: the current model's window and feature
    set. Another one is not published: the daemon would refuse it (model.reload_refused)
    and keep its model, while `current` named the new one, and a restart would then change
    model without a word."""
    for key in ("window", "feature_set"):
        if candidate.get(key) != current.get(key):
            return False, (
                f"the candidate's {key} ({candidate.get(key)!r}) differs from the current "
                f"model's ({current.get(key)!r}): a running daemon would refuse it; publish "
                "into another --root, or remove the current link first"
            )
    return True, ""


def current_version(root: Path) -> str | None:
    link = root / "current"
    return Path(os.readlink(link)).name if link.is_symlink() else None


def judged_split(card: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The split the gate judges and its metrics: the held-out test split's; a card without
    one (trained before the split existed) its validation metrics, which flatter it (those
    windows early-stopped and calibrated the model)."""
    found = card["metrics"]
    if isinstance(found.get("test"), Mapping):
        return "test", found["test"]
    return "validation", found["validation"]


def gate(card: dict[str, Any], policy: RetrainPolicy) -> tuple[bool, str]:
    """Whether the candidate clears the floor, and why, naming the split judged: the test
    split. The validation windows chose the CNN's early-stopping epoch and the confidence
    calibration, so a gate on them published on optimistic numbers."""
    split, judged = judged_split(card)
    said = "test split"
    if split != "test":
        said = (
            "validation split (the card has no test split; its validation windows "
            "early-stopped and calibrated the model)"
        )
        log.warning(
            "model.retrain.no_test_split",
            version=card.get("model_version"),
            judged_on=split,
            rule="a card without a held-out test split (trained before it existed) is judged "
            "on its validation metrics, measured on the windows that tuned the model",
        )
    ens, zero = judged["ensemble"], judged["zero"]
    da = ens["directional_accuracy"]
    if not da >= policy.min_directional_accuracy:
        return False, (
            f"{said}: directional accuracy {da:.4f} below the floor "
            f"{policy.min_directional_accuracy:.4f}"
        )
    ratio = ens["mse"] / zero["mse"] if zero["mse"] > 0 else float("inf")
    if not ratio <= policy.max_mse_ratio:
        return False, (
            f"{said}: MSE {ratio:.3f}x the zero forecast's (limit {policy.max_mse_ratio})"
        )
    return True, f"{said}: directional accuracy {da:.4f}, MSE {ratio:.3f}x the zero forecast's"


def retrain(
    config: Config,
    panel: Panel,
    root: str | Path = DEFAULT_MODEL_ROOT,
    policy: RetrainPolicy | None = None,
    model_config: ModelConfig | None = None,
) -> RetrainOutcome:
    policy = policy or RetrainPolicy()
    root = Path(root)
    _check_current(root)
    replaced = current_version(root)
    versions = root / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    current = _current_card(root)
    if model_config is None and current is not None:
        # The current model's hyperparameters, not the specification's defaults: a model
        # trained with another window was published, and a running daemon refused it.
        model_config = _model_config_of(current)
    rolling = (
        panel
        if len(panel.times) <= policy.window_bars
        else Panel(
            panel.times[-policy.window_bars :],
            panel.symbols,
            *(getattr(panel, f)[-policy.window_bars :] for f in FIELDS),
        )
    )
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=versions))
    try:
        # The rolling window is the training span: run.start (when a daemon's run began
        # trading) does not cut it.
        card = train(
            config,
            rolling,
            staging,
            model_config,
            # Each step and epoch as an info line: a retrain of minutes said nothing
            # between its start and its verdict (8 silent minutes under systemd).
            log=lambda m: log.info("model.retrain.progress", step=m),
            from_run_start=False,
            staging=True,
        )
        ok, reason = gate(card, policy)
        version = card["model_version"]
        split, metrics = judged_split(card)
        if ok and current is not None:
            ok, why = _same_shape(card, current)
            reason = why or reason
        if not ok:
            log.warning(
                "model.retrain.rejected",
                version=version,
                reason=reason,
                current=current_version(root),
                judged_on=split,
                metrics=metrics,
            )
            return RetrainOutcome(False, version, reason, metrics, split)
        final = versions / version
        if final.exists():
            shutil.rmtree(staging)
        else:
            # mkdtemp makes its folder 0700 whatever the umask: a daemon running as another
            # user (the service's) could not read the published model, where `tradingd
            # train`'s folders follow the umask.
            os.chmod(staging, 0o777 & ~process_umask())
            os.replace(staging, final)
        _point_current(root, final)
        log.info(
            "model.retrain.published",
            version=version,
            reason=reason,
            judged_on=split,
            metrics=metrics,
        )
        _prune(versions, root, policy.keep, replaced)
        return RetrainOutcome(True, version, reason, metrics, split)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _check_current(root: Path) -> None:
    """`root/current` must be the link retrain switches, or absent. A folder there (what
    `tradingd train --out var/models/current` makes) cannot be replaced by a link in one
    rename: the publish failed with an IsADirectoryError traceback after the whole
    training, leaving a stray link, and the weekly timer failed the same way every week."""
    current = root / "current"
    if current.exists() and not current.is_symlink():
        raise ConfigError(
            f"{current} is a {'folder' if current.is_dir() else 'file'}, not the link "
            "`tradingd retrain` publishes by switching: move it to "
            f"{root / 'versions' / '<name>'} and link it (ln -s versions/<name> "
            f"{current}), or point retrain at another model root"
        )


def _point_current(root: Path, target: Path) -> None:
    tmp = root / f".current-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(os.path.relpath(target, root), tmp)
    try:
        os.replace(tmp, root / "current")  # atomic: readers see the old or the new
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def _prune(versions: Path, root: Path, keep: int, replaced: str | None = None) -> None:
    """Remove the published versions beyond the newest `keep`, oldest first by their cards'
    `created_at` (when retrain wrote them): never the current one nor `replaced`, the one
    the publish replaced (the rollback target). By modification time, a publish with keep =
    5 deleted the rollback target and kept newer hand-made or touched folders. A folder that
    is not a version retrain published (a card whose `model_version` is its name) is left
    alone, named in one line (`model.retrain.prune_skipped`)."""
    current = current_version(root)
    published: list[tuple[str, str, Path]] = []
    other: list[str] = []
    for d in versions.iterdir():
        if not d.is_dir() or d.name.startswith("."):
            continue
        created = _published_at(d)
        if created is None:
            other.append(d.name)
        else:
            published.append((created, d.name, d))
    published.sort(reverse=True)
    removed = []
    for _, name, d in published[keep:]:
        if name not in (current, replaced):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(name)
    if removed:
        log.info("model.retrain.pruned", removed=sorted(removed), keep=keep)
    if other:
        log.info(
            "model.retrain.prune_skipped",
            folders=sorted(other),
            root=str(versions),
            rule="not versions retrain published (no card whose model_version is the "
            "folder's name): never removed by retrain's keep; remove them by hand if unused",
        )


def _published_at(folder: Path) -> str | None:
    """The card's `created_at` of a version folder retrain published (`versions/<v>` with a
    card whose `model_version` is `<v>`), None for any other folder."""
    try:
        card = json.loads((folder / "card.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(card, dict) or card.get("model_version") != folder.name:
        return None
    created = card.get("created_at")
    if not isinstance(created, str):
        return None
    try:
        return datetime.fromisoformat(created).astimezone(UTC).isoformat()
    except ValueError:
        return None
