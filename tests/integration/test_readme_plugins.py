"""The README's minimal plugins ("A minimal plugin of each kind") work as written: their code
blocks become a package, registered through its entry points exactly as the README's
`pyproject.toml` block says, chosen by the README's configuration block, checked as
`tradingd config` checks it and run in a backtest. An example that no longer imports,
builds, passes the start-up check or trades fails here, not in a user's first try."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

from conftest import engine_toml, make_panel

ROOT = Path(__file__).resolve().parents[2]
SECTION = "### A minimal plugin of each kind"


def _blocks() -> list[tuple[str, str]]:
    """(language, code) of each fenced block of the README's section, in order."""
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start)
    return re.findall(r"^```(\w+)\n(.*?)^```$", text[start:end], flags=re.S | re.M)


def _install(root: Path, entry_points: dict[str, str], code: list[str]) -> None:
    """The package the README describes, with its distribution's metadata on sys.path as
    pip leaves it: each code block is the module its class is registered from."""
    for block in code:
        classes = set(re.findall(r"^class (\w+)", block, flags=re.M))
        (module,) = {v.split(":")[0] for v in entry_points.values() if v.split(":")[1] in classes}
        path = root.joinpath(*module.split("."))
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.with_suffix(".py").write_text(block)
    info = root / "my_plugins_from_the_readme-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: my-plugins-from-the-readme\nVersion: 0.1\n"
    )
    lines = [f"{name} = {target}" for name, target in entry_points.items()]
    (info / "entry_points.txt").write_text("[tradingd.plugins]\n" + "\n".join(lines) + "\n")


async def test_the_readmes_minimal_plugins_run_as_written(tmp_path, monkeypatch):
    from tradingd.app import build_engine
    from tradingd.config import load_config
    from tradingd.engine.plugins import available
    from tradingd.preflight import check_config

    blocks = _blocks()
    code = [c for lang, c in blocks if lang == "python"]
    tomls = [c for lang, c in blocks if lang == "toml"]
    assert len(code) == 3 and len(tomls) == 2
    project, run_config = tomllib.loads(tomls[0]), tomls[1]
    entry_points = project["project"]["entry-points"]["tradingd.plugins"]
    packages = tmp_path / "site"
    _install(packages, entry_points, code)
    monkeypatch.syspath_prepend(str(packages))
    top = {v.split(".")[0] for v in entry_points.values()}
    for name in [m for m in sys.modules if m.split(".")[0] in top]:
        monkeypatch.delitem(sys.modules, name)  # this test's, not one imported before

    kinds = {name: available()[name].load().kind for name in entry_points}
    assert sorted(kinds.values()) == ["risk", "signal", "sizing"]
    chosen = tmp_path / "readme.toml"
    chosen.write_text(run_config)  # as written, after the test's storage and folders
    config = load_config([engine_toml(tmp_path), chosen], env={})
    assert {config.sizing.name, *(s.name for s in (*config.signals, *config.risk))} == set(
        entry_points
    )
    check_config(config, "backtest")  # what `tradingd config` and every command check

    engine = build_engine(config, "backtest", panel=make_panel(n_bars=120, split_at=None))
    result = await engine.run_until_done()
    assert result.fills > 0, "the example strategy never traded"
    # The risk example cuts the sizing's 0.9 / 5 = 0.18 to its 0.15, with its verdicts.
    assert result.verdicts > 0
    assert any(rule.startswith("cap_weight") for rule in result.verdicts_by_rule)
    for name in [m for m in sys.modules if m.split(".")[0] in top]:
        assert str(packages) in (sys.modules[name].__file__ or "")
