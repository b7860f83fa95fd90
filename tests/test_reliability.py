"""No silently wrong model, no lost work, no disguised error (issue 9 items 3, 7, 9, 10, 11, 12; issue 10's
cli.main defect). Each test reproduces what the issue reported and checks the behaviour against an independent
computation or the file system."""
import json
import os
import signal
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from greedyprune.advisor import PretrainingAdvisor
from greedyprune.channels import prune_model
from greedyprune.cli import main
from greedyprune.data import load_mnist_idx
from greedyprune.fileio import RunLock, run_directory
from greedyprune.models import get_model
from greedyprune.selection import MAX_STEPS, greedy_forward_selection
from greedyprune.training.loop import TrainConfig, pretrain
from greedyprune.twolayer import prune_two_layer

TINY = {"in_channels": 1, "num_classes": 10, "width": 4}  # conftest.TINY_RESNET8, the `checkpoint` fixture's model
TRAIN = ["train", "--model", "resnet8", "--model-arg", "width=4", "--data", "digits", "--size", "64",
         "--iterations", "4", "--checkpoint-every", "2", "--batch-size", "16", "--eval-examples", "16",
         "--threads", "1", "--no-progress"]
PRUNE = ["--data", "digits", "--size", "64", "--keep-ratio", "0.5", "--candidates", "2", "--batch-size", "16",
         "--no-progress"]


def _fails(capsys, argv, *needles) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert err.startswith("greedyprune: error:") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture()
def no_search(monkeypatch):
    """Fail the test if the deep search starts (the command must stop before the long work)."""
    import greedyprune.channels as channels

    def refuse(*args, **kwargs):
        raise AssertionError("the search started")

    monkeypatch.setattr(channels, "prune_model", refuse)


def _images(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.arange(n) % 10


# ------------------------------------------------------------------------- item 3: element-wise activations


@pytest.mark.parametrize("act", [nn.Softmax(dim=1), nn.Softmax(dim=0), nn.LayerNorm(8, elementwise_affine=False),
                                 nn.BatchNorm1d(8, affine=False, track_running_stats=False)])
def test_prune_two_layer_refuses_activations_that_mix_neurons(act):
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(30, 5, generator=g), (torch.arange(30) % 2).float()
    model = nn.Sequential(nn.Linear(5, 8), act, nn.Linear(8, 1))
    with pytest.raises(TypeError, match=f"{type(act).__name__} is not element-wise"):
        prune_two_layer(model, X, y, 4)


def test_prune_two_layer_refuses_activations_with_per_neuron_state():
    X, y = torch.randn(30, 5), (torch.arange(30) % 2).float()
    for act in (nn.BatchNorm1d(8, affine=False).eval(), nn.PReLU(8)):  # a pruned copy would keep 8 entries
        with pytest.raises(TypeError, match="parameters or buffers"):
            prune_two_layer(nn.Sequential(nn.Linear(5, 8), act, nn.Linear(8, 1)), X, y, 4)


@pytest.mark.parametrize("act", [nn.ReLU(), nn.Tanh(), nn.GELU(), nn.LeakyReLU(0.1), nn.Hardtanh(), nn.SiLU()])
def test_element_wise_activations_give_the_selections_output(act):
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(30, 5, generator=g), (torch.arange(30) % 2).float()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), act, nn.Linear(8, 1))
    result = prune_two_layer(model, X, y, 4)
    # the pruned net computes exactly the averaged output the selection scored
    assert torch.allclose(result.model(X).reshape(-1), result.selection.output.reshape(-1).float(), atol=1e-5)


# ------------------------------------------------------------------------- item 7: non-finite inputs


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_prune_model_refuses_non_finite_inputs(bad):
    X, y = _images()
    X[5, 0, 2, 3] = bad
    model = get_model("resnet8", seed=0, **TINY)
    with pytest.raises(ValueError, match="NaN or infinite"):
        prune_model(model, (X, y), objective="network", keep_ratio=0.5, candidates=2)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=48)
    with pytest.raises(ValueError, match="NaN or infinite"):
        prune_model(model, loader, objective="network", keep_ratio=0.5, candidates=2)


def test_prune_model_refuses_labels_that_are_not_class_indices():
    X, y = _images()
    model = get_model("resnet8", seed=0, **TINY)
    with pytest.raises(TypeError, match="integer class indices"):
        prune_model(model, (X, y.float()), objective="network", keep_ratio=0.5, candidates=2)
    with pytest.raises(ValueError, match=">= 0"):
        prune_model(model, (X, y - 1), objective="network", keep_ratio=0.5, candidates=2)


# ------------------------------------------------------------------------- items 9, 10: --out and concurrent runs


def test_prune_checks_out_before_the_search(checkpoint, tmp_path, no_search, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    _fails(capsys, ["prune", str(checkpoint), *PRUNE, "--out", str(blocker / "pruned.pt")], "a-file")
    _fails(capsys, ["prune", str(checkpoint), *PRUNE, "--out", str(tmp_path)], "is a directory")
    _fails(capsys, TRAIN + ["--out", str(blocker / "run")], "cannot write to output directory")
    _fails(capsys, TRAIN + ["--out", str(blocker)], "is not a directory")
    assert blocker.read_text() == "not a directory"


def test_a_second_prune_on_the_same_out_fails_at_once(checkpoint, tmp_path, no_search, capsys):
    out = tmp_path / "pruned.pt"
    with RunLock.for_file(out):  # another run holds it (a lock on another open file: as another process)
        _fails(capsys, ["prune", str(checkpoint), *PRUNE, "--out", str(out)],
               str(out), f"in use by another greedyprune process (pid {os.getpid()})")
    assert not out.exists()


def test_a_second_run_on_the_same_directory_names_the_other_process(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(  # another process holding the run directory's lock, as a running `train` does
        [sys.executable, "-c", "import fcntl, os, sys; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
         "f.write(str(os.getpid())); f.flush(); print('locked', flush=True); sys.stdin.read()", str(out / ".lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        _fails(capsys, TRAIN + ["--out", str(out)], f"in use by another greedyprune process (pid {holder.pid})")
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed holder leaves no stale lock behind
        holder.wait()
    assert main(TRAIN + ["--out", str(out)]) == 0


# ------------------------------------------------------------------------- item 11: nothing written before checks


def test_a_refused_train_leaves_the_directory_as_it_was(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(TRAIN + ["--out", str(out)]) == 0
    # a run directory with a resume state but no train_config.json (as train_with_checkpoints leaves it)
    (out / "train_config.json").unlink()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    _fails(capsys, TRAIN[:4] + ["width=8"] + TRAIN[5:] + ["--out", str(out)], "train_state.pt",
           "resume state of another model")
    assert not (out / "train_config.json").exists()
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == before
    # so the original command still resumes
    assert main(TRAIN + ["--out", str(out)]) == 0
    assert json.loads((out / "train_config.json").read_text())["model_kwargs"]["width"] == 4


# ------------------------------------------------------------------------- item 12


def test_export_to_a_directory_leaves_no_tmp_file(tmp_path, capsys):
    from greedyprune.studies.pretraining import SCHEMA
    from greedyprune.studies.store import ResultsStore

    out = tmp_path / "study"
    with ResultsStore(out / "results.sqlite", SCHEMA):
        pass
    target = tmp_path / "csvdir"
    target.mkdir()
    _fails(capsys, ["export", str(out), "--csv", str(target)], "is a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["csvdir", "study"] and not list(target.iterdir())


def test_a_rerun_removes_the_tmp_files_a_killed_run_left(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(TRAIN + ["--out", str(out)]) == 0
    stale = [out / "train_state.pt.tmp", out / "checkpoints" / "iter_0000002.pt.tmp", out / "train_config.json.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    assert main(TRAIN + ["--out", str(out)]) == 0
    assert not list(out.rglob("*.tmp"))


def test_a_failed_run_leaves_no_empty_output_directory(tmp_path, capsys):
    out = tmp_path / "new"
    _fails(capsys, ["study", "pretraining", "--data", "digits", "--sizes", "99999", "--widths", "5", "--trials", "1",
                    "--iterations", "2", "--eval-every", "1", "--k", "2", "--no-progress", "--out", str(out)],
           "exceed the 1797 examples")
    assert not out.exists()
    _fails(capsys, TRAIN + ["--lr", "1e30", "--out", str(out)], "training diverged")
    assert out.is_dir()  # the run wrote checkpoints before it failed: they are kept


def test_run_directory_clears_stale_tmp_files_and_keeps_the_rest(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    for name in ("results.csv.tmp", "checkpoints/iter_0000010.pt.tmp", "results.csv", "checkpoints/iter_0000000.pt"):
        (out / name).write_text(name)
    with run_directory(out):
        left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != ".lock")
    assert left == ["checkpoints/iter_0000000.pt", "results.csv"]


def test_run_directory_removes_only_a_new_empty_directory(tmp_path):
    for existed, write in ((False, False), (False, True), (True, False)):
        out = tmp_path / f"{existed}-{write}"
        if existed:
            out.mkdir()
        with pytest.raises(RuntimeError):
            with run_directory(out):
                if write:
                    (out / "results.sqlite").write_bytes(b"rows")
                raise RuntimeError("the run failed")
        assert out.exists() == (existed or write)


def test_pretrain_refuses_to_resume_on_other_data(tmp_path):
    X, y = _images(32)
    state = tmp_path / "state.pt"
    config = TrainConfig(iterations=6, lr=0.05, batch_size=8, loss="cross_entropy")

    def stop(t, model):
        if t == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(get_model("resnet8", seed=0, **TINY), X, y, config, checkpoint_path=state, checkpoint_every=2,
                 callback=stop, callback_every=2)
    other = X.clone()
    other[0, 0, 0, 0] += 0.5
    for X2, y2 in ((other, y), (X, y.roll(1))):
        with pytest.raises(ValueError, match="other training data"):
            pretrain(get_model("resnet8", seed=0, **TINY), X2, y2, config, checkpoint_path=state)
    # the same data resumes, to the weights of an uninterrupted run
    resumed = pretrain(get_model("resnet8", seed=0, **TINY), X, y, config, checkpoint_path=state)
    straight = pretrain(get_model("resnet8", seed=0, **TINY), X, y, config)
    for a, b in zip(resumed.state_dict().values(), straight.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("loss, labels", [("logistic", torch.zeros(20)), ("logistic", torch.ones(20)),
                                          ("cross_entropy", torch.full((20,), 3))])
def test_pretrain_refuses_a_single_class(loss, labels):
    X = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    model = nn.Linear(4, 1 if loss == "logistic" else 5)
    if loss == "logistic":
        model = nn.Sequential(model, nn.Flatten(0))
    with pytest.raises(ValueError, match="at least two classes"):
        pretrain(model, X, labels, TrainConfig(iterations=3, batch_size=None, loss=loss))


def test_pretrain_accepts_constant_regression_targets():
    X = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    model = nn.Sequential(nn.Linear(4, 1), nn.Flatten(0))
    pretrain(model, X, torch.zeros(20), TrainConfig(iterations=50, batch_size=None, loss="squared", lr=0.1))
    assert float((model(X).detach() ** 2).mean()) < 1e-2  # it learned the constant


def test_the_advisor_on_a_cnn_says_which_loss_it_needs():
    X, y = _images(32)
    model = get_model("resnet8", seed=0, **TINY)
    with pytest.raises(ValueError, match="loss='cross_entropy'"):
        PretrainingAdvisor(k=3, log=None).check(0, model, X, y)
    advisor = PretrainingAdvisor(k=3, loss="cross_entropy", log=None,
                                 selection_options={"keep_ratio": 0.5, "candidates": 2, "batch_size": 16,
                                                    "eval_examples": 16})
    assert advisor.check(0, model, X, y) is False
    check = advisor.history[0]
    assert 0 <= check.pruned_accuracy <= 1 and 0 < check.distinct < sum(m.out_channels for m in model.modules()
                                                                        if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("k", [np.int64(3), np.int32(3), torch.tensor(3), torch.tensor(3, dtype=torch.int32)])
def test_k_may_be_a_numpy_integer_or_a_0d_tensor(k):
    g = torch.Generator().manual_seed(0)
    phi, target = torch.randn(10, 6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    expected = greedy_forward_selection(phi, target, 3)
    got = greedy_forward_selection(phi, target, k)
    assert got.indices.tolist() == expected.indices.tolist() and got.k == 3
    X, y = torch.randn(30, 5, generator=g), (torch.arange(30) % 2).float()
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1))
    assert prune_two_layer(net, X, y, k).kept == prune_two_layer(net, X, y, 3).kept


@pytest.mark.parametrize("k", [3.0, "3", True, torch.tensor(3.0)])
def test_k_that_is_not_an_integer_is_still_refused(k):
    phi, target = torch.randn(10, 6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    with pytest.raises(TypeError, match="k must be an int"):
        greedy_forward_selection(phi, target, k)


def test_k_beyond_the_step_bound_is_refused_before_any_work():
    phi, target = torch.randn(10, 6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    for k in (10 ** 9, MAX_STEPS + 1):
        with pytest.raises(ValueError, match=f"k={k:,} selection steps is more than the {MAX_STEPS:,}"):
            greedy_forward_selection(phi, target, k, replacement=True)
        with pytest.raises(ValueError, match=f"more than the {MAX_STEPS:,}"):
            greedy_forward_selection(None, None, k, gram=phi @ phi.T, cross=phi @ target)
    net = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 1))
    with pytest.raises(ValueError, match=f"more than the {MAX_STEPS:,}"):
        prune_two_layer(net, phi.float(), (torch.arange(10) % 2).float(), 10 ** 9)


def _idx(magic: int, dims, payload: bytes = b"") -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + payload


@pytest.mark.parametrize("dims", [(4, 2 ** 31, 2 ** 31),  # 2**64 bytes: a 64-bit product wraps to 0
                                  (2 ** 16, 2 ** 16, 2 ** 32 - 1),  # wraps to a negative number
                                  (4, 2 ** 32 - 1, 2 ** 32 - 1)])
def test_an_idx_header_whose_dimensions_overflow_is_a_clear_error(dims, tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx(2051, dims, bytes(16)))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(2049, (dims[0],), bytes(dims[0])))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte' is truncated: its header says dimensions "
                                         + rf"\({dims[0]}, {dims[1]}, {dims[2]}\).*only 16 bytes follow"):
        load_mnist_idx(tmp_path)


# ------------------------------------------------------------------------- issue 10: cli.main and internal errors


def test_cli_main_keeps_the_traceback_of_an_internal_error(tmp_path, monkeypatch, capsys):
    from greedyprune.studies import store

    # a ValueError raised inside C code that package code called (no frame of its own)
    monkeypatch.setattr(store, "open_results", os.stat)
    with pytest.raises(ValueError, match="embedded null byte"):
        main(["export", "bad\0name"])
    # a TypeError raised inside Python's own library
    monkeypatch.setattr(store, "open_results", json.loads)
    with pytest.raises(TypeError, match="JSON object must be"):
        main(["export", str(tmp_path)])
    # an error raised inside torch
    monkeypatch.setattr(store, "open_results", lambda d: torch.zeros(2).view(3))
    with pytest.raises(RuntimeError):
        main(["export", str(tmp_path)])
    # while the package's own messages stay clean: exit status 2, no traceback
    monkeypatch.undo()
    _fails(capsys, ["export", str(tmp_path)], "holds no study results")


def test_debug_variable_shows_the_traceback_of_user_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("GREEDYPRUNE_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="holds no study results"):
        main(["export", str(tmp_path)])


# ------------------------------------------------------------------------- issue 21 item 2: prune --out


def _prune_out(checkpoint, out, *extra):
    return ["prune", str(checkpoint), *PRUNE, "--out", str(out), *extra]


def test_prune_never_writes_over_its_input_or_a_file_it_did_not_write(checkpoint, tmp_path, capsys):
    original = checkpoint.read_bytes()
    _fails(capsys, _prune_out(checkpoint, checkpoint), "is the checkpoint being pruned", "Choose another --out")
    _fails(capsys, _prune_out(checkpoint, checkpoint, "--force"), "is the checkpoint being pruned")
    assert checkpoint.read_bytes() == original
    run = tmp_path / "run"
    assert main(TRAIN + ["--out", str(run)]) == 0
    for other in (run / "train_state.pt", run / "checkpoints" / "iter_0000002.pt", run / "train_config.json"):
        before = other.read_bytes()
        _fails(capsys, _prune_out(checkpoint, other), str(other), "is not a pruned model", "--force")
        assert other.read_bytes() == before
    out = tmp_path / "pruned.pt"
    assert main(_prune_out(checkpoint, out)) == 0
    assert main(_prune_out(checkpoint, out)) == 0  # its own output: a rerun replaces it
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    assert main(_prune_out(checkpoint, notes, "--force")) == 0  # replaced only when asked
    capsys.readouterr()


# ------------------------------------------------------------------------- issue 21 item 3: non-finite numbers


@pytest.mark.parametrize("option, value", [("--lr", "inf"), ("--lr", "nan"), ("--lr", "-inf"),
                                           ("--weight-decay", "inf"), ("--model-arg", "width=inf")])
def test_number_options_refuse_inf_and_nan(option, value, tmp_path, capsys):
    argv = TRAIN + [f"{option}={value}", "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "finite" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
    if option != "--model-arg":
        with pytest.raises(ValueError, match="finite"):
            TrainConfig(lr=float(value) if option == "--lr" else 0.1,
                        weight_decay=float(value) if option == "--weight-decay" else 0.0).validate()


def test_training_stops_at_the_first_non_finite_loss_keeping_the_good_checkpoints(tmp_path, capsys):
    run = tmp_path / "run"
    argv = TRAIN[:TRAIN.index("--iterations")] + ["--iterations", "1", "--checkpoint-every", "1", "--batch-size",
                                                 "16", "--eval-examples", "16", "--threads", "1", "--no-progress",
                                                 "--lr", "1e38", "--out", str(run)]
    _fails(capsys, argv, "training diverged by iteration 1", "nan", "lower the learning rate")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["iter_0000000.pt"]
    # a checkpoint whose weights are not finite: prune says so instead of blaming a layer
    from greedyprune.training.checkpoints import load_model, save_model

    model, info = load_model(run / "checkpoints" / "iter_0000000.pt")
    with torch.no_grad():
        next(model.parameters()).view(-1)[:3] = float("nan")
    bad = save_model(tmp_path / "nan.pt", model, name=info["name"], model_kwargs=info["model_kwargs"])
    _fails(capsys, ["prune", str(bad), *PRUNE], "NaN or infinite", "diverged", "conv1.weight (3 values)")
    X, y = _images()  # inputs up to 1e3: the first step's loss is finite, its update overflows float32
    with pytest.raises(FloatingPointError, match="at iteration 1: the weights became NaN or infinite in 1.weight"):
        pretrain(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), X * 1e3, y,
                 TrainConfig(iterations=2, lr=1e38, batch_size=8, loss="cross_entropy"), callback=lambda t, m: None,
                 callback_every=1)


# ------------------------------------------------------------------------- issue 21 item 6: one-line errors


class Regrouped(nn.Module):
    """Three convolutions, the last one's channels regrouped with a hard-coded ``x.reshape(B, 8, -1)``."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(2, 10)

    def forward(self, x):
        x = torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
        x = self.conv3(x).mean((2, 3))
        return self.fc(x.reshape(x.shape[0], 8, -1).mean(1))


def test_a_hard_coded_reshape_over_a_pruned_group_names_the_layer_and_the_skip():
    from greedyprune.channels.groups import UnsupportedLayerError

    X, y = _images(64)
    options = dict(keep_ratio=0.5, candidates=2, batch_size=16, eval_examples=16)
    with pytest.raises(UnsupportedLayerError, match=r"group 'conv3'.*no longer runs.*'conv3'.*test_reliability\.py:"
                                                    r"\d+.*skip=\['conv3'\]"):
        prune_model(Regrouped(), (X, y), **options)
    assert list(prune_model(Regrouped(), (X, y), extra_skip=["conv3"], **options).kept) == ["conv2"]
    with pytest.warns(UserWarning, match="group 'conv3'"):
        assert list(prune_model(Regrouped(), (X, y), unsupported="skip", **options).kept) == ["conv2"]


def test_sizes_workers_and_directories_that_cannot_work_are_refused_at_once(checkpoint, tmp_path, capsys, no_search):
    import os as _os

    cpus = len(_os.sched_getaffinity(0)) if hasattr(_os, "sched_getaffinity") else _os.cpu_count()
    _fails(capsys, _prune_out(checkpoint, tmp_path / "p.pt", "--workers", "100000"), "100000 worker processes",
           f"at most {cpus}")
    _fails(capsys, _prune_out(checkpoint, tmp_path / "p.pt", "--size", "100000"), "--size 100000 exceeds the 1797")
    for width in ("1000000000", "100000"):
        _fails(capsys, TRAIN[:4] + [f"width={width}"] + TRAIN[5:] + ["--out", str(tmp_path / "w")], "width")
    _fails(capsys, ["study", "pretraining", "--widths", "1000000000", "--data", "digits", "--sizes", "100",
                    "--no-progress", "--out", str(tmp_path / "s")], "width 1,000,000,000", "GiB", "smaller width")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("chapter 1")
    _fails(capsys, TRAIN + ["--out", str(mine)], "not a training run", "thesis.tex")
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]
    assert not (tmp_path / "w").exists() and not (tmp_path / "s").exists() and not (tmp_path / "p.pt").exists()


# ------------------------------------------------------------------------- issue 21 item 7: read-only --out, merge

STUDY = ["study", "pretraining", "--data", "digits", "--widths", "20", "--sizes", "200,400", "--trials", "2",
         "--iterations", "40", "--eval-every", "10", "--k", "5", "--reference", "largest", "--prune-to", "steps",
         "--no-progress", "--no-plot", "--threads", "1"]


def _rows(out):
    from greedyprune.studies.store import ResultsStore

    with ResultsStore(out / "results.sqlite") as store:
        return [{k: v for k, v in r.items() if k not in ("prune_seconds", "created")} for r in store.rows()]


class _NoReplace:
    """``os`` for greedyprune.fileio, whose ``replace`` fails as on a read-only directory after ``ok`` calls."""

    def __init__(self, ok):
        self.ok = ok

    def __getattr__(self, name):
        return getattr(os, name)

    def replace(self, src, dst):
        self.ok -= 1
        if self.ok < 0:
            raise PermissionError(13, "Permission denied", str(dst))
        return os.replace(src, dst)


@pytest.mark.parametrize("what, workers", [("database", "1"), ("checkpoint", "1"), ("checkpoint", "2")])
def test_an_out_made_read_only_midway_keeps_the_rows_and_resumes(what, workers, tmp_path, monkeypatch, capsys):
    from greedyprune import fileio
    from greedyprune.studies.store import ResultsStore

    argv = STUDY + ["--workers", workers]
    reference = tmp_path / "ref"
    assert main(argv + ["--out", str(reference)]) == 0
    out = tmp_path / "run"
    if what == "database":
        add = ResultsStore.add

        def add_then_read_only(store, row):
            if len(store) == 3:
                store._conn.execute("PRAGMA query_only=ON")  # SQLite's own read-only refusal from here on
            return add(store, row)

        monkeypatch.setattr(ResultsStore, "add", add_then_read_only)
        needles = ("cannot write the results database", "readonly", "run the same command again")
    else:
        monkeypatch.setattr(fileio, "os", _NoReplace(4))
        needles = ("cannot write", "Permission denied", "run the same command again")
    _fails(capsys, argv + ["--out", str(out)], *needles)
    kept = _rows(out)
    assert 0 < len(kept) < 20
    monkeypatch.undo()
    assert main(argv + ["--out", str(out)]) == 0
    assert "resuming" in capsys.readouterr().out
    assert _rows(out) == _rows(reference)


def test_merge_refuses_shards_that_disagree_on_a_row_and_writes_nothing(tmp_path, capsys):
    import sqlite3

    shards = [tmp_path / "0", tmp_path / "1"]
    for i, shard in enumerate(shards):
        assert main(STUDY + ["--shard", f"{i}/2", "--out", str(shard)]) == 0
    with sqlite3.connect(shards[1] / "results.sqlite") as conn:  # one row of shard 1 also in shard 0, altered
        row = conn.execute("SELECT * FROM results WHERE trial = 1 AND iteration = 20").fetchone()
        columns = [d[0] for d in conn.execute("SELECT * FROM results").description]
    with sqlite3.connect(shards[0] / "results.sqlite") as conn:
        values = dict(zip(columns, row), pruned_accuracy=0.123)
        conn.execute(f"INSERT INTO results ({', '.join(map(repr, values))}) VALUES ({', '.join('?' * len(values))})",
                     list(values.values()))
    _fails(capsys, ["merge", str(tmp_path / "m"), *map(str, shards), "--no-plot"],
           f"the row width=20, size={row[columns.index('size')]}, trial=1, iteration=20 differs", "'pruned_accuracy'",
           "nothing was merged")
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------------- issue 21 item 8: the main job


def test_distinct_pruning_is_one_selection_run_cut_at_the_kth_distinct_neuron(monkeypatch):
    from greedyprune import twolayer
    from greedyprune.twolayer import TwoLayerNet, neuron_outputs

    X, y = torch.randn(300, 20, generator=torch.Generator().manual_seed(0)), (torch.arange(300) % 2).float()
    net = TwoLayerNet(20, 200, seed=0, parameterization="mean-field")
    calls = []
    real = twolayer.greedy_forward_selection
    monkeypatch.setattr(twolayer, "greedy_forward_selection", lambda *a, **kw: calls.append(a[2]) or real(*a, **kw))
    result = prune_two_layer(net, X, y, 30, prune_to="distinct").selection
    assert calls == [300]  # one run, capped at 10 k steps (it was 30, 120, 300 steps, each from scratch)
    long = real(neuron_outputs(net, X), y, 300, loss="logistic")  # the definition: a long run's first steps
    first = {}
    for step, i in enumerate(long.indices.tolist()):
        first.setdefault(i, step)
    cut = sorted(first.values())[29] + 1
    assert result.indices.tolist() == long.indices[:cut].tolist() and torch.equal(result.losses, long.losses[:cut])


def test_the_study_rows_do_not_depend_on_the_thread_count_or_the_workers(tmp_path, capsys):
    from greedyprune.studies.pretraining import config_with, get_preset, run_pretraining_study

    config = config_with(get_preset("quick"), data="digits", widths=(40,), sizes=(300, 600), trials=2,
                         iterations=60, eval_every=20, k=8, reference="largest")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        run_pretraining_study(config, tmp_path / "one", progress=False, log=lambda s: None, workers=1)
        assert torch.get_num_threads() == 2  # the cells ran on one thread; the caller's setting is restored
    finally:
        torch.set_num_threads(threads)
    argv = ["study", "pretraining", "--data", "digits", "--widths", "40", "--sizes", "300,600", "--trials", "2",
            "--iterations", "60", "--eval-every", "20", "--k", "8", "--reference", "largest", "--no-progress",
            "--no-plot", "--threads", "2", "--workers", "2", "--out", str(tmp_path / "two")]
    assert main(argv) == 0
    assert _rows(tmp_path / "one") == _rows(tmp_path / "two")
