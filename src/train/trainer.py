"""The one training loop: the fold x seed models of a sub-run trained at once, parameters stacked along a
leading model axis (one model is a stack of one).

The models are the FusionNet / MLP modules of src/model, called through `torch.func.functional_call` under
`torch.vmap`, so what a model computes lives in one place. Every model keeps its own training rows and batch
order, CORAL target rows, standardisation, optimiser state and random streams (STREAMS): each stream is drawn
on the host from the model's own generator and handed to the model as tensors (vmap takes no generator), so a
model ends where it would end trained alone, within float tolerance, whatever else shares its stack.
"""
from __future__ import annotations

import copy
import functools
import math
import multiprocessing as mp
import random
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from src.data import Dataset
from src.device import configure_torch, resolve_precision
from src.labels import IS_BLEND, SALIENCE
from src.model.coral import coral_loss, masked_coral_loss
from src.model.dropout import Dropout, scaled_mask
from src.model.fusion import FusionNet
from src.model.mlp import MLP
from src.train.inputs import StackedInputs, inner_split
from src.train.optim import StackedAdam, epoch_lrs, transposed_in_memory

# kl_div has no vmap batching rule: torch loops over the models for this [B, 6] loss, a negligible cost
warnings.filterwarnings("ignore", message=".*batching rule for aten::kl_div")

# One random stream per purpose, so arms that differ in one option (selection, CORAL, dropout, rank order)
# share every other draw at the same seed: batch order, initial weights, dropout-layer masks.
STREAMS = ("batches", "coral", "selection", "encoder_dropout", "init", "layers", "prediction_draws", "test_subsets")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def stream_seed(seed: int, purpose: str) -> int:
    return int(np.random.SeedSequence([seed % 2**32, STREAMS.index(purpose)]).generate_state(1)[0])


def seed_everything(seed: int) -> dict[str, torch.Generator]:
    """Seed random, numpy and torch; returns one CPU generator per purpose in STREAMS."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return {p: torch.Generator().manual_seed(stream_seed(seed, p)) for p in STREAMS}


# ---- models ----------------------------------------------------------------------------------------------
def build_model(cfg, widths: list[int], fixed=None):
    m = cfg.model
    if m.name == "mlp":
        return MLP(sum(widths), m.hidden, m.dropout)
    return FusionNet(widths, m.shared_dim, m.fused_dim, m.gate_heads, m.top_n, m.selection, m.heads,
                     m.dropout, m.encoder_dropout, fixed, m.reattend, m.rank_order, m.gate, m.reliability_cue)


def init_model(cfg, widths: list[int], seed: int, device, fixed=None):
    """The model with initial weights from the seed's init stream."""
    torch.manual_seed(stream_seed(seed, "init"))
    return build_model(cfg, widths, fixed).to(device)


def prediction_draws(cfg, seed: int, n_rows: int, n_encoders: int, device) -> dict[str, torch.Tensor]:
    """forward keyword -> float [k, n_rows, E] uniforms per dataset row, the same in every fold model of a seed:
    the random control's priorities (draw) and model.test_subsets' kept subsets (dropped)."""
    m, out = cfg.model, {}
    for key, stream, k in (("draw", "prediction_draws", m.random_draws if m.selection == "random" else 0),
                           ("dropped", "test_subsets", m.test_subsets)):
        if m.name == "fusion" and k:
            g = torch.Generator().manual_seed(stream_seed(seed, stream))
            out[key] = torch.rand((k, n_rows, n_encoders), generator=g).to(device)
    return out


def prior_config(labels: np.ndarray, kind: str) -> int:
    """The organisers' trivial baselines: the most frequent single, or blend with its most frequent ratio."""
    counts = np.bincount(labels, minlength=len(IS_BLEND)).astype(float)
    counts[IS_BLEND if kind == "most_frequent_single" else ~IS_BLEND] = -1
    # ties go to the lowest configuration index, so the choice is deterministic
    return int(np.argmax(counts))


def prior_parts(config: int, n: int) -> dict:
    return {"prob": np.repeat(SALIENCE[config][None], n, 0)}


@dataclass
class ModelInputs:
    """One model's view of a StackedInputs: its standardisation, and its prediction draws (prediction_draws)."""
    data: StackedInputs
    m: int
    draws: dict = field(default_factory=dict)  # forward keyword -> float [k, N, E]

    def batch(self, idx: torch.Tensor) -> tuple[list, torch.Tensor]:
        return self.data.gather_one(self.m, idx)

    def passes(self) -> int:
        return max([len(v) for v in self.draws.values()], default=1)

    def draw(self, idx: torch.Tensor, k: int = 0) -> dict:
        """The forward keywords of prediction pass k (each kind of draw cycles through its own k)."""
        return {key: v[k % len(v)][idx] for key, v in self.draws.items()}


def model_outputs(model, inp: ModelInputs, rows: np.ndarray, batch_size: int = 512) -> dict:
    """Model outputs for rows -> dict of float arrays [len(rows), ...]; the mean over inp's prediction passes."""
    model.eval()
    parts: dict[str, list] = {}
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            idx = torch.as_tensor(rows[i:i + batch_size], device=inp.data.device)
            xs, available = inp.batch(idx)
            outs = [model.outputs(model(xs, available, **inp.draw(idx, k))) for k in range(inp.passes())]
            for k in outs[0]:
                parts.setdefault(k, []).append(torch.stack([o[k] for o in outs]).mean(0).float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def evaluate_loss(model, inp: ModelInputs, rows: np.ndarray, batch_size: int = 512) -> float:
    """The model's training loss (without CORAL) on rows, in eval mode: early stopping's signal."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            idx = torch.as_tensor(rows[i:i + batch_size], device=inp.data.device)
            xs, available = inp.batch(idx)
            out = model(xs, available, draw=inp.draw(idx).get("draw"))  # every available encoder: no subsets
            total += float(model.loss(out, {k: v[idx] for k, v in inp.data.targets.items()})) * len(idx)
    return total / len(rows)


# ---- one step of every model -----------------------------------------------------------------------------
def training_weights(params: dict, precision: str) -> dict:
    """The weights a training step runs on: the float32 parameters, or (precision bfloat16) bfloat16 copies,
    made once per step, through which the float32 parameters get their gradients; Adam, the losses, CORAL and
    every prediction stay float32, as mixed precision on GPUs does."""
    return params if precision == "float32" else {k: v.to(DTYPES[precision]) for k, v in params.items()}


def training_forward(model, weights, xs: list, available, precision: str, **kw) -> dict:
    """model's forward on weights (functional_call's dicts) with inputs at precision -> float32 outputs."""
    out = functional_call(model, weights, ([x.to(DTYPES[precision]) for x in xs], available), kw)
    return {k: v.float() if v.is_floating_point() else v for k, v in out.items()}


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
    """CORAL per encoder on projections [B, E, S], over the clips that have the encoder (bool [B, E]): weighted
    covariances with 0/1 row weights, so the row count may differ per model under vmap."""
    return sum(masked_coral_loss(source[:, e], target[:, e], source_ok[:, e], target_ok[:, e])
               for e in range(source.shape[1]))


class GivenDropout(nn.Module):
    """Dropout whose scaled mask the caller gives (in the training dtype)."""

    def __init__(self, feed: list):
        super().__init__()
        self.feed = feed

    def forward(self, x):
        return x * self.feed.pop(0)


def with_given_dropout(model: nn.Module):
    """A copy of model whose dropout layers take given masks -> (copy, feed list, [(p, width)] in call order).

    The layers are called in registration order (FusionNet: projectors, then fuse; MLP: one), each on the
    output of the Linear registered before it. Layers with p = 0 draw nothing and become identities.
    """
    template, feed, spec, width = copy.deepcopy(model), [], [], None
    for name, module in list(template.named_modules()):
        if isinstance(module, nn.Linear):
            width = module.out_features
        if isinstance(module, Dropout):
            parent, _, child = name.rpartition(".")
            setattr(template.get_submodule(parent), child, GivenDropout(feed) if module.p > 0 else nn.Identity())
            if module.p > 0:
                spec.append((module.p, width))
    return template, feed, spec


def dropout_masks(rngs: list, active: np.ndarray, spec: list, rows: int, dtype, device) -> list[torch.Tensor]:
    """Per dropout layer in call order: scaled masks [M, rows, width] in dtype. An active model's come from its
    layers stream, one torch.rand per layer as its Dropout layers draw them alone, on the device where the
    stream lives (CUDA: no host work per step); inactive models get ones (their loss weighs nothing)."""
    masks = []
    for p, width in spec:
        ones = torch.ones(rows, width, dtype=dtype, device=device)
        masks.append(torch.stack([
            scaled_mask(torch.rand((rows, width), generator=rng["layers"], device=device), p, dtype) if on else ones
            for rng, on in zip(rngs, active)]))
    return masks


def draw_plan(template, fit_rows: list, n_encoders: int, targets: list, cfg, rngs: list, device) -> dict:
    """One epoch's batches and per-clip draws per model, each from its own streams.

    -> rows, picks: long [M, S, B] global rows (source batch, CORAL target batch); draws / tdraws: forward
    keyword -> float [M, S, B, E] uniforms (dropped: encoder dropout, draw: random selection) for the source
    / target batch; sizes: int [M, S] (0: no step). Padding repeats a model's first row.
    """
    B, E = cfg.train.batch_size, n_encoders
    fusion = isinstance(template, FusionNet)
    streams = {"dropped": "encoder_dropout", "draw": "selection"}
    used = {"dropped": fusion and template.encoder_dropout > 0, "draw": fusion and template.selection == "random"}
    coral = cfg.adapt.coral_weight > 0
    M, S = len(rngs), max(math.ceil(len(tr) / B) for tr in fit_rows)
    rows, picks, sizes = np.zeros((M, S, B), np.int64), np.zeros((M, S, B), np.int64), np.zeros((M, S), np.int64)
    draws = {k: torch.zeros(M, S, B, E) for k in streams if used[k]}
    tdraws = {k: torch.zeros(M, S, B, E) for k in draws} if coral else {}
    for m, (tr, tg, rng) in enumerate(zip(fit_rows, targets, rngs)):
        rows[m], picks[m] = tr[0], tg[0]
        order = torch.randperm(len(tr), generator=rng["batches"]).numpy()
        j = 0
        for i in range(0, len(tr), B):
            b = order[i:i + B]
            if len(b) < 2:
                continue  # covariance and batch statistics need two rows
            n = len(b)
            sizes[m, j], rows[m, j, :n] = n, tr[b]
            for k in draws:
                draws[k][m, j, :n] = torch.rand((n, E), generator=rng[streams[k]])
            if coral:
                picks[m, j, :n] = tg[torch.randint(len(tg), (n,), generator=rng["coral"]).numpy()]
                for k in tdraws:
                    tdraws[k][m, j, :n] = torch.rand((n, E), generator=rng[streams[k]])
            j += 1
    return {"rows": torch.from_numpy(rows).to(device), "picks": torch.from_numpy(picks).to(device), "sizes": sizes,
            "draws": {k: v.to(device) for k, v in draws.items()},
            "tdraws": {k: v.to(device) for k, v in tdraws.items()}, "coral": coral}


def make_loss(template, feed: list, cfg, precision: str):
    """vmapped (params, buffers, batch) -> loss [M]: each model's loss (+ CORAL) on one forward pass over its
    n source rows followed (CORAL) by its n target rows; precision: float32 | bfloat16."""
    weight, on_projections = cfg.adapt.coral_weight, cfg.adapt.coral_on == "fused_and_projections"

    def one(params, buffers, xs, available, draws, masks, targets):
        feed[:] = masks  # this forward's dropout masks, taken in call order
        out = training_forward(template, (training_weights(params, precision), buffers), xs, available, precision,
                               **draws)
        return source_loss(template, out, targets, len(targets["salience"]), weight,
                           available if on_projections else None)

    return torch.vmap(one, randomness="error")  # every draw is given: a random op inside would be a bug


def step(loss_fn, params, buffers, opt, data: StackedInputs, plan: dict, j: int, n: int, masks: list,
         active: np.ndarray, lr: float) -> torch.Tensor:
    """One optimiser step of every active model on its j-th batch (its first n rows) -> losses [M], zero
    for the others."""
    rows = plan["rows"][:, j, :n]
    targets = {k: v[rows] for k, v in data.targets.items()}
    draws = {k: v[:, j, :n] for k, v in plan["draws"].items()}
    if plan["coral"]:  # the CORAL target rows after the source rows, in the same pass
        rows = torch.cat([rows, plan["picks"][:, j, :n]], 1)
        draws = {k: torch.cat([v, plan["tdraws"][k][:, j, :n]], 1) for k, v in draws.items()}
    xs, available = data.gather(rows)
    losses = loss_fn(params, buffers, xs, available, draws, masks, targets)
    names = list(params)
    losses = torch.where(torch.from_numpy(active).to(losses.device), losses, 0.0)  # masked: no loss, no gradient
    grads = torch.autograd.grad(losses.sum(), [params[k] for k in names], allow_unused=True)
    opt.step(dict(zip(names, grads)), active, lr)
    return losses.detach()


# ---- the loop --------------------------------------------------------------------------------------------
def load_into(models: list, params: dict, buffers: dict) -> None:
    """Copy each model's slice of the stacked parameters and buffers into its module."""
    for i, model in enumerate(models):
        model.load_state_dict({k: v[i].detach().clone() for k, v in {**params, **buffers}.items()})


class EarlyStopping:
    """Per model: the loss on its stop rows (an inner split of its training folds, never the scored rows) after
    each epoch; the best state is kept, and the model stops after `patience` epochs without improvement."""

    def __init__(self, views: list, stop_rows: list, patience: int):
        self.views, self.stop_rows, self.patience = views, stop_rows, patience
        self.best = [None] * len(views)
        self.best_loss = [float("inf")] * len(views)
        self.waited = [0] * len(views)
        self.histories = [{} for _ in views]

    def update(self, models: list, alive: np.ndarray, epoch: int) -> None:
        """After epoch (0-based): record each live model's stop-row loss; clear alive[m] when m stops."""
        for m in np.flatnonzero(alive):
            loss = evaluate_loss(models[m], self.views[m], self.stop_rows[m])
            self.histories[m].setdefault("inner_loss", []).append(round(loss, 6))
            if loss < self.best_loss[m] - 1e-6:
                self.best[m] = {k: v.detach().clone() for k, v in models[m].state_dict().items()}
                self.best_loss[m], self.waited[m] = loss, 0
                self.histories[m]["best_epoch"] = epoch + 1
            else:
                self.waited[m] += 1
                alive[m] = self.waited[m] < self.patience

    def restore(self, models: list) -> None:
        for model, best in zip(models, self.best):
            if best is not None:
                model.load_state_dict(best)


def train_stacked(models: list, data: StackedInputs, fit_rows: list, targets: list, cfg, seeds: list,
                  layer_seeds=None, views=None, stop_rows=None, on_epoch=None) -> list[dict]:
    """Train the models in place, all at once: model i on fit_rows[i], CORAL against targets[i], its streams
    seeded from seeds[i] (its dropout layers' from layer_seeds[i] if given, else from its layers stream).

    stop_rows[i] (with views, each model's ModelInputs): early stopping on that loss (EarlyStopping).
    on_epoch(models): after every epoch, with the models holding that epoch's weights.
    -> per model history {"train_loss": [per epoch] [, "inner_loss", "best_epoch"]}.
    """
    t = cfg.train
    rngs = [seed_everything(seed) for seed in seeds]
    dev = data.device
    # the dropout layers' streams on the device (CUDA: masks drawn there)
    for rng, seed in zip(rngs, layer_seeds or [stream_seed(s, "layers") for s in seeds]):
        rng["layers"] = torch.Generator(dev).manual_seed(seed)
    params, buffers = stack_module_state(models)
    params = {k: transposed_in_memory(v).detach().requires_grad_() for k, v in params.items()}
    template, feed, spec = with_given_dropout(models[0])
    template.train()
    opt = StackedAdam(params, t.weight_decay, decoupled=t.optimizer == "adamw")
    sums = torch.zeros(len(models), t.epochs, device=dev)
    precision = resolve_precision(t.precision, dev)
    loss_fn = make_loss(template, feed, cfg, precision)
    alive, ran = np.ones(len(models), bool), np.zeros(len(models), int)
    stopper = EarlyStopping(views, stop_rows, t.patience) if stop_rows is not None else None
    for epoch, lr in enumerate(epoch_lrs(t)):
        if not alive.any():
            break
        plan = draw_plan(template, fit_rows, data.available.shape[1], targets, cfg, rngs, dev)
        sizes = plan["sizes"]
        # models whose j-th batch has this size step together; the others are masked
        calls = [(j, n) for j in range(sizes.shape[1]) for n in sorted(set(sizes[:, j][sizes[:, j] > 0].tolist()))]
        for j, n in calls:
            active = (sizes[:, j] == n) & alive
            if not active.any():
                continue
            # each model's dropout masks from its layers stream, for its source rows and (CORAL) target rows
            masks = dropout_masks(rngs, active, spec, 2 * n if plan["coral"] else n, DTYPES[precision], dev)
            losses = step(loss_fn, params, buffers, opt, data, plan, j, n, masks, active, lr)
            sums[:, epoch] += losses * n  # masked models' losses weigh zero (step)
        ran[alive] += 1
        if stopper is not None or on_epoch is not None:
            load_into(models, params, buffers)
            if on_epoch is not None:
                on_epoch(models)
            if stopper is not None:
                stopper.update(models, alive, epoch)
    load_into(models, params, buffers)
    if stopper is not None:
        stopper.restore(models)
    sums = sums.cpu()
    return [{"train_loss": [round(float(v) / len(tr), 6) for v in sums[i, :ran[i]]]}
            | (stopper.histories[i] if stopper is not None else {}) for i, tr in enumerate(fit_rows)]


class EpochPredictions:
    """on_epoch callback for train.epoch_selection: valid_fold_score; parts(m) -> epochs_<p> float [n, n_epochs, 6]."""

    def __init__(self, views: list, rows: list[dict]):
        self.views, self.rows = views, rows  # rows[m]: split name -> rows
        self.seen = [{split: [] for split in r} for r in rows]

    def __call__(self, models: list) -> None:
        for m, model in enumerate(models):
            for split, rows in self.rows[m].items():
                self.seen[m][split].append(model_outputs(model, self.views[m], rows))

    def parts(self, m: int, split: str) -> dict:
        seen = self.seen[m][split]
        kept = [p for p in seen[0] if p in ("prob", "presence", "salience")]  # what decoding reads
        return {f"epochs_{p}": np.stack([e[p] for e in seen], 1) for p in kept}


# ---- fold x seed models ----------------------------------------------------------------------------------
def fit_folds(ds: Dataset, cfg, encoders: list[str], jobs: list[tuple], device, prior: str | None = None) -> list[tuple]:
    """jobs: [(train_rows, valid_rows, seed, draw_seed)] -> per job (valid parts, test parts, state_dict or
    None, extras).

    Parts are dicts of arrays: prob or presence/salience [n, 6], gate [n, E] for the fusion model. extras: what
    `predict_checkpoint` needs besides the weights (standardisation stats, widths, the draw seed and row count
    of the random control, a prior's configuration), the loss history, fusion projections, fixed encoders.
    prior: the organisers' trivial baselines (nothing trained). On CPU with train.workers = P > 1 the jobs
    are split into P contiguous groups, each trained in its own single-threaded process: small matrix
    products scale better over processes than over threads. The draws never depend on P; the float rounding
    of the stacked products may, so the OOF bytes are those of one P. train.batched false: one model at a
    time through the same loop.
    """
    if prior is not None:
        return [(prior_parts(c, len(va)), prior_parts(c, len(ds.test_rows)), None, {"prior_config": c})
                for tr, va, _, _ in jobs for c in [prior_config(ds.labels[tr], prior)]]
    workers = min(cfg.train.workers or torch.get_num_threads(), len(jobs)) if device.type == "cpu" else 1
    if workers > 1:
        groups = [list(g) for g in np.array_split(np.arange(len(jobs)), workers)]
        one = replace(cfg, train=replace(cfg.train, workers=1))
        parts = worker_pool(workers).map(fit_folds, *zip(*[(ds, one, encoders, [jobs[i] for i in g], device)
                                                          for g in groups]))
        return [res for part in parts for res in part]
    if not cfg.train.batched and len(jobs) > 1:
        return [res for job in jobs for res in fit_folds(ds, cfg, encoders, [job], device)]
    return fit_stack(ds, cfg, encoders, jobs, device)


def fit_stack(ds: Dataset, cfg, encoders: list[str], jobs: list[tuple], device) -> list[tuple]:
    """fit_folds' jobs trained as one stack in this process."""
    t, m = cfg.train, cfg.model
    stat_rows = [tr for tr, *_ in jobs]
    splits = [inner_split(ds, tr) if t.early_stopping else (tr, None) for tr in stat_rows]
    fit_rows, stop_rows = [f for f, _ in splits], ([s for _, s in splits] if t.early_stopping else None)
    data = StackedInputs.for_folds(ds, encoders, stat_rows, m.name == "mlp", device)
    # CORAL targets: clips a model is not trained on (its validation fold and the test set), features only
    targets = [np.concatenate([va, ds.test_rows]) for _, va, _, _ in jobs]
    seeds = [seed for _, _, seed, _ in jobs]
    views = [ModelInputs(data, i, prediction_draws(cfg, d, data.n_rows, len(encoders), device))
             for i, (*_, d) in enumerate(jobs)]
    fixed, names = [None] * len(jobs), [None] * len(jobs)
    if m.name == "fusion" and m.selection == "fixed":
        # the control: each model keeps the n encoders with the highest mean gate of a learned-selection probe
        # trained from its seed on its training rows only. The probe's dropout masks come from a generator
        # seeded with the model's seed itself (not its layers stream), as exp044/exp047 were measured.
        probes = [init_model(cfg, data.widths, seed, device) for seed in seeds]
        for p in probes:
            p.selection = "learned"
        train_stacked(probes, data, fit_rows, targets, cfg, seeds, layer_seeds=seeds, views=views,
                      stop_rows=stop_rows)
        for i, (tr, *_) in enumerate(jobs):
            fixed[i], names[i] = choose_fixed(probes[i], views[i], tr, encoders)
    models = [init_model(cfg, data.widths, seed, device, f) for seed, f in zip(seeds, fixed)]
    epochs = (EpochPredictions(views, [{"valid": va, "test": ds.test_rows} for _, va, _, _ in jobs])
              if t.epoch_selection == "valid_fold_score" else None)
    histories = train_stacked(models, data, fit_rows, targets, cfg, seeds, views=views, stop_rows=stop_rows,
                              on_epoch=epochs)
    results = []
    for i, (_, va, _, draw_seed) in enumerate(jobs):
        stats = data.stats[i]
        extras = {"mean": [s[0] for s in stats], "std": [s[1] for s in stats], "widths": data.widths,
                  "draw_seed": draw_seed, "n_rows": data.n_rows, "history": histories[i]}
        if names[i] is not None:
            extras["fixed_encoders"] = names[i]
        valid, test = model_outputs(models[i], views[i], va), model_outputs(models[i], views[i], ds.test_rows)
        if epochs is not None:
            valid, test = valid | epochs.parts(i, "valid"), test | epochs.parts(i, "test")
        if isinstance(models[i], FusionNet):
            extras["projections"] = projections(models[i], views[i], va)
        results.append((valid, test, {k: v.cpu() for k, v in models[i].state_dict().items()}, extras))
    return results


@functools.cache
def worker_pool(workers: int) -> ProcessPoolExecutor:
    """Single-threaded CPU worker processes, started once per run (a start costs seconds of imports)."""
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=configure_torch,
                               initargs=(1, torch.device("cpu")))


def choose_fixed(probe, inp: ModelInputs, train_rows, encoders: list[str]) -> tuple[torch.Tensor, list[str]]:
    """(float [E] priorities: the probe's mean gate over the training rows, the n encoders it keeps)."""
    mean_gate = torch.as_tensor(model_outputs(probe, inp, train_rows)["gate"].mean(0))
    # priorities: the n highest, then the next ones for clips missing one of them
    return mean_gate, [encoders[i] for i in torch.argsort(-mean_gate, stable=True)[:probe.top_n]]


def projections(model: FusionNet, inp: ModelInputs, rows) -> np.ndarray:
    """float16 [n, E, S] projected encoder embeddings of rows (one pass) for CKA analysis; NaN where the clip
    lacks the encoder, so CKA leaves those rows out."""
    with torch.no_grad():
        model.eval()
        idx = torch.as_tensor(rows, device=inp.data.device)
        xs, available = inp.batch(idx)
        proj = model(xs, available, **inp.draw(idx))["projections"]
        proj = torch.where(available.unsqueeze(-1), proj, float("nan"))
    return proj.cpu().numpy().astype(np.float16)


def predict_checkpoint(ckpt: dict, cfg, features: list[np.ndarray], present: list[np.ndarray], n: int, device) -> dict:
    """A saved fold model (pipeline checkpoint) on n new clips: per encoder features [n, D_e] -> parts [n, ...]."""
    if "prior_config" in ckpt:
        return prior_parts(ckpt["prior_config"], n)
    data = StackedInputs(features, present, [list(zip(ckpt["mean"], ckpt["std"]))], cfg.model.name == "mlp", device)
    model = build_model(cfg, ckpt["widths"]).to(device)
    model.load_state_dict(ckpt["state_dict"])
    # the training run's draws were per dataset row with its test clips last: the same clips, same draws
    total = max(ckpt["n_rows"], n)
    draws = {k: v[:, total - n:] for k, v in prediction_draws(cfg, ckpt["draw_seed"], total, len(ckpt["widths"]),
                                                              device).items()}
    return model_outputs(model, ModelInputs(data, 0, draws), np.arange(n))
