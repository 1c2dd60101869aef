"""The one training loop (src/train/trainer.py): a model trained in a stack of three ends where it ends alone
(a stack of one), on tiny synthetic data."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from src import data
from src.run import config
from src.run.experiments import resolve
from src.train.optim import StackedAdam, epoch_lrs
from src.train.trainer import fit_folds

from conftest import bfloat16, output_dir, run_exp

CPU = torch.device("cpu")


def small_cfg(exp_id: str, **model):
    """exp_id's config, 2 epochs (smoke), small widths, batches of 32 (several steps, ragged last batches)."""
    cfg = config.load(resolve(exp_id), smoke=True)
    model = {**({"shared_dim": 16, "fused_dim": 16, "gate_heads": 2} if cfg.model.name == "fusion"
                else {"hidden": 32}), **model}
    # float32: stacks then agree to float tolerance (bfloat16: test_bfloat16_stacks_agree_to_its_precision)
    return replace(cfg, model=replace(cfg.model, **model),
                   train=replace(cfg.train, batch_size=32, workers=1, precision="float32"))


def alone(ds, cfg, job):
    """One job trained as a stack of one."""
    return fit_folds(ds, cfg, ds.encoders, [job], CPU)[0]


def jobs_of(ds, seeds=(3, 11, 5)):
    """One job per fold, each with its own seed: (train_rows, valid_rows, seed, draw_seed)."""
    return [(*ds.split(k), s, 100 + s) for k, s in zip(ds.fold_ids, seeds)]


# The gate is a softmax over encoders, unchanged by a shift of all scores or all attention logits: these
# biases get gradients of pure float noise, which Adam scales into lr-sized steps, so they match only
# loosely between two summation orders (and change no output).
SHIFT_INVARIANT = ("scorer.1.bias", "scorer.0.bias", "attention.in_proj_bias")


def assert_same_states(a: dict, b: dict, skip=()) -> None:
    assert list(a) == list(b)
    for k in (k for k in a if k not in skip):
        atol = 1e-3 if k in SHIFT_INVARIANT else 2e-5
        assert torch.allclose(a[k].float(), b[k].float(), atol=atol), (k, (a[k].float() - b[k].float()).abs().max())


CASES = {  # exp, model overrides, adapt overrides, train overrides
    "mlp_dropout": ("exp020", {"dropout": 0.3}, {}, {}),
    "fusion_coral_on_projections": ("exp042", {"top_n": 3}, {"coral_on": "fused_and_projections"}, {}),
    "fusion_topn_coral_dropout": ("exp042", {"top_n": 3}, {}, {}),  # exp042 keeps dropout 0.3, adamw, cosine
    "fusion_random_encoder_dropout": ("exp043", {"top_n": 2, "encoder_dropout": 0.3}, {"coral_weight": 10.0}, {}),
    "fusion_fixed_adam": ("exp044", {"top_n": 3}, {},
                          {"optimizer": "adam", "schedule": "constant", "weight_decay": 0.01}),
    "fusion_rank_order_reattend": ("exp048", {"top_n": 2, "reattend": True}, {}, {}),
    "fusion_loss_gate_cue": ("exp042", {"top_n": 3, "gate": "loss", "reliability_cue": True}, {}, {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_model_in_a_stack_ends_where_it_ends_alone(shared_dataset, case):
    """Each model trained inside a stack of three ends with the weights, predictions, history and checkpoint
    extras it gets alone (a stack of one)."""
    exp_id, model, adapt, train = CASES[case]
    cfg = small_cfg(exp_id, **model)
    cfg = replace(cfg, adapt=replace(cfg.adapt, **adapt), train=replace(cfg.train, **train))
    ds = data.load(shared_dataset)
    jobs = jobs_of(ds)
    batched = fit_folds(ds, cfg, ds.encoders, jobs, CPU)
    for job, (valid, test, state, extras) in zip(jobs, batched):
        s_valid, s_test, s_state, s_extras = alone(ds, cfg, job)
        assert_same_states(s_state, state)
        assert list(s_valid) == list(valid) and list(s_test) == list(test)
        for part in s_valid:
            assert np.allclose(s_valid[part], valid[part], atol=1e-5) and np.allclose(s_test[part], test[part], atol=1e-5)
        assert sorted(s_extras) == sorted(extras)
        assert np.allclose(s_extras["history"]["train_loss"], extras["history"]["train_loss"], atol=1e-4)
        assert len(extras["history"]["train_loss"]) == cfg.train.epochs
        for key in ("widths", "draw_seed", "n_rows", "fixed_encoders"):
            assert s_extras.get(key) == extras.get(key), key
        for key in ("mean", "std"):
            assert all(np.array_equal(a, b) for a, b in zip(s_extras[key], extras[key]))
        if "projections" in s_extras:
            assert np.allclose(s_extras["projections"], extras["projections"], atol=2e-3, equal_nan=True)


@bfloat16
def test_bfloat16_stacks_agree_to_its_precision(shared_dataset):
    """train.precision bfloat16: a model in a stack and alone end within bfloat16 rounding of each other
    (weights within 0.02 after 2 epochs at lr 1e-3, loss histories within 2e-3); predictions are not
    compared, as a rounding can flip a clip's top-n choice. Far apart from the float32 models, so the
    precision is really applied."""
    cfg = small_cfg("exp048", top_n=2, reattend=True)
    bf16 = replace(cfg, train=replace(cfg.train, precision="bfloat16"))
    ds = data.load(shared_dataset)
    jobs = jobs_of(ds)
    batched = fit_folds(ds, bf16, ds.encoders, jobs, CPU)
    for job, (_, _, state, extras) in zip(jobs, batched):
        _, _, s_state, s_extras = alone(ds, bf16, job)
        for k in s_state:
            if k not in SHIFT_INVARIANT:
                assert torch.allclose(s_state[k].float(), state[k].float(), atol=0.02), k
        assert np.allclose(s_extras["history"]["train_loss"], extras["history"]["train_loss"], atol=2e-3)
        _, _, f_state, _ = alone(ds, cfg, job)
        assert any(not torch.allclose(f_state[k], state[k], atol=1e-4) for k in f_state)


def test_a_model_does_not_see_the_other_models(shared_dataset):
    """Changing another model's rows, CORAL targets and seed leaves this model's weights bit-identical."""
    cfg = small_cfg("exp042", top_n=3)
    ds = data.load(shared_dataset)
    jobs = jobs_of(ds)
    first = fit_folds(ds, cfg, ds.encoders, jobs, CPU)
    other_tr, other_va = ds.split(ds.fold_ids[0])
    changed = [jobs[0], (other_tr[::2], other_va, 99, 199), jobs[2]]
    second = fit_folds(ds, cfg, ds.encoders, changed, CPU)
    for i in (0, 2):
        assert all(torch.equal(first[i][2][k], second[i][2][k]) for k in first[i][2])
    assert not all(torch.allclose(first[1][2][k], second[1][2][k]) for k in first[1][2])  # the check can fail


@pytest.mark.parametrize("train", [{"early_stopping": True, "epochs": 8, "patience": 1, "lr": 0.02, "schedule": "constant"},
                                   {"epoch_selection": "valid_fold_score", "epochs": 3}])
def test_early_stopping_and_epoch_predictions_in_a_stack(shared_dataset, train):
    """Early stopping (each model on its own inner split, stopping on its own epoch) and predictions after
    every epoch run in the stack and give what each model gets alone."""
    cfg = small_cfg("exp042", top_n=3)
    cfg = replace(cfg, train=replace(cfg.train, **train))
    ds = data.load(shared_dataset)
    jobs = jobs_of(ds)
    stacked = fit_folds(ds, cfg, ds.encoders, jobs, CPU)
    for job, (valid, test, state, extras) in zip(jobs, stacked):
        s_valid, _, s_state, s_extras = alone(ds, cfg, job)
        # 8 epochs at 20x the default lr: the shift-invariant biases' noise grows past assert_same_states'
        # bound; they change no output, which is compared instead
        assert_same_states(s_state, state, skip=SHIFT_INVARIANT)
        assert np.allclose(s_valid["salience"], valid["salience"], atol=1e-4)
        assert s_extras["history"].keys() == extras["history"].keys()
        assert np.allclose(s_extras["history"]["train_loss"], extras["history"]["train_loss"], atol=1e-4)
        if cfg.train.early_stopping:
            inner = extras["history"]["inner_loss"]
            assert len(inner) == len(extras["history"]["train_loss"]) and np.allclose(
                s_extras["history"]["inner_loss"], inner, atol=1e-4)
            assert extras["history"]["best_epoch"] == 1 + int(np.argmin(inner))
        else:
            assert valid["epochs_salience"].shape == (len(job[1]), cfg.train.epochs, 6)
            assert test["epochs_presence"].shape == (len(ds.test_rows), cfg.train.epochs, 6)
            assert np.allclose(valid["epochs_salience"][:, -1], valid["salience"], atol=1e-6)
            assert np.allclose(s_valid["epochs_salience"], valid["epochs_salience"], atol=1e-5)
    if cfg.train.early_stopping:  # some model stopped before the last epoch (the check can fail)
        assert min(len(e["history"]["train_loss"]) for *_, e in stacked) < cfg.train.epochs


def test_worker_processes_train_the_same_models(shared_dataset):
    """train.workers = 2: the jobs split over two single-threaded processes, same models as one process."""
    cfg = small_cfg("exp042", top_n=3)
    ds = data.load(shared_dataset)
    jobs = jobs_of(ds)[:2]
    one = fit_folds(ds, cfg, ds.encoders, jobs, CPU)
    two = fit_folds(ds, replace(cfg, train=replace(cfg.train, workers=2)), ds.encoders, jobs, CPU)
    for a, b in zip(one, two):
        assert_same_states(a[2], b[2])


def test_run_is_deterministic_and_resumes_whole_sub_runs(make_dataset):
    """The pipeline: the same config twice gives a byte-identical oof.csv, also after a run that lost a fold
    file (the whole sub-run retrains in one stack; finished fold files stay)."""
    root = make_dataset()
    args = ("--smoke",)
    run_exp("exp042", root, *args)
    out = output_dir("exp042", root, *args)
    first = (out / "oof.csv").read_bytes()
    assert "fold x seed models trained at once" in (out / "log.txt").read_text()
    folds = sorted(out.glob("runs/*/folds/**/fold*_seed0.npz"))
    assert len(folds) == 3  # the tiny dataset's three folds, one seed (smoke)
    stamp = folds[0].stat().st_mtime_ns
    folds[1].unlink()
    run_exp("exp042", root, *args)
    assert folds[1].is_file() and folds[0].stat().st_mtime_ns == stamp
    assert (out / "oof.csv").read_bytes() == first
    run_exp("exp042", root, *args, "--force")
    assert (out / "oof.csv").read_bytes() == first


def test_stacked_adam_is_one_torch_adam_per_model():
    """Per-model slices through torch's fused kernel: each model steps as its own torch.optim.AdamW, including
    from strided gradients (vmap's come transposed) and a model left out of a step (its state unchanged)."""
    torch.manual_seed(0)
    start = torch.randn(3, 4, 5)
    grads = [torch.randn(3, 5, 4).transpose(1, 2) for _ in range(4)]  # strided, as vmap returns them
    active = [np.array([True, True, True]), np.array([True, False, True])] * 2
    params = {"w": start.clone()}
    opt = StackedAdam(params, weight_decay=0.01, decoupled=True)
    for g, a in zip(grads, active):
        opt.step({"w": g}, a, lr=1e-2)
    for m in range(3):
        p = torch.nn.Parameter(start[m].clone())
        reference = torch.optim.AdamW([p], lr=1e-2, weight_decay=0.01)
        for g, a in zip(grads, active):
            if a[m]:
                p.grad = g[m].contiguous()
                reference.step()
        assert torch.allclose(params["w"][m], p.detach(), atol=1e-7), m


@pytest.mark.parametrize("epochs", [1, 2, 7, 40, 173])
@pytest.mark.parametrize("lr", [1e-3, 3e-4, 0.1])
def test_epoch_learning_rates_are_torch_optims_floats(epochs, lr):
    """The cosine schedule written out gives CosineAnnealingLR's floats bit for bit (and a constant stays constant)."""
    t = config.load(resolve("exp042"), [f"train.epochs={epochs}", f"train.lr={lr}", "train.schedule=cosine"]).train
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    expected = []
    for _ in range(epochs):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert epoch_lrs(t) == expected and len(set(expected)) == epochs
    assert epoch_lrs(replace(t, schedule="constant")) == [lr] * epochs
