"""Clips per second of raw-clip feature extraction on this machine: tiny and real-size torch models (random
weights) and the extractors whose models ship in their wheels (openSMILE, FER2013 faces).

    python -m tools.bench_extract [--clips 4] [--seconds 3] [--no-full-size]
Also home of the clip generators the extraction tests use (write_clip, write_media, write_tiny_wavlm).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
from pathlib import Path

import av
import numpy as np
import torch
import transformers
from PIL import Image
from rich.console import Console
from rich.table import Table
from skimage import data as skimage_data

from src.errors import cli
from src.features import extract_audio, extract_compare, extract_egemaps, extract_faces, extract_video

# A speech model small enough for a test: two blocks of width 32 and a three-layer convolutional front end
# (total stride 80 -> 200 frames a second; the real ones: 320 -> 50). Layer norm in the front end lets it
# batch clips with an attention mask, as the large models do.
TINY_WAVLM = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  conv_dim=(32, 32, 32), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4), num_conv_pos_embeddings=16,
                  num_conv_pos_embedding_groups=2, feat_extract_norm="layer", do_stable_layer_norm=True,
                  num_buckets=32, max_bucket_distance=100)
TINY_VIDEO_MODEL = "test_vit"                    # timm's test model: 0.3 M parameters, width 64
FULL_VIDEO_MODEL = "vit_base_patch32_clip_224"   # CLIP ViT-B/32's architecture, as in the README's extraction commands
# Real-size speech models as configs (random weights): base = transformers' defaults (12 blocks, width 768,
# group-norm front end); large = microsoft/wavlm-large's shape (24 blocks, width 1024, layer-norm front end).
WAVLM_SIZES = {
    "WavLM-base": transformers.WavLMConfig(),
    "WavLM-large": transformers.WavLMConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                            intermediate_size=4096, feat_extract_norm="layer",
                                            do_stable_layer_norm=True),
}


def write_clip(path: Path, seconds: float = 1.0, size: tuple[int, int] = (64, 64), fps: int = 10,
               audio: bool = True, audio_rate: int = 44_100, seed: int = 0, image: np.ndarray | None = None,
               tone_hz: float | None = None) -> Path:
    """A clip (mpeg4) of a moving picture and, if audio, a tone (aac, mono).

    The picture is `image` (uint8 [H, W, 3], even sides; size is then ignored) or a seeded random texture;
    it slides 2 px a frame. The tone is tone_hz or 200 + 50 * seed Hz, with a little seeded noise.
    """
    rng = np.random.default_rng(seed)
    if image is None:
        width, height = size
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    frames = [np.roll(image, 2 * i, axis=1) for i in range(int(round(seconds * fps)))]
    wave = None
    if audio:
        t = np.arange(int(seconds * audio_rate)) / audio_rate
        hz = 200 + 50 * seed if tone_hz is None else tone_hz
        wave = (0.3 * np.sin(2 * np.pi * hz * t) + 0.05 * rng.normal(size=len(t)))[None]
    return write_media(path, frames, fps, wave, audio_rate)


def write_media(path: Path, frames: list | None = None, fps: int = 10, wave: np.ndarray | None = None,
                audio_rate: int = 44_100, audio_codec: str = "aac", faststart: bool = False) -> Path:
    """A media file: frames (uint8 [H, W, 3] each, even sides) as mpeg4 video, wave (float [channels, samples],
    1 or 2 channels) as audio_codec; faststart puts the index (a .mov's moov atom) before the data."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        video = None
        if frames:
            video = container.add_stream("mpeg4", rate=fps)
            video.height, video.width = frames[0].shape[:2]
            video.pix_fmt = "yuv420p"
        if wave is not None:
            layout = {1: "mono", 2: "stereo"}[len(wave)]
            sound = container.add_stream(audio_codec, rate=audio_rate, layout=layout)
        for image in frames or []:
            container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        if video is not None:
            container.mux(video.encode())
        if wave is not None:
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave, np.float32), format="fltp", layout=layout)
            frame.sample_rate, frame.pts = audio_rate, 0
            container.mux(sound.encode(frame))
            container.mux(sound.encode())
    return path


def write_tiny_wavlm(folder: Path) -> Path:
    """A tiny WavLM config.json in folder, for `--model folder --no-pretrained`."""
    transformers.WavLMConfig(**TINY_WAVLM).save_pretrained(folder)
    return folder


def run_benchmark(full_size: bool = True, n_clips: int = 8, seconds: float = 3.0) -> dict:
    """{'setup': {...}, 'rows': [{'kind', 'model', 'width', 'clips_per_s', 'cpu_s_per_clip'}, ...]}.

    No downloads: the torch models have random weights, openSMILE and the face model are the ones their
    wheels ship. Both figures cover the extraction loop only (decode, preprocess, model, cache write), not
    model loading; CPU seconds (all threads) move less than wall time when other work shares the machine.
    The face rows use clips of the astronaut photograph (a face in every frame), the others random textures.
    """
    size, fps = (640, 360), 30
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clips, face_clips = tmp / "clips", tmp / "face_clips"
        clips.mkdir()
        face_clips.mkdir()
        face = np.zeros((size[1], size[0], 3), np.uint8)  # the photograph, frame-high, in the middle
        left = (size[0] - size[1]) // 2
        face[:, left:left + size[1]] = np.asarray(Image.fromarray(skimage_data.astronaut()).resize((size[1],) * 2))
        for i in range(n_clips):
            write_clip(clips / f"A{100 + i}_ang_int1_ver1.mov", seconds, size, fps, seed=i)
            write_clip(face_clips / f"A{100 + i}_hap_int1_ver1.mov", seconds, fps=fps, seed=i, image=face)
        torch_args = ["--no-pretrained", "--device", "cpu"]
        wavlm_tiny = str(write_tiny_wavlm(tmp / "wavlm_tiny"))
        # (kind, label, entry point, clip folder, arguments)
        cases = [("video", TINY_VIDEO_MODEL, extract_video.main, clips, ["--model", TINY_VIDEO_MODEL, *torch_args]),
                 ("audio", "tiny WavLM config", extract_audio.main, clips, ["--model", wavlm_tiny, *torch_args])]
        if full_size:
            cases.append(("video", FULL_VIDEO_MODEL, extract_video.main, clips,
                          ["--model", FULL_VIDEO_MODEL, *torch_args]))
            for name, config in WAVLM_SIZES.items():
                config.save_pretrained(tmp / name)
                cases.append(("audio", f"{name} config", extract_audio.main, clips,
                              ["--model", str(tmp / name), *torch_args]))
        cases += [("egemaps", "openSMILE eGeMAPSv02 functionals", extract_egemaps.main, clips, []),
                  ("compare", "openSMILE ComParE_2016 functionals", extract_compare.main, clips, []),
                  ("faces", "Haar + FER2013 mini-Xception (TFLite)", extract_faces.main, face_clips, [])]
        for n, (kind, label, main, folder, args) in enumerate(cases):
            out = tmp / f"out{n}" / "features.npz"
            with contextlib.redirect_stdout(io.StringIO()):  # its "wrote ..." line; the progress bar stays
                summary = main(["--videos", str(folder), "--out", str(out), *args])
            rows.append({"kind": kind, "model": label, "width": summary["width"],
                         "clips_per_s": round(summary["clips"] / summary["seconds"], 3),
                         "cpu_s_per_clip": round(summary["cpu_seconds"] / summary["clips"], 3)})
    setup = {"device": "cpu", "torch_threads": torch.get_num_threads(), "clips": n_clips,
             # other work on the machine slows every row; the 1-minute load includes this benchmark's own threads
             "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
             "clip": f"{seconds:g} s, {size[0]}x{size[1]} at {fps} fps, 44.1 kHz mono aac",
             "video_fps_sampled": extract_video.DEFAULT_FPS}
    return {"setup": setup, "rows": rows}


def print_benchmark(result: dict) -> None:
    setup = result["setup"]
    table = Table(title=f"feature extraction, {setup['clips']} clips of {setup['clip']}, {setup['device']} x "
                        f"{setup['torch_threads']} threads, load average {setup['load_average_1min'][0]} -> "
                        f"{setup['load_average_1min'][1]}")
    for col in ("kind", "model", "features", "clips / s", "s / clip", "CPU s / clip"):
        table.add_column(col)
    for r in result["rows"]:
        table.add_row(r["kind"], r["model"], str(r["width"]), f"{r['clips_per_s']:.2f}", f"{1 / r['clips_per_s']:.2f}",
                      f"{r['cpu_s_per_clip']:.2f}")
    Console(width=110).print(table)  # wide enough for the model names when stdout is not a terminal


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--no-full-size", action="store_true",
                        help="tiny torch models only (the shipped-model rows always run)")
    args = parser.parse_args(argv)
    print_benchmark(run_benchmark(not args.no_full_size, args.clips, args.seconds))


if __name__ == "__main__":
    main()
