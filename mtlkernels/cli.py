"""The ``mtlkernels`` command line: the paper study in stages.

    mtlkernels study  --out runs/demo              # everything: baseline, both criteria, iterative + reinit, report
    mtlkernels train  --out runs/demo              # the unpruned baseline only
    mtlkernels prune  --out runs/demo --criterion taylor
    mtlkernels retrain --out runs/demo --criterion taylor
    mtlkernels report --out runs/demo              # rebuild results.json/.csv, figures, report.md
    mtlkernels study  --preset paper --data-root /data/nyuv2 --device cuda --out runs/paper

Re-running a stopped command with the same ``--out`` resumes from its last checkpoint. Each
stage runs what it depends on first (``prune`` trains the baseline if it is missing).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

__all__ = ["main", "build_parser"]

STAGES = {"train": ["train"], "prune": ["train", "prune"], "retrain": ["train", "prune", "retrain"],
          "study": ["train", "prune", "retrain"]}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mtlkernels", description="Structured pruning of multi-task networks: the "
                                "study of Garg, Zhang, Guan (2023) on an embedded procedural dataset or NYUv2.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {"train": "train the unpruned baseline",
             "prune": "iterative pruning with each criterion, evaluating every level",
             "retrain": "re-initialise each pruned architecture and train it from scratch",
             "study": "all stages, then the report",
             "report": "rebuild results.json/.csv, figures and report.md from saved results"}
    for name, h in helps.items():
        sp = sub.add_parser(name, help=h, description=h)
        sp.add_argument("--out", default="runs/study", help="output folder (re-running resumes) [%(default)s]")
        if name == "report":
            continue
        g = sp.add_argument_group("run")
        g.add_argument("--preset", choices=["demo", "paper"], default="demo",
                       help="demo: 1/8-width VGG16 on procedural scenes, minutes on a CPU; paper: full VGG16 on "
                            "NYUv2, 100 filters every 500 iterations [%(default)s]")
        g.add_argument("--device", help="cpu, cuda, cuda:1 ... [preset's]")
        g.add_argument("--seed", type=int, help="seed of data, init and sampling [0]")
        g.add_argument("--no-progress", action="store_true", help="no tqdm bars")
        g.add_argument("--threads", type=int, help="torch intra-op CPU threads [demo on CPU: 1; else torch's default]")
        g = sp.add_argument_group("model and data")
        g.add_argument("--model", choices=["vgg16", "resnet18", "resnet34"])
        g.add_argument("--width", type=float, help="channel width multiplier")
        g.add_argument("--data", dest="dataset", choices=["procedural", "nyuv2"])
        g.add_argument("--data-root", help="the preprocessed NYUv2 folder (train/ val/ with image/ label/ depth/ normal/)")
        g.add_argument("--data-cache", help="where rendered procedural scenes are cached [OUT/data]")
        g.add_argument("--n-train", type=int, help="procedural training scenes")
        g.add_argument("--n-val", type=int, help="procedural validation scenes (unused by the study) [0]")
        g.add_argument("--n-test", type=int, help="procedural test scenes")
        g.add_argument("--image-size", type=int, help="procedural image side")
        g = sp.add_argument_group("training and pruning")
        g.add_argument("--steps", dest="train_steps", type=int, help="baseline (and re-init) training steps")
        g.add_argument("--batch-size", type=int)
        g.add_argument("--lr", type=float)
        g.add_argument("--criterion", dest="criteria", nargs="+", metavar="NAME",
                       help="pruning criteria (taylor cosine magnitude random ...) [taylor cosine]")
        g.add_argument("--targets", dest="levels", nargs="+", type=float, metavar="FRAC",
                       help="pruning levels: fractions of backbone filters removed [0.5 0.75 0.9 0.95]")
        g.add_argument("--prune-every", type=int, help="steps between prune events")
        g.add_argument("--prune-amount", type=int, help="filters removed per prune event")
        g.add_argument("--ft-steps", dest="level_ft_steps", type=int, help="fine-tuning steps at each level")
        g.add_argument("--min-channels", type=int, help="filters kept per layer at least")
        g.add_argument("--strategies", nargs="+", choices=["iterative", "reinit"])
        g.add_argument("--latency-repeats", type=int)
    return p


def _config(args):
    from .study import make_config

    keys = ["device", "seed", "model", "width", "dataset", "data_root", "data_cache", "n_train", "n_val", "n_test",
            "image_size", "train_steps", "batch_size", "lr", "criteria", "levels", "prune_every", "prune_amount",
            "level_ft_steps", "min_channels", "strategies", "latency_repeats"]
    cfg = make_config(args.preset, **{k: getattr(args, k, None) for k in keys})
    if cfg.dataset == "nyuv2" and not cfg.data_root:
        raise SystemExit("error: the nyuv2 dataset (preset paper) needs --data-root DIR, the preprocessed NYUv2 "
                         "folder with train/ and val/ holding image/ label/ depth/ normal/ <i>.npy files")
    from .pruning import PRUNER_CRITERIA

    bad = [c for c in cfg.criteria if c not in PRUNER_CRITERIA]
    if bad:
        raise SystemExit(f"error: unknown criterion {', '.join(bad)}; choose from {', '.join(PRUNER_CRITERIA)}")
    if any(not 0 < l < 1 for l in cfg.levels) or list(cfg.levels) != sorted(cfg.levels):
        raise SystemExit("error: --targets must be increasing fractions in (0, 1)")
    return cfg


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if args.command == "report":
        from .study import collect_results, write_all

        res = collect_results(out)
        if not res["baseline"]:
            print(f"error: {out} has no finished baseline yet (run `mtlkernels train --out {out}`)", file=sys.stderr)
            return 2
        write_all(res, out)
        print(f"[report] {len(res['runs'])} results -> {out / 'report.md'}, results.json, results.csv, fig_*.png")
        return 0
    import torch

    cfg = _config(args)
    threads = args.threads
    if threads is None and cfg.preset == "demo" and cfg.device == "cpu":
        # the demo's small (and pruned, odd-width) convs gain little from intra-op threads, and on a
        # machine shared with other work 2+ threads can be 10x slower (threads waiting on each other)
        threads = 1
    if threads:
        torch.set_num_threads(threads)
    from .study import Study, write_all

    t0 = time.perf_counter()
    study = Study(cfg, out, progress=not args.no_progress)
    res = study.run(STAGES[args.command])
    if args.command == "study" or res["runs"]:
        write_all(res, out)
        print(f"[report] {out / 'report.md'} ({len(res['runs'])} results; results.json, results.csv, fig_*.png)")
    print(f"[{args.command}] finished in {time.perf_counter() - t0:.0f}s -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
