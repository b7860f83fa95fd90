"""The pre-training study: rows, resume, determinism, refusal of a foreign directory, and
interruption by SIGINT / SIGKILL in a real subprocess."""
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from greedyprune.cli import main
from greedyprune.studies.pretraining import config_with, get_preset, run_pretraining_study
from greedyprune.studies.store import ConfigMismatchError

torch.set_num_threads(1)

TINY = dict(data="digits", widths=(20, 30), sizes=(200, 500), trials=2, iterations=40, eval_every=20, k=6, lr=1.0,
            reference="largest", prune_to="steps")
VOLATILE = ("prune_seconds", "created")


def tiny(**kw):
    return config_with(get_preset("quick"), **{**TINY, **kw})


def stable(rows):
    return [{k: v for k, v in row.items() if k not in VOLATILE} for row in rows]


def test_rows_resume_and_determinism(tmp_path):
    config = tiny()
    run = run_pretraining_study(config, tmp_path / "a", progress=False, log=lambda s: None)
    assert run.computed == 2 * 2 * 2 * 3 and run.skipped == 0
    keys = [(r["width"], r["size"], r["trial"], r["iteration"]) for r in run.rows]
    assert len(keys) == len(set(keys)) == 24
    assert {r["iteration"] for r in run.rows} == {0, 20, 40}
    for r in run.rows:
        assert 0 <= r["pruned_accuracy"] <= 1 and 1 <= r["distinct"] <= 6 and len(r["losses"]) == 6
        assert r["losses"][-1] == pytest.approx(r["pruned_loss"], rel=1e-4)  # selection loss = pruned net's loss
    assert (tmp_path / "a" / "results.csv").is_file()
    assert not list((tmp_path / "a" / "checkpoints").glob("*.pt"))  # finished runs leave no checkpoint

    again = run_pretraining_study(config, tmp_path / "a", progress=False, log=lambda s: None)
    assert again.computed == 0 and again.skipped == 24
    assert stable(again.rows) == stable(run.rows)

    other = run_pretraining_study(config, tmp_path / "b", progress=False, log=lambda s: None)
    assert stable(other.rows) == stable(run.rows)  # same seed, same numbers


def test_another_configuration_is_refused(tmp_path):
    run_pretraining_study(tiny(widths=(20,), sizes=(200,), trials=1), tmp_path, progress=False, log=lambda s: None)
    with pytest.raises(ConfigMismatchError, match="k: stored=6, requested=7"):
        run_pretraining_study(tiny(widths=(20,), sizes=(200,), trials=1, k=7), tmp_path, progress=False)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(sizes=(200, 5000)), "exceed the 1797 examples"),
        (dict(widths=(0,)), "each width must be >= 1"),
        (dict(eval_every=0), "eval_every must be >= 1"),
        (dict(loss="cross_entropy"), "unknown study loss"),
        (dict(k=50, replacement=False), "without replacement"),
    ],
)
def test_bad_configuration(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        run_pretraining_study(tiny(**overrides), tmp_path, progress=False)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        get_preset("huge")


def test_cli_errors_are_clear(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "pretraining", "--preset", "huge"])
    assert exit_info.value.code == 2 and "invalid choice: 'huge'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "pretraining", "--data", f"mnist:{tmp_path / 'nowhere'}", "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2 and "nowhere" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "pretraining", "--widths", "a,b"])
    assert exit_info.value.code == 2 and "comma-separated integers" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", str(tmp_path)])
    assert exit_info.value.code == 2 and "holds no study results" in capsys.readouterr().err


def test_cli_runs_plots_and_exports(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["study", "pretraining", "--data", "digits", "--widths", "20", "--sizes", "200,400", "--trials", "1",
            "--iterations", "20", "--eval-every", "10", "--k", "5", "--out", str(out), "--no-progress",
            "--reference", "largest"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "threshold" in printed and (out / "figure1.png").read_bytes()[:4] == b"\x89PNG"
    (out / "figure1.png").unlink()
    assert main(["plot", str(out)]) == 0 and (out / "figure1.png").is_file()
    assert main(["export", str(out), "--csv", str(tmp_path / "x.csv")]) == 0
    assert len((tmp_path / "x.csv").read_text().strip().splitlines()) == 1 + 2 * 3


def _count_rows(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


LONG = dict(data="digits", widths=(30,), sizes=(300, 600), trials=2, iterations=600, eval_every=20, k=8, lr=1.0,
            reference="largest", prune_to="steps", direct=False)
LONG_ARGS = ["--data", "digits", "--widths", "30", "--sizes", "300,600", "--trials", "2", "--iterations", "600",
             "--eval-every", "20", "--k", "8", "--lr", "1.0", "--no-progress", "--no-plot", "--threads", "1",
             "--reference", "largest", "--prune-to", "steps", "--no-direct"]
LONG_ROWS = 1 * 2 * 2 * 31


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_study_resumes_with_one_row_per_key(tmp_path, sig):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "greedyprune", "study", "pretraining", *LONG_ARGS, "--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    deadline = time.time() + 120
    while _count_rows(out / "results.sqlite") < 10 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    before = _count_rows(out / "results.sqlite")
    assert proc.poll() is None, f"the study ended before it could be interrupted: {proc.communicate()}"
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    interrupted_at = _count_rows(out / "results.sqlite")
    assert before <= interrupted_at < LONG_ROWS
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "run the same command again to resume" in err.lower()
    else:
        assert proc.returncode == -signal.SIGKILL

    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout + done.stderr
    with sqlite3.connect(out / "results.sqlite") as conn:
        keys = conn.execute("SELECT width, size, trial, iteration FROM results").fetchall()
    assert len(keys) == LONG_ROWS and len(set(keys)) == LONG_ROWS

    # the interrupted-and-resumed rows are the rows of an uninterrupted run
    reference = run_pretraining_study(config_with(get_preset("quick"), **LONG), tmp_path / "ref", progress=False,
                                      log=lambda s: None)
    from greedyprune.studies.store import ResultsStore

    with ResultsStore(out / "results.sqlite") as store:
        resumed = store.rows()
    assert stable(resumed) == stable(reference.rows)
