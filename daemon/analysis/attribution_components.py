"""The components of a run's signal: how the engine's pipeline names them (a signal plugin,
or a factor group of a plugin that reports its groups) and how a combined score splits into
their signed contributions (`score_contributions`). Pure math on scores, shared by the
replay's recorder, the PnL ledger's check of a decision and the counterfactual runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..core.ports import BarContext
    from ..engine.engine import Pipeline

__all__ = ["score_contributions"]

# A decision's components must add up to the engine's combined score to this tolerance
# (the engine divides by the sum of weights in another order: a few ulps).
_SCORE_TOL = 1e-9


def score_contributions(
    scores: Mapping[str, Any],
    weights: Mapping[str, float],
    parts: Mapping[str, Mapping[str, Any] | None] | None = None,
) -> dict[str, np.ndarray]:
    """Each component's signed contribution to the engine's combined score, per symbol.

    `scores`: plugin -> (N,) score (NaN = no view); `weights`: plugin -> its signal weight;
    `parts`: plugin -> {group: (N,) weighted group sum} for plugins whose score is a
    function of a weighted sum of groups (multi_factor: score = tanh(sum / scale)).

    The combined score is the engine's weighted mean over the plugins with a view,
    S = sum_p w_p s_p / sum_{p with a view} w_p, so plugin p contributes w_p s_p / den. A
    grouped plugin's contribution is shared among its groups in proportion to their part
    of the sum x = sum_g part_g: contribution x part_g / x (tanh and the cross-sectional
    rank are not linear, so this is the only split that keeps the groups' signs and adds up
    to the plugin's score). Where x = 0 the score is 0 for tanh (every group gets 0); a
    nonzero score there (rank output) has no split: NaN. The result adds up to S wherever S
    is defined, and is 0 where no plugin has a view."""
    if not scores:
        raise ValueError("score_contributions needs at least one plugin's scores")
    unknown = sorted(set(scores) - set(weights))
    if unknown:
        raise ValueError(f"no weight for plugin(s) {', '.join(unknown)}")
    arrays = {p: np.asarray(s, dtype=float).ravel() for p, s in scores.items()}
    n = {a.size for a in arrays.values()}
    if len(n) != 1:
        raise ValueError(
            f"plugin scores differ in length: { {p: a.size for p, a in arrays.items()} }"
        )
    size = n.pop()
    den = np.zeros(size)
    for p, s in arrays.items():
        w = float(weights[p])
        if not (math.isfinite(w) and w > 0):
            raise ValueError(f"the weight of plugin {p!r} must be finite and > 0, got {w!r}")
        den += np.where(np.isnan(s), 0.0, w)
    out: dict[str, np.ndarray] = {}
    for p, s in arrays.items():
        with np.errstate(invalid="ignore", divide="ignore"):
            part = np.where(~np.isnan(s) & (den > 0), float(weights[p]) * s / den, 0.0)
        groups = (parts or {}).get(p)
        if not groups:
            out[p] = part
            continue
        g_arrays = {g: np.asarray(v, dtype=float).ravel() for g, v in groups.items()}
        if any(v.size != size for v in g_arrays.values()):
            raise ValueError(f"plugin {p!r}: group parts differ in length from its scores")
        x = np.zeros(size)
        for v in g_arrays.values():
            x = x + v
        for g, v in g_arrays.items():
            with np.errstate(invalid="ignore", divide="ignore"):
                share = np.where(x != 0, part * v / x, np.where(part == 0, 0.0, np.nan))
            out[f"{p}.{g}"] = share
    return out


def _group_parts(plugin: Any, ctx: BarContext) -> dict[str, np.ndarray] | None:
    """The weighted group sums of a plugin that exposes them (multi_factor's
    `group_scores` and `groups`: group -> (group weight, factor weights)), else None."""
    if not _grouped(plugin):
        return None
    groups = plugin.groups
    return {
        g: float(groups[g][0]) * np.asarray(v, dtype=float)
        for g, v in plugin.group_scores(ctx).items()
    }


def _grouped(plugin: Any) -> bool:
    return callable(getattr(plugin, "group_scores", None)) and isinstance(
        getattr(plugin, "groups", None), Mapping
    )


def _components_of(
    pipeline: Pipeline, split_groups: bool
) -> tuple[list[str], list[str], dict[str, float]]:
    """(a label per signal plugin: its name, with "#2", "#3" for a name configured again;
    the components; label -> signal weight)."""
    labels: list[str] = []
    names: list[str] = []
    weights: dict[str, float] = {}
    for plugin, weight in pipeline.signals:
        label, k = plugin.name, 1
        while label in weights:
            k += 1
            label = f"{plugin.name}#{k}"
        labels.append(label)
        weights[label] = float(weight)
        if split_groups and _grouped(plugin):
            names.extend(f"{label}.{g}" for g in plugin.groups)  # type: ignore[attr-defined]
        else:
            names.append(label)
    return labels, names, weights
