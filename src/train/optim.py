"""Adam over stacked parameters [M, ...] and the learning-rate schedule, as torch.optim computes them per model."""
from __future__ import annotations

import math

import numpy as np
import torch

BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam(W) defaults


class StackedAdam:
    """Adam / AdamW on parameters stacked [M, ...], with a step count per model.

    torch.optim's fused kernel over each model's slices, so every model keeps its own step count (bias
    correction); a model without a batch at some step (masked) is left out of that call, keeping its
    parameters, moments and step count: each model steps as its own torch.optim.Adam(W) would.
    """

    def __init__(self, params: dict, weight_decay: float, decoupled: bool):
        self.params, self.weight_decay = params, weight_decay
        self.kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
        self.m = {k: torch.zeros_like(v) for k, v in params.items()}
        self.v = {k: torch.zeros_like(v) for k, v in params.items()}
        first = next(iter(params.values()))
        # float32 scalars on the parameters' device, as torch.optim keeps them for its fused kernel
        self.steps = [torch.zeros((), device=first.device) for _ in range(first.shape[0])]

    @torch.no_grad()
    def step(self, grads: dict, active: np.ndarray, lr: float) -> None:
        """grads: per parameter [M, ...] or None (unused: skipped, as torch.optim does); active: bool [M]."""
        ids = np.flatnonzero(active)
        for i in ids:
            self.steps[i] += 1
        lists = [[], [], [], [], []]
        for k, p in self.params.items():
            if grads[k] is None:
                continue
            g = grads[k]
            if g.stride() != p.stride():  # the fused kernel walks p, g, m and v in one memory order
                g = torch.empty_like(p).copy_(g)
            for i in ids:
                for out, t in zip(lists, (p[i], g[i], self.m[k][i], self.v[k][i], self.steps[i])):
                    out.append(t)
        params, grads_, m, v, steps = lists
        self.kernel(params, grads_, m, v, [], steps, lr=lr, beta1=BETAS[0], beta2=BETAS[1],
                    weight_decay=self.weight_decay, eps=EPS, amsgrad=False, maximize=False)


def transposed_in_memory(stacked: torch.Tensor) -> torch.Tensor:
    """A stacked weight [M, out, in] stored as [M, in, out]: the layout in which vmap's backward of F.linear
    returns its gradient, so Adam (and m, v, made like it) walks all four without a transposing copy per step,
    which costs more than Adam itself at the real widths."""
    return stacked.transpose(-1, -2).contiguous().transpose(-1, -2) if stacked.dim() == 3 else stacked


def epoch_lrs(t) -> list[float]:
    """The learning rate of every epoch: a constant, or the floats torch.optim's CosineAnnealingLR (T_max = epochs,
    eta_min 0) gives by its recursive rule, written out because building a torch.optim optimiser imports
    torch._dynamo, ~3 s in every process (tests/test_trainer.py compares the two)."""
    if t.schedule == "constant":
        return [t.lr] * t.epochs
    lrs = [t.lr]
    for e in range(1, t.epochs):
        lrs.append((1 + math.cos(math.pi * e / t.epochs)) / (1 + math.cos(math.pi * (e - 1) / t.epochs)) * lrs[-1])
    return lrs
