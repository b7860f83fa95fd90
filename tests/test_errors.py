"""One exception hierarchy (issue 20 part 4): every error greedyprune raises on purpose is a GreedyPruneError,
each keeps the built-in base it had (``except ValueError`` callers are unaffected), and the command line prints
one line for any of them."""
import ast
import pickle
from pathlib import Path

import pytest
import torch

import greedyprune
from greedyprune.channels.groups import GroupDiscoveryTimeout, UnsupportedLayerError
from greedyprune.cli import main
from greedyprune.cli.common import UsageError
from greedyprune.errors import GreedyPruneError, InvalidOptionError, InvalidTypeError
from greedyprune.fileio import IntegrityError, RunLockedError, UnsafeFileError
from greedyprune.distributed import DistributedSelectionError, WorkerError
from greedyprune.studies.store import ConfigMismatchError, DamagedDatabaseError, ResultsNotWritableError
from greedyprune.transformers.decoder import HalfPrecisionError
from greedyprune.transformers.support import UnsupportedModelError

PACKAGE = Path(greedyprune.__file__).parent

#: each of the package's error classes and the built-in base it had before the hierarchy
BASES = {InvalidOptionError: ValueError, InvalidTypeError: TypeError, HalfPrecisionError: ValueError,
         IntegrityError: ValueError, UnsafeFileError: ValueError, UnsupportedLayerError: ValueError,
         GroupDiscoveryTimeout: ValueError,
         ConfigMismatchError: ValueError, DamagedDatabaseError: ValueError, UnsupportedModelError: TypeError,
         RunLockedError: RuntimeError, DistributedSelectionError: RuntimeError, WorkerError: RuntimeError,
         ResultsNotWritableError: OSError, UsageError: Exception}



def _error_classes():
    """Every exception class defined in the package, found by reading its source."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and (node.name.endswith("Error") or node.name.endswith("Timeout")):
                found.append(node.name)
    return found


def test_every_error_class_is_a_greedyprune_error_and_keeps_its_base():
    # (store.py repeats the two base classes as stand-ins, for when it is loaded outside the package)
    assert set(_error_classes()) == {cls.__name__ for cls in BASES} | {"GreedyPruneError"}
    for cls, base in BASES.items():
        assert issubclass(cls, GreedyPruneError) and issubclass(cls, base), cls
        if cls is WorkerError:  # built from the failures of the workers, raised in the parent only
            assert "1 of 2 worker(s) failed" in str(cls({0: "died"}, {1: None}, 2))
            continue
        error = cls("a message")
        again = pickle.loads(pickle.dumps(error))  # errors travel between worker processes
        assert type(again) is cls and str(again) == str(error)


def test_every_invalid_option_error_is_a_value_error():
    assert issubclass(InvalidOptionError, ValueError) and issubclass(InvalidOptionError, GreedyPruneError)
    with pytest.raises(ValueError, match="k must be >= 1") as caught:
        greedyprune.greedy_forward_selection(torch.ones(3, 4), torch.ones(4), 0)
    assert type(caught.value) is InvalidOptionError
    try:
        greedyprune.get_model("no-such-model")
    except ValueError as exc:  # what callers wrote before the hierarchy still catches it
        assert type(exc) is InvalidOptionError
    else:
        raise AssertionError("get_model accepted an unknown name")


def test_no_plain_value_or_type_error_is_raised_by_the_package():
    plain = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            exc = node.exc.func if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) else None
            if isinstance(exc, ast.Name) and exc.id in ("ValueError", "TypeError"):
                plain.append(f"{rel}:{node.lineno} {exc.id}")
    assert not plain, f"raise InvalidOptionError / InvalidTypeError (greedyprune.errors) instead, at {plain}"


def test_a_wrong_type_is_an_invalid_type_error_and_the_cli_prints_it_on_one_line(tmp_path, capsys):
    with pytest.raises(TypeError, match="model must be an nn.Module") as caught:
        greedyprune.prune_model("not a model", (torch.ones(2, 3), torch.zeros(2, dtype=torch.long)), keep_ratio=0.5)
    assert type(caught.value) is InvalidTypeError and isinstance(caught.value, GreedyPruneError)
    with pytest.raises(TypeError, match="y must be a tensor of class labels"):
        greedyprune.prune_model(torch.nn.Linear(3, 2), (torch.ones(2, 3), [0, 1]), keep_ratio=0.5)


@pytest.mark.parametrize("error", [InvalidOptionError("the option is out of range"),
                                   InvalidTypeError("the option is out of range"),
                                   UsageError("the option is out of range"),
                                   RunLockedError("the option is out of range")])
def test_the_cli_prints_one_line_for_a_greedyprune_error(error, tmp_path, monkeypatch, capsys):
    from greedyprune.studies import store

    def fail(directory):  # raised from this test's code, not the package's: the class alone decides
        raise error

    monkeypatch.setattr(store, "open_results", fail)
    with pytest.raises(SystemExit) as exc:
        main(["export", str(tmp_path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.splitlines() == ["greedyprune: error: the option is out of range"], err


@pytest.mark.parametrize("plain", [ValueError, TypeError])
def test_the_cli_keeps_the_traceback_of_a_plain_value_or_type_error(plain, tmp_path, monkeypatch):
    from greedyprune.studies import store

    def fail(directory):
        raise plain("a bug, not a user's mistake")

    monkeypatch.setattr(store, "open_results", fail)
    with pytest.raises(plain, match="a bug"):
        main(["export", str(tmp_path)])
