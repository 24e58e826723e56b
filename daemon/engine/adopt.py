"""The operator's adoption of the broker's quantity (`POST /adopt`) in symbols reconciliation
blocked.

A symbol whose book differs from the broker's position is blocked and never adopted or
overwritten silently (`Engine._reconcile`). Some differences have no way back at the
broker: a position closed or changed by hand at Alpaca, a cash-out delisting, a split the
book missed. Buying the shares back (what the advice said) is a trade the operator does not
want; kept, the book counted shares that did not exist (drawdown, P&L, exposure) for good.
So the operator may say, explicitly and per symbol, that the broker's quantity is right:

- "trade" (default): the difference is booked as a trade at the bar's close (cash moves by
  -difference x close, equity continuous, the closed part's profit realised);
- "split": the book missed a split: the quantity becomes the broker's, the cost basis
  scaled by the split's ratio, cash unchanged unless the broker's quantity is the book's
  times the ratio rounded down: the fraction of a share, which Alpaca paid in cash, is then
  sold at the bar's close (`Engine._cash_in_lieu`, as for a split the book applies); refused
  when the two quantities are not a split's ratio apart, or fit several ratios rounded down
  (each would pay a different fraction).

The request is checked at once (the symbol known, blocked, the broker's quantity what it was
at the round that blocked it), kept in the run's checkpoint (a restart keeps it, as a
pause), and applied at the next bar under the bar lock, as /pause and /flatten are: the
broker's quantity read again and compared with the request's (changed since: dropped, with
an error saying so), the adjustment stored (schema.ADJUSTMENTS) and written to the audit log
before the book changes, the symbol released and this run's orders in it cancelled, so the
bar's plan places its exits again, as after a fill. Nothing here runs unless asked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import structlog

from ..core.errors import (
    ControlInvalidError,
    ControlNotStoredError,
    ControlRefusedError,
    EngineStoppedError,
    RetryableError,
)
from ..core.numbers import same_quantity

if TYPE_CHECKING:
    from ..core.types import CrossSection
    from .engine import Engine

log = structlog.get_logger("tradingd.engine")

KINDS = ("trade", "split")
# The checkpoint's key of the adoptions asked and not yet applied.
CHECKPOINT_KEY = "adopt"
_FIELDS = ("symbols", "as")


@dataclass(frozen=True, slots=True)
class Adoption:
    """One symbol's adoption asked: the quantities it was checked against."""

    symbol: str
    kind: str
    broker: float  # the broker's quantity when asked
    book: float  # the book's quantity when asked
    asked_at: str  # ISO wall time of the request


def parse_request(body: Any, universe: Sequence[str]) -> tuple[list[str], str]:
    """(symbols, kind) of a `POST /adopt` body: {"symbols": [...], "as": "trade"|"split"}.
    ControlInvalidError (400) naming what is wrong; 404 naming the symbols not in the run's
    universe."""
    if not isinstance(body, Mapping):
        raise ControlInvalidError(
            'the body must be a JSON object: {"symbols": ["SYM", ...], "as": "trade" or "split"}',
            400,
        )
    unknown_keys = sorted(set(body) - set(_FIELDS))
    if unknown_keys:
        raise ControlInvalidError(
            f"unknown field(s) {unknown_keys} in the body; valid: {list(_FIELDS)}", 400
        )
    symbols = body.get("symbols")
    if (
        not isinstance(symbols, list)
        or not symbols
        or not all(isinstance(s, str) and s.strip() for s in symbols)
    ):
        raise ControlInvalidError(
            '"symbols" must be a non-empty list of symbol names, e.g. {"symbols": ["AAPL"]}',
            400,
        )
    kind = body.get("as", "trade")
    if kind not in KINDS:
        raise ControlInvalidError(f'"as" must be one of {list(KINDS)}, not {kind!r}', 400)
    names = list(dict.fromkeys(s.strip() for s in symbols))
    known = set(universe)
    unknown = {s: "not in this run's universe" for s in names if s not in known}
    if unknown:
        raise ControlInvalidError(
            f"unknown symbol(s) {sorted(unknown)}: not in this run's universe; nothing adopted",
            404,
            unknown,
        )
    return names, kind


def split_refusal(broker: float, book: float) -> str | None:
    """Why a difference cannot be a split the book missed (None: it can)."""
    from .engine import _split_fits  # the ratios reconciliation names splits by

    if book == 0 or broker == 0 or broker * book < 0:
        return (
            f"the broker holds {broker:g} and the book {book:g}: a split never opens, closes "
            'or turns a position; adopt it "as": "trade" if the account traded it'
        )
    # Any size: the operator says it was a split, and the fraction is paid as cash in lieu
    # (reconciliation's own guess needs a larger position: a 155-share 1:10 was refused).
    fits, _exact = _split_fits(broker, book, min_blocks=1)
    if not fits:
        return (
            f"the broker holds {broker:g} and the book {book:g}: a ratio of "
            f"{broker / book:.6g}, no split ratio (2:1, 3:2, 1:10, ...), so no split of the "
            'position; adopt it "as": "trade" if the account traded it'
        )
    if len(fits) > 1:
        named = " or ".join(f"{r.numerator}:{r.denominator}" for r in fits)
        return (
            f"the broker holds {broker:g} and the book {book:g}: {named} rounded down, each "
            "paying a different fraction of a share in cash, so not one split; adopt it "
            '"as": "trade", or bring the account to the book\'s quantity'
        )
    return None


def _split_ratio(broker: float, book: float) -> tuple[Fraction, bool] | None:
    """The one split ratio (new shares per old) turning `book` into `broker`, and whether
    exactly (else rounded down, the fraction paid in cash); None unless exactly one fits
    (`split_refusal`)."""
    from .engine import _split_fits

    fits, exact = _split_fits(broker, book, min_blocks=1)
    return (fits[0], exact) if len(fits) == 1 else None


class Adoptions:
    """The adoptions asked and not yet applied (symbol -> Adoption), as the checkpoint keeps
    them."""

    def __init__(self) -> None:
        self.pending: dict[str, Adoption] = {}
        # Why each waits, said once per reason (an outage of the store or the broker would
        # otherwise be a line a bar).
        self._waits_said: set[tuple[str, str]] = set()

    def waits(self, symbol: str, reason: str, **said: Any) -> None:
        """An adoption left pending for a later bar, `control.adopt_waits` once per reason."""
        if (symbol, reason) in self._waits_said:
            return
        self._waits_said.add((symbol, reason))
        log.warning("control.adopt_waits", symbol=symbol, reason=reason, **said)

    def done(self, symbol: str) -> None:
        """`symbol`'s adoption no longer pending (applied or dropped): its waits forgotten,
        so one asked again says why it waits again, even for the same reason."""
        self.pending.pop(symbol, None)
        self._waits_said = {w for w in self._waits_said if w[0] != symbol}

    def state(self) -> dict[str, Any] | None:
        return {s: asdict(a) for s, a in self.pending.items()} or None

    def restore(self, saved: Any) -> None:
        """A checkpoint's pending adoptions; one that is no such record is dropped, said
        (the operator sends it again)."""
        self.pending = {}
        if not saved:
            return
        if not isinstance(saved, Mapping):
            log.error("control.adopt_unreadable", saved=repr(saved)[:200])
            return
        for sym, row in saved.items():
            try:
                a = Adoption(**row)
                if a.kind not in KINDS or not (math.isfinite(a.broker) and math.isfinite(a.book)):
                    raise ValueError(a.kind)
            except (TypeError, ValueError):
                log.error(
                    "control.adopt_unreadable",
                    symbol=sym,
                    saved=repr(row)[:200],
                    hint="the checkpoint's adoption is no such record: dropped; send POST "
                    "/adopt again",
                )
                continue
            self.pending[str(sym)] = a


async def ask(engine: Engine, body: Any) -> dict[str, Any]:
    """`POST /adopt`: checked and stored in the run's checkpoint, applied at the next bar
    (`apply_due`). ControlInvalidError for a request it refuses (nothing changed),
    ControlRefusedError while the engine starts or when the broker cannot answer now,
    EngineStoppedError once it has stopped, ControlNotStoredError when the store fails."""
    run_id = engine.run.run_id
    stopped = EngineStoppedError(
        f"the engine of run {run_id} has stopped: nothing adopted; send POST /adopt again "
        "once the daemon runs"
    )
    if engine.controls_closed:
        raise stopped
    lock = engine._bar_lock
    if lock is None:
        raise ControlRefusedError(
            f"the engine of run {run_id} is starting: nothing adopted; send it again once it "
            "trades (GET /ready names the blocked symbols in its reconciliation check)"
        )
    symbols, kind = parse_request(body, engine.symbols)
    async with lock:
        if engine.controls_closed:
            raise stopped
        refused: dict[str, str] = {}
        for sym in symbols:
            if sym in engine._reconcile_checking:
                refused[sym] = (
                    "its difference is being checked again (seconds): send it again once "
                    "/ready's reconciliation check names it"
                )
            elif sym not in engine.reconcile_blocked:
                refused[sym] = (
                    "not blocked by reconciliation (its book and the account agreed at the "
                    f"last round; the book holds {engine.portfolio.quantity_of(sym):g}): "
                    "nothing to adopt"
                )
        if refused:
            raise ControlInvalidError(_refused_text(refused), 409, refused)
        try:
            held = await engine._read_positions()
        except RetryableError as exc:
            raise ControlRefusedError(
                f"the broker did not answer ({exc}): nothing adopted; send it again"
            ) from exc
        if held is None:
            raise ControlRefusedError(
                "fills arrived while the broker's positions were read: nothing adopted; "
                "send it again"
            )
        asked_at = datetime.now(UTC).isoformat()
        asked: dict[str, Adoption] = {}
        for sym in symbols:
            broker = float(held.get(sym, 0.0))
            book = engine.portfolio.quantity_of(sym)
            seen = engine._blocked_broker.get(sym)
            if same_quantity(broker, book):
                refused[sym] = (
                    f"the broker and the book both hold {book:g} now: no difference to "
                    "adopt (the next reconciliation round releases it)"
                )
            elif seen is None or not same_quantity(broker, seen):
                refused[sym] = (
                    f"the difference changed since the round that blocked it (the broker "
                    f"held {'nothing known' if seen is None else f'{seen:g}'}, holds "
                    f"{broker:g} now): send it again after the next reconciliation round"
                )
            elif kind == "split" and (why := split_refusal(broker, book)) is not None:
                refused[sym] = why
            else:
                asked[sym] = Adoption(sym, kind, broker, book, asked_at)
        if refused:
            raise ControlInvalidError(_refused_text(refused), 409, refused)
        adoptions = engine.adoptions
        before = dict(adoptions.pending)
        adoptions.pending.update(asked)
        try:
            await engine._record_again({CHECKPOINT_KEY: adoptions.state()}, engine.trading_state)
        except ControlNotStoredError as exc:
            adoptions.pending = before  # not applied unless kept: the operator sends it again
            cause = exc.__cause__ or exc
            raise ControlNotStoredError(
                exc.state,
                cause,
                what="nothing (the adoption of " + ", ".join(asked) + " was not kept)",
                then="send POST /adopt again once the store works",
            ) from cause
    shown = {
        s: {"broker": a.broker, "book": a.book, "difference": a.broker - a.book}
        for s, a in asked.items()
    }
    log.warning("control.adopt", kind=kind, symbols=shown, applied="at the next bar")
    return {"action": "adopt", "as": kind, "pending": shown, "applied": "at the next bar"}


def _refused_text(refused: Mapping[str, str]) -> str:
    return "nothing adopted: " + "; ".join(f"{s}: {why}" for s, why in refused.items())


async def apply_due(engine: Engine, bar: CrossSection) -> None:
    """The adoptions asked, applied at `bar` (under the bar lock, after its fills are booked
    and before it is marked and planned). The broker's positions are read again: a symbol
    whose difference is no longer the one asked for is dropped with an error (the operator
    asks again); a broker that cannot answer, or a store that cannot keep the record, leaves
    them pending for the next bar."""
    adoptions = engine.adoptions
    t = bar.time
    try:
        held = await engine._read_positions()
    except RetryableError as exc:
        for sym in adoptions.pending:
            adoptions.waits(sym, "the broker does not answer", time=t, error=str(exc))
        return
    if held is None:
        return  # fills arrived meanwhile: the next bar reads them again
    released: dict[str, str] = {}
    for sym, a in list(adoptions.pending.items()):
        i = engine.symbols.index(sym)
        broker = float(held.get(sym, 0.0))
        book = engine.portfolio.quantity_of(sym)
        if sym not in engine.reconcile_blocked or not (
            same_quantity(broker, a.broker) and same_quantity(book, a.book)
        ):
            adoptions.done(sym)
            log.error(
                "control.adopt_dropped",
                time=t,
                symbol=sym,
                asked={"broker": a.broker, "book": a.book},
                now={"broker": broker, "book": book},
                blocked=sym in engine.reconcile_blocked,
                hint="the difference changed since POST /adopt (or the symbol was released): "
                "nothing adopted; check /ready and send POST /adopt again if still wanted",
            )
            continue
        close = float(bar.close[i])
        price = close if math.isfinite(close) else float(engine.portfolio.mark[i])
        split = _split_ratio(broker, book) if a.kind == "split" else None
        if a.kind == "split" and split is None:  # a checkpoint's, kept before the rule
            adoptions.done(sym)
            log.error(
                "control.adopt_dropped",
                time=t,
                symbol=sym,
                asked={"broker": a.broker, "book": a.book},
                hint=split_refusal(broker, book),
            )
            continue
        # The fraction of a share a split rounded down to the broker's whole shares: paid in
        # cash at the bar's close (`Engine._cash_in_lieu`), so a bar with a close is needed.
        fraction = 0.0 if split is None or split[1] else book * float(split[0]) - broker
        at = price if a.kind == "trade" else close if fraction else 1.0
        if not (math.isfinite(at) and at > 0):
            adoptions.waits(sym, "no price for it yet (no bar with a close)", time=t)
            continue
        cash = -(broker - book) * price if a.kind == "trade" else fraction * close
        if split is None:
            reason = (
                f"operator's /adopt as a trade: the broker holds {broker:g}, the book held "
                f"{book:g}; the difference booked at {price:g}"
            )
        else:
            reason = (
                f"operator's /adopt as a split: the broker holds {broker:g}, the book held "
                f"{book:g} ({split[0].numerator}:{split[0].denominator}); cost basis kept, "
                + (
                    f"the fraction {fraction:g} of a share paid in cash at {close:g}"
                    if fraction
                    else "cash unchanged"
                )
            )
        row = {
            "time": t,
            "symbol": sym,
            "kind": a.kind,
            "book_before": book,
            "quantity": broker,
            "price": price if a.kind == "trade" else (close if fraction else None),
            "cash": cash,
            "reason": reason,
            "asked_at": datetime.fromisoformat(a.asked_at),
        }
        record = getattr(engine.store, "record_adjustment", None)
        if record is not None and engine._durable:
            try:
                await record(engine.run.run_id, row)
            except Exception as exc:
                adoptions.waits(
                    sym,
                    "the store cannot keep its record",
                    time=t,
                    error=f"{type(exc).__name__}: {exc}",
                    hint="the adjustment is applied once it is stored: at a later bar",
                )
                continue
        if a.kind == "trade":
            engine.portfolio.adjust(sym, broker, price, t)
        elif fraction and split is not None:
            ratio = float(split[0])
            engine.portfolio.rescale(sym, book * ratio, ratio)
            engine._cash_in_lieu(bar, i, ratio)  # to the broker's whole shares
        else:
            engine.portfolio.rescale(sym, broker)
        audit = getattr(engine.audit, "adjustment", None)
        if audit is not None:
            audit(t, sym, **{k: v for k, v in row.items() if k not in ("time", "symbol")})
        adoptions.done(sym)
        released[sym] = reason
        log.warning(
            "control.adopted",
            time=t,
            symbol=sym,
            kind=a.kind,
            book_before=book,
            quantity=broker,
            price=row["price"],
            cash=cash,
            rule="the book takes the broker's quantity at this bar (the operator's "
            "POST /adopt): the symbol is released and its exits placed again",
        )
    if released:
        await _release(engine, released, t)


async def _release(engine: Engine, released: Mapping[str, str], t: datetime) -> None:
    """The adopted symbols trade again from this bar: unblocked, their alert resolved, and
    this run's working orders in them (placed for the book's old quantity: a stop for
    shares the account no longer holds) cancelled, so the bar's plan places their exits
    again, as after a fill."""
    for sym in released:
        engine._release_blocked(sym)
    await engine._cancel_ours_in(
        released,
        t,
        lambda sym: f"adopt: {sym}'s book took the broker's quantity at this bar",
        "control.adopt_orders_cancelled",
        "placed for the book's earlier quantity: cancelled, its exits placed again at this bar",
    )


__all__ = ["CHECKPOINT_KEY", "KINDS", "Adoption", "Adoptions", "apply_due", "ask"]
