"""The fine actor's end of every transport."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from .wire import (DONE, EARLY_U, NEXT, NEXT_WAIT, Wire, failed_reply, from_numpy, incoming, make_group, outgoing,
                   to_numpy, wire_shape)


class ActorEnd:
    """The fine actor's end: turns what a call brought into a tensor, and a result into what goes back. Every
    transport's calls bring the same things: a :class:`Wire` (``p2p``), a mapped tensor (``cuda-ipc``) or a numpy array
    (``object-store``)."""

    def __init__(self, device: torch.device, nhwc: bool = False):
        self.device, self.nhwc = device, nhwc
        self.name = "object-store"
        self.group = None
        self.early: tuple | None = None     # p2p: (wire, buffer, work) of the receive posted early (post_early)
        self.next: tuple | None = None      # streamed steps: (buffer, work) of the receive of the driver's word

    def join(self, name: str, addr: str | None = None, port: int | None = None, rank: int = 0, world: int = 1):
        """Take the transport ``name``; ``p2p``: join the group at ``addr``:``port`` as ``rank`` of ``world``."""
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
        whole step of that shape). The tensor then arrives while this actor computes; a receive posted after its
        tensor was sent waits far longer (measured: benchmarks/throughput/README.md)."""
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
            self.group.send([failed_reply(wire_shape(reply[0], self.nhwc), reply[1], self.device)], 0,
                            call.reply_tag).wait()
        except Exception:  # noqa: BLE001 - the call's own error is what the driver must see
            pass

    def reply(self, t: torch.Tensor, call):
        """Send ``t`` back for ``call``: over the group (returns None), as a tensor to map (``cuda-ipc``) or as a numpy
        array (``object-store``)."""
        t = outgoing(t, self.nhwc)
        if isinstance(call, Wire):
            self.group.send([t], 0, call.reply_tag).wait()
            return None
        if self.name == "cuda-ipc":
            return t
        return to_numpy(t)
