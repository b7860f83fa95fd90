"""The papers' studies, composed from the library: :mod:`greedyprune.studies.pretraining` (Figure 1)."""
