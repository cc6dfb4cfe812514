"""``--subnets auto`` resolved to a number before a run starts (its name, resources and split depend on N)."""
from __future__ import annotations


def resolve_subnets(cfg, spec) -> tuple:
    """``--subnets auto``: ``cfg`` with the N to train, and the line that says why.

    The run named by ``--name``, where it has a checkpoint, keeps its own N. Otherwise the model is built once and
    profiled once on this machine (time, at the run's batch, one thread; on its GPU where the run computes on GPUs),
    every N from 1 to the devices one replica has here (this machine's cores, or its GPUs; at most the model's
    blocks, and N >= K) gets its predicted speedup (:func:`raypar.engine.auto.predict_subnets`, the start-of-run
    prediction's quantity), and the N that :func:`raypar.engine.auto.pick_subnets` picks is trained: the best
    prediction, or 1 (the original network, K = 1) when no N >= 2 reaches 1.1x. With ``--address`` the devices
    counted are still this machine's. The predictions go to ``cfg.extra["subnets_auto"]`` (JSON, N -> speedup), which
    the run records as the MLflow tag ``raypar.subnets_auto``.

    Args:
        cfg: the run's :class:`~raypar.training.config.TrainConfig`, with ``subnets`` ``"auto"``.
        spec: its data set (:func:`raypar.training.data.load_for`): channels, image size, classes.
    Returns:
        ``(cfg with subnets a number, the line)``.
    """
    import json

    import torch

    from ..engine.auto import THRESHOLD, devices_in_use, pick_subnets, predict_subnets
    from ..engine.cost import cpu_cores, num_threads
    from ..network.models import build
    from ..network.specs import num_blocks
    from .checkpoints import newest_readable_meta
    m, e = cfg.model, cfg.engine
    if cfg.run.name:
        meta = newest_readable_meta(cfg.resolved().run.storage_path, cfg.run.name)
        if meta and meta.get("split"):
            n = len(meta["split"])
            return cfg.replace(subnets=n), f"--subnets auto: N = {n}, the N of run {cfg.run.name}, which it resumes"
    gpus = e.gpus_per_subnet if e.gpus_per_subnet is not None else float(torch.cuda.is_available())
    on_gpu = gpus > 0 and torch.cuda.is_available()
    if on_gpu:
        available = max(1, torch.cuda.device_count() // e.replicas)
        limit = int(available / gpus + 1e-9) - (0 if e.driver_segment else 1)
    else:
        gpus, available = 0.0, max(1, cpu_cores() // e.replicas)
        limit = available
    limit = min(limit, num_blocks(m.name))
    candidates = [1, *range(max(2, m.iterations), limit + 1)]
    unit = "GPU" if on_gpu else "core"
    with num_threads(1), torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.optim.seed)
        staged = build(m.name, num_classes=spec.num_classes, in_channels=spec.in_channels, width_mult=m.width_mult,
                       image_size=spec.image_size, norm=m.norm)
        predictions = predict_subnets(
            staged, (spec.in_channels, spec.image_size, spec.image_size), cfg.optim.batch_size, candidates,
            iterations=m.iterations, coarse=m.coarse, balance=m.balance, driver_segment=e.driver_segment,
            defer_weights=e.defer_weights, channels_last=e.channels_last, device="cuda" if on_gpu else "cpu",
            devices_of=lambda k: devices_in_use(k, e.driver_segment, gpus, available), seed=cfg.optim.seed,
            coarse_in_actors=e.coarse_in_actors)
    predictions = {k: round(s, 3) for k, s in predictions.items()}     # as recorded and printed
    n = pick_subnets(predictions)
    others = ", ".join(f"N = {k}: {s:.2f}x" for k, s in predictions.items() if k not in (1, n))
    where = f"{available} {unit}{'s' if available != 1 else ''}" + (" per replica" if e.replicas > 1 else "")
    if n > 1:
        line = f"--subnets auto: N = {n} (predicted {predictions[n]:.2f}x on {where}" + (f"; {others})" if others
                                                                                          else ")")
    elif others:
        line = f"--subnets auto: N = 1, the original network (no N >= 2 reaches {THRESHOLD:g}x on {where}: {others})"
    else:
        line = f"--subnets auto: N = 1, the original network ({where}: no sub-networks to run at the same time)"
    picked = cfg.replace(subnets=n, iterations=m.iterations if n > 1 else 1,
                         extra=dict(cfg.extra, subnets_auto=json.dumps({str(k): s for k, s in predictions.items()})))
    return picked, line
