"""Raw clips -> one video feature vector per clip, from any timm image backbone applied frame by frame.

    python -m src.features.extract_video --videos DIR --model NAME --out input/<name>/features/<enc>.npz
        [--fps 5] [--batch 32] [--device auto] [--no-pretrained] [--allow-failures]
Frames are sampled at --fps, preprocessed with the model's own timm data config, embedded without the
classifier, and aggregated over time like the organisers' features (mean, std, 5 percentiles -> 7 x D).
Pretrained weights in the local cache load without the network; weights that are not fail at once when
their source cannot be reached.
"""
from __future__ import annotations

import argparse
import difflib
import os
import urllib.parse
from pathlib import Path

import numpy as np
import timm
import torch
from timm.data import create_transform, resolve_model_data_config

from src.errors import UserError, cli
from src.features.aggregate import aggregate
from src.features.extract_common import (DEFAULT_FPS, WEIGHT_SEED, add_common_args, check_args, choose_device,
                                         hub_cached, hub_constants, hub_fix, per_clip, read_frames, require_download,
                                         run_extraction)


def hub_weight_files(filename: str) -> list[str]:
    """The files timm tries on the hub for `filename`, in its order: the safetensors twin of a .bin first."""
    if not filename.endswith(".bin"):
        return [filename]
    twin = {"pytorch_model.bin": "model.safetensors", "open_clip_pytorch_model.bin": "open_clip_model.safetensors"}
    return [twin.get(filename, filename[:-4] + ".safetensors"), filename]


def cached_weights(name: str) -> dict:
    """create_model keywords that load the model's pretrained weights from the local cache (no network at
    all); {} when they must be downloaded, after a UserError at once if their source cannot be reached now."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or cfg.custom_load or not (cfg.hf_hub_id or cfg.url):
        return {}  # timm itself says what is wrong, or loads in its own way
    if cfg.hf_hub_id:
        path = hub_cached(cfg.hf_hub_id, hub_weight_files(cfg.hf_hub_filename or "pytorch_model.bin"))
        fix, url = hub_fix(cfg.hf_hub_id), hub_constants.ENDPOINT
    else:
        folder = Path(torch.hub.get_dir()) / "checkpoints"  # where timm's url downloads land
        path = folder / os.path.basename(urllib.parse.urlparse(cfg.url).path)
        path = str(path) if path.is_file() else None
        fix, url = f"download {cfg.url} once while the network works into {folder}", cfg.url
    if path:
        return {"pretrained_cfg_overlay": {"file": path}}
    require_download(f"--model {name}", url, fix)
    return {}


def build_model(name: str, pretrained: bool, device: torch.device):
    """(backbone without classifier, eval mode, on device; its test-time transform)."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=3)
        raise UserError(f"--model {name}: not a timm model" + (f" (close: {', '.join(close)})" if close else ""))
    options = cached_weights(name) if pretrained else {}
    torch.manual_seed(WEIGHT_SEED)
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0, **options)
    except (OSError, RuntimeError, ValueError) as err:
        raise UserError(f"--model {name}: cannot load weights ({str(err).splitlines()[0]}); "
                        f"--no-pretrained uses random weights") from None
    transform = create_transform(**resolve_model_data_config(model), is_training=False)
    return model.eval().to(device), transform


@torch.inference_mode()
def frame_embeddings(model, transform, path, fps: float, batch: int, device: torch.device) -> np.ndarray:
    """float32 [T, D]: one embedding per sampled frame of the clip at path."""
    images = torch.stack([transform(img) for img in read_frames(path, fps)])
    chunks = [model(images[i:i + batch].to(device)).float().cpu() for i in range(0, len(images), batch)]
    return torch.cat(chunks).numpy()


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, batch=32, batch_help="frames per forward pass")
    parser.add_argument("--fps", type=float, default=DEFAULT_FPS, help="frames sampled per second; 0 = every frame")
    args = parser.parse_args(argv)
    clips, ignored = check_args(args)
    device = choose_device(args.device)
    model, transform = build_model(args.model, not args.no_pretrained, device)
    settings = {"kind": "video", "model": args.model, "pretrained": not args.no_pretrained, "fps": args.fps}

    embed = per_clip(lambda path: aggregate(frame_embeddings(model, transform, path, args.fps, args.batch, device)))
    return run_extraction(clips, args.out, settings, embed, group=1, allow_failures=args.allow_failures,
                          ignored=ignored)


if __name__ == "__main__":
    main()
