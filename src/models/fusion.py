"""Rank-aware selective fusion: per-encoder projectors, an attention gate with top-n selection, two heads.

Per clip: each available encoder is projected to `shared_dim`; attention over the set of encoder
embeddings (plus a learned encoder identity) scores every encoder; only the `top_n` best-ranked encoders
are kept, their softmax weights renormalised over the kept ones, and the weighted sum is fused into
`fused_dim`. Presence (6 sigmoids, BCE) and salience (softmax, KL) heads read the fused representation.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from src.config import resolve_top_n
from src.models.mlp import MLP


class FusionNet(nn.Module):
    def __init__(self, widths: list[int], shared_dim: int = 256, fused_dim: int = 512, gate_heads: int = 4,
                 top_n="all", selection: str = "learned", heads: str = "two", dropout: float = 0.1,
                 encoder_dropout: float = 0.0, fixed: torch.Tensor | None = None):
        super().__init__()
        n = len(widths)
        self.top_n = resolve_top_n(top_n, n)
        self.selection, self.heads, self.encoder_dropout = selection, heads, encoder_dropout
        self.projectors = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(w), nn.Linear(w, shared_dim), nn.GELU(), nn.Dropout(dropout)) for w in widths)
        self.identity = nn.Parameter(torch.randn(n, shared_dim) * 0.02)
        self.attention = nn.MultiheadAttention(shared_dim, gate_heads, batch_first=True)
        self.scorer = nn.Sequential(nn.LayerNorm(shared_dim), nn.Linear(shared_dim, 1))
        self.fuse = nn.Sequential(nn.Linear(shared_dim, fused_dim), nn.GELU(), nn.Dropout(dropout))
        self.salience_head = nn.Linear(fused_dim, 6)
        self.presence_head = nn.Linear(fused_dim, 6) if heads == "two" else None
        # selection == "fixed": the same encoders for every clip (bool [n]), chosen outside the model
        self.register_buffer("fixed", torch.ones(n, dtype=torch.bool) if fixed is None else fixed.bool())

    def select(self, scores: torch.Tensor, available: torch.Tensor, generator=None) -> torch.Tensor:
        """bool [B, E]: the encoders each clip keeps (never an unavailable one)."""
        if self.selection == "fixed":
            keep = available & self.fixed
            return torch.where(keep.any(1, keepdim=True), keep, available)
        if self.top_n >= scores.shape[1]:
            return available
        # learned: rank by gate score; random (the reviewer's control): rank by a random draw per clip
        rank = scores if self.selection == "learned" else torch.rand(
            scores.shape, generator=generator, device="cpu").to(scores.device)
        rank = rank.masked_fill(~available, float("-inf"))
        top = rank.topk(self.top_n, dim=1).indices
        keep = torch.zeros_like(available).scatter(1, top, True)
        return keep & available

    def forward(self, xs: list[torch.Tensor], available: torch.Tensor, generator=None) -> dict:
        """xs: per encoder float [B, D_e]; available: bool [B, E] -> logits, gate weights [B, E], fused [B, F]."""
        available = torch.where(available.any(1, keepdim=True), available, torch.ones_like(available))
        if self.training and self.encoder_dropout > 0:
            dropped = torch.rand(available.shape, generator=generator, device="cpu").to(available.device)
            kept = available & (dropped >= self.encoder_dropout)
            available = torch.where(kept.any(1, keepdim=True), kept, available)
        proj = torch.stack([p(x) for p, x in zip(self.projectors, xs)], 1)  # [B, E, S]
        tokens = proj + self.identity
        context, _ = self.attention(tokens, tokens, tokens, key_padding_mask=~available, need_weights=False)
        scores = self.scorer(tokens + context).squeeze(-1)  # [B, E]
        keep = self.select(scores.detach(), available, generator)
        gate = F.softmax(scores.masked_fill(~keep, float("-inf")), 1)  # renormalised over the kept encoders
        fused = self.fuse((gate.unsqueeze(-1) * proj).sum(1))
        out = {"salience_logits": self.salience_head(fused), "gate": gate, "fused": fused, "projections": proj}
        if self.presence_head is not None:
            out["presence_logits"] = self.presence_head(fused)
        return out

    def loss(self, out: dict, targets: dict) -> torch.Tensor:
        loss = MLP.loss(out, targets)
        if self.presence_head is not None:
            loss = loss + F.binary_cross_entropy_with_logits(out["presence_logits"], targets["presence"])
        return loss

    def outputs(self, out: dict) -> dict:
        res = {"salience": F.softmax(out["salience_logits"], 1), "gate": out["gate"]}
        if self.presence_head is not None:
            res["presence"] = torch.sigmoid(out["presence_logits"])
        else:
            res["prob"] = res["salience"]
        return res
