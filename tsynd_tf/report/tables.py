"""The markdown sections of the page, in its order: header, the paper's claims, overview,
settings, one section per config (verdict, metrics, robust accuracy; then the areas and
corruptions of `robust_tables`; then paired differences), full-data reference and
statistics notes. Each returns its lines; every number comes from the records
(records.Config) through the statistics of `stats`."""

from __future__ import annotations

import datetime
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from tsynd_tf.report.records import (
    CLEAN_METRICS,
    END_OF_TRAINING,
    ROBUST_AREA,
    ROBUST_FAMILIES,
    VERDICT_METRICS,
    Config,
    busy_hours,
    cell_seconds,
    end_of_training_cells,
    hardware,
    machine_types,
    pre_synthetic_counts,
    sweep_folder,
)
from tsynd_tf.report.stats import (
    ALPHA,
    POWER,
    format_mean_std,
    format_p,
    holm,
    p_is,
    paired_test,
)

# The paper's claims as paired comparisons: (claim, method, compared with, metric key).
CLAIMS = (
    ("more accurate with few labels", "tsynd_mi", "baseline", "test/acc"),
    ("higher AUC with few labels", "tsynd_mi", "baseline", "test/auc"),
    ("more robust to noise and attacks", "tsynd_mi", "baseline", ROBUST_AREA),
    ("targeted beats random latent noise", "tsynd_mi", "latent_noise", "test/acc"),
    ("MI beats predictive entropy", "tsynd_mi", "tsynd_entropy", "test/acc"),
)
# The claims table's classifiers: the headline, and the end of training (clean claims only).
HEADLINE_VIEW, END_VIEW = "best on val.", "end of training"
# Published full-data reference, ResNet-18 at 28 px, test split; not computed here.
PUBLISHED_RESNET18_28 = {
    "source": "MedMNIST v2, Yang et al. 2023, Table",
    "pneumoniamnist": {"acc": 0.854, "auc": 0.944},
    "breastmnist": {"acc": 0.863, "auc": 0.901},
}
# Flags that differ between the cells of one config, or do not change the result.
CELL_FLAGS = ("method", "seed", "output_dir", "data_dir", "export_dir", "verbose", "cache_dir")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def robust_label(family: str, strength: float) -> str:
    return f"{ROBUST_FAMILIES[family]}={strength:g}"


# ----------------------------------------------------------------------------- header


def header_section(records: list[dict], configs: list[Config], planned: set[tuple],
                   sweep_dir: Path) -> list[str]:
    lines = [
        f"Generated {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} by",
        "", "```", f"python -m tsynd_tf.report {shlex.join(sys.argv[1:])}", "```", "",
        f"- Sweep: `{sweep_dir.resolve()}` ({sweep_folder(sweep_dir).results_file.name}; the "
        "training flags of every config are under Settings).",
        *cells_lines(records, configs, planned), *time_lines(records)]
    machine, software = hardware()
    types = machine_types(records)
    lines += [f"- Machine types that ran the cells (a CPU's instruction set picks TensorFlow's "
              f"float kernels, so a cell repeated on another type differs in the last digits): "
              + "; ".join(f"{name}: {n} cells" for name, n in sorted(types.items())) + ".",
              f"- Hardware of the machine that wrote this page: {machine}.",
              f"- Software: {software}."]
    return lines


def cells_lines(records: list[dict], configs: list[Config], planned: set[tuple]) -> list[str]:
    """Finished cells out of the expected ones, and which are missing."""
    # Expected: the cells the sweep's starts planned, and every method and seed that any
    # finished cell of a config has (sweeps from before plan lines were written).
    expected = planned | {(c.name, m, s) for c in configs for m in c.methods for s in c.seeds}
    finished = {(r["config"], r["method"], r["seed"]) for r in records}
    missing = sorted(expected - finished)
    grids = {}  # config -> (methods, seeds) expected
    for config, method, seed in expected:
        grids.setdefault(config, (set(), set()))[0].add(method)
        grids[config][1].add(seed)
    lines = [
        f"- Cells finished: **{len(finished)} of {len(expected)}** ({len(grids)} "
        f"config{'s' if len(grids) != 1 else ''}, "
        "methods × seeds as planned by the sweep or present in any finished cell: "
        + "; ".join(f"{name} {len(m)}×{len(s)}" for name, (m, s) in sorted(grids.items()))
        + ").",
    ]
    if missing:
        shown = ", ".join(f"{c}/{m}/s{s}" for c, m, s in missing[:12])
        lines.append(f"- Not finished: {shown}{' …' if len(missing) > 12 else ''}")
    return lines


def time_lines(records: list[dict]) -> list[str]:
    """Compute time, the recorded sweep command(s) and the wall time."""
    seconds = [cell_seconds(r) for r in records]
    lines = [
        f"- Compute: {sum(seconds) / 3600:.2f} h summed over cells (train + evaluate; cells "
        f"may run side by side), median {np.median(seconds) / 60:.1f} min per cell "
        f"(train {np.median([r['seconds'].get('train', 0) for r in records]) / 60:.1f}, "
        f"evaluate {np.median([r['seconds'].get('evaluate', 0) for r in records]) / 60:.1f}).",
    ]
    commands = sorted({r["sweep_command"] for r in records if "sweep_command" in r})
    timed = [r for r in records if "started" in r]
    untimed = (f"; {len(records) - len(timed)} older cells recorded no command or times"
               if len(timed) < len(records) else "")
    if commands:
        lines += ["- Sweep command(s), as recorded by the cells:", "", "```", *commands, "```",
                  ""]
    if timed:
        first = min(r["started"] for r in timed)
        last = max(r["finished"] for r in timed)
        lines.append(f"- Wall time: {busy_hours(timed):.2f} h with at least one cell running, "
                     f"between {first} and {last} (UTC), over {len(timed)} cells{untimed}.")
    elif records:
        lines.append(f"- Wall time: not recorded{untimed}.")
    return lines


# ----------------------------------------------------------------------------- summaries


def claim_tests(configs: list[Config]) -> list[tuple[str, str, Config, str, str, dict]]:
    """(claim, view, config, method, compared with, paired_test) of every claims row: each
    claim in every low-data config with both methods on the best-on-validation classifier,
    and a clean claim also at the end of training where cells recorded it."""
    tests = []
    for claim, a, b, key in CLAIMS:
        for config in configs:
            if config.full_data or not {a, b} <= set(config.methods):
                continue
            tests.append((claim, HEADLINE_VIEW, config, a, b,
                          paired_test(config.values(a, key), config.values(b, key))))
            if key in VERDICT_METRICS:
                last = END_OF_TRAINING + key
                end = paired_test(config.values(a, last), config.values(b, last))
                if end["n"]:
                    tests.append((claim, END_VIEW, config, a, b, end))
    return tests


def claim_outcome(result: dict, adjusted: float | None) -> str:
    """holds / reversed (after Holm or not) / not shown (with the detectable difference) /
    no test."""
    p, mean = result["t_p"], result["mean"]
    if p is None:
        return "no test (fewer than 2 pairs, or all differences equal)"
    if p >= ALPHA:
        return "not shown" + (f"; detectable: ≥ {result['mdd']:.3f}" if result["mdd"] else "")
    outcome = "**holds**" if mean > 0 else "**reversed** (worse)"
    return outcome + ("" if adjusted < ALPHA else " (not after Holm)")


def claims_section(configs: list[Config]) -> list[str]:
    """The paper's claims, each a paired test per low-data config, in one table."""
    tests = claim_tests(configs)
    if not tests:
        return []
    defined = [i for i, t in enumerate(tests) if t[5]["t_p"] is not None]
    adjusted = dict(zip(defined, holm([tests[i][5]["t_p"] for i in defined])))
    rows = [[claim, view, f"`{config.name}`", f"`{a}` − `{b}`", r["n"],
             f"{r['mean']:+.3f}" if r["n"] else "–",
             format_p(r["t_p"]), format_p(adjusted.get(i)), claim_outcome(r, adjusted.get(i))]
            for i, (claim, view, config, a, b, r) in enumerate(tests)]
    return ["## The paper's claims", "",
            "Each claim as a paired comparison over seeds in every low-data config: mean Δ "
            "(first method minus second), two-sided paired t-test p, Holm-adjusted over all "
            f"rows of this table, outcome at α={ALPHA}. 'not shown' means no significant "
            "difference either way; *detectable* is the smallest true mean Δ that this test "
            f"would detect with {POWER:.0%} power at α={ALPHA} given the pairs and the "
            "observed spread of their differences (a smaller effect may exist unseen).", "",
            f"*Classifier*: **{HEADLINE_VIEW}**, the headline, is the checkpoint with the best "
            "validation AUC, the protocol of the paper and of MedMNIST. In some cells that "
            "classifier predates every synthetic pool (*pre-synth.* in the Overview), so its "
            "comparison measures checkpoint selection rather than synthetic data; the "
            f"*{END_VIEW}* rows compare the classifiers after the last epoch, what the "
            f"method did to the classifier. {end_of_training_note(configs)}", "",
            "*Robust* (best on validation only): per seed, the normalised area under the "
            "balanced-accuracy-vs-strength curve (strength 0: clean), averaged over the "
            "noise/attack families evaluated (Gaussian, FGSM, PGD; the area tables per "
            "config below). A classifier that collapses to one class scores 0.5 with two "
            "classes (1/classes in general), not its class's share.", "",
            markdown_table(["claim", "classifier", "config", "comparison", "n pairs",
                            "mean Δ", "t-test p", "Holm p", "outcome"], rows), ""]


def end_of_training_note(configs: list[Config]) -> str:
    """How many cells have the end-of-training view, for the claims table's caption."""
    records = [r for c in configs for r in c.records]
    count = end_of_training_cells(records)
    if not count:
        return (f"No cell records it yet (0 of {len(records)}: runs from before training "
                "recorded the end-of-training classifier), so this table has no such rows.")
    return (f"{count} of {len(records)} cells record it; its rows, for the clean claims "
            "only, pair the seeds where both methods have it and join the Holm family.")


def overview_section(configs: list[Config]) -> list[str]:
    """One row per config and method: the numbers a reader compares first."""
    rows = [[f"`{c.name}`", c.num_labelled, f"`{m}`", len(c.by_method(m)),
             *(format_mean_std(c.values(m, k).values()) for k in ("val/auc", *VERDICT_METRICS)),
             pre_synthetic_counts(c, m)] for c in configs for m in c.methods]
    return ["## Overview", "",
            "Mean ± std over seeds. *val AUC*: validation AUC of the selected classifier (the "
            "selection and tuning criterion); *pre-synth.*: seeds whose selected classifier "
            "predates the first synthetic pool (–: the baseline, and classifiers trained on "
            "synthetic images alone, which see pools from their first step).", "",
            markdown_table(["config", "labelled", "method", "n", "val AUC",
                            *(f"test {n}" for n in VERDICT_METRICS.values()), "pre-synth."],
                           rows), ""]


def settings_section(configs: list[Config]) -> list[str]:
    example = configs[0].run_dir(configs[0].records[0])  # names the run files in the text
    lines = ["## Settings", "", "Training flags shared by every cell of a config (from the "
             f"runs' {example.config_file.name}) and evaluation settings "
             f"({example.eval_file('test').name}).", "",
             "<details><summary>Flags</summary>", ""]
    for config in configs:
        # Cells whose settings are lost (older lines, run directories elsewhere) say nothing.
        flag_sets = [f for f in map(config.flags, config.records) if f] or [{}]
        shared = {k: v for k, v in flag_sets[0].items()
                  if k not in CELL_FLAGS and all(f.get(k) == v for f in flag_sets)}
        lines.append(f"- `{config.name}`: `" +
                     " ".join(f"--{k}={v}" for k, v in sorted(shared.items())) + "`")
        recorded = next(filter(None, map(config.evaluation_settings, config.records)), {})
        settings = {k: v for k, v in recorded.items() if k not in ("seconds", "seed")}
        lines.append(f"  - evaluation: `{json.dumps(settings, sort_keys=True)}`")
    return lines + ["", "</details>", ""]


# ----------------------------------------------------------------------------- per config


def verdict(config: Config) -> str:
    """One line from the paired t-tests of test ACC and AUC over all comparisons."""
    tests = []
    for a, b in config.comparisons():
        for key, name in VERDICT_METRICS.items():
            result = paired_test(config.values(a, key), config.values(b, key))
            if result["t_p"] is not None:
                tests.append((a, b, name, result))
    if not config.comparisons():
        return f"No comparison: only {', '.join(config.methods)} finished so far."
    if not tests:
        most = max((paired_test(config.values(a, "test/acc"), config.values(b, "test/acc"))["n"]
                    for a, b in config.comparisons()), default=0)
        return (f"No verdict: paired tests need at least 2 seeds run by both methods (at most "
                f"{most} here).")
    adjusted = holm([t[3]["t_p"] for t in tests])
    significant = [(t, q) for t, q in zip(tests, adjusted) if t[3]["t_p"] < ALPHA]
    scope = (f"paired t-test over seeds, α={ALPHA}, {len(tests)} tests over "
             f"{len(config.comparisons())} comparisons × ACC/AUC")
    if not significant:
        a, b, name, r = min(tests, key=lambda t: t[3]["t_p"])
        return (f"No significant difference in test ACC or AUC ({scope}); the smallest p is "
                f"{a} − {b} in {name}: {r['mean']:+.3f} ({p_is(r['t_p'])}, "
                f"{r['n']} seeds).")
    claims = []
    for (a, b, name, r), q in significant:
        word = "beats" if r["mean"] > 0 else "is worse than"
        survives = "holds" if q < ALPHA else "does not hold"
        claims.append(f"{a} {word} {b} in {name} by {r['mean']:+.3f} ({p_is(r['t_p'])}, "
                      f"{r['n']} seeds; Holm-adjusted {p_is(q)}, {survives} after "
                      f"correction)")
    return (f"{'; '.join(claims)}. {len(tests) - len(significant)} of {len(tests)} tests not "
            f"significant ({scope}, uncorrected unless stated).")


def config_section(config: Config, robust: list[tuple[str, float, str]]) -> list[str]:
    lines = [f"### {config.label}", "",
             f"Config `{config.name}`, seeds {', '.join(map(str, config.seeds))}.", "",
             f"**Verdict:** {verdict(config)}", "",
             "Test metrics, mean ± std over seeds (n seeds); *val AUC*: the validation AUC "
             "of the selected classifier (the model-selection and tuning criterion). "
             "*pre-synth.*: seeds whose "
             "selected (best validation AUC) classifier predates the first synthetic pool, so "
             "it never trained on synthetic images (–: none can, as in the Overview).", ""]
    header = ["method", "n", *CLEAN_METRICS.values(), "val AUC", "pre-synth.", "min/cell"]
    rows = []
    for method in config.methods:
        cells = config.by_method(method)
        rows.append([f"`{method}`", len(cells),
                     *(format_mean_std(config.values(method, k).values())
                       for k in (*CLEAN_METRICS, "val/auc")),
                     pre_synthetic_counts(config, method),
                     f"{np.median([cell_seconds(r) for r in cells]) / 60:.1f}"])
    lines += [markdown_table(header, rows), ""] + split_lines(config)
    if robust:
        lines += ["Accuracy under noise and attacks, mean ± std over seeds.", "",
                  markdown_table(["method", *(robust_label(f, s) for f, s, _ in robust)],
                                 [[f"`{m}`", *(format_mean_std(config.values(m, k).values())
                                               for _, _, k in robust)]
                                  for m in config.methods]), ""]
    return lines


def split_lines(config: Config) -> list[str]:
    """Image folders: how many patients train and validation share, per the runs' split.json
    (0 when validation is carved by patient); nothing for MedMNIST's fixed splits."""
    splits = [config.run_dir(r).read_split() for r in config.records]
    shared = sorted({len(split["shared_train_val_groups"]) for split in splits
                     if split and "shared_train_val_groups" in split})
    if not shared:
        return []
    return [f"Patients (file-name groups, `--group_pattern`) in both train and validation: "
            f"{', '.join(map(str, shared))} (split.json of each of the "
            f"{sum(1 for s in splits if s)} runs).", ""]


def paired_section(config: Config, robust: list[tuple[str, float, str]]) -> list[str]:
    """Paired differences of every comparison in ACC/AUC, and (collapsed) robust accuracy."""
    if not config.comparisons():
        return []
    header = ["comparison", "metric", "n pairs", "mean Δ", "95% CI (t)", "t-test p",
              "Wilcoxon p", "detectable Δ"]
    lines = ["Paired differences (same seed = same labelled subset, autoencoder and "
             "initialisation). *detectable Δ*: the smallest true |mean Δ| the t-test detects "
             f"with {POWER:.0%} power at α={ALPHA} (see Statistics).", "",
             markdown_table(header, paired_rows(config, list(VERDICT_METRICS.items()))), ""]
    if robust:
        robust_metrics = [(k, robust_label(f, s) + " acc") for f, s, k in robust]
        lines += ["<details><summary>Paired differences in robust accuracy</summary>", "",
                  markdown_table(header, paired_rows(config, robust_metrics)), "",
                  "</details>", ""]
    return lines


def paired_rows(config: Config, keys: list[tuple[str, str]]) -> list[list]:
    """One row per comparison and (metric key, name)."""
    rows = []
    for a, b in config.comparisons():
        for key, name in keys:
            r = paired_test(config.values(a, key), config.values(b, key))
            ci = f"[{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]" if r["ci"] else "n/a"
            rows.append([f"`{a}` − `{b}`", name, r["n"], f"{r['mean']:+.3f}", ci,
                         format_p(r["t_p"]), format_p(r["wilcoxon_p"]),
                         f"{r['mdd']:.3f}" if r["mdd"] else "n/a"])
    return rows


# ----------------------------------------------------------------------------- closing


def reference_section(configs: list[Config]) -> list[str]:
    full = [c for c in configs if c.full_data]
    if not full:
        return []
    rows = []
    for config in full:
        published = PUBLISHED_RESNET18_28.get(config.dataset, {})
        flag_values = config.flags(config.records[0])
        for method in config.methods:
            rows.append([config.dataset, f"`{method}`", flag_values.get("classifier", "?"),
                         len(config.by_method(method)),
                         format_mean_std(config.values(method, "test/acc").values()),
                         format_mean_std(config.values(method, "test/auc").values()),
                         published.get("acc", "–"), published.get("auc", "–")])
    return ["## Full-data reference", "",
            f"Configs trained on all training labels, next to the published ResNet-18 (28) "
            f"numbers ({PUBLISHED_RESNET18_28['source']}; constants, not computed here).", "",
            markdown_table(["dataset", "method", "classifier", "n", "ACC", "AUC",
                            "published ACC", "published AUC"], rows), ""]


def statistics_notes(configs: list[Config]) -> list[str]:
    n = max((len(c.seeds) for c in configs), default=0)
    wilcoxon_floor = (f" With {n} pairs the smallest two-sided exact Wilcoxon p is "
                      f"2/2^{n} = {2 / 2**n:.4f}." if n >= 2 else "")
    return ["## Statistics", "",
            "Means ± sample standard deviations (ddof=1) over seeds; a single seed shows its "
            "value alone. Comparisons pair cells by seed. p-values are two-sided: paired "
            "t-test (scipy.stats.ttest_rel) and Wilcoxon signed-rank (scipy.stats.wilcoxon, "
            "zero differences dropped); 'n/a' where undefined (fewer than 2 pairs, or all "
            f"differences zero or equal).{wilcoxon_floor} The verdicts use the t-test at "
            f"α={ALPHA} on test ACC and AUC only; each verdict states how many tests it "
            "covers, and only the Holm-adjusted p-values it quotes correct for multiple "
            "comparisons. Robust-accuracy tests are descriptive and uncorrected. The "
            "detectable difference of a comparison (claims table, paired differences) is the "
            f"true mean Δ at which the two-sided paired t-test at α={ALPHA} over its n pairs "
            f"has {POWER:.0%} power, given the observed std sd of the differences: "
            "nc · sd / √n, with nc the noncentrality at which the noncentral t with n − 1 "
            "degrees of freedom exceeds the critical t with that probability "
            "(scipy.stats.nct, scipy.optimize.brentq); for many pairs it tends to "
            "(z₀.₉₇₅ + z₀.₈) · sd / √n ≈ 2.8 · sd / √n. It is computed from the same data "
            "as the test, so it describes this sweep's resolution, not a planned power.", ""]
