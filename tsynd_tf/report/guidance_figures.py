"""What uncertainty guidance does to a diffusion sample: for each class, unguided and guided
samples from the same noise (the same seed), each titled with its MI under the classifier
that guides it and the reference classifier's label (tsynd_tf.reference), so a reader sees
whether targeting traded realism or label correctness for uncertainty.

One figure per config with a finished tsynd_diffusion run (the lowest seed whose run
directory is on this machine): the run's cached diffusion model (generator.json names the
cache entry), its selected classifier (`classifier.keras`; the pools were guided by the
classifiers of earlier epochs of the same run), its --uncertainty_guidance,
--guidance_every, --ddim_steps and --guidance_scale.
TensorFlow-dependent, imported only with --model_figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from absl import logging

from tsynd_tf import runs
from tsynd_tf.report.figures import link, save_figure
from tsynd_tf.report.records import Config

METHOD = "tsynd_diffusion"
SEED = 0  # the noise both samplers start from


def guided_and_unguided(run: runs.Run, count: int) -> dict:
    """{'labels', 'unguided', 'guided'}: `count` samples per class, images in [0, 1]."""
    from tsynd_tf.synthesis.diffusion import recipe_of
    from tsynd_tf.synthesis.diffusion_model import UncertaintyGuide, build_diffusion

    config, info = run.config, run.info
    record = run.directory.read_generator()
    if record is None:
        raise FileNotFoundError(f"{run.directory.generator_file} is missing")
    channels = run.classifier.input_shape[-1]
    model = build_diffusion(info.size, channels, info.num_classes, recipe_of(record),
                            config.seed)
    model.ema.load_weights(Path(record["entry"]) / "weights.weights.h5")
    labels = np.repeat(np.arange(info.num_classes), count)
    guide = UncertaintyGuide(run.classifier, "mi", config.uncertainty_guidance,
                             config.guidance_every, config.num_samples, info.multilabel)
    return {"labels": labels, **{name: model.sample(labels, config.ddim_steps,
                                                    config.guidance_scale, SEED, guide=g)
                                 for name, g in (("unguided", None), ("guided", guide))}}


def plot_guidance(run: runs.Run, title: str, path: Path, count: int) -> dict:
    """The figure; returns {sampler: (mean MI, label fidelity)} for the table under it."""
    import matplotlib.pyplot as plt

    from tsynd_tf import data, evaluation, reference, uncertainty
    from tsynd_tf.data.pipeline import to_uint8

    samples, info = guided_and_unguided(run, count), run.info
    meter = reference.PoolQuality(run.load_dataset(), run.config.cache_dir)
    rows, summary = [], {}
    for name in ("unguided", "guided"):
        images = to_uint8(samples[name])
        with evaluation.seeded_dropout(run.classifier, SEED):
            mi = uncertainty.mc_predict(run.classifier, data.make_pipeline(images, None, 256),
                                        run.config.num_samples,
                                        info.multilabel)["mutual_information"]
        reference_labels = meter.features(images)[1].argmax(1)
        rows.append((name, images, mi, reference_labels))
        summary[name] = (float(mi.mean()), float(np.mean(reference_labels ==
                                                         samples["labels"])))
    fig, axes = plt.subplots(2 * info.num_classes, count, squeeze=False,
                             figsize=(1.3 * count, 1.5 * 2 * info.num_classes))
    for k in range(info.num_classes):
        for offset, (name, images, mi, reference_labels) in enumerate(rows):
            ax_row = axes[2 * k + offset]
            for ax, i in zip(ax_row, np.flatnonzero(samples["labels"] == k)):
                ax.imshow(images[i].squeeze(), cmap="gray", vmin=0, vmax=255)
                ax.set_title(f"MI {mi[i]:.3f}\nref: {info.class_names[reference_labels[i]][:10]}",
                             fontsize=6)
                ax.set_xticks([])
                ax.set_yticks([])
            ax_row[0].set_ylabel(f"{info.class_names[k][:12]}\n{name}", fontsize=7)
    fig.suptitle(f"{title}: unguided vs guided (--uncertainty_guidance="
                 f"{run.config.uncertainty_guidance:g}), same noise", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return summary


def guidance_section(configs: list[Config], figures_dir: Path, page_dir: Path,
                     count: int) -> list[str]:
    lines = []
    for config in (c for c in configs if METHOD in c.methods):
        cells = config.by_method(METHOD)
        on_disk = [r for r in cells if config.run_dir(r).classifier_file.is_file()]
        record = min(on_disk or cells, key=lambda r: r["seed"])  # none: say which is missing
        path = figures_dir / f"guidance_{config.name}.png"
        try:
            run = runs.load_run(config.run_dir(record).path)
            summary = plot_guidance(run, config.label, path, count)
        except (OSError, ValueError) as e:  # a missing run, generator or data
            logging.warning("Guidance figure of %s skipped: %s", config.name, e)
            lines += [f"*Guidance figure of `{config.name}` skipped: {e}*", ""]
            continue
        lines += [f"**Uncertainty guidance, {config.label}, seed {record['seed']}**: each "
                  "class's unguided (upper) and guided (lower) samples from the same noise; "
                  "titles: MI under the run's selected classifier (T = its MC samples) and "
                  "the reference classifier's label.", "", link(path, f"guidance {config.name}",
                                                              page_dir), "",
                  *[f"- {name}: mean MI {mi:.4f}, label fidelity {fidelity:.2f}"
                    for name, (mi, fidelity) in summary.items()], ""]
    return lines
