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


def masked_coral_loss(source: torch.Tensor, target: torch.Tensor, source_ok: torch.Tensor,
                      target_ok: torch.Tensor) -> torch.Tensor:
    """coral_loss over the rows where *_ok (bool [B]) holds, as 0/1 row weights (a row count that may differ
    per model under vmap); 0 unless both sides have two rows (a covariance needs two)."""
    d = source.shape[1]
    with torch.autocast(source.device.type, enabled=False):
        covs = []
        for x, ok in ((source, source_ok), (target, target_ok)):
            w = ok.float()[:, None]
            n = w.sum()
            centred = (x.float() - (w * x.float()).sum(0) / n.clamp(min=1)) * w
            covs.append(centred.T @ centred / (n - 1).clamp(min=1))
        diff = covs[0] - covs[1]
        enough = (source_ok.sum() >= 2) & (target_ok.sum() >= 2)
        return torch.where(enough, (diff * diff).sum() / (4 * d * d), 0.0)

