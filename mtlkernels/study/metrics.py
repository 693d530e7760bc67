"""Losses and metrics of the paper's three tasks (NYUv2 practice), and the multi-task summary.

* Segmentation: cross-entropy (``ignore_index=255``); mIoU (mean over classes present in the
  ground truth or the prediction) and pixel accuracy.
* Depth: L1 on valid pixels (depth > 0); absolute error ``mean |p - g|`` and relative error
  ``mean |p - g| / g``.
* Normals: ``1 - cos`` between the normalised prediction and the ground truth on valid pixels
  (non-zero ground truth); mean and median angle error (degrees) and the % of pixels within
  11.25, 22.5 and 30 degrees.
* :func:`delta_m`: mean relative change against a baseline, sign-corrected so higher is better.

:class:`Evaluator` accumulates over minibatches in O(1) memory (a confusion matrix, sums, and a
0.01-degree angle histogram for the median) so it works at NYUv2 scale.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional

import torch
import torch.nn.functional as F

__all__ = [
    "IGNORE_INDEX",
    "METRICS",
    "HIGHER_IS_BETTER",
    "task_losses",
    "Evaluator",
    "delta_m",
    "trivial_predictions",
]

IGNORE_INDEX = 255
#: task -> the metrics reported for it (in order).
METRICS: Dict[str, tuple] = {
    "seg": ("miou", "pixel_acc"),
    "depth": ("abs_err", "rel_err"),
    "normal": ("mean_angle", "median_angle", "within_11.25", "within_22.5", "within_30"),
}
HIGHER_IS_BETTER = {
    "miou": True, "pixel_acc": True, "abs_err": False, "rel_err": False, "mean_angle": False,
    "median_angle": False, "within_11.25": True, "within_22.5": True, "within_30": True,
}
_HIST_BINS = 18000  # 0.01 degree


def seg_loss(pred: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(pred, seg, ignore_index=IGNORE_INDEX)


def depth_loss(pred: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    valid = (depth > 0).float()
    return ((pred - depth).abs() * valid).sum() / valid.sum().clamp_min(1.0)


def normal_loss(pred: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    valid = (normal.abs().sum(1) > 0).float()
    cos = (F.normalize(pred, dim=1) * normal).sum(1)
    return ((1 - cos) * valid).sum() / valid.sum().clamp_min(1.0)


LOSSES = {"seg": seg_loss, "depth": depth_loss, "normal": normal_loss}


def task_losses(outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``{task: loss}`` for every task in ``outputs`` (seg / depth / normal)."""
    return {t: LOSSES[t](outputs[t], batch[t]) for t in outputs}


class Evaluator:
    """Accumulate the metrics of the tasks over batches; :meth:`compute` gives ``{task: {metric: v}}``.

    Percentages (mIoU, pixel accuracy, within-x) are in %, angles in degrees, depth in metres.
    ``loss`` of every task is the mean per-batch loss (weighted by batch size).
    """

    def __init__(self, tasks, num_classes: int):
        self.tasks = list(tasks)
        self.num_classes = num_classes
        self.conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.sums: Dict[str, float] = {}
        self.hist = torch.zeros(_HIST_BINS, dtype=torch.int64)
        self.n = 0

    def _add(self, k: str, v: float) -> None:
        self.sums[k] = self.sums.get(k, 0.0) + float(v)

    @torch.no_grad()
    def update(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> None:
        bs = next(iter(outputs.values())).shape[0]
        self.n += bs
        for t, l in task_losses(outputs, batch).items():
            self._add(f"{t}/loss", l.item() * bs)
        if "seg" in outputs:
            g = batch["seg"].reshape(-1)
            p = outputs["seg"].argmax(1).reshape(-1)
            m = g != IGNORE_INDEX
            k = self.num_classes
            self.conf += torch.bincount(g[m] * k + p[m], minlength=k * k).reshape(k, k).cpu()
        if "depth" in outputs:
            g, p = batch["depth"], outputs["depth"]
            m = g > 0
            err = (p - g).abs()[m]
            self._add("depth/n", m.sum().item())
            self._add("depth/abs", err.sum().item())
            self._add("depth/rel", (err / g[m]).sum().item())
        if "normal" in outputs:
            g, p = batch["normal"], F.normalize(outputs["normal"], dim=1)
            m = g.abs().sum(1) > 0
            cos = (p * g).sum(1)[m].clamp(-1, 1)
            ang = torch.rad2deg(torch.acos(cos)).double()
            self._add("normal/n", ang.numel())
            self._add("normal/sum", ang.sum().item())
            self._add("normal/11.25", (ang < 11.25).sum().item())
            self._add("normal/22.5", (ang < 22.5).sum().item())
            self._add("normal/30", (ang < 30).sum().item())
            idx = (ang * 100).long().clamp(0, _HIST_BINS - 1)
            self.hist += torch.bincount(idx.cpu(), minlength=_HIST_BINS)

    def compute(self) -> Dict[str, Dict[str, float]]:
        out: Dict[str, Dict[str, float]] = {}
        s = self.sums
        nb = max(self.n, 1)
        for t in self.tasks:
            out[t] = {"loss": s.get(f"{t}/loss", math.nan) / nb}
        if "seg" in self.tasks:
            c = self.conf.double()
            inter = c.diag()
            union = c.sum(0) + c.sum(1) - inter
            present = union > 0
            iou = inter[present] / union[present]
            out["seg"]["miou"] = 100 * iou.mean().item() if present.any() else math.nan
            out["seg"]["pixel_acc"] = 100 * (inter.sum() / c.sum().clamp_min(1)).item()
        if "depth" in self.tasks:
            n = max(s.get("depth/n", 0.0), 1.0)
            out["depth"]["abs_err"] = s.get("depth/abs", math.nan) / n
            out["depth"]["rel_err"] = s.get("depth/rel", math.nan) / n
        if "normal" in self.tasks:
            n = max(s.get("normal/n", 0.0), 1.0)
            out["normal"]["mean_angle"] = s.get("normal/sum", math.nan) / n
            cum = torch.cumsum(self.hist, 0)
            total = cum[-1].item()
            med = (torch.searchsorted(cum, torch.tensor([(total + 1) // 2])).item() + 0.5) / 100 if total else math.nan
            out["normal"]["median_angle"] = med
            for th in ("11.25", "22.5", "30"):
                out["normal"][f"within_{th}"] = 100 * s.get(f"normal/{th}", math.nan) / n
        return out


def delta_m(metrics: Mapping[str, Mapping[str, float]], baseline: Mapping[str, Mapping[str, float]]) -> Dict[str, float]:
    """Multi-task summary: mean relative change (%) against the baseline, sign-corrected.

    For each metric ``m`` of :data:`METRICS` present in both: ``s * (m - b) / |b|`` with
    ``s = +1`` if higher is better else ``-1``, so a positive value is an improvement. Returns the
    mean per task (``"seg"``, ...) and ``"all"``: the mean of the task means (each task weighs
    the same, however many metrics it has).
    """
    res: Dict[str, float] = {}
    for t, names in METRICS.items():
        if t not in metrics or t not in baseline:
            continue
        vals = []
        for m in names:
            if m in metrics[t] and m in baseline[t] and baseline[t][m] not in (0, None):
                b, v = baseline[t][m], metrics[t][m]
                if b is None or v is None or math.isnan(b) or math.isnan(v):
                    continue
                sgn = 1.0 if HIGHER_IS_BETTER[m] else -1.0
                vals.append(100.0 * sgn * (v - b) / abs(b))
        if vals:
            res[t] = sum(vals) / len(vals)
    res["all"] = sum(res.values()) / len(res) if res else math.nan
    return res


@torch.no_grad()
def trivial_predictions(train_ds, num_classes: int, max_samples: int = 2000) -> Dict[str, torch.Tensor]:
    """Statistics of the trivial predictors from the training set: the majority class, the mean
    valid depth and the mean (renormalised) valid normal. Returns ``{"seg": class id, "depth":
    metres, "normal": [3]}``."""
    n = min(len(train_ds), max_samples)
    b = train_ds.get(slice(0, n))
    seg = b["seg"].reshape(-1)
    seg = seg[seg != IGNORE_INDEX]
    counts = torch.bincount(seg, minlength=num_classes)
    d = b["depth"]
    nm = b["normal"]
    valid = nm.abs().sum(1, keepdim=True) > 0
    mean_n = (nm * valid).sum((0, 2, 3))
    return {"seg": counts.argmax(), "depth": d[d > 0].mean(), "normal": F.normalize(mean_n, dim=0)}


def trivial_outputs(stats: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor], num_classes: int,
                    tasks=("seg", "depth", "normal")) -> Dict[str, torch.Tensor]:
    """Outputs of the trivial predictors for a batch (logits one-hot on the majority class)."""
    n, _, h, w = batch["image"].shape
    out: Dict[str, torch.Tensor] = {}
    if "seg" in tasks:
        logits = torch.zeros(n, num_classes, h, w)
        logits[:, int(stats["seg"])] = 10.0
        out["seg"] = logits
    if "depth" in tasks:
        out["depth"] = torch.full((n, 1, h, w), float(stats["depth"]))
    if "normal" in tasks:
        out["normal"] = stats["normal"].view(1, 3, 1, 1).expand(n, 3, h, w).clone()
    return out


def format_metrics(m: Mapping[str, Mapping[str, float]], tasks: Optional[list] = None) -> str:
    """One line: ``seg mIoU 61.2 acc 85.0 | depth abs 0.31 rel 0.11 | normal mean 17.1 ...``."""
    short = {"miou": "mIoU", "pixel_acc": "acc", "abs_err": "abs", "rel_err": "rel", "mean_angle": "mean",
             "median_angle": "med", "within_11.25": "<11.25", "within_22.5": "<22.5", "within_30": "<30"}
    parts = []
    for t in tasks or [t for t in METRICS if t in m]:
        if t not in m:
            continue
        vals = " ".join(f"{short[k]} {m[t][k]:.3g}" for k in METRICS[t] if k in m[t])
        parts.append(f"{t} {vals}")
    return " | ".join(parts)
