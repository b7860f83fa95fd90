"""Durable, resumable storage of study results in an SQLite file.

One database file per study output directory (for example ``OUT/results.sqlite``)
holds

* a ``meta`` table (``key TEXT PRIMARY KEY, value TEXT``) with a format marker, the study kind, its key
  and JSON columns, and the JSON of the configuration the results belong to, and
* a ``results`` table with one row per key of the study's :class:`Schema` (each study declares its own).

Every :meth:`ResultsStore.add` is its own committed transaction, written with
``synchronous=FULL`` in the default rollback-journal mode, so a process killed
(even with ``SIGKILL``) between two rows never loses or corrupts a row that
``add`` already returned for.  A study resumes by skipping
:meth:`ResultsStore.done_keys`.

:func:`merge_results` joins the databases of a study's shards (``greedyprune merge``), all or nothing: every
source is read and checked first - the same study kind, key and configuration, and a row found in two
databases the same in both (timings aside) - and only then are the new rows written to the target, so a
refused merge leaves the target as it was (a new target is not created).

Only the standard library is used here (and ``greedyprune.errors``, itself standard library only).
"""

from __future__ import annotations

import csv
import json
import math
import os
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

try:
    from ..errors import GreedyPruneError, InvalidOptionError, InvalidTypeError
except ImportError:  # this file loaded on its own, outside the package (the storage tests' SIGKILL child does)
    class GreedyPruneError(Exception):
        """Stand-in for greedyprune.errors.GreedyPruneError."""

    class InvalidOptionError(GreedyPruneError, ValueError):
        """Stand-in for greedyprune.errors.InvalidOptionError."""

    class InvalidTypeError(GreedyPruneError, TypeError):
        """Stand-in for greedyprune.errors.InvalidTypeError."""

__all__ = ["config_differences", "ConfigMismatchError", "DamagedDatabaseError", "FORMAT_NAME", "merge_results",
           "open_results", "ResultsNotWritableError", "ResultsStore", "Schema", "SCHEMA_VERSION",
           "VOLATILE_SUFFIXES"]

#: Value of ``meta['format']`` that marks a greedyprune results database.
FORMAT_NAME = "greedyprune-results"
#: Value of ``meta['schema_version']`` written by this version.
SCHEMA_VERSION = "2"

_OPTIONAL_COLUMNS = frozenset({"created"})
_MISMATCH_ADVICE = (
    "this directory holds results of another configuration; "
    "use a different --out directory, or the same options to resume"
)


@dataclass(frozen=True)
class Schema:
    """A study's results table: its kind, ``(name, sqlite type)`` columns, key columns and JSON columns
    (TEXT columns holding lists or dicts, encoded on add and decoded by :meth:`ResultsStore.rows`).
    A ``created`` column (UTC time of the insert) is always added."""

    kind: str
    columns: tuple[tuple[str, str], ...]
    key: tuple[str, ...]
    json_columns: tuple[str, ...] = ()

    def all_columns(self) -> tuple[tuple[str, str], ...]:
        return self.columns + (("created", "TEXT"),)


def _q(name: str) -> str:
    """Quote an SQL identifier (``distinct`` is a reserved word)."""
    return '"' + name.replace('"', '""') + '"'


class ConfigMismatchError(GreedyPruneError, ValueError):
    """The database holds results of another configuration or study kind."""


class DamagedDatabaseError(GreedyPruneError, ValueError):
    """The results database file is damaged (SQLite reports a malformed or unreadable file)."""


class ResultsNotWritableError(GreedyPruneError, OSError):
    """The results database cannot be written (a read-only file or directory, a full disk); nothing is lost."""


#: Words of SQLite's messages for a database it cannot write, as opposed to a damaged one.
_UNWRITABLE = ("readonly database", "read-only", "unable to open database", "disk is full", "disk I/O error")


def _canonical(value: Any) -> str:
    """Canonical JSON text of a (JSON-able) value, used to compare configs."""
    return json.dumps(value, sort_keys=True, default=str)


class ResultsStore:
    """Results of one study, kept in an SQLite file.

    Args:
        path: the database file. It (and its parent directory) is created if absent. An existing file
            must be a greedyprune results database of the same kind, else ValueError.
        schema: the study's :class:`Schema`; ``None`` opens an existing database with the columns and kind
            stored in it (what ``greedyprune plot`` / ``export`` do for any study).

    Every SQLite failure caused by a damaged file is a :class:`DamagedDatabaseError` that quotes
    ``PRAGMA integrity_check`` and says how to recover; rows already stored are never dropped silently.
    """

    def __init__(self, path: str | os.PathLike, schema: Schema | None = None) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        if self.path.is_dir():
            raise InvalidOptionError(f"{self.path}: is a directory, not a results database file")
        if schema is None and not self.path.is_file():
            raise FileNotFoundError(f"no results database at {self.path}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: autocommit; every statement outside an explicit
            # BEGIN is its own transaction, committed when it returns.
            conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        except (sqlite3.Error, OSError) as exc:
            raise InvalidOptionError(f"{self.path}: cannot open results database: {exc}") from exc
        self._conn = conn
        try:
            conn.execute("PRAGMA synchronous=FULL")
            self._check_intact(conn)
            self.schema = self._init_schema(schema)
        except sqlite3.DatabaseError as exc:
            error = self._damaged(exc)
            self._close_quietly()
            raise error from exc
        except Exception:
            self._close_quietly()
            raise
        self.kind = self.schema.kind
        self.columns = self.schema.all_columns()
        self.key_columns = self.schema.key
        self.column_names = tuple(name for name, _ in self.columns)

    # ------------------------------------------------------------------ errors
    def _check_intact(self, conn: sqlite3.Connection) -> None:
        """``PRAGMA quick_check`` before any use: a damaged page that the first reads happen not to touch
        would otherwise let a study resume into (and write more rows into) a damaged file."""
        cursor = conn.execute("PRAGMA quick_check")
        try:
            problems = _problems([r[0] for r in cursor])
        finally:
            cursor.close()
        if problems:
            raise self._damaged(sqlite3.DatabaseError("PRAGMA quick_check failed"), problems)

    def _damaged(self, exc: sqlite3.DatabaseError, problems: list[str] | None = None) -> Exception:
        """The error for an SQLite failure: a damaged file gets the integrity check and what to do; a file that
        cannot be written (read-only, disk full) says so, and that the finished rows are kept."""
        text = str(exc)
        if "not a database" in text or "file is encrypted" in text:
            return InvalidOptionError(f"{self.path}: not a greedyprune results database ({text})")
        if any(words in text for words in _UNWRITABLE):
            return ResultsNotWritableError(
                f"{self.path}: cannot write the results database ({text}); make {self.path.parent} writable (or free "
                f"disk space) and run the same command again - every finished row is kept and the run resumes")
        try:
            if problems is None:
                check = sqlite3.connect(str(self.path), timeout=5)
                try:
                    problems = _problems([r[0] for r in check.execute("PRAGMA integrity_check")])
                finally:
                    check.close()
            shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} problems)" if len(problems) > 5 else "")
            report = (f"{text}; PRAGMA integrity_check: {shown}" if problems else
                      f"{text}; PRAGMA integrity_check finds the page structure intact, so a stored value is damaged")
        except sqlite3.DatabaseError as inner:
            report = f"{text}; PRAGMA integrity_check itself failed: {inner}"
        return DamagedDatabaseError(
            f"{self.path} is damaged ({report}). Its finished rows may be recoverable with the sqlite3 tool "
            f"(sqlite3 {self.path.name} .recover > rows.sql); otherwise move the file away and run the study "
            f"again to recompute them")

    def _run(self, sql: str, params=(), many: bool = False):
        conn = self._require_open()
        try:
            return conn.executemany(sql, params) if many else conn.execute(sql, params)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.IntegrityError):
                raise
            raise self._damaged(exc) from exc

    def _query(self, sql: str, params=()) -> list[tuple]:
        """All rows of a SELECT: reading them, not only starting the statement, can hit a damaged page."""
        cursor = self._run(sql, params)
        try:
            return cursor.fetchall()
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from exc
        finally:
            cursor.close()  # a statement left open by a failed read would keep the file locked

    # ------------------------------------------------------------------ setup
    def _init_schema(self, schema: Schema | None) -> Schema:
        conn = self._require_open()
        conn.execute("BEGIN IMMEDIATE")
        try:
            tables = {r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")}
            if not tables:
                if schema is None:
                    raise InvalidOptionError(f"{self.path}: an empty database holds no study results")
                self._create_tables(conn, schema)
            else:
                schema = self._check_tables(conn, tables, schema)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return schema

    def _create_tables(self, conn: sqlite3.Connection, schema: Schema) -> None:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        cols = ", ".join(f"{_q(n)} {t}" + (" NOT NULL" if n in schema.key else "")
                         for n, t in schema.all_columns())
        key = ", ".join(_q(n) for n in schema.key)
        conn.execute(f"CREATE TABLE results ({cols}, PRIMARY KEY ({key}))")
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [
            ("format", FORMAT_NAME), ("schema_version", SCHEMA_VERSION), ("kind", schema.kind),
            ("key", json.dumps(list(schema.key))), ("json_columns", json.dumps(list(schema.json_columns)))])

    def _check_tables(self, conn: sqlite3.Connection, tables: set[str], schema: Schema | None) -> Schema:
        if not {"meta", "results"} <= tables:
            raise InvalidOptionError(f"{self.path}: not a greedyprune results database (it holds the tables "
                                     f"{sorted(tables)}, not 'meta' and 'results')")
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("format") != FORMAT_NAME:
            raise InvalidOptionError(f"{self.path}: not a greedyprune results database (no format marker "
                                     f"{FORMAT_NAME!r} in its meta table)")
        kind = meta.get("kind")
        if schema is not None and kind is not None and kind != schema.kind:
            raise ConfigMismatchError(f"{self.path}: holds results of a {kind!r} study, not of a {schema.kind!r} "
                                      f"study; {_MISMATCH_ADVICE}")
        have = [(r[1], r[2]) for r in conn.execute("PRAGMA table_info(results)")]
        if schema is None:
            if kind is None or "key" not in meta:
                raise InvalidOptionError(
                    f"{self.path}: written by an older greedyprune that did not record the study kind; "
                    f"rerun the study into a new directory")
            return Schema(kind, tuple(c for c in have if c[0] != "created"), tuple(json.loads(meta["key"])),
                          tuple(json.loads(meta.get("json_columns", "[]"))))
        missing = [n for n, _ in schema.all_columns() if n not in {c for c, _ in have}]
        if missing:
            raise InvalidOptionError(f"{self.path}: results table lacks the columns {missing}; it was written by an "
                                     f"incompatible version of greedyprune")
        return schema

    def _require_open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise InvalidOptionError(f"{self.path}: results store is closed")
        return self._conn

    def _close_quietly(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    # ------------------------------------------------------------------- meta
    def _meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key=?", (key,))
        return rows[0][0] if rows else None

    def stored_kind(self) -> str | None:
        """The study kind recorded in the database."""
        return self._meta("kind")

    def config(self) -> dict | None:
        """The configuration bound to this database, or ``None`` if none yet."""
        text = self._meta("config")
        return None if text is None else json.loads(text)

    def bind_config(self, config: dict) -> None:
        """Bind the database to ``config``.

        The first call stores ``json.dumps(config, sort_keys=True)``. Later calls (typically from a resumed
        run) check that it is the same and raise :class:`ConfigMismatchError` listing every differing key
        otherwise. Values that JSON cannot encode are stored as ``str(value)``.
        """
        if not isinstance(config, dict):
            raise InvalidTypeError(f"config must be a dict, not {type(config).__name__}")
        text = json.dumps(config, sort_keys=True, default=str)
        requested = json.loads(text)
        conn = self._require_open()
        self._run("BEGIN IMMEDIATE")
        try:
            stored_text = self._meta("config")
            if stored_text is not None:
                diffs = config_differences(json.loads(stored_text), requested)
                if diffs:
                    lines = "\n".join(f"  {d}" for d in diffs)
                    raise ConfigMismatchError(f"{self.path}: {_MISMATCH_ADVICE}. Differing options:\n{lines}")
            else:
                self._run("INSERT INTO meta (key, value) VALUES ('config', ?)", (text,))
            self._run("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def shard(self) -> str | None:
        """``"i/P"`` for the database of one shard of a study, else None."""
        return self._meta("shard")

    def bind_shard(self, shard: tuple[int, int]) -> None:
        """Record that this database holds shard ``(i, P)`` of its study; a resume with another shard is
        refused (ConfigMismatchError)."""
        text = f"{int(shard[0])}/{int(shard[1])}"
        stored = self.shard()
        if stored is None:
            self._run("INSERT INTO meta (key, value) VALUES ('shard', ?)", (text,))
        elif stored != text:
            raise ConfigMismatchError(f"{self.path}: holds shard {stored} of its study, not shard {text}; "
                                      f"{_MISMATCH_ADVICE}")

    # ---------------------------------------------------------------- results
    def done_keys(self) -> set[tuple]:
        """The keys already stored."""
        key = ", ".join(_q(n) for n in self.key_columns)
        return {tuple(r) for r in self._query(f"SELECT {key} FROM results")}

    def __len__(self) -> int:
        return self._query("SELECT COUNT(*) FROM results")[0][0]

    def add(self, row: dict) -> bool:
        """Insert one result row and commit it at once.

        ``row`` must have every column of the schema except ``created`` (filled with the current UTC time
        if absent); unknown or missing columns raise ValueError. JSON columns may hold lists / dicts or
        JSON text. Returns True if the row was inserted, False if a row with the same key exists already
        (the stored row is kept unchanged).
        """
        values = _encode_row(row, self.columns, self.key_columns, self.schema.json_columns)
        cols = ", ".join(_q(n) for n in self.column_names)
        marks = ", ".join("?" for _ in self.column_names)
        cur = self._run(f"INSERT OR IGNORE INTO results ({cols}) VALUES ({marks})",
                        [values[n] for n in self.column_names])
        return cur.rowcount == 1

    def _records(self) -> list[tuple]:
        cols = ", ".join(_q(n) for n in self.column_names)
        key = ", ".join(_q(n) for n in self.key_columns)
        return self._query(f"SELECT {cols} FROM results ORDER BY {key}")

    def rows(self) -> list[dict]:
        """All rows ordered by key, JSON columns decoded. REAL columns stored as NULL (SQLite stores NaN as
        NULL) come back as NaN."""
        out = []
        for rec in self._records():
            row = dict(zip(self.column_names, rec))
            for name, typ in self.columns:
                if typ == "REAL" and row[name] is None:
                    row[name] = math.nan
                elif name in self.schema.json_columns and row[name]:
                    try:
                        row[name] = json.loads(row[name])
                    except ValueError:
                        key = tuple(row[k] for k in self.key_columns)
                        raise DamagedDatabaseError(
                            f"{self.path} is damaged: column {name!r} of the row {key} holds {row[name]!r:.80}, "
                            f"which is not the JSON that was stored; move the file away and run the study again "
                            f"to recompute it") from None
            out.append(row)
        return out

    def export_csv(self, path: str | os.PathLike) -> Path:
        """Write all rows to a CSV file (header row; JSON columns as JSON text), atomically."""
        from ..fileio import atomic_write

        path = Path(path)
        if path.is_dir():
            raise InvalidOptionError(f"{path} is a directory; give a CSV file name such as {path / 'results.csv'}")
        records = self._records()
        with atomic_write(path, "w") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(self.column_names)
            for rec in records:
                writer.writerow(["" if v is None else v for v in rec])
        return path

    # -------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Close the database (idempotent)."""
        self._close_quietly()

    @property
    def closed(self) -> bool:
        return self._conn is None

    def __enter__(self) -> "ResultsStore":
        self._require_open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"ResultsStore({str(self.path)!r}, kind={self.kind!r}, {state})"


def open_results(directory: str | os.PathLike, name: str = "results.sqlite") -> ResultsStore:
    """The results database of a study's output directory, whatever the study (kind and columns read from it)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no such directory: {directory}")
    db = directory / name
    if not db.is_file():
        raise FileNotFoundError(f"{directory} holds no study results ({name} not found); run a study with --out "
                                f"{directory}")
    return ResultsStore(db)


# ----------------------------------------------------------------- helpers
_ABSENT = "<absent>"


def _problems(check_rows: list) -> list[str]:
    """The problem lines of an integrity / quick check (one row may hold several lines); [] for "ok"."""
    lines = [line.strip() for row in check_rows for line in str(row).splitlines()]
    return [line for line in lines if line and line != "ok" and not line.startswith("*** in database")]


def config_differences(stored: dict, requested: dict) -> list[str]:
    diffs = []
    for key in sorted(set(stored) | set(requested), key=str):
        s = _canonical(stored[key]) if key in stored else _ABSENT
        r = _canonical(requested[key]) if key in requested else _ABSENT
        if s != r:
            diffs.append(f"{key}: stored={s}, requested={r}")
    return diffs


def _encode_row(row: dict, columns, key_columns, json_columns=()) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise InvalidTypeError(f"row must be a dict, not {type(row).__name__}")
    names = [n for n, _ in columns]
    unknown = sorted(set(row) - set(names), key=str)
    missing = [n for n in names if n not in row and n not in _OPTIONAL_COLUMNS]
    problems = []
    if missing:
        problems.append(f"missing columns {missing}")
    if unknown:
        problems.append(f"unknown columns {unknown}")
    if problems:
        raise InvalidOptionError("result row has " + " and ".join(problems))
    out: dict[str, Any] = {}
    for name, typ in columns:
        value = row.get(name)
        if name == "created":
            out[name] = (
                str(value) if value is not None
                else datetime.now(timezone.utc).isoformat(timespec="seconds")
            )
        elif name == "losses":
            out[name] = _encode_losses(value)
        elif name in json_columns:
            out[name] = None if value is None else (value if isinstance(value, str) else json.dumps(value))
        elif value is None:
            if name in key_columns:
                raise InvalidOptionError(f"result row: key column {name!r} is None")
            out[name] = None
        elif typ == "TEXT":
            out[name] = str(value)
        elif typ == "INTEGER":
            out[name] = _as_int(name, value)
        else:  # REAL
            try:
                out[name] = float(value)
            except (TypeError, ValueError) as exc:
                raise InvalidOptionError(f"result row: {name}={value!r} is not a number") from exc
    return out


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    try:
        as_float = float(value)
        as_int = int(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidOptionError(f"result row: {name}={value!r} is not an integer") from exc
    if as_float != as_int:
        raise InvalidOptionError(f"result row: {name}={value!r} is not an integer")
    return as_int


def _encode_losses(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        text = value.decode() if isinstance(value, bytes) else value
        try:
            decoded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidOptionError(f"result row: losses {text!r} is not JSON") from exc
        if not isinstance(decoded, list):
            raise InvalidOptionError(f"result row: losses {text!r} is not a JSON list")
        value = decoded
    if hasattr(value, "tolist"):  # numpy array / torch tensor
        value = value.tolist()
    try:
        return json.dumps([float(x) for x in _iter(value)])
    except (TypeError, ValueError) as exc:
        raise InvalidOptionError(f"result row: losses must be a list of floats ({exc})") from exc


def _iter(value: Any) -> Iterable:
    if isinstance(value, dict):
        raise InvalidTypeError("a dict is not a list")
    return iter(value)


# ------------------------------------------------------------------------------------------ merging shards

#: Columns that may differ between two computations of the same row (timings, insert times).
VOLATILE_SUFFIXES = ("seconds", "created")


def merge_results(target: str | os.PathLike, sources: Iterable[str | os.PathLike]) -> tuple[int, int]:
    """Join the databases of a study's shards (or of any runs of one configuration) into ``target``.

    Every source must be a results database of the same study kind, key and configuration (the target too,
    if it exists); otherwise ValueError / :class:`ConfigMismatchError` names the file and the difference. A
    key found in more than one database must hold the same values in each (timing columns aside), else
    ValueError names the key, the column and both files. Nothing is written unless every check passes.
    Returns ``(rows added, rows already there)``.
    """
    stores = []
    try:
        for src in sources:
            stores.append(ResultsStore(src))
        if not stores:
            raise InvalidOptionError("nothing to merge: name at least one results database")
        first = stores[0]
        config = first.config()
        for other in stores[1:]:
            if (other.kind, other.key_columns) != (first.kind, first.key_columns):
                raise ConfigMismatchError(f"{other.path} holds {other.kind!r} rows keyed by {list(other.key_columns)}, "
                                          f"{first.path} {first.kind!r} rows keyed by {list(first.key_columns)}")
            diffs = config_differences(config or {}, other.config() or {})
            if diffs:
                raise ConfigMismatchError(f"{other.path} and {first.path} hold results of different configurations:"
                                          "\n" + "\n".join(f"  {d}" for d in diffs))
        have: dict[tuple, tuple[dict, Path]] = {}
        existing = Path(target).is_file()
        if existing:
            with ResultsStore(target, first.schema) as out:
                if config is not None:
                    out.bind_config(config)  # refuses a target of another configuration before any write
                have = {tuple(r[c] for c in out.key_columns): (r, out.path) for r in out.rows()}
        new, kept = [], 0
        for store in stores:
            for row in store.rows():
                key = tuple(row[c] for c in first.key_columns)
                if key in have:
                    _check_same(have[key], (row, store.path), dict(zip(first.key_columns, key)))
                    kept += 1
                    continue
                have[key] = (row, store.path)
                new.append(row)
        with ResultsStore(target, first.schema) as out:
            if config is not None:
                out.bind_config(config)
            for row in new:
                out.add(row)
        return len(new), kept
    finally:
        for store in stores:
            store.close()


def _check_same(a: tuple[dict, Path], b: tuple[dict, Path], key: dict) -> None:
    (first, first_path), (second, second_path) = a, b
    for name in first:
        if name.endswith(VOLATILE_SUFFIXES):
            continue
        x, y = first[name], second.get(name)
        same = x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))
        if not same:
            row = ", ".join(f"{k}={v}" for k, v in key.items())
            raise InvalidOptionError(
                f"the row {row} differs between {first_path} and {second_path} in {name!r} ({x!r} vs "
                f"{y!r}), so these databases do not come from one configuration; nothing was merged")
