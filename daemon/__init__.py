"""tradingd: one asyncio engine for live paper trading and replay backtests."""

import os as _os

__version__ = "0.1.0"

# onnxruntime (1.29 and later) sends usage telemetry from Linux: DNS lookups and uploads to
# mobile.events.data.microsoft.com once a session has run, from a daemon documented as
# needing no network beyond its own services. Off unless the operator sets it otherwise;
# it must be in the environment before onnxruntime starts (ORT_DISABLE_TELEMETRY=1 is its
# documented opt-out).
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
