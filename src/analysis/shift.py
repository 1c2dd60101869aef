"""Shift report: adversarial validation per encoder (can a classifier tell training clips from test clips?).

    python -m src.analysis.shift [--input DIR] [--encoders a,b]      (bash run.sh shift ...)

For each encoder a LightGBM classifier learns "test clip or training clip" from that encoder's features;
its out-of-fold ROC AUC says how far the test set moved (0.5: indistinguishable). Test clips are new
actors, and a classifier can partly recognise actors, so an AUC above 0.5 can come from actor novelty
alone. The same procedure is therefore run on a null split, some training actors posing as the test set
(as many as the test set has, their clips grouped across folds exactly as the test clips are), and an
encoder counts as shifted when its AUC exceeds that null AUC by FLAG_MARGIN. Cross-validation keeps every
training actor inside one fold; test clips are grouped by actor when the test metadata names them (column
`actor`), otherwise spread clip by clip. With test actors known, the same out-of-fold scores give one AUC
per test actor against all training clips: which actors were recorded differently. An encoder wider than
MAX_WIDTH is first standardised and projected onto MAX_WIDTH fixed Gaussian directions (train and test rows
alike, no label read): distances survive such a projection, and the report stays quick at the real widths
(thousands of features per encoder).

Outputs (atomic): <output root>/shift/output/<dataset>/shift.csv (one row per encoder) and
shift_actors.csv (one row per encoder and test actor, when test actors are known).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.random_projection import GaussianRandomProjection

from src import data as data_mod
from src.errors import UserError, cli
from src.io import write_csv
from src.run.experiments import DEFAULT_INPUT, display_path, output_root

# Small and fixed: the report must be quick and identical on every machine (one thread, deterministic).
PARAMS = dict(n_estimators=100, learning_rate=0.1, num_leaves=15, min_child_samples=10, colsample_bytree=0.5,
              max_bin=63, deterministic=True, force_row_wise=True, num_threads=1, verbose=-1)
N_SPLITS = 5
# An AUC this far above the null split's counts as a shift. On the suite's worlds (docs/suite.md) the
# null AUC lies in 0.45-0.60 and unshifted encoders stay within 0.10 of it; affine and noise shifts reach 1.0.
FLAG_MARGIN = 0.15
MAX_WIDTH = 128  # wider encoders are compared on a random projection to this many features


def test_actors_of(ds) -> np.ndarray | None:
    """str [N_test]: the `actor` column of test_metadata.csv in ds.test_files order, or None without it."""
    path = Path(ds.root) / "test_metadata.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "actor" not in frame.columns:
        return None
    if (frame["actor"].str.strip() == "").any():
        raise UserError(f"{path}: column 'actor' is blank for some clips")
    return frame.set_index("filename")["actor"].loc[list(ds.test_files)].to_numpy()


def cv_folds(groups: np.ndarray, is_test: np.ndarray, group_test: bool, n_splits: int, rng) -> np.ndarray:
    """int [N]: fold per row; training rows by actor, test rows by actor (group_test) or clip by clip."""
    fold = np.empty(len(groups), int)
    for side in (False, True):
        rows = np.flatnonzero(is_test == side)
        keys = groups[rows] if (group_test or not side) else rows.astype(str)
        order = rng.permutation(np.unique(keys))
        fold_of = {k: i % n_splits for i, k in enumerate(order)}
        fold[rows] = [fold_of[k] for k in keys]
    return fold


def oof_scores(X: np.ndarray, y: np.ndarray, fold: np.ndarray, seed: int) -> np.ndarray:
    """float [N]: out-of-fold probability of being a test clip. X: float [N, D]; y: 0/1 [N]."""
    out = np.empty(len(y))
    for k in np.unique(fold):
        inside = fold == k
        model = lgb.LGBMClassifier(**PARAMS, random_state=seed + int(k))
        model.fit(X[~inside], y[~inside])
        out[inside] = model.predict_proba(X[inside])[:, 1]
    return out


def null_split(train_actors: np.ndarray, n_test: int, n_test_actors: int | None, rng) -> np.ndarray:
    """bool [N_train]: training clips of the actors that pose as the test set in the null split."""
    actors = np.unique(train_actors)
    per_actor = len(train_actors) / len(actors)
    n = n_test_actors if n_test_actors is not None else int(round(n_test / per_actor))
    n = min(max(n, 2), len(actors) // 2)
    return np.isin(train_actors, rng.choice(actors, n, replace=False))


def reduced(X: np.ndarray, present: np.ndarray, seed: int) -> np.ndarray:
    """X itself up to MAX_WIDTH columns; wider, its standardised rows projected onto MAX_WIDTH fixed directions."""
    if X.shape[1] <= MAX_WIDTH:
        return X
    ok = np.asarray(X[present], np.float64)
    mean, std = ok.mean(0), ok.std(0)
    out = np.zeros((len(X), MAX_WIDTH), np.float32)
    project = GaussianRandomProjection(MAX_WIDTH, random_state=seed).fit(ok)
    out[present] = project.transform((ok - mean) / np.where(std > 0, std, 1.0))
    return out


def report(ds, test_actors: np.ndarray | None = None, encoders=None, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per encoder, per encoder and test actor) adversarial-validation tables of a loaded Dataset.

    test_actors: str [N_test] in ds.test_files order, or None (test clips then spread clip by clip).
    Per encoder: encoder, n_train, n_test, auc, auc_null, excess (= auc - auc_null), shifted.
    Per actor: encoder, actor, n_test, auc (that actor's test clips against all training clips); empty
    without test_actors.
    """
    encoders = list(ds.encoders if encoders is None else encoders)
    n_train_actors = len(np.unique(ds.actors))
    n_test_actors = None if test_actors is None else len(np.unique(test_actors))
    if len(ds.test_files) == 0:
        raise UserError(f"{ds.root}: no test clips, nothing to compare the training clips with")
    if n_train_actors < 4:
        raise UserError(f"{ds.root}: {n_train_actors} training actors; the null split needs at least 4")
    n_splits = min(N_SPLITS, n_train_actors // 2, n_test_actors or N_SPLITS)
    if n_splits < 2:
        raise UserError(f"{ds.root}: one test actor; cross-validation needs at least 2 (or no 'actor' column)")
    rows, per_actor = [], []
    for enc in encoders:
        if enc not in ds.features:
            raise UserError(f"encoder '{enc}': not in {ds.root} (has: {', '.join(ds.encoders)})")
        rng = np.random.default_rng(seed)  # the same splits for every encoder
        present = ds.present[enc]
        features = reduced(ds.features[enc], present, seed)
        X_train, X_test = features[: ds.n_train], features[ds.n_train:]
        tr_ok, te_ok = present[: ds.n_train], present[ds.n_train:]
        if te_ok.sum() < n_splits or len(np.unique(ds.actors[tr_ok])) < 4:
            raise UserError(f"encoder '{enc}': present in {int(te_ok.sum())} test clips and for "
                            f"{len(np.unique(ds.actors[tr_ok]))} training actors; too few to compare")
        test_groups = test_actors if test_actors is not None else np.asarray(ds.test_files)
        groups = np.concatenate([ds.actors[tr_ok], test_groups[te_ok]])
        y = np.r_[np.zeros(tr_ok.sum(), int), np.ones(te_ok.sum(), int)]
        X = np.concatenate([X_train[tr_ok], X_test[te_ok]])
        scores = oof_scores(X, y, cv_folds(groups, y == 1, test_actors is not None, n_splits, rng), seed)
        auc = roc_auc_score(y, scores)

        posing = null_split(ds.actors[tr_ok], int(te_ok.sum()), n_test_actors, rng)
        null_y = posing.astype(int)
        null_fold = cv_folds(ds.actors[tr_ok], posing, test_actors is not None, n_splits, rng)
        auc_null = roc_auc_score(null_y, oof_scores(X_train[tr_ok], null_y, null_fold, seed))
        rows.append({"encoder": enc, "n_train": int(tr_ok.sum()), "n_test": int(te_ok.sum()),
                     "auc": round(float(auc), 4), "auc_null": round(float(auc_null), 4),
                     "excess": round(float(auc - auc_null), 4), "shifted": bool(auc - auc_null >= FLAG_MARGIN)})
        if test_actors is not None:
            train_scores, test_scores = scores[y == 0], scores[y == 1]
            for actor in np.unique(test_groups[te_ok]):
                mine = test_scores[test_groups[te_ok] == actor]
                a = roc_auc_score(np.r_[np.zeros(len(train_scores)), np.ones(len(mine))], np.r_[train_scores, mine])
                per_actor.append({"encoder": enc, "actor": str(actor), "n_test": len(mine), "auc": round(float(a), 4)})
    return pd.DataFrame(rows), pd.DataFrame(per_actor, columns=["encoder", "actor", "n_test", "auc"])


def out_dir(dataset: str) -> Path:
    return output_root() / "shift" / "output" / dataset


def show(table: pd.DataFrame, actors: pd.DataFrame) -> str:
    """Console text: one line per encoder, and for a shifted one the test actors it moved most."""
    lines = [f"{'encoder':<22} {'n_train':>7} {'n_test':>6} {'AUC':>6} {'null':>6} {'excess':>7}  shifted"]
    for r in table.itertuples(index=False):
        lines.append(f"{r.encoder:<22} {r.n_train:>7} {r.n_test:>6} {r.auc:>6.3f} {r.auc_null:>6.3f} "
                     f"{r.excess:>+7.3f}  {'YES' if r.shifted else '-'}")
        if r.shifted and len(actors):
            mine = actors[actors["encoder"] == r.encoder].sort_values("auc", ascending=False)
            lines.append("    per test actor: " + ", ".join(f"{a} {v:.2f}" for a, v in zip(mine["actor"], mine["auc"])))
    return "\n".join(lines)


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description="Adversarial validation per encoder: which encoders the test set moved.")
    parser.add_argument("--input", type=Path, default=None, help="dataset folder (default: input/synthetic)")
    parser.add_argument("--encoders", default=None, help="comma-separated encoders (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.seed < 0:
        raise UserError(f"--seed: {args.seed} is below the minimum 0 (numpy seeds are non-negative)")
    encoders = "all" if args.encoders is None else [e for e in args.encoders.split(",") if e]
    ds = data_mod.load(args.input or DEFAULT_INPUT, encoders, allow_missing=True)
    table, actors = report(ds, test_actors_of(ds), seed=args.seed)
    folder = out_dir(ds.name)
    write_csv(folder / "shift.csv", table)
    if len(actors):
        write_csv(folder / "shift_actors.csv", actors)
    print(f"shift report for {ds.name} ({ds.n_train} training clips, {len(ds.test_files)} test clips; "
          f"AUC of telling test from training clips, null: training actors posing as test)")
    print(show(table, actors))
    if not len(actors):
        print("(test_metadata.csv has no 'actor' column: no per-actor breakdown)")
    print(f"wrote {display_path(folder / 'shift.csv')}")


if __name__ == "__main__":
    main()
