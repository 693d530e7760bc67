"""The pilots that chose the default study's scale, as a command, so the README's pilot table is
generated from their saved results like every other number:

    python -m mtlkernels.study.pilots --out runs/pilots [--only NAME ...]   # run (resumable), then
    python -m mtlkernels report --readme                                    # regenerate the README

Each pilot is a several-seed study folder ``<out>/<name>`` (demo preset + its overrides, the stages
it needs); the collected numbers go to ``docs/study_pilots.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..pruning.io import atomic_write_text
from .config import make_config
from .metrics import delta_m

__all__ = ["PILOTS", "run_pilots", "pilot_table", "PILOTS_JSON"]

PILOTS_JSON = "docs/study_pilots.json"

#: the demo settings the pilots ran with, pinned: a later change of the demo's defaults must not change
#: a pilot (its folder would refuse to resume, and its numbers would no longer be what the table says)
PILOT_BASE: Dict[str, Any] = dict(levels=[0.5, 0.8, 0.93], prune_every=4, prune_amount=13, level_ft_steps=20)

#: name -> (what it asks, overrides of the demo preset, stages, seeds, reference pilot of its baseline,
#: optionally the protocol applied before the overrides)
PILOTS: Dict[str, Dict[str, Any]] = {
    "base-300": dict(why="baseline at the default budget; seed noise", over=dict(train_steps=300),
                     stages=["train"], seeds=[0, 1], ref=None),
    "base-600": dict(why="(a) converged? doubling the steps", over=dict(train_steps=600), stages=["train"],
                     seeds=[0], ref="base-300"),
    "base-600-nodrop": dict(why="head dropout 0 instead of the authors' 0.5", over=dict(train_steps=600, dropout=0.0),
                            stages=["train"], seeds=[0], ref="base-300"),
    "base-300-nodrop": dict(why="head dropout 0 at the default budget", over=dict(train_steps=300, dropout=0.0),
                            stages=["train"], seeds=[0], ref="base-300"),
    "base-300-lr5-nodrop": dict(why="faster learning: lr 5e-3, no dropout",
                                over=dict(train_steps=300, lr=5e-3, dropout=0.0), stages=["train"], seeds=[0],
                                ref="base-300"),
    "base-1200": dict(why="(a) converged? four times the default budget; seed noise there",
                      over=dict(train_steps=1200), stages=["train"], seeds=[0, 1, 2], ref="base-600"),
    "base-2400": dict(why="(a) converged? doubling 1200 steps", over=dict(train_steps=2400), stages=["train"],
                      seeds=[0], ref="base-1200"),
    "base-300-bn": dict(why="the BN variant (--bn) at the default budget", over=dict(train_steps=300, bn=True),
                        stages=["train"], seeds=[0], ref=None),
    "base-600-bn": dict(why="(a) for the BN variant: doubling its steps", over=dict(train_steps=600, bn=True),
                        stages=["train"], seeds=[0], ref="base-300-bn"),
    "prune-1200": dict(why="(b)/(c): the pruning curve from a 1200-step baseline, both criteria",
                       over=dict(train_steps=1200, levels=[0.5, 0.8, 0.9, 0.94]), stages=["train", "prune"],
                       seeds=[0], ref="base-1200"),
    "prune-1200-authors": dict(why="the same under --protocol authors (README: what it sets)",
                               over=dict(train_steps=1200, levels=[0.5, 0.8, 0.94]), protocol="authors",
                               stages=["train", "prune"], seeds=[0], ref="base-1200"),
    "prune-300": dict(why="(b)/(c): the pruning curve at the default scale, 13 filters every 8 steps",
                      over=dict(train_steps=300, levels=[0.25, 0.5, 0.75, 0.9], prune_every=8, level_ft_steps=30,
                                criteria=["taylor"]), stages=["train", "prune"], seeds=[0], ref=None),
}


def run_pilots(out: Path, names: Optional[List[str]] = None, jobs: int = 2) -> Dict[str, Any]:
    """Run (or resume) the pilots, each writing ``<out>/<name>/pilot.json``; then every finished pilot
    under ``out`` is collected into PILOTS_JSON (so two commands on disjoint ``names`` may run at once)."""
    from .seeds import collect_seeds, run_seeds

    for name, p in PILOTS.items():
        if names and name not in names:
            continue
        cfg = make_config("demo", p.get("protocol", "study"), threads=1, **dict(PILOT_BASE, **p["over"]))
        run_seeds(cfg, Path(out) / name, p["seeds"], p["stages"], jobs=jobs)
        res = collect_seeds(Path(out) / name)
        atomic_write_text(Path(out) / name / "pilot.json", json.dumps(
            {"why": p["why"], "over": p["over"], "protocol": p.get("protocol", "study"), "ref": p["ref"],
             "seeds": [_brief(s) for s in res["seeds"]]}))
    collected = {n: json.loads((Path(out) / n / "pilot.json").read_text()) for n in PILOTS
                 if (Path(out) / n / "pilot.json").exists()}
    atomic_write_text(Path(PILOTS_JSON), json.dumps(collected, indent=1))
    return collected


def _brief(s: Dict[str, Any]) -> Dict[str, Any]:
    b = s["baseline"]
    return {"seed": s["config"]["seed"], "baseline_metrics": b["metrics"], "train_seconds": b["train_seconds"],
            "runs": [{k: r[k] for k in ("criterion", "strategy", "level", "filters_removed_frac", "delta_m")}
                     for r in s["runs"]]}


def _fmt(v: Optional[float]) -> str:
    return "–" if v is None else f"{v:+.1f}"


def pilot_table(pilots: Dict[str, Any]) -> List[str]:
    """Markdown rows: per pilot its settings, its baseline's delta_m against the reference pilot's (same
    seed, mean over the seeds both ran), the seed noise (the standard deviation over seeds of each
    baseline's delta_m against seed 0's), and its pruning curve (seed 0, per criterion)."""
    L = ["| pilot | asks | settings | seeds | baseline time (s) | baseline dm vs reference (same seed) | "
         "seed noise: SD of baseline dm | iterative dm per level (removed: dm) |", "|---" * 8 + "|"]
    for name, p in pilots.items():
        seeds = p["seeds"]
        ref = pilots.get(p["ref"]) if p["ref"] else None
        vs_ref = None
        if ref:
            rb = {s["seed"]: s["baseline_metrics"] for s in ref["seeds"]}
            d = [delta_m(s["baseline_metrics"], rb[s["seed"]])["all"] for s in seeds if s["seed"] in rb]
            vs_ref = sum(d) / len(d) if d else None
        noise = (statistics.stdev(delta_m(s["baseline_metrics"], seeds[0]["baseline_metrics"])["all"] for s in seeds)
                 if len(seeds) > 1 else None)
        runs = [r for r in seeds[0]["runs"] if r["strategy"] == "iterative"]
        crits = list(dict.fromkeys(r["criterion"] for r in runs))
        curve = "; ".join(f"{c}: " + ", ".join(f"{100 * r['filters_removed_frac']:.0f}%: {r['delta_m']['all']:+.1f}"
                                               for r in runs if r["criterion"] == c) for c in crits) or "–"
        over = ", ".join([f"{k}={v}" for k, v in p["over"].items()]
                         + ([f"protocol={p['protocol']}"] if p.get("protocol", "study") != "study" else []))
        secs = sum(s["train_seconds"] for s in seeds) / len(seeds)
        L.append(f"| `{name}` | {p['why']} | {over} | {len(seeds)} | {secs:.0f} | {_fmt(vs_ref)} | "
                 f"{'–' if noise is None else f'{noise:.1f}'} | "
                 f"{curve} |")
    return L


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/pilots")
    ap.add_argument("--only", nargs="+", choices=list(PILOTS))
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    run_pilots(Path(args.out), args.only, args.jobs)
    print(f"[pilots] -> {PILOTS_JSON}; regenerate the README with `python -m mtlkernels report --readme`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
