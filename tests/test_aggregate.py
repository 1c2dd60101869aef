"""The aggregate importer: per-clip [T, D] time series -> mean, std, 10/25/50/75/90th percentiles, 7 x D."""
import numpy as np

from conftest import run_cli
from src import data
from src.features.aggregate import aggregate


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
