"""The entry points' one convention for errors and exit codes.

Every command (`python -m tsynd_tf.<train|evaluate|export|predict|experiment|report|compare>`)
starts with `cli.run(main)`. Exit codes:

  0  done
  1  the work ran, but part of it failed (unreadable files in `predict`, failed sweep cells)
  2  bad input: a flag, file or folder is wrong; nothing was done. The message, printed as
     `<command>: error: <message>` on stderr, names the flag or file and the fix.

absl's flag parsing errors (unknown flag, bad type, missing required flag) exit 2 with the
same kind of message; `main` raises `UsageError` (or one of its subclasses in
tsynd_tf.errors: ConfigError, DataError, RunDirError) for everything it checks itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags

from tsynd_tf.errors import UsageError

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2


def command_name() -> str:
    """'train' for python -m tsynd_tf.train, 'report' for the package tsynd_tf.report."""
    path = Path(sys.argv[0] if sys.argv and sys.argv[0] else "tsynd_tf")
    return path.parent.name if path.stem == "__main__" else path.stem


def fail(message: str, code: int = EXIT_USAGE):
    """Prints `<command>: error: <message>` on stderr and exits with `code`."""
    print(f"{command_name()}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(f"{e} (--helpshort lists the flags)")


def run(main, positional_args: bool = False) -> None:
    """app.run(main) with the convention above; main's return value is the exit code.
    Commands that take no positional arguments (all but `predict`) reject them."""

    def wrapped(argv):
        if len(argv) > 1 and not positional_args:
            fail(f"unexpected arguments {argv[1:]}: every setting is a --flag "
                 "(--helpshort lists them).")
        try:
            return main(argv)
        except (UsageError, app.UsageError) as e:
            fail(str(e))

    app.run(wrapped, flags_parser=_parse_flags)
