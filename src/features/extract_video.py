"""Raw clips -> one video feature vector per clip, from any timm image backbone applied frame by frame.

    python -m src.features.extract_video --videos DIR --model NAME --out input/<name>/features/<enc>.npz
        [--fps 5] [--batch 32] [--device auto] [--no-pretrained] [--allow-failures]
Frames are sampled at --fps, preprocessed with the model's own timm data config, embedded without the
classifier, and aggregated over time like the organisers' features (mean, std, 5 percentiles -> 7 x D).
"""
from __future__ import annotations

import argparse
import difflib

import numpy as np
import timm
import torch
from timm.data import create_transform, resolve_model_data_config

from src.errors import UserError, cli
from src.features.aggregate import aggregate
from src.features.extract_common import (DEFAULT_FPS, WEIGHT_SEED, add_common_args, check_args,
                                         choose_device, per_clip, read_frames, run_extraction)


def build_model(name: str, pretrained: bool, device: torch.device):
    """(backbone without classifier, eval mode, on device; its test-time transform)."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=3)
        raise UserError(f"--model {name}: not a timm model" + (f" (close: {', '.join(close)})" if close else ""))
    torch.manual_seed(WEIGHT_SEED)
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0)
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
    clips = check_args(args)
    device = choose_device(args.device)
    model, transform = build_model(args.model, not args.no_pretrained, device)
    settings = {"kind": "video", "model": args.model, "pretrained": not args.no_pretrained, "fps": args.fps}

    embed = per_clip(lambda path: aggregate(frame_embeddings(model, transform, path, args.fps, args.batch, device)))
    return run_extraction(clips, args.out, settings, embed, group=1, allow_failures=args.allow_failures)


if __name__ == "__main__":
    main()
