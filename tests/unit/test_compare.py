"""`tradingd compare A B`: where two run records part and what differs between them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from tradingd.__main__ import main
from tradingd.analysis.compare import _MISSING as MISSING
from tradingd.analysis.compare import compare_runs, flatten, render

T0 = datetime(2020, 1, 2, tzinfo=UTC)
BLAS = [
    {"internal_api": "openblas", "version": "0.3.30", "architecture": "Haswell"},
    {"internal_api": "openblas", "version": "0.3.31", "architecture": "SkylakeX"},
]


def _record(
    root: Path,
    name: str,
    equity: list[float],
    fills: list[tuple[int, str, float, float]],
    *,
    config: dict | None = None,
    environment: dict | None = None,
) -> Path:
    """A record folder as `tradingd backtest` writes it: fills as (bar, side, quantity,
    price) of symbol AAA."""
    out = root / name
    out.mkdir(parents=True)
    lines = ["time,equity,gross_exposure"]
    for i, e in enumerate(equity):
        lines.append(f"{(T0 + timedelta(days=i)).isoformat()},{e!r},0.5")
    (out / "equity.csv").write_text("\n".join(lines) + "\n")
    summary = {
        "run_id": name,
        "initial_capital": 100_000.0,
        "fills": len(fills),
        "bars": len(equity),
        "end": (T0 + timedelta(days=len(equity) - 1)).date().isoformat(),
        "final_equity": equity[-1],
        "sharpe": 1.0,
    }
    (out / "summary.json").write_text(json.dumps(summary))
    rows = ["run_id,fill_id,client_order_id,symbol,side,quantity,price,commission,slippage,time"]
    for k, (bar, side, qty, price) in enumerate(fills):
        t = (T0 + timedelta(days=bar)).isoformat()
        rows.append(f"{name},{name}|f{k},{name}|o{k},AAA,{side},{qty!r},{price!r},1.0,0.0,{t}")
    (out / "fills.csv").write_text("\n".join(rows) + "\n")
    (out / "splits.csv").write_text("symbol,time,split\n")
    base_config = {
        "run": {"name": name, "initial_capital": 100_000.0},
        "sizing": {"name": "kelly_garch", "params": {"kelly_multiplier": 0.5}},
        "risk": [{"name": "max_position"}, {"name": "drawdown_guard"}],
    }
    (out / "config.json").write_text(json.dumps(config or base_config))
    env = environment or {"packages": {"numpy": "2.4.6"}, "blas": BLAS, "dispatch_variables": {}}
    (out / "environment.json").write_text(json.dumps(env))
    return out


EQUITY = [100_000.0, 100_100.0, 100_250.5, 100_180.25]
FILLS = [(1, "buy", 10.0, 100.0), (3, "sell", 10.0, 101.5)]


def test_two_runs_of_one_path_are_the_same_whatever_their_names(tmp_path):
    a = _record(tmp_path, "a", EQUITY, FILLS)
    b = _record(tmp_path, "b", EQUITY, FILLS)
    c = compare_runs(a, b)
    assert c.same_path and c.first_equity is None and c.first_fill is None
    # The run's own name and ids are no difference; nothing else differs.
    assert (c.config.diffs, c.environment.diffs, c.metrics.diffs) == ([], [], [])
    assert "the same path: equity equal at all 4 bars and the same 2 fills" in render(c)


def test_the_first_bar_and_fill_where_the_runs_part_are_named(tmp_path):
    a = _record(tmp_path, "a", EQUITY, FILLS)
    other = [*EQUITY[:3], 100_170.0]
    b = _record(tmp_path, "b", other, [FILLS[0], (3, "sell", 10.0, 101.4)])
    c = compare_runs(a, b)
    assert not c.same_path
    assert c.first_equity == ((T0 + timedelta(days=3)).isoformat(), 100_180.25, 100_170.0)
    number, fa, fb, fields = c.first_fill
    assert number == 2 and fa["price"] == "101.5" and fb["price"] == "101.4"
    assert fields == ["price"]
    [final] = [m for m in c.metrics.diffs if m[0] == "final_equity"]
    assert final == ("final_equity", 100_180.25, 100_170.0)
    text = render(c)
    assert "first fill that differs (fill 2):" in text
    assert "A 2020-01-05T00:00:00+00:00 sell 10.0 AAA at 101.5, commission 1.0" in text
    assert "(in price)" in text


def test_a_run_with_fewer_bars_or_fills_parts_where_the_other_goes_on(tmp_path):
    a = _record(tmp_path, "a", EQUITY, FILLS)
    b = _record(tmp_path, "b", EQUITY[:3], FILLS[:1])
    c = compare_runs(a, b)
    assert c.first_equity == ((T0 + timedelta(days=3)).isoformat(), 100_180.25, None)
    assert c.first_fill[0] == 2 and c.first_fill[2] is None
    assert "(no bar)" in render(c) and "(no more fills)" in render(c)


def test_a_different_setting_and_machine_are_named_by_their_keys(tmp_path):
    a = _record(tmp_path, "a", EQUITY, FILLS)
    config = {
        "run": {"name": "b", "initial_capital": 100_000.0},
        "sizing": {"name": "kelly_garch", "params": {"kelly_multiplier": 0.25}},
        "risk": [{"name": "drawdown_guard"}, {"name": "max_position"}],  # order changed
    }
    env = {
        "packages": {"numpy": "2.3.0"},
        "blas": list(reversed(BLAS)),  # the same libraries in another order: no difference
        "dispatch_variables": {"OPENBLAS_CORETYPE": "Haswell"},
    }
    b = _record(tmp_path, "b", EQUITY, FILLS, config=config, environment=env)
    c = compare_runs(a, b)
    assert c.same_path  # the settings changed nothing on this path: still said
    keys = {k: (va, vb) for k, va, vb in c.config.diffs}
    assert keys["sizing.params.kelly_multiplier"] == (0.5, 0.25)
    assert keys["risk.order"] == (
        ["max_position", "drawdown_guard"],
        ["drawdown_guard", "max_position"],
    )
    # (A's empty `dispatch_variables` is not a difference of its own beside B's entry.)
    env_keys = {k for k, _, _ in c.environment.diffs}
    assert env_keys == {"packages.numpy", "dispatch_variables.OPENBLAS_CORETYPE"}
    rows = c.as_dict()["environment"]["differences"]
    [absent] = [d for d in rows if d.get("missing_in") == "a"]
    assert absent["key"] == "dispatch_variables.OPENBLAS_CORETYPE" and absent["b"] == "Haswell"


def test_flatten_names_list_entries_by_their_key_or_name():
    flat = flatten({"plugins": [{"key": "sizing", "version": "1"}], "xs": [1, 2]})
    assert flat == {"plugins[sizing].version": "1", "xs": [1, 2]}
    # An entry with nothing but its name is there all the same: one plugin for another.
    assert flatten({"risk": [{"name": "var"}]}) == {"risk[var]": {}}


def test_the_command_exits_0_for_one_path_1_for_two_and_2_for_a_damaged_record(tmp_path, capsys):
    a = _record(tmp_path, "a", EQUITY, FILLS)
    same = _record(tmp_path, "same", EQUITY, FILLS)
    other = _record(tmp_path, "other", [*EQUITY[:3], 1.0], FILLS)
    assert main(["compare", str(a), str(same)]) == 0
    assert main(["compare", str(a), str(other), "--json"]) == 1
    out = capsys.readouterr().out
    found = json.loads(out[out.index("{") :])
    assert found["same_path"] is False
    assert found["first_equity_difference"]["b"] == 1.0
    # A cut equity.csv: an error naming the file, not a comparison against half a run.
    text = (other / "equity.csv").read_text()
    (other / "equity.csv").write_text(text[: text.rindex("\n", 0, -1) + 5])
    assert main(["compare", str(a), str(other)]) == 2
    assert "equity.csv" in capsys.readouterr().err
    missing = tmp_path / "nowhere"
    assert main(["compare", str(a), str(missing)]) == 2
    assert "not found" in capsys.readouterr().err


def test_a_walk_forward_folder_is_refused_by_name(tmp_path, capsys):
    a = _record(tmp_path, "a", EQUITY, FILLS)
    wf = _record(tmp_path, "wf", EQUITY, FILLS)
    (wf / "walkforward.json").write_text("{}")
    assert main(["compare", str(a), str(wf)]) == 2
    assert "walk-forward results folder" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["config.json", "environment.json"])
def test_a_record_without_a_file_is_compared_on_the_rest_and_says_so(tmp_path, name):
    """An older record has no environment.json: "the same environment" (both lack it) or a
    row per key, all absent, said nothing true."""
    a = _record(tmp_path, "a", EQUITY, FILLS)
    b = _record(tmp_path, "b", EQUITY, FILLS)
    (b / name).unlink()
    c = compare_runs(a, b)
    assert c.same_path
    section = c.config if name == "config.json" else c.environment
    assert section.diffs == [] and section.missing == f"B has no {name}"
    assert f"not compared (B has no {name})" in render(c)


def test_a_last_bit_difference_is_a_difference(tmp_path):
    """Two BLAS kernels part in the last bits long before a fill differs: the bar where they
    do is the answer, not a tolerance that hides it."""
    a = _record(tmp_path, "a", EQUITY, FILLS)
    nudged = [*EQUITY[:2], float(np.nextafter(EQUITY[2], np.inf)), EQUITY[3]]
    b = _record(tmp_path, "b", nudged, FILLS)
    c = compare_runs(a, b)
    assert not c.same_path and c.first_fill is None
    assert c.first_equity == ((T0 + timedelta(days=2)).isoformat(), EQUITY[2], nudged[2])
    assert f"A {EQUITY[2]!r}, B {nudged[2]!r}" in render(c)  # every digit shown


def test_a_fill_that_differs_in_its_commission_says_so(tmp_path):
    a = _record(tmp_path, "a", EQUITY, FILLS)
    b = _record(tmp_path, "b", EQUITY, FILLS)
    text = (b / "fills.csv").read_text().replace(",1.0,0.0,", ",1.25,0.0,", 1)
    (b / "fills.csv").write_text(text)
    c = compare_runs(a, b)
    assert c.first_fill is not None and c.first_fill[3] == ["commission"]
    out = render(c)
    assert "commission 1.0" in out and "commission 1.25" in out and "(in commission)" in out


def test_a_fill_written_in_another_offset_is_the_same_instant(tmp_path):
    a = _record(tmp_path, "a", EQUITY, FILLS)
    b = _record(tmp_path, "b", EQUITY, FILLS)
    text = (b / "fills.csv").read_text()
    text = text.replace("2020-01-03T00:00:00+00:00", "2020-01-03T05:00:00+05:00")
    (b / "fills.csv").write_text(text)
    assert compare_runs(a, b).same_path


def test_where_the_records_went_is_no_difference_but_is_named(tmp_path):
    cfg = {"run": {"output_dir": "/x"}, "storage": {"url": "sqlite:///x.db"}}
    other = {"run": {"output_dir": "/y"}, "storage": {"url": "sqlite:///y.db"}}
    a = _record(tmp_path, "a", EQUITY, FILLS, config=cfg)
    b = _record(tmp_path, "b", EQUITY, FILLS, config=other)
    c = compare_runs(a, b)
    assert c.config.diffs == [] and c.places == ["run.output_dir", "storage.url"]
    assert "written to other places (not compared): run.output_dir, storage.url" in render(c)


def test_list_metrics_and_a_chains_order_under_one_name_are_compared(tmp_path):
    a = _record(tmp_path, "a", EQUITY, FILLS)
    b = _record(tmp_path, "b", EQUITY, FILLS)
    summary = json.loads((b / "summary.json").read_text())
    summary["run_inputs"] = [{"plugin": "signals[0]", "inputs": {"sha256": ["x", "y"]}}]
    (b / "summary.json").write_text(json.dumps(summary))
    assert [k for k, _, _ in compare_runs(a, b).metrics.diffs] == [
        "run_inputs[0].inputs.sha256",
        "run_inputs[0].plugin",
    ]
    # Two risk rules of one name swapped: a configuration's lists keep their order.
    one = [{"name": "g", "params": {"x": 1}}, {"name": "g", "params": {"x": 2}}]
    flat, swapped = flatten({"risk": one}), flatten({"risk": one[::-1]})
    assert flat != swapped
    # The BLAS libraries of an environment in another order are the same.
    assert flatten({"blas": BLAS}, unordered=True) == flatten({"blas": BLAS[::-1]}, unordered=True)


def test_a_fill_row_without_a_symbol_is_a_damaged_record(tmp_path, capsys):
    a = _record(tmp_path, "a", EQUITY, FILLS)
    b = _record(tmp_path, "b", EQUITY, FILLS)
    text = (b / "fills.csv").read_text().replace(",AAA,sell,", ",,sell,", 1)
    (b / "fills.csv").write_text(text)
    with pytest.raises(ValueError, match=r"fills.csv, line 3: no symbol"):
        compare_runs(a, b)
    assert main(["compare", str(a), str(b)]) == 2


def test_a_record_whose_fills_are_gone_is_damaged_not_a_run_without_trades(tmp_path):
    a = _record(tmp_path, "a", EQUITY, FILLS)
    b = _record(tmp_path, "b", EQUITY, FILLS)
    (b / "fills.csv").write_text("")
    with pytest.raises(ValueError, match="counts 2 fills: the record is incomplete"):
        compare_runs(a, b)


def test_a_record_whose_fills_are_cut_short_is_damaged_not_a_run_with_fewer(tmp_path):
    """Half its fills.csv kept (a copy stopped midway), B read as a run that traded less,
    with the first difference at the fill where the copy stopped."""
    a = _record(tmp_path, "a", EQUITY, FILLS)
    b = _record(tmp_path, "b", EQUITY, FILLS)
    text = (b / "fills.csv").read_text()
    (b / "fills.csv").write_text(text[: text.index("b,b|f1,")])
    with pytest.raises(
        ValueError,
        match=rf"^{b}/fills.csv holds 1 fills, but {b}/summary.json counts 2 fills: the "
        r"record is incomplete or edited \(run the backtest again\)$",
    ):
        compare_runs(a, b)
    assert main(["compare", str(a), str(b)]) == 2
    # Its last line cut before its line break (or inside a last numeric field, read as a
    # smaller number): the count holds and the line parses; refused all the same.
    (b / "fills.csv").write_text(text.rstrip("\n"))
    with pytest.raises(ValueError, match=r"holds 2 fills \(its last line cut short\)"):
        compare_runs(a, b)
    (b / "fills.csv").write_text(text[: text.index("b,b|f1,")])  # half again
    summary = json.loads((b / "summary.json").read_text())
    del summary["fills"]  # a summary that counts none: the fills are compared as they are
    (b / "summary.json").write_text(json.dumps(summary))
    assert compare_runs(a, b).fills == (2, 1)


def _sizing(params: dict | None) -> dict:
    spec: dict = {"name": "equal_weight"}
    if params is not None:
        spec["params"] = params
    return {"run": {"initial_capital": 100_000.0}, "sizing": spec}


@pytest.mark.parametrize("omitted", [{}, None])
def test_plugin_params_written_at_their_defaults_are_the_same_configuration(tmp_path, omitted):
    """One config wrote equal_weight's defaults out, the other left them out: the same run,
    bit for bit, and compare said "configuration: 2 differences ... (absent)". The run ids
    differ (a run id hashes params as written: live runs' order ids depend on it), which is
    said in one line."""
    written = _sizing({"max_positions": 10, "gross_exposure": 0.5, "allow_short": False})
    a = _record(tmp_path, "a", EQUITY, FILLS, config=written)
    b = _record(tmp_path, "b", EQUITY, FILLS, config=_sizing(omitted))
    c = compare_runs(a, b)
    assert c.config.diffs == []
    assert c.at_default == [
        "sizing.params.allow_short",
        "sizing.params.gross_exposure",
        "sizing.params.max_positions",
    ]
    assert c.run_ids == ("a", "b") and c.run_id_by_spelling
    text = render(c)
    assert "(absent)" not in text
    assert "the same configuration (plugin params at their defaults, written on one side" in text
    assert "the run ids differ (a, b) by those params alone" in text
    assert c.as_dict()["config"]["differences"] == []


def test_a_param_off_its_default_on_one_side_is_still_a_difference(tmp_path):
    a = _record(tmp_path, "a", EQUITY, FILLS, config=_sizing({"max_positions": 3}))
    b = _record(tmp_path, "b", EQUITY, FILLS, config=_sizing({"gross_exposure": 0.5}))
    c = compare_runs(a, b)
    # B's 0.5 is the default: not a difference; A's 3 against B's default 10 is one.
    assert c.config.diffs == [("sizing.params.max_positions", 3, 10)]
    assert c.at_default == ["sizing.params.gross_exposure"] and not c.run_id_by_spelling
    assert "the run ids differ" not in render(c)


def test_a_plugin_not_installed_here_keeps_its_params_as_written_and_says_so(tmp_path):
    cfg = {"sizing": {"name": "not_installed_here", "params": {"k": 1}}}
    a = _record(tmp_path, "a", EQUITY, FILLS, config=cfg)
    b = _record(tmp_path, "b", EQUITY, FILLS, config={"sizing": {"name": "not_installed_here"}})
    c = compare_runs(a, b)
    assert c.config.diffs[0][:2] == ("sizing.params.k", 1)
    assert c.defaults_unknown == ["not_installed_here"]
    assert "defaults of not_installed_here unknown here" in render(c)


def _env(code: str, files: dict[str, str], tradingd_code: str = "0" * 16) -> dict:
    plugins = [
        {"key": "signals[0]", "name": "mean_rev", "package": "myplug", "code": code},
        {"key": "sizing", "name": "inv_vol", "package": "myplug", "code": code},
        {"key": "risk[0]", "name": "max_position", "package": "tradingd_plugins"},
    ]
    for p in plugins[:2]:
        p.update(distribution="myplug", version="0.0.1", editable=True)
    plugins[2].update(code=tradingd_code, distribution="tradingd", version="0.1.0")
    return {
        "packages": {"numpy": "2.4.6"},
        "plugins": plugins,
        "plugin_code": {
            "myplug": {"code": code, "files": files},
            "tradingd_plugins": {"code": tradingd_code, "files": {"__init__.py": "1" * 16}},
        },
    }


def test_plugin_code_that_differs_is_named_with_its_plugins_and_files(tmp_path):
    """An editable plugin edited between two runs of one config: compare said the runs
    differ, then "the same configuration" and "the same environment", nothing to explain."""
    before = {"__init__.py": "a" * 16, "signals.py": "b" * 16, "old.py": "c" * 16}
    after = {"__init__.py": "a" * 16, "signals.py": "d" * 16, "util.py": "e" * 16}
    a = _record(tmp_path, "a", EQUITY, FILLS, environment=_env("1" * 16, before))
    b = _record(tmp_path, "b", EQUITY, FILLS[:1], environment=_env("2" * 16, after))
    c = compare_runs(a, b)
    assert [k for k, _, _ in c.environment.diffs] == [
        "plugins[signals[0]].code",
        "plugins[sizing].code",
    ]
    [change] = c.plugin_code
    assert change.package == "myplug"
    assert change.plugins == ["mean_rev (signals[0])", "inv_vol (sizing)"]
    assert (change.changed, change.added, change.removed) == (
        ["signals.py"],
        ["util.py"],
        ["old.py"],
    )
    assert (
        "  plugin code differs: myplug (used by mean_rev (signals[0]), inv_vol (sizing)): "
        "signals.py changed, util.py only in B, old.py only in A"
    ) in render(c)
    assert c.as_dict()["plugin_code"][0]["changed"] == ["signals.py"]
    # A record made before plugins' code was recorded: no package line, and its keys are
    # fields O's build did not record, no differences.
    old = _env("1" * 16, before)
    for p in old["plugins"]:
        p.pop("code", None)
    del old["plugin_code"]
    o = _record(tmp_path, "o", EQUITY, FILLS, environment=old)
    c = compare_runs(o, a)
    assert c.plugin_code == [] and c.environment.diffs == []
    assert "plugins[signals[0]].code" in {k for k, _, _ in c.environment.unrecorded}


def _older_build(env: dict) -> dict:
    """environment.json as a build before plugins' code was recorded wrote it: no plugin
    `editable`, `package` or `code`, no `plugin_code`."""
    old = json.loads(json.dumps(env))
    for p in old["plugins"]:
        for k in ("editable", "package", "code"):
            p.pop(k, None)
    del old["plugin_code"]
    return old


def test_fields_an_older_build_did_not_record_are_no_difference_and_said_in_one_line(
    tmp_path, capsys
):
    """A record of an older build against a rerun by this one, the same fills to the bit:
    compare said "environment: 31 differences", 30 of them a plugin's code, editable or
    package "A (absent)", fields the older build never wrote."""
    new = _env("1" * 16, {"__init__.py": "a" * 16})
    a = _record(tmp_path, "a", EQUITY, FILLS, environment=_older_build(new))
    b = _record(tmp_path, "b", EQUITY, FILLS, environment=new)
    c = compare_runs(a, b)
    assert c.same_path and c.environment.diffs == []
    assert {k for k, _, _ in c.environment.unrecorded} == {
        *(
            f"plugins[{p}].{f}"
            for p in ("signals[0]", "sizing", "risk[0]")
            for f in ("code", "package")
        ),
        "plugins[signals[0]].editable",
        "plugins[sizing].editable",
        "plugin_code",
    }
    text = render(c)
    assert "(absent)" not in text and "the same environment" in text
    assert (
        "  not recorded by A's build: plugin_code, plugins[*].code, .editable, .package (9 fields)"
    ) in text
    # --json keeps them, apart from the differences.
    env = c.as_dict()["environment"]
    assert env["differences"] == []
    row = next(r for r in env["not_recorded"] if r["key"] == "plugins[sizing].code")
    assert row == {
        "key": "plugins[sizing].code",
        "field": "plugins[*].code",
        "a": None,
        "b": "1" * 16,
        "missing_in": "a",
    }
    assert main(["compare", str(a), str(b)]) == 0
    capsys.readouterr()
    # The other way round, B is the older build; a field both record that differs is still
    # a difference, and a key one plugin lacks where the others have it is one too.
    new["plugins"][0]["version"] = "0.0.2"
    old = _older_build(new)
    del old["plugins"][0]["version"]
    new["plugins"][1]["version"] = "0.0.3"
    c = compare_runs(
        _record(tmp_path, "n", EQUITY, FILLS, environment=new),
        _record(tmp_path, "o", EQUITY, FILLS, environment=old),
    )
    assert [(k, vb) for k, _, vb in c.environment.diffs] == [
        ("plugins[signals[0]].version", MISSING),
        ("plugins[sizing].version", "0.0.1"),
    ]
    assert "not recorded by B's build: plugin_code, plugins[*].code, .editable" in render(c)


def test_a_key_absent_where_the_other_build_records_its_field_is_a_difference(tmp_path):
    """What a run or machine decides (a dispatch variable set, another BLAS library, a
    checkout against an installed build) is no field a build did not record."""
    env = {
        "packages": {"numpy": "2.4.6"},
        "blas": BLAS[:1],
        "dispatch_variables": {},
        "source": {"commit": "c", "uncommitted_changes": False},
    }
    other = {
        "packages": {"numpy": "2.4.6", "tensorflow": None},  # a build that lists one more
        "blas": [BLAS[0], {**BLAS[1], "threading_layer": "pthreads"}],
        "dispatch_variables": {"OPENBLAS_CORETYPE": "Haswell"},
        "source": {"commit": "c", "uncommitted_changes": False, "from": "build"},
    }
    c = compare_runs(
        _record(tmp_path, "a", EQUITY, FILLS, environment=env),
        _record(tmp_path, "b", EQUITY, FILLS, environment=other),
    )
    assert {k for k, _, _ in c.environment.unrecorded} == {"packages.tensorflow"}
    assert {k for k, _, _ in c.environment.diffs} == {
        "blas[1].architecture",
        "blas[1].internal_api",
        "blas[1].threading_layer",
        "blas[1].version",
        "dispatch_variables.OPENBLAS_CORETYPE",
        "source.from",
    }


def test_two_runs_of_the_bundled_series_say_the_same_source_not_not_compared():
    """Two runs on the bundled series (no digest) said "data: not compared:" with the same
    line twice, as if something kept them apart."""
    from types import SimpleNamespace

    from tradingd.analysis.compare import Comparison, _data_lines

    bundled = {"source": "bundled"}
    c = SimpleNamespace(data=(bundled, dict(bundled)))
    c.same_data = Comparison.same_data.fget(c)  # type: ignore[attr-defined]
    assert c.same_data is None
    assert _data_lines(c) == [  # type: ignore[arg-type]
        "the same data source, no digest to compare: the bundled series, no digest "
        "(arch's version is in environment.json)"
    ]
    other = SimpleNamespace(data=(bundled, {"source": "frames"}))
    other.same_data = Comparison.same_data.fget(other)  # type: ignore[attr-defined]
    assert _data_lines(other)[0] == "the data differ:"  # type: ignore[arg-type]


def _own_env(simulated: str) -> dict:
    """environment.json of a run from a checkout with uncommitted changes, its
    brokers/simulated.py at the digest `simulated`."""
    files = {"__init__.py": "a" * 16, "brokers/simulated.py": simulated}
    return {
        "packages": {"numpy": "2.4.6"},
        "blas": BLAS,
        "dispatch_variables": {},
        "source": {"commit": "c" * 40, "uncommitted_changes": True},
        "tradingd_code": {
            "tradingd": {"code": simulated, "files": files},
            "tradingd_models": {"code": "m" * 16, "files": {"__init__.py": "m" * 16}},
        },
    }


def test_runs_of_different_edits_of_tradingds_own_code_say_different_code(tmp_path):
    """Edited daemon/brokers/simulated.py between two runs (the same run id, the same commit,
    both with uncommitted changes): compare said "the same environment"."""
    a = _record(tmp_path, "a", EQUITY, FILLS, environment=_own_env("1" * 16))
    b = _record(tmp_path, "b", [*EQUITY[:3], 99_000.0], FILLS, environment=_own_env("2" * 16))
    c = compare_runs(a, b)
    assert [k for k, _, _ in c.environment.diffs] == ["tradingd_code.tradingd.code"]
    [change] = c.own_code
    assert (change.package, change.changed) == ("tradingd", ["brokers/simulated.py"])
    text = render(c)
    assert "the same environment" not in text
    assert "different code: tradingd's own package tradingd: brokers/simulated.py changed" in text
    assert c.as_dict()["tradingd_code"][0]["changed"] == ["brokers/simulated.py"]
    # The same code: no difference.
    same = compare_runs(a, _record(tmp_path, "s", EQUITY, FILLS, environment=_own_env("1" * 16)))
    assert same.own_code == [] and same.environment.diffs == []
    # A record made before tradingd's code was recorded: "not recorded", no difference.
    old = _own_env("1" * 16)
    del old["tradingd_code"]
    c = compare_runs(_record(tmp_path, "o", EQUITY, FILLS, environment=old), b)
    assert c.own_code == [] and c.environment.diffs == []
    assert [k for k, _, _ in c.environment.unrecorded] == ["tradingd_code"]
    assert "not recorded by A's build: tradingd_code (1 field)" in render(c)


def test_a_record_cut_short_is_refused_as_the_report_refuses_it(tmp_path, capsys):
    """orders.csv cut to 1,999 of 9,351 rows: report refused the record, compare said "the
    same path ... the same metrics" (exit 0). A folder without summary.json (a writer killed
    between its last renames) was compared as a record made before data digests were."""
    from tradingd.analysis.run_records import run_record

    a = _record(tmp_path, "a", EQUITY, FILLS)
    b = _record(tmp_path, "b", EQUITY, FILLS)
    for folder in (a, b):
        summary = json.loads((folder / "summary.json").read_text())
        (folder / "summary.json").write_text(json.dumps({**summary, "orders": 3}))
        (folder / "orders.csv").write_text("run_id,n\nx,0\nx,1\nx,2\n")
    assert compare_runs(a, b).same_path  # whole: compared
    (b / "orders.csv").write_text("run_id,n\nx,0\n")
    said = rf"{b}/orders.csv holds 1 orders, but {b}/summary.json counts 3 orders"
    with pytest.raises(ValueError, match=said):
        compare_runs(a, b)
    with pytest.raises(ValueError, match=said):
        run_record(b)  # the report's reading: the same check, the same words
    assert main(["compare", str(a), str(b)]) == 2
    assert "tradingd: error:" in capsys.readouterr().err

    c = _record(tmp_path, "c", EQUITY, FILLS)
    (c / "summary.json").unlink()
    said = rf"{c} has no summary.json, but holds splits.csv, environment.json.*incomplete"
    with pytest.raises(ValueError, match=said):
        compare_runs(a, c)
    with pytest.raises(ValueError, match=said):
        run_record(c)
