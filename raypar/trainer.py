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
        if not math.isfinite(loss):
            raise FloatingPointError(f"the loss is {loss} at epoch {epoch}, step {i + 1}: training stopped; the "
                                     f"last good checkpoint is kept (try a lower --lr)")
        totals.add(st)
        loss_sum += loss * len(y)
        correct += right
        seen += len(y)
        _emit(events, kind="step", epoch=epoch, done=i + 1, total=len(batches))
    return totals, loss_sum, correct, seen


def train_loop(config: dict) -> None:
    """Runs in the Ray Train worker (the driver of one parareal network).

    ``config`` holds the run's ``cfg`` (a :class:`TrainConfig` as a dict) and ``events``: a ``ray.util.queue.Queue``
    (or None) that receives progress events (dicts with ``kind`` = ``start``, ``step`` or ``epoch``)."""
    import logging

    import ray.train

    for name in ["ray.train", *[n for n in logging.root.manager.loggerDict if n.startswith("ray.train")]]:
        logging.getLogger(name).setLevel(logging.WARNING)      # no per-report chatter in the user's terminal
    cfg = TrainConfig(**config["cfg"])
    rank0 = ray.train.get_context().get_world_rank() == 0
    events = config.get("events") if rank0 else None
    run_id = cfg.extra["mlflow_run_id"]
    torch.manual_seed(cfg.seed)
    spec = data.load(cfg.dataset, cfg.data_dir, cfg.download)

    meta, state = load_latest_checkpoint(cfg)
    staged = build(cfg.model, num_classes=spec.num_classes, in_channels=spec.in_channels,
                   width_mult=cfg.width_mult, image_size=spec.image_size)
    # a resumed run keeps the split it started with (a measured-time balance could choose another one)
    net = PararealNet(staged, cfg.subnets, cfg.iterations, cfg.coarse, meta["split"] if meta else cfg.balance,
                      driver_segment=cfg.driver_segment)
    gpus = _gpus_per_subnet(cfg)
    engine = PararealEngine(net, OptimConfig(cfg.lr, cfg.momentum, cfg.weight_decay, cfg.epochs),
                            Resources(gpus, cfg.cpus_per_subnet, cfg.placement, first_in_driver=cfg.driver_segment),
                            seed=cfg.seed)
    start = 0
    if state is not None:
        engine.set_state(state)
        start = meta["epoch"]
    del state
    restarts = 0
    if rank0:
        if meta:
            tracking.log_metrics(cfg.tracking_uri, run_id, meta["metrics"], step=start)   # if never logged
        restarts = tracking.count_start(cfg.tracking_uri, run_id)
    _emit(events, kind="start", epoch=start, restarts=restarts, driver_pid=os.getpid(),
          actor_pids=engine.actor_pids())
    try:
        for epoch in range(start + 1, cfg.epochs + 1):
            t0 = time.perf_counter()
            batches = data.loader(spec.train, cfg.batch_size, True, cfg.seed, epoch)
            totals, loss_sum, correct, seen = _train_epoch(engine, batches, epoch, events)
            engine.end_epoch()
            train_time = time.perf_counter() - t0
            val_loss, val_acc = engine.evaluate(data.loader(spec.val, 256, False))
            steps = max(1, totals.steps)
            metrics = {
                "train_loss": loss_sum / seen, "train_acc": correct / seen,
                "val_loss": val_loss, "val_acc": val_acc, "epoch_time_s": time.perf_counter() - t0,
                "samples_per_s": seen / train_time,
                "time_pre_coarse_s": totals.driver / steps, "time_fine_max_s": totals.fine_max / steps,
                "time_transfer_s": totals.transfer / steps, "step_time_s": totals.wall / steps,
                "bytes_per_step": totals.bytes / steps, "lr": engine.sched.get_last_lr()[0],
            }
            # checkpoint first, then MLflow: a crash in between is repaired on resume (log_metrics skips what is
            # there already), so every epoch is logged exactly once
            with tempfile.TemporaryDirectory() as folder:
                _write_checkpoint(folder, engine, {"epoch": epoch, "split": net.split, "mlflow_run_id": run_id,
                                                   "metrics": metrics, "config": cfg.to_dict()})
                ray.train.report(dict(metrics, epoch=epoch), checkpoint=Checkpoint.from_directory(folder))
            if rank0:
                tracking.log_metrics(cfg.tracking_uri, run_id, metrics, step=epoch)
            _emit(events, kind="epoch", epoch=epoch, metrics=metrics)
        if rank0:
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
    actors = cfg.subnets - 1 if cfg.driver_segment else cfg.subnets
    return [{"CPU": 1.0, **gpu}] + [{"CPU": cfg.cpus_per_subnet, **gpu} for _ in range(actors)]


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
        raise UserError(f"the cluster could not provide {len(asked)} bundles (driver + {len(asked) - 1} fine actors: "
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
