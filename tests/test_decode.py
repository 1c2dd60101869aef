"""The threshold decoder: hand cases, the vectorised grid search against the per-clip loop, honest refits."""
import numpy as np
import pytest

from src.decode import combine_heads, cross_fit, decode_thresholds, fit_thresholds, threshold_grid
from src.labels import CONFIGS, SALIENCE
from tools.bench import fit_thresholds_loop

P = lambda **kw: np.array([[kw.get(e, 0.0) for e in ("ang", "disg", "fea", "hap", "sad", "neu")]])


def label(probs, alpha=0.3, beta=0.1):
    return CONFIGS[int(decode_thresholds(probs, alpha, beta)[0])]


def test_hand_cases():
    assert label(P(ang=0.6, hap=0.35)) == (("ang", 70), ("hap", 30))       # a 70/30 blend, dominant first
    assert label(P(sad=0.4, fea=0.55)) == (("fea", 70), ("sad", 30))       # order follows the probabilities
    assert label(P(ang=0.45, hap=0.4)) == (("ang", 50), ("hap", 50))       # within beta: 50/50
    assert label(P(hap=0.8, sad=0.1)) == (("hap", 100),)                   # second below alpha: a single
    assert label(P(neu=0.5, ang=0.45)) == (("neu", 100),)                  # neutral never blends
    assert label(P(ang=0.5, disg=0.5), beta=0.0) == (("ang", 50), ("disg", 50))  # a tie is 50/50
    assert label(P(ang=0.6, hap=0.3), alpha=0.3) == (("ang", 70), ("hap", 30))   # alpha is inclusive


def test_grid_is_the_organisers():
    grid = threshold_grid(20)
    assert len(grid) == 20 and grid[0] == 0.05 and grid[-1] == 0.95


@pytest.mark.parametrize("seed", [0, 1])
def test_vectorised_search_equals_the_loop(seed):
    rng = np.random.default_rng(seed)
    true = rng.integers(0, 36, 150)
    logits = 2 * SALIENCE[true] + rng.normal(0, 0.7, (150, 6))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    fast, slow = fit_thresholds(probs, true), fit_thresholds_loop(probs, true)
    assert fast[:2] == slow[:2] and fast[2] == pytest.approx(slow[2], abs=1e-12)


def test_cross_fit_never_sees_the_fold_it_decodes():
    """Permuting fold 0's labels must leave fold 0's decoded predictions unchanged."""
    rng = np.random.default_rng(0)
    n = 300
    true = rng.integers(0, 36, n)
    folds = np.arange(n) % 3
    logits = 2 * SALIENCE[true] + rng.normal(0, 0.8, (n, 6))
    parts = {"prob": np.exp(logits) / np.exp(logits).sum(1, keepdims=True)}
    pred, per_fold, _ = cross_fit(parts, true, folds, 20, [0.0])
    shuffled = true.copy()
    shuffled[folds == 0] = rng.permutation(true[folds == 0])
    pred2, per_fold2, _ = cross_fit(parts, shuffled, folds, 20, [0.0])
    assert (pred[folds == 0] == pred2[folds == 0]).all() and per_fold[0] == per_fold2[0]


def test_head_fusion_weight_is_fitted():
    rng = np.random.default_rng(1)
    true = rng.integers(0, 36, 200)
    salience = SALIENCE[rng.integers(0, 36, 200)]  # a confidently wrong salience head
    presence = np.clip(0.8 * (SALIENCE[true] > 0) + rng.normal(0, 0.1, (200, 6)), 0.01, 0.99)
    _, _, params = cross_fit({"presence": presence, "salience": salience}, true, np.arange(200) % 2, 20,
                             [0.0, 0.5, 1.0])
    assert params["head_weight"] == 1.0
    assert np.allclose(combine_heads(presence, salience, 0.0), salience)
