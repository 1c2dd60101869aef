"""Dataset folder -> one validated in-memory structure (see README, "Dataset folder").

    input/<name>/train_metadata.csv   filename, fold [, emotion_1, emotion_2, emotion_1_salience, emotion_2_salience, mix, video_id]
    input/<name>/test_metadata.csv    filename
    input/<name>/features/<enc>.npz   X [N, D], filenames [N]   (or features/<enc>/*.npz shards)
    input/<name>/test_labels.csv      optional; read only by src.score after predictions are written
    input/<name>/submission_template.json   optional
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from src.errors import UserError
from src.labels import EMOTIONS, actor_of, config_index, parse_filename, strip_extension

LABEL_COLUMNS = ("emotion_1", "emotion_2", "emotion_1_salience", "emotion_2_salience")


@dataclass
class Dataset:
    """Everything a run needs, aligned to one clip order (train rows sorted by filename, then test rows)."""
    name: str
    root: Path
    train_files: np.ndarray        # str [N_train], as written in train_metadata.csv
    test_files: np.ndarray         # str [N_test], as written in test_metadata.csv (submission keys)
    folds: np.ndarray              # int [N_train]
    actors: np.ndarray             # str [N_train]
    labels: np.ndarray             # int [N_train] configuration indices
    encoders: list[str]
    features: dict[str, np.ndarray]  # encoder -> float32 [N_train + N_test, D]
    present: dict[str, np.ndarray]   # encoder -> bool [N_train + N_test]; False rows are zeros
    template_keys: list[str] | None = None
    meta: dict = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return len(self.train_files)

    def split(self, fold: int):
        """(train_idx, valid_idx) into the train rows for one fold."""
        inside = self.folds == fold
        return np.flatnonzero(~inside), np.flatnonzero(inside)

    @property
    def fold_ids(self) -> list[int]:
        return sorted(int(k) for k in np.unique(self.folds))

    @property
    def test_rows(self) -> np.ndarray:
        """Indices of the test clips in the feature matrices."""
        return np.arange(self.n_train, self.n_train + len(self.test_files))


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot parse CSV ({str(err).splitlines()[0]})") from None
    for col in required:
        if col not in frame.columns:
            raise UserError(f"{path}: missing column '{col}' (has: {', '.join(frame.columns)})")
    dup = frame["filename"].map(strip_extension).duplicated()
    if dup.any():
        raise UserError(f"{path}: duplicate file names, e.g. '{frame['filename'][dup].iloc[0]}' ({int(dup.sum())} repeated)")
    return frame


def labels_from_columns(frame: pd.DataFrame, path: Path) -> np.ndarray:
    """Configuration index per row from the label columns; blank second emotion = a single."""
    out = np.empty(len(frame), dtype=int)
    for i, row in enumerate(frame.itertuples(index=False)):
        row = row._asdict()
        e1, e2 = row["emotion_1"].strip(), row["emotion_2"].strip()
        entries = [(e1, row["emotion_1_salience"] or 100)]
        if e2:
            entries.append((e2, row["emotion_2_salience"] or "nan"))
        try:
            for e, _ in entries:
                if e not in EMOTIONS:
                    raise UserError(f"unknown emotion code '{e}'")
            out[i] = config_index(entries)
        except (UserError, ValueError) as err:
            raise UserError(f"{path}: row for '{row['filename']}': {err}") from None
    return out


def read_labels(frame: pd.DataFrame, path: Path) -> np.ndarray:
    """Labels from the label columns when present, otherwise from the official file names."""
    if all(c in frame.columns for c in LABEL_COLUMNS):
        return labels_from_columns(frame, path)
    try:
        return np.array([parse_filename(f) for f in frame["filename"]], dtype=int)
    except UserError as err:
        raise UserError(f"{path}: no label columns and {err}") from None


def _read_train(root: Path):
    path = root / "train_metadata.csv"
    frame = _read_csv(path, ("filename", "fold"))
    try:
        folds = frame["fold"].astype(int).to_numpy()
    except ValueError:
        bad = next(v for v in frame["fold"] if not v.strip().lstrip("-").isdigit())
        raise UserError(f"{path}: fold value {bad!r} is not an integer") from None
    actors = np.array([actor_of(v) for v in (frame["video_id"] if "video_id" in frame else frame["filename"])])
    per_actor = pd.DataFrame({"actor": actors, "fold": folds}).groupby("actor")["fold"].nunique()
    if (per_actor > 1).any():
        actor = per_actor[per_actor > 1].index[0]
        raise UserError(f"{path}: actor '{actor}' appears in several folds "
                        f"({sorted(set(folds[actors == actor]))}); folds must be actor-disjoint")
    labels = read_labels(frame, path)
    order = np.argsort(frame["filename"].to_numpy(), kind="stable")
    return frame["filename"].to_numpy()[order], folds[order], actors[order], labels[order]


def _read_encoder(root: Path, encoder: str):
    """(keys, X) of one encoder from features/<enc>.npz and/or features/<enc>/*.npz."""
    files = [p for p in [root / "features" / f"{encoder}.npz"] if p.is_file()]
    files += sorted((root / "features" / encoder).glob("*.npz"))
    if not files:
        raise UserError(f"encoder '{encoder}': no file {root / 'features' / (encoder + '.npz')} "
                        f"or {root / 'features' / encoder}/*.npz")
    keys, blocks = [], []
    for f in files:
        try:
            with np.load(f, allow_pickle=False) as z:
                if "X" not in z or "filenames" not in z:
                    raise UserError(f"{f}: needs arrays 'X' and 'filenames' (has: {', '.join(z.files)})")
                X, names = z["X"], z["filenames"]
        except (OSError, ValueError) as err:
            raise UserError(f"{f}: cannot read ({str(err).splitlines()[0]})") from None
        if X.ndim != 2 or names.ndim != 1 or len(X) != len(names):
            raise UserError(f"{f}: X {X.shape} and filenames {names.shape} must be [N, D] and [N] with the same N")
        if blocks and X.shape[1] != blocks[0].shape[1]:
            raise UserError(f"{f}: width {X.shape[1]} differs from {blocks[0].shape[1]} in the other shards")
        bad = ~np.isfinite(X)
        if bad.any():
            raise UserError(f"encoder '{encoder}' ({f.name}): {int(bad.sum())} NaN/inf values "
                            f"in {int(bad.any(1).sum())} rows")
        keys += [strip_extension(str(n)) for n in names]
        blocks.append(X.astype(np.float32, copy=False))
    key_index = pd.Index(keys)
    if key_index.has_duplicates:
        raise UserError(f"encoder '{encoder}': clip '{key_index[key_index.duplicated()][0]}' appears twice")
    return key_index, np.concatenate(blocks)


def available_encoders(root: Path) -> list[str]:
    feats = root / "features"
    names = {p.stem for p in feats.glob("*.npz")} | {p.name for p in feats.iterdir() if p.is_dir() and any(p.glob("*.npz"))} \
        if feats.is_dir() else set()
    return sorted(names)


MODALITIES = ("audio", "video", "both")


def read_modalities(root: Path) -> dict[str, str]:
    """Optional encoders.csv (columns encoder, modality: audio | video | both) -> {encoder: modality}; {} if absent."""
    path = Path(root) / "encoders.csv"
    if not path.is_file():
        return {}
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot parse CSV ({str(err).splitlines()[0]})") from None
    missing = [c for c in ("encoder", "modality") if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: missing column '{missing[0]}' (has: {', '.join(frame.columns)})")
    bad = frame[~frame["modality"].isin(MODALITIES)]
    if len(bad):
        raise UserError(f"{path}: modality {bad['modality'].iloc[0]!r} of encoder '{bad['encoder'].iloc[0]}' "
                        f"is not one of {', '.join(MODALITIES)}")
    return dict(zip(frame["encoder"].astype(str), frame["modality"]))


def load(input_dir: Path, encoders="all", allow_missing: bool = False) -> Dataset:
    """Read and validate a dataset folder; every problem is a one-line UserError naming file and problem."""
    root = Path(input_dir)
    if not root.is_dir():
        raise UserError(f"{root}: dataset folder not found")
    train_files, folds, actors, labels = _read_train(root)
    test_files = _read_csv(root / "test_metadata.csv", ("filename",))["filename"].to_numpy()
    test_files = np.sort(test_files)
    clash = set(map(strip_extension, train_files)) & set(map(strip_extension, test_files))
    if clash:
        raise UserError(f"{root}: clip '{sorted(clash)[0]}' is in both train and test metadata")

    names = available_encoders(root) if encoders == "all" else list(encoders)
    if not names:
        raise UserError(f"{root / 'features'}: no encoder files (*.npz)")
    all_keys = pd.Index([strip_extension(f) for f in list(train_files) + list(test_files)])
    features, present = {}, {}
    for enc in names:
        keys, X = _read_encoder(root, enc)
        pos = keys.get_indexer(all_keys)
        missing = pos < 0
        if missing.any() and not allow_missing:
            shown = ", ".join(all_keys[missing][:3])
            n_tr, n_te = int(missing[:len(train_files)].sum()), int(missing[len(train_files):].sum())
            raise UserError(f"encoder '{enc}': {n_tr} train and {n_te} test clips missing (e.g. {shown}); "
                            "set data.allow_missing: true with a model that masks encoders")
        aligned = np.zeros((len(all_keys), X.shape[1]), dtype=np.float32)
        aligned[~missing] = X[pos[~missing]]
        features[enc], present[enc] = aligned, ~missing

    template_keys = None
    template = root / "submission_template.json"
    if template.is_file():
        try:
            template_keys = sorted(json.loads(template.read_text())["predictions"])
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{template}: expected a JSON object with a 'predictions' mapping") from None
        absent = sorted(set(test_files) - set(template_keys))
        if absent:
            raise UserError(f"{root / 'test_metadata.csv'}: {len(absent)} test clips absent from "
                            f"{template.name} (e.g. {', '.join(absent[:3])})")
    return Dataset(name=root.name, root=root, train_files=train_files, test_files=test_files, folds=folds,
                   actors=actors, labels=labels, encoders=names, features=features, present=present,
                   template_keys=template_keys)
