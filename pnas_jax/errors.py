"""The one base class of the errors a user can fix.

Every error that a bad input causes (a config value out of range, a missing or malformed file, an
unknown name) is a `PnasError`: the `pnas` command prints its message on one line and exits with
status 2. Anything else is a bug and keeps its traceback. Each subclass also derives from the
builtin type that callers of the library may already catch (ValueError, KeyError, ...).

Messages name the bad value, where it came from (the config key or the file) and the fix.
"""

from __future__ import annotations


class PnasError(Exception):
  """An error caused by the user's input; the message says what to change."""

  def __str__(self) -> str:  # KeyError subclasses would otherwise repr() the message.
    return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class UserValueError(PnasError, ValueError):
  """A value from a config, a command line or a file is out of its valid range."""


class UserFileError(PnasError, OSError):
  """A user-given file cannot be read or decoded (missing, a directory, binary, truncated, ...)."""


class MissingFileError(UserFileError, FileNotFoundError):
  """A file the user named (or a config points to) does not exist."""


class UnknownNameError(PnasError, KeyError):
  """A name that is not registered (an op, estimator, latency loss, data set, predictor kind)."""
