"""Score a submission against a labels CSV with the official semantics.

    python src/score.py PRED.json|PRED.csv LABELS.csv
prints {"acc_presence": .., "acc_salience": .., "score": .., "n": .., "n_blend": ..}
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make `src` importable, under the repository's .venv
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from src.venv import use_venv
    use_venv()

import numpy as np
import pandas as pd

from src.data import read_labels
from src.errors import UserError, cli
from src.labels import config_index, strip_extension
from src.metric import score, trim


def read_submission(path: Path) -> dict:
    """clip key (extension stripped) -> configuration index, from the official JSON or our CSV."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        if path.suffix == ".json":
            preds = json.loads(path.read_text())["predictions"]
            items = [(k, [(e["emotion"], e["salience"]) for e in v]) for k, v in preds.items()]
        elif path.suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
            items = [(r.filename, [(r.emotion_1, r.salience_1)] + ([(r.emotion_2, r.salience_2)] if r.emotion_2 else []))
                     for r in frame.itertuples()]
        else:
            raise UserError(f"{path}: expected a .json or .csv submission")
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(f"{path}: not a submission ({type(err).__name__}: {err})") from None
    out = {}
    for key, entries in items:
        try:
            out[strip_extension(str(key))] = config_index(entries)
        except (UserError, ValueError) as err:
            raise UserError(f"{path}: entry '{key}': {err}") from None
    if len(out) != len(items):
        raise UserError(f"{path}: a clip appears twice")
    return out


def read_label_file(path: Path) -> dict:
    """clip key -> true configuration index, from a labels CSV (filename + label columns)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "filename" not in frame.columns:
        raise UserError(f"{path}: missing column 'filename'")
    return dict(zip(map(strip_extension, frame["filename"]), read_labels(frame, path)))


def score_maps(pred: dict, true: dict, what: str = "submission") -> dict:
    if set(pred) != set(true):
        missing, extra = sorted(set(true) - set(pred)), sorted(set(pred) - set(true))
        raise UserError(f"{what}: keys differ from the labels: {len(missing)} missing "
                        f"(e.g. {missing[:2]}), {len(extra)} unexpected (e.g. {extra[:2]})")
    keys = sorted(true)
    return score(np.array([pred[k] for k in keys]), np.array([true[k] for k in keys]))


def score_test(root: Path, test_files, preds: list) -> list[dict] | None:
    """Rounded scores of each int [N_test] prediction against root/test_labels.csv; None without that file.

    Call only after the predictions are written: this is the one reader of test labels in a run.
    """
    labels_path = Path(root) / "test_labels.csv"
    if not labels_path.is_file():
        return None
    truth = read_label_file(labels_path)
    keys = [strip_extension(str(f)) for f in test_files]
    missing = [k for k in keys if k not in truth]
    if missing:
        raise UserError(f"{labels_path}: {len(missing)} test clips have no label (e.g. {missing[0]})")
    true = np.array([truth[k] for k in keys])
    return [trim(score(p, true)) for p in preds]


def score_files(pred_path: Path, labels_path: Path) -> dict:
    return score_maps(read_submission(pred_path), read_label_file(labels_path), str(pred_path))


@cli
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        raise UserError("usage: python src/score.py PRED.json|PRED.csv LABELS.csv")
    print(json.dumps(score_files(Path(argv[0]), Path(argv[1]))))


if __name__ == "__main__":
    main()
