"""What travels on the wire: tags, :class:`Wire` descriptors, tensor layouts, failed replies, process groups."""
from __future__ import annotations

import datetime
from dataclasses import dataclass

import numpy as np
import torch

# tags of the interface tensors (gloo matches a send to a recv by peer and tag; NCCL by order)
U, F_OUT, GRAD_F, GRAD_U, EVAL_U, EVAL_OUT = range(6)
EARLY_U = 6 * 1000            # the tag of a whole step's u that the actor has been waiting for since its last step
# streamed whole steps (FineWorker.train_steps): the driver's word after a step (the next step's number, or -1), and
# the actor's compute seconds of a step
NEXT, DONE = 7 * 1000, 8 * 1000
# how long a streaming actor waits for the driver's next word: as long as the driver needs between two steps (a
# receive that times out closes gloo's connection for good)
NEXT_WAIT = datetime.timedelta(days=7)


@dataclass(frozen=True)
class Wire:
    """What travels through Ray in place of a tensor on the ``p2p`` path: where to find it in the group."""
    shape: tuple
    dtype: torch.dtype
    tag: int            # the tag of the tensor that comes with this call
    reply_tag: int      # the tag of the tensor the actor sends back


def tag(kind: int, k: int) -> int:
    """The tag of interface tensor ``kind`` (:data:`U`, :data:`GRAD_F`, ...) of iteration ``k``."""
    return kind * 1000 + k


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A contiguous CPU numpy view (no copy for a contiguous CPU tensor) for the object store. bfloat16 (``--amp
    bf16``), which numpy lacks, travels as its int16 bit pattern: interface tensors are always floating point, so an
    int16 array can only be one."""
    t = t.detach().to("cpu").contiguous()
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()


def from_numpy(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A tensor over ``a`` (zero-copy on CPU). Arrays from ``ray.get`` are read-only: never modify the result in
    place (autograd forbids in-place ops on the leaf tensors this is used for)."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)     # "The given NumPy array is not writable"
        t = torch.from_numpy(a)
    return (t.view(torch.bfloat16) if t.dtype == torch.int16 else t).to(device)


def outgoing(t: torch.Tensor, nhwc: bool) -> torch.Tensor:
    """``t`` as it travels: contiguous, and for a channels-last run (``nhwc``) a 4-D tensor in N, H, W, C order, which
    is how a channels-last tensor already lies in memory: no copy, where a plain ``contiguous()`` would make one."""
    t = t.detach()
    if nhwc and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
    return t.contiguous()


def incoming(t: torch.Tensor, nhwc: bool) -> torch.Tensor:
    """The inverse of :func:`outgoing`: an N, C, H, W tensor again (channels-last strides, no copy)."""
    return t.permute(0, 3, 1, 2) if nhwc and t.dim() == 4 else t


def wire_shape(shape: tuple, nhwc: bool) -> tuple:
    """The shape a tensor of ``shape`` has as it travels (:func:`outgoing`)."""
    return (shape[0], shape[2], shape[3], shape[1]) if nhwc and len(shape) == 4 else tuple(shape)


# NaNs that arithmetic never makes from numbers: what a failed whole-step call (FineWorker.train_step) sends in
# place of a reply
_FAILED = {torch.float32: (torch.int32, 0x7FC00BAD), torch.float64: (torch.int64, 0x7FF8000000000BAD),
           torch.float16: (torch.int16, 0x7EAD), torch.bfloat16: (torch.int16, 0x7FAD)}


def failed_reply(shape: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A tensor that says "this call failed": every number the NaN of :data:`_FAILED`."""
    as_int, bits = _FAILED[dtype]
    return torch.full(shape, bits, dtype=as_int, device=device).view(dtype)


def is_failed_reply(t: torch.Tensor) -> bool:
    """Whether ``t`` is a :func:`failed_reply` (its first number tells)."""
    as_int, bits = _FAILED.get(t.dtype, (None, None))
    return as_int is not None and t.numel() > 0 and int(t.reshape(-1)[:1].view(as_int)) == bits


def make_group(backend: str, addr: str, port: int, rank: int, world: int, timeout_s: float = 300.0,
               listener=None):
    """A process group that is not the default one: its own store, its own gloo/NCCL backend object (a driver that
    is one of R replicas already has the replicas' group as its default one). Rank 0 passes the socket already
    listening at (``addr``, ``port``) (:func:`raypar.engine.hybrid.listen`), which its store takes over; every gloo
    endpoint binds ``addr`` too: nothing listens beyond the node's address (loopback for a local run)."""
    import torch.distributed as dist

    from ..hybrid import store_on
    timeout = datetime.timedelta(seconds=timeout_s)
    store = store_on(addr, port, world, rank, timeout, listener)
    store = dist.PrefixStore("raypar-transport", store)
    if backend == "nccl":
        return dist.ProcessGroupNCCL(store, rank, world)
    options = dist.ProcessGroupGloo._Options()
    options._devices = [dist.ProcessGroupGloo.create_device(hostname=addr)]
    options._timeout = timeout
    return dist.ProcessGroupGloo(store, rank, world, options)
