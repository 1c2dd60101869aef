"""Rank-aware selective fusion: per-encoder projectors, an attention gate with top-n selection, two heads.

Per clip: each available encoder is projected to `shared_dim`; attention over the set of encoder
embeddings (plus a learned encoder identity) scores every encoder; only the `top_n` best-ranked encoders
are kept, their softmax weights renormalised over the kept ones, and the weighted sum is fused into
`fused_dim`. Presence (6 sigmoids, BCE) and salience (softmax, KL) heads read the fused representation.

The controls (selection random | fixed) choose the kept set BEFORE attention and then see only that set:
attention keys, gate weights and the fused sum cover the kept encoders, and a dropped encoder's projection
is replaced by zeros, so it changes nothing for that clip and its projector gets no gradient from it.

Two options beyond the paper, for encoders that fail on some clips or move at test time:
- reliability_cue: each token also carries an embedding of the clip's input statistics for that encoder
  (CUES), which tell a normal input from a failed or shifted one;
- gate "loss": every encoder also classifies the clip alone (a shared head on its projection), a small
  network predicts that encoder's loss on the clip from its own probabilities (and the cue), and the
  encoders are ranked and weighted by the negative predicted loss instead of by attention.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from src.model import resolve_top_n
from src.model.dropout import Dropout
from src.model.mlp import MLP


class FusionNet(nn.Module):
    def __init__(self, widths: list[int], shared_dim: int = 256, fused_dim: int = 512, gate_heads: int = 4,
                 top_n="all", selection: str = "learned", heads: str = "two", dropout: float = 0.1,
                 encoder_dropout: float = 0.0, fixed: torch.Tensor | None = None, reattend: bool = False,
                 rank_order: bool = False, gate: str = "attention", reliability_cue: bool = False):
        super().__init__()
        n = len(widths)
        self.top_n = resolve_top_n(top_n, n)
        self.selection, self.heads, self.encoder_dropout = selection, heads, encoder_dropout
        self.reattend, self.gate = reattend, gate
        self.projectors = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(w), nn.Linear(w, shared_dim), nn.GELU(), Dropout(dropout)) for w in widths)
        self.identity = nn.Parameter(torch.randn(n, shared_dim) * 0.02)
        self.attention = GateAttention(shared_dim, gate_heads)
        self.scorer = nn.Sequential(nn.LayerNorm(shared_dim), nn.Linear(shared_dim, 1))
        self.fuse = nn.Sequential(nn.Linear(shared_dim, fused_dim), nn.GELU(), Dropout(dropout))
        self.salience_head = nn.Linear(fused_dim, 6)
        self.presence_head = nn.Linear(fused_dim, 6) if heads == "two" else None
        # selection == "fixed": one priority per encoder (higher first), chosen outside the model; a clip keeps
        # its n highest-priority available encoders, so never more than n even when a fixed one is missing
        self.register_buffer("fixed", fixed_priority(n, fixed))
        # optional modules last: the shared modules above draw the same initial weights with or without them
        self.rank_embedding = nn.Parameter(torch.randn(self.top_n, shared_dim) * 0.02) if rank_order else None
        self.cue = nn.Linear(N_CUES, shared_dim) if reliability_cue else None
        if gate == "loss":
            self.encoder_head = nn.Linear(shared_dim, 6)
            inputs = 6 + 1 + (N_CUES if reliability_cue else 0)  # probabilities, entropy, cue
            self.loss_net = nn.Sequential(nn.Linear(inputs, 32), nn.GELU(), nn.Linear(32, 1))

    def top(self, priority: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        """bool [B, E]: per clip the top_n available encoders by priority float [B, E]."""
        if self.top_n >= priority.shape[1]:
            return available
        top = priority.masked_fill(~available, float("-inf")).topk(self.top_n, dim=1).indices
        return torch.zeros_like(available).scatter(1, top, True) & available

    def gate_scores(self, proj: torch.Tensor, keys: torch.Tensor, cues=None) -> torch.Tensor:
        """Attention over the encoders in keys (bool [B, E]) -> one score per encoder float [B, E]; cues:
        float [B, E, N_CUES] with reliability_cue."""
        tokens = proj + self.identity
        if self.cue is not None:
            tokens = tokens + self.cue(cues)
        context = self.attention(tokens, keys)
        return self.scorer(tokens + context).squeeze(-1)

    def predicted_loss(self, proj: torch.Tensor, cues=None) -> tuple[torch.Tensor, torch.Tensor]:
        """gate 'loss': (each encoder's own salience logits [B, E, 6], its predicted loss on the clip [B, E])."""
        logits = self.encoder_head(proj)
        prob = F.softmax(logits, -1).detach()  # the loss network reads the probabilities; it does not move them
        entropy = -(prob * prob.clamp_min(1e-8).log()).sum(-1, keepdim=True)
        features = [prob, entropy] + ([cues] if self.cue is not None else [])
        return logits, self.loss_net(torch.cat(features, -1)).squeeze(-1)

    def forward(self, xs: list[torch.Tensor], available: torch.Tensor, generator=None, draw=None,
                dropout_generator=None, dropped=None) -> dict:
        """xs: per encoder float [B, D_e]; available: bool [B, E] -> logits, gate weights [B, E], fused [B, F].

        generator: draws of the random control in training; draw: float [B, E], the random control's
        priorities given by the caller (one fixed draw per clip at prediction); dropout_generator: encoder dropout;
        dropped: float [B, E], encoder dropout's uniforms given by the caller (src/train/trainer.py: vmap takes no
        generator; at prediction, model.test_subsets: the clip's kept subset).
        """
        available = torch.where(available.any(1, keepdim=True), available, torch.ones_like(available))
        # in training; at prediction only where the caller gives the uniforms (model.test_subsets)
        if self.encoder_dropout > 0 and (self.training or dropped is not None):
            if dropped is None:
                dropped = torch.rand(available.shape, device="cpu",
                                     generator=generator if dropout_generator is None else dropout_generator)
            kept = available & (dropped.to(available.device) >= self.encoder_dropout)
            available = torch.where(kept.any(1, keepdim=True), kept, available)
        raw = torch.stack([p(x) for p, x in zip(self.projectors, xs)], 1)  # [B, E, S]
        cues = torch.stack([input_cues(x) for x in xs], 1) if self.cue is not None else None
        extra = {}
        if self.gate == "loss":
            extra["encoder_logits"], extra["predicted_loss"] = self.predicted_loss(raw, cues)
            extra["available"] = available
        def score(proj, keys):
            return -extra["predicted_loss"] if self.gate == "loss" else self.gate_scores(proj, keys, cues)
        if self.selection == "learned":
            # the ranking pass must see every available encoder to rank them
            scores = score(raw, available)
            keep = self.top(scores.detach(), available)
            if self.reattend and self.top_n < len(xs):
                scores = score(raw, keep)  # fused weights from attention within the kept set
            proj = raw
        else:
            if self.selection == "fixed":
                priority = self.fixed.expand(available.shape)
            else:
                priority = draw if draw is not None else torch.rand(
                    available.shape, generator=generator, device="cpu").to(available.device)
            keep = self.top(priority, available)
            proj = torch.where(keep.unsqueeze(-1), raw, 0.0)  # a dropped encoder: no value, no gradient
            scores = score(proj, keep)
        gate = F.softmax(scores.masked_fill(~keep, float("-inf")), 1)  # renormalised over the kept encoders
        values = proj
        if self.rank_embedding is not None:
            # kept encoders in rank order (gate score, best first): position r gets rank embedding r
            order = scores.detach().masked_fill(~keep, float("-inf")).argsort(dim=1, descending=True, stable=True)
            rank = order.argsort(1).clamp(max=self.top_n - 1)  # dropped ones have gate 0, any index is fine
            values = proj + self.rank_embedding[rank]
        fused = self.fuse((gate.unsqueeze(-1) * values).sum(1))
        out = {"salience_logits": self.salience_head(fused), "gate": gate, "fused": fused, "projections": raw} | extra
        if self.presence_head is not None:
            out["presence_logits"] = self.presence_head(fused)
        return out

    def loss(self, out: dict, targets: dict) -> torch.Tensor:
        loss = MLP.loss(out, targets)
        if self.presence_head is not None:
            loss = loss + F.binary_cross_entropy_with_logits(out["presence_logits"], targets["presence"])
        if self.gate == "loss":
            # each available encoder's own KL to the target, and the loss network's squared error on it
            t = targets["salience"][:, None, :]
            own = (t * (t.clamp_min(1e-8).log() - F.log_softmax(out["encoder_logits"], -1))).sum(-1)  # [B, E]
            w = out["available"].float()
            n = w.sum().clamp(min=1)
            loss = loss + (own * w).sum() / n + ((out["predicted_loss"] - own.detach()) ** 2 * w).sum() / n
        return loss

    def outputs(self, out: dict) -> dict:
        res = {"salience": F.softmax(out["salience_logits"], 1), "gate": out["gate"]}
        if self.presence_head is not None:
            res["presence"] = torch.sigmoid(out["presence_logits"])
        else:
            res["prob"] = res["salience"]
        return res


N_CUES = 4


def input_cues(x: torch.Tensor) -> torch.Tensor:
    """float [B, D] standardised inputs of one encoder -> [B, N_CUES]: mean, std, mean |x| and log(1 + max |x|),
    which move when an encoder fails (zeros, noise of another scale) or is recorded differently."""
    a = x.abs()
    return torch.stack([x.mean(1), x.std(1, correction=0), a.mean(1), torch.log1p(a.amax(1))], 1)


class GateAttention(nn.Module):
    """Multi-head self-attention over a clip's encoder tokens, keys limited to a mask.

    nn.MultiheadAttention's parameters (same names, so checkpoints load either way) and initialisation (same
    draws in the same order), written out: its packed in-projection is split by select, whose backward
    zero-fills the whole [3, ...] tensor per slice, and its kernels have no vmap batching rule; here the rows
    are flattened for the projections and q, k, v are views of one tensor (src/train/trainer.py runs this under vmap).
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)  # draws its weight and bias first, as in nn.MultiheadAttention
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, tokens: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """tokens float [B, L, D], keys bool [B, L] (True: may be attended to) -> context float [B, L, D]."""
        B, L, D = tokens.shape
        H = self.heads
        qkv = F.linear(tokens.reshape(B * L, D), self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(B, L, 3, H, D // H).permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, L, D / H]
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(D // H)
        scores = scores.masked_fill(~keys[:, None, None, :], float("-inf"))
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B * L, D)
        return self.out_proj(context).view(B, L, D)


def fixed_priority(n: int, fixed: torch.Tensor | None) -> torch.Tensor:
    """float [n]: n - rank of each encoder; fixed is a bool mask (chosen first) or scores (higher first), ties by index."""
    if fixed is None:
        fixed = -torch.arange(n, dtype=torch.float)  # no choice given: encoder order
    order = torch.argsort(-fixed.float(), stable=True)
    priority = torch.empty(n)
    priority[order] = torch.arange(n, 0, -1, dtype=torch.float)
    return priority
