"""LayerRecord and PruneReport (issue 20): every pruner's per-layer records and its whole-network report are typed
dataclasses that still read as the dicts each pruner used to build, with the same keys from every pruner."""
import copy
import json
import pickle

import numpy as np

import pytest
import torch

from greedyprune import PruneReport, PruneResult, evaluate, prune_two_layer
from greedyprune.baselines import prune_like
from greedyprune.channels import load_pruned, prune_model, save_pruned
from greedyprune.errors import InvalidOptionError
from greedyprune.metrics import count_macs, measure_model
from greedyprune.models import get_model
from greedyprune import LayerRecord
from greedyprune.twolayer import TwoLayerNet

COMMON = ["name", "kept", "steps", "rule", "loss", "accuracy", "seconds", "evaluator"]


def test_a_record_reads_as_the_dict_it_was():
    old = {"name": "layer1", "channels": 16, "steps": 4, "rule": "keep_ratio", "loss": 0.5, "accuracy": None,
           "evaluator": "reconstruction", "ridge": [0.1], "kept": 8, "seconds": 1.5}
    record = LayerRecord.from_dict(old)
    assert (record.name, record.units, record.unit, record.kept, record.extra) == ("layer1", 16, "channels", 8,
                                                                                  {"ridge": [0.1]})
    assert record["name"] == "layer1" and record["channels"] == record["units"] == 16
    assert record.get("ridge") == [0.1] and record.get("zzz", 3) == 3 and "ridge" in record and "zzz" not in record
    assert record == old and dict(record) == old  # the same entries (order aside)
    assert list(record)[:2] == ["name", "channels"] and len(record) == len(old)
    with pytest.raises(KeyError):
        record["zzz"]
    record.update(kept=4, note="x")
    record["loss"] = 0.25
    assert (record.kept, record.loss, record["note"]) == (4, 0.25, "x")
    assert LayerRecord.from_dict(record) is record
    assert pickle.loads(pickle.dumps(record)) == copy.deepcopy(record) == record
    units = LayerRecord(name="encoder.layer.0.intermediate", units=12, kept=6, extra={"kind": "ffn"})
    assert dict(units) == {"name": "encoder.layer.0.intermediate", "units": 12, "kept": 6, "steps": None,
                           "rule": None, "loss": None, "accuracy": None, "seconds": None, "evaluator": None,
                           "kind": "ffn"}
    with pytest.raises(InvalidOptionError, match="unit"):
        LayerRecord(name="x", unit="neurons")


def test_a_result_turns_plain_dicts_into_records_and_summarises_them():
    result = PruneResult(torch.nn.Linear(2, 2), {"fc": [0]}, layers=[{"name": "fc", "units": 2, "kept": 1}])
    assert isinstance(result.layers[0], LayerRecord) and result.layers[0]["units"] == 2
    result.layers.append({"name": "late", "channels": 4, "kept": 2, "steps": 2, "loss": 0.123456})  # as before
    rows = [[cell.strip() for cell in line.split("|")] for line in result.summary().splitlines()[2:4]]
    assert rows == [["fc", "2", "1", "", "", ""], ["late", "4", "2", "2", "0.1235", ""]]


def _check(records, unit):
    for record in records:
        assert isinstance(record, LayerRecord) and record.unit == unit
        assert all(key in record for key in COMMON + [unit]) and record.kept is not None


def test_every_pruner_builds_its_records_through_layer_record():
    torch.manual_seed(0)
    X, y = torch.randn(64, 5), torch.randint(0, 2, (64,)).float()
    two = prune_two_layer(TwoLayerNet(5, 12), X, y, k=3, loss="logistic")
    _check(two.layers, "units")
    model = get_model("resnet8", in_channels=1, width=4, seed=0).eval()
    data = (torch.randn(48, 1, 12, 12), torch.randint(0, 10, (48,)))
    local = prune_model(model, data, keep_ratio=0.5, eval_examples=16, check=False)  # the block reconstruction
    _check(local.layers, "channels")
    assert all(r["evaluator"] == "reconstruction" and "ridge" in r for r in local.layers)
    network = prune_model(model, data, objective="network", keep_ratio=0.5, candidates=3, batch_size=16,
                          eval_examples=16, check=False)
    _check(network.layers, "channels")
    assert {r.evaluator for r in network.layers} <= {"fast", "reference"}
    paper = prune_model(model, data, objective="local-gfs", keep_ratio=0.5, eval_examples=16, check=False)
    _check(paper.layers, "channels")
    l1 = prune_like(model, {name: len(kept) for name, kept in local.kept.items()}, "l1", data=data)
    _check(l1.layers, "channels")
    assert [r.units for r in l1.layers] == [r.units for r in local.layers]


REPORT_KEYS = ["params_before", "params_after", "macs_before", "macs_after", "loss_before", "loss_after",
               "accuracy_before", "accuracy_after", "eval_examples", "input_shape", "seconds"]


def test_a_report_reads_as_the_dict_it_was_and_round_trips_through_json():
    old = {"params_before": 100, "params_after": 40, "macs_before": 1000, "macs_after": 300, "input_shape": [3, 8, 8],
           "seconds": 1.5, "rule": "keep_ratio", "bn": "batch"}  # a baseline-like report saved before: no loss
    report = PruneReport.from_dict(old)
    assert (report.params_before, report.macs_after, report.loss_before, report.extra) == (
        100, 300, None, {"rule": "keep_ratio", "bn": "batch"})
    assert report["macs_after"] == 300 and report.get("rule") == "keep_ratio" and report.get("zzz", 3) == 3
    assert "bn" in report and "zzz" not in report
    # like LayerRecord, every common field is listed, measured or not: "in" is true for a None field
    assert "loss_before" in report and report["loss_before"] is None
    assert report.measured("macs") and report.measured("params") and not report.measured("loss")
    assert list(report) == REPORT_KEYS + ["rule", "bn"] and len(report) == len(REPORT_KEYS) + 2
    assert dict(report) == {**dict.fromkeys(REPORT_KEYS), **old} == report  # equal to a dict of its entries
    assert report != old  # ... its None fields included
    with pytest.raises(KeyError):
        report["zzz"]
    report.update(loss_before=2.5, note="x")
    report["loss_after"] = 2.25
    assert (report.loss_before, report.loss_after, report["note"], report.extra["note"]) == (2.5, 2.25, "x", "x")
    assert PruneReport.from_dict(report) is report and PruneReport.from_dict(None) == PruneReport()
    copied = report.copy()
    copied["note"] = "y"
    assert report["note"] == "x" and copied.params_before == 100
    assert pickle.loads(pickle.dumps(report)) == copy.deepcopy(report) == report
    # to_dict: plain values (tuples as lists, numpy / 0-d torch scalars as numbers), what savers write
    report.update(input_shape=(3, 8, 8), value=torch.tensor(0.5), step=np.int64(4), widths=(1, None))
    plain = report.to_dict()
    assert type(plain) is dict and plain["input_shape"] == [3, 8, 8] and type(plain["step"]) is int
    back = PruneReport.from_dict(json.loads(json.dumps(plain)))
    assert back == plain and back.input_shape == [3, 8, 8] and back.extra["widths"] == [1, None]


def test_a_result_turns_a_plain_report_into_one_and_ratio_refuses_what_was_not_measured():
    result = PruneResult(torch.nn.Linear(2, 2), {"fc": [0]}, report={"params_before": 6, "params_after": 4,
                                                                      "seconds": 0.25})
    assert isinstance(result.report, PruneReport) and result.ratio("params") == pytest.approx(4 / 6)
    assert isinstance(PruneResult(torch.nn.Linear(2, 2), {}).report, PruneReport)
    with pytest.raises(InvalidOptionError, match="does not measure macs"):
        result.ratio("macs")
    text = result.summary()
    assert "params" in text and "mult-adds" not in text and "loss" not in text and "time" in text


def test_measure_model_measures_one_way():
    model = get_model("resnet8", in_channels=1, width=4, seed=0).eval()
    X, y = torch.randn(12, 1, 12, 12), torch.randint(0, 10, (12,))
    measured = measure_model(model, X[:1], X, y)
    assert (measured["loss"], measured["accuracy"]) == evaluate(model, X, y, "cross_entropy")
    assert measured["params"] == sum(p.numel() for p in model.parameters())
    assert measured["macs"] == count_macs(model, X[:1])
    assert measure_model(model) == {"params": measured["params"], "macs": None, "loss": None, "accuracy": None}
    with pytest.raises(InvalidOptionError, match="both x and y"):
        measure_model(model, X[:1], X)


def test_every_pruner_reports_the_same_keys(tmp_path):
    torch.manual_seed(0)
    X, y = torch.randn(64, 5), torch.randint(0, 2, (64,)).float()
    two = prune_two_layer(TwoLayerNet(5, 12), X, y, k=3, loss="logistic")
    model = get_model("resnet8", in_channels=1, width=4, seed=0).eval()
    data = (torch.randn(48, 1, 12, 12), torch.randint(0, 10, (48,)))
    deep = prune_model(model, data, keep_ratio=0.5, eval_examples=16, check=False)
    l1 = prune_like(model, {name: len(kept) for name, kept in deep.kept.items()}, "l1", data=data)
    for result in (two, deep, l1):
        assert isinstance(result.report, PruneReport)
        assert list(result.report)[:len(REPORT_KEYS)] == REPORT_KEYS
        assert result.report.measured("params") and result.report.measured("macs") and result.report.seconds > 0
    assert deep.report.measured("accuracy") and deep.report.eval_examples == 16
    assert not l1.report.measured("loss") and l1.report.eval_examples is None  # the baselines evaluate nothing
    assert two.report.loss_before == two.selection.dense_loss and two.report.loss_after == two.selection.losses[-1]
    assert (deep.report.input_shape, l1.report.input_shape, two.report.input_shape) == ([1, 12, 12], [1, 12, 12], [5])
    assert l1.report.macs_before == deep.report.macs_before  # the same dense model, measured the same way
    # saved and loaded: the report comes back as a PruneReport of the same entries
    save_pruned(tmp_path / "deep.pt", deep, name="resnet8", model_kwargs={"in_channels": 1, "width": 4})
    _, info = load_pruned(tmp_path / "deep.pt")
    assert isinstance(info["report"], PruneReport) and info["report"] == deep.report
