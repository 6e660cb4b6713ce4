"""A small registry of named entries: the single source for the CLI, `zoattack list` and tests.

Each entry also carries its algorithm's tuned defaults (:class:`Tuned` per norm and for the
synthetic functions, :class:`Recipe` for trainable models), so the CLI, batches, jobs and
benchmarks read one table that sits beside the algorithm's code. How each value was measured:
docs/TUNING.md.
"""

from __future__ import annotations

import fnmatch
import importlib
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Generic, TypeVar

from zoattack.errors import UnknownNameError
from zoattack.norms import NORMS

T = TypeVar("T")


@dataclass(frozen=True)
class Tuned:
    """Tuned settings of one update rule in one setting (a norm, or the synthetic functions).

    Under a norm, ``lr`` and ``mu`` are fractions of eps (they scale with the radius; a search
    rule's ``lr`` is its radius, 1.0 = eps); for the synthetic functions they are absolute.
    ``mu``, ``momentum``, ``difference`` and the tricks (``start``, ``restart``, ``mu_decay``,
    ``lr_decay``) were tuned with ``estimator`` and apply only when that estimator runs.
    ``default``: this rule is the attack a bare `zoattack run` uses for this norm. None: the
    rule's or estimator's own default.
    """

    lr: float | None = None
    subspace: str | None = None
    estimator: str | None = None
    mu: float | None = None
    momentum: float | None = None
    difference: str | None = None
    # Generic tricks of the gradient rules (zoattack/optim/base.py ZORule): first iterate,
    # restart patience, smoothing-radius decay, lr schedule.
    start: str | None = None
    restart: int | None = None
    mu_decay: float | None = None
    lr_decay: str | None = None
    default: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The set fields (``default`` only when true), in declaration order."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: v for k, v in out.items() if v is not None and v is not False}


@dataclass(frozen=True)
class Recipe:
    """Training defaults of a trainable model: what its shipped weights were trained with."""

    epochs: int = 3
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    augment: str = "none"

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


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
        norm_defaults: tuned settings per norm (``{"linf": Tuned(...), "l2": ...}``) for
            attacks; a norm not listed has none.
        optimize_defaults: tuned settings for `zoattack optimize` (synthetic functions).
        recipe: training defaults (trainable models only).
        pairing_defaults: tuned settings of the rule run with an estimator other than its
            ``norm_defaults`` one, ``{estimator: {norm: Tuned}}`` (an lr tuned for one
            estimator's scale is wrong for another's: LIZO's estimate is about n/d of the
            gradient, the unbiased ones the whole of it).
    """

    name: str
    factory: Callable[..., T]
    description: str
    flags: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    norm_defaults: Mapping[str, Tuned] = field(default_factory=dict)
    optimize_defaults: Tuned | None = None
    recipe: Recipe | None = None
    pairing_defaults: Mapping[str, Mapping[str, Tuned]] = field(default_factory=dict)

    def tuned(self, norm: str) -> Tuned:
        """The tuned settings under ``norm`` (all None when there are none)."""
        return self.norm_defaults.get(norm, Tuned())

    def tuned_pairing(self, estimator: str, norm: str) -> Tuned | None:
        """The settings tuned for this rule with ``estimator`` (canonical name) under
        ``norm``; None: that pairing was never tuned."""
        return self.pairing_defaults.get(estimator, {}).get(norm)


class Registry(Generic[T]):
    """Name -> :class:`Entry`; refuses duplicate names and aliases."""

    def __init__(self, kind: str, plugins: tuple[str, ...] = ()) -> None:
        """``plugins``: modules (named, so no layer imports upward) that add entries when
        imported; they load the first time the registry is read, not when it is defined, so
        ``import zoattack`` stays cheap and ``zoattack.models`` alone still sees them."""
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}
        self._plugins = plugins
        self._plugin_order = plugins  # kept: listings put each plug-in's entries in this order

    def _listed(self) -> list[Entry[T]]:
        """Entries in a fixed order whatever imported what first: the registry's own in
        registration order, then each plug-in's in ``plugins`` order."""
        self._load_plugins()

        def key(item: tuple[int, Entry[T]]) -> tuple[int, int]:
            i, entry = item
            module = getattr(entry.factory, "__module__", "") or ""
            for rank, plugin in enumerate(self._plugin_order, 1):
                if module == plugin or module.startswith(plugin + "."):
                    return rank, i
            return 0, i

        return [e for _, e in sorted(enumerate(self._entries.values()), key=key)]

    def _load_plugins(self) -> None:
        if self._plugins:
            pending, self._plugins = self._plugins, ()  # before importing: they read us
            for module in pending:
                importlib.import_module(module)

    def register(
        self,
        name: str,
        *,
        description: str,
        flags: dict[str, Any] | None = None,
        aliases: tuple[str, ...] = (),
        defaults: dict[str, Any] | None = None,
        norm_defaults: Mapping[str, Tuned] | None = None,
        optimize_defaults: Tuned | None = None,
        recipe: Recipe | None = None,
        pairing_defaults: Mapping[str, Mapping[str, Tuned]] | None = None,
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
                    dict(norm_defaults or {}),
                    optimize_defaults,
                    recipe,
                    {k: dict(v) for k, v in (pairing_defaults or {}).items()},
                )
            )
            return factory

        return deco

    def add(self, entry: Entry[T]) -> None:
        paired = {n for by_norm in entry.pairing_defaults.values() for n in by_norm}
        bad = sorted((set(entry.norm_defaults) | paired) - set(NORMS))
        if bad:  # a misspelt norm would silently leave the rule untuned
            raise ValueError(
                f"{self.kind} '{entry.name}': norm_defaults for unknown norm(s) "
                f"{', '.join(bad)}; norms are {', '.join(NORMS)}"
            )
        for key in (entry.name, *entry.aliases):
            if key in self._entries or key in self._aliases:
                raise ValueError(f"{self.kind} name '{key}' is already registered")
        self._entries[entry.name] = entry
        for alias in entry.aliases:
            self._aliases[alias] = entry.name

    def default_for(self, norm: str) -> Entry[T]:
        """The entry marked ``default`` under ``norm`` (what a bare `zoattack run` uses)."""
        self._load_plugins()
        marked = [e for e in self._entries.values() if e.tuned(norm).default]
        if len(marked) != 1:
            names = ", ".join(e.name for e in marked) or "none"
            raise ValueError(f"{self.kind}: expected one default for {norm}, found {names}")
        return marked[0]

    def get(self, name: str) -> Entry[T]:
        self._load_plugins()
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
        for entry in self._listed():
            name = entry.name
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
        return iter(self._listed())

    def __len__(self) -> int:
        self._load_plugins()
        return len(self._entries)
