"""Every command and option against hostile values (issue 21 item 7): missing, garbage, huge, negative, unicode.

Each case must end with exit status 2 and one line ``greedyprune: error: ...`` on stderr - never a traceback -
and, over the whole sweep, no file that existed in the working directory may change (hashed before and after)
nor any new one appear. Option values are refused while the command line is parsed; the remaining cases fail on
their first check (a missing file, an unknown data set, a width that cannot fit), so nothing is trained.
"""
import argparse
import hashlib

import pytest
import torch

from greedyprune.cli import build_parser, main

torch.set_num_threads(1)

HOSTILE = {"missing": None, "empty": "", "garbage": "garbage", "negative": "-5", "huge": "1" + "0" * 30,
           "nan": "nan", "inf": "inf", "overflow": "1e400", "unicode": "ünï©ødé✓"}
#: Option types that take any text (names, paths), so no value of them fails while parsing.
FREE_TEXT = {"str", "Path", "name_list"}
# a command line per command that parses, so that the option under test is the only bad one
BASE = {
    ("study", "pretraining"): [], ("study", "appendix-c"): [], ("study", "cnn"): [], ("study", "rethinking"): [],
    ("train",): ["--model", "resnet8", "--iterations", "1"], ("prune",): ["ck.pt"], ("plot",): ["d"],
    ("export",): ["d"], ("merge",): ["o", "s"], ("theory", "threshold"): ["d"], ("advise",): [],
    ("prune-transformer",): [], ("prune-llm",): [],
}


def _commands(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, prefix + (name,))
    if prefix in BASE:
        yield prefix, parser


def _option_cases():
    cases = []
    for command, parser in _commands(build_parser()):
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0 or isinstance(action, argparse._HelpAction):
                continue
            kind = getattr(action.type, "__qualname__", getattr(action.type, "__name__", "str")).split(".")[0]
            for label, value in HOSTILE.items():
                if value is not None and action.choices is None and kind in FREE_TEXT:
                    continue  # any text is a valid value (a name, a path): checked by the command, below
                if label == "huge" and kind in ("number", "float_list"):
                    continue  # 1e30 is a finite number (1e400, too large for a float, is swept)
                cases.append(pytest.param(command, action.option_strings[-1], value,
                                          id=f"{'-'.join(command)}{action.option_strings[-1]}={label}"))
    return cases


OPTION_CASES = _option_cases()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working directory holding files a careless command could overwrite: a checkpoint, a study's results,
    a text file with a unicode name."""
    from greedyprune.models import get_model
    from greedyprune.training.checkpoints import save_model

    root = tmp_path_factory.mktemp("cwd")
    save_model(root / "ck.pt", get_model("resnet8", width=4, in_channels=1), name="resnet8",
               model_kwargs={"width": 4, "in_channels": 1})
    (root / "notes ünï.txt").write_text("mine")
    (root / "d").mkdir()
    (root / "d" / "results.csv").write_text("width,size\n1,2\n")
    return root


def _snapshot(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _one_line_error(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert exc.value.code == 2, (argv, err)
    assert len(lines) == 1 and lines[0].startswith("greedyprune: error:") and "Traceback" not in err, (argv, err)
    return lines[0]


@pytest.fixture(scope="module")
def untouched(workdir):
    before = _snapshot(workdir)
    yield workdir
    assert _snapshot(workdir) == before  # nothing changed, nothing new


#: What each command starts once its checks pass: replaced, so that an accepted value fails the test at once.
STARTS = [("greedyprune.studies.pretraining", "run_pretraining_study"), ("greedyprune.studies.cnn", "run_cnn_study"),
          ("greedyprune.studies.rethinking", "run_rethinking"), ("greedyprune.studies.appendix_c", "run_appendix_c"),
          ("greedyprune.training.checkpoints", "train_with_checkpoints"), ("greedyprune.channels", "prune_model"),
          ("greedyprune.studies.advisor", "advise"), ("greedyprune.studies.advisor", "compare_with_study"),
          ("greedyprune.studies.theory", "run_threshold")]


@pytest.fixture()
def no_work(monkeypatch):
    import importlib

    def started(*args, **kwargs):
        raise AssertionError("the command started its work: the hostile value was accepted")

    for module, name in STARTS:
        monkeypatch.setattr(importlib.import_module(module), name, started)


@pytest.mark.parametrize("command, option, value", OPTION_CASES)
def test_every_option_refuses_hostile_values_on_one_line(command, option, value, untouched, no_work, monkeypatch,
                                                         capsys):
    monkeypatch.chdir(untouched)
    given = [option] if value is None else [f"{option}={value}"]  # --opt=-5: else -5 is read as an option
    # refused by the parser, or (ranges a study's config checks) by the command before it starts any work
    _one_line_error(capsys, [*command, *BASE[command], *given])


RUNTIME_CASES = {  # values that parse, refused by the command's first check (no training starts)
    "train-data": ["train", "--model", "resnet8", "--iterations", "1", "--data", "ünï©ødé"],
    "train-model": ["train", "--model", "ünï©ødé", "--iterations", "1"],
    "train-missing-model": ["train", "--iterations", "1"],
    "train-huge-width": ["train", "--model", "resnet8", "--iterations", "1", "--data", "digits", "--model-arg",
                         "width=1000000000"],
    "train-garbage-model-arg": ["train", "--model", "resnet8", "--iterations", "1", "--model-arg", "depth=3"],
    "prune-missing": ["prune", "ünï©ødé.pt", "--data", "digits"],
    "prune-garbage-file": ["prune", "notes ünï.txt", "--data", "digits"],
    "prune-out-is-input": ["prune", "ck.pt", "--out", "ck.pt", "--data", "digits"],
    "prune-out-not-pruned": ["prune", "ck.pt", "--out", "notes ünï.txt", "--data", "digits"],
    "prune-no-checkpoint": ["prune"],
    "study-data": ["study", "pretraining", "--data", "ünï©ødé", "--no-progress"],
    "study-huge-width": ["study", "pretraining", "--data", "digits", "--widths", "1000000000", "--sizes", "100",
                         "--no-progress"],
    "study-sizes": ["study", "pretraining", "--data", "digits", "--sizes", "100000", "--no-progress"],
    "cnn-data": ["study", "cnn", "--data", "ünï©ødé", "--no-progress"],
    "rethinking-model": ["study", "rethinking", "--model", "ünï©ødé", "--no-progress"],
    "appendix-c-preset": ["study", "appendix-c", "--preset", "ünï"],
    "plot-missing": ["plot", "ünï©ødé"],
    "plot-no-results": ["plot", "d"],
    "export-missing": ["export", "ünï©ødé"],
    "export-over-a-file": ["export", "d", "--csv", "notes ünï.txt"],
    "merge-missing": ["merge", "out-ünï", "ünï©ødé"],
    "merge-no-shards": ["merge", "out-ünï"],
    "theory-missing": ["theory", "threshold", "ünï©ødé"],
    "theory-no-what": ["theory"],
    "theory-empty": ["theory", "threshold", "d"],
    "advise-data": ["advise", "--data", "ünï©ødé", "--no-progress"],
    "advise-huge-width": ["advise", "--data", "digits", "--width", "1000000000", "--no-progress"],
    "advise-compare-missing": ["advise", "--compare", "ünï©ødé", "--no-progress"],
    "prune-transformer-model": ["prune-transformer", "--model", "ünï©ødé", "--no-progress"],
    "prune-llm-model": ["prune-llm", "--model", "ünï©ødé", "--no-progress"],
    "no-command": [],
    "unknown-command": ["ünï©ødé"],
}


@pytest.mark.parametrize("case", sorted(RUNTIME_CASES))
def test_every_command_refuses_hostile_arguments_on_one_line(case, untouched, monkeypatch, capsys):
    monkeypatch.chdir(untouched)
    _one_line_error(capsys, RUNTIME_CASES[case])


def test_the_sweep_covers_every_command():
    commands = {command for command, _ in _commands(build_parser())}
    assert commands == set(BASE)
    covered = {command for command, _, _ in (case.values for case in OPTION_CASES)}
    covered |= {tuple(argv[:2]) if argv[0] in ("study", "theory") else tuple(argv[:1])
                for argv in RUNTIME_CASES.values() if argv and argv[0] != "ünï©ødé"}
    assert covered >= set(BASE)
    assert {argv[0] for argv in RUNTIME_CASES.values() if argv} >= {"train", "prune", "study", "plot", "export",
                                                                   "merge", "theory", "advise", "prune-transformer",
                                                                   "prune-llm"}
