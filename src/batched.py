"""Train the fold x seed models of a sub-run at once: parameters stacked along a leading model axis.

The models are the very FusionNet / MLP classes of the sequential path (src/train.py), called through
`torch.func.functional_call` under `torch.vmap`, so what a model computes lives in one place. Every model
keeps its own training rows and batch order, CORAL target rows, standardisation (its fold's statistics,
applied on the fly), optimiser state and random streams: each stream of train_model (batches, coral,
selection, encoder_dropout, and layers for Dropout's uniforms) is drawn on the host from the model's own
generator, in train_model's order, and given to the model as tensors (vmap takes no generator). A model
therefore ends where train_model ends: within float tolerance in float32, within bfloat16 rounding under
train.precision bfloat16, where both paths run each step on bfloat16 copies of the weights (tests/test_batched.py).
"""
from __future__ import annotations

import copy
import functools
import math
import multiprocessing as mp
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import numpy as np
import torch
from torch import nn
from torch.func import stack_module_state

from src.data import Dataset
from src.device import configure_torch, resolve_precision
from src.labels import PRESENCE, SALIENCE
from src.models.dropout import Dropout, scaled_mask
from src.models.fusion import FusionNet
from src.train import (DTYPES, choose_fixed, fit_fold, fit_standardizer, fold_inputs, init_model,
                       predict_fold, seed_everything, source_loss, stream_seed, training_forward,
                       training_weights)

BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam(W) defaults, as the sequential path uses them
# kl_div has no vmap batching rule: torch loops over the models for this [B, 6] loss, a negligible cost
warnings.filterwarnings("ignore", message=".*batching rule for aten::kl_div")


def supported(cfg) -> bool:
    """The configurations fit_folds trains batched; the others go through fit_fold one model at a time:
    priors (nothing to train), early stopping (a per-model stop on its inner split), epoch_selection
    valid_fold_score (predictions after every epoch) and CORAL on projections (per encoder over the clips
    that have it: a data-dependent row count that vmap cannot take)."""
    t, a = cfg.train, cfg.adapt
    return (cfg.model.name in ("mlp", "fusion") and not t.early_stopping and t.epoch_selection == "fixed"
            and not (a.coral_weight > 0 and a.coral_on != "fused"))


def fit_folds(ds: Dataset, cfg, encoders: list[str], jobs: list[tuple], device) -> list[tuple]:
    """jobs: [(train_rows, valid_rows, seed, draw_seed)] -> per job fit_fold's (valid, test, state_dict, extras).

    On CPU with train.num_threads = P > 1 the jobs are split into P contiguous groups, each trained in its
    own single-threaded process: small matrix products scale better, and far more robustly on a busy
    machine, over processes than over threads (bench: `bash run.sh bench --training`). The draws never
    depend on P; the float rounding of the stacked products may, so the OOF bytes are those of one P.
    """
    if not supported(cfg):
        return [fit_fold(ds, cfg, encoders, tr, va, seed, device, draw_seed=d) for tr, va, seed, d in jobs]
    workers = min(cfg.train.num_threads or torch.get_num_threads(), len(jobs)) if device.type == "cpu" else 1
    if workers > 1:
        groups = [list(g) for g in np.array_split(np.arange(len(jobs)), workers)]
        one = replace(cfg, train=replace(cfg.train, num_threads=1))
        parts = worker_pool(workers).map(fit_folds, *zip(*[(ds, one, encoders, [jobs[i] for i in g], device)
                                                          for g in groups]))
        return [res for part in parts for res in part]
    data = StackedInputs(ds, encoders, [tr for tr, *_ in jobs], cfg.model.name == "mlp", device)
    targets = [np.concatenate([va, ds.test_rows]) for _, va, _, _ in jobs]  # CORAL targets, as fit_fold's
    seeds = [seed for _, _, seed, _ in jobs]
    fixed, names = [None] * len(jobs), [None] * len(jobs)
    if cfg.model.name == "fusion" and cfg.model.selection == "fixed":
        # the control (as fit_fold): a learned-selection probe per model, from the model's seed, sets its priorities
        probes = [init_model(cfg, data.widths, seed, device) for seed in seeds]
        for p in probes:
            p.selection = "learned"
        # fit_fold seeds the probe's streams after init_model, so its dropout layers draw from torch.manual_seed(seed)
        train_stacked(probes, data, targets, cfg, seeds, layer_seeds=seeds)
        for i, (inp, extras) in each_input(ds, cfg, encoders, jobs, device):
            fixed[i] = choose_fixed(probes[i], inp, jobs[i][0], encoders, extras)
            names[i] = extras["fixed_encoders"]
    models = [init_model(cfg, data.widths, seed, device, f) for seed, f in zip(seeds, fixed)]
    histories = train_stacked(models, data, targets, cfg, seeds)
    results = []
    for i, (inp, extras) in each_input(ds, cfg, encoders, jobs, device):
        if names[i] is not None:
            extras["fixed_encoders"] = names[i]
        extras["history"] = histories[i]
        results.append(predict_fold(models[i], inp, jobs[i][1], ds.test_rows, extras))
    return results


def each_input(ds, cfg, encoders, jobs, device):
    """(job index, (FoldInputs, extras)) as fit_fold builds them, one job's matrices in memory at a time."""
    for i, (tr, _, _, draw_seed) in enumerate(jobs):
        yield i, fold_inputs(ds, cfg, encoders, tr, draw_seed, device)


@functools.cache
def worker_pool(workers: int) -> ProcessPoolExecutor:
    """Single-threaded CPU worker processes, started once per run (a start costs seconds of imports)."""
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=configure_torch,
                               initargs=(1, torch.device("cpu")))


class StackedInputs:
    """Raw features on the device plus per-model standardisation statistics; gathers [M, B, ...] batches."""

    def __init__(self, ds: Dataset, encoders, train_rows: list, concat: bool, device):
        to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)
        self.concat, self.device, self.train_rows = concat, device, [np.asarray(tr) for tr in train_rows]
        self.xs = [to(ds.features[e]) for e in encoders]                    # [N_all, D_e]
        self.present = [to(ds.present[e]) for e in encoders]                # bool [N_all]
        stats = [[fit_standardizer(ds.features[e], tr, ds.present[e]) for tr in train_rows] for e in encoders]
        self.mean = [to(np.stack([m for m, _ in s])) for s in stats]        # [M, D_e]: each model's fold
        self.std = [to(np.stack([np.where(sd > 1e-8, sd, 1.0) for _, sd in s])) for s in stats]  # as standardize
        self.available = to(np.stack([ds.present[e] for e in encoders], 1))  # bool [N_all, E]
        self.targets = {"salience": to(SALIENCE[ds.labels]), "presence": to(PRESENCE[ds.labels])}  # [N_train, 6]
        widths = [x.shape[1] for x in self.xs]
        self.widths = [sum(widths)] if concat else widths

    def gather(self, idx: torch.Tensor) -> tuple[list, torch.Tensor]:
        """idx long [M, B] global rows -> inputs [M, B, D] standardised per model, available bool [M, B, E]."""
        # the arithmetic of train.standardize, so the batched and sequential inputs are the same floats
        blocks = [torch.where(p[idx][..., None], (x[idx] - mu[:, None]) / sd[:, None], 0.0).float()
                  for x, p, mu, sd in zip(self.xs, self.present, self.mean, self.std)]
        return ([torch.cat(blocks, -1)] if self.concat else blocks), self.available[idx]


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


class StackedAdam:
    """Adam / AdamW on parameters stacked [M, ...], with a step count per model.

    torch.optim's fused kernel (the one train_model's optimiser runs) over each model's slices, so every model
    keeps its own step count (bias correction); a model without a batch at some step (masked) is left out of
    that call, keeping its parameters, moments and step count.
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
    which cost more than Adam itself at the real widths (0.32 vs 0.04 s per step for 87M weights)."""
    return stacked.transpose(-1, -2).contiguous().transpose(-1, -2) if stacked.dim() == 3 else stacked


def epoch_lrs(t) -> list[float]:
    """The learning rate of every epoch: the floats train_model's optimiser gets from its scheduler."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=t.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(t.epochs, 1)) if t.schedule == "cosine" else None
    lrs = []
    for _ in range(t.epochs):
        lrs.append(opt.param_groups[0]["lr"])
        if sched is not None:
            opt.step()  # no gradients: nothing changes; keeps the scheduler's order check quiet
            sched.step()
    return lrs


def draw_plan(template, data: StackedInputs, targets: list, cfg, rngs: list) -> dict:
    """One epoch's batches and per-clip draws per model, from its streams in train_model's order.

    -> rows, picks: long [M, S, B] global rows (source batch, CORAL target batch); draws / tdraws: forward
    keyword -> float [M, S, B, E] uniforms (dropped: encoder dropout, draw: random selection) for the source
    / target batch; sizes: int [M, S] (0: no step). Padding repeats a model's first row.
    """
    B, E = cfg.train.batch_size, data.available.shape[1]
    fusion = isinstance(template, FusionNet)
    streams = {"dropped": "encoder_dropout", "draw": "selection"}
    used = {"dropped": fusion and template.encoder_dropout > 0, "draw": fusion and template.selection == "random"}
    coral = cfg.adapt.coral_weight > 0
    M, S = len(rngs), max(math.ceil(len(tr) / B) for tr in data.train_rows)
    rows, picks, sizes = np.zeros((M, S, B), np.int64), np.zeros((M, S, B), np.int64), np.zeros((M, S), np.int64)
    draws = {k: torch.zeros(M, S, B, E) for k in streams if used[k]}
    tdraws = {k: torch.zeros(M, S, B, E) for k in draws} if coral else {}
    for m, (tr, tg, rng) in enumerate(zip(data.train_rows, targets, rngs)):
        rows[m], picks[m] = tr[0], tg[0]
        order = torch.randperm(len(tr), generator=rng["batches"]).numpy()
        j = 0
        for i in range(0, len(tr), B):
            b = order[i:i + B]
            if len(b) < 2:
                continue  # as train_model: covariance and batch statistics need two rows
            n = len(b)
            sizes[m, j], rows[m, j, :n] = n, tr[b]
            for k in draws:
                draws[k][m, j, :n] = torch.rand((n, E), generator=rng[streams[k]])
            if coral:
                picks[m, j, :n] = tg[torch.randint(len(tg), (n,), generator=rng["coral"]).numpy()]
                for k in tdraws:
                    tdraws[k][m, j, :n] = torch.rand((n, E), generator=rng[streams[k]])
            j += 1
    dev = data.device
    return {"rows": torch.from_numpy(rows).to(dev), "picks": torch.from_numpy(picks).to(dev), "sizes": sizes,
            "draws": {k: v.to(dev) for k, v in draws.items()}, "tdraws": {k: v.to(dev) for k, v in tdraws.items()},
            "coral": coral}


def make_loss(template, feed: list, cfg, precision: str):
    """vmapped (params, buffers, batch) -> loss [M]: the model's own loss (+ CORAL), as train_model computes it:
    one forward pass over its n source rows followed (CORAL) by its n target rows; precision: float32 | bfloat16."""
    weight = cfg.adapt.coral_weight

    def one(params, buffers, xs, available, draws, masks, targets):
        feed[:] = masks  # this forward's dropout masks, taken in call order
        out = training_forward(template, (training_weights(params, precision), buffers), xs, available, precision,
                               **draws)
        return source_loss(template, out, targets, len(targets["salience"]), weight)

    return torch.vmap(one, randomness="error")  # every draw is given: a random op inside would be a bug


def train_stacked(models: list, data: StackedInputs, targets: list, cfg, seeds: list, layer_seeds=None) -> list[dict]:
    """Train the models in place, all at once: model i on data.train_rows[i], CORAL against targets[i], its
    streams seeded from seeds[i] as fit_fold seeds them (the dropout layers' from layer_seeds[i] if given, else
    from init_model's layers stream). -> per model history {"train_loss": [per epoch]}.

    Host-side work per epoch (draws, batch plan); no device value is read back inside an epoch.
    """
    t = cfg.train
    rngs = [seed_everything(seed) for seed in seeds]
    dev = data.device
    # the dropout layers' streams on the device, as init_model seeds the global generator (of CPU and CUDA)
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
    for epoch, lr in enumerate(epoch_lrs(t)):
        plan = draw_plan(template, data, targets, cfg, rngs)
        sizes = plan["sizes"]
        # models whose j-th batch has this size step together; the others are masked
        calls = [(j, n) for j in range(sizes.shape[1]) for n in sorted(set(sizes[:, j][sizes[:, j] > 0].tolist()))]
        for j, n in calls:
            active = sizes[:, j] == n
            # each model's dropout masks from its layers stream, for its source rows and (CORAL) target rows
            masks = dropout_masks(rngs, active, spec, 2 * n if plan["coral"] else n, DTYPES[precision], dev)
            losses = step(loss_fn, params, buffers, opt, data, plan, j, n, masks, active, lr)
            sums[:, epoch] += losses * n  # masked models' losses weigh zero (step)
    for i, model in enumerate(models):
        model.load_state_dict({k: v[i].detach().clone() for k, v in {**params, **buffers}.items()})
    sums = sums.cpu()
    return [{"train_loss": [round(float(v) / len(tr), 6) for v in sums[i]]} for i, tr in enumerate(data.train_rows)]


def step(loss_fn, params, buffers, opt, data: StackedInputs, plan: dict, j: int, n: int, masks: list,
         active: np.ndarray, lr: float) -> torch.Tensor:
    """One optimiser step of every unmasked model on its j-th batch (its first n rows) -> losses [M], zero
    for masked models."""
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
