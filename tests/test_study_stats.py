"""The study's statistics: t-intervals and TOST against scipy's own tests, and the three findings
decided from synthetic per-seed results whose answer is known (each verdict shown to flip)."""
import math
import random

import pytest

scipy_stats = pytest.importorskip("scipy.stats")

from mtlkernels.study.aggregate import findings, summarize  # noqa: E402
from mtlkernels.study.stats import mean_ci, tost_paired  # noqa: E402

TASKS = ["seg", "depth", "normal"]


@pytest.mark.parametrize("xs", [[1.0, 2.0, 4.0], [-3.5, 0.2, 0.1, 7.0, 2.2], [5.0, 5.0 + 1e-9]])
def test_mean_ci_is_the_t_interval(xs):
    c = mean_ci(xs)
    lo, hi = scipy_stats.t.interval(0.95, len(xs) - 1, loc=sum(xs) / len(xs), scale=scipy_stats.sem(xs))
    assert c["n"] == len(xs) and math.isclose(c["lo"], lo, rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(c["hi"], hi, rel_tol=1e-9, abs_tol=1e-12)


def test_mean_ci_of_one_value_has_no_interval():
    c = mean_ci([3.0, float("nan"), None])
    assert c["mean"] == 3.0 and math.isnan(c["lo"]) and math.isnan(c["hi"])


@pytest.mark.parametrize("seed", range(6))
def test_tost_equals_two_scipy_one_sided_tests(seed):
    rng = random.Random(seed)
    d = [rng.gauss(rng.uniform(-3, 3), rng.uniform(0.2, 3)) for _ in range(rng.randint(2, 8))]
    margin = rng.uniform(0.5, 4)
    t = tost_paired(d, margin)
    p_lo = scipy_stats.ttest_1samp(d, -margin, alternative="greater").pvalue
    p_hi = scipy_stats.ttest_1samp(d, margin, alternative="less").pvalue
    assert math.isclose(t["p_lower"], p_lo, rel_tol=1e-7) and math.isclose(t["p_upper"], p_hi, rel_tol=1e-7)
    assert math.isclose(t["p"], max(p_lo, p_hi), rel_tol=1e-7)
    # equivalent at 5% <=> the 90% interval of the mean lies inside the margin
    lo, hi = scipy_stats.t.interval(0.90, len(d) - 1, loc=sum(d) / len(d), scale=scipy_stats.sem(d))
    assert t["equivalent"] == (-margin < lo and hi < margin)


def test_tost_edge_cases():
    assert not tost_paired([1.0], 3)["equivalent"]                  # one pair: no test
    assert tost_paired([1.0, 1.0, 1.0], 3)["equivalent"]            # no spread, inside
    assert not tost_paired([4.0, 4.0, 4.0], 3)["equivalent"]        # no spread, outside
    assert tost_paired([0.1, -0.2, 0.05, 0.0], 1)["equivalent"]
    assert not tost_paired([0.1, -5.2, 5.05, 0.0], 1)["equivalent"]  # too noisy to show it


def _run(c, s, li, level, params, dm, arch=None):
    return {"criterion": c, "strategy": s, "level": level, "level_index": li, "filters_removed_frac": level,
            "params_total": params, "params": {t: params for t in TASKS}, "arch": arch or [params, li, c],
            "metrics": {t: {} for t in TASKS}, "delta_m": {t: dm for t in TASKS} | {"all": dm}}


def _seeds(it, re_, noise=0.3, n=4, same_arch_last=False, params=(5000, 2000, 400), levels=(0.5, 0.75, 0.95)):
    rng = random.Random(1)
    out = []
    for k in range(n):
        runs = []
        for strategy, table in (("iterative", it), ("reinit", re_)):
            for c, dms in table.items():
                for i, (l, p, d) in enumerate(zip(levels, params, dms)):
                    arch = ["floor"] if same_arch_last and i == len(levels) - 1 else None
                    runs.append(_run(c, strategy, i, l, p, d + rng.gauss(0, noise), arch))
        base = {"params_total": 10000, "metrics": {t: {} for t in TASKS}}
        out.append({"config": {"seed": k, "criteria": list(it), "equivalence_margin": 2.0}, "tasks": TASKS,
                    "baseline": base, "runs": runs, "control": dict(base, delta_m={"all": rng.gauss(0, noise)})})
    return out


def test_findings_supported():
    it = {"taylor": [-1.0, -2.0, -30.0], "cosine": [-1.2, -2.1, -29.5]}
    re_ = {"taylor": [-0.5, -1.5, -12.0], "cosine": [-0.8, -1.0, -11.0]}
    f = findings(_seeds(it, re_))
    assert f["f1"]["criteria"] == ["taylor", "cosine"] and f["f1"]["supported"], f["f1"]
    assert f["f2"]["supported"] and f["f3"]["supported"]
    assert f["f2"]["per_criterion"]["taylor"]["knee_removed_pct"] == pytest.approx(75.0)


def test_findings_flip():
    # criteria far apart, a steady decline (the same drop per point everywhere: no knee), reinit worse:
    # every verdict flips
    it = {"taylor": [-10.0, -15.0, -19.0], "cosine": [-25.0, -37.5, -47.5]}
    re_ = {c: [d - 50 for d in v] for c, v in it.items()}
    f = findings(_seeds(it, re_))
    assert not f["f1"]["supported"] and f["f1"]["n_different"] == f["f1"]["n_tested"]
    assert not f["f2"]["supported"] and not f["f3"]["supported"]


def test_f1_needs_seeds_and_leaves_out_same_architectures():
    it = {"taylor": [-1.0, -2.0, -30.0], "cosine": [-1.2, -2.1, -29.5]}
    f1 = findings(_seeds(it, it, n=1))["f1"]
    assert f1["n_tested"] == 0 and not f1["supported"]  # one seed: nothing can be shown equivalent
    f1 = findings(_seeds(it, it, same_arch_last=True))["f1"]
    last = [p for p in f1["points"] if p["level_index"] == 2]
    assert all(p["n_same_arch"] == 4 and not p["tested"] for p in last)


def test_summary_means_and_intervals():
    it = {"taylor": [-1.0, -2.0, -30.0], "cosine": [-1.2, -2.1, -29.5]}
    seeds = _seeds(it, it, noise=1.0)
    s = summarize(seeds)
    row = next(r for r in s["levels"] if (r["criterion"], r["strategy"], r["level_index"]) == ("taylor", "iterative", 2))
    vals = [r["delta_m"]["all"] for x in seeds for r in x["runs"]
            if (r["criterion"], r["strategy"], r["level_index"]) == ("taylor", "iterative", 2)]
    assert row["n"] == 4 and row["delta_m"]["all"] == mean_ci(vals)
    assert s["n_seeds"] == 4 and s["control"]["delta_m"]["all"]["n"] == 4


def test_readme_numbers_are_generated_from_the_committed_results():
    """The README's results and pilot sections equal what `mtlkernels report --readme` makes from the
    committed docs/study_results.json and docs/study_pilots.json."""
    import os
    from pathlib import Path

    from mtlkernels import cli
    from mtlkernels.study.report import readme_blocks

    root = Path(__file__).resolve().parents[1]
    cwd = os.getcwd()
    os.chdir(root)
    try:
        blocks = cli.readme_blocks()
    finally:
        os.chdir(cwd)
    text = (root / "README.md").read_text()
    assert readme_blocks(text, blocks) == text


def test_pilot_table_columns():
    """Against the reference: the mean over shared seeds; noise: the SD over seeds; curves per criterion."""
    import statistics

    from mtlkernels.study.metrics import delta_m
    from mtlkernels.study.pilots import pilot_table

    def base(seg):
        return {"seg": {"miou": seg, "pixel_acc": 50.0}, "depth": {"abs_err": 1.0, "rel_err": 0.5},
                "normal": {"mean_angle": 30.0, "median_angle": 25.0, "within_11.25": 10.0, "within_22.5": 20.0,
                           "within_30": 30.0}}

    def seed(k, seg, runs=()):
        return {"seed": k, "baseline_metrics": base(seg), "train_seconds": 1.0, "runs": list(runs)}

    run = lambda c, f, d: {"criterion": c, "strategy": "iterative", "level": f, "filters_removed_frac": f,  # noqa: E731
                           "delta_m": {"all": d}}
    pilots = {"a": {"why": "w", "over": {}, "ref": None, "seeds": [seed(0, 10.0), seed(1, 11.0), seed(2, 12.0)]},
              "b": {"why": "w", "over": {"x": 1}, "ref": "a",
                    "seeds": [seed(0, 20.0, [run("taylor", 0.5, -1.0), run("cosine", 0.5, -2.0)])]}}
    rows = pilot_table(pilots)
    a, b = rows[2].split(" | "), rows[3].split(" | ")
    dm = [delta_m(base(s), base(10.0))["all"] for s in (10.0, 11.0, 12.0)]
    assert dm[1] > 0.5 and a[6] == f"{statistics.stdev(dm):.1f}" and a[5] == "–"
    assert b[5] == f"{delta_m(base(20.0), base(10.0))['all']:+.1f}" and b[6] == "–"
    assert b[7].startswith("taylor: 50%: -1.0; cosine: 50%: -2.0")


def test_figure_axis_follows_the_means_when_a_band_is_far_wider():
    """One diverged seed of three widens its band 50x: the axis keeps the curves readable and says that
    a band is cut; an ordinary band sets no limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mtlkernels.study.report import _clip_bands

    fig, (a, b) = plt.subplots(1, 2)
    means = [0.0, -2.0, -9.0, -14.0]
    a.plot(range(4), means)
    _clip_bands(a, means, [3.0, -20.0, -140.0, 100.0])
    lo, hi = a.get_ylim()
    assert -30 < lo < -14 and 0 < hi < 20 and any("cut" in t.get_text() for t in a.texts)
    b.plot(range(4), means)
    b.fill_between(range(4), [v - 3 for v in means], [v + 3 for v in means])
    before = b.get_ylim()
    _clip_bands(b, means, [v - 3 for v in means] + [v + 3 for v in means])
    assert b.get_ylim() == before and not b.texts
    plt.close(fig)
