"""The `tradingd` command: backtest | run | train | fetch | features | plugins | config.

Only this module calls `asyncio.run`; SIGTERM and SIGINT are turned into a clean stop of the
engine (finish the bar, flush the store) through `loop.add_signal_handler`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from .config import Config, load_config
from .core.errors import TradingdError

log = structlog.get_logger("tradingd.cli")

DEFAULT_CONFIG = Path("config/default.toml")


def _config(paths: Sequence[str]) -> Config:
    if not paths and DEFAULT_CONFIG.exists():
        paths = [str(DEFAULT_CONFIG)]
    return load_config(paths)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tradingd", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "-c",
            "--config",
            action="append",
            default=[],
            help="TOML file(s), later ones override earlier "
            "(default: config/default.toml if present, else built-in defaults)",
        )

    bt = sub.add_parser("backtest", help="replay stored history through the engine")
    common(bt)
    bt.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    bt.add_argument("--output", help="output folder (default: <run.output_dir>/<run_id>)")
    bt.add_argument("--no-progress", action="store_true", help="no progress bar")

    run = sub.add_parser("run", help="run the live paper-trading loop")
    common(run)

    tr = sub.add_parser("train", help="train the model pair and export it to ONNX (train extra)")
    common(tr)
    tr.add_argument("--out", default="models/default", help="output folder (card + ONNX)")
    tr.add_argument("--epochs", type=int, help="override the maximum number of epochs")
    tr.add_argument(
        "--model-config",
        help="TOML with [model] hyperparameters (ModelConfig "
        "fields; defaults are the specification's)",
    )

    rt = sub.add_parser(
        "retrain",
        help="retrain on a rolling window; publish only if it beats the floor (train extra)",
    )
    common(rt)
    rt.add_argument("--root", default="models/live", help="model root with versions/ and current")
    rt.add_argument("--window-bars", type=int, default=1260)
    rt.add_argument("--min-directional-accuracy", type=float, default=0.5)
    rt.add_argument("--max-mse-ratio", type=float, default=1.05)

    fe = sub.add_parser("fetch", help="load the configured data source into the store's bars")
    common(fe)

    ft = sub.add_parser("features", help="print the configured feature set and its version")
    common(ft)

    pl = sub.add_parser("plugins", help="list the installed plugins")
    del pl
    cf = sub.add_parser("config", help="print the effective configuration as JSON")
    common(cf)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "plugins":
            return _plugins()
        config = _config(args.config)
        from .logs import configure_logging

        configure_logging(config.log.level, config.log.format)
        if args.command == "features":
            from .features.catalog import Catalog, feature_set_id, resolve_set

            f = config.features
            names = resolve_set(f.set, f.extra)
            cat = Catalog(f.indicators, f.cross_sectional)
            for n in names:
                cat.node(n)  # every name must parse
            fsid = feature_set_id(f.set, names, f.indicators, f.cross_sectional)
            print(
                json.dumps(
                    {"set": fsid.name, "version": fsid.version, "features": list(fsid.features)},
                    indent=2,
                )
            )
            return 0
        if args.command == "config":
            print(json.dumps(config.to_dict(), indent=2, default=str))
            return 0
        if args.command == "backtest":
            return _backtest(config, args)
        if args.command == "run":
            return asyncio.run(_run(config))
        if args.command == "train":
            return _train(config, args)
        if args.command == "retrain":
            return _retrain(config, args)
        if args.command == "fetch":
            from .app import import_bars

            stored = asyncio.run(import_bars(config))
            print(f"stored {stored} bars in {config.storage.url}")
            return 0
    except TradingdError as exc:
        print(f"tradingd: error: {exc}", file=sys.stderr)
        return 2
    return 1


def _train(config: Config, args: argparse.Namespace) -> int:
    import dataclasses

    try:
        from tradingd_models.config import ModelConfig
        from tradingd_models.training import train
    except ImportError as exc:
        print(
            f"tradingd: error: training needs the train extra (pip install 'tradingd[train]'):"
            f" {exc}",
            file=sys.stderr,
        )
        return 2
    from .app import load_data

    mc = ModelConfig()
    if args.model_config:
        import tomllib

        from .config import build

        try:
            data = tomllib.loads(Path(args.model_config).read_text()).get("model", {})
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise TradingdError(f"model config {args.model_config}: {exc}") from None
        mc = build(ModelConfig, data, "model")
    if args.epochs:
        mc = dataclasses.replace(mc, epochs=args.epochs)
    train(config, load_data(config), args.out, mc, log=lambda m: print(m, file=sys.stderr))
    return 0


def _retrain(config: Config, args: argparse.Namespace) -> int:
    try:
        from tradingd_models.retrain import RetrainPolicy, retrain
    except ImportError as exc:
        print(f"tradingd: error: retraining needs the train extra: {exc}", file=sys.stderr)
        return 2
    from .app import load_data

    policy = RetrainPolicy(args.window_bars, args.min_directional_accuracy, args.max_mse_ratio)
    out = retrain(config, load_data(config), args.root, policy)
    print(json.dumps({"published": out.published, "version": out.version, "reason": out.reason}))
    return 0 if out.published else 3


def _plugins() -> int:
    from .engine.plugins import available

    for name, ep in sorted(available().items()):
        try:
            kind = getattr(ep.load(), "kind", "?")
        except Exception as exc:  # list it anyway, with the reason it is broken
            kind = f"BROKEN ({type(exc).__name__}: {exc})"
        print(f"{name:24} {kind:8} {ep.value}")
    return 0


def _backtest(config: Config, args: argparse.Namespace) -> int:
    from .analysis.metrics import format_summary
    from .backtest import _jsonable, run_backtest

    progress = sys.stderr.isatty() and not args.no_progress
    outcome = asyncio.run(run_backtest(config, output_dir=args.output, progress=progress))
    if args.json:
        print(json.dumps(_jsonable(outcome.summary)))
    else:
        print(format_summary(outcome.summary))
        print(f"\nrun {outcome.run_id}: equity, orders, fills and config in {outcome.output_dir}")
    return 0


async def _run(config: Config) -> int:
    from .app import build_engine

    engine = build_engine(config, "live")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, engine.request_stop)
    result = await engine.run_until_done()
    log.info("tradingd.exit", bars=result.bars, stopped_early=result.stopped_early)
    return 0


if __name__ == "__main__":
    sys.exit(main())
