"""Score a submission against a labels CSV with the official semantics.

    python src/score.py PRED.zip|PRED.json|PRED.csv LABELS.csv
prints {"acc_presence": .., "acc_salience": .., "score": .., "n": .., "n_blend": ..}

Whatever the official scorer scores is scored here the same way (BLEMORE.md, "The metric"): presence
compares emotion sets, salience compares {emotion: round(salience)} maps on true blends, for any entry
list, legal or not (60/40, 0.7/0.3, a repeated emotion, neutral in a blend; a NaN or infinite salience
matches no true salience). Such entries get one warning line on stderr; our own writer never produces
them. Errors are kept for what the official code cannot score: not JSON, no `predictions` mapping,
malformed entries, keys that differ from the labels'.
"""
from __future__ import annotations

import json
import math
import sys
import zipfile
from pathlib import Path

import numpy as np

from src.data import read_csv, read_label_file
from src.decode.metric import score, trim
from src.errors import UserError, cli
from src.labels import CONFIGS, IS_BLEND, config_index, strip_extension


def _json_text(path: Path) -> str:
    """The submission's JSON text: the file itself, or the one .json member of a CodaBench .zip."""
    if path.suffix != ".zip":
        return path.read_text()
    try:
        with zipfile.ZipFile(path) as z:
            members = [m for m in z.namelist() if m.endswith(".json") and not m.startswith("__MACOSX")]
            if len(members) != 1:
                raise UserError(f"{path}: expected one .json file inside the zip, found {len(members)}")
            return z.read(members[0]).decode("utf-8")
    except (zipfile.BadZipFile, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a readable zip ({err})") from None


def _entries(key, value, path: Path) -> list[tuple[str, float]]:
    """One prediction -> [(emotion, salience)], as the official code reads it; malformed -> UserError."""
    try:
        return [(str(e["emotion"]), _salience(e["salience"])) for e in value]
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path}: entry '{key}' is not a list of {{\"emotion\", \"salience\": number}} "
                        f"objects: {json.dumps(value)[:80]}") from None


def _salience(value) -> float:
    """A submitted salience as a float; an integer too large for one (JSON allows any length) is +-inf, which
    like the integer itself matches no true salience."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def read_submission(path: Path) -> dict:
    """clip key (extension stripped) -> [(emotion, salience)], from the official JSON/zip or our CSV."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if path.suffix in (".json", ".zip"):
        try:
            preds = json.loads(_json_text(path))
        except ValueError as err:
            raise UserError(f"{path}: not JSON ({err})") from None
        if not isinstance(preds, dict) or not isinstance(preds.get("predictions"), dict):
            raise UserError(f"{path}: expected a JSON object with a 'predictions' mapping")
        items = list(preds["predictions"].items())
    elif path.suffix == ".csv":
        frame = read_csv(path, ("filename", "emotion_1", "salience_1", "emotion_2", "salience_2"))
        items = [(r.filename, [{"emotion": r.emotion_1, "salience": r.salience_1}]
                  + ([{"emotion": r.emotion_2, "salience": r.salience_2}] if r.emotion_2 else []))
                 for r in frame.itertuples()]
    else:
        raise UserError(f"{path}: expected a .zip, .json or .csv submission")
    out = {strip_extension(str(k)): _entries(k, v, path) for k, v in items}
    if len(out) != len(items):
        raise UserError(f"{path}: a clip appears twice (keys equal after removing .mov)")
    return out


def is_legal(entries) -> bool:
    """True for what our writer produces: a single, or a 50/50, 70/30, 30/70 blend written exactly."""
    try:
        config_index(entries)
    except (UserError, ValueError):
        return False
    return len(entries) == 1 or all(float(s) == round(float(s)) for _, s in entries)


def official_hits(entries, true: int) -> tuple[bool, bool]:
    """(presence right, salience right) of one prediction against configuration `true`, as the official code.

    entries: [(emotion, salience)] as submitted; salience counts on true blends only (False elsewhere).
    """
    truth = CONFIGS[true]
    presence = {e for e, _ in entries} == {e for e, _ in truth}
    salience = bool(IS_BLEND[true]) and len(entries) == 2 and \
        {e: official_round(s) for e, s in entries} == {e: official_round(s) for e, s in truth}
    return presence, salience


def official_round(salience: float):
    """round(salience) for the salience comparison; a NaN or infinite salience is kept as it is, so it matches
    no true salience (Python's round() would raise on it)."""
    return round(salience) if math.isfinite(salience) else salience


def score_maps(pred: dict, true: dict, what: str = "submission") -> dict:
    """pred: key -> entries (or configuration index); true: key -> configuration index."""
    if set(pred) != set(true):
        missing, extra = sorted(set(true) - set(pred)), sorted(set(pred) - set(true))
        parts = [f"{len(keys)} {kind} (e.g. {', '.join(keys[:2])})"
                 for keys, kind in ((missing, "missing"), (extra, "unexpected")) if keys]
        raise UserError(f"{what}: keys differ from the labels: {', '.join(parts)}")
    keys = sorted(true)
    entries = {k: list(CONFIGS[v]) if isinstance(v, (int, np.integer)) else v for k, v in pred.items()}
    odd = [k for k in keys if not is_legal(entries[k])]
    if odd:
        shown = ", ".join(f"{e} {s:g}" for e, s in entries[odd[0]])
        print(f"warning: {what}: {len(odd)} of {len(keys)} entries are not one of the 36 legal labels "
              f"(e.g. {odd[0]}: [{shown}]); scored as the official scorer does", file=sys.stderr)
    hits = np.array([official_hits(entries[k], true[k]) for k in keys], dtype=bool).reshape(-1, 2)
    blend = IS_BLEND[np.array([true[k] for k in keys], dtype=int)]
    acc_presence = float(hits[:, 0].mean()) if len(keys) else 0.0
    # The official scorer returns 0.0 for salience when there are no true blends.
    acc_salience = float(hits[blend, 1].mean()) if blend.any() else 0.0
    return {"acc_presence": acc_presence, "acc_salience": acc_salience,
            "score": (acc_presence + acc_salience) / 2, "n": len(keys), "n_blend": int(blend.sum())}


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
        raise UserError("usage: python src/score.py PRED.zip|PRED.json|PRED.csv LABELS.csv")
    print(json.dumps(score_files(Path(argv[0]), Path(argv[1]))))


if __name__ == "__main__":
    main()
