"""``python -m tgfr``: the ``tgfr`` command (also what ``torchrun -m tgfr train ...`` starts on every rank)."""
import sys

from .cli import main

sys.exit(main())
