"""Starting a run: :func:`fit` opens its MLflow run and runs a Ray Train ``DataParallelTrainer`` whose workers (the
drivers) run :func:`driver`; the training itself is :mod:`raypar.training.loop`.

Nothing here imports torch: the command's process needs none (it starts Ray and waits), and each driver's process
imports it only in :mod:`raypar.training.loop`, after its fine actors' processes have been asked for.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import data, tracking
from ..errors import UserError
from .config import TrainConfig
from .events import emit, starting_actors
from .preflight import check_shared_storage, gpus_per_subnet, run_resources, wait_for_resources
from .ray_compat import abort, interruptible, quick_to_stop, quiet_train_logs, without_idle_helpers


@dataclass
class TrainResult:
    metrics: dict
    run_id: str
    resumed: bool
    checkpoint_path: str | None
    name: str = ""                     # the run's name (checkpoint folder and MLflow run)
    split: list | None = None          # the blocks per sub-network it trained with


def driver(config: dict) -> None:
    """The Ray Train worker's function: asks for this driver's fine actors, then runs
    :func:`raypar.training.loop.train_loop` (``config`` as it takes it) with them.

    The actors' processes (Python, Ray, torch) start while this one imports torch and the engine, which takes as
    long; a run with ``--balance tune`` starts them after its trials instead, which need the machine to themselves."""
    import ray.train

    from ..engine.placement import FineActors
    from ..network.specs import TUNE
    quiet_train_logs()
    cfg = TrainConfig(**config["cfg"])
    rank = ray.train.get_context().get_world_rank()
    standby = None
    if cfg.model.balance != TUNE:
        standby = FineActors(starting_actors(cfg, config.get("events") if rank == 0 else None),
                             run_resources(cfg, rank))
    try:
        from .loop import train_loop
        train_loop(config, standby)
    except BaseException:
        if standby is not None:            # (a second shutdown, after the engine's own, does nothing)
            standby.shutdown()
        raise


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


def _close_quietly(tracking_uri: str, run_id: str, error: BaseException, reason: str) -> None:
    """End a run that failed; where the store cannot be reached either, the run's own error is what the caller
    sees (the MLflow run stays open and a resume reopens it)."""
    try:
        tracking.close_run(tracking_uri, run_id, error, reason=reason)
    except Exception:  # noqa: BLE001
        pass


def fit(cfg: TrainConfig, events=None, resume: bool = False, opened: dict | None = None) -> TrainResult:
    """Train ``cfg`` with a Ray Train ``DataParallelTrainer`` on the current Ray cluster: a new run, or an unfinished
    one resumed, by the rule of :mod:`raypar.training.runs`.

    Args:
        events: an optional ``ray.util.queue.Queue`` that receives progress events (:mod:`raypar.training.events`).
        resume: ``--resume``: resume the newest unfinished run with these settings, or train a finished run
            further (more epochs).
        opened: filled with ``run_id`` (and ``tracking_uri``) as soon as the MLflow run is open, so that a caller
            can close it as KILLED when the user interrupts; a caller that sets ``opened["interrupted"]`` makes a
            failure that follows end the run KILLED too.
    Raises:
        UserError: a finished run named without ``--resume`` (see :func:`raypar.training.runs.decide`), or a
            mistake found before training.
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from ..engine.auto import AUTO
    from .runs import decide
    if cfg.model.subnets == AUTO:                         # (the CLI resolves it first, and says so)
        from .subnets import resolve_subnets
        cfg, line = resolve_subnets(cfg, data.load_for(cfg))
        emit(events, kind="note", epoch=0, text=line)
    decision = decide(cfg.resolved(), resume)
    cfg = decision.cfg
    gpus = gpus_per_subnet(cfg)
    if cfg.engine.transport == "cuda-ipc" and not gpus:
        raise UserError("--transport cuda-ipc needs GPUs, and this Ray cluster has none: use another --transport, "
                        "or a cluster with GPUs")
    emit(events, kind="phase", text="checking the cluster's resources and storage")
    check_shared_storage(cfg)
    wait_for_resources(cfg, gpus)
    run_id, resumed = tracking.open_run(cfg, decision.meta)
    if opened is not None:
        opened.update(run_id=run_id, tracking_uri=cfg.run.tracking_uri)
    if decision.epochs_before is not None:               # resumed with other --epochs: say so in the run
        tracking.set_tag(cfg.run.tracking_uri, run_id, "raypar.epochs",
                         f"{cfg.optim.epochs} (was {decision.epochs_before}; changed at epoch {decision.epoch})")
    cfg = cfg.replace(extra=dict(cfg.extra, mlflow_run_id=run_id))
    emit(events, kind="phase", text="starting the driver (a Ray Train worker)")
    # R drivers share a torch.distributed group that train_loop makes itself (bound to the node's address, where Ray
    # Train's TorchConfig would listen on every interface); one driver needs none
    # Ctrl-C is the caller's KeyboardInterrupt, in the main thread too (Ray Train's own handler would end fit() as if
    # the run had finished); Ray Train's helper actors that have no work in a raypar run are not started
    trainer = interruptible(without_idle_helpers(quick_to_stop(DataParallelTrainer)))(
        driver, train_loop_config={"cfg": cfg.to_dict(), "events": events},
        # R drivers, spread over the nodes so that each one's fine actors can join it there (PACK per replica)
        scaling_config=ScalingConfig(num_workers=cfg.engine.replicas, use_gpu=gpus > 0,
                                     resources_per_worker={"CPU": 1, **({"GPU": gpus} if gpus else {})},
                                     placement_strategy="SPREAD" if cfg.engine.replicas > 1 else "PACK"),
        run_config=RunConfig(name=cfg.run.name, storage_path=cfg.run.storage_path,
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.num_to_keep),
                             failure_config=FailureConfig(max_failures=cfg.run.max_failures),
                             # Ray Train's own log lines ("Requesting resources", "Started training worker group",
                             # ...) only when they are warnings: the progress bar says how the run goes
                             logging_config=LoggingConfig(log_level="WARNING")))
    try:
        result = trainer.fit()
        if result.error:
            raise result.error
        stopped = tracking.get_tag(cfg.run.tracking_uri, run_id, tracking.STOPPED_TAG)
        if stopped:
            raise FloatingPointError(stopped)
    except (KeyboardInterrupt, SystemExit) as e:
        abort(trainer)                                    # its workers and actors stop now, not at Ray's shutdown
        _close_quietly(cfg.run.tracking_uri, run_id, e, reason=tracking.INTERRUPTED)
        raise
    except BaseException as e:                            # after Ctrl-C, Ray's shutdown fails the run: still KILLED
        interrupted = opened is not None and opened.get("interrupted")
        _close_quietly(cfg.run.tracking_uri, run_id, e,
                       reason=tracking.INTERRUPTED if interrupted else failure_reason(e, cfg.run.max_failures))
        raise
    tracking.close_run(cfg.run.tracking_uri, run_id)
    meta = tracking.latest_meta(cfg.run.storage_path, cfg.run.name) or {}
    return TrainResult(dict(result.metrics or {}), run_id, resumed,
                       result.checkpoint.path if result.checkpoint else None, cfg.run.name, meta.get("split"))
