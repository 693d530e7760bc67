"""A study over several seeds: one one-seed study folder per seed (``<out>/seed<k>/``, each with every
guarantee of :class:`~mtlkernels.study.runner.Study`: atomic stages, exact resume, its lock), run
``jobs`` at a time in child processes, then the results over seeds in ``<out>``.

    <out>/.lock             flock'ed while a several-seed run or report uses the folder
    <out>/study.json        the seeds and the shared settings (written once; a later run must agree)
    <out>/seed<k>/          one-seed study folders (their own config.json, results.json, report.md)
    <out>/results.json ...  the results over seeds, figures with CI bands, report.md

A child runs ``python -m mtlkernels.study.seeds CONFIG OUT STAGES`` (its output in ``seed<k>/stdout.txt``).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

from ..pruning.io import atomic_write_text
from .config import StudyConfig, StudyInputError, check_config
from .outdir import OutLock, prepare_out

__all__ = ["run_seeds", "collect_seeds", "is_multi_seed", "seed_dir"]


def seed_dir(out: Path, seed: int) -> Path:
    return Path(out) / f"seed{seed}"


def is_multi_seed(out: Path) -> bool:
    return (Path(out) / "study.json").exists()


def _check_study_json(out: Path, cfg: StudyConfig, seeds: Sequence[int]) -> None:
    """study.json is written once; a re-run must ask for the same seeds (each seed folder checks the rest)."""
    path = out / "study.json"
    if path.exists():
        old = json.loads(path.read_text())
        if list(old["seeds"]) != list(seeds):
            raise StudyInputError(f"--out {out} holds a study of seeds {old['seeds']}, now {list(seeds)}; use "
                                  f"another --out, or the same --seeds to resume it")
    else:
        atomic_write_text(path, json.dumps({"seeds": list(seeds), "config": cfg.to_dict()}, indent=1))


def _child(cfg: StudyConfig, out: Path, seed: int, stages: Sequence[str]) -> subprocess.Popen:
    d = prepare_out(seed_dir(out, seed))
    cfg_path = d / "requested-config.json"
    atomic_write_text(cfg_path, json.dumps(dict(cfg.to_dict(), seed=seed)))
    log = open(d / "stdout.txt", "a")
    try:
        return subprocess.Popen([sys.executable, "-m", "mtlkernels.study.seeds", str(cfg_path), str(d),
                                 ",".join(stages)], stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


def run_seeds(cfg: StudyConfig, out, seeds: Sequence[int], stages: Sequence[str], jobs: int = 1,
              log=print) -> Dict[str, Any]:
    """Run ``stages`` for every seed (``jobs`` child processes at a time) and return the results over
    seeds (:func:`collect_seeds`). A failed seed raises once every running one has ended; re-running resumes."""
    check_config(cfg)
    if not seeds or len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise StudyInputError(f"--seeds {' '.join(map(str, seeds))}: must be distinct integers >= 0")
    out = prepare_out(Path(out))
    lock = OutLock(out)
    try:
        _check_study_json(out, cfg, seeds)
        pending, running, failed = list(seeds), {}, []
        t0 = time.perf_counter()
        while pending or running:
            while pending and len(running) < max(1, jobs):
                s = pending.pop(0)
                running[s] = _child(cfg, out, s, stages)
                log(f"[seeds] seed {s} started (log: {seed_dir(out, s) / 'stdout.txt'})")
            time.sleep(0.5)
            for s, proc in list(running.items()):
                if proc.poll() is not None:
                    del running[s]
                    log(f"[seeds] seed {s} {'done' if proc.returncode == 0 else f'FAILED ({proc.returncode})'} "
                        f"after {time.perf_counter() - t0:.0f}s")
                    if proc.returncode != 0:
                        failed.append(s)
        if failed:
            tail = (seed_dir(out, failed[0]) / "stdout.txt").read_text().strip().splitlines()[-1:]
            raise StudyInputError(f"--seeds: seed(s) {failed} failed (see {seed_dir(out, failed[0])}/stdout.txt: "
                                  f"{tail[0] if tail else ''}); re-run to resume")
        return collect_seeds(out)
    finally:
        lock.release()


def collect_seeds(out) -> Dict[str, Any]:
    """The results over seeds of a several-seed folder: its config and each seed's ``collect_results``."""
    from .runner import collect_results

    out = Path(out)
    meta = json.loads((out / "study.json").read_text())
    seeds: List[Dict[str, Any]] = []
    for s in meta["seeds"]:
        if (seed_dir(out, s) / "config.json").exists():
            seeds.append(collect_results(seed_dir(out, s)))
    seeds = [r for r in seeds if r.get("baseline")]
    if not seeds:
        raise StudyInputError(f"--out {out}: no seed has a finished baseline yet")
    # wall time of the runs: from study.json (written once, when the first run starts) to the last line
    # any seed logged (its final evaluation); the parent's report writing, seconds, is not included
    logs = [seed_dir(out, s) / "log.txt" for s in meta["seeds"] if (seed_dir(out, s) / "log.txt").exists()]
    wall = max(p.stat().st_mtime for p in logs) - (out / "study.json").stat().st_mtime if logs else None
    return {"config": meta["config"], "tasks": seeds[0]["tasks"], "seeds": seeds, "wall_seconds": wall}


def _main(argv: List[str]) -> int:
    """A child: one seed's study in its folder, then that folder's one-seed report."""
    from .report import write_all
    from .runner import Study

    cfg = StudyConfig.from_dict(json.loads(Path(argv[0]).read_text()))
    with Study(cfg, argv[1], progress=False) as study:
        res = study.run(argv[2].split(","))
        if res["runs"]:
            write_all(res, argv[1])
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
