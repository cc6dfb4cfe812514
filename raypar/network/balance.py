"""Split the blocks into N contiguous segments balanced by cost: the slowest segment sets the pace.

Cost measures: ``time`` (measured forward+backward time of each block on a sample batch; the default),
``flops`` (forward+backward FLOPs counted by ``torch.utils.flop_counter``), ``params`` (parameter count). Or give the
block counts per segment explicitly.
"""
from __future__ import annotations

import copy
import itertools
import math
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError
from ..malloc import keep_freed_memory
from .models import StagedModel, memory_format
from .specs import check_measure


@dataclass
class Profile:
    """What one dry run learns about a part of the network (pre, one block, or post)."""
    cost: float            # in the unit of the measure (seconds, FLOPs, parameters)
    params: int
    flops: float | None    # forward+backward FLOPs on the sample batch (None: not counted)
    in_shape: tuple        # one sample's shapes, no batch dim
    out_shape: tuple
    weight_grad: float | None = None   # seconds of its weight gradients alone, within ``cost`` (``weight_grads``)


def _fwd_bwd_flops(module: nn.Module, x: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode     # imports triton: 0.1-0.2 s that only a profile needs
    with FlopCounterMode(display=False) as counter:
        out = module(x)
        if out.requires_grad:                # (a part with nothing to train, on the data: no backward at all)
            out.backward(torch.ones_like(out))
    return float(counter.get_total_flops())


def _sync(x: torch.Tensor) -> None:
    """Wait for the GPU's queued work (a CUDA clock reading means nothing before)."""
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def _fwd_bwd_time(module: nn.Module, x: torch.Tensor, repeats: int,
                  weight_grads: bool = False) -> tuple[float, float | None, torch.Tensor]:
    """The median seconds of a forward and backward, those of its weight gradients alone (``weight_grads``: the
    backward in the two halves a fine actor runs, :mod:`raypar.network.split_backward`; else None), and the last
    forward's output (no graph)."""
    if weight_grads:
        from .split_backward import input_grad
        params = [p for p in module.parameters() if p.requires_grad]
    grad, wholes, weights = None, [], []
    for i in range(repeats + 1):           # first run is a warm-up
        _sync(x)
        t0 = time.perf_counter()
        out = module(x)
        if grad is None:
            grad = torch.ones_like(out)
        if weight_grads:
            _, later = input_grad(out, grad, x, params)
            _sync(x)
            t1 = time.perf_counter()
            later.run()
        elif out.requires_grad:
            out.backward(grad)
        _sync(x)
        if i:
            end = time.perf_counter()
            wholes.append(end - t0)
            if weight_grads:
                weights.append(end - t1)
    return statistics.median(wholes), statistics.median(weights) if weights else None, out.detach()


def measure_part(part: nn.Module, x: torch.Tensor, measure: str = "time", repeats: int = 3,
                 input_grad: bool = True, count_flops: bool | None = None,
                 weight_grads: bool = False) -> tuple[Profile, torch.Tensor]:
    """Profile one part on the batch ``x``; returns the profile and the part's output (no graph). ``input_grad``:
    its backward computes the gradient w.r.t. ``x`` too (every part but ``pre``, whose input is the data).
    ``count_flops``: count its FLOPs too (None: only for the ``flops`` measure; otherwise ``flops`` is None).
    ``weight_grads`` (a ``time`` measure with ``input_grad``): time the backward in two halves, as a fine actor
    computes it with ``--defer-weights`` (the input gradient, then the weight gradients), and keep the second half's
    seconds in ``Profile.weight_grad`` too; ``cost`` is then the whole, which on CPUs is a few per cent above a
    plain backward's.
    BN statistics and grads of ``part`` do change: profile a copy.

    Why FLOPs only when asked: torch's FLOP counter dispatches every operation through Python and its first use
    imports much of ``torch._dynamo``, at the start of every run that profiles (measured in
    ``benchmarks/startup/README.md``)."""
    x_in = x.detach().requires_grad_(input_grad and x.is_floating_point())
    if count_flops is None:
        count_flops = measure == "flops"
    flops = _fwd_bwd_flops(part, x_in) if count_flops else None
    params = sum(p.numel() for p in part.parameters())
    weight_grad = None
    if measure == "time":          # (its output: the timed passes' last, not one more forward)
        cost, weight_grad, out = _fwd_bwd_time(part, x_in, repeats, weight_grads and x_in.requires_grad)
    else:
        cost = flops if measure == "flops" else float(max(params, 1))
        with torch.no_grad():
            out = part(x_in)
    return Profile(cost, params, flops, tuple(x.shape[1:]), tuple(out.shape[1:]), weight_grad), out


def in_layout(part: nn.Module, x: torch.Tensor, channels_last: bool) -> tuple[nn.Module, torch.Tensor]:
    """``part`` (converted in place) and ``x`` in the layout a run will use: a profile must time the convolutions the
    run makes, and on CPUs channels-last ones cost far less than the default layout's, unevenly across the blocks."""
    if channels_last:
        part.to(memory_format=torch.channels_last)
    return part, memory_format(x, channels_last)


def _as_in_a_run(model: nn.Module, x: torch.Tensor) -> None:
    """Time a part as a training step runs it: in a process that keeps freed memory (as the engine's do,
    :mod:`raypar.malloc`, from now on in this process too; with glibc's defaults each repeat faults its activations'
    pages in again), after one whole forward and backward (the first part timed would pay every first touch:
    allocations, kernels; checked by ``benchmarks/throughput/profile_check.py``). On a GPU the whole pass holds the whole network's activations at the profile's batch once, as a training step does."""
    keep_freed_memory()
    out = model(x)
    if out.requires_grad:
        out.sum().backward()
    model.zero_grad(set_to_none=True)
    _sync(x)


def profile(staged: StagedModel, sample: torch.Tensor, measure: str = "time", repeats: int = 3,
            channels_last: bool = False, count_flops: bool | None = None,
            weight_grads: bool = False) -> tuple[Profile, list[Profile], Profile]:
    """Profile pre, every block and post on ``sample`` (a batch), on the sample's device, in the channels-last
    layout if ``channels_last``; FLOPs counted as :func:`measure_part` says. ``weight_grads``: a ``time`` profile
    times each block's backward in two halves and keeps its weight gradients' seconds (``Profile.weight_grad``), in
    the same passes. The model itself is left untouched."""
    check_measure(measure)
    model = copy.deepcopy(staged).to(sample.device).train()   # profiling must not touch the real model's BN or grads
    model, x = in_layout(model, sample, channels_last)
    if measure == "time":
        _as_in_a_run(model, x)
    results = []
    for i, part in enumerate([model.pre, *model.blocks, model.post]):
        block = 0 < i <= len(model.blocks)
        prof, x = measure_part(part, x, measure, repeats, input_grad=i > 0,    # the data needs no gradient
                               count_flops=count_flops, weight_grads=weight_grads and block)
        results.append(prof)
    return results[0], results[1:-1], results[-1]


def partition(costs: list[float], n: int, first_extra: float = 0.0) -> list[int]:
    """Contiguous split of ``costs`` into ``n`` non-empty segments minimising the largest segment sum.

    ``first_extra`` is work that the first segment's process does besides its blocks (the driver's pre, coarse
    and post when F_1 runs in the driver).

    Returns the number of blocks per segment. Exact dynamic programme, O(n L^2).
    """
    L = len(costs)
    check_num_subnets(n, L)
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    # best[k][i]: minimal max-segment cost of splitting the first i blocks into k segments
    best = [[inf] * (L + 1) for _ in range(n + 1)]
    cut = [[0] * (L + 1) for _ in range(n + 1)]
    best[0][0] = 0.0
    for k in range(1, n + 1):
        for i in range(k, L - (n - k) + 1):
            for j in range(k - 1, i):
                v = max(best[k - 1][j], prefix[i] - prefix[j] + (first_extra if k == 1 else 0.0))
                if v < best[k][i]:
                    best[k][i], cut[k][i] = v, j
    counts, i = [], L
    for k in range(n, 0, -1):
        j = cut[k][i]
        counts.append(i - j)
        i = j
    return counts[::-1]


def partition_loaded_first(costs: list[float], n: int, first_extra, max_candidates: int = 5000,
                           deferred: list[float] | None = None) -> list[int]:
    """Like :func:`partition` when the first segment's process also does work that depends on the whole split: the
    driver's pre, coarse sweeps and post with F_1 in the driver (each coarse network's cost follows the shapes of its
    interval). ``first_extra(split)`` gives that work E for a candidate split; the split minimises
    ``max(F_1 + E, F_2, ..., F_N)``.

    ``deferred``: per block, the part of its cost that a fine actor computes after it has answered the driver (its
    weight gradients, ``--defer-weights``): the driver then waits for a remote F_j less its deferred part W_j, beside
    its own F_1, with all of E on that path (the actors wait for pre and the coarse sweep before their forward, and the
    driver runs their backward after), and the split minimises the larger of that path and any actor's whole work::

        max(E + max(F_1, F_2 - W_2, ..., F_N - W_N), F_2, ..., F_N, (E + F_1 + ... + F_N) / N)

    Every split is tried when there are at most ``max_candidates``; beyond that, the fixed point of :func:`partition`
    with the extra of its own previous answer, then moves of one cut by one block while they help."""
    L = len(costs)
    check_num_subnets(n, L)
    prefix = list(itertools.accumulate(costs, initial=0.0))
    later = list(itertools.accumulate(deferred, initial=0.0)) if deferred is not None else None

    def value(split):
        cuts = list(itertools.accumulate(split, initial=0))
        loads = [prefix[b] - prefix[a] for a, b in zip(cuts, cuts[1:])]
        if later is None:
            return max(loads[0] + first_extra(split), *loads[1:])
        extra = first_extra(split)
        waited = [load - min(later[b] - later[a], load) for load, a, b in zip(loads[1:], cuts[1:], cuts[2:])]
        return max(extra + max(loads[0], *waited), *loads[1:], (extra + sum(loads)) / n)

    def from_cuts(cuts):
        bounds = [0, *cuts, L]
        return [b - a for a, b in zip(bounds, bounds[1:])]

    if math.comb(L - 1, n - 1) <= max_candidates:
        return min((from_cuts(c) for c in itertools.combinations(range(1, L), n - 1)), key=value)
    split = partition(costs, n)
    for _ in range(L):
        again = partition(costs, n, first_extra=first_extra(split))
        if again == split:
            break
        split = again
    best = value(split)
    while True:
        cuts = list(itertools.accumulate(split))[:-1]
        moves = [cuts[:i] + [c + d] + cuts[i + 1:] for i, c in enumerate(cuts) for d in (-1, 1)]
        splits = [from_cuts(m) for m in moves if all(a < b for a, b in zip([0, *m], [*m, L]))]
        scored = [(value(sp), sp) for sp in splits]
        if not scored or min(scored)[0] >= best:
            return split
        best, split = min(scored)


def weight_grad_times(staged: StagedModel, x: torch.Tensor, repeats: int = 3,
                      channels_last: bool = False) -> list[float]:
    """Per block: the seconds of its weight gradients alone (the half of its backward that a fine actor defers to
    its optimizer step, :mod:`raypar.network.split_backward`), on the batch ``x`` and its device (and layout, as
    :func:`profile`): for a caller that wants plain backwards' costs from :func:`profile` besides (a profile with
    ``weight_grads`` has both halves in one pass)."""
    return [p.weight_grad for p in profile(staged, x, "time", repeats, channels_last=channels_last,
                                                   weight_grads=True)[1]]


def check_num_subnets(n: int, num_blocks: int) -> None:
    if not isinstance(n, int) or n < 1 or n > num_blocks:
        raise UserError(f"number of sub-networks must be between 1 and the number of blocks ({num_blocks}), "
                        f"got {n}")
