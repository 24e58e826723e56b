#!/usr/bin/env python3
"""Inference speed of the model pair through onnxruntime, and the same batch through Keras.

    python benchmarks/inference.py [--model-dir models/default] [--repeats 50] [--json]

Reports, for the shipped default model pair (CNN+BiLSTM and random forest, with scaling):
- one bar for 500 symbols: (500, 60, 20) windows through both ONNX models (median ms);
- one symbol: (1, 60, 20) (median ms);
- the CNN+BiLSTM alone on the 500-window batch in Keras (TensorFlow) and in onnxruntime, same
  architecture, in the same run (ratio) — needs the train extra;
- the default model's training time and peak memory, from its model card.
Targets: 500 symbols <= 100 ms per bar, one symbol <= 1 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from tradingd.inference.onnx import ModelPair

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", default=str(ROOT / "models" / "default"))
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--symbols", type=int, default=500)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    pair = ModelPair(args.model_dir)
    card = pair.card.data
    window, n_feat = pair.card.window, len(pair.card.feature_set.features)
    rng = np.random.default_rng(0)
    batch = rng.normal(size=(args.symbols, window, n_feat)).astype(np.float32)
    one = batch[:1].copy()
    res: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.platform()}, {os.cpu_count()} logical CPUs",
        "model_version": pair.card.version,
    }
    b = timed(lambda: pair.predict(batch), args.repeats)
    s = timed(lambda: pair.predict(one), args.repeats * 4)
    res["pair_batch_ms_median"] = statistics.median(b)
    res["pair_one_ms_median"] = statistics.median(s)
    print(
        f"ONNX pair, {args.symbols} symbols: median {res['pair_batch_ms_median']:.2f} ms per bar"
        f" (target <= 100 ms); one symbol: median {res['pair_one_ms_median']:.3f} ms"
        " (target <= 1 ms)"
    )

    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import keras  # noqa: F401
        from tradingd_models.cnn_lstm import CNNLSTMModel
        from tradingd_models.config import ModelConfig
    except ImportError:
        print("Keras comparison skipped: the train extra is not installed")
    else:
        m = CNNLSTMModel(window, n_feat, config=ModelConfig())
        m.model(batch[:1])  # build it (speed does not depend on the weights)
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "m.onnx"
            m.export_onnx(path)
            import onnxruntime as ort

            opts = ort.SessionOptions()  # the same thread settings as the daemon's sessions
            opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            name = sess.get_inputs()[0].name
            o = timed(lambda: sess.run(None, {name: batch}), args.repeats)
        k = timed(lambda: m.model(batch, training=False), args.repeats)
        res["cnn_onnx_ms_median"] = statistics.median(o)
        res["cnn_keras_ms_median"] = statistics.median(k)
        res["keras_over_onnx"] = res["cnn_keras_ms_median"] / res["cnn_onnx_ms_median"]
        print(
            f"CNN+BiLSTM alone, {args.symbols} windows: Keras {res['cnn_keras_ms_median']:.2f} "
            f"ms, onnxruntime {res['cnn_onnx_ms_median']:.2f} ms (ratio "
            f"{res['keras_over_onnx']:.2f}x, same run)"
        )
    tr = card.get("training", {})
    res["default_training_s"] = tr.get("seconds")
    res["default_training_peak_rss_mb"] = tr.get("peak_rss_mb")
    print(
        f"default model training (from its card): {tr.get('seconds')} s, peak RSS "
        f"{tr.get('peak_rss_mb')} MB, {card['metrics']['training_history']['epochs_run']} epochs"
    )
    print(f"machine: {res['machine']}, {res['date']}")
    if args.json:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
