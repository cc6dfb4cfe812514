"""``raypar tune``: print the step time of candidate splits measured on the engine (:mod:`raypar.engine.driver.tuning`)."""
from __future__ import annotations

import argparse

import torch

from ..errors import UserError
from ..engine.tuning import Trial, as_json, check_effort, tune_split


def render(trials: list[Trial], title: str = ""):
    from rich.table import Table
    t = Table(title=title or None)
    for col in ("split", "step ms", "x profile's", "driver ms", "wait ms", "fine ms (each process)", ""):
        t.add_column(col, justify="left" if col in ("split", "") else "right")
    best = max((x.vs_profiled for x in trials if not x.error and x.vs_profiled == x.vs_profiled), default=None)
    for x in trials:
        note = ("profile's" if x.profiled else "") + (" fastest" if x.vs_profiled == best else "")
        if x.error:
            t.add_row(",".join(map(str, x.split)), "-", "-", "-", "-", "-", x.error[:60])
            continue
        t.add_row(",".join(map(str, x.split)), f"{x.step_ms:.1f}", f"{x.vs_profiled:.2f}", f"{x.driver_ms:.1f}",
                  f"{x.wait_ms:.1f}", " / ".join(f"{v:.1f}" for v in x.fine_ms), note.strip())
    return t


# -------------------------------------------------------------------------------------------------- CLI
def add_arguments(p) -> None:
    """The options of ``raypar tune``."""
    from ..network.coarse import DOWNSAMPLE
    from ..engine.transport import TRANSPORTS
    p.add_argument("--model", default="vgg16", help="vgg11/13/16/19 or resnet<9n+2> (default: %(default)s)")
    p.add_argument("--width-mult", type=float, default=0.25, help="scale every channel count (default: %(default)s)")
    p.add_argument("--subnets", "-n", type=int, default=2, help="number N of fine sub-networks (default: %(default)s)")
    p.add_argument("--iterations", "-k", type=int, default=1, help="parareal iterations K (default: %(default)s)")
    p.add_argument("--driver-segment", action="store_true", help="F_1 runs in the driver (as train's option)")
    p.add_argument("--coarse-in-actors", action="store_true",
                   help="each actor runs pre and the coarse sweep up to its interval (as train's option; K = 1)")
    p.add_argument("--defer-weights", action=argparse.BooleanOptionalAction, default=True,
                   help="as train's option (default: on)")
    p.add_argument("--batch", type=int, default=64, help="batch per step, as the run will use (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=32, help="input height = width (default: %(default)s)")
    p.add_argument("--in-channels", type=int, default=3, help="(default: %(default)s)")
    p.add_argument("--num-classes", type=int, default=10, help="(default: %(default)s)")
    p.add_argument("--norm", default="batch", choices=["batch", "group"], help="(default: %(default)s)")
    p.add_argument("--coarse-kernel", type=int, default=3, help="(default: %(default)s)")
    p.add_argument("--coarse-downsample", default="pool", choices=DOWNSAMPLE, help="(default: %(default)s)")
    p.add_argument("--coarse-depth", type=int, default=1, help="(default: %(default)s)")
    p.add_argument("--coarse-width", type=float, default=1.0, help="(default: %(default)s)")
    p.add_argument("--coarse-norm", default="group", choices=["group", "batch"], help="(default: %(default)s)")
    p.add_argument("--radius", type=int, default=3,
                   help="candidates: the profile's split and every split one boundary away by up to this many "
                        "blocks (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per candidate first (default: %(default)s)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per candidate (default: %(default)s)")
    p.add_argument("--gpus-per-subnet", type=float, default=0.0,
                   help="GPUs per fine actor (and the driver); 0: CPUs, one thread per process (default: %(default)s)")
    p.add_argument("--transport", default="object-store", choices=TRANSPORTS, help="(default: %(default)s)")
    p.add_argument("--channels-last", action="store_true", help="as train's option")
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"], help="as train's option (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--format", default="table", choices=["table", "json"], help="(default: %(default)s)")


def cmd_tune(args) -> int:
    import json
    import os
    import sys

    import ray
    from rich.console import Console

    from ..training.session import start_private
    from ..training.config import TrainConfig
    from ..engine.driver import Resources
    from ..network.models import build
    from ..engine.cost import num_threads
    cfg = TrainConfig(model=args.model, width_mult=args.width_mult, subnets=args.subnets, iterations=args.iterations,
                      driver_segment=args.driver_segment, coarse_in_actors=args.coarse_in_actors,
                      defer_weights=args.defer_weights, batch_size=args.batch, norm=args.norm,
                      coarse_kernel=args.coarse_kernel, coarse_downsample=args.coarse_downsample,
                      coarse_depth=args.coarse_depth, coarse_width=args.coarse_width, coarse_norm=args.coarse_norm,
                      gpus_per_subnet=args.gpus_per_subnet, transport=args.transport, seed=args.seed,
                      channels_last=args.channels_last, amp=args.amp).validate()
    if args.subnets < 2:
        raise UserError("--subnets must be >= 2: with one sub-network there is no split to tune")
    check_effort(args.warmup, args.steps, args.radius)
    if args.image_size < 1 or args.in_channels < 1 or args.num_classes < 2:
        raise UserError("--image-size and --in-channels must be >= 1 and --num-classes >= 2")
    if args.gpus_per_subnet > 0 and not torch.cuda.is_available():
        raise UserError("--gpus-per-subnet > 0: this machine has no CUDA GPU (torch.cuda.is_available() is False)")
    console = Console(stderr=args.format == "json")
    started = start_private(max(2, os.cpu_count() or 1),
                            torch.cuda.device_count() if args.gpus_per_subnet > 0 else 0, one_thread=True)
    try:
        torch.manual_seed(cfg.seed)
        staged = build(cfg.model, args.num_classes, args.in_channels, cfg.width_mult, args.image_size, norm=cfg.norm)
        # one thread, as every process computes: the profile's split too
        with num_threads(1), console.status("measuring candidate splits on the engine ..."):
            split, trials = tune_split(staged, cfg.subnets, iterations=cfg.iterations, coarse=cfg.coarse,
                                       driver_segment=cfg.driver_segment,
                                       input_shape=(args.in_channels, args.image_size, args.image_size),
                                       num_classes=args.num_classes, batch=cfg.batch_size, optim=cfg.optim,
                                       resources=Resources(cfg.gpus_per_subnet, 1.0, transport=cfg.transport,
                                                           coarse_in_actors=cfg.coarse_in_actors,
                                                           defer_weights=cfg.defer_weights,
                                                           channels_last=cfg.channels_last, amp=cfg.amp),
                                       radius=args.radius, warmup=args.warmup, steps=args.steps, seed=cfg.seed,
                                       log=lambda m: console.print(m, style="dim"))
    finally:
        if started:
            ray.shutdown()
    if args.format == "json":
        print(json.dumps({"split": split, "trials": as_json(trials)}, indent=2))
        return 0
    Console(width=None if sys.stdout.isatty() else 150).print(render(trials, f"{cfg.model} x{cfg.width_mult}, "
                                                              f"N = {cfg.subnets}, batch {cfg.batch_size}"))
    print(f"fastest split: --balance {','.join(map(str, split))}  (train --balance tune measures it again at the "
          f"start of a run, with the run's own settings)")
    return 0
