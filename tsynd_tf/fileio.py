"""Writes that a crash cannot tear, and the JSON / JSON-lines readers and writers.

Everything the project publishes under a final name goes through `atomic_path` (a file:
results, weights, pools, predictions, a download) or `atomic_directory` (a folder: a
SavedModel version). The content is written under a hidden temporary name beside the target,
flushed to disk, made readable by others (0644 files, 0755 folders) and renamed onto the
target in one step: a crash leaves the old content or the new, never a torn one, and a
failed block removes its temporary name. A folder's temporary name names its writer, so
`remove_abandoned_directories` can clear what a killed one left. `check_output` (with its
reason, `unwritable`) is the check every command makes of every output flag before it starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

# mkstemp/mkdtemp make 0600/0700; results, models and predictions are for others too.
FILE_MODE, DIRECTORY_MODE = 0o644, 0o755
# atomic_directory's temporary folders: .<target>.tmp.<pid>@<host>.<random>
_TEMPORARY_DIRECTORY = re.compile(r"^\..+\.tmp\.(\d+)@(.+)\.[^.]+$")


def _fsync(path: str | Path) -> None:
    """Flushes a file's data, or a folder's entries (a rename into it), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync(os.path.join(folder, name))
        _fsync(folder)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ""):
    """Yields a temporary file path beside `path`; when the block succeeds the file is
    flushed and renamed onto `path` (replacing what was there), else it is removed.

    `suffix` keeps an extension that a writer insists on (Keras wants `.weights.h5`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_directory(path: str | Path):
    """Yields an empty temporary folder beside `path`; when the block succeeds everything in
    it is flushed and the folder is renamed to `path`, else it is removed.

    A published folder is never replaced: FileExistsError if `path` exists by then. The
    temporary name starts with '.' and is not a number, so TF Serving ignores it; it names
    the writing process, so that `remove_abandoned_directories` can tell one left by a
    killed writer.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp.{os.getpid()}@"
                                f"{socket.gethostname()}."))
    try:
        yield tmp
        os.chmod(tmp, DIRECTORY_MODE)
        _fsync_tree(tmp)
        if path.exists():
            raise FileExistsError(f"{path} appeared while it was being written; not replaced.")
        os.rename(tmp, path)
        _fsync(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_abandoned_directories(folder: str | Path) -> list[Path]:
    """Removes the temporary folders of `atomic_directory` in `folder` whose writer, a
    process of this host, no longer runs (it was killed mid-write); returns them."""
    folder, removed = Path(folder), []
    for entry in sorted(folder.iterdir()) if folder.is_dir() else ():
        match = _TEMPORARY_DIRECTORY.match(entry.name)
        if (match and entry.is_dir() and match.group(2) == socket.gethostname()
                and not _running(int(match.group(1)))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def unwritable(path: str | Path, directory: bool = True) -> str | None:
    """Why `path` cannot be written as a folder (or, with directory=False, as a file
    published by atomic_path), or None when it can. A folder that does not exist yet can be
    written when its nearest existing parent can: a temporary file made and removed there
    is the test (it holds for root, read-only mounts and ACLs alike)."""
    path = Path(path).expanduser()
    try:
        # stat() on a name longer than the system allows raises (ENAMETOOLONG), and so does
        # the mkdir of atomic_path or of a run directory: refuse it here, with its reason.
        os.stat(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        if not isinstance(e, NotADirectoryError):
            return f"{path} cannot be used ({e.strerror or e})"
    if path.exists() and path.is_dir() != directory:
        return f"{path} is {'not ' if directory else ''}a folder"
    existing = path if directory else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-test.")
    except OSError as e:
        return f"{existing} is not writable ({e.strerror or e})"
    os.close(fd)
    os.remove(probe)
    return None


def check_output(flag: str, path: str | Path, directory: bool = True, fix: str = "") -> None:
    """The check every command makes of each of its output files and folders before any
    work: a UsageError (exit 2) naming the flag, why and `fix` (default: pass a folder, or
    file, you can write) when `unwritable` finds a reason."""
    from tsynd_tf import cli  # absl only; fileio itself stays free of the command layer

    why = unwritable(path, directory)
    if why:
        fix = fix or f"pass a {'folder' if directory else 'file'} you can write"
        raise cli.UsageError(f"{flag}: {why}; {fix}.")


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path):
    """The file's JSON value, or None when it is absent or does not parse."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


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
    fresh line so the torn one stays the only casualty. Its folder is made when missing, as
    atomic_path makes it (check_output accepts a file whose folder does not exist yet)."""
    line = json.dumps(record, sort_keys=True) + "\n"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:
            f.seek(f.tell() - 1)
            if f.read(1) != "\n":
                line = "\n" + line
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
