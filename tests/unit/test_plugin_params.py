"""`tradingd plugins NAME`: every param of a plugin's Config, with a default a user can paste
into the plugin's `params = { ... }` and the comment its source gives it. A param the shipped
TOML files do not write (`kelly_garch`'s `max_kelly`) was found only from the error listing
the valid keys of a misspelled one."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field

import pytest
from cli_runs import in_process

from tradingd.engine.plugin_params import param_docs, toml_value
from tradingd.engine.plugins import registered


@dataclass(frozen=True)
class _Inner:
    a: float = 1.0
    b: str = 'say "x"'


@dataclass(frozen=True)
class _Config:
    """Its docstring may say
    first: a word that is no field
    """

    # Group: what the first two are for.
    first: int = 3  # the first
    second: float | None = None
    # Alone above.
    third: tuple[str, ...] = ("x", "y")
    inner: _Inner = field(default_factory=_Inner)
    flag: bool = False  # on or off


def test_comments_above_and_beside_each_field_are_its_documentation():
    docs = {d.name: d for d in param_docs(_Config)}
    assert list(docs) == ["first", "second", "third", "inner", "flag"]
    assert (docs["first"].above, docs["first"].inline) == (  # not the docstring's line
        "Group: what the first two are for.",
        "the first",
    )
    assert (docs["second"].above, docs["second"].inline) == ("", "")
    assert docs["third"].above == "Alone above." and docs["flag"].inline == "on or off"
    assert docs["inner"].default == _Inner()


def test_defaults_are_written_as_toml_that_reads_back_as_the_default():
    for d in param_docs(_Config):
        if d.default is None:
            assert toml_value(d.default) == "(unset)"
            continue
        read = tomllib.loads(f"x = {toml_value(d.default)}")["x"]
        want = d.default
        if dataclasses.is_dataclass(want):
            want = dataclasses.asdict(want)
        if isinstance(want, tuple):
            want = list(want)
        assert read == want, d.name


@pytest.fixture
def cli(monkeypatch, tmp_path, capsys):
    return in_process(monkeypatch, tmp_path, capsys)


def _printed(out: str) -> dict[str, str]:
    """{param: its printed default} from `tradingd plugins NAME`'s lines."""
    got = {}
    for line in out.splitlines():
        if line.startswith("    ") and not line.lstrip().startswith("#") and " = " in line:
            name, _, rest = line.strip().partition(" = ")
            got[name] = rest.rsplit("  (", 1)[0]
    return got


def test_every_installed_plugin_lists_every_param_with_its_default(cli):
    for name, [ep] in sorted(registered().items()):
        config_cls = ep.load().Config
        code, out, err = cli("plugins", name)
        assert code == 0, err
        assert out.startswith(f"{name} (")
        printed = _printed(out)
        fields = [f for f in dataclasses.fields(config_cls) if f.init]
        assert list(printed) == [f.name for f in fields], name
        defaults = config_cls()
        for f in fields:
            value = getattr(defaults, f.name)
            if value is None:
                assert printed[f.name] == "(unset)"
                continue
            read = tomllib.loads(f"x = {printed[f.name]}")["x"]
            if dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            if isinstance(value, tuple):
                value = list(value)
            assert read == value, (name, f.name)


def test_kelly_garch_s_unwritten_params_are_there_with_their_comments(cli):
    code, out, _ = cli("plugins", "kelly_garch")
    assert code == 0
    assert "    max_kelly = 0.5  (float)" in out
    assert "    kelly_multiplier = 0.5  (float)  # half Kelly (the specification)" in out


def test_an_unknown_plugin_name_is_an_error_listing_the_installed(cli):
    code, out, err = cli("plugins", "kelly_garhc")
    assert code == 2 and out == ""
    assert "no plugin named 'kelly_garhc'" in err and "kelly_garch" in err
