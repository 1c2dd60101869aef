"""Ensembles: no label leakage across folds, the expected-score decoder's optimality, member checks, end to end."""
from __future__ import annotations

import itertools
import json
import uuid

import numpy as np
import pandas as pd
import pytest

from src import ensemble
from src.data import synth
from src.decode import decode_expected
from src.decode.metric import contributions
from src.labels import CONFIGS, IS_BLEND, N_CONFIGS, SALIENCE, config_index
from src.run.experiments import EXP_DIR
from src.run.experiments import output_dir as run_output_dir

from conftest import TINY, output_dir, run_exp, run_script, submissions_dir


# ---- leakage ------------------------------------------------------------------------------------------
def toy_stack_data(seed=0, per_fold=90, n_folds=3):
    """Member-like inputs with signal: noisy salience vectors of the labels, turned into probabilities."""
    rng = np.random.default_rng(seed)
    n = per_fold * n_folds
    y = rng.integers(0, N_CONFIGS, n)
    folds = np.repeat(np.arange(n_folds), per_fold)
    member = lambda labels, s: np.clip(SALIENCE[labels] + rng.normal(0, s, (len(labels), 6)), 0.01, None)
    probs = np.stack([member(y, 0.25), member(y, 0.35)])
    probs /= probs.sum(-1, keepdims=True)  # [M=2, N, 6]
    probs_test = rng.dirichlet(np.ones(6), (2, 40))
    return probs, probs_test, y, folds


def relabel(y, folds, fold, how, seed=1):
    """Labels of one fold's rows permuted among themselves, or drawn anew (which also changes counts)."""
    rng = np.random.default_rng(seed)
    y2, inside = y.copy(), folds == fold
    y2[inside] = rng.permutation(y[inside]) if how == "permute" else rng.integers(0, N_CONFIGS, inside.sum())
    assert (y2[inside] != y[inside]).any()
    return y2


@pytest.mark.parametrize("how", ["permute", "redraw"])
def test_stacked_oof_of_a_fold_ignores_that_folds_labels(how):
    probs, probs_test, y, folds = toy_stack_data()
    X, X_test = np.hstack(list(probs)), np.hstack(list(probs_test))
    run = lambda labels: ensemble.fit_predict_lgbm(X, probs, labels, folds, X_test, probs_test)
    a, b = run(y), run(relabel(y, folds, 1, how))
    inside = folds == 1
    assert np.array_equal(a["oof_config"][inside], b["oof_config"][inside])
    assert np.array_equal(a["oof_pred"][inside], b["oof_pred"][inside])  # decoder chosen without fold 1 too
    # the other folds' stackers did train on fold 1, so the labels do reach them: the test can fail
    assert not np.array_equal(a["oof_config"][~inside], b["oof_config"][~inside])


@pytest.mark.parametrize("n_folds", [3, 4])
def test_inner_stacker_predictions_of_a_fold_ignore_that_folds_labels(n_folds):
    """The inner OOF that fold k's decoder is fitted on: each inner fold predicted by a stacker (starting
    model, rounds, trees) fitted without it. With 4 folds the inner stackers choose rounds by CV; with 3 a
    single fold is left for each, and its starting model alone predicts."""
    probs, probs_test, y, folds = toy_stack_data(per_fold=60, n_folds=n_folds)
    X, X_test = np.hstack(list(probs)), np.hstack(list(probs_test))
    a = ensemble.stack(X, probs, y, folds, X_test, probs_test)
    b = ensemble.stack(X, probs, relabel(y, folds, 2, "permute"), folds, X_test, probs_test)
    inner_fold = folds == 2
    for k in sorted(set(range(n_folds)) - {2}):
        assert np.array_equal(a["inner"][k][inner_fold], b["inner"][k][inner_fold]), f"outer fold {k}"
        # fold 2's labels do reach the inner predictions of the other inner folds: the test can fail
        others = (folds != 2) & (folds != k)
        assert not np.array_equal(a["inner"][k][others], b["inner"][k][others])
        assert np.isnan(a["inner"][k][folds == k]).all()


def test_stacker_test_rows_are_decoded_per_fold_and_voted(monkeypatch):
    """Each fold stacker's test output goes through that fold's decoder, as its OOF rows did, then a vote."""
    probs, probs_test, y, folds = toy_stack_data()
    X, X_test = np.hstack(list(probs)), np.hstack(list(probs_test))
    seen = {}
    real_stack = ensemble.stack
    monkeypatch.setattr(ensemble, "stack", lambda *a, **k: seen.setdefault("s", real_stack(*a, **k)))
    res = ensemble.fit_predict_lgbm(X, probs, y, folds, X_test, probs_test)
    stacked, per_fold = seen["s"], res["decoder"]["per_fold"]
    assert stacked["test_folds"].shape == (3, 40, N_CONFIGS) and np.allclose(stacked["test_folds"].mean(0), stacked["test"])
    each = np.stack([ensemble.decode_configs(t, p) for t, p in zip(stacked["test_folds"], per_fold)])  # [K, T]
    mean_pred = ensemble.decode_configs(stacked["test"], res["decoder"])
    for i in range(X_test.shape[0]):
        counts = np.bincount(each[:, i], minlength=N_CONFIGS)
        winners = np.flatnonzero(counts == counts.max())
        assert res["test_pred"][i] == (mean_pred[i] if mean_pred[i] in winners else winners[0])
    assert res["decoder"]["test_scheme"] == "vote"


def test_fitted_weights_of_a_fold_ignore_that_folds_labels():
    probs, probs_test, y, folds = toy_stack_data()
    a = ensemble.fit_predict_blend(probs, probs_test, y, folds, fit_weights=True)
    b = ensemble.fit_predict_blend(probs, probs_test, relabel(y, folds, 2, "redraw"), folds, fit_weights=True)
    inside = folds == 2
    assert np.array_equal(a["oof_prob"][inside], b["oof_prob"][inside])
    assert np.array_equal(a["oof_pred"][inside], b["oof_pred"][inside])
    assert a["weights"] != b["weights"]  # the all-rows fit does see fold 2


def test_mixture_weights_find_the_informative_member():
    probs, _, y, _ = toy_stack_data()
    noise = np.random.default_rng(3).dirichlet(np.ones(6), probs.shape[1])
    w = ensemble.fit_mixture_weights(np.stack([probs[0], noise]), SALIENCE[y])
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all() and w[0] > 0.9


# ---- the expected-score decoder -----------------------------------------------------------------------
def all_assignments(n_clips):
    return np.array(list(itertools.product(range(N_CONFIGS), repeat=n_clips)))  # [36^n, n]


@pytest.mark.parametrize("seed", range(4))
def test_expected_decoder_maximises_the_expected_official_score(seed):
    """3 clips whose true label is uncertain among 3 configurations each (all blends or all singles, so the
    number of true blends is known); the official metric is averaged over all 27 possible truths."""
    rng = np.random.default_rng(seed)
    blends, singles = np.flatnonzero(IS_BLEND), np.flatnonzero(~IS_BLEND)
    kinds = [True, False, bool(rng.integers(2))]
    supports = [rng.choice(blends if b else singles, 3, replace=False) for b in kinds]
    probs = np.zeros((3, N_CONFIGS))
    for i, s in enumerate(supports):
        probs[i, s] = rng.dirichlet(np.ones(3))
    preds = all_assignments(3)
    expected = np.zeros(len(preds))
    for truth in itertools.product(*supports):
        truth = np.array(truth)
        expected += probs[[0, 1, 2], truth].prod() * contributions(preds, truth).sum(-1)
    chosen = decode_expected(probs, blend_share=sum(kinds) / 3)
    chosen_row = np.flatnonzero((preds == chosen).all(1))[0]
    assert expected[chosen_row] == pytest.approx(expected.max(), abs=1e-12)


def test_expected_decoder_brute_force_on_dense_probabilities():
    """4 clips, probabilities over all 36 configurations, the objective written out clip by clip."""
    rng = np.random.default_rng(7)
    probs, share, n = rng.dirichlet(np.full(N_CONFIGS, 0.3), 4), 0.55, 4
    sets = [frozenset(e for e, _ in c) for c in CONFIGS]
    gain = np.array([[sum(p[t] for t in range(N_CONFIGS) if sets[t] == sets[c]) * 0.5 / n
                      + (p[c] * 0.5 / (n * share) if len(CONFIGS[c]) == 2 else 0.0)
                      for c in range(N_CONFIGS)] for p in probs])  # [4, 36]
    total = gain[0][:, None, None, None] + gain[1][None, :, None, None] + gain[2][None, None, :, None] + gain[3]
    chosen = decode_expected(probs, share)
    assert total[tuple(chosen)] == pytest.approx(total.max(), abs=1e-12)


def test_expected_decoder_prefers_a_blend_over_a_likelier_single():
    probs = np.zeros((1, N_CONFIGS))
    probs[0, config_index([("ang", 100)])] = 0.4
    probs[0, config_index([("ang", 70), ("hap", 30)])] = 0.3
    probs[0, config_index([("ang", 30), ("hap", 70)])] = 0.3
    assert probs.argmax() == config_index([("ang", 100)])
    # set {ang, hap}: 0.6 presence + 0.3 / 0.5 salience beats the single's 0.4
    assert decode_expected(probs, 0.5)[0] in (config_index([("ang", 70), ("hap", 30)]),
                                              config_index([("ang", 30), ("hap", 70)]))
    # with no blends among the scored clips only presence counts, and the set {ang, hap} still wins (0.6 > 0.4)
    assert CONFIGS[decode_expected(probs, 0.0)[0]][0][0] == "ang" and IS_BLEND[decode_expected(probs, 0.0)[0]]


# ---- members and the command, end to end --------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny dataset with smoke outputs of exp000 and exp020 (the variants exp000@smoke, exp020@smoke)."""
    d = synth.write(tmp_path_factory.mktemp("ens") / f"tiny_ens_{uuid.uuid4().hex[:10]}", seed=0, **TINY)
    for exp in ("exp000", "exp020"):
        run_exp(exp, d, "--smoke")
    return d


MEMBERS = ("exp000@smoke", "exp020@smoke")


def run_main(*args):
    return ensemble.main([*map(str, args), "--quiet"])


@pytest.mark.parametrize("method", ["lgbm", "weights", "mean"])
def test_ensemble_end_to_end_gives_a_valid_submission(tiny, method):
    out = run_main(*MEMBERS, "--input", tiny, "--method", method)
    name = f"ens_exp000@smoke+exp020@smoke_{method}"
    assert out == run_output_dir(EXP_DIR / "ensembles" / name, tiny.name)
    template = json.loads((tiny / "submission_template.json").read_text())["predictions"]
    sub = json.loads((submissions_dir(tiny) / f"{name}.json").read_text())["predictions"]
    assert sorted(sub) == sorted(template)
    assert (submissions_dir(tiny) / f"{name}.zip").is_file()
    train = pd.read_csv(tiny / "train_metadata.csv")
    oof, test = pd.read_csv(out / "oof.csv"), pd.read_csv(out / "test.csv")
    assert list(oof["filename"]) == sorted(train["filename"]) and len(test) == len(template)
    assert list(oof.columns) == ["filename", "fold"] + ensemble.PROB and list(test.columns) == ["filename"] + ensemble.PROB
    assert np.allclose(oof[ensemble.PROB].sum(axis=1), 1, atol=1e-4)
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"oof", "folds", "decoder", "test", "members", "weights", "method"} <= metrics.keys()
    assert [m["name"] for m in metrics["members"]] == list(MEMBERS) and metrics["method"] == method
    assert metrics["smoke"]  # an ensemble of smoke runs is a smoke run: off the leaderboard unless asked
    assert len(metrics["folds"]) == 3 and 0 <= metrics["oof"]["score"] <= 1
    assert (out / "config.resolved.yaml").is_file() and (out / "log.txt").is_file()


def test_single_member_only_calibrates_and_decodes(tiny):
    out = run_main("exp020@smoke", "--input", tiny, "--name", "solo")
    assert json.loads((out / "metrics.json").read_text())["decoder"]["name"] in ("expected", "threshold")


def expect_error(capsys, *args) -> str:
    with pytest.raises(SystemExit) as exc:
        run_main(*args)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.fixture
def exp020_oof(tiny):
    """exp020's oof.csv on the tiny dataset, restored after a test has spoiled it."""
    path = output_dir("exp020", tiny, "--smoke") / "oof.csv"
    text = path.read_text()
    yield path
    path.write_text(text)


def test_member_with_other_folds_is_rejected(tiny, exp020_oof, capsys):
    frame = pd.read_csv(exp020_oof)
    frame.loc[0, "fold"] = (frame.loc[0, "fold"] + 1) % 3
    frame.to_csv(exp020_oof, index=False)
    err = expect_error(capsys, *MEMBERS, "--input", tiny, "--name", "bad_folds")
    assert "member exp020@smoke: folds differ" in err and "for 1 clips" in err
    assert not (submissions_dir(tiny) / "bad_folds.json").exists()


def test_member_with_other_clips_is_rejected(tiny, exp020_oof, capsys):
    pd.read_csv(exp020_oof).iloc[1:].to_csv(exp020_oof, index=False)
    err = expect_error(capsys, *MEMBERS, "--input", tiny, "--name", "bad_clips")
    assert "member exp020@smoke: clips in oof.csv differ" in err and "1 missing" in err
    assert not run_output_dir(EXP_DIR / "ensembles" / "bad_clips", tiny.name).exists()


def test_member_without_outputs_names_the_run(tiny, capsys):
    err = expect_error(capsys, "exp000@smoke", "exp021", "--input", tiny)
    assert "member exp021: no outputs" in err and f"bash run.sh exp021 --input {tiny}" in err
    err = expect_error(capsys, "exp020@smoke/wavlm", "--input", tiny)
    assert "no sub-run 'wavlm'" in err
    err = expect_error(capsys, "exp020", "--input", tiny)  # the committed config has no outputs, only @smoke
    assert "member exp020: no outputs" in err
    assert "listed twice" in expect_error(capsys, "exp000@smoke", "exp000@smoke", "--input", tiny)


def test_runs_as_a_file_with_one_line_errors(tiny):
    ok = run_script("src/ensemble.py", *MEMBERS, "--input", tiny, "--method", "mean", "--name", "as_file", "--quiet")
    assert ok.returncode == 0, ok.stderr
    assert (submissions_dir(tiny) / "as_file.json").is_file()
    bad = run_script("src/ensemble.py", "exp000@smoke", "exp021", "--input", tiny)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()] and bad.stderr.startswith("error: member exp021")
