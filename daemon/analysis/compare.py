"""Two run records side by side (`tradingd compare A B`): what differs between them, and
where their paths part.

Why: the same commit, data and configuration can give other fills on another machine (numpy's
and OpenBLAS's kernels differ in the last bits, and a ranking strategy turns a last-bit
difference into another order: `environment.py`), and a rerun after a change gives other
numbers by design. Before suspecting the code, a quant needs to see what differs between the
two records (the data, the configuration, the packages and the CPU features, the build) and
where the runs part: the first bar whose equity differs and the first fill that differs.
Everything before that point is the same run. It reads the record folders only (config.json,
environment.json, summary.json, equity.csv, fills.csv) and replays nothing.

The data are compared by the digest summary.json records (`data`: `backtest.data_record`,
the data files' SHA-256): a file rewritten in place under the same path was "the same
configuration" and "the same environment", the cause of the other path not named. A record
made before digests were recorded says "not recorded", not a difference. tradingd's own code
is compared by its files' digests (environment.json's `tradingd_code`): runs from two
uncommitted edits of one commit are "different code", the files named.

Comparisons are exact: a record's CSV holds each float's shortest repr, so equal runs are
equal to the bit, and a last-bit difference (another BLAS kernel) is what this is for.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np

from ..feeds.fingerprint import data_digest, data_text
from .run_records import _json_file, check_fill_count, check_record_complete, record_folder

__all__ = [
    "CodeChange",
    "Comparison",
    "compare_runs",
    "flatten",
    "render",
    "with_plugin_defaults",
]

#: The fills' columns compared (run-specific ids left out: they name the run).
FILL_FIELDS = ("time", "symbol", "side", "quantity", "price", "commission")

#: Keys of a record's files that name the run, not what it did.
_OWN_KEYS = frozenset({"run_id", "run.name"})

#: Settings that say where a run's records went, not what it did: not compared, named
#: when they differ.
WHERE_KEYS = ("log.audit_dir", "run.output_dir", "storage.url")

_MISSING = object()


def flatten(value: Any, prefix: str = "", *, unordered: bool = False) -> dict[str, Any]:
    """Nested objects as dotted keys (`sizing.params.kelly_multiplier`), lists of objects
    with a unique `key` or `name` by it (`plugins[sizing]`, `risk[max_position]`, and
    `risk.order` for the chain's order), other lists of objects by position, other lists
    as values: so that a difference is named where it is. `unordered`: lists of objects
    without a name are compared as sets (the BLAS libraries threadpoolctl lists, in an order
    of its own); a configuration's are not (two risk rules of one name, in a chain)."""
    out: dict[str, Any] = {}
    if isinstance(value, Mapping):
        if not value and prefix:
            out[prefix] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k), unordered=unordered))
    elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        label = next((f for f in ("key", "name") if _unique(value, f)), None)
        if label is None:
            items = (
                sorted(value, key=lambda v: json.dumps(v, sort_keys=True, default=str))
                if unordered
                else value
            )
            for i, v in enumerate(items):
                out.update(flatten(v, f"{prefix}[{i}]", unordered=unordered))
            return out
        for v in value:
            rest = {k: x for k, x in v.items() if k != label}  # the label is in the key
            # ({} alone: it is there.)
            out.update(flatten(rest, f"{prefix}[{v[label]}]", unordered=unordered))
        if len(value) > 1:  # the order of a chain (the risk plugins) is part of it
            out[f"{prefix}.order"] = [v[label] for v in value]
    else:
        out[prefix] = value
    return out


def _unique(items: Sequence[Mapping[str, Any]], f: str) -> bool:
    names = [v.get(f) for v in items]
    return all(isinstance(n, str) for n in names) and len(set(names)) == len(names)


def differences(
    a: Mapping[str, Any], b: Mapping[str, Any], *, unordered: bool = False
) -> list[tuple[str, Any, Any]]:
    """(key, A's value, B's value) of every flattened key whose values differ, in key order;
    a key one side lacks has `_MISSING` there (`missing_in` in `as_dict`)."""
    fa, fb = flatten(a, unordered=unordered), flatten(b, unordered=unordered)
    out = []
    for key in sorted(fa.keys() | fb.keys()):
        if key in _OWN_KEYS:
            continue
        va, vb = fa.get(key, _MISSING), fb.get(key, _MISSING)
        if _same(va, vb) or _emptied(key, va, vb, fa, fb):
            continue
        out.append((key, va, vb))
    return out


def _emptied(key: str, va: Any, vb: Any, fa: Mapping[str, Any], fb: Mapping[str, Any]) -> bool:
    """An empty object on one side where the other has entries under it (no dispatch
    variable set against one set): the entries are the difference, each named."""
    for empty, missing, other in ((va, vb, fb), (vb, va, fa)):
        if empty == {} and missing is _MISSING:
            return any(k.startswith((f"{key}.", f"{key}[")) for k in other)
    return False


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return (type(a) is type(b) and a == b) or (_number(a) and _number(b) and a == b)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


@dataclass(frozen=True)
class Section:
    """The differences of one file of the two records, or why it was not compared (a record
    without the file: an older one). `unrecorded`: keys of environment.json one side lacks
    because its build did not record that field (`_unrecorded`), `_MISSING` on that side:
    not differences."""

    diffs: list[tuple[str, Any, Any]]
    missing: str = ""
    unrecorded: list[tuple[str, Any, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Comparison:
    """What `compare_runs` found. `first_equity`: (time, A's equity, B's equity) of the first
    bar where they differ (a bar only one has: None on the other side); `first_fill`: (its
    number in fills.csv's order, from 1; A's fill, B's fill, None where one ran out; the
    fields that differ)."""

    a: Path
    b: Path
    config: Section
    environment: Section
    metrics: Section
    bars: tuple[int, int]
    fills: tuple[int, int]
    first_equity: tuple[str, float | None, float | None] | None
    first_fill: tuple[int, dict[str, str] | None, dict[str, str] | None, list[str]] | None
    places: list[str] = field(default_factory=list)
    plugin_code: list[CodeChange] = field(default_factory=list)
    at_default: list[str] = field(default_factory=list)
    defaults_unknown: list[str] = field(default_factory=list)
    run_ids: tuple[Any, Any] = (None, None)
    # summary.json's `data` of A and B (`_MISSING` where a record has none: an older one).
    data: tuple[Any, Any] = (_MISSING, _MISSING)
    # tradingd's own packages whose code differs (environment.json's `tradingd_code`).
    own_code: list[CodeChange] = field(default_factory=list)

    @property
    def same_data(self) -> bool | None:
        """Both records' data digests, and equal; None when either has none (a record made
        before they were recorded, the bundled series) and the sources do not tell them
        apart."""
        da, db = (data_digest(d) for d in self.data)
        if da is not None and db is not None:
            return da == db
        sa, sb = (d.get("source") if isinstance(d, Mapping) else None for d in self.data)
        if sa is not None and sb is not None and sa != sb:
            return False  # another kind of data (bundled against a file)
        return None

    @property
    def same_path(self) -> bool:
        """The same equity at every bar and the same fills, to the bit: the same run,
        whatever else differs (a setting that changed nothing, another machine that
        happened to agree)."""
        return self.first_equity is None and self.first_fill is None

    def as_dict(self) -> dict[str, Any]:
        def section(s: Section) -> dict[str, Any]:
            rows = [
                {"key": k, "a": _shown(va), "b": _shown(vb), **_missing(va, vb)}
                for k, va, vb in s.diffs
            ]
            out: dict[str, Any] = {"differences": rows, "not_compared": s.missing or None}
            if s is self.environment:
                out["not_recorded"] = [
                    {"key": k, "field": _field(k), "a": _shown(va), "b": _shown(vb)}
                    | _missing(va, vb)
                    for k, va, vb in s.unrecorded
                ]
            return out

        fe = self.first_equity
        ff = self.first_fill
        return {
            "a": str(self.a),
            "b": str(self.b),
            "same_path": self.same_path,
            "bars": list(self.bars),
            "fills": list(self.fills),
            "first_equity_difference": None
            if fe is None
            else {"time": fe[0], "a": fe[1], "b": fe[2]},
            "first_fill_difference": None
            if ff is None
            else {"number": ff[0], "a": ff[1], "b": ff[2], "fields": ff[3]},
            "config": section(self.config),
            "environment": section(self.environment),
            "metrics": section(self.metrics),
            "written_elsewhere": list(self.places),
            "plugin_code": [dataclasses.asdict(x) for x in self.plugin_code],
            "tradingd_code": [dataclasses.asdict(x) for x in self.own_code],
            "params_at_default": list(self.at_default),
            "plugin_defaults_unknown": list(self.defaults_unknown),
            "run_ids": list(self.run_ids),
            "data": {
                "same": self.same_data,
                "a": _shown(self.data[0]),
                "b": _shown(self.data[1]),
                "not_recorded": [x for x, d in zip("ab", self.data, strict=True) if d is _MISSING],
            },
        }

    @property
    def run_id_by_spelling(self) -> bool:
        """The run ids differ though nothing the run decides with does, but params written
        at their defaults on one side: a run id hashes a plugin's params as written (a live
        run's order ids and its resume depend on it, so that stays)."""
        ids_differ = self.run_ids[0] != self.run_ids[1] and None not in self.run_ids
        inputs_differ = any(k.startswith("run_inputs") for k, _, _ in self.metrics.diffs)
        inputs_differ = inputs_differ or self.same_data is False  # the data: in the id too
        return bool(self.at_default) and ids_differ and not self.config.diffs and not inputs_differ


@dataclass(frozen=True)
class CodeChange:
    """A plugin package whose code differs between the two records (environment.json's
    `plugins[].code`): the plugins from it that the runs used, and its files changed,
    only in B (`added`) or only in A (`removed`); no files where a record did not list
    them."""

    package: str
    plugins: list[str]
    changed: list[str]
    added: list[str]
    removed: list[str]


def _shown(v: Any) -> Any:
    return None if v is _MISSING else v


def _missing(va: Any, vb: Any) -> dict[str, str]:
    if va is _MISSING:
        return {"missing_in": "a"}
    if vb is _MISSING:
        return {"missing_in": "b"}
    return {}


def _json_pair(a: Path, b: Path, name: str) -> tuple[Any, Any] | str:
    """A file of both records, or why it is not compared when either lacks it (a damaged
    one is an error naming it, not an empty section)."""
    absent = [
        f"{label} has no {name}" for label, d in (("A", a), ("B", b)) if not (d / name).exists()
    ]
    if absent:
        return " and ".join(absent)
    return _json_file(a / name), _json_file(b / name)


#: A record's plugin sections (config.json's) and their lists or tables.
_PLUGIN_SECTIONS = ("signals", "sizing", "risk")


def with_plugin_defaults(config: Any, unknown: set[str] | None = None) -> Any:
    """config.json with each plugin's params its Config's defaults where the file does not
    write them (`trial_ledger.plugin_default_params`): a param written out at its default
    on one side and left out on the other is the same run, and was a difference
    "(absent)". The defaults are those of the plugin installed here (a record made before
    a default changed differs in the plugin's version or code in environment.json). The
    names of plugins whose Config is not found go into `unknown`: theirs stay as written."""
    from .trial_ledger import plugin_default_params

    if not isinstance(config, Mapping):
        return config

    def filled(spec: Any) -> Any:
        if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
            return spec
        params = spec.get("params", {})
        if not isinstance(params, Mapping):
            return spec
        defaults = plugin_default_params(spec["name"])
        if defaults is None:
            if unknown is not None:
                unknown.add(spec["name"])
            return spec
        return {**spec, "params": {**defaults, **params}}

    out = dict(config)
    for section in _PLUGIN_SECTIONS:
        if section not in out:
            continue
        value = out[section]
        out[section] = [filled(s) for s in value] if isinstance(value, list) else filled(value)
    return out


def _unrecorded(ea: Any, eb: Any) -> set[str]:
    """The flattened keys of two environment.json files that one lacks because its build did
    not record that field, not because its run or machine differed: an older build's record
    against a newer's said every new field of every plugin as a difference ("A (absent)").
    A build decides the file's parts (a part one file lacks is one its build did not
    write: `plugin_code` before plugins' code was hashed), the distributions `packages`
    lists (each listed, None when not installed) and the fields of each `plugins` entry (a
    field no entry of that file has). Elsewhere a key is the machine's or the run's, and its
    absence a difference: a dispatch variable set on one side only, a BLAS library loaded on
    one only, a checkout's source against an installed build's (`source.from`)."""
    if not (isinstance(ea, Mapping) and isinstance(eb, Mapping)):
        return set()
    fa, fb = flatten(ea, unordered=True), flatten(eb, unordered=True)
    out = {part for env, other in ((ea, eb), (eb, ea)) for part in other if part not in env}
    for env, other, keys in ((ea, fb, fa), (eb, fa, fb)):
        for key in other.keys() - keys.keys():
            part = _part(key)
            if part in out or (part == "packages" and _recorded(env.get(part))):
                out.add(key)
            elif part == "plugins" and _recorded(env.get(part)) and key != "plugins.order":
                name = _field(key).removeprefix("plugins[*].").split(".")[0].split("[")[0]
                entries = [p for p in env[part] if isinstance(p, Mapping)]
                if entries and not any(name in p for p in entries):
                    out.add(key)
    return out


def _recorded(part: Any) -> bool:
    """A part of environment.json as its build writes it, not the error that replaced it
    (`environment`: a part that could not be read is `{"error": ...}`)."""
    if isinstance(part, Mapping):
        return "error" not in part
    return isinstance(part, list)


def _part(key: str) -> str:
    """The top-level key of a flattened key (`plugins` of `plugins[sizing].code`)."""
    cut = [i for i in (key.find("."), key.find("[")) if i >= 0]
    return key[: min(cut)] if cut else key


def _field(key: str) -> str:
    """A flattened key with its list entries' labels as `*` (`plugins[*].code` of
    `plugins[signals[0]].code`): a field, whichever entry. Labels hold brackets of their
    own (`signals[0]`), so they are matched, not split."""
    out, depth = [], 0
    for ch in key:
        if ch == "[":
            depth += 1
            if depth == 1:
                out.append("[*")
        elif ch == "]":
            depth -= 1
            if depth == 0:
                out.append("]")
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def _unrecorded_text(c: Comparison) -> list[str]:
    """One line per side naming the fields its build did not record, each field once
    (`plugins[*].code, .editable, .package`: a field after one of the same parent by its
    last part), with how many keys they are."""
    lines = []
    for side, label in ((1, "A"), (2, "B")):
        rows = [r for r in c.environment.unrecorded if r[side] is _MISSING]
        if not rows:
            continue
        names, parent = [], None
        for f in sorted({_field(k) for k, _, _ in rows}):
            head, dot, last = f.rpartition(".")
            names.append(f".{last}" if dot and head == parent else f)
            parent = head if dot else None
        n = len(rows)
        lines.append(
            f"  not recorded by {label}'s build: {', '.join(names)} "
            f"({n} field{'s' if n > 1 else ''})"
        )
    return lines


def _code_changes(ea: Any, eb: Any) -> list[CodeChange]:
    """The plugin packages whose code digest differs between two environment.json files,
    with the files that differ from their `plugin_code` lists (a record made before plugins'
    code was hashed has none: nothing said here)."""
    if not (isinstance(ea, Mapping) and isinstance(eb, Mapping)):
        return []

    def plugins(env: Mapping[str, Any]) -> dict[Any, Mapping[str, Any]]:
        items = env.get("plugins")
        return (
            {p.get("key"): p for p in items if isinstance(p, Mapping)}
            if isinstance(items, list)
            else {}
        )

    pa, pb = plugins(ea), plugins(eb)
    used: dict[str, list[str]] = {}
    for key, x in pa.items():
        y = pb.get(key)
        if y is None or not x.get("code") or not y.get("code") or x["code"] == y["code"]:
            continue
        if x.get("package") != y.get("package") or not isinstance(x.get("package"), str):
            continue  # another package: its key's difference says so
        used.setdefault(x["package"], []).append(f"{x.get('name')} ({key})")
    out = []
    for package, names in used.items():
        fa, fb = (
            ((env.get("plugin_code") or {}).get(package) or {}).get("files") or {}
            for env in (ea, eb)
        )
        changed = sorted(k for k in fa.keys() & fb.keys() if fa[k] != fb[k]) if fa and fb else []
        added = sorted(fb.keys() - fa.keys()) if fa and fb else []
        removed = sorted(fa.keys() - fb.keys()) if fa and fb else []
        out.append(CodeChange(package, names, changed, added, removed))
    return out


#: Parts of environment.json whose files are said by package (`_code_text`), not a key each.
_BY_FILE = ("plugin_code", "tradingd_code")


def _own_file_key(key: str) -> bool:
    """A file's key of environment.json's `tradingd_code` (its package's `code` is the
    difference; the files are said by name, `_own_code_changes`)."""
    return key.startswith("tradingd_code.") and ".files." in key


def _own_code_changes(ea: Any, eb: Any) -> list[CodeChange]:
    """tradingd's own packages whose code digest differs between two environment.json
    files (`environment.own_code`), with the files that differ; none where either record
    has no `tradingd_code` (made before it was recorded: "not recorded")."""
    if not (isinstance(ea, Mapping) and isinstance(eb, Mapping)):
        return []
    ca, cb = ea.get("tradingd_code"), eb.get("tradingd_code")
    if not (isinstance(ca, Mapping) and isinstance(cb, Mapping)):
        return []
    out = []
    for package in sorted(ca.keys() & cb.keys()):
        x, y = ca[package], cb[package]
        if not (isinstance(x, Mapping) and isinstance(y, Mapping)) or x.get("code") == y.get(
            "code"
        ):
            continue
        fa, fb = (f if isinstance(f := v.get("files"), Mapping) else {} for v in (x, y))
        changed = sorted(k for k in fa.keys() & fb.keys() if fa[k] != fb[k]) if fa and fb else []
        added = sorted(fb.keys() - fa.keys()) if fa and fb else []
        removed = sorted(fa.keys() - fb.keys()) if fa and fb else []
        out.append(CodeChange(package, [], changed, added, removed))
    return out


def _fill_rows(folder: Path) -> Iterator[tuple[tuple[str, ...], tuple[Any, ...]]]:
    """fills.csv's rows one by one: (the compared columns as written, their values), each
    field checked: a damaged row is an error naming the file and line, not a difference
    from the other run. Read as a stream: two records of 500,000 fills each held every row
    in memory (1.6 GB)."""
    file = folder / "fills.csv"
    if not file.exists() or file.stat().st_size == 0:
        return
    with file.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        missing = [f for f in FILL_FIELDS if f not in header]
        if missing:
            raise ValueError(f"{file} has no {', '.join(missing)} column: not a run's fills")
        at = [header.index(f) for f in FILL_FIELDS]
        for line, row in enumerate(reader, start=2):
            raw = tuple(row[k].strip() if k < len(row) else "" for k in at)
            empty = [f for f, v in zip(FILL_FIELDS, raw, strict=True) if not v]
            if empty:
                raise ValueError(
                    f"{file}, line {line}: no {', '.join(empty)}: the record is damaged "
                    "(run the backtest again)"
                )
            yield raw, _fill_key(raw, file, line)


def _fill_key(raw: tuple[str, ...], file: Path, line: int) -> tuple[Any, ...]:
    """A fill's compared values: its time as an instant (whatever offset it is written in)
    and its numbers as floats (1.0 and 1 are one quantity)."""
    time, symbol, side, quantity, price, commission = raw
    try:
        return (
            datetime.fromisoformat(time),
            symbol,
            side.lower(),
            float(quantity),
            float(price),
            float(commission),
        )
    except ValueError as exc:
        raise ValueError(
            f"{file}, line {line}: a fill cannot be read ({exc}): the record is damaged"
        ) from None


def _first_fill(a: Path, b: Path, counted: tuple[Any, Any]) -> tuple[tuple[int, int], Any]:
    """(fills in A, fills in B), and the first that differs (see `Comparison`)."""
    first = None
    n = [0, 0]
    for i, (x, y) in enumerate(zip_longest(_fill_rows(a), _fill_rows(b))):
        n[0] += x is not None
        n[1] += y is not None
        if first is None and (x is None or y is None or x[1] != y[1]):
            fields = (
                [f for f, u, v in zip(FILL_FIELDS, x[1], y[1], strict=True) if u != v]
                if x is not None and y is not None
                else []
            )
            shown = [
                None if r is None else dict(zip(FILL_FIELDS, r[0], strict=True)) for r in (x, y)
            ]
            first = (i + 1, shown[0], shown[1], fields)
    for folder, rows, c in ((a, n[0], counted[0]), (b, n[1], counted[1])):
        if not isinstance(c, int) or isinstance(c, bool):
            continue  # a summary that counts none: nothing to compare with
        if not rows and c > 0:
            # "No trades" would be a wrong answer, as in `record_folder`.
            raise ValueError(
                f"{folder} has no fill in its fills.csv, but its summary.json counts {c} "
                "fills: the record is incomplete (run the backtest again)"
            )
        # Half a fills.csv was "fills differ" from the other run's whole one.
        check_fill_count(folder / "fills.csv", rows, c)
    return (n[0], n[1]), first


def compare_runs(a: Path, b: Path) -> Comparison:
    """Compare two run record folders (as `tradingd backtest` writes them). A record that is
    damaged or incomplete (a cut equity.csv or orders.csv, unreadable JSON, a fill without
    its price, no summary.json beside the files written before it: `tradingd report`'s
    checks) is an error naming the file: a comparison against half a run would point at
    the wrong bar."""
    # The curves (checked whole); fills.csv is read here, once (`_fills`).
    ra, rb = (record_folder(d, warn_unrestated=False, with_fills=False) for d in (a, b))
    # The rest of `tradingd report`'s checks (orders.csv against its count, a summary.json
    # where the record has the files written before it): a record cut short is refused, as
    # the report refuses it, not compared as "the same metrics" or an old record.
    for folder, rec in ((a, ra), (b, rb)):
        check_record_complete(folder, rec.extra.get("metrics") or {})
    pair = _json_pair(a, b, "config.json")
    at_default: list[str] = []
    unknown: set[str] = set()
    if isinstance(pair, str):
        config, places = Section([], pair), []
    else:
        written = differences(*pair)
        diffs = differences(*(with_plugin_defaults(c, unknown) for c in pair))
        kept = {k for k, _, _ in diffs}
        at_default = [k for k, _, _ in written if k not in kept]
        places = [k for k, _, _ in diffs if k in WHERE_KEYS]
        config = Section([d for d in diffs if d[0] not in WHERE_KEYS])
    pair = _json_pair(a, b, "environment.json")
    code: list[CodeChange] = []
    own: list[CodeChange] = []
    if isinstance(pair, str):
        environment = Section([], pair)
    else:
        # The files of plugin_code are said by package (`code`), not one key each.
        diffs = differences(*pair, unordered=True)
        unrecorded = _unrecorded(*pair)
        environment = Section(
            [
                d
                for d in diffs
                if not d[0].startswith("plugin_code.")
                and not _own_file_key(d[0])
                and d[0] not in unrecorded
            ],
            unrecorded=[d for d in diffs if d[0] in unrecorded and _part(d[0]) not in _BY_FILE],
        )
        for part in _BY_FILE:  # one row each: their files are said by package, as above
            if part in unrecorded:
                ea, eb = (e.get(part, _MISSING) for e in pair)
                environment.unrecorded.insert(0, (part, ea, eb))
        code = _code_changes(*pair)
        own = _own_code_changes(*pair)
    sa = dict(ra.extra.get("metrics") or {})
    sb = dict(rb.extra.get("metrics") or {})
    # The data digest is said on its own line, not among the metrics (`Comparison.data`).
    data = (sa.pop("data", _MISSING), sb.pop("data", _MISSING))
    if sa and sb:
        metrics = Section(differences(sa, sb))
    else:
        absent = [f"{x} has no summary.json" for x, s in (("A", sa), ("B", sb)) if not s]
        metrics = Section([], " and ".join(absent))
    first_equity = _first_equity(ra, rb)
    fills, first_fill = _first_fill(a, b, (sa.get("fills"), sb.get("fills")))
    return Comparison(
        a,
        b,
        config,
        environment,
        metrics,
        (len(ra.times), len(rb.times)),
        fills,
        first_equity,
        first_fill,
        places,
        code,
        at_default,
        # Only where a param is absent on one side: else their defaults changed nothing.
        sorted(unknown) if any(_absent_param(d) for d in config.diffs) else [],
        (sa.get("run_id"), sb.get("run_id")),
        data,
        own,
    )


def _data_text(data: Any) -> str:
    if data is _MISSING:
        return "not recorded (a record made before data digests were)"
    return data_text(data)


def _data_lines(c: Comparison) -> list[str]:
    da, db = c.data
    if c.same_data:
        return [f"the same data: {_data_text(da)}"]
    if c.same_data is False:
        return ["the data differ:", f"  A {_data_text(da)}", f"  B {_data_text(db)}"]
    if da is _MISSING and db is _MISSING:
        return ["data: not recorded by either record (made before data digests were)"]
    if da == db:  # the same record without a digest (the bundled series): said once
        return [f"the same data source, no digest to compare: {_data_text(da)}"]
    return ["data: not compared:", f"  A {_data_text(da)}", f"  B {_data_text(db)}"]


def _absent_param(diff: tuple[str, Any, Any]) -> bool:
    """A plugin param's difference that one side does not write."""
    key, va, vb = diff
    return ".params" in key and _MISSING in (va, vb)


def _first_equity(ra: Any, rb: Any) -> tuple[str, float | None, float | None] | None:
    """The first bar where the curves differ: a time only one has, or another equity."""
    ta, tb = ra.times.asi8, rb.times.asi8  # instants (ns), whatever the offset written
    ea, eb = np.asarray(ra.equity, dtype=float), np.asarray(rb.equity, dtype=float)
    n = min(len(ta), len(tb))
    differ = np.flatnonzero((ta[:n] != tb[:n]) | (ea[:n] != eb[:n]))
    if differ.size:
        i = int(differ[0])
    elif len(ta) != len(tb):
        i = n
    else:
        return None
    in_a, in_b = i < len(ta), i < len(tb)
    if in_a and in_b and ta[i] == tb[i]:
        return (ra.times[i].isoformat(), float(ea[i]), float(eb[i]))
    # A bar only one run has here: the earlier of the two times.
    first_a = in_a and (not in_b or ta[i] < tb[i])
    at = (ra.times if first_a else rb.times)[i].isoformat()
    return (at, float(ea[i]) if first_a else None, None if first_a else float(eb[i]))


def _cell(v: Any) -> str:
    if v is _MISSING:
        return "(absent)"
    if isinstance(v, float):
        return repr(v)  # every digit: a difference is never rounded away
    if isinstance(v, str):
        return v
    return json.dumps(v)


def _fill_text(f: Mapping[str, str] | None) -> str:
    if f is None:
        return "(no more fills)"
    return (
        f"{f['time']} {f['side']} {f['quantity']} {f['symbol']} at {f['price']}, "
        f"commission {f['commission']}"
    )


def _code_text(x: CodeChange, own: bool = False) -> str:
    files = [
        *(f"{f} changed" for f in x.changed),
        *(f"{f} only in B" for f in x.added),
        *(f"{f} only in A" for f in x.removed),
    ]
    head = (
        f"  different code: tradingd's own package {x.package}"
        if own
        else f"  plugin code differs: {x.package} (used by {', '.join(x.plugins)})"
    )
    return head + (f": {', '.join(files)}" if files else "")


def _same_config(c: Comparison) -> str:
    """The line for a configuration without differences: a param written at its default
    on one side only is none, but gave another run id (said once, in one line)."""
    if not c.at_default:
        return "the same configuration"
    text = (
        "the same configuration (plugin params at their defaults, written on one side only: "
        f"{', '.join(c.at_default)})"
    )
    if c.run_id_by_spelling:
        text += (
            f"\nthe run ids differ ({c.run_ids[0]}, {c.run_ids[1]}) by those params alone: a "
            "run id hashes a plugin's params as written"
        )
    return text


def render(c: Comparison) -> str:
    """The comparison as text: the verdict first, then where the runs part, then what
    differs in the configuration, the environment and the metrics."""
    lines = [f"A: {c.a}", f"B: {c.b}", ""]
    if c.same_path:
        lines.append(
            f"the same path: equity equal at all {c.bars[0]:,} bars and the same "
            f"{c.fills[0]:,} fills (to the bit)"
        )
    else:
        lines.append(
            f"the runs differ: {c.bars[0]:,} and {c.bars[1]:,} bars, {c.fills[0]:,} and "
            f"{c.fills[1]:,} fills"
        )
        if c.first_equity is not None:
            t, ea, eb = c.first_equity
            shown = [_cell(e) if e is not None else "(no bar)" for e in (ea, eb)]
            lines.append(f"  first bar whose equity differs: {t}: A {shown[0]}, B {shown[1]}")
        else:
            lines.append("  equity equal at every bar")
        if c.first_fill is not None:
            n, x, y, fields = c.first_fill
            lines.append(f"  first fill that differs (fill {n:,}):")
            lines.append(f"    A {_fill_text(x)}")
            lines.append(f"    B {_fill_text(y)}")
            if fields:
                lines.append(f"    (in {', '.join(fields)})")
        else:
            lines.append("  the same fills")
    lines.append("")
    lines.extend(_data_lines(c))
    for title, s, empty in (
        ("configuration", c.config, _same_config(c)),
        ("environment (packages, CPU features, build)", c.environment, "the same environment"),
        ("metrics", c.metrics, "the same metrics"),
    ):
        lines.append("")
        if s.missing:
            lines.append(f"{title}: not compared ({s.missing})")
            continue
        if not s.diffs:
            lines.append(empty)
            if s is c.environment:
                lines.extend(_unrecorded_text(c))
            continue
        lines.append(f"{title}: {len(s.diffs)} difference{'s' if len(s.diffs) > 1 else ''}")
        width = min(max(len(k) for k, _, _ in s.diffs), 60)
        for k, va, vb in s.diffs:
            lines.append(f"  {k:<{width}}  A {_cell(va)}  B {_cell(vb)}")
        if s is c.environment:
            lines.extend(_unrecorded_text(c))
            lines.extend(_code_text(x, own=True) for x in c.own_code)
            lines.extend(_code_text(x) for x in c.plugin_code)
        if s is c.config and c.defaults_unknown:
            lines.append(
                f"  (defaults of {', '.join(c.defaults_unknown)} unknown here, the plugin not "
                "installed: a param absent on one side may be at its default)"
            )
    if c.places:
        lines.append("")
        lines.append(f"written to other places (not compared): {', '.join(c.places)}")
    return "\n".join(lines)
