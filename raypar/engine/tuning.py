"""Choose the split by measuring it: run the engine with several candidate splits on the same batches and keep the
fastest (``--balance tune``; ``raypar tune`` prints it).

A profile balances the fine segments by their cost measured one block at a time, alone. The engine's real step
depends on more: the driver's own work (pre, the coarse networks, post, and with ``--driver-segment`` F_1), which
overlaps some of the actors' work and not the rest, each block's forward and backward falling into different
windows, the transfers, and how much the processes slow each other down on shared cores, so the profile's split is
not always the fastest (benchmarks/throughput/README.md). Tuning measures instead of modelling.

Candidates: the profile's split and every split one block boundary away from it by up to ``radius`` blocks. Every
candidate gets its own engine (on a deep copy of the network: tuning trains nothing the run keeps). On CPUs the
engines take turns, one step each, so that a shared machine's drift falls on all of them alike; their actors reserve
a sliver of a Ray CPU, so that all are up at once — in groups of at most :data:`MAX_ACTORS` actors (at least two
candidates), the profile's split in every group. With GPUs each candidate runs alone with the run's resources, one
after the other, twice (the second time in reverse order). A candidate's time is the median of its timed steps, and
it is ranked by the profile's split's time over its own, measured side by side (the same group). The candidates'
driver runs in a Ray worker, so that it has the same OS priority as the actors (Ray lowers every worker's to nice
15; a driver at nice 0 would win every contest for a core and skew the choice): in the caller's process where that
is one already (a Ray Train worker, with ``--balance tune``), else in an actor of its own.
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass, replace

import torch

from ..network.specs import CoarseSpec
from ..errors import UserError
from .specs import OptimConfig


@dataclass
class Trial:
    split: list[int]
    step_ms: float = float("nan")         # median step time over the timed steps
    driver_ms: float = float("nan")       # the driver's own compute (median)
    wait_ms: float = float("nan")         # the driver waiting for its actors (median)
    fine_ms: tuple = ()                   # each fine process's compute (medians; F_1 in the driver: its forward)
    vs_profiled: float = float("nan")     # the profile's split's step / this one's, measured side by side (> 1: faster)
    profiled: bool = False                # the profile's own split
    error: str = ""


_clock = time.perf_counter   # (a test's stand-in engines bring their own)
MAX_ACTORS = 16        # on CPUs at most this many candidates' actors are up at once (~0.7 GB each); more in groups


def _median_wall(samples: list) -> float:
    return statistics.median([w for w, _ in samples])


def candidates(base: list[int], radius: int = 2) -> list[list[int]]:
    """``base`` first, then every split that moves one boundary of ``base`` by 1..``radius`` blocks (each segment
    keeps at least one block)."""
    out = [list(base)]
    bounds = [sum(base[:i + 1]) for i in range(len(base) - 1)]
    total = sum(base)
    for i in range(len(bounds)):
        for d in [d for r in range(1, radius + 1) for d in (-r, r)]:
            b = list(bounds)
            b[i] += d
            edges = [0, *b, total]
            split = [edges[j + 1] - edges[j] for j in range(len(edges) - 1)]
            if min(split) >= 1 and split not in out:
                out.append(split)
    return out


def check_effort(warmup: int, steps: int, radius: int) -> None:
    if warmup < 0 or steps < 1 or radius < 0:
        raise UserError(f"tuning needs warm-up >= 0, steps >= 1 and radius >= 0, got {warmup}, {steps}, {radius}")


def tune_split(staged, n: int, *, iterations: int = 1, coarse: CoarseSpec | None = None,
               driver_segment: bool = False, input_shape: tuple, num_classes: int, batch: int, optim: OptimConfig,
               resources=None, radius: int = 3, warmup: int = 2, steps: int = 6, seed: int = 0,
               log=lambda msg: None, max_actors: int = MAX_ACTORS) -> tuple[list[int], list[Trial]]:
    """Measure the candidate splits of ``staged`` into ``n`` segments on the engine and return (the fastest split, every
    trial, in candidate order). Needs a running Ray. ``staged`` itself is left untouched."""
    import ray

    from .driver import Resources
    from ..network.reference import PararealNet
    if n < 2:
        return [len(staged.blocks)], []
    check_effort(warmup, steps, radius)
    # the candidates run side by side, each with placement groups of its own: none takes the run's group name
    resources = replace(resources or Resources(), driver_segment=driver_segment, batch=batch, group_name="")
    with torch.random.fork_rng(devices=[]):    # coarse networks from the seed; the caller's RNG untouched
        torch.manual_seed(seed)
        base = PararealNet(copy.deepcopy(staged), n, iterations, coarse, "time", input_shape, profile_batch=batch,
                           driver_segment=driver_segment, defer_weights=resources.defer_weights,
                           profile_device=resources.device, channels_last=resources.channels_last).split
        splits = candidates(base, radius)
        log(f"tuning the split of N = {n}{' (F_1 in the driver)' if driver_segment else ''}: {len(splits)} "
            f"candidates around the profile's {base}, {warmup} + {steps} steps each")
        nets = [PararealNet(copy.deepcopy(staged), n, iterations, coarse, s, input_shape, profile_batch=batch,
                            driver_segment=driver_segment, profile_device=resources.device) for s in splits]
    gen = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(batch, *input_shape, generator=gen), torch.randint(0, num_classes, (batch,), generator=gen))
               for _ in range(warmup + steps)]
    gpu = resources.gpus_per_subnet > 0
    if ray.get_runtime_context().get_actor_id() is not None:       # a Ray worker already (a Ray Train driver)
        trials = _TuneDriver().run(nets, optim, resources, seed, batches, warmup, gpu, max_actors)
    else:
        driver = ray.remote(num_cpus=0, num_gpus=(resources.gpus_per_subnet if gpu else 0))(_TuneDriver).remote(1)
        try:
            trials = ray.get(driver.run.remote(nets, optim, resources, seed, batches, warmup, gpu, max_actors))
        finally:
            ray.kill(driver)
    for t, s in zip(trials, splits):
        t.profiled = s == base
    ok = [t for t in trials if not t.error and t.vs_profiled == t.vs_profiled]      # (not NaN)
    if trials[0].error or not ok:
        raise UserError(f"the profile's split {base} could not be measured: {trials[0].error or 'no steps'}")
    best = max(ok, key=lambda t: t.vs_profiled)
    log(f"fastest split {best.split}: {best.step_ms:.1f} ms per step, {best.vs_profiled:.2f}x the profile's {base}")
    return best.split, trials


class _TuneDriver:
    """The candidates' drivers, in one process (a Ray worker: at the actors' OS priority)."""

    def __init__(self, threads: int | None = None):
        if threads:                               # an actor of its own: one thread, as every fine actor computes
            torch.set_num_threads(threads)

    def run(self, nets, optim, resources, seed, batches, warmup, gpu, max_actors: int = MAX_ACTORS) -> list[Trial]:
        """Every candidate's trial; ``nets[0]`` is the profile's split, the reference of ``vs_profiled``."""
        from .driver import TURN_CPUS
        trials = [Trial(list(net.split)) for net in nets]
        samples: list[list] = [[] for _ in nets]          # (wall seconds, StepStats) of the timed steps
        ratios: dict = {}
        if gpu:                                   # alone, one after the other, twice (the second time reversed)
            order = list(range(len(nets)))
            for i in order + order[::-1]:
                if trials[i].error or trials[0].error:   # a failed candidate is not tried again; without the
                    continue                             # profile's split there is nothing to compare with
                engine = self._start(nets[i], optim, resources, seed, trials[i])
                if engine is not None:
                    try:
                        self._steps([engine], [i], batches, warmup, [samples[i]], trials)
                    finally:
                        engine.shutdown()
            if samples[0] and not trials[0].error:
                base = _median_wall(samples[0])
                ratios = {i: base / _median_wall(ts) for i, ts in enumerate(samples) if ts and not trials[i].error}
        else:                                     # taking turns step by step, in groups that all fit at once
            sliver = replace(resources, cpus_per_subnet=TURN_CPUS)
            per_engine = max(1, len(nets[0].split) - int(resources.driver_segment))
            size = max(2, max_actors // per_engine)
            rest = list(range(1, len(nets)))
            for g in range(0, max(1, len(rest)), size - 1):
                group = [0] + rest[g:g + size - 1]       # the profile's split in every group: the reference
                got: list[list] = [[] for _ in group]
                engines = self._start_all([nets[i] for i in group], optim, sliver, seed, [trials[i] for i in group])
                try:
                    self._steps(engines, group, batches, warmup, got, trials)
                finally:
                    for engine in engines:
                        if engine is not None:
                            engine.shutdown()
                if not got[0] or trials[0].error:
                    break
                base = _median_wall(got[0])
                for i, ts in zip(group, got):
                    if ts and not trials[i].error and (i != 0 or not samples[0]):
                        samples[i] = ts
                        ratios[i] = base / _median_wall(ts)
        for i, (t, ts) in enumerate(zip(trials, samples)):
            if ts and not t.error:
                t.step_ms = 1e3 * _median_wall(ts)
                t.driver_ms = 1e3 * statistics.median([s.driver for _, s in ts])
                t.wait_ms = 1e3 * statistics.median([s.wait for _, s in ts])
                t.fine_ms = tuple(1e3 * statistics.median(v) for v in zip(*[s.fine_each for _, s in ts]))
                t.vs_profiled = ratios.get(i, float("nan"))
        return trials

    def _start_all(self, nets, optim, resources, seed, trials) -> list:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(len(nets)) as pool:                # their actors start at once
            return list(pool.map(lambda a: self._start(a[0], optim, resources, seed, a[1]), zip(nets, trials)))

    def _steps(self, engines, index, batches, warmup, out, trials) -> None:
        """Every batch, each engine one step in turn; the timed steps go to ``out`` (one list per engine). Taking
        turns, each timed step comes right after an untimed one on the same batch, as a step of a run does (warm
        caches; a deferred engine's actors still computing the weight gradients of the step before), and each turn
        ends when the engine's actors are done: none of its work runs into another's turn."""
        turns = len(engines) > 1
        for j, (x, y) in enumerate(batches):
            for k, (engine, i) in enumerate(zip(engines, index)):
                if engine is None or trials[i].error:
                    continue
                if turns and j >= warmup:
                    self._step(engine, x, y, None, trials[i])
                if not trials[i].error:
                    self._step(engine, x, y, out[k] if j >= warmup else None, trials[i])
                if turns and not trials[i].error:
                    engine.settle()

    @staticmethod
    def _start(net, optim, resources, seed, trial):
        from .driver import PararealEngine
        try:
            return PararealEngine(copy.deepcopy(net), optim, resources, seed=seed)
        except Exception as e:                   # noqa: BLE001 - one candidate that cannot start is a row, not a crash
            trial.error = f"{type(e).__name__}: {e}"
            return None

    @staticmethod
    def _step(engine, x, y, times, trial):
        t0 = _clock()
        try:
            loss, _, stats = engine.train_step(x, y)
        except Exception as e:                   # noqa: BLE001 - a candidate that fails is a row (its engine is shut
            trial.error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"   # down after)
            return
        if times is not None:
            times.append((_clock() - t0, stats))
        if not math.isfinite(loss):
            trial.error = "the loss is not finite"


def as_json(trials: list[Trial]) -> list[dict]:
    """The trials as JSON-ready dicts (an unmeasured number is null, not NaN)."""
    from dataclasses import asdict

    def clean(v):
        return None if isinstance(v, float) and not math.isfinite(v) else v
    return [{k: clean(v) for k, v in asdict(t).items()} for t in trials]
