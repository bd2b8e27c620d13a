"""The synthetic images' quality next to what they did for the classifier: one table per
config, a row per generating method (mean over seeds of its runs' `quality/...` results,
tsynd_tf.reference) with its paired test-AUC change against the baseline, and the real
labelled images' own numbers as the floor. Whether better images helped more is read off
the same rows; the field reports that it need not."""

from __future__ import annotations

import math

import numpy as np

from tsynd_tf.report.records import Config
from tsynd_tf.report.stats import paired_test
from tsynd_tf.report.tables import markdown_table

METRICS = (("fid", "FID"), ("kid", "KID"), ("precision", "precision"), ("recall", "recall"),
           ("label_fidelity", "label fidelity"), ("diversity", "diversity"),
           ("memorisation_pixels", "memorised (pixels)"),
           ("memorisation_features", "memorised (features)"))


def _mean(values) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return "n/a" if not values else f"{np.mean(values):.4g}"


def _labelled_floor(config: Config) -> list[str] | None:
    """The real labelled images measured like a pool, mean over the runs that hold it."""
    measured = [q["labelled"] for q in map(config.quality, config.records) if q]
    if not measured:
        return None
    return ["real labelled images (floor)", str(measured[0].get("num_images", "n/a")), "—",
            *[_mean(m.get(key) for m in measured) for key, _ in METRICS]]


def quality_section(configs: list[Config]) -> list[str]:
    lines = []
    for config in configs:
        methods = [m for m in config.methods if config.values(m, "quality/fid")]
        if not methods:
            continue
        rows = []
        for method in methods:
            change = "n/a"
            if "baseline" in config.methods:
                r = paired_test(config.values(method, "test/auc"),
                                config.values("baseline", "test/auc"))
                change = f"{r['mean']:+.3f} (n={r['n']})" if r["n"] else "n/a"
            rows.append([f"`{method}`", _mean(config.values(method, "quality/num_images")
                                                .values()), change,
                         *[_mean(config.values(method, f"quality/{key}").values())
                           for key, _ in METRICS]])
        floor = _labelled_floor(config)
        header = ["images", "synthetic images", "test AUC − baseline",
                  *[name for _, name in METRICS]]
        lines += [f"### Synthetic image quality: {config.label}", "",
                  markdown_table(header, rows + ([floor] if floor else [])), "",
                  "Against the training split, in a reference classifier's features "
                  "(tsynd_tf/reference.py): in-domain numbers, comparable between the rows, "
                  "not with published FIDs. Lower FID/KID and higher precision, recall and "
                  "label fidelity are closer to the real images; diversity 1 is as diverse "
                  "as they are. Memorised: the share of images closer to a training image "
                  "than 95% of held-out real images are (Alaa et al. 2022), ~0.05 for new "
                  "images and 1 for copies; n/a for runs measured before it existed.", ""]
    return lines

