"""Raw clips -> one audio feature vector per clip, from a self-supervised speech model (WavLM, HuBERT, wav2vec 2.0).

    python -m src.features.extract_audio --videos DIR --model NAME --out input/<name>/features/<enc>.npz
        [--layer L | --layers A-B] [--batch 8] [--device auto] [--no-pretrained] [--allow-failures]
NAME is a Hugging Face model id (microsoft/wavlm-large) or a local folder with its config.json; a model id
in the local cache loads without the network, one that is not fails at once when the hub cannot be reached.
The audio track is resampled to 16 kHz and its channels averaged; the hidden states of one layer (or the mean
over a layer range) are aggregated over time like the organisers' features (mean, std, 5 percentiles -> 7 x D).
Layer 0 is the transformer's input, layer i the output of transformer block i. The default is the middle
block: on these non-verbal vocalisations participants found middle, prosody-carrying layers better than
the last.
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, Wav2Vec2FeatureExtractor

from src.errors import UserError, cli
from src.features.aggregate import aggregate
from src.features.extract_common import (SAMPLE_RATE, WEIGHT_SEED, add_common_args, check_args, choose_device,
                                         hub_cached, hub_constants, hub_fix, per_clip, read_audio, require_download,
                                         run_extraction)

# The files transformers loads weights from, any one of which (with config.json) makes a cached model usable.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def model_source(name: str, pretrained: bool) -> str:
    """What transformers loads `name` from: a local folder as given; for a model id, its snapshot folder in
    the local cache when that holds config.json (and weights, when pretrained), so that no request is made;
    otherwise the id, after a UserError at once when the hub cannot be reached now."""
    if Path(name).is_dir():
        return name
    config = hub_cached(name, ["config.json"])
    if config and (not pretrained or hub_cached(name, WEIGHT_FILES)):
        return str(Path(config).parent)
    require_download(f"--model {name}", hub_constants.ENDPOINT, hub_fix(name) + ", or pass a local folder")
    return name


def load_config(name: str, pretrained: bool = False):
    """The model's config, read before the weights so that bad arguments fail fast."""
    if name.startswith((".", "/")) and not Path(name).is_dir():
        raise UserError(f"--model {name}: folder not found (expected a model id or a folder with config.json)")
    try:
        return AutoConfig.from_pretrained(model_source(name, pretrained))
    except (OSError, ValueError) as err:
        raise UserError(f"--model {name}: no such model or config ({str(err).splitlines()[0]})") from None


def build_model(name: str, pretrained: bool, device: torch.device):
    """(model in eval mode on device, its feature extractor)."""
    config = load_config(name, pretrained)
    source = model_source(name, pretrained)
    torch.manual_seed(WEIGHT_SEED)
    try:
        model = AutoModel.from_pretrained(source) if pretrained else AutoModel.from_config(config)
    except (OSError, ValueError) as err:
        raise UserError(f"--model {name}: cannot load weights ({str(err).splitlines()[0]}); "
                        f"--no-pretrained uses random weights") from None
    if model.main_input_name != "input_values":
        raise UserError(f"--model {name}: a '{config.model_type}' model, not a speech model taking raw audio")
    try:
        extractor = AutoFeatureExtractor.from_pretrained(source)
    except (OSError, ValueError):
        # A bare config (tests, --no-pretrained from a folder) has no preprocessor file. Per-clip
        # normalisation is what the large models expect; models with group-norm convolutions cannot use
        # an attention mask, the others should.
        extractor = Wav2Vec2FeatureExtractor(
            do_normalize=True, return_attention_mask=getattr(config, "feat_extract_norm", "layer") == "layer")
    return model.eval().to(device), extractor


def parse_layers(args, n_layers: int) -> tuple[int, int]:
    """--layer L / --layers A-B / default middle -> inclusive (first, last) index into hidden_states."""
    if args.layer is not None and args.layers is not None:
        raise UserError("give --layer or --layers, not both")
    if args.layers is not None:
        try:
            first, last = (int(x) for x in args.layers.split("-"))
        except ValueError:
            raise UserError(f"--layers {args.layers}: expected A-B, e.g. 8-16") from None
    else:
        first = last = n_layers // 2 if args.layer is None else args.layer
    if not 0 <= first <= last <= n_layers:
        which = f"--layer {first}" if args.layers is None else f"--layers {args.layers}"
        raise UserError(f"{which}: this model has layers 0..{n_layers}")
    return first, last


def n_frames(n_samples: int, config) -> int:
    """Frames the convolutional front end makes from n_samples (each conv: floor((L - k) / s) + 1)."""
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        n_samples = (n_samples - kernel) // stride + 1
    return n_samples


@torch.inference_mode()
def hidden_states(model, extractor, waves: list[np.ndarray], layers: tuple[int, int],
                  device: torch.device) -> list[np.ndarray]:
    """One float32 [T_i, D] per wave: the chosen layers' hidden states (averaged), padding frames cut off."""
    inputs = extractor(waves, sampling_rate=SAMPLE_RATE, padding=True, return_tensors="pt")
    inputs = {k: v.to(device) for k, v in inputs.items()}
    with warnings.catch_warnings():
        # WavLM hands torch a bool padding mask next to a float position bias; torch warns about the mix on
        # every call yet computes the right thing (a batch gives what one clip at a time gives; tested).
        warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask")
        out = model(**inputs, output_hidden_states=True)
    states = torch.stack(out.hidden_states[layers[0]:layers[1] + 1]).mean(0).float().cpu().numpy()
    return [states[i, :n_frames(len(w), model.config)] for i, w in enumerate(waves)]


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, batch=8, batch_help="clips per forward pass (padded to the longest)")
    parser.add_argument("--layer", type=int, help="one layer (default: the middle one)")
    parser.add_argument("--layers", help="mean over an inclusive layer range, e.g. 8-16")
    args = parser.parse_args(argv)
    clips, ignored = check_args(args)
    device = choose_device(args.device)
    layers = parse_layers(args, load_config(args.model, not args.no_pretrained).num_hidden_layers)
    model, extractor = build_model(args.model, not args.no_pretrained, device)
    # Without an attention mask the padding would leak into the group-norm statistics and a clip's
    # features would depend on its batch neighbours, so such models see one clip at a time.
    batch = args.batch if extractor.return_attention_mask else 1
    settings = {"kind": "audio", "model": args.model, "pretrained": not args.no_pretrained,
                "layers": list(layers), "sample_rate": SAMPLE_RATE, "downmix": "mean"}

    def embed(paths):
        waves, failures = per_clip(read_audio)(paths)
        if not waves:
            return {}, failures
        states = hidden_states(model, extractor, list(waves.values()), layers, device)
        return {name: aggregate(s) for name, s in zip(waves, states)}, failures

    return run_extraction(clips, args.out, settings, embed, group=batch, allow_failures=args.allow_failures,
                          ignored=ignored)


if __name__ == "__main__":
    main()
