"""The per-config robustness summaries of the page, between a config's tables and its paired
differences: the normalised areas under the accuracy-vs-strength curves of each noise/attack
family, and the balanced error under MedMNIST-C-style corruptions relative to clean. The
values per cell come from records.Config (its 'area/...' and 'corruption_vs_clean...' keys);
a section is left out when no cell of the config has what it needs."""

from __future__ import annotations

import math

from tsynd_tf.report.records import (
    CORRUPTION_VS_CLEAN,
    ROBUST_AREA,
    ROBUST_FAMILIES,
    ROBUST_METRICS,
    Config,
)
from tsynd_tf.report.stats import format_mean_std, mean_std
from tsynd_tf.report.tables import markdown_table


def family_name(family: str) -> str:
    """'Gaussian', 'FGSM', 'PGD': the family without its strength symbol."""
    return ROBUST_FAMILIES[family].split()[0]


def area_section(config: Config) -> list[str]:
    """Method x (family, metric) areas, mean ± std over seeds, and their mean over families
    for balanced accuracy (the robustness claim)."""
    families = list(dict.fromkeys(f for metric in ROBUST_METRICS for f, _, _ in
                                  config.robust(metric)))
    families.sort(key=list(ROBUST_FAMILIES).index)
    if not families:
        return []
    columns = [(f"area/{metric}/{family}", f"{family_name(family)} {name}")
               for family in families for metric, name in ROBUST_METRICS.items()]
    columns.append((ROBUST_AREA, "mean bal. ACC"))
    rows = [[f"`{m}`", *(format_mean_std(config.values(m, key).values()) for key, _ in columns)]
            for m in config.methods]
    return ["Robustness as areas: per family, the area under the curve of test ACC (or "
            "balanced ACC) against strength, from strength 0 (the clean value) over every "
            "strength evaluated (trapezoid), divided by the largest strength, so a curve "
            "flat at the clean value scores the clean value and a collapse to one class "
            "scores its share in ACC but 0.5 in balanced ACC (two classes; 1/classes in "
            "general). Mean ± std over seeds; *mean bal. ACC*: per seed the mean over "
            "families of the balanced-ACC areas, the *robust* claim ('–': cells without "
            "balanced ACC under attack).", "",
            markdown_table(["method", *(name for _, name in columns)], rows), ""]


def corruption_section(config: Config) -> list[str]:
    """Corruption x method (mean over severities, mean ± std over seeds) and, collapsed, one
    corruption x severity table per method (mean over seeds); nothing without corruptions."""
    names = config.corruptions()
    if not names:
        return []
    evaluated = sum(config.corruption_vs_clean(r) is not None for r in config.records)
    key = CORRUPTION_VS_CLEAN
    rows = [[f"`{name}`", *(format_mean_std(config.values(m, f"{key}/{name}").values())
                            for m in config.methods)] for name in names]
    rows.append(["**mean**", *(format_mean_std(config.values(m, key).values())
                               for m in config.methods)])
    lines = ["Balanced error under MedMNIST-C-style corruptions relative to clean: (1 − "
             "balanced ACC under the corruption) − (1 − clean balanced ACC); 0 is as good as "
             "on clean images, higher is worse. Mean over severities, mean ± std over seeds "
             f"({evaluated} of {len(config.records)} cells evaluated every corruption); "
             "*mean*: over the corruptions.", "",
             markdown_table(["corruption", *(f"`{m}`" for m in config.methods)], rows), "",
             "<details><summary>Relative balanced error per severity (mean over "
             "seeds)</summary>", ""]
    severities = sorted({s for levels in names.values() for s in levels})
    for method in config.methods:
        table = [[f"`{name}`", *(signed_mean(config.values(method, f"{key}/{name}/{s}"))
                                 for s in severities)] for name in names]
        lines += [f"`{method}`:", "",
                  markdown_table(["corruption", *(f"severity {s}" for s in severities)],
                                 table), ""]
    return lines + ["</details>", ""]


def signed_mean(values: dict[int, float]) -> str:
    """'+0.012' (mean over seeds) or '–' for none."""
    mean = mean_std(values.values())[0]
    return "–" if math.isnan(mean) else f"{mean:+.3f}"
