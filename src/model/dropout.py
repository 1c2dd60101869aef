"""Dropout whose mask is drawn as uniforms: keep where u >= p, scaled by 1 / (1 - p), as F.dropout scales.

Uniforms are cheaper to draw than bernoulli_ on the CPU, and the trainer (src/train/trainer.py) hands each
model the uniforms of its own stream (scaled_mask), so a model's masks do not depend on its stack.
"""
from __future__ import annotations

import torch
from torch import nn


class Dropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        # the global generator, which init_model seeds from the model's layers stream
        return x * scaled_mask(torch.rand(x.shape, device=x.device), self.p, x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def scaled_mask(uniforms: torch.Tensor, p: float, dtype) -> torch.Tensor:
    """uniforms float -> the mask (u >= p) / (1 - p) in dtype."""
    return (uniforms >= p).to(dtype).div_(1 - p)
