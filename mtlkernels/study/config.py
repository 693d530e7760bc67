"""Configuration of the paper study and its presets."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

__all__ = ["StudyConfig", "PRESETS", "make_config", "CHECKPOINT_KEYS"]


@dataclass
class StudyConfig:
    # model
    model: str = "vgg16"
    width: float = 0.125
    bn: bool = True
    pools: int = 4
    head_channels: Optional[int] = 16
    rates: List[int] = field(default_factory=lambda: [1, 2, 3])
    merge: str = "sum"
    # data
    dataset: str = "procedural"
    data_root: Optional[str] = None
    data_cache: Optional[str] = None  # default: <out>/data
    n_train: int = 1500
    n_val: int = 0  # the study evaluates on test and selects nothing; >0 renders a val split too
    n_test: int = 300
    image_size: int = 64
    # baseline training (also the budget of every re-initialised retraining)
    train_steps: int = 600
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    flip: bool = True
    # pruning
    criteria: List[str] = field(default_factory=lambda: ["taylor", "cosine"])
    levels: List[float] = field(default_factory=lambda: [0.5, 0.75, 0.9, 0.95])
    prune_every: int = 5      # training steps (score accumulation) between two prune events
    prune_amount: int = 25    # filters (channel groups) removed per prune event
    level_ft_steps: int = 40  # fine-tuning steps after reaching each level, before evaluating it
    prune_lr: float = 5e-4
    min_channels: int = 2
    ranking: str = "global"
    strategies: List[str] = field(default_factory=lambda: ["iterative", "reinit"])
    # evaluation
    eval_batch: int = 100
    latency_batch: int = 1
    latency_repeats: int = 20
    # misc
    seed: int = 0
    device: str = "cpu"
    ckpt_every: int = 100
    preset: str = "demo"

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "StudyConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def model_kwargs(self, num_classes: int) -> Dict[str, Any]:
        kw: Dict[str, Any] = dict(tasks={"seg": num_classes, "depth": 1, "normal": 3}, width=self.width,
                                  head_channels=self.head_channels, rates=list(self.rates), merge=self.merge)
        if self.model == "vgg16":
            kw.update(bn=self.bn, pools=self.pools)
        return kw


#: Fields that identify the checkpoints in an output directory: a resumed run must agree on them.
CHECKPOINT_KEYS = (
    "model", "width", "bn", "pools", "head_channels", "rates", "merge", "dataset", "data_root",
    "n_train", "image_size", "train_steps", "batch_size", "lr", "weight_decay", "flip", "levels",
    "prune_every", "prune_amount", "level_ft_steps", "prune_lr", "min_channels", "ranking", "seed",
)

PRESETS: Dict[str, Dict[str, Any]] = {
    # a few minutes on a 2-core CPU: 1/8-width VGG16, procedural 64x64 scenes
    "demo": {},
    # the paper's scale: full-width VGG16 (DeepLab-LargeFOV: output stride 8), NYUv2, 100 filters
    # every 500 iterations, at least 5 filters kept per layer
    "paper": dict(
        width=1.0, pools=3, head_channels=256, rates=[6, 12, 18, 24], dataset="nyuv2", n_train=0,
        n_val=0, n_test=0, image_size=0, train_steps=20000, batch_size=8, lr=1e-4, prune_every=500,
        prune_amount=100, level_ft_steps=2000, prune_lr=1e-4, min_channels=5, ckpt_every=500,
        levels=[0.25, 0.5, 0.75, 0.9, 0.95], eval_batch=8, latency_batch=1, latency_repeats=20,
        device="cuda",
    ),
}


def make_config(preset: str = "demo", **overrides) -> StudyConfig:
    """The preset's config with ``overrides`` (``None`` values are ignored)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    d = StudyConfig().to_dict()
    d.update(PRESETS[preset])
    d["preset"] = preset
    for k, v in overrides.items():
        if v is None:
            continue
        if k not in d:
            raise ValueError(f"unknown study setting {k!r}")
        d[k] = v
    return StudyConfig.from_dict(d)


def check_resumable(cfg: StudyConfig, out: Path) -> None:
    """Write ``out/config.json`` or, if it exists, check the checkpoint-defining settings agree."""
    path = out / "config.json"
    if path.exists():
        old = json.loads(path.read_text())
        diff = [k for k in CHECKPOINT_KEYS if k in old and old[k] != getattr(cfg, k)]
        if diff:
            lines = ", ".join(f"{k}: saved {old[k]!r} vs now {getattr(cfg, k)!r}" for k in diff)
            raise SystemExit(
                f"error: {out} holds a run with other settings ({lines}); use another --out, or the "
                f"same settings to resume it")
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("config.json.tmp")
    tmp.write_text(json.dumps(cfg.to_dict(), indent=1))
    tmp.replace(path)
