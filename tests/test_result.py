"""LayerRecord (issue 20): every pruner's per-layer records are one typed dataclass that still reads as the dict
each pruner used to build."""
import copy
import pickle

import pytest
import torch

from greedyprune import PruneResult, prune_two_layer
from greedyprune.baselines import prune_like
from greedyprune.channels import prune_model
from greedyprune.errors import InvalidOptionError
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
