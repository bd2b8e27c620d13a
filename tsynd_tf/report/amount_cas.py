"""How much synthetic data, synthetic data alone, and whether image quality predicts the
gain: the page's sections read across configs.

- Amount: configs of one dataset and labelled subset that differ in --synthetic_multiple or
  --synthetic_ratio (flags/amount/) form a curve: test AUC against the amount (synthetic
  images per labelled one), 95% t-intervals over seeds, the baseline at 0.
- Synthetic-only (the Classification Accuracy Score): configs with --train_on=synthetic,
  next to the baseline on the labelled images the generators learned from (paired by seed)
  and the baseline on as many real images as they trained on.
- Quality against gain: Spearman's rho, across (config, method), of each quality metric that
  passed the degradation benchmark (docs/QUALITY.md) with the method's paired gain.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tsynd_tf.report.comparison import answer_configs
from tsynd_tf.report.figures import link, method_styles, save_figure
from tsynd_tf.report.records import Config
from tsynd_tf.report.stats import (format_difference, format_mean_std, format_p,
                                   mean_interval, paired_test, spearman)
from tsynd_tf.report.tables import markdown_table

# The metrics that got worse at >= 3 of the 5 image degradations on both datasets in the
# default reference's features (docs/QUALITY.md, "Reading the table"); label fidelity (2 of
# 5 on PneumoniaMNIST) and diversity (2) did not. Lower is better for FID and KID.
VALIDATED_QUALITY = (("fid", "FID"), ("kid", "KID"), ("precision", "precision"),
                     ("recall", "recall"))


def subset_key(config: Config) -> tuple:
    return config.dataset, config.train_fraction, config.train_count


def baseline_home(configs: list[Config], config: Config) -> Config | None:
    """The config holding the baseline on the labelled images of `config` (the same
    dataset and labelled subset, trained on real images), if the sweep has one."""
    return next((c for c in configs if "baseline" in c.methods and c.train_on != "synthetic"
                 and subset_key(c) == subset_key(config)), None)


# ----------------------------------------------------------------------------- amount


def amount_curves(configs: list[Config]) -> list[tuple[Config, dict]]:
    """Per labelled subset with a baseline and two amounts or more: (the config holding the
    baseline, {(method, share): {amount: config}}); share is --synthetic_ratio as recorded
    ('proportional' or a fixed share), amount --synthetic_multiple."""
    curves = []
    homes = [c for c in configs if c is baseline_home(configs, c)]
    for home in homes:
        points = {}
        for config in configs:
            if subset_key(config) != subset_key(home) or config.train_on == "synthetic":
                continue
            flag_values = config.flags(config.records[0])
            if "synthetic_multiple" not in flag_values:
                continue  # cells from before the lines carried their flags
            for method in config.methods:
                if method != "baseline":
                    share = str(flag_values.get("synthetic_ratio"))
                    points.setdefault((method, share), {})[
                        float(flag_values["synthetic_multiple"])] = config
        if len({a for amounts in points.values() for a in amounts}) >= 2:
            curves.append((home, points))
    return curves


def amount_section(configs: list[Config], figures_dir: Path, page_dir: Path) -> list[str]:
    lines = []
    for home, points in amount_curves(configs):
        amounts = sorted({a for by_amount in points.values() for a in by_amount})
        rows = []
        for (method, share), by_amount in sorted(points.items()):
            cells = []
            for amount in amounts:
                config = by_amount.get(amount)
                cells.append("" if config is None else format_difference(paired_test(
                    config.values(method, "test/auc"), home.values("baseline", "test/auc"))))
            rows.append([f"`{method}`", share, *cells])
        path = figures_dir / f"amount_{home.name}.png"
        plot_amount(home, points, path)
        lines += [f"**{home.label}**: test AUC minus the baseline's (`{home.name}`), paired by "
                  "seed, mean [95% t-interval], per amount (synthetic images per labelled "
                  "image) and share of synthetic images in each batch (*proportional*: "
                  "m / (1 + m), as adding them to the dataset would; a number: that share "
                  "whatever the amount).", "",
                  markdown_table(["method", "share", *(f"{a:g}x" for a in amounts)], rows), "",
                  link(path, f"Test AUC against the amount, {home.name}", page_dir), ""]
    return ["## How much synthetic data?", "", *lines] if lines else []


def plot_amount(home: Config, points: dict, path: Path) -> None:
    """Test AUC and balanced accuracy against the amount, mean and 95% t-interval over
    seeds; the baseline at 0 as a band."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    styles = method_styles(sorted({m for m, _ in points}))
    for ax, (key, name) in zip(axes, (("test/auc", "test AUC"),
                                      ("test/balanced_acc", "test balanced accuracy"))):
        mean, low, high = mean_interval(home.values("baseline", key).values())
        if low is not None:
            ax.axhspan(low, high, color="tab:gray", alpha=0.2)
        ax.axhline(mean, color="tab:gray", label="baseline (95% interval)")
        for (method, share), by_amount in sorted(points.items()):
            xs = sorted(by_amount)
            stats = [mean_interval(by_amount[a].values(method, key).values()) for a in xs]
            ys = np.array([s[0] for s in stats])
            errors = np.array([[m - (lo if lo is not None else m), (hi if hi is not None
                                                                   else m) - m]
                               for m, lo, hi in stats]).T
            style = dict(styles[method], label=f"{method} ({share})")
            if share != "proportional":
                style.update(linestyle="none", markerfacecolor=style["color"])
            ax.errorbar(xs, ys, yerr=errors, **style)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xticks([1, 2, 5, 10], ["1x", "2x", "5x", "10x"])
        ax.set(xlabel="synthetic images per labelled image", ylabel=name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{home.label}: how much synthetic data", fontsize=10)
    save_figure(fig, path)


# ----------------------------------------------------------------------------- synthetic only


def cas_section(configs: list[Config]) -> list[str]:
    """Per synthetic-only config and method: test metrics, the paired difference from the
    baseline on the labelled images, and the baseline on as many real images."""
    rows = []
    for config in (c for c in configs if c.train_on == "synthetic"):
        home = baseline_home(configs, config)
        for method in config.methods:
            count = int(np.median([r["training"].get("num_synthetic", 0)
                                   for r in config.by_method(method)]))
            real = equal_count_baseline(configs, config.dataset, count)
            rows.append([
                f"`{config.name}`", f"`{method}`", len(config.by_method(method)), count,
                format_mean_std(config.values(method, "test/auc").values()),
                format_mean_std(config.values(method, "test/balanced_acc").values()),
                format_difference(paired_test(config.values(method, "test/auc"),
                                      home.values("baseline", "test/auc"))) if home else "–",
                f"{format_mean_std(real.values('baseline', 'test/auc').values())} "
                f"(`{real.name}`, {real.num_labelled})" if real else "–"])
    if not rows:
        return []
    return ["## Synthetic images alone (Classification Accuracy Score)", "",
            "The classifier trained on synthetic images only (`--train_on=synthetic`, the "
            "same steps as every cell) and tested on the real test split. *Δ AUC vs "
            "labelled*: minus the baseline trained on the labelled images the generator "
            "learned from, paired by seed, mean [95% t-interval]; *real, as many*: the "
            "baseline trained on about as many real images as the synthetic ones (its "
            "config and image count), what the synthetic images would be worth as real ones.",
            "", markdown_table(["config", "method", "n", "images", "test AUC", "bal. ACC",
                                "Δ AUC vs labelled", "real, as many: test AUC"], rows), ""]


def equal_count_baseline(configs: list[Config], dataset: str, count: int) -> Config | None:
    """The baseline-only config on real images of `dataset` whose labelled count is
    closest to `count` (and at least half of it): the real-image counterpart."""
    candidates = [c for c in configs if c.dataset == dataset and c.methods == ["baseline"]
                  and c.train_on != "synthetic" and c.num_labelled >= count / 2]
    return min(candidates, key=lambda c: abs(c.num_labelled - count), default=None)


# ----------------------------------------------------------------------------- quality


def quality_gain_section(configs: list[Config]) -> list[str]:
    rows = []
    for metric, name in VALIDATED_QUALITY:
        row = [name]
        for key in ("test/auc", "test/balanced_acc"):
            points = quality_gain_points(configs, metric, key)
            r = spearman(*zip(*points)) if points else {"n": 0, "rho": None}
            ci = f" [{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}]" if r.get("ci") else ""
            row += [r["n"], "n/a" if r["rho"] is None else f"{r['rho']:+.2f}{ci}",
                    format_p(r.get("p"))]
        rows.append(row)
    if not any(row[1] for row in rows):
        return []
    return ["## Does image quality predict the gain?", "",
            "Spearman's rank correlation, across (config, method), of each pool-quality metric "
            "that passed the degradation benchmark (docs/QUALITY.md) with the method's gain "
            "over the baseline (mean paired difference, best on val.), with its 95% interval "
            "(Fisher z, variance 1.06 / (n − 3)) and p. FID and KID fall as images get closer "
            "to the real ones, so a helpful quality shows there as a negative rho; precision "
            "and recall rise. Configs differ in how much any method can gain, so a rho across "
            "configs mixes the two; read it with the per-config quality tables below.", "",
            markdown_table(["metric", "n", "rho with Δ AUC", "p", "n", "rho with Δ bal. ACC",
                            "p"], rows), ""]


def quality_gain_points(configs: list[Config], metric: str,
                        key: str) -> list[tuple[float, float]]:
    """(mean of quality/<metric> over seeds, mean paired gain in `key`) per (config,
    method) of the answer configs that has both."""
    points = []
    for config in answer_configs(configs):
        for method in config.methods:
            quality = list(config.values(method, f"quality/{metric}").values())
            if method == "baseline" or not quality:
                continue
            gain = paired_test(config.values(method, key), config.values("baseline", key))
            if gain["n"]:
                points.append((float(np.mean(quality)), gain["mean"]))
    return points
