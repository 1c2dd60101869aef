"""One fold model: inputs fitted on the training rows, a model trained in memory, predictions for valid + test.

Row indices address the dataset's feature matrices: train clips first (0..n_train-1), then test clips.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import functional_call

from src.coral import coral_loss
from src.data import Dataset
from src.device import resolve_precision
from src.errors import UserError
from src.labels import IS_BLEND, PRESENCE, SALIENCE
from src.models.fusion import FusionNet
from src.models.mlp import MLP


# One random stream per purpose, so arms that differ in one option (selection, CORAL, dropout, rank order)
# share every other draw at the same seed: batch order, initial weights, dropout-layer masks.
STREAMS = ("batches", "coral", "selection", "encoder_dropout", "init", "layers", "prediction_draws")


def stream_seed(seed: int, purpose: str) -> int:
    return int(np.random.SeedSequence([seed % 2**32, STREAMS.index(purpose)]).generate_state(1)[0])


def seed_everything(seed: int) -> dict[str, torch.Generator]:
    """Seed random, numpy and torch; returns one CPU generator per purpose in STREAMS."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return {p: torch.Generator().manual_seed(stream_seed(seed, p)) for p in STREAMS}


def fit_standardizer(X: np.ndarray, fit_rows: np.ndarray, present: np.ndarray):
    """(mean, std) float32 [D] of the training rows where the encoder is present; saved with checkpoints."""
    rows = fit_rows[present[fit_rows]]
    return X[rows].mean(0), X[rows].std(0)


def standardize(X: np.ndarray, present: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Z-score with fitted statistics; missing rows stay 0."""
    return np.where(present[:, None], (X - mean) / np.where(std > 1e-8, std, 1.0), 0.0).astype(np.float32)


@dataclass
class FoldInputs:
    xs: list[torch.Tensor]      # per input block, float [N_all, D]
    available: torch.Tensor     # bool [N_all, E]
    targets: dict               # salience, presence: float [N_train, 6] (empty when predicting)
    draws: torch.Tensor | None = None  # random control at prediction: float [K draws, N_all, E] per row


def make_inputs(features: list[np.ndarray], present: list[np.ndarray], stats, concat: bool, device,
                labels: np.ndarray | None = None) -> FoldInputs:
    """Per encoder features [N, D_e] and presence [N], standardised with stats [(mean, std)] -> FoldInputs."""
    blocks = [standardize(X, p, m, s) for X, p, (m, s) in zip(features, present, stats)]
    if concat:
        blocks = [np.concatenate(blocks, 1)]
    available = np.stack(present, 1)
    targets = {} if labels is None else {"salience": torch.from_numpy(SALIENCE[labels]).to(device),
                                         "presence": torch.from_numpy(PRESENCE[labels]).to(device)}
    return FoldInputs([torch.from_numpy(b).to(device) for b in blocks], torch.from_numpy(available).to(device), targets)


def inner_split(ds: Dataset, train_rows: np.ndarray):
    """(fit rows, stop rows): the training fold after the held-out one stops early; actor-disjoint like folds."""
    held_out = set(ds.folds) - set(ds.folds[train_rows])
    inside = sorted(set(ds.folds[train_rows]))
    after = [k for k in inside if held_out and k > max(held_out)]
    stop = after[0] if after else inside[0]
    return train_rows[ds.folds[train_rows] != stop], train_rows[ds.folds[train_rows] == stop]


def batches(n: int, size: int, generator: torch.Generator):
    order = torch.randperm(n, generator=generator)
    return [order[i:i + size] for i in range(0, n, size)]


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def training_weights(params: dict, precision: str) -> dict:
    """The weights a training step runs on: the float32 parameters, or (precision bfloat16) bfloat16 copies,
    made once per step, through which the float32 parameters get their gradients; Adam, the losses, CORAL and
    every prediction stay float32, as mixed precision on GPUs does."""
    return params if precision == "float32" else {k: v.to(DTYPES[precision]) for k, v in params.items()}


def training_forward(model, weights, xs: list, available, precision: str, **kw) -> dict:
    """model's forward on weights (functional_call's dicts) with inputs at train.precision -> float32 outputs."""
    out = functional_call(model, weights, ([x.to(DTYPES[precision]) for x in xs], available), kw)
    return {k: v.float() if v.is_floating_point() else v for k, v in out.items()}


def evaluate_loss(model, inp: FoldInputs, rows: np.ndarray, batch_size: int) -> float:
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            idx = torch.as_tensor(rows[i:i + batch_size], device=inp.available.device)
            out = model([x[idx] for x in inp.xs], inp.available[idx], draw=row_draw(inp, idx))
            total += float(model.loss(out, {k: v[idx] for k, v in inp.targets.items()})) * len(idx)
    return total / len(rows)


def row_draw(inp: FoldInputs, idx: torch.Tensor, k: int = 0):
    return None if inp.draws is None else inp.draws[k][idx]


def prediction_draws(seed: int, n_rows: int, n_encoders: int, k: int, device) -> torch.Tensor:
    """float [k, n_rows, E]: the random control's priorities per dataset row, the same in every fold model of a seed."""
    if k < 1:
        from src.errors import UserError
        raise UserError(f"model.random_draws: {k} must be >= 1")
    g = torch.Generator().manual_seed(stream_seed(seed, "prediction_draws"))
    return torch.rand((k, n_rows, n_encoders), generator=g).to(device)


def train_model(model, inp: FoldInputs, train_rows: np.ndarray, cfg, rng: dict[str, torch.Generator],
                target_rows: np.ndarray | None = None, stop_rows: np.ndarray | None = None, on_epoch=None):
    """AdamW/Adam over shuffled index batches; CORAL against target rows when adapt.coral_weight > 0.

    target_rows are unlabeled: only their features are read. stop_rows (an inner split of the training
    folds, never the scored rows) stop training early on their LOSS. on_epoch(model) runs after every epoch.
    Returns (model, history): history = {"train_loss": [per epoch], "inner_loss": [per epoch, with
    stop_rows], "best_epoch"}.
    """
    t = cfg.train
    device = inp.available.device
    opt_cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay, fused=True)  # src/batched.py's kernel
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(t.epochs, 1)) if t.schedule == "cosine" else None
    coral_w = cfg.adapt.coral_weight
    precision = resolve_precision(t.precision, device)
    on_projections = cfg.adapt.coral_on == "fused_and_projections"
    train_rows_t = torch.as_tensor(train_rows, device=device)
    best, best_loss, waited = None, float("inf"), 0
    history = {"train_loss": []}
    for epoch in range(t.epochs):
        model.train()
        total = torch.zeros((), device=device)
        for b in batches(len(train_rows), t.batch_size, rng["batches"]):
            if len(b) < 2:
                continue  # covariance and batch statistics need two rows
            idx = train_rows_t[b.to(device)]
            n = len(b)
            if coral_w > 0 and target_rows is not None:  # the CORAL target rows after the source rows, one pass
                pick = torch.randint(len(target_rows), (n,), generator=rng["coral"])
                idx = torch.cat([idx, torch.as_tensor(target_rows, device=device)[pick.to(device)]])
            weights = training_weights(dict(model.named_parameters()), precision)
            out = training_forward(model, weights, [x[idx] for x in inp.xs], inp.available[idx], precision,
                                   generator=rng["selection"], dropout_generator=rng["encoder_dropout"])
            loss = source_loss(model, out, {k: v[idx[:n]] for k, v in inp.targets.items()}, n, coral_w,
                               inp.available[idx] if on_projections else None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(b)
        history["train_loss"].append(round(float(total) / len(train_rows), 6))
        if sched is not None:
            sched.step()
        if on_epoch is not None:
            on_epoch(model)
        if stop_rows is not None and len(stop_rows):
            val = evaluate_loss(model, inp, stop_rows, 512)
            history.setdefault("inner_loss", []).append(round(val, 6))
            if val < best_loss - 1e-6:
                best, best_loss, waited = {k: v.detach().clone() for k, v in model.state_dict().items()}, val, 0
                history["best_epoch"] = epoch + 1
            else:
                waited += 1
                if waited >= t.patience:
                    break
    if best is not None:
        model.load_state_dict(best)
    return model, history


def source_loss(model, out: dict, targets: dict, n: int, coral_weight: float, available=None) -> torch.Tensor:
    """The training loss of one pass over n source rows, then (CORAL) as many target rows: the task loss on
    the source rows, plus coral_weight x CORAL between their fused representations (and, given available
    bool [2n, E], per encoder on the projections). The model sees each row alone (no batch statistics),
    so one pass over both is the two passes."""
    loss = model.loss({k: v[:n] for k, v in out.items()}, targets)
    if len(out["salience_logits"]) == n:
        return loss
    align = coral_loss(out["fused"][:n], out["fused"][n:])
    if available is not None:
        align = align + projection_coral(out["projections"][:n], out["projections"][n:], available[:n], available[n:])
    return loss + coral_weight * align


def projection_coral(source: torch.Tensor, target: torch.Tensor, source_ok: torch.Tensor, target_ok: torch.Tensor):
    """CORAL per encoder on projections [B, E, S], over the clips that have the encoder (bool [B, E])."""
    total = source.new_zeros(())
    for e in range(source.shape[1]):
        s, t = source[source_ok[:, e], e], target[target_ok[:, e], e]
        if len(s) >= 2 and len(t) >= 2:  # a covariance needs two rows
            total = total + coral_loss(s, t)
    return total


def predict(model, inp: FoldInputs, rows: np.ndarray, batch_size: int = 512) -> dict:
    """Model outputs for rows -> dict of float arrays [len(rows), ...]; the mean over inp.draws' draws if any."""
    model.eval()
    parts: dict[str, list] = {}
    n_draws = 1 if inp.draws is None else len(inp.draws)
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            idx = torch.as_tensor(rows[i:i + batch_size], device=inp.available.device)
            outs = [model.outputs(model([x[idx] for x in inp.xs], inp.available[idx], draw=row_draw(inp, idx, k)))
                    for k in range(n_draws)]
            for k in outs[0]:
                parts.setdefault(k, []).append(torch.stack([o[k] for o in outs]).mean(0).float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


class EpochPredictions:
    """on_epoch callback for train.epoch_selection: valid_fold_score; parts() -> epochs_<p> float [n, n_epochs, 6]."""

    def __init__(self, inp: FoldInputs, rows: dict):
        self.inp, self.rows = inp, rows
        self.seen = {split: [] for split in rows}

    def __call__(self, model) -> None:
        for split, rows in self.rows.items():
            self.seen[split].append(predict(model, self.inp, rows))

    def parts(self, split: str) -> dict:
        kept = [p for p in self.seen[split][0] if p in ("prob", "presence", "salience")]  # what decoding reads
        return {f"epochs_{p}": np.stack([e[p] for e in self.seen[split]], 1) for p in kept}


def prior_config(ds: Dataset, kind: str, train_rows: np.ndarray) -> int:
    """The organisers' trivial baselines: the most frequent single, or blend with its most frequent ratio."""
    counts = np.bincount(ds.labels[train_rows], minlength=len(IS_BLEND)).astype(float)
    counts[IS_BLEND if kind == "most_frequent_single" else ~IS_BLEND] = -1
    # ties go to the lowest configuration index, so the choice is deterministic
    return int(np.argmax(counts))


def prior_parts(config: int, n: int) -> dict:
    return {"prob": np.repeat(SALIENCE[config][None], n, 0)}


def build_model(cfg, widths: list[int], fixed=None):
    m = cfg.model
    if m.name == "mlp":
        return MLP(sum(widths), m.hidden, m.dropout)
    return FusionNet(widths, m.shared_dim, m.fused_dim, m.gate_heads, m.top_n, m.selection, m.heads,
                     m.dropout, m.encoder_dropout, fixed, m.reattend, m.rank_order)


def init_model(cfg, widths: list[int], seed: int, device, fixed=None):
    """The model with initial weights from the seed's init stream; dropout layers then draw from its layers stream."""
    torch.manual_seed(stream_seed(seed, "init"))
    model = build_model(cfg, widths, fixed).to(device)
    torch.manual_seed(stream_seed(seed, "layers"))
    return model


def fit_fold(ds: Dataset, cfg, encoders: list[str], train_rows, valid_rows, seed: int, device, prior=None,
             draw_seed: int | None = None):
    """Train one fold model; returns (valid parts, test parts, state_dict or None, extras).

    Parts are dicts of arrays: prob or presence/salience [n, 6], gate [n, E] for the fusion model.
    draw_seed: the random control's prediction draws (default seed); the pipeline passes one per seed index,
    so a test clip keeps the same subset in every fold model of that seed.
    extras: what `predict_checkpoint` needs besides the weights (standardisation stats, widths, the draw seed
    and row count of the random control, the prior's configuration), the loss history, and fusion
    projections / fixed encoders for the report.
    """
    test_rows = ds.test_rows
    if prior is not None:
        config = prior_config(ds, prior, train_rows)
        return prior_parts(config, len(valid_rows)), prior_parts(config, len(test_rows)), None, {"prior_config": config}
    rng = seed_everything(seed)
    inp, extras = fold_inputs(ds, cfg, encoders, train_rows, seed if draw_seed is None else draw_seed, device)
    # CORAL targets: clips this model is not trained on (its validation fold and the test set), features only
    target_rows = np.concatenate([valid_rows, test_rows])
    fit_rows, stop_rows = inner_split(ds, train_rows) if cfg.train.early_stopping else (train_rows, None)
    fixed = None
    if cfg.model.name == "fusion" and cfg.model.selection == "fixed":
        # the control: pick the n encoders with the highest mean gate of a learned-selection model, trained
        # and measured on this fold's training rows only. The probe runs on its own copy of the streams: the
        # learned arm's initial weights and batch order at this seed, but its dropout-layer masks come from
        # seed_everything's global seed (called after init_model), so with dropout > 0 it is not that arm's
        # exact model. Kept as measured (exp044/exp047); the control below starts from the same weights.
        probe = init_model(cfg, extras["widths"], seed, device)
        probe.selection = "learned"
        train_model(probe, inp, fit_rows, cfg, seed_everything(seed), target_rows, stop_rows)
        fixed = choose_fixed(probe, inp, train_rows, encoders, extras)
    model = init_model(cfg, extras["widths"], seed, device, fixed)
    epochs = EpochPredictions(inp, {"valid": valid_rows, "test": test_rows}) \
        if cfg.train.epoch_selection == "valid_fold_score" else None
    model, extras["history"] = train_model(model, inp, fit_rows, cfg, rng, target_rows, stop_rows, on_epoch=epochs)
    return predict_fold(model, inp, valid_rows, test_rows, extras, epochs)


def fold_inputs(ds: Dataset, cfg, encoders: list[str], train_rows, draw_seed: int, device):
    """(FoldInputs standardised with train_rows' statistics, extras with what a checkpoint needs: mean, std,
    widths, draw_seed, n_rows); the random control's prediction draws in inp.draws."""
    stats = [fit_standardizer(ds.features[e], train_rows, ds.present[e]) for e in encoders]
    inp = make_inputs([ds.features[e] for e in encoders], [ds.present[e] for e in encoders], stats,
                      cfg.model.name == "mlp", device, ds.labels)
    if cfg.model.name == "fusion" and cfg.model.selection == "random":
        inp.draws = prediction_draws(draw_seed, len(inp.available), len(encoders), cfg.model.random_draws, device)
    return inp, {"mean": [m for m, _ in stats], "std": [s for _, s in stats], "widths": [x.shape[1] for x in inp.xs],
                 "draw_seed": draw_seed, "n_rows": len(inp.available)}


def choose_fixed(probe, inp: FoldInputs, train_rows, encoders: list[str], extras: dict) -> torch.Tensor:
    """float [E]: the fixed control's priorities, the probe's mean gate over the training rows (names into extras)."""
    mean_gate = torch.as_tensor(predict(probe, inp, train_rows)["gate"].mean(0))
    # priorities: the n highest, then the next ones for clips missing one of them
    extras["fixed_encoders"] = [encoders[i] for i in torch.argsort(-mean_gate, stable=True)[:probe.top_n]]
    return mean_gate


def predict_fold(model, inp: FoldInputs, valid_rows, test_rows, extras: dict, epochs=None):
    """A trained fold model -> (valid parts, test parts, CPU state_dict, extras + fusion projections)."""
    valid = predict(model, inp, valid_rows)
    test = predict(model, inp, test_rows)
    if epochs is not None:
        valid, test = valid | epochs.parts("valid"), test | epochs.parts("test")
    if isinstance(model, FusionNet):
        with torch.no_grad():
            model.eval()
            idx = torch.as_tensor(valid_rows, device=inp.available.device)
            proj = model([x[idx] for x in inp.xs], inp.available[idx], draw=row_draw(inp, idx))["projections"]
        # [n_valid, E, S] for CKA analysis; NaN where the clip lacks the encoder, so CKA leaves those rows out
        proj = torch.where(inp.available[idx].unsqueeze(-1), proj, float("nan"))
        extras["projections"] = proj.cpu().numpy().astype(np.float16)
    return valid, test, {k: v.cpu() for k, v in model.state_dict().items()}, extras


def predict_checkpoint(ckpt: dict, cfg, features: list[np.ndarray], present: list[np.ndarray], n: int, device) -> dict:
    """A saved fold model (pipeline checkpoint) on n new clips: per encoder features [n, D_e] -> parts [n, ...]."""
    if "prior_config" in ckpt:
        return prior_parts(ckpt["prior_config"], n)
    inp = make_inputs(features, present, list(zip(ckpt["mean"], ckpt["std"])), cfg.model.name == "mlp", device)
    model = build_model(cfg, ckpt["widths"]).to(device)
    model.load_state_dict(ckpt["state_dict"])
    if cfg.model.name == "fusion" and cfg.model.selection == "random":
        # the training run's draws were per dataset row with its test clips last: the same clips, same draws
        total = max(ckpt["n_rows"], n)
        inp.draws = prediction_draws(ckpt["draw_seed"], total, len(ckpt["widths"]), cfg.model.random_draws,
                                     device)[:, total - n:]
    return predict(model, inp, np.arange(n))
