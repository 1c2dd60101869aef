"""Pre-flight checks: everything that can fail after training is checked before the first model trains.

Each check raises a one-line UserError naming the file, folder, key or encoder. The pipeline calls
`preflight` once the config and dataset are loaded, `check_predictions` on every fold's output, and
`write_failed` to turn a late write failure into a message that says how to finish.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from src.data import read_label_file
from src.errors import UserError
from src.io import WriteError, check_writable
from src.labels import strip_extension


def check_test_labels(path: Path, test_files) -> None:
    """When test_labels.csv exists: readable, well-formed, a label for every test clip.

    Only the format and keys are validated here; the labels are parsed and dropped, never returned,
    so nothing on the training path can see them (src.score reads them after test.csv is written).
    """
    path = Path(path)
    if not path.exists():
        return
    keys = read_label_file(path).keys()
    missing = sorted({strip_extension(str(f)) for f in test_files} - set(keys))
    if missing:
        raise UserError(f"{path}: {len(missing)} test clips have no label (e.g. {', '.join(missing[:3])})")


def check_config_fits(cfg, ds) -> None:
    """Config values that depend on the dataset: model.top_n at most the number of encoders loaded."""
    top_n = cfg.model.top_n
    if cfg.model.name == "fusion" and not cfg.model.sweep_top_n and top_n != "all" and top_n > len(ds.encoders):
        raise UserError(f"model.top_n: {top_n} is more than the {len(ds.encoders)} encoders loaded "
                        f"({', '.join(ds.encoders)})")


def preflight(cfg, ds, out_dirs) -> None:
    """Every check that needs no training, in the order a user would fix them."""
    check_config_fits(cfg, ds)
    check_test_labels(ds.root / "test_labels.csv", ds.test_files)
    for folder in out_dirs:
        try:
            check_writable(folder)
        except WriteError as err:
            raise UserError(f"{err}; make it writable (or free space) before training") from None


def check_predictions(arrays: dict, where: str) -> None:
    """Every predicted array (name -> float array) finite; NaN/inf is a UserError naming the sub-run."""
    for name, values in arrays.items():
        bad = ~np.isfinite(np.asarray(values, dtype=np.float64))
        if bad.any():
            rows = int(bad.reshape(len(bad), -1).any(1).sum()) if bad.ndim else 1
            raise UserError(f"{where}: {rows} rows of '{name}' predictions are NaN/inf (features out of scale "
                            "or training diverged; try a lower train.lr)")


def write_failed(err: WriteError) -> UserError:
    """A write that failed after the preflight (disk filled, permissions changed): say how to finish."""
    if err.path.name == "config.resolved.yaml":
        return UserError(f"{err}; nothing trained yet: rerun the same command once the folder is writable")
    if {"folds", "models"} & set(err.path.parts):
        return UserError(f"{err}; finished folds are kept: rerun the same command once the folder is "
                         "writable to resume from them")
    return UserError(f"{err}; training finished; rerun the same command with a writable folder to write "
                     "the submission from the finished folds")
