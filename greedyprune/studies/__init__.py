"""The papers' studies, composed from the library. Each study module owns its options (a config dataclass
with presets and ``OPTION_HELP``), its results table (``SCHEMA``), its run function and its report; its
:class:`~greedyprune.studies.registry.Study` entry (in :mod:`~greedyprune.studies.catalog`) says how
``greedyprune study NAME`` runs it and where its report is.

* :mod:`~greedyprune.studies.pretraining` (+ ``pretraining_report``) - Figure 1;
* :mod:`~greedyprune.studies.appendix_c` - Appendix C;
* :mod:`~greedyprune.studies.cnn` - Appendix E / Table 1;
* :mod:`~greedyprune.studies.rethinking` - fine-tune vs Scratch-E vs Scratch-B;
* :mod:`~greedyprune.studies.theory` - Theorem 3's threshold vs the red line;
* :mod:`~greedyprune.studies.advisor` - the pre-training advisor replayed against a study.

``store.py`` is the resumable SQLite results store they share; ``registry.py`` the studies' registry.
"""
from __future__ import annotations

from . import catalog  # noqa: F401 - registers the built-in studies
from .registry import STUDIES, Study, get_study, register_study, report, study_names

__all__ = ["REPORTS", "STUDIES", "Study", "get_study", "register_study", "report", "study_names"]

#: study kind (as stored in its results database) -> module with ``report(rows, out_dir, draw)``: the built-in
#: studies', derived from the registry (``registry.study_for_kind`` finds any registered since)
REPORTS = {s.kind: s.report_module for s in STUDIES.values() if s.kind is not None and s.report_module is not None}
