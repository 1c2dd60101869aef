"""The BlEmoRe label space: 36 configurations, file-name parsing, presence and salience vectors."""
from __future__ import annotations

import math
import re

import numpy as np

from src.errors import UserError

EMOTIONS = ("ang", "disg", "fea", "hap", "sad", "neu")
NEUTRAL = EMOTIONS.index("neu")
BLEND_EMOTIONS = EMOTIONS[:5]  # neutral never appears in a blend
# (salience of the first-named emotion, salience of the second) as the official file names write them
BLEND_RATIOS = ((50, 50), (70, 30), (30, 70))
VIDEO_EXTENSIONS = (".mov", ".mp4", ".avi", ".mkv", ".webm")  # raw clips the extractors read
CLIP_EXTENSIONS = VIDEO_EXTENSIONS + (".npy", ".wav")  # stripped from file names to join clips across files


def _build_configs():
    """Every legal label as a tuple of (emotion, salience) pairs: 6 singles, then 10 pairs x 3 ratios."""
    configs = [((e, 100),) for e in EMOTIONS]
    for i, a in enumerate(BLEND_EMOTIONS):
        for b in BLEND_EMOTIONS[i + 1:]:
            configs += [((a, sa), (b, sb)) for sa, sb in BLEND_RATIOS]
    return tuple(configs)


CONFIGS = _build_configs()
N_CONFIGS = len(CONFIGS)  # 36
CONFIG_INDEX = {frozenset(c): i for i, c in enumerate(CONFIGS)}
IS_BLEND = np.array([len(c) == 2 for c in CONFIGS])
PRESENCE = np.array([[float(e in dict(c)) for e in EMOTIONS] for c in CONFIGS], dtype=np.float32)  # [36, 6]
SALIENCE = np.array([[dict(c).get(e, 0) / 100.0 for e in EMOTIONS] for c in CONFIGS], dtype=np.float32)  # [36, 6]
# The metric on configurations: PRESENCE_OK[p, t] = same emotion set; SALIENCE_OK[p, t] = same blend and ratio.
PRESENCE_OK = (PRESENCE[:, None, :] == PRESENCE[None, :, :]).all(-1)
SALIENCE_OK = np.eye(N_CONFIGS, dtype=bool) & IS_BLEND[None, :]


def strip_extension(name: str) -> str:
    """Clip key used to join files: the name without a trailing video/audio/array extension."""
    for ext in CLIP_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def config_index(entries) -> int:
    """[(emotion, salience), ...] -> configuration index; raises UserError for an illegal label."""
    typed = ", ".join(f"{e} {s}" for e, s in entries)  # messages show the values as written, not rounded
    values = [float(s) for _, s in entries]
    if not all(math.isfinite(v) for v in values):
        raise UserError(f"illegal label [{typed}]: a salience is not a finite number")
    pairs = tuple((str(e), int(round(v))) for (e, _), v in zip(entries, values))
    emotions = [e for e, _ in pairs]
    if any(e not in EMOTIONS for e in emotions):
        raise UserError(f"unknown emotion code in [{typed}] (known: {', '.join(EMOTIONS)})")
    if len(pairs) == 1:
        pairs = ((pairs[0][0], 100),)  # a single is a single whatever salience it carries
    key = frozenset(pairs)
    if len(pairs) not in (1, 2) or len(key) != len(pairs) or key not in CONFIG_INDEX:
        hint = " (saliences are percentages: 70/30, not 0.7/0.3)" if all(0 < float(s) <= 1 for _, s in entries) else ""
        raise UserError(f"illegal label [{typed}]: saliences must be 50/50, 70/30 or 30/70 "
                        f"between two different non-neutral emotions{hint}")
    return CONFIG_INDEX[key]


_MIX = re.compile(r"^[^_]+_mix_([a-z]+)_([a-z]+)_(\d+)_(\d+)(_|$)")
_SINGLE = re.compile(r"^[^_]+_([a-z]+)_(int\d|sit\d)(_|$)")


def parse_filename(name: str) -> int:
    """Configuration index from an official train file name such as A411_mix_ang_hap_30_70_ver1."""
    key = strip_extension(name)
    m = _MIX.match(key)
    if m:
        return config_index([(m.group(1), m.group(3)), (m.group(2), m.group(4))])
    m = _SINGLE.match(key)
    if m:
        return config_index([(m.group(1), 100)])
    raise UserError(f"cannot read a label from file name '{name}'")


def actor_of(name: str) -> str:
    """Actor id: the part of a file name before the first underscore."""
    return str(name).split("_", 1)[0]


def config_entries(index: int) -> list[tuple[str, int]]:
    """Configuration index -> [(emotion, salience), ...] in the official order."""
    return list(CONFIGS[index])
