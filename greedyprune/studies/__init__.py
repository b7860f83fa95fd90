"""The papers' studies, composed from the library. Each study module owns its options (a config dataclass
with presets and ``OPTION_HELP``), its results table (``SCHEMA``), its run function and its report.

* :mod:`~greedyprune.studies.pretraining` (+ ``pretraining_report``) - Figure 1;
* :mod:`~greedyprune.studies.appendix_c` - Appendix C;
* :mod:`~greedyprune.studies.cnn` - Appendix E / Table 1;
* :mod:`~greedyprune.studies.rethinking` - fine-tune vs Scratch-E vs Scratch-B;
* :mod:`~greedyprune.studies.theory` - Theorem 3's threshold vs the red line;
* :mod:`~greedyprune.studies.advisor` - the pre-training advisor replayed against a study.

``store.py`` is the resumable SQLite results store they share.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import InvalidOptionError

__all__ = ["REPORTS", "report"]

#: study kind (as stored in its results database) -> module with ``report(rows, out_dir, draw)``
REPORTS = {"pretraining": "pretraining_report", "cnn": "cnn_report", "rethinking": "rethinking"}


def report(kind: str, rows: list[dict], out_dir: str | Path, draw: bool = True) -> str:
    """The text report (and, with ``draw``, the figures) of a study's rows, for any study kind."""
    if kind not in REPORTS:
        raise InvalidOptionError(f"no report for study kind {kind!r}; known kinds: {sorted(REPORTS)}")
    if not rows:
        raise InvalidOptionError(f"{out_dir} holds no result rows yet")
    return importlib.import_module(f"{__name__}.{REPORTS[kind]}").report(rows, out_dir, draw)
