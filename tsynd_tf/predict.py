"""Classifies image files with an exported model and flags the ones to refer to a human.

    python -m tsynd_tf.predict --model=saved_models/NAME/VERSION [--output=preds.csv|.json]
                               [--batch_size=64] [--mi_threshold=X] [--ood_threshold=Y]
                               IMAGE_OR_FOLDER...

Folders are searched recursively for .png/.jpg/.jpeg files (other files there are ignored);
files named on the command line are always tried. Images of any size, grayscale or RGB, are
converted to the model's channels and resized to its size as in training. Paths are streamed
in chunks of --batch_size, so memory does not grow with the number of files.

Prints the first --show rows and a summary; --output writes every row (CSV or JSON, chosen by
the extension), published atomically by fileio.atomic_path: file, class, probability (of
that class), entropy and mi (nats), ood_score (tsynd_tf.ood: how unlike the training images),
refer (mi > its threshold or ood_score > its threshold), then one probability per class.
--mi_threshold and --ood_threshold override the thresholds embedded at export. A solid-colour,
noise or photo image, which MI alone does not catch, is referred by its ood_score. --output
is checked (a file in a folder this user can write, not a folder) before any image is read;
if writing it fails at the end all the same, every row goes to stdout instead.

Exit status (tsynd_tf.cli's convention): 0 when every image was classified; 1 when some file
could not be read (each is named on stderr and skipped), no image was found, or --output
could not be written at the end; 2 when --model is not a model exported by tsynd_tf.export
or the arguments are wrong.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

from absl import flags

from tsynd_tf import cli
from tsynd_tf.fileio import atomic_path, check_output

flags.DEFINE_string("model", None, "Exported model: saved_models/<name>/<version> (or "
                    "saved_models/<name>, meaning its highest version).")
flags.DEFINE_string("output", None, "Write all predictions to this .csv or .json file.")
flags.DEFINE_integer("batch_size", 64, "Images per model call (memory: batch_size x T "
                     "MC passes).")
flags.DEFINE_float("mi_threshold", None, "Refer images with mutual information above "
                   "this (nats). Default: the threshold embedded in the model.")
flags.DEFINE_float("ood_threshold", None, "Refer images with an OOD score above this. "
                   "Default: the threshold embedded in the model.")
flags.DEFINE_integer("show", 20, "Rows of the table printed on stdout.", lower_bound=0)
flags.mark_flag_as_required("model")

FLAGS = flags.FLAGS

COLUMNS = ("file", "class", "probability", "entropy", "mi", "ood_score", "refer")


class ModelError(ValueError):
    """--model is not a model exported by tsynd_tf.export."""


class OutputError(OSError):
    """--output could not be written after the images were classified."""


# --------------------------------------------------------------------------- model


def resolve_model_dir(path) -> Path:
    """The SavedModel folder: `path` itself, or the highest numbered version inside it."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ModelError(f"{path} is not a folder. --model must be an exported model folder "
                         "such as saved_models/<name>/<version> (python -m tsynd_tf.export).")
    if (path / "saved_model.pb").is_file():
        return path
    versions = sorted((p for p in path.iterdir() if p.name.isdigit()
                       and (p / "saved_model.pb").is_file()), key=lambda p: int(p.name))
    if versions:
        return versions[-1]
    raise ModelError(f"{path} holds no SavedModel (no saved_model.pb, and no numbered version "
                     "folder with one). --model must be a folder written by "
                     "python -m tsynd_tf.export, e.g. saved_models/<name>/<version>.")


def load_model(path):
    """(serving function, metadata dict) of an exported model; ModelError if not ours."""
    model_dir = resolve_model_dir(path)  # fails fast, before TensorFlow is imported
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(model_dir))
    except Exception as err:  # noqa: BLE001  any load failure means "not a usable model"
        raise ModelError(f"{model_dir} could not be loaded as a SavedModel: "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                         ) from err
    signatures = loaded.signatures
    if "metadata" not in signatures or "serving_default" not in signatures:
        raise ModelError(f"{model_dir} is a SavedModel but not one exported by "
                         "tsynd_tf.export: it has signatures "
                         f"{sorted(signatures.keys())}, not 'serving_default' and 'metadata'.")
    try:
        metadata = json.loads(signatures["metadata"]()["metadata_json"].numpy().decode())
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"{model_dir} has a 'metadata' signature without tsynd_tf metadata "
                         f"({err!r}).") from err
    from tsynd_tf.serving import FORMAT, FORMAT_CHANGES, FORMAT_VERSION

    if metadata.get("format") != FORMAT or metadata.get("format_version", 0) > FORMAT_VERSION:
        raise ModelError(f"{model_dir} metadata has format {metadata.get('format')!r} "
                         f"version {metadata.get('format_version')}; this tsynd_tf reads "
                         f"{FORMAT!r} up to version {FORMAT_VERSION}.")
    if metadata["format_version"] < FORMAT_VERSION:
        raise ModelError(f"{model_dir} was exported by an older tsynd_tf (format version "
                         f"{metadata['format_version']}), without " + ", ".join(
                             change for version, change in FORMAT_CHANGES.items()
                             if version > metadata["format_version"]) + ": "
                         "export its run again (python -m tsynd_tf.export --run_dir="
                         f"{metadata.get('run_dir', '<its run directory>')}).")
    serve = signatures["serving_default"]
    metadata["model_dir"] = str(model_dir)
    return serve, metadata


# --------------------------------------------------------------------------- inputs


def iter_paths(arguments):
    """Yields files: arguments that are not folders as given, folders' images recursively."""
    # Imported here: tsynd_tf.data imports TensorFlow, and argument errors should not wait.
    from tsynd_tf.data.image_folder import IMAGE_SUFFIXES

    for argument in arguments:
        path = Path(argument).expanduser()
        if not path.is_dir():
            yield path
            continue
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES):
                    yield Path(root) / name


def chunks(iterable, size):
    iterator = iter(iterable)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


# --------------------------------------------------------------------------- outputs


def output_format(path) -> str:
    """'csv' or 'json', from the extension of `path`."""
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in ("csv", "json"):
        raise ValueError(f"--output must end in .csv or .json; got {path}.")
    return fmt


class PredictionWriter:
    """Rows of predictions to an open text file, as CSV or JSON."""

    def __init__(self, file, fmt: str, class_names, header: dict):
        self.file, self.format, self.class_names = file, fmt, list(class_names)
        self.first, self.failed = True, []
        if self.format == "csv":
            self.csv = csv.writer(self.file)
            self.csv.writerow([*COLUMNS, *(f"p_{name}" for name in self.class_names)])
        else:
            fields = "".join(f" {json.dumps(str(k))}: {json.dumps(v)},\n"
                             for k, v in header.items())
            self.file.write("{\n" + fields + ' "predictions": [')

    def write(self, row: dict, probabilities):
        if self.format == "csv":
            self.csv.writerow([row["file"], row["class"], f"{row['probability']:.6f}",
                               f"{row['entropy']:.6f}", f"{row['mi']:.6f}",
                               f"{row['ood_score']:.6f}", int(row["refer"]),
                               *(f"{p:.6f}" for p in probabilities)])
        else:
            record = dict(row, probabilities=dict(zip(self.class_names,
                                                      map(float, probabilities))))
            self.file.write(("\n  " if self.first else ",\n  ") + json.dumps(record))
        self.first = False

    def skip(self, path):
        """A file that could not be read: listed under "failed" in JSON."""
        self.failed.append(str(path))

    def finish(self):
        if self.format == "json":
            self.file.write("\n ],\n \"failed\": " + json.dumps(self.failed) + "\n}\n")


@contextlib.contextmanager
def open_output(path, class_names, header: dict, fallback=None):
    """A PredictionWriter whose rows are spooled to an unnamed temporary file and published
    at `path` (fileio.atomic_path) when the block succeeds; nothing appears under `path`
    when it fails. If publishing fails (the folder went away, the disk filled), every row
    goes to `fallback` (stdout) instead and OutputError says so: no prediction is lost."""
    fmt = output_format(path)
    with tempfile.TemporaryFile("w+", newline="", encoding="utf-8") as spool:
        writer = PredictionWriter(spool, fmt, class_names, header)
        yield writer
        writer.finish()
        try:
            spool.seek(0)
            with atomic_path(Path(path).expanduser()) as tmp, \
                    open(tmp, "w", newline="", encoding="utf-8") as file:
                shutil.copyfileobj(spool, file)
        except OSError as err:
            spool.seek(0)
            shutil.copyfileobj(spool, fallback or sys.stdout)
            raise OutputError(f"--output {path} could not be written ({type(err).__name__}: "
                              f"{err}); every prediction was printed on stdout instead.") from err


def _format_table(rows) -> str:
    cells = [COLUMNS] + [(r["file"], r["class"], f"{r['probability']:.3f}",
                          f"{r['entropy']:.4f}", f"{r['mi']:.4f}", f"{r['ood_score']:.3g}",
                          "yes" if r["refer"] else "no") for r in rows]
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
                     for row in cells)


# --------------------------------------------------------------------------- prediction


class Summary(NamedTuple):
    shown: list  # the first rows, for the table
    counts: dict  # images per predicted class
    referred: int
    classified: int
    failed: list  # paths that could not be read


class Thresholds(NamedTuple):
    mi: float
    ood: float

    @classmethod
    def of(cls, metadata, mi_threshold=None, ood_threshold=None) -> "Thresholds":
        """The model's embedded thresholds, each overridden where given."""
        return cls(float(metadata["mi_threshold"] if mi_threshold is None else mi_threshold),
                   float(metadata["ood_threshold"] if ood_threshold is None else
                         ood_threshold))


def _rows(out: dict, paths, class_names, thresholds: Thresholds, multilabel: bool):
    """(row, class probabilities, predicted class index) of each image of one model call."""
    for i, path in enumerate(paths):
        probs = out["probabilities"][i]
        k = int(out["predicted_class"][i])
        mi, ood = float(out["mutual_information"][i]), float(out["ood_score"][i])
        if multilabel:
            label = ";".join(n for n, p in zip(class_names, probs) if p >= 0.5)
        else:
            label = class_names[k]
        yield ({"file": str(path), "class": label, "probability": float(probs[k]),
                "entropy": float(out["predictive_entropy"][i]), "mi": mi, "ood_score": ood,
                "refer": bool(mi > thresholds.mi or ood > thresholds.ood)}, probs, k)


def predict(serve, metadata, arguments, *, batch_size=64, mi_threshold=None,
            ood_threshold=None, writer=None, show=20, err=sys.stderr) -> Summary:
    """Runs the model over the files; unreadable ones are named on `err` and skipped."""
    import tensorflow as tf
    from tqdm import tqdm

    from tsynd_tf.data.image_folder import read_images

    class_names = metadata["class_names"]
    size, channels = int(metadata["size"]), int(metadata["channels"])
    thresholds = Thresholds.of(metadata, mi_threshold, ood_threshold)
    multilabel = bool(metadata.get("multilabel", False))
    total = sum(1 for _ in iter_paths(arguments))  # a cheap listing, for the progress bar
    shown, counts, failed = [], dict.fromkeys(class_names, 0), []
    referred = classified = 0
    with tqdm(total=total, unit="img", disable=None, file=err) as bar:
        for paths in chunks(iter_paths(arguments), batch_size):
            images, bad = read_images(paths, size, channels)
            for path, reason in bad.items():
                print(f"skipped {path}: {reason}", file=err)
                failed.append(str(path))
                if writer is not None:
                    writer.skip(path)
            good = [p for p in paths if p not in bad]
            if good:
                out = {k: v.numpy() for k, v in serve(images=tf.constant(images)).items()}
                for row, probs, k in _rows(out, good, class_names, thresholds, multilabel):
                    if writer is not None:
                        writer.write(row, probs)
                    if len(shown) < show:
                        shown.append(row)
                    counts[class_names[k]] += 1
                    referred += row["refer"]
                    classified += 1
            bar.update(len(paths))
    return Summary(shown, counts, referred, classified, failed)


# --------------------------------------------------------------------------- main


def _check_flags(arguments) -> None:
    if not arguments:
        raise cli.UsageError("name at least one image file or folder after the flags.")
    if FLAGS.batch_size < 1:
        raise cli.UsageError(f"--batch_size must be >= 1; got {FLAGS.batch_size}.")
    for name in ("mi_threshold", "ood_threshold"):
        value = FLAGS[name].value
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise cli.UsageError(f"--{name} must be a number >= 0; got {value}.")
    if FLAGS.output:
        try:
            output_format(FLAGS.output)
        except ValueError as err:
            raise cli.UsageError(str(err)) from None
        check_output("--output", FLAGS.output, directory=False,
                     fix="name a .csv or .json file in a folder you can write")


def _print_summary(result: Summary, thresholds: Thresholds, num_samples: int,
                   written: bool) -> None:
    if result.shown:
        print(_format_table(result.shown))
    if result.classified > len(result.shown):
        print(f"... {result.classified - len(result.shown)} more row(s)"
              + (f" in {FLAGS.output}" if written else ""))
    per_class = ", ".join(f"{name}: {n}" for name, n in result.counts.items())
    print(f"\n{result.classified} image(s) classified ({per_class}); {result.referred} "
          f"referred (MI > {thresholds.mi:.4g} nats, T={num_samples}, or OOD score > "
          f"{thresholds.ood:.4g}); "
          f"{len(result.failed)} unreadable.")
    if written:
        print(f"Predictions written to {FLAGS.output}")


def main(argv):
    arguments = argv[1:]
    _check_flags(arguments)
    try:
        serve, metadata = load_model(FLAGS.model)
    except ModelError as err:
        raise cli.UsageError(str(err)) from err

    thresholds = Thresholds.of(metadata, FLAGS.mi_threshold, FLAGS.ood_threshold)
    output = contextlib.nullcontext()
    if FLAGS.output:
        output = open_output(FLAGS.output, metadata["class_names"], {
            "model": metadata["model_dir"], "dataset_name": metadata["dataset_name"],
            "class_names": metadata["class_names"], "num_samples": metadata["num_samples"],
            "mi_threshold": thresholds.mi, "ood_threshold": thresholds.ood})
    late_failure = None
    try:
        with output as writer:
            result = predict(serve, metadata, arguments, batch_size=FLAGS.batch_size,
                             mi_threshold=FLAGS.mi_threshold,
                             ood_threshold=FLAGS.ood_threshold, writer=writer, show=FLAGS.show)
    except OutputError as err:  # the rows are on stdout; the summary follows them
        late_failure = str(err)
    _print_summary(result, thresholds, metadata["num_samples"],
                   written=bool(FLAGS.output) and late_failure is None)
    if late_failure:
        cli.fail(late_failure, cli.EXIT_PARTIAL)
    if result.classified == 0 and not result.failed:
        cli.fail("no PNG/JPEG images found in the given paths.", cli.EXIT_PARTIAL)
    if result.failed:
        cli.fail(f"{len(result.failed)} file(s) could not be read and were skipped: "
                 + ", ".join(result.failed[:10]) + (" ..." if len(result.failed) > 10 else ""),
                 cli.EXIT_PARTIAL)
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main, positional_args=True)
