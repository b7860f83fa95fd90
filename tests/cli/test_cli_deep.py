"""Command line: greedyprune prune, study cnn (resume), study rethinking."""
import pytest
import torch

from greedyprune.channels import load_pruned
from greedyprune.cli import main
from greedyprune.models import get_model
from greedyprune.studies.store import ResultsStore

TINY = {"in_channels": 1, "num_classes": 10, "width": 4}  # conftest.TINY_RESNET8, the `checkpoint` fixture's model


def _fails(capsys, argv, *needles):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err
    return err


def test_prune_writes_a_smaller_model_that_loads(checkpoint, tmp_path, capsys):
    out = tmp_path / "small.pt"
    assert main(["prune", str(checkpoint), "--model", "resnet8", "--size", "200", "--keep-ratio", "0.5",
                 "--candidates", "2", "--batch-size", "32", "--no-progress", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "mult-adds" in text and "latency" in text
    for kwargs in ({}, {"model": get_model("resnet8", **TINY)}):
        model, info = load_pruned(out, **kwargs)
        assert model.eval()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
        assert sum(p.numel() for p in model.parameters()) < sum(
            p.numel() for p in get_model("resnet8", **TINY).parameters())


@pytest.mark.slow
def test_prune_with_two_workers_keeps_the_same_channels(checkpoint, tmp_path, capsys):
    common = [str(checkpoint), "--size", "200", "--keep-ratio", "0.5", "--candidates", "3", "--batch-size", "32",
              "--no-progress", "--evaluator", "fast"]
    assert main(["prune"] + common + ["--out", str(tmp_path / "one.pt")]) == 0
    assert main(["prune"] + common + ["--workers", "2", "--out", str(tmp_path / "two.pt")]) == 0
    assert "2 worker processes" in capsys.readouterr().out
    one, two = load_pruned(tmp_path / "one.pt")[1], load_pruned(tmp_path / "two.pt")[1]
    assert one["kept"] == two["kept"]


def test_prune_bad_input(checkpoint, capsys):
    _fails(capsys, ["prune", str(checkpoint), "--model", "resnet20", "--size", "100"], "resnet8", "resnet20")
    for bad in ("1.5", "1", "0", "-0.1"):
        _fails(capsys, ["prune", str(checkpoint), "--size", "100", "--flops-target", bad], "flops-target")
    _fails(capsys, ["prune", str(checkpoint.with_name("missing.pt"))], "missing.pt")


CNN_ARGS = ["study", "cnn", "--sizes", "200", "--iterations", "20", "--checkpoint-every", "10", "--candidates", "2",
            "--finetune-iterations", "2", "--baselines", "l1,random", "--models", "resnet8", "--epsilon", "0.05",
            "--trials", "1",
            "--no-progress"]


def _rows(path):
    with ResultsStore(path / "results.sqlite") as store:
        return store.rows()


@pytest.mark.slow
def test_study_cnn_resumes_after_an_interruption(tmp_path, monkeypatch, capsys):
    import greedyprune.channels as deep

    full, part = tmp_path / "full", tmp_path / "part"
    assert main(CNN_ARGS + ["--out", str(full)]) == 0
    expected = _rows(full)
    assert len(expected) == 3 + 2  # gfs at iterations 0, 10, 20; baselines at the last checkpoint
    assert "dense (final)" in capsys.readouterr().out

    real, calls = deep.prune_model, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(deep, "prune_model", interrupted)
    assert main(CNN_ARGS + ["--out", str(part)]) == 130
    first = _rows(part)
    assert len(first) == 1  # the first checkpoint's row was kept
    monkeypatch.setattr(deep, "prune_model", real)
    assert main(CNN_ARGS + ["--out", str(part)]) == 0
    resumed = _rows(part)
    assert resumed[0]["created"] == first[0]["created"]  # not redone
    drop = ("created", "prune_seconds")
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed] == \
        [{k: v for k, v in r.items() if k not in drop} for r in expected]
    # another configuration in the same directory is refused
    _fails(capsys, CNN_ARGS[:-1] + ["--seed", "3", "--no-progress", "--out", str(part)], "seed")
    _plot_and_export_read_the_kind_from_the_database(full, tmp_path, capsys, "cnn_study.png")


def _plot_and_export_read_the_kind_from_the_database(out, tmp_path, capsys, figure=None):
    """`greedyprune plot` / `export` work on any study's directory (issue 10), with its own columns."""
    import csv

    with ResultsStore(out / "results.sqlite") as store:
        columns, rows = list(store.column_names), store.rows()
    capsys.readouterr()
    if figure:
        (out / figure).unlink(missing_ok=True)
    assert main(["plot", str(out)]) == 0
    assert capsys.readouterr().out.strip()
    if figure:
        assert (out / figure).read_bytes()[:4] == b"\x89PNG"
    target = tmp_path / f"{out.name}.csv"
    assert main(["export", str(out), "--csv", str(target)]) == 0
    with open(target, newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == columns and len(table) == 1 + len(rows)
    assert [r[columns.index("created")] for r in table[1:]] == [r["created"] for r in rows]


RETHINKING_ARGS = ["study", "rethinking", "--size", "200", "--iterations", "10", "--finetune-iterations", "2",
                   "--seeds", "0,1", "--flops-target", "0.6", "--model", "resnet8", "--no-progress",
                   "--prune-batch-size", "16", "--candidates", "2", "--test-size", "200", "--batch-size", "32"]


@pytest.mark.slow
def test_study_rethinking_table_and_resume(tmp_path, monkeypatch, capsys):
    import greedyprune.channels as deep
    from greedyprune.training import retrain as retrain_module

    full, part = tmp_path / "full", tmp_path / "part"
    assert main(RETHINKING_ARGS + ["--out", str(full)]) == 0
    out = capsys.readouterr().out
    for mode in ("dense", "finetune", "scratch-e", "scratch-b"):
        assert mode in out
    rows = _rows(full)
    scratch_b = [r for r in rows if r["mode"] == "scratch-b"]
    dense = [r for r in rows if r["mode"] == "dense"][0]
    # Scratch-B trains for the dense iterations x dense MACs / pruned MACs (closed form)
    assert all(r["iterations"] == round(10 * dense["macs"] / r["macs"]) for r in scratch_b)
    assert len(rows) == 1 + 3 * 2

    # interrupted during the third retraining: the dense row and two retrained rows are kept
    real_retrain, calls = retrain_module.retrain, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_retrain(*args, **kwargs)

    monkeypatch.setattr(retrain_module, "retrain", interrupted)
    assert main(RETHINKING_ARGS + ["--out", str(part)]) == 130
    first = _rows(part)
    assert [(r["mode"], r["seed"]) for r in first] == [("dense", 0), ("finetune", 0), ("scratch-e", 0)]
    pruned_file = (part / "pruned.pt").stat().st_mtime_ns

    # resumed: nothing is pruned again and nothing done is redone; the rows are those of the uninterrupted run
    def no_pruning(*args, **kwargs):
        raise AssertionError("the resumed study pruned again")

    monkeypatch.setattr(retrain_module, "retrain", real_retrain)
    monkeypatch.setattr(deep, "prune_model", no_pruning)
    calls.clear()
    monkeypatch.setattr(retrain_module, "retrain", lambda *a, **k: calls.append(1) or real_retrain(*a, **k))
    assert main(RETHINKING_ARGS + ["--out", str(part)]) == 0
    assert len(calls) == 3 * 2 - 2  # only the retrainings that were not done
    resumed = _rows(part)
    created = {(r["mode"], r["seed"]): r["created"] for r in resumed}
    assert [created[(r["mode"], r["seed"])] for r in first] == [r["created"] for r in first]
    assert (part / "pruned.pt").stat().st_mtime_ns == pruned_file
    drop = ("created", "seconds")
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed] == \
        [{k: v for k, v in r.items() if k not in drop} for r in rows]
    _plot_and_export_read_the_kind_from_the_database(full, tmp_path / "csv", capsys)
