"""Rank-aware selective fusion: selection, masking, CORAL, and that target labels cannot leak into training."""
import numpy as np
import pandas as pd
import pytest
import torch

from src import data
from src.model.coral import coral_loss
from src.model.dropout import Dropout
from src.model.fusion import FusionNet, GateAttention
from src.run import config
from src.run.experiments import resolve
from src.train.trainer import fit_folds

from conftest import output_dir, run_exp

WIDTHS = [5, 8, 3, 6, 4]


def forward(top_n, selection="learned", available=None, seed=0):
    torch.manual_seed(seed)
    net = FusionNet(WIDTHS, shared_dim=16, fused_dim=8, gate_heads=2, top_n=top_n, selection=selection).eval()
    xs = [torch.randn(32, w) for w in WIDTHS]
    if available is None:
        available = torch.ones(32, len(WIDTHS), dtype=torch.bool)
    return net, net(xs, available, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("selection", ["learned", "random"])
def test_each_clip_keeps_exactly_n_encoders(n, selection):
    _, out = forward(n, selection)
    gate = out["gate"]
    assert ((gate > 0).sum(1) == n).all()
    assert torch.allclose(gate.sum(1), torch.ones(32), atol=1e-6)


def test_learned_selection_keeps_the_highest_scores():
    torch.manual_seed(0)
    net = FusionNet(WIDTHS, 16, 8, 2, top_n=2).eval()
    soft = FusionNet(WIDTHS, 16, 8, 2, top_n="all").eval()
    soft.load_state_dict(net.state_dict())
    xs, avail = [torch.randn(32, w) for w in WIDTHS], torch.ones(32, 5, dtype=torch.bool)
    out, full = net(xs, avail), soft(xs, avail)["gate"]
    kept = out["gate"] > 0
    top2 = torch.zeros_like(kept).scatter(1, full.topk(2, 1).indices, True)
    assert (kept == top2).all()
    assert torch.allclose(out["gate"], torch.where(kept, full, 0) / (full * kept).sum(1, keepdim=True), atol=1e-6)


def test_masked_encoder_is_never_selected():
    available = torch.ones(32, 5, dtype=torch.bool)
    available[:, 1] = False
    available[:16, 3] = False
    for selection in ("learned", "random"):
        _, out = forward(3, selection, available)
        assert (out["gate"][~available] == 0).all()
        assert ((out["gate"] > 0).sum(1) == 3).all()
    # fewer available than n: keep all available ones
    available[:, :3] = False
    _, out = forward(3, "learned", available)
    assert ((out["gate"] > 0) == available).all()


def test_coral_is_zero_for_identical_batches_and_positive_for_shifted():
    torch.manual_seed(0)
    a = torch.randn(64, 10)
    assert coral_loss(a, a.clone()).item() == 0.0
    assert coral_loss(a, a * 2 + 1).item() > 0.01
    assert coral_loss(a, a + 5).item() < 1e-10  # a mean shift alone is not a covariance change


def test_coral_gradient_reaches_the_projectors():
    torch.manual_seed(0)
    net = FusionNet(WIDTHS, 16, 8, 2, 3)
    avail = torch.ones(32, 5, dtype=torch.bool)
    src = net([torch.randn(32, w) for w in WIDTHS], avail)["fused"]
    tgt = net([torch.randn(32, w) * 3 + 1 for w in WIDTHS], avail)["fused"]
    coral_loss(src, tgt).backward()
    for proj in net.projectors:
        assert proj[1].weight.grad is not None and proj[1].weight.grad.abs().sum() > 0


def test_target_labels_cannot_influence_training(shared_dataset):
    """The fold model of exp042 aligns to its validation fold + test set; permuting those labels changes nothing."""
    cfg = config.load(resolve("exp042"), smoke=True)
    ds = data.load(shared_dataset)
    train_rows, valid_rows = ds.split(0)
    _, _, state_a, _ = fit_folds(ds, cfg, ds.encoders, [(train_rows, valid_rows, 0, 0)], torch.device("cpu"))[0]
    ds.labels = ds.labels.copy()
    ds.labels[valid_rows] = np.random.default_rng(0).permutation(ds.labels[valid_rows])
    assert not (ds.labels[valid_rows] == data.load(shared_dataset, ["wavlm"]).labels[valid_rows]).all()
    _, _, state_b, _ = fit_folds(ds, cfg, ds.encoders, [(train_rows, valid_rows, 0, 0)], torch.device("cpu"))[0]
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    # and the training labels do matter (the check can fail)
    ds.labels[train_rows[:50]] = ds.labels[train_rows[50:100]]
    _, _, state_c, _ = fit_folds(ds, cfg, ds.encoders, [(train_rows, valid_rows, 0, 0)], torch.device("cpu"))[0]
    assert not all(torch.equal(state_a[k], state_c[k]) for k in state_a)


def test_missing_encoder_clips_are_masked_end_to_end(make_dataset):
    """data.allow_missing: the fusion model never gives weight to an encoder a clip lacks; an MLP refuses."""
    root = make_dataset()
    z = dict(np.load(root / "features" / "wavlm.npz"))
    np.savez(root / "features" / "wavlm.npz", X=z["X"][40:], filenames=z["filenames"][40:])
    missing = set(z["filenames"][:40])
    run_exp("exp040", root, "--smoke", "--set", "data.allow_missing=true")
    oof = pd.read_csv(output_dir("exp040", root, "--smoke", "--set", "data.allow_missing=true") / "oof.csv")
    lacking = oof["filename"].isin(missing)
    assert lacking.sum() == 40 and (oof.loc[lacking, "gate_wavlm"] == 0).all()
    assert (oof.loc[~lacking, "gate_wavlm"] > 0).any()
    proc = run_exp("exp020", root, "--smoke", "--set", "data.allow_missing=true", check=False)
    assert proc.returncode == 2 and "only model.name: fusion" in proc.stderr


def test_gate_attention_is_multihead_attention():
    """GateAttention draws nn.MultiheadAttention's initial weights (same names, same order) and computes its
    output for masked keys, so checkpoints and seeds keep their meaning."""
    torch.manual_seed(3)
    reference = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    torch.manual_seed(3)
    ours = GateAttention(16, 4)
    assert list(reference.state_dict()) == list(ours.state_dict())
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in reference.state_dict().items())
    tokens, keys = torch.randn(8, 5, 16), torch.rand(8, 5) > 0.4
    keys[:, 2] = True
    expected, _ = reference(tokens, tokens, tokens, key_padding_mask=~keys, need_weights=False)
    assert torch.allclose(ours(tokens, keys), expected, atol=1e-5)


@pytest.mark.parametrize("rows, dim", [(64, 10), (16, 48), (5, 3)])
def test_coral_matches_the_covariance_definition(rows, dim):
    """Both forms (d x d covariances, or the row Gram matrices when d exceeds the batch) give torch.cov's
    value and gradient."""
    torch.manual_seed(0)
    source = torch.randn(rows, dim, requires_grad=True)
    target = torch.randn(rows + 3, dim) * 1.5 + 0.3
    expected = ((torch.cov(source.T) - torch.cov(target.T)) ** 2).sum() / (4 * dim * dim)
    (g_expected,) = torch.autograd.grad(expected, source)
    got = coral_loss(source, target)
    (g_got,) = torch.autograd.grad(got, source)
    assert torch.allclose(got, expected, rtol=1e-5) and torch.allclose(g_got, g_expected, rtol=1e-4, atol=1e-7)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 inside whatever the caller's precision
        assert coral_loss(source.bfloat16(), target.bfloat16()).dtype == torch.float32


def test_dropout_keeps_rows_at_one_minus_p_and_scales_them():
    """Dropout: keep where the global generator's uniform >= p, kept values scaled by 1 / (1 - p); identity
    in eval mode and at p = 0."""
    layer = Dropout(0.3)
    x = torch.ones(200, 100)
    torch.manual_seed(1)
    y = layer(x)
    torch.manual_seed(1)
    keep = torch.rand(200, 100) >= 0.3
    assert torch.equal(y, torch.where(keep, torch.tensor(1 / 0.7), torch.tensor(0.0)))
    assert abs(keep.float().mean().item() - 0.7) < 0.01
    assert torch.equal(layer.eval()(x), x) and torch.equal(Dropout(0.0)(x), x)
