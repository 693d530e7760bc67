"""Configuration of the paper study and its presets."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

__all__ = ["StudyConfig", "PRESETS", "make_config", "CHECKPOINT_KEYS", "NOT_CHECKPOINT_KEYS", "RANGES", "Range",
           "StudyInputError", "check_config", "check_resumable", "flag"]


@dataclass
class StudyConfig:
    # model
    model: str = "vgg16"
    width: float = 0.125
    bn: bool = False        # the authors' VGG16 has none (--bn: the BN variant)
    pools: int = 5          # the authors' 5 stride-2 max-pools
    head: str = "deeplab"   # the authors' head: per rate 3x3 -> 1x1 -> 1x1, summed ("aspp": the compact one)
    head_channels: Optional[int] = None  # None: 1024 * width (deeplab), 128 * width (aspp)
    rates: List[int] = field(default_factory=lambda: [1, 2, 4, 6])
    merge: str = "sum"
    dropout: float = 0.5    # the deeplab head's, as the authors'
    init: str = "kaiming"   # the authors' backbone initialisation (also of every re-initialised model)
    # data
    dataset: str = "procedural"
    data_root: Optional[str] = None
    nyu_classes: int = 40   # NYUv2 segmentation classes: 40 as the authors (13: the MTAN layout)
    data_cache: Optional[str] = None  # default: <out>/data
    n_train: int = 1500
    n_val: int = 0  # the study evaluates on test and selects nothing; >0 renders a val split too
    n_test: int = 300
    image_size: int = 64
    # baseline training (also the budget of every re-initialised retraining)
    train_steps: int = 300
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    flip: bool = True
    # pruning
    criteria: List[str] = field(default_factory=lambda: ["taylor", "cosine"])
    # the floor (min_channels x 13 convs = 26 of 528 filters) is 95.1%: no level sits on it
    levels: List[float] = field(default_factory=lambda: [0.5, 0.8, 0.94])
    prune_every: int = 4      # training steps (score accumulation) between two prune events
    prune_amount: int = 13    # filters (channel groups) removed per prune event: 2.5% of 528, the authors' 2.4%
    level_ft_steps: int = 20  # fine-tuning steps after reaching each level, before evaluating it
    prune_lr: float = 5e-4
    prune_optimizer: str = "adam"  # between prunes: adam (with weight_decay) or adamw (the authors')
    prune_weight_decay: Optional[float] = None  # between prunes (None: weight_decay; AdamW's default is 0.01)
    # scores: None = mean over the steps since the last prune; m = an EMA with momentum m over those steps
    # (the authors' engine reads pruning_momentum but its cosine-engine path never uses it)
    score_momentum: Optional[float] = None
    min_channels: int = 2
    # per-criterion pruner settings over the above: {criterion: {min_channels, scope, carry_scores}}
    # (the authors' Taylor and cosine arms differ in all three: PROTOCOLS["authors"])
    criterion_settings: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    # per-task weights (seg, depth, normal) of the gradient the optimizer steps on while pruning (None:
    # the summed loss, the gradient the scores come from)
    step_weights: Optional[List[float]] = None
    ranking: str = "global"
    strategies: List[str] = field(default_factory=lambda: ["iterative", "reinit"])
    control: bool = True  # retrain the unpruned architecture from scratch too (with reinit)
    # report: finding 1's equivalence margin, in points of delta_m (criteria "alike" if the paired
    # per-seed difference is shown, by TOST at 5%, to lie within +-margin)
    equivalence_margin: float = 3.0
    # evaluation
    eval_batch: int = 100
    latency_batch: int = 1
    latency_repeats: int = 20
    # misc
    seed: int = 0
    device: str = "cpu"
    threads: Optional[int] = None  # torch intra-op CPU threads (None: as set); CPU results depend on it
    ckpt_every: int = 100
    preset: str = "demo"
    protocol: str = "study"  # "authors": PROTOCOLS["authors"] on top of the preset

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
            kw.update(bn=self.bn, pools=self.pools, head=self.head, dropout=self.dropout, init=self.init)
        return kw


class StudyInputError(ValueError):
    """A setting of the study that cannot run (out of range, inconsistent, or at odds with the
    checkpoints in ``--out``). The message starts with the command-line flag it is about."""


def flag(name: str) -> str:
    """The command-line flag of config field ``name``."""
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


_FLAGS = {"train_steps": "--steps", "levels": "--targets", "level_ft_steps": "--ft-steps", "dataset": "--data",
          "criteria": "--criterion"}


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric setting: ``kind`` (int or float), bounds, open or closed."""
    kind: type
    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a finite number"
        if self.lo is not None and self.hi is not None:
            return (f"{what} in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}"
                    f"{')' if self.hi_open else ']'}")
        if self.lo is not None:
            return f"{what} {'>' if self.lo_open else '>='} {self.lo:g}"
        return what

    def ok(self, v) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        if self.kind is int and not isinstance(v, int):
            return False
        if not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)

    def parse(self, text: str):
        """``text`` as a valid value, or ``ValueError`` naming the range (for argparse ``type=``)."""
        try:
            v = self.kind(text)
        except ValueError:
            v = None
        if v is None or not self.ok(v):
            raise ValueError(f"must be {self.describe()}, got {text!r}")
        return v


#: Valid values of every numeric setting: the CLI parses its flags with these, and
#: :func:`check_config` checks a config built in Python against them.
RANGES: Dict[str, Range] = {
    "width": Range(float, 0, lo_open=True), "pools": Range(int, 0, 5), "head_channels": Range(int, 1),
    "dropout": Range(float, 0, 1, hi_open=True), "nyu_classes": Range(int, 2),
    "score_momentum": Range(float, 0, 1, hi_open=True),
    "n_train": Range(int, 0), "n_val": Range(int, 0), "n_test": Range(int, 0), "image_size": Range(int, 0),
    # batch norm needs two values per channel, and the last feature map of a small image is 1x1
    "train_steps": Range(int, 1), "batch_size": Range(int, 2), "lr": Range(float, 0, lo_open=True),
    "weight_decay": Range(float, 0), "levels": Range(float, 0, 1, lo_open=True, hi_open=True),
    "prune_every": Range(int, 1), "prune_amount": Range(int, 1), "level_ft_steps": Range(int, 0),
    "prune_lr": Range(float, 0, lo_open=True), "prune_weight_decay": Range(float, 0), "min_channels": Range(int, 1),
    "eval_batch": Range(int, 1),
    "latency_batch": Range(int, 1), "latency_repeats": Range(int, 1), "seed": Range(int, 0),
    "ckpt_every": Range(int, 1), "threads": Range(int, 1), "equivalence_margin": Range(float, 0, lo_open=True),
}

#: numeric settings whose None means "not set" (a default taken from elsewhere)
_MAY_BE_NONE = ("head_channels", "threads", "score_momentum", "prune_weight_decay")

#: Settings that cannot change any saved result, so a resumed run may differ in them; every other
#: field is a checkpoint key (a new field is one unless it is listed here with its reason).
NOT_CHECKPOINT_KEYS = {
    # which stage folders run: each prune-/retrain-<criterion> folder depends on its criterion only
    # (its batch stream and its files are named after it), the control on nothing but the keys
    "criteria", "strategies", "control",
    # read by the report only (results.json's findings are recomputed from the saved results)
    "equivalence_margin",
    # when checkpoints are written: a resumed run ends where an uninterrupted one does (tested)
    "ckpt_every",
    # names; the values they stand for are the other fields
    "preset", "protocol",
    # where rendered scenes are cached; the file name holds the split, n, size, seed and renderer hash
    "data_cache",
    # a split the study never reads; each split's scenes are seeded apart from the others'
    "n_val",
}

CHECKPOINT_KEYS = tuple(f.name for f in dataclasses.fields(StudyConfig) if f.name not in NOT_CHECKPOINT_KEYS)

PRESETS: Dict[str, Dict[str, Any]] = {
    # the authors' VGG16 at 1/8 width on procedural 64x64 scenes; scale chosen by the pilots in the
    # README (3 seeds in two processes: about 15 minutes on a 2-core CPU)
    "demo": {},
    # the demo at four times the training budget (1200 baseline and re-init steps), which the pilots show
    # is needed for a benign first level and a sharp drop before the floor; 28 min on a 2-core CPU with
    # --jobs 3
    # (README, "Results at four times the budget")
    "long": dict(train_steps=1200),
    # the paper's scale, the authors' protocol where the study's machinery allows it (README: "The paper
    # preset"): their VGG16 at full width (biases, no BN, 5 pools, DeepLab heads 1/2/4/6 x 1024), NYUv2
    # with 40 classes, 100 filters every 500 iterations, AdamW 5e-5 between prunes
    "paper": dict(
        width=1.0, dataset="nyuv2", nyu_classes=40, n_train=0, n_val=0, n_test=0, image_size=0,
        train_steps=20000, batch_size=8, lr=1e-4, prune_every=500, prune_amount=100, level_ft_steps=2000,
        prune_lr=5e-5, prune_optimizer="adamw", min_channels=1, ckpt_every=500,
        levels=[0.25, 0.5, 0.75, 0.9, 0.95], eval_batch=8, latency_batch=1, latency_repeats=20, device="cuda",
    ),
}


#: The parts of the authors' pruning protocol the study can follow (their main.py and
#: taylor_pruning/cosine_pruning_engine.py; README, "The paper preset and the authors' protocol", lists
#: the parts it cannot). Taylor: gate Taylor (group scope) averaged over every batch since pruning began
#: (never reset), no per-layer floor (the driver keeps 1). Cosine: per conv weight filter (filter scope),
#: averaged since the last prune, at least 5 filters per layer. Both: plain means (no momentum), AdamW
#: (lr 5e-5, PyTorch's default decay 0.01), and steps on grad L_last + 2 grad L_sum: their task order is
#: seg, normal, depth, so depth is L_last, and in the study's order (seg, depth, normal) that is 2, 3, 2.
PROTOCOLS: Dict[str, Dict[str, Any]] = {
    "study": {},
    "authors": dict(min_channels=1, score_momentum=None, prune_optimizer="adamw", prune_lr=5e-5,
                    prune_weight_decay=0.01, step_weights=[2.0, 3.0, 2.0],
                    criterion_settings={"taylor": {"min_channels": 1, "scope": "group", "carry_scores": True},
                                        "cosine": {"min_channels": 5, "scope": "filter", "carry_scores": False}}),
}


def make_config(preset: str = "demo", protocol: str = "study", **overrides) -> StudyConfig:
    """The preset's config, then the protocol's settings, then ``overrides`` (``None`` values are ignored).
    An override of a setting that ``criterion_settings`` also holds per criterion (``min_channels``,
    ``scope``, ``carry_scores``) replaces the per-criterion values too: explicit flags win."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    d = StudyConfig().to_dict()
    d.update(PRESETS[preset])
    d.update(PROTOCOLS[protocol])
    d["preset"], d["protocol"] = preset, protocol
    for k, v in overrides.items():
        if v is None:
            continue
        if k not in d:
            raise ValueError(f"unknown study setting {k!r}")
        d[k] = v
        if k in _SETTINGS and "criterion_settings" not in overrides:
            d["criterion_settings"] = {c: {a: x for a, x in kw.items() if a != k}
                                       for c, kw in d["criterion_settings"].items()}
    return StudyConfig.from_dict(d)


def _min_image_size(cfg: StudyConfig) -> int:
    # each stride-2 VGG pool halves the map and a 1x1 map cannot be pooled again; the renderer and
    # the 3x3 convs want a few pixels at least
    return max(8, 2 ** cfg.pools) if cfg.model == "vgg16" else 8


def _check_lists(cfg: StudyConfig) -> None:
    from ..pruning import PRUNER_CRITERIA

    r = RANGES["levels"]
    if not cfg.levels or any(not r.ok(l) for l in cfg.levels) or any(
            a >= b for a, b in zip(cfg.levels, cfg.levels[1:])):
        raise StudyInputError(f"--targets {' '.join(map(str, cfg.levels))}: must be strictly increasing "
                              f"fractions, each {r.describe()}")
    for name, known in (("criteria", PRUNER_CRITERIA), ("strategies", ("iterative", "reinit"))):
        vals = list(getattr(cfg, name))
        bad = [v for v in vals if v not in known]
        if not vals or bad or len(set(vals)) != len(vals):
            why = f"unknown {', '.join(map(str, bad))}" if bad else "duplicates" if vals else "none given"
            raise StudyInputError(f"{flag(name)} {' '.join(map(str, vals))}: {why}; choose distinct names "
                                  f"from {', '.join(known)}")


_SETTINGS = {"min_channels": lambda v: RANGES["min_channels"].ok(v), "scope": lambda v: v in ("group", "filter"),
             "carry_scores": lambda v: isinstance(v, bool)}


def _check_pruner_settings(cfg: StudyConfig) -> None:
    from ..pruning import PRUNER_CRITERIA

    for crit, kw in cfg.criterion_settings.items():
        bad = [f"{k}={v!r}" for k, v in (kw.items() if isinstance(kw, dict) else [("settings", kw)])
               if k not in _SETTINGS or not _SETTINGS[k](v)]
        if crit not in PRUNER_CRITERIA or bad:
            raise StudyInputError(f"criterion_settings[{crit!r}]: " + (", ".join(bad) if bad else "unknown criterion")
                                  + "; each criterion of " + ", ".join(PRUNER_CRITERIA) + " may set min_channels "
                                  "(an integer >= 1), scope (group or filter), carry_scores (true or false)")
    w = cfg.step_weights
    if w is not None and (len(w) != 3 or not all(Range(float, 0).ok(v) for v in w)):
        raise StudyInputError(f"--step-weights {' '.join(map(str, w))}: must be 3 finite numbers >= 0, "
                              "for seg, depth, normal")


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise StudyInputError(f"--device {device}: must be cpu, cuda or cuda:N")
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (dev.index or 0) >= n:
            raise StudyInputError(f"--device {device}: this machine has {n} CUDA device(s)")


def check_config(cfg: StudyConfig) -> None:
    """Raise :class:`StudyInputError` naming the flag if ``cfg`` cannot run (before anything runs)."""
    for name, r in RANGES.items():
        v = getattr(cfg, name)
        if name != "levels" and not (v is None and name in _MAY_BE_NONE) \
                and not r.ok(v):
            raise StudyInputError(f"{flag(name)} {v!r}: must be {r.describe()}")
    _check_lists(cfg)
    _check_pruner_settings(cfg)
    if cfg.model not in ("vgg16", "resnet18", "resnet34"):
        raise StudyInputError(f"--model {cfg.model}: choose vgg16, resnet18 or resnet34")
    for name, known in (("head", ("deeplab", "aspp")), ("init", ("kaiming", "default")),
                        ("prune_optimizer", ("adam", "adamw"))):
        if getattr(cfg, name) not in known:
            raise StudyInputError(f"{flag(name)} {getattr(cfg, name)}: choose {' or '.join(known)}")
    if cfg.dataset == "procedural":
        for name in ("n_train", "n_test"):
            if getattr(cfg, name) < 1:
                raise StudyInputError(f"{flag(name)} {getattr(cfg, name)}: procedural scenes need at least 1")
        lo = _min_image_size(cfg)
        if cfg.image_size < lo:
            raise StudyInputError(f"--image-size {cfg.image_size}: {cfg.model} (pools {cfg.pools}) needs "
                                  f"an integer >= {lo}")
    elif cfg.dataset == "nyuv2":
        if not cfg.data_root:
            raise StudyInputError("--data-root: the nyuv2 dataset (preset paper) needs the preprocessed NYUv2 "
                                  "folder, with train/ and val/ holding image/ label/ depth/ normal/ <i>.npy files")
    else:
        raise StudyInputError(f"--data {cfg.dataset}: choose procedural or nyuv2")
    _check_device(cfg.device)


#: settings added after runs were first written; a config.json without one ran with this value
_ADDED_LATER = {"criterion_settings": {}, "step_weights": None, "prune_weight_decay": None}


def _key_value(cfg_dict: Dict[str, Any], k: str):
    v = cfg_dict.get(k, _ADDED_LATER.get(k, "(not recorded)"))
    # cuda and cuda:1 compute alike; cpu and cuda do not
    return v.split(":")[0] if k == "device" and isinstance(v, str) else v


def check_resumable(cfg: StudyConfig, out: Path) -> List[str]:
    """Refuse (:class:`StudyInputError`) a run whose checkpoint keys differ from ``out/config.json``'s;
    return the other settings that differ (they change no saved result)."""
    path = out / "config.json"
    if not path.exists():
        return []
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StudyInputError(f"--out {out}: unreadable config.json ({exc}); use another --out") from None
    now = cfg.to_dict()
    diff = [k for k in CHECKPOINT_KEYS if _key_value(old, k) != _key_value(now, k)]
    if diff:
        lines = ", ".join(f"{flag(k)}: saved {old.get(k, '(not recorded)')!r}, now {now[k]!r}" for k in diff)
        raise StudyInputError(f"--out {out} holds a run with other settings ({lines}); use another --out, or "
                              f"the same settings to resume it")
    return [k for k in NOT_CHECKPOINT_KEYS if k in old and old[k] != now[k]]
