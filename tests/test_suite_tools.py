"""tools/suite_paired.py: per-seed OOF differences paired by world, from the runs' metrics.json."""
from __future__ import annotations

import json

import pytest

from src.errors import UserError
from tools import suite_paired


def suite_result(tmp_path, name, scores):
    """A suite results dict whose exp042 rows point at metrics.json files with these per-seed OOF scores."""
    runs = []
    for world, seeds in scores.items():
        out = tmp_path / name / world
        out.mkdir(parents=True)
        (out / "metrics.json").write_text(json.dumps(
            {"seeds": [{"oof": {"score": s}, "test": {"score": s / 2}} for s in seeds]}))
        runs.append({"experiment": "exp042_rank_topn_coral", "world": world, "output": str(out)})
    return {"runs": runs}


def test_differences_are_paired_per_seed_and_world(tmp_path):
    base = suite_result(tmp_path, "base", {"a": [0.30, 0.32, 0.31], "b": [0.20, 0.20, 0.20]})
    arm = suite_result(tmp_path, "arm", {"a": [0.31, 0.31, 0.33], "b": [0.19, 0.18, 0.20]})
    rows = {r["world"]: r for r in suite_paired.paired(base, arm, "exp042_rank_topn_coral")}
    assert rows["a"]["oof_diff"] == pytest.approx((0.01 - 0.01 + 0.02) / 3) and rows["a"]["seeds_better"] == 2
    assert rows["b"]["oof_diff"] == pytest.approx(-0.01) and rows["b"]["seeds_better"] == 0
    assert rows["a"]["test_diff"] == pytest.approx(rows["a"]["oof_diff"] / 2)


def test_unequal_seed_counts_are_refused(tmp_path):
    base = suite_result(tmp_path, "base", {"a": [0.3, 0.3]})
    arm = suite_result(tmp_path, "arm", {"a": [0.3, 0.3, 0.3]})
    with pytest.raises(UserError, match="2 seeds against 3"):
        suite_paired.paired(base, arm, "exp042_rank_topn_coral")
