"""Where a driver's fine actors run: the resources they get (:class:`Resources`), their placement group, and
:class:`FineActors`, the actors asked for before the network is known.

Importing this module does not import torch (nor does starting actors on CPUs): a driver asks for its fine actors
first, and their processes start while the driver itself imports torch and builds the network.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UserError
from .actors import FineWorker
from .specs import check_amp, check_transport

if TYPE_CHECKING:
    import torch


# the Ray CPUs a fine actor reserves where several engines are up at once but compute one at a time, taking turns
# (raypar bench, raypar tune): a sliver, so that all of them fit
TURN_CPUS = 0.01


@dataclass
class Resources:
    gpus_per_subnet: float = 0.0
    cpus_per_subnet: float = 1.0
    placement: str = "PACK"
    timeout_s: float = 120.0
    # run F_1 in the driver process, overlapped with the actors' F_2..F_N: N processes instead of N + 1, and no
    # transfers for F_1 (the driver is idle while the actors compute anyway)
    driver_segment: bool = False
    transport: str = "object-store"      # how interface tensors travel: raypar.engine.transport ("auto" resolves it)
    channels_last: bool = False          # every part's weights and activations in the channels-last layout
    amp: str = "off"                     # mixed precision: off, bf16 or fp16 (raypar.engine.precision)
    # K = 1: each fine actor computes its own input and coarse term from the batch (copies of pre and C_1..C_j, the
    # driver's weights sent every step) and sends back d_j = f_j - z_j: the driver neither runs the coarse sweep
    # before the actors can start nor runs its backward after them (raypar.network.parareal.interval). None: not
    # decided yet (raypar train decides from the network's profile before it builds the engine); the engine takes it
    # as False
    coarse_in_actors: bool | None = False
    # each actor's backward returns dL/du before it computes its weight gradients, which it computes in its optimizer
    # step, and the driver does not wait for that step: it runs beside the driver's own backward and the next step's
    # pre and coarse sweep (raypar.network.split_backward). The actors' compute seconds then reach the next step's
    # StepStats.
    defer_weights: bool = True
    # the training batch, when known: with transport "auto" on a GPU that the driver and its actors share, it sizes a
    # step's transfers, and small ones go through the object store (raypar.engine.transport.IPC_MIN_BYTES)
    batch: int = 0
    # a name for the fine actors' placement group, unique to the run and replica: a restarted driver removes the group
    # its lost predecessor left (a killed driver's actors die with it, its placement group does not)
    group_name: str = ""

    @property
    def device(self) -> torch.device:
        """Where the driver and its actors compute: a GPU where they are given one (and CUDA sees one), else CPUs."""
        import torch
        return torch.device("cuda" if self.gpus_per_subnet > 0 and torch.cuda.is_available() else "cpu")


def _placement_group(bundles: list[dict], resources: Resources, first_try_s: float = 15.0):
    """The fine actors' placement group, ready, or None after ``resources.timeout_s``. ``PACK``: all on this
    driver's node if they fit there, else all on one other node (``STRICT_PACK`` aimed at this node), else packed
    as tightly as the cluster allows (``PACK``); ``SPREAD``: across nodes."""
    import ray
    from ray.util.placement_group import get_placement_group, placement_group
    if resources.group_name:
        try:
            ray.util.remove_placement_group(get_placement_group(resources.group_name))
        except ValueError:                                 # none left behind
            pass
    tries = [(resources.placement, None, resources.timeout_s)]
    if resources.placement == "PACK":
        here = ray.get_runtime_context().get_node_id()
        tries.insert(0, ("STRICT_PACK", here, min(first_try_s, resources.timeout_s)))
    for strategy, target, wait_s in tries:
        pg = placement_group(bundles, strategy=strategy, name=resources.group_name,
                             _soft_target_node_id=target)
        ready, _ = ray.wait([pg.ready()], timeout=wait_s)
        if ready:
            return pg
        ray.util.remove_placement_group(pg)
    return None


class FineActors:
    """One replica's fine actors, started before the network is known: their processes come up (Python, torch)
    while the driver loads the data and profiles the split; :class:`PararealEngine` then gives each its segment
    (``FineWorker.configure``) and owns them.

    Args:
        count: how many (the network's segments that do not run in the driver).
        resources: the run's resources (placement, CPUs and GPUs per actor, transport, the placement group's name).
    Raises:
        UserError: an unknown transport or precision, ``cuda-ipc`` without a GPU, or no room for the actors within
            ``resources.timeout_s``.
    """

    def __init__(self, count: int, resources: Resources):
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
        self.check(resources)
        use_gpu = resources.gpus_per_subnet > 0
        bundle = {"CPU": resources.cpus_per_subnet, **({"GPU": resources.gpus_per_subnet} if use_gpu else {})}
        self.actors: list = []
        self.pg = _placement_group([dict(bundle) for _ in range(max(1, count))], resources)
        if self.pg is None:
            raise UserError(f"could not get {count} x {bundle} for the fine sub-networks within "
                            f"{resources.timeout_s:.0f} s; the cluster has {ray.cluster_resources()} in total and "
                            f"{ray.available_resources()} free")
        # Ray Direct Transport (cuda-ipc) must be switched on when the actor class is made
        ipc = (resources.transport in ("cuda-ipc", "auto") and resources.gpus_per_subnet > 0
               and resources.device.type == "cuda")
        actor_cls = ray.remote(enable_tensor_transport=True)(FineWorker) if ipc else ray.remote(FineWorker)
        self.actors = [actor_cls.options(num_cpus=resources.cpus_per_subnet, num_gpus=resources.gpus_per_subnet,
                                         scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, i)).remote()
                       for i in range(count)]

    @staticmethod
    def check(resources: Resources) -> None:
        """The settings an actor needs, checked before any starts (raises UserError)."""
        check_transport(resources.transport)
        check_amp(resources.amp)
        if resources.transport == "cuda-ipc" and resources.device.type != "cuda":
            raise UserError("--transport cuda-ipc needs GPUs (--gpus-per-subnet > 0 on a machine with CUDA)")

    def ready(self) -> None:
        """Wait until every actor's process is up (an actor that failed to start raises here)."""
        import ray
        ray.get([a.pid.remote() for a in self.actors])

    def shutdown(self) -> None:
        """Stop the actors and free their placement group (what an engine that took them over does too; a second
        call does nothing)."""
        import ray
        actors, pg, self.actors, self.pg = self.actors, self.pg, [], None
        for a in actors:
            ray.kill(a)
        if pg is not None:
            try:
                ray.util.remove_placement_group(pg)
            except Exception:  # noqa: BLE001 - removed already (by the engine that owned it)
                pass
