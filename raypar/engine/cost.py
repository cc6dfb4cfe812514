"""The cost model of a training step: predicted step time and speedup of N = 1..G sub-networks (``raypar plan``,
``raypar bench``'s limits, ``raypar info``'s ideal speedup).

The prediction is Amdahl's law for the parareal structure plus the interface transfers, from the measured cost of
every part (forward + backward + optimizer step, at the planned batch, one thread — one process per device, as
``raypar bench`` runs) and the interface sizes. The split is :class:`~raypar.network.reference.PararealNet`'s own balanced
partition. For N >= 2 sub-networks and K iterations, with every time in seconds (docs/design.md §2, §5)::

    E        = pre + post                                  the driver's edges
    coarse   = C_1 + ... + C_{N-1} (+ C_N if K = 1)        the coarse sweep (z_N is needed only with K = 1),
               +  K (C_2 + ... + C_N)                      then one correction sweep per iteration
    fine     = sum over k = 1..K of max_j F_j              iteration k < K runs F_1..F_{N-1} only (F_N feeds nothing)
    bytes    = sum over k and the remote j run in k of  batch * 2 * (in_j + out_j) * 4 B
                                                           in_j, out_j: numel per sample of F_j's input and output;
                                                           4 tensors: u out, f back, dL/df out, dL/du back
    transfer = bytes / link  +  2 K * latency              every interface tensor goes through the driver's link; per
                                                           iteration one round trip for the forward calls and one for
                                                           the backward calls (all segments' calls go out together;
                                                           the actors' optimizer steps queue behind the last backward)
    critical = E + coarse + fine * slow + transfer
    work     = E + coarse + sum of all F_j runs            compute only
    actor    = max over the remote j of (F_j runs) * slow  each fine actor's whole work per step
    step     = max(critical, work / cap, actor)
    speedup  = step(N = 1) / step(N)                       N = 1: the original network in one process, E + sum F_j

    used     = min(devices, processes)                     processes = N + 1, or N with --driver-segment
    cap      = min(used, capacity)                         what the devices in use are worth together, in units of
                                                           one alone: ``used`` for equal, independent devices (the
                                                           default); on a shared CPU less (``raypar bench`` measures
                                                           it: ``core_speeds.capacity``; ``--capacity``)
    slow     = used / cap  (1 for N = 1)                   how much slower each fine segment runs while they all run

``--defer-weights`` (the default, as in ``raypar train``): a remote F_j's weight gradients and optimizer step (W_j,
measured per block with :mod:`raypar.network.split_backward`) run after it has answered the driver, so in ``fine`` each
remote F_j counts F_j - W_j; it still has to do all of F_j once per step (``actor``). F_1 in the driver defers nothing,
and nothing is deferred where processes > devices (the deferred work would take the cores the others wait on).

``--coarse-in-actors`` (K = 1): interval j's process runs its own copies of pre and C_1..C_j, then F_j::

    each_j   = pre + C_1 + ... + C_j + F_j                 each_1 = pre + F_1
    critical = max_j each_j * slow + (C_2 + ... + C_N) + post + transfer       the correction sweep, then post
    work     = sum_j each_j + (C_2 + ... + C_N) + post     (deferred: each_j - W_j in critical, actor = max each_j)
    bytes    = sum over the remote j of  batch * (sample + 2 out_j) * 4 B      the batch out, d_j back, dL/dd_j out

Each part's cost includes its share of the optimizer step (measured once, per parameter). ``--driver-segment``:
F_1 runs in the driver (N processes instead of N + 1), so it ships nothing, and its work adds to the driver's; the
split is the one PararealNet balances with the driver's work counted in segment 1 (and, with ``--defer-weights``, each
actor's weight gradients off the driver's path: :func:`raypar.network.balance.partition_loaded_first`). The efficiency bound is
speedup / devices in use (min(devices, processes)).

The times are measured on this machine's CPU with one thread: ``--devices`` counts devices, i.e. cores here, one process
each. The default link is :data:`LINK_GBPS` and :data:`CALL_LATENCY_MS`, a local Ray object store driver <-> actor
(``raypar plan --measure-link`` measures this machine's).
"""
from __future__ import annotations

import copy
import itertools
import math
import os
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..errors import UserError
from ..network.parareal import coarse_work
from ..network.specs import MEASURES

# driver <-> actor through a local Ray object store (numpy arrays, as the engine ships them), as
# raypar.tools.plan.measure_link measures it on a small CPU machine
LINK_GBPS = 3.5
CALL_LATENCY_MS = 1.5


# ------------------------------------------------------------------------------------------------ rows
@dataclass
class PlanRow:
    """The prediction for N sub-networks."""
    subnets: int
    split: list[int]               # blocks per segment
    iterations: int                # K (capped at N)
    processes: int                 # 1 for N = 1; N + 1, or N with the driver segment
    devices: int                   # devices in use: min(devices, processes)
    step_ms: float                 # predicted step time
    speedup: float                 # step(N = 1) / step(N)
    efficiency: float              # speedup / devices in use: the best parallel efficiency this N allows
    bytes_per_step: int            # interface bytes through the driver's link per step
    coarse_share: float            # coarse sweeps / step
    critical_ms: float             # pre + coarse + fine + post + transfer
    work_ms: float                 # all compute of the step, every process together
    transfer_ms: float             # bytes / link + round trips * latency
    coarse_ms: float
    fine_max_ms: float             # sum over iterations of the slowest fine segment
    driver_ms: float               # the driver's own compute (pre, coarse, post; + F_1 with the driver segment)
    bound: str                     # "critical path", "devices" or "an actor" (its whole step's work)
    actor_ms: float = 0.0          # the busiest fine actor's work per step (all of it, deferred part too)


@dataclass
class Costs:
    """Measured seconds of every part at ``batch`` (forward + backward on one thread, plus its optimizer step)."""
    batch: int
    pre_s: float
    post_s: float
    blocks_s: list[float]
    opt_s_per_param: float
    threads: int = 1
    deferred_s: list[float] = field(default_factory=list)   # per block: weight gradients + optimizer share
    coarse_s: dict = field(default_factory=dict)       # (n, k, driver_segment, split) -> [C_1 .. C_N] seconds


@dataclass
class Link:
    gbps: float = LINK_GBPS
    latency_ms: float = CALL_LATENCY_MS
    measured: bool = False

    def seconds(self, nbytes: int, round_trips: int) -> float:
        return nbytes * 8 / (self.gbps * 1e9) + round_trips * self.latency_ms * 1e-3


@contextmanager
def num_threads(n: int):
    import torch
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


class Planner:
    """One model measured once; :meth:`row` predicts any N from it. Every PararealNet it builds is kept."""

    def __init__(self, model: str = "vgg16", width_mult: float = 0.25, image_size: int = 32, in_channels: int = 3,
                 num_classes: int = 10, batch: int = 64, coarse_depth: int = 1, coarse_width: float = 1.0,
                 balance: str = "time", threads: int = 1, repeats: int = 5, seed: int = 0, coarse_kernel: int = 3,
                 coarse_downsample: str = "patch", channels_last: bool = False):
        import torch

        from ..network import balance as bal
        from ..network.specs import CoarseSpec
        from ..network.models import build
        if batch < 1 or image_size < 1:
            raise UserError(f"--batch and --image-size must be >= 1, got {batch} and {image_size}")
        if balance not in MEASURES:
            raise UserError(f"--balance must be one of {', '.join(MEASURES)} for a plan over N, got {balance!r}")
        if threads < 1:
            raise UserError(f"threads must be >= 1, got {threads}")
        self.coarse_spec = CoarseSpec(coarse_depth, coarse_width, coarse_kernel, downsample=coarse_downsample)
        torch.manual_seed(seed)
        self.staged = build(model, num_classes, in_channels, width_mult, image_size)
        self.model, self.width_mult, self.balance, self.threads = model, width_mult, balance, threads
        self.channels_last = channels_last      # every part profiled in the layout the run computes in
        self.shape, self.batch = (in_channels, image_size, image_size), batch
        self.num_blocks = len(self.staged.blocks)
        self._nets: dict = {}
        with num_threads(threads):
            x = torch.randn(batch, *self.shape, generator=torch.Generator().manual_seed(seed))
            pre, blocks, post = bal.profile(self.staged, x, "time", repeats, channels_last=channels_last)
            per_param = _optimizer_seconds_per_param(self.staged)
            weights = bal.weight_grad_times(self.staged, x, repeats, channels_last=channels_last)
        self.profiles = (pre, blocks, post)
        self.costs = Costs(batch, pre.cost + per_param * pre.params, post.cost + per_param * post.params,
                           [b.cost + per_param * b.params for b in blocks], per_param, threads,
                           [w + per_param * b.params for w, b in zip(weights, blocks)])

    def net(self, n: int, iterations: int, driver_segment: bool, split: list[int] | None = None,
            defer_weights: bool = True):
        """PararealNet's split for N (built, profiled and balanced by PararealNet itself), kept for reuse;
        ``split``: these block counts instead (e.g. the split a bench run used)."""
        from ..network.reference import PararealNet
        # deferral changes only a time balance with F_1 in the driver: any other net is the same either way
        defer_weights = defer_weights and driver_segment and not split and self.balance == "time"
        key = (n, iterations, driver_segment, tuple(split) if split else None, defer_weights)
        if key not in self._nets:
            with num_threads(self.threads):
                import torch
                torch.manual_seed(0)
                self._nets[key] = PararealNet(copy.deepcopy(self.staged), n, iterations, self.coarse_spec,
                                              list(split) if split else self.balance, self.shape,
                                              profile_batch=self.batch, driver_segment=driver_segment,
                                              defer_weights=defer_weights, channels_last=self.channels_last)
        return self._nets[key]

    def coarse_seconds(self, n: int, iterations: int, driver_segment: bool,
                       split: list[int] | None = None, defer_weights: bool = True) -> list[float]:
        """Measured seconds of C_1..C_N at the batch (+ their optimizer share)."""
        import torch

        from ..network import balance as bal
        net = self.net(n, iterations, driver_segment, split, defer_weights)
        key = (n, iterations, driver_segment, tuple(net.split))         # (measured once per split)
        if key not in self.costs.coarse_s:
            out = []
            with num_threads(self.threads):
                for c, info in zip(net.coarse, net.segment_info):
                    if net.balance_measure == "time":
                        sec = info.coarse_cost            # measured by PararealNet at this batch already
                    else:
                        x = torch.randn(self.batch, *info.in_shape, generator=torch.Generator().manual_seed(0))
                        sec = bal.measure_part(*bal.in_layout(copy.deepcopy(c), x, self.channels_last), "time")[0].cost
                    out.append(sec + self.costs.opt_s_per_param * info.coarse_params)
            self.costs.coarse_s[key] = out
        return self.costs.coarse_s[key]

    def sequential_s(self) -> float:
        c = self.costs
        return c.pre_s + sum(c.blocks_s) + c.post_s

    def row(self, n: int, devices: int, link: Link, iterations: int = 1, driver_segment: bool = False,
            in_process: bool | None = None, split: list[int] | None = None,
            capacity: float | None = None, coarse_in_actors: bool = False, defer_weights: bool = True) -> PlanRow:
        """The prediction for N sub-networks. N = 1 is the original network in one process (``in_process`` False: the
        engine with its one fine actor, for comparison with ``raypar bench``'s raypar-N1-no-driver-segment); ``split``:
        these block counts instead of PararealNet's balanced split; ``capacity``: what the devices together are worth in
        units of one alone (None: as many as there are); ``coarse_in_actors``: K = 1 with each interval computed from
        the batch where its fine segment runs (:meth:`_row_coarse_in_actors`); ``defer_weights``: the fine actors
        compute their weight gradients in their optimizer step, off the critical path (``--defer-weights``, the
        default)."""
        c = self.costs
        k = min(iterations, n)
        if coarse_in_actors and n > 1:
            if k != 1:
                raise UserError(f"--coarse-in-actors needs --iterations 1, got {iterations}")
            return self._row_coarse_in_actors(n, devices, link, driver_segment, split, capacity, defer_weights)
        e = c.pre_s + c.post_s
        seq = self.sequential_s()
        if n == 1:
            split = [self.num_blocks]
            fines, coarse, local = [sum(c.blocks_s)], [], in_process is not False
        else:
            given = split
            split = list(self.net(n, k, driver_segment, given, defer_weights).split)
            bounds = [0, *itertools.accumulate(split)]
            fines = [sum(c.blocks_s[a:b]) for a, b in zip(bounds, bounds[1:])]
            coarse = self.coarse_seconds(n, k, driver_segment, given, defer_weights)
            local = False
        coarse_s = coarse_work(coarse, k)
        first_local = driver_segment and n > 1
        remote = range(0) if local else range(1 if first_local else 0, n)
        processes = 1 if local else (n if first_local else n + 1)
        # deferred weight gradients leave the critical path only where every process has a device of its own: with
        # more processes than devices they take the cores the others wait on
        waited = self._waited(split, fines, remote, defer_weights and processes <= devices)
        nbytes, trips, fine_crit, fine_work = 0, 0, 0.0, 0.0
        runs = [0] * n
        if not local:
            shapes = self._interfaces(split)
            for it in range(1, k + 1):
                run = n if it == k else n - 1                     # before the last iteration F_N is not run
                fine_crit += max(waited[:run])
                fine_work += sum(fines[:run])
                runs = [r + (j < run) for j, r in enumerate(runs)]
                shipped = [j for j in remote if j < run]
                nbytes += sum(self.batch * 2 * (shapes[j][0] + shapes[j][1]) * 4 for j in shipped)
                trips += 2 if shipped else 0                      # forward calls, then backward calls
        transfer = link.seconds(nbytes, trips) if not local else 0.0
        used = max(1, min(devices, processes))
        cap = used if capacity is None else max(1e-9, min(used, capacity))
        slow = used / cap if n > 1 else 1.0                       # the fine segments compute at the same time
        actor = max((runs[j] * fines[j] for j in remote), default=0.0) * slow
        if local:                                                 # the original network: exactly the sequential
            fine_crit, critical = sum(fines), seq
            work = seq
        else:
            fine_crit *= slow
            critical = e + coarse_s + fine_crit + transfer
            work = e + coarse_s + fine_work
        step = max(critical, work / cap, actor)
        driver = e + coarse_s + (k * fines[0] if first_local else 0.0) if not local else seq
        speedup = seq / step
        return PlanRow(n, split, k if n > 1 else 1, processes, used, 1e3 * step, speedup, speedup / used, nbytes,
                       coarse_s / step, 1e3 * critical, 1e3 * work, 1e3 * transfer, 1e3 * coarse_s, 1e3 * fine_crit,
                       1e3 * driver, _bound(critical, work / cap, actor), 1e3 * actor)

    def _waited(self, split: list[int], fines: list[float], remote, defer_weights: bool) -> list[float]:
        """Per segment, the part of its work the driver waits for: all of it, or with deferred weight gradients a
        remote segment's forward and input gradient only (its weight gradients and optimizer step come later)."""
        if not defer_weights:
            return list(fines)
        bounds = [0, *itertools.accumulate(split)]
        later = [sum(self.costs.deferred_s[a:b]) for a, b in zip(bounds, bounds[1:])]
        return [f - min(later[j], f) if j in remote else f for j, f in enumerate(fines)]     # timed apart: noisy

    def _row_coarse_in_actors(self, n: int, devices: int, link: Link, driver_segment: bool,
                              given: list[int] | None, capacity: float | None, defer_weights: bool = True) -> PlanRow:
        """``--coarse-in-actors`` (K = 1, N >= 2): interval j's process runs pre, C_1..C_j and F_j (F_1's: pre and
        F_1), all at once; then the driver's correction sweep C_2..C_N and post. Per remote interval the batch goes out,
        d_j comes back and its gradient goes out: batch * (sample + 2 out_j) * 4 B, in two round trips."""
        c = self.costs
        split = list(self.net(n, 1, driver_segment, given, defer_weights).split)
        bounds = [0, *itertools.accumulate(split)]
        fines = [sum(c.blocks_s[a:b]) for a, b in zip(bounds, bounds[1:])]
        coarse = self.coarse_seconds(n, 1, driver_segment, given, defer_weights)
        heads = [c.pre_s + (sum(coarse[:j + 1]) if j else 0.0) for j in range(n)]
        each = [h + f for h, f in zip(heads, fines)]
        correction = sum(coarse[1:])
        shapes = self._interfaces(split)
        remote = range(1 if driver_segment else 0, n)
        nbytes = sum(self.batch * 4 * (math.prod(self.shape) + 2 * shapes[j][1]) for j in remote)
        transfer = link.seconds(nbytes, 2)
        processes = n if driver_segment else n + 1
        used = max(1, min(devices, processes))
        cap = used if capacity is None else max(1e-9, min(used, capacity))
        fines_waited = self._waited(split, fines, remote, defer_weights and processes <= devices)
        waited = [h + f for h, f in zip(heads, fines_waited)]
        fine_crit = max(waited) * used / cap
        actor = max((each[j] for j in remote), default=0.0) * used / cap
        critical = fine_crit + correction + c.post_s + transfer
        work = sum(each) + correction + c.post_s
        step = max(critical, work / cap, actor)
        coarse_s = sum(h - c.pre_s for h in heads) + correction
        driver = correction + c.post_s + (each[0] if driver_segment else 0.0)
        speedup = self.sequential_s() / step
        return PlanRow(n, split, 1, processes, used, 1e3 * step, speedup, speedup / used, nbytes, coarse_s / step,
                       1e3 * critical, 1e3 * work, 1e3 * transfer, 1e3 * coarse_s, 1e3 * fine_crit, 1e3 * driver,
                       _bound(critical, work / cap, actor), 1e3 * actor)

    def _interfaces(self, split: list[int]) -> list[tuple[int, int]]:
        """numel per sample of every segment's input and output."""
        _, blocks, _ = self.profiles
        out, start = [], 0
        for count in split:
            out.append((math.prod(blocks[start].in_shape), math.prod(blocks[start + count - 1].out_shape)))
            start += count
        return out


def _bound(critical: float, devices: float, actor: float) -> str:
    """What sets the step: the critical path, the work spread over the devices, or one actor's whole work."""
    return max((critical, "critical path"), (devices, "devices"), (actor, "an actor"), key=lambda t: t[0])[1]


def _optimizer_seconds_per_param(staged) -> float:
    """The optimizer step (raypar's SGD with momentum and weight decay) of the whole model, per parameter."""
    import torch

    from ..engine.optim import make_optimizer
    from ..engine.specs import OptimConfig
    model = copy.deepcopy(staged)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = make_optimizer(params, OptimConfig())[0]
    times = []
    for i in range(6):
        t0 = time.perf_counter()
        opt.step()
        if i:                                          # the first step creates the momentum buffers
            times.append(time.perf_counter() - t0)
    return statistics.median(times) / max(1, sum(p.numel() for p in params))


# -------------------------------------------------------------------------------------------- predict
def check_inputs(devices: int, link_gbps: float | None, latency_ms: float | None, iterations: int,
                 capacity: float | None = None) -> None:
    if capacity is not None and not (capacity >= 1 and math.isfinite(capacity)):
        raise UserError(f"--capacity must be >= 1 (devices' worth, in units of one alone), got {capacity}")
    if not isinstance(devices, int) or devices < 1:
        raise UserError(f"--devices must be >= 1, got {devices}")
    if link_gbps is not None and not (link_gbps > 0 and math.isfinite(link_gbps)):
        raise UserError(f"--link-gbps must be a positive number of Gbit/s, got {link_gbps}")
    if latency_ms is not None and not (latency_ms >= 0 and math.isfinite(latency_ms)):
        raise UserError(f"--latency-ms must be >= 0, got {latency_ms}")
    if not isinstance(iterations, int) or iterations < 1:
        raise UserError(f"--iterations K must be >= 1, got {iterations}")


def predict(model: str = "vgg16", *, width_mult: float = 0.25, devices: int = 2, link_gbps: float | None = None,
            latency_ms: float | None = None, batch: int = 64, image_size: int = 32, in_channels: int = 3,
            num_classes: int = 10, iterations: int = 1, coarse_depth: int = 1, coarse_width: float = 1.0,
            driver_segment: bool = False, balance: str = "time", planner: Planner | None = None,
            coarse_kernel: int = 3, coarse_downsample: str = "patch", capacity: float | None = None,
            coarse_in_actors: bool = False, defer_weights: bool = True, channels_last: bool = False) -> list[PlanRow]:
    """One :class:`PlanRow` per N = 1..min(devices, blocks). ``planner``: reuse the measurements of an earlier call
    (its model options win over the ones given here); the link defaults to :data:`LINK_GBPS`,
    :data:`CALL_LATENCY_MS`; ``capacity``: what the devices together are worth (see :meth:`Planner.row`)."""
    check_inputs(devices, link_gbps, latency_ms, iterations, capacity)
    planner = planner or Planner(model, width_mult, image_size, in_channels, num_classes, batch, coarse_depth,
                                 coarse_width, balance, coarse_kernel=coarse_kernel,
                                 coarse_downsample=coarse_downsample, channels_last=channels_last)
    link = Link(LINK_GBPS if link_gbps is None else link_gbps, CALL_LATENCY_MS if latency_ms is None else latency_ms)
    if coarse_in_actors and iterations != 1:
        raise UserError(f"--coarse-in-actors needs --iterations 1, got {iterations}")
    return [planner.row(n, devices, link, iterations, driver_segment, capacity=capacity,
                        coarse_in_actors=coarse_in_actors, defer_weights=defer_weights)
            for n in range(1, min(devices, planner.num_blocks) + 1)]


def cpu_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parallel_limit(net, cores: int, coarse_in_actors: bool = False) -> float:
    """The best speedup over the sequential network that ``net``'s split allows on ``cores`` cores, from its profile
    (uncontended forward+backward cost of every part): sequential / max(critical path, total work / cores).

    The critical path is pre + coarse sweeps + max fine + post (:meth:`PararealNet.ideal_speedup`); with
    ``coarse_in_actors`` (K = 1, ``--coarse-in-actors``) it is the longest of the intervals' own paths (interval 1's
    process runs pre and F_1; interval j >= 2's pre, C_1..C_j and F_j) + the correction sweep C_2..C_N + post, and
    every process's copy of pre and of the coarse networks counts in the work.

    Raises:
        UserError: ``coarse_in_actors`` with K > 1 and N > 1.
    """
    info, k = net.segment_info, net.iterations
    pre, post = net.pre_profile.cost, net.post_profile.cost
    fine = [s.cost for s in info]
    seq = pre + post + sum(fine)
    if coarse_in_actors and len(info) > 1:
        if k != 1:
            raise UserError(f"--coarse-in-actors needs --iterations 1, got {k}")
        coarse = [s.coarse_cost for s in info]
        each = [pre + (sum(coarse[:j + 1]) if j else 0.0) + f for j, f in enumerate(fine)]
        correction = sum(coarse[1:])
        return min(seq / (max(each) + correction + post), cores * seq / (sum(each) + correction + post))
    coarse = coarse_work([s.coarse_cost for s in info], k)
    return min(net.ideal_speedup(), cores * seq / (pre + post + coarse + k * sum(fine)))
