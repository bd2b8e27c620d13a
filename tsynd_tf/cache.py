"""The model cache: trained weights that many runs can share (generators, the reference
classifier of the quality metrics), each trained once and reused.

An entry is keyed by the settings it was trained with (a hash of their JSON), so a model of
other settings is never picked up: changing --generator_steps, the seed or the labelled
subset makes a new entry. Every method and round that samples from a generator of one
(config, seed), in every run directory of a sweep, finds the same entry, so a sweep never
trains the same generator twice.

  <cache_dir>/<kind>-<key>/weights.weights.h5   the weights (written atomically)
                           record.json          {kind, settings, seconds, created}, last
                           lock                 held while the entry is trained

`fetch(entry, model, train)` holds the entry's lock (a second process asking for the same
entry waits, then loads), loads the weights if the entry is complete, else calls `train()`
and saves. An entry that does not load (a torn or foreign file) is trained again with a
warning, never trusted. The default cache is $TSYND_CACHE_DIR, else ~/.cache/tsynd_tf
(`--cache_dir`); the sweep passes its own.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import socket
import time
from pathlib import Path

from tsynd_tf.fileio import FILE_MODE, atomic_path, read_json, write_json

log = logging.getLogger(__name__)
CACHE_ENV = "TSYND_CACHE_DIR"


def default_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tsynd_tf")


def root(cache_dir: str | Path | None) -> Path:
    """The cache folder of a --cache_dir ('' or None: the default)."""
    return Path(cache_dir).expanduser() if cache_dir else default_root()


def root_source(cache_dir: str | Path | None) -> str:
    """Where root(cache_dir) comes from, as a message names it."""
    if cache_dir:
        return "--cache_dir"
    if os.environ.get(CACHE_ENV):
        return f"--cache_dir (${CACHE_ENV})"
    return "--cache_dir (default ~/.cache/tsynd_tf)"


class Entry:
    """One cached model: its folder, weights and record."""

    def __init__(self, root: Path, kind: str, settings: dict):
        self.kind, self.settings = kind, dict(settings)
        text = json.dumps({"kind": kind, **self.settings}, sort_keys=True)
        self.key = hashlib.sha256(text.encode()).hexdigest()[:16]
        self.path = root / f"{kind}-{self.key}"

    weights_file = property(lambda self: self.path / "weights.weights.h5")
    record_file = property(lambda self: self.path / "record.json")

    def __str__(self) -> str:
        return str(self.path)

    def read_record(self) -> dict | None:
        record = read_json(self.record_file)
        if record is None or not self.weights_file.exists():
            return None
        if record.get("settings") != self.settings:  # edited by hand, or a hash collision
            log.warning("%s records other settings than its key; training it again.", self)
            return None
        return record

    @contextlib.contextmanager
    def hold(self):
        """An exclusive flock on the entry: one process trains it, the others wait, saying
        for whom (the holder writes its PID and host into the lock file)."""
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                log.info("Waiting for %s, which %s is training.", self, holder)
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()}".encode(), 0)
            yield self
        finally:
            os.close(fd)


def entry(cache_dir: str | Path | None, kind: str, settings: dict) -> Entry:
    return Entry(root(cache_dir), kind, settings)


def fetch(entry: Entry, weights_of, train) -> dict:
    """The entry's record after `weights_of` (a keras.Model) holds its weights: loaded when
    the entry is complete and loads, else trained by `train()` and saved. The record's
    `seconds` is the training time, whichever process paid it; `loaded` says whether this
    call loaded it, `entry` where it is."""
    with entry.hold():
        record = entry.read_record()
        if record is not None:
            try:
                weights_of.load_weights(entry.weights_file)
                log.info("%s loaded from the cache (%s).", entry.kind, entry)
                return {**record, "entry": str(entry), "loaded": True}
            except Exception as e:  # noqa: BLE001 - a damaged .h5 raises many types
                log.warning("%s does not load (%s: %s); training it again.",
                            entry.weights_file, type(e).__name__, e)
        start = time.time()
        train()
        with atomic_path(entry.weights_file, ".weights.h5") as tmp:
            weights_of.save_weights(tmp)
        record = {"kind": entry.kind, "settings": entry.settings,
                  "seconds": round(time.time() - start, 1), "created":
                  datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        write_json(entry.record_file, record)  # last: a record means the weights are whole
        return {**record, "entry": str(entry), "loaded": False}
