"""What a run depends on: the resolved config, the code that ran and the input files, as one fingerprint.

A variant's finished folds are reused only while all three are unchanged; otherwise the log names what changed.
Input files are hashed by content; the hashes are cached by (size, modification time) so a rerun stays fast.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from src.experiments import ROOT, cache_dir
from src.io import write_json

CODE_PATTERNS = ("*.py", "*.yaml")  # in src/ (recursively) and in the experiment folder (not its output/)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_files(paths: list[Path], cached: bool = True) -> list[str]:
    """Content hashes; with `cached`, a file whose size and mtime match the cache is not read again."""
    path_cache = cache_dir() / "file_hashes.json"
    try:
        cache = json.loads(path_cache.read_text()) if cached else {}
    except (OSError, ValueError):
        cache = {}
    out, changed = [], False
    for p in paths:
        st, key = p.stat(), str(p.resolve())
        entry = cache.get(key)
        if not entry or entry["size"] != st.st_size or entry["mtime_ns"] != st.st_mtime_ns:
            entry = cache[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(p)}
            changed = True
        out.append(entry["sha256"])
    if cached and changed:
        write_json(path_cache, cache)
    return out


def code_files(exp_dir: Path) -> dict[str, Path]:
    """'src/train.py' -> path, for every code file of src/ and the experiment folder."""
    src = ROOT / "src"
    files = [p for pat in CODE_PATTERNS for p in src.rglob(pat)]
    files += [p for pat in CODE_PATTERNS for p in Path(exp_dir).glob(pat)]
    base = lambda p: p.relative_to(ROOT) if p.resolve().is_relative_to(ROOT) else p
    return {str(base(p)): p for p in sorted(files) if "__pycache__" not in p.parts}


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
