"""`fast_init` builds the same instances as the dataclass `__init__` it replaces: every
argument in its field, defaults and default factories as the dataclass gives them, the same
errors for wrong calls, and instances as frozen as before. Checked on every value type that
uses it, against a twin class built by `dataclasses` from the same fields."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle
from dataclasses import InitVar, dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradingd.core.frozen import fast_init
from tradingd.core.ports import BarContext, PortfolioView, RiskDecision
from tradingd.core.types import BrokerUpdate, CrossSection, Fill, RiskVerdict
from tradingd.engine.planner import Plan

FAST = (
    CrossSection,
    Fill,
    RiskVerdict,
    BrokerUpdate,
    PortfolioView,
    BarContext,
    RiskDecision,
    Plan,
)


def _twin(cls: type) -> type:
    """The same fields, defaults and factories, with the dataclass-generated __init__."""
    spec = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            spec.append((f.name, object, field(default=f.default)))
        elif f.default_factory is not dataclasses.MISSING:
            spec.append((f.name, object, field(default_factory=f.default_factory)))
        else:
            spec.append((f.name, object))
    return dataclasses.make_dataclass(f"Twin{cls.__name__}", spec, frozen=True, slots=True)


def _values(obj: object) -> list[object]:
    return [getattr(obj, f.name) for f in dataclasses.fields(obj)]  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", FAST, ids=lambda c: c.__name__)
def test_the_value_types_use_it(cls: type) -> None:
    # The generated __init__ (named by fast_init), not the dataclass one.
    assert "_set_" in " ".join(cls.__init__.__code__.co_names)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(FAST), st.data())
def test_same_instances_as_the_dataclass_init_for_any_call(cls: type, data: st.DataObject) -> None:
    twin = _twin(cls)
    fields = dataclasses.fields(cls)
    # Distinct sentinels, so a value landing in the wrong field cannot go unseen.
    given_values = {f.name: object() for f in fields}
    n_positional = data.draw(st.integers(0, len(fields)), label="positional")
    args = [given_values[f.name] for f in fields[:n_positional]]
    kwargs = {}
    for f in fields[n_positional:]:
        has_default = (
            f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        )
        if not has_default or data.draw(st.booleans(), label=f"give {f.name}"):
            kwargs[f.name] = given_values[f.name]
    fast, slow = cls(*args, **kwargs), twin(*args, **kwargs)
    for k, (f, a, b) in enumerate(zip(fields, _values(fast), _values(slow), strict=True)):
        given_here = k < n_positional or f.name in kwargs
        if f.default_factory is not dataclasses.MISSING and not given_here:
            assert a == b and a is not b  # a fresh one each time, as the dataclass makes
            assert cls(*args, **kwargs).__getattribute__(f.name) is not a
        else:
            assert a is b, f.name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(fast, fields[0].name, None)


@pytest.mark.parametrize("cls", FAST, ids=lambda c: c.__name__)
def test_wrong_calls_fail_as_they_did(cls: type) -> None:
    twin = _twin(cls)
    fields = dataclasses.fields(cls)
    full = [object() for _ in fields]
    for make in (cls, twin):
        with pytest.raises(TypeError):
            make(*full, object())  # one argument too many
        with pytest.raises(TypeError):
            make(*full, **{fields[0].name: object()})  # a field given twice
        with pytest.raises(TypeError):
            make(*full, no_such_field=1)
    required = [f for f in fields if f.default is dataclasses.MISSING]
    required = [f for f in required if f.default_factory is dataclasses.MISSING]
    if required:
        with pytest.raises(TypeError):
            cls()
    # Introspection as before: names, kinds, defaults ("<factory>" shown), annotations.
    shown = [(p.name, p.kind, repr(p.default)) for p in inspect.signature(cls).parameters.values()]
    twin_shown = [
        (p.name, p.kind, repr(p.default)) for p in inspect.signature(twin).parameters.values()
    ]
    assert shown == twin_shown
    assert set(cls.__init__.__annotations__) == {f.name for f in fields} | {"return"}


@pytest.mark.parametrize("cls", FAST, ids=lambda c: c.__name__)
def test_pickle_copy_replace_eq_and_hash_as_dataclasses_give_them(cls: type) -> None:
    fields = dataclasses.fields(cls)
    values = list(range(10, 10 + len(fields)))  # hashable, picklable, distinct
    x = cls(*values)
    assert _values(pickle.loads(pickle.dumps(x))) == values
    assert pickle.loads(pickle.dumps(x)) == x and copy.copy(x) == x and copy.deepcopy(x) == x
    y = dataclasses.replace(x, **{fields[-1].name: -1})
    assert _values(y) == [*values[:-1], -1] and type(y) is cls
    assert hash(x) == hash(tuple(values)) == hash(_twin(cls)(*values))


def test_it_refuses_what_it_cannot_build_the_same() -> None:
    @dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclass(slots=True)
    class NotFrozen:
        a: int

    @dataclass(frozen=True, slots=True)
    class PostInit:
        a: int

        def __post_init__(self) -> None:
            pass

    @dataclass(frozen=True, slots=True, kw_only=True)
    class KeywordOnly:
        a: int

    @dataclass(frozen=True, slots=True)
    class WithInitVar:
        a: int
        b: InitVar[int] = 0

    @dataclass(frozen=True, slots=True)
    class OwnName:
        _fi_FACTORY: int = 0

    for cls in (NoSlots, NotFrozen, PostInit, KeywordOnly, WithInitVar, OwnName):
        with pytest.raises(TypeError, match="fast_init"):
            fast_init(cls)
