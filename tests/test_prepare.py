"""`bash run.sh prepare`: a miniature copy of the organisers' download -> dataset folder -> exp042 -> submission."""
import json
import os
import shutil
import uuid
import zipfile

import numpy as np
import pandas as pd
import pytest

from src.data import synth_download
from src.features.aggregate import aggregate

from conftest import output_dir, run_cli, run_exp, submissions_dir

TRAIN = "pre_extracted_train_data"


@pytest.fixture
def download(tmp_path):
    return synth_download.write(tmp_path / "download", seed=0)


@pytest.fixture
def out_dir(tmp_path):
    name = f"blemore_{uuid.uuid4().hex[:8]}"  # experiment outputs are keyed by the dataset folder's name
    return tmp_path / name


def prepare(download, out, *args, check=True):
    return run_cli("src.data.prepare", download, "--out", out, *args, check=check)


def features(out, enc):
    with np.load(out / "features" / f"{enc}.npz") as z:
        return dict(zip(z["filenames"], z["X"]))


def test_download_to_submission(download, out_dir):
    proc = prepare(download, out_dir)
    assert "with labels" in proc.stdout and "openface_3" in proc.stdout and "ignored" in proc.stdout
    found = sorted(p.stem for p in (out_dir / "features").glob("*.npz"))
    assert found == ["hicmae", "hubert_large", "imagebind", "openface_3", "videomaev2", "wavlm_large"]
    template = json.loads((download / "template" / "submission_template.json").read_text())["predictions"]
    test_meta = pd.read_csv(out_dir / "test_metadata.csv")
    assert list(test_meta.columns) == ["filename"] and set(test_meta["filename"]) == set(template)
    labels = pd.read_csv(out_dir / "test_labels.csv", dtype=str, keep_default_na=False)
    assert set(labels["filename"]) == set(template) and labels["emotion_1"].ne("").all()
    assert len(pd.read_csv(out_dir / "train_metadata.csv").columns) == 12

    # every clip is in every encoder; the stray file and the unmatched clip are not
    train = pd.read_csv(download / "metadata" / "train_metadata.csv")
    for enc in found:
        keys = set(features(out_dir, enc))
        assert keys == set(train["filename"]) | set(template), enc
    # (T, 1, D) series squeezed and aggregated; clip vectors stored as is
    clip = train["filename"][0]
    raw = np.load(download / TRAIN / "VideoMAEv2_train" / f"{clip}.npy")
    assert raw.ndim == 3 and raw.shape[1] == 1
    np.testing.assert_allclose(features(out_dir, "videomaev2")[clip], aggregate(raw[:, 0, :]), rtol=1e-6)
    np.testing.assert_array_equal(features(out_dir, "hicmae")[clip], np.load(download / TRAIN / "HiCMAE_train" / f"{clip}.npy"))
    # OpenFace: 3 scalars + the 8 action units, frames holding nan dropped
    frame = pd.read_csv(download / TRAIN / "OpenFace_3_train" / f"{clip}.csv")
    units = np.array([json.loads(s.replace("nan", "NaN")) for s in frame["action_units"]])
    values = np.concatenate([frame[["emotion_index", "gaze_yaw", "gaze_pitch"]].to_numpy(float), units], 1)
    np.testing.assert_allclose(features(out_dir, "openface_3")[clip], aggregate(values[~np.isnan(values).any(1)]), rtol=1e-6)

    run_exp("exp042", out_dir, "--smoke")
    # top_n -1 still selects with six encoders: 5 kept per clip, and the log says so
    gates = pd.read_csv(output_dir("exp042", out_dir, "--smoke") / "oof.csv").filter(like="gate_")
    assert gates.shape[1] == 6 and ((gates > 0).sum(axis=1) == 5).all()
    assert "top_n -1: 5 of 6 encoders kept per clip" in (output_dir("exp042", out_dir, "--smoke") / "log.txt").read_text()
    sub = json.loads((submissions_dir(out_dir) / "exp042_rank_topn_coral@smoke.json").read_text())
    assert set(sub["predictions"]) == set(template)
    metrics = json.loads((output_dir("exp042", out_dir, "--smoke") / "metrics.json").read_text())
    assert "test" in metrics  # scored from the prepared test_labels.csv


def test_prepare_equals_the_importer(download, out_dir, tmp_path):
    prepare(download, out_dir, "--encoders", "VideoMAEv2,imagebind")
    assert sorted(p.stem for p in (out_dir / "features").glob("*.npz")) == ["imagebind", "videomaev2"]
    run_cli("src.features.aggregate", "--src", download / TRAIN / "VideoMAEv2_train", "--out", tmp_path / "features" / "v.npz")
    imported, prepared = features(tmp_path, "v"), features(out_dir, "videomaev2")
    for name, row in prepared.items():
        if name.startswith("A"):
            np.testing.assert_array_equal(row, imported[name])


def test_rerun_imports_again_only_what_changed(download, out_dir):
    """Content decides, not modification times: a rewritten clip re-imports its encoder even with an old mtime;
    a clip touched without change does not."""
    prepare(download, out_dir)
    before = {p.name: p.stat().st_mtime_ns for p in (out_dir / "features").glob("*.npz")}
    clip = first(download, "WavLM_large_train")
    np.save(clip, np.load(clip) + 1)
    os.utime(clip, (1e9, 1e9))  # 2001: older than everything prepared
    touched = first(download, "HuBERT_large_train")
    later = before["hubert_large.npz"] / 1e9 + 5
    os.utime(touched, (later, later))  # newer than its output, same content
    proc = prepare(download, out_dir)
    after = {p.name: p.stat().st_mtime_ns for p in (out_dir / "features").glob("*.npz")}
    assert [n for n in after if after[n] != before[n]] == ["wavlm_large.npz"]
    assert proc.stdout.count("skipped") == 5 and "wavlm_large: importing again: 1 input files" in proc.stdout
    assert np.allclose(features(out_dir, "wavlm_large")[clip.stem], aggregate(np.load(clip)))


def older_copy(src, dst):
    """A copy of a download whose files all carry a 2001 modification time, as after unpacking an archive."""
    shutil.copytree(src, dst)
    for p in [dst, *dst.rglob("*")]:
        os.utime(p, (1e9, 1e9))
    return dst


def test_another_download_with_older_files_is_imported(download, out_dir, tmp_path):
    prepare(download, out_dir, "--encoders", "hicmae,imagebind")
    other = older_copy(synth_download.write(tmp_path / "other_src", seed=1), tmp_path / "other")
    proc = prepare(other, out_dir, "--encoders", "hicmae,imagebind")
    assert "skipped" not in proc.stdout and proc.stdout.count("importing again: prepared from another download") == 2
    clip = first(other, "HiCMAE_train")
    assert np.array_equal(features(out_dir, "hicmae")[clip.stem], np.load(clip))
    # the same folder, its files replaced by older ones of other content: imported again too
    shutil.rmtree(other)
    older_copy(download, other)
    proc = prepare(other, out_dir, "--encoders", "hicmae,imagebind")
    assert "skipped" not in proc.stdout and proc.stdout.count("input files added, removed or changed") == 2
    clip = first(download, "HiCMAE_train")
    assert np.array_equal(features(out_dir, "hicmae")[clip.stem], np.load(clip))
    assert json.loads((out_dir / "prepare.json").read_text())["hicmae"]["inputs"]["download"] == str(other.resolve())


def test_nan_download_is_rejected_even_when_the_output_looked_up_to_date(download, out_dir, tmp_path):
    prepare(download, out_dir, "--encoders", "imagebind")
    kept = (out_dir / "features" / "imagebind.npz").read_bytes()
    broken = tmp_path / "broken"
    shutil.copytree(download, broken)
    np.save(first(broken, "ImageBind_train"), np.full((3, 16), np.nan, np.float32))
    for p in [broken, *broken.rglob("*")]:
        os.utime(p, (1e9, 1e9))  # older than the prepared output: "up to date" by modification times
    proc = prepare(broken, out_dir, "--encoders", "imagebind", check=False)
    assert proc.returncode == 2 and "NaN/inf values in the series" in proc.stderr and proc.stderr.count("\n") == 1
    assert (out_dir / "features" / "imagebind.npz").read_bytes() == kept


@pytest.mark.parametrize("text", ["{oops", "[1, 2]", '"imagebind"', '{"imagebind": 3}', ""])
def test_corrupt_manifest_is_ignored_with_a_warning(download, out_dir, text):
    prepare(download, out_dir, "--encoders", "imagebind")
    (out_dir / "prepare.json").write_text(text)
    proc = prepare(download, out_dir, "--encoders", "imagebind")
    assert proc.stderr.strip() == f"warning: {out_dir / 'prepare.json'}: not the JSON object prepare writes " \
        "(corrupt or replaced); ignored: the encoders are imported again"
    assert "skipped" not in proc.stdout
    assert json.loads((out_dir / "prepare.json").read_text())["imagebind"]["missing"] == 0


def test_features_kept_from_other_metadata_are_named(download, out_dir, tmp_path):
    prepare(download, out_dir, "--encoders", "hicmae,imagebind")
    other = synth_download.write(tmp_path / "other", seed=1)
    proc = prepare(other, out_dir, "--encoders", "hicmae")
    assert proc.returncode == 0 and proc.stderr.strip() == f"warning: {out_dir / 'features'}: imagebind kept as they " \
        "are, though not prepared from this download's metadata; prepare them too (--encoders) or delete them"


def test_allow_missing_keeps_the_rest(download, out_dir):
    (download / TRAIN / "WavLM_large_train" / "A100_disg_int1_ver1.npy").unlink()
    face = first(download, "OpenFace_3_train", ".csv")
    frame = pd.read_csv(face)
    frame["gaze_yaw"] = np.nan  # every frame holds a NaN: the clip has no usable frame
    frame.to_csv(face, index=False)
    proc = prepare(download, out_dir, check=False)
    assert proc.returncode == 2 and "no frame without NaN" in proc.stderr and not out_dir.exists()
    proc = prepare(download, out_dir, "--allow-missing")
    assert "data.allow_missing=true" in proc.stdout
    assert "A100_disg_int1_ver1" not in features(out_dir, "wavlm_large")
    assert face.stem not in features(out_dir, "openface_3") and len(features(out_dir, "openface_3")) == 95
    assert json.loads((out_dir / "prepare.json").read_text())["openface_3"]["missing"] == 1


def test_template_inside_the_codabench_zip(download, out_dir):
    template = download / "template" / "submission_template.json"
    with zipfile.ZipFile(download / "template" / "BlEmoRe_template.zip", "w") as z:
        z.writestr("submission_template.json", template.read_text())
    template.unlink()
    prepare(download, out_dir, "--encoders", "hicmae")
    keys = json.loads((out_dir / "submission_template.json").read_text())["predictions"]
    assert set(keys) == set(pd.read_csv(out_dir / "test_metadata.csv")["filename"]) and len(keys) == 24


def test_organisers_static_features_are_used(download, out_dir, tmp_path):
    """A download holding only the organisers' aggregated <enc>_static_features.npz (X, filenames)."""
    only = tmp_path / "static_only"
    shutil.copytree(download / "metadata", only / "meta")
    shutil.copytree(download / "template", only / "template")
    names = pd.read_csv(only / "meta" / "train_metadata.csv")["filename"].tolist()
    names += [f"test_{i + 1:04d}.mov" for i in range(24)] + ["A999_ang_int1_ver1"]  # the last matches no clip
    X = np.random.default_rng(0).normal(size=(len(names), 9)).astype(np.float32)
    np.savez(only / "ImageBind_static_features.npz", X=X, filenames=np.array(names))
    prepare(only, out_dir)
    stored = features(out_dir, "imagebind")
    assert len(stored) == 96 and np.array_equal(stored[names[0]], X[0]) and np.array_equal(stored[names[-2]], X[-2])
    assert json.loads((out_dir / "prepare.json").read_text())["imagebind"]["ignored"] == 1


@pytest.mark.parametrize("X,message", [(np.full((97, 9), 1e300), "NaN/inf values (in float32) in ImageBind_static"),
                                       (np.ones((97, 9), np.complex128), "X of complex128, expected real numbers")])
def test_static_features_beyond_float32_or_complex_are_rejected(download, out_dir, tmp_path, X, message):
    only = tmp_path / "static_only"
    shutil.copytree(download / "metadata", only / "meta")
    names = pd.read_csv(only / "meta" / "train_metadata.csv")["filename"].tolist() + [f"test_{i + 1:04d}.mov" for i in range(24)]
    np.savez(only / "ImageBind_static_features.npz", X=X[:len(names)], filenames=np.array(names))
    proc = prepare(only, out_dir, check=False)
    assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert not out_dir.exists()


def corrupt(path, data):
    path.write_bytes(data)


def first(download, folder, suffix=".npy", index=0):
    return sorted((download / TRAIN / folder).glob(f"A1*{suffix}"))[index]  # A999 matches no clip


def set_column(path, column, value):
    """Rewrite one CSV column: None drops it, a function of the frame gives the new values."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if value is None:
        frame.pop(column)
    else:
        frame[column] = value(frame) if callable(value) else value
    frame.to_csv(path, index=False)


BAD = {
    "no metadata": (lambda d: (d / "metadata" / "train_metadata.csv").unlink(), "no train metadata found"),
    "garbage npy": (lambda d: corrupt(first(d, "VideoMAEv2_train"), b"not an array"), "unreadable or corrupt array"),
    "empty npy": (lambda d: corrupt(first(d, "HuBERT_large_train"), b""), "empty file (0 bytes)"),
    "truncated npy": (lambda d: corrupt(first(d, "WavLM_large_train"), first(d, "WavLM_large_train").read_bytes()[:-40]),
                      "unreadable or corrupt array"),
    "width differs": (lambda d: np.save(first(d, "ImageBind_train", index=-1), np.zeros((3, 99), np.float32)),
                      "width 99 differs from 16"),
    "1-D among 2-D": (lambda d: np.save(first(d, "ImageBind_train", index=-1), np.zeros(16, np.float32)),
                      "mixes 1-D and 2-D clips"),
    "NaN in a series": (lambda d: np.save(first(d, "ImageBind_train"), np.full((3, 16), np.nan, np.float32)), "NaN/inf"),
    "no action_units": (lambda d: set_column(first(d, "OpenFace_3_train", ".csv"), "action_units", None),
                        "missing column 'action_units'"),
    "action_units not a list": (lambda d: set_column(first(d, "OpenFace_3_train", ".csv"), "action_units", "[0.1, smile]"),
                                "is not a list of numbers"),
    "test clip not in template": (lambda d: set_column(d / "metadata" / "test_metadata.csv", "filename",
                                                       lambda f: ["test_9999"] + list(f["filename"][1:])),
                                  "test clip 'test_9999' is absent from submission_template.json"),
    "missing clip": (lambda d: first(d, "HiCMAE_train").unlink(), "encoder 'hicmae': 1 train and 0 test clips have no file"),
    "complex npy": (lambda d: np.save(first(d, "ImageBind_train"), np.ones((3, 16), np.complex64)),
                    "array of complex64, expected real numbers (int or float)"),
    "npy beyond float32": (lambda d: np.save(first(d, "ImageBind_train"), np.full((3, 16), 1e300)),
                           "48 values beyond float32's range (up to 1e+300"),
    "OpenFace beyond float32": (lambda d: set_column(first(d, "OpenFace_3_train", ".csv"), "gaze_yaw", "1e300"),
                                "row 1, column 'gaze_yaw': 1e+300 is beyond float32's range"),
    "train metadata header only": (lambda d: header_only(d / "metadata" / "train_metadata.csv"),
                                   "train_metadata.csv: no rows (only a header)"),
    "test metadata header only": (lambda d: header_only(d / "metadata" / "test_metadata.csv"),
                                  "test_metadata.csv: no rows (only a header)"),
    "train salience inf": (lambda d: set_cell(d / "metadata" / "train_metadata.csv", "emotion_1_salience", "inf"),
                           "column 'emotion_1_salience': salience 'inf' is not a finite number"),
    "test label salience nan": (lambda d: set_cell(d / "metadata" / "test_metadata.csv", "emotion_2_salience", "nan"),
                                "column 'emotion_2_salience': salience 'nan' is not a finite number"),
    "fold superscript": (lambda d: set_cell(d / "metadata" / "train_metadata.csv", "fold", "²", blend=False),
                         "row 1, column 'fold': '²' is not a plain integer"),
    "fold 30 digits": (lambda d: set_cell(d / "metadata" / "train_metadata.csv", "fold", "9" * 30, blend=False),
                       "is not a plain integer"),
    "duplicate clip ignoring case": (lambda d: set_column(d / "metadata" / "test_metadata.csv", "filename",
                                                          lambda f: [f["filename"][1].upper()] + list(f["filename"][1:])),
                                     "duplicate file names, e.g. "),
}


def header_only(path):
    path.write_text(path.read_text().splitlines()[0] + "\n")


def set_cell(path, column, value, blend=True):
    """Rewrite one cell: in the first blend row (a row with two emotions), or in the first row."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    row = int(np.flatnonzero(frame["emotion_2"] != "")[0]) if blend else 0
    frame.loc[row, column] = value
    frame.to_csv(path, index=False)


@pytest.mark.parametrize("case", list(BAD))
def test_bad_download_is_one_line_and_writes_nothing(download, out_dir, tmp_path, case):
    break_it, message = BAD[case]
    break_it(download)
    proc = prepare(download, out_dir, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["download"]  # no output, no staging folder left


def test_bad_arguments_are_one_line(download, out_dir, tmp_path):
    proc = prepare(download, out_dir, "--encoders", "clip", check=False)
    assert proc.returncode == 2 and "'clip' not found" in proc.stderr and "videomaev2" in proc.stderr
    (tmp_path / "file").write_text("x")
    proc = prepare(download, tmp_path / "file", check=False)
    assert proc.returncode == 2 and "is not a folder" in proc.stderr
