"""results.json / results.csv / figures / report.md from the study's results."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from . import metrics as M
from ..pruning.io import atomic_write_text
from .aggregate import criteria_of, findings as _findings, summarize

__all__ = ["write_all", "write_csv", "make_figures", "make_report", "findings", "seed_results", "readme_section",
           "pilots_section", "readme_blocks", "README_BEGIN", "README_END", "PILOTS_BEGIN", "write_readme"]

METRIC_LABEL = {
    "miou": "mIoU (%)", "pixel_acc": "pixel acc. (%)", "abs_err": "abs. error (m)", "rel_err": "rel. error",
    "mean_angle": "mean angle (deg)", "median_angle": "median angle (deg)", "within_11.25": "< 11.25 deg (%)",
    "within_22.5": "< 22.5 deg (%)", "within_30": "< 30 deg (%)",
}
TASK_LABEL = {"seg": "segmentation", "depth": "depth", "normal": "surface normals"}


def seed_results(res) -> List[Dict[str, Any]]:
    """The one-seed results inside ``res``: its ``seeds`` (a several-seed study) or ``res`` itself."""
    return list(res["seeds"]) if "seeds" in res else [res]


def findings(res) -> Dict[str, Any]:
    """The three findings of ``res`` (one seed or several): see :func:`aggregate.findings`."""
    return _findings(seed_results(res))


# ---------------------------------------------------------------------------------------------- csv
CSV_FIELDS = ["seed", "criterion", "strategy", "level", "level_index", "filters_removed_frac", "backbone_filters", "task",
              "metric", "value", "baseline_value", "rel_change_pct", "params_task", "flops_task", "params_total",
              "latency_ms"]


def csv_rows(res) -> List[Dict[str, Any]]:
    """One row per seed x criterion x strategy x level x task metric (and delta_m)."""
    if "seeds" in res:
        return [row for s in res["seeds"] for row in csv_rows(s)]
    rows = []
    seed = res.get("config", {}).get("seed")
    base = res.get("baseline") or {}
    bm = base.get("metrics", {})
    entries = []
    if base:
        entries.append(dict(base, criterion="none", strategy="baseline", level=0.0, level_index=-1,
                            filters_removed_frac=0.0, delta_m={}))
    entries += res["runs"]
    if res.get("control"):
        entries.append(res["control"])
    for r in entries:
        for t in res["tasks"]:
            for k in M.METRICS[t] + ("loss",):
                v = r["metrics"].get(t, {}).get(k)
                if v is None:
                    continue
                b = bm.get(t, {}).get(k)
                rel = None
                if b not in (None, 0) and k in M.HIGHER_IS_BETTER:
                    rel = 100.0 * (1 if M.HIGHER_IS_BETTER[k] else -1) * (v - b) / abs(b)
                rows.append({"seed": seed, "criterion": r["criterion"], "strategy": r["strategy"], "level": r["level"],
                             "level_index": r["level_index"], "filters_removed_frac": r["filters_removed_frac"],
                             "backbone_filters": r["backbone_filters"], "task": t, "metric": k, "value": v,
                             "baseline_value": b, "rel_change_pct": rel, "params_task": r["params"][t],
                             "flops_task": r["flops"][t], "params_total": r["params_total"],
                             "latency_ms": r["latency_ms"]})
        for t, v in r.get("delta_m", {}).items():
            rows.append({"seed": seed, "criterion": r["criterion"], "strategy": r["strategy"], "level": r["level"],
                         "level_index": r["level_index"], "filters_removed_frac": r["filters_removed_frac"],
                         "backbone_filters": r["backbone_filters"], "task": t, "metric": "delta_m", "value": v,
                         "baseline_value": 0.0, "rel_change_pct": v,
                         "params_task": r["params"].get(t, r["params_total"]),
                         "flops_task": r["flops"].get(t, None), "params_total": r["params_total"],
                         "latency_ms": r["latency_ms"]})
    return rows


def write_csv(res, path: Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    w.writeheader()
    for row in csv_rows(res):
        w.writerow({k: ("" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------- figures
def _band(ax, summary, crit: str, strategy: str, t: str, k: str, color, ls: str,
          mk: str) -> Tuple[List[float], List[float]]:
    """One criterion x strategy: seed-mean line over filters removed, its 95% CI as a band; returns
    the plotted means and band edges (for the axis range)."""
    rows = [r for r in summary["levels"] if r["criterion"] == crit and r["strategy"] == strategy]
    if not rows:
        return [], []
    base = summary["baseline"]["metrics"]
    pick = (lambda r: r["delta_m"][k]) if t == "delta_m" else (lambda r: r["metrics"][t][k])
    x = [0.0] + [100 * r["filters_removed_frac"]["mean"] for r in rows]
    b0 = {"mean": 0.0, "lo": 0.0, "hi": 0.0} if t == "delta_m" else base[t][k]
    cis = [b0] + [pick(r) for r in rows]
    y = [c["mean"] for c in cis]
    ax.plot(x, y, ls=ls, marker=mk, color=color, ms=4, label=f"{crit}, {strategy}")
    lo, hi = [c["lo"] for c in cis], [c["hi"] for c in cis]
    if all(math.isfinite(v) for v in lo + hi):
        ax.fill_between(x, lo, hi, color=color, alpha=0.15 if strategy == "iterative" else 0.08, lw=0)
        return y, lo + hi
    return y, []


def _clip_bands(ax, means: List[float], edges: List[float]) -> None:
    """A band far wider than the spread of the means (one diverged seed of three) would flatten every
    curve: the axis then spans the means with a margin, and says that a band is cut."""
    means = [v for v in means if math.isfinite(v)]
    edges = [v for v in edges if math.isfinite(v)]
    if not means or not edges:
        return
    lo, hi = min(means), max(means)
    pad = max(0.5 * (hi - lo), 2.0)
    if min(edges) < lo - 2 * pad or max(edges) > hi + 2 * pad:
        ax.set_ylim(max(min(edges), lo - pad), min(max(edges), hi + pad))
        ax.text(0.99, 0.02, "CI band cut at the axis", transform=ax.transAxes, ha="right", va="bottom",
                fontsize=7, color="0.4")


def _figure(res, summary, t: str, out: Path) -> Path:
    import matplotlib.pyplot as plt

    names = M.METRICS[t] if t != "delta_m" else ("all",) + tuple(res_tasks(res))
    ncol = min(len(names), 3 if len(names) > 4 else len(names))
    nrow = int(math.ceil(len(names) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False)
    crits = [c for c in criteria_of(seed_results(res))]
    styles = {"iterative": ("-", "o"), "reinit": ("--", "s")}
    triv = seed_results(res)[0].get("trivial")
    for ax, k in zip(axes.ravel(), names):
        means: List[float] = []
        edges: List[float] = []
        for i, c in enumerate(crits):
            for s, (ls, mk) in styles.items():
                m, e = _band(ax, summary, c, s, t, k, plt.cm.tab10(i), ls, mk)
                means += m
                edges += e
        if t == "delta_m" and summary.get("control"):
            cc = summary["control"]["delta_m"][k]
            ax.errorbar([0.0], [cc["mean"]], yerr=[[cc["mean"] - cc["lo"]], [cc["hi"] - cc["mean"]]]
                        if math.isfinite(cc["lo"]) else None, fmt="kD", ms=5, label="unpruned, retrained (control)")
        if triv and t != "delta_m":
            ax.axhline(triv["metrics"][t][k], color="0.6", lw=1.0, ls="-.", label="trivial predictor")
            means.append(triv["metrics"][t][k])
        _clip_bands(ax, means, edges)
        ax.set_xlabel("backbone filters removed (%)")
        ax.set_ylabel(METRIC_LABEL.get(k, f"delta_m {k} (%)"))
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    h, lab = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(h, lab, loc="lower center", ncol=min(len(lab), 6), fontsize=8, frameon=False)
    n = summary["n_seeds"]
    fig.suptitle(f"{TASK_LABEL.get(t, 'multi-task delta_m (higher is better)')}: mean of {n} seed(s)"
                 + (", 95% CI bands" if n > 1 else ""), fontsize=11)
    fig.tight_layout(rect=(0, 0.07 if nrow == 1 else 0.05, 1, 0.95))
    p = out / f"fig_{t}.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


def res_tasks(res) -> List[str]:
    return list(res.get("tasks") or seed_results(res)[0]["tasks"])


def make_figures(res, out: Path) -> List[Path]:
    """fig_<task>.png and fig_delta_m.png: every metric vs filters removed, seed means with CI bands."""
    import matplotlib

    matplotlib.use("Agg")
    summary = res.get("summary") or summarize(seed_results(res))
    return [_figure(res, summary, t, Path(out)) for t in res_tasks(res) + ["delta_m"]]


# ---------------------------------------------------------------------------------------------- text
def _ci(c: Dict[str, float], fmt: str = "+.1f", unit: str = "") -> str:
    """``mean ± half-width`` (half-width of the 95% t-interval), or the mean alone for one seed."""
    if not math.isfinite(c.get("mean", math.nan)):
        return "n/a"
    if not math.isfinite(c.get("lo", math.nan)):
        return f"{c['mean']:{fmt}}{unit}"
    return f"{c['mean']:{fmt}}{unit} ± {(c['hi'] - c['lo']) / 2:.{fmt[-2]}f}"


def _verdict(ok: bool, partial: bool = False) -> str:
    return "**supported**" if ok else ("**partly supported**" if partial else "**not supported**")


def _report_setup(res) -> List[str]:
    cfg, tasks = res["config"], res_tasks(res)
    seeds = [s["config"]["seed"] for s in seed_results(res)]
    model = (f"{cfg['model']} (width x{cfg['width']}, BN {cfg['bn']}, {cfg.get('pools')} stride-2 pools, "
             f"{cfg.get('head', 'aspp')} heads, rates {cfg['rates']})")
    L = ["# Structured pruning of a multi-task network: study report\n",
         f"Preset `{cfg['preset']}`: {model}, one head per task ({', '.join(tasks)}); dataset `{cfg['dataset']}`"
         + (f" ({cfg['n_train']} train / {cfg['n_test']} test scenes of {cfg['image_size']}x{cfg['image_size']})"
            if cfg["dataset"] == "procedural" else "") + f"; seeds {seeds}; device `{cfg['device']}`.",
         f"Baseline: {cfg['train_steps']} steps of Adam (lr {cfg['lr']}, cosine), batch {cfg['batch_size']}. "
         f"Iterative pruning of the shared backbone's filters (heads kept whole): {cfg['prune_amount']} filters every "
         f"{cfg['prune_every']} steps (scores averaged over those steps), {cfg['level_ft_steps']} fine-tuning steps "
         f"at each level before it is evaluated, at least {cfg['min_channels']} filters kept per layer, global "
         f"ranking. Re-initialised retraining: each pruned architecture with fresh weights (a seed per criterion and "
         f"level), trained with the baseline's budget; the control is the unpruned architecture retrained so. "
         f"Metrics on the test split; `a ± h` is the mean over seeds and the half-width of its 95% t-interval.\n"]
    return L


def _report_baseline(res, summary, h: str = "##") -> List[str]:
    tasks, triv = res_tasks(res), summary.get("trivial", {})
    L = [f"{h} Baseline vs trivial predictors\n", "| task | metric | trivial (majority class, mean depth, mean "
         "normal) | baseline |", "|---|---|---|---|"]
    for t in tasks:
        for k in M.METRICS[t]:
            tv = _ci(triv[t][k], ".3f") if t in triv else "n/a"
            L.append(f"| {t} | {METRIC_LABEL[k]} | {tv} | {_ci(summary['baseline']['metrics'][t][k], '.3f')} |")
    if summary.get("control"):
        L.append(f"\nControl (the unpruned architecture re-initialised and retrained with the same budget): delta_m "
                 f"{_ci(summary['control']['delta_m']['all'])}% against the baseline (0 = the budget reproduces it).")
    return L + [""]


def _report_levels(res, summary, h: str = "##") -> List[str]:
    tasks = res_tasks(res)
    L = [f"{h} delta_m per level\n",
         "delta_m: mean relative change of the task's metrics against the unpruned baseline of the same seed, "
         "sign-corrected (higher is better; `all` = mean over tasks).\n",
         "| criterion | strategy | filters removed | params | " + " | ".join(f"dm {t} (%)" for t in tasks)
         + " | dm all (%) |", "|---" * (5 + len(tasks)) + "|"]
    for r in summary["levels"]:
        L.append(f"| {r['criterion']} | {r['strategy']} | {r['filters_removed_frac']['mean']:.1%} | "
                 f"{r['params_total']['mean']:,.0f} | " + " | ".join(_ci(r["delta_m"][t]) for t in tasks)
                 + f" | {_ci(r['delta_m']['all'])} |")
    return L + [""]


def _f1_lines(f1) -> List[str]:
    if not f1:
        return ["**1. Criteria perform alike at equal parameter counts.** Not measured (needs two criteria).", ""]
    a, b = f1["criteria"]
    L = [f"**1. Criteria perform alike at equal parameter counts.** {_verdict(f1['supported'], f1['partly'])}: "
         f"equivalent (TOST, margin ±{f1['margin']:g} points of delta_m, 5%) at {f1['n_equivalent']} of "
         f"{f1['n_tested']} tested points; the 95% CI of the difference excludes 0 at {f1['n_different']}. "
         f"Per seed, `{a}` minus `{b}` (interpolated in log-parameters at `{a}`'s count); a seed where both "
         f"leave the same architecture is left out:"]
    for p in f1["points"]:
        what = (f"{_ci(p['ci'])} (n {p['tost']['n']}), TOST p = {p['tost']['p']:.3f} -> "
                f"{'equivalent' if p['tost']['equivalent'] else 'not shown equivalent'}" if p["tested"]
                else f"not tested (n {len(p['diffs'])})")
        L.append(f"- {p['strategy']}, level {p['level']:.2f}: {what}"
                 + (f"; {p['n_same_arch']} seed(s) with the same architecture left out" if p["n_same_arch"] else ""))
    return L + [""]


def _f2_lines(f2, tasks) -> List[str]:
    if not f2["per_criterion"]:
        return ["**2. Extreme iterative pruning drops every task sharply.** Not measured (needs >= 2 levels).", ""]
    L = [f"**2. Extreme iterative pruning drops every task sharply.** {_verdict(f2['supported'], f2['partly'])}: "
         "the knee is the level after which the seed-mean delta_m falls most steeply relative to before it; a task "
         "drops sharply when the 95% CI of (drop per point after) - (drop per point before) lies below 0. Points "
         "of delta_m per point of filters removed, before / after the knee:"]
    for c, v in f2["per_criterion"].items():
        parts = [f"{k} {_ci(d['before'], '+.2f')} / {_ci(d['after'], '+.2f')}{' (sharper)' if d['sharper'] else ''}"
                 for k, d in v["tasks"].items()]
        L.append(f"- {c}: knee at {v['knee_removed_pct']:.0f}% removed (delta_m there {_ci(v['dm_at_knee'])}%), "
                 f"last level {v['last_removed_pct']:.0f}%: " + "; ".join(parts))
    return L + [""]


def _f3_lines(f3) -> List[str]:
    if not f3["per_criterion"]:
        return ["**3. Re-initialised retraining does better at extreme pruning.** Not measured (no retrain results).", ""]
    L = [f"**3. Re-initialised retraining does better at extreme pruning.** {_verdict(f3['supported'], f3['partly'])}"
         f" (the 95% CI of re-init minus iterative delta_m above 0 at the last level; the control, the unpruned "
         f"network retrained from scratch, scores {_ci(f3['control'])}%). Re-init minus iterative, points of delta_m:"]
    for c, v in f3["per_criterion"].items():
        L.append(f"- {c}: " + ", ".join(f"{r['removed_pct']:.0f}%: {_ci(r['diff']['all'])}" for r in v["rows"]))
    return L + [""]


def _report_findings(res, f, h: str = "##") -> List[str]:
    return ([f"{h} The paper's three findings, as this run bears on them\n"] + _f1_lines(f["f1"])
            + _f2_lines(f["f2"], res_tasks(res)) + _f3_lines(f["f3"]))


def _report_caveats(res) -> List[str]:
    cfg, seeds = res["config"], seed_results(res)
    L = ["## Caveats\n"]
    if len(seeds) < 3:
        L.append(f"- {len(seeds)} seed(s): intervals need >= 2, and the verdicts are weak below 3.")
    if cfg["dataset"] == "procedural":
        L.append(f"- Procedural scenes and a x{cfg['width']}-width {cfg['model']} stand in for NYUv2 and the full "
                 "VGG16; the `paper` preset runs the paper's scale.")
    L.append("- Re-initialised models are trained for the baseline's step budget; iterative models get the "
             "baseline's training plus the pruning-stage steps.")
    L.append("- Latency (in results.json) is the median of a few forwards on a shared CPU: noisy.")
    return L


def make_report(res, out: Path) -> str:
    """report.md: setup, baseline vs trivial predictors and the control, delta_m per level, the paper's three
    findings as tests over seeds, caveats, figures."""
    summary, f = res.get("summary") or summarize(seed_results(res)), res.get("findings") or findings(res)
    L = (_report_setup(res) + _report_baseline(res, summary) + _report_levels(res, summary)
         + _report_findings(res, f) + _report_caveats(res))
    L.append("\n## Figures\n")
    L += [f"![{t}](fig_{t}.png)" for t in res_tasks(res) + ["delta_m"]]
    text = "\n".join(L) + "\n"
    atomic_write_text(Path(out) / "report.md", text)
    return text


# ---------------------------------------------------------------------------------------------- README
def results_markers(name: str = "default") -> Tuple[str, str]:
    """Begin and end markers of a published study's README block (``default``: the main job's)."""
    tag = "study-results" if name == "default" else f"study-results-{name}"
    return f"<!-- {tag}:begin (generated by `mtlkernels report --readme`; do not edit) -->", f"<!-- {tag}:end -->"


README_BEGIN, README_END = results_markers()
PILOTS_BEGIN = "<!-- study-pilots:begin (generated by `mtlkernels report --readme`; do not edit) -->"
PILOTS_END = "<!-- study-pilots:end -->"


def readme_section(res, results_path: str, figure: Optional[str] = None, name: str = "default") -> str:
    """The README's results block of published study ``name``: every number from ``res`` (the committed
    results file)."""
    summary, f = res.get("summary") or summarize(seed_results(res)), res.get("findings") or findings(res)
    cfg = res["config"]
    wall = res.get("wall_seconds")
    begin, end = results_markers(name)
    L = [begin, "", f"Generated from `{results_path}` ({summary['n_seeds']} seeds, preset `{cfg['preset']}`, "
         f"x{cfg['width']}-width {cfg['model']}, {cfg['train_steps']} baseline steps"
         + (f"; the run took {wall / 60:.1f} min of wall time, from its start to the last seed's last log line"
            if wall else "") + ").", ""]
    L += _report_baseline(res, summary, "####") + _report_levels(res, summary, "####")
    L += _report_findings(res, f, "####")
    if figure:
        L.append(f"![delta_m vs backbone filters removed, CI bands]({figure})\n")
    return "\n".join(L + [end])


def pilots_section(pilots, pilots_path: str) -> str:
    """The README's pilot table, from the pilots' saved results."""
    from .pilots import pilot_table

    return "\n".join([PILOTS_BEGIN, "", f"Generated from `{pilots_path}` (`python -m mtlkernels.study.pilots`).", ""]
                     + pilot_table(pilots) + ["", PILOTS_END])


def readme_blocks(text: str, blocks: Dict[str, str]) -> str:
    """``text`` with each block (keyed by its begin marker, ending at the matching end marker) replaced."""
    for begin, body in blocks.items():
        end = body.splitlines()[-1]
        if begin not in text or end not in text:
            raise ValueError(f"README: no markers {begin!r} ... {end!r}")
        a, b = text.index(begin), text.index(end) + len(end)
        text = text[:a] + body + text[b:]
    return text


def write_readme(readme: Path, blocks: Dict[str, str]) -> bool:
    """Replace the README's generated blocks; True if it changed."""
    text = Path(readme).read_text()
    new = readme_blocks(text, blocks)
    if new != text:
        atomic_write_text(Path(readme), new)
    return new != text


def write_all(res, out: Path) -> Dict[str, Any]:
    """results.json (with the summary over seeds and the findings), results.csv, fig_*.png, report.md."""
    out = Path(out)
    res = dict(res)
    res["summary"] = summarize(seed_results(res))
    res["findings"] = findings(res)
    atomic_write_text(out / "results.json", json.dumps(res, indent=1, default=float))
    write_csv(res, out / "results.csv")
    make_figures(res, out)
    make_report(res, out)
    return res
