"""Per-clip time series -> one vector per clip, the organisers' way: mean, std, 10/25/50/75/90th percentiles.

    python -m src.features.aggregate --src DIR --out FILE.npz
DIR holds one `.npy` (or single-array `.npz`) per clip, shape [T, D] or [T, 1, D] (frames or audio windows x
encoder width). An encoder whose clips are all 1-D vectors [D] (or all [1, D]) is clip-level and stored as is;
`src.prepare` uses the same code for the organisers' download.
"""
from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

import numpy as np

from src.errors import UserError, cli
from src.io import write_npz

PERCENTILES = (10, 25, 50, 75, 90)
N_STATS = 2 + len(PERCENTILES)  # the aggregated width is 7 x D


def aggregate(series: np.ndarray) -> np.ndarray:
    """series: float [T, D] -> float32 [7 * D]: mean, std, then the percentiles, each block D wide."""
    series = np.asarray(series, dtype=np.float64)
    if series.ndim != 2 or len(series) == 0:
        raise UserError(f"expected a [T, D] time series with T >= 1, got shape {series.shape}")
    blocks = [series.mean(0), series.std(0)] + list(np.percentile(series, PERCENTILES, axis=0))
    return np.concatenate(blocks).astype(np.float32)


def squeeze(array: np.ndarray) -> np.ndarray:
    """Drop singleton axes between time and width: VideoMAEv2's [T, 1, D] -> [T, D]; [T, D] and [D] unchanged."""
    if array.ndim <= 2:
        return array
    inner = tuple(i for i in range(1, array.ndim - 1) if array.shape[i] == 1)
    return array.squeeze(inner)


def load_array(path: Path) -> np.ndarray:
    """One clip's array from `.npy` or a single-array `.npz`; a corrupt, empty or truncated file is a UserError."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ValueError("empty file (0 bytes)")
        with open(path, "rb") as fh:
            loaded = np.load(fh, allow_pickle=False)
            if isinstance(loaded, np.lib.npyio.NpzFile):
                if len(loaded.files) != 1:
                    raise ValueError(f"expected one array in the .npz, found {len(loaded.files)}")
                loaded = loaded[loaded.files[0]]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(f"{path}: unreadable or corrupt array ({str(err).splitlines()[0] or type(err).__name__})") from None
    if loaded.dtype.kind not in "iuf":  # complex too: casting it would silently drop the imaginary part
        raise UserError(f"{path}: array of {loaded.dtype}, expected real numbers (int or float)")
    if loaded.dtype.kind == "f" and loaded.dtype.itemsize > 4:
        # finite values that become inf as float32; NaN/inf themselves are reported where series are checked
        beyond = np.isfinite(loaded) & (np.abs(loaded) > np.finfo(np.float32).max)
        if beyond.any():
            raise UserError(f"{path}: {int(beyond.sum())} values beyond float32's range (up to "
                            f"{float(np.abs(loaded[beyond]).max()):.3g}; features are stored as float32); rescale them")
    return loaded


class EncoderAccumulator:
    """Reduces one encoder's clips one at a time and checks they agree (all series or all vectors, one width).

    `add(path, array)` -> the stored vector float32 [7 * D] for a [T, D] series, [D] for a clip-level vector.
    """

    def __init__(self, name: str):
        self.name, self.kind, self.raw_width, self.first = name, None, None, None
        self.frames: list[int] = []

    def add(self, path: Path, array: np.ndarray) -> np.ndarray:
        array = squeeze(np.asarray(array))
        if array.ndim not in (1, 2) or array.size == 0:
            raise UserError(f"{path}: expected a [T, D] series or a [D] clip vector, got shape {array.shape}")
        if not np.isfinite(array).all():
            raise UserError(f"{path}: {int((~np.isfinite(array)).sum())} NaN/inf values in the series")
        kind = "vector" if array.ndim == 1 else "series"
        if self.kind is None:
            self.kind, self.raw_width, self.first = kind, array.shape[-1], path
        elif kind != self.kind:
            raise UserError(f"{path}: a {'[D] clip vector' if kind == 'vector' else '[T, D] series'} "
                            f"while {self.first.name} is a {'[D] clip vector' if self.kind == 'vector' else '[T, D] series'}; "
                            f"encoder '{self.name}' mixes 1-D and 2-D clips")
        elif array.shape[-1] != self.raw_width:
            raise UserError(f"{path}: width {array.shape[-1]} differs from {self.raw_width} "
                            f"({self.first.name}) in encoder '{self.name}'")
        self.frames.append(1 if kind == "vector" else len(array))
        return array.astype(np.float32) if kind == "vector" else aggregate(array)

    def finish(self, X: np.ndarray) -> np.ndarray:
        """X float32 [N, 7 * D] -> [N, D] when every clip had one frame: a clip-level encoder saved as [1, D]
        (its std block is 0 and the percentiles repeat the mean)."""
        if self.kind == "series" and max(self.frames) == 1:
            self.kind = "vector"
            return X[:, :self.raw_width]
        return X

    @property
    def stored_width(self) -> int | None:
        if self.kind is None:
            return None
        return self.raw_width if self.kind == "vector" else N_STATS * self.raw_width


def write_features(path: Path, names: list[str], vectors) -> Path:
    """The dataset's encoder file: X float32 [N, D] and filenames [N]."""
    return write_npz(Path(path), X=np.asarray(np.stack(vectors) if isinstance(vectors, list) else vectors,
                                              dtype=np.float32), filenames=np.array(names))


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.out.is_dir():
        raise UserError(f"--out {args.out}: is a folder; give the encoder file, e.g. {args.out / 'wavlm.npz'}")
    files = sorted(p for p in args.src.iterdir() if p.suffix.lower() in (".npy", ".npz")) if args.src.is_dir() else []
    if not files:
        raise UserError(f"{args.src}: no .npy time series found")
    acc = EncoderAccumulator(args.src.name)
    X = acc.finish(np.stack([acc.add(f, load_array(f)) for f in files]))
    write_features(args.out, [f.stem for f in files], X)
    what = ("clip-level vectors stored as is" if acc.kind == "vector"
            else f"series of {min(acc.frames)}-{max(acc.frames)} frames aggregated")
    print(f"wrote {args.out}: {len(files)} clips x {acc.stored_width} features ({what})")


if __name__ == "__main__":
    main()
