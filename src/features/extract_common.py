"""What the raw-clip extractors (extract_video, extract_audio, extract_egemaps, extract_faces) share: clip
listing and decoding, device choice, the per-clip cache, the progress loop and the failure report.

Cache: `<out>.cache/<key>/<clip>.npy` holds one clip's aggregated vector; <key> hashes the settings that
change the numbers (model, weights, fps or layers), and `settings.json` beside the vectors spells them
out, so an interrupted run resumes and a different model never reuses another model's vectors.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import av
import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from src.device import pick_device
from src.errors import UserError
from src.features.aggregate import write_features
from src.io import atomic_write, write_json
from src.labels import VIDEO_EXTENSIONS

CLIP_SUFFIXES = VIDEO_EXTENSIONS
# --no-pretrained weights are random; a fixed seed makes them the same in every run, so vectors cached
# by an interrupted run match the ones a resumed run computes.
WEIGHT_SEED = 0
# Expressions change over a few hundred milliseconds; 5 frames a second sees them while keeping the cost
# (linear in frames) a sixth of every frame at 30 fps.
DEFAULT_FPS = 5.0
SAMPLE_RATE = 16_000  # audio: what the speech models were trained on; openSMILE takes it too


class ClipError(Exception):
    """One clip cannot be used (undecodable, no audio track, ...); the message is the reason."""


def add_clip_args(parser: argparse.ArgumentParser) -> None:
    """--videos, --out, --allow-failures: what every extractor takes."""
    parser.add_argument("--videos", type=Path, required=True, help="folder with the clips (.mov, .mp4, ...)")
    parser.add_argument("--out", type=Path, required=True, help="input/<name>/features/<enc>.npz")
    parser.add_argument("--allow-failures", action="store_true",
                        help="leave unreadable clips out of the file instead of failing")


def add_common_args(parser: argparse.ArgumentParser, batch: int, batch_help: str) -> None:
    """The clip arguments plus those of the extractors that run a chosen torch model."""
    add_clip_args(parser)
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, default=batch, help=batch_help)
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--no-pretrained", action="store_true", help="random weights (tests, benchmarks)")


def check_args(args) -> list[Path]:
    """Validate the shared arguments before any model is loaded; returns the clips, sorted by name."""
    if args.out.suffix != ".npz":
        raise UserError(f"--out {args.out}: must end in .npz (the dataset reads features/<enc>.npz)")
    if getattr(args, "batch", 1) < 1:
        raise UserError(f"--batch {args.batch}: must be at least 1")
    return list_clips(args.videos)


def list_clips(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UserError(f"--videos {folder}: folder not found")
    clips = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in CLIP_SUFFIXES),
                   key=lambda p: p.name)
    if not clips:
        raise UserError(f"--videos {folder}: no clips ({', '.join(CLIP_SUFFIXES)}) found")
    return clips


def read_frames(path, fps: float) -> list:
    """PIL images of the frames sampled at fps (fps <= 0: every frame); ClipError when unreadable."""
    frames, next_time, start = [], 0.0, None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ClipError("no video track")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = float(stream.average_rate or 25)
            for i, frame in enumerate(container.decode(stream)):
                t = frame.time if frame.time is not None else i / rate
                start = t if start is None else start
                t -= start
                # Take the first frame at or after each k / fps; jumping to the next slot after t (not
                # next_time + 1/fps) keeps one frame per slot even when the stream skips frames.
                if fps <= 0 or t >= next_time - 1e-6:
                    frames.append(frame.to_image())
                    next_time = (math.floor(t * fps + 1e-6) + 1) / fps if fps > 0 else 0.0
    except av.FFmpegError as err:
        raise ClipError(f"cannot decode ({err.strerror or err})") from None
    if not frames:
        raise ClipError("no frames decoded")
    return frames


def read_audio(path) -> np.ndarray:
    """float32 [samples]: the first audio track, 16 kHz mono; ClipError when absent or unreadable."""
    chunks = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise ClipError("no audio track")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(container.streams.audio[0]):
                chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]  # flush
    except av.FFmpegError as err:
        raise ClipError(f"cannot decode ({err.strerror or err})") from None
    wave = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if len(wave) < SAMPLE_RATE // 10:
        raise ClipError(f"audio track too short ({len(wave)} samples at 16 kHz)")
    return wave


def choose_device(name: str) -> torch.device:
    return pick_device(name, "--device")


def cache_dir(out: Path, settings: dict) -> Path:
    """The cache folder for these settings, with settings.json written on first use."""
    text = json.dumps(settings, sort_keys=True)
    key = hashlib.sha1(text.encode()).hexdigest()[:12]
    folder = out.with_name(out.name + ".cache") / key
    if not (folder / "settings.json").exists():
        write_json(folder / "settings.json", settings)
    return folder


def save_vector(path: Path, vector: np.ndarray) -> None:
    def save(tmp):
        with open(tmp, "wb") as fh:  # a file handle: np.save would append .npy to the temporary name
            np.save(fh, vector)
    atomic_write(path, save)


def per_clip(fn: Callable) -> Callable:
    """fn(path) -> (paths -> ({clip name: fn(path)}, {clip name: reason})); a ClipError fails that clip.

    With fn returning a clip's vector, the result is an embed for run_extraction.
    """
    def apply(paths):
        results, failures = {}, {}
        for path in paths:
            try:
                results[path.name] = fn(path)
            except ClipError as err:
                failures[path.name] = str(err)
        return results, failures
    return apply


def run_extraction(clips: list[Path], out: Path, settings: dict, embed: Callable, group: int,
                   allow_failures: bool) -> dict:
    """Embed every clip not cached yet, then write the features file.

    embed(paths) -> (vectors: {clip name: float32 [7 * D]}, failures: {clip name: reason}); it gets up to
    `group` clips at a time. Returns a summary: clips, cached, failed ({name: reason}), width, and the
    wall and CPU seconds of the embedding loop.
    """
    folder = cache_dir(out, settings)
    cached = {c.name for c in clips if (folder / f"{c.name}.npy").exists()}
    todo = [c for c in clips if c.name not in cached]
    failures: dict[str, str] = {}
    console = Console(stderr=True)
    console.print(f"{settings['model']}: {len(clips)} clips, {len(cached)} already in {folder}")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    start, start_cpu = time.perf_counter(), time.process_time()
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"{settings['kind']} {out.stem}", total=len(todo))
        for i in range(0, len(todo), group):
            paths = todo[i:i + group]
            vectors, failed = embed(paths)
            for name, vector in vectors.items():
                save_vector(folder / f"{name}.npy", vector)
            failures.update(failed)
            progress.advance(task, len(paths))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu

    if failures:
        print(f"{len(failures)} of {len(clips)} clips could not be used:", file=sys.stderr)
        for name, reason in sorted(failures.items()):
            print(f"  {name}: {reason}", file=sys.stderr)
        if not allow_failures:
            raise UserError(f"{len(failures)} of {len(clips)} clips failed (listed above); fix or remove them, "
                            f"or rerun with --allow-failures to leave them out (finished clips are cached)")
    names = [c.name for c in clips if c.name not in failures]
    if not names:
        raise UserError(f"--videos: none of the {len(clips)} clips could be used")
    vectors = [np.load(folder / f"{n}.npy") for n in names]
    write_features(out, names, vectors)
    print(f"wrote {out}: {len(names)} clips x {len(vectors[0])} features"
          f" ({len(cached)} from cache, {len(failures)} left out)")
    if failures:
        print("the dataset now lacks those clips for this encoder: set data.allow_missing: true")
    return {"clips": len(clips), "cached": len(cached), "failed": failures, "width": len(vectors[0]),
            "seconds": seconds, "cpu_seconds": cpu_seconds}
