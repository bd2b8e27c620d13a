"""The page's first screen: which synthetic data helped, per config, against the baseline
trained on the same labelled images; then how each method moved each class's recall (what
it cost is in `cost`). Every number is a paired difference over seeds (same seed = same labelled
subset) from the records.

The answer table holds, per config with a baseline and per method, the difference in test
AUC and balanced accuracy of the best-on-validation classifier and of the classifier at the
end of training, with 95% t-intervals. All its tests form one family for Holm's correction:
a reader scans the whole table for a win, so the page corrects for the whole table. Where no
difference is significant after Holm, the detectable difference says how large an effect
the seeds could have shown. Synthetic-only configs (`--train_on=synthetic`) and configs
without a baseline of their own (the amount curve) are read in `amount_cas`.
"""

from __future__ import annotations

from tsynd_tf.report.records import END_OF_TRAINING, Config, pre_synthetic_counts
from tsynd_tf.report.stats import (ALPHA, POWER, format_difference, format_mean_std,
                                   format_p, holm, paired_test)
from tsynd_tf.report.tables import markdown_table

# (metric key, name) x (key prefix, classifier): the four differences of the answer table.
ANSWER_METRICS = (("test/auc", "AUC"), ("test/balanced_acc", "bal. ACC"))
VIEWS = (("", "best on val."), (END_OF_TRAINING, "end of training"))


def answer_configs(configs: list[Config]) -> list[Config]:
    """Configs whose methods are compared with their own baseline: a baseline and at least
    one other method, trained on real images (with or without synthetic ones)."""
    return [c for c in configs if "baseline" in c.methods and len(c.methods) > 1
            and c.train_on != "synthetic" and not c.full_data]


def answer_tests(configs: list[Config]) -> list[dict]:
    """Every (config, method, view, metric) paired test against the baseline, with its
    Holm-adjusted p over all of them (None where the test is undefined)."""
    tests = []
    for config in answer_configs(configs):
        for method in config.methods:
            if method == "baseline":
                continue
            for prefix, view in VIEWS:
                for key, name in ANSWER_METRICS:
                    result = paired_test(config.values(method, prefix + key),
                                         config.values("baseline", prefix + key))
                    tests.append({"config": config, "method": method, "view": view,
                                  "metric": name, **result})
    defined = [t for t in tests if t["t_p"] is not None]
    for test, adjusted in zip(defined, holm([t["t_p"] for t in defined])):
        test["holm_p"] = adjusted
    return tests


def difference_cell(test: dict) -> str:
    """'+0.012 [−0.004, +0.028]', bold when significant after Holm, † when only before."""
    text = format_difference(test)
    if not test["n"]:
        return text
    holm_p = test.get("holm_p")
    if holm_p is not None and holm_p < ALPHA:
        return f"**{text}**"
    return text + (" †" if test["t_p"] is not None and test["t_p"] < ALPHA else "")


def detectable_cell(tests: list[dict]) -> str:
    """The detectable differences of the best-on-validation AUC and balanced accuracy."""
    values = [f"{t['mdd']:.3f}" if t["mdd"] else "n/a" for t in tests
              if t["view"] == VIEWS[0][1]]
    return " / ".join(values)


def summary_line(tests: list[dict]) -> str:
    """What the table says, in one sentence a reader can quote."""
    defined = [t for t in tests if t.get("holm_p") is not None]
    if not defined:
        return ("No paired test yet: each difference needs at least 2 seeds of the method and "
                "the baseline.")
    winners = [t for t in defined if t["holm_p"] < ALPHA]
    raw = [t for t in defined if t["t_p"] < ALPHA and t not in winners]
    describe = lambda t: (f"`{t['method']}` in `{t['config'].name}`, {t['metric']} "  # noqa: E731
                          f"({t['view']}): {t['mean']:+.3f}, Holm p={format_p(t['holm_p'])}")
    text = (f"{len(winners)} of {len(defined)} differences from the baseline are significant "
            f"after Holm's correction over the table (α={ALPHA})")
    text += (": " + "; ".join(map(describe, winners)) + "." if winners else ".")
    if raw:
        text += (f" {len(raw)} more have an uncorrected p < {ALPHA} (†), as about "
                 f"{ALPHA * len(defined):.0f} would by chance alone.")
    return text


def answer_section(configs: list[Config]) -> list[str]:
    tests = answer_tests(configs)
    if not tests:
        return []
    header = ["config", "method", "n", "pre-synth.", *(f"Δ {name}, {view}" for _, view in VIEWS
                                         for _, name in ANSWER_METRICS),
              "detectable Δ AUC / bal. ACC"]
    rows, by_row = [], {}
    for test in tests:
        by_row.setdefault((test["config"], test["method"]), []).append(test)
    for (config, method), row in by_row.items():
        rows.append([f"`{config.name}`", f"`{method}`", max(t["n"] for t in row),
                     pre_synthetic_counts(config, method), *map(difference_cell, row),
                     detectable_cell(row)])
    return ["## Which synthetic data helped?", "",
            summary_line(tests), "",
            "Each method minus the baseline trained on the same labelled images (paired by "
            "seed), mean and 95% t-interval over seeds: test AUC (ranking) and balanced "
            "accuracy (the mean of the per-class recalls; a method that only moves the "
            "decision threshold changes accuracy, not AUC). *best on val.*: the classifier "
            "with the best validation AUC (the protocol's); *end of training*: after the "
            "last epoch, what the method did to the classifier. *pre-synth.*: seeds whose "
            "best-on-validation classifier predates the first synthetic pool, so it is a "
            "baseline classifier and its Δ (best on val.) is near zero by construction. **Bold**: significant after "
            f"Holm over all {sum(t['t_p'] is not None for t in tests)} tests of this table; "
            f"†: p < {ALPHA} before correction only. *detectable Δ*: the smallest true "
            f"difference (best on val.) that the paired t-test detects with {POWER:.0%} "
            "power given these seeds' spread; a smaller effect may exist unseen. p-values "
            "per test are under *Paired differences* of each config.", "",
            markdown_table(header, rows), ""]


# ----------------------------------------------------------------------------- per class


def class_names(config: Config) -> list[str]:
    """The classes with a per-class recall in the records (test/recall/<class>)."""
    prefix = "test/recall/"
    return sorted({k[len(prefix):] for r in config.records for k in r["metrics"]
                   if k.startswith(prefix)})


def per_class_section(configs: list[Config]) -> list[str]:
    """Test recall per class (best on val.), and each method's paired change from the
    baseline: where synthetic images rebalance a classifier, one class gains recall and the
    other loses it."""
    lines = []
    for config in answer_configs(configs):
        names = class_names(config)
        if not names:
            continue
        rows = []
        for method in config.methods:
            row = [f"`{method}`"]
            for name in names:
                key = f"test/recall/{name}"
                cell = format_mean_std(config.values(method, key).values())
                if method != "baseline":
                    r = paired_test(config.values(method, key),
                                    config.values("baseline", key))
                    cell += f" (Δ {r['mean']:+.3f})" if r["n"] else ""
                row.append(cell)
            rows.append(row)
        lines += [f"**{config.label}** (`{config.name}`)", "",
                  markdown_table(["method", *(f"recall: {n}" for n in names)], rows), ""]
    if not lines:
        return []
    return ["## Recall per class", "",
            "Test recall of each class (best on val.), mean ± std over seeds, with the mean "
            "paired change from the baseline: the rebalancing effect of synthetic images "
            "shows as one class's gain paid by another's.", "", *lines]
