"""``python -m masktwins_bio`` (also what ``torchrun -m masktwins_bio`` runs)."""
import sys

from .cli import main

sys.exit(main())
