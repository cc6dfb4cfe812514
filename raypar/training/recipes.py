"""Recipes: named, versioned training configurations that ship with raypar (``raypar/recipes/*.toml``).

A recipe is a TOML configuration file (see :mod:`raypar.training.config`) with a ``[recipe]`` table (``name``, ``version``,
``description``). ``raypar train --recipe NAME`` and ``raypar study --recipe NAME`` start from it; command-line
options override it; a run records ``recipe = "NAME@VERSION"`` in MLflow. A recipe's numbers never change under the
same version: a changed recipe gets a new version. A recipe may pin one split per N (its ``[splits]`` table, for its
own model): a run with that N splits so unless ``--balance`` or another ``--model`` is given.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources

from .config import values_from_toml
from ..errors import UserError


@dataclass
class Recipe:
    name: str
    version: int
    description: str
    values: dict                 # TrainConfig fields
    splits: dict = field(default_factory=dict)      # N -> block counts, for values["model"]

    @property
    def tag(self) -> str:
        return f"{self.name}@{self.version}"


def _files():
    return sorted((f for f in resources.files("raypar.training").joinpath("recipes").iterdir() if f.name.endswith(".toml")),
                  key=lambda f: f.name)


def _parse(f) -> Recipe:
    import tomllib
    doc = tomllib.loads(f.read_text())
    values, meta = values_from_toml(doc, f"recipe {f.name}")
    return Recipe(meta["name"], int(meta["version"]), meta.get("description", ""), values, meta.get("splits", {}))


def available() -> list[Recipe]:
    return [_parse(f) for f in _files()]


def get(name: str) -> Recipe:
    for f in _files():
        if f.name == f"{name}.toml":
            return _parse(f)
    names = ", ".join(f.name[:-5] for f in _files())
    raise UserError(f"unknown recipe {name!r}; available: {names} (or pass your own file with --config FILE)")
