"""Atomic file writes: write under a temporary name in the same folder, then rename."""
from __future__ import annotations

import hashlib
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


def check_writable(folder: Path) -> None:
    """Write and remove a small file in folder (or in its nearest existing parent, which must let us create it).

    Creates no folder; a read-only or full file system is a WriteError naming the folder.
    """
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise WriteError(folder, f"{probe} is a file, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write_check.", dir=probe)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(b"\0" * 4096)  # a few blocks: an empty file can be created on a full disk
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            os.remove(tmp)
    except OSError as err:
        raise WriteError(folder, err.strerror or str(err)) from None


REPO = Path(__file__).resolve().parents[1]


def hash_cache() -> Path:
    """The content-hash cache: .cache/ of the repository, or of the output root when BLEMORE_OUTPUT_ROOT moves
    outputs elsewhere (tests, benchmarks)."""
    moved = os.environ.get("BLEMORE_OUTPUT_ROOT")
    return (Path(moved) if moved else REPO) / ".cache" / "file_hashes.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_files(paths: list[Path], cached: bool = True) -> list[str]:
    """Content hashes; with `cached`, a file whose size and mtime match the cache is not read again."""
    path_cache = hash_cache()
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
