"""The controls see only the encoders they keep; arms at one seed are paired; reattend and rank order run."""
import numpy as np
import pytest
import torch

from src import data
from src.model.fusion import FusionNet
from src.run import config
from src.run.experiments import resolve
from src.train import trainer
from src.train.trainer import fit_folds, init_model, prediction_draws

WIDTHS = [5, 8, 3, 6, 4]


def net(selection, top_n=2, **kw):
    torch.manual_seed(0)
    fixed = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.7]) if selection == "fixed" else None
    return FusionNet(WIDTHS, shared_dim=16, fused_dim=8, gate_heads=2, top_n=top_n, selection=selection,
                     dropout=0.0, fixed=fixed, **kw)


def inputs(b=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, w, generator=g) for w in WIDTHS], torch.ones(b, len(WIDTHS), dtype=torch.bool)


@pytest.mark.parametrize("selection", ["random", "fixed"])
def test_dropped_encoder_changes_nothing_and_gets_no_gradient(selection):
    model = net(selection).eval()
    xs, avail = inputs()
    draw = torch.rand(avail.shape, generator=torch.Generator().manual_seed(3))
    out = model(xs, avail, draw=draw)
    keep = out["gate"] > 0
    assert (keep.sum(1) == 2).all()
    dropped = int(np.flatnonzero(~keep[0].numpy())[0])
    perturbed = [x.clone() for x in xs]
    perturbed[dropped][0] += 100 * torch.randn(WIDTHS[dropped])
    again = model(perturbed, avail, draw=draw)
    for k in ("gate", "salience_logits", "presence_logits", "fused"):
        assert torch.equal(out[k][0], again[k][0]), k
    assert not torch.equal(out["projections"][0, dropped], again["projections"][0, dropped])  # the input did change
    # gradient from clip 0 alone: none reaches the dropped encoder's projector, some reaches a kept one's
    model.train()
    one = model([x[:1] for x in xs], avail[:1], draw=draw[:1])
    model.zero_grad()
    model.loss(one, {"salience": torch.full((1, 6), 1 / 6), "presence": torch.ones(1, 6)}).backward()
    kept = int(np.flatnonzero(keep[0].numpy())[0])
    assert all(p.grad is None or not p.grad.any() for p in model.projectors[dropped].parameters())
    assert model.projectors[kept][1].weight.grad.abs().sum() > 0


def test_fixed_control_never_keeps_more_than_n():
    model = net("fixed", top_n=2).eval()
    xs, avail = inputs()
    avail[:8, 1] = False  # the best fixed encoder (priority 0.9) is missing from half the clips
    gate = model(xs, avail)["gate"]
    assert ((gate > 0).sum(1) == 2).all()
    assert (gate[8:, [1, 4]] > 0).all() and (gate[:8, [4, 2]] > 0).all()  # next in line fills the gap


def test_learned_selection_reattend_and_rank_order():
    xs, avail = inputs()
    base, re = net("learned").eval(), net("learned", reattend=True).eval()
    a, b = base(xs, avail), re(xs, avail)
    assert torch.equal(a["gate"] > 0, b["gate"] > 0)  # the same ranking pass picks the same encoders
    assert not torch.allclose(a["gate"], b["gate"])  # but the weights come from attention within the kept set
    # re-attended weights are a softmax over scores from attention among the kept encoders only
    keep = b["gate"] > 0
    scores_only_kept = re.gate_scores(b["projections"], keep)
    assert torch.allclose(b["gate"][keep], torch.softmax(scores_only_kept.masked_fill(~keep, -torch.inf), 1)[keep])
    ranked = net("learned", rank_order=True).eval()
    shared = {k: v for k, v in ranked.state_dict().items() if k != "rank_embedding"}
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in shared.items())  # same initial shared weights
    with torch.no_grad():
        ranked.rank_embedding.copy_(torch.randn_like(ranked.rank_embedding))
    c = ranked(xs, avail)
    assert torch.equal(c["gate"], a["gate"]) and not torch.allclose(c["fused"], a["fused"])


def test_prediction_draws_are_one_per_clip_and_seed():
    random = config.load(resolve("exp043"), ["model.random_draws=2"])
    a, b = prediction_draws(random, 7, 50, 5, "cpu"), prediction_draws(random, 7, 50, 5, "cpu")
    assert list(a) == ["draw"] and a["draw"].shape == (2, 50, 5)
    assert torch.equal(a["draw"], b["draw"]) and not torch.equal(a["draw"], prediction_draws(random, 8, 50, 5, "cpu")["draw"])
    assert prediction_draws(config.load(resolve("exp042")), 7, 50, 5, "cpu") == {}  # learned selection: none
    subsets = config.load(resolve("exp042"), ["model.encoder_dropout=0.3", "model.test_subsets=3"])
    assert prediction_draws(subsets, 7, 50, 5, "cpu")["dropped"].shape == (3, 50, 5)


def test_test_subsets_hide_encoders_at_prediction_only_where_asked():
    model = net("learned", top_n="all", encoder_dropout=0.5).eval()
    xs, avail = inputs()
    dropped = torch.rand(avail.shape, generator=torch.Generator().manual_seed(4))
    full, subset = model(xs, avail), model(xs, avail, dropped=dropped)
    assert (full["gate"] > 0).all()  # no uniforms given: every available encoder, as before
    kept = (dropped >= 0.5) | ~(dropped >= 0.5).any(1, keepdim=True)  # a clip losing all keeps all
    assert torch.equal(subset["gate"] > 0, kept) and not kept.all()


def test_test_subsets_average_predictions_and_leave_training_alone(shared_dataset):
    from src.errors import UserError
    ds = data.load(shared_dataset)
    job = [(*ds.split(0), 5, 5)]
    runs = {}
    for k in (0, 4):
        cfg = config.load(resolve("exp042"), ["train.epochs=2", "model.encoder_dropout=0.3", f"model.test_subsets={k}"])
        runs[k] = fit_folds(ds, cfg, ds.encoders, job, torch.device("cpu"))[0]
    (valid0, test0, state0, _), (valid4, test4, state4, _) = runs[0], runs[4]
    assert all(torch.equal(v, state4[k]) for k, v in state0.items())  # the same trained model
    # its predictions, validation and test rows, averaged over subsets
    assert not np.allclose(valid0["salience"], valid4["salience"]) and not np.allclose(test0["salience"], test4["salience"])
    assert np.allclose(valid4["salience"].sum(1), 1, atol=1e-5)
    with pytest.raises(UserError, match="model.test_subsets: 2 needs a fusion model with model.encoder_dropout"):
        config.load(resolve("exp042"), ["model.test_subsets=2"])


def record_batches(monkeypatch):
    """Each epoch's training rows of the stack's first model, in batch order."""
    seen = []
    real = trainer.draw_plan

    def spy(*args, **kwargs):
        plan = real(*args, **kwargs)
        sizes = plan["sizes"][0]
        seen.append(torch.cat([plan["rows"][0, j, :n] for j, n in enumerate(sizes) if n]).clone())
        return plan
    monkeypatch.setattr(trainer, "draw_plan", spy)
    return seen


@pytest.mark.parametrize("arm", ["exp043", "exp044", "exp042", "exp048", "exp049"])
def test_arms_at_one_seed_share_batch_order_and_initial_weights(arm, shared_dataset, monkeypatch):
    ds = data.load(shared_dataset)
    train_rows, valid_rows = ds.split(0)
    runs = {}
    for exp in ("exp040", arm):
        cfg = config.load(resolve(exp), ["train.epochs=2"])
        seen = record_batches(monkeypatch)
        fit_folds(ds, cfg, ds.encoders, [(train_rows, valid_rows, 5, 5)], torch.device("cpu"))
        widths = [ds.features[e].shape[1] for e in ds.encoders]
        runs[exp] = (seen[-2:], init_model(cfg, widths, 5, "cpu").state_dict())  # the trained model's epochs
    (order_a, init_a), (order_b, init_b) = runs["exp040"], runs[arm]
    assert all(torch.equal(x, y) for x, y in zip(order_a, order_b))
    assert not torch.equal(order_a[0], order_a[1])  # epochs do reshuffle (the check can fail)
    assert all(torch.equal(v, init_b[k]) for k, v in init_a.items() if k != "fixed")


def test_missing_clips_are_left_out_of_projection_coral_and_cka():
    from src.analysis.cka import cka_matrix
    from src.train.trainer import projection_coral
    g = torch.Generator().manual_seed(0)
    src_p, tgt_p = torch.randn(20, 3, 4, generator=g), torch.randn(20, 3, 4, generator=g)
    ok_s, ok_t = torch.ones(20, 3, dtype=torch.bool), torch.ones(20, 3, dtype=torch.bool)
    ok_s[:6, 1] = False
    ok_t[10:, 2] = False
    base = projection_coral(src_p, tgt_p, ok_s, ok_t)
    junk_s, junk_t = src_p.clone(), tgt_p.clone()
    junk_s[:6, 1] += 50 * torch.randn(6, 4)
    junk_t[10:, 2] *= 30
    assert torch.equal(base, projection_coral(junk_s, junk_t, ok_s, ok_t))
    assert not torch.equal(base, projection_coral(junk_s, junk_t, torch.ones_like(ok_s), torch.ones_like(ok_t)))
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 5)), rng.normal(size=(40, 6))
    b[:, :3] += a[:, :3]
    with_gap = b.copy()
    with_gap[:10] = np.nan
    assert cka_matrix([a, with_gap])[0, 1] == pytest.approx(cka_matrix([a[10:], b[10:]])[0, 1])


def test_modalities_come_from_the_dataset_file(tmp_path):
    from src.errors import UserError
    assert data.read_modalities(tmp_path) == {}
    (tmp_path / "encoders.csv").write_text("encoder,modality\nprosody,audio\nfacenet,video\nav_enc,both\n")
    assert data.read_modalities(tmp_path) == {"prosody": "audio", "facenet": "video", "av_enc": "both"}
    (tmp_path / "encoders.csv").write_text("encoder,modality\nprosody,sound\n")
    with pytest.raises(UserError, match="encoders.csv: modality 'sound' of encoder 'prosody'"):
        data.read_modalities(tmp_path)


def test_selection_frequency_is_per_seed_then_averaged(tmp_path):
    """Seed 0 keeps encoder 0 on rows 0-1, seed 1 on rows 2-3: 'any seed' would say 100%, per seed says 50%."""
    from types import SimpleNamespace

    import pandas as pd

    from src.analysis.report import selection_frequency
    from src.run.results import write_fold
    folds = tmp_path / "runs" / "fp" / "folds"
    g = {0: np.array([[1, 0], [1, 0], [0, 1], [0, 1]], float), 1: np.array([[0, 1], [0, 1], [1, 0], [1, 0]], float)}
    for s, gate in g.items():
        write_fold(folds / f"fold0_seed{s}.npz", {"gate": gate[:2]}, {}, {})
        write_fold(folds / f"fold1_seed{s}.npz", {"gate": gate[2:]}, {}, {})
    mean_gate = (g[0] + g[1]) / 2
    run = SimpleNamespace(out=tmp_path, record=SimpleNamespace(group=None, choice_for_test=None), oof=pd.DataFrame({"x": range(4)}), n_seeds=2,
                          encoders=["a", "b"], gates=mean_gate, config={"run": {"fingerprint": "fp"}})
    freq, spread, how = selection_frequency(run)
    assert np.allclose(freq, [0.5, 0.5]) and np.allclose(spread, 0) and "per seed" in how
    assert np.allclose((mean_gate > 0).mean(0), 1.0)  # what the seed-averaged gates would have said


def test_test_rows_are_decoded_per_fold_and_voted():
    from src.decode import apply_decoder, decode_test
    from src.labels import CONFIG_INDEX
    # three fold models each call a different blend with anger; their mean is flat on the second emotion
    probs = np.array([[[.6, 0, 0, .3, .05, .05]], [[.6, 0, 0, .05, .3, .05]], [[.6, 0, .3, 0, .05, .05]]])
    strict, loose = {"alpha": .2, "beta": .2, "head_weight": None}, {"alpha": .5, "beta": .2, "head_weight": None}
    per_fold = [strict, strict, loose]  # the third fold's decoder calls no blend on this clip
    parts = {"prob": probs}
    voted = decode_test(parts, strict, per_fold, "vote")
    each = [apply_decoder({"prob": probs[k]}, p)[0] for k, p in enumerate(per_fold)]
    assert each == [CONFIG_INDEX[frozenset({("ang", 70), ("hap", 30)})],
                    CONFIG_INDEX[frozenset({("ang", 70), ("sad", 30)})], CONFIG_INDEX[frozenset({("ang", 100)})]]
    # a three-way tie: the mean decoding (single anger, as the mean's second emotion is below alpha) breaks it
    assert decode_test(parts, strict, per_fold, "mean")[0] == each[2] == voted[0]
    probs[1] = probs[0]  # now two folds agree on ang 70 / hap 30: the vote follows them, not the mean
    assert decode_test({"prob": probs}, strict, per_fold, "vote")[0] == each[0]
    assert decode_test({"prob": probs}, strict, per_fold, "mean")[0] == apply_decoder({"prob": probs.mean(0)}, strict)[0]
