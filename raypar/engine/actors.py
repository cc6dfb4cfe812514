"""The fine actor: one fine segment ``F_j`` in its own process (a Ray actor, on its own GPU where there is one).

It owns its segment, optimizer, LR scheduler and RNG. ``forward`` keeps the autograd graph of a step under a key,
``backward`` runs it with the gradient shipped by the driver, returns the gradient w.r.t. the input and frees the
graph, ``step`` applies the optimizer; with ``--amp`` its forwards run under autocast
(:mod:`raypar.engine.precision`). Tensors arrive and leave by the run's transport (:mod:`raypar.engine.transport`:
numpy arrays through Ray's object store, point-to-point in a gloo/NCCL group, or CUDA IPC); autograd graphs never
cross processes.
"""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from ..malloc import keep_freed_memory

if TYPE_CHECKING:
    from torch import nn

    from .specs import OptimConfig


def _load() -> None:
    """Import what the worker computes with (torch, the engine's modules) into this module's namespace.

    The class is importable without torch, so that a driver can ask for its actors before it imports torch itself
    (:class:`raypar.engine.placement.FineActors`); each actor's process imports it all as it starts."""
    global torch, hybrid, precision, split_backward, memory_format, make_optimizer, restore_scheduler
    global interval, running_stats_frozen, ActorEnd, from_numpy, to_numpy
    import torch

    from . import hybrid, precision
    from ..network import split_backward
    from ..network.models import memory_format
    from ..network.parareal import interval, running_stats_frozen
    from .optim import make_optimizer, restore_scheduler
    from .transport import ActorEnd, from_numpy, to_numpy


def to_cpu(obj):
    """A copy of a (nested) state dict with every tensor on the CPU, for checkpoints and transfers."""
    import torch
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def gpu_peak_mb(device: torch.device) -> float | None:
    """The most GPU memory PyTorch's allocator has handed out in this process on ``device``, in MiB (None on CPUs)."""
    import torch
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


class FineWorker:
    """The segment's state and its four operations; :data:`FineActor` is this class as a Ray actor."""

    def __init__(self, index: int | None = None, module: nn.Module | None = None, optim: OptimConfig | None = None,
                 seed: int = 0, use_gpu: bool = False, channels_last: bool = False, amp: str = "off",
                 head: nn.ModuleDict | None = None, defer_weights: bool = False, iterations: int = 1):
        """A worker for segment ``index``, ``module``; with no arguments an idle one that :meth:`configure` gives its
        segment later (an actor started before the split is known: its process is up when the network is)."""
        _load()
        keep_freed_memory()            # each step's tensors reuse the last step's pages (raypar.malloc)
        if module is not None:
            self.configure(index, module, optim, seed, use_gpu, channels_last, amp, head, defer_weights, iterations)

    def configure(self, index: int, module: nn.Module, optim: OptimConfig, seed: int, use_gpu: bool = False,
                  channels_last: bool = False, amp: str = "off", head: nn.ModuleDict | None = None,
                  defer_weights: bool = False, iterations: int = 1) -> int:
        """Take segment ``index``, ``module``, and its optimizer; returns this process's pid.

        ``iterations``: the network's K; only this segment's last forward of a step (iteration min(j, K) for interval
        j) moves its BatchNorm statistics (:func:`raypar.network.parareal.running_stats_frozen`). ``head``
        (``--coarse-in-actors``): copies of ``pre`` and ``C_1..C_j`` (keys ``pre``, ``coarse``), with which
        :meth:`head_forward` computes this interval's input and coarse term from the batch; the driver owns their
        weights and sends them with every step. ``defer_weights``: :meth:`backward` returns ``dL/du`` before the
        weight gradients are computed; :meth:`step` (or :meth:`unscale`) computes them first
        (:mod:`raypar.network.split_backward`)."""
        self.index = index
        self.iterations = iterations
        self.amp = amp
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        torch.manual_seed(seed)
        self.cl = channels_last
        self.module = module.to(self.device).train()
        if channels_last:
            self.module.to(memory_format=torch.channels_last)
        self.optim = optim
        self.opt, self.sched = make_optimizer(self.module.parameters(), optim)
        self.head = head.to(self.device).train() if head is not None else None
        if self.head is not None and channels_last:
            self.head.to(memory_format=torch.channels_last)
        # where head_forward loads the driver's weights and buffers into (the same tensors every step)
        self.head_state = self.head.state_dict(keep_vars=True) if self.head is not None else {}
        self.graphs: dict = {}
        self.defer_weights = defer_weights
        self.weights_due: list[split_backward.WeightGrads] = []   # deferred halves of this step's backward passes
        self.world = 1                                   # replicas of this segment (join_replicas)
        self.busy = 0.0                                  # compute seconds since the last step()
        self.saved_buffers: dict | None = None           # keep_buffers: the buffers before this step's forward
        self.saved_step = None
        self.end = ActorEnd(self.device, channels_last)  # how tensors arrive and leave (join_transport)
        return os.getpid()

    def _run(self, u: torch.Tensor) -> torch.Tensor:
        with precision.autocast(self.device.type, self.amp):
            return self.module(memory_format(u, self.cl))

    def _run_interval(self, batch: torch.Tensor) -> torch.Tensor:
        """``d_j`` from a batch, through the head's copies of pre and C_1..C_j
        (:func:`raypar.network.parareal.interval`)."""
        with precision.autocast(self.device.type, self.amp):
            return interval(memory_format(batch, self.cl), self.head["pre"], self.head["coarse"], self.module,
                            self.index + 1)

    def _keep_buffers(self, step) -> None:
        if self.saved_buffers is not None and self.saved_step != step:     # the first forward of step ``step``
            self.saved_buffers = {k: b.clone() for k, b in self.module.named_buffers()}
            self.saved_step = step

    def _done(self, t0: float) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)          # compute seconds, not launch seconds
        self.busy += time.perf_counter() - t0

    def forward(self, key, x):
        u = self.end.receive(x).requires_grad_(True)
        t0 = time.perf_counter()
        self._keep_buffers(key[0])
        with running_stats_frozen([self.module], key[1] < min(self.index + 1, self.iterations)):
            out = self._run(u)
        self.graphs[key] = (u, out)
        self._done(t0)
        return self.end.reply(out, x)

    def head_forward(self, key, x, state: dict):
        """``--coarse-in-actors``: load the driver's ``pre`` and coarse weights (``state``, numpy arrays by state-dict
        key), compute ``d_j`` from the batch ``x`` (:func:`raypar.network.parareal.interval`) and send it back, with the
        head's buffers (BatchNorm statistics) after this forward."""
        batch = self.end.receive(x)
        t0 = time.perf_counter()
        with torch.no_grad():
            for k, t in self.head_state.items():
                t.copy_(from_numpy(state[k], self.device))
        self._keep_buffers(key[0])
        out = self._run_interval(batch)
        self.graphs[key] = (None, out)
        self._done(t0)
        return self.end.reply(out, x), {k: to_numpy(b) for k, b in self.head.named_buffers()}

    def backward(self, key, grad):
        """Backward through the graph kept under ``key``; ``grad`` None only frees that graph. Returns the gradient
        w.r.t. the input, or for a :meth:`head_forward` graph the head's parameter gradients (numpy, by key)."""
        u, out = self.graphs.pop(key)
        if grad is None:
            return None
        g = self.end.receive(grad)
        t0 = time.perf_counter()
        if self.defer_weights and u is not None:      # dL/du now, the weight gradients in step()
            du, due = split_backward.input_grad(out, g, u, list(self.module.parameters()))
            self.weights_due.append(due)
        else:
            out.backward(g)
            du = u.grad if u is not None else None
        self._done(t0)
        if u is None:
            grads = {k: to_numpy(p.grad) for k, p in self.head.named_parameters() if p.grad is not None}
            self.head.zero_grad(set_to_none=True)
            return grads
        return self.end.reply(du, grad)

    def train_step(self, key, u, grad, replies: tuple, streamed: bool = False) -> float:
        """``p2p`` on CPUs, K = 1: the whole step in one call, made before its tensors exist
        (``GlooEnd.post_step``): receive ``u``, send ``f``, receive ``dL/df``, send ``dL/du``, post the receive of the
        next step's input (``ActorEnd.post_early``), then :meth:`step`, whose result it returns. One Ray call a step
        instead of three. ``replies``: the shapes and dtypes of ``f`` and ``dL/du``; ``streamed``
        (:meth:`train_steps`): post the receive of the driver's word after this step too. A failure before both are
        sent sends a ``failed_reply`` in place of the next one (the driver, waiting in its receive, then asks Ray for
        this call's error) and raises."""
        sent = 0
        try:
            self.forward(key, u)
            sent = 1
            self.backward(key, grad)
        except BaseException:
            self.end.unblock((u, grad)[sent], replies[sent])
            raise
        self.end.post_early(u)
        if streamed:
            self.end.post_next()
        return self.step()

    def train_steps(self, key, u, grad, replies: tuple) -> int:
        """``p2p`` on CPUs, K = 1: whole steps (:meth:`train_step`) one after another in one Ray call, for as long as
        the driver sends them (``GlooEnd.post_step``): no Ray call a step at all. After each step's optimizer step
        this actor sends the step's compute seconds (``ActorEnd.done``, NaN after a failure, before raising it) and
        waits for the driver's word (``ActorEnd.next_step``): the next step's number, whose input comes to the early
        receive, or -1 to return. Returns the number of steps."""
        step, n = key[0], 0
        while step >= 0:
            try:
                busy = self.train_step((step, 1), u, grad, replies, streamed=True)
            except BaseException:
                self.end.done(float("nan"))
                raise
            self.end.done(busy)
            n += 1
            step = self.end.next_step()
            u = self.end.early_wire(u)
        return n

    def unscale(self, inv_scale: float) -> bool:
        """``--amp fp16``: divide the gradients by the loss scale; True when any is inf or NaN (the driver sums the
        answers of every process and replica, then tells all of them whether to skip the step)."""
        self._weight_grads()
        return precision.unscale(self.module.parameters(), inv_scale)

    def step(self, skip: bool = False) -> float:
        """Apply the optimizer (to the gradients averaged over the replicas, with R > 1) unless ``skip`` (a loss
        scale overflow); return the compute seconds spent in forward/backward since the last step."""
        self._weight_grads()
        hybrid.average_gradients(list(self.module.parameters()), self.world)
        if not skip:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.graphs.clear()
        busy, self.busy = self.busy, 0.0
        return busy

    def _weight_grads(self) -> None:
        """The deferred halves of this step's backward passes (``defer_weights``), into the parameters' ``.grad``."""
        if self.weights_due:
            t0 = time.perf_counter()
            for due in self.weights_due:
                due.run()
            self.weights_due.clear()
            self._done(t0)

    def keep_buffers(self, on: bool = True) -> None:
        """Keep a copy of the buffers (BatchNorm statistics) from before each step's first forward, for
        :meth:`discard`."""
        self.saved_buffers = {} if on else None
        self.saved_step = None

    def discard(self, step) -> float:
        """Undo step ``step`` (a batch with a non-finite loss): free its kept graphs, restore the buffers its forward
        changed, no optimizer step. Returns the compute seconds spent, like :meth:`step`."""
        for key in [k for k in self.graphs if k[0] == step]:
            self.backward(key, None)
        self.weights_due.clear()
        if self.saved_buffers and self.saved_step == step:
            with torch.no_grad():
                for k, b in self.module.named_buffers():
                    b.copy_(self.saved_buffers[k])
        self.opt.zero_grad(set_to_none=True)
        busy, self.busy = self.busy, 0.0
        return busy

    def end_epoch(self) -> None:
        self.sched.step()

    def eval_forward(self, key, x):
        self.module.eval()
        try:
            with torch.no_grad():
                return self.end.reply(self._run(self.end.receive(x, writable=True)), x)
        finally:
            self.module.train()

    def output_shape(self, shape: tuple, dtype: torch.dtype, batch: bool = False) -> tuple[tuple, torch.dtype]:
        """The shape and dtype of this segment's output for an input of ``shape`` and ``dtype`` (a forward in eval
        mode: no statistics change); ``batch``: for a batch of that shape given to :meth:`head_forward`."""
        parts = [self.module] + ([self.head] if batch else [])
        for p in parts:
            p.eval()
        try:
            with torch.no_grad():
                u = torch.zeros(shape, dtype=dtype, device=self.device)
                out = self._run_interval(u) if batch else self._run(u)
            return tuple(out.shape), out.dtype
        finally:
            for p in parts:
                p.train()

    # ------------------------------------------------------------------ transport (raypar.engine.transport)
    def where(self) -> tuple[str, tuple, str]:
        """This actor's node, the GPUs Ray gave it and the device type it computes on."""
        import ray
        return ray.get_runtime_context().get_node_id(), tuple(ray.get_gpu_ids()), self.device.type

    def join_transport(self, name: str, addr: str | None = None, port: int | None = None, rank: int = 0,
                       world: int = 1) -> None:
        self.end.join(name, addr, port, rank, world)

    def get_state(self) -> dict:
        return to_cpu({"module": self.module.state_dict(), "optimizer": self.opt.state_dict(),
                       "scheduler": self.sched.state_dict(), "rng": torch.get_rng_state()})

    def set_state(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched = restore_scheduler(self.opt, self.optim, state["scheduler"])
        torch.set_rng_state(state["rng"])

    def pid(self) -> int:
        return os.getpid()

    def gpu_peak_mb(self) -> float | None:
        """The most GPU memory this process's tensors have held (None on CPUs)."""
        return gpu_peak_mb(self.device)

    def node_id(self) -> str:
        import ray
        return ray.get_runtime_context().get_node_id()

    # ------------------------------------------------------------------ data parallel replicas (raypar.engine.hybrid)
    def endpoint(self) -> tuple[str, int]:
        """Where this segment's replica group meets (asked of replica 0's actor, which listens there from now on)."""
        self.listener = hybrid.listen()
        return self.listener.getsockname()[:2]

    def join_replicas(self, addr: str, port: int, world: int, rank: int) -> None:
        """Join the process group of this segment's R replicas; from now on :meth:`step` averages gradients."""
        hybrid.init_group(addr, port, world, rank, self.device, listener=getattr(self, "listener", None))
        self.listener = None
        self.world = world
