"""Mixed precision (``--amp``): autocast in every process, and a loss scale for float16.

``off``   float32 everywhere (the default).
``bf16``  ``torch.autocast`` to bfloat16 in the driver and in every fine actor: convolutions and matrix products run
          in bfloat16, the interface tensors travel in bfloat16 (half the bytes), the weights and the optimizer stay
          in float32. bfloat16 has float32's range, so no loss scaling. For GPUs from Ampere (A100, H100) on; on a
          CPU without bfloat16 instructions it is much slower than float32 (a correctness option there).
``fp16``  autocast to float16, with a dynamic loss scale (:class:`LossScaler`) against underflow: the driver
          multiplies the loss by the scale, so every gradient — the driver's, those shipped to the actors and their
          parameters' — carries it; each process divides its own gradients by it and says whether any is inf/NaN;
          if one is, no process steps and the scale halves, else all step, and the scale doubles after
          ``growth_interval`` good steps in a row (the rules of ``torch.amp.GradScaler``, which keeps its state per
          optimizer and so cannot make one decision for optimizers in several processes).

Backward passes run outside autocast, as PyTorch recommends; the losses are computed in float32.
"""
from __future__ import annotations

import contextlib

import torch

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device_type: str, mode: str):
    """The forward context of a run with ``--amp mode``: autocast to its dtype, or nothing for ``off``."""
    if mode == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=_DTYPES[mode])


def full(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 if autocast made it 16-bit (logits, before the loss), else ``t`` itself."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def unscale(params, inv_scale: float) -> bool:
    """Multiply every gradient by ``inv_scale`` (1 / the loss scale); True when any gradient is inf or NaN."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return False
    torch._foreach_mul_(grads, inv_scale)
    return not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


class LossScaler:
    """A dynamic loss scale, shared by the driver and its fine actors (the driver owns it; see the module doc)."""

    def __init__(self, scale: float = 2.0 ** 16, growth_interval: int = 2000):
        self.scale, self.growth_interval, self.good_steps = float(scale), growth_interval, 0

    def update(self, found_inf: bool) -> None:
        if found_inf:
            self.scale, self.good_steps = self.scale / 2, 0
        else:
            self.good_steps += 1
            if self.good_steps == self.growth_interval:
                self.scale, self.good_steps = self.scale * 2, 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps, "growth_interval": self.growth_interval}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.good_steps = float(state["scale"]), int(state["good_steps"])
        self.growth_interval = int(state["growth_interval"])
