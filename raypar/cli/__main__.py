"""``python -m raypar.cli``: the ``raypar`` command."""
import sys

from .main import main

sys.exit(main())
