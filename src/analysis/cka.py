"""Linear CKA (Kornblith et al., 2019): how similar two representations of the same clips are.

Invariant to orthogonal transforms and isotropic scaling of either input, so two encoders' projections
compare equal when one is a rotation of the other, whatever their coordinates.
"""
from __future__ import annotations

import numpy as np


def _centred(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x - x.mean(0)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """x: float [N, D1], y: float [N, D2] (same N rows, same clips) -> similarity in [0, 1].

    Feature-space form ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) with column-centred inputs:
    the same value as the Gram (HSIC) form but D x D instead of N x N. NaN when an input is constant.
    """
    if len(x) != len(y):
        raise ValueError(f"linear_cka: {len(x)} rows against {len(y)}")
    return float(cka_matrix([x, y])[0, 1])


def cka_matrix(blocks: list[np.ndarray]) -> np.ndarray:
    """blocks: E arrays float [N, D_e] over the same rows -> symmetric float [E, E] of pairwise linear CKA.

    A row with NaN in a block (the clip lacks that encoder) is left out of every pair with that block.
    """
    present = [np.isfinite(b).all(1) for b in blocks]
    if not all(p.all() for p in present):
        n = len(blocks)
        out = np.empty((n, n))
        for i in range(n):
            for j in range(i, n):
                both = present[i] & present[j]
                pair = [blocks[i][both], blocks[j][both]]
                out[i, j] = out[j, i] = cka_matrix(pair)[0, 1] if both.sum() > 1 else np.nan
        return out
    centred = [_centred(b) for b in blocks]
    self_norms = [np.linalg.norm(c.T @ c) for c in centred]  # computed once, not once per pair
    n = len(blocks)
    out = np.empty((n, n))
    for i in range(n):
        for j in range(i, n):
            denominator = self_norms[i] * self_norms[j]
            cross = np.linalg.norm(centred[j].T @ centred[i]) ** 2
            out[i, j] = out[j, i] = cross / denominator if denominator > 0 else np.nan
    return out
