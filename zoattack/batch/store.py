"""The result store of `zoattack batch`: one SQLite file in the output folder.

Tables:

* ``jobs``: one line per job key (a hash of the resolved spec): the settings as JSON and as
  columns, the versions, status (pending, running, finished, failed, interrupted: left running
  by a process that died), timings, scored inputs.
* ``rows``: one line per image per job, with exactly the fields of `zoattack run`'s
  per_image.csv, ``UNIQUE(job, "index")``.
* ``batches``: one line per `zoattack batch` invocation (plan text, executor, outcome).

Ownership: a store is marked with SQLite's ``application_id`` (:data:`APPLICATION_ID`) and its
schema version in ``user_version``; any other SQLite file, or a store of a newer schema, is
refused before anything is written to it (no tables, no WAL switch). A store written before the
marks is recognised by its exact tables and columns and marked on its first write. ``report``
opens stores read-only.

Crash safety: each chunk's rows and the job's counters go in one transaction, in WAL mode with
``synchronous=FULL``, so a process killed at any instant leaves either the whole chunk or none
of it. Rows are inserted with ``ON CONFLICT (job, "index") DO NOTHING``: a chunk delivered
twice (a retried Ray task, a rerun after a crash) cannot duplicate an image.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from zoattack.jobs.attack import AttackSpec
from zoattack.results.rows import CSV_FIELDS

DB_NAME = "results.sqlite"
SCHEMA_VERSION = 1
# "zoAt": SQLite's application_id, so `file` and our own open tell a store of ours from any
# other SQLite database. user_version holds SCHEMA_VERSION.
APPLICATION_ID = 0x7A6F4174
# Columns copied out of the spec for SQL queries and reports (the JSON keeps everything).
SPEC_COLUMNS: dict[str, str] = {
    "model": "TEXT",
    "dataset": "TEXT",
    "norm": "TEXT",
    "eps": "REAL",
    "optimizer": "TEXT",
    "estimator": "TEXT",
    "budget": "INTEGER",
    "images": "INTEGER",
    "seed": "INTEGER",
    "target": "TEXT",
    "loss": "TEXT",
    "lr": "REAL",
    "subspace": "TEXT",
    "chunk_size": "INTEGER",
}
ROW_TYPES = {
    "index": "INTEGER",
    "label": "INTEGER",
    "initial_prediction": "INTEGER",
    "final_prediction": "INTEGER",
    "success": "INTEGER",
    "queries": "INTEGER",
    "linf": "REAL",
    "l2": "REAL",
    "stop_reason": "TEXT",
    "queries_to_eps": "INTEGER",
}
# Row columns added after the first schema: (name, SQL default) for stores made before them.
ADDED_ROW_COLUMNS = {"queries_to_eps": "-1"}
assert tuple(ROW_TYPES) == CSV_FIELDS  # the store's rows are run's CSV rows

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    key TEXT PRIMARY KEY,
    position INTEGER,
    label TEXT NOT NULL,
    {", ".join(f"{k} {t}" for k, t in SPEC_COLUMNS.items())},
    spec TEXT NOT NULL,
    settings TEXT,
    zoattack_version TEXT,
    torch_version TEXT,
    status TEXT NOT NULL DEFAULT 'pending',
    error TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    seconds REAL NOT NULL DEFAULT 0,
    scored_inputs INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS rows (
    job TEXT NOT NULL REFERENCES jobs(key),
    {", ".join(f'"{k}" {t} NOT NULL' for k, t in ROW_TYPES.items())},
    UNIQUE (job, "index")
);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    plan_path TEXT, plan_text TEXT, executor TEXT,
    started_at REAL NOT NULL, finished_at REAL, status TEXT NOT NULL DEFAULT 'running'
);
"""
# ON CONFLICT DO NOTHING ignores only a repeated (job, index); INSERT OR IGNORE would also
# silently drop a row that breaks NOT NULL, hiding a bug as a missing image.
_ROW_SQL = (
    f"INSERT INTO rows (job, {', '.join(chr(34) + k + chr(34) for k in CSV_FIELDS)}) "
    f"VALUES (?, {', '.join('?' for _ in CSV_FIELDS)}) "
    'ON CONFLICT (job, "index") DO NOTHING'
)


_ORPHAN = "its batch process ended without finishing it (killed?)"
# The tables and columns of a store written before the marks: how an unmarked store of ours is
# told from another program's database that happens to use the same table names.
_LEGACY_COLUMNS: dict[str, set[str]] = {
    "meta": {"name", "value"},
    "jobs": {
        "key",
        "position",
        "label",
        *SPEC_COLUMNS,
        "spec",
        "settings",
        "zoattack_version",
        "torch_version",
        "status",
        "error",
        "created_at",
        "started_at",
        "finished_at",
        "seconds",
        "scored_inputs",
    },
    "rows": {"job", *ROW_TYPES},
    "batches": {
        "id",
        "plan_path",
        "plan_text",
        "executor",
        "started_at",
        "finished_at",
        "status",
    },
}


def _row_values(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """A row's values in column order; a column added later may be absent (its default)."""
    return tuple(
        row[f] if f in row or f not in ADDED_ROW_COLUMNS else int(ADDED_ROW_COLUMNS[f])
        for f in CSV_FIELDS
    )


def locate(results: str | Path) -> Path:
    """The database of a results folder (or the .sqlite file itself); it must exist."""
    p = Path(results).expanduser()
    db = p / DB_NAME if p.is_dir() else p
    if not db.is_file():
        hint = f"no {DB_NAME} in {p}" if p.is_dir() else f"{p} does not exist"
        raise ValueError(f"{hint}; pass the --out folder of `zoattack batch` (or its {DB_NAME})")
    return db


class ResultStore:
    """Jobs and per-image rows of batches, in ``folder/results.sqlite`` (or a given file).

    ``create``: make the store if it does not exist (else it must). ``readonly``: open the file
    read-only (SQLite ``mode=ro``; implies ``create=False``): nothing is written, not even the
    reaping of dead batches' jobs, which are shown ``interrupted`` all the same.
    """

    def __init__(self, path: str | Path, *, create: bool = True, readonly: bool = False) -> None:
        p = Path(path).expanduser()
        self.readonly = readonly
        if not create or readonly:
            self.path = locate(p)
        else:
            self.path = p if p.suffix in (".sqlite", ".db") or p.is_file() else p / DB_NAME
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if readonly:
                uri = f"file:{urllib.parse.quote(str(self.path.resolve()))}?mode=ro"
                self.conn = sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None)
            else:
                # Autocommit mode: every transaction is an explicit BEGIN IMMEDIATE ... COMMIT.
                self.conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        except sqlite3.Error as exc:
            raise ValueError(f"cannot open {self.path} ({exc})") from None
        self.conn.row_factory = sqlite3.Row
        self._orphans = False
        try:
            # Everything up to here only reads: a file that is not ours stays untouched.
            fresh = self._recognise()
            if not (fresh and create and not readonly):
                self._check_schema()  # a store is sound before anything is written to it
            if not readonly:
                if create or fresh is False:
                    self._take_over()
                    self._row_columns = self._columns("rows")
                # FULL: a committed chunk survives power loss too, for one fsync per chunk.
                self.conn.execute("PRAGMA synchronous=FULL")
            if readonly:
                self._orphans = self._running() and not self.owner_alive()
            else:
                self.reap_orphans()
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise ValueError(
                f"{self.path} is not a zoattack result store ({exc}); point at "
                "the --out folder of `zoattack batch`"
            ) from None
        except ValueError:
            self.conn.close()
            raise

    def _recognise(self) -> bool | None:
        """Whether the file is a new (empty) database (True), a store of ours written before the
        marks (False) or a marked store of ours (None); anything else raises, having written
        nothing."""
        app = int(self.conn.execute("PRAGMA application_id").fetchone()[0])
        version = int(self.conn.execute("PRAGMA user_version").fetchone()[0])
        if app == APPLICATION_ID:
            if version > SCHEMA_VERSION:
                raise ValueError(
                    f"{self.path} is a result store of a newer zoattack (schema {version}; "
                    f"this one reads up to {SCHEMA_VERSION}); upgrade zoattack to use it"
                )
            return None
        tables = {
            str(r[0]): str(r[1])
            for r in self.conn.execute("SELECT name, type FROM sqlite_master")
            if not str(r[0]).startswith("sqlite_autoindex_")
        }
        hint = (
            "give `zoattack batch --out` a new folder, and `zoattack report` a folder that "
            "`zoattack batch` wrote"
        )
        if app != 0:
            raise ValueError(
                f"{self.path} is another program's SQLite database (application_id "
                f"{app:#x}), not a zoattack result store; nothing was written to it; {hint}"
            )
        if not tables:
            return True
        problem = self._legacy_problem(tables)
        if problem:
            raise ValueError(
                f"{self.path} is an SQLite database that is not a zoattack result store "
                f"({problem}); nothing was written to it; {hint}"
            )
        return False

    def _legacy_problem(self, tables: Mapping[str, str]) -> str:
        """Why an unmarked database is not a store of ours ('' if it is one): exactly our
        tables, with exactly our columns (rows may lack the columns added since), and the
        schema line in meta."""
        extra = sorted(set(tables) - set(_LEGACY_COLUMNS) - {"sqlite_sequence"})
        if extra:
            return f"it holds {', '.join(extra[:5])}"
        missing = [t for t in ("meta", "jobs", "rows") if t not in tables]
        if missing:
            return f"no {'/'.join(missing)} table"
        for table, want in _LEGACY_COLUMNS.items():
            if table not in tables:
                continue
            have = {str(r[1]) for r in self.conn.execute(f"PRAGMA table_info({table})")}
            optional = set(ADDED_ROW_COLUMNS) if table == "rows" else set()
            if not want - optional <= have <= want:
                odd = sorted((have - want) | (want - optional - have))
                return f"its {table} table has other columns ({', '.join(odd[:5])})"
        row = self.conn.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
        if row is None or not str(row[0]).isdecimal():
            return "no schema line in its meta table"
        if int(row[0]) > SCHEMA_VERSION:
            return f"schema {row[0]}, newer than this zoattack reads ({SCHEMA_VERSION})"
        return ""

    def _take_over(self) -> None:
        """Make or bring up to date a store of ours: WAL, tables, columns added since, marks."""
        self.conn.execute("PRAGMA journal_mode=WAL")
        with self.transaction() as c:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    c.execute(statement)
            c.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            self._add_columns()
            c.execute(f"PRAGMA application_id={APPLICATION_ID}")
            c.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _add_columns(self) -> None:
        """Give a store made by an earlier version the row columns added since (with their
        default: an old row's value is unknown, e.g. queries_to_eps -1 reads as its queries)."""
        have = self._columns("rows")
        for name, default in ADDED_ROW_COLUMNS.items():
            if name not in have:
                self.conn.execute(
                    f'ALTER TABLE rows ADD COLUMN "{name}" {ROW_TYPES[name]} NOT NULL '
                    f"DEFAULT {default}"
                )

    def _columns(self, table: str) -> set[str]:
        return {str(r[1]) for r in self.conn.execute(f"PRAGMA table_info({table})")}

    def _check_schema(self) -> None:
        names = {
            r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        missing = [t for t in ("meta", "jobs", "rows") if t not in names]
        if missing:
            raise sqlite3.DatabaseError(f"no {'/'.join(missing)} table")
        row = self.conn.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
        version = str(row[0]) if row is not None else ""
        if not version.isdecimal():
            raise sqlite3.DatabaseError(f"no readable schema version ({version[:20]!r})")
        if int(version) > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema {version} is newer than this zoattack reads ({SCHEMA_VERSION})"
            )
        self._row_columns = self._columns("rows")
        self._check_contents()

    def _check_contents(self) -> None:
        """Every value of the wrong type for its column, found by SQL before a report or a
        rerun trips over it: a hand-edited or damaged store is one line, not a traceback."""
        # Spec columns may be NULL (a spec leaves them to defaults); when set, typed.
        is_num = "typeof({0}) IN ('integer', 'real')"
        is_int = "typeof({0})='integer'"
        opt_num = "({0} IS NOT NULL AND typeof({0}) NOT IN ('integer', 'real'))"
        opt_int = "({0} IS NOT NULL AND typeof({0})!='integer')"
        json_object = "(CASE WHEN json_valid({0}) THEN json_type({0}) END) IS NOT 'object'"
        job_checks = {
            "status": "status NOT IN ('pending','running','finished','failed','interrupted')",
            "norm": "norm IS NULL OR norm NOT IN ('linf','l2')",
            "eps": opt_num.format("eps"),
            "budget": opt_int.format("budget"),
            "images": opt_int.format("images"),
            "chunk_size": opt_int.format("chunk_size"),
            "seed": opt_int.format("seed"),
            "optimizer": "optimizer IS NOT NULL AND typeof(optimizer)!='text'",
            "label": "typeof(label)!='text'",
            "spec": json_object.format("spec"),
            "settings": f"settings IS NOT NULL AND {json_object.format('settings')}",
            "scored_inputs": f"NOT {is_int.format('scored_inputs')}",
            "seconds": f"NOT {is_num.format('seconds')}",
        }
        row_checks = {
            name: f"NOT {(is_num if kind == 'REAL' else is_int).format(chr(34) + name + chr(34))}"
            for name, kind in ROW_TYPES.items()
            if kind != "TEXT" and name in self._row_columns
        }
        row_checks["stop_reason"] = "typeof(stop_reason)!='text'"
        for table, key, checks in (("jobs", "key", job_checks), ("rows", "job", row_checks)):
            for column, bad in checks.items():
                hit = self.conn.execute(f"SELECT {key} FROM {table} WHERE {bad} LIMIT 1").fetchone()
                if hit is not None:
                    raise sqlite3.DatabaseError(
                        f"damaged: {table}.{column} of job {str(hit[0])[:16]!r} is not a valid "
                        "value"
                    )

    def close(self) -> None:
        self.conn.close()

    # -- owners ---------------------------------------------------------------------------

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def owner_alive(self) -> bool:
        """Whether a `zoattack batch` holds this store's lock (see :meth:`exclusive`) now.

        The lock is an OS file lock, released by the kernel when its holder dies however it
        dies (SIGKILL, OOM, power loss of the process), so a free lock means nobody is running
        the jobs the store calls running.
        """
        try:
            import fcntl
        except ImportError:  # Windows: no way to tell; never reap
            return True
        try:
            fd = os.open(self.lock_path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        except OSError:
            return True  # unreadable lock: assume an owner rather than steal its jobs
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops the probe's own shared lock
        return False

    def reap_orphans(self) -> int:
        """Mark jobs and batches left ``running`` by a dead process as ``interrupted``.

        Done on every open (a rerun, a report), never while a live batch holds the lock. A
        rerun resumes interrupted jobs from their stored rows like any unfinished job. Returns
        how many jobs were reaped (0 also when the store is read-only).
        """
        if self.readonly or not self._running() or self.owner_alive():
            return 0
        try:
            with self.transaction() as c:
                reaped = c.execute(
                    "UPDATE jobs SET status='interrupted', error=COALESCE(error, ?) "
                    "WHERE status='running'",
                    (_ORPHAN,),
                ).rowcount
                c.execute(
                    "UPDATE batches SET status='interrupted' WHERE status='running'",
                )
        except sqlite3.OperationalError:  # a read-only store: report it as it is
            return 0
        return int(reaped)

    def _running(self) -> bool:
        """Whether a job or batch is marked running (by a live batch or a dead one)."""
        batches = "batches" in {
            r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        sql = "SELECT COUNT(*) FROM jobs WHERE status='running'"
        if batches:
            sql = f"SELECT ({sql}) + (SELECT COUNT(*) FROM batches WHERE status='running')"
        return bool(self.conn.execute(sql).fetchone()[0])

    def _shown(self, row: sqlite3.Row) -> dict[str, Any]:
        """A job as stored, or as reaping would leave it (a read-only store of a dead batch)."""
        job = dict(row)
        if self._orphans and job.get("status") == "running":
            job["status"] = "interrupted"
            job["error"] = job.get("error") or _ORPHAN
        return job

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- jobs -----------------------------------------------------------------------------

    def register_jobs(self, jobs: Iterable[tuple[str, str, int, AttackSpec]]) -> None:
        """Record (key, label, position, resolved spec) as pending unless already known."""
        now = time.time()
        cols = ["key", "position", "label", *SPEC_COLUMNS, "spec", "created_at"]
        sql = (
            f"INSERT INTO jobs ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)}) "
            "ON CONFLICT(key) DO UPDATE SET position=excluded.position"
        )
        with self.transaction() as c:
            for key, label, position, spec in jobs:
                d = spec.as_dict()
                c.execute(
                    sql,
                    (
                        key,
                        position,
                        label,
                        *(d[k] for k in SPEC_COLUMNS),
                        json.dumps(d, sort_keys=True),
                        now,
                    ),
                )

    def start_job(self, key: str, settings: Mapping[str, Any] | None = None) -> None:
        """Mark running (unless finished); record the prepared job's settings and versions."""
        with self.transaction() as c:
            if settings is not None:
                c.execute(
                    "UPDATE jobs SET settings=?, zoattack_version=?, torch_version=?, "
                    "images=? WHERE key=?",
                    (
                        json.dumps(dict(settings), sort_keys=True, default=str),
                        settings.get("zoattack"),
                        settings.get("torch"),
                        settings.get("images"),
                        key,
                    ),
                )
            c.execute(
                "UPDATE jobs SET status='running', error=NULL, "
                "started_at=COALESCE(started_at, ?) WHERE key=? AND status!='finished'",
                (time.time(), key),
            )
            self._maybe_finish(c, key)

    def add_rows(
        self,
        key: str,
        rows: Sequence[Mapping[str, Any]],
        *,
        scored_inputs: int = 0,
        seconds: float = 0.0,
    ) -> int:
        """One chunk's rows and work, in one transaction; returns the rows newly stored.

        The job becomes ``finished`` in the same transaction once every image is stored.
        """
        with self.transaction() as c:
            before = c.total_changes
            c.executemany(_ROW_SQL, [(key, *_row_values(r)) for r in rows])
            added = c.total_changes - before
            c.execute(
                "UPDATE jobs SET scored_inputs=scored_inputs+?, seconds=seconds+? WHERE key=?",
                (int(scored_inputs), float(seconds), key),
            )
            self._maybe_finish(c, key)
        return added

    def _maybe_finish(self, c: sqlite3.Connection, key: str) -> None:
        c.execute(
            "UPDATE jobs SET status='finished', error=NULL, finished_at=? WHERE key=? "
            "AND status!='finished' AND settings IS NOT NULL AND images <= "
            "(SELECT COUNT(*) FROM rows WHERE job=?)",
            (time.time(), key, key),
        )

    def fail_job(self, key: str, error: str) -> None:
        with self.transaction() as c:
            c.execute(
                "UPDATE jobs SET status='failed', error=? WHERE key=? AND status!='finished'",
                (error, key),
            )

    def job(self, key: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM jobs WHERE key=?", (key,)).fetchone()
        return self._shown(row) if row is not None else None

    def jobs(self) -> list[dict[str, Any]]:
        return [
            self._shown(r)
            for r in self.conn.execute("SELECT * FROM jobs ORDER BY position, created_at, key")
        ]

    def job_keys(self) -> set[str]:
        """The keys of every job recorded here."""
        return {str(r[0]) for r in self.conn.execute("SELECT key FROM jobs")}

    def done_indices(self, key: str) -> set[int]:
        return {
            int(r[0]) for r in self.conn.execute('SELECT "index" FROM rows WHERE job=?', (key,))
        }

    def row_counts(self) -> dict[str, int]:
        return {
            r[0]: int(r[1])
            for r in self.conn.execute("SELECT job, COUNT(*) FROM rows GROUP BY job")
        }

    def rows(self, key: str | None = None) -> list[dict[str, Any]]:
        """Rows in index order (of one job, or of all jobs with a ``job`` field)."""
        # A read-only store written before a column was added: its default, as ALTER would give.
        cols = ", ".join(
            f'"{k}"' if k in self._row_columns else f'{ADDED_ROW_COLUMNS[k]} AS "{k}"'
            for k in CSV_FIELDS
        )
        if key is not None:
            cur = self.conn.execute(f'SELECT {cols} FROM rows WHERE job=? ORDER BY "index"', (key,))
            return [dict(r) for r in cur]
        cur = self.conn.execute(f'SELECT job, {cols} FROM rows ORDER BY job, "index"')
        return [dict(r) for r in cur]

    # -- batches --------------------------------------------------------------------------

    def begin_batch(self, plan_path: str, plan_text: str, executor: str) -> int:
        with self.transaction() as c:
            cur = c.execute(
                "INSERT INTO batches (plan_path, plan_text, executor, started_at) "
                "VALUES (?, ?, ?, ?)",
                (plan_path, plan_text, executor, time.time()),
            )
            return int(cur.lastrowid or 0)

    def end_batch(self, batch_id: int, status: str) -> None:
        with self.transaction() as c:
            c.execute(
                "UPDATE batches SET finished_at=?, status=? WHERE id=?",
                (time.time(), status, batch_id),
            )

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Refuse a second `zoattack batch` writing into the same store at the same time.

        An OS file lock: it is released by the kernel when the holder dies, even by SIGKILL.
        A holder that finishes removes the lock file (still holding the lock), so a finished
        batch leaves none behind; a process that locked the file just as it was removed sees
        that it holds an unlinked file and locks afresh.
        """
        fh = open(self.lock_path, "a+")  # noqa: SIM115 (held across the yield)
        locked = False
        try:
            try:
                import fcntl
            except ImportError:  # Windows: SQLite's own locking still keeps the rows sound
                yield
                return
            while True:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    fh.seek(0)
                    holder = fh.read().strip() or "another process"
                    raise ValueError(
                        f"another `zoattack batch` ({holder}) is writing to "
                        f"{self.path}; wait for it or use another --out"
                    ) from None
                if self._is_lock_file(fh):
                    break
                fh.close()  # locked a file its finished holder had just removed
                fh = open(self.lock_path, "a+")  # noqa: SIM115
            locked = True
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()}")
            fh.flush()
            yield
        finally:
            if locked and self._is_lock_file(fh):
                self.lock_path.unlink()  # while still held: nobody can be mid-lock on it
            fh.close()

    def _is_lock_file(self, fh: Any) -> bool:
        """Whether the open file ``fh`` is still the one at :attr:`lock_path`."""
        try:
            return os.stat(self.lock_path).st_ino == os.fstat(fh.fileno()).st_ino
        except FileNotFoundError:
            return False
