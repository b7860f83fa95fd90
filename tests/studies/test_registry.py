"""The studies' registry (issue 20 part 2): ``greedyprune study NAME`` and the reports of ``plot`` / ``merge`` are
generated from it; a registered study is a sub-command and reports its results kind, an unregistered name is
refused naming the choices."""
import argparse

import pytest

from greedyprune import studies
from greedyprune.cli import build_parser, main
from greedyprune.errors import InvalidOptionError
from greedyprune.studies.registry import STUDIES, Study, get_study, register_study, report, study_names
from greedyprune.studies.store import ResultsStore, Schema


def _study_commands():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["study"]
    return next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_the_builtin_studies_are_the_study_commands_and_reports():
    assert study_names() == ("pretraining", "appendix-c", "cnn", "rethinking")
    assert tuple(_study_commands()) == study_names()
    assert studies.REPORTS == {"pretraining": "pretraining_report", "cnn": "cnn_report", "rethinking": "rethinking"}
    assert studies.report is report
    assert get_study("appendix-c").kind is None


SCHEMA = Schema(kind="toy-kind", columns=(("i", "INTEGER"), ("value", "REAL")), key=("i",))


class Toy(Study):
    name, kind = "toy", "toy-kind"
    help = "a toy study"
    description = "Writes N rows to OUT/results.sqlite and reports their sum."

    def add_arguments(self, parser, cli):
        parser.add_argument("--n", type=cli.positive_int, default=2)
        parser.add_argument("--out", required=True)
        cli.add_run_options(parser, device=False)

    def main(self, args, cli):
        with ResultsStore(f"{args.out}/results.sqlite", SCHEMA) as store:
            for i in range(args.n):
                store.add({"i": i, "value": i / 2})
            rows = store.rows()
        print(report(self.kind, rows, args.out, draw=False))
        return 0

    def report(self, rows, out_dir, draw=True):
        return f"toy: {len(rows)} rows, sum {sum(r['value'] for r in rows):g}"


@pytest.fixture()
def toy():
    register_study(Toy)
    yield STUDIES["toy"]
    del STUDIES["toy"]


def test_a_registered_study_is_a_command_and_its_kind_is_reported(toy, tmp_path, capsys):
    assert "toy" in _study_commands() and study_names()[-1] == "toy"
    out = tmp_path / "toy"
    assert main(["study", "toy", "--n", "3", "--out", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().out == "toy: 3 rows, sum 1.5\n"
    assert main(["plot", str(out)]) == 0  # the report dispatch finds the toy's kind in its database
    assert capsys.readouterr().out == "toy: 3 rows, sum 1.5\n"
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "toy", "--n", "0", "--out", str(out)])
    assert exit_info.value.code == 2 and "argument --n: expected an integer >= 1" in capsys.readouterr().err


def test_unregistered_studies_and_kinds_are_refused_naming_the_choices(tmp_path, capsys):
    with pytest.raises(InvalidOptionError, match=r"unknown study 'toy'; expected one of \('pretraining', "
                                                 r"'appendix-c', 'cnn', 'rethinking'\)"):
        get_study("toy")
    with pytest.raises(InvalidOptionError, match=r"no report for study kind 'toy-kind'; known kinds: "
                                                 r"\['cnn', 'pretraining', 'rethinking'\]"):
        report("toy-kind", [{"i": 0}], tmp_path)
    with pytest.raises(InvalidOptionError, match="holds no result rows yet"):
        report("cnn", [], tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "toy"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "invalid choice: 'toy' (choose from 'pretraining', 'appendix-c'" in err


def test_register_study_refuses_what_is_not_a_new_named_study(toy):
    with pytest.raises(TypeError, match="Study subclass"):
        register_study(object)
    with pytest.raises(InvalidOptionError, match="needs a name"):
        register_study(type("Nameless", (Study,), {}))
    with pytest.raises(InvalidOptionError, match="'toy' is already registered"):
        register_study(Toy)
    with pytest.raises(InvalidOptionError, match="results kind 'cnn' is already reported by study 'cnn'"):
        register_study(type("OtherCNN", (Study,), {"name": "other-cnn", "kind": "cnn"}))
    assert "other-cnn" not in STUDIES and study_names()[-1] == "toy"


def test_a_study_without_a_report_says_so(tmp_path):
    class Silent(Study):
        name, kind = "silent", "silent-kind"

    register_study(Silent)
    try:
        with pytest.raises(InvalidOptionError, match="study 'silent' has no report"):
            report("silent-kind", [{"i": 0}], tmp_path)
    finally:
        del STUDIES["silent"]
