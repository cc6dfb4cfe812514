"""``p2p`` over gloo (CPUs): the calls of :class:`~raypar.engine.transport.p2p.P2pEnd`, and with K = 1 whole steps.

Without loss scaling, an actor's forward, backward and optimizer step of a step whose batch has the last step's shape
are one Ray call (``FineWorker.train_step``), made before the driver has their tensors; the actor receives the next
step's input early (``ActorEnd.post_early``), while it still computes its weight gradients; and its whole steps of one
shape in a row are one Ray call, streamed (``FineWorker.train_steps``), fed by a word a step through the group, until
anything else must call the actor. Gloo only: it matches a send to a receive by tag, where NCCL takes them in order (an
early receive left unmatched would take the next tensor sent), and a gloo receive fails when its peer dies, where the
driver would wait for ever on NCCL with no Ray call to wait on."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .driver_end import Pending
from .p2p import P2pEnd
from .wire import DONE, EARLY_U, NEXT, is_failed_reply


@dataclass
class Streamed:
    """A whole step of an actor's streamed steps (``FineWorker.train_steps``): the call, and the receive of the
    step's compute seconds (``ActorEnd.done``)."""
    ref: object
    done: torch.Tensor
    work: object


class GlooEnd(P2pEnd):
    """:class:`P2pEnd` with whole steps (:meth:`post_step`): made ahead, their inputs sent to the actors' early
    receives, streamed."""
    backend = "gloo"

    def __init__(self, actors: list, device: torch.device, nhwc: bool = False):
        super().__init__(actors, device, nhwc)
        self._steps: dict = {}        # j -> actor j's whole step (post_step: a ref or a Streamed) until take_step
        self._early: dict = {}        # j -> the wire of the input actor j has posted an early receive for
        self._streams: dict = {}      # j -> (ref, u's wire, dL/df's wire, replies) of actor j's train_steps call
        self._words: dict = {}        # j -> (tensor, send) of the last word sent to streaming actor j
        self._sent_early = 0
        self._streamed = 0

    @property
    def sent_early(self) -> int:
        """How many whole steps' inputs went to an actor's early receive."""
        return self._sent_early

    @property
    def streamed(self) -> int:
        """How many whole steps went on an actor's running stream (no Ray call of their own)."""
        return self._streamed

    @property
    def streaming(self) -> int:
        """How many actors are in their streamed steps now."""
        return len(self._streams)

    @property
    def idle(self) -> bool:
        return not self._posted and not self._steps

    def call(self, j: int, method: str, key, t: torch.Tensor | None, kind: int, k: int = 0,
             reply: tuple[tuple, torch.dtype] | None = None, args: tuple = (), with_extra: bool = False) -> Pending:
        if (j, method, key) not in self._posted:
            self.stop_stream(j)              # (a call of its own: the actor must be taking Ray calls)
        return super().call(j, method, key, t, kind, k, reply, args, with_extra)

    def post_step(self, j: int, key) -> bool:
        """K = 1: start actor j's whole step (forward, backward and optimizer step) for tensors of the shapes its last
        forward and backward had: the next step of its running stream (the word of this step), a new stream, or,
        where its input cannot go to the actor's early receive, one Ray call (``FineWorker.train_step``). The
        forward's and the backward's :meth:`call` then only move their tensors, and :meth:`take_step` gives the step.
        False (nothing started) where there were no such calls. The engine must then send both tensors (a
        backward's, zeros where it has none) before it waits on anything queued behind the step."""
        parts = [self._last.get((j, m, 1)) for m in ("forward", "backward")]
        if None in parts:
            return False
        (fw, f_reply), (bw, u_reply) = parts
        early = self._early.get(j) == fw     # the actor's early receive is for this input
        send = replace(fw, tag=EARLY_U) if early else fw
        self._sent_early += early
        parts = (fw, bw, (f_reply, u_reply))
        # the actor posts its next early receive after this step, unless it still has one posted (for another shape);
        # the steps of one stream go on as long as their shapes stay and their inputs go to the early receive (an
        # actor that still has one posted for another shape takes a call of its own)
        streamed = early or j not in self._early
        stream = self._streams.get(j)
        if stream is not None and not (streamed and early and stream[1:] == parts):
            self.stop_stream(j)
            stream = None
        if streamed:
            if stream is None:
                ref = self.actors[j].train_steps.remote(key, send, bw, parts[2])
                self._streams[j] = (ref, *parts)
            else:
                ref = stream[0]
                self._word(j, key[0], ref)
                self._streamed += 1
            done = torch.full((1,), float("nan"), dtype=torch.float64)
            self._steps[j] = Streamed(ref, done, self.group.recv([done], j + 1, DONE))
            self._early[j] = fw
        else:
            ref = self._steps[j] = self.actors[j].train_step.remote(key, send, bw, parts[2])
        self._posted[(j, "forward", key)] = (fw, f_reply, None, ref, send.tag)
        self._posted[(j, "backward", key)] = (bw, u_reply, None, ref, bw.tag)
        self._ahead += 1
        return True

    def take_step(self, j: int):
        """Actor j's whole step of this step (None if it has none): the ref of its call, or of a streamed step a
        :class:`Streamed`; :meth:`results` gives what it returns."""
        return self._steps.pop(j, None)

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
        last = self._words.pop(j, None)
        if last is not None:
            self._wait(last[1], ref)
        t = torch.tensor([word], dtype=torch.int64)
        self._words[j] = (t, self.group.send([t], j + 1, NEXT))

    def stop_stream(self, j: int) -> None:
        """End actor j's streamed steps (``FineWorker.train_steps``), so that it takes Ray calls again: the word -1
        after its last step; raises the actor's error where it failed."""
        if j not in self._streams:
            return
        if any(k[0] == j for k in self._posted):     # (only after a failure: the actor waits in its step)
            raise RuntimeError(f"actor {j}'s streamed steps cannot end in the middle of a step")
        stream = self._streams.pop(j)
        import ray
        self._word(j, -1, stream[0])
        self._wait(self._words.pop(j)[1], stream[0])
        ray.get(stream[0])

    def stop_streams(self) -> None:
        for j in list(self._streams):
            self.stop_stream(j)

    def _finish(self, p: Pending) -> None:
        if p.step is None:
            return super()._finish(p)
        # a part of a whole-step call (a send, then its reply): the reply first, since an actor that failed before its
        # receive sends a failed_reply, and the send to it would wait for gloo's timeout
        send, reply = [w for w in p.works if not isinstance(w, torch.Tensor)]
        self._wait(reply, p.step)
        if is_failed_reply(p.out):
            self._failed(p.step, 60.0)
            raise RuntimeError("a fine actor's step failed, and Ray has not said why within 60 s")
        self._wait(send, p.step)

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
        self._posted.clear()
        self._steps.clear()
        self._early.clear()
        self._streams.clear()
        self._words.clear()
        done, _ = ray.wait([step], timeout=timeout_s)
        if done:
            ray.get(done[0])
