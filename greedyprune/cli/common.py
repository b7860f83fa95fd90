"""What every command shares: option types, options generated from a study's dataclass, output paths."""
from __future__ import annotations

import argparse
import math
import os
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path

from ..errors import GreedyPruneError

__all__ = ["UsageError", "int_list", "float_list", "name_list", "batch_size", "INT_MAX", "SEED_MAX", "int_at_least",
           "positive_int", "nonnegative_int", "seed", "workers", "number", "positive_float", "nonnegative_float",
           "fraction", "shard", "add_shard_option", "shard_suffix", "key_value", "add_config_options",
           "config_overrides", "add_run_options", "set_threads", "device", "launched_by_torchrun", "parallel_device",
           "slug", "interrupted"]


class UsageError(GreedyPruneError):
    """A bad option: printed as ``greedyprune: error: ...`` with exit status 2."""


def int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 250,1000; got {text!r:.60}") \
            from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one integer, got {text!r}")
    if any(abs(v) > INT_MAX for v in values):
        raise argparse.ArgumentTypeError(f"expected integers of at most {INT_MAX:,}, got {text:.60}")
    return values


def float_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.01,0.05; got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one number, got {text!r}")
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers (no inf or nan), got {text!r}")
    return values


def name_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def batch_size(text: str):
    if text in ("full", "none", "gd"):
        return "full"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'full' (full-batch GD), got {text!r}") from None
    if not 1 <= value <= INT_MAX:
        raise argparse.ArgumentTypeError(f"batch size must be in [1, {INT_MAX:,}], got {text:.40}")
    return value


INT_MAX = 2 ** 63 - 1  # what a tensor index or a seed can hold
SEED_MAX = 2 ** 23 - 1  # seeds are combined as seed * 1_000_003 + ..., twice, within 64 bits


def int_at_least(minimum: int, maximum: int = INT_MAX):
    """An argparse type: an integer in [minimum, maximum], with a message that says so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r:.60}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"expected an integer <= {maximum:,}, got {text:.40}"
                                             f"{'...' if len(text) > 40 else ''}")
        return value

    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)
seed = int_at_least(0, SEED_MAX)


def workers(text: str) -> int:
    """An argparse type: a number of local worker processes, from 1 to the CPUs this process may use."""
    from ..studies.cells import available_cpus

    value = positive_int(text)
    cpus = available_cpus()
    if value > cpus:
        raise argparse.ArgumentTypeError(f"{value} worker processes is more than the {cpus} CPU(s) this machine "
                                          f"gives the process; use at most {cpus}")
    return value


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False):
    """An argparse type: a finite number in an interval, with a message that names the interval (inf and nan
    are refused even where the interval is unbounded)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        bad_low = low is not None and (value <= low if low_open else value < low)
        bad_high = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or bad_low or bad_high:
            lo = "-inf" if low is None else f"{low:g}"
            hi = "inf" if high is None else f"{high:g}"
            interval = ("(" if low_open or low is None else "[") + f"{lo}, {hi}" + (")" if high_open or high is None
                                                                                     else "]")
            finite = "" if math.isfinite(value) else "finite "
            raise argparse.ArgumentTypeError(f"expected a {finite}number in {interval}, got {text!r}")
        return value

    return parse


positive_float = number(0, low_open=True)
nonnegative_float = number(0)
fraction = number(0, 1, high_open=True)


def shard(text: str) -> tuple[int, int]:
    """``i/P`` (this process runs every P-th cell from the i-th, 0 <= i < P), or ``auto``: the rank and world
    size torchrun (or another launcher) put in RANK / WORLD_SIZE."""
    if text == "auto":
        rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        if rank is None or world is None:
            raise argparse.ArgumentTypeError("--shard auto needs RANK and WORLD_SIZE in the environment (torchrun "
                                             "sets them); otherwise give i/P, e.g. --shard 0/2")
        text = f"{rank}/{world}"
    i, sep, p = text.partition("/")
    try:
        value = (int(i), int(p))
    except ValueError:
        value = None
    if not sep or value is None or value[1] < 1 or not 0 <= value[0] < value[1]:
        raise argparse.ArgumentTypeError(f"expected i/P with 0 <= i < P (e.g. 0/2 and 1/2) or auto, got {text!r}")
    return value


def add_shard_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shard", type=shard, metavar="i/P",
                        help="run only every P-th cell of the study from the i-th (cells are independent and "
                             "seeded, so the rows are exactly those of a whole run), into its own --out; join the "
                             "shards with greedyprune merge. 'auto' takes i/P from torchrun's RANK/WORLD_SIZE")


def shard_suffix(value) -> str:
    return "" if value is None else f"-shard{value[0]}of{value[1]}"


def key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as an int, a float, true/false, or else kept as a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE such as shortcut=A, got {text!r}")
    raw = raw.strip()
    value: object = raw
    if raw.lower() in ("true", "false"):
        value = raw.lower() == "true"
    else:
        for convert in (int, float):
            try:
                value = convert(raw)
                break
            except ValueError:
                pass
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite value in {text!r} (no inf or nan)")
    return key, value


def _option_type(annotation):
    """An argparse type for a dataclass field's annotation (``int``, ``float | None``, ``tuple[int, ...]``)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _option_type(args[0]) if len(args) == 1 else str
    if annotation in (tuple, list) or origin in (tuple, list):
        inner = typing.get_args(annotation)
        return float_list if inner and inner[0] is float else (name_list if inner and inner[0] is str else int_list)
    if annotation is bool:
        return "bool"
    if annotation is int:
        return nonnegative_int
    if annotation is float:
        return number()
    return str


def add_config_options(parser: argparse.ArgumentParser, config_cls, help: dict[str, str], *,
                       skip=(), types: dict | None = None, defaults=None) -> None:
    """One ``--field-name`` option per field of a study's config dataclass (declared once, there).

    Each option defaults to None (the preset's value is kept); the type comes from the field's annotation
    unless ``types`` names another; bools become ``--name / --no-name``. Ranges are checked by the
    config's own ``validate()``. The help shows the value in ``defaults`` (the quick preset; default: the
    dataclass's own defaults).
    """
    hints = typing.get_type_hints(config_cls)
    for f in fields(config_cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = (types or {}).get(f.name) or (seed if f.name == "seed" else _option_type(hints[f.name]))
        if defaults is not None:
            default = getattr(defaults, f.name)
        else:
            default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory
                                                                  is not MISSING else None)
        text = help.get(f.name, "")
        text = f"{text} (quick preset: {default})" if text else f"quick preset: {default}"
        if kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, type=kind, default=None, help=text)


def config_overrides(args: argparse.Namespace, config_cls, skip=()) -> dict:
    """The fields of ``config_cls`` given on the command line."""
    return {f.name: getattr(args, f.name) for f in fields(config_cls)
            if f.name not in skip and getattr(args, f.name, None) is not None}


def add_run_options(parser: argparse.ArgumentParser, *, device: bool = True) -> None:
    """``--device``, ``--threads`` and ``--no-progress``."""
    if device:
        parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def set_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def device(text: str) -> str:
    """A device the machine has (UsageError otherwise)."""
    from ..checks import as_device

    try:
        as_device(text)
    except ValueError as exc:
        raise UsageError(f"bad --device {text!r}: {exc}") from None
    return text


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by torchrun (or a launcher that sets the same
    variables): then the process group is initialised here (gloo on CPU, NCCL on CUDA) and True returned.
    A process group that exists already (greedyprune.distributed.launch) counts too."""
    from ..distributed import parallel

    if parallel.is_initialised():
        return parallel.world_size() > 1
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) < 2:
        return False
    parallel.init_process_group(timeout_s=float(os.environ.get("GREEDYPRUNE_TIMEOUT", "1800")))
    return True


def parallel_device(text: str) -> str:
    """``cuda`` becomes this process's GPU (``cuda:LOCAL_RANK``) in a multi-process run; anything else stays."""
    if text == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return text


def slug(data: str) -> str:
    """A directory-name form of a data spec: mnist5k -> mnist5k, mnist:/data/MNIST -> mnist-MNIST."""
    kind, _, directory = data.partition(":")
    text = kind + ("-" + os.path.basename(directory.rstrip("/\\")) if directory else "")
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)


def interrupted(out: Path) -> int:
    import sys

    print(f"\ninterrupted; every finished result is saved in {out}. Run the same command again to resume.",
          file=sys.stderr)
    return 130
