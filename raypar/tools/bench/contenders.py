"""The contenders: what each one starts and runs (the original and the parareal network in one process, raypar's
engine, DDP, a GPipe pipeline), as :class:`Contender` entries that :func:`plan` lists in table order for the
schedule (:mod:`.schedule`) to run."""
from __future__ import annotations

import socket
import tempfile
from dataclasses import dataclass
from typing import Callable

from torch import nn

from ...engine.auto import choose_coarse_in_actors
from ...network.specs import TUNE
from ...network.reference import PararealNet
from .config import CONTENDERS, ENGINES, BenchConfig
from .rows import engine_processes, local_row, pipe_row, ranks_row, raypar_row
from .runner import ddp_loop
from .workload import _engine_net, _model, _net


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


def run_local(runner, model: nn.Module, cfg: BenchConfig) -> dict:
    import ray
    return local_row(ray.get(runner.local.remote(model, cfg)), model)


def run_raypar(runner, net: PararealNet, cfg: BenchConfig, driver_segment: bool = False,
               transport: str = "object-store", coarse_in_actors: bool = False) -> dict:
    import ray
    out = ray.get(runner.raypar.remote(net, cfg, driver_segment, transport, coarse_in_actors))
    return raypar_row(out, net, cfg, driver_segment, coarse_in_actors)


def _check_ddp_batch(cfg: BenchConfig, workers: int) -> None:
    if cfg.batch % workers:
        raise ValueError(f"batch {cfg.batch} does not split into {workers} equal worker batches")


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


def plan(cfg: BenchConfig, log=print) -> list[Contender]:
    """The contenders asked for, in table order. The networks are built (and a measured-time split profiled, or with
    ``--balance tune`` the raypar contenders' splits measured on the engine) first, while nothing else runs, and
    shared: raypar-N, parareal-1proc and pipe use the same split (tuning: parareal-1proc and pipe the time
    balance's)."""
    big, want = max(cfg.subnets), set(cfg.contenders)
    tune = cfg.balance == TUNE
    sizes = ({big} if want & {"parareal-1proc", "pipe"} else set()) | (
        set(cfg.subnets) if want & {"raypar-no-driver-segment", "raypar-no-driver-segment-coarse-in-actors"}
        and not tune else set())
    nets = {n: _net(cfg, n) for n in sorted(sizes)}
    engine_nets = {}                             # (contender, n) -> its network, and where its coarse sweep runs
    for name, (driver_segment, coarse_in_actors) in ENGINES.items():
        for n in (cfg.subnets if name in want else []):
            if driver_segment and n < 2:             # (N = 1 with F_1 in the driver is the original network)
                continue
            net = (_engine_net(cfg, n, driver_segment, log, bool(coarse_in_actors))
                   if tune or driver_segment else nets[n])
            in_actors = (choose_coarse_in_actors(net, driver_segment, cfg.gpu_share) if coarse_in_actors is None
                         else coarse_in_actors)                       # (None: as raypar train places it)
            engine_nets[name, n] = net, in_actors
    orig = _model(cfg)

    def local(name, model):
        return Contender(name, 1, lambda rs: run_local(rs[0], model, cfg),
                         start=lambda rs: [rs[0].start_local.remote(model, cfg)],
                         post=lambda outs: local_row(outs[0], model))

    def engines(name, driver_segment):
        return [engine(engine_label(name, n, t), *engine_nets[name, n], driver_segment, t)
                for t in cfg.transports for n in cfg.subnets if (name, n) in engine_nets]

    def engine(name, net, coarse_in_actors, driver_segment, t):
        return Contender(name, 1, lambda rs: run_raypar(rs[0], net, cfg, driver_segment, t, coarse_in_actors),
                         start=lambda rs: [rs[0].start_raypar.remote(net, cfg, driver_segment, t, True,
                                                                     coarse_in_actors)],
                         post=lambda outs: raypar_row(outs[0], net, cfg, driver_segment, coarse_in_actors),
                         processes=engine_processes(net, driver_segment))

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
             **{name: engines(name, driver_segment) for name, (driver_segment, _) in ENGINES.items()},
             "ddp": [ddp()] if "ddp" in want else [],
             "pipe": [pipe()] if "pipe" in want else []}
    return [c for name in CONTENDERS if name in want for c in table[name]]


def engine_label(contender: str, n: int, transport: str) -> str:
    """A raypar contender's row: raypar-N{n}, then the contender's flags (``-no-driver-segment``,
    ``-coarse-in-actors``), then the transport unless it is train's default (auto)."""
    return f"raypar-N{n}{contender[len('raypar'):]}{'' if transport == 'auto' else f'-{transport}'}"
