"""bench --profile and --training: the per-stage timing leaves the trainer as it was and counts every step; a
missing --input folder is an error, not a place to generate data."""
from itertools import zip_longest

import torch

from src import data
from src.train import inputs, optim, trainer
from tools.bench import profile_training, training_flops

from conftest import run_cli

STAGES = lambda: (trainer.dropout_masks, trainer.draw_plan, inputs.StackedInputs.gather, optim.StackedAdam.step,
                  trainer.model_outputs, trainer.projections, trainer.make_loss, torch.autograd.grad)


def test_profile_training_counts_every_step_and_restores_the_code(shared_dataset):
    before = STAGES()
    res = profile_training("exp042", shared_dataset, models=2, epochs=1)
    assert STAGES() == before
    assert res["models"] == 2 and res["epochs"] == 1
    # one forward, backward and Adam call per step; the steps of one epoch of two models of folds 0 and 1,
    # batches of 64 (ragged last batches of other sizes step apart)
    ds = data.load(shared_dataset)
    sizes = [[min(64, len(ds.split(k)[0]) - i) for i in range(0, len(ds.split(k)[0]), 64)] for k in (0, 1)]
    steps = sum(len({a for a in pair if a >= 2}) for pair in zip_longest(*sizes, fillvalue=0))
    calls = res["calls"]
    assert calls["forward and losses"] == calls["backward"] == calls["Adam"] == calls["dropout masks (per step)"] == steps
    assert calls["batch plan and per-clip draws (per epoch)"] == 1
    assert calls["prediction (valid, test)"] == 2 * 2 and calls["projections (valid)"] == 2
    # the timers do not nest: the timed stages never add up to more than the wall time
    assert 0 < res["timed_s"] <= res["training_s"] + 0.01
    assert all(res["seconds"][s] > 0 for s in ("forward and losses", "backward", "Adam"))


def test_bench_on_a_missing_input_folder_fails_without_creating_it(tmp_path):
    """--input names a dataset to read: a missing folder is a one-line error, never generated synthetic data."""
    missing = tmp_path / "no_such_dataset"
    for mode in (["--profile", "exp042"], ["--training", "exp042"]):
        proc = run_cli("tools.bench", *mode, "--input", missing, check=False)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert "no_such_dataset" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert not missing.exists()


def test_training_flops_count_trained_models_only(shared_dataset):
    """The model FLOPs behind bench --training's achieved rate: the prior baselines train nothing; exp042's
    count is its forward x 3 (backward) x 2 (CORAL rows) over every fold's training rows, epochs and seeds."""
    assert training_flops("exp000", shared_dataset) == 0
    flops = training_flops("exp042", shared_dataset)
    assert flops > 0 and training_flops("exp030", shared_dataset) < flops  # exp030: the same network, no CORAL
