"""Training, evaluation, latency and checkpoint helpers of the study."""
from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import torch
from torch import nn

from . import metrics as M
from .data import MultiTaskDataset, build_dataset
from .models import build_model
from .config import StudyConfig

__all__ = [
    "fault_point", "load_datasets", "constructor", "batch_at",
    "train_steps", "evaluate", "latency_ms", "backbone_filters", "make_optimizer", "head_conv_names",
]


_FAULT_HITS: Dict[str, int] = {}


def fault_point(name: str) -> None:
    """Test hook at a boundary between two writes: ``MTLKERNELS_STUDY_FAULT=name[:n]`` SIGKILLs the process
    the n-th time (default: first) it passes ``name``, as a power cut or ``kill -9`` would. (The
    points inside one atomic write are ``mtlkernels.pruning.io``'s ``MTLKERNELS_FAULT``.)"""
    spec = os.environ.get("MTLKERNELS_STUDY_FAULT")
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target == name:
        _FAULT_HITS[name] = _FAULT_HITS.get(name, 0) + 1
        if _FAULT_HITS[name] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)


def load_datasets(cfg: StudyConfig, out: Path, progress: bool = True) -> Dict[str, MultiTaskDataset]:
    cache = cfg.data_cache or str(out / "data")
    ds = {}
    for split, n in (("train", cfg.n_train), ("val", cfg.n_val), ("test", cfg.n_test)):
        if n <= 0 and (cfg.dataset == "procedural" or split == "val"):
            continue  # (NYUv2 has no separate val split in the usual layout: test reads val/)
        ds[split] = build_dataset(cfg.dataset, split, n=n, size=cfg.image_size, seed=cfg.seed,
                                  root=cfg.data_root, cache_dir=cache, progress=progress, classes=cfg.nyu_classes)
    return ds


def constructor(cfg: StudyConfig, num_classes: int) -> Callable[[], nn.Module]:
    """Zero-argument constructor of the unpruned model (for ``load_pruned`` / ``resume``)."""
    kw = cfg.model_kwargs(num_classes)

    def make() -> nn.Module:
        return build_model(cfg.model, **kw)

    return make


def head_conv_names(model: nn.Module) -> list:
    """Every conv of the task heads: the study prunes the shared backbone only (as the paper)."""
    return [n for n, m in model.named_modules() if n.startswith("heads.") and isinstance(m, nn.Conv2d)]


def backbone_filters(model: nn.Module) -> int:
    """Output channels of the backbone's convs (the filters the pruning targets count)."""
    return sum(m.out_channels for n, m in model.named_modules()
               if n.startswith("backbone.") and isinstance(m, nn.Conv2d))


def make_optimizer(params, lr: float, weight_decay: float, kind: str = "adam") -> torch.optim.Optimizer:
    """Adam with L2 weight decay (the study's default), or AdamW (decoupled; the authors' between prunes)."""
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def batch_at(ds: MultiTaskDataset, step: int, batch_size: int, seed: int, stream: int,
             flip: bool, device) -> Dict[str, torch.Tensor]:
    """The minibatch of training step ``step``: a pure function of (seed, stream, step), so a resumed
    run sees exactly the batches an uninterrupted one would. Seeds the global RNG from the same triple
    too: the step's dropout masks are then the same after a resume (the RNG state is not checkpointed)."""
    key = (seed * 1000003 + stream * 7919 + step) % (2 ** 62)
    torch.manual_seed(key ^ 0x5DEECE66D)
    g = torch.Generator().manual_seed(key)
    idx = torch.randint(0, len(ds), (batch_size,), generator=g)
    b = ds.get(idx)
    if flip:
        m = torch.rand(batch_size, generator=g) < 0.5
        if m.any():
            for k in ("image", "seg", "depth", "normal"):
                b[k][m] = b[k][m].flip(-1)
            b["normal"][m, 0] = -b["normal"][m, 0]
    return {k: v.to(device, non_blocking=True) for k, v in b.items()}


def cosine_lr(base: float, step: int, total: int, floor: float = 0.05) -> float:
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1))))


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, ds: MultiTaskDataset, cfg: StudyConfig, *,
                start: int, stop: int, total: int, stream: int, base_lr: float, schedule: str = "cosine",
                on_checkpoint: Optional[Callable[[int, Dict[str, list]], None]] = None, desc: str = "train",
                progress: bool = True, recent: Optional[Dict[str, list]] = None) -> Dict[str, float]:
    """Train steps ``start..stop-1`` (of a run of ``total``) with the summed task losses.

    Calls ``on_checkpoint(step, recent)`` every ``cfg.ckpt_every`` steps and at the end, ``recent``
    being the task losses of the last 50 steps; a resumed run passes the saved ``recent`` back, so
    it returns the means an uninterrupted run would (``{}`` only when no step ever ran).
    """
    from tqdm import tqdm

    model.train()
    recent = {t: list(v) for t, v in (recent or {}).items()}
    bar = tqdm(range(start, stop), desc=desc, unit="step", leave=False, disable=not progress,
               initial=0, total=stop - start, dynamic_ncols=True)
    for step in bar:
        lr = cosine_lr(base_lr, step, total) if schedule == "cosine" else base_lr
        for grp in opt.param_groups:
            grp["lr"] = lr
        b = batch_at(ds, step, cfg.batch_size, cfg.seed, stream, cfg.flip, cfg.device)
        losses = M.task_losses(model(b["image"]), b)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for t, v in losses.items():
            recent.setdefault(t, []).append(v.item())
            recent[t] = recent[t][-50:]
        if progress and step % 10 == 0:
            bar.set_postfix({t: f"{sum(v) / len(v):.3f}" for t, v in recent.items()})
        if on_checkpoint is not None and ((step + 1) % cfg.ckpt_every == 0 and step + 1 < stop):
            on_checkpoint(step + 1, recent)
    if on_checkpoint is not None and stop > start:  # (start == stop: resumed from this very checkpoint)
        on_checkpoint(stop, recent)
    return {t: sum(v) / len(v) for t, v in recent.items()}


@torch.no_grad()
def evaluate(model: nn.Module, ds: MultiTaskDataset, cfg: StudyConfig, *, progress: bool = True,
             desc: str = "eval", outputs_fn: Optional[Callable] = None) -> Dict[str, Dict[str, float]]:
    """Per-task metrics on ``ds`` (model in eval mode). ``outputs_fn(batch)`` replaces the model
    (used for the trivial predictors)."""
    from tqdm import tqdm

    was = model.training if model is not None else False
    if model is not None:
        model.eval()
    ev = M.Evaluator(["seg", "depth", "normal"], ds.num_classes)
    n = len(ds)
    for a in tqdm(range(0, n, cfg.eval_batch), desc=desc, unit="batch", leave=False, disable=not progress):
        b = {k: v.to(cfg.device) for k, v in ds.get(slice(a, a + cfg.eval_batch)).items()}
        out = outputs_fn(b) if outputs_fn is not None else model(b["image"])
        ev.update({k: v.float() for k, v in out.items()}, b)
    if model is not None:
        model.train(was)
    return ev.compute()


@torch.no_grad()
def latency_ms(model: nn.Module, example: torch.Tensor, repeats: int = 10, warmup: int = 3) -> float:
    """Median wall time (ms) of one forward of ``example`` (eval mode, no grad, device synced)."""
    was = model.training
    model.eval()
    dev = example.device
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        model(example)
    sync()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        model(example)
        sync()
        times.append(time.perf_counter() - t0)
    model.train(was)
    times.sort()
    return 1000.0 * times[len(times) // 2]
