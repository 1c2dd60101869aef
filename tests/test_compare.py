"""src.compare on tiny data: per-seed paired differences re-derived from the fold files match the pipeline."""
import json

import numpy as np
import pytest

from src.analysis.compare import compare

from conftest import output_dir, run_cli, run_exp


def test_paired_comparison_and_test_scheme(make_dataset):
    root = make_dataset()
    for exp in ("exp040", "exp043"):
        run_exp(exp, root, "--smoke", "--set", "train.seeds=2")
    args = ("--smoke", "--set", "train.seeds=2")
    metrics = {e: json.loads((output_dir(e, root, *args) / "metrics.json").read_text()) for e in ("exp040", "exp043")}
    arm = {e: f"{e}@{output_dir(e, root, *args).name.split('@')[1]}" for e in ("exp040", "exp043")}
    res = compare(arm["exp040"], arm["exp043"], root, n_boot=200)
    per_seed = {e: [s["oof"]["score"] for s in m["seeds"]] for e, m in metrics.items()}
    assert res["per_seed"]["oof"]["a"] == pytest.approx(per_seed["exp040"], abs=1e-6)
    assert res["per_seed"]["oof"]["b"] == pytest.approx(per_seed["exp043"], abs=1e-6)
    diffs = np.subtract(per_seed["exp043"], per_seed["exp040"])
    assert res["per_seed"]["oof"]["diff_mean"] == pytest.approx(diffs.mean(), abs=1e-6)
    assert res["per_seed"]["oof"]["diff_std"] == pytest.approx(diffs.std(), abs=1e-6)
    # the pipeline decodes test rows by the default scheme (vote), the seed-mean figures match it
    for e in ("exp040", "exp043"):
        assert metrics[e]["decoder"]["test_scheme"] == "vote"
        assert res["seed_mean"][arm[e]]["oof"] == pytest.approx(metrics[e]["oof"]["score"], abs=1e-6)
        assert res["seed_mean"][arm[e]]["test_vote"] == pytest.approx(metrics[e]["test"]["score"], abs=1e-6)
    bs = res["bootstrap_oof"]
    assert bs["diff"] == pytest.approx(metrics["exp043"]["oof"]["score"] - metrics["exp040"]["oof"]["score"], abs=1e-6)
    assert bs["ci95"][0] <= bs["ci95"][1]
    same = compare(arm["exp040"], arm["exp040"], root, n_boot=50)
    assert same["per_seed"]["oof"]["diff_std"] == 0 and same["bootstrap_oof"]["ci95"] == [0.0, 0.0]
    proc = run_cli("src.analysis.compare", arm["exp040"], arm["exp043"], "--input", root, "--boot", "20")
    assert "paired per seed (2 seeds" in proc.stdout and "actor bootstrap" in proc.stdout
    proc = run_cli("src.analysis.compare", arm["exp040"], "exp045", "--input", root, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: exp045: no outputs")
