"""Linear CKA, the decoded predictions the report reads, the per-experiment report and the leaderboard, on outputs of real smoke runs."""
import json
import uuid

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from src.analysis.cka import cka_matrix, linear_cka
from src.analysis.leaderboard import collect, to_markdown
from src.analysis.report import FIGURES, Run, guess_modality, write_report
from src.data import synth
from src.decode.metric import score
from src.errors import UserError
from src.labels import config_index
from src.run.experiments import output_dir, resolve

from conftest import TINY, run_cli, run_exp, submissions_dir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SWEEP_ENCODERS = "[openface,hubert]"  # the sweep trains one model per n: two encoders keep it to n = 1, 2


def hsic_cka(x, y):
    """Reference: CKA from centred linear Gram matrices, tr(KHLH) / sqrt(tr(KHKH) tr(LHLH))."""
    n = len(x)
    h = np.eye(n) - 1.0 / n
    k, l = h @ x @ x.T @ h, h @ y @ y.T @ h
    return np.sum(k * l) / np.sqrt(np.sum(k * k) * np.sum(l * l))


def test_linear_cka_identity_invariances_and_unrelated():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12))
    y = x @ rng.normal(size=(12, 8)) + 0.5 * rng.normal(size=(300, 8))  # related, but not a rotation of x
    rotation, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    base = linear_cka(x, y)
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3.7 * x @ rotation) == pytest.approx(1.0)
    assert linear_cka(x @ rotation, y) == pytest.approx(base)
    assert linear_cka(0.01 * x, 50 * y) == pytest.approx(base)
    assert linear_cka(x, y) == pytest.approx(hsic_cka(x, y))
    assert 0.3 < base < 0.99
    assert linear_cka(x, rng.normal(size=(300, 8))) < 0.15  # independent noise
    matrix = cka_matrix([x, y, x @ rotation])
    assert np.allclose(matrix, matrix.T) and np.allclose(np.diag(matrix), 1.0) and matrix[0, 2] == pytest.approx(1.0)


def test_modality_guess_by_name_is_unknown_when_unsure():
    assert [guess_modality(e) for e in ("hubert", "WavLM_large", "whisper-small", "my_audio_enc", "egemaps",
                                        "prosody")] == ["audio"] * 6
    assert [guess_modality(e) for e in ("openface", "clip", "videomae", "imagebind", "dinov2")] == ["video"] * 5
    assert [guess_modality(e) for e in ("enc_a", "xyz")] == ["unknown"] * 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny dataset and smoke outputs of a fusion model, its top-n sweep, an MLP and a nearest-decoder prior."""
    name = f"tiny_rep_{uuid.uuid4().hex[:8]}"
    path = synth.write(tmp_path_factory.mktemp("report") / name, seed=0, **TINY)
    run_exp("exp040", path, "--smoke")
    # named 'smoke' so that exp040@smoke's report finds the sweep of its own variant
    run_exp("exp041", path, "--smoke", "--set", f"data.encoders={SWEEP_ENCODERS}", "--name", "smoke")
    run_exp("exp020", path, "--smoke")
    run_exp("exp000", path, "--smoke")
    return path


@pytest.mark.parametrize("exp_id", ["exp040", "exp020", "exp000"])
def test_report_reads_the_predictions_the_run_scored(tiny, exp_id):
    """The report's OOF predictions (decoded.csv, never decoded again) give the record's scores exactly, and
    decoded.csv's test rows are the submission."""
    run = Run(resolve(exp_id), tiny, "smoke")
    metrics = json.loads((run.out / "metrics.json").read_text())
    pred, true, folds = run.oof["pred"].to_numpy(), run.oof["label"].to_numpy(), run.oof["fold"].to_numpy()
    oof = score(pred, true)
    assert {k: round(v, 6) if isinstance(v, float) else v for k, v in oof.items()} == metrics["oof"]
    # per-fold figures are stored unrounded: they must match to the last digit
    assert [{"fold": int(k), **score(pred[folds == k], true[folds == k])} for k in np.unique(folds)] == metrics["folds"]
    test = pd.read_csv(run.out / "decoded.csv").query("split == 'test'")
    submitted = pd.read_csv(submissions_dir(tiny) / f"{run.name}.csv", keep_default_na=False)
    entries = [[(r.emotion_1, r.salience_1)] + ([(r.emotion_2, r.salience_2)] if r.emotion_2 else [])
               for r in submitted.itertuples()]
    assert list(test["filename"]) == list(submitted["filename"])
    assert list(test["config"]) == [config_index(e) for e in entries]


def check_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 5000, (path, len(data))
    image = imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100, (path, image.shape)
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 1, path


def test_report_of_a_fusion_run_has_every_figure(tiny):
    proc = run_cli("src.analysis.report", "exp040@smoke", "--input", tiny, check=False)
    assert proc.returncode == 0, proc.stderr
    out = output_dir(resolve("exp040"), tiny.name, "smoke")
    report = (out / "report.md").read_text()
    for name, title, _, _ in FIGURES:
        check_png(out / "figures" / f"{name}.png")
        assert f"(figures/{name}.png)" in report
    assert "Skipped" not in report
    assert "Most used encoder" in report and "hubert" in report and "audio" in report
    # the shift section: the synthetic test set moves clip, videomae and hubert (TINY keeps synth's shift)
    shifted = pd.read_csv(out / "shift.csv").set_index("encoder")["shifted"]
    assert "## Train/test shift" in report and shifted["hubert"] and not shifted["wavlm"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"{metrics['oof']['score']:.4f}" in report
    # the sweep figure reads exp041's per_top_n.csv of the same dataset: n = 1 and 2
    assert "best OOF score is at n = " in report


def test_report_skips_what_an_mlp_lacks(tiny):
    path = write_report(resolve("exp020"), tiny, "smoke")
    report, figures = path.read_text(), path.parent / "figures"
    skipped = {"modality_importance", "selection_frequency", "fold_importance", "gate_distribution", "cka"}
    assert "Training loss per fold" in report
    for name, _, _, _ in FIGURES:
        if name in skipped:
            assert not (figures / f"{name}.png").exists()
            assert f"(figures/{name}.png)" not in report
        else:
            check_png(figures / f"{name}.png")
    assert report.count("_Skipped:") == len(skipped)
    assert "Per-actor OOF score" in report


def test_report_without_outputs_is_a_one_line_error(tiny):
    proc = run_cli("src.analysis.report", "exp045", "--input", tiny, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error:")
    assert "bash run.sh exp045" in proc.stderr and tiny.name in proc.stderr
    proc = run_cli("src.analysis.report", "exp040", "--input", tiny, check=False)  # only its smoke variant exists
    assert proc.returncode == 2 and "exp040_rank_topn has no outputs" in proc.stderr


def test_leaderboard_ranks_every_output_of_the_dataset(tiny):
    with pytest.raises(UserError, match="4 smoke runs left out"):
        collect(tiny)  # smoke runs only when asked
    df = collect(tiny, smoke=True)
    assert set(df["name"]) == {"exp000_trivial@smoke", "exp020_mlp_concat@smoke", "exp040_rank_topn@smoke",
                               "exp041_topn_sweep@smoke"}
    assert list(df["oof_score"]) == sorted(df["oof_score"], reverse=True)
    assert df["smoke"].all() and df["test_score"].notna().all()
    row = df.set_index("name").loc["exp040_rank_topn@smoke"]
    metrics = json.loads((output_dir(resolve("exp040"), tiny.name, "smoke") / "metrics.json").read_text())
    assert row["oof_score"] == metrics["oof"]["score"] and row["test_score"] == metrics["test"]["score"]
    assert row["oof_score_fold_mean"] == pytest.approx(np.mean([f["score"] for f in metrics["folds"]]))
    assert row["n_folds"] == 3 and row["oof_n_seeds"] == 1 and row["oof_score_seed_std"] == 0.0

    markdown = to_markdown(df)
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(df)
    assert all(line.count("|") == table[0].count("|") for line in table)
    assert all(f"| {name} |" in markdown for name in df["name"])
    proc = run_cli("src.analysis.leaderboard", "--input", tiny, "--markdown", "--smoke", check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == markdown
    # the README's results table: every figure as mean ± std over seeds
    seed_table = to_markdown(df, per_seed=True)
    presence = [s["oof"]["acc_presence"] for s in metrics["seeds"]]
    line = next(line for line in seed_table.splitlines() if "| exp040_rank_topn@smoke |" in line)
    assert line.split(" | ")[2] == f"{np.mean(presence):.3f} ± {np.std(presence):.3f}"
    proc = run_cli("src.analysis.leaderboard", "--input", tiny, "--markdown", "--per-seed", "--experiments-only", "--smoke", check=False)
    assert proc.returncode == 0 and proc.stdout == seed_table


def test_leaderboard_without_outputs_is_a_one_line_error(tmp_path):
    proc = run_cli("src.analysis.leaderboard", "--input", tmp_path / f"nothing_{uuid.uuid4().hex[:8]}", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and proc.stderr.count("\n") == 1
