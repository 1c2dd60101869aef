"""The organisers' baseline network: one hidden layer (ReLU), softmax over the 6 emotions."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from src.model.dropout import Dropout


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int = 512, dropout: float = 0.0, n_out: int = 6):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), Dropout(dropout), nn.Linear(hidden, n_out))

    def forward(self, xs: list[torch.Tensor], available=None, generator=None, draw=None,
                dropout_generator=None) -> dict:
        """xs: [x float [B, D]] (one concatenated input) -> salience logits [B, 6]."""
        return {"salience_logits": self.net(torch.cat(xs, 1))}

    @staticmethod
    def loss(out: dict, targets: dict) -> torch.Tensor:
        """KL divergence to the salience vector (a 70/30 blend is the soft target 0.7/0.3)."""
        return F.kl_div(F.log_softmax(out["salience_logits"], 1), targets["salience"], reduction="batchmean")

    @staticmethod
    def outputs(out: dict) -> dict:
        return {"prob": F.softmax(out["salience_logits"], 1)}
