"""Pretrained models and the network: a model missing from the local cache fails at once when it cannot be
downloaded; a cached one loads without any request. The hub is a local socket, so nothing is ever downloaded."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import transformers
from huggingface_hub import constants
from safetensors.torch import save_file
from timm.data import create_transform, resolve_model_data_config

from src.features import extract_audio, extract_common, extract_video
from src.features.aggregate import aggregate
from tools.bench_extract import TINY_WAVLM, write_clip

ROOT = Path(__file__).resolve().parents[1]
CLIP = "A101_ang_int1_ver1.mov"
REVISION = "0" * 40  # a cache snapshot is named by its commit


class SilentHub:
    """A local TCP server that accepts connections and never answers: a hub behind a network that hangs.

    `refused` is an endpoint whose port has no server (a network that says no at once)."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        with socket.create_server(("127.0.0.1", 0)) as closed:
            self.refused = f"http://127.0.0.1:{closed.getsockname()[1]}"
        self.connections = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                self.connections.append(self.server.accept()[0])
            except OSError:  # closed
                return

    def close(self):
        self.server.close()
        for conn in self.connections:
            conn.close()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty model cache and a silent hub, set where huggingface_hub, transformers and timm read them."""
    silent = SilentHub()
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "ENDPOINT", silent.endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    extract_common.reachable.cache_clear()
    yield silent, cache
    extract_common.reachable.cache_clear()
    silent.close()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    write_clip(folder / CLIP, seconds=0.5)
    return folder


def run_main(main, argv) -> tuple[int, float]:
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    return exc.value.code, time.perf_counter() - start


def files_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


@pytest.mark.parametrize("kind, model, repo", [
    ("audio", "microsoft/wavlm-large", "microsoft/wavlm-large"),
    ("video", "vit_base_patch32_clip_224.openai", "timm/vit_base_patch32_clip_224.openai"),
])
@pytest.mark.parametrize("network", ["hangs", "refuses"])
def test_uncached_model_fails_at_once(kind, model, repo, network, hub, clips, tmp_path, capsys, monkeypatch):
    silent, cache = hub
    if network == "refuses":
        monkeypatch.setattr(constants, "ENDPOINT", silent.refused)
    main = extract_audio.main if kind == "audio" else extract_video.main
    code, seconds = run_main(main, ["--videos", clips, "--model", model, "--out", tmp_path / "f.npz",
                                    "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    # The hub clients alone retried for 26 s (DNS failure) to over a minute; one probe of PROBE_SECONDS decides.
    assert seconds < extract_common.PROBE_SECONDS + 3
    assert code == 2 and err.startswith(f"error: --model {model}: not in the local cache and ") and "\n" not in err
    assert ("(timed out)" if network == "hangs" else "cannot be reached") in err
    assert f"hf download {repo}" in err
    assert len(silent.connections) == (1 if network == "hangs" else 0)  # the probe, and no retry
    assert files_in(cache) == [] and not (tmp_path / "f.npz").exists()


def test_hf_hub_offline_fails_without_a_request(clips, tmp_path):
    """HF_HUB_OFFLINE=1, set as a user would: a missing model fails with no request at all."""
    silent = SilentHub()
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
               "HF_ENDPOINT": silent.endpoint, "NO_PROXY": "127.0.0.1"}
        run = subprocess.run([sys.executable, "-m", "src.features.extract_audio", "--videos", str(clips),
                              "--model", "microsoft/wavlm-large", "--out", str(tmp_path / "f.npz")],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 2, run.stderr[-2000:]
        assert run.stderr.strip() == (
            "error: --model microsoft/wavlm-large: not in the local cache and HF_HUB_OFFLINE is set; download it "
            f"once while the network works (`.venv/bin/hf download microsoft/wavlm-large` puts it in "
            f"{tmp_path / 'hf' / 'hub'}, which can also be copied from another machine), or pass a local folder")
        assert silent.connections == [] and not (tmp_path / "f.npz").exists()
    finally:
        silent.close()


def cache_snapshot(cache: Path, repo: str) -> Path:
    """The snapshot folder of repo in a Hugging Face cache, laid out as a download leaves it."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(REVISION)
    snapshot = folder / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    return snapshot


def load_x(path):
    with np.load(path) as z:
        return z["X"]


def test_cached_models_load_without_the_network(hub, clips, tmp_path):
    """Weights in the cache (seed 1, not the --no-pretrained seed) are the ones used, with no request made."""
    silent, cache = hub
    torch.manual_seed(1)
    wavlm = cache_snapshot(cache, "blemore/tiny-wavlm")
    transformers.WavLMModel(transformers.WavLMConfig(**TINY_WAVLM)).save_pretrained(wavlm)
    torch.manual_seed(1)
    vit = timm.create_model("test_vit")
    save_file(vit.state_dict(), str(cache_snapshot(cache, "timm/test_vit.r160_in1k") / "model.safetensors"))

    common = ["--videos", clips, "--device", "cpu"]
    extract_audio.main([str(a) for a in common + ["--model", "blemore/tiny-wavlm", "--out", tmp_path / "a.npz"]])
    extract_audio.main([str(a) for a in common + ["--model", wavlm, "--out", tmp_path / "a_folder.npz"]])
    extract_video.main([str(a) for a in common + ["--model", "test_vit", "--out", tmp_path / "v.npz", "--fps", 4]])
    assert silent.connections == []

    # The cached id gives what its folder gives.
    np.testing.assert_array_equal(load_x(tmp_path / "a.npz"), load_x(tmp_path / "a_folder.npz"))
    # The video vector is the saved backbone's, its classifier dropped.
    backbone = timm.create_model("test_vit", num_classes=0)
    backbone.load_state_dict({k: v for k, v in vit.state_dict().items() if not k.startswith("head.")})
    transform = create_transform(**resolve_model_data_config(backbone), is_training=False)
    frames = extract_video.frame_embeddings(backbone.eval(), transform, clips / CLIP, 4, 32, torch.device("cpu"))
    np.testing.assert_allclose(load_x(tmp_path / "v.npz")[0], aggregate(frames), rtol=1e-5, atol=1e-5)
