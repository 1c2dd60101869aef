"""exp011/exp012: the organisers' protocol (best epoch and thresholds on each validation fold) beside ours."""
import json

import numpy as np

from src import decode

from conftest import output_dir, run_exp


def test_ours_never_reads_the_fold_it_scores_and_theirs_is_at_least_as_high():
    from src.labels import SALIENCE
    rng = np.random.default_rng(0)
    n, n_epochs = 240, 5
    true, folds = rng.integers(0, 36, n), np.repeat(np.arange(4), n // 4)
    logits = rng.normal(0, 1, (n, n_epochs, 6)) + np.linspace(0, 3, n_epochs)[None, :, None] * SALIENCE[true][:, None, :]
    parts = {"epochs_prob": np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)}
    _, ours, ours_folds = decode.select_epochs(parts, true, folds, 20, (), in_sample=False)
    _, theirs, their_folds = decode.select_epochs(parts, true, folds, 20, (), in_sample=True)
    for k in range(4):  # in-sample choice maximises each fold's own score over the same candidates
        inside = folds == k
        assert decode.score(theirs[inside], true[inside])["score"] >= decode.score(ours[inside], true[inside])["score"]
    assert [f["epoch"] for f in their_folds] != [1] * 4  # the epoch is actually chosen
    # redraw fold 0's labels: our fold-0 predictions cannot change, theirs may
    redrawn = true.copy()
    redrawn[folds == 0] = rng.integers(0, 36, (folds == 0).sum())
    _, ours2, _ = decode.select_epochs(parts, redrawn, folds, 20, (), in_sample=False)
    assert np.array_equal(ours[folds == 0], ours2[folds == 0])
    _, theirs2, _ = decode.select_epochs(parts, redrawn, folds, 20, (), in_sample=True)
    assert not np.array_equal(theirs[folds == 0], theirs2[folds == 0])


def check_protocols(m: dict, n_folds: int):
    org, ours = m["protocols"]["organisers"], m["protocols"]["ours"]
    assert len(org["folds"]) == len(ours["folds"]) == n_folds and all("epoch" in f for f in org["folds"])
    for a, b in zip(org["folds"], ours["folds"]):
        assert a["score"] >= b["score"]
    assert {"fold_acc_presence_mean", "fold_acc_presence_std", "fold_acc_salience_mean", "fold_acc_salience_std"} <= set(org)
    assert m["oof"] == org["oof"]  # the config (decoder.fit: per_fold_in_sample) picks what `oof` reports


def test_organisers_protocol_smoke(shared_dataset):
    run_exp("exp012", shared_dataset, "--smoke", "--set", "train.epochs=3")
    metrics = json.loads((output_dir("exp012", shared_dataset, "--smoke", "--set", "train.epochs=3") / "metrics.json").read_text())
    check_protocols(metrics, 3)
    assert 1 <= metrics["decoder"]["epoch"] <= 3 and "test" in metrics
    run_exp("exp011", shared_dataset, "--smoke", "--set", "data.encoders=[wavlm,imagebind]")
    metrics = json.loads((output_dir("exp011", shared_dataset, "--smoke", "--set", "data.encoders=[wavlm,imagebind]") / "metrics.json").read_text())
    check_protocols(metrics["sub_runs"]["wavlm"], 3)
    log = (output_dir("exp011", shared_dataset, "--smoke", "--set", "data.encoders=[wavlm,imagebind]") / "log.txt").read_text()
    assert "organisers protocol" in log and "ours protocol" in log
