"""What the models read: raw features on the device, standardised per model and per batch with that model's
training-fold statistics, so one copy of the features serves every fold x seed model of a stack.

Row indices address the dataset's feature matrices: train clips first (0..n_train-1), then test clips.
"""
from __future__ import annotations

import numpy as np
import torch

from src.data import Dataset
from src.labels import PRESENCE, SALIENCE


def fit_standardizer(X: np.ndarray, fit_rows: np.ndarray, present: np.ndarray):
    """(mean, std) float32 [D] of the training rows where the encoder is present; saved with checkpoints."""
    rows = fit_rows[present[fit_rows]]
    return X[rows].mean(0), X[rows].std(0)


def safe_std(std: np.ndarray) -> np.ndarray:
    """A constant feature (std ~ 0) is divided by 1: it stays centred at 0 instead of blowing up."""
    return np.where(std > 1e-8, std, 1.0)


class StackedInputs:
    """Raw features on the device plus per-model standardisation statistics.

    features / present: per encoder float [N, D_e] / bool [N]; stats: per model, per encoder (mean, std);
    labels: int [N_train] for the training targets (None when only predicting).
    """

    def __init__(self, features: list, present: list, stats: list, concat: bool, device, labels=None):
        to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)
        self.concat, self.device, self.stats = concat, device, stats
        self.xs = [to(X) for X in features]                                       # [N, D_e]
        self.present = [to(p) for p in present]                                   # bool [N]
        self.mean = [to(np.stack([s[e][0] for s in stats])) for e in range(len(features))]  # [M, D_e]
        self.std = [to(np.stack([safe_std(s[e][1]) for s in stats])) for e in range(len(features))]
        self.available = to(np.stack(present, 1))                                 # bool [N, E]
        self.targets = {} if labels is None else {"salience": to(SALIENCE[labels]), "presence": to(PRESENCE[labels])}
        widths = [X.shape[1] for X in features]
        self.widths = [sum(widths)] if concat else widths

    @classmethod
    def for_folds(cls, ds: Dataset, encoders: list[str], stat_rows: list, concat: bool, device) -> "StackedInputs":
        """One model per entry of stat_rows (its training rows, where its standardisation is fitted)."""
        stats = [[fit_standardizer(ds.features[e], rows, ds.present[e]) for e in encoders] for rows in stat_rows]
        return cls([ds.features[e] for e in encoders], [ds.present[e] for e in encoders], stats, concat, device,
                   ds.labels)

    @property
    def n_rows(self) -> int:
        return len(self.available)

    def gather(self, idx: torch.Tensor) -> tuple[list, torch.Tensor]:
        """idx long [M, B] global rows -> inputs [M, B, D] standardised per model, available bool [M, B, E]."""
        blocks = [torch.where(p[idx][..., None], (x[idx] - mu[:, None]) / sd[:, None], 0.0)
                  for x, p, mu, sd in zip(self.xs, self.present, self.mean, self.std)]
        return ([torch.cat(blocks, -1)] if self.concat else blocks), self.available[idx]

    def gather_one(self, m: int, idx: torch.Tensor) -> tuple[list, torch.Tensor]:
        """idx long [B] -> model m's inputs [B, D] (the same floats as its slice of gather), available [B, E]."""
        blocks = [torch.where(p[idx][..., None], (x[idx] - mu[m]) / sd[m], 0.0)
                  for x, p, mu, sd in zip(self.xs, self.present, self.mean, self.std)]
        return ([torch.cat(blocks, -1)] if self.concat else blocks), self.available[idx]


def inner_split(ds: Dataset, train_rows: np.ndarray):
    """(fit rows, stop rows): the training fold after the held-out one stops early; actor-disjoint like folds."""
    held_out = set(ds.folds) - set(ds.folds[train_rows])
    inside = sorted(set(ds.folds[train_rows]))
    after = [k for k in inside if held_out and k > max(held_out)]
    stop = after[0] if after else inside[0]
    return train_rows[ds.folds[train_rows] != stop], train_rows[ds.folds[train_rows] == stop]
