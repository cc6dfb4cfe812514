"""The ``raypar`` command: :func:`raypar.cli.main.main`; ``python -m raypar.cli`` runs it."""
