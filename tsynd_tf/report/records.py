"""A sweep's records: its results lines (finished cells, plan lines), their grouping into
configs (`Config`), the metric names the page shows, and facts about the runs and the
machine (selected epochs, compute and wall time, hardware).

Run directories are read through tsynd_tf.runs (the one module that names their files). It
is imported on first use: it imports the data package and with it TensorFlow, which the
statistics and tables do not need to import.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import sys
from pathlib import Path

import numpy as np

from tsynd_tf.fileio import read_json_lines

# Page order of the methods (synthesis.METHODS registers them; importing it would import
# TensorFlow); a method not listed sorts after these, by name.
METHOD_ORDER = ("baseline", "latent_noise", "tsynd_mi", "tsynd_entropy")
EXTRA_COMPARISONS = (("tsynd_mi", "tsynd_entropy"), ("tsynd_mi", "latent_noise"))
CLEAN_METRICS = {"test/acc": "ACC", "test/auc": "AUC", "test/balanced_acc": "bal. ACC",
                 "test/nll": "NLL", "test/ece": "ECE", "test/mutual_information": "test MI"}
VERDICT_METRICS = {"test/acc": "ACC", "test/auc": "AUC"}
ROBUST_FAMILIES = {"gaussian": "Gaussian σ", "fgsm": "FGSM ε", "pgd": "PGD ε"}
ROBUST_MEAN = "robust/mean_acc"  # Config.values: per seed, mean accuracy over noise/attacks


def _runs():
    from tsynd_tf import runs

    return runs


def sweep_folder(sweep_dir: Path):
    """The sweep folder as a runs.SweepDir (its results file, runs and TensorBoard folder)."""
    return _runs().SweepDir(sweep_dir)


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
        subset = self.run_dir(self.records[0]).read_subset()
        return len(subset["indices"]) / subset["num_train"] if subset else self.train_fraction

    def run_dir(self, record: dict):
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
    """How many seeds' selected classifiers were trained on real images only."""
    if method == "baseline":
        return "–"
    known = early = 0
    for r in config.by_method(method):
        directory = config.run_dir(r)
        flag_values = directory.read_flags() or {}
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
