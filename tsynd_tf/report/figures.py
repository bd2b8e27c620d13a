"""The figures drawn from the records alone: test ACC/AUC vs labelled fraction and accuracy
vs noise/attack strength, with the figures section of the page that links them, and the
shared matplotlib helpers (method styles, legend, saving). The figures that load models live
in `model_figures`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tsynd_tf.fileio import atomic_path
from tsynd_tf.report.records import ROBUST_FAMILIES, VERDICT_METRICS, Config, method_key
from tsynd_tf.report.stats import mean_std


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def link(path: Path, caption: str, page_dir: Path) -> str:
    """The markdown image of `path`, relative to the page's folder."""
    return f"![{caption}]({os.path.relpath(path, page_dir)})"


def method_styles(methods) -> dict[str, dict]:
    """errorbar() keywords per method: colour, marker and line style, so that methods with
    identical numbers (e.g. the same selected checkpoint) stay visible on top of each other."""
    known = {"baseline": ("tab:gray", "o", "-"), "augment": ("tab:green", "D", "-."),
             "latent_noise": ("tab:blue", "s", "--"), "tsynd_mi": ("tab:red", "^", "-"),
             "tsynd_entropy": ("tab:orange", "v", ":"), "diffusion": ("tab:purple", "P", "-."),
             "gan": ("tab:olive", "*", "--"), "tsynd_diffusion": ("tab:pink", "h", "-"),
             "external": ("tab:brown", "X", "-.")}
    extra = iter([("tab:cyan", "<", ":"), ("black", ">", ":")])
    styles = {}
    for method in methods:
        color, marker, line = known.get(method) or next(extra, ("black", "o", "-"))
        styles[method] = {"color": color, "marker": marker, "linestyle": line, "capsize": 3,
                          "label": method, "markerfacecolor": "none"}
    return styles


def figure_legend(fig, axes) -> None:
    """One legend for all panels, above them (panels share the methods' styles)."""
    handles = {}
    for ax in axes.flat:
        handles.update(zip(*reversed(ax.get_legend_handles_labels())))
    fig.tight_layout()
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=len(handles),
               bbox_to_anchor=(0.5, 1.0), fontsize=8, frameon=False)


def plot_fraction_curves(configs: list[Config], path: Path) -> None:
    """(a) Test ACC and AUC vs labelled fraction, one row per dataset, ± std over seeds."""
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 - matplotlib.ticker.NullFormatter

    datasets = sorted({c.dataset for c in configs})
    methods = sorted({m for c in configs for m in c.methods}, key=method_key)
    styles = method_styles(methods)
    fig, axes = plt.subplots(len(datasets), 2, figsize=(9, 3.2 * len(datasets)), squeeze=False)
    for row, dataset in zip(axes, datasets):
        group = [c for c in configs if c.dataset == dataset]
        fractions = [c.labelled_fraction for c in group]
        for ax, (key, name) in zip(row, VERDICT_METRICS.items()):
            for i, method in enumerate(methods):
                dodge = 1 + 0.04 * (i - (len(methods) - 1) / 2)  # keep error bars apart
                points = [(f * dodge, *mean_std(c.values(method, key).values()))
                          for f, c in zip(fractions, group) if c.values(method, key)]
                if points:
                    x, y, err = map(np.array, zip(*sorted(points)))
                    ax.errorbar(x, y, yerr=np.nan_to_num(err), **styles[method])
            ax.set_xscale("log")
            # A factor of 2 either side: a dataset run at one fraction keeps its dodge small.
            ax.set_xlim(min(fractions) / 2, max(fractions) * 2)
            ax.set_xticks(fractions, [f"{100 * f:.3g}%" for f in fractions])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("labelled share of the training split")
            ax.set_ylabel(f"test {name}")
            ax.set_title(dataset)
            ax.grid(alpha=0.3)
    figure_legend(fig, axes)
    save_figure(fig, path)


def plot_robustness(configs: list[Config], robust, path: Path) -> None:
    """(b) Accuracy vs Gaussian σ / FGSM ε / PGD ε (0 = clean), one row per config."""
    import matplotlib.pyplot as plt

    families = [f for f in ROBUST_FAMILIES if any(k[0] == f for k in robust)]
    fig, axes = plt.subplots(len(configs), len(families), squeeze=False,
                             figsize=(3.6 * len(families), 2.9 * len(configs)))
    for row, config in zip(axes, configs):
        styles = method_styles(config.methods)
        for ax, family in zip(row, families):
            keys = [("test/acc", 0.0)] + [(k, s) for f, s, k in robust if f == family]
            for method in config.methods:
                points = [(s, *mean_std(config.values(method, k).values())) for k, s in keys
                          if config.values(method, k)]
                if points:
                    x, y, err = map(np.array, zip(*points))
                    ax.errorbar(x, y, yerr=np.nan_to_num(err), **styles[method])
            ax.set_xlabel(ROBUST_FAMILIES[family])
            ax.set_ylabel("test accuracy")
            ax.set_title(config.label, fontsize=9)
            ax.grid(alpha=0.3)
    figure_legend(fig, axes)
    save_figure(fig, path)


def figures_section(configs: list[Config], robust, figures_dir: Path,
                    page_dir: Path) -> list[str]:
    """The section's heading and the figures of the records (the model figures follow it)."""
    lines = ["## Figures", "", "Error bars: ± std over seeds.", ""]
    curves = configs
    if len({(c.dataset, c.labelled_fraction) for c in curves}) < len(curves):
        # The amount curve and synthetic-only configs share a subset: own sections.
        curves = [c for c in configs if not c.variant]
    points = [(c.dataset, c.labelled_fraction) for c in curves]
    if curves and len(set(points)) == len(points):
        plot_fraction_curves(curves, figures_dir / "accuracy_vs_fraction.png")
        lines += ["**Test ACC and AUC vs labelled fraction** (methods slightly offset "
                  "horizontally).", "", link(figures_dir / "accuracy_vs_fraction.png",
                                             "accuracy vs fraction", page_dir), ""]
    else:  # e.g. a tuning sweep: several settings of one dataset and fraction
        lines += ["*No ACC-vs-fraction figure: several configs share a dataset and "
                  "labelled fraction (see Overview).*", ""]
    if robust:
        plot_robustness(configs, robust, figures_dir / "robustness.png")
        lines += ["**Accuracy under Gaussian noise, FGSM and PGD** (strength 0: clean).", "",
                  link(figures_dir / "robustness.png", "robustness", page_dir), ""]
    return lines
