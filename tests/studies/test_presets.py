"""The paper presets follow the papers (from the one table that cites them), the mean-field form and
"k distinct neurons" are exact, the directly trained nets are what they claim to be, and bad input gets a
clear error."""
import pytest
import torch

from greedyprune import TwoLayerNet, neuron_outputs, prune_two_layer
from greedyprune.cli import main
from greedyprune.selection import greedy_forward_selection
from greedyprune.studies import cnn, pretraining
from greedyprune.training.loop import TrainConfig, evaluate, pretrain
from greedyprune.twolayer import ScaledLinear, build_pruned, load_two_layer, save_two_layer

torch.set_num_threads(1)


# ------------------------------------------------------------------------------- the paper's protocols
def test_paper_preset_is_section_5_of_the_paper():
    # Wolfe et al., Section 5: sub-datasets "of sizes 1K to 50K (i.e., in increments of 5K)", "pre-trained for
    # 8K iterations in total and pruned every 1K iterations to a size of 200 hidden nodes", three trials
    paper = {"sizes": [1000, 5000, 10000, 15000, 20000, 25000, 30000, 35000, 40000, 45000, 50000],
             "iterations": 8000, "checkpoints": [0, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000], "k": 200,
             "trials": 3}
    table = pretraining.PAPER_FIGURE1
    assert list(table["sizes"]) == paper["sizes"]
    assert (table["iterations"], table["k"], table["trials"]) == (paper["iterations"], paper["k"], paper["trials"])
    preset = pretraining.get_preset("paper")
    assert list(preset.sizes) == paper["sizes"] and preset.iterations == paper["iterations"]
    assert preset.checkpoints() == paper["checkpoints"] and preset.k == paper["k"] and preset.trials == 3
    assert preset.parameterization == "mean-field" and preset.prune_to == "distinct"
    # on full MNIST (60,000 training images) the grid is the paper's, plus the full data set as the reference
    said = []
    assert pretraining.resolve_sizes(preset, 60000, said.append) == paper["sizes"] + [60000]
    assert not any("REDUCED" in s for s in said)


def test_paper_preset_on_built_in_data_says_it_runs_a_reduced_grid():
    said = []
    sizes = pretraining.resolve_sizes(pretraining.get_preset("paper"), 5000, said.append)
    assert sizes == [100, 500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 4500, 5000]
    assert any(s.startswith("REDUCED GRID") and "mnist:DIR" in s for s in said)


def test_cnn_paper_preset_is_appendix_e():
    preset = cnn.get_preset("paper")
    assert preset.models == ["resnet34", "mobilenetv2"]
    assert preset.sizes == [10000, 30000, 50000] and preset.iterations == 80000 and preset.checkpoint_every == 20000
    assert (preset.lr, preset.batch_size, preset.finetune_iterations, preset.finetune_lr) == (0.1, 128, 2500, 0.01)
    assert preset.finetune_schedule == "cosine" and preset.flops_reduction == 0.4 and preset.epsilon_grid
    assert preset.resolved_augment() == "crop-flip" and preset.normalize == "standard"
    assert cnn.get_preset("quick").resolved_augment() == "none"  # no flips for digits


# ------------------------------------------------------------------------------- mean-field form
def data(m=50, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, d, generator=g, dtype=torch.float64), (torch.rand(m, generator=g) > 0.5).double()


def test_mean_field_net_is_the_papers_formula():
    X, _ = data()
    net = TwoLayerNet(6, 30, parameterization="mean-field", seed=1).double()
    a, b, c = net[0].weight, net[2].weight[0], net[2].bias[0]
    by_hand = (torch.relu(X @ a.T + net[0].bias) * b).sum(dim=1) / 30 + c
    torch.testing.assert_close(net(X), by_hand)
    assert isinstance(net[2], ScaledLinear) and abs(float(b.detach().std()) - 1) < 0.4  # b_i = O(1), not O(1/N)
    torch.testing.assert_close(neuron_outputs(net, X).mean(dim=0), net(X))


@pytest.mark.parametrize("prune_to", ["steps", "distinct"])
def test_pruned_mean_field_net_reproduces_the_selection(prune_to):
    X, y = data()
    net = TwoLayerNet(6, 40, parameterization="mean-field", seed=2).double()
    small, result = prune_two_layer(net, X, y, 8, prune_to=prune_to, max_steps=400)
    assert small.parameterization == "mean-field" and small[2].scale == pytest.approx(1 / small.hidden)
    torch.testing.assert_close(small(X), result.output, rtol=1e-10, atol=1e-10)
    if prune_to == "distinct":
        assert result.reached and small.hidden == 8
        # the cut is the first step at which 8 distinct neurons were chosen, and a prefix of a longer run
        longer = greedy_forward_selection(neuron_outputs(net, X), y, result.k + 5, loss="logistic")
        assert longer.indices[:result.k].tolist() == result.indices.tolist()
        assert len(set(result.indices[:-1].tolist())) == 7


def test_mean_field_training_takes_lr_times_n_steps_on_the_neurons(tmp_path):
    X, y = data()
    net = TwoLayerNet(6, 20, parameterization="mean-field", seed=3).double()
    before = [p.detach().clone() for p in net.parameters()]
    loss = torch.nn.functional.binary_cross_entropy_with_logits(net(X), y)
    grads = torch.autograd.grad(loss, list(net.parameters()))
    pretrain(net, X, y, TrainConfig(iterations=1, lr=0.1, batch_size=None))
    names = [n for n, _ in net.named_parameters()]
    for name, p, p0, g in zip(names, net.parameters(), before, grads):
        scale = 1.0 if name == "2.bias" else 20.0  # the output bias takes lr, the neurons lr * N
        torch.testing.assert_close(p.detach(), p0 - 0.1 * scale * g, msg=name)
    save_two_layer(tmp_path / "net.pt", net)
    again = load_two_layer(tmp_path / "net.pt").double()
    torch.testing.assert_close(again(X), net(X))


def test_mean_field_pruned_weights_by_hand():
    net = TwoLayerNet(3, 4, parameterization="mean-field", seed=0)
    small = build_pruned(net, torch.tensor([0, 3, 0, 1]))
    # f_S = sum_i count_i / k * b_i h_i + c = (1/2) sum_kept b'_i h_i + c  ->  b'_i = 2 * count_i / 4 * b_i
    torch.testing.assert_close(small[2].weight, net[2].weight[:, [1, 3]] * torch.tensor([1.5, 0.5]))


# ------------------------------------------------------------------------------- directly trained nets
def test_direct_nets_are_runs_of_the_pruned_width(digits_unit):
    config = pretraining.config_with(pretraining.get_preset("quick"), data="digits", widths=(30,), sizes=(300,),
                                      trials=1, iterations=20, eval_every=10, k=10, reference="largest")
    ds = digits_unit  # load_dataset("digits", normalize="unit")
    n, matched = pretraining.direct_schedule(config, 30)
    assert n == 10 and matched == {0: 0, 10: 30, 20: 60}  # Scratch-B: t * width / n
    found = pretraining.train_direct(config, ds, 30, 300, 0)
    X, y, _, tc = pretraining.setup_run(config, ds, 30, 300, 0)
    for steps in (10, 60):  # a separate run of that many steps gives the same numbers
        net = TwoLayerNet(ds.in_features, 10, seed=tc.seed + 500_009, parameterization="mean-field")
        pretrain(net, X, y, TrainConfig(iterations=steps, lr=config.lr, batch_size=config.batch_size, seed=tc.seed
                                        + 500_009))
        assert evaluate(net, X, y, "logistic") == pytest.approx(found[steps], rel=1e-6)


# ------------------------------------------------------------------------------- bad input
def _fails(capsys, argv, *words):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    for word in words:
        assert word in err, err


def test_bad_input_is_refused_clearly(tmp_path, capsys):
    _fails(capsys, ["study", "cnn", "--epsilon", "-0.1", "--out", str(tmp_path / "a")], "epsilon must be a number >= 0")
    _fails(capsys, ["study", "pretraining", "--prune-to", "distinct", "--k", "300", "--widths", "250,1000",
                    "--out", str(tmp_path / "b")], "--prune-to distinct with k=300", "250")
    _fails(capsys, ["study", "pretraining", "--parameterization", "ntk", "--out", str(tmp_path / "c")],
           "unknown parameterization")
    _fails(capsys, ["study", "cnn", "--epsilon", "0.1", "--flops-target", "0.5", "--out", str(tmp_path / "d")],
           "exactly one stopping rule")
    _fails(capsys, ["study", "pretraining", "--shard", "2/2"], "0 <= i < P")
    with pytest.raises(ValueError, match="only 5 hidden neurons"):
        prune_two_layer(TwoLayerNet(3, 5), torch.randn(8, 3), torch.ones(8), 6, prune_to="distinct")


@pytest.mark.slow  # 8-12 s: worker processes / a signal and a rerun; in the full suite
def test_an_epsilon_grid_that_never_reaches_the_target_names_the_closest(tmp_path, capsys):
    argv = ["study", "cnn", "--data", "digits", "--models", "resnet8", "--sizes", "100", "--iterations", "4",
            "--checkpoint-every", "4", "--candidates", "2", "--epsilon-grid", "0,0.001", "--flops-reduction", "0.9",
            "--val-size", "100", "--test-size", "200", "--finetune-iterations", "1", "--baselines", "", "--trials", "1",
            "--no-progress", "--out", str(tmp_path)]
    _fails(capsys, argv, "no epsilon in the grid 0,0.001 reaches a 90% multiply-add reduction",
           "the closest is epsilon=")


def test_an_epsilon_grid_picks_a_value_that_reaches_the_target(tmp_path, capsys):
    import json

    argv = ["study", "cnn", "--data", "digits", "--models", "resnet8", "--sizes", "100", "--iterations", "4",
            "--checkpoint-every", "4", "--candidates", "2", "--epsilon-grid", "0,100", "--flops-reduction", "0.3",
            "--val-size", "100", "--test-size", "200", "--finetune-iterations", "1", "--baselines", "", "--trials", "1",
            "--no-progress", "--out", str(tmp_path)]
    assert main(argv) == 0
    choice = json.loads((tmp_path / "epsilon.json").read_text())["resnet8"]
    assert [t["epsilon"] for t in choice["tried"]] == [0, 100]
    reaching = [t for t in choice["tried"] if t["reduction"] >= 0.3]
    assert reaching, "epsilon=100 stops every group at its first channel"
    best = max(reaching, key=lambda t: (t["val_accuracy"], -t["epsilon"]))
    assert choice["epsilon"] == best["epsilon"]
    from greedyprune.studies.store import ResultsStore

    with ResultsStore(tmp_path / "results.sqlite") as store:
        rows = store.rows()
    assert {r["rule"] for r in rows} == {f"epsilon={best['epsilon']}"}
