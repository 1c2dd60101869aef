"""Atomic file writes: write under a temporary name in the same folder, then rename."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from src.errors import UserError


class WriteError(UserError):
    """A file could not be written (read-only folder, full disk); the message names the file."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"cannot write {path} ({reason})")
        self.path, self.reason = Path(path), reason


def atomic_write(path: Path, write) -> Path:
    """Call write(tmp_path) and move the result onto path; a killed run never leaves half a file.

    A failed write (OSError, or torch.save's RuntimeError on a full disk) leaves no file and raises WriteError.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except OSError as err:
        raise WriteError(path, err.strerror or str(err).splitlines()[0]) from None
    except RuntimeError as err:
        if "write" not in str(err).lower() and "enforce fail" not in str(err):
            raise
        raise WriteError(path, str(err).splitlines()[0][:200]) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
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
