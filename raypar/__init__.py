"""raypar: parareal neural networks trained on Ray (see DESIGN.md and README.md)."""
from .coarse import CoarseSpec
from .convert import staged_from
from .errors import UserError
from .models import StagedModel, build
from .network import PararealNet
from .parareal import parareal

__all__ = ["CoarseSpec", "PararealNet", "StagedModel", "UserError", "build", "parareal", "staged_from"]
__version__ = "0.1.0"
