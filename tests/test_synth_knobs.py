"""src/data/synth.py: the default dataset pinned byte for byte, and each knob doing what it says."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from sklearn.feature_selection import f_classif

from src import data
from src.data import synth
from src.errors import UserError

from conftest import TINY

# sha256 over (relative path, bytes) of every file, sorted by path; measured before the knobs were added
TINY_SHA256 = "c0ad548945200e73e34dd32ef232b4fd139889dbe9a1475bcb3a549646d91bfd"
DEFAULT_SHA256 = "7953b7d17f92b8409eea8f5fb6ad4eee133a31d16b27b44cf2b79505abdf0eff"  # `bash run.sh synth --out DIR`
SMALL = dict(n_train_actors=8, n_test_actors=4, n_folds=4, width_scale=0.25)


def folder_hash(root) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_tiny_default_dataset_is_unchanged(tmp_path):
    assert folder_hash(synth.write(tmp_path / "t", seed=0, **TINY)) == TINY_SHA256


def test_default_dataset_is_unchanged(tmp_path):
    assert folder_hash(synth.write(tmp_path / "d", seed=0)) == DEFAULT_SHA256


def test_make_encoders_count_widths_and_modalities(tmp_path):
    table = synth.make_encoders(12, seed=3, widths=(5, 9), n_audio=4)
    assert list(table) == [f"video{i}" for i in range(1, 9)] + [f"audio{i}" for i in range(1, 5)]
    assert all(5 <= w[0] <= 9 and w[0] == w[1] for _, w, _, _ in table.values())
    assert table == synth.make_encoders(12, seed=3, widths=(5, 9), n_audio=4)  # deterministic
    out = synth.write(tmp_path / "w", seed=1, encoders=table, shifted=(), **{**SMALL, "width_scale": 1.0})
    ds = data.load(out)
    assert sorted(ds.encoders) == sorted(table)
    assert all(ds.features[e].shape[1] == 7 * table[e][1][0] for e in table)
    modalities = pd.read_csv(out / "encoders.csv").set_index("encoder")["modality"].to_dict()
    assert modalities == {e: m for e, (m, *_) in table.items()}


def test_four_encoders_fit_the_contract(tmp_path):
    out = synth.write(tmp_path / "w", seed=2, encoders=synth.make_encoders(4), shifted=("video1",), **SMALL)
    assert len(data.load(out).encoders) == 4


def label_signal(X: np.ndarray, labels: np.ndarray) -> float:
    """Median ANOVA F of the features against the labels: about 1 for features that carry no label."""
    return float(np.median(f_classif(X, labels)[0]))


def test_per_encoder_failures_hit_that_encoder_only():
    table = synth.make_encoders(3, seed=0, n_audio=1)
    g = synth.generate(0, encoders=table, p_fail={"video": 0.0, "audio": 0.0, "video2": 0.5}, shifted=(),
                       n_train_actors=20, n_test_actors=2, n_folds=4, width_scale=0.5)
    assert abs(g["failed"]["video2"].mean() - 0.5) < 0.05
    assert not g["failed"]["video1"].any() and not g["failed"]["audio1"].any()
    X, fails = g["features"]["video2"], g["failed"]["video2"]
    assert label_signal(X[fails], g["configs"][fails]) < 1.4 < 2 < label_signal(X[~fails], g["configs"][~fails])


def test_modality_failures_are_shared_by_its_encoders():
    g = synth.generate(0, p_fail={"audio": 0.4}, n_train_actors=6, n_test_actors=2)
    assert (g["failed"]["hubert"] == g["failed"]["wavlm"]).all() and abs(g["failed"]["hubert"].mean() - 0.4) < 0.05
    assert not g["failed"]["videomae"].any()  # no video entry: video never fails


@pytest.mark.parametrize("kind", synth.SHIFT_KINDS)
def test_shift_moves_only_the_shifted_encoders_test_rows(kind):
    """Strength 0 and strength 1 draw the same numbers, so only what the shift touches may differ."""
    knobs = dict(n_train_actors=6, n_test_actors=4, n_folds=3, width_scale=0.5, shifted=("clip",), shift_kind=kind)
    calm, moved = synth.generate(5, shift_strength=0.0, **knobs), synth.generate(5, shift_strength=1.0, **knobs)
    test = calm["is_test"]
    for enc in synth.ENCODERS:
        same = (calm["features"][enc] == moved["features"][enc]).all(1)
        if enc == "clip":  # a failure shift leaves the clips that had failed anyway as they were
            expected = calm["failed"]["clip"] if kind == "fail" else np.zeros(len(same), bool)
            assert same[~test].all() and (same[test] == expected[test]).all()
        else:
            assert same.all()
    if kind == "fail":
        assert abs(moved["failed"]["clip"][test].mean() - calm["failed"]["clip"][test].mean() - 0.9) < 0.1


def test_shift_strength_scales_the_affine_change():
    knobs = dict(n_train_actors=6, n_test_actors=4, n_folds=3, width_scale=0.5, shifted=("clip",))
    base = synth.generate(5, shift_strength=0.0, **knobs)["features"]["clip"]
    gaps = []
    for strength in (0.5, 2.0):
        g = synth.generate(5, shift_strength=strength, **knobs)
        gaps.append(np.abs(g["features"]["clip"] - base)[g["is_test"]].mean())
    assert gaps[1] > 3 * gaps[0] > 0


def test_shift_fraction_hits_the_first_test_actors_only():
    knobs = dict(n_train_actors=6, n_test_actors=4, n_folds=3, width_scale=0.5, shifted=("hubert",),
                 shift_fraction=0.5)
    calm, moved = synth.generate(7, shift_strength=0.0, **knobs), synth.generate(7, shift_strength=1.0, **knobs)
    differs = ~(calm["features"]["hubert"] == moved["features"]["hubert"]).all(1)
    actors = set(calm["actor_idx"][differs])
    assert actors == {6, 7}  # the first two of the four test actors (indices after the 6 training actors)
    assert (differs == moved["is_shifted"]).all()


def test_actor_counts_and_test_actor_column(tmp_path):
    out = synth.write(tmp_path / "w", seed=3, n_train_actors=5, n_test_actors=3, n_folds=5, n_dropped=0,
                      test_actor_column=True)
    train, test = pd.read_csv(out / "train_metadata.csv"), pd.read_csv(out / "test_metadata.csv")
    assert len(train) == 5 * 54 and len(test) == 3 * 54 and train["fold"].nunique() == 5
    assert test["actor"].nunique() == 3 and (test["actor"].value_counts() == 54).all()
    assert not set(test["actor"]) & set(train["filename"].str.split("_").str[0])
    assert "emotion_1" not in test.columns  # the actor is named, the labels stay hidden
    data.load(out)


@pytest.mark.parametrize("knobs, message", [
    (dict(shifted=("nope",)), "shifted: unknown encoder 'nope'"),
    (dict(p_fail={"face": 0.1}), "p_fail: 'face' is neither"),
    (dict(p_fail={"audio": 1.0}), "not a probability below 1"),
    (dict(shift_kind="warp"), "shift_kind: 'warp'"),
    (dict(shift_kind="fail", shift_strength=2.0), "shift_strength: 2.0"),
    (dict(shift_fraction=1.5), "shift_fraction: 1.5"),
    (dict(encoders={"x": ("text", (4, 4), 1.0, (1,) * 6)}, shifted=()), "modality 'text'"),
])
def test_bad_knobs_are_one_line_errors(knobs, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        synth.generate(0, **{**SMALL, **knobs})


def test_make_encoders_rejects_bad_sizes():
    with pytest.raises(UserError, match="at least 1"):
        synth.make_encoders(0)
    with pytest.raises(UserError, match="low <= high"):
        synth.make_encoders(4, widths=(9, 5))
