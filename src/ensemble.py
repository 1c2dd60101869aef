"""Ensembles of finished experiments: mean | fitted blend weights | LightGBM stacker, decoded fold-honestly.

    python src/ensemble.py MEMBER [MEMBER ...] [--input DIR] [--method lgbm|weights|mean] [--name NAME]
    MEMBER: an experiment id (exp042), a variant of it (exp042@smoke, exp042@set-1a2b3c4d, exp042@NAME),
            or one sub-run (exp010/wavlm, exp041@smoke/3)

Honesty: for outer fold k, every piece the ensemble fits (blend weights, stacker, boosting rounds, thresholds,
the choice of decoder, the blend share) sees the other folds' rows only, and the OOF score is that of fold-k
predictions made by those pieces. The lgbm decoder of fold k is fitted on inner OOF predictions of the other
folds, each inner fold predicted by a stacker fitted without fold k and without that inner fold. Test rows:
the lgbm fold stackers' outputs decoded per fold, then a vote; mean and weights use pieces fitted on all OOF rows.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python src/ensemble.py): src importable, under .venv
    import _bootstrap  # noqa: F401

import lightgbm as lgb
import numpy as np
import pandas as pd
import yaml
from rich.console import Console
from rich.table import Table

from src import data as data_mod
from src import decode
from src.decode import submission
from src.decode.metric import score, trim
from src.decode.scoring import score_test
from src.errors import UserError, cli
from src.io import write_csv, write_text
from src.labels import EMOTIONS, IS_BLEND, N_CONFIGS, SALIENCE
from src.run import results
from src.run.config import Decoder
from src.run.experiments import DEFAULT_INPUT, EXP_DIR, display_path, output_dir, resolve_run, submissions_root
from src.runlog import Log

ENSEMBLES = EXP_DIR / "ensembles"
METHODS = ("lgbm", "weights", "mean")
PROB = [f"prob_{e}" for e in EMOTIONS]
STACK_PREFIXES = ("prob_", "presence_", "salience_", "gate_")  # member columns the stacker reads
GRID = Decoder().grid  # threshold grid points per axis, the experiments' default
SEED = 0  # fold k uses SEED + k
EPS = 1e-6
# Sized for ~2.4k rows and 36 classes (~65 rows per class): shallow trees, strong L2, row/feature bagging.
STACKER = {"objective": "multiclass", "learning_rate": 0.1, "num_leaves": 4, "max_depth": 2,
           "min_data_in_leaf": 20, "lambda_l2": 10.0, "feature_fraction": 0.7, "bagging_fraction": 0.8,
           "bagging_freq": 1, "max_bin": 63, "verbose": -1, "deterministic": True, "force_row_wise": True,
           "num_threads": 1}
MAX_ROUNDS, EARLY_STOP = 300, 20  # rounds are chosen by inner CV on the training folds
PRIOR_TAUS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # grid of the stacker's starting model (fit_prior)
PRIOR_BIASES = (-1.0, -0.5, 0.0, 0.5, 1.0, 2.0)


# ---- members ------------------------------------------------------------------------------------------
def member_folder(spec: str, ds, input_arg) -> Path:
    """'exp042[@variant]' -> its output folder for the dataset; 'exp010[@variant]/wavlm' -> that sub-run's folder."""
    run, _, sub = spec.partition("/")
    exp_dir, variant = resolve_run(run)
    out = output_dir(exp_dir, ds.name, variant)
    flags = {None: "", "smoke": " --smoke"}.get(variant, f" --name {variant} (with its --set overrides)")
    rerun = f"bash run.sh {run.split('@')[0]}" + (f" --input {input_arg}" if input_arg else "") + flags
    if not (out / "oof.csv").is_file():
        raise UserError(f"member {spec}: no outputs for dataset '{ds.name}' ({out / 'oof.csv'} missing); run: {rerun}")
    if not sub:
        return out
    found = [p for p in sorted(out.glob(f"per_*/{sub}")) if (p / "oof.csv").is_file()]
    if not found:
        subs = sorted(p.name for p in out.glob("per_*/*") if (p / "oof.csv").is_file())
        raise UserError(f"member {spec}: {out.name} outputs of {run} have no sub-run '{sub}' "
                        f"(available: {', '.join(subs) or 'none; it is not a per-encoder experiment'})")
    return found[0]


def read_frame(path: Path, spec: str, ds_name: str, keys: np.ndarray, with_fold: bool) -> pd.DataFrame:
    """One member CSV, checked and joined on `filename` to the dataset's clip order."""
    try:
        frame = pd.read_csv(path, dtype={"filename": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"member {spec}: cannot parse {path} ({str(err).splitlines()[0]})") from None
    need = ["filename"] + (["fold"] if with_fold else []) + PROB
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise UserError(f"member {spec}: {path} lacks column(s) {', '.join(missing)}")
    names = frame["filename"].astype(str)
    absent, extra = sorted(set(keys) - set(names)), sorted(set(names) - set(keys))
    if absent or extra or names.duplicated().any():
        raise UserError(f"member {spec}: clips in {path.name} differ from dataset '{ds_name}' metadata: "
                        f"{len(absent)} missing (e.g. {absent[:2]}), {len(extra)} unexpected (e.g. {extra[:2]}), "
                        f"{int(names.duplicated().sum())} repeated; rerun the member on this dataset")
    frame = frame.set_index(names).loc[keys].reset_index(drop=True)
    numeric = [c for c in frame.columns if c == "fold" or c.startswith(STACK_PREFIXES)]
    try:
        values = frame[numeric].to_numpy(np.float64)
    except ValueError:
        raise UserError(f"member {spec}: {path} holds non-numeric values in {', '.join(numeric)}") from None
    if not np.isfinite(values).all():
        raise UserError(f"member {spec}: {path} holds NaN/inf values")
    return frame


def load_member(spec: str, ds, input_arg=None) -> dict:
    """{name, folder, oof (frame, dataset train order), test (frame, dataset test order), smoke}."""
    folder = member_folder(spec, ds, input_arg)
    if not (folder / "test.csv").is_file():
        raise UserError(f"member {spec}: {folder / 'test.csv'} missing; rerun: bash run.sh {spec.split('/')[0].split('@')[0]}")
    oof = read_frame(folder / "oof.csv", spec, ds.name, np.asarray(ds.train_files, dtype=str), with_fold=True)
    test = read_frame(folder / "test.csv", spec, ds.name, np.asarray(ds.test_files, dtype=str), with_fold=False)
    bad = np.flatnonzero(oof["fold"].to_numpy() != ds.folds)
    if len(bad):
        i = bad[0]
        raise UserError(f"member {spec}: folds differ from {ds.name}/train_metadata.csv for {len(bad)} clips "
                        f"(e.g. {ds.train_files[i]}: fold {oof['fold'][i]} vs {ds.folds[i]}); rerun the member")
    cols = [c for c in oof.columns if c.startswith(STACK_PREFIXES)]
    if missing := [c for c in cols if c not in test.columns]:
        raise UserError(f"member {spec}: {folder / 'test.csv'} lacks column(s) {', '.join(missing)} that oof.csv has")
    sub = folder.name if folder.parent.name.startswith("per_") else None
    record = results.RunRecord.read(folder.parent.parent if sub else folder)
    # the member's own honest OOF scores (a sub-run's from its run's record) and its submitted test labels,
    # scored by main() after the ensemble's own predictions are written
    decoded = results.read_decoded(folder, "test").set_index("filename").loc[np.asarray(ds.test_files, dtype=str)]
    return {"name": spec, "folder": folder, "oof": oof, "test": test, "columns": cols, "smoke": record.smoke,
            "figures": {"oof": record.sub_runs[sub]["oof"] if sub else record.oof},
            "test_pred": decoded["config"].to_numpy()}


def load_members(specs, ds, input_arg=None) -> list[dict]:
    names = [s.rstrip("/") for s in specs]
    if len(set(names)) != len(names):
        raise UserError(f"a member is listed twice: {', '.join(names)}")
    return [load_member(s, ds, input_arg) for s in names]


def stack_inputs(members, mean_prob: np.ndarray, mean_prob_test: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Stacker features: every member's prob/presence/salience/gate columns, plus the members' mean prob
    [N, 6] (trees cannot average across columns). Returns X float [N, F], X_test float [T, F], names [F]."""
    blocks = [m["oof"][m["columns"]].to_numpy(np.float64) for m in members]
    test_blocks = [m["test"][m["columns"]].to_numpy(np.float64) for m in members]
    names = [f"{m['name']}:{c}" for m in members for c in m["columns"]]
    if len(members) > 1:
        blocks, test_blocks, names = blocks + [mean_prob], test_blocks + [mean_prob_test], names + [f"mean:{c}" for c in PROB]
    return np.hstack(blocks), np.hstack(test_blocks), names


# ---- mean and fitted weights --------------------------------------------------------------------------
def fit_mixture_weights(probs: np.ndarray, target: np.ndarray, iterations: int = 500) -> np.ndarray:
    """Non-negative weights summing to one that minimise the cross-entropy to the salience target.

    probs: float [M, N, 6] members' emotion probabilities; target: float [N, 6] (SALIENCE of the labels).
    EM for mixture weights: every step stays on the simplex and never increases the loss; no scipy needed.
    """
    probs = np.clip(probs, EPS, None)
    probs = probs / probs.sum(-1, keepdims=True)
    w = np.full(len(probs), 1.0 / len(probs))
    for _ in range(iterations):
        share = w[:, None, None] * probs / np.einsum("m,mne->ne", w, probs)[None]  # [M, N, 6]
        new = np.einsum("ne,mne->m", target, share) / target.sum()
        if np.abs(new - w).max() < 1e-9:
            return new
        w = new
    return w


def fit_predict_blend(probs: np.ndarray, probs_test: np.ndarray, y, folds, fit_weights: bool) -> dict:
    """mean / weights: probs float [M, N, 6], probs_test [M, T, 6] -> honest OOF and test predictions.

    For outer fold k the weights and the thresholds are fitted on the other folds' rows only.
    """
    def fit(rows):
        w = fit_mixture_weights(probs[:, rows], SALIENCE[y[rows]]) if fit_weights else np.full(len(probs), 1 / len(probs))
        mixed = np.einsum("m,mne->ne", w, probs)
        return w, mixed, decode.fit_decoder({"prob": mixed[rows]}, y[rows], GRID, ())

    oof_prob, oof_pred, per_fold = np.empty(probs.shape[1:]), np.empty(len(y), dtype=int), []
    for k in np.unique(folds):
        inside = folds == k
        w, mixed, params = fit(~inside)
        oof_prob[inside] = mixed[inside]
        oof_pred[inside] = decode.apply_decoder({"prob": mixed[inside]}, params)
        per_fold.append({"fold": int(k), "weights": rounded(w), "name": "threshold", **params})
    w, _, params = fit(np.ones(len(y), dtype=bool))
    test_prob = np.einsum("m,mne->ne", w, probs_test)
    return {"oof_prob": oof_prob, "oof_pred": oof_pred, "test_prob": test_prob,
            "test_pred": decode.apply_decoder({"prob": test_prob}, params), "weights": rounded(w),
            "decoder": {"name": "threshold", **params, "per_fold": per_fold,
                        "note": "expected-score decoder not used: mean/weights give no configuration probabilities"}}


# ---- LightGBM stacker ---------------------------------------------------------------------------------
def prior_scores(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """probs float [M, n, 6] members, weights [M] -> float [n, 36]: sum_e SALIENCE[c, e] * log p_e of their blend."""
    return np.log(np.clip(np.einsum("m,mne->ne", weights, probs), EPS, None)) @ SALIENCE.T


def fit_prior(scores: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(tau, bias) of the configuration model logit_c = tau * scores_c + bias * [c is a blend], by grid on log-loss.

    The stacker boosts from this model instead of from class frequencies: with ~65 rows per configuration
    the trees cannot learn on their own that a 70/30 blend of a and b means p_a > p_b > 0.
    """
    best = None
    for tau in PRIOR_TAUS:
        for bias in PRIOR_BIASES:
            z = prior_logits(scores, tau, bias)
            loss = float((np.logaddexp.reduce(z, axis=1) - z[np.arange(len(y)), y]).mean())
            if best is None or loss < best[0]:
                best = (loss, float(tau), float(bias))
    return best[1], best[2]


def prior_logits(scores: np.ndarray, tau: float, bias: float) -> np.ndarray:
    return tau * scores + bias * IS_BLEND[None, :]


def softmax_configs(raw: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """raw float [n, C] logits of the modelled configurations -> float [n, 36]; the others get 0."""
    z = np.exp(raw - raw.max(1, keepdims=True))
    out = np.zeros((len(raw), N_CONFIGS))
    out[:, classes] = z / z.sum(1, keepdims=True)
    return out


def fit_start(probs: np.ndarray, y: np.ndarray):
    """The stacker's starting model on these rows: blend weights, then (tau, bias) by fit_prior.

    probs float [M, n, 6], y int [n] -> (logits(P) -> float [m, 36], fitted numbers)."""
    weights = fit_mixture_weights(probs, SALIENCE[y])  # weak members should not dilute the starting model
    tau, bias = fit_prior(prior_scores(probs, weights), y)
    return (lambda P: prior_logits(prior_scores(P, weights), tau, bias)), \
        {"prior_weights": rounded(weights), "tau": tau, "bias": bias}


def fit_stacker(X: np.ndarray, probs: np.ndarray, y: np.ndarray, folds: np.ndarray, seed: int):
    """One stacker on these rows: its starting model fitted, rounds chosen by a CV over their folds, then a
    refit on all of them.

    X float [n, F], probs float [M, n, 6] members' prob columns, y int [n]. Only configurations present in y
    are modelled. Returns (predict(X, probs) -> float [m, 36], fitted numbers, gain [F]).
    """
    classes = np.unique(y)
    if len(classes) < 2 or len(np.unique(folds)) < 2:
        raise UserError("lgbm stacker: a training split has fewer than 2 label configurations or 2 folds; "
                        "use --method mean or weights on this dataset")
    target = np.searchsorted(classes, y)
    start, fitted = fit_start(probs, y)
    init = lambda P: start(P)[:, classes]
    params = {**STACKER, "num_class": len(classes), "seed": seed}
    splits = [(np.flatnonzero(folds != j), np.flatnonzero(folds == j)) for j in np.unique(folds)]
    cv = lgb.cv(params, lgb.Dataset(X, target, init_score=init(probs), free_raw_data=False),
                num_boost_round=MAX_ROUNDS, folds=splits, callbacks=[lgb.early_stopping(EARLY_STOP, verbose=False)],
                return_cvbooster=True)
    rounds = int(cv["cvbooster"].best_iteration) or MAX_ROUNDS
    booster = lgb.train(params, lgb.Dataset(X, target, init_score=init(probs)), num_boost_round=rounds)
    predict = lambda A, P: softmax_configs(booster.predict(A, raw_score=True) + init(P), classes)
    return predict, {"rounds": rounds, **fitted}, booster.feature_importance("gain")


def inner_oof(X: np.ndarray, probs: np.ndarray, y: np.ndarray, folds: np.ndarray, seed: int) -> np.ndarray:
    """Each of these folds predicted by a stacker fitted on the others only: float [n, 36].

    Where a single other fold is left, rounds cannot be chosen by CV, so its starting model alone predicts."""
    out = np.zeros((len(y), N_CONFIGS))
    for j in np.unique(folds):
        rest, inside = folds != j, folds == j
        if len(np.unique(folds[rest])) >= 2:
            predict = fit_stacker(X[rest], probs[:, rest], y[rest], folds[rest], seed)[0]
            out[inside] = predict(X[inside], probs[:, inside])
        else:
            classes = np.unique(y[rest])
            start, _ = fit_start(probs[:, rest], y[rest])
            out[inside] = softmax_configs(start(probs[:, inside])[:, classes], classes)
    return out


def stack(X: np.ndarray, probs: np.ndarray, y: np.ndarray, folds: np.ndarray, X_test: np.ndarray,
          probs_test: np.ndarray, seed: int = SEED) -> dict:
    """Cross-fitted stacker. X float [N, F], probs float [M, N, 6] members' prob columns, y int [N], folds
    int [N], X_test float [T, F], probs_test [M, T, 6] -> oof float [N, 36] (fold k from the stacker trained
    on the other folds), test float [T, 36] (mean over the fold stackers), test_folds float [K, T, 36] (each
    fold stacker's), inner {k: float [N, 36]} (each other fold j predicted by a stacker fitted without fold k
    and without fold j; fold k's rows are NaN), fitted {k: rounds, prior weights, tau, bias}, gain float [F]."""
    oof, test_folds = np.zeros((len(y), N_CONFIGS)), []
    inner, fitted, gain = {}, {}, np.zeros(X.shape[1])
    for k in np.unique(folds):
        rows = folds != k
        predict, fitted[int(k)], g = fit_stacker(X[rows], probs[:, rows], y[rows], folds[rows], seed + int(k))
        oof[~rows] = predict(X[~rows], probs[:, ~rows])
        test_folds.append(predict(X_test, probs_test))
        inner[int(k)] = np.full((len(y), N_CONFIGS), np.nan)
        inner[int(k)][rows] = inner_oof(X[rows], probs[:, rows], y[rows], folds[rows], seed + int(k))
        gain += g
    test_folds = np.stack(test_folds)
    return {"oof": oof, "test": test_folds.mean(0), "test_folds": test_folds, "inner": inner, "fitted": fitted,
            "gain": gain}


def decode_configs(config_probs: np.ndarray, params: dict) -> np.ndarray:
    """config_probs float [N, 36] -> int [N] with a fitted decoder (expected-score or threshold)."""
    if params["name"] == "expected":
        return decode.decode_expected(config_probs, params["blend_share"])
    return decode.decode_thresholds(config_probs @ SALIENCE, params["alpha"], params["beta"])


def choose_decoder(config_probs: np.ndarray, y: np.ndarray, folds: np.ndarray) -> dict:
    """Pick expected-score or threshold decoding on these rows; returns the winner fitted on all of them.

    The thresholds are compared by their cross-fitted score over these folds, so a decoder with two
    fitted numbers does not win merely by fitting; ties go to the expected-score decoder (nothing to fit).
    """
    emotion = config_probs @ SALIENCE  # marginal: the expected salience vector, like a salience head
    thr_pred, _, thr = decode.cross_fit({"prob": emotion}, y, folds, GRID, ())
    share = float(IS_BLEND[y].mean())
    scores = {"expected": score(decode.decode_expected(config_probs, share), y)["score"],
              "threshold": score(thr_pred, y)["score"]}
    name = max(scores, key=scores.get)
    return {"name": name, "blend_share": round(share, 6), "alpha": thr["alpha"], "beta": thr["beta"],
            "scores": {k: round(v, 6) for k, v in scores.items()}}


def fit_predict_lgbm(X: np.ndarray, probs: np.ndarray, y: np.ndarray, folds: np.ndarray, X_test: np.ndarray,
                     probs_test: np.ndarray, seed: int = SEED) -> dict:
    """The stacker plus its decoder, nested: fold k is decoded by a decoder chosen and fitted on the inner
    OOF of the other folds (stackers that never saw fold k). Test, as the OOF rows were decoded: fold k's
    stacker's test output with fold k's decoder, then a vote per clip (ties: the decoder chosen on the whole
    stacked OOF, applied to the mean of the fold stackers). Shapes as in `stack`."""
    stacked = stack(X, probs, y, folds, X_test, probs_test, seed)
    oof_pred, per_fold = np.empty(len(y), dtype=int), []
    for k in np.unique(folds):
        inside = folds == k
        params = choose_decoder(stacked["inner"][int(k)][~inside], y[~inside], folds[~inside])
        oof_pred[inside] = decode_configs(stacked["oof"][inside], params)
        per_fold.append({"fold": int(k), **stacked["fitted"][int(k)], **params})
    params = choose_decoder(stacked["oof"], y, folds)
    test_pred = decode.vote([decode_configs(t, p) for t, p in zip(stacked["test_folds"], per_fold)],
                            decode_configs(stacked["test"], params))
    return {"oof_config": stacked["oof"], "test_config": stacked["test"], "gain": stacked["gain"],
            "oof_prob": stacked["oof"] @ SALIENCE, "test_prob": stacked["test"] @ SALIENCE,
            "oof_pred": oof_pred, "test_pred": test_pred,
            "decoder": {**params, "per_fold": per_fold, "test_scheme": "vote"}}


# ---- the whole ensemble -------------------------------------------------------------------------------
def build(members: list[dict], ds, method: str) -> dict:
    """Fit the ensemble (no files written): predictions, decoder record, weights, OOF figures."""
    y, folds = ds.labels, ds.folds
    probs = np.stack([m["oof"][PROB].to_numpy(np.float64) for m in members])  # [M, N, 6]
    probs_test = np.stack([m["test"][PROB].to_numpy(np.float64) for m in members])  # [M, T, 6]
    if method == "lgbm":
        X, X_test, names = stack_inputs(members, probs.mean(0), probs_test.mean(0))
        res = fit_predict_lgbm(X, probs, y, folds, X_test, probs_test)
        owner = np.array([n.split(":", 1)[0] for n in names], dtype=object)
        total = res["gain"].sum() or 1.0
        # a stacker has no blend weights; each member's share of the split gain says what it relies on
        res["weights"] = {o: round(float(res["gain"][owner == o].sum() / total), 6) for o in dict.fromkeys(owner)}
        res["n_features"] = len(names)
    else:
        res = fit_predict_blend(probs, probs_test, y, folds, fit_weights=method == "weights")
        res["weights"] = dict(zip([m["name"] for m in members], res["weights"]))
    res["oof"] = trim(score(res["oof_pred"], y))
    res["folds"] = decode.fold_scores(res["oof_pred"], y, folds)
    return res


def default_name(specs, method: str) -> str:
    return "ens_" + "+".join(s.rstrip("/").replace("/", "-") for s in specs) + f"_{method}"


def parse_args(argv):
    p = argparse.ArgumentParser(description="Ensemble finished experiments into one submission.")
    p.add_argument("members", nargs="+", help="experiment ids (exp042), variants (exp042@smoke) or sub-runs (exp010/wavlm)")
    p.add_argument("--input", type=Path, default=None, help="dataset folder (default: input/synthetic)")
    p.add_argument("--method", choices=METHODS, default="lgbm")
    p.add_argument("--name", default=None, help="submission and output name (default: ens_<members>_<method>)")
    p.add_argument("--quiet", action="store_true", help="no console output (log.txt still written)")
    return p.parse_args(argv)


def rounded(w) -> list[float]:
    return [round(float(v), 6) for v in w]


def show(console: Console, name: str, ds, members: list[dict], figures: list[dict], res: dict) -> None:
    has_test = "test" in res
    table = Table(title=f"{name} on {ds.name} ({ds.n_train} OOF clips, {len(ds.fold_ids)} folds)")
    cols = ["OOF pres.", "OOF sal.", "OOF score"] + (["test pres.", "test sal.", "test score"] if has_test else [])
    table.add_column("", no_wrap=True)
    for c in cols:
        table.add_column(c, justify="right")
    fmt = lambda m: [f"{m[k]:.4f}" for k in ("acc_presence", "acc_salience", "score")]
    for m, f in zip(members, figures):
        table.add_row(m["name"] + (" (smoke)" if m["smoke"] else ""), *fmt(f["oof"]), *(fmt(f["test"]) if has_test else []))
    table.add_row(f"[bold]{res['method']} ensemble[/bold]", *fmt(res["oof"]), *(fmt(res["test"]) if has_test else []))
    console.print(table)


def describe_decoder(dec: dict) -> str:
    per_fold = ", ".join(f"{d['fold']}:{d['name']}" for d in dec["per_fold"])
    what = (f"expected-score (blend share {dec['blend_share']})" if dec["name"] == "expected"
            else f"threshold (alpha {dec['alpha']}, beta {dec['beta']})")
    cand = f"; OOF candidates {dec['scores']}" if "scores" in dec else ""
    return f"decoder for test: {what}{cand}; OOF folds decoded by their own nested fits ({per_fold})"


@cli
def main(argv=None) -> Path:
    started = time.time()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    name = args.name or default_name(args.members, args.method)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+=@-]*", name):  # '@' from variant members
        raise UserError(f"--name '{name}': use letters, digits and . _ + = - @ only")
    log = Log(None, quiet=args.quiet)  # lines written to log.txt at the end, with the other outputs
    ds = data_mod.load_labels(args.input or DEFAULT_INPUT)
    members = load_members(args.members, ds, args.input)
    log(f"[bold]{name}[/bold]: {args.method} over {', '.join(m['name'] for m in members)} on {ds.name} "
        f"({ds.n_train} OOF clips in {len(ds.fold_ids)} folds, {len(ds.test_files)} test clips)")
    if any(m["smoke"] for m in members):
        log("note: smoke-run members: " + ", ".join(m["name"] for m in members if m["smoke"]))
    res = build(members, ds, args.method)
    res["method"] = args.method
    figures = [m["figures"] for m in members]

    out = output_dir(ENSEMBLES / name, ds.name)
    # the submission first: it validates before writing anything
    paths = submission.write(submissions_root() / ds.name, name, ds.test_files, res["test_pred"], ds.test_files,
                             ds.template_keys)
    write_csv(out / "oof.csv", data_mod.prediction_frame(ds.train_files, res["oof_prob"], folds=ds.folds))
    write_csv(out / "test.csv", data_mod.prediction_frame(ds.test_files, res["test_prob"]))
    results.write_decoded(out, ds.train_files, ds.folds, res["oof_pred"], ds.test_files, res["test_pred"])
    # only now, after test.csv and the submission are written
    tested = score_test(ds.root, ds.test_files, [res["test_pred"]] + [m["test_pred"] for m in members])
    if tested is not None:
        res["test"] = tested[0]
        for f, t in zip(figures, tested[1:]):
            f["test"] = t
    results.RunRecord(
        kind="ensemble", oof=res["oof"], folds=res["folds"], decoder=res["decoder"], test=res.get("test"),
        members=[{"name": m["name"], "path": display_path(m["folder"]), "smoke": m["smoke"], **f}
                 for m, f in zip(members, figures)],
        weights=res["weights"], method=args.method, runtime_s=round(time.time() - started, 1),
        smoke=any(m["smoke"] for m in members)).write(out)
    resolved = {"ensemble": name, "method": args.method, "input_dir": str(ds.root.resolve()), "dataset": ds.name,
                "members": [{"name": m["name"], "path": display_path(m["folder"])} for m in members], "seed": SEED,
                "decoder_grid": GRID, **({"stacker": {**STACKER, "max_rounds": MAX_ROUNDS, "early_stopping": EARLY_STOP}}
                                         if args.method == "lgbm" else {}), "command": " ".join(sys.argv)}
    write_text(out / "config.resolved.yaml", yaml.safe_dump(resolved, sort_keys=False))
    show(log.console, name, ds, members, figures, res)
    for label, f in [(m["name"], f) for m, f in zip(members, figures)] + [(f"{args.method} ensemble", res)]:
        log(f"{label}: OOF {f['oof']['score']:.4f}" + (f", test {f['test']['score']:.4f}" if "test" in f else ""), file_only=True)
    log(describe_decoder(res["decoder"]))
    log(f"weights: {res['weights']}" + (" (share of stacker split gain)" if args.method == "lgbm" else ""))
    log(f"wrote {display_path(out)} and {display_path(paths['json'])} in {time.time() - started:.1f}s")
    write_text(out / "log.txt", "\n".join(log.lines) + "\n")
    return out


if __name__ == "__main__":
    main()
