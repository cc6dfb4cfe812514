"""Which transport a run uses: what ``auto`` resolves to where the run landed (the names ``--transport`` takes are
:data:`raypar.engine.specs.TRANSPORTS`)."""
from __future__ import annotations

from ...errors import UserError
from ..specs import check_transport

# auto on a shared GPU: CUDA IPC from this many interface bytes a step; below it, its fixed cost per tensor outweighs
# the object store's copies through host memory (measured: benchmarks/gpu/README.md)
IPC_MIN_BYTES = 24 * 2**20


def choose(name: str, device_type: str, here: tuple, visible: int, there: list[tuple],
           step_bytes: int | None = None) -> str:
    """The transport to use: ``name``, or what ``auto`` resolves to; a :class:`UserError` when it cannot work.

    ``auto`` is ``p2p`` on CPUs and with a GPU per process; where the driver and its actors share one GPU,
    ``cuda-ipc`` for steps that ship at least :data:`IPC_MIN_BYTES` (or when ``step_bytes`` is not known) and
    ``object-store`` for smaller ones; else ``object-store``.

    ``here``: the driver's (node id, Ray GPU ids); ``visible``: the GPUs its CUDA sees; ``there``: each actor's
    (node id, Ray GPU ids, device type); ``step_bytes``: the interface bytes a training step ships, when known."""
    check_transport(name)
    odd = [w[2] for w in there if w[2] != device_type]
    if odd:
        raise UserError(f"the driver computes on {device_type} but a fine actor on {odd[0]}: give both GPUs or "
                        f"neither")
    shared = own = False
    if device_type == "cuda" and there:
        node, ids = here[0], frozenset(here[1])
        mine = {(node, g) for g in ids}
        # CUDA IPC maps device indices through the GPUs Ray gave each process: the driver must see exactly those
        # (a Ray Train worker may see its neighbours' GPUs too)
        shared = bool(ids) and visible == len(ids) and all((w[0], frozenset(w[1])) == (node, ids) for w in there)
        # NCCL makes one communicator per (driver, actor j) pair: no actor may share a GPU with the driver
        own = bool(ids) and all(w[1] and mine.isdisjoint((w[0], g) for g in w[1]) for w in there)
    if name == "auto":
        if shared:
            return "object-store" if step_bytes is not None and step_bytes < IPC_MIN_BYTES else "cuda-ipc"
        return "p2p" if there and (own or device_type == "cpu") else "object-store"
    if name == "cuda-ipc" and there and not shared:
        raise UserError("--transport cuda-ipc needs the driver and every fine actor on the same GPU of one node "
                        "(a fractional --gpus-per-subnet, one replica per GPU); with a GPU per process use "
                        "--transport p2p")
    if name == "p2p" and device_type == "cuda" and there and not own:
        raise UserError("--transport p2p on GPUs needs the driver's GPU to be its own, shared with no fine actor "
                        "(NCCL refuses two ranks on one GPU); with a shared GPU use cuda-ipc or object-store")
    return name
