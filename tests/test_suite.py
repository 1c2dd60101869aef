"""src.suite: worlds built once, experiments run per world through the CLI, scores and ranks reported."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import yaml

from src import suite
from src.errors import UserError

from conftest import output_dir, run_cli

TINY_WORLDS = {
    "tiny7": {"source": "synth", "seed": 0, "n_train_actors": 6, "n_test_actors": 2, "n_folds": 3, "width_scale": 0.25},
    "tiny4": {"source": "synth", "seed": 1, "n_train_actors": 6, "n_test_actors": 2, "n_folds": 3,
              "encoders": {"n": 4, "n_audio": 1, "widths": [3, 6], "seed": 0}, "shifted": ["video1"],
              "shift_kind": "noise"},
}


def test_every_defined_world_is_valid():
    for name, definition in suite.WORLDS.items():
        suite.check_world(name, definition)
    counts = [definition["encoders"]["n"] for definition in suite.WORLDS.values() if "encoders" in definition]
    assert min(counts) == 4 and max(counts) == 12


def test_world_is_built_once_and_rebuilt_when_its_definition_changes(tmp_path):
    definition = dict(TINY_WORLDS["tiny4"])
    folder = suite.build("w", definition, tmp_path)
    stamp = (folder / "world.json").stat().st_mtime_ns
    features = sorted(p.name for p in (folder / "features").iterdir())
    assert features == ["audio1.npz", "video1.npz", "video2.npz", "video3.npz"]
    assert suite.build("w", definition, tmp_path) == folder and (folder / "world.json").stat().st_mtime_ns == stamp
    suite.build("w", {**definition, "seed": 2}, tmp_path)
    assert json.loads((folder / "world.json").read_text())["definition"]["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]  # no temporary folders left


def test_ranks_ties_and_failed_runs():
    frame = pd.DataFrame([
        {"world": "a", "experiment": "x", "oof_score": 0.3, "test_score": 0.1},
        {"world": "a", "experiment": "y", "oof_score": 0.2, "test_score": 0.2},
        {"world": "a", "experiment": "z", "oof_score": 0.2, "test_score": 0.3},
        {"world": "b", "experiment": "x", "oof_score": 0.1, "test_score": 0.1},
        {"world": "b", "experiment": "y", "oof_score": 0.4, "test_score": 0.1},
        {"world": "b", "experiment": "z", "oof_score": math.nan, "test_score": math.nan, "error": "boom"},
    ])
    ranked = suite.add_ranks(frame).set_index(["world", "experiment"])
    assert ranked.loc[("a", "x"), "rank_oof"] == 1 and ranked.loc[("a", "y"), "rank_oof"] == 2.5
    assert ranked.loc[("a", "z"), "rank_test"] == 1 and ranked.loc[("b", "x"), "rank_test"] == 1.5
    assert math.isnan(ranked.loc[("b", "z"), "rank_oof"])
    summ = suite.summary(suite.add_ranks(frame))
    assert list(summ.index) == ["x", "y", "z"]  # mean OOF rank 1.5, 1.75, 2.5 (z over one world only)
    assert summ.loc["y", "mean_rank_oof"] == 1.75 and summ.loc["z", "worlds"] == 1
    text = suite.format_table(suite.add_ranks(frame), ["a", "b"])
    assert "failed" in text and text.splitlines()[1].startswith("x")


def test_suite_end_to_end_on_tiny_worlds(tmp_path, exp_root):
    frame, path = suite.run_suite(["exp000", "exp020"], TINY_WORLDS, tmp_path / "worlds", smoke=True,
                                  ensemble="weights", log=lambda m: None)
    assert len(frame) == 6 and ("error" not in frame or frame["error"].isna().all())
    for row in frame.itertuples(index=False):  # scores are those of the normal output folders
        if row.experiment == "ensemble_weights":  # the ensemble of the two smoke runs, one per world
            folder = exp_root / "ensembles" / "suite_weights_exp000+exp020@smoke" / "output" / row.world
            resolved = yaml.safe_load((folder / "config.resolved.yaml").read_text())
            assert [m["name"] for m in resolved["members"]] == ["exp000_trivial@smoke", "exp020_mlp_concat@smoke"]
        else:
            folder = output_dir(row.experiment[:6], tmp_path / "worlds" / row.world, "--smoke")
        metrics = json.loads((folder / "metrics.json").read_text())
        assert row.oof_score == metrics["oof"]["score"] and row.test_score == metrics["test"]["score"]
    for world, rows in frame.groupby("world"):  # 1 = best score, ties share the mean rank, ensemble ranked too
        for part in ("oof", "test"):
            scores = rows[f"{part}_score"].to_numpy()
            expected = [1 + (scores > v).sum() + ((scores == v).sum() - 1) / 2 for v in scores]
            assert rows[f"rank_{part}"].tolist() == expected
    saved = json.loads(path.read_text())
    assert {r["experiment"] for r in saved["summary"]} == {"exp000_trivial", "exp020_mlp_concat", "ensemble_weights"}
    assert saved["sets"] == [] and set(saved["worlds"]) == set(TINY_WORLDS) and saved["ensemble"] == "weights"
    assert pd.read_csv(path.with_suffix(".csv")).shape[0] == 6


def test_seeds_become_a_set_and_a_bad_set_fails_before_any_world_is_built(tmp_path):
    with pytest.raises(UserError, match="unknown key"):
        suite.run_suite(["exp000"], TINY_WORLDS, tmp_path / "worlds", sets=["train.seedz=2"], log=print)
    assert not (tmp_path / "worlds").exists()
    with pytest.raises(UserError, match="both given"):
        suite.run_suite(["exp000"], TINY_WORLDS, tmp_path / "worlds", seeds=2, sets=["train.seeds=3"])
    assert suite.run_sets(2, ["model.dropout=0.1"]) == ["train.seeds=2", "model.dropout=0.1"]
    assert suite.run_sets(None, ["model.dropout=0.1"]) == ["model.dropout=0.1"]


def test_cli_errors_are_one_line(tmp_path):
    for args, message in ((["exp000", "--worlds", "atlantis"], "unknown world 'atlantis'"),
                          (["exp999", "--worlds", "mfeat"], "'exp999' matches no experiment"),
                          (["--worlds", "mfeat"], "usage"),
                          (["exp000", "--seeds", "0"], "--seeds: 0")):
        proc = run_cli("src.suite", *args, "--worlds-dir", tmp_path, check=False)
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert not any(tmp_path.iterdir())


def test_results_files_are_never_overwritten(exp_root):
    first = suite.results_path(None)
    first.parent.mkdir(parents=True, exist_ok=True)
    first.write_text("{}")
    assert suite.results_path(None) != first
    (first.parent / "taken.json").write_text("{}")
    with pytest.raises(UserError, match="never overwritten"):
        suite.results_path("taken")
