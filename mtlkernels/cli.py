"""The ``mtlkernels`` command line: the paper study in stages.

    mtlkernels study  --out runs/demo              # everything: baseline, both criteria, iterative + reinit, report
    mtlkernels train  --out runs/demo              # the unpruned baseline only
    mtlkernels prune  --out runs/demo --criterion taylor
    mtlkernels retrain --out runs/demo --criterion taylor
    mtlkernels report --out runs/demo              # rebuild results.json/.csv, figures, report.md
    mtlkernels study  --preset paper --data-root /data/nyuv2 --device cuda --out runs/paper

Re-running a stopped command with the same ``--out`` resumes from its last checkpoint. Each
stage runs what it depends on first (``prune`` trains the baseline if it is missing). A bad value,
a second run on a locked ``--out`` or a folder that cannot be written ends in a one-line error
naming the flag (exit status 2), before anything runs where it can be known then.
"""
from __future__ import annotations

import argparse
import errno
import sys
import time
from pathlib import Path
from typing import List, Optional

__all__ = ["main", "build_parser"]

#: the committed results the README's results section is generated from, and its figure
#: published studies: name -> (results file, delta_m figure), each with its generated README block;
#: "default" is the main job's, "long" the same study at four times the training budget
PUBLISHED = {"default": ("docs/study_results.json", "docs/study_delta_m.png"),
             "long": ("docs/study_results_long.json", "docs/study_delta_m_long.png")}
DEFAULT_SEEDS = [0, 1, 2]

STAGES = {"train": ["train"], "prune": ["train", "prune"], "retrain": ["train", "prune", "retrain"],
          "study": ["train", "prune", "retrain"]}


def _ranged(field: str):
    """argparse ``type=`` for a numeric setting: parsed and checked against its range in RANGES."""
    from .study.config import RANGES

    r = RANGES[field]

    def parse(text: str):
        try:
            return r.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _folder(text: str) -> str:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"must be an existing folder, got {text!r}")
    return text


def _not_a_file(text: str) -> str:
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"must be a folder (or a path to create one), got the file {text!r}")
    return text


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (the full usage is ``--help``'s); exit status 2 as argparse's."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mtlkernels", description="Structured pruning of multi-task networks: the "
                                "study of Garg, Zhang, Guan (2023) on an embedded procedural dataset or NYUv2.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {"train": "train the unpruned baseline",
             "prune": "iterative pruning with each criterion, evaluating every level",
             "retrain": "re-initialise each pruned architecture and train it from scratch",
             "study": "all stages, then the report",
             "report": "rebuild results.json/.csv, figures and report.md from saved results"}
    p.commands = {}
    for name, h in helps.items():
        sp = p.commands[name] = sub.add_parser(name, help=h, description=h)
        sp.add_argument("--out", default="runs/study", type=_not_a_file,
                        help="output folder (re-running resumes) [%(default)s]")
        if name != "report":
            _add_run_arguments(sp)
    g = p.commands["report"].add_argument_group("README")
    g.add_argument("--publish", nargs="?", const="default", choices=list(PUBLISHED), metavar="NAME",
                   help="copy --out's results.json and fig_delta_m.png to docs/ as the published study NAME "
                        f"({', '.join(f'{k}: {v[0]}' for k, v in PUBLISHED.items())}) [default], then "
                        "regenerate the README's generated sections")
    g.add_argument("--readme", action="store_true",
                   help="regenerate the README's results and pilot sections from the committed docs/ files "
                        "(no --out needed)")
    g.add_argument("--check", action="store_true", help="with --readme: exit 1 if the README's section differs")
    return p


def _add_run_arguments(sp: argparse.ArgumentParser) -> None:
    r = _ranged
    g = sp.add_argument_group("run")
    g.add_argument("--preset", choices=["demo", "long", "paper"], default="demo",
                   help="demo: the authors' VGG16 at 1/8 width on procedural scenes, 3 seeds in ~15 min on 2 "
                        "CPU cores; long: the demo with 1200 training steps (~28 min with --jobs 3); paper: full "
                        "VGG16 on NYUv2, 100 filters every 500 iterations [%(default)s]")
    g.add_argument("--protocol", choices=["study", "authors"], default="study",
                   help="authors: the parts of the authors' pruning protocol the study can follow (Taylor "
                        "scores carried across prunes, floor 1; cosine per weight filter, floor 5; AdamW 5e-5, "
                        "decay 0.01; steps on grad L_last + 2 grad L_sum; README) [%(default)s]")
    g.add_argument("--device", help="cpu, cuda, cuda:1 ... [preset's]")
    g.add_argument("--seed", type=r("seed"), help="one seed (of data, init and sampling), its study in --out itself")
    g.add_argument("--seeds", type=r("seed"), nargs="+", metavar="K",
                   help=f"several seeds, each in --out/seed<K>/, then the results over seeds in --out "
                        f"[{' '.join(map(str, DEFAULT_SEEDS))}, unless --seed]")
    g.add_argument("--jobs", type=r("threads"), default=2,
                   help="seeds run at once, one process each [%(default)s]")
    g.add_argument("--margin", dest="equivalence_margin", type=r("equivalence_margin"),
                   help="finding 1's equivalence margin, points of delta_m [3]")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    g.add_argument("--threads", type=r("threads"),
                   help="torch intra-op CPU threads [demo on CPU: 1; else torch's default]")
    g.add_argument("--ckpt-every", type=r("ckpt_every"), help="training steps between checkpoints [preset's]")
    g = sp.add_argument_group("model and data")
    g.add_argument("--model", choices=["vgg16", "resnet18", "resnet34"])
    g.add_argument("--width", type=r("width"), help="channel width multiplier")
    g.add_argument("--bn", action="store_const", const=True, default=None,
                   help="BatchNorm after every conv (the authors' VGG16 has none)")
    g.add_argument("--pools", type=r("pools"), help="stride-2 max-pools of the VGG16 (the authors': 5)")
    g.add_argument("--head", choices=["deeplab", "aspp"],
                   help="deeplab: the authors' (per rate 3x3 -> 1x1 -> 1x1, summed); aspp: summed 3x3 then one 1x1")
    g.add_argument("--head-channels", type=r("head_channels"), help="mid channels of the heads [1024 x width]")
    g.add_argument("--dropout", type=r("dropout"), help="the deeplab head's dropout [0.5]")
    g.add_argument("--init", choices=["kaiming", "default"], help="backbone initialisation [kaiming]")
    g.add_argument("--data", dest="dataset", choices=["procedural", "nyuv2"])
    g.add_argument("--data-root", type=_folder,
                   help="the preprocessed NYUv2 folder (train/ val/ with image/ label/ depth/ normal/)")
    g.add_argument("--data-cache", type=_not_a_file, help="where rendered procedural scenes are cached [OUT/data]")
    g.add_argument("--n-train", type=r("n_train"), help="procedural training scenes")
    g.add_argument("--n-val", type=r("n_val"), help="procedural validation scenes (unused by the study) [0]")
    g.add_argument("--n-test", type=r("n_test"), help="procedural test scenes")
    g.add_argument("--image-size", type=r("image_size"), help="procedural image side")
    g = sp.add_argument_group("training and pruning")
    g.add_argument("--steps", dest="train_steps", type=r("train_steps"), help="baseline (and re-init) training steps")
    g.add_argument("--batch-size", type=r("batch_size"))
    g.add_argument("--lr", type=r("lr"))
    g.add_argument("--criterion", dest="criteria", nargs="+", metavar="NAME",
                   help="pruning criteria (taylor cosine magnitude random ...) [taylor cosine]")
    g.add_argument("--targets", dest="levels", nargs="+", type=r("levels"), metavar="FRAC",
                   help="pruning levels: fractions of backbone filters removed [0.5 0.75 0.9 0.95]")
    g.add_argument("--prune-every", type=r("prune_every"), help="steps between prune events")
    g.add_argument("--prune-amount", type=r("prune_amount"), help="filters removed per prune event")
    g.add_argument("--ft-steps", dest="level_ft_steps", type=r("level_ft_steps"),
                   help="fine-tuning steps at each level")
    g.add_argument("--min-channels", type=r("min_channels"), help="filters kept per layer at least")
    g.add_argument("--score-momentum", type=r("score_momentum"),
                   help="scores as an EMA with this momentum over the steps since the last prune [their mean]")
    g.add_argument("--step-weights", type=float, nargs=3, metavar=("SEG", "DEPTH", "NORMAL"),
                   help="task weights of the gradient the optimizer steps on while pruning [1 1 1]; the "
                        "authors' grad L_last + 2 grad L_sum is 2 3 2")
    g.add_argument("--prune-weight-decay", type=r("prune_weight_decay"),
                   help="weight decay between prunes [--weight-decay's]")
    g.add_argument("--strategies", nargs="+", choices=["iterative", "reinit"])
    g.add_argument("--latency-repeats", type=r("latency_repeats"))


def _config(args):
    """The run's config, every cross-flag rule checked (StudyInputError names the flag)."""
    from .study import make_config
    from .study.config import check_config

    keys = ["device", "seed", "model", "width", "bn", "pools", "head", "head_channels", "dropout", "init", "dataset", "data_root", "data_cache", "n_train", "n_val", "n_test",
            "image_size", "train_steps", "batch_size", "lr", "criteria", "levels", "prune_every", "prune_amount",
            "level_ft_steps", "min_channels", "strategies", "latency_repeats", "threads", "ckpt_every",
            "equivalence_margin", "score_momentum", "step_weights", "prune_weight_decay"]
    cfg = make_config(args.preset, args.protocol, **{k: getattr(args, k, None) for k in keys})
    if cfg.threads is None and cfg.preset in ("demo", "long") and cfg.device == "cpu":
        # the demo's small (and pruned, odd-width) convs gain little from intra-op threads, and on a
        # machine shared with other work 2+ threads can be 10x slower (threads waiting on each other)
        cfg.threads = 1
    check_config(cfg)
    return cfg


#: errnos of a write that failed for a reason outside the program: reported in one line, not a traceback
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}


def _write_failure(exc: BaseException) -> Optional[str]:
    if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    # torch.save straight to a file reports a failed write as a RuntimeError of its zip writer
    msg = str(exc)
    if isinstance(exc, RuntimeError) and any(s in msg for s in ("PytorchStreamWriter", "unexpected pos",
                                                                "file write failed")):
        return f"a torch file could not be written, the disk may be full ({msg.splitlines()[0]})"
    return None


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .pruning.io import CheckpointError
    from .study.config import StudyInputError

    try:
        return _run(args)
    except StudyInputError as exc:
        parser.commands[args.command].error(str(exc))
    except CheckpointError as exc:  # names the file and what is wrong with it
        print(f"mtlkernels {args.command}: error: {exc}; delete that file to redo its work, or use another --out",
              file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as exc:
        why = _write_failure(exc)
        if why is None:
            raise
        print(f"mtlkernels {args.command}: error: --out {args.out}: cannot write: {why}; the finished stages are "
              f"kept: free space or fix the folder, then re-run the command to resume", file=sys.stderr)
        return 2


def _report(args) -> int:
    from .study import collect_results, write_all
    from .study.config import StudyInputError
    from .study.outdir import OutLock
    from .study.seeds import collect_seeds, is_multi_seed

    out = Path(args.out)
    # a run writing results.json meanwhile would interleave with this one
    lock = OutLock(out) if (out / "config.json").exists() or is_multi_seed(out) else None
    try:
        res = collect_seeds(out) if is_multi_seed(out) else collect_results(out)
        if not res.get("seeds") and not res["baseline"]:
            raise StudyInputError(f"--out {out}: has no finished baseline yet (run `mtlkernels train "
                                  f"--out {out}`)")
        write_all(res, out)
    finally:
        if lock is not None:
            lock.release()
    print(f"[report] {out / 'report.md'}, results.json, results.csv, fig_*.png")
    if args.publish:
        import shutil

        results, figure = PUBLISHED[args.publish]
        shutil.copyfile(out / "results.json", results)
        shutil.copyfile(out / "fig_delta_m.png", figure)
        return _readme(args)
    return 0


def readme_blocks() -> dict:
    """The README's generated blocks, from the committed results (PUBLISHED: those that exist) and
    pilots files."""
    import json

    from .study.pilots import PILOTS_JSON
    from .study.report import PILOTS_BEGIN, pilots_section, readme_section, results_markers

    blocks = {results_markers(name)[0]: readme_section(json.loads(Path(res).read_text()), res, fig, name)
              for name, (res, fig) in PUBLISHED.items() if Path(res).exists()}
    blocks[PILOTS_BEGIN] = pilots_section(json.loads(Path(PILOTS_JSON).read_text()), PILOTS_JSON)
    return blocks


def _readme(args) -> int:
    """The README's results and pilot sections from the committed files (in the repository root)."""
    from .study.report import readme_blocks as replaced, write_readme

    readme = Path("README.md")
    if not Path(PUBLISHED["default"][0]).exists() or not readme.exists():
        print(f"mtlkernels report: error: --readme runs in the repository root (needs README.md and "
              f"{PUBLISHED['default'][0]})", file=sys.stderr)
        return 2
    blocks = readme_blocks()
    if args.check:
        same = replaced(readme.read_text(), blocks) == readme.read_text()
        print(f"[report] README generated sections {'match' if same else 'DIFFER from'} the committed results")
        return 0 if same else 1
    changed = write_readme(readme, blocks)
    print(f"[report] README generated sections {'regenerated' if changed else 'unchanged'}")
    return 0


def _run(args) -> int:
    out = Path(args.out)
    if args.command == "report":
        return _readme(args) if args.readme else _report(args)
    cfg = _config(args)
    from .study import Study, write_all
    from .study.config import StudyInputError

    t0 = time.perf_counter()
    if args.seed is not None and args.seeds:
        raise StudyInputError("--seed and --seeds: give one (--seed N: one seed in --out; --seeds: several)")
    if args.seed is None:
        from .study.seeds import run_seeds

        res = run_seeds(cfg, out, args.seeds or DEFAULT_SEEDS, STAGES[args.command], jobs=args.jobs)
        if any(s["runs"] for s in res["seeds"]) or args.command == "study":
            write_all(res, out)
            print(f"[report] {out / 'report.md'} ({len(res['seeds'])} seeds; results.json, results.csv, fig_*.png)")
    else:
        with Study(cfg, out, progress=not args.no_progress) as study:
            res = study.run(STAGES[args.command])
            if args.command == "study" or res["runs"]:
                write_all(res, out)
                print(f"[report] {out / 'report.md'} ({len(res['runs'])} results; results.json, results.csv, fig_*.png)")
    print(f"[{args.command}] finished in {time.perf_counter() - t0:.0f}s -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
