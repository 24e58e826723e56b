"""The engine's check of a signal plugin's scores takes one comparison when every score is a
finite number in [-1, 1], and the full checks otherwise: either way it accepts, refuses and
returns exactly what the rule says. The rule, written out here: the scores are converted to
float64, must have one value per symbol, no infinity, and every non-NaN value within
[-1, 1] (with a 1e-12 margin); NaN means "no view" and is kept."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradingd.core.errors import PluginFault
from tradingd.engine.engine import Engine

N = 6
_EDGES = [0.0, -0.0, 1.0, -1.0, 1.0 + 1e-12, 1.0 + 3e-12, -(1.0 + 3e-12), 0.5, np.nan, np.inf]
_EDGES += [-np.inf, 1e-300, np.nextafter(1.0 + 1e-12, 2.0), 1.5, -7.0]


def _rule(values: object) -> np.ndarray | str:
    """The scores the engine should go on with, or the fault it should raise."""
    a = np.asarray(values, dtype=np.float64)
    if a.shape != (N,):
        return "shape"
    if np.isinf(a).any():
        return "infinite"
    if (np.abs(a[~np.isnan(a)]) > 1.0 + 1e-12).any():
        return r"\[-1, 1\]"
    return a


class _Plugin:
    kind = "signal"
    name = "p"

    def __init__(self, values: object) -> None:
        self.values = values

    def score(self, ctx: object) -> object:
        return self.values


def _score(values: object) -> np.ndarray:
    engine = Engine.__new__(Engine)  # only what _score reads
    engine.symbols = tuple(f"S{i}" for i in range(N))
    engine._slow_plugin_s = 5.0
    engine._scored, engine._no_view = 0, {}
    engine.pipeline = SimpleNamespace(signals=[(_Plugin(values), 1.0)])
    return engine._score(SimpleNamespace(time="t"))


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.one_of(st.sampled_from(_EDGES), st.floats(-1.0, 1.0), st.floats(allow_nan=True)),
        min_size=N - 1,
        max_size=N + 1,
    ),
    st.sampled_from(["float64", "float32", "list"]),
)
def test_scores_are_accepted_and_refused_by_the_rule(values: list[float], kind: str) -> None:
    with np.errstate(over="ignore"):  # a float32 cast of a large float is inf: a case too
        given_values: object = values if kind == "list" else np.array(values, dtype=kind)
    expected = _rule(given_values)
    if isinstance(expected, str):
        with pytest.raises(PluginFault, match=f"'p' failed in score.*{expected}"):
            _score(given_values)
        return
    got = _score(given_values)
    assert got.dtype == np.float64 and got.shape == (N,)
    np.testing.assert_array_equal(got, expected)  # NaN where NaN, the same values elsewhere
    assert np.array_equal(np.signbit(got), np.signbit(expected))


def test_a_score_just_past_the_margin_is_refused_and_one_at_it_is_not() -> None:
    at = np.full(N, 1.0 + 1e-12)
    assert np.array_equal(_score(at), at)
    with pytest.raises(PluginFault, match=re.escape("[-1, 1]")):
        _score(np.full(N, np.nextafter(1.0 + 1e-12, 2.0)))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(st.sampled_from(_EDGES), st.floats(allow_nan=True)), min_size=N, max_size=N)
)
def test_targets_with_nan_hold_nothing_and_inf_is_refused(values: list[float]) -> None:
    """Sizing and risk outputs (allow_nan=False): NaN becomes 0 (no view, no position), inf
    is a fault, everything else passes unchanged."""
    from tradingd.engine.engine import _check_array

    a = np.array(values)
    if np.isinf(a).any():
        with pytest.raises(PluginFault, match="infinite"):
            _check_array(_Plugin(a), "size", a, N, "t", allow_nan=False)  # type: ignore[arg-type]
        return
    got = _check_array(_Plugin(a), "size", a, N, "t", allow_nan=False)  # type: ignore[arg-type]
    expected = np.where(np.isnan(a), 0.0, a)
    np.testing.assert_array_equal(got, expected)
    assert np.array_equal(np.signbit(got), np.signbit(expected))


class _Stub:
    """A plugin of every kind whose every call raises `outcome` (an exception) or returns
    it."""

    kind = "any"

    def __init__(self, outcome: object, name: str) -> None:
        self.outcome, self.name = outcome, name

    def _answer(self) -> object:
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def score(self, ctx: object) -> object:
        return self._answer()

    def size(self, score: object, ctx: object) -> object:
        return self._answer()

    def check(self, targets: object, ctx: object) -> object:
        return self._answer()


def _raising(exc: Exception) -> _Stub:
    return _Stub(exc, "r")


def _returning(value: object) -> _Stub:
    return _Stub(value, "q")


def _engine(plugin: object, *, long_only: bool = False) -> Engine:
    engine = Engine.__new__(Engine)
    engine.symbols = tuple(f"S{i}" for i in range(N))
    engine._universe = frozenset(engine.symbols)
    engine.long_only = engine._may_short = long_only  # a plugin without allow_short
    engine._repairs = {}
    engine._slow_plugin_s = 5.0
    engine._scored, engine._no_view, engine._no_target = 0, {}, 0
    engine.pipeline = SimpleNamespace(signals=[(plugin, 1.0)], sizing=plugin, risks=[plugin])
    return engine


def _run_stage(engine: Engine, stage: str, ctx: object) -> object:
    """The engine's call of the plugins at `stage`: score, size or check."""
    if stage == "score":
        return engine._score(ctx)  # type: ignore[arg-type]
    if stage == "size":
        return engine._size(np.zeros(N), ctx)  # type: ignore[arg-type]
    # Given targets of 1: a risk plugin's output at most that is a cut, never a raise.
    return engine._risk(np.ones(N), ctx)  # type: ignore[arg-type]


@pytest.mark.parametrize("stage", ["score", "size", "check"])
def test_a_plugins_exception_becomes_a_fault_naming_it_and_a_fault_goes_on_unchanged(stage):
    """The per-bar plugin calls have the plugin boundary inline: an exception becomes a
    PluginFault with the plugin, the stage and the bar, caused by the exception; a
    PluginFault the plugin raised (from a nested engine) is raised as it is."""
    ctx = SimpleNamespace(time="t")
    boom = KeyError("boom")
    with pytest.raises(PluginFault, match=f"'r' failed in {stage}") as caught:
        _run_stage(_engine(_raising(boom)), stage, ctx)
    assert caught.value.__cause__ is boom
    inner = PluginFault("inner", "score", "t", ValueError("x"))
    with pytest.raises(PluginFault) as caught:
        _run_stage(_engine(_raising(inner)), stage, ctx)
    assert caught.value is inner and inner.__cause__ is None


@pytest.mark.parametrize("stage", ["score", "size", "check"])
@pytest.mark.parametrize("value", ["abc", {"S0": 1.0}, [[1.0], [1.0, 2.0]]])
def test_output_that_is_not_numbers_is_the_plugins_fault(stage, value):
    """Text, a mapping or ragged lists ended in a bare traceback (exit 1) that did not name
    the plugin: the conversion to numbers was outside the plugin boundary."""
    from tradingd.core.ports import RiskDecision

    engine = _engine(_returning(RiskDecision(value) if stage == "check" else value))
    with pytest.raises(PluginFault, match=f"'q' failed in {stage}"):
        _run_stage(engine, stage, SimpleNamespace(time="t"))


@pytest.mark.parametrize("stage", ["score", "size", "check"])
def test_complex_output_is_the_plugins_fault_not_its_real_part(stage):
    """numpy's conversion keeps the real part of complex numbers with only a warning: a
    plugin's complex arithmetic (a root of a negative variance, say) was traded on as if its
    answer were real."""
    import warnings

    from tradingd.core.ports import RiskDecision

    value = np.full(N, 0.1 + 0.5j)
    engine = _engine(_returning(RiskDecision(value) if stage == "check" else value))
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        with pytest.raises(PluginFault, match=f"'q' failed in {stage}.*returned complex"):
            _run_stage(engine, stage, SimpleNamespace(time="t"))
    # Refused before numpy's conversion: its ComplexWarning ("Casting complex values to real
    # discards the imaginary part") was a stray py.warnings line beside the fault.
    assert [str(w.message) for w in warned] == []


@pytest.mark.parametrize("stage", ["score", "size", "check"])
@pytest.mark.parametrize(
    ("value", "said"),
    [
        (None, "returned None: did {stage}() forget to return?"),
        ({"S0": 0.5}, "returned a dict, not an array: return an array in ctx.symbols order"),
        (np.array(["a"] * N), "returned text (<U1), not numbers"),
        (["a"] * N, "returned text (<U1), not numbers"),
    ],
)
def test_the_common_return_mistakes_are_named(stage, value, said):
    """numpy's conversion named none of them: a forgotten return was "returned shape (),
    expected (6,)", a dict "float() argument must be a string or a real number, not
    'dict'", text that is not a number "could not convert string to float: np.str_('a')"
    (the README says text is named, as booleans are)."""
    from tradingd.core.ports import RiskDecision

    engine = _engine(_returning(RiskDecision(value) if stage == "check" else value))
    if stage == "check" and value is None:
        said = "returned a RiskDecision whose targets are None"
    with pytest.raises(PluginFault) as caught:
        _run_stage(engine, stage, SimpleNamespace(time="t"))
    assert str(caught.value).startswith(
        f"plugin 'q' failed in {stage} at bar t: TypeError: {said.format(stage=stage)}"
    )


class _Inverting:
    """A plugin whose helper calls numpy, which raises in numpy's own frames."""

    kind, name = "signal", "inverting"

    def score(self, ctx: object) -> object:
        return self._helper()

    def _helper(self) -> object:
        return np.linalg.inv(np.zeros((N, N)))[0]  # the plugin's line


_PLUGINS_LINE = next(
    i
    for i, line in enumerate(Path(__file__).read_text().splitlines(), 1)
    if line.endswith("# the plugin's line")
)


@pytest.mark.parametrize("stage", ["score", "observe"])
def test_a_plugins_exception_names_the_plugins_own_line(stage):
    """The CLI printed "RuntimeError: boom" and no file or line. The fault names the
    innermost frame of the plugin's own code (not numpy's frames below it), and keeps the
    exception, traceback and all, as its cause."""
    engine = _engine(_Inverting())
    ctx = SimpleNamespace(time="t")
    with pytest.raises(PluginFault) as caught:
        engine._observe(ctx) if stage == "observe" else engine._score(ctx)  # type: ignore[arg-type]
    fault = caught.value
    where = f"{__file__}:{_PLUGINS_LINE}, in _helper"
    assert fault.where == where
    assert str(fault).endswith(f"LinAlgError: Singular matrix ({where})")
    assert type(fault.__cause__).__name__ == "LinAlgError"
    assert fault.__cause__.__traceback__ is not None


def test_a_fault_of_the_engines_own_output_check_names_no_line():
    """A shape or a value the engine refuses was not raised by the plugin's code: no line of
    the engine's is given as if it were the plugin's."""
    fault = _fault_of(_returning(np.zeros(N - 1)), "score")
    assert fault.where is None and str(fault).endswith("returned shape (5,), expected (6,)")
    fault = _fault_of(_returning(["a"] * N), "score")
    assert fault.where is None and str(fault).endswith(
        "(<U1), not numbers: return floats "
        "(np.asarray(x, dtype=float) if the "
        "text is meant as numbers)"
    )


def _fault_of(plugin: object, stage: str) -> PluginFault:
    with pytest.raises(PluginFault) as caught:
        _run_stage(_engine(plugin), stage, SimpleNamespace(time="t"))
    return caught.value


def test_a_verdict_that_is_not_a_risk_verdict_is_the_plugins_fault():
    from tradingd.core.ports import RiskDecision

    engine = _engine(_returning(RiskDecision(np.zeros(N), ["clipped S0"])))
    with pytest.raises(PluginFault, match=r"'q' failed in check.*str, not RiskVerdict"):
        engine._risk(np.zeros(N), SimpleNamespace(time="t"))


def test_nan_targets_are_a_logged_repair_heard_without_a_line_per_bar():
    """NaN from sizing became 0 with no log line: a plugin returning NaN for held symbols
    sold them every bar, silently. Logged at the 1st, 10th, 100th time."""
    from structlog.testing import capture_logs

    plugin = _returning(np.array([0.1, np.nan, 0.2, np.nan, 0.0, 0.0]))
    plugin.name = "nan_sizer"
    engine = _engine(plugin)
    with capture_logs() as logs:
        for _ in range(12):
            got = engine._size(np.zeros(N), SimpleNamespace(time="t"))
    np.testing.assert_array_equal(got, [0.1, 0.0, 0.2, 0.0, 0.0, 0.0])
    lines = [e for e in logs if e["event"] == "engine.targets_repaired"]
    assert [e["times_so_far"] for e in lines] == [1, 10]
    assert lines[0]["plugin"] == "nan_sizer" and lines[0]["kind"] == "nan_target"
    assert lines[0]["symbols"] == ["S1", "S3"] and lines[0]["count"] == 2
    # Counted per engine: another one (a walk-forward's next fold) says its first too.
    with capture_logs() as logs:
        _engine(plugin)._size(np.zeros(N), SimpleNamespace(time="t"))
    assert [e["times_so_far"] for e in logs if e["event"] == "engine.targets_repaired"] == [1]


@pytest.mark.parametrize("long_only", [True, False])
def test_a_negative_target_is_zero_where_the_broker_may_not_short(long_only):
    """broker.allow_short = false with a sizing that goes short: the planner sent a sale of
    the long plus the short, which the broker refused whole, so the long was not closed
    either. A long-only engine makes the target 0 (logged); one that may short keeps it."""
    from structlog.testing import capture_logs

    targets = np.array([0.2, -0.1, 0.0, -0.3, 0.1, 0.0])
    engine = _engine(_returning(targets.copy()), long_only=long_only)
    with capture_logs() as logs:
        got = engine._size(np.zeros(N), SimpleNamespace(time="t"))
    repaired = [e for e in logs if e["event"] == "engine.targets_repaired"]
    if long_only:
        np.testing.assert_array_equal(got, [0.2, 0.0, 0.0, 0.0, 0.1, 0.0])
        assert repaired[0]["kind"] == "short_target" and repaired[0]["symbols"] == ["S1", "S3"]
    else:
        np.testing.assert_array_equal(got, targets)
        assert not repaired


def test_feature_requests_name_the_plugin_that_made_them():
    """`required_features()` returning "ret_1" (not a tuple) was read letter by letter and
    refused as the unknown feature '1'; an unknown feature's error named no plugin."""
    from tradingd.config import Config
    from tradingd.core.errors import ConfigError
    from tradingd.engine.engine import Pipeline
    from tradingd.preflight import _check_features

    class Asking:
        kind = "signal"

        def __init__(self, name: str, asked: object) -> None:
            self.name, self.asked = name, asked

        def required_features(self) -> object:
            return self.asked

    sizing = Asking("sizer", ())
    text = Pipeline(signals=[(Asking("texty", "ret_1"), 1.0)], sizing=sizing, risks=[])
    with pytest.raises(ConfigError, match=r"plugin 'texty': required_features\(\) must return"):
        text.required_features()
    odd = Pipeline(
        signals=[(Asking("odd", ("no_such_feature_xyz",)), 1.0)], sizing=sizing, risks=[]
    )
    with pytest.raises(
        ConfigError, match=r"plugin 'odd' asks for the feature = 'no_such_feature_xyz'"
    ):
        _check_features(Config(), odd)
    fine = Pipeline(signals=[(Asking("fine", ("ret_1",)), 1.0)], sizing=sizing, risks=[])
    assert fine.feature_owners() == {"ret_1": "fine"}


def test_a_third_party_sizing_that_says_it_never_shorts_is_still_checked():
    """Only a built-in's `allow_short = false` is taken at its word (the check costs a
    microsecond a bar): a third-party sizing with that field that returns a negative target
    would send sale plus short, refused whole, and the long never closed."""
    import dataclasses as dc

    from tradingd.engine.engine import Pipeline

    @dc.dataclass(frozen=True)
    class Cfg:
        allow_short: bool = False

    class ThirdParty:
        name, config = "mine", Cfg()

    class BuiltIn:
        name, config = "equal_weight", Cfg()

    BuiltIn.__module__ = "tradingd_plugins.sizing.equal_weight"
    for sizing, may_short in ((ThirdParty(), True), (BuiltIn(), False)):
        engine = Engine.__new__(Engine)
        pipeline = Pipeline(signals=[], sizing=sizing, risks=[])
        Engine._decide_long_only(engine, pipeline, True)
        assert engine._may_short is may_short, sizing


@pytest.mark.parametrize("stage", ["score", "size", "check"])
@pytest.mark.parametrize(
    ("value", "what"),
    [
        (np.array(["0.5"] * N), "text"),
        (["0.5"] * N, "text"),
        (np.array([b"0.5"] * N), "text"),
        (np.ones(N, dtype=bool), "booleans"),
        ([True] * N, "booleans"),
        (np.array([0.5] * (N - 1) + ["0.5"], dtype=object), "text"),
        (np.array([0.5] * (N - 1) + [True], dtype=object), "booleans"),
        (np.array(["2020-01-01"] * N, dtype="datetime64[D]"), "datetime64"),
    ],
)
def test_text_and_booleans_are_refused_not_read_as_numbers(stage, value, what):
    """numpy's conversion read numeric text ("0.5") as 0.5 and True as 1.0 (a weight of
    all the equity), so a plugin returning strings or a mask traded on them, exit 0."""
    from tradingd.core.ports import RiskDecision

    engine = _engine(_returning(RiskDecision(value) if stage == "check" else value))
    with pytest.raises(PluginFault, match=f"'q' failed in {stage} at bar t: TypeError: .*{what}"):
        _run_stage(engine, stage, SimpleNamespace(time="t"))


_HALVES = [0.0, 0.5, 0.0, 0.0, 0.25, 0.0]


@pytest.mark.parametrize("stage", ["score", "size", "check"])
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.array([0, 1, 0, 0, 1, 0]), [0.0, 1.0, 0.0, 0.0, 1.0, 0.0]),  # integers are numbers
        (np.array([0, 1, 0, 0, 1, 0], dtype=np.uint8), [0.0, 1.0, 0.0, 0.0, 1.0, 0.0]),
        (np.array(_HALVES, dtype=np.float32), _HALVES),
        ([0, 0.5, 0, 0, 0.25, 0], _HALVES),  # a list of Python numbers
        (np.array(_HALVES, dtype=object), _HALVES),
    ],
)
def test_numbers_of_any_real_type_are_still_taken(stage, value, expected):
    from tradingd.core.ports import RiskDecision

    engine = _engine(_returning(RiskDecision(value) if stage == "check" else value))
    got = _run_stage(engine, stage, SimpleNamespace(time="t"))
    np.testing.assert_array_equal(got[0] if stage == "check" else got, expected)  # type: ignore[index]


@pytest.mark.parametrize("stage", ["score", "size", "check"])
def test_none_in_a_list_is_still_no_view(stage):
    """None among numbers (an object array) is read as NaN, as numpy's conversion always
    read it: no view for a score, a target of 0 (logged) for sizing and risk."""
    from tradingd.core.ports import RiskDecision

    value = [0.0, 0.5, None, 0.0, 0.25, 0.0]
    engine = _engine(_returning(RiskDecision(value) if stage == "check" else value))
    got = _run_stage(engine, stage, SimpleNamespace(time="t"))
    expected = [0.0, 0.5, np.nan if stage == "score" else 0.0, 0.0, 0.25, 0.0]
    np.testing.assert_array_equal(got[0] if stage == "check" else got, expected)  # type: ignore[index]


@pytest.mark.parametrize("stage", ["score", "size", "check"])
def test_an_infinite_value_is_named_by_symbol_and_value(stage):
    """'returned an infinite value' named neither: on 496 symbols the entry was not to be
    found. The first symbols and their values are in the fault, with the count."""
    from tradingd.core.ports import RiskDecision

    value = np.array([0.1, np.inf, 0.0, -np.inf, 0.2, np.inf])
    engine = _engine(_returning(RiskDecision(value) if stage == "check" else value))
    with pytest.raises(PluginFault) as caught:
        _run_stage(engine, stage, SimpleNamespace(time="t"))
    assert "infinite" in str(caught.value)
    assert "S1=inf, S3=-inf, S5=inf" in str(caught.value)
    assert "S0" not in str(caught.value) and "S4" not in str(caught.value)


def test_a_score_out_of_range_is_named_by_symbol_and_value():
    value = np.array([0.5, 1.5, np.nan, -3.0, 1.0, 0.0])
    with pytest.raises(PluginFault, match=r"\[-1, 1\].*S1=1\.5, S3=-3\b") as caught:
        _score(value)
    assert "S2" not in str(caught.value) and "S4" not in str(caught.value)


def test_many_bad_values_name_the_first_few_and_count_the_rest():
    from tradingd.engine.engine import _check_array

    n = 40
    value = np.full(n, np.inf)
    symbols = tuple(f"X{i}" for i in range(n))
    with pytest.raises(PluginFault) as caught:
        _check_array(_Plugin(value), "size", value, n, "t", allow_nan=False, symbols=symbols)
    text = str(caught.value)
    assert "X0=inf" in text and "X4=inf" in text and "X5=" not in text
    assert "40 symbols" in text


class _RiskDoing:
    """A risk plugin that applies `change(targets)` and returns the result with `verdicts`."""

    kind, name = "risk", "doer"

    def __init__(self, change: object, verdicts: tuple = ()) -> None:
        self.change, self.verdicts = change, verdicts

    def check(self, targets: np.ndarray, ctx: object) -> object:
        from tradingd.core.ports import RiskDecision

        return RiskDecision(self.change(targets), self.verdicts)  # type: ignore[operator]


def _risk(plugin: object, targets: np.ndarray) -> tuple[np.ndarray, list]:
    engine = _engine(plugin)
    return engine._risk(targets, SimpleNamespace(time="t"))  # type: ignore[arg-type]


def test_a_risk_plugin_writing_into_its_input_targets_is_named_and_changes_nothing():
    """A risk plugin that zeroed its input in place (targets[:] = 0, no verdict) changed
    the targets without a trace: the write is now its fault, and the array it was given
    (the sizing's, or the previous risk plugin's) is unchanged."""

    def zero_in_place(t: np.ndarray) -> np.ndarray:
        t[:] = 0.0
        return t

    sized = np.array([0.1, 0.2, 0.0, 0.05, 0.0, 0.3])
    with pytest.raises(PluginFault, match=r"'doer' failed in check.*read-only"):
        _risk(_RiskDoing(zero_in_place), sized)
    np.testing.assert_array_equal(sized, [0.1, 0.2, 0.0, 0.05, 0.0, 0.3])
    assert sized.flags.writeable  # the sizing's own array is not made read-only


@pytest.mark.parametrize(
    ("after", "what"),
    [
        ([3.0, 0.2, 0.0, 0.05, 0.0, 0.3], "S0 0.1 -> 3.0"),  # raised
        ([0.1, 0.2, 0.01, 0.05, 0.0, 0.3], "S2 0.0 -> 0.01"),  # opened
        ([0.1, 0.2, 0.0, -0.05, 0.0, 0.3], "S3 0.05 -> -0.05"),  # flipped, same size
        ([0.1, 0.2, 0.0, -0.01, 0.0, 0.3], "S3 0.05 -> -0.01"),  # flipped, smaller
    ],
)
def test_a_risk_plugin_that_raises_or_flips_a_target_without_a_verdict_is_refused(after, what):
    """A risk plugin's every change comes back as a verdict (RiskPlugin): one that raised a
    target to 3.0 without one had it sent. A target whose absolute weight grows, or whose
    sign flips, without a verdict for its symbol or for the whole book is the plugin's
    fault, naming the symbol and the weights before and after."""
    sized = np.array([0.1, 0.2, 0.0, 0.05, 0.0, 0.3])
    with pytest.raises(PluginFault, match=rf"'doer' failed in check.*without a verdict.*{what}"):
        _risk(_RiskDoing(lambda t: np.array(after)), sized)


def test_a_risk_plugin_may_raise_with_a_verdict_and_cut_without_one():
    from tradingd.core.types import RiskVerdict

    sized = np.array([0.1, 0.2, 0.0, 0.05, 0.0, 0.3])
    raised = np.array([0.15, 0.2, 0.0, 0.05, 0.0, 0.3])
    for verdict_symbol in ("S0", None):  # that symbol's verdict, or the whole book's
        verdict = RiskVerdict("doer", verdict_symbol, "clip", "a floor", 0.1, 0.15)
        got, verdicts = _risk(_RiskDoing(lambda t: raised.copy(), (verdict,)), sized)
        np.testing.assert_array_equal(got, raised)
        assert verdicts == [verdict]
    other = RiskVerdict("doer", "S1", "clip", "elsewhere", 0.2, 0.1)
    with pytest.raises(PluginFault, match=r"without a verdict.*S0 0.1 -> 0.15"):
        _risk(_RiskDoing(lambda t: raised.copy(), (other,)), sized)
    # Cuts toward zero (scaling, clipping, zeroing) are taken as they come, verdict or not.
    cut = np.array([0.05, 0.2, 0.0, 0.0, 0.0, 0.1])
    got, verdicts = _risk(_RiskDoing(lambda t: cut.copy()), sized)
    np.testing.assert_array_equal(got, cut)
    assert verdicts == []
    # Rounding of a scaled target (a factor computed as 1 + 1 ulp) is not a raise.
    got, _ = _risk(_RiskDoing(lambda t: t * (1.0 + 2.0**-52)), sized)
    np.testing.assert_array_equal(got, sized * (1.0 + 2.0**-52))
    # Nor is a float32 round trip (a rule computing in float32, torch's default): its
    # relative error of ~6e-8 was refused as a raise under a margin of 1e-12.
    levered = np.array([0.1, 0.3, -0.2, 0.05, 3.0, -2.5])
    got, _ = _risk(_RiskDoing(lambda t: t.astype(np.float32)), levered)
    np.testing.assert_allclose(got, levered, rtol=1e-7)
    # A raise of 0.2% of a 5% weight is still one.
    with pytest.raises(PluginFault, match=r"S3 0.05 -> 0.0501"):
        _risk(_RiskDoing(lambda t: np.where(t == 0.05, 0.0501, t)), levered)


@pytest.mark.parametrize(
    ("plugin", "symbol", "fault"),
    [
        ("S0", "doer", r"names the plugin 'S0' \(symbol 'doer'\), not 'doer'"),  # swapped
        ("max_position", "S0", r"names the plugin 'max_position'"),  # another's name
        ("doer", "ZZZZ", r"symbol 'ZZZZ' is not in the universe"),
        ("doer", "", r"symbol '' is not in the universe.*None for a verdict about the whole"),
        ("doer", 3, r"symbol 3 is not in the universe"),
        ("doer", ["S0"], r"symbol \['S0'\] is not in the universe"),
        ("doer", "S0", None),
        ("doer", None, None),  # the whole book
    ],
)
def test_a_verdict_names_its_own_plugin_and_a_symbol_of_the_universe(plugin, symbol, fault):
    """A verdict is counted and reported by its plugin and symbol: with the two swapped
    (RiskVerdict(symbol, name, ...)) the summary's risk_verdicts_by_rule said "AAPL/AAPL"
    and the verdict covered no symbol. Refused, naming the plugin and the field."""
    from tradingd.core.types import RiskVerdict

    verdict = RiskVerdict(plugin, symbol, "scale", "half")  # type: ignore[arg-type]
    sized = np.array([0.1, 0.2, 0.0, 0.05, 0.0, 0.3])
    doer = _RiskDoing(lambda t: t * 0.5, (verdict,))
    if fault is None:
        _, verdicts = _risk(doer, sized)
        assert verdicts == [verdict]
    else:
        with pytest.raises(PluginFault, match=rf"'doer' failed in check.*{fault}"):
            _risk(doer, sized)


_SYMS = tuple(f"S{i}" for i in range(N))


def _stage_output(stage: str, value: object) -> object:
    from tradingd.core.ports import RiskDecision

    return RiskDecision(value) if stage == "check" else value  # type: ignore[arg-type]


def _result(stage: str, value: object) -> np.ndarray:
    got = _run_stage(
        _engine(_returning(_stage_output(stage, value))), stage, SimpleNamespace(time="t")
    )
    return got[0] if stage == "check" else got  # type: ignore[index,return-value]


@settings(max_examples=100, deadline=None)
@given(
    stage=st.sampled_from(["score", "size", "check"]),
    values=st.lists(st.floats(0.0, 1.0), min_size=N, max_size=N),
    order=st.permutations(range(N)),
)
def test_a_series_is_read_by_its_symbols_in_any_order(stage, values, order):
    """numpy reads a Series by position: one sorted by score (or reversed) scored, sized or
    checked the wrong symbols without a word. Indexed by exactly the universe's symbols, in
    any order, it is the array in ctx.symbols order."""
    import pandas as pd

    shuffled = pd.Series([values[i] for i in order], index=[_SYMS[i] for i in order])
    np.testing.assert_array_equal(_result(stage, shuffled), _result(stage, np.array(values)))


@pytest.mark.parametrize("stage", ["score", "size", "check"])
@pytest.mark.parametrize(
    ("index", "said"),
    [
        (["S1", "S2", "S3", "S4", "S5", "ZZZZ"], r"lacks S0 and holds ZZZZ, not in the universe"),
        (["S0", "S1", "S2", "S3", "S4"], r"lacks S5:"),
        ([*_SYMS, "ZZZZ"], r"holds ZZZZ, not in the universe:"),
        (["S0", "S0", "S1", "S2", "S3", "S4"], r"holds S0 more than once"),
        (list(range(N)), r"lacks S0, S1, S2, S3, S4 \(and 1 more\) and holds 0, 1, 2, 3, 4"),
    ],
)
def test_a_series_not_indexed_by_the_universe_is_the_plugins_fault(stage, index, said):
    """A Series whose index is not the universe's symbols (one missing, one unknown, one
    twice, or positions) cannot be lined up: refused, naming what is wrong and what to
    return, rather than read by position."""
    import pandas as pd

    value = pd.Series(np.linspace(0.0, 0.5, len(index)), index=index)
    engine = _engine(_returning(_stage_output(stage, value)))
    hint = r"return an array in ctx.symbols order, or a Series indexed by symbol"
    with pytest.raises(PluginFault, match=rf"'q' failed in {stage}.*{said}.*{hint}"):
        _run_stage(engine, stage, SimpleNamespace(time="t"))


@pytest.mark.parametrize("stage", ["score", "size", "check"])
def test_a_series_with_the_default_index_is_read_by_position(stage):
    """pd.Series(scores) (and its .rank(pct=True)) has positions for labels, in order: such
    plugins were right when Series were read by position, and refusing them stopped a live
    daemon at its first bar. A Series reordered since (sort_values) has lost its default
    index and is refused, not read by position."""
    import pandas as pd

    values = np.linspace(0.1, 0.5, N)
    positional = pd.Series(values[::-1]).rank(pct=True) * 0.5
    np.testing.assert_array_equal(
        _result(stage, positional), _result(stage, np.asarray(positional))
    )
    hint = r"return an array in ctx.symbols order, or a Series indexed by symbol"
    engine = _engine(_returning(_stage_output(stage, positional.sort_values())))
    with pytest.raises(PluginFault, match=rf"'q' failed in {stage}.*{hint}"):
        _run_stage(engine, stage, SimpleNamespace(time="t"))


def test_a_series_of_booleans_is_still_refused_after_lining_up():
    import pandas as pd

    value = pd.Series(np.ones(N, dtype=bool), index=_SYMS[::-1])
    with pytest.raises(PluginFault, match=r"'q' failed in size.*booleans"):
        _run_stage(_engine(_returning(value)), "size", SimpleNamespace(time="t"))


class _Seeing:
    """A risk plugin that keeps what it was given and returns `out` (a new array), with a
    verdict for the whole book (so a flip is not refused as unexplained)."""

    kind = "risk"

    def __init__(self, name: str, out: np.ndarray) -> None:
        self.name, self.out, self.given = name, out, None

    def check(self, targets: np.ndarray, ctx: object) -> object:
        from tradingd.core.ports import RiskDecision
        from tradingd.core.types import RiskVerdict

        self.given = np.array(targets)
        return RiskDecision(self.out.copy(), (RiskVerdict(self.name, None, "scale", "x"),))


@pytest.mark.parametrize("long_only", [True, False])
def test_a_risk_plugins_negative_target_is_zero_where_the_broker_may_not_short(long_only):
    """broker.allow_short = false was applied to the sizing's targets only: a risk plugin
    that flipped targets (with a verdict, so not refused) had its shorts planned, refused
    one by one in a backtest and opened at a live broker whose account may short, with no
    log line. A long-only engine reads its negative target as 0, logged naming the risk
    plugin, before the next plugin of the chain; one that may short keeps it."""
    from structlog.testing import capture_logs

    flipped = np.array([0.1, -0.2, 0.0, 0.05, -0.0, -0.3])
    first = _Seeing("flipper", flipped)
    second = _Seeing("after", np.array([0.1, 0.0, 0.0, 0.05, 0.0, 0.0]))
    engine = _engine(first, long_only=long_only)
    engine.pipeline.risks = [first, second]
    with capture_logs() as logs:
        engine._risk(np.array([0.1, 0.2, 0.0, 0.05, 0.0, 0.3]), SimpleNamespace(time="t"))
    repaired = [e for e in logs if e["event"] == "engine.targets_repaired"]
    if long_only:
        np.testing.assert_array_equal(second.given, [0.1, 0.0, 0.0, 0.05, 0.0, 0.0])
        assert [(e["plugin"], e["stage"], e["kind"]) for e in repaired] == [
            ("flipper", "check", "short_target")
        ]
        assert repaired[0]["symbols"] == ["S1", "S5"]  # -0.0 is no short
    else:
        np.testing.assert_array_equal(second.given, flipped)
        assert not repaired


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(-2.0, 2.0, allow_subnormal=False), min_size=N, max_size=N),
        min_size=1,
        max_size=4,
    )
)
def test_no_risk_plugin_nor_the_planner_sees_a_short_in_a_long_only_engine(outputs):
    """Whatever the chain's plugins return, in a long-only engine each is given targets of
    at least 0 and the chain's result is its last output with the shorts at 0."""
    plugins = [_Seeing(f"r{k}", np.array(out)) for k, out in enumerate(outputs)]
    engine = _engine(plugins[0], long_only=True)
    engine.pipeline.risks = plugins
    got, _ = engine._risk(np.full(N, 0.1), SimpleNamespace(time="t"))
    assert all((p.given >= 0).all() for p in plugins)
    np.testing.assert_array_equal(got, np.where(plugins[-1].out < 0, 0.0, plugins[-1].out))


class _Slow:
    """A plugin of every kind whose call takes `seconds` on the engine's clock (a fake one,
    advanced by the call: no sleeping)."""

    def __init__(self, clock: list[float], seconds: float, name: str = "slowpoke") -> None:
        self.clock, self.seconds, self.name = clock, seconds, name

    def _work(self) -> np.ndarray:
        self.clock[0] += self.seconds
        return np.zeros(N)

    def score(self, ctx: object) -> np.ndarray:
        return self._work()

    def observe(self, ctx: object) -> None:
        self._work()

    def size(self, score: object, ctx: object) -> np.ndarray:
        return self._work()

    def check(self, targets: object, ctx: object) -> object:
        from tradingd.core.ports import RiskDecision

        return RiskDecision(self._work())


@pytest.mark.parametrize("stage", ["score", "observe", "size", "check"])
def test_a_plugin_call_slower_than_the_limit_is_logged_with_plugin_stage_and_bar(
    monkeypatch, stage
):
    """A 40 s score() in the live daemon left no line in the log (only /health's max_lag_s
    moved). A call past `log.slow_plugin_s` is a warning naming the plugin, the stage, the
    bar and the time it took; a call within it says nothing."""
    from structlog.testing import capture_logs

    from tradingd.engine import engine as engine_module

    clock = [1000.0]
    monkeypatch.setattr(engine_module, "_perf_counter", lambda: clock[0], raising=False)
    ctx = SimpleNamespace(time="2016-06-15")
    for seconds, warned in ((40.0, True), (4.5, False)):
        engine = _engine(_Slow(clock, seconds))
        engine._slow_plugin_s = 5.0
        with capture_logs() as logs:
            if stage == "observe":
                engine._observe(ctx)  # type: ignore[arg-type]
            else:
                _run_stage(engine, stage, ctx)
        slow = [e for e in logs if e["event"] == "engine.plugin_slow"]
        if not warned:
            assert slow == []
            continue
        assert len(slow) == 1 and slow[0]["log_level"] == "warning"
        assert slow[0]["plugin"] == "slowpoke" and slow[0]["stage"] == stage
        assert slow[0]["time"] == "2016-06-15"
        assert slow[0]["seconds"] == pytest.approx(40.0)
        assert slow[0]["limit_s"] == 5.0


class _Greedy:
    """Declares 5 bars of history and reads 300."""

    kind, name = "signal", "greedy"

    def history_bars(self) -> int:
        return 5

    def score(self, ctx: object) -> object:
        return ctx.history.window("close", 300)[-1]  # type: ignore[attr-defined]


def test_a_window_longer_than_declared_names_history_bars_and_the_plugin():
    """A window of 300 bars where 5 were declared was "buffer holds 1..5": it did not say
    that the plugin's own history_bars() decides how many bars are kept, nor what to
    declare."""
    from tradingd.engine.history import HistoryBuffer

    ctx = SimpleNamespace(time="t", history=HistoryBuffer(N, _Greedy().history_bars()))
    with pytest.raises(PluginFault) as caught:
        _engine(_Greedy())._score(ctx)  # type: ignore[arg-type]
    said = str(caught.value)
    assert said.startswith("plugin 'greedy' failed in score at bar t: ValueError: window of ")
    assert "300 bars requested, but the history keeps 5" in said
    assert "declare history_bars() returning at least 300" in said


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-1.0, 1.0), min_size=N, max_size=N),
    st.lists(st.booleans(), min_size=N, max_size=N),
    st.sampled_from([np.float64, np.float32, np.int64]),
)
def test_a_masked_entry_is_no_value_as_a_score_and_no_position_as_a_target(
    values: list[float], mask: list[bool], dtype: type
) -> None:
    """A numpy masked array was read through its mask: `np.asarray` dropped it, and the
    masked slots' data (here 0.75, or 1 as integers) was traded on. A masked entry is NaN:
    no view as a score, a target of 0 (repaired and logged as a NaN target is)."""
    from tradingd.engine.engine import _check_array

    data = np.array(values).astype(dtype)
    data[np.array(mask)] = 0.75 if dtype is not np.int64 else 1
    given_values = np.ma.MaskedArray(data, mask=mask)
    expected = np.where(mask, np.nan, data.astype(np.float64))
    np.testing.assert_array_equal(_score(given_values), expected)
    got = _check_array(_Plugin(given_values), "size", given_values, N, "t", allow_nan=False)  # type: ignore[arg-type]
    np.testing.assert_array_equal(got, np.where(mask, 0.0, expected))
    assert type(got) is np.ndarray
