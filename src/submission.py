"""Challenge submissions: CSV, the official JSON, and the CodaBench zip. The only writer of submissions/."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from src.errors import UserError
from src.io import atomic_write, write_csv, write_text
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
    """Validate, then write <name>.csv, .json and .zip atomically; returns their paths."""
    validate(files, configs, expected_keys, template_keys)
    order = np.argsort(np.asarray(files, dtype=str), kind="stable")
    files, configs = np.asarray(files)[order], np.asarray(configs)[order]
    text = json.dumps(to_json(files, configs), indent=2)
    out_dir = Path(out_dir)
    paths = {"csv": write_csv(out_dir / f"{name}.csv", to_frame(files, configs)),
             "json": write_text(out_dir / f"{name}.json", text + "\n")}

    def zip_it(p):
        with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(ZIP_MEMBER, text + "\n")
    paths["zip"] = atomic_write(out_dir / f"{name}.zip", zip_it)
    return paths
