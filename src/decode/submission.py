"""Challenge submissions: CSV, the official JSON, and the CodaBench zip. The only writer of submissions/."""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from src.errors import UserError
from src.io import WriteError, atomic_write, check_writable
from src.labels import N_CONFIGS, config_entries

ZIP_MEMBER = "submission_template.json"  # the name inside the organisers' CodaBench template zip


def to_json(files, configs) -> dict:
    """{"predictions": {file: [{"emotion", "salience"}, ...]}}; singles carry 100.0 as in the template."""
    preds = {}
    for f, c in zip(files, configs):
        entries = config_entries(int(c))
        preds[str(f)] = [{"emotion": e, "salience": 100.0 if len(entries) == 1 else s} for e, s in entries]
    return {"predictions": preds}


def to_frame(files, configs) -> pd.DataFrame:
    rows = []
    for f, c in zip(files, configs):
        entries = config_entries(int(c)) + [("", "")]
        rows.append({"filename": f, "emotion_1": entries[0][0], "salience_1": entries[0][1],
                     "emotion_2": entries[1][0], "salience_2": entries[1][1]})
    return pd.DataFrame(rows)


def validate(files, configs, expected_keys, template_keys=None) -> None:
    """Every test clip exactly once, legal labels, keys equal to the template's when there is one."""
    files = [str(f) for f in files]
    configs = np.asarray(configs)
    if len(set(files)) != len(files):
        raise UserError("submission: a test clip appears twice")
    if set(files) != set(map(str, expected_keys)):
        raise UserError(f"submission: {len(set(expected_keys) - set(files))} test clips missing, "
                        f"{len(set(files) - set(expected_keys))} unexpected")
    if len(configs) != len(files) or ((configs < 0) | (configs >= N_CONFIGS)).any():
        raise UserError("submission: illegal label configuration")
    if template_keys is not None and set(files) != set(template_keys):
        raise UserError(f"submission: keys differ from submission_template.json "
                        f"({len(set(template_keys) ^ set(files))} differ)")


def write(out_dir: Path, name: str, files, configs, expected_keys, template_keys=None) -> dict:
    """Validate, then write <name>.csv, .json and .zip; returns their paths.

    All three are staged first and renamed only when all three are written, so a full or read-only
    folder leaves the older submission of that name (if any) intact and no partial set.
    """
    validate(files, configs, expected_keys, template_keys)
    order = np.argsort(np.asarray(files, dtype=str), kind="stable")
    files, configs = np.asarray(files)[order], np.asarray(configs)[order]
    text = json.dumps(to_json(files, configs), indent=2) + "\n"
    out_dir = Path(out_dir)
    check_writable(out_dir)

    def zip_it(p):
        with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(ZIP_MEMBER, text)
    writers = {"csv": lambda p: to_frame(files, configs).to_csv(p, index=False, float_format="%.6f"),
               "json": lambda p: p.write_text(text), "zip": zip_it}
    staged, paths = [], {}
    try:
        for kind, writer in writers.items():
            paths[kind] = out_dir / f"{name}.{kind}"
            try:
                staged.append(atomic_write(out_dir / f".{name}.{kind}.staged", writer))
            except WriteError as err:
                raise WriteError(paths[kind], err.reason) from None
        for tmp, kind in zip(staged, writers):
            os.replace(tmp, paths[kind])
    finally:
        for tmp in staged:
            tmp.unlink(missing_ok=True)
    return paths
