"""End to end on tiny synthetic data: smoke runs to a valid submission, variants side by side, the fingerprint,
resume, determinism, honest early stopping and sub-run choice, predict from checkpoints."""
import hashlib
import json
import shutil
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch

from src import data
from src.analysis.leaderboard import collect
from src.labels import EMOTIONS, SALIENCE
from src.run import config, results
from src.run.experiments import resolve
from src.train.inputs import inner_split
from src.train.trainer import fit_folds

from conftest import ROOT, TEMPLATE, output_dir, run_cli, run_exp, run_script, submissions_dir

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
    out = output_dir(exp_id, shared_dataset, "--smoke")
    assert out.name == f"{shared_dataset.name}@smoke"
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"acc_presence", "acc_salience", "score"} <= set(metrics["oof"]) and "test" in metrics
    assert len(metrics["folds"]) == 3 and 0 <= metrics["oof"]["score"] <= 1
    oof, test = pd.read_csv(out / "oof.csv"), pd.read_csv(out / "test.csv")
    assert list(oof.columns[:8]) == ["filename", "fold"] + [f"prob_{e}" for e in EMOTIONS]
    assert oof["filename"].is_monotonic_increasing and len(test) == 108
    for f in ("config.resolved.yaml", "log.txt"):
        assert (out / f).is_file()
    name = f"{resolve(exp_id).name}@smoke"
    sub_dir = submissions_dir(shared_dataset)
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
    if exp_id in ("exp000", "exp010"):
        group = "per_baseline" if exp_id == "exp000" else "per_encoder"
        if exp_id == "exp010":
            encoders = {p.stem for p in (shared_dataset / "features").glob("*.npz")}
            assert metrics["group"] == group and set(metrics["sub_runs"]) == encoders
            assert (out / group / "wavlm" / "oof.csv").is_file()
        # nested: each fold's sub-run chosen on the other folds; the in-sample choice is shown beside it
        assert set(metrics["chosen_per_fold"]) == {"0", "1", "2"} and metrics["choice_for_test"] in metrics["sub_runs"]
        assert metrics["oof_choice_in_sample"] == metrics["sub_runs"][metrics["choice_for_test"]]["oof"]
        assert [f["sub_run"] for f in metrics["decoder"]["per_fold"]] == list(metrics["chosen_per_fold"].values())


@pytest.mark.parametrize("exp_id", FUSION_EXPERIMENTS)
def test_fusion_smoke_runs(shared_dataset, exp_id):
    run_exp(exp_id, shared_dataset, "--smoke")
    out = output_dir(exp_id, shared_dataset, "--smoke")
    oof = pd.read_csv(out / "oof.csv")
    gates = oof.filter(like="gate_")
    assert gates.shape[1] == 7 and np.allclose(gates.sum(axis=1), 1, atol=1e-4)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["oof"]["n"] == len(oof)
    if exp_id == "exp041":
        table = pd.read_csv(out / "per_top_n.csv")
        assert list(table["top_n"]) == list(range(1, 8)) and "oof_score_std" in table
        assert metrics["group"] == "per_top_n" and metrics["choice_for_test"] in metrics["sub_runs"]
    if exp_id == "exp045":
        assert not oof.filter(like="presence_").shape[1] and metrics["decoder"]["head_weight"] is None
    else:
        assert oof.filter(like="presence_").shape[1] == 6
    top_n = config.load(resolve(exp_id)).model.top_n
    if exp_id != "exp041" and top_n != "all":
        assert ((gates > 0).sum(axis=1) == config.resolve_top_n(top_n, 7)).all()  # exactly n encoders per clip


def fold_file(out, name="fold0_seed0.npz"):
    found = list(out.glob(f"runs/*/folds/{name}"))
    assert len(found) == 1, found
    return found[0]


def test_same_seed_same_oof_resume_and_run_time(make_dataset):
    root = make_dataset()
    run_exp("exp040", root, "--smoke")
    out = output_dir("exp040", root, "--smoke")
    first = (out / "oof.csv").read_bytes()
    first_runtime = json.loads((out / "metrics.json").read_text())["runtime_s"]
    # a run killed after fold 0: later folds and the results are gone; the rerun trains only what is missing
    fold0 = fold_file(out)
    stamp = fold0.stat().st_mtime_ns
    for f in [fold_file(out, "fold1_seed0.npz"), fold_file(out, "fold2_seed0.npz"), out / "oof.csv", out / "metrics.json"]:
        f.unlink()
    run_exp("exp040", root, "--smoke")
    assert fold0.stat().st_mtime_ns == stamp and (out / "oof.csv").read_bytes() == first
    log = (out / "log.txt").read_text()
    assert "resuming finished folds" in log and log.count("fold 0 seed 0: trained") == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["invocations"] == 2 and metrics["runtime_s"] > first_runtime
    # per-epoch training loss in the log and metrics.json (2 smoke epochs); no inner split without early stopping
    assert "model fold 1 seed 0 epoch 2: train loss" in log
    history = metrics["history"]["model"]["fold1_seed0"]
    assert len(history["train_loss"]) == 2 and "inner_loss" not in history
    # --force retrains everything and still gives the same bytes
    run_exp("exp040", root, "--smoke", "--force")
    assert fold0.stat().st_mtime_ns != stamp and (out / "oof.csv").read_bytes() == first


def tree_bytes(folder) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_variants_live_side_by_side(make_dataset):
    """A full run, then --smoke, --set and --name runs of the same experiment: the full run is untouched."""
    root = make_dataset()
    run_exp("exp020", root)
    full = output_dir("exp020", root)
    sub_dir, name = submissions_dir(root), resolve("exp020").name
    before = tree_bytes(full) | {f"sub/{k}": v for k, v in tree_bytes(sub_dir).items()}
    variants = [("--smoke",), ("--smoke", "--set", "train.lr=0.003"), ("--set", "train.epochs=1"),
                ("--set", "train.epochs=1", "--name", "one_epoch")]
    for args in variants:
        run_exp("exp020", root, *args)
    after = tree_bytes(full) | {f"sub/{k}": v for k, v in tree_bytes(sub_dir).items() if k in
                                {p.name for p in sub_dir.glob(f"{name}.*")}}
    assert after == before
    folders = {output_dir("exp020", root, *a).name for a in variants}
    assert len(folders) == len(variants) and f"{root.name}@one_epoch" in folders
    assert all((full.parent / f / "metrics.json").is_file() for f in folders)
    subs = sorted(p.name for p in sub_dir.glob("*.json"))
    assert len(subs) == 1 + len(variants) and f"{name}@smoke.json" in subs and f"{name}@one_epoch.json" in subs
    # the leaderboard lists each variant as its own row; smoke runs only when asked
    rows = set(collect(root)["name"])
    assert rows == {name, f"{name}@one_epoch", f"{name}@{output_dir('exp020', root, *variants[2]).name.split('@')[1]}"}
    assert f"{name}@smoke" in set(collect(root, smoke=True)["name"])
    # the order of --set flags does not make another variant
    a = output_dir("exp020", root, "--set", "train.lr=0.1", "--set", "train.epochs=2")
    b = output_dir("exp020", root, "--set", "train.epochs=2", "--set", "train.lr=0.1")
    assert a == b and a.name.startswith(f"{root.name}@set-")
    # a changed config of the SAME variant starts fresh, says why, and a crash keeps the finished run
    kept = tree_bytes(output_dir("exp020", root, "--name", "one_epoch"))
    proc = run_exp("exp020", root, "--set", "train.epochs=1", "--set", "train.batch_size=0", "--name", "one_epoch",
                   check=False)
    assert proc.returncode != 0
    now = tree_bytes(output_dir("exp020", root, "--name", "one_epoch"))
    assert {k: v for k, v in now.items() if k in kept and k != "log.txt"} == \
        {k: v for k, v in kept.items() if k != "log.txt"}
    run_exp("exp020", root, "--set", "train.epochs=1", "--set", "train.lr=0.01", "--name", "one_epoch")
    log = (output_dir("exp020", root, "--name", "one_epoch") / "log.txt").read_text()
    assert "starting fresh" in log and "train.lr: 0.001 -> 0.01" in log
    assert len(list((output_dir("exp020", root, "--name", "one_epoch") / "runs").iterdir())) == 1  # stale cache gone


def test_code_or_data_change_retrains_and_says_what_changed(make_dataset, tmp_path):
    """A copy of the repository (src/, exp/, tools/) so that code can be edited without touching the repo: data
    and training code retrain (saying what changed); code that does not train reuses the finished folds."""
    repo = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "output", "figures_*")
    shutil.copytree(ROOT / "src", repo / "src", ignore=ignore)
    shutil.copytree(ROOT / "exp", repo / "exp", ignore=ignore)
    shutil.copytree(ROOT / "tools", repo / "tools", ignore=ignore)
    root = make_dataset()
    out = output_dir("exp020", root, "--smoke")  # same layout under the output root
    run_exp("exp020", root, "--smoke", cwd=repo)
    run_exp("exp020", root, "--smoke", cwd=repo)
    log = (out / "log.txt").read_text()
    assert log.count("resuming finished folds") == 1 and log.count("fold 0 seed 0: trained") == 1
    # one feature value changed, same shapes
    path = root / "features" / "wavlm.npz"
    z = dict(np.load(path))
    z["X"][3, 2] += 1.0
    np.savez(path, **z)
    run_exp("exp020", root, "--smoke", cwd=repo)
    log = (out / "log.txt").read_text()
    assert "data changed: features/wavlm.npz" in log and log.count("fold 0 seed 0: trained") == 2
    # one line of code outside training (decoding, the report, the benchmarks, an extractor): folds reused
    for name in ("decode/__init__.py", "analysis/report.py", "features/extract_common.py"):
        edit(repo / "src" / name)
    edit(repo / "tools" / "bench.py")
    run_exp("exp020", root, "--smoke", cwd=repo)
    log = (out / "log.txt").read_text()
    assert log.count("resuming finished folds") == 2 and log.count("fold 0 seed 0: trained") == 2
    # one line of the training code (the model): retrained, saying which file
    edit(repo / "src" / "model" / "mlp.py")
    run_exp("exp020", root, "--smoke", cwd=repo)
    log = (out / "log.txt").read_text()
    assert "code changed: src/model/mlp.py" in log and "data changed" not in log.split("code changed")[-1]
    assert log.count("fold 0 seed 0: trained") == 3


def edit(path):
    path.write_text(path.read_text() + "\n# an edit\n")


def test_early_stopping_never_reads_the_scored_rows(shared_dataset):
    """With early stopping on, permuting the validation fold's labels leaves every prediction bit-identical."""
    cfg = config.load(resolve("exp030"), ["train.early_stopping=true", "train.epochs=4", "train.patience=1",
                                          "train.seeds=1", "train.workers=1"])
    ds = data.load(shared_dataset)
    train_rows, valid_rows = ds.split(0)
    fit = lambda: fit_folds(ds, cfg, ds.encoders, [(train_rows, valid_rows, 0, 0)], torch.device("cpu"))[0]
    valid_a, test_a, _, extras = fit()
    assert len(extras["history"]["inner_loss"]) == len(extras["history"]["train_loss"]) >= 1
    fit_rows, stop_rows = inner_split(ds, train_rows)
    assert not set(ds.folds[stop_rows]) & set(ds.folds[valid_rows]) and not set(ds.actors[stop_rows]) & set(ds.actors[fit_rows])
    labels = ds.labels.copy()
    ds.labels = labels.copy()
    ds.labels[valid_rows] = np.random.default_rng(0).permutation(labels[valid_rows])
    assert (ds.labels[valid_rows] != labels[valid_rows]).any()
    valid_b, test_b, _, _ = fit()
    assert all(np.array_equal(valid_a[k], valid_b[k]) for k in valid_a)
    assert all(np.array_equal(test_a[k], test_b[k]) for k in test_a)
    # the inner split's labels do steer it (the check can fail)
    ds.labels = labels.copy()
    ds.labels[stop_rows] = np.random.default_rng(1).permutation(labels[stop_rows])
    _, _, _, extras_c = fit()
    assert extras_c["history"]["inner_loss"] != extras["history"]["inner_loss"]


def noisy_probabilities(rng, labels, strength=2.0) -> dict:
    logits = strength * SALIENCE[labels] + rng.normal(0, 1.0, (len(labels), 6))
    return {"prob": np.exp(logits) / np.exp(logits).sum(1, keepdims=True)}


def test_sub_run_choice_for_a_fold_never_sees_that_folds_labels():
    """Two sub-runs of equal quality: fold k's choice is the same whatever fold k's labels are. The other folds
    are decoded among themselves; with thresholds fitted on every fold but the decoded one (fold k's labels
    included), 8 of these 12 permutations flipped fold k's choice."""
    rng = np.random.default_rng(2)
    folds = np.repeat([0, 1, 2], 80)
    labels = rng.integers(0, 36, len(folds))
    parts = {"A": noisy_probabilities(rng, labels), "B": noisy_probabilities(rng, labels)}
    dc = config.Decoder(head_weights=[0.5])
    choice = results.choose_per_fold(parts, labels, folds, dc)
    for _ in range(4):
        for k in (0, 1, 2):
            permuted = labels.copy()
            permuted[folds == k] = rng.permutation(labels[folds == k])
            assert results.choose_per_fold(parts, permuted, folds, dc)[k] == choice[k]
    # the other folds' labels do decide it (the check can fail): C is sharp wherever it is scored for fold 0
    sharp = noisy_probabilities(rng, labels, strength=20.0)
    assert results.choose_per_fold(parts | {"C": sharp}, labels, folds, dc)[0] == "C"


@pytest.mark.parametrize("exp_id", ["exp043", "exp021", "exp054"])
def test_predict_reproduces_a_runs_test_predictions(shared_dataset, exp_id):
    """From the saved checkpoints alone (random selection, late fusion, test-time subsets): the same test.csv and
    submission bytes."""
    run_exp(exp_id, shared_dataset, "--smoke")
    out = output_dir(exp_id, shared_dataset, "--smoke")
    run_cli("src.run.predict", f"{exp_id}@smoke", "--input", shared_dataset)
    assert (out / "predict" / shared_dataset.name / "test.csv").read_bytes() == (out / "test.csv").read_bytes()
    name = f"{resolve(exp_id).name}@smoke"
    sub = submissions_dir(shared_dataset)
    assert (sub / f"{name}.predicted.json").read_bytes() == (sub / f"{name}.json").read_bytes()


def test_predict_refuses_other_widths(shared_dataset, make_dataset):
    run_exp("exp021", shared_dataset, "--smoke")
    other = make_dataset(width_scale=0.5)
    proc = run_cli("src.run.predict", "exp021@smoke", "--input", other, "--trained-on", shared_dataset.name,
                   check=False)
    assert proc.returncode == 2 and "width" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_set_and_unknown_experiment_fail_cleanly(shared_dataset):
    proc = run_exp("exp040", shared_dataset, "--set", "model.topn=2", check=False)
    assert proc.returncode == 2 and "unknown key 'model.topn'" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_exp("exp04", shared_dataset, check=False)
    assert proc.returncode == 2 and "candidates: exp040" in proc.stderr
