"""Atomic file writes: write under a temporary name in the same folder, then rename."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np


def atomic_write(path: Path, write) -> Path:
    """Call write(tmp_path) and move the result onto path; a killed run never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def write_json(path: Path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv(path: Path, frame) -> Path:
    """Rows sorted as given; floats with 6 decimals so reruns are byte-identical."""
    return atomic_write(path, lambda p: frame.to_csv(p, index=False, float_format="%.6f"))


def write_npz(path: Path, **arrays) -> Path:
    def save(p):
        with open(p, "wb") as fh:
            np.savez(fh, **arrays)
    return atomic_write(path, save)
