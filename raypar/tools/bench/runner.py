"""The benchmark's processes: :class:`Runner`, the Ray actor that runs one contender's part (the whole network, a
raypar engine's driver, a DDP rank or a pipeline stage) step by step on one thread, and :func:`ddp_loop`, the
Ray Train worker of data parallelism run alone."""
from __future__ import annotations

import tempfile
import time
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn

from ...engine import precision
from ...engine.actors import gpu_peak_mb
from ...engine.driver import TURN_CPUS, PararealEngine, Resources
from ...engine.optim import make_optimizer
from ...engine.specs import OptimConfig
from ...malloc import keep_freed_memory
from ...network.reference import PararealNet
from .config import BenchConfig
from .workload import make_batches, optimizer, peak_rss_mb, sgd_step, timed


class Runner:
    """One benchmark process (a Ray actor computing on one thread)."""

    def __init__(self):
        torch.set_num_threads(1)
        keep_freed_memory()           # every contender's process as raypar's engine makes its own (raypar.malloc)
        make_optimizer([torch.zeros(1, requires_grad=True)], OptimConfig())   # torch.optim's lazy imports, not timed
        self.idle = peak_rss_mb()            # Python + Ray + torch + raypar, before any work
        self.engine, self.dist = None, False  # what finish() must shut down (set by the start_* methods)

    def ready(self) -> float:
        return self.idle

    def start_local(self, model: nn.Module, cfg: BenchConfig) -> int:
        """The whole network in this one process: the original, or the parareal network. Returns the step count."""
        torch.manual_seed(cfg.seed)
        model.to(cfg.torch_device).train()
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        return self._begin(cfg, sgd_step(model, optimizer(model, cfg), cfg), make_batches(cfg, cfg.torch_device))

    def start_raypar(self, net: PararealNet, cfg: BenchConfig, driver_segment: bool = False,
                     transport: str = "object-store", turns: bool = False, coarse_in_actors: bool = False) -> int:
        """This process is the driver; the engine puts every fine segment (but F_1 with ``driver_segment``) into
        its own actor, started here (start-up is not step time)."""
        cpus = TURN_CPUS if turns else 1
        engine = PararealEngine(net, cfg.optim, Resources(cfg.gpu_share, cpus, driver_segment=driver_segment,
                                                          transport=transport, channels_last=cfg.channels_last,
                                                          amp=cfg.amp, coarse_in_actors=coarse_in_actors,
                                                          defer_weights=cfg.defer_weights, batch=cfg.batch),
                                seed=cfg.seed)
        return self._begin(cfg, engine.train_step, make_batches(cfg, engine.device), engine)

    def start_ddp(self, model: nn.Module, cfg: BenchConfig, rank: int, world: int, port: int) -> int:
        """One data-parallel rank: DDP over gloo on this rank's share of every global batch, the same model wrapping
        and process group as Ray Train's ``prepare_model`` makes in a ``TorchTrainer`` worker (taking turns needs the
        ranks here, step by step)."""
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        torch.manual_seed(cfg.seed)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        model = DistributedDataParallel(model.train())
        return self._begin(cfg, sgd_step(model, optimizer(model, cfg), cfg),
                           [(x[rank::world], y[rank::world]) for x, y in make_batches(cfg)], dist_group=True)

    def start_pipe(self, module: nn.Module, rank: int, world: int, port: int, cfg: BenchConfig) -> int:
        """One stage of a GPipe schedule over gloo, driven step by step."""
        import torch.distributed as dist
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        return self._begin(cfg, self._pipe_step(module, rank, world, cfg), make_batches(cfg), dist_group=True)

    def _begin(self, cfg: BenchConfig, step_fn, batches: list, engine=None, dist_group: bool = False) -> int:
        """What :meth:`step` and :meth:`finish` work with; returns the number of steps (warm-up included)."""
        self.step_fn, self.batches, self.engine, self.dist, self.warmup = step_fn, batches, engine, dist_group, cfg.warmup
        self.times, self.results, self.started = [], [], []
        return len(batches)

    def step(self, i: int, lead_in: bool = False) -> None:
        """Training step ``i`` (the first ``warmup`` ones are not timed). ``lead_in`` (taking turns): an untimed step
        on the same batch first, so that the timed one starts as a step of a run does, right after another: its
        caches warm, and in a deferred raypar run its actors still computing the weight gradients of the step before;
        after it the engine's actors finish, untimed, so that none of this contender's work runs into the next one's
        turn."""
        if lead_in:
            self.step_fn(*self.batches[i])
        started, t0 = time.time(), time.perf_counter()
        out = self.step_fn(*self.batches[i])
        took = time.perf_counter() - t0
        if lead_in and self.engine is not None:
            self.engine.settle()
        if i >= self.warmup:
            self.times.append(took)
            self.results.append(out)
            self.started.append(started)

    def finish(self) -> dict:
        """The step times and peak memory; with an engine, its per-step statistics, and the engine shut down."""
        out = {"times": self.times, "rss": [peak_rss_mb()], "idle": self.idle, "step_started_s": self.started}
        try:
            if self.engine is not None:
                out["rss"] += [peak_rss_mb(pid) for pid in self.engine.actor_pids()]
                out["gpu"] = self.engine.gpu_peaks_mb()           # (this process's first, then each actor's)
                out.update(stats=[asdict(r[2]) for r in self.results], transport=self.engine.tx.name)
            elif torch.cuda.is_available() and torch.cuda.is_initialized():
                out["gpu"] = [gpu_peak_mb(torch.device("cuda"))]
        finally:
            self._close()
        return out

    def _close(self) -> None:
        """Shut down this contender's engine or process group, if any."""
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None
        if self.dist:
            import torch.distributed as dist
            dist.destroy_process_group()
            self.dist = False

    def local(self, model: nn.Module, cfg: BenchConfig) -> dict:
        return self._all_steps(self.start_local(model, cfg))

    def raypar(self, net: PararealNet, cfg: BenchConfig, driver_segment: bool = False,
               transport: str = "object-store", coarse_in_actors: bool = False) -> dict:
        return self._all_steps(self.start_raypar(net, cfg, driver_segment, transport,
                                                 coarse_in_actors=coarse_in_actors))

    def pipe_stage(self, module: nn.Module, rank: int, world: int, port: int, cfg: BenchConfig) -> dict:
        """One stage of a GPipe schedule over gloo, every step in a row; all stages run this at once."""
        return self._all_steps(self.start_pipe(module, rank, world, port, cfg))

    def _all_steps(self, steps: int) -> dict:
        try:
            for i in range(steps):
                self.step(i)
        except BaseException:
            self._close()
            raise
        return self.finish()

    @staticmethod
    def _pipe_step(module: nn.Module, rank: int, world: int, cfg: BenchConfig):
        from torch.distributed.pipelining import PipelineStage, ScheduleGPipe
        torch.manual_seed(cfg.seed)
        module.train()
        if cfg.channels_last:
            module = _SendsContiguous(module.to(memory_format=torch.channels_last))
        opt = optimizer(module, cfg)
        stage = PipelineStage(module, rank, world, torch.device("cpu"))
        schedule = ScheduleGPipe(stage, cfg.microbatches, loss_fn=F.cross_entropy)

        def step(x, y):
            opt.zero_grad(set_to_none=True)
            args = (x,) if rank == 0 else ()
            with precision.autocast("cpu", cfg.amp):    # (no loss scaling: a measure of time)
                schedule.step(*args, **({"target": y} if rank == world - 1 else {}))
            opt.step()
        return step


class _ContiguousGrad(torch.autograd.Function):
    """The identity, whose gradient leaves in the default layout."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g.contiguous()


class _SendsContiguous(nn.Module):
    """A channels-last pipeline stage whose output and input gradient leave in the default layout (gloo sends
    contiguous tensors only)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(_ContiguousGrad.apply(x)).contiguous()


def ddp_loop(config: dict) -> None:
    """Ray Train worker: DDP (gloo) on this worker's share of every global batch."""
    import ray.train
    import ray.train.torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    keep_freed_memory()
    idle = peak_rss_mb()
    cfg: BenchConfig = config["cfg"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed)
    if cfg.channels_last:
        config["model"].to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(config["model"])
    opt = optimizer(model, cfg)
    shards = [(x[rank::world], y[rank::world]) for x, y in make_batches(cfg)]
    times, _ = timed(sgd_step(model, opt, cfg), shards, cfg.warmup)
    gathered = [None] * world
    dist.all_gather_object(gathered, {"times": times, "rss": peak_rss_mb()})
    metrics = {"times": [max(t) for t in zip(*(g["times"] for g in gathered))], "rss": [g["rss"] for g in gathered],
               "idle": idle}
    with tempfile.TemporaryDirectory() as folder:      # Ray Train V2 keeps only metrics that come with a checkpoint
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if rank == 0 else None)
