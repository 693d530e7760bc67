"""The paper study's stages: baseline -> iterative pruning per criterion -> re-initialised retraining.

Output folder layout (``--out DIR``; every stage resumes from its files)::

    .lock                            flock'ed by the run using the folder (a second run is refused)
    config.json                      the first run's settings (later runs must agree on the checkpoint keys)
    data/                            the rendered procedural splits (cache)
    trivial.json                     metrics of the trivial predictors
    baseline/ckpt.pt, model.pt, result.json   the unpruned model (checkpoint, weights, evaluation)
    prune-<criterion>/state.json     iterative pruning: progress + per-level results
    prune-<criterion>/pruner-<k>.pt  the pruner checkpoint state.json points to (model, optimizer, scores)
    prune-<criterion>/level<i>.pt    the pruned (and fine-tuned) model at level i (save_pruned)
    retrain-<criterion>/level<i>.pt / .json   re-initialised architecture i, trained from scratch
    control/level0.pt / .json        the control: the unpruned architecture re-initialised and retrained
    results.json, results.csv, fig_*.png, report.md   (report stage)

Each stage's outputs are committed as one unit: its other files first, then the one file whose
presence marks the work done (``result.json``, ``state.json``, ``level<i>.json``), so a kill at any
point is resumed from the last commit, and the resumed results equal an uninterrupted run's.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from . import metrics as M
from ..pruning import MultiTaskPruner, count_params_flops, load_pruned, save_pruned
from ..pruning.io import (atomic_save, atomic_write_text, model_from_checkpoint, read_checkpoint,
                          remove_stale_temps)
from .config import StudyConfig, StudyInputError, check_config, check_resumable
from .engine import (backbone_filters, batch_at, constructor, evaluate, fault_point, head_conv_names, latency_ms, load_datasets, make_optimizer, train_steps)
from .outdir import OutLock, prepare_out

__all__ = ["Study", "TASKS"]

TASKS = ["seg", "depth", "normal"]
CONTROL = "control"  # folder, criterion and strategy name of the from-scratch control
STREAM_BASELINE, STREAM_PRUNE, STREAM_RETRAIN = 1, 100, 1000


def _fmt_int(n: float) -> str:
    for unit, d in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= d:
            return f"{n / d:.3g}{unit}"
    return f"{n:.0f}"


class Study:
    """One output folder of the study. ``with Study(cfg, out) as s: s.run(["train", "prune", "retrain"])``.

    The folder is locked while the object is open (:meth:`close`, or leaving the ``with``): a second
    Study on it, in this process or another, raises :class:`StudyInputError`. Bad settings raise it
    too, naming the flag, before anything is written.
    """

    def __init__(self, cfg: StudyConfig, out, *, progress: bool = True, log: Optional[Callable[[str], None]] = None,
                 check: bool = True):
        check_config(cfg)
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        else:  # recorded: CPU results depend on the thread count, so a resumed run must use the same
            cfg = StudyConfig.from_dict(dict(cfg.to_dict(), threads=torch.get_num_threads()))
        self.cfg, self.out, self.progress, self._log = cfg, prepare_out(Path(out)), progress, log
        self._lock: Optional[OutLock] = OutLock(self.out)
        try:
            self._open(check)
        except BaseException:
            self.close()
            raise

    def _open(self, check: bool) -> None:
        cfg = self.cfg
        harmless = check_resumable(cfg, self.out) if check else []
        remove_stale_temps(self.out)  # the temporaries of killed writers
        self.device = torch.device(cfg.device)
        t0 = time.perf_counter()
        try:
            self.ds = load_datasets(cfg, self.out, progress=self.progress)
        except (OSError, ValueError) as exc:
            if cfg.dataset != "nyuv2":
                raise
            raise StudyInputError(f"--data-root {cfg.data_root}: {exc}") from None
        if not (self.out / "config.json").exists():  # written once: later runs are checked against it
            atomic_write_text(self.out / "config.json", json.dumps(cfg.to_dict(), indent=1))
        self.num_classes = self.ds["train"].num_classes
        self.make = constructor(cfg, self.num_classes)
        self.example = self.ds["test"].get(slice(0, 1))["image"].to(self.device)
        if harmless:
            self.log(f"[config] this run differs from config.json in {', '.join(sorted(harmless))}, which "
                     f"change no saved result (config.json keeps the first run's values)")
        self.log(f"[data] {cfg.dataset}: " + ", ".join(f"{k} {len(v)}" for k, v in self.ds.items())
                 + f" samples of {tuple(self.ds['train'].size)} in {time.perf_counter() - t0:.1f}s; "
                 f"device {self.device}, {torch.get_num_threads()} CPU thread(s)")

    def close(self) -> None:
        """Release the folder's lock."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "Study":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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
            # the architecture: criteria that leave the same one cannot differ by their choice of filters
            "arch": [m.out_channels for n, m in model.named_modules()
                     if n.startswith("backbone.") and isinstance(m, torch.nn.Conv2d)],
            "latency_ms": latency_ms(model, lat_x, self.cfg.latency_repeats),
            "latency_device": str(self.device),
            "cpu_threads": torch.get_num_threads(),
        }

    def _read_json(self, path: Path):
        return json.loads(path.read_text()) if path.exists() else None

    def _pruner(self, model, criterion: str, optimizer=None) -> MultiTaskPruner:
        cfg = self.cfg
        kw = dict(min_channels=cfg.min_channels, scope="group", carry_scores=False)
        kw.update(cfg.criterion_settings.get(criterion, {}))
        return MultiTaskPruner(model, TASKS, criterion, example_inputs=self.example, optimizer=optimizer,
                               exclude=head_conv_names(model), ranking=cfg.ranking, mode="compact",
                               score_accumulation="mean" if cfg.score_momentum is None
                               else ("ema", cfg.score_momentum), step_weights=cfg.step_weights,
                               seed=cfg.seed, warn_unsupported=False, **kw)

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
        fault_point("trivial.written")
        self.log(f"[trivial] majority class '{res['majority_class_name']}', mean depth {res['mean_depth']:.2f} m, "
                 f"mean normal: {M.format_metrics(m)}")
        return res

    # ------------------------------------------------------------------------------ baseline
    def baseline_model(self) -> torch.nn.Module:
        self.train()
        return load_pruned(self.make, self.out / "baseline" / "model.pt", map_location=self.device).to(self.device)

    def train(self) -> Dict[str, Any]:
        """Stage ``train``: the unpruned baseline (resumes from ``baseline/ckpt.pt``).

        ``result.json`` is written last: it commits the stage (``model.pt`` alone is redone)."""
        cfg, d = self.cfg, self.out / "baseline"
        res = self._read_json(d / "result.json")
        if res is not None:
            return res
        d.mkdir(parents=True, exist_ok=True)
        model = self.new_model()
        opt = make_optimizer(model.parameters(), cfg.lr, cfg.weight_decay)
        ckpt_path = d / "ckpt.pt"
        ck: Dict[str, Any] = {"step": 0, "recent": {}, "seconds": 0.0}
        if ckpt_path.exists():
            ck = read_checkpoint(ckpt_path, map_location=self.device)
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            self.log(f"[train] resuming the baseline at step {ck['step']}/{cfg.train_steps}")
        t0 = time.perf_counter() - ck.get("seconds", 0.0)

        def save(step: int, recent: Dict[str, list]) -> None:
            # the loss window travels with the weights: train_losses is then the same after a resume
            atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                               "recent": recent, "seconds": time.perf_counter() - t0}, ckpt_path)
            fault_point("baseline.ckpt")

        losses = train_steps(model, opt, self.ds["train"], cfg, start=int(ck["step"]), stop=cfg.train_steps,
                             total=cfg.train_steps, stream=STREAM_BASELINE, base_lr=cfg.lr, on_checkpoint=save,
                             desc="baseline", progress=self.progress, recent=ck.get("recent"))
        train_s = time.perf_counter() - t0
        save_pruned(model, d / "model.pt")
        fault_point("baseline.model")
        m = evaluate(model, self.ds["test"], cfg, progress=self.progress, desc="eval baseline")
        res = {"metrics": m, "train_losses": losses, "train_seconds": train_s, "steps": cfg.train_steps,
               **self.measure(model)}
        atomic_write_text(d / "result.json", json.dumps(res, indent=1))
        fault_point("baseline.done")
        self.log(f"[train] baseline {cfg.model} x{cfg.width}: {_fmt_int(res['params_total'])} params, "
                 f"{_fmt_int(res['flops']['seg'])} FLOPs/img (seg path), {cfg.train_steps} steps in {train_s:.0f}s | "
                 f"{M.format_metrics(m)}")
        return res

    # ------------------------------------------------------------------------------ prune
    def prune(self, criterion: str) -> List[Dict[str, Any]]:
        """Stage ``prune``: iterative pruning with ``criterion`` from the baseline, evaluating each level.

        Every ``prune_every`` steps (scores accumulated over them with the per-task gradients)
        ``prune_amount`` filters are removed, until the next level's number of removed backbone
        filters is reached; then ``level_ft_steps`` fine-tuning steps, the evaluation, and the
        pruned model is saved. Resumes from ``prune-<criterion>/state.json``, which is written last
        at each checkpoint and names the one pruner file it goes with.
        """
        d = self.out / f"prune-{criterion}"
        d.mkdir(parents=True, exist_ok=True)
        state = self._read_json(d / "state.json")
        if state is not None and state.get("done"):
            _remove_unreferenced(d, state)
            return state["results"]
        return _PruneStage(self, criterion, d, state).run()

    # ------------------------------------------------------------------------------ retrain
    def retrain(self, criterion: str) -> List[Dict[str, Any]]:
        """Stage ``retrain``: every pruned architecture of ``criterion``, re-initialised
        (``pruner.reinit``) and trained from scratch with the baseline's budget."""
        d = self.out / f"retrain-{criterion}"
        d.mkdir(parents=True, exist_ok=True)
        levels = self.prune(criterion)
        base = self.train()
        results = []
        for li, lev in enumerate(levels):
            r = self._read_json(d / f"level{li}.json")
            if r is None:
                r = self._retrain_level(criterion, d, li, lev, base)
            # level<i>.json commits the level; a kill right after it leaves the checkpoint behind
            (d / f"level{li}-ckpt.pt").unlink(missing_ok=True)
            results.append(r)
        return results

    def _retrain_level(self, criterion: str, d: Path, li: int, lev: Dict[str, Any],
                       base: Dict[str, Any]) -> Dict[str, Any]:
        cfg = self.cfg
        ckpt_path = d / f"level{li}-ckpt.pt"
        extra: Dict[str, Any] = {"step": 0, "recent": {}, "seconds": 0.0}
        if ckpt_path.exists():
            ck = read_checkpoint(ckpt_path, map_location=self.device)
            model = model_from_checkpoint(self.make, ck, ckpt_path).to(self.device)
            opt = make_optimizer(model.parameters(), cfg.lr, cfg.weight_decay)
            opt.load_state_dict(ck["extra"]["optimizer"])
            extra = ck["extra"]
            self.log(f"[retrain {criterion}] level {li + 1}: resuming at step {extra['step']}/{cfg.train_steps}")
        else:
            pruned = (self.new_model() if criterion == CONTROL else
                      load_pruned(self.make, self.out / f"prune-{criterion}" / f"level{li}.pt",
                                  map_location=self.device).to(self.device))
            seed = reinit_seed(cfg.seed, criterion, li)
            # (reinit does not depend on the criterion; the control's pruner needs no gradients)
            model = self._pruner(pruned, "random" if criterion == CONTROL else criterion).reinit(seed=seed)
            if cfg.model == "vgg16" and cfg.init == "kaiming":  # reinit resets to PyTorch's default init
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    model.init_backbone()
            opt = make_optimizer(model.parameters(), cfg.lr, cfg.weight_decay)
        t0 = time.perf_counter() - extra.get("seconds", 0.0)

        def save(step: int, recent: Dict[str, list]) -> None:
            save_pruned(model, ckpt_path, extra={"optimizer": opt.state_dict(), "step": step, "recent": recent,
                                                 "seconds": time.perf_counter() - t0})
            fault_point("retrain.ckpt")

        train_steps(model, opt, self.ds["train"], cfg, start=int(extra["step"]), stop=cfg.train_steps,
                    total=cfg.train_steps, stream=reinit_seed(0, criterion, li), base_lr=cfg.lr, on_checkpoint=save,
                    desc=f"retrain {criterion} L{li + 1}", progress=self.progress, recent=extra.get("recent"))
        train_s = time.perf_counter() - t0
        m = evaluate(model, self.ds["test"], cfg, progress=self.progress, desc=f"eval reinit L{li + 1}")
        meas = self.measure(model)
        f0 = int(base["backbone_filters"])
        r = {"criterion": criterion, "strategy": CONTROL if criterion == CONTROL else "reinit", "level": lev["level"],
             "level_index": li,
             "filters_removed": f0 - meas["backbone_filters"],
             "filters_removed_frac": (f0 - meas["backbone_filters"]) / f0, "target_reached": lev["target_reached"],
             "train_steps": cfg.train_steps, "train_seconds": train_s, "metrics": m,
             "delta_m": M.delta_m(m, base["metrics"]), **meas}
        save_pruned(model, d / f"level{li}.pt")
        fault_point("retrain.model")
        atomic_write_text(d / f"level{li}.json", json.dumps(r, indent=1))
        fault_point("retrain.json")
        self.log(f"[retrain {criterion}] level {li + 1}: {r['filters_removed_frac']:.1%} removed, "
                 f"{_fmt_int(r['params_total'])} params | dm {r['delta_m']['all']:+.1f}% "
                 + ("(the control) " if criterion == CONTROL else f"(iterative {lev['delta_m']['all']:+.1f}%) ")
                 + f"| {M.format_metrics(m)}")
        return r

    def control(self) -> Dict[str, Any]:
        """The control: the unpruned architecture re-initialised and retrained exactly as each pruned one
        (same budget, its own seed), so 're-init beats iterative' can be told from 'more training'."""
        d = self.out / CONTROL
        d.mkdir(parents=True, exist_ok=True)
        base = self.train()
        r = self._read_json(d / "level0.json")
        if r is None:
            lev = {"level": 0.0, "target_reached": True, "delta_m": {"all": 0.0}}
            r = self._retrain_level(CONTROL, d, 0, lev, base)
        (d / "level0-ckpt.pt").unlink(missing_ok=True)
        return r

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
            if self.cfg.control:
                self.control()
        self.log(f"[done] stages {', '.join(stages)} in {time.perf_counter() - t0:.0f}s")
        return self.collect()


def reinit_seed(seed: int, criterion: str, level_index: int) -> int:
    """Seed (and batch stream) of a re-initialised retraining: distinct per criterion and level, so two
    criteria that leave the same architecture are still two independent samples, not one run twice."""
    return seed + STREAM_RETRAIN + 17 * (level_index + 1) + 7919 * sum(ord(c) for c in criterion)


def _remove_unreferenced(d: Path, state: Dict[str, Any]) -> None:
    """Pruner files that state.json does not name: a kill between a checkpoint's writes leaves them."""
    for p in d.glob("pruner-*.pt"):
        if p.name != state.get("ckpt"):
            p.unlink()


class _PruneStage:
    """One run of the iterative pruning of one criterion, from its state (``None``: from the baseline)."""

    def __init__(self, study: Study, criterion: str, d: Path, state: Optional[Dict[str, Any]]):
        self.s, self.cfg, self.criterion, self.d = study, study.cfg, criterion, d
        self.base = study.train()
        self.f0 = int(self.base["backbone_filters"])
        self.targets = [int(math.ceil(l * self.f0)) for l in self.cfg.levels]
        self.stream = STREAM_PRUNE + sum(ord(c) for c in criterion)
        wd = self.cfg.weight_decay if self.cfg.prune_weight_decay is None else self.cfg.prune_weight_decay
        opt_fn = lambda params: make_optimizer(params, self.cfg.prune_lr, wd, self.cfg.prune_optimizer)  # noqa: E731
        if state is None:
            self.model = study.baseline_model()
            self.opt = opt_fn(self.model.parameters())
            self.pruner = study._pruner(self.model, criterion, self.opt)
            state = {"step": 0, "level_idx": 0, "ckpt": None, "results": [], "done": False, "events": 0,
                     "seconds": 0.0, "commits": 0}
        else:
            _remove_unreferenced(d, state)
            self.pruner = MultiTaskPruner.resume(d / state["ckpt"], study.make, example_inputs=study.example,
                                                 optimizer_fn=opt_fn, map_location=study.device)
            self.model, self.opt = self.pruner.model.to(study.device), self.pruner.optimizer
            study.log(f"[prune {criterion}] resuming at step {state['step']}, level {state['level_idx'] + 1}/"
                      f"{len(self.targets)}, {backbone_filters(self.model)}/{self.f0} backbone filters left")
        self.state = state
        self.t0 = time.perf_counter() - state["seconds"]

    def commit(self) -> None:
        """Checkpoint: a new pruner file, then state.json naming it (the commit), then the old file goes.
        The file state.json names is never overwritten, so a kill at any point leaves a consistent pair."""
        st, d = self.state, self.d
        st["seconds"] = time.perf_counter() - self.t0
        st["commits"] = st.get("commits", st["events"]) + 1
        name = f"pruner-{st['commits']}.pt"
        self.pruner.save(d / name)
        fault_point("prune.pruner")
        old, st["ckpt"] = st["ckpt"], name
        atomic_write_text(d / "state.json", json.dumps(st, indent=1))
        fault_point("prune.state")
        if old and old != name:
            (d / old).unlink(missing_ok=True)

    def run(self) -> List[Dict[str, Any]]:
        from tqdm import tqdm

        st = self.state
        self.bar = tqdm(total=self.targets[-1], initial=self.f0 - backbone_filters(self.model),
                        desc=f"prune {self.criterion}", unit="filter", leave=False,
                        disable=not self.s.progress, dynamic_ncols=True)
        while st["level_idx"] < len(self.targets):
            removed = self.f0 - backbone_filters(self.model)
            if removed < self.targets[st["level_idx"]] and not st.get("stuck", False):
                self.event(removed)
            else:
                self.finish_level()
        self.bar.close()
        st["done"] = True
        atomic_write_text(self.d / "state.json", json.dumps(st, indent=1))
        fault_point("prune.done")
        _remove_unreferenced(self.d, st)
        self.s.log(f"[prune {self.criterion}] done: {len(st['results'])} levels, {st['step']} steps, "
                   f"{st['seconds']:.0f}s")
        return st["results"]

    def event(self, removed: int) -> None:
        """``prune_every`` steps of score accumulation, one prune event, a checkpoint."""
        cfg, st, model = self.cfg, self.state, self.model
        model.train()
        for _ in range(cfg.prune_every):
            b = batch_at(self.s.ds["train"], st["step"], cfg.batch_size, cfg.seed, self.stream, cfg.flip,
                         self.s.device)
            losses = M.task_losses(model(b["image"]), b)
            self.opt.zero_grad(set_to_none=True)
            self.pruner.accumulate(losses)
            self.opt.step()
            st["step"] += 1
        # prune_amount and the targets count backbone filters; a channel group may hold several
        # coupled filters (residual additions), so convert with the measured filters per group
        per_group = st.get("filters_per_group", 1.0)
        n = max(1, int(min(cfg.prune_amount, self.targets[st["level_idx"]] - removed) / per_group))
        rep = self.pruner.prune(n)
        st["events"] += 1
        removed_now = self.f0 - backbone_filters(model)
        if rep.pruned == 0:  # the minimum-channel rules forbid more
            st["stuck"] = True
        elif removed_now > removed:
            st["filters_per_group"] = max(1.0, (removed_now - removed) / rep.pruned)
        self.bar.update(removed_now - self.bar.n)
        self.commit()

    def finish_level(self) -> None:
        """The level is reached: fine-tune, save the pruned model, evaluate, checkpoint."""
        cfg, st, model, li = self.cfg, self.state, self.model, self.state["level_idx"]
        train_steps(model, self.opt, self.s.ds["train"], cfg, start=st["step"], stop=st["step"] + cfg.level_ft_steps,
                    total=cfg.level_ft_steps, stream=self.stream, base_lr=cfg.prune_lr, schedule="constant",
                    desc=f"fine-tune L{li + 1}", progress=self.s.progress)
        st["step"] += cfg.level_ft_steps
        # rewritten alike if a kill comes before the commit below
        save_pruned(model, self.d / f"level{li}.pt", extra={"criterion": self.criterion, "level": cfg.levels[li]})
        fault_point("prune.level")
        m = evaluate(model, self.s.ds["test"], cfg, progress=self.s.progress, desc=f"eval L{li + 1}")
        meas = self.s.measure(model)
        removed = self.f0 - meas["backbone_filters"]
        r = {"criterion": self.criterion, "strategy": "iterative", "level": cfg.levels[li], "level_index": li,
             "filters_removed": removed, "filters_removed_frac": removed / self.f0,
             "target_reached": removed >= self.targets[li], "train_steps": st["step"], "metrics": m,
             "delta_m": M.delta_m(m, self.base["metrics"]), **meas}
        st["results"].append(r)
        st["level_idx"] += 1
        self.commit()
        self.s.log(f"[prune {self.criterion}] level {li + 1}/{len(self.targets)}: {r['filters_removed_frac']:.1%} "
                   f"of backbone filters removed, {_fmt_int(r['params_total'])} params, "
                   f"{_fmt_int(r['flops']['seg'])} FLOPs, {r['latency_ms']:.2f} ms | dm {r['delta_m']['all']:+.1f}% "
                   f"| {M.format_metrics(m)}")


def collect_results(out: Path, cfg: Optional[StudyConfig] = None) -> Dict[str, Any]:
    """The results.json structure from the files of an output folder (no data, no model needed)."""
    out = Path(out)
    if cfg is None:
        if not (out / "config.json").exists():
            raise StudyInputError(f"--out {out}: holds no study (no config.json); run `mtlkernels study --out {out}` "
                                  f"first")
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
    res["control"] = rd(out / CONTROL / "level0.json")
    return res
