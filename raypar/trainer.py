"""The Ray Train loop: ``TorchTrainer`` runs :func:`train_loop` in the driver worker, which owns pre/coarse/post
and the fine actors, trains epoch by epoch, reports one checkpoint per epoch and logs to MLflow.

A new trainer with the same ``RunConfig(name, storage_path)`` resumes from the latest checkpoint: the loop finds it
with ``ray.train.get_checkpoint()`` and continues at the next epoch with every part's state restored.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass

import torch

from . import data, tracking
from .config import TrainConfig
from .errors import UserError
from .engine import OptimConfig, PararealEngine, Resources, StepStats
from .models import build
from .network import PararealNet


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


def _save_checkpoint(engine: PararealEngine, meta: dict):
    from ray.train import Checkpoint
    folder = tempfile.mkdtemp(prefix="raypar-ckpt-")
    torch.save(engine.get_state(), os.path.join(folder, tracking.STATE_FILE))
    tracking.write_meta(folder, meta)               # written last: a checkpoint without it is treated as torn
    return Checkpoint.from_directory(folder)


def _load_checkpoint(checkpoint) -> tuple[dict, dict]:
    with checkpoint.as_directory() as folder:
        with open(os.path.join(folder, tracking.META_FILE)) as f:
            meta = json.load(f)
        state = torch.load(os.path.join(folder, tracking.STATE_FILE), weights_only=True, map_location="cpu")
    return meta, state


def train_loop(config: dict) -> None:
    """Runs in the Ray Train worker (the driver of one parareal network).

    ``config`` holds the run's ``cfg`` (a :class:`TrainConfig` as a dict) and ``events``: a ``ray.util.queue.Queue``
    (or None) that receives ``(epoch, batches done, batches per epoch, metrics or None)`` for a progress display."""
    import logging

    import ray.train

    for name in ["ray.train", *[n for n in logging.root.manager.loggerDict if n.startswith("ray.train")]]:
        logging.getLogger(name).setLevel(logging.WARNING)      # no per-report chatter in the user's terminal
    cfg = TrainConfig(**config["cfg"])
    events = config.get("events")
    run_id = cfg.extra["mlflow_run_id"]
    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(cfg.seed)
    spec = data.load(cfg.dataset, cfg.data_dir, cfg.download)

    checkpoint = ray.train.get_checkpoint()
    meta, state = _load_checkpoint(checkpoint) if checkpoint else (None, None)
    staged = build(cfg.model, num_classes=spec.num_classes, in_channels=spec.in_channels,
                   width_mult=cfg.width_mult, image_size=spec.image_size)
    # a resumed run keeps the split it started with (a measured-time balance could choose another one)
    net = PararealNet(staged, cfg.subnets, cfg.iterations, cfg.coarse, meta["split"] if meta else cfg.balance)
    gpus = _gpus_per_subnet(cfg)
    engine = PararealEngine(net, OptimConfig(cfg.lr, cfg.momentum, cfg.weight_decay, cfg.epochs),
                            Resources(gpus, cfg.cpus_per_subnet, cfg.placement), seed=cfg.seed)
    start = 0
    if state is not None:
        engine.set_state(state)
        start = meta["epoch"]
    del state
    restarts = int(meta.get("restarts", 0)) + 1 if meta else 0
    try:
        for epoch in range(start + 1, cfg.epochs + 1):
            t0 = time.perf_counter()
            totals, loss_sum, correct, seen = StepStats(), 0.0, 0, 0
            batches = data.loader(spec.train, cfg.batch_size, True, cfg.seed, epoch)
            for i, (x, y) in enumerate(batches):
                loss, right, st = engine.train_step(x, y)
                totals.add(st)
                loss_sum += loss * len(y)
                correct += right
                seen += len(y)
                if events is not None and rank == 0:
                    events.actor.put_nowait.remote((epoch, i + 1, len(batches), None))   # fire and forget
            engine.end_epoch()
            train_time = time.perf_counter() - t0
            val_loss, val_acc = engine.evaluate(data.loader(spec.val, 256, False))
            steps = max(1, totals.steps)
            metrics = {
                "epoch": epoch, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                "val_loss": val_loss, "val_acc": val_acc, "epoch_time_s": time.perf_counter() - t0,
                "samples_per_s": seen / train_time,
                "time_pre_coarse_s": totals.driver / steps, "time_fine_max_s": totals.fine_max / steps,
                "time_transfer_s": totals.transfer / steps, "step_time_s": totals.wall / steps,
                "bytes_per_step": totals.bytes / steps, "lr": engine.sched.get_last_lr()[0],
            }
            if rank == 0:
                tracking.log_metrics(cfg.tracking_uri, run_id, metrics, step=epoch)
                if events is not None:
                    events.actor.put_nowait.remote((epoch, len(batches), len(batches), metrics))
            ckpt = _save_checkpoint(engine, {"epoch": epoch, "split": net.split, "mlflow_run_id": run_id,
                                             "restarts": restarts, "config": cfg.to_dict()})
            ray.train.report(metrics, checkpoint=ckpt)
        if rank == 0:
            with tempfile.TemporaryDirectory() as folder:
                torch.save(engine.state_dict(), os.path.join(folder, "final_weights.pt"))
                with open(os.path.join(folder, "config.json"), "w") as f:
                    json.dump(dict(cfg.to_dict(), split=net.split, gpus_per_subnet=gpus), f, indent=2)
                tracking.log_artifacts(cfg.tracking_uri, run_id, folder)
    finally:
        engine.shutdown()


def bundles(cfg: TrainConfig, gpus: float) -> list[dict]:
    """What one run needs: the driver (the Ray Train worker) and one bundle per fine actor."""
    gpu = {"GPU": gpus} if gpus else {}
    return [{"CPU": 1.0, **gpu}] + [{"CPU": cfg.cpus_per_subnet, **gpu} for _ in range(cfg.subnets)]


def wait_for_resources(cfg: TrainConfig, gpus: float) -> None:
    """Ask for the whole run as one placement group, so that an autoscaler sees the full demand, and fail with a
    clear message when the cluster cannot provide it within ``cfg.resource_timeout_s``."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    asked = bundles(cfg, gpus)
    total = {k: sum(b.get(k, 0) for b in asked) for k in ("CPU", "GPU")}
    have = ray.cluster_resources()
    pg = placement_group(asked, strategy=cfg.placement)
    try:
        ready, _ = ray.wait([pg.ready()], timeout=cfg.resource_timeout_s)
    finally:
        remove_placement_group(pg)
    if not ready:
        raise UserError(f"the cluster could not provide {len(asked)} bundles (driver + {cfg.subnets} sub-networks: "
                        f"{total['CPU']:g} CPU, {total['GPU']:g} GPU in all) within {cfg.resource_timeout_s:g} s; "
                        f"it has {have.get('CPU', 0):g} CPU, {have.get('GPU', 0):g} GPU in total — lower "
                        f"--subnets, --gpus-per-subnet or --cpus-per-subnet, or add nodes")


def warn_if_node_local_storage(cfg: TrainConfig) -> None:
    import ray
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and "://" not in cfg.storage_path:
        print(f"raypar: warning: --storage-path {cfg.storage_path} looks node-local but the cluster has "
              f"{len(nodes)} nodes; use shared storage (s3://..., gs://..., or an NFS mount on every node) or a "
              f"restarted driver on another node will not find its checkpoints", file=sys.stderr)


def fit(cfg: TrainConfig, events=None) -> TrainResult:
    """Run (or resume) training of ``cfg`` with a ``TorchTrainer`` on the current Ray cluster.

    ``events``: an optional ``ray.util.queue.Queue`` that receives progress events (see :func:`train_loop`)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = cfg.resolved()
    gpus = _gpus_per_subnet(cfg)
    warn_if_node_local_storage(cfg)
    wait_for_resources(cfg, gpus)
    run_id, resumed = tracking.open_run(cfg)
    cfg = dataclasses.replace(cfg, extra=dict(cfg.extra, mlflow_run_id=run_id))
    trainer = TorchTrainer(
        train_loop, train_loop_config={"cfg": cfg.to_dict(), "events": events},
        scaling_config=ScalingConfig(num_workers=1, use_gpu=gpus > 0,
                                     resources_per_worker={"CPU": 1, **({"GPU": gpus} if gpus else {})}),
        run_config=RunConfig(name=cfg.name, storage_path=cfg.storage_path,
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.num_to_keep),
                             failure_config=FailureConfig(max_failures=cfg.max_failures)))
    try:
        result = trainer.fit()
        if result.error:
            raise result.error
    except BaseException as e:
        tracking.close_run(cfg.tracking_uri, run_id, e)
        raise
    tracking.close_run(cfg.tracking_uri, run_id)
    return TrainResult(dict(result.metrics or {}), run_id, resumed,
                       result.checkpoint.path if result.checkpoint else None)
