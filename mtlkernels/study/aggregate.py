"""The study's results over seeds: per-level means with 95% t-intervals, and the paper's three findings
as tests on per-seed values (``findings``). Input: a list of one-seed results (``collect_results``)."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from . import metrics as M
from .stats import mean_ci, tost_paired

__all__ = ["criteria_of", "runs_of", "summarize", "findings", "DEFAULT_MARGIN"]

DEFAULT_MARGIN = 3.0  # equivalence margin of finding 1, in points of delta_m (config: equivalence_margin)


def criteria_of(seeds: List[Dict[str, Any]]) -> List[str]:
    """Criteria in config order, then any others met in the runs."""
    seen: List[str] = list(seeds[0].get("config", {}).get("criteria", [])) if seeds else []
    present = {r["criterion"] for s in seeds for r in s["runs"]}
    seen = [c for c in seen if c in present]
    for s in seeds:
        for r in s["runs"]:
            if r["criterion"] not in seen:
                seen.append(r["criterion"])
    return seen


def runs_of(res: Dict[str, Any], strategy: str, criterion: str) -> List[Dict[str, Any]]:
    return sorted([r for r in res["runs"] if r["strategy"] == strategy and r["criterion"] == criterion],
                  key=lambda r: r["level_index"])


def _metric_cis(entries: List[Dict[str, Any]], tasks: List[str]) -> Dict[str, Dict[str, Any]]:
    return {t: {k: mean_ci([e["metrics"].get(t, {}).get(k) for e in entries]) for k in M.METRICS[t]} for t in tasks}


def _dm_cis(entries: List[Dict[str, Any]], tasks: List[str]) -> Dict[str, Any]:
    return {k: mean_ci([e["delta_m"].get(k) for e in entries]) for k in ["all"] + tasks}


def summarize(seeds: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Per criterion x strategy x level: mean and CI over seeds of delta_m, task metrics, parameters;
    the baseline's metrics and the from-scratch control's delta_m likewise."""
    tasks = seeds[0]["tasks"]
    bases = [s["baseline"] for s in seeds if s.get("baseline")]
    out: Dict[str, Any] = {"n_seeds": len(seeds), "seeds": [s["config"]["seed"] for s in seeds],
                           "baseline": {"metrics": _metric_cis(bases, tasks),
                                        "params_total": mean_ci([b["params_total"] for b in bases])},
                           "trivial": _metric_cis([s["trivial"] for s in seeds if s.get("trivial")], tasks),
                           "levels": []}
    controls = [s["control"] for s in seeds if s.get("control")]
    if controls:
        out["control"] = {"delta_m": _dm_cis(controls, tasks), "metrics": _metric_cis(controls, tasks)}
    for c in criteria_of(seeds):
        for strategy in ("iterative", "reinit"):
            per_seed = [runs_of(s, strategy, c) for s in seeds]
            for li in sorted({r["level_index"] for rs in per_seed for r in rs}):
                es = [r for rs in per_seed for r in rs if r["level_index"] == li]
                out["levels"].append({
                    "criterion": c, "strategy": strategy, "level": es[0]["level"], "level_index": li, "n": len(es),
                    "filters_removed_frac": mean_ci([e["filters_removed_frac"] for e in es]),
                    "params_total": mean_ci([e["params_total"] for e in es]),
                    "delta_m": _dm_cis(es, tasks), "metrics": _metric_cis(es, tasks)})
    return out


def _interp(xq: float, xs: List[float], ys: List[float]) -> Optional[float]:
    """Linear interpolation in log(x); None outside the range of xs (a 2% tolerance at a single point)."""
    if len(xs) < 2:
        return ys[0] if xs and abs(xs[0] - xq) / max(xq, 1) < 0.02 else None
    lx, lq = np.log(np.asarray(xs, float)), math.log(xq)
    order = np.argsort(lx)
    lx, yv = lx[order], np.asarray(ys, float)[order]
    if lq < lx[0] - 1e-9 or lq > lx[-1] + 1e-9:
        return None
    return float(np.interp(lq, lx, yv))


def _f1_point(seeds, strategy: str, a: str, b: str, li: int) -> Tuple[List[float], int]:
    """Per-seed differences a - b of delta_m at a's parameter count of level li (b interpolated in
    log-parameters along its own curve, which starts at the unpruned network: the baseline for
    iterative, the from-scratch control for reinit); seeds where both leave the same architecture
    are left out."""
    diffs, same = [], 0
    for s in seeds:
        ra, rb = runs_of(s, strategy, a), runs_of(s, strategy, b)
        pa = next((r for r in ra if r["level_index"] == li), None)
        pb = next((r for r in rb if r["level_index"] == li), None)
        if pa is None or not rb:
            continue
        if pb is not None and pa.get("arch") is not None and pa.get("arch") == pb.get("arch"):
            same += 1
            continue
        start = s.get("control") if strategy == "reinit" else s.get("baseline")
        if start is not None:
            rb = [{"params_total": start["params_total"],
                   "delta_m": {"all": start.get("delta_m", {}).get("all", 0.0)}}] + rb
        yb = _interp(pa["params_total"], [r["params_total"] for r in rb], [r["delta_m"]["all"] for r in rb])
        if yb is not None:
            diffs.append(pa["delta_m"]["all"] - yb)
    return diffs, same


def _finding1(seeds, crits: List[str], margin: float) -> Optional[Dict[str, Any]]:
    if len(crits) < 2:
        return None
    a, b = crits[0], crits[1]
    points = []
    for strategy in ("iterative", "reinit"):
        lis = sorted({r["level_index"] for s in seeds for r in runs_of(s, strategy, a)})
        for li in lis:
            diffs, same = _f1_point(seeds, strategy, a, b, li)
            lev = next(r["level"] for s in seeds for r in runs_of(s, strategy, a) if r["level_index"] == li)
            t = tost_paired(diffs, margin)
            points.append({"strategy": strategy, "level": lev, "level_index": li, "diffs": diffs,
                           "n_same_arch": same, "ci": mean_ci(diffs), "tost": t,
                           "tested": len(diffs) >= 2})
    tested = [p for p in points if p["tested"]]
    n_eq = sum(p["tost"]["equivalent"] for p in tested)
    return {"criteria": [a, b], "margin": margin, "points": points, "n_tested": len(tested), "n_equivalent": n_eq,
            "n_different": sum(p["ci"]["lo"] > 0 or p["ci"]["hi"] < 0 for p in tested),
            "supported": bool(tested) and n_eq == len(tested), "partly": n_eq > 0}


def _curve(res, c: str, key: str) -> Tuple[List[float], List[float]]:
    rs = runs_of(res, "iterative", c)
    return [0.0] + [100 * r["filters_removed_frac"] for r in rs], [0.0] + [r["delta_m"].get(key, math.nan) for r in rs]


def _slopes(x: List[float], y: List[float], k: int) -> Tuple[float, float]:
    """Drop per point of filters removed from the baseline to point k, and from k to the last point."""
    return (y[k] - y[0]) / max(x[k] - x[0], 1e-9), (y[-1] - y[k]) / max(x[-1] - x[k], 1e-9)


def _finding2(seeds, crits: List[str], tasks: List[str]) -> Dict[str, Any]:
    """The knee (chosen on the seed-mean delta_m curve: the level where the slope after it is steepest
    relative to the slope before) and, per task, the slopes before and after it with CIs."""
    per: Dict[str, Any] = {}
    for c in crits:
        curves = [_curve(s, c, "all") for s in seeds]
        n = min(len(x) for x in (cv[0] for cv in curves))
        if n < 3:
            continue
        mx = [float(np.mean([cv[0][i] for cv in curves])) for i in range(n)]
        my = [float(np.mean([cv[1][i] for cv in curves])) for i in range(n)]
        k = max(range(1, n - 1), key=lambda i: (lambda b, a: b - a)(*_slopes(mx, my, i)))
        rows = {}
        for key in ["all"] + tasks:
            sl = [_slopes(*[v[:n] for v in _curve(s, c, key)], k) for s in seeds]
            before, after = [v[0] for v in sl], [v[1] for v in sl]
            d = mean_ci([a - b for a, b in zip(after, before)])
            rows[key] = {"before": mean_ci(before), "after": mean_ci(after), "after_minus_before": d,
                         "sharper": bool(d["hi"] < 0)}
        per[c] = {"knee_removed_pct": mx[k], "last_removed_pct": mx[-1], "knee_level_index": k - 1,
                  "dm_at_knee": mean_ci([_curve(s, c, "all")[1][k] for s in seeds]), "tasks": rows,
                  "all_sharper": all(v["sharper"] for v in rows.values())}
    return {"per_criterion": per, "supported": bool(per) and all(v["all_sharper"] for v in per.values()),
            "partly": any(v["all_sharper"] for v in per.values())}


def _finding3(seeds, crits: List[str], tasks: List[str]) -> Dict[str, Any]:
    per: Dict[str, Any] = {}
    for c in crits:
        rows = []
        lis = sorted({r["level_index"] for s in seeds for r in runs_of(s, "reinit", c)})
        for li in lis:
            pairs = [(it, re_) for s in seeds
                     for it in runs_of(s, "iterative", c) if it["level_index"] == li
                     for re_ in runs_of(s, "reinit", c) if re_["level_index"] == li]
            if not pairs:
                continue
            rows.append({"level": pairs[0][0]["level"], "level_index": li,
                         "removed_pct": float(np.mean([100 * p[0]["filters_removed_frac"] for p in pairs])),
                         "diff": {k: mean_ci([q["delta_m"].get(k, math.nan) - it["delta_m"].get(k, math.nan)
                                              for it, q in pairs]) for k in ["all"] + tasks}})
        if rows:
            per[c] = {"rows": rows, "last_better": bool(rows[-1]["diff"]["all"]["lo"] > 0),
                      "better_levels": [r["level"] for r in rows if r["diff"]["all"]["lo"] > 0]}
    ctrl = [s["control"]["delta_m"]["all"] for s in seeds if s.get("control")]
    return {"per_criterion": per, "control": mean_ci(ctrl),
            "supported": bool(per) and all(v["last_better"] for v in per.values()),
            "partly": any(v["better_levels"] for v in per.values())}


def findings(seeds: List[Dict[str, Any]], margin: Optional[float] = None) -> Dict[str, Any]:
    """The paper's three findings, each a test on per-seed values (see the README's study section)."""
    crits, tasks = criteria_of(seeds), seeds[0]["tasks"]
    if margin is None:
        margin = float(seeds[0]["config"].get("equivalence_margin", DEFAULT_MARGIN))
    return {"f1": _finding1(seeds, crits, margin), "f2": _finding2(seeds, crits, tasks),
            "f3": _finding3(seeds, crits, tasks)}
