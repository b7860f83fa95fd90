"""No file the library reads runs code, and no damaged file loads silently (issue 9, items 1, 4, 5 and 8); no file
exhausts memory (issue 21, items 1 and 5).

Crafted payloads: a pickle whose ``__reduce__`` writes a marker file when it is unpickled, placed in a model
checkpoint, a pruned-model file, a training state and a CIFAR-10 batch. Every loader and every command must
refuse it, and the marker must not exist afterwards. Damaged files: garbage in a checkpoint's tensor data, two
floats changed in a training state, an empty checkpoint, a damaged page in a study's results database.
"""
import io
import os
import pathlib
import pickle
import re
import sqlite3
import struct
import zipfile

import numpy as np
import pytest
import torch

from greedyprune.channels import load_pruned, prune_model, save_pruned
from greedyprune.cli import main
from greedyprune.data import load_dataset
from greedyprune.fileio import IntegrityError, UnsafeFileError, load_pickle_restricted, save_torch, torch_bytes
from greedyprune.models import get_model
from greedyprune.studies.store import DamagedDatabaseError, ResultsStore
from greedyprune.training.checkpoints import MODEL_CHECKPOINT_FORMAT, load_model, save_model
from greedyprune.training.loop import TrainConfig, load_checkpoint, pretrain

TINY = {"in_channels": 1, "num_classes": 10, "width": 4}  # conftest.TINY_RESNET8, the `checkpoint` fixture's model
# `greedyprune train` / `prune` on 64 scikit-learn digits (1 x 8 x 8): a second or two each
TRAIN = ["train", "--model", "resnet8", "--model-arg", "width=4", "--data", "digits", "--size", "64",
         "--iterations", "4", "--checkpoint-every", "2", "--batch-size", "16", "--eval-examples", "16",
         "--threads", "1", "--no-progress"]
PRUNE = ["--data", "digits", "--size", "64", "--keep-ratio", "0.5", "--candidates", "2", "--batch-size", "16",
         "--no-progress"]


class WriteFile:
    """Unpickling this calls ``Path.write_text(marker, "pwned")``: any code a file could run instead."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return pathlib.Path.write_text, (self.marker, "pwned")


class Exec(WriteFile):
    """The same through ``exec`` of source text."""

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


PAYLOADS = [WriteFile, Exec]


@pytest.fixture()
def marker(tmp_path):
    return tmp_path / "pwned.txt"


def _fails(capsys, argv, *needles) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert err.startswith("greedyprune: error:") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def pruned():
    """A small pruned resnet8 (the search takes about two seconds) and the inputs it was pruned on."""
    g = torch.Generator().manual_seed(0)
    X, y = torch.rand(48, 1, 8, 8, generator=g), torch.arange(48) % 10
    dense = get_model("resnet8", seed=0, **TINY)
    result = prune_model(dense, (X, y), objective="network", keep_ratio=0.5, candidates=2, batch_size=16,
                         eval_examples=16)
    return dense, result, X


@pytest.mark.parametrize("payload", PAYLOADS)
def test_the_payloads_run_code_when_unpickled(payload, marker):
    """The payloads are live: an ordinary unpickling (what the old loaders did) writes the marker."""
    pickle.loads(pickle.dumps(payload(marker)))
    assert marker.read_text() == "pwned"
    marker.unlink()
    torch.load(io.BytesIO(torch_bytes(payload(marker))), weights_only=False)
    assert marker.read_text() == "pwned"


# ------------------------------------------------------------------------------------- model checkpoints


def _evil_model_checkpoint(path, payload, *, outer=False):
    """A greedyprune-model-v1 file with a valid checksum whose embedded module bytes (or, with ``outer``, the
    ``extra`` entry of the file itself) are the payload: what a file shared by someone else may hold."""
    body = {"format": MODEL_CHECKPOINT_FORMAT, "name": "resnet8", "model_kwargs": TINY, "state_dict": None,
            "module": None if outer else torch_bytes(payload), "extra": {}, "torch_version": str(torch.__version__)}
    if outer:
        body["extra"] = {"note": payload}
        torch.save(body, path)
    else:
        save_torch(path, body)
    return path


@pytest.mark.parametrize("payload", PAYLOADS)
def test_load_model_refuses_an_embedded_pickled_module(payload, marker, tmp_path, capsys):
    path = _evil_model_checkpoint(tmp_path / "evil.pt", payload(marker))
    for kwargs in ({}, {"name": "resnet8"}, {"name": "resnet8", "model_kwargs": TINY}):
        with pytest.raises(UnsafeFileError, match="pickled module.*trust_pickle=True"):
            load_model(path, **kwargs)
    _fails(capsys, ["prune", str(path), *PRUNE], str(path), "--trust-pickle")
    assert not marker.exists()


@pytest.mark.parametrize("payload", PAYLOADS)
def test_load_model_refuses_pickled_objects_in_the_file_itself(payload, marker, tmp_path, capsys):
    whole = tmp_path / "whole.pt"
    torch.save(payload(marker), whole)  # the whole file is the payload
    inside = _evil_model_checkpoint(tmp_path / "inside.pt", payload(marker), outer=True)
    for path in (whole, inside):
        with pytest.raises(UnsafeFileError, match="pickled Python objects"):
            load_model(path, name="resnet8")
        _fails(capsys, ["prune", str(path), *PRUNE], str(path), "pickled Python objects")
    assert not marker.exists()


def test_trust_pickle_still_loads_a_benign_full_module_checkpoint(pruned, tmp_path, capsys):
    _, result, X = pruned
    path = tmp_path / "full.pt"
    save_model(path, result.model, name="resnet8", model_kwargs=TINY, full_module=True)
    with pytest.raises(UnsafeFileError):
        load_model(path)
    model, info = load_model(path, trust_pickle=True)
    assert info["full_module"]
    assert torch.equal(model.eval()(X), result.model.eval()(X))
    # and on the command line, only with --trust-pickle
    out = tmp_path / "again.pt"
    _fails(capsys, ["prune", str(path), *PRUNE, "--out", str(out)], "--trust-pickle")
    assert main(["prune", str(path), *PRUNE, "--out", str(out), "--trust-pickle"]) == 0
    assert out.is_file()


# ------------------------------------------------------------------------------------- pruned models


def _with_module(src, dst, module_bytes, **changes):
    """A copy of the pruned-model file ``src`` whose stored module bytes are replaced (valid checksum)."""
    payload = torch.load(src, weights_only=True)
    payload.pop("checksum")
    payload.update(module=module_bytes, **changes)
    save_torch(dst, payload)
    return dst


@pytest.mark.parametrize("payload", PAYLOADS)
def test_load_pruned_rebuilds_without_unpickling_the_stored_module(payload, pruned, marker, tmp_path):
    dense, result, X = pruned
    good = save_pruned(tmp_path / "good.pt", result, name="resnet8", model_kwargs=TINY, full_module=True)
    evil = _with_module(good, tmp_path / "evil.pt", torch_bytes(payload(marker)))
    expected = result.model.eval()(X)
    for kwargs in ({}, {"model": dense}, {"trust_pickle": True}):
        model, info = load_pruned(evil, **kwargs)  # the history is replayed; the module bytes are never read
        assert info["full_module"] and torch.equal(model.eval()(X), expected)
    assert not marker.exists()


@pytest.mark.parametrize("payload", PAYLOADS)
def test_load_pruned_refuses_a_file_that_only_a_pickle_could_rebuild(payload, pruned, marker, tmp_path, capsys):
    dense, result, X = pruned
    good = save_pruned(tmp_path / "good.pt", result, full_module=True)  # no name: not rebuildable by itself
    evil = _with_module(good, tmp_path / "evil.pt", torch_bytes(payload(marker)))
    with pytest.raises(UnsafeFileError, match="trust_pickle=True"):
        load_pruned(evil)
    model, _ = load_pruned(evil, model=dense)  # the safe path: replay the history on the user's dense model
    assert torch.equal(model.eval()(X), result.model.eval()(X))
    _fails(capsys, ["prune", str(evil), *PRUNE], str(evil))
    assert not marker.exists()
    # the opt-in is real: a benign file of this kind loads with trust_pickle=True
    benign, _ = load_pruned(good, trust_pickle=True)
    assert torch.equal(benign.eval()(X), result.model.eval()(X))


@pytest.mark.parametrize("payload", PAYLOADS)
def test_load_pruned_refuses_raw_pickles_and_old_whole_module_files(payload, marker, tmp_path, capsys):
    raw = tmp_path / "raw.pt"
    torch.save(payload(marker), raw)
    old = tmp_path / "old.pt"  # what save_pruned wrote before: the module pickled into the file itself
    torch.save({"format": "greedyprune-pruned-v1", "module": payload(marker), "state_dict": {}, "history": [],
                "name": None, "model_kwargs": {}, "kept": {}, "report": {}, "extra": {}}, old)
    for path in (raw, old):
        for kwargs in ({}, {"trust_pickle": True}, {"model": get_model("resnet8", **TINY)}):
            with pytest.raises(UnsafeFileError, match="pickled Python objects"):
                load_pruned(path, **kwargs)
        _fails(capsys, ["prune", str(path), *PRUNE], str(path))
    assert not marker.exists()


# ------------------------------------------------------------------------------------- claimed widths (issue 21)

GROWTH_PROBE = """
import resource, sys
from greedyprune.channels import load_pruned
from greedyprune.training.checkpoints import load_model
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    (load_model if sys.argv[1] == "model" else load_pruned)(sys.argv[2])
except ValueError as exc:
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, str(exc)[:300])
"""


def _claiming(src, dst, width, pruned=False):
    """A copy of a small file (valid checksum) whose architecture record claims ``width``."""
    payload = torch.load(src, weights_only=True)
    payload.pop("checksum")
    payload["model_kwargs"] = {**TINY, "width": width}
    return save_torch(dst, payload)


@pytest.mark.parametrize("kind", ["model", "pruned"])
def test_a_claimed_width_allocates_nothing_before_the_shapes_are_compared(kind, checkpoint, pruned, tmp_path, capsys):
    import subprocess
    import sys

    src = checkpoint if kind == "model" else save_pruned(tmp_path / "p.pt", pruned[1], name="resnet8",
                                                         model_kwargs=TINY)
    wide = _claiming(src, tmp_path / "wide.pt", 600)  # 136 M parameters: 545 MB if it were built
    out = subprocess.run([sys.executable, "-c", GROWTH_PROBE, kind, str(wide)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0 and out.stdout, out.stderr
    grown_kib, message = out.stdout.split(" ", 1)
    assert int(grown_kib) < 100 * 1024, message  # the model was never materialised
    assert "wide.pt" in message and "do not fit" in message.replace("does not fit", "do not fit")
    huge = _claiming(src, tmp_path / "huge.pt", 100_000)  # once a raw allocator error
    loader = load_model if kind == "model" else load_pruned
    with pytest.raises(ValueError, match="huge.pt"):
        loader(huge)
    if kind == "model":
        _fails(capsys, ["prune", str(huge), *PRUNE], "huge.pt", "does not fit")



# ------------------------------------------------------------------------------------- training state


def _train_config():
    return TrainConfig(iterations=4, lr=0.1, batch_size=8, loss="cross_entropy")


def _tiny_data():
    g = torch.Generator().manual_seed(1)
    return torch.rand(32, 1, 8, 8, generator=g), torch.arange(32) % 10


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_training_state_with_a_payload_is_refused(payload, marker, tmp_path, capsys):
    X, y = _tiny_data()
    state = tmp_path / "train_state.pt"
    torch.save({"format": "greedyprune-train-v1", "iteration": 2, "config": {}, "model": payload(marker),
                "optimizer": {}, "checksum": "0"}, state)
    with pytest.raises(UnsafeFileError, match="pickled Python objects"):
        load_checkpoint(state)
    with pytest.raises(UnsafeFileError, match="pickled Python objects"):
        pretrain(get_model("resnet8", seed=0, **TINY), X, y, _train_config(), checkpoint_path=state)
    # `greedyprune train` resuming from a directory that holds it
    out = tmp_path / "run"
    out.mkdir()
    state.rename(out / "train_state.pt")
    _fails(capsys, TRAIN + ["--out", str(out)], "train_state.pt", "pickled Python objects")
    assert not marker.exists()
    assert sorted(p.name for p in out.iterdir()) == ["train_state.pt"]  # nothing written into the directory


# ------------------------------------------------------------------------------------- CIFAR-10 batches


def _cifar_dir(directory, batch_of):
    """Six CIFAR-10 python batches as the dataset's own files are written (a pickled dict); ``batch_of(name,
    genuine_dict)`` returns what to pickle for each file."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        genuine = {b"batch_label": name.encode(), b"labels": [int(v) for v in rng.integers(0, 10, 4)],
                   b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                   b"filenames": [b"img%d.png" % i for i in range(4)]}
        with open(directory / name, "wb") as f:
            pickle.dump(batch_of(name, genuine), f, protocol=2)
    return directory


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_genuine_cifar_batches_still_load(tmp_path, protocol):
    expected = {}

    def keep(name, genuine):
        expected[name] = genuine
        return genuine

    folder = _cifar_dir(tmp_path / "c", keep)
    for name, batch in expected.items():  # every pickle protocol numpy arrays are written with
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
    ds = load_dataset(f"cifar10:{folder}", normalize="none", split="test")
    assert torch.equal(ds.X, torch.from_numpy(expected["test_batch"][b"data"].astype(np.float32)))
    assert ds.labels.tolist() == expected["test_batch"][b"labels"]


def _py2_pickle(obj) -> bytes:
    """``obj`` pickled as Python 2's cPickle wrote the CIFAR-10 batches (protocol 2): ``str`` as SHORT_BINSTRING
    / BINSTRING, numpy arrays through ``numpy.core.multiarray._reconstruct`` with the raw bytes as a string."""
    out = [b"\x80\x02"]

    def put(o):
        if isinstance(o, dict):
            out.append(b"}(")  # EMPTY_DICT MARK ... SETITEMS
            for key, value in o.items():
                put(key)
                put(value)
            out.append(b"u")
        elif isinstance(o, list):
            out.append(b"](")  # EMPTY_LIST MARK ... APPENDS
            for value in o:
                put(value)
            out.append(b"e")
        elif isinstance(o, tuple):
            out.append(b"(")
            for value in o:
                put(value)
            out.append(b"t")
        elif isinstance(o, bytes):
            out.append(b"U" + bytes([len(o)]) + o if len(o) < 256 else b"T" + struct.pack("<i", len(o)) + o)
        elif o is None:
            out.append(b"N")
        elif isinstance(o, bool):
            out.append(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            out.append(b"J" + struct.pack("<i", o))
        elif isinstance(o, np.ndarray):
            out.append(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            put((0,))
            put(b"b")
            out.append(b"\x87R(J\x01\x00\x00\x00")  # TUPLE3 REDUCE, then the state: version 1,
            put(o.shape)  # the shape,
            out.append(b"cnumpy\ndtype\n")  # the dtype (rebuilt from its code and state),
            put((o.dtype.str[1:].encode(), 0, 1))
            out.append(b"R")
            put((3, o.dtype.str[:1].encode(), None, None, None, -1, -1, 0))
            out.append(b"b")
            put(False)  # Fortran order, and the raw bytes
            put(o.tobytes())
            out.append(b"tb")
        else:
            raise TypeError(type(o))

    put(obj)
    return b"".join(out) + b"."


def test_python2_cifar_batches_load(tmp_path):
    """The published batches were written by Python 2: what a plain unpickler reads from them, the restricted
    one reads too."""
    batches = {}

    def py2(name, genuine):
        batches[name] = genuine
        return genuine

    folder = _cifar_dir(tmp_path / "c", py2)
    for name, batch in batches.items():
        (folder / name).write_bytes(_py2_pickle(batch))
        plain = pickle.loads((folder / name).read_bytes(), encoding="bytes")
        assert np.array_equal(plain[b"data"], batch[b"data"]) and plain[b"labels"] == batch[b"labels"]
        restricted = load_pickle_restricted(folder / name, what="CIFAR-10 batch")
        assert restricted.keys() == plain.keys() and np.array_equal(restricted[b"data"], plain[b"data"])
    ds = load_dataset(f"cifar10:{folder}", normalize="none")
    assert torch.equal(ds.X, torch.from_numpy(np.concatenate([batches[f"data_batch_{i}"][b"data"]
                                                               for i in range(1, 6)]).astype(np.float32)))


@pytest.mark.parametrize("where", ["file", "data", "labels", "object array"])
@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_cifar_batch_with_a_payload_is_refused(where, payload, marker, tmp_path, capsys, checkpoint):
    evil = payload(marker)

    def poison(name, genuine):
        if name != "data_batch_3":
            return genuine
        if where == "file":
            return evil
        if where == "object array":
            return {**genuine, b"data": np.array([evil, 1], dtype=object)}
        return {**genuine, where.encode(): evil}

    folder = _cifar_dir(tmp_path / "cifar", poison)
    # what the refusal names: the first global outside the allowed ones (protocol 2 writes builtins as
    # __builtin__, and Path.write_text as getattr(Path, "write_text")), or the object dtype it meets first
    named = "an array of dtype object" if where == "object array" else \
        "a pickled __builtin__." + ("exec" if payload is Exec else "getattr")
    with pytest.raises(UnsafeFileError, match=re.escape(f"data_batch_3 holds {named}")):
        load_dataset(f"cifar10:{folder}")
    _fails(capsys, TRAIN[:6] + [f"cifar10:{folder}"] + TRAIN[7:] + ["--out", str(tmp_path / "o")],
           "data_batch_3", named)
    _fails(capsys, ["prune", str(checkpoint), "--data", f"cifar10:{folder}", "--no-progress"], "data_batch_3")
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_the_cifar_reader_admits_numpy_arrays_of_numbers_only(tmp_path):
    path = tmp_path / "batch"
    for value, message in [(np.array(["a", 1], dtype=object), "holds an array of dtype object"),
                           (np.ma.masked_array([1, 2]), r"holds a pickled numpy\.ma\.core\."),
                           (np.datetime64("2020-01-01"), r"holds a pickled numpy\.(_)?core\.multiarray\.scalar"),
                           (io.BytesIO(b""), r"holds a pickled _io\.BytesIO")]:
        with open(path, "wb") as f:
            pickle.dump({b"data": value}, f, protocol=2)
        with pytest.raises(UnsafeFileError, match=message):
            load_pickle_restricted(path, what="CIFAR-10 batch")
    plain = {b"a": [1, 2.5, b"x", "y", (None, True)], b"arr": np.arange(6, dtype=np.float32).reshape(2, 3)}
    for protocol in (0, 2, 5):
        with open(path, "wb") as f:
            pickle.dump(plain, f, protocol=protocol)
        back = load_pickle_restricted(path, what="test file")
        assert back[b"a"] == plain[b"a"] and np.array_equal(back[b"arr"], plain[b"arr"])


# ------------------------------------------------------------------------------------- CIFAR-10: memory (issue 21)


class ZeroStrides:
    """``numpy.ndarray(shape, uint8, buffer, 0, strides)`` called directly: 10^9 rows of 3072 bytes over a one-byte
    buffer with zero strides - a 170-byte file that claims 3 TB and passes every shape and dtype check."""

    def __init__(self, rows=10 ** 9):
        self.rows = rows

    def __reduce__(self):
        return np.ndarray, ((self.rows, 3072), np.dtype(np.uint8), b"\x00", 0, (0, 0))


class FlaggedDtype:
    """A dtype of numbers, then a BUILD that resets its flags (``0x3f``: it would claim to hold Python objects)."""

    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return np.dtype, (self.code, False, True), (3, "|", None, None, None, -1, -1, 0x3F)


class SharedBytes:
    """An array rebuilt the way numpy pickles one, over a bytes object shared (through the memo) with others."""

    def __init__(self, raw, rows):
        self.raw, self.rows = raw, rows

    def __reduce__(self):
        rebuild = np.zeros(1).__reduce__()[0]
        return rebuild, (np.ndarray, (0,), b"b"), (1, (self.rows, 3072), np.dtype(np.uint8), False, self.raw)


def _hostile_cifar(tmp_path, make):
    return _cifar_dir(tmp_path / "c", lambda name, genuine: make(genuine))


def test_a_direct_ndarray_call_with_zero_strides_is_refused(tmp_path, capsys):
    payload = pickle.dumps({b"data": ZeroStrides(), b"labels": [0]}, protocol=2)
    assert len(payload) < 256  # a few hundred bytes that claim 3 TB
    folder = _hostile_cifar(tmp_path, lambda g: {**g, b"data": ZeroStrides(20_000), b"labels": [0] * 20_000})
    with pytest.raises(UnsafeFileError, match=r"direct call of numpy\.ndarray\(\.\.\.\).*zero strides|direct call of "
                                              r"numpy\.ndarray"):
        load_dataset(f"cifar10:{folder}")
    _fails(capsys, TRAIN[:6] + [f"cifar10:{folder}"] + TRAIN[7:] + ["--out", str(tmp_path / "o")],
           "data_batch_1", "numpy.ndarray(...)")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("code", ["u8", "V8", "f4"])
def test_a_build_that_resets_a_dtypes_flags_is_refused(code, tmp_path):
    path = tmp_path / "batch"
    array_state = (1, (1,), FlaggedDtype(code), False, b"A" * 8)

    class WithFlaggedDtype:
        def __reduce__(self):
            return np.zeros(1).__reduce__()[0], (np.ndarray, (0,), b"b"), array_state

    path.write_bytes(pickle.dumps({b"data": WithFlaggedDtype()}, protocol=2))
    message = "dtype |V8" if code == "V8" else "a dtype state"
    with pytest.raises(UnsafeFileError, match=re.escape(message)):
        load_pickle_restricted(path, what="CIFAR-10 batch")
    for shared in ("u8", "f4", "u1"):  # numpy's own descriptors are untouched
        assert np.dtype(shared).flags == 0 and not np.dtype(shared).hasobject


def test_arrays_that_claim_more_bytes_than_the_file_holds_are_refused(tmp_path):
    raw = bytes(range(256)) * 12 * 10  # 10 rows of 3072 bytes, stored once
    folder = _hostile_cifar(tmp_path, lambda g: {**g, b"data": SharedBytes(raw, 10), b"labels": [0] * 10,
                                                  b"copies": [SharedBytes(raw, 10) for _ in range(50)]})
    with pytest.raises(UnsafeFileError, match="claim more bytes than the file holds"):
        load_dataset(f"cifar10:{folder}", split="test")
    # one array over its bytes is what numpy itself writes: admitted
    ok = _hostile_cifar(tmp_path / "ok", lambda g: {**g, b"data": SharedBytes(raw, 10), b"labels": list(range(10))})
    assert load_dataset(f"cifar10:{ok}", normalize="none", split="test").X.shape == (10, 3072)


@pytest.mark.parametrize("state, message", [((1, (2, 3072), np.dtype(np.uint8), False, b"\x00"), "over 1 bytes"),
                                            ((1, (-1,), np.dtype(np.uint8), False, b"\x00"), "shape"),
                                            ((1, (1,), np.dtype(np.uint8), False, [1]), "data of type list")])
def test_an_array_state_must_match_its_bytes(state, message, tmp_path):
    class Array:
        def __reduce__(self):
            return np.zeros(1).__reduce__()[0], (np.ndarray, (0,), b"b"), state

    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": Array()}, protocol=2))
    with pytest.raises(UnsafeFileError, match=re.escape(message)):
        load_pickle_restricted(path, what="CIFAR-10 batch")


MEMORY_PROBE = """
import resource, sys
import greedyprune.data as data
from greedyprune.data import load_dataset
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ds = load_dataset("cifar10:" + sys.argv[1], normalize="unit")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, tuple(ds.X.shape))
"""


def test_a_loaded_cifar_set_takes_a_small_multiple_of_its_files_size(tmp_path):
    import subprocess
    import sys

    rng = np.random.default_rng(0)

    def big(name, genuine):
        return {**genuine, b"data": rng.integers(1, 256, (1500, 3072), dtype=np.uint8),
                b"labels": [int(v) for v in rng.integers(0, 10, 1500)]}

    folder = _cifar_dir(tmp_path / "c", big)
    files = sum((folder / f"data_batch_{i}").stat().st_size for i in range(1, 6))
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(folder)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    grown_kib, shape = out.stdout.split(" ", 1)
    assert shape.strip() == "(7500, 3072)"
    # the float32 data set is 4x the files; the raw bytes and arrays beside it a little more, never a float64 copy
    assert int(grown_kib) * 1024 <= 6 * files, (int(grown_kib) * 1024 / files, files)


# ------------------------------------------------------------------------------------- damaged files


def _storage_span(path) -> tuple[int, int]:
    """Byte offset and length of the largest tensor storage in a torch zip file."""
    raw = pathlib.Path(path).read_bytes()
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if re.search(r"/data/\d+$", i.filename)), key=lambda i: i.file_size)
    assert info.compress_type == zipfile.ZIP_STORED
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def _damage(path, offset: int, new: bytes) -> None:
    raw = bytearray(pathlib.Path(path).read_bytes())
    assert raw[offset:offset + len(new)] != new
    raw[offset:offset + len(new)] = new
    pathlib.Path(path).write_bytes(bytes(raw))


def _garbage_in_the_middle(path, n: int = 40) -> None:
    start, size = _storage_span(path)
    middle = start + size // 2 - n // 2
    old = pathlib.Path(path).read_bytes()[middle:middle + n]
    _damage(path, middle, bytes(b ^ 0xA5 for b in old))


def test_garbage_in_a_checkpoints_weights_is_an_integrity_error(checkpoint, capsys):
    before = torch.load(checkpoint, weights_only=True)["state_dict"]
    _garbage_in_the_middle(checkpoint)
    after = torch.load(checkpoint, weights_only=True)["state_dict"]  # torch itself notices nothing
    assert any(not torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(IntegrityError, match=re.escape(str(checkpoint)) + ".*damaged.*Delete it"):
        load_model(checkpoint)
    _fails(capsys, ["prune", str(checkpoint), *PRUNE], str(checkpoint), "damaged", "Delete it to recompute")
    assert not checkpoint.with_suffix(".pruned.pt").exists()


def test_garbage_in_a_pruned_model_is_an_integrity_error(pruned, tmp_path):
    _, result, _ = pruned
    path = save_pruned(tmp_path / "p.pt", result, name="resnet8", model_kwargs=TINY)
    _garbage_in_the_middle(path)
    with pytest.raises(IntegrityError, match="Delete it"):
        load_pruned(path)


def test_two_changed_floats_in_a_training_state_are_refused_on_resume(tmp_path, capsys):
    X, y = _tiny_data()
    state = tmp_path / "train_state.pt"

    def stop(t, model):
        if t == 4:
            raise KeyboardInterrupt  # after the state at iteration 2 was written

    config = TrainConfig(iterations=6, lr=0.1, batch_size=8, loss="cross_entropy")
    with pytest.raises(KeyboardInterrupt):
        pretrain(get_model("resnet8", seed=0, **TINY), X, y, config, checkpoint_path=state, checkpoint_every=2,
                 callback=stop, callback_every=2)
    start, size = _storage_span(state)
    assert size >= 64
    _damage(state, start + 12, struct.pack("<f", 0.123))
    _damage(state, start + 40, struct.pack("<f", -7.5))
    torch.load(state, weights_only=True)  # still a readable torch file
    with pytest.raises(IntegrityError, match="train_state.pt is damaged"):
        pretrain(get_model("resnet8", seed=0, **TINY), X, y, config, checkpoint_path=state, checkpoint_every=2)


def test_a_damaged_train_state_stops_greedyprune_train(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(TRAIN + ["--out", str(out)]) == 0
    start, _ = _storage_span(out / "train_state.pt")
    _damage(out / "train_state.pt", start + 8, struct.pack("<ff", 1.5, -2.5))
    config = (out / "train_config.json").read_bytes()
    _fails(capsys, TRAIN + ["--out", str(out)], "train_state.pt", "damaged", "Delete it")
    assert (out / "train_config.json").read_bytes() == config


def test_delete_to_recompute_really_recomputes_a_damaged_training_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(TRAIN + ["--out", str(out)]) == 0
    ckpt = out / "checkpoints" / "iter_0000002.pt"
    original = load_model(ckpt)[0].state_dict()
    _garbage_in_the_middle(ckpt)
    _fails(capsys, ["prune", str(ckpt), *PRUNE], str(ckpt), "Delete it to recompute")
    ckpt.unlink()
    # the resume state is past it, so a plain rerun cannot write it again: it says so instead of finishing without
    _fails(capsys, TRAIN + ["--out", str(out)], "iteration(s) [2]", "train_state.pt is at iteration 4")
    (out / "train_state.pt").unlink()
    assert main(TRAIN + ["--out", str(out)]) == 0
    recomputed = load_model(ckpt)[0].state_dict()
    assert all(torch.equal(recomputed[k], v) for k, v in original.items())  # bitwise the weights it had


@pytest.mark.parametrize("loader", [load_model, load_pruned, load_checkpoint])
def test_an_empty_file_is_a_clear_error(loader, tmp_path, capsys):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.pt is empty \(0 bytes\).*delete it"):
        loader(path)
    if loader is load_model:
        _fails(capsys, ["prune", str(path), *PRUNE], "empty.pt is empty (0 bytes)")


def test_a_truncated_checkpoint_is_a_clear_error(checkpoint, capsys):
    checkpoint.write_bytes(checkpoint.read_bytes()[:500])
    with pytest.raises(ValueError, match="not a readable model checkpoint.*delete it"):
        load_model(checkpoint)
    _fails(capsys, ["prune", str(checkpoint), *PRUNE], str(checkpoint), "not a readable model checkpoint")


# ------------------------------------------------------------------------------------- results database

STUDY = ["study", "pretraining", "--data", "digits", "--widths", "20", "--sizes", "200,400", "--trials", "1",
         "--iterations", "20", "--eval-every", "10", "--k", "5", "--reference", "largest", "--no-progress", "--no-plot",
         "--threads", "1"]


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "run"
    assert main(STUDY + ["--out", str(out)]) == 0
    return out


def _page_of(db, table: str) -> tuple[int, int]:
    with sqlite3.connect(db) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name=?", (table,)).fetchone()[0]
    return (root - 1) * page_size, page_size


# how the results table's page can be damaged: its type byte, its cell count, one cell pointer, or 40 garbage
# bytes in a row's text (no longer UTF-8: the page structure is intact, a stored value is not); or the type
# byte of the meta table's page, read when the file is opened
DAMAGE = {"page type": (0, b"\x0a"), "cell count": (4, b"\x30"), "cell pointer": (8, b"\xff"), "row bytes": None,
          "meta page": (0, b"\x0a")}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_results_database_is_a_clean_error(damage, study_dir, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(study_dir, out)
    db = out / "results.sqlite"
    with ResultsStore(db) as store:
        rows = len(store)
    assert rows == 6
    offset, page_size = _page_of(db, "meta" if damage == "meta page" else "results")
    if DAMAGE[damage] is None:
        at = db.read_bytes().index(b"[0.", offset, offset + page_size) + 4  # inside a row's JSON losses
        new = bytes(b ^ 0xA5 for b in db.read_bytes()[at:at + 40])
    else:
        at, new = offset + DAMAGE[damage][0], DAMAGE[damage][1]
    _damage(db, at, new)
    damaged, csv = db.read_bytes(), (out / "results.csv").read_bytes()

    with pytest.raises(DamagedDatabaseError, match="results.sqlite is damaged.*integrity_check"):
        with ResultsStore(db) as store:
            store.rows()
    err = _fails(capsys, STUDY + ["--out", str(out)], "results.sqlite is damaged", "integrity_check", ".recover")
    _fails(capsys, ["export", str(out), "--csv", str(tmp_path / "rows.csv")], "results.sqlite is damaged",
           "integrity_check")
    _fails(capsys, ["plot", str(out)], "results.sqlite is damaged")
    if damage == "cell count":  # the integrity check's own words are quoted
        assert "On tree page" in err
    # nothing was dropped or rewritten: the damaged file and the earlier export are as they were
    assert db.read_bytes() == damaged and (out / "results.csv").read_bytes() == csv
    assert not (tmp_path / "rows.csv").exists()
