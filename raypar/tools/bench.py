"""``raypar bench``: training throughput and peak memory of the original network, the parareal network in one
process, raypar on Ray, Ray Train data parallel and PyTorch pipelining — side by side, in one run.

Every contender trains the same model (same initial weights) on the same synthetic batches (fixed seed) with the
same SGD recipe, in fresh Ray actor processes that each compute with one thread: on a CPU machine the comparison is
about how the work is spread over processes, not about threads. Each contender takes turns with the original, one step
each (a shared machine's drift falls on both alike), pair after pair, with no other contender's processes up
(``--all-together``: all of them up, all taking turns); data parallelism then runs DDP over gloo in the benchmark's own
Ray actors, as Ray Train's ``prepare_model`` sets it up. ``--one-at-a-time`` runs each contender alone, one after the
other, and DDP in Ray Train's ``TorchTrainer``. ``--rounds`` repeats the whole line-up. A contender's step time
is the median over the timed steps after the warm-up steps; samples/s = batch / step time; its peak memory is the
max RSS of each of its processes (``resource.getrusage`` in the process itself, ``VmHWM`` from ``/proc`` for the
engine's fine actors; psutil is not needed), next to an idle process's RSS (Python + Ray + torch).

For raypar rows the step is broken down with the engine's own :class:`~raypar.engine.driver.StepStats` (driver, busiest
fine actor, transfer/idle, bytes shipped vs the 4-tensor minimum) and set against its parallel limit, from the split's
uncontended profile::

    limit = sequential / max(pre + coarse sweeps + max fine + post, total work / min(cores, N + 1))

efficiency = achieved speedup over the original / limit.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..engine import precision
from ..engine.actors import gpu_peak_mb
from ..network.balance import TUNE, check_split
from ..network.coarse import DOWNSAMPLE, CoarseSpec
from ..engine.driver import TURN_CPUS, PararealEngine, Resources
from ..errors import UserError, make_output_dir
from ..engine.cost import cpu_cores, parallel_limit
from ..training.session import start_private
from ..malloc import keep_freed_memory
from ..network.models import build, memory_format
from ..network.reference import PararealNet
from ..network.parareal import coarse_work
from ..engine.optim import OptimConfig, make_optimizer

CONTENDERS = ("original", "parareal-1proc", "raypar", "raypar-f1", "raypar-ca", "raypar-f1-ca", "ddp", "pipe")
# the line-up without --contenders (the -ca ones are slower on CPUs, where they were measured: benchmarks/throughput)
DEFAULT_CONTENDERS = ("original", "parareal-1proc", "raypar", "raypar-f1", "ddp", "pipe")
CPU_ONLY = ("ddp", "pipe")        # the contenders that run on CPUs only, for now
# the raypar contenders: (F_1 in the driver, coarse sweep in the actors)
ENGINES = {"raypar": (False, False), "raypar-f1": (True, False), "raypar-ca": (False, True),
           "raypar-f1-ca": (True, True)}
PRESTART = 6                     # benchmark processes started ahead together (~0.7 GB each while idle)
MAX_TIMED_CORES = 8              # core_speeds times at most this many cores (one process each)
INTERLEAVE_PROCESSES = 16        # at most this many processes (~0.8-1 GB each) up at once for interleaved contenders


@dataclass
class BenchConfig:
    model: str = "vgg16"
    width_mult: float = 0.25
    image_size: int = 32
    in_channels: int = 3
    num_classes: int = 10
    batch: int = 64
    warmup: int = 3
    steps: int = 10
    subnets: list[int] = field(default_factory=lambda: [1, 2])
    microbatches: int = 4
    balance: object = "time"                 # the split of raypar and pipe: "time", "flops", "params" or counts
    contenders: list[str] = field(default_factory=lambda: list(DEFAULT_CONTENDERS))
    seed: int = 0
    lr: float = 0.05
    device: str = "cpu"                      # "cuda": every process on the GPU(s) (fractions of one GPU if one)
    transports: list[str] = field(default_factory=lambda: ["auto"])   # raypar rows, one set per transport (as train's)
    coarse_kernel: int = 3                   # the coarse convolutions' kernel (raypar.network.coarse.CoarseSpec)
    channels_last: bool = False              # every contender in the channels-last layout
    amp: str = "off"                         # every contender under autocast: off, bf16 or fp16 (raypar.engine.precision)
    coarse_downsample: str = "pool"          # how the coarse networks shrink their input (raypar.network.coarse.CoarseSpec)
    rounds: int = 1                          # the whole line-up this many times (order reversed every other round)
    interleave: bool = True                  # the contenders take turns step by step (False: each alone)
    defer_weights: bool = True               # raypar's actors compute weight gradients in their step (--defer-weights)
    pairs: bool = True                       # taking turns: each contender with the original only (False: all at once)

    def validate(self) -> "BenchConfig":
        build(self.model, self.num_classes, self.in_channels, self.width_mult, self.image_size)  # names, sizes
        if self.batch < 1 or self.warmup < 0 or self.steps < 1 or self.microbatches < 1 or self.rounds < 1:
            raise UserError("--batch, --steps, --microbatches and --rounds must be >= 1 and --warmup >= 0")
        if not self.subnets or min(self.subnets) < 1:
            raise UserError(f"--subnets must list numbers >= 1, got {self.subnets}")
        for n in self.subnets:                   # N = 1 has one split whatever the balance (see _net)
            check_split(self.model, n, self.balance if n > 1 else "flops")
        unknown = sorted(set(self.contenders) - set(CONTENDERS))
        if unknown or not self.contenders:
            raise UserError(f"unknown contenders {unknown}; choose from {', '.join(CONTENDERS)}")
        from ..engine.transport import TRANSPORTS
        bad = sorted(set(self.transports) - set(TRANSPORTS)) if self.transports else ["(none)"]
        if bad:
            raise UserError(f"unknown transports {bad}; choose from {', '.join(TRANSPORTS)}")
        from ..engine.precision import check_name
        check_name(self.amp)
        if self.device not in ("cpu", "cuda"):
            raise UserError(f"--device must be cpu or cuda, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda: this machine has no CUDA GPU (torch.cuda.is_available() is False)")
        if self.device == "cuda" and set(CPU_ONLY) & set(self.contenders):
            raise UserError("--device cuda: the ddp and pipe contenders run on CPUs only for now; leave them out of "
                            "--contenders (e.g. --contenders original,parareal-1proc,raypar,raypar-f1)")
        return self

    @property
    def turns(self) -> bool:
        """Whether the contenders take turns: asked for, and on CPUs (on GPUs every process would hold its share of
        a GPU all along)."""
        return self.interleave and self.device == "cpu"

    @property
    def gpu_share(self) -> float:
        """The GPUs each benchmark process asks Ray for: a whole GPU each where there are enough, else a slice of
        one (then N actors share a GPU: per-actor times and transfer costs, not a speedup)."""
        if self.device != "cuda":
            return 0.0
        return 1.0 if torch.cuda.device_count() >= max(self.subnets) + 1 else 0.1

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def optim(self) -> OptimConfig:
        return OptimConfig(lr=self.lr)

    @property
    def shape(self) -> tuple:
        return (self.in_channels, self.image_size, self.image_size)


# --------------------------------------------------------------------------------------- in every process
def make_batches(cfg: BenchConfig, device: torch.device | str = "cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The warm-up and timed batches: synthetic, the same in every process (fixed seed)."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    return [(memory_format(torch.randn(cfg.batch, *cfg.shape, generator=g).to(device), cfg.channels_last),
             torch.randint(0, cfg.num_classes, (cfg.batch,), generator=g).to(device))
            for _ in range(cfg.warmup + cfg.steps)]


def peak_rss_mb(pid: int | None = None) -> float | None:
    """Peak resident memory of this process (getrusage) or of another local one (``VmHWM`` in /proc)."""
    if pid is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024       # KiB on Linux
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def timed(step, batches, warmup: int) -> tuple[list[float], list]:
    """Run ``step(x, y)`` on every batch; return the seconds and results of the steps after the warm-up."""
    times, results = [], []
    for i, (x, y) in enumerate(batches):
        t0 = time.perf_counter()
        out = step(x, y)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            results.append(out)
    return times, results


def optimizer(model: nn.Module, cfg: BenchConfig):
    """raypar's own optimizer (SGD with momentum and weight decay), the same for every contender."""
    return make_optimizer(model.parameters(), cfg.optim)[0]


def sgd_step(model: nn.Module, opt, cfg: BenchConfig) -> callable:
    """One training step of a whole model (or a data-parallel replica): under the run's autocast, with
    ``torch.amp.GradScaler``'s loss scaling for fp16."""
    scaler = torch.amp.GradScaler(cfg.device, enabled=cfg.amp == "fp16")

    def step(x, y):
        with precision.autocast(cfg.device, cfg.amp):
            logits = model(x)
        loss = F.cross_entropy(precision.full(logits), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss.item()
    return step


class Runner:
    """One benchmark process (a Ray actor computing on one thread)."""

    def __init__(self):
        torch.set_num_threads(1)
        keep_freed_memory()           # every contender's process as raypar's engine makes its own (raypar.malloc)
        make_optimizer([torch.zeros(1, requires_grad=True)], OptimConfig())   # torch.optim's lazy imports (~2 s)
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

    def start_raypar(self, net: PararealNet, cfg: BenchConfig, first_in_driver: bool = False,
                     transport: str = "object-store", turns: bool = False, coarse_in_actors: bool = False) -> int:
        """This process is the driver; the engine puts every fine segment (but F_1 with ``first_in_driver``) into
        its own actor, started here (start-up is not step time)."""
        cpus = TURN_CPUS if turns else 1
        engine = PararealEngine(net, cfg.optim, Resources(cfg.gpu_share, cpus, first_in_driver=first_in_driver,
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

    def raypar(self, net: PararealNet, cfg: BenchConfig, first_in_driver: bool = False,
               transport: str = "object-store", coarse_in_actors: bool = False) -> dict:
        return self._all_steps(self.start_raypar(net, cfg, first_in_driver, transport,
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


# --------------------------------------------------------------------------------------------- contenders
@dataclass
class Contender:
    name: str
    runners: int                   # benchmark processes to start for it (Ray Train starts its own)
    run: Callable[[list], dict]    # run(runner actors) -> times, rss, idle, processes, extras
    # contenders driven step by step from here (taking turns with each other): start(runners) -> ObjectRefs (one per
    # runner), then step(i) on all its runners at once, per step; finish() on each -> raw outputs; post(raw outputs)
    # -> the same as run's result
    start: Callable | None = None
    post: Callable[[list], dict] | None = None
    processes: int = 1             # processes it computes in while it runs (a memory estimate for interleaving)
    runners_alone: int | None = None   # runners when it runs alone instead (None: ``runners``)


def _net(cfg: BenchConfig, n: int, driver_segment: bool = False, balance=None) -> PararealNet:
    torch.manual_seed(cfg.seed)                  # every contender starts from the same weights
    balance = balance or ("time" if cfg.balance == TUNE else cfg.balance)
    if n == 1 and isinstance(balance, list):
        balance = [sum(balance)]                 # an explicit split is for the largest N; N = 1 has just one
    return PararealNet(_model(cfg), n, coarse=_coarse(cfg), balance=balance, input_shape=cfg.shape,
                       profile_batch=cfg.batch, driver_segment=driver_segment, defer_weights=cfg.defer_weights,
                       measure="time" if cfg.balance == TUNE else None,   # a tuned split's limit: by time too
                       profile_device=cfg.torch_device, channels_last=cfg.channels_last)


def _coarse(cfg: BenchConfig) -> CoarseSpec:
    return CoarseSpec(kernel=cfg.coarse_kernel, downsample=cfg.coarse_downsample)


def _engine_net(cfg: BenchConfig, n: int, driver_segment: bool, log=print,
                coarse_in_actors: bool = False) -> PararealNet:
    """A raypar contender's network: with ``--balance tune`` its split is the fastest of the candidates measured on
    the engine (:mod:`raypar.tools.tune`, over the first of ``--transports``; every transport's rows use it), else the one
    the balance gives."""
    if cfg.balance != TUNE or n < 2:
        return _net(cfg, n, driver_segment)
    from .tune import tune_split
    split, _ = tune_split(_model(cfg), n, coarse=_coarse(cfg), driver_segment=driver_segment, input_shape=cfg.shape,
                          num_classes=cfg.num_classes, batch=cfg.batch, optim=cfg.optim,
                          resources=Resources(cfg.gpu_share, 1.0, channels_last=cfg.channels_last, amp=cfg.amp,
                                              transport=cfg.transports[0], coarse_in_actors=coarse_in_actors,
                                              defer_weights=cfg.defer_weights),
                          seed=cfg.seed, log=log)
    return _net(cfg, n, driver_segment, split)


def _model(cfg: BenchConfig):
    torch.manual_seed(cfg.seed)
    return build(cfg.model, cfg.num_classes, cfg.in_channels, cfg.width_mult, cfg.image_size)


def _core_worker(conn, core: int, cfg: "BenchConfig") -> None:
    """One process pinned to ``core``: the original network's training step; each message (a step count) is answered
    with that many step times, None ends it."""
    os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    keep_freed_memory()
    model = _model(cfg)
    step = sgd_step(model, optimizer(model, cfg), cfg)
    x, y = make_batches(replace(cfg, warmup=0, steps=1))[0]
    step(x, y)                                          # warm-up
    conn.send("ready")
    while (msg := conn.recv()) is not None:
        conn.send(timed(step, [(x, y)] * msg, 0)[0])


def core_speeds(cfg: "BenchConfig", steps: int = 5, timeout_s: float = 300) -> dict | None:
    """How fast each CPU core (the first ``MAX_TIMED_CORES``) runs the original network's step, alone and with every
    core busy (one pinned process per core). On a shared or virtual machine the cores are not equal: ``capacity`` is what all of them together are
    worth in units of the fastest core alone (``cores`` on an ideal machine), the ceiling of any contender's speedup
    over the original on its best core. None where cores cannot be pinned."""
    if not hasattr(os, "sched_setaffinity") or cfg.device != "cpu":
        return None
    import multiprocessing as mp
    cores = sorted(os.sched_getaffinity(0))[:MAX_TIMED_CORES]
    ctx = mp.get_context("spawn")
    pipes, procs = [], []

    def answer(conn):
        if not conn.poll(timeout_s):
            raise TimeoutError(f"no answer within {timeout_s:g} s")
        return conn.recv()
    try:
        for c in cores:
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=_core_worker, args=(theirs, c, cfg), daemon=True)
            p.start()
            theirs.close()                              # a dead worker is then an EOFError here, not a hang
            pipes.append(mine)
            procs.append(p)
        for conn in pipes:
            answer(conn)
        solo = []
        for conn in pipes:                              # one core at a time, the others idle
            conn.send(steps)
            solo.append(statistics.median(answer(conn)))
        for conn in pipes:                              # every core at once
            conn.send(steps)
        together = [statistics.median(answer(conn)) for conn in pipes]
    except (OSError, EOFError, TimeoutError) as e:      # a diagnostic: the benchmark goes on without it
        print(f"raypar bench: could not time the cores ({type(e).__name__}: {e})", file=sys.stderr)
        return None
    finally:
        for conn in pipes:
            try:
                conn.send(None)
            except OSError:
                pass
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    fastest = min(solo)
    return {"cores": cores, "solo_ms": [1e3 * t for t in solo], "together_ms": [1e3 * t for t in together],
            "capacity": sum(fastest / t for t in together)}


def bytes_minimum(net: PararealNet, batch: int, skip_first: bool = False, element: int = 4,
                  coarse_in_actors: bool = False) -> int:
    """The fewest bytes a step ships (:meth:`PararealNet.interface_bytes`; ``element``: 2 with --amp)."""
    return net.interface_bytes(batch, skip_first, element, coarse_in_actors)


def run_local(runner, model: nn.Module, cfg: BenchConfig) -> dict:
    import ray
    return local_row(ray.get(runner.local.remote(model, cfg)), model)


def local_row(out: dict, model: nn.Module) -> dict:
    out = dict(out, processes=1)
    if isinstance(model, PararealNet):
        out.update(subnets=model.num_subnets, split=model.split)
    return out


def run_raypar(runner, net: PararealNet, cfg: BenchConfig, first_in_driver: bool = False,
               transport: str = "object-store", coarse_in_actors: bool = False) -> dict:
    import ray
    out = ray.get(runner.raypar.remote(net, cfg, first_in_driver, transport, coarse_in_actors))
    return raypar_row(out, net, cfg, first_in_driver, coarse_in_actors)


def engine_processes(net: PararealNet, first_in_driver: bool) -> int:
    """The driver and its fine actors (F_1 in the driver with ``first_in_driver``)."""
    n = net.num_subnets
    return n if first_in_driver and n > 1 else n + 1


def raypar_row(out: dict, net: PararealNet, cfg: BenchConfig, first_in_driver: bool = False,
               coarse_in_actors: bool = False) -> dict:
    out = dict(out)
    stats, n = out.pop("stats"), net.num_subnets
    procs = engine_processes(net, first_in_driver)
    med = {k: statistics.median(s[k] for s in stats) for k in ("driver", "fine_max", "wait")}
    each = [1e3 * statistics.median(t) for t in zip(*(s["fine_each"] for s in stats))] if stats else []
    return dict(out, processes=procs, subnets=n, split=net.split, driver_ms=1e3 * med["driver"],
                fine_max_ms=1e3 * med["fine_max"], transfer_ms=1e3 * max(0.0, med["wait"] - med["fine_max"]),
                fine_each_ms=each,
                bytes_per_step=max(s["bytes"] for s in stats),
                bytes_min=bytes_minimum(net, cfg.batch, skip_first=first_in_driver,
                                        element=4 if cfg.amp == "off" else 2,
                                        coarse_in_actors=coarse_in_actors),
                parallel_limit=parallel_limit(net, min(cpu_cores(), procs)))


def _check_ddp_batch(cfg: BenchConfig, workers: int) -> None:
    if cfg.batch % workers:
        raise ValueError(f"batch {cfg.batch} does not split into {workers} equal worker batches")


def ranks_row(outs: list[dict]) -> dict:
    """One row from the ranks of a collective contender (DDP, pipeline): a step lasts as long as its slowest rank."""
    return {"times": [max(t) for t in zip(*(o["times"] for o in outs))], "rss": [o["rss"][0] for o in outs],
            "idle": outs[0]["idle"], "processes": len(outs), "step_started_s": outs[0]["step_started_s"]}


def run_ddp(cfg: BenchConfig, workers: int) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    _check_ddp_batch(cfg, workers)
    with tempfile.TemporaryDirectory(prefix="raypar-bench-ddp-") as storage:
        trainer = TorchTrainer(ddp_loop, train_loop_config={"cfg": cfg, "model": _model(cfg)},
                               scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
                               run_config=RunConfig(name="ddp", storage_path=storage))
        result = trainer.fit()
    if result.error:
        raise result.error
    m = result.metrics
    return {"times": m["times"], "rss": m["rss"], "idle": m["idle"], "processes": workers}


def pipe_stages(net: PararealNet) -> list[nn.Module]:
    """raypar's split as pipeline stages: pre joins the first segment, post the last."""
    stages = [nn.Sequential(seg) for seg in net.segments]
    stages[0].insert(0, net.pre)
    stages[-1].append(net.post)
    return stages


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_pipe(runners: list, net: PararealNet, cfg: BenchConfig) -> dict:
    import ray
    stages, port = pipe_stages(net), _free_port()
    outs = ray.get([a.pipe_stage.remote(m, r, len(stages), port, cfg)
                    for r, (a, m) in enumerate(zip(runners, stages))], timeout=600)
    return pipe_row(outs, net, cfg)


def pipe_row(outs: list[dict], net: PararealNet, cfg: BenchConfig) -> dict:
    return dict(ranks_row(outs), split=net.split, microbatches=cfg.microbatches)


def plan(cfg: BenchConfig, log=print) -> list[Contender]:
    """The contenders asked for, in table order. The networks are built (and a measured-time split profiled, or with
    ``--balance tune`` the raypar contenders' splits measured on the engine) first, while nothing else runs, and
    shared: raypar-N, parareal-1proc and pipe use the same split (tuning: parareal-1proc and pipe the time
    balance's)."""
    big, want = max(cfg.subnets), set(cfg.contenders)
    tune = cfg.balance == TUNE
    sizes = ({big} if want & {"parareal-1proc", "pipe"} else set()) | (
        set(cfg.subnets) if want & {"raypar", "raypar-ca"} and not tune else set())
    nets = {n: _net(cfg, n) for n in sorted(sizes)}
    engine_nets = {}                             # (contender, n) -> its network
    for name, (f1, ca) in ENGINES.items():
        for n in (cfg.subnets if name in want else []):
            if f1 and n < 2:                         # (N = 1 with F_1 in the driver is the original network)
                continue
            engine_nets[name, n] = (_engine_net(cfg, n, f1, log, ca) if tune or f1 else nets[n])
    orig = _model(cfg)

    def local(name, model):
        return Contender(name, 1, lambda rs: run_local(rs[0], model, cfg),
                         start=lambda rs: [rs[0].start_local.remote(model, cfg)],
                         post=lambda outs: local_row(outs[0], model))

    def engine(name, net, f1, t, ca):
        return Contender(name, 1, lambda rs: run_raypar(rs[0], net, cfg, f1, t, ca),
                         start=lambda rs: [rs[0].start_raypar.remote(net, cfg, f1, t, True, ca)],
                         post=lambda outs: raypar_row(outs[0], net, cfg, f1, ca),
                         processes=engine_processes(net, f1))

    def ddp():                                   # alone, Ray Train's TorchTrainer starts the workers itself
        def start(rs):
            _check_ddp_batch(cfg, big)
            port = _free_port()
            return [a.start_ddp.remote(orig, cfg, r, big, port) for r, a in enumerate(rs)]
        return Contender(f"ddp-{big}", big, lambda rs: run_ddp(cfg, big), start=start,
                         post=lambda outs: ranks_row(outs), processes=big, runners_alone=0)

    def pipe():
        def start(rs):
            stages, port = pipe_stages(nets[big]), _free_port()
            return [a.start_pipe.remote(m, r, len(stages), port, cfg) for r, (a, m) in enumerate(zip(rs, stages))]
        return Contender(f"pipe-{big}", big, lambda rs: run_pipe(rs, nets[big], cfg), start=start,
                         post=lambda outs: pipe_row(outs, nets[big], cfg),
                         processes=big)
    table = {"original": [local("original", orig)],
             "parareal-1proc": [local("parareal-1proc", nets[big])] if big in nets else [],
             **{name: [engine(f"raypar-N{n}{name[6:]}{_suffix(t)}", engine_nets[name, n], f1, t, ca)
                       for t in cfg.transports for n in cfg.subnets if (name, n) in engine_nets]
                for name, (f1, ca) in ENGINES.items()},
             "ddp": [ddp()] if "ddp" in want else [],
             "pipe": [pipe()] if "pipe" in want else []}
    return [c for name in CONTENDERS if name in want for c in table[name]]


def _suffix(transport: str) -> str:
    return "" if transport == "auto" else f"-{transport}"           # train's default: no suffix


def _alone(c: Contender) -> int:
    """The runner processes a contender needs when it runs alone."""
    return c.runners if c.runners_alone is None else c.runners_alone


def _chunks(contenders: list[Contender], cap: int):
    """Consecutive groups needing at most ``cap`` runner processes together (at least one contender each)."""
    chunk, used = [], 0
    for c in contenders:
        if chunk and used + _alone(c) > cap:
            yield chunk
            chunk, used = [], 0
        chunk.append(c)
        used += _alone(c)
    if chunk:
        yield chunk


def start_runners(counts: list[int], gpus: float = 0.0) -> list[list]:
    """Start the processes of several contenders at once and wait until every one is up: process start-up (~5 s
    each on a small CPU) runs in parallel, and no measurement ever overlaps it. Runners reserve no Ray CPU (each
    computes on one thread, one contender at a time), so idle ones never keep the engine's actors from starting."""
    import ray
    cls = ray.remote(num_cpus=0, num_gpus=gpus, enable_tensor_transport=gpus > 0)(Runner)
    groups = [[cls.remote() for _ in range(k)] for k in counts]
    refs = [a.ready.remote() for g in groups for a in g]
    if refs:
        ray.wait(refs, num_returns=len(refs), timeout=600)
    return groups


# ------------------------------------------------------------------------------------------------ rows
def to_row(name: str, out: dict, batch: int) -> dict:
    times, rss = out.pop("times"), [r for r in out.pop("rss") if r is not None]
    gpu = [g for g in out.pop("gpu", None) or [] if g is not None]
    step = statistics.median(times)
    return {"contender": name, "processes": out.pop("processes"), "samples_per_s": batch / step,
            "ratio_vs_original": None, "step_ms": 1e3 * step, "peak_rss_mb": max(rss) if rss else None,
            "rss_per_process_mb": rss, "idle_rss_mb": out.pop("idle"),
            **({"gpu_peak_mb": max(gpu), "gpu_per_process_mb": gpu} if gpu else {}), **out}


def finish_rows(rows: list[dict]) -> list[dict]:
    """Ratios against the original; for raypar rows the efficiency = speedup over the original / parallel limit."""
    base = next((r for r in rows if r["contender"] == "original" and r.get("samples_per_s")), None)
    for r in rows:
        ref = r["original_samples_per_s"] if "original_samples_per_s" in r else (base or {}).get("samples_per_s")
        if not ref or not r.get("samples_per_s"):
            continue
        r["ratio_vs_original"] = r["samples_per_s"] / ref
        if "parallel_limit" in r:
            r["efficiency"] = r["ratio_vs_original"] / r["parallel_limit"]
    return rows


def error_row(name: str, e: BaseException) -> dict:
    return {"contender": name, "processes": None, "samples_per_s": None, "ratio_vs_original": None, "step_ms": None,
            "peak_rss_mb": None, "error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"}


def measure(cfg: BenchConfig, log=print) -> list[dict]:
    """Run every contender in fresh processes, taking turns step by step (``cfg.interleave``, on CPUs) or one after
    the other; a contender that fails is a row with its error. With ``cfg.rounds`` > 1 the whole line-up runs that many times, in reverse order every other round, so a slow
    spell of the machine does not fall on one contender only (see :func:`merge_rounds`)."""
    contenders = plan(cfg, log)
    rounds = []
    for r in range(cfg.rounds):
        if cfg.rounds > 1:
            log(f"raypar bench: round {r + 1} of {cfg.rounds}")
        order = contenders if r % 2 == 0 else contenders[::-1]
        rounds.append({row["contender"]: row for row in finish_rows(_measure_once(order, cfg, log))})
    return merge_rounds([c.name for c in contenders], rounds)


def merge_rounds(names: list[str], rounds: list[dict]) -> list[dict]:
    """One row per contender from several rounds: the round with the median step time (its breakdown, memory and
    bytes as measured together), and, with more than one round, the ratio to the original = the median over the
    rounds of each round's own ratio (a contender against the original measured in the same round), with every
    round's step time and ratio listed (``step_ms_rounds``, ``ratio_rounds``)."""
    rows = []
    for name in names:
        runs = [r[name] for r in rounds]
        failed = next((r for r in runs if r.get("error")), None)
        steps = [r["step_ms"] for r in runs]
        if failed is not None:                       # (what the other rounds measured stays in the row)
            rows.append(dict(failed, step_ms_rounds=steps) if len(runs) > 1 else failed)
            continue
        row = dict(next(r for r in runs if r["step_ms"] == statistics.median_low(steps)))
        if len(runs) > 1:
            ratios = [r["ratio_vs_original"] for r in runs if r["ratio_vs_original"] is not None]
            row.update(step_ms_rounds=steps, ratio_rounds=ratios,
                       ratio_vs_original=statistics.median(ratios) if ratios else None)
            if row.get("parallel_limit") and row["ratio_vs_original"] is not None:
                row["efficiency"] = row["ratio_vs_original"] / row["parallel_limit"]
        rows.append(row)
    return rows


def _measure_once(contenders: list[Contender], cfg: BenchConfig, log) -> list[dict]:
    """One round: each contender takes turns with the original, one step each (:func:`_paired`), or with
    ``--all-together`` all of them at once (see :func:`_interleaved`); with ``--one-at-a-time``, and those beyond the
    memory cap, they run alone, one after the other."""
    original = next((c for c in contenders if c.name == "original"), None)
    if cfg.pairs and cfg.turns and original is not None and len(contenders) > 2:
        return _paired(original, contenders, cfg, log)
    together, used = [], 0
    for c in contenders:
        if cfg.turns and c.start is not None and used + c.processes <= INTERLEAVE_PROCESSES:
            together.append(c)
            used += c.processes
    rows = _interleaved(together, cfg, log) if len(together) > 1 else []
    return rows + _one_at_a_time([c for c in contenders if c not in together or len(together) == 1], cfg, log)


def _paired(original: Contender, contenders: list[Contender], cfg: BenchConfig, log) -> list[dict]:
    """Each contender takes turns with the original only, pair after pair, in fresh processes: while a pair runs, no
    other contender's processes are up, as in a training run. (Idle Ray workers wake about 150 times a second each;
    with every contender's processes up, 12 idle ones slowed a 2-process raypar step by 5-12 % on 2 cores and the
    original's not at all: benchmarks/throughput/README.md.) A contender's ratio is against the original of its own
    pair (``original_samples_per_s``); the original's row is its median pair."""
    rows, originals = [], []
    for c in contenders:
        if c is original:
            continue
        pair = [original, c] if contenders.index(original) < contenders.index(c) else [c, original]
        log(f"raypar bench: {c.name} takes turns with the original")
        got = {r["contender"]: r for r in _measure_once(pair, replace(cfg, pairs=False), lambda *_: None)}
        row, base = got[c.name], got.get("original", {})
        if base.get("samples_per_s"):
            originals.append(base)
            row.update(original_samples_per_s=base["samples_per_s"], original_step_started_s=base["step_started_s"])
        else:                            # no ratio against another pair's original
            row.update(original_samples_per_s=None, original_error=base.get("error", "no original row"))
        rows.append(row)
    if originals:
        steps = [r["step_ms"] for r in originals]
        base = dict(next(r for r in originals if r["step_ms"] == statistics.median_low(steps)), step_ms_pairs=steps)
    else:
        base = error_row("original", RuntimeError("the original failed in every pair"))
    at = [c.name for c in contenders].index("original")
    return rows[:at] + [base] + rows[at:]


def _interleaved(contenders: list[Contender], cfg: BenchConfig, log) -> list[dict]:
    """Every contender's processes start and stay up; then step i of each contender runs in turn, for every i. A slow
    spell of a shared machine (on the development machine a step's time drifts by a third within minutes) then
    falls on every contender alike, so their ratios stay paired. Each step is timed in its own process."""
    import ray
    rows, live = [], []
    groups = start_runners([c.runners for c in contenders], cfg.gpu_share)
    for c, runners in zip(contenders, groups):
        log(f"raypar bench: {c.name} ...")
        try:
            ray.get(c.start(runners))
            live.append((c, runners))
        except Exception as e:  # noqa: BLE001 - reported in the table instead of stopping the benchmark
            rows.append(error_row(c.name, e))
            _kill(runners)
    log(f"raypar bench: {len(live)} contenders take turns, one step each")
    for i in range(cfg.warmup + cfg.steps):
        for c, runners in list(live):
            try:
                ray.get([a.step.remote(i, True) for a in runners])  # (a collective contender: all ranks at once)
            except Exception as e:  # noqa: BLE001
                rows.append(error_row(c.name, e))
                live.remove((c, runners))
                _kill(runners)
    for c, runners in live:
        try:
            rows.append(dict(to_row(c.name, c.post(ray.get([a.finish.remote() for a in runners])), cfg.batch),
                             taking_turns=True))
        except Exception as e:  # noqa: BLE001
            rows.append(error_row(c.name, e))
        finally:
            _kill(runners)
    return rows


def _one_at_a_time(contenders: list[Contender], cfg: BenchConfig, log) -> list[dict]:
    rows = []
    for chunk in _chunks(contenders, PRESTART):
        for c, runners in zip(chunk, start_runners([_alone(c) for c in chunk], cfg.gpu_share)):
            log(f"raypar bench: {c.name} ...")
            try:
                rows.append(dict(to_row(c.name, c.run(runners), cfg.batch), taking_turns=False))
            except Exception as e:  # noqa: BLE001 - reported in the table instead of stopping the benchmark
                rows.append(error_row(c.name, e))
            finally:
                _kill(runners)
    return rows


def _kill(runners: list) -> None:
    """End a contender's runner processes (and with them the engine actors they own)."""
    import ray
    for a in runners:
        ray.kill(a)


# ---------------------------------------------------------------------------------------------- outputs
def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _ms(values: list[float]) -> str:
    return " / ".join(f"{v:.0f}" for v in values) + " ms"


def table(rows: list[dict], cfg: BenchConfig):
    from rich.table import Table
    t = Table(title=f"{cfg.model} x{cfg.width_mult}{', channels-last' if cfg.channels_last else ''}"
                    f"{', amp ' + cfg.amp if cfg.amp != 'off' else ''}, "
                    f"batch {cfg.batch}, median of {cfg.steps} steps after "
                    f"{cfg.warmup} warm-up, 1 thread per process"
                    f"{f'; the median of {cfg.rounds} rounds (x orig: min–max over them)' if cfg.rounds > 1 else ''}",
              caption=_errors(rows) or None)
    gpu = any(r.get("gpu_peak_mb") for r in rows)
    for c in ("contender", "procs", "samples/s", "x orig", "step ms", "peak RSS MB (idle)",
              *(["GPU peak MB"] if gpu else []), "driver ms", "fine max ms", "transfer ms", "MB/step (min)", "limit",
              "eff"):
        t.add_column(c, justify="left" if c == "contender" else "right")
    for r in rows:
        if r.get("error"):
            t.add_row(r["contender"], *["-"] * (10 + gpu), "[red]error[/red]")
            continue
        mb = f"{r['bytes_per_step'] / 2**20:.2f} ({r['bytes_min'] / 2**20:.2f})" if "bytes_min" in r else "-"
        ratio = _fmt(r["ratio_vs_original"], ".2f")
        if len(r.get("ratio_rounds") or []) > 1:
            ratio += f" ({min(r['ratio_rounds']):.2f}–{max(r['ratio_rounds']):.2f})"
        t.add_row(r["contender"], str(r["processes"]), f"{r['samples_per_s']:.1f}", ratio, f"{r['step_ms']:.1f}",
                  f"{_fmt(r['peak_rss_mb'], '.0f')} ({_fmt(r['idle_rss_mb'], '.0f')})",
                  *([_fmt(r.get("gpu_peak_mb"), ".0f")] if gpu else []), _fmt(r.get("driver_ms"), ".1f"),
                  _fmt(r.get("fine_max_ms"), ".1f"), _fmt(r.get("transfer_ms"), ".1f"), mb,
                  _fmt(r.get("parallel_limit"), ".2f"), _fmt(r.get("efficiency"), ".0%"))
    return t


def _errors(rows: list[dict]) -> str:
    return "\n".join(f"{r['contender']}: {r['error']}" for r in rows if r.get("error"))


def environment() -> dict:
    import platform

    import ray
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() \
        else []
    return {"torch": torch.__version__, "ray": ray.__version__, "python": platform.python_version(),
            "cpu_cores": cpu_cores(), "threads_per_process": 1, "load_average_at_start": os.getloadavg(),
            "gpus": gpus}


def write_json(rows: list[dict], cfg: BenchConfig, env: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump({"config": asdict(cfg), "environment": env, "rows": rows}, f, indent=2)


def write_png(rows: list[dict], cfg: BenchConfig, path: str) -> None:
    """Two bar charts: samples/s, and peak RSS per process split into an idle process's share and the rest."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [r["contender"] for r in rows]
    speed = [r["samples_per_s"] or 0.0 for r in rows]
    peak = [r["peak_rss_mb"] or 0.0 for r in rows]
    idle = [min(r.get("idle_rss_mb") or 0.0, p) for r, p in zip(rows, peak)]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    bars = a.bar(names, speed, color=["#888" if n == "original" else "#3a7" for n in names])
    a.bar_label(bars, labels=["error" if r.get("error") else f"{v:.0f}" for r, v in zip(rows, speed)])
    a.set_title("training samples/s (higher is better)", fontsize=10)
    b.bar(names, idle, color="#ccc", label="idle process (Python + Ray + torch)")
    bars = b.bar(names, [p - i for p, i in zip(peak, idle)], bottom=idle, color="#37a", label="added by training")
    b.bar_label(bars, labels=["error" if r.get("error") else f"{v:.0f}" for r, v in zip(rows, peak)])
    b.set_title("peak RSS of the largest process, MB", fontsize=10)
    b.legend(loc="lower left", fontsize=8, framealpha=0.9)
    for ax in (a, b):
        ax.tick_params(axis="x", rotation=30)
        ax.margins(y=0.12)
    fig.suptitle(f"{cfg.model} x{cfg.width_mult}, batch {cfg.batch}, 1 thread per process, {cpu_cores()} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def log_mlflow(rows: list[dict], cfg: BenchConfig, folder: str, tracking_uri: str,
               experiment: str = "raypar-bench") -> str:
    """One MLflow run: the configuration as params, ``<contender>.<metric>`` metrics, the JSON and PNG."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from ..training.tracking import connect
    client = MlflowClient(tracking_uri)
    run = client.create_run(connect(tracking_uri, experiment), run_name=f"bench-{cfg.model}-b{cfg.batch}")
    rid, ts = run.info.run_id, int(time.time() * 1000)
    params = {k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in asdict(cfg).items()}
    metrics = [Metric(f"{r['contender']}.{k}", float(v), ts, 0) for r in rows for k, v in r.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    client.log_batch(rid, params=[Param(k, str(v)) for k, v in params.items()], metrics=metrics)
    for name in ("bench.json", "bench.png"):
        client.log_artifact(rid, os.path.join(folder, name))
    client.set_terminated(rid)
    return rid


def _ensure_ray(cfg: BenchConfig) -> bool:
    """Start a private local Ray big enough for the largest contender; True when this call started it."""
    return start_private(max(max(cfg.subnets) + 1, os.cpu_count() or 1),
                         torch.cuda.device_count() if cfg.device == "cuda" else 0, one_thread=True)


def run_bench(cfg: BenchConfig | None = None, out: str = "bench_out", tracking_uri: str | None = None,
              experiment: str = "raypar-bench", console=None) -> list[dict]:
    """Measure every contender, print the table, write ``bench.json`` and ``bench.png`` into ``out`` and, with a
    tracking URI, log one MLflow run. Returns the rows."""
    import ray
    from rich.console import Console
    cfg = cfg or BenchConfig()
    console = console or Console(width=None if sys.stdout.isatty() else 150)
    make_output_dir(out)
    if tracking_uri:
        from ..training.tracking import connect
        connect(tracking_uri, experiment)                  # a store that cannot be used fails now, not after the run
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                               # the split is profiled as the processes will run
    env, started = environment(), False
    try:
        if cfg.device == "cpu":
            console.print("timing every CPU core with the original network ...", style="dim")
        env["core_speeds"] = core_speeds(cfg)
        started = _ensure_ray(cfg)
        rows = measure(cfg, log=lambda m: console.print(m, style="dim"))
    finally:
        torch.set_num_threads(threads)
        if started:
            ray.shutdown()
    console.print(table(rows, cfg))
    console.print(f"{env['cpu_cores']} CPU cores, load average {env['load_average_at_start'][0]:.2f} at the start "
                  f"(other work on the machine skews the numbers); torch {env['torch']}, Ray {env['ray']}")
    if env["core_speeds"]:
        cs = env["core_speeds"]
        console.print(f"the original's step pinned to each core: {_ms(cs['solo_ms'])} alone, {_ms(cs['together_ms'])} "
                      f"with every core busy: together the cores are worth {cs['capacity']:.2f} of the fastest one "
                      f"alone ({len(cs['cores'])} on a machine of equal, independent cores), the ceiling of any "
                      f"speedup over the original")
    write_json(rows, cfg, env, os.path.join(out, "bench.json"))
    write_png(rows, cfg, os.path.join(out, "bench.png"))
    if tracking_uri:
        run_id = log_mlflow(rows, cfg, out, tracking_uri, experiment)
        console.print(f"MLflow run {run_id} in experiment {experiment!r} at {tracking_uri}")
    return rows


# -------------------------------------------------------------------------------------------------- CLI
def add_arguments(p) -> None:
    """The options of ``raypar bench`` (and ``python -m raypar.tools.bench``)."""
    d = BenchConfig()
    p.add_argument("--model", default=d.model, help="vgg11/13/16/19 or resnet<9n+2> (default: %(default)s)")
    p.add_argument("--width-mult", type=float, default=d.width_mult, help="(default: %(default)s)")
    p.add_argument("--image-size", type=int, default=d.image_size, help="(default: %(default)s)")
    p.add_argument("--in-channels", type=int, default=d.in_channels, help="(default: %(default)s)")
    p.add_argument("--num-classes", type=int, default=d.num_classes, help="(default: %(default)s)")
    p.add_argument("--batch", type=int, default=d.batch, help="global batch of every contender (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed steps first (default: %(default)s)")
    p.add_argument("--steps", type=int, default=d.steps, help="timed steps (default: %(default)s)")
    p.add_argument("--subnets", default="1,2", help="raypar's N, comma-separated; ddp and pipe use the largest "
                                                   "(default: %(default)s)")
    p.add_argument("--microbatches", type=int, default=d.microbatches,
                   help="GPipe micro-batches (default: %(default)s)")
    p.add_argument("--balance", default=d.balance, help="split: time, flops, params or counts like 6,6; tune: each "
                                                        "raypar contender's split measured on the engine first "
                                                        "(raypar tune; parareal-1proc and pipe: time) "
                                                        "(default: %(default)s)")
    p.add_argument("--contenders", default=None,
                   help=f"any of {', '.join(CONTENDERS)}; -f1: F_1 in the driver (--driver-segment), -ca: the coarse "
                        f"sweep in the actors (--coarse-in-actors) (default: {','.join(DEFAULT_CONTENDERS)}; with "
                        f"--device cuda without {' and '.join(CPU_ONLY)}, which run on CPUs only)")
    p.add_argument("--device", default=d.device, choices=["cpu", "cuda"],
                   help="where every process computes; with one GPU the processes share it (default: %(default)s)")
    p.add_argument("--transports", default="auto",
                   help="raypar rows for each of these interface-tensor transports: auto (train's default: p2p on "
                        "CPUs), object-store, p2p, cuda-ipc; the row of auto has no suffix (default: %(default)s)")
    p.add_argument("--coarse-kernel", type=int, default=d.coarse_kernel,
                   help="kernel size of the coarse convolutions (default: %(default)s)")
    p.add_argument("--coarse-downsample", default=d.coarse_downsample, choices=DOWNSAMPLE,
                   help="how the coarse networks shrink their input (default: %(default)s)")
    p.add_argument("--channels-last", action="store_true",
                   help="every contender's weights and activations in the channels-last layout")
    p.add_argument("--amp", default=d.amp, choices=["off", "bf16", "fp16"],
                   help="every contender under autocast (fp16 with loss scaling, except pipe's stages: no scaling) "
                        "(default: %(default)s)")
    p.add_argument("--defer-weights", action=argparse.BooleanOptionalAction, default=d.defer_weights,
                   help="raypar's fine actors send dL/du back before computing their weight gradients, in their "
                        "optimizer step, which the driver does not wait for (as train's option) (default: on)")
    p.add_argument("--rounds", type=int, default=d.rounds,
                   help="run the whole line-up this many times, in reverse order every other round; each row is "
                        "its median round, its ratio the median of its per-round ratios (default: %(default)s)")
    p.add_argument("--one-at-a-time", action="store_true",
                   help="run every contender alone, one after the other, DDP in Ray Train's TorchTrainer (by default "
                        "the contenders take turns, one step each, so their ratios are measured at the same moments, "
                        "and DDP runs in the benchmark's own Ray actors)")
    p.add_argument("--all-together", action="store_true",
                   help="taking turns, every contender's processes up at once and each contender's step in turn (as "
                        "before 2026-11-27); by default each contender takes turns with the original only, pair after "
                        "pair, since idle processes slow the contenders of several processes more than the original")
    p.add_argument("--seed", type=int, default=d.seed, help="(default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="SGD learning rate (default: %(default)s)")
    p.add_argument("--out", default="bench_out", help="folder for bench.json and bench.png (default: %(default)s)")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                   help="log an MLflow run here; none: no MLflow run (default: $MLFLOW_TRACKING_URI, and no run "
                        "where it is unset)")
    p.add_argument("--experiment", default="raypar-bench", help="MLflow experiment (default: %(default)s)")


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, got {text!r}") from None


def config_from_args(args) -> BenchConfig:
    from ..network.balance import parse_balance
    cfg = BenchConfig(args.model, args.width_mult, args.image_size, args.in_channels, args.num_classes, args.batch,
                      args.warmup, args.steps, _ints(args.subnets, "--subnets"), args.microbatches,
                      parse_balance(args.balance, tune=True), contenders_of(args),
                      args.seed, args.lr, args.device,
                      [t.strip() for t in args.transports.split(",") if t.strip()], args.coarse_kernel,
                      args.channels_last, args.amp, args.coarse_downsample, args.rounds, not args.one_at_a_time,
                      args.defer_weights, not args.all_together)
    return cfg.validate()


def contenders_of(args) -> list[str]:
    """``--contenders``, or the default line-up for ``--device`` (on GPUs without the contenders that need CPUs)."""
    if args.contenders is None:
        return [c for c in DEFAULT_CONTENDERS if args.device == "cpu" or c not in CPU_ONLY]
    return [c.strip() for c in args.contenders.split(",") if c.strip()]


def tracking_uri_of(args) -> str | None:
    """``--tracking-uri``: None for no MLflow run (left out with $MLFLOW_TRACKING_URI unset, or ``none``)."""
    uri = (args.tracking_uri or "").strip()
    return None if uri.lower() in ("", "none") else uri


def cmd_bench(args) -> int:
    run_bench(config_from_args(args), args.out, tracking_uri_of(args), args.experiment)
    print(f"raypar: bench written to {os.path.join(args.out, 'bench.json')} and bench.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m raypar.tools.bench [options]``: the same as ``raypar bench``."""
    import argparse
    p = argparse.ArgumentParser(prog="python -m raypar.tools.bench", description=__doc__.splitlines()[0])
    add_arguments(p)
    try:
        return cmd_bench(p.parse_args(argv))
    except UserError as e:
        print(f"raypar: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
