"""A small registry of named entries: the single source for the CLI, `zoattack list` and tests."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from zoattack.errors import UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered algorithm.

    Attributes:
        name: exactly as typed on the command line.
        factory: the class (or callable) that builds it.
        description: one line for `zoattack list`.
        flags: capability flags, e.g. ``{"stateful": True}``; tests select cases by these.
        aliases: other accepted names.
        defaults: keyword arguments applied before the caller's.
    """

    name: str
    factory: Callable[..., T]
    description: str
    flags: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Name -> :class:`Entry`; refuses duplicate names and aliases."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}

    def register(
        self,
        name: str,
        *,
        description: str,
        flags: dict[str, Any] | None = None,
        aliases: tuple[str, ...] = (),
        defaults: dict[str, Any] | None = None,
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Class decorator registering ``factory`` under ``name``."""

        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            self.add(
                Entry(
                    name,
                    factory,
                    description,
                    dict(flags or {}),
                    tuple(aliases),
                    dict(defaults or {}),
                )
            )
            return factory

        return deco

    def add(self, entry: Entry[T]) -> None:
        for key in (entry.name, *entry.aliases):
            if key in self._entries or key in self._aliases:
                raise ValueError(f"{self.kind} name '{key}' is already registered")
        self._entries[entry.name] = entry
        for alias in entry.aliases:
            self._aliases[alias] = entry.name

    def get(self, name: str) -> Entry[T]:
        key = name.strip().lower().replace("-", "_")
        key = self._aliases.get(key, key)
        try:
            return self._entries[key]
        except KeyError:
            raise UnknownNameError(self.kind, name, [*self._entries, *self._aliases]) from None

    def create(self, name: str, **kwargs: Any) -> T:
        """Build ``name``; keyword arguments that are None are dropped so unset CLI
        options never override library defaults."""
        entry = self.get(name)
        merged = {**entry.defaults, **{k: v for k, v in kwargs.items() if v is not None}}
        try:
            return entry.factory(**merged)
        except TypeError as exc:
            # A misspelt or foreign option is the user's error, not a crash.
            match = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
            if match is None:
                raise
            raise ValueError(
                f"{self.kind} '{entry.name}' does not take option '{match.group(1)}'"
            ) from None

    def names(self, pattern: str | None = None, **flags: Any) -> list[str]:
        out = []
        for name, entry in self._entries.items():
            if pattern and not fnmatch.fnmatch(name, pattern):
                continue
            if any(entry.flags.get(k) != v for k, v in flags.items()):
                continue
            out.append(name)
        return out

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self.get(name)
        except UnknownNameError:
            return False
        return True

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)
