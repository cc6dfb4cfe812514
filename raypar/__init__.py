"""raypar: parareal neural networks trained on Ray, tracked in MLflow (design: docs/design.md).

The names a user needs::

    raypar.PararealNet      the parareal network in one process (the reference the distributed engine matches)
    raypar.TrainConfig      one training run's settings
    raypar.fit              train a TrainConfig on the current Ray cluster (a Ray Train run, recorded in MLflow)
    raypar.build            a built-in model (VGG, pre-activation ResNet) as a StagedModel
    raypar.staged_from      any nn.Sequential, torchvision ResNet or VGG as a StagedModel
    raypar.CoarseSpec       the coarse networks' design
    raypar.parareal         the parareal equations (coarse sweep, fine map, correction sweep)
    raypar.UserError        what every user mistake raises

Each name loads its module on first use; none loads a tool (bench, plan, tune, study).
"""
from .errors import UserError

__all__ = ["CoarseSpec", "PararealNet", "StagedModel", "TrainConfig", "UserError", "build", "fit", "parareal",
           "staged_from"]
__version__ = "0.1.0"

# every name but UserError loads on first use: `import raypar` (and the `raypar` command's start) stays quick
_LAZY = {"CoarseSpec": "network.specs", "staged_from": "network.convert", "StagedModel": "network.models",
         "build": "network.models", "parareal": "network.parareal", "PararealNet": "network.reference",
         "TrainConfig": "training.config", "fit": "training.launch"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'raypar' has no attribute {name!r}")
