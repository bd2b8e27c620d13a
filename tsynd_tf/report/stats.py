"""The page's statistics: mean ± std over seeds, paired tests of two methods over seeds,
Holm-Bonferroni adjustment, and the formatting of p-values and means. Pure functions of
numbers (numpy and scipy): no files, no TensorFlow."""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

ALPHA = 0.05  # significance level of every test on the page


def mean_std(values) -> tuple[float, float]:
    """Mean and sample std (ddof=1); std is NaN for one value, both NaN for none."""
    v = np.asarray(list(values), np.float64)
    if not len(v):
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan


def paired_test(a: dict[int, float], b: dict[int, float]) -> dict:
    """a - b over the seeds in both: n, mean difference, 95% t-interval, paired t-test and
    Wilcoxon signed-rank p-values (two-sided). A p-value is None where it is undefined: fewer
    than 2 pairs, or differences all zero (Wilcoxon) or all equal (t-test)."""
    seeds = sorted(set(a) & set(b))
    x, y = np.array([a[s] for s in seeds]), np.array([b[s] for s in seeds])
    diff = x - y
    diff[np.abs(diff) < 1e-12] = 0.0  # equal metrics computed along other float paths
    out = {"n": len(seeds), "mean": float(diff.mean()) if len(seeds) else math.nan,
           "ci": None, "t_p": None, "wilcoxon_p": None}
    if len(seeds) < 2:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if np.ptp(diff) > 1e-12:
            out["t_p"] = float(stats.ttest_rel(x, y).pvalue)
            half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / math.sqrt(len(diff))
            out["ci"] = (out["mean"] - half, out["mean"] + half)
        if np.any(diff != 0):
            out["wilcoxon_p"] = float(stats.wilcoxon(diff).pvalue)
    return out


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error), in the input order."""
    order = np.argsort(p_values)
    adjusted, running = np.empty(len(p_values)), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted.tolist()


def format_p(p: float | None) -> str:
    """'0.012', '<0.001', or 'n/a' for an undefined p-value (a table cell)."""
    if p is None or not math.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def p_is(p: float | None, name: str = "p") -> str:
    """'p=0.012', 'p<0.001' or 'p n/a' for running text."""
    text = format_p(p)
    if text == "n/a":
        return f"{name} n/a"
    return f"{name}{text}" if text.startswith("<") else f"{name}={text}"


def format_mean_std(values) -> str:
    """'0.812 ± 0.034', a lone value, or '–' for none."""
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "–"
    return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"
