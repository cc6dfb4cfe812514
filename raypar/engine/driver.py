"""The engine: the driver's side of a distributed parareal network.

``pre``, the coarse networks and ``post`` live here (in the driver, the Ray Train worker); each fine segment ``F_j``
lives in a :class:`~raypar.engine.actors.FineWorker` actor. The sweeps are :func:`raypar.network.parareal.parareal`
itself: the engine only supplies a fine map that runs ``F_1..F_N`` remotely, all forwards launched before any is
awaited. :meth:`PararealEngine.train_step` runs a step's phases in order (docs/design.md §4): the forward sweeps with
the fine calls, the loss, the correction sweeps' backward (``dL/df_j`` shipped to actor j the moment it is known,
iteration by iteration from the last), the backward of ``pre`` and the coarse sweep once each (the graph is cut after
them), the optimizer steps. With ``defer_weights`` the actors' optimizer steps, which compute their weight gradients,
run on beside the next step's start: :meth:`PararealEngine.settle` collects them, and ``_quiet`` (settle, then end the
actors' streamed steps) comes before any other call to the actors. With ``coarse_in_actors`` (K = 1, docs/design.md
§2.5) each actor computes its own input and coarse term from the batch and returns ``d_j = f_j - z_j``
(:meth:`PararealEngine._forward_heads`). How the interface tensors travel is :mod:`raypar.engine.transport`'s business.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import hybrid
from . import precision
from .actors import gpu_peak_mb, to_cpu
from ..errors import UserError
from ..malloc import keep_freed_memory
from ..network.models import memory_format
from ..network.reference import PararealNet
from .optim import make_optimizer, restore_scheduler
from .placement import TURN_CPUS, FineActors, Resources
from .specs import OptimConfig
from ..network.parareal import parareal
from .step import StepStats, TrainingStep
from .transport import EVAL_U, connect

__all__ = ["TURN_CPUS", "FineActors", "OptimConfig", "PararealEngine", "Replica", "Resources", "StepStats"]


@dataclass
class Replica:
    """This engine's place among R data-parallel replicas (see :mod:`raypar.engine.hybrid`)."""
    rank: int = 0
    world: int = 1


class PararealEngine(TrainingStep):
    """Train and evaluate a :class:`PararealNet` with its fine segments in Ray actors."""

    def __init__(self, net: PararealNet, optim: OptimConfig, resources: Resources = Resources(), seed: int = 0,
                 skip_nonfinite: bool = False, replica: Replica = Replica(), actors: FineActors | None = None,
                 label_smoothing: float = 0.0):
        """``label_smoothing``: of the training loss (``torch.nn.functional.cross_entropy``'s); :meth:`evaluate`'s loss
        is unsmoothed.

        ``actors``: the fine actors, started before the network was built (:class:`FineActors`, as many as the
        network has remote segments, with the same ``resources``); the engine owns them from here on (its
        :meth:`shutdown` stops them, and so does a failure here). None: the engine starts its own.

        ``skip_nonfinite``: a batch whose loss is NaN/inf changes nothing (no backward, no optimizer step, the
        BatchNorm statistics of its forward undone, in the driver and in every actor) and the step reports
        ``skipped = 1``; otherwise its loss is returned like any other (the caller stops).

        ``replica``: with R > 1 this driver is one of R replicas (Ray Train workers whose torch.distributed group is
        up): its fine actors join one process group per segment with their peers, and every part's gradients are
        averaged over the replicas before each step. Its actors are placed on the driver's node where they fit
        (``PACK``), or spread across nodes (``SPREAD``)."""
        try:
            self.label_smoothing = label_smoothing
            self._setup(net, optim, resources, seed, skip_nonfinite, replica, actors)
        except BaseException:
            if actors is not None:
                actors.shutdown()
            raise

    def _setup(self, net: PararealNet, optim: OptimConfig, resources: Resources, seed: int, skip_nonfinite: bool,
               replica: Replica, actors: FineActors | None) -> None:
        import ray

        keep_freed_memory()            # each step's tensors reuse the last step's pages (raypar.malloc)
        self.n, self.k = net.num_subnets, net.iterations
        use_gpu = resources.gpus_per_subnet > 0
        self.device = resources.device
        self.driver = net.driver_modules()
        self.offset = 1 if resources.driver_segment else 0      # segments [0, offset) run in the driver
        self.coarse_in_actors = bool(resources.coarse_in_actors) and self.n > self.offset     # (some actor to run it)
        if self.coarse_in_actors and self.k != 1:
            raise UserError(f"--coarse-in-actors needs --iterations 1 (got {self.k}): with K > 1 the later iterations' "
                            f"inputs come from the driver's correction sweep")
        # the actors' copies of pre and C_1..C_j (segment j's interval), made while everything is still on the CPU
        heads = [torch.nn.ModuleDict({"pre": copy.deepcopy(net.pre),
                                      "coarse": copy.deepcopy(net.coarse[:s + 1] if s else torch.nn.ModuleList())})
                 if self.coarse_in_actors else None for s in range(self.offset, self.n)]
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
        self.optim = optim
        self.opt, self.sched = make_optimizer(self.driver.parameters(), optim)
        self.amp = resources.amp
        self.scaler = precision.LossScaler() if self.amp == "fp16" else None
        self.actors, self.tx, self.pg = [], None, None
        self.defer = resources.defer_weights
        self.stepping: list = []              # defer_weights: the actors' optimizer steps still running
        self.late: list[float] = []           # and their compute seconds, once known, for the next step's stats
        try:                                                   # a failure from here on leaves nothing running
            standby = actors if actors is not None else FineActors(len(remote), resources)
            if len(standby.actors) != len(remote):
                raise ValueError(f"{len(standby.actors)} fine actors were started for {len(remote)} segments")
            self.actors, self.pg = standby.actors, standby.pg
            seeds = [seed * 1000 + i + self.offset + 1 + 100_000 * replica.rank for i in range(len(remote))]
            ray.get([a.configure.remote(i + self.offset, seg, optim, seeds[i], use_gpu, self.cl, self.amp, heads[i],
                                        resources.defer_weights, net.iterations)
                     for i, (a, seg) in enumerate(zip(self.actors, remote))])     # ready: startup is not step time
            # (at most: under --amp an interface tensor may be 16-bit or, after a normalization, float32)
            first = next(net.parameters(), None)
            element = first.element_size() if first is not None else 4
            step_bytes = (net.interface_bytes(resources.batch, bool(self.offset), element, self.coarse_in_actors)
                          if resources.batch else None)
            self.tx = connect(resources.transport, self.actors, self.device, nhwc=self.cl, step_bytes=step_bytes)
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

    # ------------------------------------------------------------------------------------------- training
    def _computed(self, local: list) -> None:
        """On a GPU, wait for the driver's own fine work, so that its time is compute seconds, not launch seconds
        (it waits for the actors next anyway)."""
        if local and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

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
        def fine(k, first, inputs, meanwhile):
            here = max(0, self.offset - first)
            pending = [self.tx.forward(first + here + i - self.offset, None, u, EVAL_U, k)
                       for i, u in enumerate(inputs[here:])]
            meanwhile()
            local = [seg(u) for seg, u in zip(self.local[first:], inputs[:here])]
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
            raise UserError(f"the checkpoint does not fit this network (other --coarse-* or model settings?); a "
                            f"checkpoint whose coarse networks downsample by a strided convolution needs "
                            f"--coarse-downsample stride: {str(e).splitlines()[0][:200]}") from None
        self.opt.load_state_dict(state["optimizer"])
        self.sched = restore_scheduler(self.opt, self.optim, state["scheduler"])
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
        if self.pg is not None:
            ray.util.remove_placement_group(self.pg)

