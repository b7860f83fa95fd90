"""Tests for greedyprune.data: built-in datasets, file loaders, normalisation and balanced subsampling."""

from __future__ import annotations

import gzip
import pickle
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from greedyprune import data as D
from greedyprune.data import (
    BUILTIN_DATASETS,
    NORMALIZATIONS,
    Dataset,
    balanced_subsample,
    load_cifar10,
    load_dataset,
    load_digits,
    load_mnist5k,
    load_mnist_idx,
    make_synthetic,
    normalize_inputs,
)

torch.set_num_threads(1)


def assert_unit_rows(X: torch.Tensor) -> None:
    norms = torch.linalg.vector_norm(X.double(), dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5), float((norms - 1).abs().max())


# ----------------------------------------------------------------------------- constants


def test_constants():
    assert NORMALIZATIONS == ("unit", "pixel", "standard", "none")
    assert BUILTIN_DATASETS == ("mnist5k", "digits", "synthetic")


def test_module_docstring_documents_normalisation():
    doc = D.__doc__
    assert "unit" in doc and "Assumption 2" in doc and "pixel" in doc


# ----------------------------------------------------------------------------- mnist5k


# mnist5k_unit: the session fixture in tests/conftest.py (load_mnist5k(), loaded once)


def test_mnist5k_shape_and_classes(mnist5k_unit):
    ds = mnist5k_unit
    assert ds.X.shape == (5000, 784)
    assert ds.X.dtype == torch.float32
    assert ds.labels.dtype == torch.int64
    assert len(ds) == 5000 and ds.in_features == 784
    assert ds.num_classes == 10 and ds.image_shape == (1, 28, 28)
    assert ds.name == "mnist5k" and ds.targets is None
    assert Counter(ds.labels.tolist()) == {c: 500 for c in range(10)}


def test_mnist5k_unit_norm(mnist5k_unit):
    assert_unit_rows(mnist5k_unit.X)
    assert float(mnist5k_unit.X.min()) >= 0.0


def test_mnist5k_pixel_range_and_matches_unit(mnist5k_unit):
    px = load_mnist5k(normalize="pixel")
    assert float(px.X.min()) == 0.0 and float(px.X.max()) == 1.0
    assert torch.equal(px.labels, mnist5k_unit.labels)
    # pixel and unit are the same images up to a per-row scale
    renorm = normalize_inputs(px.X.double(), "unit").float()
    assert torch.allclose(renorm, mnist5k_unit.X, atol=1e-6)


def test_mnist5k_binary_labels(mnist5k_unit):
    b = mnist5k_unit.binary_labels()
    assert b.dtype == torch.float32 and b.shape == (5000,)
    assert torch.equal(b, (mnist5k_unit.labels >= 5).float())
    assert int(b.sum()) == 2500


# ----------------------------------------------------------------------------- digits and synthetic


def test_digits():
    ds = load_digits()
    assert ds.X.shape == (1797, 64) and ds.X.dtype == torch.float32
    assert ds.num_classes == 10 and ds.image_shape == (1, 8, 8) and ds.name == "digits"
    assert set(ds.labels.tolist()) == set(range(10))
    assert_unit_rows(ds.X)
    px = load_digits(normalize="pixel")
    assert float(px.X.min()) == 0.0 and float(px.X.max()) == 1.0
    raw = load_digits(normalize="none")
    assert float(raw.X.max()) == 16.0
    assert torch.equal(load_digits().X, ds.X)  # deterministic


def test_synthetic_shapes_and_assumptions():
    ds = make_synthetic(n=301, d=7, teacher_width=5, seed=3)
    assert ds.X.shape == (301, 7) and ds.X.dtype == torch.float32
    assert ds.image_shape == (7,) and ds.in_features == 7 and ds.num_classes == 2
    assert ds.targets is not None and ds.targets.shape == (301,) and ds.targets.dtype == torch.float32
    assert float(ds.targets.abs().max()) <= 1.0
    assert_unit_rows(ds.X)
    # labels are targets above the median: balanced within one
    counts = Counter(ds.labels.tolist())
    assert counts == {0: 151, 1: 150}
    assert torch.equal(ds.labels, (ds.targets > ds.targets.median()).long())
    assert torch.equal(ds.binary_labels(), ds.labels.float())


def test_synthetic_default_and_renormalising_is_noop():
    ds = make_synthetic()
    assert ds.X.shape == (2000, 20)
    assert Counter(ds.labels.tolist()) == {0: 1000, 1: 1000}
    assert torch.allclose(normalize_inputs(ds.X, "unit"), ds.X, atol=1e-6)
    assert torch.allclose(make_synthetic(normalize="none").X, ds.X, atol=1e-7)


def test_synthetic_targets_are_teacher_output():
    # recompute the documented teacher: draw order w, a, then inputs
    n, d, width, seed = 50, 4, 6, 11
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(width, d, generator=g, dtype=torch.float64)
    a = torch.randint(0, 2, (width,), generator=g).double() * 2 - 1
    ds = make_synthetic(n=n, d=d, teacher_width=width, seed=seed)
    expected = torch.tanh(ds.X.double() @ w.T) @ a / width
    assert torch.allclose(ds.targets.double(), expected, atol=1e-5)


def test_synthetic_determinism():
    a = make_synthetic(n=200, seed=1)
    b = make_synthetic(n=200, seed=1)
    c = make_synthetic(n=200, seed=2)
    assert torch.equal(a.X, b.X) and torch.equal(a.targets, b.targets) and torch.equal(a.labels, b.labels)
    assert not torch.allclose(a.X, c.X)
    assert not torch.allclose(a.targets, c.targets)


def test_synthetic_errors():
    with pytest.raises(ValueError, match="pixel"):
        make_synthetic(normalize="pixel")
    with pytest.raises(ValueError, match="n must be"):
        make_synthetic(n=1)
    with pytest.raises(ValueError, match="d must be"):
        make_synthetic(d=0)
    with pytest.raises(ValueError, match="teacher_width"):
        make_synthetic(teacher_width=2.5)
    with pytest.raises(ValueError, match="bogus"):
        make_synthetic(normalize="bogus")


# ----------------------------------------------------------------------------- Dataset


def _tiny_dataset() -> Dataset:
    return Dataset(
        X=torch.arange(12, dtype=torch.float32).reshape(6, 2),
        labels=torch.tensor([0, 1, 2, 3, 2, 1]),
        name="tiny",
        num_classes=4,
        image_shape=(2,),
        targets=torch.linspace(-1, 1, 6),
    )


def test_dataset_subset_and_binary_labels():
    ds = _tiny_dataset()
    sub = ds.subset(torch.tensor([4, 1]))
    assert torch.equal(sub.X, ds.X[[4, 1]])
    assert sub.labels.tolist() == [2, 1]
    assert torch.equal(sub.targets, ds.targets[[4, 1]])
    assert (sub.name, sub.num_classes, sub.image_shape) == ("tiny", 4, (2,))
    assert ds.subset([0, 3]).labels.tolist() == [0, 3]
    assert ds.subset(np.array([5])).labels.tolist() == [1]
    assert ds.binary_labels().tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="0..5"):
        ds.subset([6])
    with pytest.raises(ValueError, match="integers"):
        ds.subset([0.5])


def test_dataset_validation():
    with pytest.raises(ValueError, match="float32"):
        Dataset(X=torch.zeros(2, 3, dtype=torch.float64), labels=torch.zeros(2, dtype=torch.int64),
                name="x", num_classes=2, image_shape=(3,))
    with pytest.raises(ValueError, match="must match"):
        Dataset(X=torch.zeros(2, 3), labels=torch.zeros(3, dtype=torch.int64), name="x", num_classes=2,
                image_shape=(3,))
    with pytest.raises(ValueError, match="0..1"):
        Dataset(X=torch.zeros(2, 3), labels=torch.tensor([0, 2]), name="x", num_classes=2, image_shape=(3,))
    with pytest.raises(ValueError, match="image_shape"):
        Dataset(X=torch.zeros(2, 3), labels=torch.tensor([0, 1]), name="x", num_classes=2, image_shape=(2, 2))


# ----------------------------------------------------------------------------- normalize_inputs


def test_normalize_unit():
    X = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
    out = normalize_inputs(X, "unit")
    assert torch.allclose(out, torch.tensor([[0.6, 0.8], [0.0, -1.0]]))
    assert torch.equal(X, torch.tensor([[3.0, 4.0], [0.0, -2.0]]))  # input untouched


def test_normalize_unit_zero_row_names_index():
    X = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="row 2"):
        normalize_inputs(X, "unit")


def test_normalize_pixel():
    X = torch.tensor([[0.0, 255.0], [51.0, 102.0]])
    assert torch.allclose(normalize_inputs(X, "pixel", 255), torch.tensor([[0.0, 1.0], [0.2, 0.4]]))
    with pytest.raises(ValueError, match="max_value"):
        normalize_inputs(X, "pixel")
    with pytest.raises(ValueError, match=r"\[0, 16"):
        normalize_inputs(X, "pixel", 16)
    with pytest.raises(ValueError, match="positive"):
        normalize_inputs(X, "pixel", 0)


def test_normalize_standard_and_none():
    X = torch.tensor([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0], [5.0, 5.0, 9.0]], dtype=torch.float64)
    out = normalize_inputs(X, "standard")
    assert torch.allclose(out.mean(dim=0), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(out[:, [0, 2]].std(dim=0, correction=0), torch.ones(2, dtype=torch.float64))
    assert torch.equal(out[:, 1], torch.zeros(3, dtype=torch.float64))  # constant feature: centred only
    none = normalize_inputs(X, "none")
    assert torch.equal(none, X) and none is not X


def test_normalize_errors():
    with pytest.raises(ValueError, match="'l2'.*unit, pixel, standard, none"):
        normalize_inputs(torch.ones(2, 2), "l2")
    with pytest.raises(ValueError, match="floating-point"):
        normalize_inputs(torch.ones(2, 2, dtype=torch.int64), "unit")
    with pytest.raises(ValueError, match="2-D"):
        normalize_inputs(torch.ones(4), "unit")
    with pytest.raises(ValueError, match="NaN"):
        normalize_inputs(torch.tensor([[1.0, float("nan")]]), "none")


# ----------------------------------------------------------------------------- balanced_subsample


def _expected_counts(labels: torch.Tensor, size: int) -> dict[int, int]:
    classes = sorted(set(labels.tolist()))
    q, r = divmod(size, len(classes))
    return {c: q + (1 if i < r else 0) for i, c in enumerate(classes)}


@pytest.mark.parametrize("size", [10, 37, 100, 999, 1234])
def test_balanced_subsample_counts(mnist5k_unit, size):
    labels = mnist5k_unit.labels
    idx = balanced_subsample(labels, size, seed=0)
    assert idx.dtype == torch.int64 and idx.shape == (size,)
    assert torch.equal(idx, torch.sort(idx).values)
    assert len(set(idx.tolist())) == size
    assert Counter(labels[idx].tolist()) == _expected_counts(labels, size)


def test_balanced_subsample_remainder_rule():
    labels = torch.tensor([2] * 5 + [0] * 5 + [1] * 5 + [3] * 5)
    idx = balanced_subsample(labels, 7, seed=4)
    assert Counter(labels[idx].tolist()) == {0: 2, 1: 2, 2: 2, 3: 1}
    idx = balanced_subsample(labels, 2, seed=4)
    assert Counter(labels[idx].tolist()) == {0: 1, 1: 1}


def test_balanced_subsample_unbalanced_classes_and_gaps():
    # classes 1, 4, 7 present (gaps), unequal sizes
    labels = torch.tensor([7] * 3 + [1] * 10 + [4] * 6)
    idx = balanced_subsample(labels, 8, seed=0)
    assert Counter(labels[idx].tolist()) == {1: 3, 4: 3, 7: 2}


def test_balanced_subsample_determinism(mnist5k_unit):
    labels = mnist5k_unit.labels
    a = balanced_subsample(labels, 500, seed=7)
    b = balanced_subsample(labels, 500, seed=7)
    c = balanced_subsample(labels, 500, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_balanced_subsample_full_size_returns_all():
    labels = torch.tensor([0, 0, 0, 1, 2])  # unbalanced; the full set is still returned
    assert balanced_subsample(labels, 5, seed=0).tolist() == [0, 1, 2, 3, 4]


def test_balanced_subsample_errors():
    labels = torch.tensor([0] * 10 + [1] * 10 + [2] * 3)
    with pytest.raises(ValueError, match="positive"):
        balanced_subsample(labels, 0, seed=0)
    with pytest.raises(ValueError, match="positive"):
        balanced_subsample(labels, -3, seed=0)
    with pytest.raises(ValueError, match="exceeds"):
        balanced_subsample(labels, 24, seed=0)
    # size 12 needs 4 of class 2, which has 3; largest balanced size is 3*3 + 2 = 11
    with pytest.raises(ValueError,
                       match=r"class 2 has only 3 examples but 4 are needed.*largest balanced size possible is 11"):
        balanced_subsample(labels, 12, seed=0)
    assert Counter(labels[balanced_subsample(labels, 11, seed=0)].tolist()) == {0: 4, 1: 4, 2: 3}
    with pytest.raises(ValueError, match="integer tensor"):
        balanced_subsample(labels.float(), 5, seed=0)
    with pytest.raises(ValueError, match="size must be an int"):
        balanced_subsample(labels, 5.0, seed=0)


def test_balanced_subsample_largest_size_message_is_exact():
    # remainder slots go to the lowest classes: class 0 has 2 (the minimum) so no extra slot is possible
    labels = torch.tensor([0] * 2 + [1] * 5 + [2] * 5)
    with pytest.raises(ValueError, match="largest balanced size possible is 6"):
        balanced_subsample(labels, 7, seed=0)
    balanced_subsample(labels, 6, seed=0)


# ----------------------------------------------------------------------------- MNIST IDX files


def _idx_images(images: np.ndarray, magic: int = 2051) -> bytes:
    n, rows, cols = images.shape
    header = np.array([magic, n, rows, cols], dtype=">u4").tobytes()
    return header + images.astype(np.uint8).tobytes()


def _idx_labels(labels: np.ndarray, magic: int = 2049) -> bytes:
    header = np.array([magic, len(labels)], dtype=">u4").tobytes()
    return header + labels.astype(np.uint8).tobytes()


def _write(path: Path, payload: bytes, gz: bool) -> None:
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _write_mnist(directory: Path, n: int = 7, rows: int = 28, cols: int = 28, prefix: str = "train",
                 gz: bool = False, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(1, 256, size=(n, rows, cols), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    directory.mkdir(parents=True, exist_ok=True)
    _write(directory / f"{prefix}-images-idx3-ubyte", _idx_images(images), gz)
    _write(directory / f"{prefix}-labels-idx1-ubyte", _idx_labels(labels), gz)
    return images, labels


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_roundtrip(tmp_path, gz):
    images, labels = _write_mnist(tmp_path, gz=gz)
    ds = load_mnist_idx(tmp_path, normalize="none")
    assert ds.X.shape == (7, 784) and ds.image_shape == (1, 28, 28) and ds.num_classes == 10
    assert torch.equal(ds.X, torch.from_numpy(images.reshape(7, -1).astype(np.float32)))
    assert ds.labels.tolist() == labels.tolist()
    assert ds.name == f"mnist:{tmp_path}"
    assert_unit_rows(load_mnist_idx(tmp_path).X)
    px = load_mnist_idx(tmp_path, normalize="pixel")
    assert torch.allclose(px.X, ds.X / 255)


def test_mnist_idx_non_square_and_test_split(tmp_path):
    images, labels = _write_mnist(tmp_path, n=5, rows=3, cols=4, prefix="t10k", gz=True, seed=1)
    ds = load_mnist_idx(tmp_path, split="test", normalize="none")
    assert ds.X.shape == (5, 12) and ds.image_shape == (1, 3, 4) and ds.in_features == 12
    # row-major pixels: X reshaped to image_shape gives the original images back
    assert torch.equal(ds.X.reshape(5, 3, 4), torch.from_numpy(images.astype(np.float32)))
    assert ds.labels.tolist() == labels.tolist()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist_idx(tmp_path, split="train")


def test_mnist_idx_via_load_dataset(tmp_path):
    _write_mnist(tmp_path, n=4, prefix="t10k")
    ds = load_dataset(f"mnist:{tmp_path}", split="test", normalize="pixel")
    assert ds.X.shape == (4, 784) and float(ds.X.max()) <= 1.0


def test_mnist_idx_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope")) + ".*does not exist"):
        load_mnist_idx(tmp_path / "nope")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_mnist_idx(tmp_path / "afile")


def test_mnist_idx_missing_file(tmp_path):
    _write_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_mnist_idx(tmp_path)
    msg = str(info.value)
    assert "'train-labels-idx1-ubyte'" in msg and "'train-labels-idx1-ubyte.gz'" in msg and str(tmp_path) in msg


def test_mnist_idx_wrong_magic(tmp_path):
    images, labels = _write_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_images(images, magic=1234))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*wrong magic number 1234.*expected 2051"):
        load_mnist_idx(tmp_path)
    # swapped files get a hint
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_labels(labels))
    with pytest.raises(ValueError, match="swapped"):
        load_mnist_idx(tmp_path)


def test_mnist_idx_gzip_without_suffix_hint(tmp_path):
    images, _ = _write_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(gzip.compress(_idx_images(images)))
    with pytest.raises(ValueError, match=r"gzip-compressed.*\.gz"):
        load_mnist_idx(tmp_path)


def test_mnist_idx_truncated(tmp_path):
    images, _ = _write_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_images(images)[:-100])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*truncated"):
        load_mnist_idx(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_images(images)[:10])  # inside the header
    with pytest.raises(ValueError, match="truncated"):
        load_mnist_idx(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00")  # not even a magic number
    with pytest.raises(ValueError, match="truncated"):
        load_mnist_idx(tmp_path)


def test_mnist_idx_truncated_gzip(tmp_path):
    images, _ = _write_mnist(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(ValueError, match="decompress"):
        load_mnist_idx(tmp_path)


def test_mnist_idx_trailing_bytes(tmp_path):
    images, _ = _write_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_images(images) + b"\x00" * 3)
    with pytest.raises(ValueError, match="3 unexpected trailing bytes"):
        load_mnist_idx(tmp_path)


def test_mnist_idx_count_mismatch(tmp_path):
    _, labels = _write_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_labels(labels[:6]))
    with pytest.raises(ValueError, match="count mismatch.*7 images.*6 labels"):
        load_mnist_idx(tmp_path)


def test_mnist_idx_bad_label_and_split(tmp_path):
    images, labels = _write_mnist(tmp_path)
    labels[2] = 12
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_labels(labels))
    with pytest.raises(ValueError, match="label 12"):
        load_mnist_idx(tmp_path)
    with pytest.raises(ValueError, match="'validation'"):
        load_mnist_idx(tmp_path, split="validation")


# ----------------------------------------------------------------------------- CIFAR-10 batches


def _write_cifar(directory: Path, rows: int = 3) -> dict[str, tuple[np.ndarray, list[int]]]:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    written = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = rng.integers(1, 256, size=(rows, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=rows)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [b"f%d.png" % j for j in range(rows)]}
        with open(directory / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        written[name] = (data, labels)
    return written


@pytest.mark.parametrize("nested", [False, True])
def test_cifar_train_and_test(tmp_path, nested):
    written = _write_cifar(tmp_path / "cifar-10-batches-py" if nested else tmp_path)
    ds = load_cifar10(tmp_path, normalize="none")
    assert ds.X.shape == (15, 3072) and ds.image_shape == (3, 32, 32) and ds.num_classes == 10
    expected = np.concatenate([written[f"data_batch_{k}"][0] for k in range(1, 6)])
    assert torch.equal(ds.X, torch.from_numpy(expected.astype(np.float32)))
    assert ds.labels.tolist() == sum((written[f"data_batch_{k}"][1] for k in range(1, 6)), [])
    test = load_cifar10(tmp_path, split="test")
    assert test.X.shape == (3, 3072) and test.labels.tolist() == written["test_batch"][1]
    assert_unit_rows(test.X)
    px = load_dataset(f"cifar10:{tmp_path}", normalize="pixel")
    assert px.name == f"cifar10:{tmp_path}"
    assert torch.allclose(px.X, ds.X / 255)


def test_cifar_direct_batch_dir(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py")
    ds = load_cifar10(tmp_path / "cifar-10-batches-py", split="test")
    assert ds.X.shape == (3, 3072)


def test_cifar_missing_batch(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="missing data_batch_3"):
        load_cifar10(tmp_path)
    assert load_cifar10(tmp_path, split="test").X.shape == (3, 3072)  # test split still complete


def test_cifar_missing_directory_and_empty_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cifar10(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 batch files.*data_batch_1"):
        load_cifar10(tmp_path)


def test_cifar_malformed_batches(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "data_batch_2").write_bytes(b"this is not a pickle")
    with pytest.raises(ValueError, match=r"data_batch_2.*not a readable pickle"):
        load_cifar10(tmp_path)
    with open(tmp_path / "data_batch_2", "wb") as f:
        pickle.dump({b"labels": [1, 2]}, f)
    with pytest.raises(ValueError, match=r"data_batch_2.*no b'data' entry"):
        load_cifar10(tmp_path)
    with open(tmp_path / "data_batch_2", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [1, 2]}, f)
    with pytest.raises(ValueError, match=r"\(n, 3072\)"):
        load_cifar10(tmp_path)
    with open(tmp_path / "data_batch_2", "wb") as f:
        pickle.dump({b"data": np.ones((2, 3072), dtype=np.uint8), b"labels": [1, 2, 3]}, f)
    with pytest.raises(ValueError, match="labels"):
        load_cifar10(tmp_path)
    with open(tmp_path / "data_batch_2", "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(ValueError, match="expected a dict"):
        load_cifar10(tmp_path)


# ----------------------------------------------------------------------------- load_dataset


def test_load_dataset_builtin_routes(mnist5k_unit):
    ds = load_dataset("mnist5k")
    assert ds.name == "mnist5k" and torch.equal(ds.X, mnist5k_unit.X)
    assert load_dataset("digits", normalize="pixel").name == "digits"
    syn = load_dataset("synthetic", seed=5)
    assert syn.name == "synthetic" and torch.equal(syn.X, make_synthetic(seed=5).X)
    assert not torch.equal(syn.X, load_dataset("synthetic", seed=6).X)


def test_load_dataset_file_routes(tmp_path):
    _write_mnist(tmp_path / "m", n=3)
    _write_cifar(tmp_path / "c", rows=2)
    assert load_dataset(f"mnist:{tmp_path / 'm'}").X.shape == (3, 784)
    assert load_dataset(f"cifar10:{tmp_path / 'c'}").X.shape == (10, 3072)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(f"mnist:{tmp_path / 'absent'}")


def test_load_dataset_errors():
    with pytest.raises(ValueError, match=r"'imagenet'.*mnist5k, digits, synthetic, mnist:DIR, cifar10:DIR"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="unknown dataset spec 'MNIST5K'"):
        load_dataset("MNIST5K")
    with pytest.raises(ValueError, match="names no directory"):
        load_dataset("mnist:")
    with pytest.raises(ValueError, match=r"normalize='l2'.*unit, pixel, standard, none"):
        load_dataset("mnist5k", normalize="l2")
    with pytest.raises(ValueError, match="split='val'"):
        load_dataset("digits", split="val")
    for spec in BUILTIN_DATASETS:
        with pytest.raises(ValueError, match=f"{spec!r} has only a 'train' split"):
            load_dataset(spec, split="test")
    with pytest.raises(ValueError, match="must be a string"):
        load_dataset(None)
