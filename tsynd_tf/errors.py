"""The library's errors for bad input, in one module that imports nothing.

Every command reports these as `<command>: error: <message>` and exits 2 (tsynd_tf.cli):
each means a flag, file or folder is wrong and nothing was done. They live here, apart from
the modules that raise them, so that cli.py and config.py need not import TensorFlow (or
anything else) to know them.
"""


class UsageError(ValueError):
    """Bad input found before any work: the message names the flag or file and the fix."""


class ConfigError(UsageError):
    """An impossible setting; the message names the flag and its valid range."""


class DataError(UsageError):
    """Bad or missing input data; the message names the file or flag and the fix."""


class RunDirError(UsageError):
    """A run directory that lacks a file, holds a malformed one, or is in use."""
