"""Tests of greedyprune.storage (SQLite results store)."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from greedyprune.studies import store as storage  # noqa: E402
from greedyprune.studies.pretraining import SCHEMA  # noqa: E402

STORAGE_PY = Path(storage.__file__)
ConfigMismatchError = storage.ConfigMismatchError
RESULT_COLUMNS = SCHEMA.all_columns()
KEY_COLUMNS = SCHEMA.key


def ResultsStore(path, kind="pretraining"):
    """The pre-training study's table, under another kind name if asked."""
    schema = SCHEMA if kind == SCHEMA.kind else storage.Schema(kind, SCHEMA.columns, SCHEMA.key, SCHEMA.json_columns)
    return storage.ResultsStore(path, schema)


def make_row(width=8, size=100, trial=0, iteration=0, **over):
    row = dict(
        width=width, size=size, trial=trial, iteration=iteration,
        pruned_accuracy=0.75, pruned_loss=0.61, dense_accuracy=0.9, dense_loss=0.3,
        distinct=3, k=4, prune_seconds=0.012, losses=[1.5, 0.9, 0.7, 0.61], prune_to="steps", steps=4,
        reached=1, parameterization="standard", direct_width=50, direct_accuracy=0.7, direct_loss=0.65,
        direct_b_iterations=20, direct_b_accuracy=0.8, direct_b_loss=0.5,
    )
    row.update(over)
    return row


def test_columns_constants():
    names = [n for n, _ in RESULT_COLUMNS]
    assert tuple(names[:4]) == KEY_COLUMNS == ("width", "size", "trial", "iteration")
    assert set(names) == {
        "width", "size", "trial", "iteration", "pruned_accuracy", "pruned_loss",
        "dense_accuracy", "dense_loss", "distinct", "k", "prune_seconds", "losses", "created",
        "prune_to", "steps", "reached", "parameterization", "direct_width", "direct_accuracy", "direct_loss",
        "direct_b_iterations", "direct_b_accuracy", "direct_b_loss",
    }
    assert dict(RESULT_COLUMNS)["losses"] == "TEXT"


def test_round_trip(tmp_path):
    path = tmp_path / "out" / "results.sqlite"  # parent directory created
    rows_in = [
        make_row(width=w, size=s, trial=t, iteration=i, pruned_accuracy=0.1 * i + 0.01 * t,
                 losses=[float(i), 0.5])
        for w in (16, 8) for s in (200, 100) for t in (1, 0) for i in (10, 0)
    ]
    with ResultsStore(path) as store:
        for r in rows_in:
            assert store.add(r) is True
        assert len(store) == len(rows_in)
    with ResultsStore(path) as store:
        out = store.rows()
        keys = store.done_keys()
    assert [tuple(r[c] for c in KEY_COLUMNS) for r in out] == sorted(
        tuple(r[c] for c in KEY_COLUMNS) for r in rows_in)
    assert keys == {tuple(r[c] for c in KEY_COLUMNS) for r in rows_in}
    by_key = {tuple(r[c] for c in KEY_COLUMNS): r for r in rows_in}
    for r in out:
        src = by_key[tuple(r[c] for c in KEY_COLUMNS)]
        for name in src:
            assert r[name] == src[name], name
        assert isinstance(r["losses"], list) and all(isinstance(x, float) for x in r["losses"])
        assert isinstance(r["created"], str) and r["created"][:2] == "20"
        assert isinstance(r["width"], int) and isinstance(r["distinct"], int)


def test_numpy_values_nan_and_losses_forms(tmp_path):
    with ResultsStore(tmp_path / "r.sqlite") as store:
        assert store.add(make_row(width=np.int64(4), size=np.int32(50), trial=np.int64(0),
                                  iteration=np.int64(5), pruned_loss=float("nan"),
                                  pruned_accuracy=np.float32(0.5), losses=np.array([1.0, 2.0]),
                                  created="2024-01-01T00:00:00"))
        assert store.add(make_row(iteration=6, losses="[3.0, 4.5]"))
        r5, r6 = store.rows()
    assert (r5["width"], r5["size"], r5["iteration"]) == (4, 50, 5)
    assert math.isnan(r5["pruned_loss"])
    assert r5["pruned_accuracy"] == 0.5
    assert r5["losses"] == [1.0, 2.0]
    assert r5["created"] == "2024-01-01T00:00:00"
    assert r6["losses"] == [3.0, 4.5]


def test_duplicate_key_not_added(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultsStore(path) as store:
        assert store.add(make_row(pruned_accuracy=0.5)) is True
        assert store.add(make_row(pruned_accuracy=0.9)) is False
        assert store.add(make_row(iteration=1)) is True
    with ResultsStore(path) as store:
        assert store.add(make_row(pruned_accuracy=0.1)) is False
        rows = store.rows()
    assert len(rows) == 2
    assert [r["iteration"] for r in rows] == [0, 1]
    assert rows[0]["pruned_accuracy"] == 0.5  # first row kept unchanged
    con = sqlite3.connect(path)
    try:
        counts = con.execute(
            "SELECT COUNT(*) FROM results GROUP BY width, size, trial, iteration").fetchall()
    finally:
        con.close()
    assert counts == [(1,), (1,)]


def test_missing_and_unknown_columns(tmp_path):
    with ResultsStore(tmp_path / "r.sqlite") as store:
        row = make_row()
        del row["dense_loss"]
        with pytest.raises(ValueError, match="dense_loss"):
            store.add(row)
        with pytest.raises(ValueError, match="bogus"):
            store.add(make_row(bogus=1))
        with pytest.raises(ValueError, match="iteration"):
            store.add(make_row(iteration=1.5))
        assert store.rows() == []


def test_bind_config_and_mismatch(tmp_path):
    path = tmp_path / "r.sqlite"
    config = {"widths": [8, 16], "k": 4, "lr": 0.01, "seed": 0}
    with ResultsStore(path) as store:
        assert store.config() is None
        store.bind_config(config)
        assert store.config() == config
        store.bind_config(dict(config))  # same config again: fine
        store.add(make_row())
    with ResultsStore(path) as store:
        store.bind_config({"seed": 0, "lr": 0.01, "k": 4, "widths": [8, 16]})  # key order irrelevant
        with pytest.raises(ConfigMismatchError) as info:
            store.bind_config({"widths": [8, 16], "k": 5, "lr": 0.01, "seed": 0, "extra": True})
        msg = str(info.value)
        assert "k: stored=4, requested=5" in msg
        assert "extra" in msg
        assert "widths" not in msg and "lr" not in msg
        assert "use a different --out directory, or the same options to resume" in msg
        assert isinstance(info.value, ValueError)
        assert store.config() == config  # unchanged
        assert len(store.rows()) == 1


def test_stored_config_is_sorted_json(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultsStore(path) as store:
        store.bind_config({"b": 1, "a": [1, 2]})
    con = sqlite3.connect(path)
    try:
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
    finally:
        con.close()
    assert meta["config"] == json.dumps({"b": 1, "a": [1, 2]}, sort_keys=True)
    assert meta["kind"] == "pretraining"


def test_other_kind_rejected(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultsStore(path, kind="pretraining") as store:
        store.bind_config({"k": 4})
    with pytest.raises(ConfigMismatchError, match="pretraining"):
        ResultsStore(path, kind="baseline")  # refused when opened, before anything is written


@pytest.mark.parametrize("content", ["random", "other_sqlite", "text"])
def test_non_greedyprune_file_rejected(tmp_path, content):
    path = tmp_path / f"{content}.db"
    if content == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 8192, dtype=np.uint8).tobytes())
    elif content == "text":
        path.write_text("width,size\n1,2\n" * 100)
    else:
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE results (x INTEGER)")
        con.execute("CREATE TABLE other (y TEXT)")
        con.commit()
        con.close()
    before = path.read_bytes()
    with pytest.raises(ValueError) as info:
        ResultsStore(path)
    assert str(path) in str(info.value)
    assert not isinstance(info.value, ConfigMismatchError)
    assert path.read_bytes() == before  # untouched


def test_empty_file_becomes_store(tmp_path):
    path = tmp_path / "empty.sqlite"
    path.write_bytes(b"")
    with ResultsStore(path) as store:
        assert store.add(make_row())
    with ResultsStore(path) as store:
        assert len(store.rows()) == 1


def test_export_csv(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultsStore(path) as store:
        for i in range(5):
            store.add(make_row(iteration=i * 10, losses=[0.5, 0.25 * i]))
        csv_path = tmp_path / "results.csv"
        store.export_csv(csv_path)
    with open(csv_path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        body = list(reader)
    assert header == [n for n, _ in RESULT_COLUMNS]
    assert len(body) == 5
    recs = [dict(zip(header, r)) for r in body]
    assert [int(r["iteration"]) for r in recs] == [0, 10, 20, 30, 40]
    assert json.loads(recs[2]["losses"]) == [0.5, 0.5]
    assert float(recs[0]["pruned_accuracy"]) == 0.75


def test_close_and_context_manager(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    with store as s:
        assert s is store
        s.add(make_row())
    assert store.closed
    store.close()  # idempotent
    with pytest.raises(ValueError):
        store.rows()


_CHILD = textwrap.dedent(
    """
    import importlib.util, sys, time
    spec = importlib.util.spec_from_file_location("_gp_storage_child", sys.argv[1])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    cols = (("width", "INTEGER"), ("size", "INTEGER"), ("trial", "INTEGER"), ("iteration", "INTEGER"),
            ("pruned_accuracy", "REAL"), ("pruned_loss", "REAL"), ("dense_accuracy", "REAL"), ("dense_loss", "REAL"),
            ("distinct", "INTEGER"), ("k", "INTEGER"), ("prune_seconds", "REAL"), ("losses", "TEXT"))
    schema = mod.Schema("pretraining", cols, ("width", "size", "trial", "iteration"), ("losses",))
    store = mod.ResultsStore(sys.argv[2], schema)
    store.bind_config({"k": 4})
    n = int(sys.argv[3])
    for i in range(n):
        row = dict(width=8, size=100, trial=0, iteration=i, pruned_accuracy=0.5,
                   pruned_loss=0.5, dense_accuracy=0.9, dense_loss=0.1, distinct=3, k=4,
                   prune_seconds=0.0, losses=[0.1] * 50)
        store.add(row)
        print("added", i, flush=True)
    print("sleeping", flush=True)
    time.sleep(60)
    """
)


# the child's table: the columns of the pre-training study before the direct nets were added
CHILD_SCHEMA = storage.Schema("pretraining", tuple((n, t) for n, t in SCHEMA.columns if n in (
    "width", "size", "trial", "iteration", "pruned_accuracy", "pruned_loss", "dense_accuracy", "dense_loss",
    "distinct", "k", "prune_seconds", "losses")), SCHEMA.key, ("losses",))


def _child_row(iteration):
    return dict(width=8, size=100, trial=0, iteration=iteration, pruned_accuracy=0.5, pruned_loss=0.5,
                dense_accuracy=0.9, dense_loss=0.1, distinct=3, k=4, prune_seconds=0.0, losses=[0.1] * 50)


def _run_and_kill(tmp_path, n_rows, kill_after):
    """Start a child that adds n_rows rows (reporting each), SIGKILL it after
    `kill_after` reports, and return the iterations it reported as added."""
    db = tmp_path / "killed.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(STORAGE_PY), str(db), str(n_rows)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    reported = []
    try:
        while len(reported) < kill_after:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"child ended early: {proc.stderr.read()}")
            if line.startswith("added"):
                reported.append(int(line.split()[1]))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return db, reported


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_row_survives_sigkill_while_idle(tmp_path):
    db, reported = _run_and_kill(tmp_path, n_rows=1, kill_after=1)
    assert reported == [0]
    with storage.ResultsStore(db, CHILD_SCHEMA) as store:
        assert store.config() == {"k": 4}
        assert store.done_keys() == {(8, 100, 0, 0)}
        assert store.rows()[0]["losses"] == [0.1] * 50


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_rows_survive_sigkill_mid_stream(tmp_path):
    # killed while still adding rows: every row it reported is there, the file
    # is intact, and adding more (resuming) works
    db, reported = _run_and_kill(tmp_path, n_rows=100_000, kill_after=30)
    with storage.ResultsStore(db, CHILD_SCHEMA) as store:
        store.bind_config({"k": 4})
        done = store.done_keys()
        assert {(8, 100, 0, i) for i in reported} <= done
        assert store.add(_child_row(10**6))
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        con.close()


def test_merge_joins_shards_and_refuses_conflicts(tmp_path):
    a, b, c = (tmp_path / f"{x}.sqlite" for x in "abc")
    for path, iterations in ((a, (0, 1)), (b, (1, 2))):
        with ResultsStore(path) as store:
            store.bind_config({"k": 4})
            store.bind_shard((0 if path == a else 1, 2))
            for i in iterations:
                store.add(make_row(iteration=i))
    added, kept = storage.merge_results(tmp_path / "m.sqlite", [a, b])
    assert (added, kept) == (3, 1)  # iteration 1 is in both, with the same values
    with storage.ResultsStore(tmp_path / "m.sqlite") as merged:
        assert sorted(k[3] for k in merged.done_keys()) == [0, 1, 2] and merged.config() == {"k": 4}
    with ResultsStore(c) as store:
        store.bind_config({"k": 4})
        store.add(make_row(iteration=1, pruned_accuracy=0.5))
    with pytest.raises(ValueError, match="differs .* in 'pruned_accuracy'"):
        storage.merge_results(tmp_path / "n.sqlite", [a, c])
    with ResultsStore(tmp_path / "other.sqlite") as store:
        store.bind_config({"k": 5})
    with pytest.raises(ConfigMismatchError, match="different configurations"):
        storage.merge_results(tmp_path / "o.sqlite", [a, tmp_path / "other.sqlite"])
