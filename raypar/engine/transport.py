"""How interface tensors travel between the driver and its fine actors (``--transport``).

Per step and iteration the engine ships 4 N tensors (u out, f back, dL/df out, dL/du back); the Ray task calls that
drive the actors always go through Ray, the tensors go one of three ways:

``object-store``  numpy arrays through Ray's object store (zero-copy reads; a CUDA tensor is copied to host memory and
                  back). Works everywhere.
``p2p``           point-to-point ``send``/``recv`` in a torch.distributed process group of the driver (rank 0) and its
                  actors (ranks 1..): NCCL between GPUs — device to device over NVLink/PCIe/InfiniBand, on one node
                  or across nodes — and gloo (TCP) on CPUs. Only a small descriptor (shape, dtype, tag) goes through
                  Ray, and with K = 1 a step whose batch has the last step's shape makes its calls before it has
                  their tensors: each actor waits in its receive, and Ray's dispatch (1–3 ms a call on a busy 2-core
                  machine) is off the critical path. On CPUs without loss scaling the actor's whole steps of one
                  shape in a row are one call, streamed, fed by a word a step through the group
                  (:meth:`DriverEnd.post_step`; :meth:`DriverEnd.stop_stream` ends it before any other call to the
                  actor), else one call per forward and backward (:meth:`DriverEnd.post_ahead`). NCCL needs each
                  process on its own GPU.
``cuda-ipc``      Ray Direct Transport's CUDA IPC transport: the tensors stay in GPU memory and the receiver maps the
                  sender's buffer; for a driver and actors that share one GPU on one node (fractional GPUs).
``auto``          ``p2p`` on CPUs and with a GPU per process; when they all share the driver's GPU, ``cuda-ipc`` for
                  steps that ship at least ``IPC_MIN_BYTES`` (24 MiB; the help of ``raypar train --transport``
                  says so too) and ``object-store`` for smaller ones (or when the batch is not known: ``cuda-ipc``);
                  else ``object-store``. Measured on one H200 (benchmarks/gpu/README.md): at 2–12 MiB a step the
                  object store's steps were 19–30 % shorter, at 27 MiB the two were level, at 33 MiB CUDA IPC's were
                  13 % shorter, at 193 MiB 5x.

In a channels-last run (``--channels-last``) 4-D tensors travel in N, H, W, C order, the order they already lie in
memory, so neither end copies them into another layout.

The group of ``p2p`` is made from its own ``TCPStore`` and ``ProcessGroupGloo``/``ProcessGroupNCCL`` objects, never
the default group: a driver that is one of R replicas already has the replicas' group as its default one.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..errors import UserError

TRANSPORTS = ("auto", "object-store", "p2p", "cuda-ipc")
# auto on a shared GPU: CUDA IPC from this many interface bytes a step (below it, its fixed cost per tensor outweighs
# the object store's copies through host memory)
IPC_MIN_BYTES = 24 * 2**20

# tags of the four interface tensors (gloo matches a send to a recv by peer and tag; NCCL by order)
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


def _wire_shape(shape: tuple, nhwc: bool) -> tuple:
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


def _tag(kind: int, k: int) -> int:
    return kind * 1000 + k


def make_group(backend: str, addr: str, port: int, rank: int, world: int, timeout_s: float = 300.0):
    """A process group that is not the default one: its own store, its own gloo/NCCL backend object."""
    import torch.distributed as dist
    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(addr, port, world, rank == 0, timeout=timeout, wait_for_workers=False)
    store = dist.PrefixStore("raypar-transport", store)
    if backend == "nccl":
        return dist.ProcessGroupNCCL(store, rank, world)
    return dist.ProcessGroupGloo(store, rank, world, timeout)


def check_name(name: str) -> None:
    """A one-line error for a transport that does not exist."""
    if name not in TRANSPORTS:
        raise UserError(f"--transport must be one of {', '.join(TRANSPORTS)}, got {name!r}")


def choose(name: str, device_type: str, here: tuple, visible: int, there: list[tuple],
           step_bytes: int | None = None) -> str:
    """The transport to use: ``name``, or what ``auto`` resolves to; a :class:`UserError` when it cannot work.

    ``here``: the driver's (node id, Ray GPU ids); ``visible``: the GPUs its CUDA sees; ``there``: each actor's
    (node id, Ray GPU ids, device type); ``step_bytes``: the interface bytes a training step ships, when known."""
    check_name(name)
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


# ----------------------------------------------------------------------------------------------- actor side
class ActorEnd:
    """The fine actor's end: turns what a call brought into a tensor, and a result into what goes back."""

    def __init__(self, device: torch.device, nhwc: bool = False):
        self.device, self.nhwc = device, nhwc
        self.name = "object-store"
        self.group = None
        self.early: tuple | None = None     # p2p: (wire, buffer, work) of the receive posted early (post_early)
        self.next: tuple | None = None      # streamed steps: (buffer, work) of the receive of the driver's word

    def join(self, name: str, addr: str | None = None, port: int | None = None, rank: int = 0, world: int = 1):
        self.name = name
        if name == "p2p":
            self.group = make_group("nccl" if self.device.type == "cuda" else "gloo", addr, port, rank, world)

    def receive(self, x, writable: bool = False) -> torch.Tensor:
        """The tensor a call brought; ``writable``: one the caller may modify in place (an object-store array is
        read-only)."""
        if isinstance(x, Wire):
            if x.tag == EARLY_U:                             # the receive posted at the end of the last step
                (wire, buf, work), self.early = self.early, None
                if (wire.shape, wire.dtype) != (x.shape, x.dtype):   # the driver keeps track: a bug, never a user's
                    raise RuntimeError(f"the early receive was for {wire}, the call is for {x}")
            else:
                buf = torch.empty(x.shape, dtype=x.dtype, device=self.device)
                work = self.group.recv([buf], 0, x.tag)
            work.wait()
            if buf.is_cuda:
                torch.cuda.current_stream(buf.device).synchronize()   # arrived: transfer time is not compute time
            return incoming(buf, self.nhwc)
        if isinstance(x, torch.Tensor):          # cuda-ipc: a view of the sender's memory, which it may reuse
            return incoming(x.detach().to(self.device).clone(), self.nhwc)
        return incoming(from_numpy(np.array(x) if writable else x, self.device), self.nhwc)

    def post_early(self, u: Wire) -> None:
        """After a whole step's ``dL/du`` is sent, before its weight gradients: post the receive of the next step's
        input, of ``u``'s shape, unless one is still posted (the driver sends it with the tag :data:`EARLY_U` only for a
        whole step of that shape: :meth:`DriverEnd.post_step`). The tensor then arrives while this actor computes; a
        receive posted after its tensor was sent took 2-4 ms on a busy 2-core machine, against 0.3 ms."""
        if self.early is None:
            buf = torch.empty(u.shape, dtype=u.dtype, device=self.device)
            self.early = (u, buf, self.group.recv([buf], 0, EARLY_U))

    def early_wire(self, u: Wire) -> Wire:
        """``u`` as the driver sends it to the early receive (:data:`EARLY_U`)."""
        return replace(u, tag=EARLY_U)

    def post_next(self) -> None:
        """Streamed steps: post the receive of the driver's word after this step, before the weight gradients."""
        buf = torch.empty(1, dtype=torch.int64)
        self.next = (buf, self.group.recv([buf], 0, NEXT))

    def next_step(self) -> int:
        """The driver's word (:meth:`post_next`): the next step's number, or -1 (no more steps in this call)."""
        (buf, work), self.next = self.next, None
        work.wait(NEXT_WAIT)
        return int(buf[0])

    def done(self, busy: float) -> None:
        """Streamed steps: tell the driver that this step's optimizer step is done and what it computed (seconds;
        NaN: the step failed). Best effort after a failure: the group may be what failed."""
        try:
            self.group.send([torch.tensor([busy], dtype=torch.float64)], 0, DONE).wait()
        except Exception:  # noqa: BLE001 - the failure itself is what the driver must see
            if busy == busy:
                raise

    def unblock(self, call: Wire, reply: tuple[tuple, torch.dtype]) -> None:
        """After a failure in a whole-step call (``FineWorker.train_step``): send a :func:`failed_reply` where the
        driver waits for ``call``'s reply, so that it stops waiting and asks Ray for the error (best effort: the group
        may be what failed)."""
        try:
            self.group.send([failed_reply(_wire_shape(reply[0], self.nhwc), reply[1], self.device)], 0,
                            call.reply_tag).wait()
        except Exception:  # noqa: BLE001 - the call's own error is what the driver must see
            pass

    def reply(self, t: torch.Tensor, call):
        t = outgoing(t, self.nhwc)
        if isinstance(call, Wire):
            self.group.send([t], 0, call.reply_tag).wait()
            return None
        if self.name == "cuda-ipc":
            return t
        return to_numpy(t)


# ---------------------------------------------------------------------------------------------- driver side
@dataclass
class Pending:
    ref: object                       # the Ray call
    out: torch.Tensor | None = None   # p2p: the buffer the reply lands in
    works: tuple = ()
    extra: object = None              # with_extra: what the call returned beside the tensor (once gathered)
    with_extra: bool = False          # the call returns (tensor, extra)
    step: object = None               # p2p: the actor's whole-step call this part of it belongs to (ref None then)


@dataclass
class Streamed:
    """A whole step of an actor's streamed steps (``FineWorker.train_steps``): the call, and the receive of the
    step's compute seconds (``ActorEnd.done``)."""
    ref: object
    done: torch.Tensor
    work: object


class DriverEnd:
    """The driver's end for ``actors``: ``call`` starts an actor method with a tensor (or None), ``gather`` returns
    the tensors the calls sent back. ``bytes`` counts the interface bytes moved (both directions)."""

    def __init__(self, name: str, actors: list, device: torch.device, nhwc: bool = False):
        self.name, self.actors, self.device, self.nhwc, self.bytes = name, actors, device, nhwc, 0
        self.group = None
        self.out_shapes: dict = {}
        self.last: dict = {}          # p2p: (j, method, k) -> the (wire, reply) of the last such call
        # p2p: (j, method, key) -> (wire, reply, ref, whole-step call, tag to send with) of the calls made ahead of
        # their tensor: ref None for a part of a whole-step call, whole-step call None for a call of its own
        self.posted: dict = {}
        self.ahead = 0                # how many calls were made ahead
        self.steps: dict = {}         # p2p: j -> actor j's whole step (post_step: a ref or a Streamed) until take_step
        # p2p: post_step makes whole-step calls; gloo only (False: a call for each part, as before 2026-11-27): an NCCL
        # receive does not fail when its peer dies, and with no Ray call to wait on the driver would wait for ever
        self.whole_steps = device.type == "cpu"
        self.early: dict = {}         # p2p: j -> the wire of the input actor j has posted an early receive for
        # p2p: whole steps send their input to that receive; gloo only: it matches a send to a receive by tag, where
        # NCCL takes them in order (an early receive left unmatched would take the next tensor sent, whatever it is)
        self.early_inputs = device.type == "cpu"
        self.sent_early = 0           # how many inputs went to an early receive
        # p2p: whole steps streamed, one Ray call (FineWorker.train_steps) for as many steps as come in a row, where
        # whole steps with early inputs are made (gloo): a Ray call a step cost a 2-core machine ~2 ms a step
        self.streams = True
        self.streams_on: dict = {}    # j -> (ref, u's wire, dL/df's wire, replies) of actor j's train_steps call
        self.words: dict = {}         # j -> (tensor, send) of the last word sent to streaming actor j
        self.streamed = 0             # how many whole steps went on an actor's running stream

    # ------------------------------------------------------------------------------------------ set-up
    @classmethod
    def connect(cls, name: str, actors: list, device: torch.device, nhwc: bool = False,
                step_bytes: int | None = None) -> "DriverEnd":
        """Resolve ``auto``, check that the chosen path can work here, and join the actors to it. ``nhwc``: a
        channels-last run, whose 4-D tensors travel in N, H, W, C order (the actors' ends must agree);
        ``step_bytes``: the interface bytes a training step ships, if known (``auto`` on a shared GPU)."""
        import ray
        there = ray.get([a.where.remote() for a in actors]) if actors else []
        here = (ray.get_runtime_context().get_node_id(), tuple(ray.get_gpu_ids()))
        visible = torch.cuda.device_count() if device.type == "cuda" else 0
        name = choose(name, device.type, here, visible, there, step_bytes)
        end = cls(name, actors, device, nhwc)
        if name == "p2p" and actors:
            from .hybrid import free_endpoint
            addr, port = free_endpoint()
            world = len(actors) + 1
            joins = [a.join_transport.remote(name, addr, port, i + 1, world) for i, a in enumerate(actors)]
            end.group = make_group("nccl" if device.type == "cuda" else "gloo", addr, port, 0, world)
            ray.get(joins)
        elif actors:
            ray.get([a.join_transport.remote(name) for a in actors])
        return end

    def close(self) -> None:
        """Shut the point-to-point group down (its communicators and store), before the actors go."""
        if self.group is not None:
            try:
                self.group.shutdown()
            except Exception:  # noqa: BLE001 - best effort: the actors are killed next anyway
                pass
            self.group = None

    # ------------------------------------------------------------------------------------------ calls
    def _out_shape(self, j: int, u: torch.Tensor, batch: bool = False) -> tuple[tuple, torch.dtype]:
        key = (j, tuple(u.shape), u.dtype, batch)
        if key not in self.out_shapes:
            import ray
            self.stop_stream(j)
            self.out_shapes[key] = ray.get(self.actors[j].output_shape.remote(tuple(u.shape), u.dtype, batch))
        return self.out_shapes[key]

    def call(self, j: int, method: str, key, t: torch.Tensor | None, kind: int, k: int = 0,
             reply: tuple[tuple, torch.dtype] | None = None, args: tuple = (), with_extra: bool = False) -> Pending:
        """Start ``actors[j].method(key, <t>, *args)``; ``reply``: the shape and dtype of the tensor it sends back
        (p2p), None when it sends none back; ``with_extra``: the method returns (tensor, something else)."""
        actor = self.actors[j]
        if (j, method, key) not in self.posted:
            self.stop_stream(j)              # (a call of its own: the actor must be taking Ray calls)
        if t is None:
            return Pending(getattr(actor, method).remote(key, None, *args), with_extra=with_extra)
        self.bytes += t.numel() * t.element_size()
        t = outgoing(t, self.nhwc)
        if self.name == "p2p":
            wire = Wire(tuple(t.shape), t.dtype, _tag(kind, k), _tag(kind + 1, k))
            self.last[(j, method, k)] = (wire, reply)
            posted = self.posted.pop((j, method, key), None)
            if posted is None:
                ref, step, tag = getattr(actor, method).remote(key, wire, *args), None, wire.tag
            elif posted[:2] == (wire, reply):
                ref, step, tag = posted[2:]
            else:                        # the actor waits for a tensor of another shape: a bug, never a user's error
                raise RuntimeError(f"actor {j}'s {method} {key} was posted for {posted[:2]}, not {(wire, reply)}")
            works = [self.group.send([t], j + 1, tag)]
            out = None
            if reply is not None:
                out = torch.empty(_wire_shape(reply[0], self.nhwc), dtype=reply[1], device=self.device)
                works.append(self.group.recv([out], j + 1, wire.reply_tag))
            return Pending(ref, out, (*works, t), with_extra=with_extra, step=step)   # t alive until it is sent
        if self.name == "cuda-ipc":
            import ray
            ref = getattr(actor, method).options(tensor_transport="cuda_ipc").remote(
                key, ray.put(t, _tensor_transport="cuda_ipc"), *args)
            return Pending(ref, with_extra=with_extra)
        return Pending(getattr(actor, method).remote(key, to_numpy(t), *args), with_extra=with_extra)

    def post_ahead(self, j: int, method: str, key, k: int) -> bool:
        """``p2p``: start ``actors[j].method(key, <tensor>)`` now, for a tensor of the shape the last such call had,
        which :meth:`call` sends later: the actor takes the call while the driver is still computing that tensor and
        waits in its receive, so Ray's dispatch is off the critical path. False (nothing started) where there is no
        such last call. The caller must then make that call before it waits on anything queued behind it."""
        last = self.last.get((j, method, k)) if self.name == "p2p" else None
        if last is None:
            return False
        self.stop_stream(j)
        self.posted[(j, method, key)] = (*last, getattr(self.actors[j], method).remote(key, last[0]), None,
                                         last[0].tag)
        self.ahead += 1
        return True

    def post_step(self, j: int, key) -> bool:
        """``p2p`` on CPUs, K = 1: start actor j's whole step (forward, backward and optimizer step) for tensors of
        the shapes its last forward and backward had: the next step of its running stream (``FineWorker.train_steps``:
        the word of this step), a new stream, or, where its input cannot go to the actor's early receive, one Ray call
        (``FineWorker.train_step``). The forward's and the backward's :meth:`call` then only move their tensors, and
        :meth:`take_step` gives the step. False (nothing started) where there were no such calls. The engine must then
        send both tensors (a backward's, zeros where it has none) before it waits on anything queued behind the step.
        The input goes to the actor's early receive where it has one for this input (:attr:`early`)."""
        parts = [self.last.get((j, m, 1)) if self.name == "p2p" and self.whole_steps else None
                 for m in ("forward", "backward")]
        if None in parts:
            return False
        (fw, f_reply), (bw, u_reply) = parts
        early = self.early_inputs and self.early.get(j) == fw     # the actor's early receive is for this input
        send = replace(fw, tag=EARLY_U) if early else fw
        self.sent_early += early
        parts = (fw, bw, (f_reply, u_reply))
        # the actor posts its next early receive after this step, unless it still has one posted (for another shape)
        posts_early = self.early_inputs and (early or j not in self.early)
        # streamed: the steps of one train_steps call, as long as their shapes stay and their inputs go to the early
        # receive (an actor that still has one posted for another shape takes a call of its own)
        streamed = self.streams and posts_early
        stream = self.streams_on.get(j)
        if stream is not None and not (streamed and early and stream[1:] == parts):
            self.stop_stream(j)
            stream = None
        if streamed:
            if stream is None:
                ref = self.actors[j].train_steps.remote(key, send, bw, parts[2])
                self.streams_on[j] = (ref, *parts)
            else:
                ref = stream[0]
                self._word(j, key[0], ref)
                self.streamed += 1
            done = torch.full((1,), float("nan"), dtype=torch.float64)
            self.steps[j] = Streamed(ref, done, self.group.recv([done], j + 1, DONE))
        else:
            ref = self.steps[j] = self.actors[j].train_step.remote(key, send, bw, parts[2], self.early_inputs)
        if posts_early:
            self.early[j] = fw
        self.posted[(j, "forward", key)] = (fw, f_reply, None, ref, send.tag)
        self.posted[(j, "backward", key)] = (bw, u_reply, None, ref, bw.tag)
        self.ahead += 1
        return True

    def take_step(self, j: int):
        """Actor j's whole step of this step (None if it has none): the ref of its call, or of a streamed step a
        :class:`Streamed`; :meth:`results` gives what it returns."""
        return self.steps.pop(j, None)

    def results(self, steps: list) -> list:
        """What each whole step (:meth:`take_step`) or other call to an actor returned, once done: a streamed step's
        compute seconds (raising the actor's error where it failed), a call's return value."""
        import ray
        refs = [s for s in steps if not isinstance(s, Streamed)]
        got = iter(ray.get(refs) if refs else [])
        out = []
        for s in steps:
            if not isinstance(s, Streamed):
                out.append(next(got))
                continue
            self._wait(s.work, s.ref)
            busy = float(s.done[0])
            if busy != busy:                                 # NaN: the actor's step failed
                self._failed(s.ref, 60.0)
                raise RuntimeError("a fine actor's step failed, and Ray has not said why within 60 s")
            out.append(busy)
        return out

    def _word(self, j: int, word: int, ref) -> None:
        """Send a streaming actor its next word (the last word's send done first: the actor took it a step ago)."""
        last = self.words.pop(j, None)
        if last is not None:
            self._wait(last[1], ref)
        t = torch.tensor([word], dtype=torch.int64)
        self.words[j] = (t, self.group.send([t], j + 1, NEXT))

    def stop_stream(self, j: int) -> None:
        """End actor j's streamed steps (:meth:`FineWorker.train_steps`), so that it takes Ray calls again: the word
        -1 after its last step; raises the actor's error where it failed."""
        if j not in self.streams_on:
            return
        if any(k[0] == j for k in self.posted):     # (only after a failure: the actor waits in its step)
            raise RuntimeError(f"actor {j}'s streamed steps cannot end in the middle of a step")
        stream = self.streams_on.pop(j)
        import ray
        self._word(j, -1, stream[0])
        self._wait(self.words.pop(j)[1], stream[0])
        ray.get(stream[0])

    def stop_streams(self) -> None:
        """:meth:`stop_stream` for every actor: before any call to the actors other than a whole step."""
        for j in list(self.streams_on):
            self.stop_stream(j)

    def forward(self, j: int, key, u: torch.Tensor, kind: int = U, k: int = 0) -> Pending:
        method = "forward" if kind == U else "eval_forward"
        reply = self._out_shape(j, u) if self.name == "p2p" else None
        return self.call(j, method, key, u, kind, k, reply)

    def head_forward(self, j: int, key, x: torch.Tensor, state_ref) -> Pending:
        """``--coarse-in-actors``: the batch ``x`` (and the ref of the head's weights) to actor j, ``d_j`` back, with
        the head's buffers as the call's extra."""
        reply = self._out_shape(j, x, batch=True) if self.name == "p2p" else None
        return self.call(j, "head_forward", key, x, U, 1, reply, (state_ref,), with_extra=True)

    def values(self, pending: list[Pending]) -> list:
        """Wait for the calls and their point-to-point sends and receives; what the calls returned (through Ray)."""
        import ray
        got = iter(ray.get([p.ref for p in pending if p.ref is not None]))
        results = [next(got) if p.ref is not None else None for p in pending]
        for p in pending:
            works = [w for w in p.works if not isinstance(w, torch.Tensor)]
            if p.step is None:
                for w in works:
                    w.wait()
                continue
            # a part of a whole-step call (a send, then its reply): the reply first, since an actor that failed
            # before its receive sends a failed_reply, and the send to it would wait for gloo's timeout
            send, reply = works
            self._wait(reply, p.step)
            if is_failed_reply(p.out):
                self._failed(p.step, 60.0)
                raise RuntimeError("a fine actor's step failed, and Ray has not said why within 60 s")
            self._wait(send, p.step)
        return results

    def _wait(self, work, step) -> None:
        """Wait for a send or receive of the whole-step call ``step``; where it fails (the actor died, so its sockets
        closed), raise that call's error if it has one."""
        try:
            work.wait()
        except RuntimeError:
            self._failed(step, 30.0)
            raise

    def _failed(self, step, timeout_s: float) -> None:
        """A whole-step call failed: forget what this end expected of the actors (an engine whose step failed is
        shut down, not used again), and raise the call's error if it ends with one within ``timeout_s``."""
        import ray
        self.posted.clear()
        self.steps.clear()
        self.early.clear()
        self.streams_on.clear()
        self.words.clear()
        done, _ = ray.wait([step], timeout=timeout_s)
        if done:
            ray.get(done[0])

    def gather(self, pending: list[Pending]) -> list[torch.Tensor | None]:
        """Wait for the calls; the tensors they sent back (None where a call sent none)."""
        outs = []
        for p, r in zip(pending, self.values(pending)):
            if p.with_extra:
                r, p.extra = r
            if p.out is not None:
                out = p.out
            elif r is None:
                out = None
            elif isinstance(r, torch.Tensor):            # cuda-ipc: the actor's memory, mapped: copy it out
                out = r.detach().clone()
            else:
                out = from_numpy(r, self.device)
            out = incoming(out, self.nhwc) if out is not None else None
            if out is not None:
                self.bytes += out.numel() * out.element_size()
            outs.append(out)
        return outs
