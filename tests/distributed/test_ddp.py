"""Data-parallel training and sharded studies on 2 gloo processes (CPU) give what one process gives:
the trained weights within float tolerance (DDP with cross-process BatchNorm, an uneven batch split and
crop-and-flip augmentation), the study rows exactly (cells split with --shard, joined by merge).

Process groups take seconds to start, so each 2-process job is launched once (module fixtures).
"""
import pytest
import torch
from torch import nn

from greedyprune.distributed import parallel
from greedyprune.training.loop import TrainConfig, pretrain

torch.set_num_threads(1)


def small_cnn(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                         nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def images(seed=0, n=21):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


CONFIG = TrainConfig(iterations=8, lr=0.1, batch_size=7, loss="cross_entropy", momentum=0.9, weight_decay=5e-4,
                     seed=3, schedule="cosine", augment="crop-flip")


def train_ddp(ckpt):
    X, y = images()
    model = small_cnn(0)
    pretrain(model, X, y, CONFIG, distributed=True, checkpoint_path=ckpt, checkpoint_every=4)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def two_process_weights(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("ddp") / "state.pt"
    return parallel.launch(train_ddp, 2, str(ckpt), threads=1, timeout_s=60), ckpt


def test_two_gloo_processes_train_like_one(two_process_weights):
    weights, ckpt = two_process_weights
    X, y = images()
    reference = pretrain(small_cnn(0), X, y, CONFIG).state_dict()
    assert weights.keys() == reference.keys()
    moved = 0.0
    for key, value in reference.items():
        if value.is_floating_point():
            torch.testing.assert_close(weights[key], value, rtol=1e-4, atol=1e-5, msg=key)
            moved = max(moved, float((value - small_cnn(0).state_dict()[key]).abs().max()))
        else:
            assert torch.equal(weights[key], value), key
    assert moved > 1e-3, "training must have changed the weights for the comparison to mean anything"
    assert ckpt.exists(), "rank 0 writes the resume state"


def test_per_process_batchnorm_would_differ():
    """The comparison can fail: BatchNorm over half-batches (plain DDP without the cross-process layer) gives
    other running statistics than the whole batch."""
    X, y = images()
    bn = nn.BatchNorm2d(3)
    bn.train()
    bn(X[:7])
    halves = nn.BatchNorm2d(3)
    halves.train()
    halves(X[:4])
    assert not torch.allclose(bn.running_var, halves.running_var, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ the command line and the studies
TRAIN_ARGS = ["train", "--model", "resnet8", "--model-arg", "width=4", "--data", "digits", "--size", "120",
              "--iterations", "6", "--checkpoint-every", "3", "--batch-size", "25", "--eval-examples", "60",
              "--no-progress", "--augment", "crop-flip"]
CNN_ARGS = ["study", "cnn", "--data", "digits", "--models", "resnet8", "--sizes", "150", "--iterations", "6",
            "--checkpoint-every", "3", "--candidates", "3", "--finetune-iterations", "3", "--baselines", "l1",
            "--epsilon", "0.05", "--test-size", "300", "--batch-size", "25", "--prune-batch-size", "50",
            "--augment", "crop-flip", "--trials", "1", "--no-progress"]
PRETRAINING = dict(data="digits", widths=(12, 20), sizes=(200, 400), trials=2, iterations=20, eval_every=10, k=5,
                   reference="largest")


def cli_worker(argv):
    from greedyprune.cli import main

    return main(argv)


def shard_worker(out, cnn_out):
    """Each rank runs its own shard of the pre-training and CNN studies, each into its own directory."""
    from greedyprune.studies.cnn import config_with as cnn_config
    from greedyprune.studies.cnn import get_preset as cnn_preset
    from greedyprune.studies.cnn import run_cnn_study
    from greedyprune.studies.pretraining import config_with, get_preset, run_pretraining_study

    shard = (parallel.rank(), parallel.world_size())
    run_pretraining_study(config_with(get_preset("quick"), **PRETRAINING), f"{out}/{shard[0]}", progress=False,
                          log=lambda s: None, shard=shard)
    run_cnn_study(cnn_config(cnn_preset("quick"), **CNN_SHARDED), f"{cnn_out}/{shard[0]}", progress=False,
                  log=lambda s: None, shard=shard)
    return shard


CNN_SHARDED = dict(data="digits", models=["resnet8"], model_kwargs={"resnet8": {"width": 4}}, sizes=[100, 150],
                   trials=2, iterations=4, checkpoint_every=2, candidates=2, finetune_iterations=2, baselines=[],
                   epsilon=0.05, epsilon_grid=None, flops_target=None, test_size=300, batch_size=25,
                   prune_batch_size=50)


def _checkpoint(path):
    from greedyprune.training.checkpoints import load_model

    return load_model(path)[0].state_dict()


def _rows(directory):
    from greedyprune.studies.store import ResultsStore

    with ResultsStore(f"{directory}/results.sqlite") as store:
        return [{k: v for k, v in r.items() if k not in ("created", "prune_seconds")} for r in store.rows()]


@pytest.mark.slow
def test_train_command_data_parallel_matches_one_process(tmp_path):
    assert parallel.launch(cli_worker, 2, TRAIN_ARGS + ["--out", str(tmp_path / "two")], threads=1,
                           timeout_s=120) == 0
    from greedyprune.cli import main

    assert main(TRAIN_ARGS + ["--out", str(tmp_path / "one")]) == 0
    for it in (3, 6):
        one = _checkpoint(tmp_path / "one" / "checkpoints" / f"iter_{it:07d}.pt")
        two = _checkpoint(tmp_path / "two" / "checkpoints" / f"iter_{it:07d}.pt")
        for key, value in one.items():
            if value.is_floating_point():
                torch.testing.assert_close(two[key], value, rtol=1e-4, atol=1e-5, msg=key)
            else:
                assert torch.equal(two[key], value), key


@pytest.mark.slow
def test_study_cnn_data_parallel_rows_match_one_process(tmp_path):
    assert parallel.launch(cli_worker, 2, CNN_ARGS + ["--out", str(tmp_path / "two")], threads=1,
                           timeout_s=300) == 0
    from greedyprune.cli import main

    assert main(CNN_ARGS + ["--out", str(tmp_path / "one")]) == 0
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert len(one) == len(two) == 3 + 1
    for a, b in zip(one, two):
        for key, value in a.items():
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, abs=1.5 / 300), key  # at most one test image differs
            else:
                assert b[key] == value, key


@pytest.mark.slow
def test_sharded_studies_merge_to_the_rows_of_one_process(tmp_path):
    from greedyprune.cli import main
    from greedyprune.studies.cnn import config_with as cnn_config
    from greedyprune.studies.cnn import get_preset as cnn_preset
    from greedyprune.studies.cnn import run_cnn_study
    from greedyprune.studies.pretraining import config_with, get_preset, run_pretraining_study

    shards = parallel.launch(shard_worker, 2, str(tmp_path / "pt"), str(tmp_path / "cnn"), threads=1, timeout_s=300)
    assert shards == (0, 2)
    whole = run_pretraining_study(config_with(get_preset("quick"), **PRETRAINING), tmp_path / "pt-one",
                                  progress=False, log=lambda s: None)
    assert main(["merge", str(tmp_path / "pt-merged"), str(tmp_path / "pt" / "0"), str(tmp_path / "pt" / "1"),
                 "--no-plot"]) == 0
    part0 = _rows(tmp_path / "pt" / "0")
    assert 0 < len(part0) < len(whole.rows)
    assert _rows(tmp_path / "pt-merged") == _rows(tmp_path / "pt-one")  # exactly
    run_cnn_study(cnn_config(cnn_preset("quick"), **CNN_SHARDED), tmp_path / "cnn-one", progress=False,
                  log=lambda s: None)
    assert main(["merge", str(tmp_path / "cnn-merged"), str(tmp_path / "cnn" / "0"), str(tmp_path / "cnn" / "1"),
                 "--no-plot"]) == 0
    assert _rows(tmp_path / "cnn-merged") == _rows(tmp_path / "cnn-one")
    # a database of another configuration is refused by merge
    run_pretraining_study(config_with(get_preset("quick"), **{**PRETRAINING, "k": 4}), tmp_path / "other",
                          progress=False, log=lambda s: None, shard=(0, 2))
    with pytest.raises(SystemExit):
        main(["merge", str(tmp_path / "bad"), str(tmp_path / "pt" / "0"), str(tmp_path / "other"), "--no-plot"])
