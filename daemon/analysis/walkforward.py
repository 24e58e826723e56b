"""The specification's WalkForwardAnalyzer: retrain and replay fold after fold, stitch the
out-of-sample windows into one equity curve, report parameter stability and performance
decay (docs/WALKFORWARD.md).

    from tradingd.analysis.walkforward import WalkForwardAnalyzer, WalkForwardConfig

    wf = WalkForwardAnalyzer(config, WalkForwardConfig(train=252, test=63, step=21), workers=2)
    results = wf.run()                       # loads the configured data
    wf.write(results, "var/walkforward/x")   # JSON + CSV tables

Folds are independent tasks (`walkforward_run.run_fold`), run by `parallel.run_tasks`: in
worker processes, or on Ray with `ray_address`. `workers=0` runs them in this process.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd
import structlog

from ..config import Config
from ..core.atomic_file import Content, write_atomically
from ..feeds.panel import FIELDS, Panel
from .parallel import run_tasks
from .performance import PerformanceAnalyzer, PerformanceConfig
from .run_records import DEFAULT_PERIODS_PER_YEAR, WALKFORWARD_FILE, WALKFORWARD_FILES
from .walkforward_folds import (
    Fold,
    WalkForwardConfig,
    WalkForwardError,
    bar_label,
    make_folds,
)
from .walkforward_run import (
    ML_PLUGIN,
    FoldTask,
    json_values,
    rows,
    run_fold,
    thread_env,
    uses_ml,
)
from .walkforward_tables import (
    decay,
    fold_curve,
    fold_metrics,
    garch_frame,
    importance_frame,
    series_stability,
    stability,
    stitch,
)

__all__ = ["WalkForwardAnalyzer", "WalkForwardConfig", "WalkForwardError", "thread_env"]

log = structlog.get_logger(__name__)

FORMAT = "tradingd-walkforward/1"


def feature_warmup(config: Config, panel: Panel, probe: int = 1000) -> int | None:
    """Bars a symbol needs before every feature of the model's set has a value, measured on
    the first `probe` bars of the symbols that trade on each of them (the most any of them
    needed). Measured, because the catalogue's bound (`catalog.warmup`) is an upper bound at
    best. None when no symbol trades on every probed bar or none gets every feature."""
    from ..features.catalog import Catalog, resolve_set
    from ..features.engineer import compute_batch

    f = config.features
    head = rows(panel, 0, min(probe, len(panel.times)) - 1)
    full = ~np.isnan(head.close).any(axis=0)
    if not full.any():
        return None
    symbols = tuple(s for s, ok in zip(head.symbols, full, strict=True) if ok)
    sub = Panel(head.times, symbols, *(getattr(head, k)[:, full] for k in FIELDS))
    names = resolve_set(f.set)
    feats = compute_batch(sub, names, Catalog(f.indicators, f.cross_sectional))
    ready = np.ones(sub.close.shape, dtype=bool)
    for v in feats.values():
        ready &= np.isfinite(v)
    cols = int(sub.close.shape[1])
    first = [int(np.argmax(ready[:, j])) for j in range(cols) if ready[:, j].any()]
    return max(first) if first else None


def garch_min_fit_obs(config: Config) -> int | None:
    """The returns a `kelly_garch` sizing needs before its first GARCH fit (None for another
    sizing, or one that fits no GARCH): before that it sizes on EWMA."""
    s = config.sizing
    if s.name != "kelly_garch":
        return None
    from tradingd_plugins.sizing.kelly_garch import KellyGarchConfig

    from ..config import build

    c = build(KellyGarchConfig, s.params, "sizing.params")
    return c.min_fit_obs if c.volatility == "garch" else None


def model_window(config: Config) -> tuple[int, Path] | None:
    """The input window, in bars, of the model an `ml_ensemble` signal loads as configured
    (its card's `window`: 60 for the shipped model) and its folder; the longest when two
    signals load models, None without one. What a fold that does not retrain needs."""
    specs = [(i, s) for i, s in enumerate(config.signals) if s.name == ML_PLUGIN]
    if not specs:
        return None
    from tradingd_plugins.signals.ml_ensemble import MlEnsembleConfig, locate_model

    from ..config import build
    from ..inference.onnx import ModelCard

    found: tuple[int, Path] | None = None
    for i, s in specs:
        c = build(MlEnsembleConfig, s.params, f"signals[{i}].params")
        path, _ = locate_model(c.model_dir)
        window = ModelCard.load(path).window
        if found is None or window > found[0]:
            found = (window, path)
    return found


class WalkForwardAnalyzer:
    """Walk-forward analysis of `config`'s strategy over its data (`run.start`..`run.end`
    bound the out-of-sample period; earlier bars are training and lookback)."""

    def __init__(
        self,
        config: Config,
        wf: WalkForwardConfig | None = None,
        *,
        performance: PerformanceConfig | None = None,
        workers: int | None = 1,
        ray_address: str | None = None,
        progress: bool = False,
    ) -> None:
        self.config = config
        self.wf = wf or WalkForwardConfig()
        self.performance = performance or PerformanceConfig()
        self.workers = workers
        self.ray_address = ray_address
        self.progress = progress

    # -- the schedule ----------------------------------------------------------------------
    def retrain(self) -> bool:
        """Whether each fold retrains the model pair (walkforward.retrain)."""
        mode = self.wf.retrain
        if mode == "always" and not uses_ml(self.config):
            raise WalkForwardError(
                'walkforward.retrain = "always" but no signal is ml_ensemble: nothing to retrain'
            )
        return mode != "never" and uses_ml(self.config)

    def folds(self, panel: Panel) -> list[Fold]:
        return make_folds(
            panel.times,
            self.wf,
            self.config.run.start,
            self.config.run.end,
            calendar=self.config.live.calendar,
            data_timezone=self.config.data.timezone,
        )

    def model_lookback(self, panel: Panel) -> int:
        """Bars before a training window that the model's slice starts at: the feature
        set's warm-up plus the input window less one, so that the first complete input
        window ends where the training window starts (`lookback_bars` when the warm-up
        cannot be measured). `check_lookback` refuses a `lookback_bars` below it."""
        return self._model_warmup(panel)[0]

    def _model_warmup(self, panel: Panel) -> tuple[int, str]:
        warm = feature_warmup(self.config, panel)
        if warm is None:
            return self.wf.lookback_bars, "unmeasured"
        steps = self.wf.model_config().time_steps
        why = f"the features' warm-up of {warm} bars plus its input window of {steps}, less 1"
        return warm + steps - 1, why

    def _configured_model_warmup(self, panel: Panel) -> tuple[int, str] | None:
        """Without retraining: the bars the configured model needs before it predicts (the
        features' warm-up plus its card's window, less 1), and why; None without the model,
        or when the warm-up cannot be measured (as `_model_warmup` then asks nothing)."""
        found = model_window(self.config)
        warm = feature_warmup(self.config, panel) if found is not None else None
        if found is None or warm is None:
            return None
        window, path = found
        why = (
            f"not retrained: --retrain never; the features' warm-up of {warm} bars plus its "
            f"card's window of {window} bars ({path}), less 1"
        )
        return warm + window - 1, why

    def check_lookback(
        self, model: tuple[int, str] | None, configured: tuple[int, str] | None = None
    ) -> None:
        """Refuses a `lookback_bars` shorter than the warm-up a fold needs before its
        training window. The lookback is warm-up only (never a label, never traded): a short
        one buys nothing but an earlier first fold, and costs unsaid. The model fitted only
        on the input windows complete inside the training window (a part of `train`), the
        sizing's GARCH fitted that many bars late (EWMA before), and the stability and decay
        tables compared folds fitted on less than `train` says. Data too short for the
        warm-up is better met with a shorter `train`, which the results then state.
        `model`: the retrained model's need and its reason (`_model_warmup`), or None;
        `configured`: the need of the model a fold that does not retrain replays, before
        its first bar traded (`_configured_model_warmup`), or None: with fewer bars it
        predicted nothing on the first training bars, which were traded all the same."""
        lb, train = self.wf.lookback_bars, self.wf.train
        needs: list[tuple[int, str, str]] = []
        if model is not None:
            bars, why = model
            if bars > lb:
                kept = max(train - (bars - lb), 0)
                needs.append(
                    (
                        bars,
                        f"{bars} for the retrained model ({why})",
                        f"the model would fit on the last {kept} of the {train} training bars",
                    )
                )
        # At the first bar traded, the history holds the lookback (and, with warmup =
        # "none", the training window) before it.
        first = "training" if self.wf.warmup == "train" else "test"
        if configured is not None:
            need, why = configured
            bars = need if first == "training" else max(need - train, 0)
            if bars > lb:
                needs.append(
                    (
                        bars,
                        f"{bars} for the configured model ({why})",
                        f"the model could not predict before {first} bar {bars - lb + 1}",
                    )
                )
        min_obs = garch_min_fit_obs(self.config)
        if min_obs is not None:
            # The GARCH fits on min_fit_obs returns at the least.
            bars = min_obs if first == "training" else max(min_obs - train, 0)
            if bars > lb:
                needs.append(
                    (
                        bars,
                        f"{bars} for the sizing's first GARCH fit (kelly_garch's min_fit_obs "
                        f"= {min_obs} returns)",
                        f"the GARCH could not fit before {first} bar {bars - lb + 1} (EWMA "
                        "until then)",
                    )
                )
        if not needs:
            return
        most = max(n for n, _, _ in needs)
        raise WalkForwardError(
            f"walkforward.lookback_bars (--lookback) = {lb} is shorter than the warm-up each "
            f"fold needs before its training window: {'; '.join(w for _, w, _ in needs)}. "
            f"With {lb}, {' and '.join(c for _, _, c in needs)}. Give --lookback {most} or "
            "more (lookback bars are never trained on or traded; the first fold then starts "
            "lookback + train bars into the data), or, if the data is too short for that, "
            "fewer --train bars"
        )

    def tasks(self, panel: Panel) -> list[FoldTask]:
        from ..app import run_id_for

        retrain = self.retrain()
        model = self._model_warmup(panel) if retrain else None
        self.check_lookback(model, None if retrain else self._configured_model_warmup(panel))
        back = model[0] if model else 0
        prefix = run_id_for(self.config, "walkforward")
        out = []
        for fold in self.folds(panel):
            model_lo = max(0, fold.train_start - back)
            lo = min(fold.lo, model_lo)
            out.append(
                FoldTask(
                    config=self.config,
                    wf=self.wf,
                    fold=fold,
                    panel=rows(panel, lo, fold.test_end),
                    offset=lo,
                    model_lo=model_lo,
                    retrain=retrain,
                    run_prefix=prefix,
                )
            )
        return out

    # -- running ---------------------------------------------------------------------------
    def run(self, panel: Panel | None = None) -> dict[str, Any]:
        """Every fold, then the stitched curve, stability and decay (see `assemble`)."""
        if panel is None:
            from ..app import load_data

            panel = load_data(self.config)
        tasks = self.tasks(panel)
        t0 = time.perf_counter()
        results = run_tasks(
            run_fold,
            tasks,
            workers=self.workers,
            ray_address=self.ray_address,
            progress=self.progress,
            desc="walk-forward folds",
            env=thread_env(self.wf.threads),
        )
        wall = time.perf_counter() - t0
        out = self.assemble(results, panel)
        out["timing"] = {
            "wall_s": round(wall, 3),
            "workers": self.workers,
            "ray_address": self.ray_address,
            "folds": len(results),
            "fold_s_sum": round(sum(r["timing"]["total_s"] for r in results), 3),
            "train_s_sum": round(sum(r["timing"]["train_s"] for r in results), 3),
            "replay_s_sum": round(sum(r["timing"]["replay_s"] for r in results), 3),
        }
        return out

    def performance_for(self, panel: Panel) -> PerformanceConfig:
        """The performance configuration of the tables, with its periods_per_year, else the
        one each fold's backtest annualised its summary with: 252 sessions of the data's
        bars (`app.run_defaults`; 252 for daily bars on New York's calendar). With 252 a
        year of 5-minute bars was read as 78 years, and `tradingd walkforward` had no way
        to set it."""
        if self.performance.periods_per_year is not None:
            return self.performance
        from ..app import bar_of_data, run_defaults

        ppy = run_defaults(self.config, bar_of_data(panel)).get(
            "periods_per_year", DEFAULT_PERIODS_PER_YEAR
        )
        return dataclasses.replace(self.performance, periods_per_year=float(ppy))

    def assemble(self, results: Sequence[Mapping[str, Any]], panel: Panel) -> dict[str, Any]:
        """The walk-forward's results from its folds' (a JSON-ready dict; NaN where a number
        cannot be computed)."""
        from ..app import data_fingerprint_of, run_id_for

        perf = self.performance_for(panel)
        cap = float(self.config.run.initial_capital)
        folds = []
        for r in results:
            f = {**r, "initial_capital": cap}
            f["metrics"] = fold_metrics(f, perf)
            folds.append(f)
        curve = stitch(folds, cap)
        analysis = PerformanceAnalyzer(perf).analyze_performance(
            {
                "equity_curve": curve["equity"],
                "gross_exposure": curve["gross_exposure"],
                "initial_capital": cap,
            }
        )
        return {
            "format": FORMAT,
            "run_id": run_id_for(self.config, "walkforward"),
            "config": {
                "walkforward": self.wf.to_dict(),
                "performance": asdict(perf),
                "tradingd": self.config.to_public_dict(),
            },
            "data": {
                # The data files by content (None: the bundled series), as a backtest's
                # summary.json records them.
                "sha256": (data_fingerprint_of(self.config) or {}).get("sha256"),
                "symbols": list(panel.symbols),
                "bars": len(panel.times),
                "first": bar_label(panel.times[0]),
                "last": bar_label(panel.times[-1]),
            },
            "retrained": any(f.get("model") for f in folds),
            "model_in_sample": _model_in_sample(folds, curve.index),
            "folds": folds,
            "stitched": {
                "first": bar_label(curve.index[0]),
                "last": bar_label(curve.index[-1]),
                "bars": len(curve),
                "time": [bar_label(t) for t in curve.index],
                "equity": curve["equity"].tolist(),
                "fold": curve["fold"].tolist(),
                "horizon": curve["horizon"].tolist(),
                "gross_exposure": curve["gross_exposure"].tolist(),
                "analysis": analysis,
            },
            # Folds apart by their training and test windows, not their traded curves
            # (only the test window with warmup "none").
            "stability": stability(folds, perf, self.wf.step, self.wf.train + self.wf.test),
            "decay": decay(folds, self.wf.step, perf, self.wf.train + self.wf.test),
        }

    # -- output ----------------------------------------------------------------------------
    def write(self, results: Mapping[str, Any], out_dir: str | Path) -> Path:
        return write_outputs(results, out_dir)


_FOLD_DETAIL = ("equity", "state_at_train_end", "params", "model")


def _model_in_sample(
    folds: Sequence[Mapping[str, Any]], stitched: Sequence[Any]
) -> dict[str, Any] | None:
    """The stitched out-of-sample bars that lie in a model's own training or validation
    period (None when none does): they are not out of sample for that model. Counted on the
    stitched curve, each bar once (test windows overlap, and a fold may run two models);
    `of` is the curve's bars. Said once, as a backtest says it (`backtest.in_sample`)."""
    spans: set[tuple[str, str]] = set()
    where: set[int] = set()
    for f in folds:
        for m in f.get("models") or ():
            fitted = m.get("fitted_on")
            if m.get("in_sample") and fitted:
                spans.add((str(fitted[0]), str(fitted[1])))
                where.add(int(f["fold"]))
    if not spans:
        return None
    days = [bar_label(t)[:10] for t in stitched]
    bars = sum(any(a <= d <= b for a, b in spans) for d in days)
    if not bars:
        return None
    out = {
        "bars": bars,
        "of": len(days),
        "folds": sorted(where),
        "fitted_on": [list(span) for span in sorted(spans)],
    }
    log.warning(
        "walkforward.in_sample",
        **out,
        rule="test bars in the model's training or validation period are in-sample for the "
        "model: retrain in each fold (walkforward.retrain) or test after the model's dates",
    )
    return out


def write_outputs(results: Mapping[str, Any], out_dir: str | Path) -> Path:
    """The results as files (strict JSON: NaN is null):

    walkforward.json      everything but the per-fold detail (below), stitched curve included
    folds.json            each fold in full: equity, fitted state, parameters, model card
    equity.csv            the stitched out-of-sample curve (time, equity, return, fold, ...)
    fold_equity.csv       every fold's traded bars, in-sample and test
    folds.csv             per-fold dates and in-sample / out-of-sample metrics
    stability.csv         per-fold parameters; stability_summary.csv: their stability
    garch_params.csv      per fold and symbol; feature_importance.csv: per fold and feature
    decay.csv             returns by bars since the training end

    All written whole or none replaced (`core.atomic_file`): a full disk raises
    `FileNotWritten` naming the file, and leaves no file cut short. Into an empty folder or
    an earlier walk-forward's (`backtest.check_output_folder`: a backtest's record, or a
    folder of other files, is refused, untouched), under the folder's lock (the backtest
    record's, `.record.lock`); once written, the earlier walk-forward's files this one does
    not write (garch_params.csv of a GARCH sizing, feature_importance.csv) are removed: they
    stayed beside the new results as if they were theirs. Temporary files of a writer
    killed earlier are removed."""
    from ..backtest import RECORD_LOCK, _record_locked, check_output_folder, remove_stale_temps

    out = Path(out_dir)
    check_output_folder(out, "walkforward", "--out")
    out.mkdir(parents=True, exist_ok=True)
    lock_made = not (out / RECORD_LOCK).exists()
    files: dict[Path, Content] = {}
    folds = results["folds"]
    lean = dict(results)
    lean["folds"] = [
        {k: v for k, v in f.items() if k not in _FOLD_DETAIL}
        | {"model_version": (f.get("model") or {}).get("model_version")}
        for f in folds
    ]
    files[out / WALKFORWARD_FILE] = _json(lean)  # first: what the folder is known by
    files[out / "folds.json"] = _json(folds)
    s = results["stitched"]
    stitched = pd.DataFrame(
        {
            "time": s["time"],
            "equity": s["equity"],
            "fold": s["fold"],
            "horizon": s["horizon"],
            "gross_exposure": s["gross_exposure"],
        }
    )
    files[out / "equity.csv"] = partial(stitched.to_csv, index=False)
    curves = []
    for f in folds:
        c = fold_curve(f)
        c.insert(0, "fold", int(f["fold"]))
        c.index = [bar_label(t) for t in c.index]
        curves.append(c)
    files[out / "fold_equity.csv"] = pd.concat(curves).rename_axis("time").to_csv
    files[out / "folds.csv"] = _rows_csv([_fold_row(f) for f in folds])
    st = results["stability"]
    files[out / "stability.csv"] = _rows_csv(st["table"])
    files[out / "stability_summary.csv"] = _rows_csv(
        [{"parameter": k, **v} for k, v in st["summary"].items()],
        # Its header also when nothing was fitted (momentum + equal_weight): a 0-byte file
        # is not a CSV to `pd.read_csv` (EmptyDataError).
        columns=["parameter", *series_stability(np.empty(0))],
    )
    g = [garch_frame(f).assign(fold=int(f["fold"])) for f in folds]
    g = [x for x in g if len(x)]
    if g:
        files[out / "garch_params.csv"] = partial(
            pd.concat(g, ignore_index=True).to_csv, index=False
        )
    imp = importance_frame(folds)
    if len(imp):
        files[out / "feature_importance.csv"] = imp.rename_axis("fold").to_csv
    files[out / "decay.csv"] = _rows_csv(results["decay"]["by_horizon"]["buckets"])
    with _record_locked(out) as locked:
        check_output_folder(out, "walkforward", "--out", lock_made=lock_made)
        if locked:
            remove_stale_temps(out, WALKFORWARD_FILES)
        write_atomically(files, newline="")
        for name in WALKFORWARD_FILES:
            if out / name not in files:
                (out / name).unlink(missing_ok=True)
    return out


def _fold_row(f: Mapping[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {
        k: f[k]
        for k in ("fold", "train_start", "train_end", "test_start", "test_end", "stitch_end")
    }
    for seg in ("in_sample", "test"):
        for k, v in f["metrics"][seg].items():
            row[f"{seg}_{k}"] = v
    row["walk_forward_efficiency"] = f["metrics"]["walk_forward_efficiency"]
    row["test_fills"] = f["fills"]["test"]
    row["test_costs"] = f["fills"]["test_costs"]
    row["model_version"] = (f.get("model") or {}).get("model_version", "")
    row.update({k: v for k, v in f["timing"].items() if k.endswith("_s")})
    return row


def _json(data: Any) -> str:
    return json.dumps(json_values(data), indent=1, allow_nan=False, default=str) + "\n"


def _rows_csv(
    rows_: Sequence[Mapping[str, Any]], columns: Sequence[str] = ()
) -> Callable[[TextIO], None]:
    """A writer of the rows as CSV, their keys as the header in order of appearance
    (`columns` first: the header of a table without rows, which is otherwise an empty
    file)."""

    def write(fh: TextIO) -> None:
        keys: list[str] = list(columns)
        if not rows_ and not keys:
            return
        for r in rows_:
            keys += [k for k in r if k not in keys]
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        for r in rows_:
            w.writerow({k: _cell(r.get(k)) for k in keys})

    return write


def _cell(v: Any) -> Any:
    if isinstance(v, float | np.floating) and not np.isfinite(v):
        return ""
    return v
