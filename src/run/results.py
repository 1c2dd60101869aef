"""A run's results, one module: the fold files models write, how folds, seeds and sub-runs combine, how the
combined probabilities are decoded, and the record of what a run wrote (RunRecord, its metrics.json).

Every reader of a run (predict, compare, report, ensemble, leaderboard, tune) goes through here, so none of
them combines or decodes on its own.

    Predictions   one sub-run's outputs: per seed, OOF parts [N_train, ...] and test parts [K folds, N_test, ...]
    Decoded       those probabilities decoded: honest OOF predictions, test predictions, the decoder record
    RunRecord     metrics.json: scores, decoder, seeds, sub-runs, run facts; schema-versioned
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from src import decode
from src.decode.metric import score, trim
from src.errors import UserError
from src.io import write_csv, write_json, write_npz
from src.labels import CONFIGS

SCHEMA_VERSION = 2  # metrics.json written before the record had a version counts as 1


# ---- fold files ------------------------------------------------------------------------------------------
def write_fold(path: Path, valid: dict, test: dict, meta: dict, projections=None) -> None:
    """One fold x seed model: valid and test parts, plus a JSON record (history, fixed encoders, seconds)."""
    arrays = {f"valid.{k}": v for k, v in valid.items()} | {f"test.{k}": v for k, v in test.items()}
    if projections is not None:
        arrays["projections"] = projections
    write_npz(path, meta=np.array(json.dumps(meta)), **arrays)


def read_fold(path: Path) -> tuple[dict, dict, dict]:
    """(valid parts, test parts, meta) of one fold file written by write_fold."""
    with np.load(path) as z:
        parts = {"valid": {}, "test": {}}
        for key in z.files:
            kind, _, part = key.partition(".")
            if kind in parts:
                parts[kind][part] = z[key]
        return parts["valid"], parts["test"], json.loads(str(z["meta"]))


def mean_parts(parts: list[dict]) -> dict:
    """Element-wise mean of dicts of arrays (over folds, seeds or late-fusion members)."""
    return {p: np.mean([d[p] for d in parts], 0) for p in parts[0]}


def stack_parts(parts: list[dict]) -> dict:
    """Dicts of arrays -> one dict of arrays stacked on a new first axis (test parts: one slice per fold)."""
    return {p: np.stack([d[p] for d in parts]) for p in parts[0]}


def take(parts: dict, rows) -> dict:
    return {k: v[rows] for k, v in parts.items()}


# ---- combining -------------------------------------------------------------------------------------------
@dataclass
class Predictions:
    """One sub-run's model outputs. oof[s]: parts [N_train, ...] assembled from seed s's fold models; test[s]:
    parts [K, N_test, ...], one slice per fold model; history: loss histories by 'fold<k>_seed<s>'."""
    oof: list[dict]
    test: list[dict]
    history: dict = field(default_factory=dict)

    @classmethod
    def read(cls, folder: Path, seeds: int, fold_rows: dict, n_train: int) -> "Predictions":
        """The fold files fold<k>_seed<s>.npz of a sub-run folder; fold_rows: fold k -> its validation rows."""
        out = cls([], [])
        for s in range(seeds):
            oof, tests = {}, []
            for k, rows in fold_rows.items():
                valid, test, meta = read_fold(Path(folder) / f"fold{k}_seed{s}.npz")
                for part, v in valid.items():
                    oof.setdefault(part, np.zeros((n_train,) + v.shape[1:], np.float32))[rows] = v
                tests.append(test)
                if meta.get("history"):
                    out.history[f"fold{k}_seed{s}"] = meta["history"]
            out.oof.append(oof)
            out.test.append(stack_parts(tests))
        return out

    def mean(self) -> tuple[dict, dict]:
        """(OOF parts, test parts per fold) averaged over seeds."""
        return mean_parts(self.oof), mean_parts(self.test)


def late_mean(members: list[Predictions]) -> Predictions:
    """Late fusion: per seed, the mean of the members' probabilities (OOF and test)."""
    mean = lambda parts: {"prob": np.mean([p["prob"] for p in parts], 0)}
    return Predictions([mean([m.oof[s] for m in members]) for s in range(len(members[0].oof))],
                       [mean([m.test[s] for m in members]) for s in range(len(members[0].test))])


# ---- decoding --------------------------------------------------------------------------------------------
@dataclass
class Decoded:
    """Probabilities decoded the way the config says. oof / test: the parts decoded (with epoch selection,
    each fold's chosen epoch; test: the mean over fold models); *_prob: the decoder's input [N, 6]; oof_pred:
    honest OOF predictions int [N_train]; insample: the OOF rows decoded with thresholds fitted on all of them;
    seed_preds: each seed decoded alone, (oof_pred, test_pred)."""
    oof_pred: np.ndarray
    test_pred: np.ndarray | None
    insample: np.ndarray
    decoder: dict
    oof_prob: np.ndarray
    test_prob: np.ndarray | None
    oof: dict
    test: dict | None
    protocols: dict | None = None
    seed_preds: list = field(default_factory=list)


def decode_parts(oof: dict, test_folds: dict | None, labels: np.ndarray, folds: np.ndarray, dc) -> Decoded:
    """Honest OOF predictions (thresholds refitted per fold on the other folds, unless decoder.fit says the
    organisers' in-sample protocol) and test predictions from test parts per fold model [K, N_test, ...]
    (None: OOF only). decoder.test_scheme vote decodes each fold model's test output with the thresholds
    fitted without that fold, as its OOF rows were, then votes; mean decodes the fold mean."""
    test = None if test_folds is None else {p: v.mean(0) for p, v in test_folds.items()}
    if dc.name == "nearest":
        oof_pred = decode.nearest(oof["prob"])
        return Decoded(oof_pred, None if test is None else decode.nearest(test["prob"]), oof_pred,
                       {"name": "nearest"}, oof["prob"], None if test is None else test["prob"], oof, test)
    oof, test, oof_pred, per_fold, params, extra = decode.fit_oof(oof, test or {}, labels, folds, dc)
    # the organisers' protocols pick parameters per fold on other terms: their test gets the all-OOF fit
    scheme = "mean" if extra else dc.test_scheme
    params = {"name": "threshold", **params, "per_fold": per_fold, "test_scheme": scheme}
    w = params["head_weight"]
    test_pred = None if test_folds is None else decode.decode_test(
        {p: v for p, v in test_folds.items() if not p.startswith(decode.EPOCHS)} | _at_chosen_epoch(test_folds, params),
        params, per_fold, scheme)
    return Decoded(oof_pred, test_pred, decode.apply_decoder(oof, params), params, decode.probabilities(oof, w),
                   None if test_folds is None else decode.probabilities(test, w), oof,
                   None if test_folds is None else test, extra.get("protocols"))


def _at_chosen_epoch(test_folds: dict, params: dict) -> dict:
    """With train.epoch_selection, the test parts of every fold model at the epoch chosen on all OOF rows."""
    if "epoch" not in params:
        return {}
    return {p[len(decode.EPOCHS):]: v[:, :, params["epoch"] - 1] for p, v in test_folds.items()
            if p.startswith(decode.EPOCHS)}


def evaluate(preds: Predictions, labels: np.ndarray, folds: np.ndarray, dc) -> Decoded:
    """Seed-averaged parts decoded, plus each seed decoded on its own (for the spread over seeds)."""
    res = decode_parts(*preds.mean(), labels, folds, dc)
    res.seed_preds = [(d.oof_pred, d.test_pred) for d in
                      (decode_parts(o, t, labels, folds, dc) for o, t in zip(preds.oof, preds.test))]
    return res


def decode_saved(test_folds: dict, decoder: dict) -> np.ndarray:
    """New test parts per fold model [K, N, ...] decoded with a finished run's decoder record, as that run
    decoded its own test rows: per fold model with its fold's thresholds (vote), or the fold mean."""
    test = {p: v.mean(0) for p, v in test_folds.items()}
    if decoder["name"] == "nearest":
        return decode.nearest(test["prob"])
    per_fold = decoder.get("test_per_fold", decoder.get("per_fold"))
    return decode.decode_test(test_folds, decoder, per_fold, decoder.get("test_scheme", "mean"))


def choose_per_fold(parts: dict[str, dict], labels: np.ndarray, folds: np.ndarray, dc) -> dict[int, str]:
    """Per outer fold k, the sub-run whose OOF decodes best on the OTHER folds' rows (ties: the first listed).

    parts: sub-run -> seed-mean OOF parts [N_train, ...]. The other folds are decoded among themselves
    (thresholds for fold j fitted on the folds other than j and k), so neither fold k's rows nor its labels
    reach fold k's choice.
    """
    choice = {}
    for k in np.unique(folds):
        other = folds != k
        scores = {name: score(decode_parts(take(p, other), None, labels[other], folds[other], dc).oof_pred,
                              labels[other])["score"] for name, p in parts.items()}
        choice[int(k)] = max(scores, key=scores.get)
    return choice


def _by_fold(folds: np.ndarray, choice: dict, values: dict) -> np.ndarray:
    """Rows of fold k taken from values[choice[k]] (arrays over all train rows)."""
    out = np.zeros_like(next(iter(values.values())))
    for k, name in choice.items():
        out[folds == k] = values[name][folds == k]
    return out


def compose(evaluated: dict[str, Decoded], choice: dict[int, str], best: str, folds: np.ndarray) -> Decoded:
    """OOF rows of fold k from the sub-run chosen for k; test predictions from `best` (chosen on all OOF)."""
    pick = lambda get: _by_fold(folds, choice, {n: get(r) for n, r in evaluated.items()})
    b = evaluated[best]
    dec = {k: v for k, v in b.decoder.items() if k != "per_fold"}
    if "per_fold" in b.decoder:  # what the test rows were decoded with (test_scheme: vote)
        dec["test_per_fold"] = b.decoder["per_fold"]
    per_fold = []
    for k, name in choice.items():
        entry = next((f for f in evaluated[name].decoder.get("per_fold", []) if f["fold"] == k),
                     {"fold": k, "name": evaluated[name].decoder["name"]})
        per_fold.append({**entry, "sub_run": name})
    return Decoded(
        oof_pred=pick(lambda r: r.oof_pred), test_pred=b.test_pred, insample=pick(lambda r: r.insample),
        decoder={**dec, "per_fold": per_fold}, oof_prob=pick(lambda r: r.oof_prob), test_prob=b.test_prob,
        oof={p: pick(lambda r, p=p: r.oof[p]) for p in b.oof}, test=b.test,
        seed_preds=[(pick(lambda r, i=i: r.seed_preds[i][0]), t) for i, (_, t) in enumerate(b.seed_preds)])


def combine(results: dict[str, Predictions], rule: str, labels: np.ndarray, folds: np.ndarray, dc):
    """-> (final Decoded, per-sub-run Decoded, choice facts) for a run's sub-runs combined by rule:
    single (one model set), mean (late fusion) or choose (nested choice per outer fold)."""
    if rule == "single":
        return evaluate(results[""], labels, folds, dc), {}, {}
    evaluated = {name: evaluate(p, labels, folds, dc) for name, p in results.items()}
    if rule == "mean":
        return evaluate(late_mean(list(results.values())), labels, folds, dc), evaluated, {}
    best = max(evaluated, key=lambda n: score(evaluated[n].oof_pred, labels)["score"])
    choice = choose_per_fold({n: p.mean()[0] for n, p in results.items()}, labels, folds, dc)
    facts = {"chosen_per_fold": {str(k): v for k, v in choice.items()}, "choice_for_test": best,
             "oof_choice_in_sample": trim(score(evaluated[best].oof_pred, labels))}
    return compose(evaluated, choice, best, folds), evaluated, facts


# ---- what a run wrote ------------------------------------------------------------------------------------
def seed_spread(seeds: list[dict]) -> dict:
    """Mean and (population) standard deviation over seeds of each OOF (and test) figure."""
    out = {}
    for part in ("oof", "test"):
        if seeds and all(s.get(part) for s in seeds):
            for key in ("acc_presence", "acc_salience", "score"):
                values = [s[part][key] for s in seeds]
                out[f"{part}_{key}_mean"] = round(float(np.mean(values)), 6)
                out[f"{part}_{key}_std"] = round(float(np.std(values)), 6)
    return out


def write_decoded(folder: Path, train_files, folds, oof_pred, test_files, test_pred) -> None:
    """decoded.csv: every clip's decoded label (the OOF rows' honest predictions, the test rows' submission):
    filename, split, fold, config (index into labels.CONFIGS), label ('ang:70 hap:30')."""
    text = lambda pred: [" ".join(f"{e}:{s}" for e, s in CONFIGS[c]) for c in pred]
    frame = pd.concat([
        pd.DataFrame({"filename": train_files, "split": "oof", "fold": folds, "config": oof_pred, "label": text(oof_pred)}),
        pd.DataFrame({"filename": test_files, "split": "test", "fold": -1, "config": test_pred, "label": text(test_pred)})])
    write_csv(Path(folder) / "decoded.csv", frame)


def read_decoded(folder: Path, split: str) -> pd.DataFrame:
    """decoded.csv rows of one split (oof | test): filename, fold, config."""
    path = Path(folder) / "decoded.csv"
    if not path.is_file():
        raise UserError(f"{path}: missing (outputs of an older version or an unfinished run); rerun it")
    frame = pd.read_csv(path, dtype={"filename": str})
    return frame[frame["split"] == split].reset_index(drop=True)


@dataclass
class RunRecord:
    """metrics.json of an experiment run or an ensemble. Scores are dicts of acc_presence, acc_salience,
    score, n, n_blend; test scores exist only where the dataset has test_labels.csv, read after the
    predictions were written. Fields that do not apply are None or empty, never absent."""
    kind: str                                   # experiment | ensemble
    oof: dict                                   # the honest OOF predictions' scores
    folds: list                                 # scores per outer fold
    decoder: dict                               # how OOF and test rows were decoded (per_fold: per outer fold)
    seeds: list = field(default_factory=list)   # per seed: {seed, oof[, test]}, each seed decoded alone
    test: dict | None = None
    oof_thresholds_in_sample: dict | None = None  # OOF decoded with thresholds fitted on all of it (optimistic)
    protocols: dict | None = None               # organisers' vs our protocol (decoder.fit / epoch selection)
    group: str | None = None                    # per_encoder | per_top_n | per_baseline: the sub-runs' folder
    sub_runs: dict = field(default_factory=dict)  # name -> {oof, test, protocols, seed_spread}
    chosen_per_fold: dict | None = None         # outer fold -> sub-run, chosen on the other folds
    choice_for_test: str | None = None          # the sub-run best on all OOF rows (its OOF score is in-sample)
    oof_choice_in_sample: dict | None = None
    history: dict = field(default_factory=dict)  # loss histories per sub-run
    runtime_s: float = 0.0
    invocations: int = 1
    smoke: bool = False
    variant: str | None = None
    precision: str | None = None                # the precision training ran at (train.precision resolved)
    device: str | None = None
    members: list | None = None                 # ensemble: [{name, path, smoke, oof[, test]}]
    weights: dict | None = None
    method: str | None = None
    schema: int = SCHEMA_VERSION

    @property
    def resumes(self) -> int:
        return self.invocations - 1

    @property
    def spread(self) -> dict:
        return seed_spread(self.seeds)

    def write(self, folder: Path) -> Path:
        return write_json(Path(folder) / "metrics.json", dataclasses.asdict(self))

    @classmethod
    def read(cls, folder: Path) -> "RunRecord":
        """The record in folder/metrics.json; a UserError naming the file when absent or of another version."""
        path = Path(folder) / "metrics.json"
        try:
            values = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"{path}: missing (an unfinished run?)") from None
        except (OSError, ValueError) as err:
            raise UserError(f"{path}: unreadable ({err})") from None
        version = values.get("schema", 1) if isinstance(values, dict) else None
        if version != SCHEMA_VERSION:
            raise UserError(f"{path}: written by another version of the code (record schema {version}, this code "
                            f"reads {SCHEMA_VERSION}); rerun the run (finished folds are reused where unchanged)")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})
