"""`greedyprune train`: periodic model checkpoints, exact resume after an interruption, clear errors."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from greedyprune import data
from greedyprune.cli import main
from greedyprune.training import checkpoints
from greedyprune.training.checkpoints import list_checkpoints, load_model

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
# resnet20 on 100 mnist5k images, batch 10: 40 steps take about a second
TINY = ["train", "--model", "resnet20", "--data", "mnist5k", "--size", "100", "--iterations", "40",
        "--checkpoint-every", "10", "--state-every", "5", "--batch-size", "10", "--eval-examples", "50",
        "--seed", "3", "--threads", "1", "--no-progress"]


@pytest.fixture
def cached_data(monkeypatch, mnist5k_pixel):
    """Load mnist5k once for the in-process runs (loading takes seconds)."""
    real = data.load_dataset

    def load(spec, **kw):
        if spec == "mnist5k" and kw.get("normalize") == "pixel" and kw.get("split", "train") == "train":
            return mnist5k_pixel
        return real(spec, **kw)

    monkeypatch.setattr(data, "load_dataset", load)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mnist5k_pixel):
    """An uninterrupted run of TINY."""
    out = tmp_path_factory.mktemp("reference")
    mp = pytest.MonkeyPatch()
    mp.setattr(data, "load_dataset", lambda spec, **kw: mnist5k_pixel)
    try:
        assert main(TINY + ["--out", str(out)]) == 0
    finally:
        mp.undo()
    return out


def stamps(out: Path) -> dict:
    """Every model checkpoint's modification time and bytes."""
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for _, p in list_checkpoints(out)}


def assert_same_final_model(out: Path, reference: Path):
    found, expected = list_checkpoints(out), list_checkpoints(reference)
    assert [t for t, _ in found] == [t for t, _ in expected] == [0, 10, 20, 30, 40]
    for (t, p), (_, q) in zip(found, expected):
        a, info = load_model(p, name="resnet20")
        b, _ = load_model(q)
        for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(v, w), (t, k)  # bitwise, BatchNorm statistics included
        assert info["extra"]["iteration"] == t


def test_reference_run_writes_config_checkpoints_and_metrics(reference, capsys):
    run = json.loads((reference / "train_config.json").read_text())
    assert run["model"] == "resnet20" and run["model_kwargs"] == {"num_classes": 10, "in_channels": 1}
    assert run["train"]["schedule"] == "cosine" and run["train"]["momentum"] == 0.9
    assert run["train"]["weight_decay"] == 5e-4 and run["train"]["lr"] == 0.1 and run["size"] == 100
    assert (reference / "train_state.pt").is_file()
    _, info = load_model(list_checkpoints(reference)[-1][1])
    extra = info["extra"]
    assert extra["data"] == "mnist5k" and extra["size"] == 100 and extra["seed"] == 3
    assert extra["eval_examples"] == {"train": 50} and "test_accuracy" not in extra  # mnist5k has no test split
    assert 0 <= extra["train_accuracy"] <= 1 and extra["train_loss"] > 0


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, reference, cached_data, monkeypatch, capsys):
    out = tmp_path / "run"
    real_save = checkpoints.save_model

    def save_then_crash(path, *a, **k):
        real_save(path, *a, **k)
        if Path(path).name == "iter_0000020.pt":
            raise KeyboardInterrupt  # after the model checkpoint, before the state at 20 is written

    monkeypatch.setattr(checkpoints, "save_model", save_then_crash)
    assert main(TINY + ["--out", str(out)]) == 130
    assert "Run the same command again to resume" in capsys.readouterr().err
    assert [t for t, _ in list_checkpoints(out)] == [0, 10, 20]
    monkeypatch.setattr(checkpoints, "save_model", real_save)

    before = stamps(out)
    assert main(TINY + ["--out", str(out)]) == 0
    assert "(resuming)" in capsys.readouterr().out
    after = stamps(out)
    assert all(after[name] == before[name] for name in before)  # finished checkpoints are not rewritten
    assert_same_final_model(out, reference)

    # a finished run: running it again changes nothing
    assert main(TINY + ["--out", str(out)]) == 0
    assert stamps(out) == after


@pytest.mark.slow  # 8-12 s: worker processes / a signal and a rerun; in the full suite
def test_sigint_then_rerun_gives_the_uninterrupted_weights(tmp_path, reference, cached_data, capsys):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # The child runs the real command; right after it writes its first training state (iteration 5 of 40) it
    # says so and waits there, so the SIGINT always lands mid-run, however fast or slow the machine is.
    # (A child started from a background job may inherit an ignored SIGINT: give it Python's default handler.)
    code = "\n".join([
        "import signal, sys, time",
        "signal.signal(signal.SIGINT, signal.default_int_handler)",
        "from greedyprune.training import loop",
        "real = loop.save_checkpoint",
        "def save_then_wait(path, payload):",
        "    real(path, payload)",
        "    if payload['iteration'] == 5:",
        "        print('TRAINING-STATE-WRITTEN', flush=True)",
        "        for _ in range(6000):",  # at most 5 minutes: a bound on a broken test, not a timing assumption
        "            time.sleep(0.05)",
        "        sys.exit('no SIGINT arrived')",
        "loop.save_checkpoint = save_then_wait",
        "from greedyprune.cli import main",
        "sys.exit(main(sys.argv[1:]))",
    ])
    proc = subprocess.Popen([sys.executable, "-c", code, *TINY, "--out", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stdout:  # ends early only if the child exits first (then the asserts below say why)
        seen.append(line)
        if line.strip() == "TRAINING-STATE-WRITTEN":
            break
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    stdout = "".join(seen) + stdout
    state = out / "train_state.pt"
    assert proc.returncode == 130, stdout + stderr
    assert "interrupted" in stderr
    assert 5 <= torch.load(state, weights_only=True)["iteration"] < 40
    assert list_checkpoints(out)[-1][0] < 40
    before = stamps(out)
    assert main(TINY + ["--out", str(out)]) == 0
    after = stamps(out)
    assert all(after[name] == before[name] for name in before)
    assert_same_final_model(out, reference)


def test_another_configuration_in_the_same_directory_is_refused(reference, cached_data, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*TINY[:-1], "--lr", "0.05", "--model-arg", "shortcut=A", "--no-progress", "--out", str(reference)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "greedyprune: error:" in err and "another configuration" in err
    assert "train.lr: 0.1 there, 0.05 now" in err and "model_kwargs.shortcut" in err


@pytest.mark.parametrize(
    "change, message",
    [
        (["--model", "resnet21"], "unknown model 'resnet21'; expected one of "),
        (["--iterations", "0"], "argument --iterations: expected an integer >= 1, got 0"),
        (["--checkpoint-every", "0"], "argument --checkpoint-every: expected an integer >= 1, got 0"),
        (["--model-arg", "shortcut"], "expected KEY=VALUE"),
        (["--model-arg", "depth=3"], "unexpected keyword argument(s) ['depth']"),
        (["--model-arg", "num_classes=3"], "is set by the command"),
        (["--data", "synthetic"], "not image data"),
        (["--momentum", "1"], "expected a number in [0, 1)"),
        (["--schedule", "step"], "invalid choice: 'step'"),
        (["--size", "5001"], "--size 5001 exceeds the 5000 training examples"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(change, message, tmp_path, cached_data, capsys):
    argv = ["train", "--model", "resnet20", "--iterations", "5", "--no-progress", "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exc:
        main(argv + change)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
