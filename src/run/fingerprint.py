"""What a run depends on: the resolved config, the code that ran and the input files, as one fingerprint.

A variant's finished folds are reused only while all three are unchanged; otherwise the log names what changed.
Input files are hashed by content; the hashes are cached by (size, modification time) so a rerun stays fast.
"""
from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

from src.io import hash_files
from src.run.experiments import ROOT

# The code a run's fold files depend on: data loading, the models, training, the config and sub-runs (and
# everything they import from src), plus the pipeline module itself (fold seeds, what a fold file holds).
# Decoding, scoring, reports, ensembles, benchmarks and extractors are not in it: editing them reuses the
# finished folds (decoding reruns from the fold files on every run).
TRAINING_ENTRIES = ("src.train.trainer", "src.run.config", "src.run.subruns", "src.data")
TRAINING_FILES = ("src.run.pipeline",)


def module_path(module: str) -> Path | None:
    """src.a.b -> src/a/b.py or src/a/b/__init__.py; None outside the repository."""
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(path: Path) -> set[str]:
    """The src modules one file imports (any depth of the file: function-level imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # from src.x import module
    return {m for m in found if m.split(".")[0] == "src" and module_path(m) is not None}


def import_closure(entries) -> set[str]:
    """entries and every src module they import, directly or not (a package's __init__ counts for its modules)."""
    seen, todo = set(), list(entries)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        parents = {".".join(parts[:i]) for i in range(2, len(parts))}  # importing src.a.b runs src/a/__init__.py
        todo += [m for m in imported_modules(module_path(module)) | {p for p in parents if module_path(p)}]
    return seen


def code_files(exp_dir: Path) -> dict[str, Path]:
    """'src/train/trainer.py' -> path, for the training code (TRAINING_ENTRIES' import closure and
    TRAINING_FILES) and every code file of the experiment folder."""
    files = [module_path(m) for m in import_closure(TRAINING_ENTRIES) | set(TRAINING_FILES)]
    files += [p for pat in ("*.py", "*.yaml") for p in Path(exp_dir).glob(pat)]
    base = lambda p: p.relative_to(ROOT) if p.resolve().is_relative_to(ROOT) else p
    return {str(base(p)): p for p in sorted(files)}


def compute(config: dict, exp_dir: Path, data_files: dict[str, Path]) -> dict:
    """{'config': resolved config, 'code': {file: sha256}, 'data': {file: sha256}, 'fingerprint': 16 hex}."""
    code = code_files(exp_dir)
    record = {"config": config,
              "code": dict(zip(code, hash_files(list(code.values()), cached=False))),  # small; always re-read
              "data": dict(zip(data_files, hash_files(list(data_files.values()))))}
    record["fingerprint"] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    return record


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changes(old: dict, new: dict, limit: int = 4) -> list[str]:
    """Human-readable differences between two records, by part: config keys, code files, data files."""
    out = []
    for part in ("config", "code", "data"):
        a = flatten(old.get(part, {})) if part == "config" else old.get(part, {})
        b = flatten(new[part]) if part == "config" else new[part]
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if not keys:
            continue
        if part == "config":
            shown = [f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}" for k in keys[:limit]]
        else:
            shown = [k + (" (new)" if k not in a else " (removed)" if k not in b else "") for k in keys[:limit]]
        more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
        out.append(f"{part} changed: {', '.join(shown)}{more}")
    return out
