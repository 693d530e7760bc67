"""The paper study's stages: baseline -> iterative pruning per criterion -> re-initialised retraining.

Output folder layout (``--out DIR``; every stage resumes from its files)::

    config.json                      the settings (a resumed run must agree on them)
    data/                            the rendered procedural splits (cache)
    trivial.json                     metrics of the trivial predictors
    baseline/ckpt.pt, result.json    the unpruned model (checkpoint + its evaluation)
    prune-<criterion>/state.json     iterative pruning: progress + per-level results
    prune-<criterion>/pruner-<k>.pt  the pruner checkpoint state.json points to (model, optimizer, scores)
    prune-<criterion>/level<i>.pt    the pruned (and fine-tuned) model at level i (save_pruned)
    retrain-<criterion>/level<i>.pt / .json   re-initialised architecture i, trained from scratch
    results.json, results.csv, fig_*.png, report.md   (report stage)
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from .. import metrics as M
from ..pruning import MultiTaskPruner, count_params_flops, load_pruned, save_pruned
from .config import StudyConfig, check_resumable
from .engine import (atomic_torch_save, atomic_write_text, backbone_filters, batch_at, constructor,
                     evaluate, head_conv_names, latency_ms, load_datasets, make_optimizer, train_steps)

__all__ = ["Study", "TASKS"]

TASKS = ["seg", "depth", "normal"]
STREAM_BASELINE, STREAM_PRUNE, STREAM_RETRAIN = 1, 100, 1000


def _fmt_int(n: float) -> str:
    for unit, d in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= d:
            return f"{n / d:.3g}{unit}"
    return f"{n:.0f}"


class Study:
    """One output folder of the study. ``Study(cfg, out).run(["train", "prune", "retrain"])``."""

    def __init__(self, cfg: StudyConfig, out, *, progress: bool = True, log: Optional[Callable[[str], None]] = None,
                 check: bool = True):
        self.cfg = cfg
        self.out = Path(out)
        self.progress = progress
        self._log = log
        if check:
            check_resumable(cfg, self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(cfg.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("error: --device cuda was asked for but CUDA is not available here")
        t0 = time.perf_counter()
        self.ds = load_datasets(cfg, self.out, progress=progress)
        self.num_classes = self.ds["train"].num_classes
        self.make = constructor(cfg, self.num_classes)
        self.example = self.ds["test"].get(slice(0, 1))["image"].to(self.device)
        self.log(f"[data] {cfg.dataset}: " + ", ".join(f"{k} {len(v)}" for k, v in self.ds.items())
                 + f" samples of {tuple(self.ds['train'].size)} in {time.perf_counter() - t0:.1f}s; "
                 f"device {self.device}, {torch.get_num_threads()} CPU thread(s)")

    # ------------------------------------------------------------------------------ helpers
    def log(self, msg: str) -> None:
        if self._log is not None:
            self._log(msg)
        else:
            print(msg, flush=True)
        with open(self.out / "log.txt", "a") as f:
            f.write(time.strftime("%H:%M:%S ") + msg + "\n")

    def new_model(self) -> torch.nn.Module:
        torch.manual_seed(self.cfg.seed)
        return self.make().to(self.device)

    def measure(self, model: torch.nn.Module) -> Dict[str, Any]:
        """Params / FLOPs per task path, whole-model totals, latency, backbone filters."""
        pf = count_params_flops(model, self.example)
        lat_x = self.ds["test"].get(slice(0, self.cfg.latency_batch))["image"].to(self.device)
        return {
            "params": {t: pf[t]["params"] for t in TASKS},
            "flops": {t: pf[t]["flops"] for t in TASKS},
            "params_total": int(sum(p.numel() for p in model.parameters())),
            "backbone_filters": backbone_filters(model),
            "latency_ms": latency_ms(model, lat_x, self.cfg.latency_repeats),
            "latency_device": str(self.device),
            "cpu_threads": torch.get_num_threads(),
        }

    def _read_json(self, path: Path):
        return json.loads(path.read_text()) if path.exists() else None

    def _pruner(self, model, criterion: str, optimizer=None) -> MultiTaskPruner:
        return MultiTaskPruner(model, TASKS, criterion, example_inputs=self.example, optimizer=optimizer,
                               exclude=head_conv_names(model), min_channels=self.cfg.min_channels,
                               ranking=self.cfg.ranking, score_accumulation="mean", mode="compact",
                               seed=self.cfg.seed, warn_unsupported=False)

    # ------------------------------------------------------------------------------ trivial
    def trivial(self) -> Dict[str, Any]:
        path = self.out / "trivial.json"
        res = self._read_json(path)
        if res is not None:
            return res
        stats = M.trivial_predictions(self.ds["train"], self.num_classes)
        m = evaluate(None, self.ds["test"], self.cfg, progress=False,
                     outputs_fn=lambda b: M.trivial_outputs(stats, b, self.num_classes))
        res = {"metrics": m, "majority_class": int(stats["seg"]), "class_names": list(self.ds["train"].class_names),
               "majority_class_name": str(self.ds["train"].class_names[int(stats["seg"])]),
               "mean_depth": float(stats["depth"]), "mean_normal": [float(v) for v in stats["normal"]]}
        atomic_write_text(path, json.dumps(res, indent=1))
        self.log(f"[trivial] majority class '{res['majority_class_name']}', mean depth {res['mean_depth']:.2f} m, "
                 f"mean normal: {M.format_metrics(m)}")
        return res

    # ------------------------------------------------------------------------------ baseline
    def baseline_model(self) -> torch.nn.Module:
        self.train()
        return load_pruned(self.make, self.out / "baseline" / "model.pt", map_location=self.device).to(self.device)

    def train(self) -> Dict[str, Any]:
        """Stage ``train``: the unpruned baseline (resumes from ``baseline/ckpt.pt``)."""
        cfg, d = self.cfg, self.out / "baseline"
        res = self._read_json(d / "result.json")
        if res is not None and (d / "model.pt").exists():
            return res
        d.mkdir(parents=True, exist_ok=True)
        model = self.new_model()
        opt = make_optimizer(model.parameters(), cfg.lr, cfg.weight_decay)
        start = 0
        ckpt_path = d / "ckpt.pt"
        if ckpt_path.exists():
            ck = torch.load(ckpt_path, map_location=self.device, weights_only=False)
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            start = int(ck["step"])
            self.log(f"[train] resuming the baseline at step {start}/{cfg.train_steps}")

        def save(step: int) -> None:
            atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}, ckpt_path)

        t0 = time.perf_counter()
        losses = train_steps(model, opt, self.ds["train"], cfg, start=start, stop=cfg.train_steps,
                             total=cfg.train_steps, stream=STREAM_BASELINE, base_lr=cfg.lr, on_checkpoint=save,
                             desc="baseline", progress=self.progress)
        train_s = time.perf_counter() - t0
        save_pruned(model, d / "model.pt")
        m = evaluate(model, self.ds["test"], cfg, progress=self.progress, desc="eval baseline")
        res = {"metrics": m, "train_losses": losses, "train_seconds": train_s, "steps": cfg.train_steps,
               **self.measure(model)}
        atomic_write_text(d / "result.json", json.dumps(res, indent=1))
        self.log(f"[train] baseline {cfg.model} x{cfg.width}: {_fmt_int(res['params_total'])} params, "
                 f"{_fmt_int(res['flops']['seg'])} FLOPs/img (seg path), {cfg.train_steps} steps in {train_s:.0f}s | "
                 f"{M.format_metrics(m)}")
        return res

    # ------------------------------------------------------------------------------ prune
    def _level_targets(self, f0: int) -> List[int]:
        return [int(math.ceil(l * f0)) for l in self.cfg.levels]

    def prune(self, criterion: str) -> List[Dict[str, Any]]:
        """Stage ``prune``: iterative pruning with ``criterion`` from the baseline, evaluating each level.

        Every ``prune_every`` steps (scores accumulated over them with the per-task gradients)
        ``prune_amount`` filters are removed, until the next level's number of removed backbone
        filters is reached; then ``level_ft_steps`` fine-tuning steps, the evaluation, and the
        pruned model is saved. Resumes from ``prune-<criterion>/state.json``.
        """
        cfg, d = self.cfg, self.out / f"prune-{criterion}"
        d.mkdir(parents=True, exist_ok=True)
        state = self._read_json(d / "state.json")
        if state is not None and state.get("done"):
            return state["results"]
        base = self.train()
        f0 = int(base["backbone_filters"])
        targets = self._level_targets(f0)
        crit_idx = sum(ord(c) for c in criterion)
        opt_fn = lambda params: make_optimizer(params, cfg.prune_lr, cfg.weight_decay)  # noqa: E731
        if state is None:
            model = self.baseline_model()
            opt = opt_fn(model.parameters())
            pruner = self._pruner(model, criterion, opt)
            state = {"step": 0, "level_idx": 0, "ckpt": None, "results": [], "done": False, "events": 0,
                     "seconds": 0.0}
        else:
            pruner = MultiTaskPruner.resume(d / state["ckpt"], self.make, example_inputs=self.example,
                                            optimizer_fn=opt_fn, map_location=self.device)
            model, opt = pruner.model.to(self.device), pruner.optimizer
            self.log(f"[prune {criterion}] resuming at step {state['step']}, level {state['level_idx'] + 1}/"
                     f"{len(targets)}, {backbone_filters(model)}/{f0} backbone filters left")

        def checkpoint() -> None:
            k = state["events"]
            name = f"pruner-{k}.pt"
            pruner.save(d / name)
            old = state["ckpt"]
            state["ckpt"] = name
            atomic_write_text(d / "state.json", json.dumps(state, indent=1))
            if old and old != name and (d / old).exists():
                (d / old).unlink()

        from tqdm import tqdm

        t0 = time.perf_counter() - state["seconds"]
        bar = tqdm(total=targets[-1], initial=f0 - backbone_filters(model), desc=f"prune {criterion}",
                   unit="filter", leave=False, disable=not self.progress, dynamic_ncols=True)
        while state["level_idx"] < len(targets):
            li = state["level_idx"]
            removed = f0 - backbone_filters(model)
            stuck = state.get("stuck", False)
            if removed < targets[li] and not stuck:
                model.train()
                for _ in range(cfg.prune_every):
                    b = batch_at(self.ds["train"], state["step"], cfg.batch_size, cfg.seed,
                                 STREAM_PRUNE + crit_idx, cfg.flip, self.device)
                    losses = M.task_losses(model(b["image"]), b)
                    opt.zero_grad(set_to_none=True)
                    pruner.accumulate(losses)
                    opt.step()
                    state["step"] += 1
                # prune_amount and the targets count backbone filters; a channel group may hold several
                # coupled filters (residual additions), so convert with the measured filters per group
                per_group = state.get("filters_per_group", 1.0)
                n = max(1, int(min(cfg.prune_amount, targets[li] - removed) / per_group))
                rep = pruner.prune(n)
                state["events"] += 1
                removed_now = f0 - backbone_filters(model)
                if rep.pruned == 0:  # the minimum-channel rules forbid more
                    state["stuck"] = True
                elif removed_now > removed:
                    state["filters_per_group"] = max(1.0, (removed_now - removed) / rep.pruned)
                bar.update(removed_now - bar.n)
                state["seconds"] = time.perf_counter() - t0
                checkpoint()
                continue
            # level reached: fine-tune, evaluate, save the pruned model
            train_steps(model, opt, self.ds["train"], cfg, start=state["step"], stop=state["step"] + cfg.level_ft_steps,
                        total=cfg.level_ft_steps, stream=STREAM_PRUNE + crit_idx, base_lr=cfg.prune_lr,
                        schedule="constant", desc=f"fine-tune L{li + 1}", progress=self.progress)
            state["step"] += cfg.level_ft_steps
            save_pruned(model, d / f"level{li}.pt", extra={"criterion": criterion, "level": cfg.levels[li]})
            m = evaluate(model, self.ds["test"], cfg, progress=self.progress, desc=f"eval L{li + 1}")
            meas = self.measure(model)
            r = {"criterion": criterion, "strategy": "iterative", "level": cfg.levels[li], "level_index": li,
                 "filters_removed": f0 - meas["backbone_filters"],
                 "filters_removed_frac": (f0 - meas["backbone_filters"]) / f0,
                 "target_reached": f0 - meas["backbone_filters"] >= targets[li],
                 "train_steps": state["step"], "metrics": m, "delta_m": M.delta_m(m, base["metrics"]), **meas}
            state["results"].append(r)
            state["level_idx"] += 1
            state["seconds"] = time.perf_counter() - t0
            checkpoint()
            self.log(f"[prune {criterion}] level {li + 1}/{len(targets)}: {r['filters_removed_frac']:.1%} of backbone "
                     f"filters removed, {_fmt_int(r['params_total'])} params, {_fmt_int(r['flops']['seg'])} FLOPs, "
                     f"{r['latency_ms']:.2f} ms | dm {r['delta_m']['all']:+.1f}% | {M.format_metrics(m)}")
        bar.close()
        state["done"] = True
        atomic_write_text(d / "state.json", json.dumps(state, indent=1))
        self.log(f"[prune {criterion}] done: {len(state['results'])} levels, {state['step']} steps, "
                 f"{state['seconds']:.0f}s")
        return state["results"]

    # ------------------------------------------------------------------------------ retrain
    def retrain(self, criterion: str) -> List[Dict[str, Any]]:
        """Stage ``retrain``: every pruned architecture of ``criterion``, re-initialised
        (``pruner.reinit``) and trained from scratch with the baseline's budget."""
        cfg, d = self.cfg, self.out / f"retrain-{criterion}"
        d.mkdir(parents=True, exist_ok=True)
        levels = self.prune(criterion)
        base = self.train()
        f0 = int(base["backbone_filters"])
        results = []
        for li, lev in enumerate(levels):
            rpath = d / f"level{li}.json"
            r = self._read_json(rpath)
            if r is not None:
                results.append(r)
                continue
            ckpt_path = d / f"level{li}-ckpt.pt"
            if ckpt_path.exists():
                model = load_pruned(self.make, ckpt_path, map_location=self.device).to(self.device)
                ck = torch.load(ckpt_path, map_location=self.device, weights_only=False)
                opt = make_optimizer(model.parameters(), cfg.lr, cfg.weight_decay)
                opt.load_state_dict(ck["extra"]["optimizer"])
                start = int(ck["extra"]["step"])
                self.log(f"[retrain {criterion}] level {li + 1}: resuming at step {start}/{cfg.train_steps}")
            else:
                pruned = load_pruned(self.make, self.out / f"prune-{criterion}" / f"level{li}.pt",
                                     map_location=self.device).to(self.device)
                model = self._pruner(pruned, criterion).reinit(seed=cfg.seed + 17 * (li + 1))
                opt = make_optimizer(model.parameters(), cfg.lr, cfg.weight_decay)
                start = 0

            def save(step: int, model=model, opt=opt, ckpt_path=ckpt_path) -> None:
                save_pruned(model, ckpt_path, extra={"optimizer": opt.state_dict(), "step": step})

            t0 = time.perf_counter()
            train_steps(model, opt, self.ds["train"], cfg, start=start, stop=cfg.train_steps, total=cfg.train_steps,
                        stream=STREAM_RETRAIN + li, base_lr=cfg.lr, on_checkpoint=save,
                        desc=f"retrain {criterion} L{li + 1}", progress=self.progress)
            m = evaluate(model, self.ds["test"], cfg, progress=self.progress, desc=f"eval reinit L{li + 1}")
            meas = self.measure(model)
            r = {"criterion": criterion, "strategy": "reinit", "level": lev["level"], "level_index": li,
                 "filters_removed": f0 - meas["backbone_filters"],
                 "filters_removed_frac": (f0 - meas["backbone_filters"]) / f0, "target_reached": lev["target_reached"],
                 "train_steps": cfg.train_steps, "train_seconds": time.perf_counter() - t0, "metrics": m,
                 "delta_m": M.delta_m(m, base["metrics"]), **meas}
            atomic_write_text(rpath, json.dumps(r, indent=1))
            save_pruned(model, d / f"level{li}.pt")
            if ckpt_path.exists():
                ckpt_path.unlink()
            results.append(r)
            self.log(f"[retrain {criterion}] level {li + 1}/{len(levels)}: {r['filters_removed_frac']:.1%} removed, "
                     f"{_fmt_int(r['params_total'])} params | dm {r['delta_m']['all']:+.1f}% "
                     f"(iterative {lev['delta_m']['all']:+.1f}%) | {M.format_metrics(m)}")
        return results

    # ------------------------------------------------------------------------------ all
    def collect(self) -> Dict[str, Any]:
        """Everything finished so far, as the results.json structure."""
        return collect_results(self.out, self.cfg)

    def run(self, stages=("train", "prune", "retrain"), criteria: Optional[List[str]] = None) -> Dict[str, Any]:
        criteria = criteria or self.cfg.criteria
        t0 = time.perf_counter()
        self.trivial()
        if "train" in stages:
            self.train()
        if "prune" in stages:
            for c in criteria:
                self.prune(c)
        if "retrain" in stages and "reinit" in self.cfg.strategies:
            for c in criteria:
                self.retrain(c)
        self.log(f"[done] stages {', '.join(stages)} in {time.perf_counter() - t0:.0f}s")
        return self.collect()


def collect_results(out: Path, cfg: Optional[StudyConfig] = None) -> Dict[str, Any]:
    """The results.json structure from the files of an output folder (no data, no model needed)."""
    out = Path(out)
    if cfg is None:
        if not (out / "config.json").exists():
            raise SystemExit(f"error: {out} holds no study (no config.json): run `mtlkernels study --out {out}` first")
        cfg = StudyConfig.from_dict(json.loads((out / "config.json").read_text()))
    rd = lambda p: json.loads(p.read_text()) if p.exists() else None  # noqa: E731
    trivial = rd(out / "trivial.json")
    res: Dict[str, Any] = {"config": cfg.to_dict(), "tasks": TASKS,
                           "class_names": (trivial or {}).get("class_names"), "trivial": trivial,
                           "baseline": rd(out / "baseline" / "result.json"), "runs": []}
    runs = []
    for d in sorted(out.glob("prune-*")):
        st = json.loads((d / "state.json").read_text()) if (d / "state.json").exists() else None
        if st:
            runs.extend(st["results"])
    for d in sorted(out.glob("retrain-*")):
        for f in sorted(d.glob("level*.json"), key=lambda p: int(p.stem[5:])):
            runs.append(json.loads(f.read_text()))
    res["runs"] = runs
    return res
