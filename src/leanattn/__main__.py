"""``python -m leanattn demo`` / ``python -m leanattn bench NAME``: see ``leanattn.cli``."""
import sys

from .cli import main

sys.exit(main())
