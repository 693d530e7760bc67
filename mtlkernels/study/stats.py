"""Statistics of the study over seeds: t-intervals and paired equivalence tests (TOST).

Every number is a function of per-seed values, so a verdict can be recomputed from results.json.
With fewer than two values an interval or test is undefined: ``nan`` bounds, never a verdict.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

__all__ = ["mean_ci", "tost_paired", "ALPHA"]

ALPHA = 0.05  # 95% intervals; TOST at 5% (its 90% interval inside the margin)


def _clean(xs: Sequence[float]) -> List[float]:
    return [float(x) for x in xs if x is not None and math.isfinite(float(x))]


def mean_ci(xs: Sequence[float], alpha: float = ALPHA) -> Dict[str, float]:
    """Mean and two-sided ``1 - alpha`` Student-t interval of the finite values in ``xs``."""
    from scipy import stats

    v = _clean(xs)
    n = len(v)
    if n == 0:
        return {"n": 0, "mean": math.nan, "sd": math.nan, "lo": math.nan, "hi": math.nan}
    m = sum(v) / n
    if n < 2:
        return {"n": 1, "mean": m, "sd": math.nan, "lo": math.nan, "hi": math.nan}
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (n - 1))
    h = float(stats.t.ppf(1 - alpha / 2, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": m, "sd": sd, "lo": m - h, "hi": m + h}


def tost_paired(diffs: Sequence[float], margin: float, alpha: float = ALPHA) -> Dict[str, float]:
    """Two one-sided t-tests (Schuirmann) that the mean of paired differences lies in (-margin, margin).

    ``p = max(p_lower, p_upper)``; ``equivalent`` when ``p < alpha``, i.e. the ``1 - 2 alpha`` interval
    of the mean lies inside the margin. Identical differences (zero spread) are equivalent exactly
    when their value is inside the margin."""
    from scipy import stats

    v = _clean(diffs)
    n = len(v)
    out = {"n": n, "margin": margin, "mean": math.nan, "p_lower": math.nan, "p_upper": math.nan, "p": math.nan,
           "equivalent": False}
    if n < 2:
        return out
    m = sum(v) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (n - 1))
    if sd == 0:
        p_lo, p_hi = float(m <= -margin), float(m >= margin)
    else:
        se = sd / math.sqrt(n)
        p_lo = float(stats.t.sf((m + margin) / se, n - 1))   # H0: mean <= -margin
        p_hi = float(stats.t.cdf((m - margin) / se, n - 1))  # H0: mean >= +margin
    p = max(p_lo, p_hi)
    out.update(mean=m, p_lower=p_lo, p_upper=p_hi, p=p, equivalent=bool(p < alpha))
    return out
