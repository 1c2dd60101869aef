"""Config schema: every experiment resolves; unknown keys and wrong types are errors."""
import re

import pytest

from src.errors import UserError
from src.run import config
from src.run.experiments import all_experiments, resolve


@pytest.mark.parametrize("exp_dir", all_experiments(), ids=lambda p: p.name)
def test_every_experiment_resolves(exp_dir):
    cfg = config.load(exp_dir)
    assert cfg.train.epochs >= 1 and cfg.note
    assert (exp_dir / "run.py").read_text().count("\n") <= 3


def test_parent_chain_merges_and_overrides():
    cfg = config.load(resolve("exp042"))
    assert cfg.adapt.coral_weight > 0 and cfg.model.name == "fusion" and cfg.model.top_n != "all"
    assert config.load(resolve("exp020")).model.inputs == "concat"
    assert config.load(resolve("exp020")).train == config.load(resolve("exp010")).train


def test_set_and_smoke():
    cfg = config.load(resolve("exp040"), ["model.top_n=2", "train.lr=0.01", "data.encoders=[a, b]"], smoke=True)
    assert cfg.model.top_n == 2 and cfg.train.lr == 0.01 and cfg.data.encoders == ["a", "b"]
    assert cfg.train.epochs == 2 and cfg.train.seeds == 1 and cfg.smoke


@pytest.mark.parametrize("sets,message", [
    (["train.epoch=3"], "unknown key 'train.epoch' (known: epochs"),
    (["modle.top_n=3"], "unknown key 'modle'"),
    (["train.epochs=three"], "train.epochs: expected int"),
    (["model.top_n=some"], "model.top_n"),
    (["train.epochs=2.5"], "expected int"),
    (["data.encoders=wavlm"], "data.encoders"),
    (["decoder.name=argmax"], "not one of threshold, nearest"),
    (["train.epochs"], "expected key.path=value"),
])
def test_bad_set_is_an_error(sets, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        config.load(resolve("exp040"), sets)


def test_unknown_yaml_key_is_an_error(tmp_path, monkeypatch):
    exp = tmp_path / "exp999_typo"
    exp.mkdir()
    (exp / "config.yaml").write_text("parent: exp040\nmodel:\n  topn: 3\n")
    with pytest.raises(UserError, match="unknown key 'model.topn'"):
        config.load(exp)


def test_experiment_ids_resolve_by_prefix():
    assert resolve("exp042").name.startswith("exp042_")
    with pytest.raises(UserError, match="experiments; candidates: exp040"):
        resolve("exp04")
    with pytest.raises(UserError, match="no experiment"):
        resolve("exp999")


def test_top_n_keeps_its_meaning_for_any_encoder_count():
    assert [config.resolve_top_n(-1, e) for e in (6, 7)] == [5, 6]
    assert config.resolve_top_n(3, 7) == 3 and config.resolve_top_n(9, 7) == 7 and config.resolve_top_n("all", 4) == 4
    for bad in (0, -7):
        with pytest.raises(UserError, match="keeps no encoder of 7"):
            config.resolve_top_n(bad, 7)
    model = config.load(resolve("exp040")).model
    assert "6 of 7 encoders" in config.describe_top_n(model, 7)
    assert "selection selects nothing" in config.describe_top_n(config.Model(name="fusion", top_n=6), 6)
    assert "selects nothing" not in config.describe_top_n(config.Model(name="fusion", top_n="all"), 6)


@pytest.mark.parametrize("sets", [["train=abc", "train.epochs=5"], ["train.epochs=5", "train=abc"],
                                  ["train={epochs: 3}", "train.lr=0.1"], ["model.top_n=2", "model=fusion"]])
def test_a_value_and_a_key_under_it_is_an_error_in_either_order(sets):
    """Merged one way or the other, the result would depend on the order of the flags."""
    outer = sets[0].split("=")[0].split(".")[0]
    with pytest.raises(UserError, match=rf"^--set '{re.escape(sets[0])}' and --set '{re.escape(sets[1])}': "
                                        rf"'{outer}' cannot take both a value and keys under it; keep one of them$"):
        config.parse_set(sets)
    with pytest.raises(UserError, match="cannot take both a value and keys under it"):
        config.load(resolve("exp010"), sets)


def test_set_keeps_siblings_and_the_last_of_repeated_keys():
    assert config.parse_set(["train.epochs=5", "train.lr=0.1", "train.epochs=6", "model.top_n=2"]) == \
        {"train": {"epochs": 6, "lr": 0.1}, "model": {"top_n": 2}}
