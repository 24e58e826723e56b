"""The built-in signal, sizing and risk plugins on hand-made cross-sections."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest

from tradingd.core.ports import BarContext, PortfolioView
from tradingd.core.types import CrossSection
from tradingd.engine.history import HistoryBuffer
from tradingd_plugins.risk.drawdown import DrawdownGuard, DrawdownGuardConfig
from tradingd_plugins.risk.limits import (
    MaxGrossExposure,
    MaxGrossExposureConfig,
    MaxOpenPositions,
    MaxOpenPositionsConfig,
    MaxPosition,
    MaxPositionConfig,
)
from tradingd_plugins.signals.momentum import Momentum, MomentumConfig
from tradingd_plugins.signals.sma_cross import SmaCross, SmaCrossConfig
from tradingd_plugins.sizing.equal_weight import EqualWeight, EqualWeightConfig

SYMS = ("A", "B", "C", "D")
T = datetime(2021, 3, 1, tzinfo=UTC)


def ctx(
    features=None,
    tradable=None,
    quantity=None,
    weights=None,
    equity=100.0,
    peak=100.0,
    day_start=100.0,
    history=None,
):
    n = len(SYMS)
    close = np.full(n, 10.0)
    bar = CrossSection(T, close, close, close, close, np.ones(n), np.ones(n), np.zeros(n))
    return BarContext(
        time=T,
        index=0,
        symbols=SYMS,
        bar=bar,
        mark=close,
        tradable=np.ones(n, bool) if tradable is None else np.asarray(tradable),
        history=history or HistoryBuffer(n, 2),
        features=features or {},
        portfolio=PortfolioView(
            cash=equity,
            equity=equity,
            quantity=np.zeros(n) if quantity is None else np.asarray(quantity, float),
            weights=np.zeros(n) if weights is None else np.asarray(weights, float),
            peak_equity=peak,
            day_start_equity=day_start,
        ),
    )


def test_momentum_score_is_tanh_of_scaled_return():
    m = Momentum(MomentumConfig(lookback=5, scale=0.2), SYMS)
    ret = np.array([0.1, -0.3, 0.0, np.nan])
    s = m.score(ctx(features={"return_5": ret}))
    np.testing.assert_allclose(s[:3], [np.tanh(0.5), np.tanh(-1.5), 0.0])
    assert np.isnan(s[3])  # not ready stays "no view"
    assert m.required_features() == ("return_5",)


def test_momentum_with_skip_uses_the_lagged_return_feature():
    m = Momentum(MomentumConfig(lookback=126, skip=21, scale=1.0), SYMS)
    assert m.required_features() == ("lag_21_return_105",)  # t-126 .. t-21
    s = m.score(ctx(features={"lag_21_return_105": np.array([0.2, -0.1, 0.0, 0.5])}))
    np.testing.assert_allclose(s, np.tanh([0.2, -0.1, 0.0, 0.5]))


def test_sma_cross_sign_and_warmup():
    p = SmaCross(SmaCrossConfig(fast=2, slow=3), SYMS)
    s = p.score(
        ctx(
            features={
                "sma_2": np.array([2.0, 1.0, 1.0, np.nan]),
                "sma_3": np.array([1.0, 2.0, 1.0, 1.0]),
            }
        )
    )
    np.testing.assert_array_equal(s[:3], [1.0, -1.0, 0.0])
    assert np.isnan(s[3])
    with pytest.raises(ValueError, match="fast < slow"):
        SmaCrossConfig(fast=5, slow=5)


def test_equal_weight_top_k_long_only_and_untradable_kept():
    ew = EqualWeight(EqualWeightConfig(max_positions=2, gross_exposure=0.5), SYMS)
    score = np.array([0.9, 0.2, 0.5, -0.8])
    np.testing.assert_allclose(ew.size(score, ctx()), [0.25, 0.0, 0.25, 0.0])
    # C cannot trade now: it keeps its current weight, and A and B are the top 2 tradable.
    t = ew.size(score, ctx(tradable=[True, True, False, True], weights=[0, 0, 0.1, 0]))
    np.testing.assert_allclose(t, [0.25, 0.25, 0.1, 0.0])


def test_equal_weight_shorts_when_allowed():
    ew = EqualWeight(EqualWeightConfig(max_positions=1, gross_exposure=1.0, allow_short=True), SYMS)
    t = ew.size(np.array([0.9, 0.2, np.nan, -0.8]), ctx())
    np.testing.assert_allclose(t, [0.5, 0.0, 0.0, -0.5])


def test_max_position_clips_with_verdicts():
    r = MaxPosition(MaxPositionConfig(0.05), SYMS)
    d = r.check(np.array([0.1, -0.2, 0.03, 0.0]), ctx())
    np.testing.assert_allclose(d.targets, [0.05, -0.05, 0.03, 0.0])
    assert [(v.symbol, v.action, v.allowed) for v in d.verdicts] == [
        ("A", "clip", 0.05),
        ("B", "clip", -0.05),
    ]


def test_plugins_keep_float32_rows_in_float32():
    """The plugins compare and divide by their config's Python floats, which take a row's
    type (NEP 50), not by 0-d float64 operands (core/arrays.scalar), which would not: a
    float32 score of 0.1 is not above a min_score of 0.1, a float32 target of 0.05 is within
    a 0.05 cap, and a float32 return gives a float32 score."""
    f32 = np.float32
    ew = EqualWeight(EqualWeightConfig(max_positions=2, gross_exposure=0.5, min_score=0.1), SYMS)
    t = ew.size(np.array([0.1, 0.3, 0.0, 0.0], dtype=f32), ctx())
    np.testing.assert_array_equal(t, [0.0, 0.5, 0.0, 0.0])
    ew = EqualWeight(
        EqualWeightConfig(max_positions=1, gross_exposure=1.0, min_score=0.1, allow_short=True),
        SYMS,
    )
    t = ew.size(np.array([0.0, -0.1, 0.0, 0.0], dtype=f32), ctx())
    np.testing.assert_array_equal(t, [0.0, 0.0, 0.0, 0.0])
    d = MaxPosition(MaxPositionConfig(0.05), SYMS).check(np.full(4, 0.05, dtype=f32), ctx())
    assert d.verdicts == ()
    m = Momentum(MomentumConfig(lookback=5, scale=0.2), SYMS)
    ret = np.array([0.1, -0.3, 0.0, 0.7], dtype=f32)
    s = m.score(ctx(features={"return_5": ret}))
    assert s.dtype == f32
    assert s.tobytes() == np.tanh(ret / 0.2).tobytes()


def test_max_open_positions_prefers_held_then_larger():
    r = MaxOpenPositions(MaxOpenPositionsConfig(2), SYMS)
    d = r.check(np.array([0.1, 0.3, 0.2, 0.05]), ctx(quantity=[0, 0, 0, 5]))
    np.testing.assert_allclose(d.targets, [0.0, 0.3, 0.0, 0.05])  # D is held, B is largest
    assert {v.symbol for v in d.verdicts} == {"A", "C"}
    assert all("max open positions 2" in v.reason for v in d.verdicts)


def test_max_gross_exposure_scales_proportionally():
    r = MaxGrossExposure(MaxGrossExposureConfig(1.0), SYMS)
    d = r.check(np.array([0.8, -0.8, 0.4, 0.0]), ctx())
    np.testing.assert_allclose(d.targets, [0.4, -0.4, 0.2, 0.0])
    assert d.verdicts[0].action == "scale"
    assert r.check(np.array([0.5, 0.5, 0, 0]), ctx()).verdicts == ()


@pytest.mark.parametrize("value", [0.0, -1.0, 4.5, 100.0])
def test_max_gross_exposure_refuses_a_cap_no_broker_lends(value):
    """100.0 (10,000%) passed: a cap that caps nothing, said nowhere."""
    with pytest.raises(ValueError, match=r"\(0, 4\].*1\.0 = 100%"):
        MaxGrossExposureConfig(value)
    assert MaxGrossExposureConfig(4.0).max_gross_exposure == 4.0  # Reg T's intraday 4x


def test_drawdown_guard_blocks_new_exposure_but_allows_exits():
    g = DrawdownGuard(DrawdownGuardConfig(max_drawdown_pct=0.2, daily_loss_limit_pct=0.05), SYMS)
    current = np.array([0.1, 0.1, 0.0, -0.1])
    wanted = np.array([0.05, 0.2, 0.1, 0.0])
    d = g.check(wanted, ctx(weights=current, equity=79.0, peak=100.0, day_start=80.0))
    # reduce A: ok; increase B: blocked; open C: blocked; close D: ok
    np.testing.assert_allclose(d.targets, [0.05, 0.1, 0.0, 0.0])
    assert d.verdicts[0].action == "halt" and "drawdown 21.00%" in d.verdicts[0].reason
    # Inside both limits nothing changes.
    ok = g.check(wanted, ctx(weights=current, equity=99.0, peak=100.0, day_start=100.0))
    np.testing.assert_array_equal(ok.targets, wanted)
    assert ok.verdicts == ()


def test_drawdown_guard_daily_loss_and_flatten():
    g = DrawdownGuard(DrawdownGuardConfig(daily_loss_limit_pct=0.05), SYMS)
    d = g.check(
        np.array([0.2, 0, 0, 0]),
        ctx(weights=[0.1, 0, 0, 0], equity=94.0, peak=100.0, day_start=99.5),
    )
    np.testing.assert_allclose(d.targets, [0.1, 0, 0, 0])
    assert "daily loss" in d.verdicts[0].reason
    f = DrawdownGuard(DrawdownGuardConfig(flatten_on_breach=True), SYMS)
    d = f.check(np.array([0.2, 0.1, 0, 0]), ctx(weights=[0.1, 0.1, 0, 0], equity=70.0))
    np.testing.assert_array_equal(d.targets, np.zeros(4))
    assert d.verdicts[0].action == "flatten"


def test_top_k_matches_a_full_stable_sort():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from tradingd_plugins.sizing.equal_weight import _SORT_ALL, _top

    @settings(max_examples=200, deadline=None)
    @given(
        st.integers(0, 2 * _SORT_ALL + 40),  # below and above _SORT_ALL: both of _top_of's ways
        st.integers(0, 2**32 - 1),
        st.integers(1, 12),
    )
    def check(n, seed, k):
        rng = np.random.default_rng(seed)
        # Many ties (a few repeated values), NaN, infinities and plain floats.
        pool = np.array([0.1, 0.5, -0.0, 0.0, np.nan, np.inf, -np.inf])
        v = np.where(rng.random(n) < 0.5, rng.choice(pool, n), rng.uniform(-1, 1, n))
        # The reference: best first, ties by universe order, NaN never chosen.
        ranked = sorted((i for i in range(n) if not np.isnan(v[i])), key=lambda i: (-v[i], i))
        got = _top(v, k)
        assert sorted(got.tolist()) == sorted(ranked[:k])

    check()


def test_top_k_without_ties_takes_the_partition_and_matches_a_full_sort():
    """Distinct scores above `_SORT_ALL` candidates: the partition's answer without a tie
    check (the usual bar of a wide universe), the same members as a full stable sort."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from tradingd_plugins.sizing.equal_weight import _SORT_ALL, _top_of

    @settings(max_examples=200, deadline=None)
    @given(
        st.integers(_SORT_ALL + 1, 3 * _SORT_ALL),
        st.integers(0, 2**32 - 1),
        st.integers(1, 40),
    )
    def check(n, seed, k):
        rng = np.random.default_rng(seed)
        v = rng.permutation(n) / n - 0.5  # distinct values
        idx = np.sort(rng.choice(n, size=rng.integers(_SORT_ALL + 1, n + 1), replace=False))
        w = -v[idx]
        kth = np.partition(w, k - 1)[k - 1]
        assert np.count_nonzero(w <= kth) == k  # the branch under test: no tie at the k-th
        ranked = sorted(idx.tolist(), key=lambda i: (-v[i], i))
        assert sorted(_top_of(idx, v, k).tolist()) == sorted(ranked[:k])

    check()


def _guard(**kw):
    return DrawdownGuard(
        DrawdownGuardConfig(max_drawdown_pct=0.2, daily_loss_limit_pct=0.5, **kw), SYMS
    )


def _wants(g, equity, day_start=None):
    """One bar: the book holds 10% of A and wants 20%; returns the allowed target of A."""
    d = g.check(
        np.array([0.2, 0, 0, 0]),
        ctx(weights=[0.1, 0, 0, 0], equity=equity, peak=100.0, day_start=day_start or equity),
    )
    return float(d.targets[0]), d.verdicts


def test_drawdown_cooloff_rebases_the_peak_after_n_bars():
    g = _guard(recovery="cooloff", cooloff_bars=3)
    assert _wants(g, 100.0)[0] == 0.2
    # Breach at 75 (25% below 100): blocked for 3 bars, although equity never recovers.
    blocked = [_wants(g, 75.0) for _ in range(3)]
    assert [t for t, _ in blocked] == [0.1, 0.1, 0.1]
    assert all(v[0].rule == "max_drawdown" and v[0].action == "halt" for _, v in blocked)
    # Then the peak is 75: trading resumes, and a new 20% fall from there trips it again.
    assert _wants(g, 75.0) == (0.2, ())
    assert _wants(g, 61.0)[0] == 0.2  # 18.7% below 75
    assert _wants(g, 59.0)[0] == 0.1  # 21.3% below 75


def test_drawdown_cooloff_lifts_early_when_equity_recovers():
    g = _guard(recovery="cooloff", cooloff_bars=50)
    _wants(g, 100.0)
    assert _wants(g, 79.0)[0] == 0.1
    assert _wants(g, 85.0) == (0.2, ())  # back within 20% of the unchanged peak


def test_drawdown_halt_holds_until_reset():
    g = _guard(recovery="halt")
    _wants(g, 100.0)
    for equity in (79.0, 90.0, 100.0, 120.0):  # even a new high does not lift it
        assert _wants(g, equity)[0] == 0.1
    g.reset()
    assert _wants(g, 70.0) == (0.2, ())  # the peak is re-based at the reset
    assert _wants(g, 55.0)[0] == 0.1  # 21% below 70


@pytest.mark.parametrize("recovery", ["halt", "cooloff", "scale"])
def test_a_halt_waiting_for_a_reset_fails_readiness_and_a_self_ending_one_does_not(recovery):
    """A halted kill switch looked healthy: /ready 200, trading_state "active", `tradingd
    health` exit 0, while the daemon would open nothing until a person reset it."""
    from tradingd.health import status_check

    g = _guard(recovery=recovery, cooloff_bars=50)
    check = status_check("drawdown_guard", g.status)
    _wants(g, 100.0)
    assert check.probe().ok and not check.probe().data["halted"]
    _wants(g, 75.0)  # 25% below the peak of 100: breached
    res = check.probe()
    assert res.data["halted"] and res.data["breach_drawdown"] == pytest.approx(0.25)
    assert "since the breach at" in res.detail and "drawdown 25.00%, limit 20.00%" in res.detail
    if recovery == "halt":
        assert not res.ok and "until reset (POST /reset-halt" in res.detail
        g.reset()
        assert check.probe().ok
    else:
        assert res.ok and "ends by itself" in res.detail


def test_drawdown_scale_shrinks_instead_of_blocking():
    g = _guard(recovery="scale", underwater_exposure=0.5)
    _wants(g, 100.0)
    target, verdicts = _wants(g, 75.0)
    assert target == pytest.approx(0.1) and verdicts[0].action == "scale"
    assert _wants(g, 90.0) == (0.2, ())


@pytest.mark.parametrize(
    "params",
    [{"recovery": "later"}, {"cooloff_bars": 0}, {"underwater_exposure": 1.5}],
)
def test_drawdown_guard_rejects_bad_recovery_settings(params):
    with pytest.raises(ValueError, match=next(iter(params))):
        DrawdownGuardConfig(**params)


def test_a_replaced_config_takes_effect_at_the_next_call():
    """A reload replaces a plugin's config whole (reload._swap_config): the next call
    uses it, so a tightened limit is enforced at once (nothing derived from the config is
    kept from before)."""
    from tradingd.reload import _swap_config

    r = MaxPosition(MaxPositionConfig(0.10), SYMS)
    assert r.check(np.array([0.08, 0.02, 0.0, 0.0]), ctx()).verdicts == ()
    _swap_config(r, MaxPositionConfig(0.05))()
    d = r.check(np.array([0.08, 0.02, 0.0, 0.0]), ctx())
    np.testing.assert_array_equal(d.targets, [0.05, 0.02, 0.0, 0.0])
    assert [(v.symbol, v.allowed) for v in d.verdicts] == [("A", 0.05)]
    _swap_config(r, MaxPositionConfig(0.10))()
    assert r.check(np.array([0.08, 0.02, 0.0, 0.0]), ctx()).verdicts == ()

    ew = EqualWeight(EqualWeightConfig(max_positions=2, gross_exposure=0.5), SYMS)
    score = np.array([0.9, 0.2, 0.5, -0.8])
    np.testing.assert_allclose(ew.size(score, ctx()), [0.25, 0.0, 0.25, 0.0])
    ew.config = EqualWeightConfig(max_positions=2, gross_exposure=0.5, min_score=0.6)
    np.testing.assert_allclose(ew.size(score, ctx()), [0.5, 0.0, 0.0, 0.0])

    m = Momentum(MomentumConfig(lookback=5, scale=0.2), SYMS)
    ret = np.array([0.1, -0.3, 0.0, 0.5])
    m.score(ctx(features={"return_5": ret}))
    m.config = MomentumConfig(lookback=5, scale=1.0)
    assert m.score(ctx(features={"return_5": ret})).tobytes() == np.tanh(ret / 1.0).tobytes()


@pytest.mark.parametrize(
    "recovery,equity,day_start",
    [
        ("halt", 75.0, 75.0),  # 25% below the peak of 100: the drawdown halt
        ("cooloff", 75.0, 75.0),
        ("cooloff", 94.0, 100.0),  # 6% lost today, 6% below the peak: the daily-loss block
    ],
    ids=["halt", "cool-off", "daily loss"],
)
def test_a_blocked_guard_closes_a_position_whose_target_flipped_but_opens_no_new_side(
    recovery, equity, day_start
):
    """Reductions and exits go through a block: a long whose target turned short is closed
    (target 0), and the short is not opened; the same for a short turned long. Other
    symbols: a reduction is kept, an increase held at the current weight, an entry
    refused."""
    g = DrawdownGuard(
        DrawdownGuardConfig(max_drawdown_pct=0.2, daily_loss_limit_pct=0.05, recovery=recovery),
        SYMS,
    )
    current = [0.05, -0.04, 0.03, 0.0]
    wanted = np.array([-0.03, 0.02, 0.01, 0.02])
    d = g.check(wanted, ctx(weights=current, equity=equity, peak=100.0, day_start=day_start))
    np.testing.assert_array_equal(d.targets, [0.0, 0.0, 0.01, 0.0])
    assert len(d.verdicts) == 1 and d.verdicts[0].action == "halt"


def test_a_halt_after_a_partial_recovery_says_when_it_was_breached_and_where_it_is_now():
    """Once equity has recovered part of the way, the drawdown is below the limit but the
    halt holds: the reason says so (the breach, its date and drawdown, the drawdown now),
    not that the drawdown is at or above the limit. A restarted guard says the same."""
    from dataclasses import replace

    g = _guard(recovery="halt")
    days = [datetime(2021, 3, d, 21, tzinfo=UTC) for d in (1, 2, 3)]

    def bar(day, equity):
        c = replace(ctx(weights=[0.1, 0, 0, 0], equity=equity, peak=100.0), time=day)
        return g.check(np.array([0.2, 0, 0, 0]), c)

    bar(days[0], 100.0)
    at_breach = bar(days[1], 76.0).verdicts[0]
    assert at_breach.reason == "drawdown 24.00% >= limit 20.00% (until reset)"
    later = bar(days[2], 82.0).verdicts[0]  # 18% below the peak of 100
    expected = (
        "halted since the breach on 2021-03-02 21:00 UTC (drawdown then 24.00%); "
        "drawdown now 18.00% (limit 20.00%); until reset"
    )
    assert later.reason == expected
    assert later.requested == pytest.approx(0.18) and later.allowed == 0.2
    assert ">=" not in later.reason
    restarted = _guard(recovery="halt")
    restarted.restore(json.loads(json.dumps(g.state())))
    c = replace(ctx(weights=[0.1, 0, 0, 0], equity=82.0, peak=100.0), time=days[2])
    again = restarted.check(np.array([0.2, 0, 0, 0]), c).verdicts[0]
    assert again.reason == expected
    # A checkpoint written before the breach was kept: the halt holds, and says so.
    old = {k: v for k, v in g.state().items() if not k.startswith("breach")}
    earlier = _guard(recovery="halt")
    earlier.restore(old)
    reason = earlier.check(np.array([0.2, 0, 0, 0]), c).verdicts[0].reason
    assert (
        reason == "halted since an earlier breach; drawdown now 18.00% (limit 20.00%); until reset"
    )
