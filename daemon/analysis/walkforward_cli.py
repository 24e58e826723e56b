"""`tradingd walkforward -c CONFIG ... [--train 252 --test 63 --step 21 --workers N
--ray-address ADDR --out DIR]`: a walk-forward analysis from a configuration.

The `-c` files are tradingd's configuration, as for `tradingd backtest`, plus optionally a
file whose only table is `[walkforward]` (with `[walkforward.model]`: ModelConfig overrides,
e.g. a tiny model for a quick look): see config/walkforward.toml. tradingd's own loader does
not know that table, so such a file must hold nothing else. Command-line options override
the file. `run.start` / `run.end` bound the out-of-sample period.

Writes the stitched out-of-sample equity curve, per-fold results and the stability and decay
tables to `--out` (default `<run.output_dir>/<name>-walkforward-<hash>`), prints a summary,
and shows a progress bar over the folds on a terminal.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import importlib.util
import json
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .walkforward_folds import RETRAIN, WARMUPS, WalkForwardConfig, WalkForwardError

DEFAULT_CONFIG = Path("config/default.toml")
SECTION = "walkforward"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's options (`-c/--config` is tradingd's common option, added by the CLI)."""
    a = parser.add_argument
    a("--train", type=int, help="bars each fold fits on (default 252)")
    a("--test", type=int, help="bars each fold trades out of sample (default 63)")
    a("--step", type=int, help="bars between folds (default 21; at most --test)")
    a("--lookback", type=int, help="warm-up bars before each training window (default 252)")
    a("--folds", type=int, help="run only the first K folds (0: all)")
    a("--warmup", choices=WARMUPS, help="trade the training window first (train) or not (none)")
    a("--retrain", choices=RETRAIN, help="retrain the ml_ensemble model in each fold (auto)")
    a("--epochs", type=int, help="maximum training epochs of each fold's model")
    a("--threads", type=int, help="threads per fold of TensorFlow, BLAS, onnxruntime (1)")
    a("--workers", type=int, help="local worker processes (default: one per CPU; 0: in this one)")
    a("--ray-address", help='run the folds on Ray: "auto", "ray://host:10001" or "local"')
    a("--out", help="output folder (default: <run.output_dir>/<name>-walkforward-<hash>)")
    a("--json", action="store_true", help="print the summary as one JSON object")
    a("--no-progress", action="store_true", help="no progress bar")


def split_config_files(paths: Sequence[str]) -> tuple[list[str | dict[str, Any]], dict[str, Any]]:
    """(tradingd's config files, the merged [walkforward] table of the others). A file that
    is not a regular file (`-c <(...)`, a pipe: it can be read once) is given as the table
    read from it, which `load_config` takes as it is; read again, it was empty, and the
    walk-forward ran with the other files alone."""
    engine: list[str | dict[str, Any]] = []
    table: dict[str, Any] = {}
    for p in paths:
        data = _read(Path(p))
        if SECTION not in data:
            engine.append(str(p) if Path(p).is_file() else data)
            continue
        others = sorted(k for k in data if k != SECTION)
        if others:
            raise WalkForwardError(
                f"config file {p}: a file with [{SECTION}] must hold nothing else (tradingd's "
                f"configuration does not know that table); move {', '.join(others)} to "
                "another -c file"
            )
        if not isinstance(data[SECTION], Mapping):
            raise WalkForwardError(f"config file {p}: {SECTION} must be a table")
        _merge(table, data[SECTION])
    if not engine and DEFAULT_CONFIG.exists():
        engine = [str(DEFAULT_CONFIG)]
    return engine, table


def walkforward_config(table: Mapping[str, Any], args: argparse.Namespace) -> WalkForwardConfig:
    """The file's [walkforward] table with the command line's overrides."""
    wf = WalkForwardConfig.from_mapping(table)
    over: dict[str, Any] = {}
    for arg, key in (
        ("train", "train"),
        ("test", "test"),
        ("step", "step"),
        ("lookback", "lookback_bars"),
        ("folds", "max_folds"),
        ("warmup", "warmup"),
        ("retrain", "retrain"),
        ("threads", "threads"),
    ):
        v = getattr(args, arg, None)
        if v is not None:
            over[key] = v
    if getattr(args, "epochs", None) is not None:
        over["model"] = {**wf.model, "epochs": args.epochs}
    if not over:
        return wf
    out = dataclasses.replace(wf, **over)
    if "model" in over:
        out.model_config()
    return out


def default_out(config: Any, wf: WalkForwardConfig) -> Path:
    from ..app import run_id_for

    digest = hashlib.sha256(json.dumps(wf.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    return Path(config.run.output_dir) / f"{run_id_for(config, 'walkforward')}-{digest}"


def run(args: argparse.Namespace) -> int:
    """The command: configuration, checks, the analysis, its files and a summary."""
    from ..config import load_config
    from ..core.atomic_file import FileNotWritten, unwritable
    from ..core.errors import TradingdError
    from ..logs import configure_logging
    from ..preflight import check_config, check_train_extra, check_writable_dir
    from .walkforward import WalkForwardAnalyzer, write_outputs

    engine_paths, table = split_config_files(list(getattr(args, "config", None) or []))
    config = load_config(engine_paths)
    configure_logging(config.log.level, config.log.format)
    from ..config import log_overlay_notes

    log_overlay_notes(config)  # after the logging is set up: stdout carries the --json answer
    wf = walkforward_config(table, args)
    if args.ray_address and importlib.util.find_spec("ray") is None:
        raise WalkForwardError(
            f"--ray-address {args.ray_address!r} needs Ray, which is not installed: "
            "pip install 'ray[default]'"
        )
    if args.workers is not None and args.workers < 0:
        raise WalkForwardError(f"--workers must be >= 0, got {args.workers}")
    check_config(config, "walkforward")
    from ..backtest import check_output_folder

    if args.out:
        check_writable_dir(Path(args.out), "--out")
        # A backtest's record or a folder of other files: refused before the analysis.
        check_output_folder(Path(args.out), "walkforward", "--out")
    # The analysis's own copy, which will hold the data's fingerprint taken around the load
    # (`load_pinned`, below): its folder, its folds' run ids and walkforward.json name the
    # bytes it ran on, whatever the file holds by its end (hashed at the start and again at
    # the end, they differed).
    config = copy.copy(config)
    analyzer = WalkForwardAnalyzer(
        config,
        wf,
        workers=args.workers,
        ray_address=args.ray_address,
        progress=sys.stderr.isatty() and not args.no_progress,
    )
    retrains = analyzer.retrain()
    if getattr(args, "epochs", None) is not None and not retrains:
        # As `backtest --no-validation` without --report: an option that configures a step
        # the command does not take was dropped without a word.
        why = (
            'walkforward.retrain = "never"' if wf.retrain == "never" else "no signal is ml_ensemble"
        )
        raise WalkForwardError(
            f"--epochs sets the training of each fold's model, and this walk-forward retrains "
            f"none ({why}): leave --epochs out, or retrain (--retrain auto with ml_ensemble)"
        )
    if retrains:
        try:
            check_train_extra()
        except TradingdError as exc:
            # The quick start installs no train extra, and the README's walk-forward
            # (ml_ensemble, retrain = "auto") needs it only to retrain: say the other way.
            raise WalkForwardError(
                f"{exc}; or walk forward with the model as it is, without retraining: "
                '--retrain never (walkforward.retrain = "never")'
            ) from None
    from ..app import load_pinned

    panel = load_pinned(config)
    out = Path(args.out) if args.out else default_out(config, wf)
    check_writable_dir(out, "--out")
    check_output_folder(out, "walkforward", "--out" if args.out else "the walk-forward's folder")
    try:
        results = analyzer.run(panel)  # (an address Ray cannot reach: a ConfigError)
    except ConnectionError as exc:  # Ray: the cluster lost during the run
        raise WalkForwardError(f"--ray-address {args.ray_address!r}: {exc}") from None
    try:
        write_outputs(results, out)
    except FileNotWritten as exc:  # a full disk: the folder's files as they were
        raise TradingdError(
            unwritable(exc, "write the results elsewhere with --out FOLDER")
        ) from None
    summary = summarize(results, out)
    if args.json:
        from .walkforward_run import json_values

        print(json.dumps(json_values(summary)))
    else:
        print(format_summary(summary))
    return 0


def summarize(results: Mapping[str, Any], out: Path) -> dict[str, Any]:
    """The numbers a person looks at first."""
    s = results["stitched"]
    perf = s["analysis"]["performance"]
    risk = s["analysis"]["risk"]
    d = results["decay"]
    wf = results["config"]["walkforward"]
    return {
        "folds": len(results["folds"]),
        "train": wf["train"],
        "test": wf["test"],
        "step": wf["step"],
        "retrained": results["retrained"],
        "out_of_sample": {"first": s["first"], "last": s["last"], "bars": s["bars"]},
        "model_in_sample": results.get("model_in_sample"),
        "total_return": perf["total_return"],
        "annual_return": perf["annual_return"],
        "sharpe": perf["sharpe"],
        # The rate its Sharpe ratio is in excess of (the performance config's, 2% by default):
        # a backtest's summary says its own (0%), and the two can differ in sign.
        "risk_free_rate": perf["risk_free_rate"],
        "max_drawdown": risk["max_drawdown"],
        "sharpe_trend_per_fold": d["by_fold"]["sharpe_trend"]["slope"],
        "sharpe_trend_p": d["by_fold"]["sharpe_trend"]["p_value"],
        "sharpe_trend_independent_folds": d["by_fold"]["sharpe_trend"].get("n_independent"),
        "sharpe_by_horizon": {
            f"{b['from_bar']}-{b['to_bar']}": b["sharpe"] for b in d["by_horizon"]["buckets"]
        },
        "median_walk_forward_efficiency": d["in_vs_out"]["median_walk_forward_efficiency"],
        "wall_s": results.get("timing", {}).get("wall_s"),
        "output_dir": str(out),
    }


def format_summary(s: Mapping[str, Any]) -> str:
    oos = s["out_of_sample"]
    # Test bars in the model's own fit are not out of sample (the next line says how many):
    # the first line said "out of sample ... Sharpe 2.77" of a model fitted on every one.
    inside = s.get("model_in_sample")
    label, decay = ("out of sample", "out-of-sample")
    if inside:
        all_of = inside.get("bars") == inside.get("of")
        label = f"test windows ({'all' if all_of else 'partly'} in-sample for the model)"
        decay = "test-window"
    horizon = ", ".join(f"{k}: {_num(v)}" for k, v in s["sharpe_by_horizon"].items())
    return "\n".join(
        [
            f"walk-forward: {s['folds']} fold{'' if s['folds'] == 1 else 's'} "
            f"(train {s['train']}, test {s['test']}, step {s['step']} bars), "
            "model retrained in each fold: "
            f"{'yes' if s['retrained'] else 'no'}",
            f"{label} {oos['first']} .. {oos['last']} ({oos['bars']} bars): total return "
            f"{_pct(s['total_return'])}, annual {_pct(s['annual_return'])}, Sharpe (risk-free "
            f"{_rate(s['risk_free_rate'])}) {_num(s['sharpe'])}, max drawdown "
            f"{_pct(s['max_drawdown'])}",
            *_in_sample_line(inside),
            # A slope, said as one: "Sharpe 23.0976 per fold" beside a stitched Sharpe of
            # -8.00 read as a second, contradicting Sharpe ratio.
            f"decay: {decay} Sharpe changes by {_signed(s['sharpe_trend_per_fold'])} "
            f"per fold (slope; p = {_num(s['sharpe_trend_p'], 3)} over "
            f"{s.get('sharpe_trend_independent_folds', '?')} folds with separate test "
            f"windows); Sharpe by bars since training: {horizon}",
            f"median walk-forward efficiency {_num(s['median_walk_forward_efficiency'])}",
            f"results in {s['output_dir']} ({s['wall_s']} s)",
        ]
    )


def _in_sample_line(m: Mapping[str, Any] | None) -> list[str]:
    if not m:
        return []
    spans = ", ".join(" .. ".join(span) for span in m["fitted_on"])
    return [
        f"NOT out of sample for the model: {m['bars']} of {m['of']} test bars lie in the "
        f"period it was fitted on ({spans}); retrain in each fold (walkforward.retrain)"
    ]


def _pct(v: Any) -> str:
    return "n/a" if v is None or v != v else f"{100 * v:.2f}%"


def _rate(v: Any) -> str:
    """An annual rate as the backtest's summary labels its own: 0.02 -> "2%"."""
    return "n/a" if v is None or v != v else f"{100 * v:g}%"


def _num(v: Any, digits: int = 2) -> str:
    return "n/a" if v is None or v != v else f"{v:.{digits}f}"


def _signed(v: Any) -> str:
    return "n/a" if v is None or v != v else f"{v:+.2f}"


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WalkForwardError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise WalkForwardError(f"config file {path} cannot be read as TOML: {exc}") from None


def _merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(into.get(k), Mapping):
            _merge(into[k], v)
        else:
            into[k] = dict(v) if isinstance(v, Mapping) else v
