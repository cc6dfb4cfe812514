"""How interface tensors travel between the driver and its fine actors (``--transport``).

Per step and iteration the engine ships 4 N tensors (u out, f back, dL/df out, dL/du back); the Ray calls that drive
the actors always go through Ray, the tensors go one of three ways, each with one driver's end:

``object-store``  numpy arrays through Ray's object store: :class:`ObjectStoreEnd`. Works everywhere.
``p2p``           point-to-point ``send``/``recv`` in a torch.distributed group of the driver and its actors; only a
                  small descriptor goes through Ray. On GPUs, NCCL: a call per part (:class:`P2pEnd`); on CPUs, gloo:
                  with K = 1 whole steps, streamed (:class:`GlooEnd`).
``cuda-ipc``      Ray Direct Transport's CUDA IPC, for a driver and actors that share one GPU: :class:`CudaIpcEnd`.
``auto``          what :func:`choose` resolves it to where the run landed.

The actor's end is one class for all of them (:class:`ActorEnd`). In a channels-last run 4-D tensors travel in N, H,
W, C order, the order they already lie in memory, so neither end copies them into another layout. See docs/design.md
§3.3.
"""
from __future__ import annotations

import torch

from .actor_end import ActorEnd
from .choose import IPC_MIN_BYTES, choose
from ..specs import TRANSPORTS
from .cuda_ipc import CudaIpcEnd
from .driver_end import DriverEnd, Pending
from .gloo import GlooEnd, Streamed
from .object_store import ObjectStoreEnd
from .p2p import P2pEnd
from .wire import (DONE, EARLY_U, EVAL_OUT, EVAL_U, F_OUT, GRAD_F, GRAD_U, NEXT, NEXT_WAIT, U, Wire, failed_reply,
                   from_numpy, incoming, is_failed_reply, make_group, outgoing, to_numpy)

__all__ = ["ActorEnd", "CudaIpcEnd", "DriverEnd", "GlooEnd", "ObjectStoreEnd", "P2pEnd", "Pending", "Streamed",
           "Wire", "IPC_MIN_BYTES", "TRANSPORTS", "choose", "connect", "end_class", "failed_reply",
           "from_numpy", "incoming", "is_failed_reply", "make_group", "outgoing", "to_numpy",
           "U", "F_OUT", "GRAD_F", "GRAD_U", "EVAL_U", "EVAL_OUT", "EARLY_U", "NEXT", "DONE", "NEXT_WAIT"]


def end_class(name: str, device: torch.device) -> type[DriverEnd]:
    """The driver's end of transport ``name`` (not ``auto``) for a run on ``device``."""
    if name == "p2p":
        return P2pEnd if device.type == "cuda" else GlooEnd
    return {"object-store": ObjectStoreEnd, "cuda-ipc": CudaIpcEnd}[name]


def connect(name: str, actors: list, device: torch.device, nhwc: bool = False,
            step_bytes: int | None = None) -> DriverEnd:
    """The driver's end for ``actors``, joined: resolve ``auto`` and check that the chosen path can work here
    (:func:`choose`: a :class:`~raypar.errors.UserError` where it cannot), then join the actors to it. ``nhwc``: a
    channels-last run, whose 4-D tensors travel in N, H, W, C order; ``step_bytes``: the interface bytes a training
    step ships, if known (``auto`` on a shared GPU)."""
    import ray
    there = ray.get([a.where.remote() for a in actors]) if actors else []
    here = (ray.get_runtime_context().get_node_id(), tuple(ray.get_gpu_ids()))
    visible = torch.cuda.device_count() if device.type == "cuda" else 0
    name = choose(name, device.type, here, visible, there, step_bytes)
    end = end_class(name, device)(actors, device, nhwc)
    end.join()
    return end
