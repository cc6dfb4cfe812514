"""The engine's settings as plain data, importable without torch: what a run's configuration names and checks
before any process imports torch (the command's start, its ``--help``). The modules that act on them take them from
here: :mod:`raypar.engine.optim`, :mod:`raypar.engine.precision`, :mod:`raypar.engine.transport`."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError

SCHEDULES = ("cosine", "step")


@dataclass
class OptimConfig:
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epochs: int = 1
    schedule: str = "cosine"              # "cosine" (to 0 at the last epoch) or "step" (x gamma at each milestone)
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])   # fractions of the epochs ("step")
    gamma: float = 0.1

    def step_epochs(self) -> list[int]:
        """The epochs after which a "step" schedule multiplies the LR by ``gamma``."""
        return sorted({max(1, round(m * self.epochs)) for m in self.milestones})


# mixed precision (--amp): raypar.engine.precision
AMP_MODES = ("off", "bf16", "fp16")
# how interface tensors travel (--transport): raypar.engine.transport
TRANSPORTS = ("auto", "object-store", "p2p", "cuda-ipc")


def check_amp(mode: str) -> None:
    """Raise a one-line :class:`UserError` for a precision that does not exist."""
    if mode not in AMP_MODES:
        raise UserError(f"--amp must be one of {', '.join(AMP_MODES)}, got {mode!r}")


def check_transport(name: str) -> None:
    """Raise a one-line :class:`UserError` for a transport that does not exist."""
    if name not in TRANSPORTS:
        raise UserError(f"--transport must be one of {', '.join(TRANSPORTS)}, got {name!r}")
