"""The optimizer and LR schedule that every part of a parareal network uses alike (the driver's pre/coarse/post and
each fine actor's segment): SGD with momentum and weight decay, stepped once per epoch by a cosine or step schedule.
"""
from __future__ import annotations

import inspect

import torch

from .specs import OptimConfig


class SGD(torch.optim.SGD):
    """``torch.optim.SGD``, the same numbers and the same ``state_dict``, without importing ``torch._dynamo``.

    torch.optim wraps ``step``, ``zero_grad``, ``add_param_group``, ``state_dict`` and ``load_state_dict`` to keep
    ``torch.compile`` out of them; the wrappers import ``torch._dynamo`` on their first call, about a second of a
    core in every process that trains, at the start of every run (``benchmarks/startup/README.md``). raypar never
    compiles a step, so these call the methods that torch wrapped (``inspect.unwrap``, through the hooks' wrapper
    too); ``step`` with gradients off, as the wrapper does for an optimizer that is not ``differentiable``.
    """

    def add_param_group(self, param_group):
        inspect.unwrap(torch.optim.Optimizer.add_param_group)(self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        inspect.unwrap(torch.optim.Optimizer.zero_grad)(self, set_to_none)

    def state_dict(self):
        return inspect.unwrap(torch.optim.Optimizer.state_dict)(self)

    def load_state_dict(self, state_dict) -> None:
        inspect.unwrap(torch.optim.Optimizer.load_state_dict)(self, state_dict)

    def step(self, closure=None):
        with torch.no_grad():
            return inspect.unwrap(torch.optim.SGD.step)(self, closure)


def make_optimizer(params, o: OptimConfig):
    """``(optimizer, scheduler)``; the scheduler is stepped once at the end of every epoch."""
    opt = SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return opt, _scheduler(opt, o)


def restore_scheduler(opt, o: OptimConfig, state: dict):
    """The scheduler of ``o`` at the epoch a saved scheduler (``state``) had reached, with ``opt``'s LR set to it.

    The schedule is the one ``o`` describes now: a resumed run with more epochs than when it was saved follows the
    longer schedule from where it stands. With the same epochs the LRs are the saved run's, bit for bit (the same
    steps from the same start)."""
    import warnings
    for group in opt.param_groups:
        group["lr"] = o.lr
        group.pop("initial_lr", None)
    sched = _scheduler(opt, o)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)          # "scheduler.step() before optimizer.step()"
        for _ in range(int(state["last_epoch"])):
            sched.step()
    return sched


def _scheduler(opt, o: OptimConfig):
    if o.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=o.step_epochs(), gamma=o.gamma)
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, o.epochs))
