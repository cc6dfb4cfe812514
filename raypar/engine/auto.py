"""The predicted speedup of a run over the original network, and ``--subnets auto``: the N that the prediction says
is fastest (docs/design.md §5).

The prediction is :func:`raypar.engine.cost.parallel_limit` (the bound ``raypar info``'s ideal speedup gives, and
no more than the devices in use allow) from a network's profile. Below :data:`THRESHOLD` a parareal network is not
worth its processes: ``--subnets auto`` then picks N = 1, the original network. The same prediction, for the coarse
sweep in the driver and in the fine actors, places it where ``--coarse-in-actors`` is left unset
(:func:`choose_coarse_in_actors`).
"""
from __future__ import annotations

import itertools

AUTO = "auto"            # the word --subnets takes for "pick N from the prediction"
THRESHOLD = 1.1          # below this predicted speedup, a parareal network does not pay for its processes
# the coarse sweep moves into the fine actors (``--coarse-in-actors`` unset) only where the split leaves the driver's
# path (pre, the coarse sweeps, F_1, post) this much longer than any actor's fine segment, and that predicts a step at
# least COARSE_IN_ACTORS_GAIN faster: where both paths are about even, the copies of pre and the coarse networks
# the actors then run cost more than the prediction charges (docs/performance.md, on --coarse-in-actors)
DRIVER_OVERLOAD = 1.2
COARSE_IN_ACTORS_GAIN = 1.05

ADVICE = (f"below {THRESHOLD:g}x: the original network (--subnets 1) or fewer sub-networks will be as fast; "
          f"to use more devices, add --replicas")


def pick_subnets(predictions: dict[int, float], threshold: float = THRESHOLD) -> int:
    """The N to train from the predicted speedup of every candidate N.

    Args:
        predictions: N -> predicted speedup over the original network (N = 1 may be left out: it is 1).
        threshold: the least speedup an N >= 2 must reach.
    Returns:
        The N >= 2 with the highest prediction (the smallest such N on a tie) if that prediction reaches
        ``threshold``, else 1.
    """
    best = max(((s, -n) for n, s in predictions.items() if n >= 2), default=None)
    return -best[1] if best is not None and best[0] >= threshold else 1


def devices_in_use(subnets: int, driver_segment: bool, gpus: float, available: int | None = None) -> int:
    """The devices a run of N sub-networks computes on: its processes (N, or N + 1 without the driver segment; 1 for
    N = 1) on CPUs, at most ``available`` cores; with ``gpus`` GPUs per process, the GPUs they hold together (at
    most ``available`` when given)."""
    processes = 1 if subnets == 1 else subnets + (0 if driver_segment else 1)
    used = max(1, int(processes * min(gpus, 1.0) + 1e-9)) if gpus > 0 else processes
    return max(1, min(used, available)) if available is not None else used


def predicted_speedup(net, devices: int, coarse_in_actors: bool = False) -> float:
    """The speedup over the original network that ``net`` (a profiled
    :class:`~raypar.network.reference.PararealNet`, or a :class:`ProfiledSplit`) predicts on ``devices`` devices, with
    the coarse sweep in the driver or (``coarse_in_actors``, K = 1) in the fine actors:
    :func:`~raypar.engine.cost.parallel_limit`; 1 for N = 1."""
    from .cost import parallel_limit
    return 1.0 if net.num_subnets == 1 else parallel_limit(net, devices, coarse_in_actors)


def prediction_lines(speedup: float, subnets: int, iterations: int, devices: int, gpus: float,
                     measure: str, coarse_in_actors: bool = False) -> list[str]:
    """The start-of-run line for a predicted ``speedup`` (``measure``: the profile's unit, ``time``, ``flops`` or
    ``params``; ``coarse_in_actors``: where the coarse sweep runs), then :data:`ADVICE` when it is below
    :data:`THRESHOLD`."""
    unit = ("GPU" if gpus > 0 else "core") + ("s" if devices != 1 else "")
    where = ", the coarse sweep in the actors" if coarse_in_actors else ""
    lines = [f"predicted speedup {speedup:.2f}x over the original network (N = {subnets}, K = {iterations}, "
             f"{devices} {unit}, {measure} profile{where})"]
    if speedup < THRESHOLD:
        lines.append(ADVICE)
    return lines


def _run_devices(net, driver_segment: bool, gpus: float) -> int:
    """The devices a run of ``net`` computes on: its processes, on CPUs at most this machine's cores."""
    from .cost import cpu_cores
    return devices_in_use(net.num_subnets, driver_segment, gpus, None if gpus else cpu_cores())


def choose_coarse_in_actors(net, driver_segment: bool, gpus: float, devices: int | None = None) -> bool:
    """Where a run of ``net`` (profiled) that leaves ``--coarse-in-actors`` unset runs the coarse sweep: in the fine
    actors (True) where K = 1, F_1 runs in the driver, the profile is a time profile (a split given as block counts
    is profiled by FLOPs, which this rule is not calibrated for), the driver's path (pre, both coarse sweeps, F_1,
    post) is at least :data:`DRIVER_OVERLOAD` times the longest actor's fine segment, and the coarse sweep in the
    actors predicts a speedup at least :data:`COARSE_IN_ACTORS_GAIN` times the driver's; else in the driver
    (False). ``devices``: the devices the run computes on (default: its processes, on CPUs at most this machine's
    cores)."""
    from ..network.parareal import coarse_work
    if (not driver_segment or net.num_subnets == 1 or net.iterations != 1
            or net.balance_measure != "time"):
        return False
    info = net.segment_info
    driver = (net.pre_profile.cost + net.post_profile.cost + coarse_work([s.coarse_cost for s in info], 1)
              + info[0].cost)
    if driver < DRIVER_OVERLOAD * max(s.cost for s in info[1:]):
        return False
    used = devices if devices is not None else _run_devices(net, driver_segment, gpus)
    return predicted_speedup(net, used, True) >= COARSE_IN_ACTORS_GAIN * predicted_speedup(net, used, False)


def run_prediction(net, driver_segment: bool, gpus: float, coarse_in_actors: bool = False) -> tuple[float, list[str]]:
    """The start-of-run prediction of a run's network ``net`` (profiled, N >= 2) in this process: its predicted
    speedup on the devices it uses (its processes; on CPUs at most this machine's cores,
    :func:`~raypar.engine.cost.cpu_cores`) with the coarse sweep where ``coarse_in_actors`` says, and the lines that
    say it (:func:`prediction_lines`)."""
    used = _run_devices(net, driver_segment, gpus)
    predicted = predicted_speedup(net, used, coarse_in_actors)
    return predicted, prediction_lines(predicted, net.num_subnets, net.iterations, used, gpus, net.balance_measure,
                                       coarse_in_actors)


class ProfiledSplit:
    """What :func:`~raypar.engine.cost.parallel_limit` reads of a :class:`~raypar.network.reference.PararealNet`
    (``num_subnets``, ``iterations``, ``split``, ``pre_profile``, ``post_profile``, ``segment_info`` and
    ``ideal_speedup()``, the network's own), for a split made from a profile shared by every N, without building
    and profiling a network per N."""

    def __init__(self, split: list[int], iterations: int, pre_profile, post_profile, segment_info: list,
                 balance_measure: str = "time"):
        self.num_subnets, self.iterations, self.split = len(split), iterations, list(split)
        self.balance_measure = balance_measure
        self.pre_profile, self.post_profile, self.segment_info = pre_profile, post_profile, segment_info

    def ideal_speedup(self) -> float:
        from ..network.reference import PararealNet
        return PararealNet.ideal_speedup(self)


def predict_subnets(staged, input_shape: tuple, batch: int, candidates, *, iterations: int = 1, coarse=None,
                    balance: str = "time", driver_segment: bool = True, defer_weights: bool = True,
                    channels_last: bool = False, device: str = "cpu", devices_of=None,
                    seed: int = 0, coarse_in_actors: bool | None = None) -> dict[int, float]:
    """The predicted speedup of every candidate N, from one time profile of ``staged`` at ``batch``.

    Each N gets the split PararealNet would make with ``balance`` (``time``, ``flops`` or ``params``; ``tune`` starts
    from the time split) and ``driver_segment`` / ``defer_weights``, and :func:`predicted_speedup` of that split
    with the measured times and the coarse sweep where ``coarse_in_actors`` says (None: where a run would put it,
    :func:`choose_coarse_in_actors`, which decides on time profiles only: with another ``balance``, in the driver).

    Args:
        staged: the model (a :class:`~raypar.network.models.StagedModel`; left untouched).
        input_shape: one sample's shape (C, H, W).
        candidates: the N to predict; N = 1 is 1, and every N > 1 needs ``iterations <= N <= blocks``.
        coarse: the coarse networks' :class:`~raypar.network.coarse.CoarseSpec` (default: its defaults).
        device: where the profile runs (the device the run computes on).
        devices_of: N -> the devices that N computes on (default: N).
    Returns:
        N -> predicted speedup, for every candidate.
    Raises:
        UserError: a candidate that does not fit the model's blocks, or a K above it.
    """
    import torch

    from ..network import balance as bal
    from ..network.specs import MEASURES, CoarseSpec
    from ..network.parareal import coarse_work
    from ..network.reference import PararealNet, SegmentInfo
    from ..errors import UserError
    coarse = coarse or CoarseSpec()
    devices_of = devices_of or (lambda n: n)
    candidates = sorted(set(candidates))
    blocks = len(staged.blocks)
    for n in candidates:
        if n > 1:
            bal.check_num_subnets(n, blocks)
            if iterations > n:
                raise UserError(f"iterations K = {iterations} is more than the candidate N = {n}")
    out = {n: 1.0 for n in candidates if n == 1}
    many = [n for n in candidates if n > 1]
    if not many:
        return out
    measure = balance if balance in MEASURES else "time"
    where = torch.device(device)
    sample = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(seed)).to(where)
    deferring = driver_segment and defer_weights and measure == "time"
    pre_p, block_p, post_p = bal.profile(staged, sample, "time", channels_last=channels_last,
                                         count_flops=measure == "flops", weight_grads=deferring)

    def unit(p, m):
        return {"time": p.cost, "flops": p.flops, "params": p.params}[m]
    # the balance's costs (PararealNet's split), and the coarse networks' seconds (the prediction's)
    coarse_s = PararealNet._coarse_cost_of(block_p, "time", batch, coarse, where, channels_last)
    coarse_m = (coarse_s if measure == "time" else
                PararealNet._coarse_cost_of(block_p, measure, batch, coarse, where, channels_last))
    deferred = [p.weight_grad for p in block_p] if deferring else None
    costs = [unit(p, measure) for p in block_p]
    for n in many:
        if driver_segment:
            def driver_work(split, k=iterations):
                bounds = list(itertools.accumulate(split, initial=0))
                return (unit(pre_p, measure) + unit(post_p, measure)
                        + coarse_work([coarse_m(a, b) for a, b in zip(bounds, bounds[1:])], k))
            split = bal.partition_loaded_first(costs, n, driver_work, deferred=deferred)
        else:
            split = bal.partition(costs, n)
        bounds = list(itertools.accumulate(split, initial=0))
        info = [SegmentInfo(j + 1, (a, b), sum(p.params for p in block_p[a:b]), sum(p.cost for p in block_p[a:b]),
                            block_p[a].in_shape, block_p[b - 1].out_shape,
                            coarse_cost=coarse_s(a, b))
                for j, (a, b) in enumerate(zip(bounds, bounds[1:]))]
        profiled = ProfiledSplit(split, iterations, pre_p, post_p, info)
        in_actors = (balance == "time" and choose_coarse_in_actors(profiled, driver_segment, 0.0, devices_of(n))
                     if coarse_in_actors is None else bool(coarse_in_actors) and iterations == 1)
        out[n] = predicted_speedup(profiled, devices_of(n), in_actors)
    return out
