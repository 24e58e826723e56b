"""The order of the shipped risk chains: the rules that refuse candidates run before
`max_open_positions`, so its N slots go to the best candidates that pass them.

The count rule keeps held positions and then the largest targets. Run before
`correlation_limit` (as the shipped chains ran it), it kept 10 candidates, the correlation
rule then refused one of them, and its slot stayed empty although the 11th candidate passed
every rule: in the README's S&P 500 run, 908 slots on 419 bars (benchmarks/RESULTS.md).
The rules know nothing of the other rules (and
the signal's scores are not in `BarContext`: the count rule ranks by target size, like the
correlation and sector rules), so the fix is the order. Rules that refuse candidates
(`stale_data`, `correlation_limit`, `sector_exposure`, `drawdown_guard`'s entry block) come
before the count rule; rules that shrink every target (`max_gross_exposure`) after it;
`portfolio_var` last (the one limit a later cut could break); `max_position` first (the
sector budget is shared out over capped sizes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from plugin_context import closes_from_returns, make_context

from tradingd.config import PluginSpec, load_config
from tradingd.engine.plugins import load_plugin

ROOT = Path(__file__).resolve().parents[2]

# Rules that refuse a candidate outright (its target becomes 0) for a reason of its own.
REFUSING = {"stale_data", "correlation_limit", "sector_exposure", "drawdown_guard"}
# Rules that shrink targets the count rule has chosen among (none refuses one by itself).
SHRINKING = {"max_gross_exposure"}

# config/research.toml keeps the order its study (docs/RESEARCH.md) was run with.
SHIPPED = ("default.toml", "backtest.toml", "paper.toml")


def chain_of(name: str) -> tuple[PluginSpec, ...]:
    files = [ROOT / "config" / "default.toml"]
    if name != "default.toml":
        files.append(ROOT / "config" / name)
    return load_config(files, env={}).risk


@pytest.mark.parametrize(
    "name",
    SHIPPED,
)
def test_shipped_chains_refuse_before_counting_and_shrink_after(name):
    names = [s.name for s in chain_of(name)]
    count = names.index("max_open_positions")
    assert names[0] == "max_position" and names[-1] == "portfolio_var", names
    assert {n for n in names[:count]} - {"max_position"} <= REFUSING, names
    assert REFUSING & set(names) <= set(names[:count]), names
    assert set(names[count + 1 : -1]) <= SHRINKING, names


# A universe of 13 with the count rule's 10 slots; no positions held.
SYMS = tuple(f"S{i:02d}" for i in range(13))
DAYS = 260


def market() -> tuple[np.ndarray, np.ndarray]:
    """Independent daily returns (0.5% a day), except S01, which is S00 plus a little noise
    (correlation ~0.99); targets S00 0.050 down to S10 0.040, S11 and S12 none."""
    rng = np.random.default_rng(7)
    returns = rng.normal(0.0, 0.005, (DAYS, len(SYMS)))
    returns[:, 1] = returns[:, 0] + rng.normal(0.0, 0.0005, DAYS)
    targets = np.zeros(len(SYMS))
    targets[:11] = np.round(0.05 - 0.001 * np.arange(11), 4)
    return returns, targets


@pytest.mark.parametrize("name", ["backtest.toml", "paper.toml"])
def test_a_candidate_the_correlation_rule_refuses_leaves_no_slot_empty(name, tmp_path):
    """Eleven candidates for 10 slots, the second largest (S01) correlated 0.99 with the
    largest (S00). The count rule first kept S00-S09 and the correlation rule then refused
    S01: 9 positions, S10 (which passes every rule) left out. The correlation rule first:
    S01 refused, the 10 slots go to S00 and S02-S10."""
    csv = tmp_path / "sectors.csv"  # one sector per symbol: the sector cap (20%) never binds
    csv.write_text("symbol,sector\n" + "".join(f"{s},X{i}\n" for i, s in enumerate(SYMS)))
    plugins = []
    for i, spec in enumerate(chain_of(name)):
        if spec.name == "sector_exposure":
            spec = PluginSpec(spec.name, spec.weight, {**spec.params, "sectors_csv": str(csv)})
        plugins.append(load_plugin(spec, "risk", SYMS, f"risk[{i}]"))
    returns, targets = market()
    ctx = make_context(SYMS, closes_from_returns(returns), capacity=DAYS + 1)
    out, verdicts = targets.copy(), []
    for p in plugins:
        d = p.check(out, ctx)
        out = np.asarray(d.targets, dtype=float)
        verdicts.extend(d.verdicts)
    # S01 is refused by the correlation rule, for S00, and by no other rule.
    assert [(v.plugin, v.symbol) for v in verdicts] == [("correlation_limit", "S01")]
    assert "S00" in verdicts[0].reason
    expected = targets.copy()
    expected[1] = 0.0
    np.testing.assert_array_equal(out, expected)  # S10 holds the 10th slot
    assert np.count_nonzero(out) == 10


def test_the_readme_says_the_order_matters_and_names_the_shipped_one():
    """The README's plugin table listed the risk rules in no order and said nothing of it:
    an operator writing a `[[risk]]` of their own put the count first again. Its paragraph
    after the table names the shipped chain's rules in the chain's order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("The order of the `[[risk]]` entries matters")
    paragraph = text[start : text.index("\n\n", start)]
    names = [s.name for s in chain_of("paper.toml")]
    at = [paragraph.index(f"`{n}`") for n in names]
    assert at == sorted(at), list(zip(names, at, strict=True))
    assert "slot" in paragraph and "config/research.toml" in paragraph
