"""Experiment configuration: schema (frozen dataclasses) -> parent chain -> YAML -> --set, validated.

Unknown keys and wrong types are errors. Defaults live here and only here.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

import yaml

from src.errors import UserError
from src.model import resolve_top_n
from src.run.experiments import VARIANT_NAME, resolve
from src.run.subruns import top_n_candidates


@dataclass(frozen=True)
class Bounds:
    """The legal range of a config value: numbers (or each list item) within [low, high] (high excluded when
    high_open), never 0 when nonzero; lists at least min_len long and without repeats when unique. `why` is
    added to the message."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    min_len: int = 0
    unique: bool = False
    nonzero: bool = False
    why: str = ""

    def check(self, value, where: str) -> None:
        """Raise a one-line UserError when value (already type-checked) is out of range."""
        why = f" ({self.why})" if self.why else ""
        if isinstance(value, list):
            if len(value) < self.min_len:
                plural = "s" * (self.min_len > 1)
                raise UserError(f"{where}: needs at least {self.min_len} value{plural}, got {value}{why}")
            repeated = sorted({str(v) for v in value if value.count(v) > 1})
            if self.unique and repeated:
                raise UserError(f"{where}: {', '.join(repeated)} listed more than once{why}")
            for i, v in enumerate(value):
                self.check(v, f"{where}[{i}]")
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return  # a Literal alternative such as top_n: all
        if self.nonzero and value == 0:
            raise UserError(f"{where}: 0 is not allowed{why}")
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            limit = "must be above" if self.low_open else "is below the minimum"
            raise UserError(f"{where}: {value} {limit} {self.low}{why}")
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            limit = "must be below" if self.high_open else "is above the maximum"
            raise UserError(f"{where}: {value} {limit} {self.high}{why}")


def opt(default, bounds: Bounds | None = None):
    """A schema field: its default and its legal range side by side (lists get a fresh copy each time)."""
    meta = {"range": bounds} if bounds is not None else {}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


POSITIVE = Bounds(low=1)
NONZERO = Bounds(nonzero=True, why="n >= 1 keeps n encoders, -k all but k, all every encoder")
PROBABILITY = Bounds(low=0, high=1, high_open=True, why="a probability of 1 would drop everything")


@dataclass(frozen=True)
class Data:
    # file stems under features/
    encoders: Union[Literal["all"], list[str]] = opt("all", Bounds(min_len=1, unique=True))
    allow_missing: bool = False  # clips absent from an encoder are masked (fusion model only)


@dataclass(frozen=True)
class Model:
    name: Literal["prior", "mlp", "fusion"] = "mlp"
    # prior: the organisers' trivial baselines, one sub-run per kind
    priors: list[Literal["most_frequent_single", "most_frequent_blend"]] = opt(
        ["most_frequent_single", "most_frequent_blend"], Bounds(min_len=1, unique=True))
    # mlp: how encoders reach it: one concatenated input, one model per encoder, or the mean of those
    inputs: Literal["concat", "per_encoder", "late_mean"] = "concat"
    hidden: int = opt(512, POSITIVE)
    dropout: float = opt(0.0, PROBABILITY)
    # fusion (rank-aware selective fusion)
    shared_dim: int = opt(256, POSITIVE)
    fused_dim: int = opt(512, POSITIVE)
    gate_heads: int = opt(4, POSITIVE)  # must divide shared_dim (multi-head attention splits it)
    # encoders kept per clip: n >= 1 keeps n; n <= -1 keeps all but |n| (-1 = all but one, for any encoder
    # count); all = soft gating over every encoder. The n used is logged and written as derived.top_n.
    top_n: Union[int, Literal["all"]] = opt("all", NONZERO)  # |n| below the number of encoders (checked on load)
    selection: Literal["learned", "random", "fixed"] = "learned"
    heads: Literal["two", "salience"] = "two"
    encoder_dropout: float = opt(0.0, PROBABILITY)  # probability of hiding an encoder from a training clip
    reattend: bool = False  # learned selection: fused weights from attention re-run within the kept encoders
    rank_order: bool = False  # kept encoders get a learned embedding of their rank before fusion (exp048)
    # attention: the paper's gate; loss: encoders ranked and weighted by the loss each is predicted to have on
    # the clip (src/model/fusion.py)
    gate: Literal["attention", "loss"] = "attention"
    reliability_cue: bool = False  # tokens carry the clip's input statistics per encoder
    # random selection at prediction: 1 = one fixed draw per clip and seed; k > 1 = the mean over k fixed
    # draws, a test-time ensemble of subsets (report it labelled as such, not as the control)
    random_draws: int = opt(1, POSITIVE)
    # prediction: 0 = every available encoder once; k >= 1 = the mean over k fixed random subsets per clip, each
    # hiding an encoder with probability encoder_dropout as in training (a test-time ensemble of kept subsets)
    test_subsets: int = opt(0, Bounds(low=0))
    # one sub-run per n (true: n = 1..number of encoders; a list: those top_n values, resolved on the dataset),
    # one n chosen per outer fold on the other folds' OOF
    sweep_top_n: Union[bool, list[Union[int, Literal["all"]]]] = opt(False, Bounds(
        nonzero=True, min_len=1, unique=True, why="top_n values: n >= 1, -k all but k, or all"))


@dataclass(frozen=True)
class Train:
    epochs: int = opt(40, POSITIVE)
    # batches of one row are skipped (covariance and batch statistics need two rows), so 1 would train nothing
    batch_size: int = opt(64, Bounds(low=2, why="a batch needs two rows for its statistics and CORAL"))
    lr: float = opt(1e-3, Bounds(low=0, low_open=True))
    weight_decay: float = opt(0.0, Bounds(low=0))
    optimizer: Literal["adam", "adamw"] = "adam"
    schedule: Literal["constant", "cosine"] = "constant"
    seeds: int = opt(1, POSITIVE)  # models per fold, averaged; fold k of seed s uses seed + 100 * s + k
    early_stopping: bool = False  # on the LOSS of an inner split of the training folds, never the scored rows
    # valid_fold_score: predictions after every epoch are kept and the epoch is picked by the decoded score,
    # per fold as decoder.fit says (exp011 reproduces the organisers' protocol; never the default)
    epoch_selection: Literal["fixed", "valid_fold_score"] = "fixed"
    patience: int = opt(5, POSITIVE)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # CPU: the fold x seed models are split over this many single-threaded processes (0: one per core, so
    # results then follow the machine); a fixed default, so results never depend on the core count
    workers: int = opt(2, Bounds(low=0))
    # bfloat16: each training step runs on bfloat16 copies of the float32 weights (src/train.training_weights);
    # Adam, losses, CORAL and predictions stay float32. auto: bfloat16 where the device multiplies it natively
    # (src/device.py: CUDA with bfloat16, CPUs with AVX-512 BF16 or AMX), else float32; the one that ran is
    # derived.precision in config.resolved.yaml, part of the fingerprint
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    batched: bool = True  # a worker's fold x seed models of a sub-run in one stack; false: one at a time


@dataclass(frozen=True)
class Decoder:
    name: Literal["threshold", "nearest"] = "threshold"
    grid: int = opt(20, POSITIVE)  # points per axis over 0.05..0.95, as the organisers' 20 x 20
    head_weights: list[float] = opt([round(0.1 * i, 1) for i in range(11)], Bounds(low=0, high=1, min_len=1))
    # cross_fit: fold k decoded with thresholds fitted on the other folds (honest). per_fold_in_sample: on
    # fold k's own rows, the organisers' optimistic protocol; metrics.json then holds both (`protocols`)
    fit: Literal["cross_fit", "per_fold_in_sample"] = "cross_fit"
    # test rows: vote = each fold model's test output decoded with the parameters fitted without that fold
    # (as its OOF rows were), then a vote; mean = the fold-averaged output decoded with the all-OOF parameters
    test_scheme: Literal["vote", "mean"] = "vote"


@dataclass(frozen=True)
class Adapt:
    coral_weight: float = opt(0.0, Bounds(low=0))
    coral_on: Literal["fused", "fused_and_projections"] = "fused"


@dataclass(frozen=True)
class Tune:
    """`bash run.sh tune` (src/tune.py): an Optuna search over other keys of this schema."""
    metric: Literal["oof.score", "oof.acc_presence", "oof.acc_salience"] = "oof.score"  # seed mean, maximised
    # key.path -> {int: [low, high]} | {float: [low, high]} | {categorical: [...]}, optional log: true, step: s
    space: dict[str, dict] = field(default_factory=dict)
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruner: Literal["median", "none"] = "median"
    startup_trials: int = opt(5, Bounds(low=0))  # finished trials before the median pruner stops any
    trials: int = opt(30, POSITIVE)  # finished trials the study should hold (--trials overrides)


@dataclass(frozen=True)
class Config:
    note: str = ""
    seed: int = opt(0, Bounds(low=0))  # numpy seeds must be >= 0
    smoke: bool = False
    data: Data = field(default_factory=Data)
    model: Model = field(default_factory=Model)
    train: Train = field(default_factory=Train)
    decoder: Decoder = field(default_factory=Decoder)
    adapt: Adapt = field(default_factory=Adapt)
    tune: Tune = field(default_factory=Tune)


def describe_top_n(model: Model, n_encoders: int) -> str:
    """One log line: the n used, or a warning when a top_n asks for a selection that selects nothing."""
    if model.sweep_top_n:
        return (f"top_n: one sub-run per n = {', '.join(map(str, top_n_candidates(model.sweep_top_n, n_encoders)))} "
                f"of {n_encoders} encoders, one n chosen per outer fold on the other folds")
    n = resolve_top_n(model.top_n, n_encoders)
    if model.top_n != "all" and n == n_encoders:
        return (f"[yellow]warning: model.top_n {model.top_n} keeps all {n_encoders} encoders, so selection selects "
                f"nothing; -1 keeps all but one for any encoder count[/yellow]")
    return f"top_n {model.top_n}: {n} of {n_encoders} encoders kept per clip ({model.selection} selection)"


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
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hints[name]):
            if not isinstance(value, dict):
                raise UserError(f"{key}: expected a mapping, got {value!r}")
            kwargs[name] = _build(hints[name], value, key)
        else:
            kwargs[name] = _check(value, hints[name], key)
            if "range" in fields[name].metadata:
                fields[name].metadata["range"].check(value, key)  # as typed: -1, not -1.0
    out = cls(**kwargs)
    if cls is Model and out.shared_dim % out.gate_heads:
        raise UserError(f"{where}.gate_heads: {out.gate_heads} does not divide {where}.shared_dim {out.shared_dim} "
                        "(multi-head attention splits it evenly)")
    if cls is Model and out.test_subsets and not (out.name == "fusion" and out.encoder_dropout > 0):
        raise UserError(f"{where}.test_subsets: {out.test_subsets} needs a fusion model with {where}.encoder_dropout "
                        "> 0 (the subsets hide encoders at that rate)")
    return out


@dataclass(frozen=True)
class Spec:
    """What the schema says about one key: its type annotation, default and legal range (None: any value)."""
    path: str
    type: object
    default: object
    range: Bounds | None

    def check(self, value):
        """value -> the validated value, or a one-line UserError naming the key (for tuners' search spaces)."""
        value = _check(value, self.type, self.path)
        if self.range is not None:
            self.range.check(value, self.path)
        return value


def spec(path: str) -> Spec:
    """Type, default and range of a dotted key such as 'model.dropout'; unknown keys are a UserError."""
    cls, parts = Config, path.split(".")
    for i, name in enumerate(parts):
        known = {f.name: f for f in dataclasses.fields(cls)}
        if name not in known:
            raise UserError(f"unknown key '{'.'.join(parts[:i + 1])}' (known: {', '.join(known)})")
        tp = typing.get_type_hints(cls)[name]
        if i < len(parts) - 1:
            if not dataclasses.is_dataclass(tp):
                raise UserError(f"unknown key '{path}': '{'.'.join(parts[:i + 1])}' is not a section")
            cls = tp
    f = known[name]
    if dataclasses.is_dataclass(tp):
        raise UserError(f"'{path}' is a section, not a value")
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    return Spec(path, tp, default, f.metadata.get("range"))


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


def _mapping_keys(cls=None, prefix: str = "") -> set[str]:
    """Dotted paths of the schema's mapping-valued keys (dict[...] types, e.g. tune.space), not sections."""
    out = set()
    for name, tp in typing.get_type_hints(cls or Config).items():
        if dataclasses.is_dataclass(tp):
            out |= _mapping_keys(tp, f"{prefix}{name}.")
        elif typing.get_origin(tp) is dict:
            out.add(f"{prefix}{name}")
    return out


WHOLE_VALUES = _mapping_keys()  # a child's or a --set value of these replaces the parent's, as a list does


def merge(base: dict, over: dict, prefix: str = "") -> dict:
    """Sections merge recursively; everything else (lists and WHOLE_VALUES included) replaces."""
    out = dict(base)
    for k, v in over.items():
        path = f"{prefix}{k}"
        nested = isinstance(v, dict) and isinstance(out.get(k), dict) and path not in WHOLE_VALUES
        out[k] = merge(out[k], v, f"{path}.") if nested else v
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
    given: dict[tuple, str] = {}  # key path -> the --set that gave it
    for item in assignments:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected key.path=value")
        path, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise UserError(f"--set {item!r}: value is not valid YAML") from None
        keys = tuple(path.strip().split("."))
        # A value for a key and another for a key under it would depend on the order of the flags.
        clash = next((k for k in given if k != keys and k[:len(keys)] == keys[:len(k)]), None)
        if clash is not None:
            raise UserError(f"--set {given[clash]!r} and --set {item!r}: '{'.'.join(min(keys, clash, key=len))}' "
                            "cannot take both a value and keys under it; keep one of them")
        given[keys] = item
        node = out
        *parents, last = keys
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
    overrides = parse_set(list(sets))  # its own errors already start with --set
    try:
        return _build(Config, merge(values, overrides), "")
    except UserError as err:  # the YAML passed above, so the offending value came from --set
        raise UserError(f"--set {err}") from None


def from_resolved(values: dict) -> Config:
    """The Config of a finished run, from its config.resolved.yaml (derived values and run record dropped)."""
    return _build(Config, {k: v for k, v in values.items() if k not in ("derived", "run")}, "")


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def dump(values: dict) -> str:
    return yaml.safe_dump(values, sort_keys=False)


def variant_name(smoke: bool, sets, name: str | None = None) -> str | None:
    """None for the committed config; `name`; else 'smoke', 'set-<hash>' or 'smoke-set-<hash>'.

    The hash is over the parsed overrides with sorted keys, so the order of --set flags does not matter.
    """
    if name is not None:
        if not name:
            raise UserError("--name '': empty; give a name (letters, digits and . _ + = -) or leave --name out "
                            "for the automatic one")
        if not VARIANT_NAME.fullmatch(name):
            raise UserError(f"--name '{name}': use letters, digits and . _ + = - only")
        return name
    parts = ["smoke"] if smoke else []
    if sets:
        digest = hashlib.sha256(json.dumps(parse_set(list(sets)), sort_keys=True).encode()).hexdigest()[:8]
        parts.append(f"set-{digest}")
    return "-".join(parts) or None
