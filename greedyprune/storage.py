"""Durable, resumable storage of study results in an SQLite file.

One database file per study output directory (for example ``OUT/results.sqlite``)
holds

* a ``meta`` table (``key TEXT PRIMARY KEY, value TEXT``) with a format marker,
  the study kind and the JSON of the configuration the results belong to, and
* a ``results`` table with one row per ``(width, size, trial, iteration)``.

Every :meth:`ResultsStore.add` is its own committed transaction, written with
``synchronous=FULL`` in the default rollback-journal mode, so a process killed
(even with ``SIGKILL``) between two rows never loses or corrupts a row that
``add`` already returned for.  A study resumes by skipping
:meth:`ResultsStore.done_keys`.

Only the standard library is used here.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

__all__ = [
    "RESULT_COLUMNS",
    "KEY_COLUMNS",
    "VALUE_COLUMNS",
    "FORMAT_NAME",
    "SCHEMA_VERSION",
    "ConfigMismatchError",
    "ResultsStore",
]

#: ``(name, sqlite type)`` of every column of the ``results`` table, in order.
RESULT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("width", "INTEGER"),
    ("size", "INTEGER"),
    ("trial", "INTEGER"),
    ("iteration", "INTEGER"),
    ("pruned_accuracy", "REAL"),
    ("pruned_loss", "REAL"),
    ("dense_accuracy", "REAL"),
    ("dense_loss", "REAL"),
    ("distinct", "INTEGER"),
    ("k", "INTEGER"),
    ("prune_seconds", "REAL"),
    ("losses", "TEXT"),
    ("created", "TEXT"),
)

#: The primary key of the ``results`` table.
KEY_COLUMNS: tuple[str, ...] = ("width", "size", "trial", "iteration")

#: The non-key columns.
VALUE_COLUMNS: tuple[str, ...] = tuple(
    name for name, _ in RESULT_COLUMNS if name not in KEY_COLUMNS
)

#: Results of the CNN study (Appendix E): one row per (size, trial, iteration, method).
CNN_COLUMNS: tuple[tuple[str, str], ...] = (
    ("size", "INTEGER"),
    ("trial", "INTEGER"),
    ("iteration", "INTEGER"),
    ("method", "TEXT"),
    ("dense_accuracy", "REAL"),
    ("dense_train_accuracy", "REAL"),
    ("pruned_accuracy", "REAL"),
    ("finetuned_accuracy", "REAL"),
    ("params", "INTEGER"),
    ("macs", "INTEGER"),
    ("dense_params", "INTEGER"),
    ("dense_macs", "INTEGER"),
    ("prune_seconds", "REAL"),
    ("kept", "TEXT"),
    ("created", "TEXT"),
)

#: Results of the Rethinking study: one row per (mode, seed).
RETHINKING_COLUMNS: tuple[tuple[str, str], ...] = (
    ("mode", "TEXT"),
    ("seed", "INTEGER"),
    ("accuracy", "REAL"),
    ("train_accuracy", "REAL"),
    ("iterations", "INTEGER"),
    ("params", "INTEGER"),
    ("macs", "INTEGER"),
    ("seconds", "REAL"),
    ("created", "TEXT"),
)

#: kind -> (columns, key columns). Unknown kinds use the pre-training schema.
SCHEMAS: dict[str, tuple[tuple[tuple[str, str], ...], tuple[str, ...]]] = {
    "pretraining": (RESULT_COLUMNS, KEY_COLUMNS),
    "cnn": (CNN_COLUMNS, ("size", "trial", "iteration", "method")),
    "rethinking": (RETHINKING_COLUMNS, ("mode", "seed")),
}

#: TEXT columns holding JSON (lists or dicts), encoded on add and decoded by rows().
_JSON_COLUMNS = frozenset({"losses", "kept"})

#: Value of ``meta['format']`` that marks a greedyprune results database.
FORMAT_NAME = "greedyprune-results"
#: Value of ``meta['schema_version']`` written by this version.
SCHEMA_VERSION = "1"

_COLUMN_NAMES = tuple(name for name, _ in RESULT_COLUMNS)
_COLUMN_TYPES = dict(RESULT_COLUMNS)
_OPTIONAL_COLUMNS = frozenset({"created"})
_MISMATCH_ADVICE = (
    "this directory holds results of another configuration; "
    "use a different --out directory, or the same options to resume"
)


def _q(name: str) -> str:
    """Quote an SQL identifier (``distinct`` is a reserved word)."""
    return '"' + name.replace('"', '""') + '"'


class ConfigMismatchError(ValueError):
    """The database holds results of another configuration or study kind."""


def _canonical(value: Any) -> str:
    """Canonical JSON text of a (JSON-able) value, used to compare configs."""
    return json.dumps(value, sort_keys=True, default=str)


class ResultsStore:
    """Results of one study, kept in an SQLite file.

    Parameters
    ----------
    path:
        The database file.  It (and its parent directory) is created if absent.
        An existing file must be a greedyprune results database, else
        :class:`ValueError` is raised.
    kind:
        The kind of study (``"pretraining"`` for the main study).  It is
        recorded by :meth:`bind_config`, and a later :meth:`bind_config` with a
        store of another kind raises :class:`ConfigMismatchError`.
    """

    def __init__(self, path: str | os.PathLike, kind: str = "pretraining") -> None:
        self.path = Path(path)
        self.kind = str(kind)
        self.columns, self.key_columns = SCHEMAS.get(self.kind, SCHEMAS["pretraining"])
        self.column_names = tuple(name for name, _ in self.columns)
        self._conn: sqlite3.Connection | None = None
        if self.path.is_dir():
            raise ValueError(f"{self.path}: is a directory, not a results database file")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: autocommit; every statement outside an explicit
            # BEGIN is its own transaction, committed when it returns.
            conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        except (sqlite3.Error, OSError) as exc:
            raise ValueError(f"{self.path}: cannot open results database: {exc}") from exc
        self._conn = conn
        try:
            conn.execute("PRAGMA synchronous=FULL")
            self._init_schema()
        except sqlite3.DatabaseError as exc:
            self._close_quietly()
            raise ValueError(
                f"{self.path}: not a greedyprune results database ({exc})"
            ) from exc
        except Exception:
            self._close_quietly()
            raise

    # ------------------------------------------------------------------ setup
    def _init_schema(self) -> None:
        conn = self._require_open()
        conn.execute("BEGIN IMMEDIATE")
        try:
            tables = {
                r[0]
                for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type='table' "
                    "AND name NOT LIKE 'sqlite_%'"
                )
            }
            if not tables:
                self._create_tables(conn)
            else:
                self._check_tables(conn, tables)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _create_tables(self, conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        cols = ", ".join(f"{_q(n)} {t}" + (" NOT NULL" if n in self.key_columns else "")
                         for n, t in self.columns)
        key = ", ".join(_q(n) for n in self.key_columns)
        conn.execute(f"CREATE TABLE results ({cols}, PRIMARY KEY ({key}))")
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [("format", FORMAT_NAME), ("schema_version", SCHEMA_VERSION)],
        )

    def _check_tables(self, conn: sqlite3.Connection, tables: set[str]) -> None:
        if not {"meta", "results"} <= tables:
            raise ValueError(
                f"{self.path}: not a greedyprune results database "
                f"(it holds the tables {sorted(tables)}, not 'meta' and 'results')"
            )
        fmt = conn.execute("SELECT value FROM meta WHERE key='format'").fetchone()
        if fmt is None or fmt[0] != FORMAT_NAME:
            raise ValueError(
                f"{self.path}: not a greedyprune results database (no format marker "
                f"{FORMAT_NAME!r} in its meta table)"
            )
        have = {r[1] for r in conn.execute("PRAGMA table_info(results)")}
        missing = [n for n in self.column_names if n not in have]
        if missing:
            raise ValueError(
                f"{self.path}: results table lacks the columns {missing}; "
                "it was written by an incompatible version of greedyprune"
            )

    def _require_open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ValueError(f"{self.path}: results store is closed")
        return self._conn

    def _close_quietly(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    # ------------------------------------------------------------------- meta
    def _meta(self, key: str) -> str | None:
        row = self._require_open().execute(
            "SELECT value FROM meta WHERE key=?", (key,)
        ).fetchone()
        return None if row is None else row[0]

    def stored_kind(self) -> str | None:
        """The study kind recorded by :meth:`bind_config`, or ``None``."""
        return self._meta("kind")

    def config(self) -> dict | None:
        """The configuration bound to this database, or ``None`` if none yet."""
        text = self._meta("config")
        return None if text is None else json.loads(text)

    def bind_config(self, config: dict) -> None:
        """Bind the database to ``config`` (and this store's kind).

        The first call stores ``json.dumps(config, sort_keys=True)`` and the kind.
        Later calls (typically from a resumed run) check that both are the same
        and raise :class:`ConfigMismatchError` listing every differing key
        otherwise.  Values that JSON cannot encode are stored as ``str(value)``.
        """
        if not isinstance(config, dict):
            raise TypeError(f"config must be a dict, not {type(config).__name__}")
        text = json.dumps(config, sort_keys=True, default=str)
        requested = json.loads(text)
        conn = self._require_open()
        conn.execute("BEGIN IMMEDIATE")
        try:
            stored_kind = self._meta("kind")
            stored_text = self._meta("config")
            if stored_kind is not None and stored_kind != self.kind:
                raise ConfigMismatchError(
                    f"{self.path}: holds results of a {stored_kind!r} study, "
                    f"not of a {self.kind!r} study; {_MISMATCH_ADVICE}"
                )
            if stored_text is not None:
                stored = json.loads(stored_text)
                diffs = _config_differences(stored, requested)
                if diffs:
                    lines = "\n".join(f"  {d}" for d in diffs)
                    raise ConfigMismatchError(
                        f"{self.path}: {_MISMATCH_ADVICE}. Differing options:\n{lines}"
                    )
            if stored_kind is None:
                conn.execute("INSERT INTO meta (key, value) VALUES ('kind', ?)", (self.kind,))
            if stored_text is None:
                conn.execute("INSERT INTO meta (key, value) VALUES ('config', ?)", (text,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # ---------------------------------------------------------------- results
    def done_keys(self) -> set[tuple]:
        """The keys already stored (``(width, size, trial, iteration)`` for the pre-training study)."""
        key = ", ".join(_q(n) for n in self.key_columns)
        return {
            tuple(r) for r in self._require_open().execute(f"SELECT {key} FROM results")
        }

    def __len__(self) -> int:
        return self._require_open().execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def add(self, row: dict) -> bool:
        """Insert one result row and commit it at once.

        ``row`` must have every column of :data:`RESULT_COLUMNS` except
        ``created`` (filled with the current UTC time if absent); unknown or
        missing columns raise :class:`ValueError`.  ``losses`` may be a sequence
        of floats (stored as JSON) or JSON text.  Returns ``True`` if the row
        was inserted, ``False`` if a row with the same key exists already (the
        stored row is kept unchanged).
        """
        values = _encode_row(row, self.columns, self.key_columns)
        cols = ", ".join(_q(n) for n in self.column_names)
        marks = ", ".join("?" for _ in self.column_names)
        cur = self._require_open().execute(
            f"INSERT OR IGNORE INTO results ({cols}) VALUES ({marks})",
            [values[n] for n in self.column_names],
        )
        return cur.rowcount == 1

    def rows(self) -> list[dict]:
        """All rows ordered by key; ``losses`` decoded to a list of floats.

        REAL columns stored as NULL (SQLite stores NaN as NULL) come back as NaN.
        """
        cols = ", ".join(_q(n) for n in self.column_names)
        key = ", ".join(_q(n) for n in self.key_columns)
        out = []
        for rec in self._require_open().execute(
            f"SELECT {cols} FROM results ORDER BY {key}"
        ):
            row = dict(zip(self.column_names, rec))
            for name, typ in self.columns:
                if typ == "REAL" and row[name] is None:
                    row[name] = math.nan
            if "losses" in row:
                row["losses"] = _decode_losses(row["losses"])
            if "kept" in row and row["kept"]:
                row["kept"] = json.loads(row["kept"])
            out.append(row)
        return out

    def export_csv(self, path: str | os.PathLike) -> None:
        """Write all rows to a CSV file (header row; ``losses`` as JSON text).

        The file is written next to its destination and renamed into place, so
        a reader never sees a half-written file.
        """
        path = Path(path)
        cols = ", ".join(_q(n) for n in self.column_names)
        key = ", ".join(_q(n) for n in self.key_columns)
        records = self._require_open().execute(
            f"SELECT {cols} FROM results ORDER BY {key}"
        ).fetchall()
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(self.column_names)
            for rec in records:
                writer.writerow(["" if v is None else v for v in rec])
        os.replace(tmp, path)

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


# ----------------------------------------------------------------- helpers
_ABSENT = "<absent>"


def _config_differences(stored: dict, requested: dict) -> list[str]:
    diffs = []
    for key in sorted(set(stored) | set(requested), key=str):
        s = _canonical(stored[key]) if key in stored else _ABSENT
        r = _canonical(requested[key]) if key in requested else _ABSENT
        if s != r:
            diffs.append(f"{key}: stored={s}, requested={r}")
    return diffs


def _encode_row(row: dict, columns=RESULT_COLUMNS, key_columns=KEY_COLUMNS) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise TypeError(f"row must be a dict, not {type(row).__name__}")
    names = [n for n, _ in columns]
    unknown = sorted(set(row) - set(names), key=str)
    missing = [n for n in names if n not in row and n not in _OPTIONAL_COLUMNS]
    problems = []
    if missing:
        problems.append(f"missing columns {missing}")
    if unknown:
        problems.append(f"unknown columns {unknown}")
    if problems:
        raise ValueError("result row has " + " and ".join(problems))
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
        elif name in _JSON_COLUMNS:
            out[name] = None if value is None else (value if isinstance(value, str) else json.dumps(value))
        elif value is None:
            if name in key_columns:
                raise ValueError(f"result row: key column {name!r} is None")
            out[name] = None
        elif typ == "TEXT":
            out[name] = str(value)
        elif typ == "INTEGER":
            out[name] = _as_int(name, value)
        else:  # REAL
            try:
                out[name] = float(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"result row: {name}={value!r} is not a number") from exc
    return out


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    try:
        as_float = float(value)
        as_int = int(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"result row: {name}={value!r} is not an integer") from exc
    if as_float != as_int:
        raise ValueError(f"result row: {name}={value!r} is not an integer")
    return as_int


def _encode_losses(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        text = value.decode() if isinstance(value, bytes) else value
        try:
            decoded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"result row: losses {text!r} is not JSON") from exc
        if not isinstance(decoded, list):
            raise ValueError(f"result row: losses {text!r} is not a JSON list")
        value = decoded
    if hasattr(value, "tolist"):  # numpy array / torch tensor
        value = value.tolist()
    try:
        return json.dumps([float(x) for x in _iter(value)])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"result row: losses must be a list of floats ({exc})") from exc


def _iter(value: Any) -> Iterable:
    if isinstance(value, dict):
        raise TypeError("a dict is not a list")
    return iter(value)


def _decode_losses(text: str | None) -> list[float] | None:
    if text is None or text == "":
        return None
    return [float(x) for x in json.loads(text)]
