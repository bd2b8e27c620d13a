"""What each method cost: median seconds per cell, per machine type, from the records' clocks,
leaving out the cells whose clocks ran while the sweep was disturbed.

A sweep on a shared machine is sometimes paused (SIGSTOP while a benchmark times something
on the quiet cores) or shares its cores with other work (a test suite); a cell running then
records seconds that are not its cost. The sweep folder's `timing_windows.jsonl` lists those
windows, one JSON line each:

    {"start": "2026-12-07T12:56:23+00:00", "end": "2026-12-07T13:19:36+00:00",
     "kind": "paused", "what": "a fresh clone's test suite timed"}

(`bench/paused.sh` writes one around the command it runs; a window of shared cores is added
by hand.) A cell whose [started, finished] overlaps a window is left out of the medians, and
so is a cell that resumed a run an earlier attempt began (its clock counts the last attempt
only), and the generator such a cell trained, in every cell that loaded it from the cache.
A generator's seconds count in the rows of the machine type that trained it.
"""

from __future__ import annotations

import collections
import datetime
import json
import math
from pathlib import Path

import numpy as np

from tsynd_tf import cli
from tsynd_tf.report.records import Config, cell_seconds, machine_type_of, sweep_folder
from tsynd_tf.report.tables import markdown_table

WINDOW_KINDS = ("paused", "shared")


def read_timing_windows(sweep_dir: Path) -> list[dict]:
    """The sweep folder's timing windows, with `start` and `end` as datetimes; a line that
    is not a window (or not JSON) is refused, naming the file and line: the file is edited
    by hand, and a typo must not silently keep a cell."""
    path = sweep_folder(sweep_dir).timing_windows
    windows = []
    text = path.read_text() if path.is_file() else ""
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            line = json.loads(line)
            window = {**line, "start": datetime.datetime.fromisoformat(line["start"]),
                      "end": datetime.datetime.fromisoformat(line["end"])}
            valid = (window["start"] <= window["end"] and line["kind"] in WINDOW_KINDS
                     and None not in (window["start"].tzinfo, window["end"].tzinfo))
        except (KeyError, TypeError, ValueError):  # JSONDecodeError is a ValueError
            valid = False
        if not valid:
            raise cli.UsageError(
                f"{path}, line {number}: {line!r} is not a timing window. Each line is "
                '{"start": ISO time with its UTC offset, "end": the same or later, "kind": '
                f'{" or ".join(WINDOW_KINDS)}, "what": why}}; fix or delete that line.')
        windows.append(window)
    return windows


def resumed(record: dict) -> bool:
    """Whether the cell resumed a run that an earlier attempt began, so its seconds count
    only the last attempt. Lines from before cells recorded `resumed` show it when their
    training had finished before the cell's train step began (that step's seconds are fewer
    than the training's own)."""
    return bool(record.get("resumed")) or (record["seconds"].get("train", math.inf)
                                           < record["training"].get("seconds_this_session", 0))


def in_window(record: dict, windows: list[dict]) -> bool:
    """Whether the cell ran during a window (a line without its times cannot be judged)."""
    if "started" not in record or "finished" not in record:
        return False
    started = datetime.datetime.fromisoformat(record["started"])
    finished = datetime.datetime.fromisoformat(record["finished"])
    return any(started < w["end"] and finished > w["start"] for w in windows)


def generator_key(record: dict):
    """A generator, as the lines know it: its subset (dataset, fraction, seed) and its
    recorded training seconds (a line does not name its cache entry)."""
    return (record["dataset"], record["train_fraction"], record["seed"],
            record["training"].get("generator_seconds"))


def _median(values) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return f"{np.median(values):.0f}" if values else "–"


def cost_section(configs: list[Config], windows: list[dict] = ()) -> list[str]:
    """Median seconds per cell: the generator (trained once per labelled subset and shared
    by the methods and cells that sample it), synthesis, classifier training, evaluation;
    per machine type when the cells ran on more than one (their speeds differ)."""
    every = [r for c in configs for r in c.records]
    left_out = [r for r in every if resumed(r) or in_window(r, windows)]
    left_out_cells = {r["cell"] for r in left_out}
    per_type = len({machine_type_of(r) for r in every}) > 1
    row_type = machine_type_of if per_type else (lambda record: "")
    # Each generator's seconds count on the machine type of the cell that trained it, and
    # only if that cell's clock counts: a cell that loaded it may have run elsewhere.
    trainers = [r for r in every if r["training"].get("generator_loaded") is False]
    trained = {generator_key(r): row_type(r) for r in trainers
               if r["cell"] not in left_out_cells}
    stretched = {generator_key(r) for r in trainers if r["cell"] in left_out_cells}
    rows = []
    for config in configs:
        for method in config.methods:
            groups = collections.defaultdict(list)
            for record in config.by_method(method):
                groups[row_type(record)].append(record)
            for kind, cells in sorted(groups.items()):
                kept = [r for r in cells if r["cell"] not in left_out_cells]
                training = [r["training"] for r in kept]
                rows.append([f"`{config.name}`", f"`{method}`", *([kind] if per_type else []),
                             len(kept),
                             _median(r["training"].get("generator_seconds") for r in cells
                                     if trained.get(generator_key(r)) == kind),
                             _median(t.get("seconds/synthesis") for t in training),
                             _median(t.get("seconds/classifier") for t in training),
                             _median(r["seconds"].get("evaluate") for r in kept),
                             _median(cell_seconds(r) for r in kept)])
    where = ("Each machine type that ran cells (the header counts them) has its own rows: "
             "a CPU's instruction set changes its speed."
             if per_type else "All cells ran on one machine type (the header names it).")
    return ["## Cost per method", "",
            f"Median seconds per cell. {where} *generator*: its training, paid once per "
            "labelled subset and settings (the model cache, tsynd_tf/cache.py) and shared by "
            "every method and cell that samples it, so a sweep pays it once per config and "
            "seed; *synthesis*: making the pools; *classifier*: its training; *cell*: train + "
            "evaluate as the sweep clocked them, generator included where this cell trained "
            "it; *n*: the cells in the medians (the generator's are the cells that trained it "
            "or loaded one trained on the same machine type).", "",
            *_left_out_note(left_out, stretched, windows),
            markdown_table(["config", "method", *(["machine"] if per_type else []), "n",
                            "generator", "synthesis", "classifier", "evaluate", "cell"],
                           rows), ""]


def _left_out_note(left_out: list[dict], stretched: set, windows: list[dict]) -> list[str]:
    if not left_out:
        return []
    source = " (windows: the sweep folder's `timing_windows.jsonl`)" if windows else ""
    lines = [f"Left out of the medians: {_count(len(left_out), 'cell')} whose clocks are not "
             f"their cost, and the {_count(len(stretched), 'generator')} they trained (in "
             f"every cell that loaded one){source}:", ""]
    for w in windows:
        count = sum(in_window(r, [w]) for r in left_out)
        end = f"{w['end']:%H:%M:%S}" if w["end"].date() == w["start"].date() else \
            f"{w['end']:%Y-%m-%d %H:%M:%S}"
        lines.append(f"- {w['start']:%Y-%m-%d %H:%M:%S} to {end} UTC, {w['kind']} "
                     f"({w.get('what', 'no reason given')}): {_count(count, 'cell')}")
    restarted = sum(map(resumed, left_out))
    if restarted:
        lines.append(f"- resumed a run that an earlier attempt began (their seconds count the "
                     f"last attempt only): {_count(restarted, 'cell')}")
    return lines + [""]


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
