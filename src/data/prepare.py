"""The organisers' download -> a dataset folder the experiments read (docs/data.md).

    bash run.sh prepare DOWNLOAD_DIR [--out input/blemore] [--encoders a,b,...] [--allow-missing]

Finds, case-insensitively and anywhere under DOWNLOAD_DIR: train/test metadata CSVs, the submission
template (.json, or the CodaBench .zip holding it), per-clip feature folders `<Encoder>_train/` and
`<Encoder>_test/` (`.npy` series, or OpenFace `.csv` frames) and `<enc>_static_features.npz` files. Each
clip's series is aggregated with `src.features.aggregate` one clip at a time; everything is written to a
staging folder first and moved into --out only when every encoder succeeded.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from src.data import LABEL_COLUMNS, read_csv, read_folds, read_labels
from src.errors import UserError, cli
from src.features.aggregate import EncoderAccumulator, load_array, write_features
from src.io import hash_files, write_csv, write_json, write_text
from src.labels import strip_extension

TRAIN_META = re.compile(r"train[_ -]?metadata.*\.csv$", re.I)
TEST_META = re.compile(r"test[_ -]?metadata.*\.csv$", re.I)
TEMPLATE = re.compile(r"submission[_ -]?template.*\.(json|zip)$", re.I)
SPLIT_DIR = re.compile(r"^(?P<enc>.+?)[_-](?P<split>train|test)$", re.I)
STATIC = re.compile(r"^(?P<enc>.+?)_static_features\.npz$", re.I)
CLIP_SUFFIXES = (".npy", ".npz", ".csv")
OPENFACE_SCALARS = ("emotion_index", "gaze_yaw", "gaze_pitch")  # + the `action_units` list: 11 values a frame
# Per encoder: the last prepare's figures (for the table when it is skipped) and where it came from (the
# download folder, each input file's size and content hash, and the features file written).
MANIFEST = "prepare.json"
RECORD = {"source", "train", "test", "missing", "ignored", "frames", "raw_width", "stored_width", "inputs", "output"}


@dataclass
class Download:
    """What was found under the download folder."""
    train_meta: Path
    test_meta: Path
    template: Path | None
    series: dict = field(default_factory=dict)   # encoder -> {clip key (lower case): file}
    folders: dict = field(default_factory=dict)  # encoder -> [folders]
    static: dict = field(default_factory=dict)   # encoder -> [<enc>_static_features.npz]
    stray: dict = field(default_factory=dict)    # encoder -> files that are not clips (count)


def find_one(found: list[Path], what: str, root: Path, required: bool = True) -> Path | None:
    if len(found) > 1:
        raise UserError(f"{root}: {len(found)} {what} files found ({', '.join(str(p.relative_to(root)) for p in found[:3])}); "
                        "keep one")
    if not found and required:
        raise UserError(f"{root}: no {what} found (looked for *{what.replace(' ', '_')}*.csv in every folder)")
    return found[0] if found else None


def holds_template(path: Path) -> bool:
    """A zip of any name holding submission_template.json, as the organisers' CodaBench template."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(TEMPLATE.search(Path(m).name) for m in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def scan(root: Path) -> Download:
    """Walk the download once and classify what it holds."""
    if not root.is_dir():
        raise UserError(f"{root}: download folder not found")
    train, test, template = [], [], []
    series, folders, static, stray = {}, {}, {}, {}
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        folder = Path(folder)
        match = SPLIT_DIR.match(folder.name)
        enc = match["enc"].lower() if match else None
        for name in sorted(files):
            path = folder / name
            if TRAIN_META.search(name):
                train.append(path)
            elif TEST_META.search(name):
                test.append(path)
            elif TEMPLATE.search(name) or (name.lower().endswith(".zip") and holds_template(path)):
                template.append(path)
            elif STATIC.match(name):
                static.setdefault(STATIC.match(name)["enc"].lower(), []).append(path)
            elif enc and path.suffix.lower() in CLIP_SUFFIXES:
                clips = series.setdefault(enc, {})
                key = strip_extension(path.stem).lower()
                if key in clips:
                    raise UserError(f"encoder '{enc}': clip '{path.stem}' found twice ({clips[key]} and {path})")
                clips[key] = path
                if folder not in folders.setdefault(enc, []):
                    folders[enc].append(folder)
            elif enc:
                stray[enc] = stray.get(enc, 0) + 1
    template = [p for p in template if p.suffix.lower() == ".json"] or template  # the .json beside its .zip
    return Download(find_one(train, "train metadata", root), find_one(test, "test metadata", root),
                    find_one(template, "submission template", root, required=False), series, folders, static, stray)


def read_template(path: Path | None) -> str | None:
    """The template's JSON text (from the .json, or the one .json inside the CodaBench .zip)."""
    if path is None:
        return None
    try:
        if path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as z:
                members = [m for m in z.namelist() if m.lower().endswith(".json")]
                if len(members) != 1:
                    raise ValueError(f"expected one .json inside, found {len(members)}")
                text = z.read(members[0]).decode()
        else:
            text = path.read_text()
        keys = json.loads(text)["predictions"]
        if not isinstance(keys, dict):
            raise TypeError("'predictions' is not a mapping")
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:
        raise UserError(f"{path}: not a submission template ({err})") from None
    return text


def metadata(dl: Download):
    """(train frame, test frame with names spelled as the template's, test labels frame or None, template text)."""
    # Clip names are matched to files case-insensitively, so names differing only in case are duplicates.
    train = read_csv(dl.train_meta, ("filename", "fold"), fold_case=True)
    # An integer column that once held a NaN is written by pandas as floats (2.0): taken here, written as 2.
    train["fold"] = train["fold"].str.replace(r"^(-?[0-9]+)\.0+$", r"\1", regex=True)
    train["fold"] = read_folds(train, dl.train_meta).astype(str)
    read_labels(train, dl.train_meta)  # fail here, with the row named, rather than in every experiment
    train = train.sort_values("filename", kind="stable", ignore_index=True)

    test = read_csv(dl.test_meta, ("filename",), fold_case=True)
    has_labels = all(c in test.columns for c in LABEL_COLUMNS) and (test["emotion_1"].str.strip() != "").all()
    if has_labels:
        read_labels(test, dl.test_meta)  # before renaming and sorting, so a message names the file's own row
    text = read_template(dl.template)
    if text is None:
        names = [f if strip_extension(f) != f else f"{f}.mov" for f in test["filename"]]
    else:
        spelled = {strip_extension(k).lower(): k for k in json.loads(text)["predictions"]}
        absent = [f for f in test["filename"] if strip_extension(f).lower() not in spelled]
        if absent:
            raise UserError(f"{dl.test_meta}: test clip '{absent[0]}' is absent from {dl.template.name} "
                            f"({len(absent)} such clips)")
        names = [spelled[strip_extension(f).lower()] for f in test["filename"]]
    test = test.assign(filename=names).sort_values("filename", kind="stable", ignore_index=True)
    return train, test[["filename"]], test if has_labels else None, text


def read_openface(path: Path) -> np.ndarray | None:
    """An OpenFace CSV -> float [T, 11] (3 scalars + the 8 action units), frames with NaN dropped; None if none left."""
    frame = read_csv(path, OPENFACE_SCALARS + ("action_units",), key=None, allow_empty=True)
    scalars = []
    for col in OPENFACE_SCALARS:
        text = frame[col].str.strip()
        values = pd.to_numeric(text.replace("", "nan"), errors="coerce")
        bad = values.isna() & ~text.str.lower().isin(["", "nan"])
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise UserError(f"{path}: row {row + 1}, column '{col}': {text[row]!r} is not a number")
        scalars.append(values.to_numpy(np.float64))
    units = []
    for row, text in enumerate(frame["action_units"].str.strip()):
        if text == "":
            units.append(None)  # no face found in this frame: dropped like a NaN frame
            continue
        try:
            if not (text.startswith("[") and text.endswith("]")):
                raise ValueError
            units.append([float(v) for v in re.split(r"[,\s]+", text[1:-1].strip()) if v])
        except ValueError:
            raise UserError(f"{path}: row {row + 1}, column 'action_units': {text[:40]!r} is not a list of numbers") from None
    lengths = {len(u) for u in units if u is not None}
    if len(lengths) > 1:
        raise UserError(f"{path}: 'action_units' lists of different lengths {sorted(lengths)}")
    n_units = lengths.pop() if lengths else 0
    units = np.array([u if u is not None else [np.nan] * n_units for u in units], dtype=np.float64).reshape(len(frame), n_units)
    values = np.concatenate([np.stack(scalars, 1).reshape(len(frame), -1), units], axis=1)
    beyond = np.isfinite(values) & (np.abs(values) > np.finfo(np.float32).max)  # features are stored as float32
    if beyond.any():
        row, col = map(int, np.argwhere(beyond)[0])
        name = OPENFACE_SCALARS[col] if col < len(OPENFACE_SCALARS) else "action_units"
        raise UserError(f"{path}: row {row + 1}, column '{name}': {values[row, col]:.3g} is beyond float32's range")
    values = values[np.isfinite(values).all(1)]
    return values if len(values) else None


@dataclass
class Clips:
    """The metadata's clips in output order: train rows, then test rows."""
    keys: list[str]    # lower-case clip keys, used to find files
    names: list[str]   # as written in the output metadata
    n_train: int


def prepare_series(enc: str, files: dict, clips: Clips, allow_missing: bool, progress) -> tuple[np.ndarray, list, dict]:
    """One encoder, clip by clip -> (X float32 [N_present, D], names, figures for the table)."""
    def check_missing(missing: list[int], why: str):
        if missing and not allow_missing:
            n_tr = sum(i < clips.n_train for i in missing)
            raise UserError(f"encoder '{enc}': {n_tr} train and {len(missing) - n_tr} test clips {why} "
                            f"(e.g. {', '.join(clips.names[i] for i in missing[:3])}); "
                            "pass --allow-missing (experiments then need data.allow_missing: true)")

    check_missing([i for i, k in enumerate(clips.keys) if k not in files], "have no file")
    acc = EncoderAccumulator(enc)
    X, rows, unusable = None, [], []
    task = progress.add_task(enc, total=len(clips.keys))
    for i, key in enumerate(clips.keys):
        progress.advance(task)
        path = files.get(key)
        if path is None:
            continue
        array = read_openface(path) if path.suffix.lower() == ".csv" else load_array(path)
        if array is None:
            unusable.append(i)
            continue
        vector = acc.add(path, array)
        if X is None:  # one preallocated block: series are never all held in memory
            X = np.empty((len(clips.keys), len(vector)), np.float32)
        X[i] = vector
        rows.append(i)
    check_missing(unusable, "have no frame without NaN")
    if not rows:
        raise UserError(f"encoder '{enc}': no usable clip")
    X = acc.finish(X)
    frames = np.array(acc.frames)
    figures = {"source": "clip vectors" if acc.kind == "vector" else "series",
               "train": sum(i < clips.n_train for i in rows), "test": sum(i >= clips.n_train for i in rows),
               "missing": len(clips.keys) - len(rows), "ignored": len(set(files) - set(clips.keys)),
               "frames": [int(frames.min()), int(np.median(frames)), int(frames.max())],
               "raw_width": int(acc.raw_width), "stored_width": int(acc.stored_width)}
    return X[rows], [clips.names[i] for i in rows], figures


def prepare_static(enc: str, files: list[Path], clips: Clips, allow_missing: bool) -> tuple[np.ndarray, list, dict]:
    """The organisers' aggregated `<enc>_static_features.npz` (X, filenames), kept to the metadata's clips."""
    index = {k: i for i, k in enumerate(clips.keys)}
    X, pos, ignored, width = [], [], 0, None
    for f in files:
        try:
            with np.load(f, allow_pickle=False) as z:
                block, names = z["X"], z["filenames"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            raise UserError(f"{f}: unreadable or not an (X, filenames) file ({str(err).splitlines()[0]})") from None
        if block.dtype.kind not in "iuf":
            raise UserError(f"{f}: X of {block.dtype}, expected real numbers (int or float)")
        if block.ndim != 2 or len(block) != len(names) or (width is not None and block.shape[1] != width):
            raise UserError(f"{f}: X {block.shape} and filenames {names.shape} do not fit [N, D], [N] "
                            f"(width {width} in the other files)")
        width = block.shape[1]
        for row, name in enumerate(names):
            i = index.get(strip_extension(str(name)).lower())
            if i is None:
                ignored += 1
            else:
                X.append(block[row])
                pos.append(i)
    missing = sorted(set(range(len(clips.keys))) - set(pos))
    if missing and not allow_missing:
        raise UserError(f"encoder '{enc}': {len(missing)} clips absent from {files[0].name} (e.g. "
                        f"{', '.join(clips.names[i] for i in missing[:3])}); pass --allow-missing")
    with np.errstate(over="ignore"):  # values beyond float32's range become inf, reported just below
        X = np.asarray(X, np.float32)
    if not np.isfinite(X).all():
        raise UserError(f"encoder '{enc}': NaN/inf values (in float32) in {files[0].name}")
    figures = {"source": "static npz", "train": sum(i < clips.n_train for i in pos),
               "test": sum(i >= clips.n_train for i in pos), "missing": len(missing), "ignored": ignored,
               "frames": None, "raw_width": int(width), "stored_width": int(width)}
    return X, [clips.names[i] for i in pos], figures


def read_manifest(path: Path) -> dict:
    """The last prepare's {encoder: record}; an unreadable or foreign file is ignored with a warning line."""
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):  # a UnicodeDecodeError is a ValueError too
        old = None
    if not isinstance(old, dict) or not all(isinstance(v, dict) for v in old.values()):
        print(f"warning: {path}: not the JSON object prepare writes (corrupt or replaced); ignored: the encoders "
              "are imported again", file=sys.stderr)
        return {}
    return old


def sources(download: Path, paths: list[Path]) -> dict:
    """Where an encoder comes from: the download folder, and each input file's size and content hash.

    Hashes are cached by (path, size, modification time) as run fingerprints are: a rerun reads no file again.
    """
    paths = sorted(set(paths))
    return {"download": str(download.resolve()),
            "files": {str(p.relative_to(download)): {"size": p.stat().st_size, "sha256": h}
                      for p, h in zip(paths, hash_files(paths))}}


def output_record(path: Path) -> dict:
    """The features file as written: its size and content hash."""
    return {"size": path.stat().st_size, "sha256": hash_files([path])[0]}


def stale(prev: dict | None, inputs: dict, target: Path, allow_missing: bool) -> str | None:
    """Why an encoder must be imported again (None: up to date). Decided by content, not modification times."""
    if not prev:
        return "not prepared before"
    if not (RECORD <= prev.keys() and isinstance(prev["inputs"], dict)):
        return f"its record in {MANIFEST} is incomplete"
    if prev["inputs"].get("download") != inputs["download"]:
        return f"prepared from another download ({prev['inputs'].get('download')})"
    old, new = prev["inputs"].get("files", {}), inputs["files"]
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        return f"{len(changed)} input files added, removed or changed (e.g. {changed[0]})"
    if not target.is_file():
        return f"{target} is missing"
    if prev["output"] != output_record(target):
        return f"{target.name} changed since it was written"
    if prev["missing"] != 0 and not allow_missing:
        return "clips were missing"
    return None


def warn_leftovers(old: dict, meta: dict, chosen: list[str], out: Path) -> None:
    """One warning line for the features files this run keeps (encoders not chosen) that other metadata made."""
    def matches(record: dict) -> bool:
        inputs = record.get("inputs")
        return isinstance(inputs, dict) and inputs.get("download") == meta["download"] and \
            all(inputs.get("files", {}).get(k) == v for k, v in meta["files"].items())
    kept = [p.stem for p in (out / "features").glob("*.npz") if p.stem not in chosen]
    left = sorted(enc for enc in kept if not matches(old.get(enc, {})))
    if left:
        print(f"warning: {out / 'features'}: {', '.join(left)} kept as they are, though not prepared from this "
              "download's metadata; prepare them too (--encoders) or delete them", file=sys.stderr)


def show(console: Console, figures: dict, out: Path) -> None:
    table = Table(title=f"prepared {out}")
    for col in ("encoder", "source", "train", "test", "missing", "ignored", "frames min/med/max", "raw D", "stored D"):
        table.add_column(col, justify="left" if col in ("encoder", "source") else "right")
    for enc, f in figures.items():
        frames = "/".join(map(str, f["frames"])) if f["frames"] else "-"
        source = f["source"] + (" (up to date: skipped)" if f.get("skipped") else "")
        table.add_row(enc, source, *(str(f[k]) for k in ("train", "test", "missing", "ignored")), frames,
                      str(f["raw_width"]), str(f["stored_width"]))
    console.print(table)


def prepare(download: Path, out: Path, encoders: list[str] | None = None, allow_missing: bool = False,
            console: Console | None = None) -> dict:
    """Write the dataset folder; returns {encoder: figures}. Nothing is written unless every step succeeded."""
    console = console or Console(width=None if sys.stdout.isatty() else 140)  # a log keeps the whole table
    download, out = Path(download), Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    dl = scan(download)
    found = sorted(set(dl.series) | set(dl.static))
    if not found:
        raise UserError(f"{download}: no encoder folders (<Encoder>_train/, <Encoder>_test/ holding .npy or .csv "
                        "clips) and no <enc>_static_features.npz files")
    chosen = found if not encoders else [e.lower() for e in encoders]
    unknown = [e for e in chosen if e not in found]
    if unknown:
        raise UserError(f"--encoders: '{unknown[0]}' not found in {download} (found: {', '.join(found)})")
    train, test, test_labels, template = metadata(dl)
    clips = Clips([strip_extension(f).lower() for f in list(train["filename"]) + list(test["filename"])],
                  list(train["filename"]) + list(test["filename"]), len(train))
    console.print(f"train metadata {dl.train_meta} ({len(train)} clips, {train['fold'].nunique()} folds); "
                  f"test metadata {dl.test_meta} ({len(test)} clips{', with labels' if test_labels is not None else ''}); "
                  f"template {dl.template or 'none (test names get .mov)'}")
    for enc in chosen:
        where = dl.folders.get(enc) or dl.static.get(enc)
        console.print(f"  {enc}: {len(dl.series.get(enc, dl.static.get(enc, [])))} files in "
                      f"{', '.join(str(p.relative_to(download)) for p in where)}"
                      + (f" ({dl.stray[enc]} other files ignored)" if dl.stray.get(enc) else ""))

    meta_inputs = [dl.train_meta, dl.test_meta] + ([dl.template] if dl.template else [])
    old = read_manifest(out / MANIFEST)
    warn_leftovers(old, sources(download, meta_inputs), chosen, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.prepare-", dir=out.parent))
    figures = {}
    try:
        with Progress(TextColumn("{task.description:>14}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as progress:
            for enc in chosen:
                target = out / "features" / f"{enc}.npz"
                inputs = sources(download, meta_inputs + list(dl.series.get(enc, {}).values()) + dl.static.get(enc, []))
                why = stale(old.get(enc), inputs, target, allow_missing)
                if why is None:
                    figures[enc] = {**old[enc], "skipped": True}
                    continue
                if enc in old:
                    console.print(f"  {enc}: importing again: {why}")
                if enc in dl.series:
                    X, names, figures[enc] = prepare_series(enc, dl.series[enc], clips, allow_missing, progress)
                else:
                    X, names, figures[enc] = prepare_static(enc, dl.static[enc], clips, allow_missing)
                write_features(stage / "features" / f"{enc}.npz", names, X)
                figures[enc]["inputs"] = inputs
        write_csv(stage / "train_metadata.csv", train)
        write_csv(stage / "test_metadata.csv", test)
        if test_labels is not None:  # read only by the scorer, after predictions are written
            write_csv(stage / "test_labels.csv", test_labels)
        if template is not None:
            write_text(stage / "submission_template.json", template)
        for path in sorted(p for p in stage.rglob("*") if p.is_file()):
            target = out / path.relative_to(stage)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    # Written last: until it is, the previous manifest's records no longer match and a rerun imports again.
    # The features files are hashed where they now lie, so the hash cache serves the next run.
    for enc, f in figures.items():
        if not f.get("skipped"):
            f["output"] = output_record(out / "features" / f"{enc}.npz")
    write_json(out / MANIFEST, {**{k: v for k, v in old.items() if k not in figures},
                                **{k: {x: y for x, y in v.items() if x != "skipped"} for k, v in figures.items()}})
    show(console, figures, out)
    if any(f["missing"] for f in figures.values()):
        console.print("clips are missing from some encoders: run experiments with --set data.allow_missing=true "
                      "(fusion models only)")
    console.print(f"next: bash run.sh exp042 --input {out}")
    return figures


@cli
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("download", type=Path, help="the organisers' download folder")
    p.add_argument("--out", type=Path, default=Path("input/blemore"), help="dataset folder to write (default input/blemore)")
    p.add_argument("--encoders", default=None, help="comma-separated encoder names (default: every one found)")
    p.add_argument("--allow-missing", action="store_true", help="keep encoders that lack some clips")
    args = p.parse_args(argv)
    t0 = time.time()
    prepare(args.download, args.out, args.encoders.split(",") if args.encoders else None, args.allow_missing)
    print(f"done in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
