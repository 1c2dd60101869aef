"""Dataset folder -> one validated in-memory structure (docs/data.md).

    input/<name>/train_metadata.csv   filename, fold [, emotion_1, emotion_2, emotion_1_salience, emotion_2_salience, mix, video_id]
    input/<name>/test_metadata.csv    filename
    input/<name>/features/<enc>.npz   X [N, D], filenames [N]   (or features/<enc>/*.npz shards)
    input/<name>/test_labels.csv      optional; read only by src.score after predictions are written
    input/<name>/submission_template.json   optional
"""
from __future__ import annotations

import json
import math
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from src.errors import UserError
from src.labels import EMOTIONS, actor_of, config_index, parse_filename, strip_extension

LABEL_COLUMNS = ("emotion_1", "emotion_2", "emotion_1_salience", "emotion_2_salience")
# float32 is what models see: a feature whose sum or squared deviations exceed this overflows the z-score
FLOAT32_SAFE = float(np.finfo(np.float32).max) / 16


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


def read_csv(path: Path, required: tuple[str, ...] = (), key: str | None = "filename", allow_empty: bool = False,
             fold_case: bool = False) -> pd.DataFrame:
    """Every CSV the repository reads: cells as text (nothing guessed as NaN), checked, one-line UserErrors.

    required: columns that must exist; key: a column of clip names that must be unique once the extension is
    stripped (lower-cased too with fold_case, for names matched case-insensitively), None for other tables;
    allow_empty: a header without rows is a valid (empty) table. Messages count rows from 1 = the first row
    under the header.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a CSV file")
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot parse CSV ({str(err).splitlines()[0]})") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or err})") from None
    for col in required + ((key,) if key else ()):
        if col not in frame.columns:
            raise UserError(f"{path}: missing column '{col}' (has: {', '.join(frame.columns)})")
    if frame.empty and not allow_empty:
        raise UserError(f"{path}: no rows (only a header)" + ("; list one clip per row" if key else ""))
    if key:
        keys = frame[key].map(strip_extension)
        keys = keys.str.lower() if fold_case else keys
        dup = keys.duplicated()
        if dup.any():
            rows = np.flatnonzero(keys == keys[dup].iloc[0]) + 1
            raise UserError(f"{path}: duplicate file names, e.g. '{frame[key][dup].iloc[0]}' in rows {rows[0]} and "
                            f"{rows[1]} ({int(dup.sum())} repeated{', ignoring case' if fold_case else ''})")
    return frame


def _salience(text: str, column: str, where: str) -> str:
    """A salience cell, checked: a finite number (as typed, so messages show it as written)."""
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{where}, column '{column}': {text!r} is not a number") from None
    if not math.isfinite(value):
        raise UserError(f"{where}, column '{column}': salience {text!r} is not a finite number")
    return text


def labels_from_columns(frame: pd.DataFrame, path: Path) -> np.ndarray:
    """Configuration index per row from the label columns; blank second emotion = a single."""
    out = np.empty(len(frame), dtype=int)
    for i, row in enumerate(frame[["filename", *LABEL_COLUMNS]].itertuples(index=False)):
        row = row._asdict()
        where = f"{path}: row {i + 1} ('{row['filename']}')"
        e1, e2 = row["emotion_1"].strip(), row["emotion_2"].strip()
        for e in (e1, e2) if e2 else (e1,):
            if e not in EMOTIONS:
                raise UserError(f"{where}: unknown emotion code '{e}'")
        s1 = row["emotion_1_salience"].strip()
        entries = [(e1, _salience(s1, "emotion_1_salience", where) if s1 else 100)]
        if e2:
            s2 = row["emotion_2_salience"].strip()
            if not s2:
                raise UserError(f"{where}, column 'emotion_2_salience': blank although emotion_2 is '{e2}'")
            entries.append((e2, _salience(s2, "emotion_2_salience", where)))
        try:
            out[i] = config_index(entries)
        except UserError as err:
            raise UserError(f"{where}: {err}") from None
    return out


def read_labels(frame: pd.DataFrame, path: Path) -> np.ndarray:
    """Labels from the label columns when present, otherwise from the official file names."""
    if all(c in frame.columns for c in LABEL_COLUMNS):
        return labels_from_columns(frame, path)
    try:
        return np.array([parse_filename(f) for f in frame["filename"]], dtype=int)
    except UserError as err:
        raise UserError(f"{path}: no label columns and {err}") from None


# A plain integer: ASCII digits with an optional leading '-'. int() would also take ' 2', '+2', '1_0' and other
# scripts' digits ('٢'); 18 digits keep every value inside int64.
PLAIN_INTEGER = r"-?[0-9]{1,18}"


def read_folds(frame: pd.DataFrame, path: Path) -> np.ndarray:
    """The `fold` column as int [N]; a value that is not a plain integer is an error naming row and value."""
    plain = frame["fold"].str.fullmatch(PLAIN_INTEGER)
    if not plain.all():
        row = int(np.flatnonzero(~plain)[0])
        raise UserError(f"{path}: row {row + 1}, column 'fold': {frame['fold'].iloc[row]!r} is not a plain integer "
                        "(ASCII digits 0-9, an optional leading '-', nothing else)")
    return frame["fold"].astype(np.int64).to_numpy()


def _read_train(root: Path):
    path = root / "train_metadata.csv"
    frame = read_csv(path, ("filename", "fold"))
    folds = read_folds(frame, path)
    actors = np.array([actor_of(v) for v in (frame["video_id"] if "video_id" in frame else frame["filename"])])
    per_actor = pd.DataFrame({"actor": actors, "fold": folds}).groupby("actor")["fold"].nunique()
    if (per_actor > 1).any():
        actor = per_actor[per_actor > 1].index[0]
        raise UserError(f"{path}: actor '{actor}' appears in several folds "
                        f"({sorted(int(k) for k in set(folds[actors == actor]))}); folds must be actor-disjoint")
    # Folds are numbered 0..K-1 (the official split is 0..4); fold ids name files and seeds (seed + k).
    ids = sorted(int(k) for k in np.unique(folds))
    if len(ids) < 2:
        raise UserError(f"{path}: needs at least 2 folds (a fold trains on the others), found only fold {ids[0]}")
    if ids != list(range(len(ids))):
        raise UserError(f"{path}: fold values must be 0..K-1 with none skipped, found {ids}")
    labels = read_labels(frame, path)
    order = np.argsort(frame["filename"].to_numpy(), kind="stable")
    return frame["filename"].to_numpy()[order], folds[order], actors[order], labels[order]


def feature_files(root: Path, encoder: str) -> list[Path]:
    """features/<enc>.npz and/or the shards features/<enc>/*.npz that exist."""
    files = [p for p in [Path(root) / "features" / f"{encoder}.npz"] if p.is_file()]
    return files + sorted((Path(root) / "features" / encoder).glob("*.npz"))


def input_files(ds: "Dataset") -> dict[str, Path]:
    """Every file a training run reads, relative name -> path (test_labels.csv is not among them)."""
    names = ["train_metadata.csv", "test_metadata.csv", "submission_template.json"]
    files = {n: ds.root / n for n in names if (ds.root / n).is_file()}
    for enc in ds.encoders:
        files.update({str(p.relative_to(ds.root)): p for p in feature_files(ds.root, enc)})
    return files


def _read_encoder(root: Path, encoder: str):
    """(keys, X) of one encoder from features/<enc>.npz and/or features/<enc>/*.npz."""
    files = feature_files(root, encoder)
    if not files:
        raise UserError(f"encoder '{encoder}': no file {root / 'features' / (encoder + '.npz')} "
                        f"or {root / 'features' / encoder}/*.npz")
    keys, blocks = [], []
    for f in files:
        X, names = _read_npz(f)
        if X.ndim != 2 or names.ndim != 1 or len(X) != len(names):
            raise UserError(f"{f}: X {X.shape} and filenames {names.shape} must be [N, D] and [N] with the same N")
        if X.shape[1] == 0:
            raise UserError(f"encoder '{encoder}' ({f.name}): X has width 0 (no features)")
        if blocks and X.shape[1] != blocks[0].shape[1]:
            raise UserError(f"{f}: width {X.shape[1]} differs from {blocks[0].shape[1]} in the other shards")
        # Integer X is accepted and read as float32, like float64 X.
        if X.dtype.kind not in "iuf":
            raise UserError(f"{f}: X must hold numbers (int or float), has dtype {X.dtype}")
        with np.errstate(over="ignore"):  # overflow to inf is reported just below
            X = X.astype(np.float32, copy=False)
        bad = ~np.isfinite(X)  # after the cast: a float64 1e300 becomes inf in float32
        if bad.any():
            raise UserError(f"encoder '{encoder}' ({f.name}): {int(bad.sum())} NaN/inf values (in float32) "
                            f"in {int(bad.any(1).sum())} rows")
        if names.dtype.kind == "S":  # bytes names, as some writers store them
            names = np.char.decode(names, "utf-8", "replace")
        if names.dtype.kind != "U":
            raise UserError(f"{f}: filenames must be strings, has dtype {names.dtype} "
                            f"(e.g. {names[0].item() if len(names) else ''!r})")
        keys += [strip_extension(str(n)) for n in names]
        blocks.append(X)
    key_index = pd.Index(keys)
    if key_index.has_duplicates:
        raise UserError(f"encoder '{encoder}': clip '{key_index[key_index.duplicated()][0]}' appears twice")
    return key_index, np.concatenate(blocks)


def _read_npz(f: Path):
    """(X, filenames) of one .npz; any unreadable file is one line (never numpy's advice to unpickle)."""
    if f.stat().st_size == 0:
        raise UserError(f"{f}: empty file (0 bytes)")
    try:
        z = np.load(f, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise UserError(f"{f}: a single .npy array, not an .npz archive with 'X' and 'filenames'")
        with z:
            if "X" not in z or "filenames" not in z:
                raise UserError(f"{f}: needs arrays 'X' and 'filenames' (has: {', '.join(z.files)})")
            return z["X"], z["filenames"]
    except ValueError as err:
        if "Object arrays" in str(err):  # an array saved with dtype=object
            raise UserError(f"{f}: holds Python objects (pickled); store X as numbers and filenames as "
                            "strings (np.savez(path, X=X, filenames=np.array(names, dtype=str)))") from None
        # numpy takes any non-zip file for a pickle; never pass on its advice to unpickle
        reason = "another format" if "pickle" in str(err) else str(err).splitlines()[0]
        raise UserError(f"{f}: not a readable .npz archive ({reason})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as err:
        raise UserError(f"{f}: not a readable .npz archive (truncated or another format: "
                        f"{str(err).splitlines()[0] if str(err) else type(err).__name__})") from None


def check_scale(encoder: str, X: np.ndarray, present: np.ndarray) -> None:
    """Features whose z-score would overflow float32 (values near its maximum) are an error naming the encoder.

    X: float32 [N, D]; present: bool [N]. Cheap bound first; the exact float64 check only when it fails.
    """
    rows = X[present]
    if not len(rows):
        return
    peak = float(np.abs(rows).max())
    if peak * len(rows) < FLOAT32_SAFE and 4 * peak * peak * len(rows) < FLOAT32_SAFE:
        return
    rows = rows.astype(np.float64)
    total = np.abs(rows).sum(0)
    spread = ((rows - rows.mean(0)) ** 2).sum(0)
    bad = np.flatnonzero((total >= FLOAT32_SAFE) | (spread >= FLOAT32_SAFE))
    if bad.size:
        raise UserError(f"encoder '{encoder}': values up to {peak:.3g} in {bad.size} feature columns "
                        f"(first: column {int(bad[0])}) overflow float32 standardisation; rescale them")


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
    frame = read_csv(path, ("encoder", "modality"), key=None, allow_empty=True)
    bad = frame[~frame["modality"].isin(MODALITIES)]
    if len(bad):
        raise UserError(f"{path}: modality {bad['modality'].iloc[0]!r} of encoder '{bad['encoder'].iloc[0]}' "
                        f"is not one of {', '.join(MODALITIES)}")
    return dict(zip(frame["encoder"].astype(str), frame["modality"]))


def load_labels(input_dir: Path) -> Dataset:
    """The metadata without any feature file: clip lists, labels, folds, actors, template keys (no encoders)."""
    root = Path(input_dir)
    if not root.is_dir():
        raise UserError(f"{root}: dataset folder not found")
    train_files, folds, actors, labels = _read_train(root)
    test_files = np.sort(read_csv(root / "test_metadata.csv", ("filename",))["filename"].to_numpy())
    clash = set(map(strip_extension, train_files)) & set(map(strip_extension, test_files))
    if clash:
        raise UserError(f"{root}: clip '{sorted(clash)[0]}' is in both train and test metadata")
    template_keys = None
    template = root / "submission_template.json"
    if template.is_file():
        try:
            template_keys = sorted(json.loads(template.read_text())["predictions"])
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{template}: expected a JSON object with a 'predictions' mapping") from None
        check_template(test_files, template_keys, root / "test_metadata.csv", template)
    return Dataset(name=root.name, root=root, train_files=train_files, test_files=test_files, folds=folds,
                   actors=actors, labels=labels, encoders=[], features={}, present={}, template_keys=template_keys)


def load(input_dir: Path, encoders="all", allow_missing: bool = False) -> Dataset:
    """Read and validate a dataset folder; every problem is a one-line UserError naming file and problem."""
    ds = load_labels(input_dir)
    root = ds.root
    names = available_encoders(root) if encoders == "all" else list(encoders)
    if len(set(names)) != len(names):
        raise UserError(f"data.encoders: {', '.join(sorted({n for n in names if names.count(n) > 1}))} listed twice")
    if not names:
        raise UserError(f"{root / 'features'}: no encoder files (*.npz)")
    all_keys = pd.Index([strip_extension(f) for f in list(ds.train_files) + list(ds.test_files)])
    for enc in names:
        keys, X = _read_encoder(root, enc)
        pos = keys.get_indexer(all_keys)
        missing = pos < 0
        if missing.any() and not allow_missing:
            shown = ", ".join(all_keys[missing][:3])
            n_tr, n_te = int(missing[:ds.n_train].sum()), int(missing[ds.n_train:].sum())
            raise UserError(f"encoder '{enc}': {n_tr} train and {n_te} test clips missing (e.g. {shown}); "
                            "set data.allow_missing: true with a model that masks encoders")
        aligned = np.zeros((len(all_keys), X.shape[1]), dtype=np.float32)
        aligned[~missing] = X[pos[~missing]]
        check_scale(enc, aligned, ~missing)
        ds.features[enc], ds.present[enc] = aligned, ~missing
    ds.encoders = names
    return ds


def prediction_frame(files, prob: np.ndarray, parts: dict | None = None, encoders=(), folds=None) -> pd.DataFrame:
    """One row per clip: filename [, fold], prob_<e>, presence_<e>/salience_<e> and gate_<enc> when present."""
    frame = pd.DataFrame({"filename": files} | ({} if folds is None else {"fold": folds}))
    for j, e in enumerate(EMOTIONS):
        frame[f"prob_{e}"] = prob[:, j]
    parts = parts or {}
    for part in ("presence", "salience"):
        if part in parts:
            for j, e in enumerate(EMOTIONS):
                frame[f"{part}_{e}"] = parts[part][:, j]
    if "gate" in parts:
        for j, enc in enumerate(encoders):
            frame[f"gate_{enc}"] = parts["gate"][:, j]
    return frame


def check_template(test_files, template_keys, metadata_path: Path, template_path: Path) -> None:
    """Test clip names and the template's keys must be the same set (both directions)."""
    test, keys = set(map(str, test_files)), set(map(str, template_keys))
    absent, extra = sorted(test - keys), sorted(keys - test)
    if absent:
        raise UserError(f"{metadata_path}: {len(absent)} test clips absent from {template_path.name} "
                        f"(e.g. {', '.join(absent[:3])})")
    if extra:
        raise UserError(f"{template_path}: {len(extra)} keys not listed in {metadata_path.name} "
                        f"(e.g. {', '.join(extra[:3])}); a submission must cover exactly the template's keys")


def read_label_file(path: Path) -> dict:
    """clip key -> true configuration index, from a labels CSV (filename + label columns)."""
    frame = read_csv(Path(path), ("filename",))
    return dict(zip(map(strip_extension, frame["filename"]), read_labels(frame, Path(path))))
