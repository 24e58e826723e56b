"""Sector limit from the reference specification: at most 20% of equity per sector.

The limit is on *gross* exposure: the sum of |target weight| of a sector's symbols, long and
short alike, must stay at or below `max_sector_pct` of equity.

Sector map. `sectors_csv` names a CSV file with a header row holding a ``symbol`` and a
``sector`` column (any order, names case-insensitive, other columns ignored), one symbol per
row; ``../shared/data/sp500_sectors.csv`` is the one for the S&P 500. A relative path is
taken from the current directory (the project root for the shipped configs) and the file is
read once, when the plugin is built. Symbols are matched without regard to case; sector
names are used exactly as written. A file that cannot be used is a `SectorMapError` (a
`ValueError`, so a config error naming the plugin) that names the file and, where it
applies, the line: missing or unreadable file, no header, no ``symbol`` or ``sector``
column, an empty symbol or sector, or a symbol listed twice with two different sectors (the
same sector twice is accepted).

Symbols of the universe that the map does not list are never left unconstrained: with
``unknown = "own"`` (the default) each is a sector of its own, ``unknown:<SYMBOL>``, so it
may carry at most the sector limit by itself; with ``unknown = "pool"`` they all share one
sector, ``unknown``, and together carry at most the limit. Either way they are logged once,
as a warning, when the plugin is built.

When a sector is over the limit, new exposure goes first. Each target is split into

* its *kept* part: the part of a held position that the target keeps (min(|target|,
  |current weight|) when target and position are on the same side, else 0), and
* its *new* part: the rest (an increase of a held position, an entry, or the new side of a
  flip).

If the kept parts alone fit, the sector's remaining budget (limit - kept) goes to the new
parts in priority order: increases of held positions before entries, then larger |target|
first (then universe order, so the result is deterministic). Each new part gets what is left
of the budget, so the part that crosses the limit is clipped and the ones after it get none:
the sector sum is then exactly at the limit. If the kept parts alone exceed the limit (prices
moved the held book over it), every new part is refused and the kept parts are scaled down
proportionally to the limit: the held book is trimmed evenly rather than closing its
smallest positions.

The rule never increases |target| and never changes its sign. Every changed target returns a
`RiskVerdict` (action ``"reject"`` when it becomes 0, ``"scale"`` when the held book was
scaled, ``"clip"`` otherwise) whose reason names the sector, its gross exposure and the limit.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import structlog

from tradingd.core.ports import BarContext, RiskDecision
from tradingd.core.types import RiskVerdict

from .finite import nan_to_zero

log = structlog.get_logger(__name__)
# Plugin names already warned of an empty sectors_csv in this process.
_WARNED_NO_MAP: set[str] = set()
# The unmapped symbols said, per (plugin, map file, rule, symbols): once a process as well, or
# a live start said the same list twice (the start-up checks, then the engine). A SIGHUP that
# changes the map or the rule says it again.
_WARNED_UNMAPPED: set[tuple[str, str | None, str, tuple[str, ...]]] = set()

UNKNOWN_RULES = ("own", "pool")
# Symbols named in the start-up warning about unmapped symbols (the rest are counted).
LOG_SYMBOLS = 20


class SectorMapError(ValueError):
    """A sector CSV that cannot be used; the message names the file and the line."""


@dataclass(frozen=True)
class SectorExposureConfig:
    # CSV with `symbol` and `sector` columns (relative paths from the current directory).
    sectors_csv: str = ""
    max_sector_pct: float = 0.20
    # Symbols missing from the map: "own" (each its own sector) or "pool" (one shared sector).
    unknown: str = "own"

    def __post_init__(self) -> None:
        if not isinstance(self.sectors_csv, str):
            raise ValueError(
                "sectors_csv must be the path of a CSV file with symbol and sector columns "
                "(for the S&P 500: ../shared/data/sp500_sectors.csv), or empty for none"
            )
        if not (
            isinstance(self.max_sector_pct, int | float)
            and math.isfinite(self.max_sector_pct)
            and 0 < self.max_sector_pct <= 1
        ):
            raise ValueError(f"max_sector_pct must be in (0, 1], got {self.max_sector_pct!r}")
        if self.unknown not in UNKNOWN_RULES:
            raise ValueError(
                f"unknown must be one of {', '.join(UNKNOWN_RULES)}, got {self.unknown!r}"
            )


def load_sector_map(path: str | Path) -> dict[str, str]:
    """{SYMBOL (upper case): sector} from a CSV with `symbol` and `sector` columns."""
    p = Path(path).expanduser()
    where = f"sector map {p}"
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SectorMapError(f"{where}: file not found (resolved to {p.absolute()})") from None
    except IsADirectoryError:
        raise SectorMapError(f"{where}: is a directory, not a CSV file") from None
    except UnicodeDecodeError as exc:
        raise SectorMapError(
            f"{where}: not UTF-8 text (undecodable byte at offset {exc.start})"
        ) from None
    except OSError as exc:
        raise SectorMapError(f"{where}: cannot be read: {exc.strerror or exc}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        while header is not None and not any(c.strip() for c in header):
            header = next(reader, None)
        if header is None:
            raise SectorMapError(f"{where}: empty file; expected a header row 'symbol,sector'")
        names = [c.strip().lower() for c in header]
        for col in ("symbol", "sector"):
            if names.count(col) != 1:
                what = "no" if col not in names else "more than one"
                raise SectorMapError(
                    f"{where}, line {reader.line_num} (header): {what} {col!r} column; "
                    f"columns are {', '.join(repr(c.strip()) for c in header)}"
                )
        i_sym, i_sec = names.index("symbol"), names.index("sector")
        need = max(i_sym, i_sec) + 1
        mapping: dict[str, str] = {}
        first_line: dict[str, int] = {}
        for row in reader:
            line = reader.line_num
            if not any(c.strip() for c in row):
                continue
            if len(row) < need:
                raise SectorMapError(
                    f"{where}, line {line}: {len(row)} field(s), the header has "
                    f"{len(header)}: {','.join(row)!r}"
                )
            symbol, sector = row[i_sym].strip(), row[i_sec].strip()
            if not symbol:
                raise SectorMapError(f"{where}, line {line}: empty symbol")
            if not sector:
                raise SectorMapError(f"{where}, line {line}: symbol {symbol!r} has no sector")
            key = symbol.upper()
            if key in mapping and mapping[key] != sector:
                raise SectorMapError(
                    f"{where}, line {line}: symbol {symbol!r} has sector {sector!r}, but "
                    f"line {first_line[key]} gave it {mapping[key]!r}"
                )
            mapping.setdefault(key, sector)
            first_line.setdefault(key, line)
    except csv.Error as exc:
        raise SectorMapError(f"{where}, line {reader.line_num}: malformed CSV: {exc}") from None
    if not mapping:
        raise SectorMapError(f"{where}: no symbols after the header")
    return mapping


class SectorExposure:
    """Caps the gross target exposure of every sector; new exposure is cut first."""

    kind: ClassVar[str] = "risk"
    Config = SectorExposureConfig

    def __init__(self, config: SectorExposureConfig, symbols: tuple[str, ...]) -> None:
        self.config = config
        self.symbols = symbols
        self.name = "sector_exposure"
        # No map (the default configuration's index series have no sector): every symbol is
        # its own sector, so the rule caps single names only; said once at start.
        self.path = Path(config.sectors_csv).expanduser() if config.sectors_csv.strip() else None
        mapping = load_sector_map(self.path) if self.path is not None else {}
        if self.path is None and self.name not in _WARNED_NO_MAP:
            # Once a process: the start-up checks build the plugin, then the engine does.
            _WARNED_NO_MAP.add(self.name)
            log.warning(
                "risk.sector_map_missing",
                plugin=self.name,
                detail="sectors_csv is empty: every symbol counts as its own sector",
            )
        names: list[str] = []
        index: dict[str, int] = {}
        ids = np.empty(len(symbols), dtype=np.intp)
        unmapped: list[str] = []
        for i, sym in enumerate(symbols):
            sector = mapping.get(sym.upper())
            if sector is None:
                unmapped.append(sym)
                sector = f"unknown:{sym}" if config.unknown == "own" else "unknown"
            if sector not in index:
                index[sector] = len(names)
                names.append(sector)
            ids[i] = index[sector]
        self.sector_names: tuple[str, ...] = tuple(names)
        self.sector_id = ids  # (N,) index into sector_names
        self.unmapped: tuple[str, ...] = tuple(unmapped)
        self._members = [np.flatnonzero(ids == s) for s in range(len(names))]
        log.info(
            "risk.sector_map",
            plugin=self.name,
            file=str(self.path) if self.path is not None else None,
            symbols=len(symbols) - len(unmapped),
            sectors=len({mapping[s.upper()] for s in symbols if s.upper() in mapping}),
            unmapped=len(unmapped),
        )
        said = (self.name, str(self.path) if self.path else None, config.unknown, tuple(unmapped))
        if unmapped and said not in _WARNED_UNMAPPED:
            if len(_WARNED_UNMAPPED) > 64:  # bounded: maps reloaded for months
                _WARNED_UNMAPPED.clear()
            _WARNED_UNMAPPED.add(said)
            log.warning(
                "risk.sector_unmapped",
                plugin=self.name,
                file=str(self.path) if self.path is not None else None,
                count=len(unmapped),
                symbols=unmapped[:LOG_SYMBOLS],
                rule=(
                    "each is its own sector 'unknown:<SYMBOL>'"
                    if config.unknown == "own"
                    else "all share one sector 'unknown'"
                ),
                limit=config.max_sector_pct,
            )

    def reconfigure(self, config: SectorExposureConfig) -> None:
        """A SIGHUP's new params: the sector map is read again (another `sectors_csv`, or
        another rule for `unknown`); the plugin keeps no other state."""
        fresh = type(self)(config, self.symbols)
        self.config, self.path = fresh.config, fresh.path
        self.sector_names, self.sector_id = fresh.sector_names, fresh.sector_id
        self.unmapped, self._members = fresh.unmapped, fresh._members

    def required_features(self) -> tuple[str, ...]:
        return ()

    def sector_of(self, symbol: str) -> str:
        return self.sector_names[self.sector_id[self.symbols.index(symbol)]]

    def check(self, targets: np.ndarray, ctx: BarContext) -> RiskDecision:
        cap = self.config.max_sector_pct
        t = nan_to_zero(targets)
        size = np.abs(t)
        gross = np.bincount(self.sector_id, weights=size, minlength=len(self.sector_names))
        over = np.flatnonzero(gross > cap + 1e-12)
        if not over.size:
            return RiskDecision(targets)
        current = nan_to_zero(ctx.portfolio.weights)
        same_side = (ctx.portfolio.quantity != 0) & (t * current > 0)
        kept = np.where(same_side, np.minimum(size, np.abs(current)), 0.0)
        new = size - kept
        allowed = size.copy()
        verdicts: list[RiskVerdict] = []
        for s in over.tolist():
            idx = self._members[s]
            held_total = float(kept[idx].sum())
            if held_total > cap:
                factor = cap / held_total
                allowed[idx] = kept[idx] * factor
                how = f"held positions alone {held_total:.4f}: scaled by {factor:.4f}"
            else:
                # Held increases before entries, then larger targets, then universe order.
                order = idx[np.lexsort((idx, -size[idx], ~same_side[idx]))]
                parts = new[order]
                before = np.cumsum(parts) - parts
                allowed[order] = kept[order] + np.clip(cap - held_total - before, 0.0, parts)
                how = f"new exposure cut to the remaining {cap - held_total:.4f}"
            # Float noise in kept + new must neither grow a target nor change it unseen.
            allowed[idx] = np.minimum(allowed[idx], size[idx])
            reason = (
                f"sector {self.sector_names[s]!r} gross exposure {gross[s]:.4f} above limit "
                f"{cap:.4f} ({how})"
            )
            for i in idx[allowed[idx] < size[idx]].tolist():
                out_i = math.copysign(float(allowed[i]), t[i])
                if allowed[i] == 0.0:
                    action = "reject"
                elif held_total > cap:
                    action = "scale"
                else:
                    action = "clip"
                verdicts.append(
                    RiskVerdict(self.name, self.symbols[i], action, reason, float(t[i]), out_i)
                )
        out = np.where(allowed < size, np.sign(t) * allowed, t)
        return RiskDecision(out, tuple(verdicts))
