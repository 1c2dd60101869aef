"""The dataset contract: loading, and every validation error as a one-line message naming file and problem."""
import json

import numpy as np
import pandas as pd
import pytest

from src import data
from src.data import synth
from src.errors import UserError

from conftest import output_dir, run_exp


def test_synthetic_structure_matches_the_real_data(tmp_path):
    ds = data.load(synth.write(tmp_path / "full", seed=0))
    assert ds.n_train == 2456 and len(ds.test_files) == 594
    assert len(set(ds.actors)) == 47 and ds.fold_ids == [0, 1, 2, 3, 4]
    assert pd.Series(ds.actors).value_counts().max() == 54
    assert ds.encoders == sorted(synth.ENCODERS)
    assert ds.test_files[0] == "test_0001.mov" and ds.template_keys == sorted(ds.test_files)
    assert all(X.dtype == np.float32 and X.shape[0] == 2456 + 594 for X in ds.features.values())
    # every actor in exactly one fold
    assert pd.DataFrame({"a": ds.actors, "f": ds.folds}).groupby("a")["f"].nunique().max() == 1


def test_synth_is_deterministic(tmp_path):
    a, b = synth.write(tmp_path / "a", seed=3, **{"n_train_actors": 4, "n_test_actors": 1, "n_folds": 2}), \
        synth.write(tmp_path / "b", seed=3, **{"n_train_actors": 4, "n_test_actors": 1, "n_folds": 2})
    for f in sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file()):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    c = synth.write(tmp_path / "c", seed=4, **{"n_train_actors": 4, "n_test_actors": 1, "n_folds": 2})
    assert (a / "features" / "wavlm.npz").read_bytes() != (c / "features" / "wavlm.npz").read_bytes()


def test_labels_from_file_names_when_columns_absent(make_dataset):
    root = make_dataset()
    with_cols = data.load(root, ["wavlm"]).labels
    meta = pd.read_csv(root / "train_metadata.csv")
    meta[["filename", "fold"]].to_csv(root / "train_metadata.csv", index=False)
    assert (data.load(root, ["wavlm"]).labels == with_cols).all()


def edit_csv(path, fn):
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    fn(frame).to_csv(path, index=False)


def set_cell(col, row, value):
    def fn(frame):
        frame.loc[row, col] = value
        return frame
    return fn


BREAKS = {
    "missing file": (lambda r: (r / "test_metadata.csv").unlink(), "test_metadata.csv: file not found"),
    "missing fold column": (lambda r: edit_csv(r / "train_metadata.csv", lambda f: f.drop(columns="fold")),
                            "missing column 'fold'"),
    "missing filename column": (lambda r: edit_csv(r / "test_metadata.csv", lambda f: f.rename(columns={"filename": "name"})),
                                "missing column 'filename'"),
    "non-integer fold": (lambda r: edit_csv(r / "train_metadata.csv", set_cell("fold", 3, "two")),
                         "train_metadata.csv: row 4, column 'fold': 'two' is not a plain integer"),
    "actor in two folds": (lambda r: edit_csv(r / "train_metadata.csv",
                                              set_cell("fold", 0, "9")), "appears in several folds"),
    "duplicate file names": (lambda r: edit_csv(r / "train_metadata.csv", lambda f: pd.concat([f, f.iloc[:1]])),
                             "duplicate file names, e.g. 'A114_ang_int1_ver1' in rows 1 and "),
    "test metadata is a folder": (lambda r: ((r / "test_metadata.csv").unlink(), (r / "test_metadata.csv").mkdir()),
                                  "test_metadata.csv: is a folder, not a CSV file"),
    "blank second salience": (lambda r: edit_csv(r / "train_metadata.csv", set_cell("emotion_2_salience", 24, "")),
                              "row 25 ('A114_mix_ang_hap_70_30_ver1'), column 'emotion_2_salience': blank although "
                              "emotion_2 is 'hap'"),
    "salience not a number": (lambda r: edit_csv(r / "train_metadata.csv", set_cell("emotion_1_salience", 24, "70%")),
                              "row 25 ('A114_mix_ang_hap_70_30_ver1'), column 'emotion_1_salience': '70%' is not a number"),
    "unknown emotion": (lambda r: edit_csv(r / "train_metadata.csv", set_cell("emotion_1", 0, "joy")),
                        "unknown emotion code 'joy'"),
    "bad salience": (lambda r: edit_csv(r / "train_metadata.csv", lambda f: f.assign(
        emotion_1_salience=np.where(f["mix"] == "1", "60", f["emotion_1_salience"]),
        emotion_2_salience=np.where(f["mix"] == "1", "40", f["emotion_2_salience"]))), "illegal label"),
    "neutral blend": (lambda r: edit_csv(r / "train_metadata.csv", lambda f: f.assign(
        emotion_1=np.where(f["mix"] == "1", "neu", f["emotion_1"]))), "illegal label"),
    "X and filenames lengths": (lambda r: np.savez(r / "features" / "wavlm.npz", X=np.zeros((5, 3)),
                                                   filenames=np.array(["a"] * 4)), "same N"),
    "NaN in X": (lambda r: nan_in(r / "features" / "wavlm.npz"), "encoder 'wavlm' (wavlm.npz): 3 NaN/inf values"),
    "clips missing from an encoder": (lambda r: drop_rows(r / "features" / "wavlm.npz", 4),
                                      "encoder 'wavlm': 4 train and 0 test clips missing"),
    "test clips absent from the template": (lambda r: shrink_template(r / "submission_template.json"),
                                            "test clips absent from submission_template.json"),
}


def nan_in(path):
    z = dict(np.load(path))
    z["X"][1, :3] = np.nan
    np.savez(path, **z)


def drop_rows(path, n):
    z = dict(np.load(path))
    np.savez(path, X=z["X"][n:], filenames=z["filenames"][n:])


def shrink_template(path):
    t = json.loads(path.read_text())
    t["predictions"].pop(sorted(t["predictions"])[0])
    path.write_text(json.dumps(t))


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_validation_errors(make_dataset, case):
    root = make_dataset()
    breaker, message = BREAKS[case]
    breaker(root)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        data.load(root)
    assert "\n" not in str(err.value)


def test_one_csv_reader():
    """Metadata, labels, encoders.csv, OpenFace frames and CSV submissions are all read by data.read_csv."""
    import inspect

    from src.data import prepare
    from src.decode import scoring
    assert inspect.getsource(data).count("pd.read_csv(") == 1 and not hasattr(data, "_read_csv")
    for module in (prepare, scoring):
        assert "pd.read_csv(" not in inspect.getsource(module) and "read_csv(" in inspect.getsource(module)


def test_missing_folder_and_unknown_encoder(tmp_path, shared_dataset):
    with pytest.raises(UserError, match="dataset folder not found"):
        data.load(tmp_path / "nope")
    with pytest.raises(UserError, match="encoder 'resnet': no file"):
        data.load(shared_dataset, ["resnet"])


def test_allow_missing_masks_absent_clips(make_dataset):
    root = make_dataset()
    drop_rows(root / "features" / "wavlm.npz", 4)
    ds = data.load(root, allow_missing=True)
    assert (~ds.present["wavlm"]).sum() == 4 and ds.present["clip"].all()
    assert not ds.features["wavlm"][~ds.present["wavlm"]].any()


def test_bad_input_through_the_command_line(make_dataset):
    """One line on stderr, exit code 2, no traceback, nothing written."""
    root = make_dataset()
    nan_in(root / "features" / "hubert.npz")
    proc = run_exp("exp020", root, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "hubert" in proc.stderr and "Traceback" not in proc.stderr
    assert not output_dir("exp020", root).exists()
