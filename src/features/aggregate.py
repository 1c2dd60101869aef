"""Per-clip time series -> one vector per clip, the organisers' way: mean, std, 10/25/50/75/90th percentiles.

    python -m src.features.aggregate --src DIR --out FILE.npz
DIR holds one `.npy` per clip, shape [T, D] (frames or audio windows x encoder width).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from src.errors import UserError, cli
from src.io import write_npz

PERCENTILES = (10, 25, 50, 75, 90)
N_STATS = 2 + len(PERCENTILES)  # the aggregated width is 7 x D


def aggregate(series: np.ndarray) -> np.ndarray:
    """series: float [T, D] -> float32 [7 * D]: mean, std, then the percentiles, each block D wide."""
    series = np.asarray(series, dtype=np.float64)
    if series.ndim == 1:
        series = series[:, None]
    if series.ndim != 2 or len(series) == 0:
        raise UserError(f"expected a [T, D] time series with T >= 1, got shape {series.shape}")
    blocks = [series.mean(0), series.std(0)] + list(np.percentile(series, PERCENTILES, axis=0))
    return np.concatenate(blocks).astype(np.float32)


def write_features(path: Path, names: list[str], vectors: list[np.ndarray]) -> Path:
    """The dataset's encoder file: X float32 [N, D] and filenames [N]."""
    return write_npz(Path(path), X=np.stack(vectors).astype(np.float32), filenames=np.array(names))


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    files = sorted(args.src.glob("*.npy")) if args.src.is_dir() else []
    if not files:
        raise UserError(f"{args.src}: no .npy time series found")
    names, vectors = [], []
    for f in files:
        try:
            vectors.append(aggregate(np.load(f)))
        except (UserError, ValueError) as err:
            raise UserError(f"{f}: {err}") from None
        names.append(f.stem)
    widths = {len(v) for v in vectors}
    if len(widths) > 1:
        raise UserError(f"{args.src}: clips have different widths {sorted(widths)}")
    write_features(args.out, names, vectors)
    print(f"wrote {args.out}: {len(names)} clips x {widths.pop()} features")


if __name__ == "__main__":
    main()
