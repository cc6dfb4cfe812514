"""Checks before a run starts: the resources it needs (and whether the cluster can ever provide them) and storage
that every node sees."""
from __future__ import annotations

import os
import sys

from ..engine.placement import Resources
from ..errors import UserError
from . import tracking
from .config import TrainConfig
from .ray_compat import cluster_can_grow


def gpus_per_subnet(cfg: TrainConfig) -> float:
    if cfg.engine.gpus_per_subnet is not None:
        return cfg.engine.gpus_per_subnet
    import ray
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def run_resources(cfg: TrainConfig, rank: int, coarse_in_actors: bool | None = None) -> Resources:
    """The :class:`~raypar.engine.placement.Resources` of replica ``rank``'s engine and fine actors in the run ``cfg``
    (``coarse_in_actors``: None until the run decides it)."""
    e = cfg.engine
    return Resources(gpus_per_subnet(cfg), e.cpus_per_subnet, e.placement, driver_segment=e.driver_segment,
                     transport=e.transport, channels_last=e.channels_last, amp=e.amp, coarse_in_actors=coarse_in_actors,
                     defer_weights=e.defer_weights, batch=cfg.optim.batch_size,
                     group_name=f"raypar-{cfg.run.name}-r{rank}")


def bundles(cfg: TrainConfig, gpus: float) -> list[dict]:
    """What one run needs: per replica, the driver (a Ray Train worker) and one bundle per fine actor."""
    gpu = {"GPU": gpus} if gpus else {}
    actors = cfg.model.subnets - 1 if cfg.engine.driver_segment else cfg.model.subnets
    return ([{"CPU": 1.0, **gpu}] + [{"CPU": cfg.engine.cpus_per_subnet, **gpu} for _ in range(actors)]) * cfg.engine.replicas


def _fits(bundle: dict, node: dict) -> bool:
    return all(node.get(k, 0) >= v - 1e-9 for k, v in bundle.items() if v)


def wait_for_resources(cfg: TrainConfig, gpus: float) -> None:
    """Ask for the whole run as one placement group, so that an autoscaler sees the full demand, and fail with a
    clear message when the cluster cannot provide it within ``cfg.engine.resource_timeout_s`` — or at once when the cluster
    cannot grow (no autoscaler, see :func:`cluster_can_grow`) and its nodes could never hold the run: more of a
    resource than all nodes have together, or a bundle that fits no node."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    asked = bundles(cfg, gpus)
    total = {k: sum(b.get(k, 0) for b in asked) for k in ("CPU", "GPU")}
    have = ray.cluster_resources()
    per = len(asked) // cfg.engine.replicas
    what = (f"{len(asked)} bundles ({f'{cfg.engine.replicas} replicas x ' if cfg.engine.replicas > 1 else ''}driver + {per - 1} "
            f"fine actor{'s' if per - 1 != 1 else ''}: {total['CPU']:g} CPU, {total['GPU']:g} GPU in all)")
    fix = (f"lower {'--replicas, ' if cfg.engine.replicas > 1 else ''}--subnets, --gpus-per-subnet or --cpus-per-subnet, "
           f"or add nodes")
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    never = (any(total[k] > have.get(k, 0) + 1e-9 for k in total)
             or any(not any(_fits(b, node) for node in nodes) for b in asked))
    if never and cluster_can_grow() is False:
        raise UserError(f"the cluster can never provide {what}: it has {have.get('CPU', 0):g} CPU, "
                        f"{have.get('GPU', 0):g} GPU in total on {len(nodes)} node(s) and no autoscaler to add nodes "
                        f"— {fix}")
    pg = placement_group(asked, strategy=cfg.engine.placement)
    try:
        ready, _ = ray.wait([pg.ready()], timeout=cfg.engine.resource_timeout_s)
    finally:
        remove_placement_group(pg)
    if not ready:
        raise UserError(f"the cluster could not provide {what} within {cfg.engine.resource_timeout_s:g} s; it has "
                        f"{have.get('CPU', 0):g} CPU, {have.get('GPU', 0):g} GPU in total — {fix}")


def check_shared_storage(cfg: TrainConfig, timeout_s: float = 60.0) -> None:
    """Check that ``cfg.run.storage_path`` can be written (a :class:`UserError` in one line if not) and, on a
    multi-node cluster, that every node sees it: write a marker file there from this process and look for it from a
    task pinned to each other alive node. A node that cannot see it raises a :class:`UserError` naming the node (a
    restarted driver there would not find the checkpoints). Remote URIs (``s3://``, ``gs://``, ...) are not
    checked; a node that does not answer within ``timeout_s`` is only warned about. Leaves nothing behind: the
    marker, and any folder created for it, are removed."""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    root = cfg.run.storage_path
    if "://" in root:
        return

    def sees(path: str) -> bool:            # a local function: shipped by value, the node needs no raypar
        import os
        return os.path.exists(path)

    created, folder = [], os.path.abspath(root)
    while not os.path.exists(folder):
        created.append(folder)
        folder = os.path.dirname(folder)
    marker = os.path.join(root, f".raypar-storage-check-{uuid.uuid4().hex}")
    blind, silent = [], []
    try:
        try:
            os.makedirs(root, exist_ok=True)
            with open(marker, "w") as f:
                f.write("written by raypar to check that every node sees --storage-path; safe to delete\n")
        except OSError as e:
            raise UserError(f"--storage-path {tracking.redact(root)} cannot be written: "
                            f"{e.strerror or e}") from None
        here = ray.get_runtime_context().get_node_id()
        others = [n for n in ray.nodes() if n.get("Alive") and n["NodeID"] != here]
        probe = ray.remote(num_cpus=0, max_retries=0)(sees)
        refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(marker) for n in others]
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        for node, ref in zip(others, refs):
            try:
                seen = ray.get(ref, timeout=0)
            except Exception:  # noqa: BLE001 - no answer in time, or the node died meanwhile
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - already finished or gone
                    pass
                silent.append(node)
                continue
            if not seen:
                blind.append(node)
    finally:
        if os.path.exists(marker):
            os.remove(marker)
        for folder in created:                   # deepest first
            try:
                os.rmdir(folder)
            except OSError:
                break

    def name(node):
        return f"{node.get('NodeManagerAddress', '?')} (node id {node['NodeID'][:12]})"
    if blind:
        raise UserError(f"--storage-path {tracking.redact(root)} is not shared: node {name(blind[0])}"
                        f"{f' and {len(blind) - 1} more' if len(blind) > 1 else ''} cannot see it; on a multi-node "
                        f"cluster use shared storage (s3://..., gs://..., or an NFS mount at the same path on every "
                        f"node)")
    if silent:
        print(f"raypar: warning: could not check that node {name(silent[0])} sees --storage-path "
              f"{tracking.redact(root)} (no answer within {timeout_s:g} s); it must be shared storage",
              file=sys.stderr)
