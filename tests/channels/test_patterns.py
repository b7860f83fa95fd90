"""Models users bring: every layer pattern either prunes exactly (the pruned network equals the dense
network masked with the result's counts, within 1e-4, and runs in train and eval mode) or is refused
before the search with an error that names the layer and the way out."""
import warnings

import patterns
import pytest
import torch

from greedyprune import prune_model
from greedyprune.channels import UnsupportedLayerError, apply_masks, find_groups, group_scales


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def _randomize_norms(model):
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.mark.parametrize("name", sorted(patterns.SUPPORTED))
def test_pattern_prunes_exactly_and_runs_in_both_modes(name):
    torch.manual_seed(0)
    dense = _randomize_norms(patterns.SUPPORTED[name]())
    X, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # groups left whole are announced with a warning
        result = prune_model(dense, (X, y), objective="network", keep_ratio=0.5, candidates=3, batch_size=16,
                             recalibrate=0, unsupported="skip")
        _, groups = find_groups(dense, X[:1], unsupported="skip")
    assert result.kept, "nothing was pruned"
    assert sum(p.numel() for p in result.model.parameters()) < sum(p.numel() for p in dense.parameters())
    # independent check: the dense network with every group's channels scaled by D * count / |S|
    scales = {g: group_scales(torch.tensor(result.counts[g.name])) for g in groups if g.name in result.counts}
    with torch.no_grad(), apply_masks(dense, scales):
        expected = dense(X[:8])
    pruned = result.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(pruned(X[:8]), expected, rtol=1e-4, atol=1e-4)
        pruned.train()
        assert pruned(X[:8]).shape == (8, 10)  # train mode runs too
    pruned.eval()


def test_grouped_convolutions_are_pruned_in_units_of_one_position_per_conv_group():
    dense = _randomize_norms(patterns.GroupedBlock(c=16, groups=4))
    X, y = _data()
    result = prune_model(dense, (X, y), objective="network", keep_ratio=0.5, candidates=3, batch_size=16, recalibrate=0)
    kept = result.kept["reduce"]
    offsets = {c % 4 for c in kept}
    assert kept == sorted(c for c in range(16) if c % 4 in offsets)  # the same positions in every conv group
    assert result.model.grouped.groups == 4 and result.model.grouped.in_channels == len(kept)


def test_layers_that_mix_channels_are_refused_before_the_search_or_left_whole():
    X, y = _data()
    for model, layer in ((patterns.ConvNeXtBlock(), "LayerNorm"), (patterns.ViTMLP(), "LayerNorm")):
        with pytest.raises(UnsupportedLayerError, match=f"{layer}.*unsupported='skip'"):
            prune_model(model, (X, y), objective="network", keep_ratio=0.5, candidates=2, batch_size=16)
    with pytest.raises(UnsupportedLayerError, match="masking them.*channel shuffle"):
        prune_model(patterns.ChannelShuffle(), (X, y), objective="network", keep_ratio=0.5, candidates=2, batch_size=16)
    with pytest.warns(UserWarning, match="'conv'"):
        result = prune_model(patterns.ChannelShuffle(), (X, y), objective="network", keep_ratio=0.5, candidates=2,
                             batch_size=16, unsupported="skip")
    assert "conv" not in result.kept and "head" in result.kept


def test_attention_and_train_only_layers_are_refused_with_the_way_out():
    X, y = _data()
    with pytest.raises(UnsupportedLayerError, match="MultiheadAttention.*skip="):
        prune_model(patterns.Attention(), (X, y), objective="network", keep_ratio=0.5, candidates=2, batch_size=16)
    with pytest.raises(UnsupportedLayerError, match=r"\['aux'\] run in training.*aux_logits"):
        prune_model(patterns.AuxHead(), (X, y), objective="network", keep_ratio=0.5, candidates=2, batch_size=16)


def test_tracer_failures_report_the_real_cause_and_discovery_has_a_time_limit(monkeypatch):
    import torch_pruning as tp

    from greedyprune.channels.groups import GroupDiscoveryTimeout

    X, y = _data()

    def broken(self, *args, **kwargs):
        raise ZeroDivisionError("integer division or modulo by zero")

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", broken)
    with pytest.raises(UnsupportedLayerError, match="tracer failed.*ZeroDivisionError.*not an input problem"):
        prune_model(patterns.SEBlock(), (X, y), keep_ratio=0.5)
    monkeypatch.undo()

    def slow(self, *args, **kwargs):
        import time

        time.sleep(5)

    monkeypatch.setattr(tp.DependencyGraph, "get_all_groups", slow)
    with pytest.raises(GroupDiscoveryTimeout, match="did not finish within 0.2 s"):
        find_groups(patterns.SEBlock(), X[:1], timeout_s=0.2)
