"""Raw clips -> features: generated clips, tiny random-weight models, the real command entry points. Offline."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch

from src.features import extract_audio, extract_video
from src.features.aggregate import aggregate
from tools.bench_extract import TINY_VIDEO_MODEL, write_clip, write_tiny_wavlm

from conftest import SUBPROCESS_ENV, output_dir

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
# (name, seconds, seed): unequal lengths so a padded audio batch is exercised
CLIPS = [("A101_ang_int1_ver1.mov", 1.0, 0), ("A101_hap_int2_ver1.mov", 0.8, 1), ("A202_sad_int3_ver1.mov", 1.2, 2)]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    for name, seconds, seed in CLIPS:
        write_clip(folder / name, seconds=seconds, seed=seed)
    return folder


@pytest.fixture(scope="module")
def wavlm(tmp_path_factory) -> Path:
    return write_tiny_wavlm(tmp_path_factory.mktemp("wavlm"))


def video(videos, out, *extra):
    return extract_video.main(["--videos", str(videos), "--model", TINY_VIDEO_MODEL, "--out", str(out),
                               "--no-pretrained", *map(str, extra)])


def audio(videos, model, out, *extra):
    return extract_audio.main(["--videos", str(videos), "--model", str(model), "--out", str(out),
                               "--no-pretrained", *map(str, extra)])


def load(path):
    with np.load(path) as z:
        return z["X"], list(z["filenames"])


def test_video_features_are_aggregated_frame_embeddings(clips, tmp_path):
    out = tmp_path / "features" / "tiny.npz"
    video(clips, out, "--fps", 4, "--batch", 3)
    X, names = load(out)
    width = timm.create_model(TINY_VIDEO_MODEL, num_classes=0).num_features
    assert names == sorted(name for name, _, _ in CLIPS)
    assert X.shape == (3, 7 * width) and X.dtype == np.float32
    assert not np.allclose(X[0], X[1])

    # 10 fps clips: fps 4 keeps one frame per 0.25 s slot, fps 0 keeps them all.
    assert len(extract_video.read_frames(clips / CLIPS[0][0], 4)) == 4
    assert len(extract_video.read_frames(clips / CLIPS[2][0], 0)) == 12
    model, transform = extract_video.build_model(TINY_VIDEO_MODEL, False, CPU)
    for row, name in enumerate(names):
        frames = extract_video.frame_embeddings(model, transform, clips / name, 4, 32, CPU)
        assert frames.shape[1] == width
        np.testing.assert_allclose(X[row], aggregate(frames), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")  # torch, on WavLM's masks; harmless
def test_audio_features_from_a_middle_layer(clips, wavlm, tmp_path):
    out = tmp_path / "audio.npz"
    summary = audio(clips, wavlm, out, "--batch", 2)
    X, names = load(out)
    assert names == sorted(name for name, _, _ in CLIPS)
    assert X.shape == (3, 7 * 32)
    settings = json.loads(next((tmp_path / "audio.npz.cache").glob("*/settings.json")).read_text())
    assert settings["layers"] == [1, 1] and summary["width"] == 7 * 32  # 2 blocks -> the middle is block 1

    # 16 kHz mono with the tone intact (write_clip: 200 + 50 * seed Hz; aac adds < 0.1 s of priming).
    name, seconds, seed = CLIPS[2]
    wave = extract_audio.read_audio(clips / name)
    assert abs(len(wave) - seconds * 16_000) < 1_600
    assert abs(np.argmax(np.abs(np.fft.rfft(wave))) * 16_000 / len(wave) - (200 + 50 * seed)) < 3

    # Each clip alone, straight through transformers: the padded batch of 2 must not have changed anything.
    model, extractor = extract_audio.build_model(str(wavlm), False, CPU)
    for row, name in enumerate(names):
        wave = extract_audio.read_audio(clips / name)
        with torch.inference_mode():
            hidden = model(**extractor([wave], sampling_rate=16_000, return_tensors="pt"),
                           output_hidden_states=True).hidden_states
        assert len(hidden[1][0]) == extract_audio.n_frames(len(wave), model.config)
        np.testing.assert_allclose(X[row], aggregate(hidden[1][0].numpy()), rtol=1e-4, atol=1e-5)

    # A layer range is the mean of those layers' states.
    audio(clips, wavlm, tmp_path / "range.npz", "--layers", "0-2")
    X02, _ = load(tmp_path / "range.npz")
    wave = extract_audio.read_audio(clips / names[0])
    with torch.inference_mode():
        hidden = model(**extractor([wave], sampling_rate=16_000, return_tensors="pt"),
                       output_hidden_states=True).hidden_states
    np.testing.assert_allclose(X02[0], aggregate(torch.stack(hidden).mean(0)[0].numpy()), rtol=1e-4, atol=1e-5)


def test_rerun_resumes_from_the_cache(clips, tmp_path):
    videos = tmp_path / "clips"
    shutil.copytree(clips, videos)
    out = tmp_path / "video.npz"
    first = video(videos, out, "--fps", 4)
    X1, _ = load(out)
    cache = next((tmp_path / "video.npz.cache").iterdir())
    kept = cache / f"{CLIPS[2][0]}.npy"
    kept_mtime = kept.stat().st_mtime_ns
    # Interrupted-run stand-in: one clip's vector is gone. Another clip is now unreadable, which only a
    # run that decodes it again would notice.
    (cache / f"{CLIPS[1][0]}.npy").unlink()
    (videos / CLIPS[0][0]).write_bytes(b"not a video any more")

    second = video(videos, out, "--fps", 4)
    X2, _ = load(out)
    assert (first["cached"], second["cached"]) == (0, 2)
    assert kept.stat().st_mtime_ns == kept_mtime
    assert (cache / f"{CLIPS[1][0]}.npy").exists()
    np.testing.assert_array_equal(X1, X2)  # seeded random weights: the resumed clip matches the first run

    # Other settings have their own cache, so the broken clip is decoded and reported.
    with pytest.raises(SystemExit) as exc:
        video(videos, out, "--fps", 2)
    assert exc.value.code == 2


@pytest.fixture
def broken_clips(clips, tmp_path) -> Path:
    """Two good clips, one that is not a video, one without an audio track."""
    folder = tmp_path / "broken"
    folder.mkdir()
    for name, _, _ in CLIPS[:2]:
        shutil.copy(clips / name, folder / name)
    (folder / "A303_fea_int1_ver1.mov").write_bytes(os.urandom(4096))
    write_clip(folder / "A303_neu_sit1_ver1.mov", audio=False)
    return folder


def test_unusable_clips_are_listed_and_fail_unless_allowed(broken_clips, wavlm, tmp_path, capsys):
    out = tmp_path / "audio.npz"
    with pytest.raises(SystemExit) as exc:
        audio(broken_clips, wavlm, out)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert "A303_fea_int1_ver1.mov: cannot decode" in err
    assert "A303_neu_sit1_ver1.mov: no audio track" in err
    assert "--allow-failures" in err and "Traceback" not in err
    assert not out.exists()

    summary = audio(broken_clips, wavlm, out, "--allow-failures")
    assert summary["cached"] == 2  # the good clips were kept from the failed run
    assert load(out)[1] == [CLIPS[0][0], CLIPS[1][0]]

    # The silent clip is a fine video; only the undecodable one is left out.
    summary = video(broken_clips, tmp_path / "video.npz", "--allow-failures")
    assert list(summary["failed"]) == ["A303_fea_int1_ver1.mov"]
    assert "A303_neu_sit1_ver1.mov" in load(tmp_path / "video.npz")[1]


@pytest.mark.parametrize("case, message", [
    ("missing folder", "folder not found"),
    ("empty folder", "no clips"),
    ("unknown video model", "not a timm model"),
    ("unknown audio model", "folder not found"),
    ("bad out", "must end in .npz"),
])
def test_bad_input_is_one_line_error(case, message, clips, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "f.npz"
    args = {"missing folder": (extract_video, ["--videos", tmp_path / "nope", "--model", TINY_VIDEO_MODEL]),
            "empty folder": (extract_video, ["--videos", tmp_path / "empty", "--model", TINY_VIDEO_MODEL]),
            "unknown video model": (extract_video, ["--videos", clips, "--model", "resnet_does_not_exist"]),
            "unknown audio model": (extract_audio, ["--videos", clips, "--model", tmp_path / "no_model"]),
            "bad out": (extract_video, ["--videos", clips, "--model", TINY_VIDEO_MODEL, "--out", tmp_path / "f.csv"])}
    module, argv = args[case]
    argv = argv if "--out" in argv else argv + ["--out", out]
    with pytest.raises(SystemExit) as exc:
        module.main([str(a) for a in argv + ["--no-pretrained"]])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not out.exists()


def test_extracted_features_run_through_the_pipeline(wavlm, tmp_path):
    """Clips with official names -> extract both modalities -> exp010 --smoke finishes and scores."""
    rows = []
    videos = tmp_path / "clips"
    videos.mkdir()
    names = ["ang_int1", "hap_int2", "neu_sit1", "mix_ang_hap_30_70"]
    for fold, actor in enumerate(["A101", "A202", "A303"]):
        for k, label in enumerate(names):
            name = f"{actor}_{label}_ver1.mov"
            write_clip(videos / name, seconds=0.5, seed=10 * fold + k)
            rows.append({"filename": name, "fold": fold})
    tests = [f"test_{i:04d}.mov" for i in range(1, 4)]
    for i, name in enumerate(tests):
        write_clip(videos / name, seconds=0.5, seed=100 + i)

    dataset = tmp_path / f"extract_smoke_{uuid.uuid4().hex[:8]}"
    dataset.mkdir()
    pd.DataFrame(rows).to_csv(dataset / "train_metadata.csv", index=False)
    pd.DataFrame({"filename": tests}).to_csv(dataset / "test_metadata.csv", index=False)
    video(videos, dataset / "features" / "video_tiny.npz", "--fps", 4)
    audio(videos, wavlm, dataset / "features" / "audio_tiny.npz")

    env = {**os.environ, "PYTHONPATH": str(ROOT), **SUBPROCESS_ENV}  # float32 as on an AVX2 CPU; outputs under conftest's root
    run = subprocess.run([sys.executable, "-m", "src.main", "exp010", "--smoke", "--input", str(dataset)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (output_dir("exp010", dataset, "--smoke") / "metrics.json").exists()
