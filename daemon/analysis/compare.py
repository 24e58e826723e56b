"""Two run records side by side (`tradingd compare A B`): what differs between them, and
where their paths part.

Why: the same commit, data and configuration can give other fills on another machine (numpy's
and OpenBLAS's kernels differ in the last bits, and a ranking strategy turns a last-bit
difference into another order: `environment.py`), and a rerun after a change gives other
numbers by design. Before suspecting the code, a quant needs to see what differs between the
two records (the configuration, the packages and the CPU features, the build) and where the
runs part: the first bar whose equity differs and the first fill that differs. Everything
before that point is the same run. It reads the record folders only (config.json,
environment.json, summary.json, equity.csv, fills.csv) and replays nothing.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .run_records import _json_file, record_folder

__all__ = ["Comparison", "compare_runs", "flatten", "render"]

#: Equity values closer than this (relative to the larger one) are the same: a record's CSV
#: holds the float's shortest repr, so equal runs are equal to the bit; this only keeps a
#: copy written by another tool (rounded) from reading as another path.
EQUITY_RTOL = 1e-9

#: The fills' columns compared (run-specific ids left out: they name the run).
FILL_FIELDS = ("time", "symbol", "side", "quantity", "price", "commission")

#: Keys of a record's files that name the run or the moment, not what it did.
_OWN_KEYS = frozenset({"run_id", "run.name"})

_MISSING = object()


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested objects as dotted keys (`sizing.params.kelly_multiplier`), lists of objects
    with a `key` or `name` by it (`plugins[sizing]`, `risk[max_position]`), other lists by
    position: so that a difference is named where it is."""
    out: dict[str, Any] = {}
    if isinstance(value, Mapping):
        if not value and prefix:
            out[prefix] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        label = next((f for f in ("key", "name") if _unique(value, f)), None)
        if label is None:
            # No name to go by (the BLAS libraries threadpoolctl found, in an order of its
            # own): the same entries in another order are no difference.
            items = sorted(value, key=lambda v: json.dumps(v, sort_keys=True, default=str))
            for i, v in enumerate(items):
                out.update(flatten(v, f"{prefix}[{i}]"))
            return out
        for v in value:
            rest = {k: x for k, x in v.items() if k != label}  # the label is in the key
            out.update(flatten(rest, f"{prefix}[{v[label]}]"))  # {} alone: it is there
        if len(value) > 1:  # the order of a chain (the risk plugins) is part of it
            out[f"{prefix}.order"] = [v[label] for v in value]
    else:
        out[prefix] = value
    return out


def _unique(items: Sequence[Mapping[str, Any]], f: str) -> bool:
    names = [v.get(f) for v in items]
    return all(isinstance(n, str) for n in names) and len(set(names)) == len(names)


def differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, A's value, B's value) of every flattened key whose values differ, in key order;
    a key one side lacks has `None` there and is marked by `missing_in`."""
    fa, fb = flatten(a), flatten(b)
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
class Comparison:
    """What `compare_runs` found. `first_equity`: (time, A's equity, B's equity) of the first
    bar where they differ (a bar only one has: None on the other side); `first_fill`: (its
    position in fills.csv's order, A's fill, B's fill; None where one ran out)."""

    a: Path
    b: Path
    config: list[tuple[str, Any, Any]]
    environment: list[tuple[str, Any, Any]]
    metrics: list[tuple[str, Any, Any]]
    bars: tuple[int, int]
    fills: tuple[int, int]
    first_equity: tuple[str, float | None, float | None] | None
    first_fill: tuple[int, dict[str, str] | None, dict[str, str] | None] | None
    unread: list[str] = field(default_factory=list)

    @property
    def same_path(self) -> bool:
        """The same equity at every bar and the same fills: the same run, whatever else
        differs (a setting that changed nothing, another machine that happened to agree)."""
        return self.first_equity is None and self.first_fill is None

    def as_dict(self) -> dict[str, Any]:
        def rows(diffs: list[tuple[str, Any, Any]]) -> list[dict[str, Any]]:
            return [
                {"key": k, "a": _shown(va), "b": _shown(vb), **_missing(va, vb)}
                for k, va, vb in diffs
            ]

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
            else {"index": ff[0], "a": ff[1], "b": ff[2]},
            "config": rows(self.config),
            "environment": rows(self.environment),
            "metrics": rows(self.metrics),
            "unread": list(self.unread),
        }


def _shown(v: Any) -> Any:
    return None if v is _MISSING else v


def _missing(va: Any, vb: Any) -> dict[str, str]:
    if va is _MISSING:
        return {"missing_in": "a"}
    if vb is _MISSING:
        return {"missing_in": "b"}
    return {}


def _optional_json(folder: Path, name: str, unread: list[str]) -> dict[str, Any]:
    file = folder / name
    if not file.exists():
        unread.append(f"{file}: not in the record")
        return {}
    return _json_file(file)  # a damaged one is an error naming it, not an empty section


def _fills(folder: Path) -> list[dict[str, str]]:
    file = folder / "fills.csv"
    if not file.exists() or file.stat().st_size == 0:
        return []
    with file.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [f for f in FILL_FIELDS if f not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{file} has no {', '.join(missing)} column: not a run's fills")
        return [{f: row[f] for f in FILL_FIELDS} for row in reader]


def _same_fill(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    for f in FILL_FIELDS:
        x, y = a[f], b[f]
        if x == y:
            continue
        try:
            fx, fy = float(x), float(y)
        except ValueError:
            return False
        if not math.isclose(fx, fy, rel_tol=EQUITY_RTOL, abs_tol=0.0):
            return False
    return True


def compare_runs(a: Path, b: Path) -> Comparison:
    """Compare two run record folders (as `tradingd backtest` writes them). A record that is
    damaged (a cut equity.csv, unreadable JSON) is an error naming the file: a comparison
    against half a run would point at the wrong bar."""
    unread: list[str] = []
    ra, rb = record_folder(a, warn_unrestated=False), record_folder(b, warn_unrestated=False)
    config = differences(
        _optional_json(a, "config.json", unread), _optional_json(b, "config.json", unread)
    )
    environment = differences(
        _optional_json(a, "environment.json", unread),
        _optional_json(b, "environment.json", unread),
    )
    sa = dict(ra.extra.get("metrics") or {})
    sb = dict(rb.extra.get("metrics") or {})
    metrics = [
        (k, va, vb)
        for k, va, vb in differences(sa, sb)
        if not isinstance(va, Mapping | list) and not isinstance(vb, Mapping | list)
    ]
    first_equity = None
    ta, tb = ra.times, rb.times
    for i in range(max(len(ta), len(tb))):
        if i >= len(ta) or i >= len(tb) or ta[i] != tb[i]:
            at = ta[i] if i < len(ta) and (i >= len(tb) or ta[i] < tb[i]) else tb[i]
            va = float(ra.equity[i]) if i < len(ta) and ta[i] == at else None
            vb = float(rb.equity[i]) if i < len(tb) and tb[i] == at else None
            first_equity = (at.isoformat(), va, vb)
            break
        ea, eb = float(ra.equity[i]), float(rb.equity[i])
        if not math.isclose(ea, eb, rel_tol=EQUITY_RTOL, abs_tol=0.0):
            first_equity = (ta[i].isoformat(), ea, eb)
            break
    fa, fb = _fills(a), _fills(b)
    first_fill = None
    for i in range(max(len(fa), len(fb))):
        x = fa[i] if i < len(fa) else None
        y = fb[i] if i < len(fb) else None
        if x is None or y is None or not _same_fill(x, y):
            first_fill = (i, x, y)
            break
    return Comparison(
        a,
        b,
        config,
        environment,
        metrics,
        (len(ta), len(tb)),
        (len(fa), len(fb)),
        first_equity,
        first_fill,
        unread,
    )


def _cell(v: Any) -> str:
    if v is _MISSING:
        return "(absent)"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) >= 1000 else f"{v:.6g}"
    if isinstance(v, str):
        return v
    return json.dumps(v)


def _fill_text(f: Mapping[str, str] | None) -> str:
    if f is None:
        return "(no more fills)"
    return f"{f['time']} {f['side']} {f['quantity']} {f['symbol']} at {f['price']}"


def render(c: Comparison) -> str:
    """The comparison as text: the verdict first, then where the runs part, then what
    differs in the configuration, the environment and the metrics."""
    lines = [f"A: {c.a}", f"B: {c.b}", ""]
    if c.same_path:
        lines.append(
            f"the same path: equity equal at all {c.bars[0]:,} bars and the same "
            f"{c.fills[0]:,} fills"
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
            i, x, y = c.first_fill
            lines.append(f"  first fill that differs (fill {i + 1}):")
            lines.append(f"    A {_fill_text(x)}")
            lines.append(f"    B {_fill_text(y)}")
        else:
            lines.append("  the same fills")
    for title, diffs, empty in (
        ("configuration", c.config, "the same configuration"),
        ("environment (packages, CPU features, build)", c.environment, "the same environment"),
        ("metrics", c.metrics, "the same metrics"),
    ):
        lines.append("")
        if not diffs:
            lines.append(empty)
            continue
        lines.append(f"{title}: {len(diffs)} difference{'s' if len(diffs) > 1 else ''}")
        width = min(max(len(k) for k, _, _ in diffs), 60)
        for k, va, vb in diffs:
            lines.append(f"  {k:<{width}}  A {_cell(va)}  B {_cell(vb)}")
    for note in c.unread:
        lines.append(f"note: {note}")
    return "\n".join(lines)
