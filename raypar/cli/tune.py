"""``raypar tune``: candidate splits measured side by side on the engine, the fastest printed."""
from __future__ import annotations

import argparse

from ..errors import UserError
from ..training.config import TrainConfig
from .options import add_settings, given_settings

TUNED = {"engine": ("gpus_per_subnet", "driver_segment", "coarse_in_actors", "defer_weights", "transport",
                    "channels_last", "amp"),
         "optim": ("batch_size", "seed")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``raypar tune``: the run's model, engine and batch settings as ``raypar train`` takes them,
    the input's shape, and how long to measure."""
    d = TrainConfig()
    add_settings(p, ["model"], defaults=d, skip=("balance",))
    add_settings(p, ["optim", "engine"], defaults=d, only=TUNED["optim"] + TUNED["engine"])
    g = p.add_argument_group("input and measurement")
    g.add_argument("--image-size", type=int, default=32, help="input height = width (default: %(default)s)")
    g.add_argument("--in-channels", type=int, default=3, help="input channels (default: %(default)s)")
    g.add_argument("--num-classes", type=int, default=10, help="classifier outputs (default: %(default)s)")
    g.add_argument("--radius", type=int, default=3,
                   help="candidates: the profile's split and every split one boundary away by up to this many "
                        "blocks (default: %(default)s)")
    g.add_argument("--warmup", type=int, default=2, help="untimed steps per candidate first (default: %(default)s)")
    g.add_argument("--steps", type=int, default=6, help="timed steps per candidate (default: %(default)s)")
    g.add_argument("--format", default="table", choices=["table", "json"], help="(default: %(default)s)")


def cmd_tune(args) -> int:
    import json
    import os
    import sys

    import ray
    import torch
    from rich.console import Console

    from ..engine.cost import num_threads
    from ..engine.driver import Resources
    from ..engine.tuning import as_json, check_effort, tune_split
    from ..network.models import build
    from ..tools.tune import render
    from ..training.session import start_private
    cfg = TrainConfig.from_flat(**given_settings(args))
    if args.subnets < 2:
        raise UserError("--subnets must be >= 2: with one sub-network there is no split to tune")
    check_effort(args.warmup, args.steps, args.radius)
    if args.image_size < 1 or args.in_channels < 1 or args.num_classes < 2:
        raise UserError("--image-size and --in-channels must be >= 1 and --num-classes >= 2")
    gpus = cfg.engine.gpus_per_subnet
    if gpus is None:
        gpus = 1.0 if torch.cuda.is_available() else 0.0
    if gpus > 0 and not torch.cuda.is_available():
        raise UserError("--gpus-per-subnet > 0: this machine has no CUDA GPU (torch.cuda.is_available() is False)")
    console = Console(stderr=args.format == "json")
    started = start_private(max(2, os.cpu_count() or 1),
                            torch.cuda.device_count() if gpus > 0 else 0, one_thread=True)
    try:
        torch.manual_seed(cfg.optim.seed)
        staged = build(cfg.model.name, args.num_classes, args.in_channels, cfg.model.width_mult, args.image_size, norm=cfg.model.norm)
        # one thread, as every process computes: the profile's split too
        with num_threads(1), console.status("measuring candidate splits on the engine ..."):
            split, trials = tune_split(staged, cfg.model.subnets, iterations=cfg.model.iterations, coarse=cfg.model.coarse,
                                       driver_segment=cfg.engine.driver_segment,
                                       input_shape=(args.in_channels, args.image_size, args.image_size),
                                       num_classes=args.num_classes, batch=cfg.optim.batch_size, optim=cfg.optim.sgd,
                                       resources=Resources(gpus, 1.0, transport=cfg.engine.transport,
                                                           coarse_in_actors=cfg.engine.coarse_in_actors,
                                                           defer_weights=cfg.engine.defer_weights,
                                                           channels_last=cfg.engine.channels_last, amp=cfg.engine.amp),
                                       radius=args.radius, warmup=args.warmup, steps=args.steps, seed=cfg.optim.seed,
                                       log=lambda m: console.print(m, style="dim"))
    finally:
        if started:
            ray.shutdown()
    if args.format == "json":
        print(json.dumps({"split": split, "trials": as_json(trials)}, indent=2))
        return 0
    Console(width=None if sys.stdout.isatty() else 150).print(render(trials, f"{cfg.model.name} x{cfg.model.width_mult}, "
                                                              f"N = {cfg.model.subnets}, batch {cfg.optim.batch_size}"))
    print(f"fastest split: --balance {','.join(map(str, split))}  (train --balance tune measures it again at the "
          f"start of a run, with the run's own settings)")
    return 0
