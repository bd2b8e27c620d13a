"""The figures that load one seed's classifiers, synthetic pools and data from the run
directories (TensorFlow): MI histograms of real vs synthetic images, synthetic examples next
to their originals, and Grad-CAM maps, with the lines of the page that show them.

Imported only when the page has model figures (--model_figures): the other report modules
do not import TensorFlow."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from absl import logging

from tsynd_tf import runs
from tsynd_tf.report.figures import link, save_figure
from tsynd_tf.report.records import Config
from tsynd_tf.report.tables import markdown_table


class ExampleRuns:
    """One seed's runs of a config, with its data and pools, for the model figures: the
    lowest seed that has tsynd_mi, among those with the most other methods."""

    def __init__(self, config: Config, dataset_cache: dict):
        by_seed = {}
        for r in config.records:
            directory = config.run_dir(r)
            if directory.classifier_file.is_file():
                by_seed.setdefault(r["seed"], {})[r["method"]] = directory
        seeds = [s for s in sorted(by_seed) if "tsynd_mi" in by_seed[s]]
        if not seeds:
            raise FileNotFoundError(f"{config.name}: no finished tsynd_mi run directory.")
        self.seed = max(seeds, key=lambda s: (len(by_seed[s]), -s))
        self.run_dirs = by_seed[self.seed]
        self._runs = {}
        self.mi_run = self.run("tsynd_mi")
        settings = self.mi_run.config
        key = (settings.dataset, settings.size, settings.data_dir)
        if key not in dataset_cache:
            dataset_cache[key] = self.mi_run.load_dataset()
        self.dataset = dataset_cache[key]
        self.num_samples = settings.num_samples
        self.labelled = np.asarray(self.run_dirs["tsynd_mi"].read_subset()["indices"])

    def run(self, method: str) -> runs.Run:
        if method not in self._runs:
            self._runs[method] = runs.load_run(self.run_dirs[method].path)
        return self._runs[method]

    def pools(self, method: str) -> list[dict]:
        """The method's synthetic pools, round by round (none if the run has none)."""
        if method not in self.run_dirs:
            return []
        pools = []
        for path in self.run_dirs[method].pool_files():
            with np.load(path) as pool:
                pools.append({k: pool[k] for k in pool.files})
        return pools

    def mutual_information(self, images: np.ndarray) -> np.ndarray:
        """MI (nats) of the tsynd_mi classifier, T passes, fixed dropout seed."""
        from tsynd_tf import data, evaluation, uncertainty

        classifier = self.mi_run.classifier
        batches = data.make_pipeline(images, None, 256, channels=classifier.input_shape[-1])
        with evaluation.seeded_dropout(classifier, self.seed):
            return uncertainty.mc_predict(classifier, batches, self.num_samples,
                                          self.dataset.info.multilabel)["mutual_information"]


# ----------------------------------------------------------------------------- figures


def plot_mi_histograms(examples: dict[str, ExampleRuns], labels: dict[str, str],
                       path: Path) -> dict:
    """(c) MI of real labelled vs synthetic images under the tsynd_mi classifier, one panel
    per config. Returns config -> {group: (count, mean MI)} for the table under it."""
    import matplotlib.pyplot as plt

    columns = min(2, len(examples))
    rows = math.ceil(len(examples) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.3 * rows), squeeze=False)
    summary = {}
    for ax, (name, example) in zip(axes.flat, examples.items()):
        groups = {"real (labelled)": example.dataset.train.images[example.labelled]}
        for method in ("latent_noise", "tsynd_mi"):
            pools = example.pools(method)
            if pools:
                groups[f"{method} synthetic"] = np.concatenate([p["images"] for p in pools])
        mi = {group: example.mutual_information(images) for group, images in groups.items()}
        bins = np.histogram_bin_edges(np.concatenate(list(mi.values())), bins=30)
        for (group, values), color in zip(mi.items(), ["tab:gray", "tab:blue", "tab:red"]):
            ax.hist(values, bins=bins, density=True, histtype="stepfilled", alpha=0.35,
                    color=color, label=f"{group} (n={len(values)}, mean {values.mean():.3f})")
        ax.set_xlabel("mutual information (nats)")
        ax.set_ylabel("density")
        ax.set_title(f"{labels[name]}, seed {example.seed}", fontsize=9)
        ax.legend(fontsize=7)
        summary[name] = {g: (len(v), float(v.mean())) for g, v in mi.items()}
    for ax in list(axes.flat)[len(examples):]:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)
    return summary


def plot_synthetic_grid(example: ExampleRuns, title: str, path: Path, count: int) -> dict:
    """(d) Originals and their round-0 latent_noise and tsynd_mi images (same sources).
    Returns the mean absolute differences (grey levels 0-255) over the whole round-0 pool."""
    import matplotlib.pyplot as plt

    tsynd = example.pools("tsynd_mi")[0]
    noise = (example.pools("latent_noise") or [None])[0]
    sources = tsynd["source_indices"]
    originals = example.dataset.train.images[sources].astype(np.float64)
    rows = {"original": originals}
    if noise is not None:  # the same seed draws the same sources; matched by index anyway
        position = {int(s): i for i, s in enumerate(noise["source_indices"])}
        keep = np.array([int(s) in position for s in sources])
        sources, originals = sources[keep], originals[keep]
        rows = {"original": originals, "latent_noise": noise["images"][
            [position[int(s)] for s in sources]].astype(np.float64)}
    rows["tsynd_mi"] = tsynd["images"][keep if noise is not None else slice(None)].astype(
        np.float64)
    rows["|tsynd_mi − original|"] = np.abs(rows["tsynd_mi"] - originals)
    distances = {f"{a} vs {b}": float(np.abs(rows[a] - rows[b]).mean())
                 for a, b in (("tsynd_mi", "original"), ("latent_noise", "original"),
                              ("tsynd_mi", "latent_noise")) if a in rows and b in rows}
    fig, axes = plt.subplots(len(rows), min(count, len(sources)), squeeze=False,
                             figsize=(1.3 * min(count, len(sources)), 1.4 * len(rows)))
    for ax_row, (name, images) in zip(axes, rows.items()):
        shown = images[:count] / 255.0
        difference = name.startswith("|")
        for ax, image in zip(ax_row, shown):
            ax.imshow(image.squeeze(), cmap="magma" if difference else "gray", vmin=0,
                      vmax=max(float(shown.max()), 1e-6) if difference else 1)
            ax.set_xticks([])
            ax.set_yticks([])
        ax_row[0].set_ylabel(name, fontsize=8)
    fig.suptitle(f"{title}, seed {example.seed}, round 0", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return distances


def plot_grad_cam(example: ExampleRuns, title: str, path: Path, count: int) -> None:
    """(e) Grad-CAM of the baseline and tsynd_mi classifiers (same seed) for the true class
    of the same test images, a balanced draw over classes."""
    import matplotlib.pyplot as plt

    from tsynd_tf import data, evaluation, explain, uncertainty

    test = example.dataset.test
    labels = test.targets.argmax(axis=1)
    order = np.random.default_rng(0).permutation(len(test))
    per_class = [order[labels[order] == k] for k in range(test.targets.shape[1])]
    chosen = np.array([i for group in zip(*per_class) for i in group][:count])
    images = test.images[chosen]
    methods = [m for m in ("baseline", "tsynd_mi") if m in example.run_dirs]
    fig, axes = plt.subplots(1 + len(methods), len(chosen), squeeze=False,
                             figsize=(1.4 * len(chosen), 1.6 * (1 + len(methods))))
    for ax, image, label in zip(axes[0], images, labels[chosen]):
        ax.imshow(image.squeeze(), cmap="gray", vmin=0, vmax=255)
        ax.set_title(example.dataset.info.class_names[label][:12], fontsize=7)
    for ax_row, method in zip(axes[1:], methods):
        classifier = example.run(method).classifier
        with evaluation.seeded_dropout(classifier, example.seed):
            maps = explain.grad_cam(classifier, images, example.num_samples, labels[chosen],
                                    multilabel=example.dataset.info.multilabel)
            probs = uncertainty.mc_predict(
                classifier, data.make_pipeline(images, None, len(images),
                                               channels=classifier.input_shape[-1]),
                example.num_samples, example.dataset.info.multilabel)["probs"]
        for ax, image, cam, p in zip(ax_row, images, maps, probs[np.arange(len(chosen)),
                                                                 labels[chosen]]):
            ax.imshow(image.squeeze(), cmap="gray", vmin=0, vmax=255)
            ax.imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
            ax.set_title(f"p={p:.2f}", fontsize=7)
        ax_row[0].set_ylabel(method, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("test image", fontsize=8)
    fig.suptitle(f"{title}, seed {example.seed}: Grad-CAM of the true class (p: its MC "
                 "probability)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


# ----------------------------------------------------------------------------- page lines


def model_figures_section(configs: list[Config], figures_dir: Path, page_dir: Path,
                          count: int) -> list[str]:
    """The model figures of every config with tsynd_mi runs, and the lines that show them
    (a config whose run files or data are missing is named as skipped)."""
    lines, examples, dataset_cache = [], {}, {}
    labels = {c.name: c.label for c in configs}
    for config in (c for c in configs if "tsynd_mi" in c.methods):  # not baseline-only ones
        try:
            examples[config.name] = ExampleRuns(config, dataset_cache)
        except (OSError, ValueError) as e:  # missing run files, data not found (DataError)
            logging.warning("Model figures of %s skipped: %s", config.name, e)
            lines += [f"*Model figures of `{config.name}` skipped: {e}*", ""]
    if not examples:
        return lines
    return (lines + mi_lines(examples, labels, figures_dir, page_dir)
            + synthetic_lines(examples, labels, figures_dir, page_dir, count)
            + grad_cam_lines(examples, labels, figures_dir, page_dir, count))


def mi_lines(examples: dict[str, ExampleRuns], labels: dict[str, str], figures_dir: Path,
             page_dir: Path) -> list[str]:
    summary = plot_mi_histograms(examples, labels, figures_dir / "mi_histograms.png")
    groups = list(dict.fromkeys(g for s in summary.values() for g in s))
    return ["**Mutual information of real vs synthetic images**, under the final "
            "(best-validation) tsynd_mi classifier of one seed, T = the run's MC samples, "
            "all rounds' pools. Pools were generated by earlier classifiers of the run, "
            "so this is the MI that the final model still assigns to them.", "",
            link(figures_dir / "mi_histograms.png", "MI histograms", page_dir), "",
            markdown_table(["config", "seed", *(f"mean MI, {g}" for g in groups)],
                           [[f"`{n}`", examples[n].seed,
                             *(f"{s[g][1]:.4f} (n={s[g][0]})" if g in s else "–"
                               for g in groups)] for n, s in summary.items()]), ""]


def synthetic_lines(examples: dict[str, ExampleRuns], labels: dict[str, str],
                    figures_dir: Path, page_dir: Path, count: int) -> list[str]:
    lines = ["**Synthetic examples**: originals (labelled training images), their round-0 "
             "latent_noise and tsynd_mi images (same source images and seed), and "
             "|tsynd_mi − original| (includes the autoencoder's reconstruction error).", ""]
    distances = {}
    for name, example in examples.items():
        if example.pools("tsynd_mi"):
            path = figures_dir / f"synthetic_{name}.png"
            distances[name] = plot_synthetic_grid(example, labels[name], path, count)
            lines += [link(path, f"synthetic {name}", page_dir), ""]
    if distances:
        pairs = list(dict.fromkeys(p for d in distances.values() for p in d))
        lines += ["Mean absolute pixel difference over the whole round-0 pool (grey levels, "
                  "0-255):", "", markdown_table(
                      ["config", *pairs], [[f"`{n}`", *(f"{d[p]:.2f}" if p in d else "–"
                                                        for p in pairs)]
                                           for n, d in distances.items()]), ""]
    return lines


def grad_cam_lines(examples: dict[str, ExampleRuns], labels: dict[str, str],
                   figures_dir: Path, page_dir: Path, count: int) -> list[str]:
    lines = ["**Grad-CAM** (last Conv2D layer, maps averaged over the T MC-dropout passes, "
             "scaled to [0, 1] per image) of the baseline and tsynd_mi classifiers of the "
             "same seed, for the true class of the same test images.", ""]
    for name, example in examples.items():
        path = figures_dir / f"grad_cam_{name}.png"
        plot_grad_cam(example, labels[name], path, count)
        lines += [link(path, f"Grad-CAM {name}", page_dir), ""]
    return lines
