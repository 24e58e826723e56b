"""`tradingd compare` on records `tradingd backtest` wrote: a rerun under another name is
the same path (a replay is deterministic), and a changed setting is named with where the
runs part."""

from __future__ import annotations

import csv
import json
import textwrap

from tradingd.__main__ import main


def _config(tmp_path, name: str, capital: float = 100_000.0) -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        textwrap.dedent(f"""
            [run]
            name = "{name}"
            output_dir = "{tmp_path / "runs"}"
            initial_capital = {capital}
            [[signals]]
            name = "momentum"
            [sizing]
            name = "equal_weight"
            [storage]
            url = "sqlite:///{tmp_path / name}.db"
            [log]
            audit_dir = "{tmp_path / "audit"}"
        """)
    )
    return str(path)


def test_compare_two_backtests(tmp_path, capsys):
    a, b, c = (tmp_path / "out" / n for n in ("a", "b", "c"))
    assert main(["backtest", "-c", _config(tmp_path, "first"), "--output", str(a)]) == 0
    assert main(["backtest", "-c", _config(tmp_path, "again"), "--output", str(b)]) == 0
    variant = _config(tmp_path, "variant", capital=50_000.0)
    assert main(["backtest", "-c", variant, "--output", str(c)]) == 0
    capsys.readouterr()

    assert main(["compare", str(a), str(b), "--json"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["same_path"] is True and same["fills"][0] == same["fills"][1] > 0
    # Only where each run stored its rows differs (the run's own name is no difference).
    assert same["config"]["differences"] == [] and same["written_elsewhere"] == ["storage.url"]

    assert main(["compare", str(a), str(c), "--json"]) == 1
    found = json.loads(capsys.readouterr().out)
    assert found["same_path"] is False
    keys = {d["key"]: (d["a"], d["b"]) for d in found["config"]["differences"]}
    assert keys["run.initial_capital"] == (100_000.0, 50_000.0)
    # Checked against the files themselves: everything before the named fill and bar is
    # the same in both records, and the named ones differ.
    fields = ("time", "symbol", "side", "quantity", "price", "commission")
    fa, fc = (_rows(x / "fills.csv", fields) for x in (a, c))
    k = found["first_fill_difference"]["number"] - 1
    assert fa[:k] == fc[:k] and fa[k] != fc[k]
    assert found["first_fill_difference"]["a"] == dict(zip(fields, fa[k], strict=True))
    ea, ec = (_rows(x / "equity.csv", ("time", "equity")) for x in (a, c))
    t = found["first_equity_difference"]["time"]
    n = [row[0] for row in ea].index(t)
    assert ea[:n] == ec[:n] and ea[n] != ec[n]
    assert float(ea[n][1]) == found["first_equity_difference"]["a"]


def _rows(file, fields) -> list[tuple[str, ...]]:
    with file.open(newline="") as fh:
        return [tuple(r[f] for f in fields) for r in csv.DictReader(fh)]


def test_a_record_of_an_older_build_against_a_rerun_is_the_same_environment(tmp_path, capsys):
    """The fields a build before plugins' code was recorded did not write (each plugin's
    `code`, `editable`, `package`, and `plugin_code`) were "environment: N differences",
    each "A (absent)", for a rerun of the same path to the bit."""
    a, b = (tmp_path / "out" / n for n in ("a", "b"))
    assert main(["backtest", "-c", _config(tmp_path, "old"), "--output", str(a)]) == 0
    assert main(["backtest", "-c", _config(tmp_path, "new"), "--output", str(b)]) == 0
    env = json.loads((a / "environment.json").read_text())
    assert env["plugins"] and env["plugin_code"]
    for p in env["plugins"]:
        for k in ("code", "editable", "package"):
            del p[k]
    del env["plugin_code"]
    (a / "environment.json").write_text(json.dumps(env))
    capsys.readouterr()

    assert main(["compare", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    n = 3 * len(env["plugins"]) + 1
    assert "the same environment\n" in text and "(absent)" not in text
    assert (
        f"  not recorded by A's build: plugin_code, plugins[*].code, .editable, .package "
        f"({n} fields)"
    ) in text
    assert main(["compare", str(a), str(b), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)["environment"]
    assert found["differences"] == [] and len(found["not_recorded"]) == n
    assert {r["missing_in"] for r in found["not_recorded"]} == {"a"}
