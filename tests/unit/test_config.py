from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tradingd.config import Config, CostsConfig, load_config
from tradingd.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_default_toml_equals_builtin_defaults():
    # The documented file and the code must not drift apart.
    assert load_config([ROOT / "config" / "default.toml"], env={}) == Config()


def test_default_toml_writes_every_setting():
    """Equal values are not enough: a section left out (`[alerts]`: its backoff, rate and
    dedup settings were documented nowhere a user would look) compares equal at its
    defaults. Every setting of every section is written (the plugin lists are their own:
    `tradingd plugins NAME` prints each plugin's params)."""
    import dataclasses
    import tomllib

    from tradingd.config import PluginSpec

    written = tomllib.loads((ROOT / "config" / "default.toml").read_text())
    missing: list[str] = []

    def walk(obj: object, table: dict, path: str) -> None:
        for f in dataclasses.fields(obj):  # type: ignore[arg-type]
            value = getattr(obj, f.name)
            where = f"{path}.{f.name}" if path else f.name
            if isinstance(value, PluginSpec) or (
                isinstance(value, tuple) and value and isinstance(value[0], PluginSpec)
            ):
                continue
            if f.name not in table:
                missing.append(where)
            elif dataclasses.is_dataclass(value) and isinstance(table[f.name], dict):
                walk(value, table[f.name], where)

    walk(Config(), written, "")
    assert missing == []


def test_specification_defaults():
    c = Config()
    assert c.costs.commission_pct == 0.001
    assert c.costs.slippage_pct == 0.0005
    risk = {s.name: s.params for s in c.risk}
    assert risk["max_position"]["max_position_pct"] == 0.05
    assert risk["max_open_positions"]["max_open_positions"] == 10
    assert risk["drawdown_guard"] == {"max_drawdown_pct": 0.20, "daily_loss_limit_pct": 0.05}
    assert (c.orders.stop_loss_pct, c.orders.take_profit_pct) == (0.02, 0.04)
    assert c.cache.expiry_s == 3600


@pytest.mark.parametrize("name", ["backtest.toml", "paper.toml", "demo.toml", "ml.toml"])
def test_shipped_overlays_load(name):
    c = load_config([ROOT / "config" / "default.toml", ROOT / "config" / name], env={})
    assert c.run.name != "default"


def test_unknown_key_names_key_and_valid_keys(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[costs]\ncomission_pct = 0.002\n")
    with pytest.raises(ConfigError) as e:
        load_config([p], env={})
    msg = str(e.value)
    assert "costs.comission_pct" in msg
    assert "commission_pct" in msg and "slippage_pct" in msg


def test_unknown_section(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[cost]\ncommission_pct = 0.002\n")
    with pytest.raises(ConfigError, match=r"cost.*valid keys:.*costs"):
        load_config([p], env={})


def test_bad_type_and_bad_value(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[costs]\ncommission_pct = "a lot"\n')
    with pytest.raises(ConfigError, match=r"costs.commission_pct must be a number"):
        load_config([p], env={})
    p.write_text("[costs]\ncommission_pct = -0.1\n")
    with pytest.raises(ConfigError, match=r"costs.commission_pct = -0.1 is invalid"):
        load_config([p], env={})


def test_bad_choice_lists_choices(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[data]\nsource = "excel"\n')
    with pytest.raises(ConfigError, match=r"data.source.*bundled, csv, parquet"):
        load_config([p], env={})


def test_env_overrides_and_later_files_win(tmp_path):
    a = tmp_path / "a.toml"
    b = tmp_path / "b.toml"
    a.write_text("[costs]\ncommission_pct = 0.002\nslippage_pct = 0.001\n")
    b.write_text("[costs]\ncommission_pct = 0.003\n")
    c = load_config(
        [a, b],
        env={
            "TRADINGD_COSTS__SLIPPAGE_PCT": "0.0007",
            "DATABASE_URL": "postgresql://x@h/db",
            "REDIS_URL": "redis://h:6379/1",
        },
    )
    assert c.costs == dataclasses.replace(CostsConfig(), commission_pct=0.003, slippage_pct=0.0007)
    assert c.storage.url == "postgresql://x@h/db"
    assert c.cache.url == "redis://h:6379/1"


def test_env_unknown_section_and_key():
    with pytest.raises(ConfigError, match=r"TRADINGD_COST__X.*valid sections"):
        load_config([], env={"TRADINGD_COST__X": "1"})
    with pytest.raises(ConfigError, match=r"costs.x"):
        load_config([], env={"TRADINGD_COSTS__X": "1"})


def test_missing_and_invalid_file(tmp_path):
    with pytest.raises(ConfigError, match=r"not found"):
        load_config([tmp_path / "nope.toml"], env={})
    p = tmp_path / "bad.toml"
    p.write_text("[costs\n")
    with pytest.raises(ConfigError, match=r"not valid TOML"):
        load_config([p], env={})


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().costs.commission_pct = 1.0  # type: ignore[misc]


def test_an_overlay_naming_another_sizing_plugin_drops_the_previous_ones_params(tmp_path):
    """`[sizing] name = "equal_weight"` over the default's kelly_garch kept kelly_garch's
    params: refused as unknown keys the user never wrote (or, where the new plugin has a key
    of that name, applied silently). The same plugin named again still merges its params."""
    swap = tmp_path / "swap.toml"
    swap.write_text('[sizing]\nname = "equal_weight"\n')
    c = load_config([ROOT / "config" / "default.toml", swap], env={})
    assert c.sizing.name == "equal_weight" and c.sizing.params == {}
    same = tmp_path / "same.toml"
    same.write_text('[sizing]\nname = "kelly_garch"\nweight = 1.0\n')
    c = load_config([ROOT / "config" / "default.toml", same], env={})
    assert c.sizing.params["kelly_multiplier"] == 0.5  # kept: the same plugin
    only_params = tmp_path / "params.toml"
    only_params.write_text("[sizing.params]\ntarget_vol = 0.1\n")
    c = load_config([ROOT / "config" / "default.toml", only_params], env={})
    assert c.sizing.name == "kelly_garch"  # no name: the same plugin, its params merged
    assert c.sizing.params == {"kelly_multiplier": 0.5, "target_vol": 0.1, "max_position": 0.05}


def test_a_later_files_sizing_params_merge_key_by_key_for_the_same_plugin(tmp_path):
    """A team file's kelly_garch params (target_vol 0.10, a 3% position cap) under a local
    file's `[sizing] params = {kelly_multiplier = 0.25}`: the local table replaced the team's
    whole, and target_vol and the cap went back to the plugin's defaults (a 5% cap) without a
    word, though the README says -c files merge key by key except the lists of plugins."""
    from structlog.testing import capture_logs

    from tradingd.config import log_overlay_notes

    team = tmp_path / "team.toml"
    team.write_text(
        '[sizing]\nname = "kelly_garch"\n'
        "params = { kelly_multiplier = 0.5, target_vol = 0.10, max_position = 0.03 }\n"
    )
    local = tmp_path / "local.toml"
    local.write_text("[sizing]\nparams = { kelly_multiplier = 0.25 }\n")
    default = ROOT / "config" / "default.toml"
    c = load_config([default, team, local], env={})
    assert c.sizing.params == {"kelly_multiplier": 0.25, "target_vol": 0.10, "max_position": 0.03}
    named = tmp_path / "named.toml"  # the same plugin named again: merged the same way
    named.write_text('[sizing]\nname = "kelly_garch"\nparams = { kelly_multiplier = 0.25 }\n')
    assert load_config([default, team, named], env={}).sizing.params == c.sizing.params
    with capture_logs() as logs:
        log_overlay_notes(c)
    assert [e for e in logs if e["event"] == "config.params_replaced"] == []
    # A table given to load_config (a file read once) is merged into, never changed.
    given = {"sizing": {"name": "kelly_garch", "params": {"target_vol": 0.1}}}
    load_config([given, {"sizing": {"params": {"kelly_multiplier": 0.25}}}], env={"DB_HOST": "db"})
    assert given == {"sizing": {"name": "kelly_garch", "params": {"target_vol": 0.1}}}


def test_a_later_file_naming_another_sizing_plugin_says_whose_params_it_dropped(tmp_path):
    """Another plugin does not inherit the earlier one's params (a key of the same name
    would mean something else to it), and dropping them is said, as a replaced list is."""
    from structlog.testing import capture_logs

    from tradingd.config import log_overlay_notes

    team = tmp_path / "team.toml"
    team.write_text(
        '[sizing]\nname = "kelly_garch"\nparams = { target_vol = 0.10, max_position = 0.03 }\n'
    )
    other = tmp_path / "other.toml"
    other.write_text('[sizing]\nname = "equal_weight"\nparams = { max_positions = 5 }\n')
    c = load_config([ROOT / "config" / "default.toml", team, other], env={})
    assert c.sizing.name == "equal_weight" and c.sizing.params == {"max_positions": 5}
    with capture_logs() as logs:
        log_overlay_notes(c)
    (note,) = [e for e in logs if e["event"] == "config.params_replaced"]
    assert note["file"] == str(other) and note["key"] == "sizing"
    assert note["was"] == "kelly_garch" and note["plugin"] == "equal_weight"
    assert note["dropped"] == ["kelly_multiplier", "max_position", "target_vol"]
    assert "kelly_garch" in note["rule"] or "another plugin" in note["rule"]


def test_params_dropped_by_another_sizing_plugin_are_only_those_a_file_set(tmp_path):
    """A file of [sizing] params without a name changes the built-in plugin's; a later file
    naming another plugin drops what that file set, and only that is said: the built-in
    plugin's own params (kelly_multiplier, max_position) were listed as dropped though no
    file had written them."""
    from structlog.testing import capture_logs

    from tradingd.config import log_overlay_notes

    local = tmp_path / "local.toml"
    local.write_text("[sizing]\nparams = { target_vol = 0.10 }\n")
    other = tmp_path / "other.toml"
    other.write_text('[sizing]\nname = "equal_weight"\nparams = { max_positions = 5 }\n')
    c = load_config([local, other], env={})
    assert c.sizing.name == "equal_weight" and c.sizing.params == {"max_positions": 5}
    with capture_logs() as logs:
        log_overlay_notes(c)
    (note,) = [e for e in logs if e["event"] == "config.params_replaced"]
    assert note["file"] == str(other) and note["was"] == "kelly_garch"
    assert note["dropped"] == ["target_vol"]


def test_a_later_list_entry_that_repeats_a_plugin_says_which_params_fell_back(tmp_path):
    """A [[risk]] list replaces the earlier one whole, params included (documented): a rule
    repeated with fewer params gets the plugin's defaults for the rest, not the earlier
    file's. Kept, but said: the sectors file dropped here was lost without a word."""
    from structlog.testing import capture_logs

    from tradingd.config import log_overlay_notes

    team = tmp_path / "team.toml"
    team.write_text(
        '[[risk]]\nname = "sector_exposure"\n'
        'params = { max_sector_pct = 0.2, sectors_csv = "sectors.csv" }\n'
        '[[risk]]\nname = "drawdown_guard"\nparams = { max_drawdown_pct = 0.1 }\n'
    )
    local = tmp_path / "local.toml"
    local.write_text(
        '[[risk]]\nname = "sector_exposure"\nparams = { max_sector_pct = 0.3 }\n'
        '[[risk]]\nname = "drawdown_guard"\nparams = { max_drawdown_pct = 0.15 }\n'
    )
    c = load_config([team, local], env={})
    assert c.risk[0].params == {"max_sector_pct": 0.3}  # the list is whole: not merged
    with capture_logs() as logs:
        log_overlay_notes(c)
    (note,) = [e for e in logs if e["event"] == "config.params_replaced"]
    assert note["file"] == str(local) and note["key"] == "risk[0]"
    assert note["plugin"] == "sector_exposure" and note["dropped"] == ["sectors_csv"]
    replaced = [e["file"] for e in logs if e["event"] == "config.list_replaced"]
    assert replaced == []  # local.toml kept team.toml's rules
    builtin = [e["file"] for e in logs if e["event"] == "config.defaults_replaced"]
    assert builtin == [str(team)]  # the built-in chain, at info level


def test_an_error_in_merged_sizing_params_names_the_file_that_set_that_key(tmp_path):
    """With the params merged key by key, the last file to touch [sizing] params is not
    necessarily the one that set the refused key."""
    from tradingd.config import name_origin

    team = tmp_path / "team.toml"
    team.write_text('[sizing]\nname = "kelly_garch"\nparams = { kelly_multiplier = -3.0 }\n')
    local = tmp_path / "local.toml"
    local.write_text("[sizing]\nparams = { target_vol = 0.1 }\n")
    c = load_config([ROOT / "config" / "default.toml", team, local], env={})
    exc = ConfigError("sizing.params: kelly_multiplier must be in (0.0, 1.0], got -3.0")
    name_origin(c, exc)
    assert str(exc).endswith(f"(set in {team})")
    # Another plugin named later: the earlier one's files are not blamed for its params.
    other = tmp_path / "other.toml"
    other.write_text('[sizing]\nname = "equal_weight"\n')
    c = load_config([ROOT / "config" / "default.toml", team, local, other], env={})
    exc = ConfigError("sizing.params: kelly_multiplier is not a param of equal_weight")
    name_origin(c, exc)
    assert str(exc).endswith(f"(set in {other})")


def test_sizing_params_without_a_name_change_the_built_in_plugin(tmp_path):
    """A -c file holding only `[sizing] params` (no `name`) over the built-in default, or
    after files that name no sizing plugin, was refused: "sizing: PluginSpec.__init__()
    missing 1 required positional argument: 'name'". The user meant the plugin already
    named: its params merge key by key, as over an earlier file's."""
    local = tmp_path / "local.toml"
    local.write_text("[sizing]\nparams = { target_vol = 0.2 }\n")
    merged = {"kelly_multiplier": 0.5, "target_vol": 0.2, "max_position": 0.05}
    c = load_config([local], env={})
    assert c.sizing.name == Config().sizing.name == "kelly_garch"
    assert c.sizing.params == merged
    paper = ROOT / "config" / "paper.toml"  # names no sizing plugin
    c = load_config([paper, local], env={})
    assert c.sizing.name == "kelly_garch" and c.sizing.params == merged
    assert c.overlay_notes == ()  # nothing an operator wrote was dropped
    c = load_config([{"sizing": {"params": {"target_vol": 0.2}}}], env={})  # a table
    assert c.sizing.params == merged


def test_an_unknown_sizing_param_without_a_name_is_an_error_naming_file_and_key(tmp_path):
    """Merged into the built-in plugin, a param it does not have is still refused when the
    plugin is built, naming the key and the file (one -c file too: it names no plugin)."""
    from tradingd.preflight import load_pipeline

    local = tmp_path / "local.toml"
    local.write_text("[sizing]\nparams = { target_vol = 0.2, bogus = 1 }\n")
    for paths in ([local], [ROOT / "config" / "paper.toml", local]):
        c = load_config(paths, env={})
        with pytest.raises(ConfigError) as info:
            load_pipeline(c)
        text = str(info.value)
        assert "sizing.params.bogus" in text and text.endswith(f"(set in {local})"), text


@pytest.mark.parametrize("key", ["risk", "signals"])
def test_a_list_entry_without_a_name_is_an_error_naming_the_key_and_file(tmp_path, key):
    """A [[risk]] / [[signals]] entry is whole (its list replaces the earlier one): without a
    name it has no plugin to take one from. Said as the key, not as Python's "PluginSpec.
    __init__() missing 1 required positional argument: 'name'"."""
    local = tmp_path / "local.toml"
    local.write_text(f"[[{key}]]\nparams = {{ window = 30 }}\n")
    with pytest.raises(ConfigError) as info:
        load_config([ROOT / "config" / "default.toml", local], env={})
    text = str(info.value)
    assert text.startswith(f"{key}[0].name is missing: ") and "positional" not in text
    assert text.endswith(f"(set in {local})")


def test_onnxruntime_telemetry_is_off_unless_the_operator_says_otherwise():
    """onnxruntime's Linux telemetry looked up and called mobile.events.data.microsoft.com
    from the demo (seen with strace); its opt-out must be set before it starts."""
    import subprocess
    import sys

    code = "import os, tradingd; print(os.environ.get('ORT_DISABLE_TELEMETRY'))"
    env = {k: v for k, v in __import__("os").environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "1", out.stderr
    env["ORT_DISABLE_TELEMETRY"] = "0"  # the operator's choice stands
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "0", out.stderr


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8080", True),
        ("http://[::1]:8080", True),
        ("http://localhost:8080", True),
        ("http://fake.localhost:8080", True),  # RFC 6761
        ("http://127.0.0.1.nip.io:8080", False),  # a name: anywhere
        ("https://paper-api.alpaca.markets", False),
    ],
)
def test_a_test_server_of_the_broker_is_told_from_an_account(url, loopback):
    """An accelerated replay may only send to a test server on this machine
    (`app.replays_on_an_account`), by the one reading of "this machine" the account lock
    and the health server use (`*.localhost` too)."""
    from tradingd.app import replays_on_an_account

    config = load_config([], env={"TRADINGD_BROKER__ALPACA__BASE_URL": url})
    assert config.broker.alpaca.is_loopback is loopback
    paced = dataclasses.replace(config, live=dataclasses.replace(config.live, bars_per_second=5))
    assert replays_on_an_account(paced) is not loopback


@pytest.mark.parametrize(
    ("table", "where"),
    [('[sizing]\nname = ""\n', "sizing"), ('[[risk]]\nname = " "\n', "risk[0]")],
)
def test_an_empty_plugin_name_is_said_with_its_table(tmp_path, table, where):
    """ "plugin name '' is invalid" said not which table held it."""
    bad = tmp_path / "bad.toml"
    bad.write_text(table)
    with pytest.raises(ConfigError) as info:
        load_config([bad], env={})
    assert str(info.value).startswith(f"{where}: plugin name ")


@pytest.mark.parametrize(
    ("key", "env"),
    [
        ("feed.yahoo.base_url", "TRADINGD_FEED__YAHOO__BASE_URL"),
        ("broker.alpaca.base_url", "TRADINGD_BROKER__ALPACA__BASE_URL"),
    ],
)
@pytest.mark.parametrize(("host", "address"), [("127.1", "127.0.0.1"), ("2130706433", "127.0.0.1")])
def test_a_url_with_a_short_form_address_is_refused_naming_the_usual_one(key, env, host, address):
    """The OS reads 127.1 as 127.0.0.1, but aiohttp (the feeds' client) refuses such a URL
    ("not a canonical IPv4 address") at its first request: the configuration passed it, and
    the feed failed later. Refused at load, for every URL setting alike."""
    with pytest.raises(ConfigError) as info:
        load_config([], env={env: f"http://{host}:8080"})
    text = str(info.value)
    assert text.startswith(f"{key} = 'http://{host}:8080' is invalid")
    assert f"write {address}" in text
    for fine in ("http://127.0.0.1:8080", "http://[::1]:8080", "http://[0:0::1]:8080"):
        load_config([], env={env: fine})  # the usual spellings (and IPv6's) pass


def test_the_log_says_which_files_were_read_or_that_none_was(tmp_path):
    """Outside the checkout no config/default.toml is found and the built-in defaults run:
    nothing said so, though an edited default.toml then changed nothing."""
    from structlog.testing import capture_logs

    from tradingd.config import log_overlay_notes

    mine = tmp_path / "mine.toml"
    mine.write_text("[run]\nname = 'x'\n")
    with capture_logs() as logs:
        log_overlay_notes(load_config([], env={}))
        log_overlay_notes(load_config([mine], env={}))
    said = [e["files"] for e in logs if e["event"] == "config.files"]
    assert said == ["none: the built-in defaults", [str(mine.resolve())]]
