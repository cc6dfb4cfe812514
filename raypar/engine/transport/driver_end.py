"""The driver's end of a transport: what every transport shares. One subclass per transport sends the tensors."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .wire import U, from_numpy, incoming, outgoing


@dataclass
class Pending:
    """A call to an actor method, started; :meth:`DriverEnd.gather` or :meth:`DriverEnd.values` waits for it."""
    ref: object                       # the Ray call
    out: torch.Tensor | None = None   # p2p: the buffer the reply lands in
    works: tuple = ()                 # p2p: the sends and receives of its tensors (and the tensors, kept alive)
    extra: object = None              # with_extra: what the call returned beside the tensor (once gathered)
    with_extra: bool = False          # the call returns (tensor, extra)
    step: object = None               # p2p: the actor's whole-step call this part of it belongs to (ref None then)


class DriverEnd:
    """The driver's end for ``actors``: :meth:`call` starts an actor method with a tensor (or None), :meth:`gather`
    returns the tensors the calls sent back. ``bytes`` counts the interface bytes moved (both directions).

    Made by :func:`raypar.engine.transport.connect`. This base class makes every call when its tensor is there; the
    ``p2p`` ends can make calls before their tensors exist (:meth:`post_ahead`, :meth:`post_step`), which here start
    nothing."""
    name = ""

    def __init__(self, actors: list, device: torch.device, nhwc: bool = False):
        """``nhwc``: a channels-last run, whose 4-D tensors travel in N, H, W, C order (the actors' ends agree)."""
        self.actors, self.device, self.nhwc, self.bytes = actors, device, nhwc, 0
        self._ahead = 0

    @property
    def ahead(self) -> int:
        """How many calls were made before their tensors (:meth:`post_ahead`, :meth:`post_step`)."""
        return self._ahead

    @property
    def idle(self) -> bool:
        """No call made ahead still waits for its tensor and no whole step is left untaken."""
        return True

    def join(self) -> None:
        """Join the actors to this transport (``FineWorker.join_transport``)."""
        import ray
        if self.actors:
            ray.get([a.join_transport.remote(self.name) for a in self.actors])

    def close(self) -> None:
        """Release what this end holds, before the actors go."""

    # ------------------------------------------------------------------------------ calls made before their tensors
    def post_ahead(self, j: int, method: str, key, k: int) -> bool:
        """Start ``actors[j].method(key, <tensor>)`` before its tensor exists; False: nothing started."""
        return False

    def post_step(self, j: int, key) -> bool:
        """Start actor j's whole step before its tensors exist; False: nothing started."""
        return False

    def take_step(self, j: int):
        """Actor j's whole step of this step (:meth:`post_step`), None if it has none."""
        return None

    def stop_stream(self, j: int) -> None:
        """End actor j's streamed whole steps, if it is in them, so that it takes Ray calls again."""

    def stop_streams(self) -> None:
        """:meth:`stop_stream` for every actor: before any call to the actors other than a training step's."""

    # ------------------------------------------------------------------------------------------------------ calls
    def call(self, j: int, method: str, key, t: torch.Tensor | None, kind: int, k: int = 0,
             reply: tuple[tuple, torch.dtype] | None = None, args: tuple = (), with_extra: bool = False) -> Pending:
        """Start ``actors[j].method(key, <t>, *args)``; ``kind`` and ``k``: which interface tensor ``t`` is (its tag);
        ``reply``: the shape and dtype of the tensor it sends back (p2p), None when it sends none back;
        ``with_extra``: the method returns (tensor, something else)."""
        if t is None:
            return Pending(getattr(self.actors[j], method).remote(key, None, *args), with_extra=with_extra)
        self.bytes += t.numel() * t.element_size()
        return self._send(j, method, key, outgoing(t, self.nhwc), kind, k, reply, args, with_extra)

    def _send(self, j: int, method: str, key, t: torch.Tensor, kind: int, k: int, reply, args: tuple,
              with_extra: bool) -> Pending:
        """:meth:`call` with ``t`` as it travels: the transport's own part."""
        raise NotImplementedError

    def _reply(self, j: int, u: torch.Tensor, batch: bool = False) -> tuple[tuple, torch.dtype] | None:
        """The shape and dtype of what actor j's forward of ``u`` sends back, where the transport must know it."""
        return None

    def forward(self, j: int, key, u: torch.Tensor, kind: int = U, k: int = 0) -> Pending:
        """Actor j's forward of ``u`` (``kind`` :data:`U`: a training forward, else an evaluation's)."""
        method = "forward" if kind == U else "eval_forward"
        return self.call(j, method, key, u, kind, k, self._reply(j, u))

    def head_forward(self, j: int, key, x: torch.Tensor, state_ref) -> Pending:
        """``--coarse-in-actors``: the batch ``x`` (and the ref of the head's weights) to actor j, ``d_j`` back, with
        the head's buffers as the call's extra."""
        return self.call(j, "head_forward", key, x, U, 1, self._reply(j, x, batch=True), (state_ref,),
                         with_extra=True)

    def values(self, pending: list[Pending]) -> list:
        """Wait for the calls and their sends and receives; what the calls returned (through Ray)."""
        import ray
        got = iter(ray.get([p.ref for p in pending if p.ref is not None]))
        results = [next(got) if p.ref is not None else None for p in pending]
        for p in pending:
            self._finish(p)
        return results

    def _finish(self, p: Pending) -> None:
        """Wait for ``p``'s sends and receives."""
        for w in p.works:
            if not isinstance(w, torch.Tensor):
                w.wait()

    def results(self, steps: list) -> list:
        """What each whole step (:meth:`take_step`) or other call to an actor returned, once done."""
        import ray
        return list(ray.get(steps)) if steps else []

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
