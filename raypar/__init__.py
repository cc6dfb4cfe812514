"""raypar: parareal neural networks trained on Ray (see DESIGN.md and README.md)."""
from .network.coarse import CoarseSpec
from .network.convert import staged_from
from .errors import UserError
from .network.models import StagedModel, build
from .network.reference import PararealNet
from .network.parareal import parareal

__all__ = ["CoarseSpec", "PararealNet", "StagedModel", "UserError", "build", "parareal", "staged_from"]
__version__ = "0.1.0"
