"""Labels and the official metric, including the organisers' published dict-format examples."""
import json

import numpy as np
import pandas as pd
import pytest

from src.decode.metric import contributions, score
from src.decode.scoring import read_submission, score_maps
from src.errors import UserError
from src.labels import CONFIGS, IS_BLEND, N_CONFIGS, PRESENCE, SALIENCE, config_index, parse_filename

from conftest import run_script


def official_score(preds: dict, labels: dict) -> dict:
    """The official semantics written out per clip, as the organisers' scorer does it."""
    presence, salience, n_blend = 0, 0, 0
    for key, true in labels.items():
        pred = preds[key]
        presence += {p["emotion"] for p in pred} == {t["emotion"] for t in true}
        if len(true) == 2:
            n_blend += 1
            salience += len(pred) == 2 and ({p["emotion"]: round(p["salience"]) for p in pred}
                                            == {t["emotion"]: round(t["salience"]) for t in true})
    acc_p = presence / len(labels)
    acc_s = salience / n_blend if n_blend else 0.0
    return {"acc_presence": acc_p, "acc_salience": acc_s, "score": (acc_p + acc_s) / 2}


# The organisers' examples: a single right, neutral wrong, a blend in swapped order with the right ratio,
# a blend with the right set and the wrong ratio.
EXAMPLE_LABELS = {
    "A102_ang_int1_ver1": [{"emotion": "ang", "salience": 100.0}],
    "A102_neu_sit1_ver1": [{"emotion": "neu", "salience": 100.0}],
    "A102_mix_ang_hap_30_70_ver1": [{"emotion": "ang", "salience": 30}, {"emotion": "hap", "salience": 70}],
    "A102_mix_fea_sad_70_30_ver1": [{"emotion": "fea", "salience": 70}, {"emotion": "sad", "salience": 30}],
}
EXAMPLE_PREDS = {
    "A102_ang_int1_ver1": [{"emotion": "ang", "salience": 100.0}],
    "A102_neu_sit1_ver1": [{"emotion": "sad", "salience": 100.0}],
    "A102_mix_ang_hap_30_70_ver1": [{"emotion": "hap", "salience": 70}, {"emotion": "ang", "salience": 30}],
    "A102_mix_fea_sad_70_30_ver1": [{"emotion": "fea", "salience": 50}, {"emotion": "sad", "salience": 50}],
}


def to_index(entries):
    return config_index([(e["emotion"], e["salience"]) for e in entries])


def test_label_space():
    assert N_CONFIGS == 36 and IS_BLEND.sum() == 30
    assert np.allclose(SALIENCE.sum(1), 1) and set(PRESENCE.sum(1)) == {1.0, 2.0}
    assert CONFIGS[parse_filename("A411_mix_ang_hap_30_70_ver1")] == (("ang", 30), ("hap", 70))
    assert CONFIGS[parse_filename("A303_neu_sit2_ver1.mov")] == (("neu", 100),)
    assert CONFIGS[parse_filename("A102_ang_int1_ver1")] == (("ang", 100),)


@pytest.mark.parametrize("bad", [[("xyz", 100)], [("ang", 60), ("hap", 40)], [("neu", 50), ("hap", 50)],
                                 [("ang", 50), ("ang", 50)]])
def test_illegal_labels_are_rejected(bad):
    with pytest.raises(UserError):
        config_index(bad)


def test_official_examples():
    expected = {"acc_presence": 0.75, "acc_salience": 0.5, "score": 0.625}
    assert official_score(EXAMPLE_PREDS, EXAMPLE_LABELS) == expected
    keys = sorted(EXAMPLE_LABELS)
    ours = score([to_index(EXAMPLE_PREDS[k]) for k in keys], [to_index(EXAMPLE_LABELS[k]) for k in keys])
    assert {k: ours[k] for k in expected} == expected and ours["n_blend"] == 2


def test_vectorised_metric_matches_official_on_random_sets():
    rng = np.random.default_rng(0)
    for n in (1, 7, 200):
        pred, true = rng.integers(0, 36, n), rng.integers(0, 36, n)
        as_dict = lambda c: [{"emotion": e, "salience": s} for e, s in CONFIGS[c]]
        ref = official_score({i: as_dict(p) for i, p in enumerate(pred)}, {i: as_dict(t) for i, t in enumerate(true)})
        ours = score(pred, true)
        for k in ref:
            assert ours[k] == pytest.approx(ref[k], abs=1e-12)
        assert contributions(pred, true).sum() == pytest.approx(ours["score"])


def test_no_blends_gives_zero_salience():
    assert score([0, 1], [0, 2])["acc_salience"] == 0.0


def test_score_cli_on_json_matches_in_memory(tmp_path):
    sub = tmp_path / "pred.json"
    sub.write_text(json.dumps({"predictions": {k + ".mov": v for k, v in EXAMPLE_PREDS.items()}}))
    rows = [{"filename": k, "emotion_1": v[0]["emotion"], "emotion_2": v[1]["emotion"] if len(v) > 1 else "",
             "emotion_1_salience": v[0]["salience"] if len(v) > 1 else "",
             "emotion_2_salience": v[1]["salience"] if len(v) > 1 else ""} for k, v in EXAMPLE_LABELS.items()]
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    proc = run_script("src/score.py", sub, tmp_path / "labels.csv")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out == {"acc_presence": 0.75, "acc_salience": 0.5, "score": 0.625, "n": 4, "n_blend": 2}
    assert score_maps(read_submission(sub), {k: to_index(v) for k, v in EXAMPLE_LABELS.items()}) == out


def test_score_cli_rejects_key_mismatch(tmp_path):
    sub = tmp_path / "pred.json"
    sub.write_text(json.dumps({"predictions": {"other.mov": [{"emotion": "ang", "salience": 100.0}]}}))
    pd.DataFrame([{"filename": "A102_ang_int1_ver1"}]).to_csv(tmp_path / "labels.csv", index=False)
    proc = run_script("src/score.py", sub, tmp_path / "labels.csv")
    assert proc.returncode == 2 and "keys differ" in proc.stderr and "Traceback" not in proc.stderr
