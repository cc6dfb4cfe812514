"""One training step of :class:`~raypar.engine.driver.PararealEngine`, phase by phase.

:meth:`TrainingStep.train_step` reads top to bottom: calls made before their tensors (``p2p``), the forward sweeps with
the fine calls, the loss, the correction sweeps' backward with each fine call's backward in its actor, the backward
of the parts before the graph's cuts (``pre`` and the coarse sweep, once each), the optimizer steps, the statistics
(docs/design.md §4).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import hybrid
from . import precision
from ..network.models import memory_format
from ..network.parareal import correct
from .transport import GRAD_F, U, from_numpy, to_numpy


@dataclass
class StepStats:
    """Seconds spent in one step (or summed over many)."""
    wall: float = 0.0
    driver: float = 0.0        # pre + coarse sweeps + post + loss + driver backward/optimizer
    fine_max: float = 0.0      # the busiest actor's forward+backward compute
    wait: float = 0.0          # driver blocked on actors
    bytes: int = 0             # interface bytes shipped (both directions)
    steps: int = 0
    local_fine: float = 0.0    # forward of the fine segment run in the driver (driver_segment)
    skipped: int = 0           # batches skipped for a non-finite loss (skip_nonfinite)
    fine_each: tuple = ()      # each fine process's compute seconds (first, with driver_segment: F_1's forward only)
    overflow: int = 0          # --amp fp16: steps skipped everywhere for an inf/NaN gradient (the loss scale halves)

    @property
    def transfer(self) -> float:
        """Waiting not explained by the slowest actor's compute: transfers and orchestration."""
        return max(0.0, self.wait - self.fine_max)

    def add(self, other: "StepStats") -> None:
        for f in ("wall", "driver", "fine_max", "wait", "bytes", "steps", "local_fine", "skipped", "overflow"):
            setattr(self, f, getattr(self, f) + getattr(other, f))


@dataclass
class _FineCall:
    j: int
    key: tuple
    u: torch.Tensor            # the input, attached to the driver's graph
    f: torch.Tensor            # the output, a leaf on the driver
    grad_ref: object = None


class TrainingStep:
    """The training step of :class:`~raypar.engine.driver.PararealEngine`, which this is mixed into: it uses the
    engine's parts (``driver``, ``pre``, ``coarse``, ``post``, ``local``), its actors and their transport (``tx``), its
    optimizer, loss scaler and step bookkeeping, and :meth:`~raypar.engine.driver.PararealEngine.settle`."""

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int, StepStats]:
        """One optimizer step on a batch; returns (loss, number correct, timings)."""
        st = StepStats(steps=1)
        t_start = time.perf_counter()
        step = self.step_count
        self._post_calls(step, tuple(x.shape))
        bytes0 = self.tx.bytes
        x, y = memory_format(x.to(self.device), self.cl), y.to(self.device)
        saved = ({k: b.clone() for k, b in self.driver.named_buffers()} if self.skip_nonfinite else None)
        calls: list[_FineCall] = []
        cuts: list[tuple[torch.Tensor, torch.Tensor]] = []
        logits = self._forward_sweeps(x, step, calls, cuts, st)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        if saved is not None and self.all_sum([float(not torch.isfinite(loss))])[0] > 0:
            st.bytes = self.tx.bytes - bytes0
            return self._skip(step, saved, loss, st, t_start)        # every replica skips the same batch
        scale = self.scaler.scale if self.scaler else 1.0
        stepping = self._correction_backward(calls, loss, scale, st)
        self._backward_cuts(cuts)             # every path to them is done: the coarse sweep's and pre's backward, once
        step_refs = self._optimizer_step([stepping[j] for j in range(len(self.actors))], scale, st)
        self.step_count += 1
        self.last_shape = tuple(x.shape)
        self._step_stats(st, self._actors_busy(step_refs, st), bytes0, t_start)
        return loss.item(), int((logits.argmax(1) == y).sum()), st

    def _post_calls(self, step: int, shape: tuple) -> None:
        """K = 1 and a batch of the last step's shape: each actor takes this step's calls now, before their tensors
        exist (``p2p``: a whole step, or with ``--amp fp16``, whose actors' steps wait for the overflow decision, a
        call made ahead for each part; other transports start nothing)."""
        if self.k == 1 and not (self.coarse_in_actors or self.skip_nonfinite) and shape == self.last_shape:
            for j in range(len(self.actors)):
                if (self.scaler or not self.tx.post_step(j, (step, 1))) and \
                        self.tx.post_ahead(j, "forward", (step, 1), 1):
                    self.tx.post_ahead(j, "backward", (step, 1), 1)

    def _forward_sweeps(self, x: torch.Tensor, step: int, calls: list, cuts: list, st: StepStats) -> torch.Tensor:
        """The training forward: the logits; each fine call into ``calls``, the graph's cuts into ``cuts``."""
        if self.coarse_in_actors:
            return self._forward_heads(x, step, calls, st)
        return self._forward(x, self._fine_calls(step, calls, st), cuts)

    def _fine_calls(self, step: int, calls: list, st: StepStats):
        """The training forward's fine map for :func:`raypar.network.parareal.parareal`: launch every actor's forward,
        run what the driver has meanwhile, then gather; each output becomes a leaf, recorded in ``calls``."""
        def fine(k: int, first: int, inputs: list[torch.Tensor], meanwhile) -> list[torch.Tensor]:
            here = max(0, self.offset - first)          # F_1 in the driver: only while interval 1 still runs
            remote = inputs[here:]
            pending = [self.tx.forward(first + here + i - self.offset, (step, k), u, U, k) for i, u in enumerate(remote)]
            meanwhile()                                                  # the last coarse net, while the actors work
            t0 = time.perf_counter()
            local = [seg(u) for seg, u in zip(self.local[first:], inputs[:here])]   # F_1 here while the actors work
            self._computed(local)
            st.local_fine += time.perf_counter() - t0
            t0 = time.perf_counter()
            self.settle()        # the last step's (done before these forwards; its error first, not a wait for ever)
            outs = self.tx.gather(pending)
            st.wait += time.perf_counter() - t0
            fs = [o.requires_grad_(True) for o in outs]
            calls.extend(_FineCall(first + here + i - self.offset, (step, k), u, f)
                         for i, (u, f) in enumerate(zip(remote, fs)))
            return local + fs
        return fine

    def _correction_backward(self, calls: list, loss: torch.Tensor, scale: float, st: StepStats) -> dict:
        """The loss's backward, then iteration by iteration from the last each fine call's backward in its actor and
        the driver's backward from the ``dL/du`` it returns (``dL/df^k`` is complete only once ``dL/du^{k+1}`` has
        been pushed back through the driver's graph). A hook ships ``dL/df^K`` the moment the loss's backward produces
        it, so the actors start while the driver is still busy. Returns each actor's step: its whole step, or its
        optimizer step (fp16: its unscale) queued right behind its last backward call."""
        last_k: dict[int, int] = {}
        for c in calls:
            last_k[c.j] = min(c.key[1], last_k.get(c.j, c.key[1]))
        stepping: dict[int, object] = {}
        for call in [c for c in calls if c.key[1] == self.k]:
            call.f.register_hook(lambda g, c=call: self._fine_backward(c, g, last_k, scale, stepping))
        (loss * scale if self.scaler else loss).backward(retain_graph=True)
        for k in range(self.k, 0, -1):
            these = [c for c in calls if c.key[1] == k]
            for call in these:
                if call.grad_ref is None:
                    self._fine_backward(call, call.f.grad, last_k, scale, stepping)
            t0 = time.perf_counter()
            if self.coarse_in_actors:         # the gradients of the actors' copies of pre and C_j: theirs are the sums
                self._add_grads(self.tx.values([c.grad_ref for c in these]))
                grads = []
            else:
                grads = self.tx.gather([c.grad_ref for c in these])
            st.wait += time.perf_counter() - t0
            pairs = [(c.u, g) for c, g in zip(these, grads) if g is not None and c.u.requires_grad]
            if pairs:
                torch.autograd.backward([u for u, _ in pairs], [g for _, g in pairs], retain_graph=k > 1)
        return stepping

    def _fine_backward(self, call: _FineCall, grad: torch.Tensor | None, last_k: dict, scale: float,
                       stepping: dict) -> None:
        """Ship ``dL/df`` of ``call`` to its actor; behind its last backward call of the step (iteration 1's; with
        K > 1, F_N's only call is in iteration K) queue its optimizer step (fp16: its unscale), into ``stepping``.
        ``grad`` None: this output never reached the loss (with K = N, f^1_j for j > 1 does not); the actor only frees
        its graph, and nothing flows back, exactly as autograd leaves such parameters without a grad."""
        reply = (tuple(call.u.shape), call.u.dtype) if call.u is not None else None    # heads: no tensor back
        whole = self.tx.take_step(call.j)        # p2p: the actor's whole step is one call, waiting for grad
        if whole is not None and grad is None:
            grad = torch.zeros_like(call.f)
        call.grad_ref = self.tx.call(call.j, "backward", call.key, grad, GRAD_F, call.key[1], reply)
        if whole is not None:
            stepping[call.j] = whole
        elif call.key[1] == last_k[call.j]:
            a = self.actors[call.j]
            stepping[call.j] = a.unscale.remote(1 / scale) if self.scaler else a.step.remote()

    def _optimizer_step(self, step_refs: list, scale: float, st: StepStats) -> list:
        """The driver's optimizer step, its gradients averaged over the replicas; with ``--amp fp16`` first one
        decision for every process (all step, or none), then the actors' steps. Returns the actors' steps."""
        params = list(self.driver.parameters())
        hybrid.average_gradients(params, self.replica.world, self.group)
        if self.scaler:
            found = precision.unscale(params, 1 / scale)
            t0 = time.perf_counter()
            flags = self.tx.results(step_refs)  # every actor's answer (an actor's error surfaces here)
            found = self.all_sum([float(found or any(flags))])[0] > 0
            st.wait += time.perf_counter() - t0
            step_refs = [a.step.remote(found) for a in self.actors]
            self.scaler.update(found)
            st.overflow = int(found)
        if not st.overflow:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return step_refs

    def _actors_busy(self, step_refs: list, st: StepStats) -> list[float]:
        """The actors' compute seconds for this step's stats. With ``defer_weights`` their steps run on beside the next
        step's start (:meth:`settle` collects them) and the seconds known so far are reported; else wait for them."""
        if self.defer:
            self.stepping = step_refs
            busy, self.late = self.late or [0.0] * len(self.actors), []
            return busy
        t0 = time.perf_counter()
        busy = self.tx.results(step_refs)   # the actors' optimizer steps ran beside the driver's backward and step
        st.wait += time.perf_counter() - t0
        return busy

    def _step_stats(self, st: StepStats, busy: list[float], bytes0: int, t_start: float) -> None:
        st.fine_each = tuple(([st.local_fine] if self.offset else []) + list(busy))
        st.fine_max = max([*busy, st.local_fine])
        st.bytes = self.tx.bytes - bytes0
        st.wall = time.perf_counter() - t_start
        st.driver = st.wall - st.wait

    def _skip(self, step: int, saved: dict, loss: torch.Tensor, st: StepStats, t_start: float):
        """Undo the forward of a batch with a non-finite loss: every actor frees the graphs it keeps for this step
        and restores its buffers, the driver restores its own; no backward, no optimizer step anywhere. The step
        counter still advances (it only names the kept graphs): driver and actors stay in lockstep."""
        import ray
        t0 = time.perf_counter()
        self._quiet()
        busy = ray.get([a.discard.remote(step) for a in self.actors])
        st.wait += time.perf_counter() - t0
        with torch.no_grad():
            for k, b in self.driver.named_buffers():
                b.copy_(saved[k])
        self.opt.zero_grad(set_to_none=True)
        self.step_count += 1
        st.skipped = 1
        st.fine_max = max([*busy, st.local_fine])
        st.wall = time.perf_counter() - t_start
        st.driver = st.wall - st.wait
        return loss.item(), 0, st

    def _forward_heads(self, x: torch.Tensor, step: int, calls: list, st: StepStats) -> torch.Tensor:
        """The training forward with the coarse sweep in the actors (K = 1, :func:`raypar.network.parareal.interval`):
        the batch and the driver's ``pre``/coarse weights go to every actor, ``d_j`` comes back; the driver runs
        ``F_1`` (driver_segment) meanwhile, then the correction sweep (:func:`raypar.network.parareal.correct`) and
        ``post``. The coarse networks' BatchNorm statistics take the values the last actor's copies reached on the
        coarse sweep before the correction sweep updates them again, as in one process."""
        import ray
        state = ray.put({k: to_numpy(t) for k, t in self.head_state.items()})
        pending = [self.tx.head_forward(j, (step, 1), x, state) for j in range(len(self.actors))]
        with precision.autocast(self.device.type, self.amp):
            t0 = time.perf_counter()
            local = [seg(self.pre(x)) for seg in self.local]               # F_1 here while the actors work
            self._computed(local)
            st.local_fine += time.perf_counter() - t0
            t0 = time.perf_counter()
            d = self.tx.gather(pending)
            self.settle()
            st.wait += time.perf_counter() - t0
            with torch.no_grad():
                for k, b in pending[-1].extra.items():
                    if not (self.local and k.startswith("pre.")):   # (pre ran here too, on the same batch)
                        self.named_buffers[k].copy_(from_numpy(b, self.device))
            d = [t.requires_grad_(True) for t in d]
            calls.extend(_FineCall(j, (step, 1), None, t) for j, t in enumerate(d))
            return precision.full(self.post(correct(self.coarse, local + d)[-1]))

    def _add_grads(self, grads: list[dict]) -> None:
        for each in grads:
            for k, g in each.items():
                g, p = from_numpy(g, self.device), self.named_params[k]
                p.grad = g.clone() if p.grad is None else p.grad.add_(g)

    @staticmethod
    def _backward_cuts(cuts: list) -> None:
        """The parts before the cuts, last first, each once, with everything its leaf collected: ``z_j = C_j(z_{j-1})``
        adds to ``z_{j-1}``'s leaf, so that one is complete when its turn comes."""
        for t, leaf in reversed(cuts):
            if leaf.grad is not None:
                t.backward(leaf.grad)
