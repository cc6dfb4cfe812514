"""The Ray Train loop: ``TorchTrainer`` runs :func:`train_loop` in the driver worker, which owns pre/coarse/post
and the fine actors, trains epoch by epoch, reports one checkpoint per epoch and logs to MLflow.

A new trainer with the same ``RunConfig(name, storage_path)`` resumes from the latest checkpoint: the loop finds it
with ``ray.train.get_checkpoint()`` and continues at the next epoch with every part's state restored.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass

import torch
from ray.train import Checkpoint

from . import data
from . import tracking
from ..network.balance import TUNE
from .config import TrainConfig
from ..errors import UserError
from ..engine import hybrid
from ..engine.driver import PararealEngine, Replica, Resources, StepStats
from ..network.models import build
from ..network.reference import PararealNet


@dataclass
class TrainResult:
    metrics: dict
    run_id: str
    resumed: bool
    checkpoint_path: str | None


def _gpus_per_subnet(cfg: TrainConfig) -> float:
    if cfg.gpus_per_subnet is not None:
        return cfg.gpus_per_subnet
    import ray
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def _tuned_split(cfg: TrainConfig, spec, staged, resources: Resources, events, run_id: str) -> list[int]:
    """``--balance tune``: candidate splits side by side on the engine at the run's batch (:mod:`raypar.tools.tune`); the
    trials go to MLflow (``tuning.json``, tag ``raypar.tuned_split``)."""
    from ..tools.tune import as_json, tune_split
    split, trials = tune_split(staged(), cfg.subnets, iterations=cfg.iterations, coarse=cfg.coarse,
                               driver_segment=cfg.driver_segment,
                               input_shape=(spec.in_channels, spec.image_size, spec.image_size),
                               num_classes=spec.num_classes, batch=cfg.batch_size, optim=cfg.optim,
                               resources=resources, seed=cfg.seed,
                               log=lambda text: _emit(events, kind="note", epoch=0, text=text))
    tracking.set_tag(cfg.tracking_uri, run_id, "raypar.tuned_split", ",".join(map(str, split)))
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "tuning.json"), "w") as f:
            json.dump(as_json(trials), f, indent=2)
        tracking.log_artifacts(cfg.tracking_uri, run_id, folder)
    return split


def _write_checkpoint(folder: str, engine: PararealEngine, meta: dict) -> None:
    path = os.path.join(folder, tracking.STATE_FILE)
    torch.save(engine.get_state(), path)
    meta = dict(meta, state_sha256=_sha256(path))
    tracking.write_meta(folder, meta)               # written last: a checkpoint without it is treated as torn


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_checkpoint(folder: str) -> tuple[dict, dict]:
    """(meta, state) of a checkpoint folder; raises if it is torn (missing meta, bad hash, unreadable state)."""
    with open(os.path.join(folder, tracking.META_FILE)) as f:
        meta = json.load(f)
    path = os.path.join(folder, tracking.STATE_FILE)
    if _sha256(path) != meta.get("state_sha256"):
        raise ValueError(f"checkpoint {folder} is torn: {tracking.STATE_FILE} does not match its hash")
    # weights_only: a checkpoint can never run code on load
    return meta, torch.load(path, weights_only=True, map_location="cpu")


def load_latest_checkpoint(cfg: TrainConfig) -> tuple[dict | None, dict | None]:
    """The newest readable checkpoint of this run, or (None, None).

    Candidates are Ray's latest (``ray.train.get_checkpoint()``) and every checkpoint folder under
    ``storage_path/name``, newest first: a driver killed right after reporting may die before Ray's controller
    registers that checkpoint, and a torn newest checkpoint falls back to the one before it."""
    import ray.train
    listed = tracking.checkpoints(cfg.storage_path, cfg.name)
    latest = ray.train.get_checkpoint()
    if latest is not None and latest.path.rstrip("/") not in {c.path.rstrip("/") for c in listed}:
        listed.insert(0, latest)
    for ckpt in listed:
        try:
            with ckpt.as_directory() as folder:
                return _read_checkpoint(folder)
        except Exception as e:  # noqa: BLE001 - any damage means: fall back to an older checkpoint
            print(f"raypar: warning: skipping unreadable checkpoint {ckpt.path}: {e}", file=sys.stderr)
    return None, None


def _emit(events, **event) -> None:
    if events is not None:
        events.actor.put_nowait.remote(event)          # fire and forget: progress never slows training


def _train_epoch(engine: PararealEngine, batches, epoch: int, events) -> tuple[StepStats, float, int, int]:
    totals, loss_sum, correct, seen = StepStats(), 0.0, 0, 0
    for i, (x, y) in enumerate(batches):
        loss, right, st = engine.train_step(x, y)
        totals.add(st)
        if not st.skipped:                  # a skipped batch (--on-nonfinite skip) changed nothing: not counted
            bad = not math.isfinite(loss)
            if engine.replica.world > 1:    # every replica stops at the same step (the others would wait for it)
                bad = engine.all_sum([float(bad)])[0] > 0
            if bad:
                where = f"is {loss}" if not math.isfinite(loss) else "of another replica is not finite"
                raise FloatingPointError(f"the loss {where} at epoch {epoch}, step {i + 1}: training stopped; the "
                                         f"last good checkpoint is kept (try a lower --lr, or --on-nonfinite skip)")
            loss_sum += loss * len(y)
            correct += right
            seen += len(y)
        _emit(events, kind="step", epoch=epoch, done=i + 1, total=len(batches))
    if not seen:
        raise FloatingPointError(f"every batch of epoch {epoch} had a non-finite loss ({totals.skipped} skipped): "
                                 f"training stopped; the last good checkpoint is kept (try a lower --lr)")
    return totals, loss_sum, correct, seen


STOPPED_TAG = "raypar.stopped"     # why train_loop ended a run for good (a non-finite loss); "" while it runs


def train_loop(config: dict) -> None:
    """Runs in the Ray Train worker (the driver of one parareal network).

    ``config`` holds the run's ``cfg`` (a :class:`TrainConfig` as a dict) and ``events``: a ``ray.util.queue.Queue``
    (or None) that receives progress events (dicts with ``kind`` = ``note`` (a line of text), ``start``, ``step`` or
    ``epoch``)."""
    import logging

    import ray.train

    names = ["ray.train", *[n for n in logging.root.manager.loggerDict if n.startswith("ray.train")]]
    try:                       # Ray Train V2 names this one by its file: "Reporting training result ..." per report
        from ray.train.v2._internal.execution import context as train_context
        names.append(train_context.__file__)
    except ImportError:
        pass
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)      # no per-report chatter in the user's terminal
    cfg = TrainConfig(**config["cfg"])
    ctx = ray.train.get_context()
    replica = Replica(ctx.get_world_rank(), ctx.get_world_size())
    rank0 = replica.rank == 0
    events = config.get("events") if rank0 else None
    run_id = cfg.extra["mlflow_run_id"]
    spec = data.load(cfg.dataset, cfg.data_dir, cfg.download)

    meta, state = load_latest_checkpoint(cfg)

    def staged():
        torch.manual_seed(cfg.seed)                  # the same initial weights on every replica
        return build(cfg.model, num_classes=spec.num_classes, in_channels=spec.in_channels,
                     width_mult=cfg.width_mult, image_size=spec.image_size, norm=cfg.norm)

    gpus = _gpus_per_subnet(cfg)
    resources = Resources(gpus, cfg.cpus_per_subnet, cfg.placement, first_in_driver=cfg.driver_segment,
                          transport=cfg.transport, channels_last=cfg.channels_last, amp=cfg.amp,
                          coarse_in_actors=cfg.coarse_in_actors, defer_weights=cfg.defer_weights,
                          batch=cfg.batch_size)

    def network(balance) -> PararealNet:
        # a time balance times the blocks at the run's batch (at 8 samples, VGG-16 x0.25's profile took [4, 8] or
        # [3, 9] by chance; at 64, [3, 9], the fastest on the engine, every time)
        return PararealNet(staged(), cfg.subnets, cfg.iterations, cfg.coarse, balance, profile_batch=cfg.batch_size,
                           driver_segment=cfg.driver_segment, defer_weights=cfg.defer_weights,
                           profile_device=resources.device, channels_last=cfg.channels_last)
    # a resumed run keeps the split it started with (a measured balance could choose another one)
    balance = meta["split"] if meta else cfg.balance
    if balance == TUNE:                                   # rank 0 measures; the other replicas wait for its split
        balance = _tuned_split(cfg, spec, staged, resources, events, run_id) if rank0 else "flops"
    net = network(balance)
    split = hybrid.broadcast(net.split, replica.world)     # every replica takes the split rank 0 measured
    if split != net.split:
        net = network(split)
    engine = PararealEngine(net, cfg.optim, resources, seed=cfg.seed, skip_nonfinite=cfg.on_nonfinite == "skip",
                            replica=replica)
    start = 0
    if state is not None:
        engine.set_state(state)
        start = meta["epoch"]
    del state
    restarts = 0
    if rank0:
        tracking.set_tag(cfg.tracking_uri, run_id, STOPPED_TAG, "")     # this attempt has not stopped (yet)
        if meta:
            tracking.log_metrics(cfg.tracking_uri, run_id, meta["metrics"], step=start)   # if never logged
        restarts = tracking.count_start(cfg.tracking_uri, run_id)
    _emit(events, kind="start", epoch=start, restarts=restarts, driver_pid=os.getpid(),
          actor_pids=engine.actor_pids())
    where = engine.placement()
    if replica.world > 1:
        import torch.distributed as dist
        everywhere = [None] * replica.world
        dist.all_gather_object(everywhere, where)
        where = everywhere
    if rank0:
        tracking.set_tag(cfg.tracking_uri, run_id, "raypar.placement", json.dumps(where))
        tracking.set_tag(cfg.tracking_uri, run_id, "raypar.transport", engine.tx.name)   # what "auto" chose
    try:
        for epoch in range(start + 1, cfg.epochs + 1):
            t0 = time.perf_counter()
            shard = (replica.rank, replica.world)
            batches = data.loader(spec.train, cfg.batch_size, True, cfg.seed, epoch, shard)
            totals, loss_sum, correct, seen = _train_epoch(engine, batches, epoch, events)
            engine.end_epoch()
            train_time = time.perf_counter() - t0
            loss_sum, correct, seen = engine.all_sum([loss_sum, correct, seen])      # over the replicas
            val_loss, val_acc = engine.evaluate(data.loader(spec.val, 256, False, shard=shard))
            steps = max(1, totals.steps)
            metrics = {
                "train_loss": loss_sum / seen, "train_acc": correct / seen,
                "val_loss": val_loss, "val_acc": val_acc, "epoch_time_s": time.perf_counter() - t0,
                "samples_per_s": seen / train_time,
                "time_pre_coarse_s": totals.driver / steps, "time_fine_max_s": totals.fine_max / steps,
                "time_transfer_s": totals.transfer / steps, "step_time_s": totals.wall / steps,
                "bytes_per_step": totals.bytes / steps, "lr": engine.sched.get_last_lr()[0],
                "skipped_batches": totals.skipped,
            }
            if engine.scaler:                   # --amp fp16: steps skipped everywhere for an overflow, and the scale
                metrics.update(overflow_steps=totals.overflow, loss_scale=engine.scaler.scale)
            # checkpoint first, then MLflow: a crash in between is repaired on resume (log_metrics skips what is
            # there already), so every epoch is logged exactly once. With R replicas rank 0's state is the one
            # checkpoint (the weights are the same on every replica; BatchNorm statistics are rank 0's)
            with tempfile.TemporaryDirectory() as folder:
                checkpoint = None
                if rank0:
                    _write_checkpoint(folder, engine, {"epoch": epoch, "split": net.split, "mlflow_run_id": run_id,
                                                       "metrics": metrics,
                                                       "config": tracking.redact_config(cfg.to_dict())})
                    checkpoint = Checkpoint.from_directory(folder)
                ray.train.report(dict(metrics, epoch=epoch), checkpoint=checkpoint)
            if rank0:
                tracking.log_metrics(cfg.tracking_uri, run_id, metrics, step=epoch)
            _emit(events, kind="epoch", epoch=epoch, metrics=metrics)
        if rank0:
            with tempfile.TemporaryDirectory() as folder:
                torch.save(engine.state_dict(), os.path.join(folder, "final_weights.pt"))
                with open(os.path.join(folder, "config.json"), "w") as f:
                    json.dump(dict(tracking.redact_config(cfg.to_dict()), split=net.split, gpus_per_subnet=gpus),
                              f, indent=2)
                tracking.log_artifacts(cfg.tracking_uri, run_id, folder)
    except FloatingPointError as e:
        # A non-finite loss comes back on every restart (a resumed run repeats its steps bit for bit): it ends the
        # run for good, where a failed worker would be restarted by --max-failures. fit() raises it.
        if rank0:
            tracking.set_tag(cfg.tracking_uri, run_id, STOPPED_TAG, str(e))
    finally:
        engine.shutdown()


def bundles(cfg: TrainConfig, gpus: float) -> list[dict]:
    """What one run needs: per replica, the driver (a Ray Train worker) and one bundle per fine actor."""
    gpu = {"GPU": gpus} if gpus else {}
    actors = cfg.subnets - 1 if cfg.driver_segment else cfg.subnets
    return ([{"CPU": 1.0, **gpu}] + [{"CPU": cfg.cpus_per_subnet, **gpu} for _ in range(actors)]) * cfg.replicas


def _started_by_this_process() -> bool:
    """Whether ``ray.init()`` in this process started the cluster (a private local Ray: ``ray.init`` cannot be given
    an autoscaling config, so such a cluster never grows)."""
    import ray._private.worker
    node = getattr(ray._private.worker, "_global_node", None)
    return bool(node is not None and getattr(node, "head", False))


def cluster_can_grow(wait_s: float = 5.0) -> bool | None:
    """Whether an autoscaler can add nodes to the current Ray cluster: True, False (a fixed cluster: a private local
    Ray, or nodes started by hand with ``ray start``), or None when the cluster does not say (then assume it can).

    A cluster that ``ray.init()`` started in this process cannot grow. Otherwise, read what Ray's autoscaler itself
    publishes in the GCS:
      - a cluster config (``ReportClusterConfig``, e.g. KubeRay / managed clusters): it can grow when a node group
        has ``max_count`` above its ``min_count`` (the rule Ray Data uses, ``is_autoscaling_enabled``);
      - otherwise the v1 monitor's status report (``__autoscaling_status``, what ``ray status`` shows). A cluster
        started without ``--autoscaling-config`` runs a read-only autoscaler that names every node's type after the
        node itself (``node_<id>``) and never launches one; with a cluster-launcher config (``ray up``) the types are
        the config's (``gpu_1x``, ...). The report is written every few seconds: wait up to ``wait_s`` for it.
    The v2 autoscaler publishes neither: None."""
    import ray._private.ray_constants as ray_constants
    import ray._private.state
    from ray.experimental.internal_kv import _internal_kv_get
    if _started_by_this_process():
        return False
    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception:  # noqa: BLE001 - a private API: any failure means "not known"
        config = None
    if config is not None and config.node_group_configs:
        return any(g.max_count == -1 or g.max_count > g.min_count
                   for g in config.node_group_configs if g.resources and g.max_count != 0)
    try:
        from ray.autoscaler.v2.utils import is_autoscaler_v2
        if is_autoscaler_v2(fetch_from_server=True):
            return None
    except Exception:  # noqa: BLE001
        pass
    deadline = time.monotonic() + wait_s
    while True:
        try:
            raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        except Exception:  # noqa: BLE001
            return None
        if raw or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    try:
        mapping = (json.loads(raw).get("autoscaler_report") or {}).get("node_type_mapping") or {}
    except (TypeError, ValueError, AttributeError):
        return None
    if not mapping:
        return None
    return not all(node_type == f"node_{node}" for node, node_type in mapping.items())


def _fits(bundle: dict, node: dict) -> bool:
    return all(node.get(k, 0) >= v - 1e-9 for k, v in bundle.items() if v)


def wait_for_resources(cfg: TrainConfig, gpus: float) -> None:
    """Ask for the whole run as one placement group, so that an autoscaler sees the full demand, and fail with a
    clear message when the cluster cannot provide it within ``cfg.resource_timeout_s`` — or at once when the cluster
    cannot grow (no autoscaler, see :func:`cluster_can_grow`) and its nodes could never hold the run: more of a
    resource than all nodes have together, or a bundle that fits no node."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    asked = bundles(cfg, gpus)
    total = {k: sum(b.get(k, 0) for b in asked) for k in ("CPU", "GPU")}
    have = ray.cluster_resources()
    per = len(asked) // cfg.replicas
    what = (f"{len(asked)} bundles ({f'{cfg.replicas} replicas x ' if cfg.replicas > 1 else ''}driver + {per - 1} "
            f"fine actors: {total['CPU']:g} CPU, {total['GPU']:g} GPU in all)")
    fix = (f"lower {'--replicas, ' if cfg.replicas > 1 else ''}--subnets, --gpus-per-subnet or --cpus-per-subnet, "
           f"or add nodes")
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    never = (any(total[k] > have.get(k, 0) + 1e-9 for k in total)
             or any(not any(_fits(b, node) for node in nodes) for b in asked))
    if never and cluster_can_grow() is False:
        raise UserError(f"the cluster can never provide {what}: it has {have.get('CPU', 0):g} CPU, "
                        f"{have.get('GPU', 0):g} GPU in total on {len(nodes)} node(s) and no autoscaler to add nodes "
                        f"— {fix}")
    pg = placement_group(asked, strategy=cfg.placement)
    try:
        ready, _ = ray.wait([pg.ready()], timeout=cfg.resource_timeout_s)
    finally:
        remove_placement_group(pg)
    if not ready:
        raise UserError(f"the cluster could not provide {what} within {cfg.resource_timeout_s:g} s; it has "
                        f"{have.get('CPU', 0):g} CPU, {have.get('GPU', 0):g} GPU in total — {fix}")


def check_shared_storage(cfg: TrainConfig, timeout_s: float = 60.0) -> None:
    """Check that ``cfg.storage_path`` can be written (a :class:`UserError` in one line if not) and, on a
    multi-node cluster, that every node sees it: write a marker file there from this process and look for it from a
    task pinned to each other alive node. A node that cannot see it raises a :class:`UserError` naming the node (a
    restarted driver there would not find the checkpoints). Remote URIs (``s3://``, ``gs://``, ...) are not
    checked; a node that does not answer within ``timeout_s`` is only warned about. Leaves nothing behind: the
    marker, and any folder created for it, are removed."""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    root = cfg.storage_path
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


def root_cause(error: BaseException) -> BaseException:
    """The exception a Ray Train worker (the first rank that failed) or its controller raised, out of the
    ``WorkerGroupError`` / ``RayTaskError`` wrappers around it; ``error`` itself when it wraps nothing."""
    cause = error
    failures = getattr(error, "worker_failures", None)
    if isinstance(failures, dict) and failures:
        cause = failures[min(failures)]
    cause = getattr(cause, "controller_failure", None) or cause
    while isinstance(getattr(cause, "cause", None), BaseException):     # RayTaskError wraps the real exception
        cause = cause.cause
    return cause


def failure_reason(error: BaseException, max_failures: int = 0) -> str:
    """One line saying why a run failed, for the MLflow tag ``raypar.error``: Ray Train reports a worker's failure
    as a ``WorkerGroupError`` whose text is a truncated traceback; the reason is the worker's own exception (an
    ``ActorDiedError`` for a lost fine actor, the ``FloatingPointError`` of a NaN loss, ...)."""
    from ray.train import WorkerGroupError
    cause = root_cause(error)
    lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
    line = next((ln for ln in lines if not ln.startswith(("Traceback", "File ", "^", "ray::"))), "")
    reason = f"{type(cause).__name__}: {line}" if line else type(cause).__name__
    if isinstance(error, WorkerGroupError) and max_failures > 0:
        reason += f" (no restarts left: --max-failures {max_failures})"
    return reason[:1000]


def _quick_to_stop(trainer_cls):
    """``trainer_cls`` whose controller ends its placement-group cleaner at once at the end of a run.

    Ray Train (2.60) starts a detached cleaner actor that polls the State API to see whether the controller still
    lives, so that it can remove the run's placement group if the controller dies without cleaning up. At the end of
    every run the controller asks it to stop and waits up to 12 s for its poll to return. Where the State API finds
    no answer — no dashboard, or a stale ``/tmp/ray/ray_current_cluster`` left by an earlier ``ray start`` on the
    machine — the poll hangs (40 s here): every run ended with a 12 s wait after its last epoch and a
    ``GetTimeoutError`` traceback from the controller on the console. At a clean stop (or the controller's own
    abort, which removes the placement group itself) the cleaner has nothing left to do, so it is killed instead,
    which is what its ``stop`` ends in; while the run lives it works as before. Private API: where Ray's classes
    are not as expected, ``trainer_cls`` itself."""
    try:
        from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    except ImportError:
        return trainer_cls
    if not (hasattr(trainer_cls, "_create_default_callbacks")
            and hasattr(PlacementGroupCleanerCallback, "_stop_cleaner")):
        return trainer_cls

    class KillCleanerAtStop(PlacementGroupCleanerCallback):
        def _stop_cleaner(self):
            import ray
            cleaner, self._cleaner = getattr(self, "_cleaner", None), None
            if cleaner is not None:
                try:
                    ray.kill(cleaner)
                except Exception:  # noqa: BLE001 - already gone
                    pass

    class QuickToStop(trainer_cls):
        def _create_default_callbacks(self):
            return [KillCleanerAtStop() if isinstance(c, PlacementGroupCleanerCallback) else c
                    for c in super()._create_default_callbacks()]
    return QuickToStop


def fit(cfg: TrainConfig, events=None) -> TrainResult:
    """Run (or resume) training of ``cfg`` with a ``TorchTrainer`` on the current Ray cluster.

    ``events``: an optional ``ray.util.queue.Queue`` that receives progress events (see :func:`train_loop`)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = cfg.resolved()
    gpus = _gpus_per_subnet(cfg)
    if cfg.transport == "cuda-ipc" and not gpus:
        raise UserError("--transport cuda-ipc needs GPUs, and this Ray cluster has none: use another --transport, "
                        "or a cluster with GPUs")
    check_shared_storage(cfg)
    wait_for_resources(cfg, gpus)
    run_id, resumed = tracking.open_run(cfg)
    cfg = dataclasses.replace(cfg, extra=dict(cfg.extra, mlflow_run_id=run_id))
    trainer = _quick_to_stop(TorchTrainer)(
        train_loop, train_loop_config={"cfg": cfg.to_dict(), "events": events},
        # R drivers, spread over the nodes so that each one's fine actors can join it there (PACK per replica);
        # gloo for the drivers' group (a CUDA driver adds an NCCL group of its own: raypar.engine.hybrid)
        scaling_config=ScalingConfig(num_workers=cfg.replicas, use_gpu=gpus > 0,
                                     resources_per_worker={"CPU": 1, **({"GPU": gpus} if gpus else {})},
                                     placement_strategy="SPREAD" if cfg.replicas > 1 else "PACK"),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name=cfg.name, storage_path=cfg.storage_path,
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.num_to_keep),
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             # Ray Train's own log lines ("Requesting resources", "Started training worker group",
                             # ...) only when they are warnings: the progress bar says how the run goes
                             logging_config=LoggingConfig(log_level="WARNING")))
    try:
        result = trainer.fit()
        if result.error:
            raise result.error
        stopped = tracking.get_tag(cfg.tracking_uri, run_id, STOPPED_TAG)
        if stopped:
            raise FloatingPointError(stopped)
    except BaseException as e:
        tracking.close_run(cfg.tracking_uri, run_id, e, reason=failure_reason(e, cfg.max_failures))
        raise
    tracking.close_run(cfg.tracking_uri, run_id)
    return TrainResult(dict(result.metrics or {}), run_id, resumed,
                       result.checkpoint.path if result.checkpoint else None)
