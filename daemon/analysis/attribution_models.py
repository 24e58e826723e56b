"""The configuration a replay of a kept run record runs with: the record's run id, and the
models the record names rather than those the configuration loads now.

With `model_dir` empty the ML plugin loads `var/models/current`, which `tradingd retrain`
moves: the attribution's replay of a record made on an earlier model ran the current one and
ended in "not the same run", naming neither model. The record's summary keeps what each
plugin decided from besides its params (`summary.json` `run_inputs`, what its run id
hashed: `app.pipeline_run_inputs`), and the folder each model was loaded from
(`models[].path`, by `models[].signal`); a plugin class that can load such inputs again offers
`params_for_run_inputs(config, inputs, path)` (the params to change, none when its config
loads them now; ConfigError, naming both, when they are gone).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from ..core.errors import ConfigError
from .run_records import _json_file

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["refuse_other_data", "replay_config"]

log = structlog.get_logger(__name__)


def replay_config(config: Config, folder: Path) -> Config:
    """`config` as it must be to replay the record in `folder`: the record's run id (the
    one its orders carry), and each plugin whose recorded inputs differ from what it loads
    now pointed at the recorded ones. A record without a summary, or made before summaries
    kept the inputs, is replayed with `config` as it is (the comparison with the record then
    says whether it is the run). A damaged summary is a ValueError naming it, before the
    replay: read as none, the whole replay ran before reading the record named the file."""
    summary = _summary(folder)
    if summary is None:
        return config
    from ..app import plugin_specs

    specs = dict(plugin_specs(config))
    paths = {
        f"signals[{m['signal']}]": m.get("path")
        for m in summary.get("models") or ()
        if isinstance(m, Mapping) and isinstance(m.get("signal"), int)
    }
    for entry in summary.get("run_inputs") or ():
        if not isinstance(entry, Mapping):
            continue
        where, inputs = entry.get("plugin"), entry.get("inputs")
        if where not in specs or not isinstance(inputs, Mapping):
            continue
        spec = specs[where]
        changes = _params_for(spec, where, inputs, paths.get(where), folder)
        if changes:
            log.info(
                "attribution.recorded_inputs",
                plugin=where,
                name=spec.name,
                params=changes,
                rule="the replay loads what the record was made with (its model), not what "
                "the configuration loads now",
            )
            specs[where] = dataclasses.replace(spec, params={**spec.params, **changes})
    run_id = summary.get("run_id")
    return dataclasses.replace(
        config,
        signals=tuple(specs[f"signals[{i}]"] for i in range(len(config.signals))),
        sizing=specs["sizing"],
        risk=tuple(specs[f"risk[{i}]"] for i in range(len(config.risk))),
        run=dataclasses.replace(config.run, run_id=run_id)
        if isinstance(run_id, str)
        else config.run,
    )


def refuse_other_data(config: Config, folder: Path) -> None:
    """Refuse to replay the record in `folder` on data files other than those it ran on
    (its summary's `data` digest against the configured files' now), before the replay: a
    file edited or refreshed since the run replayed in full, then ended in "not the same
    run (another model version, config or data?)", not saying which. Nothing to compare (no
    summary, a record made before data digests, the bundled series, frames): the replay's
    comparison with the record says whether it is the run, as before."""
    from ..feeds.fingerprint import data_digest

    summary = _summary(folder)
    recorded = data_digest(summary.get("data")) if summary is not None else None
    if recorded is None or not recorded.startswith("sha256 "):
        return
    from ..app import data_fingerprint_of

    now = data_digest(data_fingerprint_of(config))
    if now is None or now == recorded:  # None: no file to hash, which the load names
        return
    raise ValueError(
        f"its data files are not those it ran on (the record's {recorded}; "
        f"{config.data.source} {config.data.path!r} now {now}): the replay would trade "
        "other bars; restore the files the run used (or point data.path at them), or "
        "report without --attribution"
    )


def _summary(folder: Path) -> Mapping[str, Any] | None:
    """The record's summary.json (`run_records._json_file`, which names the file, as reading
    the record does), None when it has none."""
    file = folder / "summary.json"
    if not file.exists():
        return None
    try:
        return _json_file(file)
    except ValueError as exc:
        raise ValueError(
            f"{exc}: the replay takes the run id and models from it (run the backtest again)"
        ) from None


def _params_for(
    spec: Any, where: str, inputs: Mapping[str, Any], path: Any, folder: Path
) -> dict[str, Any]:
    """The params `spec`'s plugin needs to load `inputs` again ({} when it cannot say)."""
    from ..config import build
    from ..engine.plugins import available

    ep = available().get(spec.name)
    try:
        cls: Any = ep.load() if ep is not None else None
    except Exception:  # the replay's build says what is wrong with the plugin
        return {}
    params_for = getattr(cls, "params_for_run_inputs", None)
    if not callable(params_for):
        return {}
    plugin_config = build(cls.Config, dict(spec.params), f"{where}.params")
    try:
        return dict(params_for(plugin_config, inputs, path if isinstance(path, str) else None))
    except ConfigError as exc:
        raise ConfigError(f"run {folder.name}: {where} ({spec.name}): {exc}") from None
