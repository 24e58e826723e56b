"""What the engine takes from third-party plugins, through a whole run: the inputs it shares
between plugins stay unchanged, and outputs that would be traded on wrongly (a Series in
another order, a short where the broker may not short, a verdict with its fields swapped)
are refused by name or repaired with a log line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import live_run, make_panel

from tradingd.core.errors import PluginFault


@pytest.mark.parametrize("mode", ["backtest", "live"])
async def test_a_signal_narrowing_ctx_ready_in_place_is_named_and_the_next_unaffected(
    engine_config, mode
):
    """`ok = ctx.ready; ok &= ...` in one signal changed the mask every later signal and the
    decision read (a replay of two signals lost four in five of the other's scores, without
    a word). ctx.ready is read-only: the write is the writer's fault, named, before any
    other plugin sees the bar."""
    from tradingd.app import build_engine

    class Narrower:
        kind, name = "signal", "narrower"

        def required_features(self):  # type: ignore[no-untyped-def]
            return ()

        def score(self, ctx):  # type: ignore[no-untyped-def]
            ok = ctx.ready
            ok &= np.arange(len(ctx.symbols)) == 0
            return np.where(ok, 0.5, np.nan)

    read: list[np.ndarray] = []

    class Reader(Narrower):
        name = "reader"

        def score(self, ctx):  # type: ignore[no-untyped-def]
            read.append(np.array(ctx.ready))
            return np.zeros(len(ctx.symbols))

    if mode == "live":
        panel, config = live_run(engine_config)
    else:
        panel, config = make_panel(n_bars=90, split_at=None), engine_config
    engine = build_engine(config, mode, panel=panel)
    engine.pipeline.signals = [(Narrower(), 1.0), (Reader(), 1.0)]
    with pytest.raises(
        PluginFault, match=r"plugin 'narrower' failed in (score|observe).*read-only"
    ):
        await engine.run_until_done()
    assert not read, "the reader ran after a write: the write did not stop the bar"


# The inputs a plugin might try to make writeable (`setflags(write=True)`), by name.
_INPUTS = {
    "history window": lambda ctx: ctx.history.window("close", 2),
    "mark": lambda ctx: ctx.mark,
    "portfolio weights": lambda ctx: ctx.portfolio.weights,
    "portfolio quantity": lambda ctx: ctx.portfolio.quantity,
    "feature": lambda ctx: next(iter(ctx.features.values())),
    "bar": lambda ctx: ctx.bar.close,
    # The panel's whole (T, N) array behind a replayed bar: writing its last row rewrote a
    # later bar's closes, which the other plugins and the broker read.
    "bar's base": lambda ctx: ctx.bar.close.base,
}


class _Reader:
    """Records what it is given at every bar, and trades on the history it reads."""

    kind, name = "signal", "reader"

    def __init__(self) -> None:
        self.read: list[dict[str, np.ndarray]] = []

    def required_features(self):  # type: ignore[no-untyped-def]
        return ()

    def score(self, ctx):  # type: ignore[no-untyped-def]
        self.read.append({k: np.array(get(ctx)) for k, get in _INPUTS.items()})
        w = ctx.history.window("close", 2)
        with np.errstate(invalid="ignore"):
            return np.nan_to_num(np.tanh(w[-1] / w[0] - 1.0))


def _engine(engine_config, mode, first):  # type: ignore[no-untyped-def]
    import dataclasses

    from tradingd.app import build_engine

    if mode == "live":
        panel, config = live_run(engine_config)
    else:
        panel, config = make_panel(n_bars=90, split_at=None), engine_config
    # A run of its own (a live run of the same id would resume the last one's).
    run = dataclasses.replace(config.run, run_id=f"{config.run.run_id}-{first.name}")
    config = dataclasses.replace(config, run=run)
    engine = build_engine(config, mode, panel=panel)
    reader = _Reader()
    engine.pipeline.signals = [(first, 1.0), (reader, 1.0)]
    return engine, reader


@pytest.mark.parametrize("mode", ["backtest", "live"])
@pytest.mark.parametrize("what", sorted(_INPUTS))
async def test_a_plugin_making_an_input_writeable_again_is_named(engine_config, mode, what):
    """`w = ctx.history.window("close", 5); w.setflags(write=True); w[-1] *= 2` (the usual
    answer to "assignment destination is read-only") went through: the flag was on the
    view only, the buffer behind it writeable, and every other plugin read the doubled
    closes in a run that ended with exit 0. The same for the marks, the portfolio view and
    the feature rows (from the feature cache), and for the bar's `.base` (the panel's
    array: `ctx.bar.close.base.setflags(write=True)` went through, on a replay and on the
    recorded live feed). numpy now refuses the flag, and the run stops naming the plugin,
    before another plugin sees the bar."""

    class Unlocker:
        kind, name = "signal", "unlocker"

        def required_features(self):  # type: ignore[no-untyped-def]
            return ()

        def score(self, ctx):  # type: ignore[no-untyped-def]
            a = _INPUTS[what](ctx)
            a.setflags(write=True)
            a[-1] *= 2.0
            return np.full(len(ctx.symbols), np.nan)

    engine, reader = _engine(engine_config, mode, Unlocker())
    with pytest.raises(
        PluginFault, match=r"plugin 'unlocker' failed in score.*cannot set WRITEABLE flag"
    ):
        await engine.run_until_done()
    assert not reader.read, "the reader ran after the write"


class _Unlocking:
    """Makes what it is given writeable (`setflags(write=True)`) and writes into it."""

    name = "unlocker"

    def __init__(self, inner=None):  # type: ignore[no-untyped-def]
        self.inner = inner

    def required_features(self):  # type: ignore[no-untyped-def]
        return ()

    @staticmethod
    def unlock(a: np.ndarray) -> None:
        a.setflags(write=True)
        a[...] = 0  # False, or a weight / score of 0


class _UnlockingSignal(_Unlocking):
    kind = "signal"

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def score(self, ctx):  # type: ignore[no-untyped-def]
        self.unlock(getattr(ctx, self.what))
        return np.full(len(ctx.symbols), np.nan)


class _UnlockingSizing(_Unlocking):
    kind = "sizing"

    def size(self, score, ctx):  # type: ignore[no-untyped-def]
        self.unlock(score)
        return self.inner.size(score, ctx)


class _UnlockingRisk(_Unlocking):
    kind = "risk"

    def check(self, targets, ctx):  # type: ignore[no-untyped-def]
        from tradingd.core.ports import RiskDecision

        self.unlock(targets)
        return RiskDecision(targets)


@pytest.mark.parametrize(
    ("mode", "what"),
    [
        (mode, what)
        for mode in ("backtest", "live", "resumed")
        for what in ("tradable", "ready", "sizing's score", "risk's targets")
        # Nothing is sized or checked at a bar replayed for features.
        if mode != "resumed" or what in ("tradable", "ready")
    ],
)
async def test_the_engines_own_fresh_inputs_cannot_be_made_writeable(engine_config, mode, what):
    """ctx.tradable and ctx.ready (made each bar), the score the sizing is given and the
    targets each risk plugin is given were flagged read-only, which numpy undid at
    `setflags(write=True)`: a fresh array owns its memory, and the score and targets were
    views of writeable arrays (the planner, the store and the next risk plugin read them
    after). Now the flag cannot be set, and the run stops naming the plugin. "resumed": the
    bars an earlier process completed, replayed for features (ctx.tradable and ctx.ready
    made there too)."""
    first = _UnlockingSignal(what) if what in ("tradable", "ready") else None
    engine, reader = _engine(engine_config, "backtest" if mode == "resumed" else mode,
                             first or _Quiet())  # fmt: skip
    through = None
    if mode == "resumed":
        through = engine._restored_through = engine.feed.panel.datetimes()[70]
    if what == "sizing's score":
        engine.pipeline.sizing = _UnlockingSizing(engine.pipeline.sizing)
    elif what == "risk's targets":
        engine.pipeline.risks = [_UnlockingRisk(), *engine.pipeline.risks]
    with pytest.raises(
        PluginFault,
        match=r"plugin 'unlocker' failed in (score|observe|size|check).*cannot set WRITEABLE",
    ) as fault:
        await engine.run_until_done()
    if first is not None:
        assert not reader.read, "the reader ran after the write"
    if through is not None:  # at a bar replayed for features, not after the checkpoint
        assert fault.value.bar_time <= through


class _Quiet:
    kind, name = "signal", "quiet"

    def required_features(self):  # type: ignore[no-untyped-def]
        return ()

    def score(self, ctx):  # type: ignore[no-untyped-def]
        return np.full(len(ctx.symbols), np.nan)


@pytest.mark.parametrize("mode", ["backtest", "live"])
async def test_a_plugin_that_tries_to_write_its_inputs_changes_nothing_another_reads(
    engine_config, mode
):
    """A plugin that makes each input writeable where numpy lets it (else writes into its
    own copy) and doubles it: the other plugin reads, at every bar, what it reads beside a
    plugin that touches nothing, and the run trades the same."""

    class Quiet:
        kind, name = "signal", "quiet"

        def required_features(self):  # type: ignore[no-untyped-def]
            return ()

        def score(self, ctx):  # type: ignore[no-untyped-def]
            return np.full(len(ctx.symbols), np.nan)

    refused: set[str] = set()

    class Writer(Quiet):
        name = "writer"

        def score(self, ctx):  # type: ignore[no-untyped-def]
            for what, get in _INPUTS.items():
                a = get(ctx)
                try:
                    a.setflags(write=True)
                except ValueError:
                    refused.add(what)
                    a = np.array(a)
                a *= 2.0
            return super().score(ctx)

    seen = []
    for first in (Quiet(), Writer()):
        engine, reader = _engine(engine_config, mode, first)
        result = await engine.run_until_done()
        seen.append((reader.read, result.equity, result.fills))
    (clean, clean_equity, clean_fills), (beside, equity, fills) = seen
    assert refused == set(_INPUTS)
    assert clean_fills > 0 and (equity, fills) == (clean_equity, clean_fills)
    assert len(beside) == len(clean)
    for a, b in zip(beside, clean, strict=True):
        for k in _INPUTS:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("mode", ["backtest", "live"])
async def test_a_risk_plugins_shorts_are_closed_longs_where_the_broker_may_not_short(
    engine_config, mode
):
    """A risk plugin flipping the targets (with a verdict for the book) under
    broker.allow_short = false: the backtest sent short entries, refused one by one
    ("insufficient qty"), and a live run against an account that may short opened one; no
    `engine.targets_repaired` line said why. The shorts are targets of 0 (the longs close),
    logged naming the risk plugin, and no order is refused."""
    from structlog.testing import capture_logs

    from tradingd.app import build_engine
    from tradingd.core.ports import RiskDecision
    from tradingd.core.types import RiskVerdict

    class Flipper:
        kind, name = "risk", "flipper"

        def required_features(self):  # type: ignore[no-untyped-def]
            return ()

        def check(self, targets, ctx):  # type: ignore[no-untyped-def]
            if ctx.index % 10 != 0:
                return RiskDecision(targets)
            return RiskDecision(-targets, (RiskVerdict(self.name, None, "scale", "flip"),))

    if mode == "live":
        panel, config = live_run(engine_config)
    else:
        panel, config = make_panel(n_bars=120, split_at=None), engine_config
    assert config.broker.allow_short is False
    engine = build_engine(config, mode, panel=panel)
    engine.pipeline.risks = [*engine.pipeline.risks, Flipper()]
    lowest: list[float] = []
    engine.after_bar.append(lambda t, v: lowest.append(float(engine.portfolio.quantity.min())))
    with capture_logs() as logs:
        await engine.run_until_done()
    repaired = [e for e in logs if e["event"] == "engine.targets_repaired"]
    assert repaired and {(e["plugin"], e["stage"], e["kind"]) for e in repaired} == {
        ("flipper", "check", "short_target")
    }
    assert not [e for e in logs if e["event"] == "order.rejected"]
    assert lowest and min(lowest) >= 0.0
    assert engine.result().fills > 0


@pytest.mark.parametrize("mode", ["backtest", "live"])
async def test_a_plugins_exception_is_logged_with_its_traceback(engine_config, mode):
    """A plugin raising stopped the run with one line, `RuntimeError: boom`, and the log
    had no error event at all (debug level added none): the traceback was nowhere. The
    fault names the plugin's line, and `plugin.failed` carries the whole traceback (the
    fault, caused by the plugin's exception), in a live daemon's log as in a replay's."""
    import traceback

    from structlog.testing import capture_logs

    from tradingd.app import build_engine

    class Raiser:
        kind, name = "signal", "raiser"

        def required_features(self):  # type: ignore[no-untyped-def]
            return ()

        def score(self, ctx):  # type: ignore[no-untyped-def]
            if ctx.index >= 70:
                raise RuntimeError("boom from raiser")  # raiser's line
            return np.zeros(len(ctx.symbols))

    line = next(
        i
        for i, text in enumerate(Path(__file__).read_text().splitlines(), 1)
        if text.endswith("# raiser's line")
    )
    if mode == "live":
        panel, config = live_run(engine_config)
    else:
        panel, config = make_panel(n_bars=90, split_at=None), engine_config
    engine = build_engine(config, mode, panel=panel)
    engine.pipeline.signals = [(Raiser(), 1.0)]
    with capture_logs() as logs, pytest.raises(PluginFault) as caught:
        await engine.run_until_done()
    fault = caught.value
    assert str(fault).endswith(f"RuntimeError: boom from raiser ({__file__}:{line}, in score)")
    failed = [e for e in logs if e["event"] == "plugin.failed"]
    assert len(failed) == 1 and failed[0]["log_level"] == "error"
    assert failed[0]["plugin"] == "raiser" and failed[0]["stage"] == "score"
    assert failed[0]["time"] == fault.bar_time and failed[0]["where"] == fault.where
    assert failed[0]["exc_info"] is fault
    shown = "".join(traceback.format_exception(failed[0]["exc_info"]))
    assert f'File "{__file__}", line {line}, in score' in shown
    assert "RuntimeError: boom from raiser" in shown


@pytest.mark.parametrize("mode", ["backtest", "live"])
async def test_a_signal_without_a_view_at_any_bar_is_said_once_at_the_end(engine_config, mode):
    """A signal returning NaN for every symbol at every bar traded nothing, exit 0, with no
    word (NaN targets are logged, a signal with no view was not). One warning at the run's
    end names it and the bars, and the result lists it; a signal with a view at one bar
    only, and the warm-up bars (scored, the result unused), do not count."""
    from structlog.testing import capture_logs

    from tradingd.app import build_engine

    class Silent:
        kind, name = "signal", "silent"

        def required_features(self):  # type: ignore[no-untyped-def]
            return ()

        def score(self, ctx):  # type: ignore[no-untyped-def]
            return np.full(len(ctx.symbols), np.nan)

    class Once(Silent):
        name = "once"

        def __init__(self) -> None:
            self.calls = 0

        def score(self, ctx):  # type: ignore[no-untyped-def]
            self.calls += 1
            scores = np.full(len(ctx.symbols), np.nan)
            scores[0] = 0.5 if ctx.index == 80 else np.nan
            return scores

    if mode == "live":
        panel, config = live_run(engine_config)
    else:
        panel, config = make_panel(n_bars=90, split_at=None), engine_config
    engine = build_engine(config, mode, panel=panel)
    engine.pipeline.signals = [(Silent(), 1.0), (Once(), 1.0)]
    with capture_logs() as logs:
        result = await engine.run_until_done()
    said = [e for e in logs if e["event"] == "run.signal_without_view"]
    traded = result.bars
    assert traded > 0
    assert [(e["plugin"], e["bars"], e["log_level"]) for e in said] == [
        ("silent", traded, "warning")
    ]
    assert result.warnings == [
        {"warning": "signal_without_view", "plugin": "silent", "bars": traded}
    ]


@pytest.mark.parametrize("mode", ["backtest", "live"])
@pytest.mark.parametrize("target_at", [None, 80], ids=["never", "at one bar"])
async def test_a_sizing_without_targets_at_any_bar_is_said_once_at_the_end(
    engine_config, mode, target_at
):
    """A sizing that returned NaN for every symbol at every bar traded nothing, exit 0:
    each NaN was repaired to 0 with an `engine.targets_repaired` line (the 1st, 10th,
    100th), and nothing said the run could not trade. One warning at the run's end names
    it and the bars, and the result lists it; a sizing with a target at one bar (a Series,
    as a plugin may return) does not count."""
    import pandas as pd
    from structlog.testing import capture_logs

    from tradingd.app import build_engine

    class NoTargets:
        kind, name = "sizing", "no_targets"

        def required_features(self):  # type: ignore[no-untyped-def]
            return ()

        def size(self, score, ctx):  # type: ignore[no-untyped-def]
            t = np.full(len(ctx.symbols), np.nan)
            if ctx.index == target_at:
                t[0] = 0.1
            return pd.Series(t, index=list(ctx.symbols))

    if mode == "live":
        panel, config = live_run(engine_config)
    else:
        panel, config = make_panel(n_bars=90, split_at=None), engine_config
    engine = build_engine(config, mode, panel=panel)
    engine.pipeline.signals = [(_Reader(), 1.0)]
    engine.pipeline.sizing = NoTargets()
    with capture_logs() as logs:
        result = await engine.run_until_done()
    said = [e for e in logs if e["event"] == "run.sizing_without_targets"]
    traded = result.bars
    assert traded > 0 and any(e["event"] == "engine.targets_repaired" for e in logs)
    if target_at is not None:
        assert result.fills > 0  # the one target traded
        assert not said and not result.warnings
        return
    assert result.fills == 0
    assert [(e["plugin"], e["bars"], e["log_level"]) for e in said] == [
        ("no_targets", traded, "warning")
    ]
    assert result.warnings == [
        {"warning": "sizing_without_targets", "plugin": "no_targets", "bars": traded}
    ]


@pytest.mark.parametrize("mode", ["backtest", "live"])
async def test_ctx_index_counts_the_bars_given_from_the_first_warm_up_bar(engine_config, mode):
    """ctx.index was documented as "bars since the start of the run", and a plugin saw 3646
    at its run.start: it counts every bar the engine was given, warm-up bars included, from
    the data's first (a live run's first warm-up bar), and equals ctx.history.length - 1.
    What the README and BarContext now say, held here."""
    import dataclasses

    from tradingd.app import build_engine

    seen: list[tuple[int, int, bool]] = []

    class Probe:
        kind, name = "signal", "probe"

        def required_features(self):  # type: ignore[no-untyped-def]
            return ()

        def observe(self, ctx):  # type: ignore[no-untyped-def]
            seen.append((ctx.index, ctx.history.length, False))

        def score(self, ctx):  # type: ignore[no-untyped-def]
            seen.append((ctx.index, ctx.history.length, True))
            return np.zeros(len(ctx.symbols))

    if mode == "live":
        panel, config = live_run(engine_config)
    else:
        panel = make_panel(n_bars=90, split_at=None)
        start = panel.datetimes()[40].date().isoformat()
        config = dataclasses.replace(
            engine_config, run=dataclasses.replace(engine_config.run, start=start)
        )
    engine = build_engine(config, mode, panel=panel)
    engine.pipeline.signals = [(Probe(), 1.0)]
    await engine.run_until_done()
    warm_up = 60 if mode == "live" else 40
    assert [i for i, _, _ in seen] == list(range(90))
    assert all(i == length - 1 for i, length, _ in seen)
    assert next(i for i, _, traded in seen if traded) == warm_up


def _memory_behind(a: object) -> int:
    """The most numbers any array or buffer under `a` holds (its `.base`, a memoryview's
    `.obj`, all the way down): what a plugin can reach from the array it is given."""
    most = 0
    while a is not None:
        if isinstance(a, np.ndarray | memoryview):
            most = max(most, a.nbytes // 8)
        a = getattr(a, "base", None) if isinstance(a, np.ndarray) else getattr(a, "obj", None)
    return most


async def test_a_recorded_live_bar_reaches_no_later_bar_through_its_base(engine_config):
    """On the recorded live feed `ctx.bar.close.base` was the whole recorded panel: a plugin
    read the closes still to come (a demo account went from 100k to 188k, and replay-check
    passed it). Each bar's arrays are now copies holding that bar alone, on the warm-up bars
    as on the traded ones."""
    from tradingd.app import build_engine

    class Peeker:
        kind, name = "signal", "peeker"

        def __init__(self) -> None:
            self.reach: set[int] = set()

        def required_features(self):  # type: ignore[no-untyped-def]
            return ()

        def score(self, ctx):  # type: ignore[no-untyped-def]
            b = ctx.bar
            for a in (b.open, b.high, b.low, b.close, b.volume, b.split, b.dividend):
                self.reach.add(_memory_behind(a))
            return np.full(len(ctx.symbols), np.nan)

    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)
    peeker = Peeker()
    engine.pipeline.signals = [(peeker, 1.0)]
    result = await engine.run_until_done()
    assert result.bars > 0
    assert peeker.reach == {len(panel.symbols)}


@pytest.mark.parametrize("mode", ["backtest", "live"])
async def test_a_plugin_configured_twice_is_named_by_instance_in_faults_and_records(
    engine_config, mode
):
    """The same signal configured twice (README: its instances are `name` and `name#2`) was
    "q_trend,q_trend" in the signal records and `plugin 'q_trend' failed` whichever of the
    two raised. The records say `twice,twice#2`; a fault in the second names `twice#2`, and
    one in the first `twice`."""
    from tradingd.app import build_engine

    class Twice:
        kind, name = "signal", "twice"

        def __init__(self, fail_at: int | None) -> None:
            self.fail_at = fail_at
            self.sources: list[str] = []

        def required_features(self):  # type: ignore[no-untyped-def]
            return ()

        def score(self, ctx):  # type: ignore[no-untyped-def]
            if ctx.index == self.fail_at:
                raise RuntimeError("boom")
            return np.zeros(len(ctx.symbols))

    for failing in (1, 0):
        if mode == "live":
            panel, config = live_run(engine_config)
        else:
            panel, config = make_panel(n_bars=90, split_at=None), engine_config
        engine = build_engine(config, mode, panel=panel)
        plugins = [Twice(None), Twice(None)]
        engine.pipeline.signals = [(p, 1.0) for p in plugins]
        assert engine.signal_source == "twice,twice#2"
        plugins[failing].fail_at = 75
        label = "twice#2" if failing else "twice"
        with pytest.raises(PluginFault, match=rf"plugin '{label}' failed in score at bar"):
            await engine.run_until_done()


@pytest.mark.parametrize("mode", ["backtest", "live"])
async def test_ctx_history_offers_no_push_and_its_reads_are_the_engines(engine_config, mode):
    """ctx.history was the engine's own buffer: a plugin calling `ctx.history.push(ctx.bar)`
    added the bar to every plugin's history (a doubled row in each window, `length` and
    `ctx.index` off by one). It now has `window` and `length` only: the push is an
    AttributeError (here caught), and what the plugins read is the engine's buffer."""
    pusher_failed: list[str] = []

    class Pusher:
        kind, name = "signal", "pusher"

        def required_features(self):  # type: ignore[no-untyped-def]
            return ()

        def score(self, ctx):  # type: ignore[no-untyped-def]
            try:
                ctx.history.push(ctx.bar)
            except AttributeError as exc:
                pusher_failed.append(str(exc))
            assert ctx.history.length == ctx.index + 1
            return np.full(len(ctx.symbols), np.nan)

    engine, reader = _engine(engine_config, mode, Pusher())
    await engine.run_until_done()
    assert pusher_failed and "push" in pusher_failed[0]
    assert reader.read
    final = engine.history.window("close", 2)
    np.testing.assert_array_equal(reader.read[-1]["history window"], final)


@pytest.mark.parametrize("mode", ["backtest", "live"])
async def test_a_read_of_a_feature_no_plugin_declared_says_how_to_declare_it(engine_config, mode):
    """`ctx.features["rsi_14"]` in a plugin that declared none was a bare `KeyError:
    'rsi_14'`, naming neither `required_features()` nor what the run computes."""
    from tradingd.app import build_engine

    class Undeclared:
        kind, name = "signal", "undeclared"

        def required_features(self):  # type: ignore[no-untyped-def]
            return ()

        def score(self, ctx):  # type: ignore[no-untyped-def]
            return np.tanh(ctx.features["no_such_feature_9"])

    if mode == "live":
        panel, config = live_run(engine_config)
    else:
        panel, config = make_panel(n_bars=90, split_at=None), engine_config
    engine = build_engine(config, mode, panel=panel)
    engine.pipeline.signals = [(Undeclared(), 1.0)]
    with pytest.raises(PluginFault) as caught:
        await engine.run_until_done()
    said = str(caught.value)
    assert "'no_such_feature_9' is not computed in this run" in said
    assert "required_features()" in said and "features.extra" in said
