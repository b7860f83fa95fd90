"""The pre-training advisor: its firing rule, pruning, saving, errors, the study comparison and the CLI."""
import json

import pytest
import torch
from torch import nn

from greedyprune import PretrainingAdvisor, TrainConfig, TwoLayerNet, pretrain
from greedyprune.advisor import AdvisorCheck, jaccard_distance
from greedyprune.cli import main
from greedyprune.result import PruneResult
from greedyprune.studies.advisor import compare_with_study
from greedyprune.studies.pretraining import config_with, get_preset, run_pretraining_study
from greedyprune.twolayer import load_two_layer


def test_jaccard_distance_closed_forms():
    assert jaccard_distance({1, 2, 3}, {1, 2, 3}) == 0
    assert jaccard_distance({1, 2}, {3, 4}) == 1
    assert jaccard_distance({1, 2, 3}, {2, 3, 4}) == pytest.approx(1 - 2 / 4)
    assert jaccard_distance(set(), set()) == 0


def fire_step(accuracies, distances, **rules):
    """Feed a hand-made history to the rule; return the step at which it fires (or None)."""
    advisor = PretrainingAdvisor(5, log=None, **rules)
    for step, (acc, dist) in enumerate(zip(accuracies, distances)):
        advisor.history.append(AdvisorCheck(step, 0.0, acc, 0.0, 0.0, 5, dist, 0.0))
        if advisor._should_fire():
            return step
    return None


def test_rule_fires_when_accuracy_and_selection_both_stop_improving():
    acc = [0.6, 0.9, 0.95, 0.97, 0.972, 0.973, 0.973]
    dist = [None, 1.0, 0.8, 0.6, 0.58, 0.59, 0.57]
    # step 5: window (4, 5) improves best accuracy 0.97 by 0.003 < 0.005; distances 0.58, 0.59 are no new low
    # beyond 0.05 under the earlier minimum 0.6
    assert fire_step(acc, dist) == 5


def test_rule_waits_while_accuracy_still_improves():
    acc = [0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0]
    dist = [None, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    assert fire_step(acc, dist) is None


def test_rule_waits_while_the_selection_still_settles():
    acc = [0.9, 0.95, 0.95, 0.95, 0.95, 0.95]
    dist = [None, 1.0, 0.8, 0.6, 0.4, 0.2]  # keeps falling by more than the tolerance
    assert fire_step(acc, dist) is None
    assert fire_step(acc, dist, distance_tolerance=0.5) == 3


def test_max_distance_adds_an_absolute_bound():
    acc = [0.9, 0.95, 0.95, 0.95, 0.95, 0.95]
    dist = [None, 1.0, 0.7, 0.7, 0.7, 0.7]
    # step 3: the window's 0.7 is a new low against the only earlier distance, 1.0; step 4: it is not
    assert fire_step(acc, dist) == 4
    assert fire_step(acc, dist, max_distance=0.5) is None


def test_advisor_on_a_real_training_run_saves_a_working_pruned_net(tmp_path, digits_unit):
    ds = digits_unit  # load_dataset("digits")
    X, y = ds.X, ds.binary_labels()
    net = TwoLayerNet(ds.in_features, 100, seed=0)
    advisor = PretrainingAdvisor(20, save_path=tmp_path / "pruned.pt", log=None)
    pretrain(net, X, y, TrainConfig(iterations=1500, lr=1.0, batch_size=64),
             callback=lambda t, m: advisor.check(t, m, X, y), callback_every=100)
    assert advisor.fired, [(c.step, c.pruned_accuracy, c.distance) for c in advisor.history]
    assert advisor.stop_step == advisor.history[-1].step and advisor.stop_step > 0
    saved = load_two_layer(tmp_path / "pruned.pt")  # sizes and weights, read without unpickling
    torch.testing.assert_close(saved(X), advisor.pruned_model(X))
    assert saved.hidden <= 20 and advisor.history[-1].pruned_accuracy > 0.8
    report = advisor.report()
    assert report["stop_step"] == advisor.stop_step and len(report["checks"]) == len(advisor.history)
    assert advisor.check(advisor.stop_step + 100, net, X, y) is True and len(advisor.history) == len(report["checks"])


def test_a_model_it_cannot_prune_gets_a_clear_error_and_a_pruner_fixes_it():
    conv = nn.Sequential(nn.Linear(64, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1), nn.Flatten(0))
    X, y = torch.randn(8, 64), torch.randint(0, 2, (8,)).float()
    with pytest.raises(TypeError, match="PretrainingAdvisor cannot prune a Sequential.*pruner="):
        PretrainingAdvisor(3, log=None).check(0, conv, X, y)
    advisor = PretrainingAdvisor(3, log=None, pruner=lambda model, X, y: PruneResult(model, {"fc": [0, 1, 2]}))
    assert advisor.check(0, conv, X, y) is False and advisor.history[0].distinct == 3


def test_cnns_are_pruned_with_prune_model():
    from greedyprune.models import get_model

    cnn = get_model("resnet8", in_channels=1, width=4, seed=0)
    X, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    advisor = PretrainingAdvisor(1, loss="cross_entropy", log=None,
                                 selection_options={"keep_ratio": 0.5, "candidates": 2, "batch_size": 16})
    assert advisor.check(0, cnn, X, y) is False
    # resnet8: 3 streams (stage 1's with the stem) + 3 block convs
    kept_channels = sum(max(1, round(0.5 * c)) for c in (4, 4, 8, 8, 16, 16))
    assert advisor.history[0].distinct == kept_channels


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(k=0), "k must be >= 1"), (dict(k=5, patience=0), "patience"), (dict(k=5, tolerance=-1), "tolerance"),
     (dict(k=5, distance_tolerance=-0.1), "distance_tolerance"), (dict(k=5, max_distance=2), "max_distance"),
     (dict(k=5, loss="hinge"), "unknown loss")],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PretrainingAdvisor(**kwargs)


def test_steps_must_increase():
    X, y = torch.randn(20, 3), torch.randint(0, 2, (20,)).float()
    advisor = PretrainingAdvisor(3, log=None)
    advisor.check(10, TwoLayerNet(3, 8, seed=0), X, y)
    with pytest.raises(ValueError, match="steps must increase"):
        advisor.check(10, TwoLayerNet(3, 8, seed=0), X, y)


def test_comparison_with_a_study(tmp_path):
    config = config_with(get_preset("quick"), data="digits", widths=(30,), sizes=(400, 800), trials=1,
                         iterations=200, eval_every=50, k=8, reference="largest", direct=False)
    run_pretraining_study(config, tmp_path / "study", progress=False, log=lambda s: None)
    rows = compare_with_study(tmp_path / "study", tmp_path / "cmp", progress=False, log=lambda s: None)
    assert [(r.width, r.size) for r in rows] == [(30, 400), (30, 800)]
    assert all(len(r.stops) == 1 and r.overhead > 0 for r in rows)
    assert (tmp_path / "cmp" / "advisor_vs_threshold.png").read_bytes()[:4] == b"\x89PNG"
    assert len((tmp_path / "cmp" / "advisor_vs_threshold.csv").read_text().strip().splitlines()) == 3
    with pytest.raises(FileNotFoundError, match="holds no pre-training study"):
        compare_with_study(tmp_path / "nothing", progress=False)


def test_cli_advise_and_theory_and_appendix_c(tmp_path, capsys):
    out = tmp_path / "advise"
    assert main(["advise", "--data", "digits", "--width", "60", "--iterations", "600", "--check-every", "100",
                 "--k", "10", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "advisor.json").read_text())
    assert report["checks"] and (out / "advisor.png").is_file()
    with pytest.raises(SystemExit) as exit_info:
        main(["theory", "threshold", str(tmp_path / "missing")])
    assert exit_info.value.code == 2 and "missing" in capsys.readouterr().err
    assert main(["study", "appendix-c", "--repeats", "2", "--out", str(tmp_path / "ac"), "--no-progress"]) == 0
    assert (tmp_path / "ac" / "figure2.png").is_file() and "0." in capsys.readouterr().out
