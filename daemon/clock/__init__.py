"""Clocks decide when the engine handles the next bar.

* `replay.ReplayClock`: every stored bar time at once (backtests).
* `live.LiveClock`: APScheduler releases each bar `delay_s` after it closes on the exchange's
  real calendar (or, accelerated, a given list of bar times at a fixed rate).
* `calendar.ExchangeCalendar`: which bars exist, when each closes, the newest closed one and
  the next to close, from the `exchange_calendars` package (XNYS by default).

Nothing is imported here, so that a backtest does not load APScheduler or exchange_calendars.
"""
