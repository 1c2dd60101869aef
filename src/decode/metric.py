"""The official BlEmoRe metric, vectorised over configuration indices (see BLEMORE.md)."""
from __future__ import annotations

import numpy as np

from src.labels import IS_BLEND, PRESENCE_OK, SALIENCE_OK


def score(pred: np.ndarray, true: np.ndarray) -> dict:
    """pred, true: int [N] configuration indices -> acc_presence, acc_salience, score, n, n_blend."""
    pred, true = np.asarray(pred, dtype=int), np.asarray(true, dtype=int)
    blend = IS_BLEND[true]
    acc_presence = float(PRESENCE_OK[pred, true].mean()) if len(true) else 0.0
    # The official scorer returns 0.0 for salience when there are no true blends.
    acc_salience = float(SALIENCE_OK[pred, true][blend].mean()) if blend.any() else 0.0
    return {"acc_presence": acc_presence, "acc_salience": acc_salience,
            "score": (acc_presence + acc_salience) / 2, "n": int(len(true)), "n_blend": int(blend.sum())}


def contributions(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Each clip's share of the score, float [..., N]; summing over the last axis gives the score.

    pred may carry leading axes (candidate decodings); true is int [N].
    """
    n, n_blend = len(true), max(int(IS_BLEND[true].sum()), 1)
    return 0.5 * PRESENCE_OK[pred, true] / n + 0.5 * SALIENCE_OK[pred, true] / n_blend


def trim(m: dict) -> dict:
    """Scores rounded to 6 decimals, as written to metrics.json."""
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in m.items()}
