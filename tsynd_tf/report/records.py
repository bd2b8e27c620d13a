"""A sweep's records: its results lines (finished cells, plan lines), their grouping into
configs (`Config`), the metric names the page shows and the values it derives per cell
(robustness areas, corruption errors relative to clean), and facts about the runs and the
machine (selected epochs, compute and wall time, hardware).

Run directories are read through tsynd_tf.runs (the one module that names their files). It
is imported on first use: it imports the data package and with it TensorFlow, which the
statistics and tables do not need to import.
"""

from __future__ import annotations

import collections
import datetime
import math
import os
import re
import sys
from pathlib import Path

import json

import numpy as np
from absl import logging

from tsynd_tf import machine
from tsynd_tf.config import TrainConfig
from tsynd_tf.fileio import read_json_lines
from tsynd_tf.report.stats import normalised_area

# Page order of the methods (synthesis.METHODS registers them; importing it would import
# TensorFlow); a method not listed sorts after these, by name.
METHOD_ORDER = ("baseline", "augment", "latent_noise", "tsynd_mi", "tsynd_entropy")
EXTRA_COMPARISONS = (("tsynd_mi", "tsynd_entropy"), ("tsynd_mi", "latent_noise"))
CLEAN_METRICS = {"test/acc": "ACC", "test/auc": "AUC", "test/balanced_acc": "bal. ACC",
                 "test/nll": "NLL", "test/ece": "ECE", "test/mutual_information": "test MI"}
VERDICT_METRICS = {"test/acc": "ACC", "test/auc": "AUC"}
ROBUST_FAMILIES = {"gaussian": "Gaussian σ", "fgsm": "FGSM ε", "pgd": "PGD ε"}
# Robustness curves: metric -> name. Config.values derives, per seed, 'area/<metric>/<family>'
# (normalised area under metric vs strength, strength 0 = clean) and 'area/<metric>' (its
# mean over the config's families); ROBUST_AREA is the page's robustness claim.
ROBUST_METRICS = {"acc": "ACC", "balanced_acc": "bal. ACC"}
ROBUST_AREA = "area/balanced_acc"
# Config.values derives 'corruption_vs_clean[/<name>[/<severity>]]': balanced error under a
# corruption minus the clean one, averaged over severities and corruptions where not given.
CORRUPTION_VS_CLEAN = "corruption_vs_clean"
END_OF_TRAINING = "last/"  # results.json prefix of the classifier at the end of training


def _runs():
    from tsynd_tf import runs

    return runs


def sweep_folder(sweep_dir: Path):
    """The sweep folder as a runs.SweepDir (its results file, runs and TensorBoard folder)."""
    return _runs().SweepDir(sweep_dir)


# ----------------------------------------------------------------------------- records


# What the page reads of every cell's line (tsynd_tf.experiment.run_cell writes them all).
CELL_KEYS = ("cell", "config", "dataset", "train_fraction", "train_count", "method", "seed",
             "run_dir", "seconds", "training", "metrics")


def read_results(results_path: Path) -> list[dict]:
    """The sweep's records; a cell recorded twice keeps its last. A line that parses but
    lacks what the page reads (edited by hand, or written by another program) is skipped
    with a warning naming it; a torn one is skipped silently, as the sweep does."""
    latest = {}
    lines = Path(results_path).read_text().splitlines() if Path(results_path).exists() else []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict) or "plan" in record:
            continue
        missing = [key for key in CELL_KEYS if key not in record]
        if missing:
            logging.warning("%s line %d skipped: it lacks %s (a cell's line has %s).",
                            results_path, number, ", ".join(missing), ", ".join(CELL_KEYS))
            continue
        latest[record["cell"]] = record
    return list(latest.values())


def read_planned_cells(results_path: Path) -> set[tuple[str, str, int]]:
    """(config, method, seed) of every cell that a start of the sweep planned (its plan lines)."""
    return {(config, method, seed) for r in read_json_lines(results_path) if "plan" in r
            for config, method, seed in r["plan"]}


def method_key(method: str):
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def run_dir(sweep_dir: Path, record: dict):
    """The cell's runs.RunDir: runs/<cell> of the sweep folder (wherever it was moved), else
    the recorded path."""
    moved = sweep_folder(sweep_dir).run(record["cell"])
    return moved if moved.path.is_dir() else _runs().RunDir(record["run_dir"])


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
        self._robust, self._corruptions = {}, None  # caches of robust() and corruptions()

    @property
    def label(self) -> str:
        share = (f"{self.train_count} labelled images" if self.train_count else
                 f"{100 * self.train_fraction:g}% of the labels ({self.num_labelled} images)")
        dataset = self.dataset
        if dataset == "folder":  # an image folder (--dataset=folder) is named by its folder
            dataset = Path(self.flags(self.records[0]).get("data_dir", "folder")).name
        return f"{dataset}, {share}{self.variant}"

    @property
    def train_on(self) -> str:
        """--train_on of the config's cells ('synthetic' for the Classification Accuracy
        Score configs)."""
        return self.flags(self.records[0]).get("train_on", "real+synthetic")

    @property
    def variant(self) -> str:
        """How the config's synthetic data differs from the defaults, for its label: configs of
        one labelled subset (the amount curve, synthetic-only) must not share a heading."""
        if self.train_on == "synthetic":
            return ", synthetic images only"
        flag_values, default = self.flags(self.records[0]), TrainConfig()
        amount = flag_values.get("synthetic_multiple", default.synthetic_multiple)
        share = str(flag_values.get("synthetic_ratio", default.synthetic_ratio))
        if (amount, share) == (default.synthetic_multiple, default.synthetic_ratio):
            return ""
        share = "proportional share" if share == "proportional" else f"synthetic share {share}"
        return f", ×{amount:g} synthetic, {share}"

    @property
    def full_data(self) -> bool:
        """Trained on all training labels: a reference config, not a low-data one."""
        return self.train_fraction == 1.0 and not self.train_count

    @property
    def labelled_fraction(self) -> float:
        """Share of the training split that is labelled (for --train_count configs too)."""
        if not self.train_count:
            return self.train_fraction
        subset = self.run_dir(self.records[0]).read_subset()
        return len(subset["indices"]) / subset["num_train"] if subset else self.train_fraction

    def run_dir(self, record: dict):
        return run_dir(self.sweep_dir, record)

    def flags(self, record: dict) -> dict:
        """The cell's training flags: from its results line (cells since 2026-12-06), else
        its run directory's config.json; {} where neither is left."""
        return record.get("flags") or self.run_dir(record).read_flags() or {}

    def evaluation_settings(self, record: dict) -> dict:
        """The settings of the cell's test evaluation (line, else eval_test.json)."""
        if "evaluation" in record:
            return record["evaluation"]
        return (self.run_dir(record).read_eval("test") or {}).get("settings", {})

    def quality(self, record: dict) -> dict | None:
        """The cell's quality.json (per-pool quality; None for methods that make no
        images): from its results line, else its run directory."""
        return record.get("quality") or self.run_dir(record).read_quality()

    def by_method(self, method: str) -> list[dict]:
        return [r for r in self.records if r["method"] == method]

    def values(self, method: str, key: str) -> dict[int, float]:
        """seed -> metric of `method` (undefined metrics left out): an evaluation metric,
        else a training result (val/..., last/...), or a derived 'area/...' or
        'corruption_vs_clean...' value (see the constants above)."""
        if key.startswith("area/"):
            return self.per_seed(method, lambda r: self.area(r, *key.split("/")[1:]))
        if key.split("/")[0] == CORRUPTION_VS_CLEAN:
            return self.per_seed(method, lambda r: self.corruption_vs_clean(
                r, *key.split("/")[1:]))
        # Evaluation metrics first; validation ones come from the training results.
        return self.per_seed(method, lambda r: r["metrics"].get(
            key, r.get("training", {}).get(key)))

    def per_seed(self, method: str, value_of) -> dict[int, float]:
        """seed -> value_of(record) of `method`, leaving out None and non-finite values."""
        out = {}
        for r in self.by_method(method):
            value = value_of(r)
            if value is not None and math.isfinite(value):
                out[r["seed"]] = float(value)
        return out

    def robust(self, metric: str = "acc") -> list[tuple[str, float, str]]:
        """robust_keys of the config's grid for `metric` (cached): the strengths its
        baseline cells were evaluated at (the grid is chosen on the baseline), else those of
        all its cells. A cell evaluated on another grid (e.g. before the grid was chosen from
        the data) then has no area: areas are compared at the same strengths only."""
        if metric not in self._robust:
            self._robust[metric] = robust_keys(self.by_method("baseline") or self.records,
                                               metric)
        return self._robust[metric]

    def area(self, record: dict, metric: str, family: str | None = None) -> float | None:
        """The cell's normalised area of `metric` vs strength for `family` (clean value at
        strength 0), or without a family its mean over the config's families; None where
        the cell lacks a strength the config ran (e.g. no balanced_acc in older cells)."""
        metrics = record["metrics"]
        families = [family] if family else list(dict.fromkeys(f for f, _, _ in
                                                               self.robust(metric)))
        areas = []
        for name in families:
            points = {0.0: metrics.get(f"test/{metric}")}
            points.update({s: metrics.get(k) for f, s, k in self.robust(metric) if f == name})
            if len(points) < 2 or not all(v is not None and math.isfinite(v)
                                          for v in points.values()):
                return None
            areas.append(normalised_area(points))
        return float(np.mean(areas)) if areas else None

    def corruptions(self) -> dict[str, list[int]]:
        """corruption name -> severities that this config's cells evaluated (cached)."""
        if self._corruptions is None:
            self._corruptions = corruption_names(self.records)
        return self._corruptions

    def corruption_vs_clean(self, record: dict, name: str | None = None,
                            severity: str | None = None) -> float | None:
        """Balanced error under corruption `name` at `severity` minus the clean balanced
        error (= clean minus corrupted balanced accuracy), averaged over the config's
        severities without one and over its corruptions without a name; None where the
        cell lacks one of them."""
        metrics = record["metrics"]
        names = [name] if name else list(self.corruptions())
        errors = []
        for corruption in names:
            levels = [int(severity)] if severity else self.corruptions().get(corruption, [])
            for level in levels:
                value = metrics.get(f"corruption/{corruption}_{level}/balanced_acc")
                if value is None or "test/balanced_acc" not in metrics:
                    return None
                errors.append(metrics["test/balanced_acc"] - value)
        return float(np.mean(errors)) if errors else None

    def comparisons(self) -> list[tuple[str, str]]:
        pairs = [(m, "baseline") for m in self.methods if m != "baseline"]
        pairs += [p for p in EXTRA_COMPARISONS if set(p) <= set(self.methods)]
        return [p for p in pairs if p[1] in self.methods]


def group_configs(records: list[dict], sweep_dir: Path) -> list[Config]:
    names = dict.fromkeys(r["config"] for r in records)
    configs = [Config(n, [r for r in records if r["config"] == n], sweep_dir) for n in names]
    # Names compared by their numbers (..._x2 before ..._x10: the amount curve in order).
    return sorted(configs, key=lambda c: (c.dataset, c.num_labelled, c.train_fraction,
                                          [int(part) if part.isdigit() else part
                                           for part in re.split(r"(\d+)", c.name)]))


def robust_keys(records: list[dict], metric: str = "acc") -> list[tuple[str, float, str]]:
    """(family, strength, metric key) of every noise/attack `metric` in the records, except
    Gaussian σ=0 (identical to the clean metric by construction: same dropout masks)."""
    found = set()
    for r in records:
        for key in r["metrics"]:
            match = re.fullmatch(rf"(gaussian|fgsm|pgd)_([0-9.eE+-]+)/{metric}", key)
            if match and not (match[1] == "gaussian" and float(match[2]) == 0):
                found.add((match[1], float(match[2]), key))
    return sorted(found, key=lambda k: (list(ROBUST_FAMILIES).index(k[0]), k[1]))


def corruption_names(records: list[dict]) -> dict[str, list[int]]:
    """corruption name -> sorted severities of every 'corruption/<name>_<severity>/
    balanced_acc' in the records, names sorted."""
    found = {}
    for r in records:
        for key in r["metrics"]:
            match = re.fullmatch(r"corruption/(.+)_([0-9]+)/balanced_acc", key)
            if match:
                found.setdefault(match[1], set()).add(int(match[2]))
    return {name: sorted(found[name]) for name in sorted(found)}


def end_of_training_cells(records: list[dict]) -> int:
    """How many cells record the classifier at the end of training (last/test/...)."""
    return sum(any(k.startswith(END_OF_TRAINING + "test/") for k in r.get("training", {}))
               for r in records)


# ----------------------------------------------------------------------------- run facts


def selected_epoch(record: dict, directory) -> int | None:
    """Epoch of the best-on-validation classifier that training kept: recorded in the cell's
    training results, else in the run's own results; None for runs from before training
    recorded it."""
    epoch = record.get("training", {}).get("selected_epoch")
    if epoch is None:
        epoch = (directory.read_results() or {}).get("selected_epoch")
    return epoch


def pre_synthetic_counts(config: Config, method: str) -> str:
    """How many seeds' selected classifiers were trained on real images only; '–' where
    none can be: the baseline, and a classifier trained on synthetic images alone
    (--train_on=synthetic), whose every epoch, the first included, saw only pools."""
    cells = config.by_method(method)
    if method == "baseline" or any(config.flags(r).get("train_on") == "synthetic"
                                   for r in cells):
        return "–"
    known = early = 0
    for r in cells:
        directory = config.run_dir(r)
        flag_values = config.flags(r)
        epoch = selected_epoch(r, directory)
        if epoch is not None and "initial_epochs" in flag_values:
            known += 1
            early += epoch <= flag_values["initial_epochs"]
    return f"{early}/{known}" if known else "?"


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


def hardware() -> list[str]:
    """The machine and software of this process: [hardware line, software line]."""
    try:
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal"))
        memory = f"{kib / 2**20:.1f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        memory = "RAM unknown"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return [f"{machine.machine_type(machine.describe())}, {os.cpu_count()} cores, {memory}, "
            f"{f'{len(gpus)} GPU(s)' if gpus else 'no GPU'}",
            f"Python {sys.version.split()[0]}, TensorFlow {tf.__version__}"]


def machine_type_of(record: dict) -> str:
    """The machine type that ran a cell ('not recorded' for lines from before cells recorded
    their `machine`)."""
    return machine.machine_type(record["machine"]) if "machine" in record else "not recorded"


def machine_types(records: list[dict]) -> dict[str, int]:
    """Cells per machine type that ran them."""
    return dict(collections.Counter(map(machine_type_of, records)))
