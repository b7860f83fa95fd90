"""``python -m greedyprune`` runs the command line (also under torchrun)."""
import sys

from .cli import main

__all__ = []

sys.exit(main())
