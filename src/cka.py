"""Linear CKA (Kornblith et al., 2019): how similar two representations of the same clips are.

Invariant to orthogonal transforms and isotropic scaling of either input, so two encoders' projections
compare equal when one is a rotation of the other, whatever their coordinates.
"""
from __future__ import annotations

import numpy as np


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """x: float [N, D1], y: float [N, D2] (same N rows, same clips) -> similarity in [0, 1].

    Feature-space form ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) with column-centred inputs:
    the same value as the Gram (HSIC) form but D x D instead of N x N. NaN when an input is constant.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka: {x.shape[0]} rows against {y.shape[0]}")
    x = x - x.mean(0)
    y = y - y.mean(0)
    denominator = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    if denominator == 0:
        return float("nan")
    return float(np.linalg.norm(y.T @ x) ** 2 / denominator)


def cka_matrix(blocks: list[np.ndarray]) -> np.ndarray:
    """blocks: E arrays float [N, D_e] over the same rows -> symmetric float [E, E] of pairwise linear CKA."""
    n = len(blocks)
    out = np.empty((n, n))
    for i in range(n):
        for j in range(i, n):
            out[i, j] = out[j, i] = linear_cka(blocks[i], blocks[j])
    return out
