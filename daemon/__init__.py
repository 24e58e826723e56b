"""tradingd: one asyncio engine for live paper trading and replay backtests."""

__version__ = "0.1.0"
