"""Every configuration value is checked when the configuration is built (issue 7, points 6 and
11): each case below once passed and then crashed later (some after a whole replay) or was
silently taken to mean something else. The error must name the key, the value and what is
allowed."""

from __future__ import annotations

import dataclasses
import math
import re
from datetime import UTC, date, datetime
from typing import Literal

import hypothesis
import hypothesis.strategies as st
import pytest

from tradingd.config import (
    NON_CONFIG_ENV,
    BrokerConfig,
    CacheConfig,
    Config,
    CostsConfig,
    DataConfig,
    FeaturesConfig,
    LiveConfig,
    LogConfig,
    OrdersConfig,
    PluginSpec,
    RunConfig,
    StorageConfig,
    load_config,
)
from tradingd.core.errors import ConfigError


def load(tmp_path, toml: str = "", env: dict[str, str] | None = None) -> Config:
    p = tmp_path / "c.toml"
    p.write_text(toml)
    return load_config([p], env=env or {})


def error(tmp_path, toml: str = "", env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, toml, env)
    return str(e.value)


def assert_names(msg: str, *parts: str) -> None:
    for part in parts:
        assert part in msg, f"{part!r} not in the error: {msg}"


# ----------------------------------------------------------------------------- files


@pytest.mark.parametrize(
    "content",
    [
        b"SQLite format 3\x00\x10\x00\x01\x01\x00@  ",  # a database given by mistake
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",  # not even UTF-8
        b"[run]\nname = \xff\xfe\n",
    ],
)
def test_binary_file_is_not_a_toml_file(tmp_path, content):
    p = tmp_path / "tradingd.db"
    p.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        load_config([p], env={})
    assert_names(str(e.value), str(p), "not a UTF-8 TOML file")


def test_a_folder_as_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot be read"):
        load_config([tmp_path], env={})


# ----------------------------------------------------------------------------- dates


@pytest.mark.parametrize(
    ("toml", "env", "start"),
    [
        ("[run]\nstart = 2010-01-01\n", {}, "2010-01-01"),  # an unquoted TOML date
        ('[run]\nstart = "2010-01-01"\n', {}, "2010-01-01"),
        ("", {"TRADINGD_RUN__START": "2010-01-01"}, "2010-01-01"),
        ("[run]\nstart = 2010-01-01T09:30:00\n", {}, "2010-01-01T09:30:00"),
        ("", {"TRADINGD_RUN__START": "2010-01-01T09:30:00Z"}, "2010-01-01T09:30:00+00:00"),
        ('[run]\nstart = "2010-01-01 09:30"\n', {}, "2010-01-01 09:30"),
    ],
)
def test_dates_are_accepted_as_dates_or_text(tmp_path, toml, env, start):
    c = load(tmp_path, toml, env)
    assert c.run.start == start
    assert isinstance(c.run.start, str)


def test_end_date_from_toml_and_from_code(tmp_path):
    assert load(tmp_path, "[run]\nend = 2018-12-31\n").run.end == "2018-12-31"
    assert RunConfig(end=date(2018, 12, 31)).end == "2018-12-31"  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["2017-13-01", "yesterday", "2017-02-30", "01/02/2017", "2017"])
@pytest.mark.parametrize("key", ["start", "end"])
def test_bad_dates_name_key_value_and_format(tmp_path, key, value):
    msg = error(tmp_path, f'[run]\n{key} = "{value}"\n')
    assert_names(msg, f"run.{key}", repr(value), "YYYY-MM-DD")


def test_bad_date_from_environment(tmp_path):
    msg = error(tmp_path, env={"TRADINGD_RUN__END": "yesterday"})
    assert_names(msg, "run.end", "'yesterday'", "YYYY-MM-DD")


def test_start_after_end(tmp_path):
    msg = error(tmp_path, "[run]\nstart = 2018-01-01\nend = 2017-01-01\n")
    assert_names(msg, "run.start", "2018-01-01", "run.end", "2017-01-01")


def test_a_date_where_text_is_expected_says_to_quote_it(tmp_path):
    msg = error(tmp_path, "[run]\nname = 2010-01-01\n")
    assert_names(msg, "run.name", "must be a string", "a date")


# ----------------------------------------------------------------------------- values


BAD_VALUES = [
    # (toml, key, value as printed, what is allowed)
    ("[broker]\norder_ttl_bars = -3", "broker.order_ttl_bars", "-3", ">= 0"),
    ("[run]\ninitial_capital = inf", "run.initial_capital", "inf", "finite"),
    ("[run]\ninitial_capital = -inf", "run.initial_capital", "-inf", "finite"),
    ("[run]\ninitial_capital = 0.0", "run.initial_capital", "0.0", "> 0"),
    ('[live]\nbar = "4pm"', "live.bar", "'4pm'", "1d, 1m, 5m, 15m, 30m, 60m"),
    ('[live]\nbar = "2h"', "live.bar", "'2h'", "valid choices"),
    ("[live]\ndelay_s = -1.0", "live.delay_s", "-1.0", "between 0 and 86,400"),
    ("[live]\ndelay_s = 1e9", "live.delay_s", "1000000000.0", "between 0 and 86,400"),
    ("[live]\nwarmup_bars = -5", "live.warmup_bars", "-5", ">= 0"),
    ("[live]\nreconcile_confirm_s = 0.0", "live.reconcile_confirm_s", "0.0", "> 0"),
    ("[live]\nreconcile_confirm_s = 900.0", "live.reconcile_confirm_s", "900.0", "<= 300"),
    ('[data]\ntimezone = "Mars/Olympus"', "data", "'Mars/Olympus'", "IANA time zone"),
    ('[data]\ntimezone = "../../etc/passwd"', "data", "passwd'", "IANA time zone"),
    ("[data]\nmax_spike = 0.5", "data", "0.5", "> 1"),
    ('[data]\ndate_format = "dd/mm/yyyy"', "data", "'dd/mm/yyyy'", "strftime format"),
    ("[data]\nmax_symbols = -1", "data.max_symbols", "-1", ">= 0"),
    ("[data]\nmax_gap_days = 0", "data.max_gap_days", "0", ">= 1"),
    ('[data]\nsymbols = ["A", "A"]', "data.symbols", "'A'", "twice"),
    ('[data]\nrepair = ["nan", "everything"]', "data.repair", "'everything'", "valid choices"),
    ("[costs]\ncommission_pct = 5.0", "costs.commission_pct", "5.0", "0.001 = 0.1%"),
    ("[costs]\nslippage_pct = 0.5", "costs.slippage_pct", "0.5", "fraction"),
    ("[costs]\nhalf_spread_bps = 5000.0", "costs.half_spread_bps", "5000.0", "basis points"),
    ("[storage]\nflush_interval_s = nan", "storage.flush_interval_s", "nan", "finite"),
    ("[storage]\nflush_interval_s = -1.0", "storage.flush_interval_s", "-1.0", ">= 0"),
    ("[storage]\nbatch_size = 0", "storage.batch_size", "0", "> 0"),
    ("[cache]\nexpiry_s = 0.0", "cache.expiry_s", "0.0", "> 0"),
    ('[features]\nset = "nope"', "features.set", "'nope'", "default_v1"),
    ("[features.indicators]\nbb_nbdev = nan", "features.indicators.bb_nbdev", "nan", "finite"),
    ("[orders]\ntake_profit_pct = 4.0", "orders.take_profit_pct", "4.0", "0.04 = 4%"),
    ("[orders]\nrebalance_band = 1.5", "orders.rebalance_band", "1.5", "[0, 1)"),
    # Protective exit modes (issue 10, point 4).
    (
        '[orders]\nbrackets = true\nstop_mode = "chandelier"',
        "orders.stop_mode",
        "'chandelier'",
        "pct, atr, trailing",
    ),
    (
        '[orders]\nbrackets = true\ntake_profit_mode = "rr"',
        "orders.take_profit_mode",
        "'rr'",
        "pct, reward_risk, trailing",
    ),
    (
        '[orders]\nbrackets = false\nstop_mode = "atr"',
        "orders.stop_mode",
        "'atr'",
        "orders.brackets = true",
    ),
    (
        '[orders]\nbrackets = false\ntake_profit_mode = "trailing"',
        "orders.take_profit_mode",
        "'trailing'",
        "orders.brackets = true",
    ),
    ("[orders]\natr_multiple = 0.0", "orders.atr_multiple", "0.0", "(0, 20]"),
    ("[orders]\natr_multiple = -2.0", "orders.atr_multiple", "-2.0", "(0, 20]"),
    ("[orders]\natr_period = 0", "orders.atr_period", "0", "1..500"),
    ("[orders]\natr_period = 14.5", "orders.atr_period", "14.5", "int"),
    ("[orders]\nreward_risk = 0.0", "orders.reward_risk", "0.0", "(0, 100]"),
    (
        '[orders]\nbrackets = true\ntake_profit_mode = "reward_risk"\nreward_risk = 60.0',
        "orders.reward_risk",
        "60.0",
        "below 1 / stop_loss_pct = 50",
    ),
    ("[log]\naudit_backups = -1", "log.audit_backups", "-1", ">= 0"),
    ("[log]\naudit_max_bytes = 10", "log.audit_max_bytes", "10", ">= 1024"),
    ('[run]\nname = "a/b"', "run.name", "'a/b'", "path separators"),
    ('[run]\nrun_id = "../x"', "run.run_id", "'../x'", "path separators"),
    ('[run]\nrun_id = "a|b"', "run.run_id", "'a|b'", "must not contain '|'"),
    ('[run]\nname = "a|b"', "run.name", "'a|b'", "client_order_id"),
    ('[run]\noutput_dir = ""', "run.output_dir", "''", "a folder"),
    (
        '[[signals]]\nname = "momentum"\nweight = 0.0',
        "signals[0].weight",
        "0.0",
        "> 0",
    ),
    (
        '[[signals]]\nname = "momentum"\n[[signals]]\nname = "sma_cross"\nweight = -1.0',
        "signals[1].weight",
        "-1.0",
        "> 0",
    ),
    (
        '[[signals]]\nname = "momentum"\nparams = { scale = nan }',
        "signals[0].params.scale",
        "nan",
        "finite",
    ),
]


@pytest.mark.parametrize(
    ("toml", "key", "value", "allowed"), BAD_VALUES, ids=[b[1] for b in BAD_VALUES]
)
def test_bad_value_names_key_value_and_rule(tmp_path, toml, key, value, allowed):
    assert_names(error(tmp_path, toml + "\n"), key, value, allowed)


@pytest.mark.parametrize(
    "toml",
    [
        '[live]\nbar = "5m"\ncalendar = "XLON"',
        '[data]\ntimezone = "Europe/London"\nmax_spike = 0.0\nmax_volume = 0.0',
        "[live]\ndelay_s = 0.0",
        "[broker]\norder_ttl_bars = 0\nmax_volume_participation = 0.0",
        "[costs]\ncommission_pct = 0.0999\nslippage_pct = 0.0",
        "[data]\nmax_symbols = 0",
        '[data]\nrepair = ["all"]',
        '[orders]\nbrackets = true\nstop_mode = "atr"\natr_period = 1\n'
        'take_profit_mode = "trailing"',
        '[orders]\nbrackets = true\nstop_mode = "trailing"\ntake_profit_mode = "reward_risk"',
        '[orders]\nbrackets = true\nstop_mode = "atr"\ntake_profit_mode = "reward_risk"\n'
        "reward_risk = 100.0",
    ],
)
def test_edge_values_that_are_allowed(tmp_path, toml):
    load(tmp_path, toml + "\n")  # no error


def _float_fields():
    sections = [
        ("run", RunConfig),
        ("data", DataConfig),
        ("costs", CostsConfig),
        ("broker", BrokerConfig),
        ("orders", OrdersConfig),
        ("features", FeaturesConfig),
        ("storage", StorageConfig),
        ("cache", CacheConfig),
        ("live", LiveConfig),
        ("log", LogConfig),
    ]
    out = []
    for section, cls in sections:
        for f in dataclasses.fields(cls):
            if isinstance(getattr(cls(), f.name), float):
                out.append((section, f.name))
    return out


FLOAT_FIELDS = _float_fields()


def test_float_fields_found():
    assert ("costs", "commission_pct") in FLOAT_FIELDS and len(FLOAT_FIELDS) >= 15


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
@pytest.mark.parametrize(("section", "name"), FLOAT_FIELDS)
def test_every_float_rejects_nan_and_inf(tmp_path, section, name, bad):
    assert_names(error(tmp_path, f"[{section}]\n{name} = {bad}\n"), f"{section}.{name}", bad)
    # Also from the environment, and when a config is built in code.
    env = {f"TRADINGD_{section.upper()}__{name.upper()}": bad}
    assert_names(error(tmp_path, env=env), f"{section}.{name}", bad, "finite")
    default = getattr(Config(), section)
    with pytest.raises(ConfigError, match=rf"{section}\.{name} = .*finite"):
        dataclasses.replace(default, **{name: float(bad)})


# ----------------------------------------------------------------------------- plugins


def test_empty_risk_list_needs_an_explicit_acknowledgement(tmp_path):
    msg = error(tmp_path, "risk = []\n")
    assert_names(msg, "risk = []", "allow_no_risk = true")
    c = load(tmp_path, "risk = []\n[run]\nallow_no_risk = true\n")
    assert c.risk == () and c.run.allow_no_risk
    with pytest.raises(ConfigError, match="allow_no_risk"):
        dataclasses.replace(Config(), risk=())


def test_no_signal_is_an_error(tmp_path):
    assert_names(error(tmp_path, "signals = []\n"), "signals", "at least one")


def test_weight_checked_when_built_in_code():
    with pytest.raises(ConfigError, match=r"signals\[0\]\.weight = nan"):
        Config(signals=(PluginSpec("momentum", weight=math.nan),))


# ----------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("env", "key", "shown", "allowed"),
    [
        (
            {"DATABASE_URL": "postgresql://u:s3cret@h:notaport/db"},
            "storage.url",
            "'notaport'",
            "1..65535",
        ),
        ({"DATABASE_URL": "postgresql://u@h:70000/db"}, "storage.url", "'70000'", "1..65535"),
        ({"DATABASE_URL": "mysql://u:s3cret@h/db"}, "storage.url", "mysql://u:***@h/db", "sqlite"),
        ({"DATABASE_URL": "sqlite:///"}, "storage.url", "'sqlite:///'", "names no file"),
        ({"REDIS_URL": "redis://:s3cret@h:port/0"}, "cache.url", "'port'", "1..65535"),
        ({"REDIS_URL": "redis://:s3cret@h:6379/zero"}, "cache.url", "'zero'", "integer >= 0"),
        ({"REDIS_URL": "redis://h:6379/0?db=-1"}, "cache.url", "'-1'", "integer >= 0"),
        # isdigit() alone: '\u00b2' failed as int()'s error naming only "cache:"; other
        # scripts' digits ('\u0663', Arabic-Indic 3) are refused as in a port.
        ({"REDIS_URL": "redis://h:6379/\u00b2"}, "cache.url", "'\u00b2'", "integer >= 0"),
        ({"REDIS_URL": "redis://h:6379/0?db=\u0663"}, "cache.url", "'\u0663'", "integer >= 0"),
        ({"REDIS_URL": "http://h:6379/0"}, "cache.url", "http://h:6379/0", "redis://"),
    ],
)
def test_bad_urls_name_key_masked_value_and_rule(tmp_path, env, key, shown, allowed):
    msg = error(tmp_path, env=env)
    assert_names(msg, key, shown, allowed)
    assert "s3cret" not in msg


def test_one_port_predicate_for_urls_and_the_port_variables():
    """DB_PORT/REDIS_PORT (`_url_port`) and a URL's ports (`_check_ports`) were two checks,
    one taking any script's digits: both ask `_is_port` now."""
    from tradingd.config import _is_port

    assert all(_is_port(p) for p in ("1", "80", "5432", "65535"))
    bad = ("", "0", "65536", "-1", "80x", " 80", "\u0668\u0660", "\u00b2", "\uff18\uff10")
    assert not any(_is_port(p) for p in bad)


@pytest.mark.parametrize(
    ("var", "url"),
    [
        ("DATABASE_URL", "postgresql://u:s3cret@h:\u0668\u0660/db"),  # Arabic-Indic "80"
        ("DATABASE_URL", "postgresql://u@h1:5432,h2:\u0668\u0660/db"),
        ("DATABASE_URL", "postgresql://u@h:\u00b2/db"),  # a superscript 2
        ("REDIS_URL", "redis://:s3cret@h:\u0668\u0660/0"),
    ],
)
def test_a_port_of_other_digits_than_ascii_is_refused_in_a_url(tmp_path, var, url):
    """A URL's port is checked as DB_PORT and REDIS_PORT are (ASCII digits, 1..65535):
    `str.isdigit` alone let '\u0668\u0660' through (int() reads it as 80; the drivers do
    not), and '\u00b2' raised int()'s own error, named only "storage:"."""
    msg = error(tmp_path, env={var: url})
    key = "storage.url" if var == "DATABASE_URL" else "cache.url"
    port = url.rpartition(":")[2].partition("/")[0]
    assert_names(msg, key, var, f"port {port!r}", "1..65535")
    assert "s3cret" not in msg


def test_good_urls(tmp_path):
    c = load(
        tmp_path,
        env={
            "DATABASE_URL": "postgresql://u:p@h1:5432,h2:5433/db?sslmode=require",
            "REDIS_URL": "rediss://:p@[::1]:6380/15",
        },
    )
    assert c.storage.url.startswith("postgresql://") and c.cache.url.startswith("rediss://")
    assert load(tmp_path, env={"REDIS_URL": "memory://"}).cache.url == "memory://"


# ----------------------------------------------------------------------------- environment


@pytest.mark.parametrize(
    "name",
    [
        "TRADINGD_COSTS_COMMISSION_PCT",  # one underscore: used to be silently ignored
        "TRADINGD_COSTS__",
        "TRADINGD___COMMISSION_PCT",
        "TRADINGD_VERBOSE",
    ],
)
def test_malformed_tradingd_variable_is_an_error(tmp_path, name):
    msg = error(tmp_path, env={name: "0.002"})
    assert_names(msg, name, "TRADINGD_<SECTION>__<KEY>")


def test_documented_non_config_variables_are_allowed(tmp_path):
    assert "TRADINGD_REQUIRE_SERVICES" in NON_CONFIG_ENV
    assert "TRADINGD_HEALTH_TOKEN" in NON_CONFIG_ENV
    c = load(tmp_path, env={n: "1" for n in NON_CONFIG_ENV})
    assert c == load(tmp_path)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TRADINGD_RUN__NAME", "x\ny"),
        ("TRADINGD_COSTS__COMMISSION_PCT", "0.002\nslippage_pct = 0.5"),  # smuggles a key
        ("TRADINGD_LOG__LEVEL", "info\r"),
        ("DATABASE_URL", "postgresql://u:s3cret@h/db\n"),
        ("REDIS_URL", "redis://h:6379/0\n"),
    ],
)
def test_environment_value_with_a_newline_is_an_error(tmp_path, name, value):
    msg = error(tmp_path, env={name: value})
    assert_names(msg, name, "newline")
    assert "s3cret" not in msg


def test_nested_environment_override(tmp_path):
    c = load(tmp_path, env={"TRADINGD_FEATURES__INDICATORS__RSI": "10"})
    assert c.features.indicators.rsi == 10
    msg = error(tmp_path, env={"TRADINGD_RUN__NAME__X": "1"})
    assert_names(msg, "run.name", "must be a string")


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[feed.yahoo]\nbase_url = "not a url"', "feed.yahoo.base_url"),
        ('[feed.alphavantage]\nbase_url = "www.alphavantage.co"', "feed.alphavantage.base_url"),
        ('[feed.alpaca]\nbase_url = "https://"', "feed.alpaca.base_url"),
        ('[broker.alpaca]\nstream_url = "not-a-url"', "broker.alpaca.stream_url"),
        ('[broker.alpaca]\nstream_url = "https://stream.example"', "broker.alpaca.stream_url"),
        ('[broker.alpaca]\nbase_url = "ftp://paper-api.example"', "broker.alpaca.base_url"),
        ('[feed.yahoo]\nbase_url = "http://127.0.0.1:notaport"', "feed.yahoo.base_url"),
        ('[feed.yahoo]\nbase_url = "http://[::1"', "feed.yahoo.base_url"),
    ],
)
def test_service_urls_are_checked_at_load(tmp_path, toml, key):
    """Only broker.alpaca.base_url was: a bad feed URL made a traceback per symbol and a
    warm-up retried forever, a bad stream URL a crash with exit 1, both at `tradingd run`."""
    msg = error(tmp_path, toml + "\n")
    assert_names(msg, key, "URL with a host")


def test_service_urls_that_are_fine(tmp_path):
    config = load(
        tmp_path,
        '[feed.alpaca]\nbase_url = ""\n[broker.alpaca]\nstream_url = "ws://127.0.0.1:9/stream"\n'
        '[feed.yahoo]\nbase_url = "http://127.0.0.1:8080"',
    )
    assert config.broker.alpaca.stream_url == "ws://127.0.0.1:9/stream"


def test_a_run_window_without_a_bar_says_so_not_that_the_data_ends():
    """start = end = Christmas: the data (loaded up to run.end) ended the day before, and the
    error said run.start was after the last bar of the data, which runs for years more."""
    import dataclasses

    from conftest import make_panel

    from tradingd.app import trade_start
    from tradingd.config import Config

    panel = make_panel(n_bars=30, split_at=None)  # business days, 2020-01-01 to 02-11
    run = dataclasses.replace(Config().run, start="2020-02-15", end="2020-02-16")
    with pytest.raises(ConfigError, match=r"no bar between run.start = '2020-02-15' and run.end"):
        trade_start(dataclasses.replace(Config(), run=run), panel)
    # Weeks after the data's last bar: not "a holiday or weekend window?", which sent a new
    # user looking at the calendar.
    late = dataclasses.replace(run, start="2020-03-02", end="2020-03-06")
    with pytest.raises(ConfigError, match=r"2020-02-11: the data ends before run.start"):
        trade_start(dataclasses.replace(Config(), run=late), panel)
    run = dataclasses.replace(run, end="")
    with pytest.raises(ConfigError, match=r"after the last bar of the data \(2020-02-11\)"):
        trade_start(dataclasses.replace(Config(), run=run), panel)


def test_plugin_param_types_literal_list_and_unions_are_checked():
    """A third-party plugin's Config: `Literal` took any value, `list[str]` took numbers or
    a string, and `int | str` refused "abc" (only its first type was tried)."""
    import dataclasses

    from tradingd.config import build

    @dataclasses.dataclass(frozen=True)
    class Params:
        mode: Literal["fast", "slow"] = "fast"
        names: list[str] = dataclasses.field(default_factory=list)
        pair: tuple[int, str] = (1, "a")
        key: int | str = 0
        limit: float | None = None

    ok = build(Params, {"mode": "slow", "names": ["a", "b"], "pair": [2, "b"], "key": "abc"}, "p")
    assert (ok.mode, ok.names, ok.pair, ok.key) == ("slow", ["a", "b"], (2, "b"), "abc")
    assert build(Params, {"key": 7, "limit": 1}, "p").key == 7
    for bad, match in (
        ({"mode": "medium"}, r"p.mode = 'medium' is invalid; valid choices: 'fast', 'slow'"),
        ({"names": [1, 2]}, r"p.names\[0\] must be a string"),
        ({"names": "abc"}, r"p.names must be a list"),
        ({"pair": [1, 2]}, r"p.pair\[1\] must be a string"),
        ({"pair": [1]}, r"p.pair must be a list of 2"),
        ({"key": 1.5}, r"p.key = 1.5 fits none of its types"),
        ({"limit": "x"}, r"p.limit must be a number"),
    ):
        with pytest.raises(ConfigError, match=match):
            build(Params, bad, "p")


@pytest.mark.parametrize(
    "section", ['[sizing]\nname = "equal_weight"', '[[risk]]\nname = "max_position"']
)
def test_a_weight_outside_signals_is_refused_not_ignored(tmp_path, section):
    """`weight` on [sizing] or [[risk]] (even -3) was accepted and did nothing."""
    p = tmp_path / "w.toml"
    p.write_text(f"{section}\nweight = -3.0\n")
    where = "sizing" if "sizing" in section else "risk[0]"
    with pytest.raises(
        ConfigError, match=rf"{re.escape(where)}.weight = -3.0: only \[\[signals\]\]"
    ):
        load_config([p], env={})


@pytest.mark.parametrize(
    ("section", "where", "valid"),
    [
        ('[sizing]\nname = "equal_weight"', "sizing", "name, params"),
        ('[[risk]]\nname = "max_position"', r"risk\[0\]", "name, params"),
        ('[[signals]]\nname = "momentum"', r"signals\[0\]", "name, params, weight"),
    ],
    ids=["sizing", "risk", "signals"],
)
def test_a_plugin_tables_valid_keys_are_its_own(tmp_path, section, where, valid):
    """[sizing]'s unknown-key message listed `weight` as valid, which was then refused
    ("only [[signals]] have a weight")."""
    p = tmp_path / "k.toml"
    p.write_text(f"{section}\nwieght = 2.0\n")
    with pytest.raises(ConfigError, match=rf"{where}\.wieght; valid keys: {valid}$"):
        load_config([p], env={})


def test_hourly_bars_from_alpaca_are_refused_with_the_way_out():
    """Alpaca's 1Hour bars start on the clock hour and the calendar's 60m bars on the 09:30
    open: the combination was accepted, and every hourly bar was late, then lost."""
    from tradingd.config import load_config

    base = {"feed": {"source": "alpaca"}, "data": {"symbols": ["AAA"]}}
    with pytest.raises(ConfigError, match=r'live.bar = "60m" with feed.source = "alpaca".*"30m"'):
        load_config([{**base, "live": {"bar": "60m"}}], env={})
    assert load_config([{**base, "live": {"bar": "30m"}}], env={}).live.bar == "30m"
    yahoo = {"feed": {"source": "yahoo"}, "data": {"symbols": ["AAA"]}, "live": {"bar": "60m"}}
    assert load_config([yahoo], env={}).live.bar == "60m"


def test_a_later_file_that_lists_risk_rules_says_which_it_dropped(tmp_path):
    """A file that tightened one limit with a [[risk]] block replaced the whole chain, the
    drawdown guard included, without a word."""
    from structlog.testing import capture_logs

    from tradingd.config import load_config, log_overlay_notes

    first = {"risk": [{"name": "max_position"}, {"name": "drawdown_guard"}]}
    later = tmp_path / "tight.toml"
    later.write_text('[[risk]]\nname = "max_position"\nparams = { max_position_pct = 0.03 }\n')
    config = load_config([first, later], env={})
    assert [r.name for r in config.risk] == ["max_position"]  # TOML's rule: kept
    with capture_logs() as logs:
        log_overlay_notes(config)
    (note,) = [e for e in logs if e["event"] == "config.list_replaced" and e["file"] == str(later)]
    assert note["key"] == "risk"
    assert note["dropped"] == ["drawdown_guard"] and note["now"] == ["max_position"]
    with capture_logs() as logs:
        log_overlay_notes(load_config([first, {"risk": first["risk"]}], env={}))
    assert [e["file"] for e in logs if e["event"] == "config.list_replaced"] == []
    assert [e["file"] for e in logs if e["event"] == "config.defaults_replaced"] == ["a table"]
    # A single file replaces only the built-in chain of 7 rules: that is how a chain is
    # written, not a later file undoing an earlier one's. It warned on every run ("in a
    # later file replaces the whole list"); it is said at info level, the rules left out
    # named.
    with capture_logs() as logs:
        log_overlay_notes(load_config([later], env={}))
    assert [e for e in logs if e["log_level"] == "warning"] == []
    (alone,) = [e for e in logs if e["event"] == "config.defaults_replaced"]
    assert alone["log_level"] == "info" and "later file" not in alone["rule"]
    assert "drawdown_guard" in alone["dropped"] and alone["now"] == ["max_position"]


def test_a_bad_value_from_the_environment_names_the_variable():
    """`costs.commission_pct must be a number` sent the user to config files that said
    nothing wrong: the value came from TRADINGD_COSTS__COMMISSION_PCT."""
    from tradingd.config import load_config

    with pytest.raises(
        ConfigError, match=r"from the environment variable TRADINGD_COSTS__COMMISSION_PCT"
    ):
        load_config([], env={"TRADINGD_COSTS__COMMISSION_PCT": "abc"})
    with pytest.raises(ConfigError) as caught:
        load_config([{"costs": {"commission_pct": "abc"}}], env={})
    assert "environment variable" not in str(caught.value)


@pytest.mark.parametrize(
    ("key", "value", "toml"),
    [
        ("MAX_SPIKE", "-1", "-1"),
        ("MAX_VOLUME", "-5", "-5"),
        ("TIMEZONE", "Mars/Base", '"Mars/Base"'),
        ("DATE_FORMAT", "%Q", '"%Q"'),
    ],
)
def test_a_bad_data_limit_from_the_environment_names_the_variable_not_a_file(
    tmp_path, key, value, toml
):
    """`data: data max_spike -1.0 must be > 1 ... (set in config/backtest.toml)`: the [data]
    limits' errors did not lead with their key, so the file that set [data] was blamed and
    the variable never named."""
    from tradingd.config import load_config

    first, second = tmp_path / "a.toml", tmp_path / "b.toml"
    first.write_text("[data]\nmax_gap_days = 7\n")
    second.write_text('[data]\nlayout = "auto"\n')
    variable = f"TRADINGD_DATA__{key}"
    with pytest.raises(ConfigError) as caught:
        load_config([first, second], env={variable: value})
    text = str(caught.value)
    assert text.startswith(f"data.{key.lower()} = ")
    assert text.endswith(f"(from the environment variable {variable})")
    assert "set in" not in text and "data: data" not in text
    second.write_text(f"[data]\n{key.lower()} = {toml}\n")
    with pytest.raises(ConfigError) as caught:
        load_config([first, second], env={})
    assert str(caught.value).endswith(f"(set in {second})")


def test_an_unknown_key_from_the_environment_names_the_variable():
    """`unknown key(s) costs.comission_pct` named no variable: the key is not at the start of
    that message, where a wrong value's key is."""
    from tradingd.config import load_config

    env = {"TRADINGD_COSTS__COMISSION_PCT": "0.002", "TRADINGD_RUN__NAME": "x"}
    with pytest.raises(ConfigError) as caught:
        load_config([], env=env)
    text = str(caught.value)
    assert text.startswith("unknown key(s) costs.comission_pct")
    assert text.endswith("(from the environment variable TRADINGD_COSTS__COMISSION_PCT)")


@pytest.mark.parametrize(
    "env,named",
    [
        ({"DB_HSOT": "db", "DB_PORT": "5433", "DB_PASSWORD": "pw"}, "DB_PORT, DB_PASSWORD"),
        ({"REDIS_PORT": "6380"}, "REDIS_PORT"),
        ({"REDIS_PASSWORD": "pw"}, "REDIS_PASSWORD"),
        ({"REDIS_DB": "7"}, "REDIS_DB"),
    ],
)
def test_database_and_redis_variables_without_their_host_are_refused(env, named):
    """DB_PORT, DB_NAME, DB_USER, DB_PASSWORD (REDIS_PORT) act only with DB_HOST (REDIS_HOST):
    with a misspelt host the daemon traded on the local SQLite file and said nothing."""
    from tradingd.config import load_config

    with pytest.raises(ConfigError) as caught:
        load_config([], env=env)
    host = "REDIS_HOST" if any(k.startswith("REDIS_") for k in env) else "DB_HOST"
    assert f"environment variable(s) {named} set without {host}" in str(caught.value)
    assert "pw" not in str(caught.value)
    # With the host, or with the URL that replaces them, they are fine.
    url = "REDIS_URL" if host == "REDIS_HOST" else "DATABASE_URL"
    load_config([], env={**env, host: "h"})
    load_config([], env={**env, url: "redis://h:1/0" if host == "REDIS_HOST" else "sqlite:///x"})


def test_redis_db_chooses_the_cache_database():
    """The specification's REDIS_DB was ignored without a word: the cache used database 0."""
    from tradingd.config import load_config

    assert load_config([], env={"REDIS_HOST": "cache", "REDIS_DB": "7"}).cache.url == (
        "redis://cache:6379/7"
    )
    assert load_config([], env={"REDIS_HOST": "cache"}).cache.url == "redis://cache:6379/0"
    for bad in ("x", "-1", "1.5", "\u0667"):
        with pytest.raises(ConfigError, match="REDIS_DB"):
            load_config([], env={"REDIS_HOST": "cache", "REDIS_DB": bad})


def test_with_several_files_an_error_names_the_file_that_set_the_key(tmp_path):
    """`unknown key(s) costs.cost` left the user to search every -c file."""
    from tradingd.config import load_config

    first, second = tmp_path / "a.toml", tmp_path / "b.toml"
    first.write_text("[costs]\ncommission_pct = 0.001\n")
    second.write_text("[costs]\ncost = 1\n")
    with pytest.raises(ConfigError, match=rf"unknown key\(s\) costs.cost.*\(set in {second}\)"):
        load_config([first, second], env={})
    second.write_text('[run]\nstart = "someday"\n')
    with pytest.raises(ConfigError, match=rf"run.start.*\(set in {second}\)"):
        load_config([first, second], env={})


def test_with_several_files_a_plugin_params_error_names_the_file_too(tmp_path):
    """A plugin's params are checked when the plugin is built, after the configuration:
    `risk[0].params: ...` did not say which -c file set them."""
    from tradingd.app import build_pipeline
    from tradingd.config import load_config

    first, second = tmp_path / "a.toml", tmp_path / "b.toml"
    first.write_text("[costs]\ncommission_pct = 0.001\n")
    second.write_text('[[risk]]\nname = "max_position"\nparams = { max_position_pct = -1 }\n')
    config = load_config([first, second], env={})
    with pytest.raises(ConfigError, match=r"risk\[0\]") as caught:
        build_pipeline(config, ("AAA", "BBB"))
    assert str(caught.value).endswith(f"(set in {second})")
    # One file: nothing added (the user knows which).
    config = load_config([second], env={})
    with pytest.raises(ConfigError) as caught:
        build_pipeline(config, ("AAA", "BBB"))
    assert "set in" not in str(caught.value)


@pytest.mark.parametrize(
    "env", [{"DATABASE_URL": "mysql://h/db"}, {"DB_HOST": "h", "DB_PORT": "nope"}]
)
def test_a_url_from_the_environment_is_not_credited_to_the_file_it_replaced(tmp_path, env):
    """An invalid DATABASE_URL (or DB_*) was reported "(set in demo.toml)", the file whose
    storage.url it had replaced: the operator looked in the wrong place."""
    from tradingd.config import load_config

    first, second = tmp_path / "a.toml", tmp_path / "b.toml"
    first.write_text("[costs]\ncommission_pct = 0.001\n")
    second.write_text('[storage]\nurl = "sqlite:///var/x.db"\n')
    with pytest.raises(ConfigError) as caught:
        load_config([first, second], env=env)
    text = str(caught.value)
    assert "set in" not in text and str(second) not in text
    if "DB_HOST" in env:  # the variable at fault, not the URL it makes
        assert text.startswith("environment variable DB_PORT = 'nope'")
    else:
        assert text.startswith("storage.url") and "DATABASE_URL" in text


def test_an_ipv6_db_host_or_redis_host_is_bracketed_in_the_url_it_makes():
    """DB_HOST=::1 made postgresql://postgres@::1:25432/td, shown so by `tradingd config`;
    `tradingd fetch` then failed with "invalid literal for int() ... ':1:25432'", blaming
    DATABASE_URL, which the operator never set. An IPv6 literal is bracketed in a URL."""
    from urllib.parse import urlsplit

    env = {"DB_HOST": "::1", "DB_PORT": "25432", "DB_USER": "postgres", "DB_NAME": "td"}
    env |= {"REDIS_HOST": "fd00::5", "REDIS_PORT": "6380"}
    c = load_config([], env=env)
    assert c.storage.url == "postgresql://postgres@[::1]:25432/td"
    assert c.cache.url == "redis://[fd00::5]:6380/0"
    for url in (c.storage.url, c.cache.url):
        assert urlsplit(url).port in (25432, 6380) and ":" in str(urlsplit(url).hostname)
    # Bracketed already, padded, several PostgreSQL hosts, an IPv6 zone (%25 in a URL).
    assert load_config([], env={**env, "DB_HOST": " [::1] "}).storage.url == c.storage.url
    several = load_config([], env={**env, "DB_HOST": "db1,::1"}).storage.url
    assert several == "postgresql://postgres@db1,[::1]:25432/td"
    zoned = load_config([], env={**env, "DB_HOST": "fe80::1%eth0"}).storage.url
    assert zoned == "postgresql://postgres@[fe80::1%25eth0]:25432/td"
    # Host names and IPv4 addresses are written as they are.
    plain = load_config([], env={**env, "DB_HOST": "10.0.0.5", "REDIS_HOST": "redis_1"})
    assert plain.storage.url == "postgresql://postgres@10.0.0.5:25432/td"
    assert plain.cache.url == "redis://redis_1:6380/0"


@pytest.mark.parametrize(
    "env,var",
    [
        ({"DB_HOST": "db", "DB_PORT": "5432x"}, "DB_PORT"),
        ({"DB_HOST": "db", "DB_PORT": "0"}, "DB_PORT"),
        ({"DB_HOST": "db:5433"}, "DB_HOST"),  # a port in the host: ...@db:5433:5432/...
        ({"DB_HOST": "user@db"}, "DB_HOST"),
        ({"DB_HOST": "[db]"}, "DB_HOST"),
        ({"REDIS_HOST": "cache", "REDIS_PORT": "70000"}, "REDIS_PORT"),
        # Digits of another script: the same port check as in a URL (`_is_port`).
        ({"DB_HOST": "db", "DB_PORT": "\u0668\u0660"}, "DB_PORT"),
        ({"REDIS_HOST": "cache", "REDIS_PORT": "\u0668\u0660"}, "REDIS_PORT"),
        ({"REDIS_HOST": "cache/1"}, "REDIS_HOST"),
        ({"REDIS_HOST": "c1,c2"}, "REDIS_HOST"),  # one host: Redis URLs list no others
    ],
)
def test_a_bad_db_or_redis_part_is_named_as_its_variable_not_as_the_url(env, var):
    """A URL built from DB_*/REDIS_* parts was checked as a whole, and its error named
    `storage.url (DATABASE_URL)`, a variable the operator never set; a host with a port in
    it was even accepted (the URL's last port read as the port)."""
    env = {**env, "DB_PASSWORD": "s3cr3t"} if var.startswith("DB_") else env
    with pytest.raises(ConfigError) as caught:
        load_config([], env=env)
    text = str(caught.value)
    assert text.startswith(f"environment variable {var} = {env[var]!r} is invalid: must be")
    assert "DATABASE_URL" not in text and "REDIS_URL" not in text and "s3cr3t" not in text


def test_the_reconcile_confirmation_wait_is_a_setting(tmp_path):
    """It was an engine attribute: an operator whose broker's fills reach its positions
    more than 5 s before their events could not lengthen the second check."""
    assert load(tmp_path).live.reconcile_confirm_s == 5.0
    assert load(tmp_path, "[live]\nreconcile_confirm_s = 30").live.reconcile_confirm_s == 30.0
    env = {"TRADINGD_LIVE__RECONCILE_CONFIRM_S": "400"}
    assert_names(error(tmp_path, env=env), "live.reconcile_confirm_s", "<= 300")


def test_a_run_name_too_long_for_its_order_ids_and_files_is_refused_at_load(tmp_path):
    """80 Japanese letters as run.name loaded, then failed after the data with a traceback
    ("File name too long" opening the audit log); a 100-letter ASCII one failed at the
    first order (client_order_id over Alpaca's 128 characters). Refused at load, naming
    the key and the limit."""
    from tradingd.config import RUN_ID_MAX_CHARS, RunConfig

    for key, value in (
        ("name", "戦略" * 40),
        ("name", "m" * (RUN_ID_MAX_CHARS - 19)),
        ("run_id", "r" * (RUN_ID_MAX_CHARS + 1)),
    ):
        with pytest.raises(ConfigError, match=rf"run\.{key} is \d+ characters .*at most"):
            RunConfig(**{key: value})
    RunConfig(name="m" * (RUN_ID_MAX_CHARS - 20), run_id="r" * RUN_ID_MAX_CHARS)


def test_a_run_id_with_the_order_id_separator_is_refused_from_the_environment_too():
    """TRADINGD_RUN__RUN_ID='a|b' gave orders `a|b|20181002T000000|...`, which run "a"'s
    ownership check (`startswith("a|")`) counted as its own."""
    for key, value in (("RUN_ID", "a|b"), ("NAME", "x|")):
        with pytest.raises(ConfigError, match=rf"run\.{key.lower()} = '{re.escape(value)}'.*'\|'"):
            load_config([], env={f"TRADINGD_RUN__{key}": value})
    assert load_config([], env={"TRADINGD_RUN__RUN_ID": "a-b_c.1"}).run.run_id == "a-b_c.1"


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(
    name=st.integers(1, 150).flatmap(  # every length, not mostly short ones
        lambda n: st.text(
            st.characters(codec="utf-8", categories=("L", "N")), min_size=n, max_size=n
        )
    ),
    mode=st.sampled_from(["backtest", "live"]),
)
def test_every_accepted_run_name_fits_the_order_ids_and_the_audit_file(name, mode):
    """What the limit is for: any name the config takes gives a run id whose orders' ids fit
    Alpaca's 128 characters (a 12-character symbol, the longest leg, attempt 999) and whose
    audit log's file name fits 255 bytes."""
    from tradingd.audit import audit_path
    from tradingd.config import RunConfig
    from tradingd.core.types import Leg, client_order_id

    try:
        RunConfig(name=name)
    except ConfigError:
        return
    run_id = f"{name}-{mode}-0123456789"
    bar = datetime(2024, 1, 2, 21, 0, tzinfo=UTC)
    longest = max((str(leg) for leg in Leg), key=len)
    assert len(client_order_id(run_id, bar, "ABCDEFGHIJKL", longest, 999)) <= 128
    assert len(audit_path("/tmp", run_id).name.encode() + b".live") <= 255


def test_every_tradingd_variable_the_code_reads_is_not_taken_for_an_override():
    """TRADINGD_LOCK_DIR, documented for a systemd unit's account locks, was refused by the
    configuration loader as a malformed override: every daemon given it stopped at start.
    Any `TRADINGD_NAME` literal in the code (not `<SECTION>__<KEY>`) must be listed."""
    from pathlib import Path

    from tradingd.config import NON_CONFIG_ENV

    root = Path(__file__).resolve().parents[2]
    named = {
        m.group(1)
        for folder in ("daemon", "plugins", "models")
        for path in (root / folder).rglob("*.py")
        for m in re.finditer(r"[\"'](TRADINGD_[A-Z0-9_]+)[\"']", path.read_text(encoding="utf-8"))
        if "__" not in m.group(1)[len("TRADINGD_") :]
    }
    assert "TRADINGD_LOCK_DIR" in named  # the scan finds what it is for
    assert named <= NON_CONFIG_ENV, sorted(named - NON_CONFIG_ENV)
    for name in named:
        load_config([], env={name: "1"})  # not an error


def test_a_reconcile_interval_below_the_confirmation_wait_still_loads(tmp_path):
    """live.reconcile_interval_s = 4 was a valid setting before live.reconcile_confirm_s
    existed (5 s by default); refusing the pair stopped such daemons at their first start
    after the upgrade. The engine waits the shorter of the two."""
    cfg = tmp_path / "fast.toml"
    cfg.write_text("[live]\nreconcile_interval_s = 4.0\n")
    live = load_config([cfg], env={}).live
    assert (live.reconcile_interval_s, live.reconcile_confirm_s) == (4.0, 5.0)
