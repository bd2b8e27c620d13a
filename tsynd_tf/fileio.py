"""Atomic writes: a crash never leaves a half-written file under the final name."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ""):
    """Yields a temporary path beside `path`; renames it onto `path` if the block succeeds.

    `suffix` keeps an extension that a writer insists on (Keras wants `.weights.h5`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are for reading by others too
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json_lines(path: str | Path) -> list[dict]:
    """Records of a JSON-lines file; a line that does not parse (a write torn by a crash) is
    skipped."""
    records = []
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def append_json_line(path: str | Path, record: dict) -> None:
    """Appends one record as one line, flushed to disk; after a torn write it starts on a
    fresh line so the torn one stays the only casualty."""
    line = json.dumps(record, sort_keys=True) + "\n"
    with open(path, "a+") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:
            f.seek(f.tell() - 1)
            if f.read(1) != "\n":
                line = "\n" + line
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
