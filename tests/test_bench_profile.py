"""bench --profile: the per-stage timing of batched training covers the whole run and leaves src/batched.py as it was."""
import torch

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
