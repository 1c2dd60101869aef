"""What one experiment trains, by model: one model per fold, or a set of sub-runs and how they combine.

    single  one model set (most experiments)
    choose  one sub-run per candidate (prior kind, encoder, top n); the pipeline picks one per outer fold
            on the other folds' OOF (nested, so the top-level OOF stays out of fold)
    mean    late fusion: the mean of the sub-runs' probabilities
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from src.model import resolve_top_n


@dataclass(frozen=True)
class SubRun:
    name: str             # folder name under per_<group>/ ("" for a single run)
    encoders: list[str]
    prior: str | None     # prior kind for model.name: prior, else None
    cfg: object           # the config this sub-run trains with


def sub_runs(cfg, encoders: list[str]) -> tuple[str | None, str, list[SubRun]]:
    """(group folder or None, combine rule single | choose | mean, sub-runs)."""
    m = cfg.model
    if m.name == "prior":
        return "per_baseline", "choose", [SubRun(k, [], k, cfg) for k in m.priors]
    if m.name == "mlp" and m.inputs in ("per_encoder", "late_mean"):
        return "per_encoder", "mean" if m.inputs == "late_mean" else "choose", \
            [SubRun(e, [e], None, cfg) for e in encoders]
    if m.name == "fusion" and m.sweep_top_n:
        return "per_top_n", "choose", [SubRun(str(n), encoders, None, replace(cfg, model=replace(m, top_n=n)))
                                       for n in top_n_candidates(m.sweep_top_n, len(encoders))]
    return None, "single", [SubRun("", encoders, None, cfg)]


def n_seeds(cfg, sub: SubRun) -> int:
    """A prior is deterministic: one seed whatever train.seeds says."""
    return 1 if sub.prior is not None else cfg.train.seeds


def top_n_candidates(sweep, n_encoders: int) -> list[int]:
    """model.sweep_top_n -> the n of each sub-run: 1..n_encoders for true, else the listed values resolved on
    this encoder count, without repeats, in increasing order."""
    if sweep is True:
        return list(range(1, n_encoders + 1))
    return sorted({resolve_top_n(v, n_encoders) for v in sweep})
