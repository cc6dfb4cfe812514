"""The parareal equations of docs/design.md §2, in one place. Both the in-process reference network and the
distributed engine call :func:`parareal`; they differ only in how the fine propagators run.

With coarse networks ``C_1..C_N``, fine propagators ``F_1..F_N`` and ``x0 = pre(x)``:

    z_0 = x0,   z_j = C_j(z_{j-1})                                     j = 1..N-1   coarse sweep
    l^0_j = z_j
    for k = 1..K:
        l^k_j = l^{k-1}_j                                              j < k        converged: kept
        f^k_j = F_j(l^{k-1}_{j-1})                                     j = k..N     fine, all in parallel
        l^k_0 = x0,   l^k_j = f^k_j + (C_j(l^k_{j-1}) - C_j(l^{k-1}_{j-1}))   j = k..N     correction sweep
    output = l^K_N

Parareal's exactness: after iteration k the first k states are the sequential network's, so iteration k need not
run ``F_1..F_{k-1}`` again (their inputs did not change, nor did their outputs), and interval k's correction is
exactly zero (``l^k_{k-1} = l^{k-1}_{k-1}``): ``l^k_k = f^k_k``. So every fine propagator runs on each input once, and
with K = N the computation (and its graph, hence the gradients) is the sequential network's ``F_N(...F_1(x0))``.

With K = 1 the coarse sweep can also run beside the fine propagators instead of before them (``--coarse-in-actors``):
the process of interval j computes its own input and coarse term from the batch and sends back one difference

    z_{j-1} = C_{j-1}(...C_1(pre(x))),   d_j = F_j(z_{j-1}) - C_j(z_{j-1})       (d_1 = f_1)   :func:`interval`
    l_1 = d_1,   l_j = C_j(l_{j-1}) + d_j                                                   :func:`correct`

which is the same network (the same sums, added in another order); ``pre`` and ``C_1..C_j`` then run in several
processes on the same values, and their gradients are the sums over those copies.

Only ``l^k_1..l^k_{N-1}`` feed the next iteration, so before the last iteration ``F_N`` is not run at all.
``C_j(l^{k-1}_{j-1})`` is remembered from the previous sweep (for k = 1 it is ``z_j``, plus the extra ``z_N``), so no
coarse network ever runs twice on the same input. ``z_N`` is needed only with K = 1 (with K > 1 the first sweep stops
before interval N) and only by the correction sweep, so it is computed while the fine propagators run (the fine map
calls ``meanwhile``), not before they start. The difference of the two coarse terms is taken first, so where an
interval has converged the correction is exactly zero.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Sequence

import torch

# fine(k, first, inputs, meanwhile) -> outputs: runs F_{first+1}, F_{first+2}, ... on inputs[0], inputs[1], ... (all at
# once where it can) in iteration k (``first`` is 0-based: the intervals before it have converged), and calls
# meanwhile() once per call, while they run (work that needs no fine output, possibly none; a map that cannot overlap
# calls it first)
FineMap = Callable[[int, int, list[torch.Tensor], Callable[[], None]], list[torch.Tensor]]
# cut(z) -> the tensor every later use of z sees instead (the same values; the engine's leaf that stops backward passes
# there, see PararealEngine._forward)
Cut = Callable[[torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def running_stats_frozen(modules: Iterable[torch.nn.Module], frozen: bool = True):
    """Within it (when ``frozen``) no BatchNorm in ``modules`` updates its running statistics; outputs and gradients
    are unchanged (training mode normalises with the batch's own statistics either way).

    With K > 1 the fine propagators of iterations 1..K-1 run on inputs that the last iteration replaces; only the
    last iteration's inputs are the network's, so only its forward may move the statistics that evaluation uses.
    With K = N that makes the running statistics the sequential network's, as the forward already is."""
    norms = [m for net in modules for m in net.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats] if frozen else []
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


def coarse_work(costs: Sequence[float], iterations: int) -> float:
    """What the coarse networks cost per pass, from each ``C_j``'s cost: the coarse sweep runs ``C_1..C_{N-1}`` (and
    ``C_N`` for ``z_N`` when K = 1), correction sweep k runs ``C_{k+1}..C_N``."""
    if len(costs) < 2:
        return 0.0
    sweeps = sum(sum(costs[k:]) for k in range(1, iterations + 1))
    return sum(costs[:-1]) + (costs[-1] if iterations == 1 else 0.0) + sweeps


def coarse_sweep(coarse: Sequence[torch.nn.Module], x0: torch.Tensor, cut: Cut | None = None) -> list[torch.Tensor]:
    """Returns ``[C_1(z_0), ..., C_N(z_{N-1})]`` = ``[z_1, ..., z_N]``, each passed through ``cut`` (if given) before
    anything uses it."""
    c, z = [], x0
    for net in coarse:
        z = net(z)
        if cut is not None:
            z = cut(z)
        c.append(z)
    return c


def parareal(x0: torch.Tensor, coarse: Sequence[torch.nn.Module], fine: FineMap, iterations: int = 1,
             num_subnets: int | None = None, cut: Cut | None = None) -> list[torch.Tensor]:
    """Run K parareal iterations and return ``[l^K_1, ..., l^K_N]``; the network's output is ``post`` of the last.
    With no coarse networks (N = 1) this is ``[F_1(x0)]``. ``cut`` is applied to each ``z_1..z_{N-1}`` of the coarse
    sweep (values unchanged)."""
    n = num_subnets if num_subnets is not None else max(1, len(coarse))
    if n == 1:
        return fine(1, 0, [x0], lambda: None)
    z = coarse_sweep(coarse[:-1], x0, cut)        # z_1 .. z_{N-1}
    inputs = [x0] + z                              # l^{k-1}_{j-1}, j = 1..N  (z_0 .. z_{N-1})
    c_prev = z + [None]                            # C_j(l^{k-1}_{j-1}), j = 1..N; z_N = C_N(z_{N-1}) comes next

    def last_coarse():
        if iterations == 1 and c_prev[-1] is None:
            c_prev[-1] = coarse[-1](z[-1])
    l: list[torch.Tensor] = []
    for k in range(1, iterations + 1):
        first = k - 1                              # (0-based) intervals 1..k-1 have converged
        m = n if k == iterations else n - 1       # before the last iteration l^k_N feeds nothing: skip F_N
        f = fine(k, first, inputs[first:m], last_coarse)
        last_coarse()                              # (a no-op once the fine map ran it)
        # converged states and their coarse terms are kept; interval k's correction is zero: l^k_k = f^k_k
        new_l, c_new = l[:first] + [f[0]], c_prev[:first + 1]
        for j in range(first + 1, n):
            c = coarse[j](new_l[j - 1])
            c_new.append(c)
            if j < m:
                new_l.append(f[j - first] + (c - c_prev[j]))
        l = new_l
        inputs, c_prev = [x0] + l[:n - 1], c_new
    return l


def interval(x: torch.Tensor, pre: torch.nn.Module, coarse: Sequence[torch.nn.Module], fine_j: torch.nn.Module,
             j: int) -> torch.Tensor:
    """Interval ``j`` (1-based) of one iteration with the coarse sweep beside it: ``d_j = F_j(z_{j-1}) - C_j(z_{j-1})``
    from the batch ``x``, with ``z_{j-1} = C_{j-1}(...C_1(pre(x)))``; ``d_1 = f_1`` (its coarse terms cancel).
    ``coarse`` holds ``C_1..C_j`` (at least ``C_1..C_{j-1}``)."""
    z = pre(x)
    for net in coarse[:j - 1]:
        z = net(z)
    f = fine_j(z)
    return f if j == 1 else f - coarse[j - 1](z)


def correct(coarse: Sequence[torch.nn.Module], d: list[torch.Tensor]) -> list[torch.Tensor]:
    """The correction sweep from the differences of :func:`interval`: ``[l_1, ..., l_N]`` with ``l_1 = d_1`` and
    ``l_j = C_j(l_{j-1}) + d_j``."""
    l = [d[0]]
    for j in range(1, len(d)):
        l.append(coarse[j](l[-1]) + d[j])
    return l
