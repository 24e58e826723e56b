"""A plugin author edits an editable-installed plugin and reruns one configuration: the
same run id (a run id covers no code: a live run's must not change on an upgrade), the
earlier record replaced, and nothing in the records told the two code versions apart.
environment.json now records each plugin's code, `tradingd compare` names the plugin and
the file that differ, and the trial count (deflated Sharpe ratio) takes the two as two
variants."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import shutil
import sys
import textwrap
from pathlib import Path

from conftest import make_panel

from tradingd.analysis.compare import compare_runs, render
from tradingd.analysis.trial_ledger import TRIALS_LEDGER
from tradingd.analysis.trials import count_trials
from tradingd.backtest import run_backtest
from tradingd.config import PluginSpec

SIGNALS = textwrap.dedent("""
    from dataclasses import dataclass

    import numpy as np

    from .helpers import WANTED

    @dataclass(frozen=True)
    class FirstConfig:
        pass

    class First:
        '''Wants the first WANTED symbols.'''
        kind = "signal"
        Config = FirstConfig

        def __init__(self, config, symbols):
            self.name = "first_n"

        def required_features(self):
            return ()

        def score(self, ctx):
            s = np.full(len(ctx.symbols), np.nan)
            s[:WANTED] = 1.0
            return s
""")


def _install(root: Path) -> Path:
    """The plugin's checkout (its class in signals.py, what it wants in helpers.py) and an
    editable install's dist-info, both on the path."""
    pkg = root / "src" / "firstn_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "signals.py").write_text(SIGNALS)
    (pkg / "helpers.py").write_text("WANTED = 1\n")
    info = root / "site" / "firstn-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: firstn\nVersion: 0.1.0\n")
    (info / "top_level.txt").write_text("firstn_pkg\n")
    (info / "entry_points.txt").write_text(
        "[tradingd.plugins]\nfirst_n = firstn_pkg.signals:First\n"
    )
    (info / "direct_url.json").write_text('{"dir_info": {"editable": true}, "url": "file:///x"}')
    return pkg


def _fresh(monkeypatch) -> None:
    """The plugin imported anew at the next run, as a new process would."""
    for name in [m for m in sys.modules if m == "firstn_pkg" or m.startswith("firstn_pkg.")]:
        monkeypatch.delitem(sys.modules, name)
    importlib.invalidate_caches()


def test_an_edited_plugin_is_told_apart_by_its_record_compare_and_the_trial_count(
    engine_config, tmp_path, monkeypatch
):
    pkg = _install(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    _fresh(monkeypatch)
    panel = make_panel(n_bars=120, split_at=None)
    cfg = dataclasses.replace(
        engine_config,
        run=dataclasses.replace(engine_config.run, run_id=""),
        signals=(PluginSpec("first_n", 1.0, {}),),
    )
    first = asyncio.run(run_backtest(cfg, panel=panel))
    kept = tmp_path / "first"
    shutil.copytree(first.output_dir, kept)

    # Not the class's own module. (Of another size: Python takes a bytecode cache written
    # in the same second for a source of the same size as current.)
    (pkg / "helpers.py").write_text("WANTED = 3  # more\n")
    _fresh(monkeypatch)
    second = asyncio.run(run_backtest(cfg, panel=panel))
    assert second.run_id == first.run_id and second.output_dir == first.output_dir
    assert first.summary["fills"] != second.summary["fills"]

    c = compare_runs(kept, second.output_dir)
    assert not c.same_path
    assert [k for k, _, _ in c.environment.diffs] == ["plugins[signals[0]].code"]
    [change] = c.plugin_code
    assert (change.package, change.plugins, change.changed) == (
        "firstn_pkg",
        ["first_n (signals[0])"],
        ["helpers.py"],
    )
    assert "plugin code differs: firstn_pkg (used by first_n (signals[0])): helpers.py changed" in (
        render(c)
    )

    # Two variants tried, one folder left: the ledger keeps the replaced one.
    root = Path(cfg.run.output_dir)
    assert [p.name for p in root.iterdir() if p.is_dir()] == [second.run_id]
    assert count_trials(root).trials == 2
    # A rerun of the edited code is no third variant, nor another ledger line.
    lines = (root / TRIALS_LEDGER).read_text().splitlines()
    _fresh(monkeypatch)
    asyncio.run(run_backtest(cfg, panel=panel))
    assert (root / TRIALS_LEDGER).read_text().splitlines() == lines
    assert count_trials(root).trials == 2
