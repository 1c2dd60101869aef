"""Extractor input handling on media the tests write: stereo downmix, cut files, stray files in the clip folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from src.features import extract_egemaps, extract_video
from src.features.extract_common import MIN_DECODED_SHARE, read_audio
from tools.bench_extract import TINY_VIDEO_MODEL, write_clip, write_media

PEAK = 0.95


def tone(rate: int, seconds: float = 1.0, hz: float = 220.0) -> np.ndarray:
    """float64 [samples]: a sine peaking at PEAK."""
    return PEAK * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)


def load(path):
    with np.load(path) as z:
        return z["X"], list(z["filenames"])


@pytest.mark.parametrize("rate", [16_000, 44_100])  # 16 kHz is decoded as is; 44.1 kHz goes through the resampler
def test_stereo_downmix_averages_the_channels(rate, tmp_path):
    wave = tone(rate)
    mono = read_audio(write_media(tmp_path / "mono.wav", wave=wave[None], audio_rate=rate, audio_codec="pcm_s16le"))
    same = read_audio(write_media(tmp_path / "same.wav", wave=np.stack([wave, wave]), audio_rate=rate,
                                  audio_codec="pcm_s16le"))
    left = read_audio(write_media(tmp_path / "left.wav", wave=np.stack([wave, 0 * wave]), audio_rate=rate,
                                  audio_codec="pcm_s16le"))
    assert len(mono) == len(same) == len(left) == 16_000
    # Identical channels are the mono signal, at its level: summing them at 0.707 gave a peak of 1.34.
    np.testing.assert_array_equal(same, mono)
    assert np.abs(same).max() <= PEAK + 1e-3  # 16-bit rounding and the resampler's ripple
    assert np.abs(same).max() > PEAK - 1e-2
    # One silent channel halves the level (the resampler's 0.707 would have kept 71%).
    np.testing.assert_allclose(left, mono / 2, atol=1e-4)


def test_stereo_clip_gives_the_mono_clips_features(tmp_path):
    """Through the real command: openSMILE sees the same audio from a stereo clip as from its mono twin."""
    wave = tone(44_100, seconds=1.5, hz=180.0)
    write_media(tmp_path / "A101_ang_int1_ver1.mov", wave=wave[None], audio_codec="pcm_s16le")
    write_media(tmp_path / "A101_ang_int2_ver1.mov", wave=np.stack([wave, wave]), audio_codec="pcm_s16le")
    extract_egemaps.main(["--videos", str(tmp_path), "--out", str(tmp_path / "out" / "egemaps.npz")])
    X, names = load(tmp_path / "out" / "egemaps.npz")
    assert names == ["A101_ang_int1_ver1.mov", "A101_ang_int2_ver1.mov"]
    np.testing.assert_allclose(X[1], X[0], rtol=1e-5, atol=1e-5)


@pytest.fixture
def cut_clips(tmp_path) -> Path:
    """A good clip, a complete faststart .mov (index first) and the same file cut at 40% of its bytes."""
    folder = tmp_path / "clips"
    folder.mkdir()
    write_clip(folder / "A101_ang_int1_ver1.mov", seconds=1.0)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(30)]  # 3 s at 10 fps
    whole = write_media(folder / "A101_hap_int1_ver1.mov", frames, fps=10, wave=tone(44_100, 3.0)[None],
                        faststart=True)
    data = whole.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # the index comes first, so the cut file still opens
    (folder / "A101_sad_int1_ver1.mov").write_bytes(data[:int(0.4 * len(data))])
    return folder


def test_truncated_clip_fails_or_is_reported(cut_clips, tmp_path, capsys):
    cut = "A101_sad_int1_ver1.mov"
    video = ["--videos", str(cut_clips), "--model", TINY_VIDEO_MODEL, "--no-pretrained", "--fps", 2]
    with pytest.raises(SystemExit) as exc:
        extract_video.main([str(a) for a in video + ["--out", tmp_path / "video.npz"]])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    # 30 frames of 0.1 s are stated; the cut file decodes the first ~40% of them.
    assert f"{cut}: truncated: decodes " in err and "of the 3.00 s its container states" in err
    assert not (tmp_path / "video.npz").exists()

    summary = extract_video.main([str(a) for a in video + ["--out", tmp_path / "video.npz", "--allow-failures"]])
    assert list(summary["failed"]) == [cut]
    decoded = float(summary["failed"][cut].split("decodes ")[1].split(" s")[0])
    assert 0.2 < decoded < MIN_DECODED_SHARE * 3.0
    assert load(tmp_path / "video.npz")[1] == ["A101_ang_int1_ver1.mov", "A101_hap_int1_ver1.mov"]

    # The audio track is checked the same way.
    summary = extract_egemaps.main(["--videos", str(cut_clips), "--out", str(tmp_path / "egemaps.npz"),
                                    "--allow-failures"])
    assert list(summary["failed"]) == [cut] and summary["failed"][cut].startswith("truncated: decodes ")


def test_dot_files_and_other_entries_are_skipped_and_counted(tmp_path, capsys):
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("A101_ang_int1_ver1.mov", "A101_hap_int1_ver1.mov"):
        write_clip(folder / name, seconds=0.5)
        (folder / f"._{name}").write_bytes(b"\x00\x05\x16\x07" + bytes(4000))  # macOS AppleDouble sidecar
    (folder / ".DS_Store").write_bytes(bytes(100))
    (folder / "notes.txt").write_text("takes 2 and 3 are blurred\n")
    (folder / "rejected").mkdir()
    summary = extract_egemaps.main(["--videos", str(folder), "--out", str(tmp_path / "egemaps.npz")])
    assert summary["failed"] == {} and summary["ignored"] == 5
    assert load(tmp_path / "egemaps.npz")[1] == ["A101_ang_int1_ver1.mov", "A101_hap_int1_ver1.mov"]
    assert "2 clips x 88 features (0 from cache, 0 left out, 5 other files ignored)" in capsys.readouterr().out

    # A folder of sidecars alone holds no clip.
    for clip in folder.glob("A101_*.mov"):
        clip.unlink()
    with pytest.raises(SystemExit) as exc:
        extract_egemaps.main(["--videos", str(folder), "--out", str(tmp_path / "none.npz")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.startswith("error: --videos ") and "no clips" in err and "\n" not in err
