"""Procedural scenes (determinism, ground truth consistency, cache) and the NYUv2 loader."""
import numpy as np
import pytest
import torch

from mtlkernels.study.data import NYUv2, ProceduralScenes, batches, build_dataset
from mtlkernels.study.data.procedural import CLASSES, render_scenes, split_seeds


def test_render_shapes_and_ground_truth():
    seeds = split_seeds(0, "train", 6)
    d = render_scenes(seeds, 32)
    assert d["image"].shape == (6, 3, 32, 32) and d["image"].dtype == np.uint8
    assert d["seg"].shape == (6, 32, 32) and d["seg"].max() < len(CLASSES)
    assert d["depth"].shape == (6, 32, 32) and (d["depth"] > 0).all() and np.isfinite(d["depth"]).all()
    n = d["normal"]
    assert n.shape == (6, 3, 32, 32)
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-4)
    # visible surfaces face the camera: n . ray < 0 (camera frame: x right, y up, z towards the viewer)
    f = 1 / np.tan(d["fov"] / 2)
    lin = (np.arange(32) + 0.5) / 32 * 2 - 1
    u, v = np.meshgrid(lin, -lin)
    dot = n[:, 0] * u + n[:, 1] * v - n[:, 2] * f[:, None, None]
    assert (dot < 1e-4).all()
    # the floor's normal is the camera-frame "up" rotated by the pitch: its y component is positive
    floor = d["seg"] == CLASSES.index("floor")
    assert floor.any() and (n[:, 1][floor] > 0).all()
    # at least floor, wall and one object class appear across a few scenes
    assert len(np.unique(d["seg"])) >= 4


def test_deterministic_per_seed_and_batch_independent():
    seeds = split_seeds(3, "val", 4)
    a = render_scenes(seeds, 24)
    b = render_scenes(seeds[2:], 24)
    for k in a:
        np.testing.assert_array_equal(a[k][2:], b[k])
    assert not np.array_equal(render_scenes(split_seeds(4, "val", 1), 24)["image"], a["image"][:1])
    # splits are disjoint streams
    assert not set(split_seeds(0, "train", 50)) & set(split_seeds(0, "test", 50))


def test_dataset_cache_and_batches(tmp_path):
    ds = ProceduralScenes("test", 10, 16, seed=1, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1
    ds2 = ProceduralScenes("test", 10, 16, seed=1, cache_dir=tmp_path)
    assert torch.equal(ds.image, ds2.image) and torch.equal(ds.depth, ds2.depth)
    s = ds[0]
    assert s["image"].shape == (3, 16, 16) and s["seg"].dtype == torch.long
    assert s["depth"].shape == (1, 16, 16) and s["normal"].shape == (3, 16, 16)
    bs = list(batches(ds, 4, shuffle=True, generator=torch.Generator().manual_seed(0), flip=True))
    assert [len(b["image"]) for b in bs] == [4, 4, 2]
    assert ds.tasks() == {"seg": 7, "depth": 1, "normal": 3}
    with pytest.raises(ValueError):
        ProceduralScenes("dev", 2, 16, cache_dir=False)


def _write_nyu(root, split, n=3, h=6, w=8, chw=False):
    rng = np.random.default_rng(0)
    for sub in ("image", "label", "depth", "normal"):
        (root / split / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = rng.random((h, w, 3)).astype(np.float32)
        lab = rng.integers(-1, 13, (h, w)).astype(np.float32)
        dep = (rng.random((h, w, 1)) * 5).astype(np.float32)
        nor = rng.normal(size=(h, w, 3)).astype(np.float32)
        nor /= np.linalg.norm(nor, axis=-1, keepdims=True)
        if chw:
            img, nor = img.transpose(2, 0, 1), nor.transpose(2, 0, 1)
        np.save(root / split / "image" / f"{i}.npy", img)
        np.save(root / split / "label" / f"{i}.npy", lab)
        np.save(root / split / "depth" / f"{i}.npy", dep)
        np.save(root / split / "normal" / f"{i}.npy", nor)


def test_nyuv2_fixture(tmp_path):
    _write_nyu(tmp_path, "train", 3)
    _write_nyu(tmp_path, "val", 2, chw=True)
    tr = NYUv2(tmp_path, "train")
    assert len(tr) == 3 and tr.num_classes == 13
    s = tr[1]
    assert s["image"].shape == (3, 6, 8) and s["depth"].shape == (1, 6, 8) and s["normal"].shape == (3, 6, 8)
    lab = np.load(tmp_path / "train" / "label" / "1.npy")
    assert ((s["seg"] == 255) == torch.from_numpy(lab < 0)).all()
    te = build_dataset("nyuv2", "test", root=str(tmp_path))  # no test/: falls back to val/
    assert len(te) == 2 and te.image.shape[1:] == (3, 6, 8)


def test_nyuv2_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        NYUv2(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="train"):
        NYUv2(tmp_path, "train")
    _write_nyu(tmp_path, "train", 2)
    for f in (tmp_path / "train" / "normal").iterdir():
        f.unlink()
    (tmp_path / "train" / "normal").rmdir()
    with pytest.raises(FileNotFoundError, match="normal"):
        NYUv2(tmp_path, "train")
    _write_nyu(tmp_path, "train", 2)
    (tmp_path / "train" / "depth" / "1.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"depth.*1\.npy"):
        NYUv2(tmp_path, "train")
    _write_nyu(tmp_path, "train", 2)
    np.save(tmp_path / "train" / "depth" / "0.npy", np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="mismatched shapes"):
        NYUv2(tmp_path, "train")
    with pytest.raises(ValueError, match="data-root"):
        build_dataset("nyuv2", "train")


def test_nyuv2_40_classes(tmp_path):
    """The authors' 40-class labels: 0..39 kept, 40+ and 255 ignored; 13 keeps the MTAN layout's rule."""
    from mtlkernels.study.data import IGNORE_INDEX

    _write_nyu(tmp_path, "train", 1, h=4, w=4)
    lab = np.array([[0, 12, 13, 39], [40, 255, -1, 5], [1, 2, 3, 4], [6, 7, 8, 9]], np.float32)
    np.save(tmp_path / "train" / "label" / "0.npy", lab)
    d40 = NYUv2(tmp_path, "train", classes=40)
    d13 = NYUv2(tmp_path, "train", classes=13)
    assert d40.num_classes == 40 and len(d40.class_names) == 40 and d13.num_classes == 13
    s40, s13 = d40.get(slice(0, 1))["seg"][0], d13.get(slice(0, 1))["seg"][0]
    assert s40[0].tolist() == [0, 12, 13, 39] and s40[1, :3].tolist() == [IGNORE_INDEX] * 3
    assert s13[0].tolist() == [0, 12, IGNORE_INDEX, IGNORE_INDEX]
    assert build_dataset("nyuv2", "train", root=str(tmp_path), classes=40).num_classes == 40


def test_paper_preset_is_the_authors_schedule():
    from mtlkernels.study import make_config

    c = make_config("paper", data_root="/x")
    assert (c.width, c.bn, c.pools, c.head, c.rates, c.init) == (1.0, False, 5, "deeplab", [1, 2, 4, 6], "kaiming")
    assert (c.prune_amount, c.prune_every, c.prune_optimizer, c.prune_lr) == (100, 500, "adamw", 5e-5)
    assert c.nyu_classes == 40 and c.dataset == "nyuv2"
