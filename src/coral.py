"""CORAL: align the second-order statistics of training and target features (Sun & Saenko, 2016)."""
from __future__ import annotations

import torch


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """source [B, d], target [B', d] -> squared Frobenius distance of their covariances / (4 d^2)."""
    d = source.shape[1]
    diff = torch.cov(source.T) - torch.cov(target.T)
    return (diff * diff).sum() / (4 * d * d)
