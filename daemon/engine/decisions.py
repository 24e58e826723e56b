"""What a bar decided and from what, as a compact record (stored by live runs, rebuilt by
`tradingd replay-check`), and the comparison of two records.

A record holds, for the bar: the names of the features the plugins use, the symbols whose
features were all ready and their values (float32, base64: 40 kB for 500 symbols x 20
features), every finite signal score, every nonzero target weight after risk, and the order
intents. Features go through float32 because that is what the models see; the comparison
allows for it (and for the 1e-9 difference between streaming and batch indicators).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..core.types import Order

FORMAT = "tradingd-decision/1"
FEATURE_RTOL = 1e-5
FEATURE_ATOL = 1e-6
SCORE_TOL = 1e-6
TARGET_TOL = 1e-9


def decision_record(
    symbols: Sequence[str],
    names: Sequence[str],
    features: Mapping[str, np.ndarray],
    ready: np.ndarray,
    score: np.ndarray,
    targets: np.ndarray,
    orders: Sequence[Order],
) -> dict[str, Any]:
    idx = np.flatnonzero(ready)
    values = (
        np.stack([np.asarray(features[n], dtype=np.float32)[idx] for n in names], axis=1)
        if names and idx.size
        else np.zeros((idx.size, len(names)), dtype=np.float32)
    )
    finite = np.flatnonzero(np.isfinite(score))
    held = np.flatnonzero(targets != 0)
    return {
        "format": FORMAT,
        "names": list(names),
        "ready": [symbols[i] for i in idx.tolist()],
        "features": base64.b64encode(np.ascontiguousarray(values).tobytes()).decode(),
        "scores": {symbols[i]: float(score[i]) for i in finite.tolist()},
        "targets": {symbols[i]: float(targets[i]) for i in held.tolist()},
        "intents": sorted(
            [
                o.client_order_id,
                str(o.side),
                float(o.quantity),
                str(o.type),
                o.limit_price,
                o.stop_price,
            ]
            for o in orders
        ),
    }


def _features(rec: Mapping[str, Any]) -> dict[str, np.ndarray]:
    raw = np.frombuffer(base64.b64decode(rec["features"]), dtype=np.float32)
    n = len(rec["names"])
    table = raw.reshape(-1, n) if n else raw.reshape(len(rec["ready"]), 0)
    return {sym: table[k] for k, sym in enumerate(rec["ready"])}


def compare(live: Mapping[str, Any], replay: Mapping[str, Any]) -> list[str]:
    """The differences between two records of one bar, each naming the first differing value
    of its kind (features, scores, targets, intents); empty when they agree."""
    out: list[str] = []
    if list(live["names"]) != list(replay["names"]):
        out.append(f"features: names differ: {live['names']} vs {replay['names']}")
        return out
    fl, fr = _features(live), _features(replay)
    only = sorted(set(fl) ^ set(fr))
    if only:
        sym = only[0]
        out.append(
            f"features: {sym} ready in {'live' if sym in fl else 'replay'} only "
            f"({len(only)} symbol(s) differ in readiness)"
        )
    for sym in sorted(set(fl) & set(fr)):
        a, b = fl[sym], fr[sym]
        bad = np.flatnonzero(~np.isclose(a, b, rtol=FEATURE_RTOL, atol=FEATURE_ATOL))
        if bad.size:
            k = int(bad[0])
            out.append(
                f"features: {sym} {live['names'][k]} = {float(a[k])!r} live vs "
                f"{float(b[k])!r} replay"
            )
            break
    for kind, tol in (("scores", SCORE_TOL), ("targets", TARGET_TOL)):
        a, b = live[kind], replay[kind]
        for sym in sorted(set(a) | set(b)):
            x, y = (
                a.get(sym, math.nan if kind == "scores" else 0.0),
                b.get(sym, math.nan if kind == "scores" else 0.0),
            )
            same = (math.isnan(x) and math.isnan(y)) or abs(x - y) <= tol
            if not same:
                out.append(f"{kind}: {sym} = {x!r} live vs {y!r} replay")
                break
    if live["intents"] != replay["intents"]:
        ia = [tuple(i) for i in live["intents"]]
        ib = [tuple(i) for i in replay["intents"]]
        first = next((p for p in zip(ia, ib, strict=False) if p[0] != p[1]), None)
        if first is None:
            extra = ia[len(ib) :] or ib[len(ia) :]
            side = "live" if len(ia) > len(ib) else "replay"
            out.append(
                f"intents: {len(ia)} live vs {len(ib)} replay; first only in {side}: {extra[0]}"
            )
        else:
            out.append(f"intents: {first[0]} live vs {first[1]} replay")
    return out
