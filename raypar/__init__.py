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

``TrainConfig`` and ``fit`` load Ray and MLflow on first use; no tool (bench, plan, tune, study) is loaded.
"""
from .errors import UserError
from .network.coarse import CoarseSpec
from .network.convert import staged_from
from .network.models import StagedModel, build
from .network.parareal import parareal
from .network.reference import PararealNet

__all__ = ["CoarseSpec", "PararealNet", "StagedModel", "TrainConfig", "UserError", "build", "fit", "parareal",
           "staged_from"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "TrainConfig":
        from .training.config import TrainConfig
        return TrainConfig
    if name == "fit":
        from .training.loop import fit
        return fit
    raise AttributeError(f"module 'raypar' has no attribute {name!r}")
