"""The aggregate importer: per-clip [T, D] time series -> mean, std, 10/25/50/75/90th percentiles, 7 x D."""
import numpy as np
import pytest

from src import data
from src.errors import UserError
from src.features.aggregate import aggregate

from conftest import run_cli


def test_aggregate_blocks_by_hand():
    series = np.array([[0.0, 10.0], [1.0, 20.0], [2.0, 30.0], [3.0, 40.0], [4.0, 50.0]])
    out = aggregate(series)
    assert out.dtype == np.float32 and out.shape == (14,)
    assert np.allclose(out[:2], [2.0, 30.0])                      # mean
    assert np.allclose(out[2:4], [np.sqrt(2.0), np.sqrt(200.0)])  # std (population)
    assert np.allclose(out[4:6], [0.4, 14.0]) and np.allclose(out[8:10], [2.0, 30.0])  # 10th, 50th


def test_importer_writes_a_file_the_dataset_loads(make_dataset, tmp_path):
    """Time series named after the clips become features/<enc>.npz that the loader accepts as an encoder."""
    root = make_dataset()
    ds = data.load(root, ["wavlm"])
    rng = np.random.default_rng(0)
    series_dir = tmp_path / "series"
    series_dir.mkdir()
    names = list(ds.train_files) + [f.replace(".mov", "") for f in ds.test_files]
    for name in names:
        np.save(series_dir / f"{name}.npy", rng.normal(size=(int(rng.integers(3, 9)), 5)))
    run_cli("src.features.aggregate", "--src", series_dir, "--out", root / "features" / "opensmile.npz")
    loaded = data.load(root, ["opensmile"])
    assert loaded.features["opensmile"].shape == (len(names), 35)
    first = np.load(series_dir / f"{ds.train_files[0]}.npy")
    np.testing.assert_allclose(loaded.features["opensmile"][0], aggregate(first), rtol=1e-6)


def test_importer_bad_input_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_cli("src.features.aggregate", "--src", tmp_path / "empty", "--out", tmp_path / "x.npz", check=False)
    assert proc.returncode == 2 and "no .npy time series" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.npz").exists()


def write_clips(folder, arrays):
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        np.save(folder / f"clip{i}.npy", a)
    return folder


def test_singleton_axes_squeezed_and_clip_vectors_stored_as_is(tmp_path):
    rng = np.random.default_rng(0)
    series = [rng.normal(size=(t, 1, 4)).astype(np.float32) for t in (3, 5)]
    run_cli("src.features.aggregate", "--src", write_clips(tmp_path / "v", series), "--out", tmp_path / "v.npz")
    with np.load(tmp_path / "v.npz") as z:
        np.testing.assert_allclose(z["X"][1], aggregate(series[1][:, 0]), rtol=1e-6)
    vectors = [rng.normal(size=6).astype(np.float32) for _ in range(2)]
    proc = run_cli("src.features.aggregate", "--src", write_clips(tmp_path / "c", vectors), "--out", tmp_path / "c.npz")
    assert "clip-level vectors stored as is" in proc.stdout
    with np.load(tmp_path / "c.npz") as z:
        assert z["X"].shape == (2, 6) and np.array_equal(z["X"][0], vectors[0])


def test_aggregate_refuses_a_1d_series():
    with pytest.raises(UserError, match="expected a \\[T, D\\] time series"):
        aggregate(np.arange(7.0))


@pytest.mark.parametrize("case,message", [
    ("mixed", "mixes 1-D and 2-D clips"),
    ("nan", "clip1.npy: 1 NaN/inf values"),
    ("empty", "clip1.npy: unreadable or corrupt array (empty file (0 bytes))"),
    ("truncated", "clip1.npy: unreadable or corrupt array"),
    ("truncated npz", "clip1.npz: unreadable or corrupt array"),
    ("out is a folder", "is a folder"),
])
def test_importer_bad_clips_are_one_line(tmp_path, case, message):
    src = write_clips(tmp_path / "s", [np.ones((3, 4), np.float32)])
    out = tmp_path / "x.npz"
    bad = src / "clip1.npy"
    if case == "mixed":
        np.save(bad, np.ones(4, np.float32))
    elif case == "nan":
        np.save(bad, np.array([[1, 2, np.nan, 4]], np.float32))
    elif case == "empty":
        bad.write_bytes(b"")
    elif case == "truncated":
        np.save(bad, np.ones((50, 4), np.float32))
        bad.write_bytes(bad.read_bytes()[:200])
    elif case == "truncated npz":
        np.savez(src / "clip1.npz", x=np.ones((50, 4), np.float32))
        (src / "clip1.npz").write_bytes((src / "clip1.npz").read_bytes()[:300])
    else:
        out = tmp_path / "folder"
        out.mkdir()
    proc = run_cli("src.features.aggregate", "--src", src, "--out", out, check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "x.npz").exists()


def test_one_frame_per_clip_is_a_clip_level_encoder(tmp_path):
    """HiCMAE-style [1, 1, D] arrays: the clip's vector, not 7 blocks of which six repeat it or are zero."""
    vectors = [np.arange(5, dtype=np.float32) + i for i in range(3)]
    src = write_clips(tmp_path / "h", [v[None, None, :] for v in vectors])
    run_cli("src.features.aggregate", "--src", src, "--out", tmp_path / "h.npz")
    with np.load(tmp_path / "h.npz") as z:
        assert z["X"].shape == (3, 5) and np.array_equal(z["X"][2], vectors[2])
