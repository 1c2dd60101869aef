"""A generated copy of the organisers' download layout, quirks included, for `src.prepare`'s tests and benchmark.

    metadata/train_metadata.csv         12 columns, saliences as floats (30.0), blank for singles
    metadata/test_metadata.csv          file names with and without .mov, label columns included
    template/submission_template.json   keys test_0001.mov ..
    pre_extracted_train_data/<Encoder>_train/<clip>.npy    VideoMAEv2 [T, 1, D], others [T, D], HiCMAE [D]
    pre_extracted_test_data/<Encoder>_TEST/<clip>.npy      (the test folder spelled in upper case)
    .../OpenFace_3_<split>/<clip>.csv   emotion_index, gaze_yaw, gaze_pitch, action_units "[.., nan, ..]"
plus a stray README.txt and a clip that matches no metadata row. The features carry a weak label signal only.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from src.labels import BLEND_EMOTIONS, BLEND_RATIOS, SALIENCE, config_entries, parse_filename

# (folder name, kind, width, frames (min, max)) at the real widths; the miniature divides widths and frames
ENCODERS = (("VideoMAEv2", "series_t1d", 1408, (4, 30)), ("ImageBind", "series", 1024, (30, 150)),
            ("HuBERT_large", "series", 1024, (50, 300)), ("WavLM_large", "series", 1024, (50, 300)),
            ("HiCMAE", "vector", 2048, (1, 1)), ("OpenFace_3", "openface", 8, (60, 200)))
N_ACTION_UNITS = 8


def actor_clips(actor: str) -> list[str]:
    """The 54 official clip names of one actor: 20 singles, 4 neutral, 30 blends."""
    names = [f"{actor}_{e}_int{i}_ver1" for e in BLEND_EMOTIONS for i in range(1, 5)]
    names += [f"{actor}_neu_sit{i}_ver1" for i in range(1, 5)]
    names += [f"{actor}_mix_{a}_{b}_{sa}_{sb}_ver1" for i, a in enumerate(BLEND_EMOTIONS)
              for b in BLEND_EMOTIONS[i + 1:] for sa, sb in BLEND_RATIOS]
    return names


def metadata_row(name: str, fold: int | None) -> dict:
    """The organisers' 12 columns for one clip."""
    entries = config_entries(parse_filename(name))
    parts = name.split("_")
    row = {"filename": name, "video_id": parts[0], "gender": "F" if int(parts[0][1:]) % 2 else "M",
           "mix": int(len(entries) == 2), "emotion_1": entries[0][0], "version": "ver1",
           "intensity_level": parts[2][3:] if parts[2].startswith("int") else "",
           "situation": parts[2][3:] if parts[2].startswith("sit") else "",
           "emotion_2": entries[1][0] if len(entries) == 2 else "",
           "emotion_1_salience": f"{float(entries[0][1])}" if len(entries) == 2 else "",
           "emotion_2_salience": f"{float(entries[1][1])}" if len(entries) == 2 else ""}
    return row | ({"fold": fold} if fold is not None else {})


def openface_csv(values: np.ndarray) -> str:
    """values float [T, 3 + 8] -> the CSV text, action units as a printed Python list (nan allowed)."""
    lines = ["frame,emotion_index,gaze_yaw,gaze_pitch,action_units"]
    for t, row in enumerate(values):
        units = ", ".join("nan" if np.isnan(v) else f"{v:.4f}" for v in row[3:])
        lines.append(f'{t},{int(row[0])},{row[1]:.4f},{row[2]:.4f},"[{units}]"')
    return "\n".join(lines) + "\n"


def write(root: Path, seed: int = 0, full_size: bool = False, n_train_actors: int = 6, n_test_actors: int = 2,
          n_folds: int = 3, clips_per_actor: int = 12) -> Path:
    """Write the layout under root; full_size: 47 + 11 actors, 2,456 + 594 clips, real widths and frame counts."""
    root, rng = Path(root), np.random.default_rng(seed)
    if full_size:
        n_train_actors, n_test_actors, n_folds, clips_per_actor = 47, 11, 5, 54
    actors = [f"A{100 + i}" for i in range(n_train_actors + n_test_actors)]
    per_actor = {a: [actor_clips(a)[j] for j in sorted(rng.permutation(54)[:clips_per_actor])] for a in actors}
    train_clips = [c for a in actors[:n_train_actors] for c in per_actor[a]]
    if full_size:  # the real train set has 2,456 clips: 82 of the 47 x 54 are absent
        dropped = set(rng.choice(train_clips, 82, replace=False))
        train_clips = [c for c in train_clips if c not in dropped]
    test_clips = [c for a in actors[n_train_actors:] for c in per_actor[a]]
    test_clips = [test_clips[i] for i in rng.permutation(len(test_clips))]
    test_names = [f"test_{i + 1:04d}" for i in range(len(test_clips))]

    fold_of = {a: i % n_folds for i, a in enumerate(actors[:n_train_actors])}
    meta = root / "metadata"
    meta.mkdir(parents=True, exist_ok=True)
    train = pd.DataFrame([metadata_row(c, fold_of[c.split("_")[0]]) for c in train_clips])
    train.to_csv(meta / "train_metadata.csv", index=False)
    test = pd.DataFrame([metadata_row(c, None) for c in test_clips])
    test["filename"] = [n + ".mov" if i % 2 else n for i, n in enumerate(test_names)]  # both spellings
    test["video_id"] = ""  # the actor is hidden on test
    test.to_csv(meta / "test_metadata.csv", index=False)
    (root / "template").mkdir(exist_ok=True)
    template = {f"{n}.mov": [{"emotion": e, "salience": float(s)} for e, s in config_entries(int(rng.integers(36)))]
                for n in test_names}
    (root / "template" / "submission_template.json").write_text(json.dumps({"predictions": template}, indent=1))

    scale = 1 if full_size else 64
    for folder, kind, width, (t_min, t_max) in ENCODERS:
        width = width if kind == "openface" else max(4, width // scale)
        t_min, t_max = (t_min, t_max) if full_size else (max(1, t_min // 20), max(2, t_max // 40))
        W = rng.normal(0, 1, (6, width)).astype(np.float32)
        for split, clips, names in (("train", train_clips, train_clips), ("TEST", test_clips, test_names)):
            out = root / f"pre_extracted_{split.lower()}_data" / f"{folder}_{split}"
            out.mkdir(parents=True, exist_ok=True)
            for clip, name in zip(clips, names):
                signal = SALIENCE[parse_filename(clip)] @ W
                T = int(rng.integers(t_min, t_max + 1))
                series = signal + rng.standard_normal((T, width), dtype=np.float32)
                if kind == "openface":
                    head = np.stack([rng.integers(0, 8, T), rng.normal(0, 0.2, T), rng.normal(0, 0.2, T)], 1)
                    values = np.concatenate([head, series], 1)
                    values[rng.random(T) < 0.1, 3 + int(rng.integers(N_ACTION_UNITS))] = np.nan  # failed AU frames
                    (out / f"{name}.csv").write_text(openface_csv(values))
                else:
                    array = {"series_t1d": series[:, None, :], "series": series, "vector": series.mean(0)}[kind]
                    np.save(out / f"{name}.npy", array.astype(np.float32))
        (out / "README.txt").write_text("stray file: not a clip\n")
    np.save(root / "pre_extracted_train_data" / "ImageBind_train" / "A999_ang_int1_ver1.npy",
            rng.standard_normal((3, max(4, 1024 // scale)), dtype=np.float32))  # matches no metadata row
    return root

