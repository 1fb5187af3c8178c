"""One small registry for every extension point: name -> object, with one "unknown name" error.

    ESTIMATORS = Registry("arch-gradient estimator")

    @ESTIMATORS.register("two")
    def _two(**options): ...

    ESTIMATORS.get("twoo")  # UnknownNameError: unknown arch-gradient estimator 'twoo'; valid: two

Ops (search_space/ops.py), latency losses (latency/loss.py), estimators (arch/estimators.py), data
sets (data/datasets.py) and latency predictor kinds (latency/predictor.py) each hold one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from pnas_jax.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
  """Named entries of one kind; `what` names the kind in error messages."""

  def __init__(self, what: str):
    self.what = what
    self._entries: dict[str, T] = {}

  def add(self, name: str, entry: T, *, overwrite: bool = False) -> T:
    """Registers `entry` under `name`; a clash is an error unless overwrite=True."""
    if not isinstance(name, str) or not name:
      raise ValueError(f"{self.what} names are non-empty strings, got {name!r}")
    if name in self._entries and not overwrite:
      raise ValueError(f"{self.what} {name!r} is already registered; pass overwrite=True to replace it")
    self._entries[name] = entry
    return entry

  def register(self, name: str, *, overwrite: bool = False) -> Callable[[T], T]:
    """Decorator form of `add`."""
    return lambda entry: self.add(name, entry, overwrite=overwrite)

  def remove(self, name: str) -> T:
    self._check(name)
    return self._entries.pop(name)

  def get(self, name: str) -> T:
    """The entry named `name`; UnknownNameError listing the valid names otherwise."""
    self._check(name)
    return self._entries[name]

  def names(self) -> list[str]:
    return list(self._entries)

  def __contains__(self, name: object) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)

  def _check(self, name: str) -> None:
    if name not in self._entries:
      raise UnknownNameError(
          f"unknown {self.what} {name!r}; valid: {', '.join(self.names()) or '(none registered)'}")
