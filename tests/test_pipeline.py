"""End to end on tiny synthetic data: smoke runs to a valid submission, resume, determinism."""
import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, output_dir, run_exp, run_script
from src import config
from src.experiments import resolve
from src.labels import EMOTIONS

TEMPLATE = ROOT.parent / "shared" / "data" / "submission_template.json"
FUSION_EXPERIMENTS = ["exp030", "exp040", "exp041", "exp042", "exp043", "exp044", "exp045", "exp046", "exp047"]


def check_official_format(sub: dict, keys) -> None:
    """Same structure and value types as the organisers' template: singles 100.0, blends integer pairs."""
    official = json.loads(TEMPLATE.read_text())["predictions"]
    single_type = type(next(v for v in official.values() if len(v) == 1)[0]["salience"])
    blend_type = type(next(v for v in official.values() if len(v) == 2)[0]["salience"])
    assert list(sub) == ["predictions"] and sorted(sub["predictions"]) == sorted(keys)
    for entries in sub["predictions"].values():
        assert len(entries) in (1, 2) and all(set(e) == {"emotion", "salience"} for e in entries)
        assert all(e["emotion"] in EMOTIONS for e in entries)
        if len(entries) == 1:
            assert entries[0]["salience"] == 100 and type(entries[0]["salience"]) is single_type
        else:
            assert sorted(e["salience"] for e in entries) in ([50, 50], [30, 70])
            assert all(type(e["salience"]) is blend_type for e in entries)
            assert "neu" not in {e["emotion"] for e in entries}


@pytest.mark.parametrize("exp_id", ["exp000", "exp010", "exp020", "exp021"])
def test_smoke_runs_to_a_valid_submission(shared_dataset, exp_id):
    run_exp(exp_id, shared_dataset, "--smoke")
    out = output_dir(exp_id, shared_dataset)
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"acc_presence", "acc_salience", "score"} <= set(metrics["oof"]) and "test" in metrics
    assert len(metrics["folds"]) == 3 and 0 <= metrics["oof"]["score"] <= 1
    oof, test = pd.read_csv(out / "oof.csv"), pd.read_csv(out / "test.csv")
    assert list(oof.columns[:8]) == ["filename", "fold"] + [f"prob_{e}" for e in EMOTIONS]
    assert oof["filename"].is_monotonic_increasing and len(test) == 108
    for f in ("config.resolved.yaml", "log.txt"):
        assert (out / f).is_file()
    sub_dir = ROOT / "submissions" / shared_dataset.name
    name = out.parent.parent.name
    sub = json.loads((sub_dir / f"{name}.json").read_text())
    template_keys = json.loads((shared_dataset / "submission_template.json").read_text())["predictions"]
    check_official_format(sub, template_keys)
    with zipfile.ZipFile(sub_dir / f"{name}.zip") as z:
        assert z.namelist() == ["submission_template.json"] and json.loads(z.read("submission_template.json")) == sub
    # the submission scored by src/score.py equals the in-memory test figures
    proc = run_script("src/score.py", sub_dir / f"{name}.json", shared_dataset / "test_labels.csv")
    scored = json.loads(proc.stdout)
    assert {k: round(v, 6) for k, v in scored.items()} == metrics["test"]
    csv_scored = json.loads(run_script("src/score.py", sub_dir / f"{name}.csv", shared_dataset / "test_labels.csv").stdout)
    assert csv_scored == scored
    if exp_id == "exp010":
        assert set(metrics["per_encoder"]) == set(p.stem for p in (shared_dataset / "features").glob("*.npz"))
        assert (out / "per_encoder" / "wavlm" / "oof.csv").is_file()
        assert metrics["best_encoder"] in metrics["per_encoder"]


@pytest.mark.parametrize("exp_id", FUSION_EXPERIMENTS)
def test_fusion_smoke_runs(shared_dataset, exp_id):
    run_exp(exp_id, shared_dataset, "--smoke")
    out = output_dir(exp_id, shared_dataset)
    oof = pd.read_csv(out / "oof.csv")
    gates = oof.filter(like="gate_")
    assert gates.shape[1] == 7 and np.allclose(gates.sum(axis=1), 1, atol=1e-4)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["oof"]["n"] == len(oof)
    if exp_id == "exp041":
        table = pd.read_csv(out / "per_top_n.csv")
        assert list(table["top_n"]) == list(range(1, 8)) and "oof_score_std" in table
    if exp_id == "exp045":
        assert not oof.filter(like="presence_").shape[1] and metrics["decoder"]["head_weight"] is None
    else:
        assert oof.filter(like="presence_").shape[1] == 6
    top_n = config.load(resolve(exp_id)).model.top_n
    if exp_id != "exp041" and top_n != "all":
        assert ((gates > 0).sum(axis=1) == config.resolve_top_n(top_n, 7)).all()  # exactly n encoders per clip


def test_same_seed_same_oof_and_resume(make_dataset):
    root = make_dataset()
    run_exp("exp040", root, "--smoke")
    out = output_dir("exp040", root)
    first = (out / "oof.csv").read_bytes()
    # a run killed after fold 0: later folds and the results are gone; the rerun trains only what is missing
    fold0 = out / "folds" / "fold0_seed0.npz"
    stamp = fold0.stat().st_mtime_ns
    for f in ["folds/fold1_seed0.npz", "folds/fold2_seed0.npz", "oof.csv", "metrics.json"]:
        (out / f).unlink()
    run_exp("exp040", root, "--smoke")
    assert fold0.stat().st_mtime_ns == stamp and (out / "oof.csv").read_bytes() == first
    log = (out / "log.txt").read_text()
    assert "resuming finished folds" in log and log.count("fold 0 seed 0: trained") == 1
    # --force retrains everything and still gives the same bytes
    run_exp("exp040", root, "--smoke", "--force")
    assert fold0.stat().st_mtime_ns != stamp and (out / "oof.csv").read_bytes() == first
    # a changed config starts clean
    run_exp("exp040", root, "--smoke", "--set", "train.lr=0.003")
    assert "resuming" not in (out / "log.txt").read_text()


def test_bad_set_and_unknown_experiment_fail_cleanly(shared_dataset):
    proc = run_exp("exp040", shared_dataset, "--set", "model.topn=2", check=False)
    assert proc.returncode == 2 and "unknown key 'model.topn'" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_exp("exp04", shared_dataset, check=False)
    assert proc.returncode == 2 and "candidates: exp040" in proc.stderr
