"""Probabilities -> labels: the organisers' threshold decoder, its vectorised grid search, and honest fitting.

Everything here is fitted on OOF rows only; `cross_fit` refits per fold on the other folds so the
reported OOF score comes from decodings whose thresholds never saw the rows they are scored on.
"""
from __future__ import annotations

import numpy as np

from src.decode.metric import score
from src.labels import CONFIG_INDEX, EMOTIONS, IS_BLEND, NEUTRAL, PRESENCE_OK, SALIENCE, SALIENCE_OK

N_EMO = len(EMOTIONS)


def _blend_table() -> np.ndarray:
    """BLEND[a, b, r]: configuration of emotions a, b; r=0 is 50/50, r=1 is a at 70 and b at 30."""
    table = np.full((N_EMO, N_EMO, 2), -1, dtype=int)
    for a, ea in enumerate(EMOTIONS):
        for b, eb in enumerate(EMOTIONS):
            for r, (sa, sb) in enumerate(((50, 50), (70, 30))):
                table[a, b, r] = CONFIG_INDEX.get(frozenset(((ea, sa), (eb, sb))), -1)
    return table


BLEND = _blend_table()


def threshold_grid(points: int) -> np.ndarray:
    """The organisers' grid, 0.05..0.95; points=20 reproduces theirs, more points refine it."""
    return np.round(np.linspace(0.05, 0.95, points), 6)


def candidates(probs: np.ndarray):
    """The three decodings a clip can get: (single, 50/50 blend, 70/30 blend), each int [N]; and p1, p2, blendable."""
    order = np.argsort(-probs, axis=1, kind="stable")
    top1, top2 = order[:, 0], order[:, 1]
    rows = np.arange(len(probs))
    p1, p2 = probs[rows, top1], probs[rows, top2]
    blendable = (top1 != NEUTRAL) & (top2 != NEUTRAL)
    half = np.where(blendable, BLEND[top1, top2, 0], top1)
    dominant = np.where(blendable, BLEND[top1, top2, 1], top1)
    return (top1, half, dominant), p1, p2, blendable


def decode_thresholds(probs: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """probs: float [N, 6] in EMOTIONS order -> configuration indices int [N]."""
    (single, half, dominant), p1, p2, blendable = candidates(probs)
    keep = blendable & (p2 >= alpha)
    return np.where(keep, np.where(p1 - p2 <= beta, half, dominant), single)


def grid_counts(probs: np.ndarray, true: np.ndarray, alphas: np.ndarray, betas: np.ndarray):
    """Correct-presence and correct-salience counts for every (alpha, beta), int [A, B] each.

    One matrix product per term instead of re-decoding the set per grid point; counts are exact integers.
    """
    (single, half, dominant), p1, p2, blendable = candidates(probs)
    keep = (blendable[None, :] & (p2[None, :] >= alphas[:, None])).astype(np.float64)  # [A, N]
    is_half = (p1 - p2)[None, :] <= betas[:, None]  # [B, N]
    out = []
    for ok in (PRESENCE_OK, SALIENCE_OK):
        c_single, c_half, c_dom = (ok[c, true].astype(np.float64) for c in (single, half, dominant))
        blend_term = np.where(is_half, c_half, c_dom)  # [B, N]
        counts = keep @ blend_term.T + (1 - keep) @ np.broadcast_to(c_single, blend_term.shape).T
        out.append(np.rint(counts).astype(np.int64))
    return out


def fit_thresholds(probs: np.ndarray, true: np.ndarray, points: int = 20):
    """Grid search of (alpha, beta) maximising the score; ties go to the first grid point (alpha-major)."""
    grid = threshold_grid(points)
    pres, sal = grid_counts(probs, true, grid, grid)
    n, n_blend = len(true), int(IS_BLEND[true].sum())
    scores = (pres / n + (sal / n_blend if n_blend else 0.0)) / 2
    a, b = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return float(grid[a]), float(grid[b]), float(scores[a, b])


def combine_heads(presence: np.ndarray, salience: np.ndarray, weight: float) -> np.ndarray:
    """Probability-level fusion of the two heads: weight * presence (renormalised) + (1 - weight) * salience."""
    presence = presence / np.clip(presence.sum(1, keepdims=True), 1e-8, None)
    return weight * presence + (1 - weight) * salience


def probabilities(parts: dict, weight: float | None) -> np.ndarray:
    """The decoder's input: `prob`, or the two heads fused with `weight` when the model has both."""
    if weight is None:
        return parts["prob"]
    return combine_heads(parts["presence"], parts["salience"], weight)


def fit_decoder(parts: dict, true: np.ndarray, points: int, head_weights) -> dict:
    """Fit alpha, beta (and the head weight when the parts carry presence and salience) on these rows."""
    weights = list(head_weights) if "presence" in parts else [None]
    best = None
    for w in weights:
        alpha, beta, s = fit_thresholds(probabilities(parts, w), true, points)
        if best is None or s > best["fit_score"]:
            best = {"alpha": alpha, "beta": beta, "head_weight": w, "fit_score": s}
    return best


def apply_decoder(parts: dict, params: dict) -> np.ndarray:
    """Decode with fitted parameters -> configuration indices int [N]."""
    return decode_thresholds(probabilities(parts, params["head_weight"]), params["alpha"], params["beta"])


def take(parts: dict, rows) -> dict:
    return {k: v[rows] for k, v in parts.items()}


def cross_fit(parts: dict, true: np.ndarray, folds: np.ndarray, points: int, head_weights, in_sample: bool = False):
    """Honest OOF decoding: fold k is decoded with parameters fitted on the other folds' OOF rows.

    in_sample=True fits fold k's parameters on fold k's own rows instead: the organisers' optimistic protocol.
    Returns (pred int [N], per-fold parameter list, parameters fitted on all rows for the test set).
    """
    pred = np.empty(len(true), dtype=int)
    per_fold = []
    for k in np.unique(folds):
        inside = folds == k
        fit_rows = inside if in_sample else ~inside
        params = fit_decoder(take(parts, fit_rows), true[fit_rows], points, head_weights)
        pred[inside] = apply_decoder(take(parts, inside), params)
        per_fold.append({"fold": int(k), **params})
    return pred, per_fold, fit_decoder(parts, true, points, head_weights)


def nearest(prob: np.ndarray) -> np.ndarray:
    """The configuration whose salience vector is closest to each probability vector: float [N, 6] -> int [N]."""
    return np.argmin(((prob[:, None, :] - SALIENCE[None]) ** 2).sum(-1), 1)
EPOCHS = "epochs_"  # parts holding a prediction after every epoch: float [N, n_epochs, ...]


def at_epoch(parts: dict, epoch: int, rows=slice(None)) -> dict:
    """The per-epoch parts at one epoch (0-based) -> ordinary parts [len(rows), ...]."""
    return {p[len(EPOCHS):]: v[rows, epoch] for p, v in parts.items() if p.startswith(EPOCHS)}


def select_epochs(parts: dict, true: np.ndarray, folds: np.ndarray, points: int, head_weights, in_sample: bool):
    """Per fold, the epoch and decoder with the best score (train.epoch_selection: valid_fold_score).

    parts: epochs_<p> float [N, n_epochs, ...]. Fold k's epoch and thresholds are fitted on fold k's own rows
    (in_sample, as the organisers did) or on the other folds' rows (honest). Returns (parts at each row's
    chosen epoch, pred int [N], per-fold records with the 1-based epoch).
    """
    n_epochs = oof_epochs(parts)
    chosen = {p: np.empty_like(v) for p, v in at_epoch(parts, 0).items()}
    pred, per_fold = np.empty(len(true), dtype=int), []
    for k in np.unique(folds):
        inside = folds == k
        fit_rows = inside if in_sample else ~inside
        fits = [fit_decoder(at_epoch(parts, e, fit_rows), true[fit_rows], points, head_weights) for e in range(n_epochs)]
        best = int(np.argmax([f["fit_score"] for f in fits]))  # the earliest of equal epochs
        for p, v in at_epoch(parts, best, inside).items():
            chosen[p][inside] = v
        pred[inside] = apply_decoder(at_epoch(parts, best, inside), fits[best])
        per_fold.append({"fold": int(k), "epoch": best + 1, **fits[best]})
    return chosen, pred, per_fold


def protocol_summary(pred: np.ndarray, true: np.ndarray, folds: np.ndarray, per_fold: list) -> dict:
    """OOF figures plus the per-fold mean and std (population) of each figure, as the organisers report them."""
    scores = [{**f, **s} for f, s in zip(per_fold, fold_scores(pred, true, folds))]
    out = {"oof": {k: round(float(v), 6) for k, v in score(pred, true).items()}, "folds": scores}
    for key in ("acc_presence", "acc_salience", "score"):
        values = [s[key] for s in scores]
        out[f"fold_{key}_mean"], out[f"fold_{key}_std"] = round(float(np.mean(values)), 6), round(float(np.std(values)), 6)
    return out


PROTOCOLS = {"organisers": True, "ours": False}  # name -> in_sample


def fit_oof(oof: dict, test: dict, true: np.ndarray, folds: np.ndarray, dc):
    """Decode OOF rows as the config says; returns (oof parts, test parts, pred [N], per-fold, test params, extra).

    Default (decoder.fit: cross_fit, no per-epoch parts): `cross_fit`, extra = {}. With decoder.fit:
    per_fold_in_sample or per-epoch parts (train.epoch_selection: valid_fold_score), both protocols are
    scored and extra = {"protocols": {"organisers": .., "ours": ..}}; the config's one gives the returned
    predictions. The test set gets the epoch and parameters that are best on all OOF rows (no test label read).
    """
    per_epoch = any(p.startswith(EPOCHS) for p in oof)
    if not per_epoch and dc.fit == "cross_fit":
        pred, per_fold, params = cross_fit(oof, true, folds, dc.grid, dc.head_weights)
        return oof, test, pred, per_fold, params, {}
    runs = {}
    for name, in_sample in PROTOCOLS.items():
        if per_epoch:
            runs[name] = select_epochs(oof, true, folds, dc.grid, dc.head_weights, in_sample)
        else:
            runs[name] = (oof,) + cross_fit(oof, true, folds, dc.grid, dc.head_weights, in_sample)[:2]
    if per_epoch:
        fits = [fit_decoder(at_epoch(oof, e), true, dc.grid, dc.head_weights) for e in range(oof_epochs(oof))]
        best = int(np.argmax([f["fit_score"] for f in fits]))
        params = {"epoch": best + 1, **fits[best]}
        keep = lambda parts: {p: v for p, v in parts.items() if not p.startswith(EPOCHS)}
        test = {**keep(test), **at_epoch(test, best)}
    else:
        params = fit_decoder(oof, true, dc.grid, dc.head_weights)
    chosen, pred, per_fold = runs["organisers" if dc.fit == "per_fold_in_sample" else "ours"]
    oof = {**{p: v for p, v in oof.items() if not p.startswith(EPOCHS)}, **chosen}
    protocols = {name: protocol_summary(p, true, folds, f) for name, (_, p, f) in runs.items()}
    return oof, test, pred, per_fold, params, {"protocols": protocols}


def oof_epochs(parts: dict) -> int:
    return next(v for p, v in parts.items() if p.startswith(EPOCHS)).shape[1]


def describe_protocols(protocols: dict) -> str:
    """One line per protocol: per-fold mean +- std of ACC_presence and ACC_salience, and the OOF score."""
    lines = []
    for name, m in protocols.items():
        what = "best epoch and thresholds on each fold's own rows" if PROTOCOLS[name] else "fitted on the other folds"
        lines.append(f"{name} protocol ({what}): ACC_presence {m['fold_acc_presence_mean']:.3f} +- "
                     f"{m['fold_acc_presence_std']:.3f}, ACC_salience {m['fold_acc_salience_mean']:.3f} +- "
                     f"{m['fold_acc_salience_std']:.3f} over folds; OOF score {m['oof']['score']:.4f}")
    return "\n".join(lines)


def fold_scores(pred: np.ndarray, true: np.ndarray, folds: np.ndarray) -> list[dict]:
    return [{"fold": int(k), **score(pred[folds == k], true[folds == k])} for k in np.unique(folds)]


def decode_expected(config_probs: np.ndarray, blend_share: float) -> np.ndarray:
    """Per clip, the configuration with the highest expected contribution to the score -> int [N].

    config_probs: float [N, 36] over CONFIGS; blend_share: N_blend / N expected among the scored clips.
    A clip adds 0.5 * [emotion set right] / N + 0.5 * [blend and exact ratio right] / N_blend, so, in units
    of 0.5 / N, choosing c gains P(true set == set of c) + P(true == c) / blend_share when c is a blend.
    With N_blend taken as fixed the total is a sum over clips, so the per-clip argmax is the optimum.
    """
    probs = np.asarray(config_probs, dtype=np.float64)
    gain = probs @ PRESENCE_OK.T.astype(np.float64)  # [N, 36]: P(set right) for each choice
    if blend_share > 0:  # no true blends: the official scorer gives 0 salience credit
        gain = gain + probs * IS_BLEND[None, :] / blend_share
    return np.argmax(gain, axis=1)


def decode_test(fold_parts: dict, params: dict, per_fold: list[dict], scheme: str) -> np.ndarray:
    """Test rows decoded the way the OOF rows were -> configuration indices int [N].

    fold_parts: arrays [K, N, ...], one slice per fold model (mean over seeds), in per_fold's fold order.
    vote: slice k is decoded with the parameters fitted without fold k (its OOF rows' decoder, fed the same
    kind of input: one fold model's output, not the flatter mean of K), then a vote per clip; ties go to the
    mean scheme's decoding when it is among them, else to the lowest configuration index.
    mean: the mean over folds decoded with the parameters fitted on all OOF rows.
    """
    mean_pred = apply_decoder({k: v.mean(0) for k, v in fold_parts.items()}, params)
    if scheme == "mean":
        return mean_pred
    if scheme != "vote":
        raise ValueError(f"decoder.test_scheme: unknown scheme {scheme!r}")
    n_folds = len(per_fold)
    if len(next(iter(fold_parts.values()))) != n_folds:
        raise ValueError(f"decode_test: {len(next(iter(fold_parts.values())))} fold slices for {n_folds} folds")
    return vote([apply_decoder({name: v[k] for name, v in fold_parts.items()}, fold_params)
                 for k, fold_params in enumerate(per_fold)], mean_pred)


def vote(preds: list[np.ndarray], tie_break: np.ndarray) -> np.ndarray:
    """Per clip the configuration most fold decoders chose: preds [K] of int [N] -> int [N]; ties go to
    tie_break's configuration when it is among them, else to the lowest configuration index."""
    votes = np.zeros((len(tie_break), len(IS_BLEND)))
    for pred in preds:
        votes[np.arange(len(pred)), pred] += 1
    votes[np.arange(len(tie_break)), tie_break] += 0.5  # less than one vote: only breaks ties
    return np.argmax(votes, axis=1)
