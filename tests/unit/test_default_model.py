"""The shipped model pair: installed with the package, intact, and in step with the config."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from tradingd.config import Config
from tradingd.features.catalog import feature_set_id, resolve_set
from tradingd.inference.onnx import ModelCard, ModelPair, fingerprint
from tradingd_plugins.signals.ml_ensemble import default_model_dir


def test_default_model_ships_and_matches_the_default_feature_set():
    pair = ModelPair(default_model_dir())  # hashes and shapes checked on load
    card = pair.card
    f = Config().features
    expected = feature_set_id(f.set, resolve_set(f.set), f.indicators, f.cross_sectional)
    # If this fails, the default features changed: retrain with `tradingd train`.
    assert card.feature_set == expected
    assert card.window == 60 and len(card.feature_set.features) == 20
    out = pair.predict(np.zeros((3, 60, 20), dtype=np.float32))
    assert set(out) == {"cnn_lstm", "random_forest"}
    assert all(v.shape == (3,) and np.isfinite(v).all() for v in out.values())
    # the same input gives the same forecast for every symbol in the batch
    assert np.ptp(out["cnn_lstm"]) == 0.0


def test_the_model_version_is_the_same_on_any_number_of_cores(monkeypatch):
    """model_version names what the models compute, so a machine's core count must not change
    it: onnxruntime gives a session left at its default one intra-op thread per core, and the
    shipped pair's sums round differently across 1, 2, 3 or 4 threads. Each core count is
    played by giving such sessions that many threads.

    Not compared with the shipped card's version: that is the value training computed on its
    machine (an Intel CPU with AVX-512), and onnxruntime picks its kernels by instruction set,
    so another CPU family rounds a last bit differently (an AMD EPYC without AVX-512 gives
    another version for the same files). The version is computed by training only, never
    checked at load, so no run depends on the machine agreeing with the card."""
    real = ort.InferenceSession
    cores = {"n": 1}

    def session(path, sess_options=None, *args, **kwargs):  # type: ignore[no-untyped-def]
        opts = sess_options or ort.SessionOptions()
        if opts.intra_op_num_threads == 0:  # the default: one thread per core
            opts.intra_op_num_threads = cores["n"]
        return real(path, opts, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", session)
    card = ModelCard.load(default_model_dir())
    versions = set()
    for n in (1, 2, 3, 4):
        cores["n"] = n
        versions.add(fingerprint(default_model_dir(), card.data))
    assert len(versions) == 1, versions
