"""What the raw-clip extractors (extract_video, extract_audio, extract_egemaps, extract_faces) share: clip
listing and decoding, device choice, model-hub access, the per-clip cache, the progress loop and the failure report.

Cache: `<out>.cache/<key>/<clip>.npy` holds one clip's aggregated vector; <key> hashes the settings that
change the numbers (model, weights, fps or layers), and `settings.json` beside the vectors spells them
out, so an interrupted run resumes and a different model never reuses another model's vectors.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

import av
import numpy as np
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache
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
# A clip must decode to at least this share of the duration its container states. A file cut short whose
# index comes first (a .mov with the moov atom at the start) still opens and decodes its first part without
# an error; the normal gap (an audio encoder's priming samples, the last frame's duration) is far smaller.
MIN_DECODED_SHARE = 0.9
# One request of at most this many seconds decides whether a model can be downloaded now; without it the
# hub clients retry an unreachable host for half a minute or more before they fail.
PROBE_SECONDS = 3.0


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


def check_args(args) -> tuple[list[Path], int]:
    """Validate the shared arguments before any model is loaded; returns list_clips(--videos)."""
    if args.out.suffix != ".npz":
        raise UserError(f"--out {args.out}: must end in .npz (the dataset reads features/<enc>.npz)")
    if getattr(args, "batch", 1) < 1:
        raise UserError(f"--batch {args.batch}: must be at least 1")
    return list_clips(args.videos)


def is_clip(path: Path) -> bool:
    # Dot-files are never clips: macOS writes a `._<name>.mov` resource file beside every clip it copies.
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in CLIP_SUFFIXES


def list_clips(folder: Path) -> tuple[list[Path], int]:
    """(the clips in folder, sorted by name; how many other entries it holds: dot-files, other files, folders)."""
    if not folder.is_dir():
        raise UserError(f"--videos {folder}: folder not found")
    entries = list(folder.iterdir())
    clips = sorted((p for p in entries if is_clip(p)), key=lambda p: p.name)
    if not clips:
        raise UserError(f"--videos {folder}: no clips ({', '.join(CLIP_SUFFIXES)}) found"
                        + (f" among its {len(entries)} entries" if entries else ""))
    return clips, len(entries) - len(clips)


def stated_seconds(container, stream) -> float | None:
    """The stream's duration as its container states it (the container's own when the stream has none)."""
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    return container.duration / av.time_base if container.duration else None


def truncation(decoded: float, stated: float | None) -> str | None:
    """Why a clip decoding to `decoded` of its `stated` seconds counts as cut short, or None."""
    if stated and decoded < MIN_DECODED_SHARE * stated:
        return f"truncated: decodes {decoded:.2f} s of the {stated:.2f} s its container states"
    return None


def decode_error(err: av.FFmpegError, decoded: float | None, stated: float | None) -> ClipError:
    """The ClipError for a decoder error after `decoded` seconds (None: before anything was decoded)."""
    reason = err.strerror or str(err)
    cut = truncation(decoded, stated) if decoded is not None else None
    return ClipError(f"{cut} ({reason})" if cut else f"cannot decode ({reason})")


def read_frames(path, fps: float) -> list:
    """PIL images of the frames sampled at fps (fps <= 0: every frame); ClipError when unreadable or cut short."""
    frames, next_time, start, t, stated, rate = [], 0.0, None, None, None, 25.0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ClipError("no video track")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = float(stream.average_rate or rate)
            stated = stated_seconds(container, stream)
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
        raise decode_error(err, None if t is None else t + 1 / rate, stated) from None
    if not frames:
        raise ClipError("no frames decoded")
    if cut := truncation(t + 1 / rate, stated):  # the last frame lasts one frame interval
        raise ClipError(cut)
    return frames


def read_audio(path) -> np.ndarray:
    """float32 [samples]: the first audio track, 16 kHz, the mean of its channels; ClipError when absent,
    unreadable or cut short."""
    chunks, decoded, stated = [], None, None
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise ClipError("no audio track")
            stream = container.streams.audio[0]
            stated, decoded = stated_seconds(container, stream), 0.0
            # The channels are averaged here, not by the resampler: FFmpeg's stereo-to-mono matrix adds the
            # channels at 0.707 each, which makes identical channels 3 dB louder and pushes a loud clip past 1.0.
            resampler = av.AudioResampler(format="fltp", rate=SAMPLE_RATE)
            for frame in container.decode(stream):
                decoded += frame.samples / frame.sample_rate
                chunks += [f.to_ndarray() for f in resampler.resample(frame)]
            chunks += [f.to_ndarray() for f in resampler.resample(None)]  # flush
    except av.FFmpegError as err:
        raise decode_error(err, decoded or None, stated) from None
    wave = np.concatenate(chunks, axis=1).mean(0, dtype=np.float32) if chunks else np.zeros(0, np.float32)
    if len(wave) < SAMPLE_RATE // 10:
        raise ClipError(f"audio track too short ({len(wave)} samples at 16 kHz)")
    if cut := truncation(decoded, stated):
        raise ClipError(cut)
    return wave


def choose_device(name: str) -> torch.device:
    return pick_device(name, "--device")


def hub_cached(repo_id: str, filenames) -> str | None:
    """The local path of the first of filenames that the Hugging Face cache holds for repo_id, or None."""
    for name in filenames:
        try:
            path = try_to_load_from_cache(repo_id, name)
        except ValueError:  # not a valid repo id: the library loading it says so
            return None
        if isinstance(path, str):
            return path
    return None


@functools.lru_cache(maxsize=None)
def reachable(url: str) -> str | None:
    """None when url answers within PROBE_SECONDS (any HTTP status), else why not."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=PROBE_SECONDS).close()
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return f"{url} cannot be reached ({getattr(reason, 'strerror', None) or reason})"
    return None


def require_download(what: str, url: str, fix: str) -> None:
    """UserError at once when `what`, absent from the local cache, cannot be downloaded from url now."""
    reason = "HF_HUB_OFFLINE is set" if hub_constants.HF_HUB_OFFLINE else reachable(url)
    if reason:
        raise UserError(f"{what}: not in the local cache and {reason}; {fix}")


def hub_fix(repo_id: str) -> str:
    """How to put a Hugging Face repo into the local cache, for require_download's message."""
    return (f"download it once while the network works (`.venv/bin/hf download {repo_id}` puts it in "
            f"{hub_constants.HF_HUB_CACHE}, which can also be copied from another machine)")


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
                   allow_failures: bool, ignored: int = 0) -> dict:
    """Embed every clip not cached yet, then write the features file.

    embed(paths) -> (vectors: {clip name: float32 [D]}, failures: {clip name: reason}); it gets up to
    `group` clips at a time. `ignored`: the folder's other entries (list_clips), reported with the counts.
    Returns a summary: clips, cached, failed ({name: reason}), ignored, width, and the wall and CPU
    seconds of the embedding loop.
    """
    folder = cache_dir(out, settings)
    cached = {c.name for c in clips if (folder / f"{c.name}.npy").exists()}
    todo = [c for c in clips if c.name not in cached]
    failures: dict[str, str] = {}
    console = Console(stderr=True)
    console.print(f"{settings['model']}: {len(clips)} clips ({ignored} other files ignored), "
                  f"{len(cached)} already in {folder}")
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
          f" ({len(cached)} from cache, {len(failures)} left out, {ignored} other files ignored)")
    if failures:
        print("the dataset now lacks those clips for this encoder: set data.allow_missing: true")
    return {"clips": len(clips), "cached": len(cached), "failed": failures, "ignored": ignored,
            "width": len(vectors[0]), "seconds": seconds, "cpu_seconds": cpu_seconds}
