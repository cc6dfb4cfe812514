"""The optimizer and LR schedule that every part of a parareal network uses alike (the driver's pre/coarse/post and
each fine actor's segment): SGD with momentum and weight decay, stepped once per epoch by a cosine or step schedule.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

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


def make_optimizer(params, o: OptimConfig):
    """``(optimizer, scheduler)``; the scheduler is stepped once at the end of every epoch."""
    opt = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    if o.schedule == "step":
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=o.step_epochs(), gamma=o.gamma)
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, o.epochs))
    return opt, sched
