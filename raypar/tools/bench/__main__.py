"""``python -m raypar.tools.bench [options]``: the same as ``raypar bench``."""
from .cli import main

raise SystemExit(main())
