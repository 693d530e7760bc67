"""Multi-task datasets: segmentation + depth + surface normals.

* :class:`ProceduralScenes` -- the embedded default: ray-cast indoor-like scenes with exact ground
  truth (see :mod:`mtlkernels.study.data.procedural`), deterministic per seed, cached on disk.
* :class:`NYUv2` -- the widely used preprocessed NYUv2 layout (``<root>/<split>/{image,label,depth,
  normal}/<i>.npy``, 13 classes).

Both hold whole splits as tensors and give batches as dicts with keys ``image`` (float
``[N,3,H,W]``, normalised), ``seg`` (long ``[N,H,W]``, ``255`` = ignore), ``depth`` (float
``[N,1,H,W]``, ``0`` = invalid) and ``normal`` (float ``[N,3,H,W]``, unit; ``0`` = invalid).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from .procedural import CLASSES as PROCEDURAL_CLASSES
from .procedural import render_split

__all__ = [
    "MultiTaskDataset",
    "ProceduralScenes",
    "NYUv2",
    "NYU_CLASSES",
    "PROCEDURAL_CLASSES",
    "IGNORE_INDEX",
    "default_cache_dir",
    "batches",
    "build_dataset",
    "save_sample_grid",
]

IGNORE_INDEX = 255
NYU_CLASSES = 13
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def default_cache_dir() -> Path:
    """``$MTLKERNELS_CACHE`` or ``~/.cache/mtlkernels``."""
    env = os.environ.get("MTLKERNELS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mtlkernels"


class MultiTaskDataset:
    """A split held in memory as tensors; ``ds[i]`` is one sample, :func:`batches` iterates."""

    num_classes: int
    class_names: Sequence[str]

    def __init__(self, image: torch.Tensor, seg: torch.Tensor, depth: torch.Tensor, normal: torch.Tensor):
        self.image, self.seg, self.depth, self.normal = image, seg, depth, normal

    def __len__(self) -> int:
        return self.image.shape[0]

    @property
    def size(self):
        return tuple(self.image.shape[-2:])

    def get(self, idx: Union[torch.Tensor, slice, int]) -> Dict[str, torch.Tensor]:
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        img = self.image[idx]
        if img.dtype == torch.uint8:
            img = img.float() / 255.0
        return {
            "image": (img - _MEAN) / _STD,
            "seg": self.seg[idx].long(),
            "depth": self.depth[idx].float().unsqueeze(1),
            "normal": self.normal[idx].float(),
        }

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.get(int(i)).items()}

    def tasks(self) -> Dict[str, int]:
        return {"seg": self.num_classes, "depth": 1, "normal": 3}


def batches(ds: MultiTaskDataset, batch_size: int, *, shuffle: bool = False,
            generator: Optional[torch.Generator] = None, flip: bool = False,
            drop_last: bool = False) -> Iterator[Dict[str, torch.Tensor]]:
    """One epoch of batches. ``flip`` mirrors half of the samples horizontally (negating normal x)."""
    n = len(ds)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for a in range(0, n, batch_size):
        idx = order[a:a + batch_size]
        if drop_last and len(idx) < batch_size:
            break
        b = ds.get(idx)
        if flip:
            m = torch.rand(len(idx), generator=generator) < 0.5
            if m.any():
                for k in ("image", "seg", "depth", "normal"):
                    b[k][m] = b[k][m].flip(-1)
                b["normal"][m, 0] = -b["normal"][m, 0]
        yield b


class ProceduralScenes(MultiTaskDataset):
    """Ray-cast indoor scenes (7 classes: ceiling, floor, wall, picture, box, sphere, cylinder).

    Args:
        split: ``train``, ``val`` or ``test`` (disjoint seed streams).
        n: number of scenes.
        size: image side in pixels.
        seed: dataset seed; scene ``i`` of a split depends only on ``(seed, split, i)``.
        cache_dir: where the rendered split is cached as ``.npz`` (default
            :func:`default_cache_dir`); ``False`` disables caching.
    """

    class_names = PROCEDURAL_CLASSES
    num_classes = len(PROCEDURAL_CLASSES)
    VERSION = 1

    def __init__(self, split: str = "train", n: int = 1000, size: int = 64, seed: int = 0,
                 cache_dir: Union[str, Path, None, bool] = None, progress: bool = False):
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, got {split!r}")
        self.split, self.seed = split, seed
        arrays = None
        path = None
        if cache_dir is not False:
            cache = Path(cache_dir) if cache_dir not in (None, True) else default_cache_dir()
            key = json.dumps([self.VERSION, split, n, size, seed])
            path = cache / f"procedural-{split}-{n}x{size}-s{seed}-{hashlib.sha1(key.encode()).hexdigest()[:8]}.npz"
            if path.exists():
                try:
                    with np.load(path) as z:
                        arrays = {k: z[k] for k in ("image", "seg", "depth", "normal")}
                except Exception:  # corrupt cache: render again
                    arrays = None
        if arrays is None:
            arrays = render_split(seed, split, n, size, progress=progress)
            arrays["depth"] = arrays["depth"].astype(np.float16)
            arrays["normal"] = arrays["normal"].astype(np.float16)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
                np.savez(tmp, **arrays)
                os.replace(tmp, path)
        super().__init__(torch.from_numpy(arrays["image"]), torch.from_numpy(arrays["seg"]),
                         torch.from_numpy(arrays["depth"]), torch.from_numpy(arrays["normal"]))


class NYUv2(MultiTaskDataset):
    """NYUv2 in the common preprocessed layout (e.g. MTAN's ``nyuv2``)::

        <root>/train/image/0.npy   float [H,W,3] in [0,1] (or [3,H,W], or uint8)
        <root>/train/label/0.npy   [H,W] class 0..classes-1 (13 or 40), -1 (or 255) = ignore
        <root>/train/depth/0.npy   [H,W,1] or [H,W] metres, 0 = invalid
        <root>/train/normal/0.npy  [H,W,3] or [3,H,W] in [-1,1], 0 = invalid
        <root>/val/...             the same (the usual test split)

    ``split="test"`` reads ``<root>/test`` if it exists, else ``<root>/val``.
    """

    num_classes = NYU_CLASSES
    class_names = tuple(f"class{i}" for i in range(NYU_CLASSES))
    SUBDIRS = ("image", "label", "depth", "normal")

    def __init__(self, root: Union[str, Path], split: str = "train", limit: Optional[int] = None,
                 classes: int = NYU_CLASSES):
        # 13 (the usual MTAN layout) or 40 (the authors': AdaShare's NYU_v2, labels 0..39, 255 ignored)
        self.num_classes = int(classes)
        self.class_names = tuple(f"class{i}" for i in range(self.num_classes))
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"NYUv2 root {root} does not exist or is not a directory "
                                    f"(expected {root}/train/image/0.npy etc.)")
        d = root / split
        if split == "test" and not d.is_dir():
            d = root / "val"
        if not d.is_dir():
            raise FileNotFoundError(f"NYUv2 split folder {d} is missing (expected subfolders "
                                    f"{', '.join(self.SUBDIRS)} of <i>.npy files)")
        missing = [s for s in self.SUBDIRS if not (d / s).is_dir()]
        if missing:
            raise FileNotFoundError(f"NYUv2 split folder {d} lacks the subfolder(s) {', '.join(missing)} "
                                    f"(expected {', '.join(self.SUBDIRS)})")
        ids = sorted(int(p.stem) for p in (d / "image").glob("*.npy") if p.stem.isdigit())
        if not ids:
            raise FileNotFoundError(f"NYUv2: no <i>.npy files in {d / 'image'}")
        for s in self.SUBDIRS[1:]:
            lack = [i for i in ids if not (d / s / f"{i}.npy").exists()]
            if lack:
                raise FileNotFoundError(f"NYUv2: {d / s} lacks {len(lack)} file(s) present in "
                                        f"{d / 'image'}, e.g. {d / s / f'{lack[0]}.npy'}")
        if limit is not None:
            ids = ids[:limit]
        imgs, labs, deps, nors = [], [], [], []
        for i in ids:
            try:
                img = self._chw(np.load(d / "image" / f"{i}.npy"), 3, d / "image" / f"{i}.npy")
                lab = np.load(d / "label" / f"{i}.npy")
                dep = np.load(d / "depth" / f"{i}.npy")
                nor = self._chw(np.load(d / "normal" / f"{i}.npy"), 3, d / "normal" / f"{i}.npy")
            except ValueError:
                raise
            except Exception as exc:
                raise ValueError(f"NYUv2: cannot read sample {i} under {d}: {exc}") from exc
            if img.dtype == np.uint8:
                img = img.astype(np.float32) / 255.0
            lab = np.squeeze(lab)
            dep = np.squeeze(dep)
            if lab.shape != img.shape[1:] or dep.shape != img.shape[1:] or nor.shape[1:] != img.shape[1:]:
                raise ValueError(f"NYUv2: sample {i} under {d} has mismatched shapes: image {img.shape}, "
                                 f"label {lab.shape}, depth {dep.shape}, normal {nor.shape}")
            lab = lab.astype(np.int64)
            lab[(lab < 0) | (lab >= self.num_classes)] = IGNORE_INDEX
            imgs.append(img.astype(np.float32))
            labs.append(lab.astype(np.uint8))
            deps.append(dep.astype(np.float32))
            nors.append(nor.astype(np.float32))
        super().__init__(torch.from_numpy(np.stack(imgs)), torch.from_numpy(np.stack(labs)),
                         torch.from_numpy(np.stack(deps)), torch.from_numpy(np.stack(nors)))

    @staticmethod
    def _chw(a: np.ndarray, c: int, path) -> np.ndarray:
        if a.ndim == 3 and a.shape[-1] == c and a.shape[0] != c:
            return np.ascontiguousarray(a.transpose(2, 0, 1))
        if a.ndim == 3 and a.shape[0] == c:
            return a
        raise ValueError(f"NYUv2: {path} has shape {a.shape}, expected [H,W,{c}] or [{c},H,W]")


def build_dataset(name: str, split: str, *, n: int = 1000, size: int = 64, seed: int = 0,
                  root: Optional[str] = None, cache_dir=None, progress: bool = False,
                  classes: int = NYU_CLASSES) -> MultiTaskDataset:
    """``procedural`` (n scenes of ``size``) or ``nyuv2`` (from ``root``, ``classes`` 13 or 40)."""
    if name == "procedural":
        return ProceduralScenes(split, n, size, seed, cache_dir, progress=progress)
    if name == "nyuv2":
        if not root:
            raise ValueError("the nyuv2 dataset needs --data-root pointing at the preprocessed NYUv2 folder")
        return NYUv2(root, split, classes=classes)
    raise ValueError(f"unknown dataset {name!r}: choose procedural or nyuv2")


def save_sample_grid(path: Union[str, Path], n: int = 6, size: int = 96, seed: int = 0, split: str = "test") -> Path:
    """A PNG grid of ``n`` procedural scenes: RGB, semantic labels, depth, surface normals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from .procedural import split_seeds, render_scenes

    d = render_scenes(split_seeds(seed, split, n), size)
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(4, n, figsize=(1.9 * n, 8.2))
    rows = ("RGB", "semantic class", "depth (m)", "normals (camera frame)")
    for i in range(n):
        ax[0, i].imshow(d["image"][i].transpose(1, 2, 0))
        ax[1, i].imshow(d["seg"][i], cmap=cmap, vmin=0, vmax=9, interpolation="nearest")
        im = ax[2, i].imshow(d["depth"][i], cmap="magma_r", vmin=0, vmax=8)
        ax[3, i].imshow((d["normal"][i].transpose(1, 2, 0) + 1) / 2)
    for r in range(4):
        ax[r, 0].set_ylabel(rows[r], fontsize=9)
        for a in ax[r]:
            a.set_xticks([])
            a.set_yticks([])
    fig.colorbar(im, ax=ax[2, :].tolist(), fraction=0.015, pad=0.01)
    fig.legend(handles=[Patch(color=cmap(k), label=c) for k, c in enumerate(PROCEDURAL_CLASSES)],
               loc="lower center", ncol=len(PROCEDURAL_CLASSES), fontsize=8, frameon=False)
    fig.suptitle("mtlkernels procedural multi-task scenes (exact ground truth)", fontsize=11)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path
