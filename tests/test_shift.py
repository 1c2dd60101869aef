"""src.shift: adversarial validation flags an encoder with an injected test shift and no other."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from src import data
from src.analysis import shift
from src.data import synth
from src.errors import UserError

from conftest import run_cli

ENCODERS = synth.make_encoders(3, seed=1, widths=(6, 10), n_audio=1)  # video1, video2, audio1


def world(path, kind="affine", strength=2.0, fraction=1.0, actors=True, seed=0):
    return synth.write(path, seed=seed, n_train_actors=10, n_test_actors=4, n_folds=5, encoders=ENCODERS,
                       shifted=("video2",), shift_kind=kind, shift_strength=strength, shift_fraction=fraction,
                       test_actor_column=actors)


@pytest.fixture(scope="module")
def affine(tmp_path_factory):
    ds = data.load(world(tmp_path_factory.mktemp("shift") / "affine"))
    return ds, shift.report(ds, shift.test_actors_of(ds))


def test_injected_affine_shift_is_flagged_and_nothing_else(affine):
    _, (table, _) = affine
    row = table.set_index("encoder")
    assert row.loc["video2", "auc"] > 0.95 and row.loc["video2", "shifted"]
    for enc in ("video1", "audio1"):
        assert abs(row.loc[enc, "auc"] - 0.5) < 0.15 and not row.loc[enc, "shifted"]
    assert (row["auc_null"].sub(0.5).abs() < 0.15).all()


def test_per_actor_table_covers_every_test_actor(affine):
    ds, (_, actors) = affine
    assert set(actors["actor"]) == set(shift.test_actors_of(ds)) and len(actors) == 3 * 4
    assert (actors.loc[actors["encoder"] == "video2", "auc"] > 0.95).all()


def test_a_shift_on_half_the_test_actors_shows_per_actor(tmp_path):
    ds = data.load(world(tmp_path / "half", fraction=0.5))
    _, actors = shift.report(ds, shift.test_actors_of(ds), encoders=["video2"])
    g = synth.generate(0, n_train_actors=10, n_test_actors=4, n_folds=5, encoders=ENCODERS, shifted=("video2",),
                       shift_strength=2.0, shift_fraction=0.5)
    moved = {g["actor_ids"][a] for a in np.unique(g["actor_idx"][g["is_shifted"]])}
    auc = actors.set_index("actor")["auc"]
    assert len(moved) == 2 and (auc[list(moved)] > 0.95).all()
    assert (auc.drop(list(moved)) < 0.8).all()


def test_noise_shift_is_flagged(tmp_path):
    ds = data.load(world(tmp_path / "noise", kind="noise", strength=1.5))
    table, _ = shift.report(ds, shift.test_actors_of(ds))
    row = table.set_index("encoder")
    assert row.loc["video2", "shifted"] and not row.loc["video1", "shifted"] and not row.loc["audio1", "shifted"]


def test_without_test_actors_and_deterministic(tmp_path):
    ds = data.load(world(tmp_path / "anon", actors=False))
    assert shift.test_actors_of(ds) is None
    first, actors = shift.report(ds, None, encoders=["video2", "audio1"])
    second, _ = shift.report(ds, None, encoders=["video2", "audio1"])
    pd.testing.assert_frame_equal(first, second)
    assert actors.empty and first.set_index("encoder").loc["video2", "auc"] > 0.95


def test_cli_prints_and_writes(tmp_path, exp_root):
    path = world(tmp_path / "clitiny")
    proc = run_cli("src.analysis.shift", "--input", path, "--encoders", "video2,audio1")
    assert "video2" in proc.stdout and "YES" in proc.stdout
    table = pd.read_csv(exp_root / "shift" / "output" / "clitiny" / "shift.csv")
    assert list(table["encoder"]) == ["video2", "audio1"]
    assert (exp_root / "shift" / "output" / "clitiny" / "shift_actors.csv").is_file()


def test_bad_inputs_are_one_line(tmp_path):
    path = world(tmp_path / "bad")
    proc = run_cli("src.analysis.shift", "--input", path, "--encoders", "nope", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "nope" in proc.stderr
    meta = pd.read_csv(path / "test_metadata.csv")
    meta.assign(actor="A1").to_csv(path / "test_metadata.csv", index=False)  # one test actor
    with pytest.raises(UserError, match="one test actor"):
        ds = data.load(path)
        shift.report(ds, shift.test_actors_of(ds))


def test_wide_encoders_are_compared_on_a_random_projection(affine, monkeypatch):
    """Above MAX_WIDTH features an encoder is projected onto fixed random directions (quick at the real widths);
    the injected shift is still the one flagged."""
    ds, _ = affine
    monkeypatch.setattr(shift, "MAX_WIDTH", 4)
    assert shift.reduced(ds.features["video1"], ds.present["video1"], 0).shape == (len(ds.features["video1"]), 4)
    table, _ = shift.report(ds, shift.test_actors_of(ds))
    assert table.set_index("encoder")["shifted"].to_dict() == {"video1": False, "video2": True, "audio1": False}
