"""Calibration and evaluation sentences: the default corpus that ships with Python, or the user's own file.

The default corpus is the prose of Python's own reference documentation, ``pydoc_data.topics`` (part of
every CPython install, so nothing is downloaded). Its paragraphs are split into sentences; code blocks,
grammar rules and headings are left out. :func:`default_sentences` splits the sentences into a calibration
part and a held-out part that share no sentence, so a pruned model is judged on text it was not fitted to.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path

from ..checks import check_int, check_number
from ..errors import InvalidOptionError, InvalidTypeError

__all__ = ["MIN_WORDS", "MAX_WORDS", "corpus_sentences", "default_sentences", "read_sentences", "split_sentences"]

MIN_WORDS = 6
"""Shortest sentence kept from a corpus (in words): shorter fragments are mostly headings."""

MAX_WORDS = 60
"""Longest sentence kept from a corpus (in words)."""

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_UNDERLINE = re.compile(r"^[*=\-~^+#]{3,}\s*$")
_BULLET = re.compile(r"^(\*|-|\d+\.)\s+")


def split_sentences(text: str, *, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> list[str]:
    """Sentences of a prose text, in order, without duplicates.

    Paragraphs are separated by blank lines; indented paragraphs (code), grammar rules (``::=``) and
    headings (with their underlines) are dropped; a paragraph's lines are joined and split after ``.``,
    ``!`` or ``?``. Kept: sentences that start with a capital letter, end with ``.``, ``!`` or ``?`` and
    have ``min_words`` to ``max_words`` words.

    Args:
        text: the prose.
        min_words, max_words: the sentence lengths kept, in words.

    Returns:
        The sentences, first occurrence order.
    """
    if not isinstance(text, str):
        raise InvalidTypeError(f"text must be a str, got {type(text).__name__}")
    min_words = check_int("min_words", min_words, 1)
    max_words = check_int("max_words", max_words, min_words)
    out, seen = [], set()
    for paragraph in re.split(r"\n\s*\n", text):
        lines = [line for line in paragraph.split("\n") if line.strip()]
        if any(_UNDERLINE.match(line.strip()) for line in lines):
            continue  # a heading with its underline
        if not lines or lines[0].startswith((" ", "\t")) or "::=" in paragraph:
            continue  # code block or grammar rule
        prose = _BULLET.sub("", " ".join(line.strip() for line in lines))
        for sentence in _SENTENCE_END.split(prose):
            sentence = " ".join(sentence.split())
            words = len(sentence.split())
            if (min_words <= words <= max_words and sentence[-1] in ".!?" and sentence[0].isupper()
                    and sentence not in seen):
                seen.add(sentence)
                out.append(sentence)
    return out


def corpus_sentences() -> list[str]:
    """Every sentence of the default corpus (Python's ``pydoc_data.topics``), in a fixed order."""
    try:
        from pydoc_data import topics
    except ImportError as exc:  # pragma: no cover - part of CPython; some distributions strip it
        raise ImportError("the default calibration text comes from the standard library's pydoc_data, which this "
                          "Python does not have; pass your own sentences (--text FILE on the command line)") from exc
    sentences, seen = [], set()
    for name in sorted(topics.topics):
        for sentence in split_sentences(topics.topics[name]):
            if sentence not in seen:
                seen.add(sentence)
                sentences.append(sentence)
    return sentences


def default_sentences(calibration: int = 512, held_out: int = 256, seed: int = 0) -> tuple[list[str], list[str]]:
    """Disjoint calibration and held-out sentences from the default corpus.

    The corpus sentences are shuffled with ``seed``; the first ``held_out`` are the held-out set and the
    next ``calibration`` the calibration set, so changing one size never moves sentences between the sets
    (the held-out set for a seed is the same for every calibration size).

    Args:
        calibration: number of calibration sentences (>= 1).
        held_out: number of held-out sentences (>= 0).
        seed: the shuffle.

    Returns:
        ``(calibration_sentences, held_out_sentences)``.

    Raises:
        ValueError: the corpus has fewer than ``calibration + held_out`` sentences (it names how many it has).
    """
    calibration = check_int("calibration", calibration, 1)
    held_out = check_int("held_out", held_out, 0)
    seed = check_int("seed", seed, 0)
    sentences = corpus_sentences()
    if calibration + held_out > len(sentences):
        raise InvalidOptionError(
            f"the default corpus has {len(sentences)} sentences; {calibration} calibration + {held_out} "
            f"held-out were asked for; ask for fewer or pass your own text")
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    held = [sentences[i] for i in order[:held_out]]
    calib = [sentences[i] for i in order[held_out:held_out + calibration]]
    return calib, held


def read_sentences(path: str | os.PathLike, *, held_out_fraction: float = 0.2, seed: int = 0,
                   one_per_line: bool | None = None) -> tuple[list[str], list[str]]:
    """Calibration and held-out sentences from a UTF-8 text file.

    A file whose non-empty lines are mostly short (one sentence or example per line) is read line by line;
    other files are split into sentences like the default corpus. The sentences are shuffled with ``seed``
    and the last ``held_out_fraction`` of them held out.

    Args:
        path: the text file.
        held_out_fraction: fraction in [0, 1) of the sentences held out for evaluation.
        seed: the shuffle.
        one_per_line: force line-by-line (True) or prose (False) reading; None decides from the file.

    Returns:
        ``(calibration_sentences, held_out_sentences)``.

    Raises:
        FileNotFoundError: no such file. ValueError: not UTF-8 text, or no sentence in it.
    """
    held_out_fraction = check_number("held_out_fraction", held_out_fraction, low=0, high=1, high_open=True)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidOptionError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if one_per_line is None:
        one_per_line = bool(lines) and sum(len(line.split()) <= MAX_WORDS for line in lines) >= 0.9 * len(lines) \
            and not re.search(r"\n\s*\n", text.strip())
    sentences = list(dict.fromkeys(lines)) if one_per_line else split_sentences(text, min_words=1)
    if not sentences:
        raise InvalidOptionError(
            f"{path} holds no sentence; give a UTF-8 text file with one sentence per line or prose")
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    n_held = int(round(held_out_fraction * len(sentences)))
    calib = [sentences[i] for i in order[:len(sentences) - n_held]]
    held = [sentences[i] for i in order[len(sentences) - n_held:]]
    return calib, held
