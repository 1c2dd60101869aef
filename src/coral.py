"""CORAL: align the second-order statistics of training and target features (Sun & Saenko, 2016)."""
from __future__ import annotations

import torch


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """source [B, d], target [B', d] -> squared Frobenius distance of their covariances / (4 d^2).

    Always in float32 (under a bfloat16 autocast too): the loss is a small difference of large terms. With
    centred rows, ||Cs - Ct||^2 = ||Xs Xs^T||^2 / ns^2 + ||Xt Xt^T||^2 / nt^2 - 2 ||Xs Xt^T||^2 / (ns nt),
    so when d exceeds the batch (fused 512 vs 64 rows) the [B, B'] Gram matrices stand in for the [d, d]
    covariances: the same value, about 5x fewer FLOPs.
    """
    d = source.shape[1]
    with torch.autocast(source.device.type, enabled=False):
        s, t = source.float(), target.float()
        s, t = s - s.mean(0), t - t.mean(0)
        ns, nt = s.shape[0] - 1, t.shape[0] - 1
        if d * (ns + nt) <= ns * ns + nt * nt + ns * nt:
            diff = s.T @ s / ns - t.T @ t / nt
            dist = (diff * diff).sum()
        else:
            dist = ((s @ s.T).square().sum() / ns ** 2 + (t @ t.T).square().sum() / nt ** 2
                    - 2 * (s @ t.T).square().sum() / (ns * nt))
        return dist / (4 * d * d)
