"""The page's statistics: mean ± std over seeds, paired tests of two methods over seeds with
their minimal detectable difference, Holm-Bonferroni adjustment, the normalised area under a
metric-vs-strength curve, and the formatting of p-values and means. Pure functions of
numbers (numpy and scipy): no files, no TensorFlow."""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import optimize, stats

ALPHA = 0.05  # significance level of every test on the page
POWER = 0.8  # power of the minimal detectable difference


def mean_std(values) -> tuple[float, float]:
    """Mean and sample std (ddof=1); std is NaN for one value, both NaN for none."""
    v = np.asarray(list(values), np.float64)
    if not len(v):
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan


def paired_test(a: dict[int, float], b: dict[int, float]) -> dict:
    """a - b over the seeds in both: n, mean difference, sample std of the differences (sd),
    95% t-interval, paired t-test and Wilcoxon signed-rank p-values (two-sided), and the
    minimal detectable difference (mdd, see below). sd is None with fewer than 2 pairs
    (0.0 when all differences are equal). A p-value is None where it is undefined: fewer
    than 2 pairs, or differences all zero (Wilcoxon) or all equal (t-test)."""
    seeds = sorted(set(a) & set(b))
    x, y = np.array([a[s] for s in seeds]), np.array([b[s] for s in seeds])
    diff = x - y
    diff[np.abs(diff) < 1e-12] = 0.0  # equal metrics computed along other float paths
    out = {"n": len(seeds), "mean": float(diff.mean()) if len(seeds) else math.nan,
           "sd": None, "ci": None, "t_p": None, "wilcoxon_p": None, "mdd": None}
    if len(seeds) < 2:
        return out
    out["sd"] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if np.ptp(diff) > 1e-12:
            out["sd"] = float(diff.std(ddof=1))
            out["t_p"] = float(stats.ttest_rel(x, y).pvalue)
            half = stats.t.ppf(0.975, len(diff) - 1) * out["sd"] / math.sqrt(len(diff))
            out["ci"] = (out["mean"] - half, out["mean"] + half)
        if np.any(diff != 0):
            out["wilcoxon_p"] = float(stats.wilcoxon(diff).pvalue)
    out["mdd"] = minimal_detectable_difference(len(seeds), out["sd"])
    return out


def minimal_detectable_difference(n: int, sd: float | None, alpha: float = ALPHA,
                                  power: float = POWER) -> float | None:
    """The smallest true mean difference that a two-sided paired t-test at `alpha` over n
    pairs, whose differences have standard deviation sd, rejects with probability `power`:
    delta = nc * sd / sqrt(n), nc solving P(|T| > t_crit) = power for T noncentral t with
    n - 1 degrees of freedom and noncentrality nc. None with fewer than 2 pairs or sd zero
    or undefined."""
    if n < 2 or sd is None or not math.isfinite(sd) or sd <= 0:
        return None
    df = n - 1
    critical = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(nc: float) -> float:  # both tails; P(T_nc < -c) = P(T_-nc > c)
        return stats.nct.sf(critical, df, nc) + stats.nct.sf(critical, df, -nc) - power

    high = 4.0
    while shortfall(high) < 0:  # power grows with nc; at nc = 0 it is alpha < power
        high *= 2
    nc = optimize.brentq(shortfall, 0.0, high, xtol=1e-10)
    return float(nc * sd / math.sqrt(n))


def normalised_area(points: dict[float, float]) -> float:
    """Area under the curve strength -> value (trapezoid over the sorted strengths) divided
    by the strength range: a flat curve scores its value. Needs two strengths or more."""
    x, y = map(np.array, zip(*sorted(points.items()))) if points else ([], [])
    if len(x) < 2 or x[-1] == x[0]:
        raise ValueError(f"An area needs two different strengths; got {sorted(points)}.")
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / (x[-1] - x[0]))


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


def format_difference(result: dict) -> str:
    """A paired_test's mean and 95% t-interval, '+0.012 [-0.004, +0.028]' ('–' for no
    pairs; the mean alone where the interval is undefined)."""
    if not result["n"]:
        return "–"
    ci = f" [{result['ci'][0]:+.3f}, {result['ci'][1]:+.3f}]" if result["ci"] else ""
    return f"{result['mean']:+.3f}{ci}"


def format_mean_std(values) -> str:
    """'0.812 ± 0.034', a lone value, or '–' for none."""
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "–"
    return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def mean_interval(values) -> tuple[float, float | None, float | None]:
    """Mean and its 95% t-interval over independent values (e.g. seeds); the interval is
    None with fewer than 2 values."""
    v = np.asarray(list(values), np.float64)
    if len(v) < 2:
        return (float(v.mean()) if len(v) else math.nan), None, None
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def spearman(x, y) -> dict:
    """Spearman's rank correlation of paired values with a 95% interval and p-value: n, rho,
    ci (Fisher z of rho with the variance 1.06 / (n - 3) of Fieller, Hartley and Pearson
    1957, the usual interval for Spearman's rho; None below 5 points) and the p of
    scipy.stats.spearmanr (None below 3 points or for constant values)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    out = {"n": len(x), "rho": None, "ci": None, "p": None}
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    result = stats.spearmanr(x, y)
    out["rho"], out["p"] = float(result.statistic), float(result.pvalue)
    if len(x) >= 5:
        z, half = np.arctanh(np.clip(out["rho"], -0.999999, 0.999999)), 1.96 * math.sqrt(
            1.06 / (len(x) - 3))
        out["ci"] = (float(np.tanh(z - half)), float(np.tanh(z + half)))
    return out
