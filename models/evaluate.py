"""Forecast quality: error, direction and rank correlation, next to naive baselines."""

from __future__ import annotations

import numpy as np


def metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """MSE, directional accuracy (share of nonzero targets whose sign is predicted) and
    information coefficient (Spearman rank correlation of prediction and outcome)."""
    y = np.asarray(y, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    mse = float(np.mean((y - pred) ** 2)) if y.size else float("nan")
    moved = y != 0
    # A forecast without a direction (all zero) has no directional accuracy.
    has_dir = moved.any() and np.any(pred != 0)
    da = float(np.mean(np.sign(pred[moved]) == np.sign(y[moved]))) if has_dir else float("nan")
    return {"mse": mse, "directional_accuracy": da, "ic": _spearman(pred, y), "n": int(y.size)}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def baselines(y: np.ndarray, last_return: np.ndarray) -> dict[str, dict[str, float]]:
    """Zero forecast (the martingale: its MSE is the bar to beat), persistence (tomorrow
    moves like today) and always-up (the drift)."""
    return {
        "zero": metrics(y, np.zeros_like(y)),
        "persistence": metrics(y, last_return),
        # always up: its directional accuracy is the share of up moves, the bar for any
        # direction claim on an index that mostly rose. Only that: its other metrics are of a
        # forecast of +1 (a log return of 100% a bar), its MSE about 1 beside models' 1e-4.
        "always_up": metrics(y, np.ones_like(y)),
    }
