"""PruneOptions (issue 20 part 3): prune_model's options as one frozen, keyword-only dataclass; keywords
override it; unknown keywords are refused as Python refuses them; validation returns a new object."""
import dataclasses
import inspect
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import greedyprune
from greedyprune.channels import PruneOptions, SearchOptions, prune_model
from greedyprune.errors import InvalidOptionError
from greedyprune.models import get_model


def _tiny():
    model = get_model("resnet8", in_channels=1, width=4, seed=0).eval()
    g = torch.Generator().manual_seed(0)
    return model, (torch.randn(48, 1, 12, 12, generator=g), torch.randint(0, 10, (48,), generator=g))


def _same(a, b):
    assert a.kept == b.kept and a.counts == b.counts
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in a.layers] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in b.layers]
    for (na, pa), (nb, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)


@pytest.mark.parametrize("keywords", [
    dict(objective="network", keep_ratio=0.5, candidates=3, batch_size=16, seed=2, check=False),
    dict(keep_ratio=0.5, eval_examples=16, check=False),
])
def test_an_options_object_and_keywords_give_the_same_pruning(keywords):
    model, data = _tiny()
    by_keywords = prune_model(model, data, **keywords)
    by_object = prune_model(model, data, options=PruneOptions(**keywords))
    _same(by_keywords, by_object)
    # keywords given with an object replace its fields
    base = PruneOptions(**{**keywords, "seed": 9, "keep_ratio": 0.75})
    mixed = prune_model(model, data, options=base, seed=keywords.get("seed", 0), keep_ratio=0.5)
    _same(by_keywords, mixed)


def test_unknown_keywords_and_wrong_options_raise_type_errors_naming_them():
    model, data = _tiny()
    with pytest.raises(TypeError, match=r"prune_model\(\) got an unexpected keyword argument 'candidate'.*"
                                        r"did you mean 'candidates'"):
        prune_model(model, data, candidate=3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'zzz'"):
        prune_model(model, data, zzz=1)
    with pytest.raises(TypeError, match="PruneOptions"):
        prune_model(model, data, options={"keep_ratio": 0.5})
    with pytest.raises(TypeError):
        PruneOptions(0.5)  # keyword-only: no positional construction


def test_options_are_frozen_and_validate_returns_a_checked_copy():
    options = PruneOptions(candidates=torch.tensor(3), keep_ratio=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.seed = 1
    checked = options.validate()
    assert checked is not options and type(checked.candidates) is int and checked.candidates == 3
    assert isinstance(options.candidates, torch.Tensor)  # the original is unchanged
    assert checked.validate() == checked
    for bad in (dict(bn="stale"), dict(candidates=0), dict(unsupported="ignore"), dict(step=0),
                dict(budget_curves="x"), dict(refit="qr")):
        with pytest.raises(InvalidOptionError):
            PruneOptions(**bad).validate()
    with pytest.raises(TypeError, match="check must be True or False"):
        PruneOptions(check=1).validate()
    resolved = checked.resolved(objective="local", bn="batch", recalibrate=0, stack_elements=10)
    assert (resolved.objective, resolved.bn, checked.objective, checked.bn) == ("local", "batch", "auto", "auto")


def test_every_old_keyword_keeps_its_default_and_every_field_has_help():
    names = {f.name: f for f in dataclasses.fields(PruneOptions)}
    explicit = set(inspect.signature(prune_model).parameters) - {"model", "data", "options", "overrides"}
    assert {"rule", "device", "skip", "extra_skip", "inplace", "progress", "distributed",
            "process_group"} == explicit
    # the defaults prune_model's keywords had before the dataclass (evaluator: formerly method, below)
    old = dict(epsilon=None, accuracy_tolerance=None, keep_ratio=None, flops_target=None, params_target=None,
               uniform=False, candidates=50, replacement=False, batch_size=None, max_steps=None, seed=0, bn="auto",
               recalibrate=None, holdout=None, finetune_steps=0, finetune_lr=0.01, finetune_weight_decay=5e-4,
               evaluator="auto", eval_examples=1024, stack_elements=None, check=True, unsupported="error", step="auto",
               curve_points=32, refit=None, refit_ridge=None, objective="auto", calibration=None,
               budget_curves="sensitivity")
    old["compensate"] = "mean-var"  # added after the dataclass (the local objective's bias and variance)
    old["memory_format"] = "auto"  # added later (channels-last convolutions on a CPU)
    assert {name: f.default for name, f in names.items()} == old
    assert all(f.metadata.get("help") for f in names.values())
    assert "budget_curves:" in PruneOptions.__doc__  # help() lists every field
    assert greedyprune.PruneOptions is PruneOptions is SearchOptions
    assert "PruneOptions" in greedyprune.__all__ and "PruneOptions" in greedyprune.channels.__all__


# ------------------------------------------------------------------ evaluator, formerly method (issue 20)


def test_the_former_name_method_still_works_with_a_deprecation_warning_naming_evaluator():
    with pytest.warns(DeprecationWarning, match=r"PruneOptions\(\): method= is deprecated.*now called 'evaluator'"
                                                r".*'method' means what selects the units") as caught:
        options = PruneOptions(method="reference", seed=1)
    assert caught[0].filename == __file__  # points at the caller
    assert options == PruneOptions(evaluator="reference", seed=1)
    with pytest.warns(DeprecationWarning, match=r"PruneOptions: \.method is deprecated.*'evaluator'"):
        assert options.method == "reference"
    for make in (lambda: PruneOptions(method="fast", evaluator="fast"),
                 lambda: dataclasses.replace(options, method="fast")):  # replace passes every field on
        with pytest.raises(TypeError, match="both method= and evaluator=.*give evaluator= only"):
            make()
    with pytest.raises(InvalidOptionError, match="evaluator"):
        PruneOptions(evaluator="slow").validate()
    assert "method" not in {f.name for f in dataclasses.fields(PruneOptions)}
    assert "evaluator" in inspect.signature(PruneOptions).parameters


def test_the_new_name_evaluator_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        options = dataclasses.replace(PruneOptions(evaluator="fast"), seed=2).validate()
        assert options.evaluator == "fast" and "evaluator:" in PruneOptions.__doc__


def test_prune_model_takes_method_with_a_warning_and_prunes_as_with_evaluator():
    model, data = _tiny()
    keywords = dict(objective="network", keep_ratio=0.5, candidates=3, batch_size=16, check=False, eval_examples=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        new = prune_model(model, data, evaluator="reference", **keywords)
    with pytest.warns(DeprecationWarning, match=r"prune_model\(\): method= is deprecated.*'evaluator'") as caught:
        old = prune_model(model, data, method="reference", **keywords)
    assert caught[0].filename == __file__
    _same(new, old)
    assert all(r["evaluator"] == "reference" for r in old.layers)


def test_the_cli_flag_is_evaluator_and_method_a_deprecated_alias(capsys):
    from greedyprune.cli import build_parser
    from greedyprune.cli.prune_options import prune_model_overrides

    args = build_parser().parse_args(["prune", "ck.pt", "--evaluator", "fast"])
    assert prune_model_overrides(args) == {"evaluator": "fast"} and capsys.readouterr().err == ""
    args = build_parser().parse_args(["prune", "ck.pt", "--method", "reference"])
    assert prune_model_overrides(args) == {"evaluator": "reference"}
    err = capsys.readouterr().err
    assert err.startswith("greedyprune: warning: --method is deprecated") and "use --evaluator" in err
    assert prune_model_overrides(build_parser().parse_args(["prune", "ck.pt"])) == {}


def test_importing_and_building_the_cli_warns_of_no_deprecation():
    code = ("import greedyprune, greedyprune.channels, greedyprune.transformers\n"
            "from greedyprune.cli import build_parser\n"
            "build_parser().parse_args(['prune', 'ck.pt', '--evaluator', 'fast'])\n"
            "greedyprune.PruneOptions().validate()\n")
    out = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", code], capture_output=True,
                         text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr


def test_the_former_evaluator_constant_warns_and_unknown_names_still_raise():
    import warnings

    import greedyprune.channels as channels
    from greedyprune.channels import options as channel_options

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert channels.METHODS == channel_options.METHODS == channels.EVALUATORS
    assert caught and all(issubclass(w.category, DeprecationWarning) and "EVALUATORS" in str(w.message)
                          for w in caught)
    with pytest.raises(AttributeError, match="greedyprune.channels' has no attribute 'NOPE'"):
        channels.NOPE
