"""Logistic regression over sparse hashed features (numpy): the trainer of the data stage's
quality classifier and of the security stage's moderation classifier."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from lmops.core.errors import UserError

__all__ = ["Features", "fit_adagrad", "fit_logistic", "sigmoid", "sparse_batch"]

Features = tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]
"""A sparse feature vector: (bucket indices, values)."""


def sigmoid(z: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # = 1 / (1 + exp(-z)), without overflow


def sparse_batch(feats: Sequence[Features], rows: Sequence[int]) -> tuple[Any, Any, Any]:
    """Concatenated (indices, values, row number in the batch) of ``rows``."""
    idx = np.concatenate([feats[r][0] for r in rows])
    val = np.concatenate([feats[r][1] for r in rows])
    row = np.repeat(np.arange(len(rows)), [feats[r][0].size for r in rows])
    return idx, val, row


def fit_logistic(
    feats: Sequence[Features],
    labels: Sequence[float] | npt.NDArray[Any],
    *,
    epochs: int = 10,
    seed: int = 0,
    learning_rate: float = 0.5,
    l2: float = 1e-6,
    batch_size: int = 32,
    bits: int = 18,
) -> tuple[npt.NDArray[np.float64], float]:
    """(weights, bias) of a logistic regression fitted to sparse ``feats`` (each as from
    :func:`lmops.data.classifier.features`, or any featuriser with indices below ``2**bits``) and 0/1 ``labels``.

    The trainer of :func:`lmops.data.classifier.train_quality_classifier`, for callers with their own features
    (the serving guardrails' moderation classifier): every example is trained on, the two
    classes weigh the same, and the result is deterministic for ``seed``.
    """
    y = np.asarray(labels, dtype=np.float64)
    if len(feats) != len(y) or not (y > 0.5).any() or not (y < 0.5).any():
        raise UserError("fit_logistic: need one label per example and examples of both classes")
    if epochs < 1 or batch_size < 1 or not 8 <= bits <= 26:
        raise UserError("fit_logistic: need epochs >= 1, batch_size >= 1 and 8 <= bits <= 26")
    rng = np.random.default_rng(seed)
    return fit_adagrad(feats, y, rng, epochs, learning_rate, l2, batch_size, bits)


def fit_adagrad(
    train: Sequence[Features],
    y: npt.NDArray[np.float64],
    rng: np.random.Generator,
    epochs: int,
    learning_rate: float,
    l2: float,
    batch_size: int,
    bits: int,
) -> tuple[npt.NDArray[np.float64], float]:
    """Mini-batch Adagrad on the class-weighted log loss; shuffles with ``rng``."""
    # Each class weighs half of the total, whatever its size.
    n_pos = int((y > 0.5).sum())
    sample_weight = np.where(y > 0.5, len(y) / (2 * n_pos), len(y) / (2 * (len(y) - n_pos)))

    dim = 1 << bits
    w = np.zeros(dim)
    b = 0.0
    g2 = np.zeros(dim)  # Adagrad's running sum of squared gradients, per weight
    g2_b = 0.0
    eps = 1e-8
    for _ in range(epochs):
        order = rng.permutation(len(train))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size].tolist()
            idx, val, row = sparse_batch(train, rows)
            z = np.bincount(row, weights=w[idx] * val, minlength=len(rows)) + b
            err = (sigmoid(z) - y[rows]) * sample_weight[rows] / len(rows)
            # Gradient on the weights this batch touches; L2 is applied to those only
            # (lazily), which keeps a step O(batch features) rather than O(2**bits).
            touched, inv = np.unique(idx, return_inverse=True)
            grad = np.bincount(inv, weights=err[row] * val) + l2 * w[touched]
            g2[touched] += grad * grad
            w[touched] -= learning_rate * grad / (np.sqrt(g2[touched]) + eps)
            grad_b = float(err.sum())
            g2_b += grad_b * grad_b
            b -= learning_rate * grad_b / (math.sqrt(g2_b) + eps)
    return w, b
