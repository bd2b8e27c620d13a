"""Classifies image files with an exported model and flags the ones to refer to a human.

    python -m tsynd_tf.predict --model=saved_models/NAME/VERSION [--output=preds.csv|.json]
                               [--batch_size=64] [--mi_threshold=X] IMAGE_OR_FOLDER...

Folders are searched recursively for .png/.jpg/.jpeg files (other files there are ignored);
files named on the command line are always tried. Images of any size, grayscale or RGB, are
converted to the model's channels and resized to its size as in training. Paths are streamed
in chunks of --batch_size, so memory does not grow with the number of files.

Prints the first --show rows and a summary; --output writes every row (CSV or JSON, chosen by
the extension) atomically: file, class, probability (of that class), entropy and mi (nats),
refer (mi > threshold), then one probability per class. --mi_threshold overrides the
threshold embedded at export.

Exit status: 0 when every image was classified, 1 when some file could not be read (each is
named on stderr and skipped), 2 when --model is not a model exported by tsynd_tf.export or the
arguments are wrong.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import sys
from pathlib import Path

from absl import app, flags

from tsynd_tf.data.image_folder import IMAGE_SUFFIXES

flags.DEFINE_string("model", None, "Exported model: saved_models/<name>/<version> (or "
                    "saved_models/<name>, meaning its highest version).")
flags.DEFINE_string("output", None, "Write all predictions to this .csv or .json file.")
flags.DEFINE_integer("batch_size", 64, "Images per model call (memory: batch_size x T "
                     "MC passes).")
flags.DEFINE_float("mi_threshold", None, "Refer images with mutual information above "
                   "this (nats). Default: the threshold embedded in the model.")
flags.DEFINE_integer("show", 20, "Rows of the table printed on stdout.")
flags.mark_flag_as_required("model")

FLAGS = flags.FLAGS

EXIT_OK, EXIT_FAILED_FILES, EXIT_BAD_MODEL = 0, 1, 2
COLUMNS = ("file", "class", "probability", "entropy", "mi", "refer")


class ModelError(ValueError):
    """--model is not a model exported by tsynd_tf.export."""


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
    import tensorflow as tf

    model_dir = resolve_model_dir(path)
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
    from tsynd_tf.serving import FORMAT, FORMAT_VERSION

    if metadata.get("format") != FORMAT or metadata.get("format_version", 0) > FORMAT_VERSION:
        raise ModelError(f"{model_dir} metadata has format {metadata.get('format')!r} "
                         f"version {metadata.get('format_version')}; this tsynd_tf reads "
                         f"{FORMAT!r} up to version {FORMAT_VERSION}.")
    serve = signatures["serving_default"]
    metadata["model_dir"] = str(model_dir)
    return serve, metadata


# --------------------------------------------------------------------------- inputs


def iter_paths(arguments):
    """Yields files: arguments that are not folders as given, folders' images recursively."""
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


class AtomicWriter:
    """Rows to a temporary file beside `path`, renamed onto it by `commit()`; CSV or JSON."""

    def __init__(self, path, class_names, header: dict):
        self.path = Path(path).expanduser()
        self.format = self.path.suffix.lower().lstrip(".")
        if self.format not in ("csv", "json"):
            raise ValueError(f"--output must end in .csv or .json; got {self.path}.")
        self.class_names = list(class_names)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.file = open(self.tmp, "w", newline="", encoding="utf-8")
        self.first = True
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
                               int(row["refer"]),
                               *(f"{p:.6f}" for p in probabilities)])
        else:
            record = dict(row, probabilities=dict(zip(self.class_names,
                                                      map(float, probabilities))))
            self.file.write(("\n  " if self.first else ",\n  ") + json.dumps(record))
        self.first = False

    def commit(self, failed: list[str]):
        if self.format == "json":
            self.file.write("\n ],\n \"failed\": " + json.dumps(failed) + "\n}\n")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)

    def abort(self):
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def _format_table(rows) -> str:
    cells = [COLUMNS] + [(r["file"], r["class"], f"{r['probability']:.3f}",
                          f"{r['entropy']:.4f}", f"{r['mi']:.4f}",
                          "yes" if r["refer"] else "no") for r in rows]
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
                     for row in cells)


# --------------------------------------------------------------------------- main


def predict(serve, metadata, arguments, *, batch_size=64, mi_threshold=None, writer=None,
            show=20, err=sys.stderr):
    """Runs the model over the files; returns (shown rows, counts per class, referred,
    classified, failed paths)."""
    import tensorflow as tf
    from tqdm import tqdm

    from tsynd_tf.data.image_folder import read_images

    class_names = metadata["class_names"]
    size, channels = int(metadata["size"]), int(metadata["channels"])
    threshold = float(metadata["mi_threshold"] if mi_threshold is None else mi_threshold)
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
            good = [p for p in paths if p not in bad]
            if good:
                out = {k: v.numpy() for k, v in serve(images=tf.constant(images)).items()}
                for i, path in enumerate(good):
                    probs = out["probabilities"][i]
                    k = int(out["predicted_class"][i])
                    mi = float(out["mutual_information"][i])
                    if multilabel:
                        label = ";".join(n for n, p in zip(class_names, probs) if p >= 0.5)
                    else:
                        label = class_names[k]
                    row = {"file": str(path), "class": label,
                           "probability": float(probs[k]),
                           "entropy": float(out["predictive_entropy"][i]), "mi": mi,
                           "refer": bool(mi > threshold)}
                    if writer is not None:
                        writer.write(row, probs)
                    if len(shown) < show:
                        shown.append(row)
                    counts[class_names[k]] += 1
                    referred += row["refer"]
                    classified += 1
            bar.update(len(paths))
    return shown, counts, referred, classified, failed


def main(argv):
    arguments = argv[1:]
    if not arguments:
        print("error: name at least one image file or folder after the flags.",
              file=sys.stderr)
        return EXIT_BAD_MODEL
    if FLAGS.batch_size < 1:
        print(f"error: --batch_size must be >= 1; got {FLAGS.batch_size}.", file=sys.stderr)
        return EXIT_BAD_MODEL
    if FLAGS.mi_threshold is not None and not (math.isfinite(FLAGS.mi_threshold)
                                               and FLAGS.mi_threshold >= 0):
        print(f"error: --mi_threshold must be a number >= 0; got {FLAGS.mi_threshold}.",
              file=sys.stderr)
        return EXIT_BAD_MODEL
    if FLAGS.output and Path(FLAGS.output).suffix.lower() not in (".csv", ".json"):
        print(f"error: --output must end in .csv or .json; got {FLAGS.output}.",
              file=sys.stderr)
        return EXIT_BAD_MODEL
    try:
        resolve_model_dir(FLAGS.model)  # fails fast, before TensorFlow is imported
        serve, metadata = load_model(FLAGS.model)
    except ModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_MODEL

    threshold = metadata["mi_threshold"] if FLAGS.mi_threshold is None else FLAGS.mi_threshold
    writer = None
    if FLAGS.output:
        writer = AtomicWriter(FLAGS.output, metadata["class_names"], {
            "model": metadata["model_dir"], "dataset_name": metadata["dataset_name"],
            "class_names": metadata["class_names"], "num_samples": metadata["num_samples"],
            "mi_threshold": threshold})
    try:
        shown, counts, referred, classified, failed = predict(
            serve, metadata, arguments, batch_size=FLAGS.batch_size,
            mi_threshold=FLAGS.mi_threshold, writer=writer, show=FLAGS.show)
        if writer is not None:
            writer.commit(failed)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise

    if shown:
        print(_format_table(shown))
    if classified > len(shown):
        print(f"... {classified - len(shown)} more row(s)"
              + (f" in {FLAGS.output}" if FLAGS.output else ""))
    per_class = ", ".join(f"{name}: {n}" for name, n in counts.items())
    print(f"\n{classified} image(s) classified ({per_class}); {referred} referred "
          f"(MI > {threshold:.4g} nats, T={metadata['num_samples']}); "
          f"{len(failed)} unreadable.")
    if FLAGS.output:
        print(f"Predictions written to {FLAGS.output}")
    if classified == 0 and not failed:
        print("error: no PNG/JPEG images found in the given paths.", file=sys.stderr)
        return EXIT_FAILED_FILES
    if failed:
        print(f"{len(failed)} file(s) could not be read and were skipped: "
              + ", ".join(failed[:10]) + (" ..." if len(failed) > 10 else ""),
              file=sys.stderr)
        return EXIT_FAILED_FILES
    return EXIT_OK


if __name__ == "__main__":
    app.run(main)
