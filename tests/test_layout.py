"""The package's layout (issue 20 part 5): no import cycle, even through imports inside functions, every
module declares its public names in ``__all__``, and every path (and name tied to one) that the README's layout
section names exists (issue 20 part 2)."""
import ast
import importlib
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "greedyprune"
TOOL = ROOT / "tools" / "import_graph.py"


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def test_the_import_graph_has_no_cycle():
    out = subprocess.run([sys.executable, str(TOOL)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().endswith(", 0 cycle(s)"), out.stdout


@pytest.mark.parametrize("importer", ["module level", "inside a function", "from the package"])
def test_the_import_graph_finds_a_cycle_through_any_import(importer, tmp_path):
    pkg = tmp_path / "greedyprune"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    back = {"module level": "from ..a import helper\n",
            "inside a function": "def f():\n    from greedyprune.a import helper\n    return helper\n",
            "from the package": "def f():\n    from .. import a\n    return a\n"}[importer]
    (pkg / "a.py").write_text("from .sub.b import thing\n\n\ndef helper():\n    return thing\n")
    (pkg / "sub" / "b.py").write_text("thing = 1\n" + back)
    (pkg / "c.py").write_text("import greedyprune.a\n")  # an importer outside the cycle is not part of it
    out = subprocess.run([sys.executable, str(TOOL), "--root", str(tmp_path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "cycle: greedyprune.a -> greedyprune.sub.b -> greedyprune.a" in out.stdout, out.stdout
    assert out.stdout.strip().endswith(", 1 cycle(s)")


def test_the_import_graph_skips_type_checking_imports(tmp_path):
    pkg = tmp_path / "greedyprune"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import thing\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nthing = 1\nif TYPE_CHECKING:\n    from .a import x\n")
    out = subprocess.run([sys.executable, str(TOOL), "--root", str(tmp_path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout


def test_every_module_defines_all():
    missing = []
    for name, path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if not any(isinstance(node, (ast.Assign, ast.AnnAssign)) and any(
                isinstance(t, ast.Name) and t.id == "__all__"
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target])) for node in tree.body):
            missing.append(name)
    assert not missing, f"modules without __all__: {missing}"


def test_every_name_in_all_exists():
    for name, _ in _modules():
        if name.endswith("__main__") or name in DEPRECATED:
            continue  # __main__ runs the CLI; the deprecated aliases warn (checked below)
        module = importlib.import_module(name)
        assert len(set(module.__all__)) == len(module.__all__), name
        assert [n for n in module.__all__ if not hasattr(module, n)] == [], name


MOVED = [
    ("greedyprune.datafiles", "greedyprune.data", ["load_mnist_idx", "load_cifar10"]),
    ("greedyprune.studies.merging", "greedyprune.studies.store", ["merge_results", "VOLATILE_SUFFIXES"]),
    ("greedyprune.mobilenetv3", "greedyprune.models.mobilenetv3",
     ["MOBILENETV3_SMALL_CFG", "MobileNetV3Small", "SqueezeExcitation", "make_divisible"]),
    ("greedyprune.parallel", "greedyprune.distributed.parallel",
     ["DEFAULT_TIMEOUT_S", "CandidateSplit", "DistributedSelectionError", "WorkerError", "init_process_group",
      "is_initialised", "is_main", "launch", "rank", "split_range", "world_size"]),
    ("greedyprune.training.ddp", "greedyprune.distributed.ddp", ["GlobalBatchNormMixin", "cross_rank_batchnorm"]),
]
DEPRECATED = {old for old, _, _ in MOVED}


@pytest.mark.parametrize("old, new, names", MOVED)
def test_a_moved_module_still_imports_with_a_deprecation_warning(old, new, names):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    target = importlib.import_module(new)
    assert sorted(module.__all__) == sorted(names)
    assert all(getattr(module, n) is getattr(target, n) for n in names)


def test_importing_the_package_and_its_entry_points_warns_of_nothing():
    # internal code imports the new paths: only a user's own import of an old one warns
    code = ("import greedyprune, greedyprune.cli, greedyprune.studies, greedyprune.distributed, "
            "greedyprune.models, greedyprune.selection.sharded, greedyprune.training.loop")
    out = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", code], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("first", ["greedyprune.selection.sharded", "greedyprune.distributed",
                                   "greedyprune.distributed.parallel"])
def test_the_distributed_package_imports_in_any_order(first):
    # selection/sharded.py imports distributed/parallel.py, which runs distributed/__init__.py first; that one
    # must not import sharded back (it imports greedy_forward_selection on first use)
    code = (f"import {first}\nimport greedyprune.distributed as gd\nfrom greedyprune.selection import sharded\n"
            "assert gd.greedy_forward_selection is sharded.greedy_forward_selection\n"
            "from greedyprune.distributed import greedy_forward_selection\n"
            "assert 'greedy_forward_selection' in dir(gd)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr


def test_the_models_package_keeps_its_names():
    from greedyprune import models
    from greedyprune.models import mobilenetv3, zoo

    assert set(zoo.__all__) <= set(models.__all__)
    assert all(getattr(models, n) is getattr(zoo, n) for n in zoo.__all__)
    assert models.MobileNetV3Small is mobilenetv3.MobileNetV3Small and models.init_weights is zoo.init_weights
    assert type(models.get_model("mobilenetv3_small")) is models.MobileNetV3Small


@pytest.mark.parametrize("name, old", [("mobilenetv3_small", "greedyprune.mobilenetv3"),
                                       ("resnet20", "greedyprune.models"), ("mobilenetv2", "greedyprune.models"),
                                       ("vgg16", "greedyprune.models")])
def test_a_module_pickled_under_an_old_class_path_still_loads(name, old):
    # save_checkpoint(full_module=True) / save_pruned(full_module=True) pickle the module, its classes by path:
    # a file saved before the move names every class of the model by its old module
    import io

    import torch

    from greedyprune.models import get_model

    model = get_model(name, num_classes=3, seed=0, **({"shortcut": "A"} if name == "resnet20" else {})).eval()
    classes = {type(m) for m in model.modules() if type(m).__module__.startswith("greedyprune.")}
    assert classes
    sys.modules.pop(old, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        importlib.import_module(old)  # pickle checks that the old path names the same class
    buffer = io.BytesIO()
    saved = {cls: cls.__module__ for cls in classes}
    try:
        for cls in classes:
            cls.__module__ = old
        torch.save(model, buffer)
    finally:
        for cls, module in saved.items():
            cls.__module__ = module
    assert f"{old}\n".encode() in buffer.getvalue() or old.encode() in buffer.getvalue()
    sys.modules.pop(old, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    assert type(loaded) is type(model)
    assert {type(m) for m in loaded.modules()} == {type(m) for m in model.modules()}
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))


def test_moved_names_keep_their_old_import_paths():
    from greedyprune import data, fileio, safepickle
    from greedyprune._text import first_line
    from greedyprune.data import files
    from greedyprune.errors import UnsafeFileError
    from greedyprune.studies import pretraining_figures, pretraining_report, pretraining_summary, store
    from greedyprune.transformers import blocks, decoder_prune, prune

    assert fileio.UnsafeFileError is UnsafeFileError and fileio.first_line is first_line
    assert safepickle.UnsafeFileError is UnsafeFileError
    assert data.load_mnist_idx is files.load_mnist_idx and data.load_cifar10 is files.load_cifar10
    for name in pretraining_summary.__all__:
        assert getattr(pretraining_report, name) is getattr(pretraining_summary, name), name
    assert pretraining_figures.summarize is pretraining_summary.summarize
    assert store.merge_results.__module__ == "greedyprune.studies.store"
    assert prune.prune_block is blocks.prune_block is decoder_prune.prune_block and prune.REFITS is blocks.REFITS


# ------------------------------------------------------------------- the README's layout names real paths

_OUTSIDE = ("tests/", "tools/", "bench/")


def _layout_lines():
    """Each line of the README's "How the code is laid out" section (to the next section or the end) with the
    folder its bare file names are relative to: a table row's own folder, else ``greedyprune/``."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("## How the code is laid out")
    end = text.find("\n## ", start + 1)
    for line in text[start:None if end < 0 else end].splitlines():
        base = "greedyprune/"
        first = re.match(r"\| `([^`]+)`", line)
        if first and first.group(1).endswith("/"):
            base = first.group(1)
        yield line, base


def _resolve(token: str, base: str) -> str:
    return token if token.startswith(("greedyprune/",) + _OUTSIDE) else base + token


def _module_of(path: str):
    parts = path.rstrip("/").removesuffix(".py").split("/")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the deprecated aliases the layout names warn
        return importlib.import_module(".".join(parts))


def test_every_path_the_readme_layout_names_exists_and_imports():
    named = set()
    for line, base in _layout_lines():
        named |= {_resolve(t, base) for t in re.findall(r"`([\w/]+(?:\.py|/))`", line)}
        named |= {t.replace(".", "/") + "/" for t in re.findall(r"`(greedyprune(?:\.\w+)+)`", line)}
    assert {"greedyprune/transformers/criteria.py", "greedyprune/studies/registry.py",
            "greedyprune/studies/catalog.py", "greedyprune/channels/rules.py"} <= named
    missing = [p for p in sorted(named) if not (ROOT / p).exists() and not (ROOT / (p.rstrip("/") + ".py")).exists()]
    assert missing == [], f"the README's layout names paths that do not exist: {missing}"
    for path in sorted(named):
        if path.startswith("greedyprune/"):
            _module_of(path)


def test_every_name_the_readme_layout_ties_to_a_module_is_in_it():
    pairs = []
    for line, base in _layout_lines():
        # "subclass `Name` (`path.py`", "register it with `@name` (`path.py`)" and "`path.py` (`name`"
        pairs += [(_resolve(p, base), n) for n, p in re.findall(r"`@?([A-Za-z_]\w*)` \(`([\w/]+\.py)`", line)]
        pairs += [(_resolve(p, base), n) for p, n in re.findall(r"`([\w/]+\.py)` \(`([A-Za-z_]\w*)`", line)]
        pairs += [("greedyprune/" + m + ".py", n) for m, n in re.findall(r"`([a-z_]+)\.([A-Z_]+)`", line)]
    assert {("greedyprune/transformers/criteria.py", "Criterion"),
            ("greedyprune/transformers/criteria.py", "register_criterion"),
            ("greedyprune/studies/registry.py", "Study"), ("greedyprune/studies/registry.py", "register_study"),
            ("greedyprune/baselines.py", "IMPORTANCES")} <= set(pairs)
    absent = [(p, n) for p, n in pairs if not hasattr(_module_of(p), n)]
    assert absent == [], f"the README ties names to modules that lack them: {absent}"
