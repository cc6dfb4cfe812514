"""``cuda-ipc``: Ray Direct Transport's CUDA IPC transport. The tensors stay in GPU memory and the receiver maps the
sender's buffer: for a driver and actors that share one GPU on one node (fractional GPUs). The actor class must be
made with ``enable_tensor_transport=True``."""
from __future__ import annotations

import torch

from .driver_end import DriverEnd, Pending


class CudaIpcEnd(DriverEnd):
    """Every tensor goes with its call, put with ``_tensor_transport="cuda_ipc"``; the actor's reply is a mapped view
    of its memory, which :meth:`gather` copies out."""
    name = "cuda-ipc"

    def _send(self, j: int, method: str, key, t: torch.Tensor, kind: int, k: int, reply, args: tuple,
              with_extra: bool) -> Pending:
        import ray
        ref = getattr(self.actors[j], method).options(tensor_transport="cuda_ipc").remote(
            key, ray.put(t, _tensor_transport="cuda_ipc"), *args)
        return Pending(ref, with_extra=with_extra)
