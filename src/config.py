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


@dataclass(frozen=True)
class Adapt:
    coral_weight: float = 0.0
    coral_on: Literal["fused", "fused_and_projections"] = "fused"


@dataclass(frozen=True)
class Tune:
    """`bash run.sh tune` (src/tune.py): an Optuna search over other keys of this schema."""
    metric: Literal["oof.score", "oof.acc_presence", "oof.acc_salience"] = "oof.score"  # seed mean, maximised
    # key.path -> {int: [low, high]} | {float: [low, high]} | {categorical: [...]}, optional log: true, step: s
    space: dict[str, dict] = field(default_factory=dict)
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruner: Literal["median", "none"] = "median"
    startup_trials: int = 5  # finished trials before the median pruner stops any
    trials: int = 30  # finished trials the study should hold (--trials overrides)


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
    tune: Tune = field(default_factory=Tune)


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
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return {_check(k, args[0], where): _check(v, args[1], f"{where}.{k}") for k, v in value.items()}
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


def field_type(path: str, where: str = ""):
    """The schema's type annotation of a dotted key path, e.g. 'model.dropout' -> float; UserError if unknown."""
    cls = Config
    *parents, last = path.split(".")
    for i, name in enumerate(parents + [last]):
        hints = typing.get_type_hints(cls)
        if not dataclasses.is_dataclass(cls) or name not in hints:
            known = ", ".join(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else ""
            raise UserError(f"{where or path}: unknown key '{'.'.join((parents + [last])[:i + 1])}'"
                            + (f" (known: {known})" if known else ""))
        cls = hints[name]
    if dataclasses.is_dataclass(cls):
        raise UserError(f"{where or path}: '{path}' is a section, not a value")
    return cls


def admits(tp, kind: str) -> bool:
    """Whether a schema type takes numbers of a kind ('int' or 'float'); Literal and list types take neither."""
    if typing.get_origin(tp) is Union:
        return any(admits(t, kind) for t in typing.get_args(tp))
    return tp is (int if kind == "int" else float)


def type_name(tp) -> str:
    if typing.get_origin(tp) is Union:
        return " or ".join(type_name(t) for t in typing.get_args(tp))
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    return getattr(tp, "__name__", str(tp))


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
