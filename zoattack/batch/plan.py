"""Plan files for `zoattack batch`: a TOML file naming attacks with `zoattack run`'s options.

Layout (see ``examples/plan.toml``)::

    [batch]              # optional: name, out (results folder, relative to the current folder)
    [defaults]           # settings shared by every job
    [grid]               # any key given as a list expands: the jobs are the cartesian product
    [[grid]]             # (several grids: use [[grid]] tables instead of one [grid])
    [[job]]              # one explicit job each (scalar values only)

A plan is validated whole before any job starts: every key is a known setting, every value has
the setting's type, and every job's spec resolves (names, ranges, rule options) exactly as
`zoattack run` would resolve it. Errors name the file and line. tomllib reports no positions
for values, so lines are found by scanning the text for the key inside its table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from zoattack.errors import UnknownNameError, ZOAttackError
from zoattack.jobs.attack import AttackSpec

TABLES = ("batch", "defaults", "grid", "job")
BATCH_KEYS: dict[str, type] = {"name": str, "out": str}
# Resolved against the plan's folder, so a plan runs the same from any working directory.
PATH_FIELDS = ("data_dir", "weights", "model_dir", "init_from", "prior_weights")
# (surrogate_weights holds several paths, comma-separated: resolved where it is loaded.)
# Settings that change where or how fast a job runs, not its rows (as for `run --resume`):
# they stay out of the job key, so rerunning a plan on a GPU keeps the CPU's finished work.
KEY_EXCLUDES = ("device", "max_batch")
# Settings added after plans existed, left out of the key at their default so the jobs of
# older stores keep their keys (and their finished work).
KEY_DEFAULTS: dict[str, Any] = {
    "attack": None,
    "labels_only": False,
    "init_from": None,
    # the gradient rules' generic tricks (issue 12), None when neither given nor tuned
    "start": None,
    "restart": None,
    "mu_decay": None,
    "lr_decay": None,
    # the transfer prior (issue 12, session 3): keyed at None from then until this entry
    # existed, see LEGACY_KEY_SCHEMES
    "prior": None,
    "prior_weights": None,
    # issue 22: an untrained victim on purpose, and data-set indices instead of the first N
    "random_init": False,
    "indices": None,
    # surrogate ensembles (issue 25): unset keys as before they existed
    "surrogates": None,
    "surrogate_weights": None,
}
# Earlier job-key schemes that a store may hold finished work under, newest first: (what,
# the KEY_DEFAULTS entries that scheme still keyed at their default). Every scheme not listed
# gives the current key:
# - before issue 12 session 3 (no prior fields at all): the current key;
# - session 3 until prior/prior_weights joined KEY_DEFAULTS: "prior": null and
#   "prior_weights": null were keyed, so every job without a prior had another key.
# A store's jobs keep the key they were written under (:func:`adopt_stored_keys`), so a store
# stays readable by the version that wrote it.
LEGACY_KEY_SCHEMES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("issue 12 session 3: prior and prior_weights keyed when unset", ("prior", "prior_weights")),
)
# Shown in job listings when they differ between jobs, in this order.
LISTED = (
    "model",
    "dataset",
    "norm",
    "eps",
    "optimizer",
    "estimator",
    "budget",
    "images",
    "seed",
    "target",
    "loss",
    "lr",
    "subspace",
    "attack",
    "labels_only",
)


def job_key(spec: AttackSpec, *, keyed: tuple[str, ...] = ()) -> str:
    """A stable 16-hex-digit name for a resolved spec (its result-relevant settings).

    ``keyed``: KEY_DEFAULTS entries to key even at their default (a legacy scheme)."""
    values = {
        k: v
        for k, v in spec.as_dict().items()
        if k not in KEY_EXCLUDES
        and not (k in KEY_DEFAULTS and k not in keyed and v == KEY_DEFAULTS[k])
    }
    blob = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def legacy_keys(spec: AttackSpec) -> list[str]:
    """The keys earlier schemes (LEGACY_KEY_SCHEMES, newest first) gave ``spec``, where they
    differ from its current key."""
    now = job_key(spec)
    out: list[str] = []
    for _, keyed in LEGACY_KEY_SCHEMES:
        key = job_key(spec, keyed=keyed)
        if key != now and key not in out:
            out.append(key)
    return out


def adopt_stored_keys(plan: Plan, stored: Collection[str]) -> Plan:
    """``plan`` with each job named by the key its work is stored under in a store holding
    job keys ``stored``: the current key when the store has it (or has neither), else the
    first legacy key it has. Finished jobs of stores written by earlier versions are then
    skipped and partly done ones resume, instead of running again under a new key."""
    stored = set(stored)
    jobs = []
    for job in plan.jobs:
        key = job.key
        if key not in stored:
            key = next((k for k in legacy_keys(job.spec) if k in stored), key)
        jobs.append(job if key == job.key else dataclasses.replace(job, key=key))
    return dataclasses.replace(plan, jobs=jobs)


@dataclass(frozen=True)
class PlanJob:
    """One job of a plan: its resolved spec, key and where in the file it came from."""

    spec: AttackSpec
    key: str
    origin: str
    position: int

    @property
    def label(self) -> str:
        from zoattack.jobs.attack import spec_label
        from zoattack.optim import OPTIMIZERS

        s = self.spec
        if s.attack is not None:
            return spec_label(s)
        search = bool(OPTIMIZERS.get(str(s.optimizer)).flags.get("search"))
        return str(s.optimizer) if s.estimator is None or search else f"{s.optimizer}+{s.estimator}"


@dataclass
class Plan:
    path: Path
    text: str
    name: str
    out: Path | None
    jobs: list[PlanJob] = field(default_factory=list)
    duplicates: int = 0


class _Lines:
    """Finds the line of a key inside a given table of the TOML text (1-based)."""

    _header = re.compile(r"^\s*(\[\[?)\s*([^\]\s]+)\s*\]\]?")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.headers: list[tuple[int, str]] = []
        for i, line in enumerate(self.lines):
            m = self._header.match(line)
            if m:
                self.headers.append((i, m.group(2).strip("\"'")))

    def table(self, name: str, nth: int = 0) -> int | None:
        hits = [i for i, h in self.headers if h == name]
        return hits[nth] + 1 if nth < len(hits) else None

    def key(self, key: str, table: str | None = None, nth: int = 0) -> int | None:
        pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
        if table is not None:
            start = self.table(table, nth)
            if start is not None:
                ends = [i for i, _ in self.headers if i >= start]
                stop = ends[0] if ends else len(self.lines)
                for i in range(start, stop):
                    if pattern.match(self.lines[i]):
                        return i + 1
        else:  # top level: before the first header
            stop = self.headers[0][0] if self.headers else len(self.lines)
            for i in range(stop):
                if pattern.match(self.lines[i]):
                    return i + 1
        # inline tables and dotted keys: settle for the first mention anywhere
        loose = re.compile(rf"(^|[\s{{,.])[\"']?{re.escape(key)}[\"']?\s*=")
        for i, line in enumerate(self.lines):
            if loose.search(line):
                return i + 1
        return self.table(table, nth) if table is not None else None

    def value(self, text: str) -> int | None:
        needle = re.compile(rf"[\"']{re.escape(text)}[\"']")
        for i, line in enumerate(self.lines):
            if needle.search(line.split("#", 1)[0]):
                return i + 1
        return None


def _where(path: Path, line: int | None) -> str:
    return f"{path}:{line}" if line is not None else str(path)


def _type_names(annotation: Any) -> set[str]:
    return {part.strip() for part in str(annotation).split("|")}


def _describe_type(names: set[str]) -> str:
    words = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false"}
    return " or ".join(words[n] for n in ("str", "int", "float", "bool") if n in names)


def _check_value(key: str, value: Any, names: set[str], where: str) -> Any:
    """``value`` converted to the field's type (ints become floats for float fields)."""
    if isinstance(value, bool):
        ok = "bool" in names
    elif isinstance(value, str):
        ok = "str" in names
    elif isinstance(value, int):
        ok = "int" in names or "float" in names
        if ok and "int" not in names:
            value = float(value)
    elif isinstance(value, float):
        ok = "float" in names
    else:
        ok = False
    if not ok:
        hint = ""
        if isinstance(value, int) and not isinstance(value, bool) and "str" in names:
            hint = f' (quote it: {key} = "{value}")'
        elif isinstance(value, list):
            hint = "; lists expand only inside [grid]"
        raise ValueError(
            f"{where}: {key} must be {_describe_type(names)}, got "
            f"{type(value).__name__} {value!r}{hint}"
        )
    return value


def _check_settings(
    table: Mapping[str, Any], lines: _Lines, path: Path, tname: str, nth: int, *, lists: bool
) -> dict[str, Any]:
    """Known keys with well-typed values ('-' or '_' spelling); lists only where allowed."""
    types = AttackSpec.field_types()
    out: dict[str, Any] = {}
    for raw, value in table.items():
        key = raw.replace("-", "_")
        where = _where(path, lines.key(raw, tname, nth))
        if key not in types:
            import difflib

            close = difflib.get_close_matches(key, list(types), n=1)
            hint = (
                f"did you mean {close[0]}?"
                if close
                else "settings are the options of `zoattack run` (with _ for -)"
            )
            raise ValueError(f"{where}: unknown setting '{raw}' in [{tname}]; {hint}")
        names = _type_names(types[key])
        if key == "eps":  # a radius may be written as a fraction, e.g. "8/255"
            value = _eps_values(value, where)
        if isinstance(value, list) and lists:
            if not value:
                raise ValueError(
                    f"{where}: {raw} = [] in [grid] expands to no jobs; give at least one value"
                )
            out[key] = [_check_value(raw, v, names, where) for v in value]
        else:
            out[key] = _check_value(raw, value, names, where)
    return out


def _eps_values(value: Any, where: str) -> Any:
    """``eps`` strings (``"8/255"``) as numbers, in a list too; other types are checked later."""
    from zoattack.norms import parse_eps

    try:
        if isinstance(value, str):
            return parse_eps(value, "eps")
        if isinstance(value, list):
            return [parse_eps(v, "eps") if isinstance(v, str) else v for v in value]
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return value


def _tables(
    data: Mapping[str, Any], name: str, lines: _Lines, path: Path, *, many: bool
) -> list[Mapping[str, Any]]:
    value = data.get(name)
    if value is None:
        return []
    where = _where(path, lines.table(name) or lines.key(name))
    if isinstance(value, dict):
        if name == "job":
            raise ValueError(
                f"{where}: write explicit jobs as [[job]] tables (one per job), not [job]"
            )
        return [value]
    if many and isinstance(value, list) and all(isinstance(v, dict) for v in value):
        return value
    kind = (
        "[grid] or [[grid]] tables"
        if name == "grid"
        else ("[[job]] tables" if name == "job" else f"a [{name}] table")
    )
    raise ValueError(f"{where}: '{name}' must be {kind}, got {type(value).__name__}")


def _resolve_paths(settings: dict[str, Any], base: Path) -> None:
    for key in PATH_FIELDS:
        value = settings.get(key)
        if isinstance(value, str):
            p = Path(value).expanduser()
            settings[key] = str(p if p.is_absolute() else (base / p))


def _describe(settings: Mapping[str, Any], varying: list[str]) -> str:
    shown = [f"{k}={settings[k]}" for k in varying if k in settings]
    return ", ".join(shown[:6]) if shown else "defaults only"


def check_names(spec: AttackSpec) -> None:
    """Model and data set names exist; files named by the spec are there."""
    from zoattack.data import dataset_spec
    from zoattack.models import MODELS

    # The victim and the --prior surrogate (a model name like any other).
    for what, name, weights in (
        ("model", spec.model, spec.weights),
        ("prior", spec.prior, spec.prior_weights),
    ):
        if name is None:
            continue
        prefix, sep, _ = name.partition(":")
        try:
            entry = MODELS.get(prefix)
        except UnknownNameError as exc:
            if what == "model":
                raise
            raise ValueError(f"prior (the surrogate model): {exc.args[0]}") from None
        if sep and not entry.flags.get("adapter"):
            raise ValueError(
                f"{what} '{name}': {prefix} is a zoo model, not an adapter "
                "prefix; write just its name"
            )
        if not sep and entry.flags.get("adapter"):
            raise ValueError(f"{what} '{name}' is an adapter prefix; write {prefix}:NAME")
        if weights is not None and not Path(weights).is_file():
            raise ValueError(
                f"{'weights' if what == 'model' else 'prior_weights'} file {weights} does not "
                "exist; fix the path (relative paths are taken from the plan's folder)"
            )
    dataset_spec(spec.dataset)
    for key in ("data_dir", "model_dir"):
        value = getattr(spec, key)
        if value is not None and not Path(value).is_dir():
            raise ValueError(
                f"{key} {value} is not a folder; fix the path (relative paths are "
                "taken from the plan's folder)"
            )


def load_plan(
    path: str | Path, *, overrides: Mapping[str, Any] | None = None, check_device: bool = False
) -> Plan:
    """Read, expand and validate a plan; every job's spec comes back resolved.

    ``overrides`` (e.g. the CLI's ``--device``) replace those settings in every job.
    ``check_device`` also checks that the device each job asks for is present here.

    Raises:
        ValueError: one line naming the file (and line, where it can be found) and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"plan file {path} does not exist; pass a TOML plan (see examples/plan.toml)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a UTF-8 text file; a plan is TOML text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(
            f"{path}: not valid TOML: {exc}; fix the syntax (see examples/plan.toml)"
        ) from None
    lines = _Lines(text)
    for key in data:
        if key not in TABLES:
            import difflib

            close = difflib.get_close_matches(key, TABLES, n=1)
            hint = (
                f"did you mean [{close[0]}]?"
                if close
                else "a plan has [batch], [defaults], [grid] and [[job]] tables"
            )
            where = _where(path, lines.table(key) or lines.key(key))
            raise ValueError(f"{where}: unknown table or key '{key}'; {hint}")

    batch = (_tables(data, "batch", lines, path, many=False) or [{}])[0]
    for key, value in batch.items():
        where = _where(path, lines.key(key, "batch"))
        if key not in BATCH_KEYS:
            raise ValueError(
                f"{where}: unknown key '{key}' in [batch]; it takes "
                f"{', '.join(BATCH_KEYS)} (attack settings go in [defaults])"
            )
        if not isinstance(value, BATCH_KEYS[key]):
            raise ValueError(f"{where}: {key} in [batch] must be a string, got {value!r}")
    defaults_tables = _tables(data, "defaults", lines, path, many=False)
    defaults = (
        _check_settings(defaults_tables[0], lines, path, "defaults", 0, lists=False)
        if defaults_tables
        else {}
    )
    grids = _tables(data, "grid", lines, path, many=True)
    explicit = _tables(data, "job", lines, path, many=True)
    if not grids and not explicit:
        raise ValueError(
            f"{path}: the plan has no jobs; add a [grid] table or [[job]] tables "
            "(see examples/plan.toml)"
        )

    entries: list[tuple[dict[str, Any], str]] = []
    for g, grid in enumerate(grids):
        checked = _check_settings(grid, lines, path, "grid", g, lists=True)
        keys = [k for k, v in checked.items() if isinstance(v, list)]
        fixed = {k: v for k, v in checked.items() if not isinstance(v, list)}
        origin = _where(path, lines.table("grid", g))
        for combo in itertools.product(*(checked[k] for k in keys)):
            entries.append(({**defaults, **fixed, **dict(zip(keys, combo, strict=True))}, origin))
    for j, job in enumerate(explicit):
        checked = _check_settings(job, lines, path, "job", j, lists=False)
        entries.append(({**defaults, **checked}, _where(path, lines.table("job", j))))

    varying = [k for k in LISTED if len({repr(e[0].get(k)) for e in entries}) > 1]
    jobs: list[PlanJob] = []
    seen: set[str] = set()
    duplicates = 0
    for n, (settings, origin) in enumerate(entries, start=1):
        settings = {**settings, **(overrides or {})}
        _resolve_paths(settings, path.parent)
        what = f"{origin}: job {n} ({_describe(settings, varying)})"
        try:
            spec = AttackSpec.from_dict(settings).resolved()
            check_names(spec)
            if check_device:
                from zoattack.device import resolve_device

                resolve_device(spec.device)
        except UnknownNameError as exc:
            line = lines.value(exc.name)
            where = f"{_where(path, line)}: job {n}" if line is not None else what
            raise ValueError(f"{where}: {exc}") from None
        except (ValueError, ZOAttackError) as exc:
            raise ValueError(f"{what}: {exc}") from None
        key = job_key(spec)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        jobs.append(PlanJob(spec=spec, key=key, origin=origin, position=len(jobs)))

    out = batch.get("out")
    out_path = None
    if out is not None:
        p = Path(out).expanduser()
        # Relative to the current folder, like every output: an installed plan (or one in a
        # read-only checkout) must not write its results next to itself.
        out_path = p
    return Plan(
        path=path,
        text=text,
        name=str(batch.get("name", path.stem)),
        out=out_path,
        jobs=jobs,
        duplicates=duplicates,
    )


def varying_settings(jobs: list[PlanJob]) -> list[str]:
    """The listed settings whose values differ between ``jobs`` (for compact tables)."""
    return [k for k in LISTED if len({repr(getattr(j.spec, k)) for j in jobs}) > 1]
