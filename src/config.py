"""Experiment configuration: schema (frozen dataclasses) -> parent chain -> YAML -> --set, validated.

Unknown keys and wrong types are errors. Defaults live here and only here.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

import yaml

from src.errors import UserError


@dataclass(frozen=True)
class Data:
    encoders: Union[Literal["all"], list[str]] = "all"  # file stems under features/
    allow_missing: bool = False  # clips absent from an encoder are masked (fusion model only)


@dataclass(frozen=True)
class Model:
    name: Literal["prior", "mlp", "fusion"] = "mlp"
    # prior: the organisers' trivial baselines, one sub-run per kind
    priors: list[Literal["most_frequent_single", "most_frequent_blend"]] = field(
        default_factory=lambda: ["most_frequent_single", "most_frequent_blend"])
    # mlp: how encoders reach it: one concatenated input, one model per encoder, or the mean of those
    inputs: Literal["concat", "per_encoder", "late_mean"] = "concat"
    hidden: int = 512
    dropout: float = 0.0
    # fusion (rank-aware selective fusion)
    shared_dim: int = 256
    fused_dim: int = 512
    gate_heads: int = 4
    top_n: Union[int, Literal["all"]] = "all"
    selection: Literal["learned", "random", "fixed"] = "learned"
    heads: Literal["two", "salience"] = "two"
    encoder_dropout: float = 0.0  # probability of hiding an encoder from a training clip
    reattend: bool = False  # learned selection: fused weights from attention re-run within the kept encoders
    rank_order: bool = False  # kept encoders get a learned embedding of their rank before fusion (exp048)
    # random selection at prediction: 1 = one fixed draw per clip and seed; k > 1 = the mean over k fixed
    # draws, a test-time ensemble of subsets (report it labelled as such, not as the control)
    random_draws: int = 1
    sweep_top_n: bool = False  # one sub-run per n = 1..number of encoders (exp041)


@dataclass(frozen=True)
class Train:
    epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: Literal["adam", "adamw"] = "adam"
    schedule: Literal["constant", "cosine"] = "constant"
    seeds: int = 1  # models per fold, averaged; fold k of seed s uses seed + 100 * s + k
    early_stopping: bool = False  # on validation LOSS only, never on the decoded score
    patience: int = 5
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int = 0  # 0: all cores


@dataclass(frozen=True)
class Decoder:
    name: Literal["threshold", "nearest"] = "threshold"
    grid: int = 20  # points per axis over 0.05..0.95, as the organisers' 20 x 20
    head_weights: list[float] = field(default_factory=lambda: [round(0.1 * i, 1) for i in range(11)])
    # test rows: vote = each fold model's test output decoded with the parameters fitted without that fold
    # (as its OOF rows were), then a vote; mean = the fold-averaged output decoded with the all-OOF parameters
    test_scheme: Literal["vote", "mean"] = "vote"


@dataclass(frozen=True)
class Adapt:
    coral_weight: float = 0.0
    coral_on: Literal["fused", "fused_and_projections"] = "fused"


@dataclass(frozen=True)
class Config:
    note: str = ""
    seed: int = 0
    smoke: bool = False
    data: Data = field(default_factory=Data)
    model: Model = field(default_factory=Model)
    train: Train = field(default_factory=Train)
    decoder: Decoder = field(default_factory=Decoder)
    adapt: Adapt = field(default_factory=Adapt)


SMOKE = {"train": {"epochs": 2, "seeds": 1}}  # --smoke: the same pipeline on a tiny budget


def _check(value, tp, where: str):
    """Validate value against a type annotation; returns the value (ints accepted as floats)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        errors = []
        for option in args:
            try:
                return _check(value, option, where)
            except UserError as err:
                errors.append(str(err).split(": ", 1)[-1])
        raise UserError(f"{where}: {' or '.join(errors)}")
    if origin is Literal:
        if value not in args:
            raise UserError(f"{where}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {value!r}")
        return [_check(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise UserError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _build(cls, values: dict, where: str):
    """Dataclass from a nested dict, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = set(values) - set(known)
    if unknown:
        key = sorted(unknown)[0]
        prefix = f"{where}." if where else ""
        raise UserError(f"unknown key '{prefix}{key}' (known: {', '.join(known)})")
    kwargs = {}
    for name, value in values.items():
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hints[name]):
            if not isinstance(value, dict):
                raise UserError(f"{key}: expected a mapping, got {value!r}")
            kwargs[name] = _build(hints[name], value, key)
        else:
            kwargs[name] = _check(value, hints[name], key)
    return cls(**kwargs)


def merge(base: dict, over: dict) -> dict:
    """Mappings merge recursively; everything else (lists included) replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: Path) -> dict:
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{path}: cannot read YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    return values


def chain(exp_dir: Path, seen=()) -> dict:
    """The experiment's YAML merged over its parents' (parent first), without the `parent` key."""
    from src.experiments import resolve

    path = Path(exp_dir) / "config.yaml"
    values = read_yaml(path)
    parent = values.pop("parent", None)
    if parent is None:
        return values
    parent_dir = resolve(str(parent))
    if parent_dir.name in seen:
        raise UserError(f"{path}: parent chain loops through {parent_dir.name}")
    try:
        return merge(chain(parent_dir, seen + (Path(exp_dir).name,)), values)
    except UserError as err:
        raise UserError(f"{path} (parent {parent}): {err}") from None


def parse_set(assignments: list[str]) -> dict:
    """['train.epochs=5', ...] -> nested dict; values are parsed as YAML (5 -> int, [a, b] -> list)."""
    out: dict = {}
    for item in assignments:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected key.path=value")
        path, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise UserError(f"--set {item!r}: value is not valid YAML") from None
        node = out
        *parents, last = path.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def load(exp_dir: Path, sets: list[str] = (), smoke: bool = False) -> Config:
    """Schema defaults -> parent chain -> this YAML -> smoke budget -> --set; every key and type checked."""
    values = chain(exp_dir)
    try:
        _build(Config, values, "")
    except UserError as err:
        raise UserError(f"{Path(exp_dir).name}/config.yaml: {err}") from None
    if smoke:
        values = merge(values, {**SMOKE, "smoke": True})
    try:
        return _build(Config, merge(values, parse_set(list(sets))), "")
    except UserError as err:
        raise UserError(f"--set: {err}") from None


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def dump(values: dict) -> str:
    return yaml.safe_dump(values, sort_keys=False)
