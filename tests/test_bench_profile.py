"""bench --profile and --training: the per-stage timing covers the whole run and leaves src/batched.py as it
was; a missing --input folder is an error, not a place to generate data."""
import torch

from conftest import run_cli
from src import batched
from src.bench import profile_training


def test_profile_training_accounts_for_the_run_and_restores_the_code(shared_dataset):
    before = (batched.dropout_masks, batched.draw_plan, batched.StackedInputs.gather, batched.StackedAdam.step,
              batched.predict_fold, batched.make_loss, torch.autograd.grad)
    res = profile_training("exp042", shared_dataset, models=2, epochs=1)
    after = (batched.dropout_masks, batched.draw_plan, batched.StackedInputs.gather, batched.StackedAdam.step,
             batched.predict_fold, batched.make_loss, torch.autograd.grad)
    assert before == after
    assert res["models"] == 2 and res["epochs"] == 1
    for stage in ("forward and losses", "backward", "Adam", "dropout masks (per step)", "prediction (valid, test, projections)"):
        assert res["seconds"][stage] > 0, stage
    assert abs(sum(res["seconds"].values()) - res["training_s"]) < 0.05
    assert res["seconds"]["setup and bookkeeping (rest)"] >= 0


def test_bench_on_a_missing_input_folder_fails_without_creating_it(tmp_path):
    """--input names a dataset to read: a missing folder is a one-line error, never generated synthetic data."""
    missing = tmp_path / "no_such_dataset"
    for mode in (["--profile", "exp042"], ["--training", "exp042"]):
        proc = run_cli("src.bench", *mode, "--input", missing, check=False)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert "no_such_dataset" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert not missing.exists()
