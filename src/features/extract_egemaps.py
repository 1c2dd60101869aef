"""Raw clips -> openSMILE acoustic features per clip: eGeMAPSv02 (or ComParE_2016) from the audio track.

    python -m src.features.extract_egemaps --videos DIR --out input/<name>/features/<enc>.npz
        [--level functionals|lld] [--allow-failures]
    python -m src.features.extract_compare ...   (same arguments, the ComParE_2016 set)
The first audio track is resampled to 16 kHz, its channels averaged (as extract_audio). `functionals`
(default): openSMILE's own statistics over the clip, 88 (eGeMAPSv02) or 6,373 (ComParE_2016) features.
`lld`: its low-level descriptors per 10 ms frame (25 or 65), aggregated like the organisers' features (mean,
std, 5 percentiles), the voiced-only ones (VOICED_ONLY) over the voiced frames alone, plus the fraction of
voiced frames -> 176 or 456. Everything ships in the `opensmile` wheel; its binary is under audEERING's
research licence (no commercial use).
"""
from __future__ import annotations

import argparse

import numpy as np
import opensmile

from src.errors import cli
from src.features.aggregate import N_STATS, aggregate
from src.features.extract_common import (SAMPLE_RATE, ClipError, add_clip_args, check_args, per_clip, read_audio,
                                         run_extraction)

FEATURE_SETS = {"egemaps": opensmile.FeatureSet.eGeMAPSv02, "compare": opensmile.FeatureSet.ComParE_2016}
LEVELS = {"functionals": opensmile.FeatureLevel.Functionals, "lld": opensmile.FeatureLevel.LowLevelDescriptors}
# The LLDs that only mean something in voiced frames; openSMILE writes 0, -100 or -201 (or, for eGeMAPS'
# formant frequencies and bandwidths, the formants of noise) in the others, and its own functionals
# summarise them over voiced frames. The first is F0, whose being above 0 marks a frame as voiced.
VOICED_ONLY = {
    "egemaps": ("F0semitoneFrom27.5Hz_sma3nz", "jitterLocal_sma3nz", "shimmerLocaldB_sma3nz", "HNRdBACF_sma3nz",
                "logRelF0-H1-H2_sma3nz", "logRelF0-H1-A3_sma3nz",
                *(f"F{i}{what}_sma3nz" for i in (1, 2, 3) for what in ("frequency", "bandwidth", "amplitudeLogRelF0"))),
    "compare": ("F0final_sma", "jitterLocal_sma", "jitterDDP_sma", "shimmerLocal_sma", "logHNR_sma"),
}


def lld_vector(values: np.ndarray, voiced_only: list[int]) -> np.ndarray:
    """values float [T, D] (LLDs per frame), voiced_only: their columns, F0 first -> float32 [7 * D + 1].

    The aggregate of every column (mean, std, 5 percentiles, each block D wide), the voiced_only columns
    taken over the voiced frames only (0 when a clip has none, as openSMILE's functionals give), then the
    fraction of voiced frames.
    """
    voiced = values[:, voiced_only[0]] > 0
    stats = aggregate(values).reshape(N_STATS, values.shape[1])
    stats[:, voiced_only] = aggregate(values[voiced][:, voiced_only]).reshape(N_STATS, -1) if voiced.any() else 0
    return np.append(stats.ravel(), np.float32(voiced.mean()))


def clip_features(smile: opensmile.Smile, wave: np.ndarray, level: str, voiced_only: list[int]) -> np.ndarray:
    """float32 [D]: the functionals of one 16 kHz wave, or its aggregated low-level descriptors (lld_vector)."""
    values = smile.process_signal(wave, SAMPLE_RATE).to_numpy(np.float64)
    if len(values) == 0:
        raise ClipError("openSMILE returned no frames")
    vector = values[0].astype(np.float32) if level == "functionals" else lld_vector(values, voiced_only)
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
    clips, ignored = check_args(args)
    smile = opensmile.Smile(feature_set=FEATURE_SETS[feature_set], feature_level=LEVELS[args.level])
    voiced_only = [smile.feature_names.index(n) for n in VOICED_ONLY[feature_set]] if args.level == "lld" else []
    settings = {"kind": feature_set, "model": f"openSMILE {name} {args.level}",
                "opensmile": opensmile.__version__, "level": args.level, "sample_rate": SAMPLE_RATE,
                "downmix": "mean", "voiced_only": [smile.feature_names[i] for i in voiced_only]}

    embed = per_clip(lambda path: clip_features(smile, read_audio(path), args.level, voiced_only))
    return run_extraction(clips, args.out, settings, embed, group=1, allow_failures=args.allow_failures,
                          ignored=ignored)


@cli
def main(argv=None):
    return run("egemaps", argv)


if __name__ == "__main__":
    main()
