"""The Ray Train loop: a ``DataParallelTrainer`` runs :func:`train_loop` in the driver worker, which owns pre/coarse/post
and the fine actors, trains epoch by epoch, reports one checkpoint per epoch and logs to MLflow.

A new trainer with the same ``RunConfig(name, storage_path)`` resumes from the latest checkpoint: the loop finds it
with ``ray.train.get_checkpoint()`` and continues at the next epoch with every part's state restored.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time

import torch
from ray.train import Checkpoint

from . import checkpoints, data, tracking
from .events import emit, starting_actors
from ..network.specs import TUNE
from .config import TrainConfig
from ..engine import hybrid
from ..engine.driver import FineActors, PararealEngine, Replica, Resources, StepStats
from ..network.models import build
from ..network.reference import PararealNet
from .preflight import gpus_per_subnet, run_resources
from .ray_compat import quiet_train_logs


def _tuned_split(cfg: TrainConfig, spec, staged, resources: Resources, events, run_id: str) -> list[int]:
    """``--balance tune``: candidate splits side by side on the engine at the run's batch (:mod:`raypar.engine.tuning`); the
    trials go to MLflow (``tuning.json``, tag ``raypar.tuned_split``)."""
    from ..engine.tuning import as_json, tune_split
    split, trials = tune_split(staged(), cfg.model.subnets, iterations=cfg.model.iterations, coarse=cfg.model.coarse,
                               driver_segment=cfg.engine.driver_segment,
                               input_shape=(spec.in_channels, spec.image_size, spec.image_size),
                               num_classes=spec.num_classes, batch=cfg.optim.batch_size, optim=cfg.optim.sgd,
                               resources=resources, seed=cfg.optim.seed,
                               log=lambda text: emit(events, kind="note", epoch=0, text=text))
    tracking.set_tag(cfg.run.tracking_uri, run_id, "raypar.tuned_split", ",".join(map(str, split)))
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "tuning.json"), "w") as f:
            json.dump(as_json(trials), f, indent=2)
        tracking.log_artifacts(cfg.run.tracking_uri, run_id, folder)
    return split


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
        emit(events, kind="step", epoch=epoch, done=i + 1, total=len(batches))
    if not seen:
        raise FloatingPointError(f"every batch of epoch {epoch} had a non-finite loss ({totals.skipped} skipped): "
                                 f"training stopped; the last good checkpoint is kept (try a lower --lr)")
    return totals, loss_sum, correct, seen


def _build_engine(cfg: TrainConfig, spec, resources: Resources, replica: Replica, balance, state, standby, events,
                  run_id: str) -> tuple[PararealEngine, PararealNet]:
    """The run's network (split by ``balance``: a measured profile, a tuned split or the split a resumed run kept)
    and its engine on the ``standby`` fine actors (None: after tuning, the engine starts its own), with ``state``
    (a checkpoint's) restored. Where ``resources.coarse_in_actors`` is None the coarse sweep goes where the
    network's profile predicts the faster step (:func:`~raypar.engine.auto.choose_coarse_in_actors`). Rank 0 says
    the predicted speedup and records it and the placement."""
    rank0 = replica.rank == 0

    def staged():
        torch.manual_seed(cfg.optim.seed)                  # the same initial weights on every replica
        return build(cfg.model.name, num_classes=spec.num_classes, in_channels=spec.in_channels,
                     width_mult=cfg.model.width_mult, image_size=spec.image_size, norm=cfg.model.norm)

    def network(balance) -> PararealNet:
        # a time balance times the blocks at the run's batch, as the run computes them
        return PararealNet(staged(), cfg.model.subnets, cfg.model.iterations, cfg.model.coarse, balance,
                           profile_batch=cfg.optim.batch_size, driver_segment=cfg.engine.driver_segment,
                           defer_weights=cfg.engine.defer_weights, profile_device=resources.device,
                           channels_last=cfg.engine.channels_last)
    if standby is not None and balance == "time":
        standby.ready()                        # the actors' start-up done: a time profile measures a quiet machine
    emit(events, kind="phase", text=("measuring candidate splits" if balance == TUNE else
                                     "profiling the split" if isinstance(balance, str) else "building the network"))
    if balance == TUNE:                                   # rank 0 measures; the other replicas wait for its split
        balance = _tuned_split(cfg, spec, staged, resources, events, run_id) if rank0 else "flops"
    net = network(balance)
    split = hybrid.broadcast(net.split, replica.world)     # every replica takes the split rank 0 measured
    if split != net.split:
        net = network(split)
    if resources.coarse_in_actors is None:  # where the coarse sweep runs: rank 0's choice for every replica
        from ..engine.auto import choose_coarse_in_actors
        chosen = choose_coarse_in_actors(net, cfg.engine.driver_segment, resources.gpus_per_subnet)
        resources = dataclasses.replace(resources, coarse_in_actors=bool(hybrid.broadcast(chosen, replica.world)))
    if rank0:                               # the split trained, searchable beside the run's params
        tracking.set_tag(cfg.run.tracking_uri, run_id, "raypar.split", ",".join(map(str, net.split)))
    if rank0 and net.num_subnets > 1:      # honest about N: the speedup this split predicts, from net's own profile
        from ..engine.auto import run_prediction
        predicted, lines = run_prediction(net, cfg.engine.driver_segment, resources.gpus_per_subnet,
                                          resources.coarse_in_actors)
        for line in lines:                                    # (a start-up line, with the others)
            emit(events, kind="phase", text=line)
        tracking.set_tag(cfg.run.tracking_uri, run_id, "raypar.predicted_speedup", f"{predicted:.3f}")
    if standby is None:
        starting_actors(cfg, events)
    engine = PararealEngine(net, cfg.optim.sgd, resources, seed=cfg.optim.seed,
                            skip_nonfinite=cfg.optim.on_nonfinite == "skip", replica=replica, actors=standby,
                            label_smoothing=cfg.optim.label_smoothing)
    if rank0:                               # where the coarse sweep runs, searchable beside the run's params
        tracking.set_tag(cfg.run.tracking_uri, run_id, "raypar.coarse_in_actors", str(engine.coarse_in_actors).lower())
    if state is not None:
        engine.set_state(state)
    return engine, net


def train_loop(config: dict, standby: FineActors | None = None) -> None:
    """Runs in the Ray Train worker (the driver of one parareal network).

    ``config`` holds the run's ``cfg`` (a :class:`TrainConfig` as a dict) and ``events``: a ``ray.util.queue.Queue``
    (or None) that receives progress events (:mod:`raypar.training.events`). ``standby``: this driver's fine actors,
    asked for before torch was imported (:func:`raypar.training.launch.driver`), with the resources
    :func:`~raypar.training.preflight.run_resources` gives; the loop owns them from here. None: the loop starts them
    (after the trials of ``--balance tune``)."""
    import ray.train

    quiet_train_logs()
    cfg = TrainConfig(**config["cfg"])
    ctx = ray.train.get_context()
    replica = Replica(ctx.get_world_rank(), ctx.get_world_size())
    rank0 = replica.rank == 0
    if replica.world > 1:                 # the drivers' group (gloo; a CUDA driver adds NCCL: raypar.engine.hybrid)
        from ray.train.collective import broadcast_from_rank_zero
        listener = hybrid.listen() if rank0 else None
        addr, port = broadcast_from_rank_zero(listener.getsockname()[:2] if rank0 else None)
        hybrid.init_group(addr, port, replica.world, replica.rank, torch.device("cpu"), listener=listener)
    events = config.get("events") if rank0 else None
    run_id = cfg.extra["mlflow_run_id"]
    meta, state = checkpoints.load_latest(cfg)
    # a resumed run keeps the split and the coarse sweep's place it started with (a new profile could choose others)
    balance = meta["split"] if meta else cfg.model.balance
    coarse_in_actors = cfg.engine.coarse_in_actors
    if coarse_in_actors is None and meta and cfg.model.iterations == 1:
        coarse_in_actors = meta.get("coarse_in_actors", False)
    gpus = gpus_per_subnet(cfg)
    resources = run_resources(cfg, replica.rank, coarse_in_actors)
    # a resumed tuned run starts its actors now, beside the data loading and the MLflow bookkeeping below (a new one
    # after its trials, which need the room; any other run's driver asked for them first: launch.driver)
    if standby is None and balance != TUNE:
        standby = FineActors(starting_actors(cfg, events), resources)
    try:
        restarts = 0
        if rank0:
            tracking.set_tag(cfg.run.tracking_uri, run_id, tracking.STOPPED_TAG, "")   # this attempt has not stopped
            if meta:
                tracking.log_metrics(cfg.run.tracking_uri, run_id, meta["metrics"], step=meta["epoch"])  # if never logged
            restarts = tracking.count_start(cfg.run.tracking_uri, run_id)
            if cfg.extra.get("subnets_auto"):                    # what --subnets auto predicted for each N
                tracking.set_tag(cfg.run.tracking_uri, run_id, "raypar.subnets_auto", cfg.extra["subnets_auto"])
        spec = data.load_for(cfg)
        batch = data.fitted_batch(len(spec.train), cfg.optim.batch_size, replica.world)
        if batch != cfg.optim.batch_size:
            cfg = cfg.replace(batch_size=batch)
            resources = dataclasses.replace(resources, batch=batch)
        engine, net = _build_engine(cfg, spec, resources, replica, balance, state, standby, events, run_id)
    except BaseException:
        if standby is not None:
            standby.shutdown()
        raise
    start = meta["epoch"] if meta else 0
    del state
    emit(events, kind="start", epoch=start, restarts=restarts, driver_pid=os.getpid(),
         actor_pids=engine.actor_pids(), split=net.split, metrics=meta["metrics"] if meta else None)
    where = engine.placement()
    if replica.world > 1:
        import torch.distributed as dist
        everywhere = [None] * replica.world
        dist.all_gather_object(everywhere, where)
        where = everywhere
    if rank0:
        tracking.set_tag(cfg.run.tracking_uri, run_id, "raypar.placement", json.dumps(where))
        tracking.set_tag(cfg.run.tracking_uri, run_id, "raypar.transport", engine.tx.name)   # what "auto" chose
    try:
        for epoch in range(start + 1, cfg.optim.epochs + 1):
            t0 = time.perf_counter()
            shard = (replica.rank, replica.world)
            batches = data.loader(spec.train, cfg.optim.batch_size, True, cfg.optim.seed, epoch, shard)
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
                    checkpoints.write(folder, engine, {"epoch": epoch, "split": net.split,
                                                       "coarse_in_actors": engine.coarse_in_actors,
                                                       "mlflow_run_id": run_id,
                                                       "metrics": metrics,
                                                       "config": tracking.redact_config(cfg.to_dict())})
                    checkpoint = Checkpoint.from_directory(folder)
                ray.train.report(dict(metrics, epoch=epoch), checkpoint=checkpoint)
            if rank0:
                tracking.log_metrics(cfg.run.tracking_uri, run_id, metrics, step=epoch)
            emit(events, kind="epoch", epoch=epoch, metrics=metrics)
        if rank0:
            with tempfile.TemporaryDirectory() as folder:
                torch.save(engine.state_dict(), os.path.join(folder, "final_weights.pt"))
                with open(os.path.join(folder, "config.json"), "w") as f:
                    json.dump(dict(tracking.redact_config(cfg.flat()), split=net.split, gpus_per_subnet=gpus,
                                   coarse_in_actors=engine.coarse_in_actors),
                              f, indent=2)
                tracking.log_artifacts(cfg.run.tracking_uri, run_id, folder)
    except FloatingPointError as e:
        # A non-finite loss comes back on every restart (a resumed run repeats its steps bit for bit): it ends the
        # run for good, where a failed worker would be restarted by --max-failures. fit() raises it.
        if rank0:
            tracking.set_tag(cfg.run.tracking_uri, run_id, tracking.STOPPED_TAG, str(e))
    finally:
        engine.shutdown()
