"""Bad input as a careless user gives it: one line naming the problem, exit 2, nothing written.

Each case id below is listed in docs/bad_input.md (a test checks both directions). Most cases
fail before the first model trains, which is the point: they cost a dataset load, not a training run.
"""
import io
import json
import os
import re
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
from rich.console import Console
from test_metric import official_score

from src.analysis import leaderboard
from src.data import synth
from src.decode import submission
from src.decode.metric import score
from src.decode.scoring import read_submission, score_maps
from src.errors import UserError
from src.io import WriteError, atomic_write
from src.labels import CONFIGS
from src.run import checks, config, results
from src.run.experiments import resolve, submissions_root
from src.train.inputs import StackedInputs, fit_standardizer

from conftest import ROOT, output_dir, run_cli, run_script, submissions_dir


def run_inproc(exp: str, root, *args) -> str:
    """The real experiment entry point, in this process (fast): returns its one-line error."""
    from src.main import run
    with pytest.raises(SystemExit) as exit_:
        run(resolve(exp), ["--input", str(root), "--quiet", *map(str, args)])  # no --set: it would make a variant
    assert exit_.value.code == 2
    return exit_.value


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def assert_nothing_written(exp: str, root) -> None:
    assert not output_dir(exp, root).exists()
    assert not (submissions_dir(root)).exists()


# ---- the feature files --------------------------------------------------------------------------------
def npz(root, name="wavlm"):
    return root / "features" / f"{name}.npz"


def rewrite(root, **change):
    z = dict(np.load(npz(root)))
    z.update({k: (f(z) if callable(f) else f) for k, f in change.items()})
    np.savez(npz(root), **z)


def overflow(z):
    X = z["X"].copy()
    X[:5, 0] = 3e38  # near float32's maximum: the z-score's squares overflow
    return X


def beyond_float32(z):
    X = z["X"].astype(np.float64)
    X[2] = 1e300  # finite in float64, inf once read as float32
    return X


def edit_csv(path, fn):
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    fn(frame).to_csv(path, index=False)


def fold_map(mapping):
    return lambda root: edit_csv(root / "train_metadata.csv",
                                 lambda f: f.assign(fold=f["fold"].map(lambda v: str(mapping.get(int(v), v)))))


def set_cell(name, row, column, value):
    """Rewrite one cell of a dataset CSV; row 0 is the first row under the header."""
    def fn(root):
        frame = pd.read_csv(root / name, dtype=str, keep_default_na=False)
        frame.loc[row, column] = value
        frame.to_csv(root / name, index=False)
    return fn


def header_only(name, drop_template=False):
    def fn(root):
        (root / name).write_text((root / name).read_text().splitlines()[0] + "\n")
        if drop_template:
            (root / "submission_template.json").unlink()
    return fn


def template_extra(root):
    path = root / "submission_template.json"
    t = json.loads(path.read_text())
    t["predictions"]["test_9999.mov"] = [{"emotion": "sad", "salience": 100.0}]
    path.write_text(json.dumps(t))


def fractions(frame):
    blend = frame["mix"] == "1"
    for col in ("emotion_1_salience", "emotion_2_salience"):
        frame.loc[blend, col] = frame.loc[blend, col].map(lambda v: f"{float(v) / 100:g}")
    return frame


# case id -> (experiment, dataset breaker or None, --set values, expected message)
BEFORE_TRAINING = {
    # config: ranges from the schema, YAML and --set alike
    "seeds_zero": ("exp020", None, ["train.seeds=0"], "--set train.seeds: 0 is below the minimum 1"),
    "batch_size_zero": ("exp020", None, ["train.batch_size=0"], "--set train.batch_size: 0 is below the minimum 2"),
    "batch_size_one": ("exp020", None, ["train.batch_size=1"], "train.batch_size: 1 is below the minimum 2 (a batch needs two rows"),
    "lr_negative": ("exp020", None, ["train.lr=-1"], "--set train.lr: -1 must be above 0"),
    "lr_zero": ("exp020", None, ["train.lr=0"], "train.lr: 0 must be above 0"),
    "epochs_zero": ("exp020", None, ["train.epochs=0"], "train.epochs: 0 is below the minimum 1"),
    "epochs_negative": ("exp020", None, ["train.epochs=-1"], "train.epochs: -1 is below the minimum 1"),
    "patience_zero": ("exp020", None, ["train.patience=0"], "train.patience: 0 is below the minimum 1"),
    "workers_negative": ("exp020", None, ["train.workers=-1"], "train.workers: -1 is below the minimum 0"),
    "weight_decay_negative": ("exp020", None, ["train.weight_decay=-0.1"], "train.weight_decay: -0.1 is below the minimum 0"),
    "dropout_above_one": ("exp020", None, ["model.dropout=1.5"], "model.dropout: 1.5 must be below 1"),
    "dropout_one": ("exp020", None, ["model.dropout=1"], "model.dropout: 1 must be below 1"),
    "encoder_dropout_one": ("exp040", None, ["model.encoder_dropout=1.0"], "model.encoder_dropout: 1.0 must be below 1"),
    "test_subsets_negative": ("exp052", None, ["model.test_subsets=-1"], "model.test_subsets: -1 is below the minimum 0"),
    "test_subsets_without_encoder_dropout": ("exp042", None, ["model.test_subsets=4"],
                                             "model.test_subsets: 4 needs a fusion model with model.encoder_dropout > 0"),
    "hidden_zero": ("exp020", None, ["model.hidden=0"], "model.hidden: 0 is below the minimum 1"),
    "shared_dim_zero": ("exp040", None, ["model.shared_dim=0"], "model.shared_dim: 0 is below the minimum 1"),
    "fused_dim_zero": ("exp040", None, ["model.fused_dim=0"], "model.fused_dim: 0 is below the minimum 1"),
    "gate_heads_zero": ("exp040", None, ["model.gate_heads=0"], "model.gate_heads: 0 is below the minimum 1"),
    "gate_heads_not_dividing": ("exp040", None, ["model.gate_heads=3"], "model.gate_heads: 3 does not divide model.shared_dim 256"),
    "top_n_zero": ("exp040", None, ["model.top_n=0"], "model.top_n: 0 is not allowed (n >= 1 keeps n encoders, -k all but k, all every encoder)"),
    "top_n_above_encoders": ("exp040", None, ["model.top_n=9"], "model.top_n: 9 is more than the 7 encoders loaded"),
    "grid_zero": ("exp020", None, ["decoder.grid=0"], "decoder.grid: 0 is below the minimum 1"),
    "head_weights_empty": ("exp040", None, ["decoder.head_weights=[]"], "decoder.head_weights: needs at least 1 value"),
    "head_weight_above_one": ("exp040", None, ["decoder.head_weights=[0.5, 2]"], "decoder.head_weights[1]: 2 is above the maximum 1"),
    "coral_weight_negative": ("exp040", None, ["adapt.coral_weight=-1"], "adapt.coral_weight: -1 is below the minimum 0"),
    "encoder_listed_twice": ("exp020", None, ["data.encoders=[wavlm, wavlm]"], "data.encoders: wavlm listed more than once"),
    "set_without_value": ("exp020", None, ["train.epochs"], "--set 'train.epochs': expected key.path=value"),
    "set_section_then_key": ("exp010", None, ["train=abc", "train.epochs=5"],
                             "error: --set 'train=abc' and --set 'train.epochs=5': 'train' cannot take both a value "
                             "and keys under it; keep one of them"),
    "set_key_then_section": ("exp010", None, ["train.epochs=5", "train=abc"],
                             "error: --set 'train.epochs=5' and --set 'train=abc': 'train' cannot take both a value "
                             "and keys under it; keep one of them"),
    # feature files
    "npz_zero_bytes": ("exp020", lambda r: npz(r).write_bytes(b""), [], "wavlm.npz: empty file (0 bytes)"),
    "npz_truncated": ("exp020", lambda r: npz(r).write_bytes(npz(r).read_bytes()[:200]), [],
                      "wavlm.npz: not a readable .npz archive (truncated or another format"),
    "npz_garbage": ("exp020", lambda r: npz(r).write_text("id,value\n1,2\n"), [], "wavlm.npz: not a readable .npz archive"),
    "npz_pickled_filenames": ("exp020", lambda r: rewrite(r, filenames=lambda z: z["filenames"].astype(object)), [],
                              "wavlm.npz: holds Python objects (pickled)"),
    "npz_integer_filenames": ("exp020", lambda r: rewrite(r, filenames=lambda z: np.arange(len(z["X"]))), [],
                              "wavlm.npz: filenames must be strings, has dtype int64 (e.g. 0)"),
    "npz_width_zero": ("exp020", lambda r: rewrite(r, X=lambda z: z["X"][:, :0]), [],
                       "encoder 'wavlm' (wavlm.npz): X has width 0"),
    "npz_text_X": ("exp020", lambda r: rewrite(r, X=lambda z: z["X"].astype(str)), [], "X must hold numbers"),
    "npz_overflow": ("exp020", lambda r: rewrite(r, X=overflow), [],
                     "encoder 'wavlm': values up to 3e+38 in 1 feature columns (first: column 0) overflow float32"),
    "npz_float64_beyond_float32": ("exp020", lambda r: rewrite(r, X=beyond_float32), [],
                                   "NaN/inf values (in float32) in 1 rows"),
    # metadata
    "fold_negative": ("exp020", fold_map({0: -1}), [], "fold values must be 0..K-1 with none skipped, found [-1, 1, 2]"),
    "fold_skipped": ("exp020", fold_map({2: 5}), [], "fold values must be 0..K-1 with none skipped, found [0, 1, 5]"),
    "single_fold": ("exp020", fold_map({1: 0, 2: 0}), [], "train_metadata.csv: needs at least 2 folds"),
    # a fold id is a plain integer: ASCII digits 0-9 with an optional leading '-' (at most 18), nothing else
    "fold_superscript": ("exp020", set_cell("train_metadata.csv", 0, "fold", "²"), [],
                         "train_metadata.csv: row 1, column 'fold': '²' is not a plain integer (ASCII digits 0-9, "
                         "an optional leading '-', nothing else)"),
    "fold_30_digits": ("exp020", set_cell("train_metadata.csv", 0, "fold", "1" * 30), [],
                       f"train_metadata.csv: row 1, column 'fold': '{'1' * 30}' is not a plain integer"),
    "fold_decimal": ("exp020", set_cell("train_metadata.csv", 2, "fold", "1.5"), [],
                     "train_metadata.csv: row 3, column 'fold': '1.5' is not a plain integer"),
    "fold_float_zero": ("exp020", set_cell("train_metadata.csv", 2, "fold", "1.0"), [],
                        "train_metadata.csv: row 3, column 'fold': '1.0' is not a plain integer"),
    "fold_leading_space": ("exp020", set_cell("train_metadata.csv", 0, "fold", " 1"), [],
                           "train_metadata.csv: row 1, column 'fold': ' 1' is not a plain integer"),
    "fold_plus_sign": ("exp020", set_cell("train_metadata.csv", 0, "fold", "+1"), [],
                       "train_metadata.csv: row 1, column 'fold': '+1' is not a plain integer"),
    "fold_arabic_digit": ("exp020", set_cell("train_metadata.csv", 0, "fold", "\u0661"), [],
                          "train_metadata.csv: row 1, column 'fold': '\u0661' is not a plain integer"),
    # non-finite saliences: the row (1 = first under the header), its clip and the column are named
    "train_salience_inf": ("exp020", set_cell("train_metadata.csv", 24, "emotion_1_salience", "inf"), [],
                           "train_metadata.csv: row 25 ('A114_mix_ang_hap_70_30_ver1'), column 'emotion_1_salience': "
                           "salience 'inf' is not a finite number"),
    "train_salience_nan": ("exp020", set_cell("train_metadata.csv", 24, "emotion_2_salience", "nan"), [],
                           "train_metadata.csv: row 25 ('A114_mix_ang_hap_70_30_ver1'), column 'emotion_2_salience': "
                           "salience 'nan' is not a finite number"),
    "train_salience_minus_inf_single": ("exp020", set_cell("train_metadata.csv", 0, "emotion_1_salience", "-inf"), [],
                                        "train_metadata.csv: row 1 ('A114_ang_int1_ver1'), column 'emotion_1_salience': "
                                        "salience '-inf' is not a finite number"),
    "test_labels_salience_inf": ("exp020", set_cell("test_labels.csv", 0, "emotion_2_salience", "inf"), [],
                                 "test_labels.csv: row 1 ('test_0001.mov'), column 'emotion_2_salience': "
                                 "salience 'inf' is not a finite number"),
    "test_labels_salience_nan": ("exp020", set_cell("test_labels.csv", 1, "emotion_1_salience", "NaN"), [],
                                 "test_labels.csv: row 2 ('test_0002.mov'), column 'emotion_1_salience': "
                                 "salience 'NaN' is not a finite number"),
    "train_metadata_header_only": ("exp020", header_only("train_metadata.csv"), [], "train_metadata.csv: no rows"),
    "test_metadata_header_only": ("exp020", header_only("test_metadata.csv"), [], "test_metadata.csv: no rows"),
    "test_metadata_header_only_no_template": ("exp020", header_only("test_metadata.csv", True), [], "test_metadata.csv: no rows"),
    "template_extra_key": ("exp020", template_extra, [],
                           "submission_template.json: 1 keys not listed in test_metadata.csv (e.g. test_9999.mov)"),
    "salience_fractions": ("exp020", lambda r: edit_csv(r / "train_metadata.csv", fractions), [],
                           "saliences must be 50/50, 70/30 or 30/70 between two different non-neutral emotions "
                           "(saliences are percentages"),
    "test_labels_header_only": ("exp020", header_only("test_labels.csv"), [], "test_labels.csv: no rows"),
    "test_labels_unknown_emotion": ("exp020", lambda r: edit_csv(r / "test_labels.csv", lambda f: f.assign(emotion_1="joy")), [],
                                    "test_labels.csv: row 1 ('test_0001.mov'): unknown emotion code 'joy'"),
    "test_labels_missing_clip": ("exp020", lambda r: edit_csv(r / "test_labels.csv", lambda f: f.iloc[1:]), [],
                                 "test_labels.csv: 1 test clips have no label"),
    "test_labels_zero_bytes": ("exp020", lambda r: (r / "test_labels.csv").write_bytes(b""), [],
                               "test_labels.csv: cannot parse CSV"),
}


@pytest.mark.parametrize("case", sorted(BEFORE_TRAINING))
def test_bad_input_fails_before_training(case, make_dataset, capsys):
    exp, breaker, sets, message = BEFORE_TRAINING[case]
    root = make_dataset()
    if breaker is not None:
        breaker(root)
    run_inproc(exp, root, *[a for s in sets for a in ("--set", s)])
    err = one_line_error(capsys)
    assert message in err, err
    assert not re.search(r"np\.(int|float|str_)", err) and "--set: --set" not in err and "allow_pickle" not in err
    assert_nothing_written(exp, root)


def test_conflicting_sets_through_the_command_line(make_dataset):
    """As `bash run.sh exp010 --set train=abc --set train.epochs=5` runs it."""
    root = make_dataset()
    proc = run_cli("src.main", "exp010", "--input", root, "--quiet", "--set", "train=abc", "--set",
                   "train.epochs=5", check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --set 'train=abc' and --set 'train.epochs=5': " \
        "'train' cannot take both a value and keys under it; keep one of them", proc.stderr
    assert_nothing_written("exp010", root)


def test_empty_name_is_refused(make_dataset, capsys):
    root = make_dataset()
    run_inproc("exp000", root, "--name", "")
    assert one_line_error(capsys) == "error: --name '': empty; give a name (letters, digits and . _ + = -) or leave " \
        "--name out for the automatic one"
    assert_nothing_written("exp000", root)
    from src.run.pipeline import parse_args
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    assert "an empty name is refused" in " ".join(capsys.readouterr().out.split())  # the help says so


def test_salience_fractions_are_shown_as_typed(make_dataset, capsys):
    root = make_dataset()
    edit_csv(root / "train_metadata.csv", fractions)
    run_inproc("exp020", root)
    assert re.search(r"illegal label \[\w+ 0\.[37], \w+ 0\.[37]\]", one_line_error(capsys))


def test_bad_set_through_the_command_line(make_dataset):
    root = make_dataset()
    proc = run_cli("src.main", "exp020", "--input", root, "--quiet", "--set", "train.batch_size=0",
                   check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == \
        "error: --set train.batch_size: 0 is below the minimum 2 (a batch needs two rows for its statistics and CORAL)"
    assert_nothing_written("exp020", root)


def test_yaml_values_are_range_checked_like_set(tmp_path):
    exp = tmp_path / "exp999_range"
    exp.mkdir()
    (exp / "config.yaml").write_text("parent: exp040\nmodel:\n  dropout: 1.5\n")
    with pytest.raises(UserError, match=r"^exp999_range/config.yaml: model.dropout: 1.5 must be below 1"):
        config.load(exp)


def test_spec_gives_type_and_range_for_tuners():
    s = config.spec("model.dropout")
    assert s.type is float and s.default == 0.0 and s.check(0.5) == 0.5
    with pytest.raises(UserError, match="model.dropout: 1.5 must be below 1"):
        s.check(1.5)
    assert config.spec("train.batch_size").range.low == 2 and config.spec("model.top_n").check("all") == "all"
    with pytest.raises(UserError, match="unknown key 'train.epoch'"):
        config.spec("train.epoch")
    # every default is inside its own range
    for section in ("data", "model", "train", "decoder", "adapt"):
        for f in config.dataclasses.fields(getattr(config, section.capitalize())):
            config.spec(f"{section}.{f.name}").check(config.spec(f"{section}.{f.name}").default)


# ---- documented behaviours: legitimate values that are accepted -------------------------------------
def test_integer_X_bytes_filenames_and_constant_features_are_accepted(make_dataset):
    from src import data
    root = make_dataset()
    ref = data.load(root, ["wavlm"]).features["wavlm"]
    rewrite(root, X=lambda z: np.round(z["X"] * 100).astype(np.int32),
            filenames=lambda z: np.char.encode(z["filenames"], "utf-8"))
    ds = data.load(root, ["wavlm"])
    assert ds.features["wavlm"].dtype == np.float32 and np.allclose(ds.features["wavlm"], np.round(ref * 100))
    # a constant feature standardises to 0
    X = ds.features["wavlm"].copy()
    X[:, 0] = 7.0
    present = ds.present["wavlm"]
    stats = [[fit_standardizer(X, np.arange(ds.n_train), present)]]
    (z,), _ = StackedInputs([X], [present], stats, False, "cpu").gather_one(0, torch.arange(len(X)))
    assert torch.isfinite(z).all() and not z[:, 0].any()


# ---- output folders: checked before training; a late failure says how to finish -------------------------
@pytest.mark.parametrize("case", ["submissions_folder_is_a_file", "output_folder_is_a_file",
                                  "submissions_folder_read_only"])  # UNWRITABLE
def test_unwritable_output_fails_before_training(case, make_dataset, capsys):
    root = make_dataset()
    target = (submissions_root() if case.startswith("submissions") else output_dir("exp020", root).parent) / root.name
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if case.endswith("read_only"):
            if os.geteuid() == 0:
                pytest.skip("root ignores permission bits (the file cases cover the same check)")
            target.mkdir()
            target.chmod(0o555)
        else:
            target.write_text("")
        run_inproc("exp020", root)
        err = one_line_error(capsys)
        assert f"cannot write {target}" in err and "before training" in err, err
        for folder in (output_dir("exp020", root), submissions_dir(root)):
            assert not folder.is_dir() or not any(folder.iterdir())
    finally:
        if target.is_dir():
            target.chmod(0o755)
            target.rmdir()
        else:
            target.unlink(missing_ok=True)


def test_late_write_failure_keeps_folds_and_a_rerun_finishes(make_dataset, capsys, monkeypatch):
    """The submissions folder turns unwritable after the preflight: one line saying how to finish; a rerun
    with a writable folder writes the submission from the finished folds, without retraining."""
    root = make_dataset()
    target = submissions_dir(root)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("")
    try:
        with monkeypatch.context() as m:
            m.setattr(checks, "check_writable", lambda folder: None)  # the preflight passes, the late write fails
            run_inproc("exp000", root)
        err = one_line_error(capsys)
        assert f"cannot write {target}" in err and "training finished; rerun the same command with a writable " \
            "folder to write the submission from the finished folds" in err, err
    finally:
        target.unlink()
    folds = sorted(output_dir("exp000", root).glob("runs/*/folds/*/*.npz"))
    assert folds
    stamps = [p.stat().st_mtime_ns for p in folds]
    from src.main import run
    run(resolve("exp000"), ["--input", str(root), "--quiet"])
    assert (target / "exp000_trivial.zip").is_file()
    assert [p.stat().st_mtime_ns for p in folds] == stamps  # resumed, not retrained
    assert "(resuming finished folds)" in (output_dir("exp000", root) / "log.txt").read_text()


def test_full_disk_on_a_submission_leaves_no_partial_set(tmp_path, monkeypatch):
    files = [f"test_{i}.mov" for i in range(3)]

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(submission.zipfile, "ZipFile", full)
    with pytest.raises(WriteError, match=r"cannot write .*/exp1\.zip \(No space left on device\)$"):
        submission.write(tmp_path / "sub", "exp1", files, [0, 1, 2], files)
    assert not list((tmp_path / "sub").iterdir())


def test_full_disk_on_a_checkpoint_is_one_line(tmp_path):
    path = tmp_path / "models" / "fold0_seed0.pt"

    def torch_save_fails(p):
        p.write_bytes(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 64 vs 0\nmore")
    with pytest.raises(WriteError) as err:
        atomic_write(path, torch_save_fails)
    msg = str(checks.write_failed(err.value))
    assert "\n" not in msg and f"cannot write {path}" in msg and "finished folds are kept" in msg
    assert not list(path.parent.iterdir())


def test_nan_predictions_name_the_sub_run():
    good = {"prob": np.full((4, 6), 1 / 6)}
    checks.check_predictions(good, "x")
    bad = {"prob": good["prob"].copy()}
    bad["prob"][1:3, 0] = np.nan
    with pytest.raises(UserError, match=r"^wavlm \(wavlm\) fold 2 seed 0: 2 rows of 'prob' predictions are NaN/inf"):
        checks.check_predictions(bad, "wavlm (wavlm) fold 2 seed 0")


# ---- src/score.py ---------------------------------------------------------------------------------------
LABELS = {"c1": [("ang", 70), ("hap", 30)], "c2": [("sad", 100)], "c3": [("fea", 50), ("sad", 50)],
          "c4": [("ang", 30), ("disg", 70)], "c5": [("neu", 100)]}


def write_labels(path, labels=LABELS):
    rows = [{"filename": k + ".mov", "emotion_1": v[0][0], "emotion_2": v[1][0] if len(v) > 1 else "",
             "emotion_1_salience": v[0][1] if len(v) > 1 else "", "emotion_2_salience": v[1][1] if len(v) > 1 else ""}
            for k, v in labels.items()]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def as_json(preds):
    return {"predictions": {k + ".mov": [{"emotion": e, "salience": s} for e, s in v] for k, v in preds.items()}}


# case id -> predictions the official scorer accepts though they are none of the 36 legal labels
OFFICIAL_ONLY = {
    "score_blend_60_40": {"c1": [("ang", 60), ("hap", 40)]},
    "score_fractions_0.7_0.3": {"c1": [("ang", 0.7), ("hap", 0.3)]},
    "score_repeated_emotion": {"c2": [("sad", 50), ("sad", 50)]},
    "score_neutral_in_blend": {"c5": [("neu", 50), ("sad", 50)]},
    "score_69.6_30.4": {"c4": [("ang", 30.4), ("disg", 69.6)]},
}


@pytest.mark.parametrize("case", sorted(OFFICIAL_ONLY))
def test_score_counts_what_the_official_scorer_counts(case, tmp_path):
    preds = {**LABELS, **OFFICIAL_ONLY[case]}
    sub = tmp_path / "pred.json"
    sub.write_text(json.dumps(as_json(preds)))
    proc = run_script("src/score.py", sub, write_labels(tmp_path / "labels.csv"))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    ref = official_score(as_json(preds)["predictions"], as_json(LABELS)["predictions"])
    assert {k: out[k] for k in ref} == pytest.approx(ref)
    warning = proc.stderr.strip()
    assert warning.startswith("warning: ") and "\n" not in warning and "1 of 5 entries are not one of the 36" in warning


# case id -> a prediction with a NaN or infinite salience (JSON's NaN / Infinity, as Python's json writes them):
# the official scorer compares {emotion: round(salience)} maps, and a non-finite salience equals no true one,
# so the blend's salience is wrong, while presence compares emotion sets only and stays right.
NON_FINITE = {
    "score_salience_inf": {"c1": [("ang", float("inf")), ("hap", 30)]},
    "score_salience_nan": {"c3": [("fea", float("nan")), ("sad", float("nan"))]},
    "score_salience_minus_inf": {"c4": [("ang", 30), ("disg", float("-inf"))]},
    "score_salience_huge_integer": {"c1": [("ang", 10 ** 400), ("hap", 30)]},  # too large for a float
}


@pytest.mark.parametrize("case", sorted(NON_FINITE))
def test_score_non_finite_saliences_match_nothing(case, tmp_path):
    """Hand-checked: 5 clips, 3 true blends; the one blend with a non-finite salience loses its salience credit."""
    preds = {**LABELS, **NON_FINITE[case]}
    proc = run_script("src/score.py", write_json(tmp_path, preds), write_labels(tmp_path / "labels.csv"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"acc_presence": 1.0, "acc_salience": 2 / 3, "score": (1 + 2 / 3) / 2,
                                       "n": 5, "n_blend": 3}
    warning = proc.stderr.strip()
    assert warning.startswith("warning: ") and "\n" not in warning and "1 of 5 entries are not one of the 36" in warning
    assert re.search(r" -?(inf|nan)[,\]]", warning), warning  # the entry as read


def test_score_non_finite_single_and_csv_submission(tmp_path):
    """A single keeps its presence whatever its salience; the CSV submission reads 'inf' the same way."""
    rows = [{"filename": k + ".mov", "emotion_1": v[0][0], "salience_1": v[0][1],
             "emotion_2": v[1][0] if len(v) > 1 else "", "salience_2": v[1][1] if len(v) > 1 else ""}
            for k, v in {**LABELS, "c2": [("sad", "-inf")], "c1": [("ang", "inf"), ("hap", 30)]}.items()]
    pd.DataFrame(rows).to_csv(tmp_path / "pred.csv", index=False)
    proc = run_script("src/score.py", tmp_path / "pred.csv", write_labels(tmp_path / "labels.csv"))
    assert proc.returncode == 0 and "2 of 5 entries are not one of the 36" in proc.stderr, proc.stderr
    assert json.loads(proc.stdout)["acc_presence"] == 1.0 and json.loads(proc.stdout)["acc_salience"] == 2 / 3


def test_score_official_cases_expected_values(tmp_path):
    """Hand-checked: 0.7/0.3 rounds to 1/0 and fails salience; 69.6/30.4 is 70/30; sad+sad matches a sad single."""
    preds = {"c1": [("ang", 0.7), ("hap", 0.3)], "c2": [("sad", 50), ("sad", 50)], "c3": [("fea", 50), ("sad", 50)],
             "c4": [("ang", 30.4), ("disg", 69.6)], "c5": [("neu", 50), ("sad", 50)]}
    out = score_maps(read_submission(write_json(tmp_path, preds)), {k: idx(v) for k, v in LABELS.items()})
    assert out["acc_presence"] == 4 / 5 and out["acc_salience"] == 2 / 3


def idx(entries):
    from src.labels import config_index
    return config_index(entries)


def write_json(tmp_path, preds, name="pred.json"):
    (tmp_path / name).write_text(json.dumps(as_json(preds)))
    return tmp_path / name


def test_score_matches_metric_on_our_own_predictions():
    rng = np.random.default_rng(1)
    pred, true = rng.integers(0, 36, 300), rng.integers(0, 36, 300)
    as_entries = {str(i): list(CONFIGS[p]) for i, p in enumerate(pred)}
    assert score_maps(as_entries, {str(i): int(t) for i, t in enumerate(true)}) == score(pred, true)


def test_score_reads_the_zip_the_readme_says_to_upload(tmp_path, capsys):
    files = [k + ".mov" for k in LABELS]
    configs = [idx(v) for v in LABELS.values()]
    paths = submission.write(tmp_path / "sub", "exp1", files, configs, files)
    labels = write_labels(tmp_path / "labels.csv")
    proc = run_script("src/score.py", paths["zip"], labels)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert json.loads(proc.stdout)["score"] == 1.0
    assert json.loads(proc.stdout) == json.loads(run_script("src/score.py", paths["json"], labels).stdout)


SCORE_ERRORS = {
    "score_labels_zero_bytes": (lambda t: (write_json(t, LABELS), t / "empty.csv"), "empty.csv: cannot parse CSV"),
    "score_labels_header_only": (lambda t: (write_json(t, LABELS), header_only_file(t / "h.csv")), "h.csv: no rows"),
    "score_not_json": (lambda t: (text_file(t / "p.json", "{oops"), write_labels(t / "l.csv")), "p.json: not JSON"),
    "score_no_predictions": (lambda t: (text_file(t / "p.json", '{"preds": {}}'), write_labels(t / "l.csv")),
                             "p.json: expected a JSON object with a 'predictions' mapping"),
    "score_keys_differ": (lambda t: (write_json(t, {**LABELS, "c9": [("sad", 100)]}), write_labels(t / "l.csv")),
                          "keys differ from the labels: 1 unexpected (e.g. c9)"),
    "score_entry_not_a_list": (lambda t: (text_file(t / "p.json", json.dumps({"predictions": {"c1.mov": "ang"}})),
                                          write_labels(t / "l.csv", {"c1": LABELS["c1"]})), "entry 'c1.mov' is not a list"),
    "score_zip_without_json": (lambda t: (empty_zip(t / "p.zip"), write_labels(t / "l.csv")),
                               "p.zip: expected one .json file inside the zip, found 0"),
}


def text_file(path, text):
    path.write_text(text)
    return path


def header_only_file(path):
    return text_file(path, "filename,emotion_1,emotion_2,emotion_1_salience,emotion_2_salience\n")


def empty_zip(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "no json here")
    return path


@pytest.mark.parametrize("case", sorted(SCORE_ERRORS))
def test_score_errors_are_one_line(case, tmp_path):
    make, message = SCORE_ERRORS[case]
    (tmp_path / "empty.csv").write_bytes(b"")
    pred, labels = make(tmp_path)
    proc = run_script("src/score.py", pred, labels)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.startswith("error: ") and "\n" not in err and message in err, err
    assert proc.stdout == ""


# ---- src/data/synth.py--------------------------------------------------------------------------------------
SYNTH_ERRORS = {
    "synth_out_is_a_file": (lambda t: ["--out", text_file(t / "a_file", "x")], "is a file; give a folder"),
    "synth_negative_seed": (lambda t: ["--out", t / "new", "--seed", "-1"], "--seed: -1 is below the minimum 0"),
}


@pytest.mark.parametrize("case", sorted(SYNTH_ERRORS))
def test_synth_errors_are_one_line(case, tmp_path, capsys):
    make_args, message = SYNTH_ERRORS[case]
    args = [str(a) for a in make_args(tmp_path)]
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit_:
        synth.main(args)
    assert exit_.value.code == 2 and message in one_line_error(capsys)
    assert sorted(tmp_path.rglob("*")) == before


# ---- console and report -----------------------------------------------------------------------------------
def test_leaderboard_fits_the_terminal(monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr(leaderboard, "Console", lambda **kw: Console(file=buf, force_terminal=True, width=120,
                                                                      color_system=None))
    m = results.RunRecord(kind="experiment", oof={"acc_presence": 0.41, "acc_salience": 0.22, "score": 0.318},
                          test={"score": 0.32}, folds=[{"score": 0.3}, {"score": 0.33}], decoder={},
                          seeds=[{"oof": {"acc_presence": 0.4, "acc_salience": 0.2, "score": 0.3}}], runtime_s=200)
    leaderboard.show(pd.DataFrame([leaderboard.row("exp040_rank_topn", "experiment", m)]), "synthetic")
    lines = buf.getvalue().splitlines()
    assert max(map(len, lines)) <= 120 and {"0.4100", "0.2200", "0.3180", "0.3200"} <= set(buf.getvalue().split())


@pytest.mark.parametrize("n_figures", [0, 2])
def test_report_claims_only_the_figures_it_wrote(n_figures, tmp_path, monkeypatch, capsys):
    from src.analysis import report
    out = tmp_path / "exp" / "ensembles" / "ens" / "output" / "tiny"

    def write_report(exp_dir, input_dir, variant=None):  # what write_report leaves when every figure (or two) was drawn
        (out / "figures").mkdir(parents=True)
        for i in range(n_figures):
            (out / "figures" / f"f{i}.png").write_bytes(b"png")
        (out / "report.md").write_text("# report\n")
        return out / "report.md"
    monkeypatch.setattr(report, "write_report", write_report)
    monkeypatch.setattr(report, "resolve_folder", lambda name: (tmp_path, None))
    report.main(["exp/ensembles/ens"])
    said = capsys.readouterr().out.strip()
    assert ("figures" not in said and "every figure skipped" in said) if n_figures == 0 \
        else said.endswith(f"and {n_figures} figures in {out / 'figures'}/")


def test_docs_list_every_bad_input_case():
    """docs/bad_input.md and these tests name the same cases (both directions)."""
    text = (ROOT / "docs" / "bad_input.md").read_text()
    listed = re.findall(r"`([^`]+)`", text)  # the page backticks case ids only
    cases = set(BEFORE_TRAINING) | set(OFFICIAL_ONLY) | set(NON_FINITE) | set(SCORE_ERRORS) | set(SYNTH_ERRORS) | \
        UNWRITABLE | DOCUMENTED
    assert cases - set(listed) == set(), f"cases missing from docs/bad_input.md: {sorted(cases - set(listed))}"
    assert set(listed) - cases == set(), f"docs/bad_input.md lists cases no test has: {sorted(set(listed) - cases)}"
    assert len(listed) == len(set(listed))


UNWRITABLE = {"submissions_folder_is_a_file", "output_folder_is_a_file", "submissions_folder_read_only"}
# behaviours with their own tests above: accepted input, and write failures after the preflight
DOCUMENTED = {"integer_X", "bytes_filenames", "constant_features", "late_write_failure", "full_disk_submission",
              "full_disk_checkpoint", "nan_predictions", "zip_submission", "leaderboard_width", "report_figures",
              "name_empty", "set_conflict_command_line", "score_non_finite_single_csv"}
