"""An environment variable set for a while, for what this process calls or starts meanwhile."""
from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def env_default(name: str, value: str):
    """Inside, ``os.environ[name]`` is ``value``, unless the environment sets it already (the user's own setting
    wins); after, it is unset again."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)
