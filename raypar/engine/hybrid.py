"""Data parallel on top of parareal (docs/design.md §3.5): R replicas of the whole parareal network — R drivers
(the Ray Train workers) x N fine actors — each training on its own shard of every batch, with the gradients of every
part averaged over the replicas before each optimizer step:

* pre, the coarse networks and post (and F_1 with ``--driver-segment``): over the drivers' process group;
* fine segment j: over a process group of the R actors that hold F_j, one group per j.

Averaging uses ``torch.distributed.all_reduce`` (gloo on CPU, NCCL for CUDA tensors) on one flat buffer per part.
Starting from the same weights (same seed) and applying the same averaged gradients, the replicas stay identical.
BatchNorm statistics stay per replica (each normalises its own shard); with ``--norm group`` (and the default
GroupNorm coarse networks) the model has no batch statistics and R replicas compute exactly what one process computes
on the combined batch.
"""
from __future__ import annotations

import datetime
import os
import socket

import torch
import torch.distributed as dist


def listen(addr: str | None = None) -> socket.socket:
    """A listening TCP socket on ``addr`` (default: this node's Ray address, loopback on a private local Ray) and a
    free port, for a process group's store to take over (:func:`init_group`): it listens on that address only, not
    on every interface, and holding it from the start leaves no window for another process to take the port."""
    import ray
    addr = addr or ray.util.get_node_ip_address()
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
    s.bind((addr, 0))
    s.listen()
    return s


def interface_of(addr: str) -> str | None:
    """The name of the network interface that holds ``addr`` (``lo`` for 127.0.0.1), None if none does."""
    import psutil
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address == addr for a in addrs):
            return name
    return None


def store_on(addr: str, port: int, world: int, rank: int, timeout: datetime.timedelta,
             listener: socket.socket | None = None) -> dist.TCPStore:
    """A process group's store at (``addr``, ``port``); rank 0's takes over ``listener`` (:func:`listen`), so it
    listens on that address only."""
    if rank == 0 and listener is None:
        raise ValueError("rank 0 of a process group needs the listener of hybrid.listen()")
    store = dist.TCPStore(addr, port, world, rank == 0, timeout=timeout, wait_for_workers=False,
                          master_listen_fd=listener.fileno() if rank == 0 else None)
    if rank == 0:
        listener.detach()                              # the store owns the socket now
    return store


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init_group(addr: str, port: int, world: int, rank: int, device: torch.device, timeout_s: float = 300.0,
               listener: socket.socket | None = None) -> None:
    """Join the default process group of ``world`` processes (the drivers of R replicas, or one segment's R fine
    actors). Rank 0 passes the ``listener`` of :func:`listen` at (``addr``, ``port``), whose socket the group's store
    takes over; the gloo endpoints bind ``addr``'s interface (``GLOO_SOCKET_IFNAME``): nothing listens beyond the
    node's address."""
    timeout = datetime.timedelta(seconds=timeout_s)
    store = store_on(addr, port, world, rank, timeout, listener)
    backend = backend_for(device)
    if backend == "gloo":
        interface = interface_of(addr)
        if interface:
            os.environ["GLOO_SOCKET_IFNAME"] = interface
    dist.init_process_group(backend, store=store, world_size=world, rank=rank, timeout=timeout)


def average_gradients(params, world: int, group=None) -> None:
    """Replace every parameter's gradient by its mean over the ``world`` replicas of ``group``. Parameters without
    a gradient are left alone (every replica has the same ones: the same graph on the same architecture)."""
    if world <= 1:
        return                                   # one replica: nothing to do (and nothing to walk on the hot path)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def all_sum(values: list[float], world: int, device: torch.device, group=None) -> list[float]:
    """Sums of a few numbers over the replicas (losses, counts, timings)."""
    if world <= 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, group=group)
    return t.tolist()


def broadcast(obj, world: int, group=None):
    """Rank 0's ``obj`` on every replica (e.g. the split measured by rank 0)."""
    if world <= 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]
