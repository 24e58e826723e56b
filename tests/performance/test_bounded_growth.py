"""A daemon runs for months: state that grows with run length must be bounded.

These are resource checks by count, not timings (speed lives in benchmarks/): a long live run
over a synthetic universe, with the bounds made small so the test can hit them.
"""

from __future__ import annotations

import dataclasses
import tracemalloc

from conftest import make_panel

from tradingd.app import build_engine
from tradingd.config import LiveConfig, StorageConfig


async def test_long_live_run_keeps_every_buffer_bounded(engine_config, tmp_path):
    panel = make_panel(n_symbols=30, n_bars=600, seed=11, split_at=300)
    cfg = dataclasses.replace(
        engine_config,
        live=LiveConfig(bars_per_second=5000.0),
        storage=StorageConfig(url=f"sqlite:///{tmp_path / 'long.db'}", batch_size=50),
    )
    sizes = []

    def check(i, t):
        store = engine.store
        # Rows wait for at most one batch plus one bar before a write starts.
        assert max(store.pending().values()) <= 50 + 30 * 3
        broker = engine.broker
        assert len(broker._closed) <= 200
        if i in (200, 600):
            sizes.append(tracemalloc.get_traced_memory()[0])

    engine = build_engine(cfg, "live", panel=panel, on_bar=check)
    engine.broker._closed_history = 200
    engine._equity = type(engine._equity)(maxlen=100)
    engine._times = type(engine._times)(maxlen=100)
    engine._gross = type(engine._gross)(maxlen=100)
    tracemalloc.start()
    try:
        result = await engine.run_until_done()
    finally:
        tracemalloc.stop()
    assert result.bars == 600
    assert result.orders > 200  # enough orders to have hit the broker's bound
    assert len(result.equity) == 100
    # Three times as many bars must not mean more live memory (allow 2 MB of noise).
    assert sizes[1] - sizes[0] < 2_000_000, sizes
