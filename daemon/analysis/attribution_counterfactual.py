"""The counterfactual view of attribution: the run again without each component in turn,
and each component's marginal return. Not additive, and it re-runs the whole backtest once
per component, so it is apart from the score decomposition (docs/ATTRIBUTION.md).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

from ..core.errors import ConfigError
from .attribution_components import _components_of
from .attribution_replay import _run

if TYPE_CHECKING:
    from ..config import Config
    from ..engine.engine import Engine
    from ..feeds.panel import Panel

__all__ = ["counterfactual_attribution"]

_NAN = math.nan


def _without(config: Config, component: str) -> Config:
    """`config` with one component removed: a whole signal plugin (the engine's weighted
    mean renormalises over the others) or one group of a grouped plugin (its group weight
    set to 0; the plugin renormalises over its other groups). Components are named as
    `_components_of` names them ("plugin", "plugin#2", "plugin.group")."""
    from ..config import PluginSpec

    label, _, group = component.partition(".")
    name, _, nth = label.partition("#")
    occurrence = int(nth) if nth else 1
    seen = 0
    out: list[PluginSpec] = []
    for spec in config.signals:
        if spec.name == name:
            seen += 1
            if seen == occurrence:
                if not group:
                    continue
                params = dict(spec.params)
                gw = dict(params.get("group_weights") or {})
                gw[group] = 0.0
                params["group_weights"] = gw
                spec = PluginSpec(spec.name, spec.weight, params)
        out.append(spec)
    if seen < occurrence:
        raise ValueError(f"no signal plugin {component!r} in the configuration")
    if not out:
        raise ValueError(f"{component!r} is the only signal: nothing is left without it")
    return dataclasses.replace(config, signals=tuple(out))


async def counterfactual_attribution(
    run_config: Config, *, panel: Panel | None = None, progress: bool = False
) -> dict[str, Any]:
    """A second view, not additive: the run again without each component in turn. A
    component's marginal return is the full run's total return minus the total return of
    the run without it. Interactions (sizing, risk limits, a slot taken by another
    position) make the marginals differ from the score decomposition and not add up to the
    total; a component that cannot be removed (the only signal, or the last group) is NaN
    with the reason."""
    from ..app import load_data

    panel = panel if panel is not None else load_data(run_config)

    def components(engine: Engine) -> list[str]:
        return _components_of(engine.pipeline, True)[1]

    _, (base, names), _ = await _run(run_config, panel, progress, components)
    cap = run_config.run.initial_capital
    full = base.equity[-1] / cap - 1.0 if base.equity else 0.0
    rows = []
    for name in names:
        row: dict[str, Any] = {
            "component": name,
            "return_without": _NAN,
            "marginal_return": _NAN,
            "note": "",
        }
        try:
            variant = _without(run_config, name)
            _, (res, _), _ = await _run(variant, panel, progress)
        except (ValueError, ConfigError) as exc:
            row["note"] = str(exc)
        else:
            without = res.equity[-1] / cap - 1.0 if res.equity else 0.0
            row["return_without"] = without
            row["marginal_return"] = full - without
        rows.append(row)
    return {"method": "counterfactual", "total_return": full, "rows": rows}
