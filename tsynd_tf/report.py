r"""Tables, paired tests and figures of a sweep, generated into one markdown page.

  python -m tsynd_tf.report --sweep_dir=sweeps/medmnist [--output=docs/RESULTS.md] \
      [--figures_dir=docs/figures] [--title=...] [--nomodel_figures]

Reads <sweep_dir>/results.jsonl (one line per finished cell, written by tsynd_tf.experiment)
and the cells' run directories. Every number on the page is computed here from those files.
Per config (dataset x labelled fraction): mean ± std over seeds of every method, paired
differences between methods (seeds pair cells with the same labelled subset, autoencoder and
initialisation) with paired t-test and Wilcoxon p-values, and a verdict line. Figures: test
ACC/AUC vs labelled fraction, robust accuracy vs noise/attack strength, and, from one seed's
models (--model_figures), MI histograms of real vs synthetic images, synthetic examples and
Grad-CAM maps. The models' data is found like the sweep's: the runs' --data_dir, else
$TSYND_DATA_DIR.
"""

from __future__ import annotations

import datetime
import json
import logging as pylogging
import math
import os
import re
import shlex
import sys
import warnings
from pathlib import Path

import numpy as np
from absl import app, flags, logging
from scipy import stats

from tsynd_tf.fileio import atomic_path, read_json_lines
from tsynd_tf.runs import SWEEP_RESULTS_FILE

flags.DEFINE_string("sweep_dir", None, "Sweep folder with results.jsonl and runs/ "
                    "(tsynd_tf.experiment).")
flags.DEFINE_string("output", "docs/RESULTS.md", "Markdown page to write.")
flags.DEFINE_string("figures_dir", None, "Folder for the PNG figures; default figures/ beside "
                    "--output.")
flags.DEFINE_string("title", "TSynD sweep results", "Title of the page.")
flags.DEFINE_bool("model_figures", True, "Also the figures that load one seed's classifiers, "
                  "pools and data: MI histograms, synthetic examples, Grad-CAM.")
flags.DEFINE_integer("num_images", 8, "Images in the synthetic-example and Grad-CAM grids.")
flags.mark_flag_as_required("sweep_dir")

FLAGS = flags.FLAGS

ALPHA = 0.05
METHOD_ORDER = ("baseline", "latent_noise", "tsynd_mi", "tsynd_entropy")  # generation.METHODS
EXTRA_COMPARISONS = (("tsynd_mi", "tsynd_entropy"), ("tsynd_mi", "latent_noise"))
CLEAN_METRICS = {"test/acc": "ACC", "test/auc": "AUC", "test/balanced_acc": "bal. ACC",
                 "test/nll": "NLL", "test/ece": "ECE", "test/mutual_information": "test MI"}
VERDICT_METRICS = {"test/acc": "ACC", "test/auc": "AUC"}
ROBUST_FAMILIES = {"gaussian": "Gaussian σ", "fgsm": "FGSM ε", "pgd": "PGD ε"}
ROBUST_MEAN = "robust/mean_acc"  # Config.values: per seed, mean accuracy over noise/attacks
# The paper's claims as paired comparisons: (claim, method, compared with, metric key).
CLAIMS = (
    ("more accurate with few labels", "tsynd_mi", "baseline", "test/acc"),
    ("higher AUC with few labels", "tsynd_mi", "baseline", "test/auc"),
    ("more robust to noise and attacks", "tsynd_mi", "baseline", ROBUST_MEAN),
    ("targeted beats random latent noise", "tsynd_mi", "latent_noise", "test/acc"),
    ("MI beats predictive entropy", "tsynd_mi", "tsynd_entropy", "test/acc"),
)
# Published full-data reference, ResNet-18 at 28 px, test split; not computed here.
PUBLISHED_RESNET18_28 = {
    "source": "MedMNIST v2, Yang et al. 2023, Table",
    "pneumoniamnist": {"acc": 0.854, "auc": 0.944},
    "breastmnist": {"acc": 0.863, "auc": 0.901},
}
# Flags that differ between the cells of one config, or do not change the result.
CELL_FLAGS = ("method", "seed", "output_dir", "data_dir", "export_dir", "verbose")


# ----------------------------------------------------------------------------- records


def read_results(results_path: Path) -> list[dict]:
    """The sweep's records; a cell recorded twice keeps its last."""
    return list({r["cell"]: r for r in read_json_lines(results_path) if "cell" in r}.values())


def read_planned_cells(results_path: Path) -> set[tuple[str, str, int]]:
    """(config, method, seed) of every cell that a start of the sweep planned (its plan lines)."""
    return {(config, method, seed) for r in read_json_lines(results_path) if "plan" in r
            for config, method, seed in r["plan"]}


def method_key(method: str):
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def run_dir(sweep_dir: Path, record: dict) -> Path:
    """runs/<cell> of the sweep folder (wherever it was moved), else the recorded path."""
    moved = sweep_dir / "runs" / record["cell"]
    return moved if moved.is_dir() else Path(record["run_dir"])


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


class Config:
    """The finished cells of one training flagfile (a dataset x labelled fraction)."""

    def __init__(self, name: str, records: list[dict], sweep_dir: Path):
        self.name, self.records, self.sweep_dir = name, records, sweep_dir
        first = records[0]
        self.dataset, self.train_count = first["dataset"], first["train_count"]
        self.train_fraction = first["train_fraction"]
        self.num_labelled = first["training"]["num_labelled"]
        self.methods = sorted({r["method"] for r in records}, key=method_key)
        self.seeds = sorted({r["seed"] for r in records})

    @property
    def label(self) -> str:
        share = (f"{self.train_count} labelled images" if self.train_count else
                 f"{100 * self.train_fraction:g}% of the labels ({self.num_labelled} images)")
        return f"{self.dataset}, {share}"

    @property
    def full_data(self) -> bool:
        """Trained on all training labels: a reference config, not a low-data one."""
        return self.train_fraction == 1.0 and not self.train_count

    @property
    def labelled_fraction(self) -> float:
        """Share of the training split that is labelled (for --train_count configs too)."""
        if not self.train_count:
            return self.train_fraction
        subset = read_json(self.run_dir(self.records[0]) / "subset.json")
        return len(subset["indices"]) / subset["num_train"] if subset else self.train_fraction

    def run_dir(self, record: dict) -> Path:
        return run_dir(self.sweep_dir, record)

    def by_method(self, method: str) -> list[dict]:
        return [r for r in self.records if r["method"] == method]

    def values(self, method: str, key: str) -> dict[int, float]:
        """seed -> metric of `method` (undefined metrics left out)."""
        if key == ROBUST_MEAN:
            keys = [k for _, _, k in robust_keys(self.records)]
            per_key = [self.values(method, k) for k in keys]
            seeds = set.intersection(*(set(v) for v in per_key)) if keys else set()
            return {s: float(np.mean([v[s] for v in per_key])) for s in sorted(seeds)}
        out = {}
        for r in self.by_method(method):
            # Evaluation metrics first; validation ones come from the training results.
            value = r["metrics"].get(key, r.get("training", {}).get(key))
            if value is not None and math.isfinite(value):
                out[r["seed"]] = float(value)
        return out

    def comparisons(self) -> list[tuple[str, str]]:
        pairs = [(m, "baseline") for m in self.methods if m != "baseline"]
        pairs += [p for p in EXTRA_COMPARISONS if set(p) <= set(self.methods)]
        return [p for p in pairs if p[1] in self.methods]


def group_configs(records: list[dict], sweep_dir: Path) -> list[Config]:
    names = dict.fromkeys(r["config"] for r in records)
    configs = [Config(n, [r for r in records if r["config"] == n], sweep_dir) for n in names]
    return sorted(configs, key=lambda c: (c.dataset, c.num_labelled, c.train_fraction, c.name))


def robust_keys(records: list[dict]) -> list[tuple[str, float, str]]:
    """(family, strength, metric key) of every noise/attack accuracy in the records, except
    Gaussian σ=0 (identical to clean accuracy by construction: same dropout masks)."""
    found = set()
    for r in records:
        for key in r["metrics"]:
            match = re.fullmatch(r"(gaussian|fgsm|pgd)_([0-9.eE+-]+)/acc", key)
            if match and not (match[1] == "gaussian" and float(match[2]) == 0):
                found.add((match[1], float(match[2]), key))
    return sorted(found, key=lambda k: (list(ROBUST_FAMILIES).index(k[0]), k[1]))


def robust_label(family: str, strength: float) -> str:
    return f"{ROBUST_FAMILIES[family]}={strength:g}"


# ----------------------------------------------------------------------------- statistics


def mean_std(values) -> tuple[float, float]:
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
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "–"
    return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


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


# ----------------------------------------------------------------------------- run facts


def selected_epoch(directory: Path) -> int | None:
    """Epoch of the best-on-validation checkpoint that classifier.keras holds: the first
    epoch whose val/auc beat every earlier one (Trainer.end_epoch's rule), from TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    if not (directory / "tensorboard").is_dir():
        return None
    events = EventAccumulator(str(directory / "tensorboard"),
                              size_guidance={"tensors": 0}).Reload()
    if "val/auc" not in events.Tags()["tensors"]:
        return None
    aucs = {e.step: float(tensor_util.make_ndarray(e.tensor_proto))
            for e in events.Tensors("val/auc")}  # a re-run epoch keeps its last value
    best, selected = -1.0, None
    for step in sorted(aucs):
        if aucs[step] > best:
            best, selected = aucs[step], step
    return selected


def pre_synthetic_counts(config: Config, method: str) -> str:
    """How many seeds' selected classifiers were trained on real images only."""
    if method == "baseline":
        return "–"
    known = early = 0
    for r in config.by_method(method):
        directory = config.run_dir(r)
        flag_values = (read_json(directory / "config.json") or {}).get("flags", {})
        epoch = selected_epoch(directory)
        if epoch is not None and "initial_epochs" in flag_values:
            known += 1
            early += epoch <= flag_values["initial_epochs"]
    return f"{early}/{known}" if known else "?"


def hardware() -> list[str]:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal"))
        memory = f"{kib / 2**20:.1f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        memory = "RAM unknown"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return [f"{cpu}, {os.cpu_count()} cores, {memory}, "
            f"{f'{len(gpus)} GPU(s)' if gpus else 'no GPU'}",
            f"Python {sys.version.split()[0]}, TensorFlow {tf.__version__}"]


# ----------------------------------------------------------------------------- markdown


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def cell_seconds(record: dict) -> float:
    return sum(record.get("seconds", {}).values())


def busy_hours(records: list[dict]) -> float:
    """Hours during which at least one cell ran: the union of the cells' [started, finished]
    intervals, so idle gaps between restarts do not count and side-by-side cells count once."""
    intervals = sorted((datetime.datetime.fromisoformat(r["started"]),
                        datetime.datetime.fromisoformat(r["finished"])) for r in records)
    total, end = 0.0, None
    for start, finish in intervals:
        if end is None or start > end:
            total += (finish - start).total_seconds()
            end = finish
        elif finish > end:
            total += (finish - end).total_seconds()
            end = finish
    return total / 3600


def header_section(records: list[dict], configs: list[Config], planned: set[tuple],
                   sweep_dir: Path) -> list[str]:
    # Expected: the cells the sweep's starts planned, and every method and seed that any
    # finished cell of a config has (sweeps from before plan lines were written).
    expected = planned | {(c.name, m, s) for c in configs for m in c.methods for s in c.seeds}
    finished = {(r["config"], r["method"], r["seed"]) for r in records}
    missing = sorted(expected - finished)
    grids = {}  # config -> (methods, seeds) expected
    for config, method, seed in expected:
        grids.setdefault(config, (set(), set()))[0].add(method)
        grids[config][1].add(seed)
    seconds = [cell_seconds(r) for r in records]
    lines = [
        f"Generated {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} by",
        "", "```", f"python -m tsynd_tf.report {shlex.join(sys.argv[1:])}", "```", "",
        f"- Sweep: `{sweep_dir.resolve()}` ({SWEEP_RESULTS_FILE}; the training flags of every "
        "config are under Settings).",
        f"- Cells finished: **{len(finished)} of {len(expected)}** ({len(grids)} "
        f"config{'s' if len(grids) != 1 else ''}, "
        "methods × seeds as planned by the sweep or present in any finished cell: "
        + "; ".join(f"{name} {len(m)}×{len(s)}" for name, (m, s) in sorted(grids.items()))
        + ").",
    ]
    if missing:
        shown = ", ".join(f"{c}/{m}/s{s}" for c, m, s in missing[:12])
        lines.append(f"- Not finished: {shown}{' …' if len(missing) > 12 else ''}")
    lines += [
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
    machine, software = hardware()
    lines += [f"- Hardware of the machine that wrote this page (the sweep's if it ran here): "
              f"{machine}.", f"- Software: {software}."]
    return lines


def settings_section(configs: list[Config]) -> list[str]:
    lines = ["## Settings", "", "Training flags shared by every cell of a config (from the "
             "runs' config.json) and evaluation settings (eval_test.json).", "",
             "<details><summary>Flags</summary>", ""]
    for config in configs:
        flag_sets = [(read_json(config.run_dir(r) / "config.json") or {}).get("flags", {})
                     for r in config.records]
        shared = {k: v for k, v in flag_sets[0].items()
                  if k not in CELL_FLAGS and all(f.get(k) == v for f in flag_sets)}
        lines.append(f"- `{config.name}`: `" +
                     " ".join(f"--{k}={v}" for k, v in sorted(shared.items())) + "`")
        evaluation = read_json(config.run_dir(config.records[0]) / "eval_test.json") or {}
        settings = {k: v for k, v in evaluation.get("settings", {}).items()
                    if k not in ("seconds", "seed")}
        lines.append(f"  - evaluation: `{json.dumps(settings, sort_keys=True)}`")
    return lines + ["", "</details>", ""]


def config_section(config: Config, robust: list[tuple[str, float, str]]) -> list[str]:
    lines = [f"### {config.label}", "",
             f"Config `{config.name}`, seeds {', '.join(map(str, config.seeds))}.", "",
             f"**Verdict:** {verdict(config)}", "",
             "Test metrics, mean ± std over seeds (n seeds); *val AUC*: the validation AUC "
             "of the selected classifier (the model-selection and tuning criterion). "
             "*pre-synth.*: seeds whose "
             "selected (best validation AUC) classifier predates the first synthetic pool, so "
             "it never trained on synthetic images.", ""]
    header = ["method", "n", *CLEAN_METRICS.values(), "val AUC", "pre-synth.", "min/cell"]
    rows = []
    for method in config.methods:
        cells = config.by_method(method)
        rows.append([f"`{method}`", len(cells),
                     *(format_mean_std(config.values(method, k).values())
                       for k in (*CLEAN_METRICS, "val/auc")),
                     pre_synthetic_counts(config, method),
                     f"{np.median([cell_seconds(r) for r in cells]) / 60:.1f}"])
    lines += [markdown_table(header, rows), ""]
    if robust:
        lines += ["Accuracy under noise and attacks, mean ± std over seeds.", "",
                  markdown_table(["method", *(robust_label(f, s) for f, s, _ in robust)],
                                 [[f"`{m}`", *(format_mean_std(config.values(m, k).values())
                                               for _, _, k in robust)]
                                  for m in config.methods]), ""]
    pairs = config.comparisons()
    if pairs:
        def paired_rows(keys):
            rows = []
            for a, b in pairs:
                for key, name in keys:
                    r = paired_test(config.values(a, key), config.values(b, key))
                    ci = f"[{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]" if r["ci"] else "n/a"
                    rows.append([f"`{a}` − `{b}`", name, r["n"], f"{r['mean']:+.3f}", ci,
                                 format_p(r["t_p"]), format_p(r["wilcoxon_p"])])
            return rows

        header = ["comparison", "metric", "n pairs", "mean Δ", "95% CI (t)", "t-test p",
                  "Wilcoxon p"]
        lines += ["Paired differences (same seed = same labelled subset, autoencoder and "
                  "initialisation).", "",
                  markdown_table(header, paired_rows(list(VERDICT_METRICS.items()))), ""]
        if robust:
            robust_metrics = [(k, robust_label(f, s) + " acc") for f, s, k in robust]
            lines += ["<details><summary>Paired differences in robust accuracy</summary>", "",
                      markdown_table(header, paired_rows(robust_metrics)), "", "</details>", ""]
    return lines


def overview_section(configs: list[Config]) -> list[str]:
    """One row per config and method: the numbers a reader compares first."""
    rows = [[f"`{c.name}`", c.num_labelled, f"`{m}`", len(c.by_method(m)),
             *(format_mean_std(c.values(m, k).values()) for k in ("val/auc", *VERDICT_METRICS)),
             pre_synthetic_counts(c, m)] for c in configs for m in c.methods]
    return ["## Overview", "",
            "Mean ± std over seeds. *val AUC*: validation AUC of the selected classifier (the "
            "selection and tuning criterion); *pre-synth.*: seeds whose selected classifier "
            "predates the first synthetic pool.", "",
            markdown_table(["config", "labelled", "method", "n", "val AUC",
                            *(f"test {n}" for n in VERDICT_METRICS.values()), "pre-synth."],
                           rows), ""]


def claims_section(configs: list[Config]) -> list[str]:
    """The paper's claims, each a paired test per low-data config, in one table."""
    rows, tests = [], []  # tests: the paired_test result of each row
    for claim, a, b, key in CLAIMS:
        for config in configs:
            if config.full_data or not {a, b} <= set(config.methods):
                continue
            r = paired_test(config.values(a, key), config.values(b, key))
            rows.append([claim, f"`{config.name}`", f"`{a}` − `{b}`", r["n"],
                         f"{r['mean']:+.3f}", format_p(r["t_p"])])
            tests.append(r)
    if not rows:
        return []
    defined = [i for i, r in enumerate(tests) if r["t_p"] is not None]
    adjusted = dict(zip(defined, holm([tests[i]["t_p"] for i in defined])))
    for i, row in enumerate(rows):
        p, mean = tests[i]["t_p"], tests[i]["mean"]
        if p is None:
            outcome = "no test (fewer than 2 pairs, or all differences equal)"
        elif p >= ALPHA:
            outcome = "not shown"
        else:
            outcome = "**holds**" if mean > 0 else "**reversed** (worse)"
            outcome += "" if adjusted[i] < ALPHA else " (not after Holm)"
        row += [format_p(adjusted.get(i)), outcome]
    return ["## The paper's claims", "",
            "Each claim as a paired comparison over seeds in every low-data config: mean Δ "
            "(first method minus second), two-sided paired t-test p, Holm-adjusted over all "
            f"rows of this table, outcome at α={ALPHA}. *Robust* is the per-seed mean accuracy "
            "over all noise and attack settings of the tables below. 'not shown' means no "
            "significant difference either way.", "",
            markdown_table(["claim", "config", "comparison", "n pairs", "mean Δ", "t-test p",
                            "Holm p", "outcome"], rows), ""]


def reference_section(configs: list[Config]) -> list[str]:
    full = [c for c in configs if c.full_data]
    if not full:
        return []
    rows = []
    for config in full:
        published = PUBLISHED_RESNET18_28.get(config.dataset, {})
        flag_values = (read_json(config.run_dir(config.records[0]) / "config.json")
                       or {}).get("flags", {})
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
            "comparisons. Robust-accuracy tests are descriptive and uncorrected.", ""]


# ----------------------------------------------------------------------------- figures


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def method_styles(methods) -> dict[str, dict]:
    """errorbar() keywords per method: colour, marker and line style, so that methods with
    identical numbers (e.g. the same selected checkpoint) stay visible on top of each other."""
    known = {"baseline": ("tab:gray", "o", "-"), "latent_noise": ("tab:blue", "s", "--"),
             "tsynd_mi": ("tab:red", "^", "-"), "tsynd_entropy": ("tab:orange", "v", ":")}
    extra = iter([("tab:green", "D", "-."), ("tab:purple", "P", "-."), ("tab:brown", "X", "-.")])
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


class ExampleRuns:
    """One seed's runs of a config, with its data and pools, for the model figures: the
    lowest seed that has tsynd_mi, among those with the most other methods."""

    def __init__(self, config: Config, dataset_cache: dict):
        by_seed = {}
        for r in config.records:
            directory = config.run_dir(r)
            if (directory / "classifier.keras").is_file():
                by_seed.setdefault(r["seed"], {})[r["method"]] = directory
        seeds = [s for s in sorted(by_seed) if "tsynd_mi" in by_seed[s]]
        if not seeds:
            raise FileNotFoundError(f"{config.name}: no finished tsynd_mi run directory.")
        self.seed = max(seeds, key=lambda s: (len(by_seed[s]), -s))
        self.run_dirs = by_seed[self.seed]
        self._runs = {}
        self.mi_run = self.run("tsynd_mi")
        key = (self.mi_run.flags["dataset"], self.mi_run.flags["size"],
               self.mi_run.flags.get("data_dir"))
        if key not in dataset_cache:
            dataset_cache[key] = self.mi_run.load_dataset()
        self.dataset = dataset_cache[key]
        self.num_samples = self.mi_run.flags["num_samples"]
        subset = read_json(self.run_dirs["tsynd_mi"] / "subset.json")
        self.labelled = np.asarray(subset["indices"])

    def run(self, method: str):
        from tsynd_tf import runs

        if method not in self._runs:
            self._runs[method] = runs.load_run(self.run_dirs[method])
        return self._runs[method]

    def pools(self, method: str) -> list[dict]:
        """The method's synthetic pools, round by round (none if the run has none)."""
        if method not in self.run_dirs:
            return []
        pools = []
        for path in sorted((self.run_dirs[method] / "synthetic").glob("round_*.npz")):
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


def figures_section(configs: list[Config], robust, figures_dir: Path, page_dir: Path,
                    model_figures: bool, count: int) -> list[str]:
    def link(path: Path, caption: str) -> str:
        return f"![{caption}]({os.path.relpath(path, page_dir)})"

    lines = ["## Figures", "", "Error bars: ± std over seeds.", ""]
    points = [(c.dataset, c.labelled_fraction) for c in configs]
    if len(set(points)) == len(points):
        plot_fraction_curves(configs, figures_dir / "accuracy_vs_fraction.png")
        lines += ["**Test ACC and AUC vs labelled fraction** (methods slightly offset "
                  "horizontally).", "", link(figures_dir / "accuracy_vs_fraction.png",
                                             "accuracy vs fraction"), ""]
    else:  # e.g. a tuning sweep: several settings of one dataset and fraction
        lines += ["*No ACC-vs-fraction figure: several configs share a dataset and "
                  "labelled fraction (see Overview).*", ""]
    if robust:
        plot_robustness(configs, robust, figures_dir / "robustness.png")
        lines += ["**Accuracy under Gaussian noise, FGSM and PGD** (strength 0: clean).", "",
                  link(figures_dir / "robustness.png", "robustness"), ""]
    if not model_figures:
        return lines
    examples, dataset_cache, labels = {}, {}, {c.name: c.label for c in configs}
    for config in (c for c in configs if "tsynd_mi" in c.methods):  # not baseline-only ones
        try:
            examples[config.name] = ExampleRuns(config, dataset_cache)
        except (OSError, ValueError) as e:  # missing run files, data not found (DataError)
            logging.warning("Model figures of %s skipped: %s", config.name, e)
            lines += [f"*Model figures of `{config.name}` skipped: {e}*", ""]
    if not examples:
        return lines
    summary = plot_mi_histograms(examples, labels, figures_dir / "mi_histograms.png")
    groups = list(dict.fromkeys(g for s in summary.values() for g in s))
    lines += ["**Mutual information of real vs synthetic images**, under the final "
              "(best-validation) tsynd_mi classifier of one seed, T = the run's MC samples, "
              "all rounds' pools. Pools were generated by earlier classifiers of the run, "
              "so this is the MI that the final model still assigns to them.", "",
              link(figures_dir / "mi_histograms.png", "MI histograms"), "",
              markdown_table(["config", "seed", *(f"mean MI, {g}" for g in groups)],
                             [[f"`{n}`", examples[n].seed,
                               *(f"{s[g][1]:.4f} (n={s[g][0]})" if g in s else "–"
                                 for g in groups)] for n, s in summary.items()]), ""]
    lines += ["**Synthetic examples**: originals (labelled training images), their round-0 "
              "latent_noise and tsynd_mi images (same source images and seed), and "
              "|tsynd_mi − original| (includes the autoencoder's reconstruction error).", ""]
    distances = {}
    for name, example in examples.items():
        if example.pools("tsynd_mi"):
            distances[name] = plot_synthetic_grid(example, labels[name],
                                                  figures_dir / f"synthetic_{name}.png", count)
            lines += [link(figures_dir / f"synthetic_{name}.png", f"synthetic {name}"), ""]
    if distances:
        pairs = list(dict.fromkeys(p for d in distances.values() for p in d))
        lines += ["Mean absolute pixel difference over the whole round-0 pool (grey levels, "
                  "0-255):", "", markdown_table(
                      ["config", *pairs], [[f"`{n}`", *(f"{d[p]:.2f}" if p in d else "–"
                                                        for p in pairs)]
                                           for n, d in distances.items()]), ""]
    lines += ["**Grad-CAM** (last Conv2D layer, maps averaged over the T MC-dropout passes, "
              "scaled to [0, 1] per image) of the baseline and tsynd_mi classifiers of the "
              "same seed, for the true class of the same test images.", ""]
    for name, example in examples.items():
        plot_grad_cam(example, labels[name], figures_dir / f"grad_cam_{name}.png", count)
        lines += [link(figures_dir / f"grad_cam_{name}.png", f"Grad-CAM {name}"), ""]
    return lines


def log_figures_to_tensorboard(figures: list[Path], logdir: Path) -> None:
    """The page's figures as TensorBoard images (tag report/<file stem>), replacing the
    previous report's event file, so `tensorboard --logdir SWEEP_DIR` shows them next to
    the runs' own summaries."""
    import shutil

    import tensorflow as tf

    shutil.rmtree(logdir, ignore_errors=True)
    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default():
        for path in figures:
            image = tf.io.decode_png(path.read_bytes(), channels=4)
            tf.summary.image(f"report/{path.stem}", image[tf.newaxis], step=0)
    writer.close()


# ----------------------------------------------------------------------------- main


def build_page(sweep_dir: Path, output: Path, figures_dir: Path, title: str,
               model_figures: bool = True, count: int = 8) -> str:
    records = read_results(sweep_dir / SWEEP_RESULTS_FILE)
    if not records:
        raise app.UsageError(f"{sweep_dir / SWEEP_RESULTS_FILE} holds no finished cell yet.")
    import matplotlib

    matplotlib.use("Agg")
    configs = group_configs(records, sweep_dir)
    robust = robust_keys(records)
    planned = read_planned_cells(sweep_dir / SWEEP_RESULTS_FILE)
    lines = [f"# {title}", "", *header_section(records, configs, planned, sweep_dir), "",
             *claims_section(configs), *overview_section(configs), *settings_section(configs),
             "## Results per config", ""]
    for config in configs:
        lines += config_section(config, robust)
    lines += reference_section(configs)
    lines += figures_section(configs, robust, figures_dir, output.parent, model_figures, count)
    lines += statistics_notes(configs)
    return "\n".join(lines).rstrip() + "\n"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    pylogging.getLogger("tensorboard").setLevel(pylogging.WARNING)  # one line per event file
    sweep_dir, output = Path(FLAGS.sweep_dir), Path(FLAGS.output)
    figures_dir = Path(FLAGS.figures_dir) if FLAGS.figures_dir else output.parent / "figures"
    page = build_page(sweep_dir, output, figures_dir, FLAGS.title, FLAGS.model_figures,
                      FLAGS.num_images)
    with atomic_path(output, ".md") as tmp:
        tmp.write_text(page)
    linked = [output.parent / path for path in re.findall(r"!\[[^]]*\]\(([^)]+)\)", page)]
    log_figures_to_tensorboard(linked, sweep_dir / "tensorboard" / "report")
    logging.info("Wrote %s and figures in %s; TensorBoard: %s.", output, figures_dir,
                 sweep_dir / "tensorboard")


if __name__ == "__main__":
    app.run(main)
