"""Raw clips -> openSMILE acoustic features per clip: eGeMAPSv02 (or ComParE_2016) from the audio track.

    python -m src.features.extract_egemaps --videos DIR --out input/<name>/features/<enc>.npz
        [--level functionals|lld] [--allow-failures]
    python -m src.features.extract_compare ...   (same arguments, the ComParE_2016 set)
The first audio track is resampled to 16 kHz mono (as extract_audio). `functionals` (default): openSMILE's
own statistics over the clip, 88 (eGeMAPSv02) or 6,373 (ComParE_2016) features. `lld`: its low-level
descriptors per 10 ms frame (25 or 65), aggregated like the organisers' features (mean, std, 5 percentiles
-> 175 or 455). Everything ships in the `opensmile` wheel; its binary is under audEERING's research
licence (no commercial use).
"""
from __future__ import annotations

import argparse

import numpy as np
import opensmile

from src.errors import cli
from src.features.aggregate import aggregate
from src.features.extract_common import (SAMPLE_RATE, ClipError, add_clip_args, check_args, per_clip, read_audio,
                                         run_extraction)

FEATURE_SETS = {"egemaps": opensmile.FeatureSet.eGeMAPSv02, "compare": opensmile.FeatureSet.ComParE_2016}
LEVELS = {"functionals": opensmile.FeatureLevel.Functionals, "lld": opensmile.FeatureLevel.LowLevelDescriptors}


def clip_features(smile: opensmile.Smile, wave: np.ndarray, level: str) -> np.ndarray:
    """float32 [D]: the functionals of one 16 kHz wave, or its aggregated low-level descriptors."""
    values = smile.process_signal(wave, SAMPLE_RATE).to_numpy(np.float64)
    if len(values) == 0:
        raise ClipError("openSMILE returned no frames")
    vector = values[0].astype(np.float32) if level == "functionals" else aggregate(values)
    if not np.isfinite(vector).all():  # the dataset refuses NaN/inf; never seen, but a clip must not poison the file
        raise ClipError(f"openSMILE gave {int((~np.isfinite(vector)).sum())} non-finite values")
    return vector


def run(feature_set: str, argv=None) -> dict:
    """The command for one feature set (egemaps, compare); returns run_extraction's summary."""
    name = FEATURE_SETS[feature_set].name
    parser = argparse.ArgumentParser(description=f"Raw clips -> openSMILE {name} features per clip (see {__name__}).")
    add_clip_args(parser)
    parser.add_argument("--level", choices=sorted(LEVELS), default="functionals",
                        help="functionals: openSMILE's per-clip statistics; lld: 10 ms descriptors, aggregated")
    args = parser.parse_args(argv)
    clips = check_args(args)
    smile = opensmile.Smile(feature_set=FEATURE_SETS[feature_set], feature_level=LEVELS[args.level])
    settings = {"kind": feature_set, "model": f"openSMILE {name} {args.level}",
                "opensmile": opensmile.__version__, "level": args.level, "sample_rate": SAMPLE_RATE}

    embed = per_clip(lambda path: clip_features(smile, read_audio(path), args.level))
    return run_extraction(clips, args.out, settings, embed, group=1, allow_failures=args.allow_failures)


@cli
def main(argv=None):
    return run("egemaps", argv)


if __name__ == "__main__":
    main()
