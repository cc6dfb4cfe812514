"""``object-store``: numpy arrays through Ray's object store (zero-copy reads; a CUDA tensor is copied to host memory
and back). Works everywhere."""
from __future__ import annotations

import torch

from .driver_end import DriverEnd, Pending
from .wire import to_numpy


class ObjectStoreEnd(DriverEnd):
    """Every tensor goes with its call, as a numpy array (bfloat16 as its int16 bit pattern: :func:`to_numpy`)."""
    name = "object-store"

    def _send(self, j: int, method: str, key, t: torch.Tensor, kind: int, k: int, reply, args: tuple,
              with_extra: bool) -> Pending:
        return Pending(getattr(self.actors[j], method).remote(key, to_numpy(t), *args), with_extra=with_extra)
