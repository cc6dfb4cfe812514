"""The ``raypar`` command (:func:`raypar.cli.main.main`)."""
from .main import main

__all__ = ["main"]
