"""The embedded synthetic BlEmoRe: a deterministic stand-in with the real data's structure and difficulties.

    bash run.sh synth --out input/synthetic [--seed 0] [--full-size]

Structure (as the real data): 47 train actors in 5 actor-disjoint folds, 54 clips each (20 singles at
int1..int4, 4 neutral sit1..4, 10 pairs x 3 ratios), ~3% of train clips dropped (2,456 left), official
train file names; 11 test actors x 54 = 594 clips named test_0001.mov.. in shuffled order; test_labels.csv;
submission_template.json. Encoders: the organisers' seven, at modest widths (default) or the real
aggregated widths (--full-size). Each encoder file holds 7 blocks like the organisers' aggregation:
mean, std and 10/25/50/75/90th percentiles of a per-clip frame distribution.

Signal model, and why (each item is something the real task makes hard):
- Expression: a clip's emotion coefficients are its salience vector (0.7/0.3 for a 70/30 blend, one-hot
  for a single) times an amplitude that grows with intensity (int1 is faint), so ratio and intensity
  both shape the features.
- Actors: each actor bends salience (w -> w^gamma, gamma per actor: some actors flatten a 70/30, others
  exaggerate it), has a per-emotion gain, a private offset and a private linear distortion of the
  expression space. Unseen actors are therefore harder than seen ones, and the best 50/50-vs-70/30
  threshold varies between folds.
- Encoders: each has its own sensitivity per emotion (audio strong on anger, happiness, sadness; face on
  disgust and happiness; OpenFace and Video Swin weak) and its own noise. HuBERT/WavLM share most of
  their signal and noise (largely redundant), as do CLIP/ImageBind.
- Modality failure: per clip, audio fails with probability P_FAIL['audio'] (no vocalisation) and video
  with P_FAIL['video'] (face turned away); that modality's encoders then carry noise only for the clip.
  A per-clip choice of encoders can skip them; a fixed one cannot.
- Test shift: for the encoders in SHIFTED, the test actors' features get a feature-wise affine change
  (recording conditions), which second-order alignment such as CORAL can reduce.
- Noise everywhere, calibrated so the organisers' baseline protocol (exp010) reaches real-like figures.

Knobs of generate()/write() (src/suite.py builds its worlds with them; every default is the dataset above):
- encoders / redundant: another encoder table (make_encoders draws one of any size and widths) and its
  redundant pairs.
- p_fail: per-clip failure probability per modality (shared by its encoders) or per encoder (its own draw).
- shifted, shift_kind, shift_strength, shift_fraction: which encoders the test recording shift hits, how
  (SHIFT_KINDS), how hard, and on which share of the test actors (the first ones generated; the rest
  are recorded like the training actors).
- n_train_actors, n_test_actors, n_folds, n_dropped, width_scale: the sizes.
- test_actor_column: test_metadata.csv also names each test clip's actor (column `actor`), so a shift
  report can be broken down per test actor; the labels stay hidden.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from src.errors import UserError, cli
from src.features.aggregate import PERCENTILES
from src.io import write_csv, write_json, write_npz
from src.labels import BLEND_EMOTIONS, BLEND_RATIOS, CONFIG_INDEX, EMOTIONS, SALIENCE, config_entries

# encoder -> (modality, width before aggregation (default, full-size), noise, sensitivity per EMOTIONS)
ENCODERS = {
    "openface":             ("video", (12, 49),   1.5, (0.6, 0.9, 0.5, 1.0, 0.4, 0.5)),
    "clip":                 ("video", (24, 512),  1.1, (0.5, 0.7, 0.5, 0.9, 0.5, 0.5)),
    "imagebind":            ("video", (32, 1024), 1.0, (0.6, 0.7, 0.6, 0.9, 0.6, 0.5)),
    "videomae":             ("video", (40, 1408), 0.9, (0.8, 0.8, 0.8, 0.8, 0.7, 0.6)),
    "videoswintransformer": ("video", (32, 1024), 1.3, (0.5, 0.6, 0.5, 0.7, 0.5, 0.5)),
    "hubert":               ("audio", (32, 1024), 1.0, (1.0, 0.4, 0.8, 0.9, 1.0, 0.4)),
    "wavlm":                ("audio", (32, 1024), 0.9, (1.0, 0.4, 0.8, 0.9, 1.0, 0.4)),
}
# Pairs that share most of their signal and noise: the second is the first plus a little of its own.
REDUNDANT = {"wavlm": "hubert", "imagebind": "clip"}
SHIFTED = ("clip", "videomae", "hubert")
P_FAIL = {"audio": 0.2, "video": 0.1}
MODALITIES = ("video", "audio")  # each modality has its own expression space; an encoder reads one
# affine: per-feature gain and offset (what CORAL can undo); noise: extra feature noise (lost signal,
# nothing to align); fail: the encoder carries noise only on a share of the shifted clips (a broken device)
SHIFT_KINDS = ("affine", "noise", "fail")
AFFINE_SHIFT = (0.25, 0.5)  # std of the log-gain and of the offset (in feature stds) at shift_strength 1
LATENT = 16                     # dimension of the expression space each modality sees
INTENSITY = (0.55, 0.75, 0.9, 1.05)  # amplitude of int1..int4
ACTOR_STYLE = 0.6               # scale of the actors' private offsets
SIGNAL = 1.5                    # overall signal strength against the noise
N_TRAIN_ACTORS, N_TEST_ACTORS, N_FOLDS = 47, 11, 5
N_DROPPED = 47 * 54 - 2456      # the real train set lacks 82 of its 2,538 clips


def clip_names(actor: str) -> list[str]:
    """The 54 official clip names of one actor, in a fixed order."""
    names = [f"{actor}_{e}_int{i}_ver1" for e in BLEND_EMOTIONS for i in range(1, 5)]
    names += [f"{actor}_neu_sit{i}_ver1" for i in range(1, 5)]
    for i, a in enumerate(BLEND_EMOTIONS):
        for b in BLEND_EMOTIONS[i + 1:]:
            names += [f"{actor}_mix_{a}_{b}_{sa}_{sb}_ver1" for sa, sb in BLEND_RATIOS]
    return names


def clip_label(name: str):
    """(configuration index, amplitude rule) straight from the generator's own names."""
    parts = name.split("_")
    if parts[1] == "mix":
        return CONFIG_INDEX[frozenset(((parts[2], int(parts[4])), (parts[3], int(parts[5]))))], None
    level = parts[2]
    return CONFIG_INDEX[frozenset(((parts[1], 100),))], (int(level[3]) if level.startswith("int") else 0)


def label_columns(configs: np.ndarray) -> pd.DataFrame:
    rows = []
    for c in configs:
        entries = config_entries(int(c))
        (e1, s1), (e2, s2) = entries[0], (entries[1] if len(entries) > 1 else ("", ""))
        rows.append({"mix": int(len(entries) == 2), "emotion_1": e1, "emotion_2": e2,
                     "emotion_1_salience": s1 if e2 else "", "emotion_2_salience": s2})
    return pd.DataFrame(rows)


def emotion_coefficients(rng, configs, levels, actor_idx, n_actors):
    """[N, 6] per-clip coefficients: salience bent by the actor, times amplitude and the actor's gains."""
    gamma = np.exp(rng.normal(0, 0.35, n_actors))
    gain = np.exp(rng.normal(0, 0.3, (n_actors, len(EMOTIONS))))
    sal = SALIENCE[configs].astype(np.float64)
    bent = np.where(sal > 0, sal, 0.0) ** gamma[actor_idx, None]
    bent = bent / bent.sum(1, keepdims=True)
    amp = np.where(levels > 0, np.array((0,) + INTENSITY)[levels], 0.0)
    amp = np.where(levels < 0, rng.uniform(0.7, 1.0, len(levels)), amp)  # blends
    amp = np.where(levels == 0, rng.uniform(0.4, 0.7, len(levels)), amp)  # neutral situations
    return bent * amp[:, None] * gain[actor_idx]


def make_encoders(n: int, seed: int = 0, widths=(16, 64), n_audio: int | None = None,
                  noise=(0.9, 1.5), sensitivity=(0.3, 1.0)) -> dict:
    """An encoder table like ENCODERS with n encoders: video1.. then audio1.., widths drawn in [lo, hi].

    Drawn from its own generator, so the dataset's draws do not depend on how the table was made.
    """
    if n < 1:
        raise UserError(f"encoders: {n} asked for; a dataset needs at least 1")
    lo, hi = widths
    if not 1 <= lo <= hi:
        raise UserError(f"encoder widths: [{lo}, {hi}] must satisfy 1 <= low <= high")
    rng = np.random.default_rng(seed)
    n_audio = n // 3 if n_audio is None else n_audio
    if not 0 <= n_audio <= n:
        raise UserError(f"encoders: {n_audio} audio encoders asked for out of {n}")
    names = [f"video{i + 1}" for i in range(n - n_audio)] + [f"audio{i + 1}" for i in range(n_audio)]
    table = {}
    for name in names:
        width = int(rng.integers(lo, hi + 1))
        sens = tuple(round(float(v), 3) for v in rng.uniform(*sensitivity, len(EMOTIONS)))
        table[name] = (name.rstrip("0123456789"), (width, width), round(float(rng.uniform(*noise)), 3), sens)
    return table


def check_knobs(encoders: dict, redundant: dict, p_fail: dict, shifted, shift_kind: str, shift_strength: float,
                shift_fraction: float) -> None:
    """One-line UserError for a knob that names an unknown encoder or holds an impossible value."""
    for enc, (modality, *_rest) in encoders.items():
        if modality not in MODALITIES:
            raise UserError(f"encoder '{enc}': modality {modality!r} is not one of {', '.join(MODALITIES)}")
    for enc, partner in redundant.items():
        if enc not in encoders or partner not in encoders or list(encoders).index(partner) > list(encoders).index(enc):
            raise UserError(f"redundant: '{enc}' -> '{partner}' needs both encoders, the partner listed first")
    for key, p in p_fail.items():
        if key not in MODALITIES and key not in encoders:
            raise UserError(f"p_fail: '{key}' is neither a modality ({', '.join(MODALITIES)}) nor an encoder")
        if not 0 <= p < 1:
            raise UserError(f"p_fail: {key} = {p} is not a probability below 1")
    unknown = [e for e in shifted if e not in encoders]
    if unknown:
        raise UserError(f"shifted: unknown encoder '{unknown[0]}' (known: {', '.join(encoders)})")
    if shift_kind not in SHIFT_KINDS:
        raise UserError(f"shift_kind: {shift_kind!r} is not one of {', '.join(SHIFT_KINDS)}")
    if shift_strength < 0 or (shift_kind == "fail" and shift_strength > 1):
        raise UserError(f"shift_strength: {shift_strength} must be >= 0 (a probability <= 1 for kind fail)")
    if not 0 <= shift_fraction <= 1:
        raise UserError(f"shift_fraction: {shift_fraction} is not a share of the test actors in [0, 1]")


def generate(seed: int = 0, full_size: bool = False, n_train_actors: int = N_TRAIN_ACTORS,
             n_test_actors: int = N_TEST_ACTORS, n_folds: int = N_FOLDS, n_dropped: int | None = None,
             width_scale: float = 1.0, encoders: dict | None = None, redundant: dict | None = None,
             p_fail: dict | None = None, shifted=SHIFTED, shift_kind: str = "affine", shift_strength: float = 1.0,
             shift_fraction: float = 1.0):
    """All tables and feature matrices of one synthetic dataset, as plain objects."""
    if redundant is None:
        redundant = REDUNDANT if encoders is None else {}
    encoders = ENCODERS if encoders is None else encoders
    p_fail = P_FAIL if p_fail is None else p_fail
    check_knobs(encoders, redundant, p_fail, shifted, shift_kind, shift_strength, shift_fraction)
    rng = np.random.default_rng(seed)
    n_actors = n_train_actors + n_test_actors
    actor_ids = [f"A{n}" for n in rng.choice(np.arange(100, 1000), n_actors, replace=False)]
    names, actor_idx = [], []
    for a, actor in enumerate(actor_ids):
        names += clip_names(actor)
        actor_idx += [a] * 54
    names, actor_idx = np.array(names), np.array(actor_idx)
    is_test = actor_idx >= n_train_actors
    if n_dropped is None:
        n_dropped = round(N_DROPPED * n_train_actors / N_TRAIN_ACTORS)
    keep = np.ones(len(names), bool)
    keep[rng.choice(np.flatnonzero(~is_test), n_dropped, replace=False)] = False
    names, actor_idx, is_test = names[keep], actor_idx[keep], is_test[keep]
    configs, levels = zip(*(clip_label(n) for n in names))
    configs = np.array(configs)
    levels = np.array([-1 if lv is None else lv for lv in levels])

    coef = emotion_coefficients(rng, configs, levels, actor_idx, n_actors)
    failed = {m: rng.random(len(names)) < p for m, p in p_fail.items()}
    n_shifted_actors = int(round(shift_fraction * n_test_actors))
    is_shifted = is_test & (actor_idx < n_train_actors + n_shifted_actors)
    features, views, failures, clean = {}, {}, {}, {}
    for modality in MODALITIES:
        protos = rng.normal(0, 1, (len(EMOTIONS), LATENT))
        distort = np.eye(LATENT) + 0.35 * rng.normal(0, 1, (n_actors, LATENT, LATENT)) / np.sqrt(LATENT)
        offset = ACTOR_STYLE * rng.normal(0, 1, (n_actors, LATENT))
        views[modality] = (protos, distort, offset, rng.normal(0, 0.6, (len(names), LATENT)))
    for enc, (modality, widths, noise, sens) in encoders.items():
        protos, distort, offset, shared_noise = views[modality]
        z = (coef * np.array(sens)) @ protos * SIGNAL
        z = np.einsum("nij,nj->ni", distort[actor_idx], z) + offset[actor_idx] + shared_noise
        private = rng.normal(0, noise, z.shape)
        if enc in redundant:  # mostly the partner's latent (before its failures), with its noise
            z, private = clean[redundant[enc]] * 0.9 + 0.1 * z, private * 0.5
        z = clean[enc] = z + private
        fails = failed.get(modality, np.zeros(len(names), bool)) | failed.get(enc, False)
        if shift_kind == "fail" and enc in shifted:
            fails = fails | (is_shifted & (rng.random(len(names)) < shift_strength))
        z = np.where(fails[:, None], rng.normal(0, 1.5, z.shape), z)
        features[enc], failures[enc] = (z, modality), fails
    out = {}
    for enc, (z, modality) in features.items():
        width = max(2, int(round(encoders[enc][1][1 if full_size else 0] * width_scale)))
        moved = is_shifted if enc in shifted and shift_kind != "fail" else None
        out[enc] = frame_statistics(rng, z, width, shifted=moved, kind=shift_kind, strength=shift_strength)
    return dict(names=names, actor_ids=actor_ids, actor_idx=actor_idx, is_test=is_test, configs=configs,
                features=out, n_folds=n_folds, rng=rng, train_actors=actor_ids[:n_train_actors],
                encoders=encoders, is_shifted=is_shifted, failed=failures)


def frame_statistics(rng, z: np.ndarray, width: int, shifted=None, kind: str = "affine",
                     strength: float = 1.0) -> np.ndarray:
    """Latent [N, L] -> float32 [N, 7 * width]: mean, std, percentiles of a clip's frame distribution."""
    W = rng.normal(0, 1 / np.sqrt(z.shape[1]), (z.shape[1], width))
    V = rng.normal(0, 1 / np.sqrt(z.shape[1]), (z.shape[1], width))
    mean = np.tanh(z @ W) + rng.normal(0, 0.3, (len(z), width))
    spread = 0.4 + 0.3 * np.abs(np.tanh(z @ V))
    quantiles = np.array([-1.2816, -0.6745, 0.0, 0.6745, 1.2816])  # standard normal at PERCENTILES
    assert len(quantiles) == len(PERCENTILES)
    blocks = [mean, spread] + [mean + q * spread for q in quantiles]
    X = np.concatenate(blocks, axis=1) + rng.normal(0, 0.05, (len(z), 7 * width))
    if shifted is not None and kind == "affine":  # recording shift: per-feature gain and offset
        gain = np.exp(rng.normal(0, AFFINE_SHIFT[0] * strength, X.shape[1]))
        bias = rng.normal(0, AFFINE_SHIFT[1] * strength, X.shape[1]) * X.std(0)
        X[shifted] = X[shifted] * gain + bias
    elif shifted is not None and kind == "noise":  # recording noise: strength x each feature's std
        X[shifted] = X[shifted] + rng.normal(0, 1, (int(shifted.sum()), X.shape[1])) * strength * X.std(0)
    return X.astype(np.float32)


def write(out: Path, seed: int = 0, full_size: bool = False, test_actor_column: bool = False, **kwargs) -> Path:
    """Write a dataset folder following the contract; returns its path. kwargs: the knobs of generate."""
    out = Path(out)
    g = generate(seed, full_size, **kwargs)
    rng, names, is_test = g["rng"], g["names"], g["is_test"]
    fold_of_actor = {a: i % g["n_folds"] for i, a in enumerate(rng.permutation(g["train_actors"]))}

    tr = np.flatnonzero(~is_test)
    train = pd.DataFrame({"filename": names[tr],
                          "fold": [fold_of_actor[n.split("_")[0]] for n in names[tr]]})
    train = pd.concat([train, label_columns(g["configs"][tr])], axis=1).sort_values("filename")
    te = rng.permutation(np.flatnonzero(is_test))  # test order unrelated to actors
    test_names = np.array([f"test_{i + 1:04d}.mov" for i in range(len(te))])
    test_labels = pd.concat([pd.DataFrame({"filename": test_names}), label_columns(g["configs"][te])], axis=1)

    write_csv(out / "train_metadata.csv", train)
    test_meta = test_labels[["filename"]]
    if test_actor_column:
        test_meta = test_meta.assign(actor=[n.split("_")[0] for n in names[te]])
    write_csv(out / "test_metadata.csv", test_meta)
    write_csv(out / "test_labels.csv", test_labels)
    # the template holds random legal labels, like the organisers' CodaBench template
    template = {n: [{"emotion": e, "salience": float(s) if s == 100 else s}
                    for e, s in config_entries(int(rng.integers(0, 36)))] for n in test_names}
    write_json(out / "submission_template.json", {"predictions": template})
    # feature rows: train clips under their own names, test clips under test_XXXX (no extension)
    row_names = np.concatenate([names[tr], [n[:-4] for n in test_names]])
    for enc, X in g["features"].items():
        write_npz(out / "features" / f"{enc}.npz", X=np.concatenate([X[tr], X[te]]), filenames=row_names)
    write_csv(out / "encoders.csv", pd.DataFrame({"encoder": list(g["encoders"]),
                                                 "modality": [m for m, *_ in g["encoders"].values()]}))
    return out


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the synthetic BlEmoRe dataset.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full-size", action="store_true", help="the real aggregated encoder widths")
    args = parser.parse_args(argv)
    if args.seed < 0:
        raise UserError(f"--seed: {args.seed} is below the minimum 0 (numpy seeds are non-negative)")
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out}: is a file; give a folder for the dataset")
    write(args.out, args.seed, args.full_size)
    meta = pd.read_csv(args.out / "train_metadata.csv")
    print(f"wrote {args.out}: {len(meta)} train clips in {meta['fold'].nunique()} folds, "
          f"{len(pd.read_csv(args.out / 'test_metadata.csv'))} test clips, {len(ENCODERS)} encoders")


if __name__ == "__main__":
    main()
