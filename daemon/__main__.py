"""The `tradingd` command: backtest | run | train | fetch | features | plugins | config.

Only this module calls `asyncio.run`; SIGTERM and SIGINT are turned into a clean stop of the
engine (finish the bar, flush the store) through `loop.add_signal_handler`.

Every command that takes a configuration validates it the same way before doing any work
(`preflight.check_config`), and the commands that use the database or Redis check that they
answer (`preflight.check_services`): a mistake is reported in seconds, as
`tradingd: error: ...` with exit code 2, never as a traceback after a replay.
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
from .secrets import mask_url

log = structlog.get_logger("tradingd.cli")

DEFAULT_CONFIG = Path("config/default.toml")
# Trained models go under var/ (like runs and audit logs), never into the installed package
# or the source tree; `ml_ensemble.model_dir` points at var/models/current to use retrained
# models.
DEFAULT_TRAIN_OUT = "var/models/trained"
DEFAULT_RETRAIN_ROOT = "var/models"
# Commands whose output folder comes from the command line rather than the configuration.
_OUTPUT_ARG = {"backtest": "output", "train": "out", "retrain": "root"}


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
    tr.add_argument(
        "--out",
        default=DEFAULT_TRAIN_OUT,
        help=f"output folder for card.json and the ONNX pair (default: {DEFAULT_TRAIN_OUT}; "
        "the shipped pair is reproduced with --out models/default)",
    )
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
    rt.add_argument(
        "--root",
        default=DEFAULT_RETRAIN_ROOT,
        help=f"model root with versions/ and current (default: {DEFAULT_RETRAIN_ROOT})",
    )
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

    he = sub.add_parser(
        "health",
        help="ask a running daemon whether it is alive and ready "
        "(exit 0 ready, 1 not ready, 2 unreachable)",
    )
    common(he)
    he.add_argument(
        "--url",
        help="the daemon's health server (default: from [health] host and port of the "
        "configuration, e.g. http://127.0.0.1:8080)",
    )
    he.add_argument("--timeout", type=float, default=5.0, help="seconds (default: 5)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "plugins":
            return _plugins()
        if args.command == "health":
            return _health(args)
        from .preflight import check_config, check_services, check_train_extra

        if args.command in ("train", "retrain"):
            check_train_extra()  # before anything is loaded: say what to install
        config = _config(args.config)
        from .logs import configure_logging

        configure_logging(config.log.level, config.log.format)
        arg = _OUTPUT_ARG.get(args.command)
        output = getattr(args, arg) if arg else None
        check_config(config, args.command, output_dir=output)
        if args.command in ("backtest", "run", "fetch"):
            asyncio.run(check_services(config))
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
            print(json.dumps(config.to_public_dict(), indent=2, default=str))
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
            print(f"stored {stored} bars in {mask_url(config.storage.url)}")
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
    print(f"model pair and card written to {Path(args.out).resolve()}")
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


def _health(args: argparse.Namespace) -> int:
    """Reads the configuration only for the default URL: loads no plugins, models or
    services (a daemon's health must be askable when those are broken)."""
    from .health.client import fetch_health, url_for

    url = args.url or url_for(_config(args.config).health)
    code, report = asyncio.run(fetch_health(url, args.timeout))
    print(json.dumps(report, indent=2, sort_keys=True))
    if code == 2:
        print(f"tradingd: error: {report['error']}", file=sys.stderr)
    return code


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
    from .app import build_engine, health_inputs
    from .health import token_from_env
    from .health.server import HealthServer
    from .watchdog import SystemdNotifier

    engine = build_engine(config, "live")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, engine.request_stop)
    checks, status, controls = health_inputs(engine)
    notifier = SystemdNotifier()
    server = (
        HealthServer(config.health, checks, status, controls, token_from_env())
        if config.health.enabled
        else None
    )

    def heartbeat(*, busy: bool = False) -> None:
        if server is not None:
            server.heartbeat(busy=busy)
        notifier.pet()

    engine.on_heartbeat = heartbeat
    engine.on_ready = notifier.ready
    if server is not None:
        await server.start()  # before the engine: /health answers during start-up and warm-up
    await notifier.start()
    try:
        result = await engine.run_until_done()
    finally:
        notifier.stopping()
        await notifier.stop()
        if server is not None:
            await server.stop()
    log.info("tradingd.exit", bars=result.bars, stopped_early=result.stopped_early)
    return 0


if __name__ == "__main__":
    sys.exit(main())
