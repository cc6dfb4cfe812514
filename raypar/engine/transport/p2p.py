"""``p2p`` over NCCL (GPUs): point-to-point ``send``/``recv`` in a process group of the driver (rank 0) and its
actors (ranks 1..), device to device; only a small :class:`Wire` (shape, dtype, tags) goes through Ray. Each part of a
step (forward, backward) is a Ray call of its own. NCCL needs each process on its own GPU."""
from __future__ import annotations

import torch

from .driver_end import DriverEnd, Pending
from .wire import Wire, make_group, tag, wire_shape


class P2pEnd(DriverEnd):
    """A Ray call per part, each with a :class:`Wire`, its tensor sent and its reply received over the group. With
    K = 1, a call whose tensor will have the shape the last such call had can be made before the tensor exists
    (:meth:`post_ahead`): the actor takes it while the driver still computes the tensor and waits in its receive, so
    Ray's dispatch is off the critical path."""
    name = "p2p"
    backend = "nccl"

    def __init__(self, actors: list, device: torch.device, nhwc: bool = False):
        super().__init__(actors, device, nhwc)
        self.group = None
        self._out_shapes: dict = {}   # (j, input shape, dtype, batch) -> the (shape, dtype) actor j's forward returns
        self._last: dict = {}         # (j, method, k) -> the (wire, reply) of the last such call
        # (j, method, key) -> (wire, reply, ref, whole-step call, tag to send with) of the calls made ahead of their
        # tensor: ref None for a part of a whole-step call, whole-step call None for a call of its own
        self._posted: dict = {}

    @property
    def idle(self) -> bool:
        return not self._posted

    def join(self) -> None:
        """Make the group: the driver is rank 0, actor j rank j + 1."""
        if not self.actors:
            return
        import ray

        from ..hybrid import listen
        listener = listen()
        addr, port = listener.getsockname()[:2]
        world = len(self.actors) + 1
        joins = [a.join_transport.remote(self.name, addr, port, i + 1, world) for i, a in enumerate(self.actors)]
        self.group = make_group(self.backend, addr, port, 0, world, listener=listener)
        ray.get(joins)

    def close(self) -> None:
        """Shut the group down (its communicators and store), before the actors go."""
        if self.group is not None:
            try:
                self.group.shutdown()
            except Exception:  # noqa: BLE001 - best effort: the actors are killed next anyway
                pass
            self.group = None

    def _reply(self, j: int, u: torch.Tensor, batch: bool = False) -> tuple[tuple, torch.dtype]:
        key = (j, tuple(u.shape), u.dtype, batch)
        if key not in self._out_shapes:
            import ray
            self.stop_stream(j)
            self._out_shapes[key] = ray.get(self.actors[j].output_shape.remote(tuple(u.shape), u.dtype, batch))
        return self._out_shapes[key]

    def post_ahead(self, j: int, method: str, key, k: int) -> bool:
        """Start ``actors[j].method(key, <tensor>)`` now, for a tensor of the shape the last such call had, which
        :meth:`call` sends later. False (nothing started) where there is no such last call. The caller must then make
        that call before it waits on anything queued behind it."""
        last = self._last.get((j, method, k))
        if last is None:
            return False
        self.stop_stream(j)
        self._posted[(j, method, key)] = (*last, getattr(self.actors[j], method).remote(key, last[0]), None,
                                          last[0].tag)
        self._ahead += 1
        return True

    def _send(self, j: int, method: str, key, t: torch.Tensor, kind: int, k: int, reply, args: tuple,
              with_extra: bool) -> Pending:
        wire = Wire(tuple(t.shape), t.dtype, tag(kind, k), tag(kind + 1, k))
        self._last[(j, method, k)] = (wire, reply)
        posted = self._posted.pop((j, method, key), None)
        if posted is None:
            ref, step, send_tag = getattr(self.actors[j], method).remote(key, wire, *args), None, wire.tag
        elif posted[:2] == (wire, reply):
            ref, step, send_tag = posted[2:]
        else:                        # the actor waits for a tensor of another shape: a bug, never a user's error
            raise RuntimeError(f"actor {j}'s {method} {key} was posted for {posted[:2]}, not {(wire, reply)}")
        works = [self.group.send([t], j + 1, send_tag)]
        out = None
        if reply is not None:
            out = torch.empty(wire_shape(reply[0], self.nhwc), dtype=reply[1], device=self.device)
            works.append(self.group.recv([out], j + 1, wire.reply_tag))
        return Pending(ref, out, (*works, t), with_extra=with_extra, step=step)   # t alive until it is sent
