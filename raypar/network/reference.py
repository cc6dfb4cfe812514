"""``PararealNet``: the parareal network in one process — the reference the distributed engine must match."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import nn

from . import balance as bal
from .coarse import build_coarse
from .specs import CoarseSpec, check_counts
from .convert import staged_from
from ..errors import UserError
from .parareal import coarse_work, parareal, running_stats_frozen


@dataclass
class SegmentInfo:
    """One fine segment and its coarse network, as the split report shows them."""
    index: int
    blocks: tuple[int, int]       # [start, stop) block indices
    params: int
    cost: float                   # in the balance measure's unit
    in_shape: tuple
    out_shape: tuple
    coarse_params: int = 0
    coarse_cost: float = 0.0      # in the balance measure's unit

    @property
    def coarse_ratio(self) -> float:
        """Coarse/fine cost of this interval, in the balance measure."""
        return self.coarse_cost / self.cost if self.cost else 0.0

    @property
    def out_bytes_per_sample(self) -> int:
        return 4 * math.prod(self.out_shape)


class PararealNet(nn.Module):
    """A network torn into ``num_subnets`` fine segments glued by coarse networks (docs/design.md §2).

    Pieces, for the distributed engine to reuse rather than rebuild: ``pre``, ``segments`` (``F_1..F_N``, each an
    ``nn.Sequential`` of the original blocks, sharing their parameters), ``coarse`` (``C_1..C_N``; empty for N = 1)
    and ``post``. ``split`` holds the block counts, ``segment_info`` the cost report.

    ``driver_segment``: F_1 will run in the driver, so the balance charges segment 1 with the driver's pre, coarse
    sweeps and post; with ``defer_weights`` too (the engine's ``--defer-weights``) and a time balance, each block's
    weight gradients are timed as well and leave a remote segment's share of the driver's critical path
    (:func:`raypar.network.balance.partition_loaded_first`).

    ``profile_device``: where the profile runs (a time balance should time the device the network will train on:
    a GPU's block costs are not a CPU's); the network itself stays where it is. ``channels_last``: the profile times
    the blocks and coarse networks in the channels-last layout, as a run with ``--channels-last`` computes them (the
    network itself is not converted). A time profile keeps freed memory in this process from then on, as the engine's
    processes do (:mod:`raypar.malloc`; ``RAYPAR_KEEP_FREED_MEMORY=0`` opts out).
    """

    def __init__(self, staged, num_subnets: int, iterations: int = 1, coarse: CoarseSpec | None = None,
                 balance="time", input_shape: tuple | None = None, profile_batch: int = 8,
                 driver_segment: bool = False, measure: str | None = None, defer_weights: bool = False,
                 profile_device: str | torch.device | None = None, channels_last: bool = False):
        super().__init__()
        staged = staged_from(staged)
        num_blocks = len(staged.blocks)
        bal.check_num_subnets(num_subnets, num_blocks)
        if not isinstance(iterations, int) or not 1 <= iterations <= num_subnets:
            raise UserError(f"iterations K must be between 1 and the number of sub-networks ({num_subnets}), "
                            f"got {iterations}")
        shape = input_shape or staged.input_shape
        if shape is None:
            raise UserError("input_shape is unknown: pass input_shape=(C, H, W) for one sample")
        self.num_subnets, self.iterations = num_subnets, iterations
        self.input_shape = tuple(shape)
        self.coarse_spec = coarse or CoarseSpec()

        dtype = next(staged.parameters()).dtype
        gen = torch.Generator().manual_seed(0)      # profiling must not consume the global RNG
        where = torch.device(profile_device or "cpu")
        sample = torch.randn(profile_batch, *shape, dtype=dtype, generator=gen).to(where)
        # the profile's measure (the cost report's unit): the balance's own, else (explicit block counts) ``measure``
        measure = balance if isinstance(balance, str) else (measure or "flops")
        # the actors' deferred weight gradients (--defer-weights) come off the path the driver waits on: timed in the
        # profile's own passes, each block's backward in the two halves an actor runs
        loaded_first = isinstance(balance, str) and driver_segment and num_subnets > 1
        deferring = loaded_first and defer_weights and measure == "time"
        pre_p, block_p, post_p = bal.profile(staged, sample, measure, channels_last=channels_last,
                                             weight_grads=deferring)
        # the coarse networks' cost depends on the split (each maps its interval's input shape to its output's)
        coarse_cost = self._coarse_cost_of(block_p, measure, profile_batch, self.coarse_spec, where, channels_last)
        if isinstance(balance, str):
            costs = [p.cost for p in block_p]
            if loaded_first:
                # F_1 shares its process with pre, the coarse sweeps and post: give it that much less to do
                def driver_work(split):
                    bounds = list(itertools.accumulate(split, initial=0))
                    coarse = [coarse_cost(a, b) for a, b in zip(bounds, bounds[1:])]
                    return pre_p.cost + post_p.cost + coarse_work(coarse, iterations)
                deferred = [p.weight_grad for p in block_p] if deferring else None
                self.split = bal.partition_loaded_first(costs, num_subnets, driver_work, deferred=deferred)
            else:
                self.split = bal.partition(costs, num_subnets)
        else:
            self.split = check_counts(list(balance), num_subnets, num_blocks)
        self.balance_measure = measure
        self.pre_profile, self.post_profile = pre_p, post_p

        self.pre, self.post = staged.pre, staged.post
        self.segments = nn.ModuleList()
        self.segment_info: list[SegmentInfo] = []
        start = 0
        for j, count in enumerate(self.split):
            stop = start + count
            ps = block_p[start:stop]
            self.segments.append(nn.Sequential(*staged.blocks[start:stop]))
            self.segment_info.append(SegmentInfo(j + 1, (start, stop), sum(p.params for p in ps),
                                                 sum(p.cost for p in ps),
                                                 ps[0].in_shape, ps[-1].out_shape))
            start = stop
        self.coarse = nn.ModuleList()
        if num_subnets > 1:
            for info in self.segment_info:
                net = build_coarse(info.in_shape, info.out_shape, self.coarse_spec)
                info.coarse_params = sum(p.numel() for p in net.parameters())
                info.coarse_cost = coarse_cost(*info.blocks)        # (measured once per pair of shapes)
                self.coarse.append(net)
        if where.type == "cuda":
            torch.cuda.empty_cache()          # the profile's activations: not held in the GPU's cache for the run

    @staticmethod
    def _coarse_cost_of(block_p, measure, batch, spec, where, channels_last=False):
        """``cost(start, stop)``: the cost of the coarse network an interval of blocks would get, built aside (the
        global RNG is left alone) and measured once per pair of shapes."""
        seen: dict = {}

        def cost(start: int, stop: int) -> float:
            shapes = (block_p[start].in_shape, block_p[stop - 1].out_shape)
            if shapes not in seen:
                with torch.random.fork_rng():
                    net = build_coarse(*shapes, spec)
                    x = torch.randn(batch, *shapes[0]).to(where)
                    seen[shapes] = bal.measure_part(*bal.in_layout(net.to(where), x, channels_last), measure)[0].cost
            return seen[shapes]
        return cost

    def fine_local(self, k: int, first: int, inputs: list[torch.Tensor], meanwhile=lambda: None) -> list[torch.Tensor]:
        """The fine map of :func:`raypar.network.parareal.parareal`: ``F_{first+1}, ...`` here, one after the other.
        F_j's BatchNorm statistics move on its last call only (iteration min(j, K), its input then the sequential
        network's)."""
        meanwhile()
        out = []
        for j, u in enumerate(inputs, start=first):
            with running_stats_frozen([self.segments[j]], k < min(j + 1, self.iterations)):
                out.append(self.segments[j](u))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.pre(x)
        l = parareal(x0, self.coarse, self.fine_local, self.iterations, self.num_subnets)
        return self.post(l[-1])

    def sequential(self, x: torch.Tensor) -> torch.Tensor:
        """The original network ``post(F_N(...F_1(pre(x))))`` on the same parameters."""
        h = self.pre(x)
        for seg in self.segments:
            h = seg(h)
        return self.post(h)

    def driver_modules(self) -> nn.ModuleDict:
        """The parts that live in the driver: pre, the coarse networks and post."""
        return nn.ModuleDict({"pre": self.pre, "coarse": self.coarse, "post": self.post})

    def interface_bytes(self, batch: int, skip_first: bool = False, element: int = 4,
                        coarse_in_actors: bool = False) -> int:
        """The bytes a training step ships between the driver and the fine actors: 4 interface tensors per shipped
        segment and iteration (input out, output back, their gradients the other way), exactly with K = 1 and at most
        with K > 1 (some outputs never reach the loss); ``skip_first``: F_1 runs in the driver and ships nothing;
        ``element``: bytes per number. ``coarse_in_actors`` (K = 1): the batch out (float32 at least, also with
        16-bit ``element``) and ``d_j`` back, its gradient out (the actors' copies' parameter gradients, a few KB, not
        counted)."""
        shipped = self.segment_info[1:] if skip_first else self.segment_info
        if coarse_in_actors:
            sample = max(element, 4) * math.prod(self.input_shape)
            return batch * sum(sample + element * 2 * math.prod(s.out_shape) for s in shipped)
        per = sum(math.prod(s.in_shape) + math.prod(s.out_shape) for s in shipped)
        return self.iterations * batch * element * per * 2

    # ---------------------------------------------------------------- the split report (`raypar info`)
    def ideal_speedup(self) -> float:
        """Sequential cost / (pre + coarse + max fine + post), in the balance measure (forward+backward).

        The coarse cost counts both sweeps (:func:`raypar.network.parareal.coarse_work`); with K iterations the fine work
        is done K times."""
        if self.num_subnets == 1:
            return 1.0
        fine = [s.cost for s in self.segment_info]
        coarse = coarse_work([s.coarse_cost for s in self.segment_info], self.iterations)
        edge = self.pre_profile.cost + self.post_profile.cost
        seq = edge + sum(fine)
        return seq / (edge + coarse + self.iterations * max(fine))
