"""The engine: the driver's side of a distributed parareal network.

``pre``, the coarse networks and ``post`` live here (in the driver, the Ray Train worker); each fine segment ``F_j``
lives in a :class:`~raypar.engine.actors.FineWorker` actor. The sweeps are :func:`raypar.network.parareal.parareal` itself — the
engine only supplies a fine map that runs ``F_1..F_N`` remotely: all forwards are launched before any is awaited.

Backward, per step:
  1. ``loss.backward(retain_graph=True)`` through post and the correction sweeps (the coarse sweep and ``pre`` are
     cut off, see 2.). A hook on
     each fine output ``f_j`` ships ``dL/df_j`` to actor j the moment it is known, so the actors start their
     backward while the driver is still busy with the rest of its graph.
  2. Every actor's ``step()`` is queued behind its backward; the driver gathers ``dL/du_j`` (u_j = the fine inputs)
     and runs ``autograd.backward(u, dL/du)`` through the correction sweeps, then the coarse sweep's and ``pre``'s
     backward (once each: the graph is cut after ``pre`` and after each coarse sweep output, so the loss's pass in 1.
     stops there too), then steps its own optimizer — while the actors step theirs. With ``defer_weights`` (the
     default) an actor's backward returns ``dL/du`` before it computes its weight gradients, which it computes in its
     ``step()`` (:mod:`raypar.network.split_backward`), and the driver does not wait for that step: the next step's pre and
     coarse sweep run beside it (the actor takes the next forward only after it); :meth:`PararealEngine.settle`
     collects the steps' results, and ``_quiet`` (settle, then end the actors' streamed steps) comes before any other
     call to the actors. Without it, the driver waits for the actors' steps at the end of each step. (With ``p2p`` on
     CPUs, K = 1 and the last step's batch shape, an actor's forward, backward and step are one Ray call, made when
     the step starts: ``DriverEnd.post_step``; and such steps in a row are one call, streamed, until anything else
     calls the actors.)
  With K > 1 iterations, step 2 repeats from the last iteration to the first: ``dL/df^k`` is complete only after
  the actors' ``dL/du^{k+1}`` has been pushed back through the driver's graph.
  With ``--amp fp16`` the loss is scaled first; each process unscales its own gradients and reports an overflow,
  and only then do all step, or none (:mod:`raypar.engine.precision`): the actors' steps wait for that decision.
Per step and iteration that is 4 N interface tensors (u out, f back, dL/df out, dL/du back) and nothing else; how
they travel (object store, point-to-point gloo/NCCL, CUDA IPC) is :mod:`raypar.engine.transport`'s business.

With ``coarse_in_actors`` (K = 1) each actor computes its own input and coarse term from the batch and returns
``d_j = f_j - z_j`` (:func:`raypar.network.parareal.interval`): the batch goes out, d_j comes back, dL/dd_j goes out, and the
actor's backward returns the gradients of its copies of pre and C_1..C_j (a few KB) instead of dL/du; the driver adds
them to its own and runs only the correction sweep (:meth:`PararealEngine._forward_heads`).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import hybrid
from . import precision
from .actors import FineWorker, gpu_peak_mb, to_cpu
from ..errors import UserError
from ..malloc import keep_freed_memory
from ..network.models import memory_format
from ..network.reference import PararealNet
from .optim import OptimConfig, make_optimizer
from ..network.parareal import correct, parareal
from .transport import EVAL_U, GRAD_F, U, DriverEnd, check_name, from_numpy, to_numpy


@dataclass
class StepStats:
    """Seconds spent in one step (or summed over many)."""
    wall: float = 0.0
    driver: float = 0.0        # pre + coarse sweeps + post + loss + driver backward/optimizer
    fine_max: float = 0.0      # the busiest actor's forward+backward compute
    wait: float = 0.0          # driver blocked on actors
    bytes: int = 0             # interface bytes shipped (both directions)
    steps: int = 0
    local_fine: float = 0.0    # forward of the fine segment run in the driver (first_in_driver)
    skipped: int = 0           # batches skipped for a non-finite loss (skip_nonfinite)
    fine_each: tuple = ()      # each fine process's compute seconds (first, with first_in_driver: F_1's forward only)
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


# the Ray CPUs a fine actor reserves where several engines are up at once but compute one at a time, taking turns
# (raypar bench, raypar tune): a sliver, so that all of them fit
TURN_CPUS = 0.01


@dataclass
class Resources:
    gpus_per_subnet: float = 0.0
    cpus_per_subnet: float = 1.0
    placement: str = "PACK"
    timeout_s: float = 120.0
    # run F_1 in the driver process, overlapped with the actors' F_2..F_N: N processes instead of N + 1, and no
    # transfers for F_1 (the driver is idle while the actors compute anyway)
    first_in_driver: bool = False
    transport: str = "object-store"      # how interface tensors travel: see raypar.engine.transport ("auto" resolves it)
    channels_last: bool = False          # every part's weights and activations in the channels-last layout
    amp: str = "off"                     # mixed precision: off, bf16 or fp16 (raypar.engine.precision)
    # K = 1: each fine actor computes its own input and coarse term from the batch (copies of pre and C_1..C_j, the
    # driver's weights sent every step) and sends back d_j = f_j - z_j: the driver neither runs the coarse sweep
    # before the actors can start nor runs its backward after them (raypar.network.parareal.interval)
    coarse_in_actors: bool = False
    # each actor's backward returns dL/du before it computes its weight gradients, which it computes in its optimizer
    # step, and the driver does not wait for that step: it runs beside the driver's own backward and the next step's
    # pre and coarse sweep (raypar.network.split_backward). The actors' compute seconds then reach the next step's StepStats.
    defer_weights: bool = True
    # the training batch, when known: with transport "auto" on a GPU that the driver and its actors share, it sizes a
    # step's transfers, and small ones go through the object store (raypar.engine.transport.IPC_MIN_BYTES)
    batch: int = 0

    @property
    def device(self) -> torch.device:
        """Where the driver and its actors compute: a GPU where they are given one (and CUDA sees one), else CPUs."""
        return torch.device("cuda" if self.gpus_per_subnet > 0 and torch.cuda.is_available() else "cpu")


@dataclass
class Replica:
    """This engine's place among R data-parallel replicas (see :mod:`raypar.engine.hybrid`)."""
    rank: int = 0
    world: int = 1


class PararealEngine:
    """Train and evaluate a :class:`PararealNet` with its fine segments in Ray actors."""

    def __init__(self, net: PararealNet, optim: OptimConfig, resources: Resources = Resources(), seed: int = 0,
                 skip_nonfinite: bool = False, replica: Replica = Replica()):
        """``skip_nonfinite``: a batch whose loss is NaN/inf changes nothing (no backward, no optimizer step, the
        BatchNorm statistics of its forward undone, in the driver and in every actor) and the step reports
        ``skipped = 1``; otherwise its loss is returned like any other (the caller stops).

        ``replica``: with R > 1 this driver is one of R replicas (Ray Train workers whose torch.distributed group is
        up): its fine actors join one process group per segment with their peers, and every part's gradients are
        averaged over the replicas before each step. Its actors are placed on the driver's node where they fit
        (``PACK``), or spread across nodes (``SPREAD``)."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        keep_freed_memory()            # each step's tensors reuse the last step's pages (raypar.malloc)
        self.n, self.k = net.num_subnets, net.iterations
        use_gpu = resources.gpus_per_subnet > 0
        self.device = resources.device
        self.driver = net.driver_modules()
        self.offset = 1 if resources.first_in_driver else 0      # segments [0, offset) run in the driver
        self.in_actors = resources.coarse_in_actors and self.n > self.offset     # (some actor to run it)
        if self.in_actors and self.k != 1:
            raise UserError(f"--coarse-in-actors needs --iterations 1 (got {self.k}): with K > 1 the later iterations' "
                            f"inputs come from the driver's correction sweep")
        # the actors' copies of pre and C_1..C_j (segment j's interval), made while everything is still on the CPU
        heads = [torch.nn.ModuleDict({"pre": copy.deepcopy(net.pre),
                                      "coarse": copy.deepcopy(net.coarse[:s + 1] if s else torch.nn.ModuleList())})
                 if self.in_actors else None for s in range(self.offset, self.n)]
        if self.offset:
            self.driver["segments"] = torch.nn.ModuleList(net.segments[:self.offset])
        self.cl = resources.channels_last
        self.driver.to(self.device).train()
        if self.cl:
            self.driver.to(memory_format=torch.channels_last)
        self.pre, self.coarse, self.post = self.driver["pre"], self.driver["coarse"], self.driver["post"]
        # --coarse-in-actors: what every step sends the actors (pre's and the coarse networks' state), and where their
        # returned buffers and gradients go (the same tensors all along: loading a state dict copies into them)
        self.head_state = {k: t for k, t in self.driver.state_dict(keep_vars=True).items()
                           if k.startswith(("pre.", "coarse."))}
        self.named_buffers = dict(self.driver.named_buffers())
        self.named_params = dict(self.driver.named_parameters())
        self.local = list(self.driver["segments"]) if self.offset else []
        remote = list(net.segments)[self.offset:]
        self.opt, self.sched = make_optimizer(self.driver.parameters(), optim)
        check_name(resources.transport)                      # before any actor starts
        precision.check_name(resources.amp)
        self.amp = resources.amp
        self.scaler = precision.LossScaler() if self.amp == "fp16" else None
        if resources.transport == "cuda-ipc" and self.device.type != "cuda":
            raise UserError("--transport cuda-ipc needs GPUs (--gpus-per-subnet > 0 on a machine with CUDA)")
        bundle = {"CPU": resources.cpus_per_subnet, **({"GPU": resources.gpus_per_subnet} if use_gpu else {})}
        self.pg = self._placement_group([dict(bundle) for _ in range(max(1, len(remote)))], resources)
        if self.pg is None:
            raise UserError(f"could not get {len(remote)} x {bundle} for the fine sub-networks within "
                            f"{resources.timeout_s:.0f} s; the cluster has {ray.cluster_resources()} in total and "
                            f"{ray.available_resources()} free")
        # Ray Direct Transport (cuda-ipc) must be switched on when the actor class is made
        ipc = resources.transport in ("cuda-ipc", "auto") and self.device.type == "cuda"
        actor_cls = ray.remote(enable_tensor_transport=True)(FineWorker) if ipc else ray.remote(FineWorker)
        self.actors, self.tx = [], None
        self.defer = resources.defer_weights
        self.stepping: list = []              # defer_weights: the actors' optimizer steps still running
        self.late: list[float] = []           # and their compute seconds, once known, for the next step's stats
        try:                                                   # a failure from here on leaves nothing running
            seeds = [seed * 1000 + i + self.offset + 1 + 100_000 * replica.rank for i in range(len(remote))]
            self.actors = [
                actor_cls.options(num_cpus=resources.cpus_per_subnet, num_gpus=resources.gpus_per_subnet,
                                  scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, i))
                         .remote(i + self.offset, seg, optim, seeds[i], use_gpu, self.cl, self.amp, heads[i],
                                 resources.defer_weights)
                for i, seg in enumerate(remote)]
            ray.get([a.pid.remote() for a in self.actors])     # started and ready: startup is not step time
            # (at most: under --amp an interface tensor may be 16-bit or, after a normalization, float32)
            first = next(net.parameters(), None)
            element = first.element_size() if first is not None else 4
            step_bytes = (net.interface_bytes(resources.batch, bool(self.offset), element, self.in_actors)
                          if resources.batch else None)
            self.tx = DriverEnd.connect(resources.transport, self.actors, self.device, nhwc=self.cl,
                                        step_bytes=step_bytes)
            self.replica = replica
            self.group = None                                  # the drivers' group: the default one (gloo) on CPU
            if replica.world > 1:
                import torch.distributed as dist
                if self.device.type == "cuda":
                    self.group = dist.new_group(backend="nccl")
                ends = ray.get([a.endpoint.remote() for a in self.actors]) if replica.rank == 0 else None
                ends = hybrid.broadcast(ends, replica.world)
                ray.get([a.join_replicas.remote(addr, port, replica.world, replica.rank)
                         for a, (addr, port) in zip(self.actors, ends)])
            self.step_count = 0
            self.last_shape = None                              # the last training batch's shape
            self.skip_nonfinite = skip_nonfinite
            if skip_nonfinite:
                ray.get([a.keep_buffers.remote(True) for a in self.actors])
        except BaseException:
            self.shutdown()
            raise

    @staticmethod
    def _placement_group(bundles: list[dict], resources: Resources, first_try_s: float = 15.0):
        """The fine actors' placement group, ready, or None after ``resources.timeout_s``. ``PACK``: all on this
        driver's node if they fit there, else all on one other node (``STRICT_PACK`` aimed at this node), else packed
        as tightly as the cluster allows (``PACK``); ``SPREAD``: across nodes."""
        import ray
        from ray.util.placement_group import placement_group
        tries = [(resources.placement, None, resources.timeout_s)]
        if resources.placement == "PACK":
            here = ray.get_runtime_context().get_node_id()
            tries.insert(0, ("STRICT_PACK", here, min(first_try_s, resources.timeout_s)))
        for strategy, target, wait_s in tries:
            pg = placement_group(bundles, strategy=strategy, _soft_target_node_id=target)
            ready, _ = ray.wait([pg.ready()], timeout=wait_s)
            if ready:
                return pg
            ray.util.remove_placement_group(pg)
        return None

    # ------------------------------------------------------------------------------------------- training
    def _computed(self, local: list) -> None:
        """On a GPU, wait for the driver's own fine work, so that its time is compute seconds, not launch seconds
        (it waits for the actors next anyway)."""
        if local and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int, StepStats]:
        """One optimizer step on a batch; returns (loss, number correct, timings)."""
        st = StepStats(steps=1)
        t_start = time.perf_counter()
        calls: list[_FineCall] = []
        step = self.step_count
        if self.k == 1 and not (self.in_actors or self.skip_nonfinite) and tuple(x.shape) == self.last_shape:
            for j in range(len(self.actors)):       # p2p: each actor takes this step's calls now (see post_step)
                # (fp16: the actors' steps wait for the overflow decision: a call for each part)
                if (self.scaler or not self.tx.post_step(j, (step, 1))) and \
                        self.tx.post_ahead(j, "forward", (step, 1), 1):
                    self.tx.post_ahead(j, "backward", (step, 1), 1)

        bytes0 = self.tx.bytes

        def fine(k: int, inputs: list[torch.Tensor], meanwhile) -> list[torch.Tensor]:
            pending = [self.tx.forward(j, (step, k), u, U, k) for j, u in enumerate(inputs[self.offset:])]
            meanwhile()                                                  # the last coarse net, while the actors work
            t0 = time.perf_counter()
            local = [seg(u) for seg, u in zip(self.local, inputs)]      # F_1 here while the actors work
            self._computed(local)
            st.local_fine += time.perf_counter() - t0
            t0 = time.perf_counter()
            self.settle()        # the last step's (done before these forwards; its error first, not a wait for ever)
            outs = self.tx.gather(pending)
            st.wait += time.perf_counter() - t0
            fs = [o.requires_grad_(True) for o in outs]
            calls.extend(_FineCall(i, (step, k), u, f) for i, (u, f) in enumerate(zip(inputs[self.offset:], fs)))
            return local + fs

        x, y = memory_format(x.to(self.device), self.cl), y.to(self.device)
        saved = ({k: b.clone() for k, b in self.driver.named_buffers()} if self.skip_nonfinite else None)
        cuts: list[tuple[torch.Tensor, torch.Tensor]] = []
        if self.in_actors:
            logits = self._forward_heads(x, step, calls, st)
        else:
            logits = self._forward(x, fine, cuts)
        loss = F.cross_entropy(logits, y)
        if saved is not None and self.all_sum([float(not torch.isfinite(loss))])[0] > 0:
            st.bytes = self.tx.bytes - bytes0
            return self._skip(step, saved, loss, st, t_start)        # every replica skips the same batch

        # each actor's optimizer step (or, fp16, its unscale) is queued right behind its last backward call of the
        # step (iteration 1's; with K > 1, F_N's only call is in iteration K), while the driver is still busy: with
        # defer_weights the actor computes its weight gradients there
        scale = self.scaler.scale if self.scaler else 1.0
        last_k = {}
        for c in calls:
            last_k[c.j] = min(c.key[1], last_k.get(c.j, c.key[1]))
        stepping: dict[int, object] = {}

        def launch(call: _FineCall, grad: torch.Tensor | None):
            # grad None: this output never reached the loss (with K = N, f^1_j for j > 1 does not); the actor only
            # frees its graph, and nothing flows back, exactly as autograd leaves such parameters without a grad
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

        # Backward, iteration by iteration from the last: dL/df^k is complete only once dL/du^{k+1} (which the actors
        # return) has been pushed back through the driver's graph. For the last iteration a hook ships dL/df^K the
        # moment the loss backward produces it, so the actors start while the driver is still busy.
        last = [c for c in calls if c.key[1] == self.k]
        for call in last:
            call.f.register_hook(lambda g, c=call: launch(c, g))
        (loss * scale if self.scaler else loss).backward(retain_graph=True)
        for k in range(self.k, 0, -1):
            these = [c for c in calls if c.key[1] == k]
            for call in these:
                if call.grad_ref is None:
                    launch(call, call.f.grad)
            t0 = time.perf_counter()
            if self.in_actors:                # the gradients of the actors' copies of pre and C_j: theirs are the sums
                self._add_grads(self.tx.values([c.grad_ref for c in these]))
                grads = []
            else:
                grads = self.tx.gather([c.grad_ref for c in these])
            st.wait += time.perf_counter() - t0
            pairs = [(c.u, g) for c, g in zip(these, grads) if g is not None and c.u.requires_grad]
            if pairs:
                torch.autograd.backward([u for u, _ in pairs], [g for _, g in pairs], retain_graph=k > 1)
        self._backward_cuts(cuts)             # every path to them is done: the coarse sweep's and pre's backward, once
        step_refs = [stepping[j] for j in range(len(self.actors))]
        params = list(self.driver.parameters())
        hybrid.average_gradients(params, self.replica.world, self.group)
        if self.scaler:                       # one decision for every process: all step, or none
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
        self.step_count += 1
        self.last_shape = tuple(x.shape)
        if self.defer:                        # they run on beside the next step's start; settle() collects them
            self.stepping = step_refs
            busy, self.late = self.late or [0.0] * len(self.actors), []
        else:
            t0 = time.perf_counter()
            busy = self.tx.results(step_refs)   # the actors' optimizer steps ran beside the driver's backward and step
            st.wait += time.perf_counter() - t0
        st.fine_each = tuple(([st.local_fine] if self.offset else []) + list(busy))
        st.fine_max = max([*busy, st.local_fine])
        st.bytes = self.tx.bytes - bytes0
        st.wall = time.perf_counter() - t_start
        st.driver = st.wall - st.wait
        correct = int((logits.argmax(1) == y).sum())
        return loss.item(), correct, st

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

    def settle(self) -> None:
        """Wait for the actors' optimizer steps that the last :meth:`train_step` left running (``defer_weights``; an
        actor's error surfaces here); keep their compute seconds for the next step's stats. An actor may still be in
        its streamed steps after this (``p2p`` on CPUs), taking no Ray call: :meth:`_quiet` ends those too."""
        if self.stepping:
            busy, self.stepping = self.tx.results(self.stepping), []
            self.late = [a + b for a, b in zip(self.late, busy)] if self.late else list(busy)

    def _quiet(self) -> None:
        """Before a call to the actors other than a training step's: their last steps done, none streaming."""
        self.settle()
        self.tx.stop_streams()

    def end_epoch(self) -> None:
        import ray
        self._quiet()
        self.sched.step()
        ray.get([a.end_epoch.remote() for a in self.actors])

    # ------------------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.settle()
        def fine(k, inputs, meanwhile):
            pending = [self.tx.forward(j, None, u, EVAL_U, k) for j, u in enumerate(inputs[self.offset:])]
            meanwhile()
            local = [seg(u) for seg, u in zip(self.local, inputs)]
            return local + self.tx.gather(pending)

        self.driver.eval()
        try:
            return self._forward(memory_format(x.to(self.device), self.cl), fine)
        finally:
            self.driver.train()

    def _forward(self, x: torch.Tensor, fine, cuts: list | None = None) -> torch.Tensor:
        """The logits (at least float32), the driver's parts under the run's autocast. With ``cuts`` (training) the
        graph is cut after ``pre`` and after each coarse sweep output ``z_j``: every later use sees a leaf with the same
        values, and ``cuts`` gets the (tensor, leaf) pairs in the order they were made. The backward reaches such a
        tensor once from the loss and once more per iteration from the actors' ``dL/du``; its leaf collects all of
        them, and the part before it (``pre``, ``C_j``) runs its backward once, at the end (:meth:`_backward_cuts`)."""
        def cut(t: torch.Tensor) -> torch.Tensor:
            if not t.requires_grad:                           # (an Identity or frozen pre: nothing to cut)
                return t
            leaf = t.detach().requires_grad_(True)
            cuts.append((t, leaf))
            return leaf
        with precision.autocast(self.device.type, self.amp):
            x0 = self.pre(x)
            if cuts is not None:
                x0 = cut(x0)
            out = parareal(x0, self.coarse, fine, self.k, self.n, cut if cuts is not None else None)
            return precision.full(self.post(out[-1]))

    def _forward_heads(self, x: torch.Tensor, step: int, calls: list, st: StepStats) -> torch.Tensor:
        """The training forward with the coarse sweep in the actors (K = 1, :func:`raypar.network.parareal.interval`): the
        batch and the driver's ``pre``/coarse weights go to every actor, ``d_j`` comes back; the driver runs ``F_1``
        (first_in_driver) meanwhile, then the correction sweep (:func:`raypar.network.parareal.correct`) and ``post``. The
        coarse networks' BatchNorm statistics take the values the last actor's copies reached on the coarse sweep
        before the correction sweep updates them again, as in one process."""
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

    def all_sum(self, values: list[float]) -> list[float]:
        """Sums over the replicas (the values themselves when there is one)."""
        return hybrid.all_sum(values, self.replica.world, self.device, self.group)

    def evaluate(self, batches) -> tuple[float, float]:
        """Mean loss and accuracy over an iterable of (x, y) batches (with R replicas: over every replica's
        batches, each replica evaluating its own shard)."""
        total, loss_sum, correct = 0, 0.0, 0
        for x, y in batches:
            logits = self.predict(x)
            y = y.to(logits.device)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            total += len(y)
        loss_sum, correct, total = self.all_sum([loss_sum, correct, total])
        return loss_sum / max(1, total), correct / max(1, total)

    # ------------------------------------------------------------------------------------------- state
    def get_state(self) -> dict:
        """Everything needed to resume: driver weights/optimizer/scheduler/RNG and every actor's, one step."""
        import ray
        self._quiet()
        fine = ray.get([a.get_state.remote() for a in self.actors])
        return to_cpu({"driver": self.driver.state_dict(), "optimizer": self.opt.state_dict(),
                       "scheduler": self.sched.state_dict(), "rng": torch.get_rng_state(),
                       "step": self.step_count, "fine": fine,
                       **({"scaler": self.scaler.state_dict()} if self.scaler else {})})

    def set_state(self, state: dict) -> None:
        import ray
        if len(state["fine"]) != len(self.actors):
            raise UserError(f"checkpoint has {len(state['fine'])} fine actors, this run has {len(self.actors)}")
        try:
            self.driver.load_state_dict(state["driver"])
        except RuntimeError as e:
            raise UserError(f"the checkpoint does not fit this network (other --coarse-* or model settings?); "
                            f"checkpoints of raypar before 2026-11-26 need --coarse-downsample stride: "
                            f"{str(e).splitlines()[0][:200]}") from None
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        self.step_count = int(state["step"])
        if self.scaler and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self._quiet()
        ray.get([a.set_state.remote(s) for a, s in zip(self.actors, state["fine"])])

    def state_dict(self) -> dict:
        """The weights in :class:`PararealNet`'s key layout (``pre.*``, ``coarse.*``, ``post.*``, ``segments.j.*``)."""
        state = self.get_state()
        sd = dict(state["driver"])
        for i, fs in enumerate(state["fine"]):
            sd.update({f"segments.{i + self.offset}.{k}": v for k, v in fs["module"].items()})
        return sd

    def actor_pids(self) -> list[int]:
        import ray
        self._quiet()
        return ray.get([a.pid.remote() for a in self.actors])

    def gpu_peaks_mb(self) -> list[float]:
        """On GPUs: the most GPU memory the driver and then each fine actor have held, in MiB; empty on CPUs."""
        import ray
        if self.device.type != "cuda":
            return []
        self._quiet()
        return [gpu_peak_mb(self.device), *ray.get([a.gpu_peak_mb.remote() for a in self.actors])]

    def placement(self) -> dict:
        """The Ray node ids of this driver and of each of its fine actors."""
        import ray
        self._quiet()
        return {"driver": ray.get_runtime_context().get_node_id(),
                "actors": ray.get([a.node_id.remote() for a in self.actors])}

    def shutdown(self) -> None:
        import ray
        if getattr(self, "tx", None) is not None:
            self.tx.close()
        for a in self.actors:
            ray.kill(a)
        ray.util.remove_placement_group(self.pg)

