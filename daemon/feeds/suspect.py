"""Newest bars a live feed holds back: a jump beyond `max_spike` from the previous close.

Validation knows a one-bar spike by its reversal at the next bar (validate.py, repair
"spike"), which the newest bar of a live answer does not have yet. Judged against the two
closes before it, a bad tick after a move passed (a 10x print beside a close that had itself
moved): it was marked, traded and fed to the features, and the next answer dropped it, which
left a drawdown halt caused by a bad print, while a backtest of the same rows never saw it.
And a real gap was refused or "repaired" to the previous close, then traded at a price that
never was.

So a live feed (`VendorFeed`) has validation leave each symbol's newest bar alone
(`Validation.open_end`) and serves a newest bar that jumps beyond `max_spike` from the
previous close (as it came, split-adjusted: the side of the spike rule that is known; a bar
within it is never flagged later, whatever its next bar) as no bar (NaN): not marked, not
traded, not a feature input, as a symbol without a bar. The next answer, in which
validation judges it with both neighbours as a backtest's load does, decides:
- the move held (a gap): the bar is kept for the store as a late bar, and the symbol trades
  from the next bar on: one bar later than a backtest, which trades a confirmed gap at its bar
  (deliberate: the live run cannot know at that bar);
- it reverted (a spike): validation drops the row (strict) or repairs it (repair "spike"),
  exactly as the backtest's load does; a repaired row is kept for the store.
A kept (confirmed or repaired) row's split and dividend are carried to the symbol's next
served bar (`carry_action`, `feed.held_action_carried`): the book and the features get them a
bar late, as they get its prices, instead of never. A split known in the bar's own answer
explains its move (validation compares prices split-adjusted): such a bar is not held; one
that its vendor posts an answer later (a late adjusted table, a late split event) is held and
then carried.
An answer's first bar has no left neighbour in it: validation does not judge it either
(`Validation.open_start`), and the feed fetches one bar more than its window, so that the
window's first bar is judged with both neighbours as a backtest of the whole history judges
it (judged against the two bars after it, the bar before a gap that held was dropped or
restated once a later window started at it, after it had been served and traded).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import structlog

from .validate import JUMP_FROM, PRICE_COLUMNS, _fmt_time

log = structlog.get_logger(__name__)

# A held bar judged again with these prices (relative) was kept as it came: the move held.
SAME_PRICE_TOLERANCE = 1e-3


def newest_jumps(frame: pd.DataFrame) -> np.ndarray:
    """Per row of `frame` (a validated answer): the previous close its symbol's newest bar
    jumps from beyond `max_spike`, NaN for every other row (validation's `jump_from`, given
    with `Validation.open_end`; an answer without it, e.g. the empty one of a failed fetch,
    has no jumps)."""
    if JUMP_FROM not in frame:
        return np.full(len(frame), np.nan)
    return np.asarray(frame[JUMP_FROM].to_numpy(dtype=np.float64))


@dataclass(frozen=True)
class Held:
    """One held-back bar: its prices as they came, and the previous close they jumped from."""

    prices: tuple[float, float, float, float]
    previous_close: float
    split: float = 1.0
    dividend: float = 0.0


class HeldBars:
    """The bars a feed holds back, until an answer judges them (see the module docstring).
    Bounded: a bar no answer judged within the feed's kept span is given up, with a warning."""

    def __init__(self, source: str, max_spike: float) -> None:
        self.source = source
        self.max_spike = max_spike
        self.pending: dict[tuple[str, pd.Timestamp], Held] = {}

    def hold(self, rows: pd.DataFrame) -> pd.DataFrame:
        """`rows` (of a validated answer) without the newest bars that jump
        (`newest_jumps`); each is held, and said once."""
        jump_from = newest_jumps(rows)
        held = ~np.isnan(jump_from)
        if not held.any():
            return rows
        for (_, row), previous in zip(rows[held].iterrows(), jump_from[held], strict=True):
            key = (str(row["symbol"]), pd.Timestamp(row["time"]))
            if key in self.pending:
                continue
            prices = tuple(float(row[c]) for c in PRICE_COLUMNS)
            self.pending[key] = Held(
                prices,  # type: ignore[arg-type]
                float(previous),
                float(row["split"]),
                float(row["dividend"]),
            )
            log.warning(
                "feed.bar_suspect",
                source=self.source,
                symbol=key[0],
                bar=_fmt_time(key[1]),
                prices=dict(zip(PRICE_COLUMNS, prices, strict=True)),
                previous_close=float(previous),
                split=float(row["split"]),
                dividend=float(row["dividend"]),
                max_spike=self.max_spike,
                rule="the newest bar jumps beyond data.max_spike from the previous close and "
                "its next bar is not known: served as no bar (not marked, not traded); the "
                "next answer keeps it if the move held (traded from then on, a bar later "
                "than a backtest) or drops/repairs it as a backtest's load does",
            )
        return rows[~held]

    def judge(self, frame: pd.DataFrame) -> list[pd.DataFrame]:
        """The held bars that `frame` (a later answer) judged, i.e. it has bars of the symbol
        on both sides: each leaves `pending`, and its row as validation left it (the move
        held, or repaired) is returned for the store; a row validation dropped is not."""
        out: list[pd.DataFrame] = []
        if not self.pending or frame.empty:
            return out
        for key, held in list(self.pending.items()):
            symbol, when = key
            mine = frame[frame["symbol"] == symbol]
            times = mine["time"]
            if not ((times < when).any() and (times > when).any()):
                continue
            del self.pending[key]
            row = mine[times == when]
            said: dict[str, object] = {
                "source": self.source,
                "symbol": symbol,
                "bar": _fmt_time(when),
            }
            if row.empty:
                log.info(
                    "feed.suspect_reversed",
                    **said,
                    action="dropped",
                    held=held.prices,
                    split=held.split,  # dropped with the row, as a backtest's load drops it
                    dividend=held.dividend,
                )
                continue
            now = row[list(PRICE_COLUMNS)].to_numpy(dtype=np.float64)[0]
            # Its split and dividend as this answer has them (the feed carries them on).
            said |= {"split": float(row["split"].iat[0]), "dividend": float(row["dividend"].iat[0])}
            if np.allclose(now, held.prices, rtol=SAME_PRICE_TOLERANCE, atol=0.0):
                log.info(
                    "feed.suspect_confirmed",
                    **said,
                    prices=held.prices,
                    previous_close=held.previous_close,
                    rule="the move held at the next bar: kept for the store; the symbol "
                    "trades from this bar on (a backtest trades it at its own bar), and its "
                    "split or dividend is applied at the symbol's next bar served",
                )
            else:
                log.info(
                    "feed.suspect_reversed",
                    **said,
                    action="repaired",
                    held=held.prices,
                    now=tuple(float(x) for x in now),
                )
            out.append(row)
        return out

    def give_up_before(self, oldest: pd.Timestamp) -> None:
        """Forget held bars older than `oldest` that no answer judged (the symbol had no
        later bar, or its answers failed, for the feed's whole kept span): never stored."""
        for key in [k for k in self.pending if k[1] < oldest]:
            held = self.pending.pop(key)
            log.warning(
                "feed.suspect_unjudged",
                source=self.source,
                symbol=key[0],
                bar=_fmt_time(key[1]),
                held=held.prices,
                split=held.split,
                dividend=held.dividend,
                rule="no later answer had the symbol's next bar while this bar was in the "
                "lookback: it stays out of the run and of the stored bars, and so does its "
                "split or dividend (the book never gets it: check the symbol's position)",
            )


def carry_action(
    carried: tuple[float, float], split: float, dividend: float
) -> tuple[float, float]:
    """The action of a bar that was not served (`carried`: its split and dividend) combined
    with the next bar's (`split`, `dividend`) into one bar's: the engine applies a bar's split
    to the shares, then pays its dividend per post-split share, so the split is the product
    and the earlier dividend is restated per share of the later split (shares q get
    q*s1*d1 + q*s1*s2*d2 = q*(s1*s2)*(d1/s2 + d2), as over the two bars)."""
    s1, d1 = carried
    return s1 * split, d1 / split + dividend
