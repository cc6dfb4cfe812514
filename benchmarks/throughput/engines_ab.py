"""Engines with and without an option, taking turns step by step in one process, beside the original network.

    RAY_worker_niceness=0 python benchmarks/throughput/engines_ab.py --splits 4,8 5,7 6,6 \
        --modes raypar raypar-coarse-in-actors

Every engine (one per split and mode) and the original network are built first; then step i of each runs in turn,
for every i (the order reversed every other step), each timed by the wall clock here. Modes, named as ``raypar
bench``'s contenders, by the ``raypar train`` flags they add to train's defaults: ``raypar`` (F_1 in the driver,
deferred weight gradients), ``raypar-no-driver-segment`` (the driver and N actors), ``raypar-coarse-in-actors`` and
``raypar-no-driver-segment-coarse-in-actors``, each also with ``-no-defer-weights`` (the actors compute their weight
gradients in their backward). ``--transport``: every engine's (the object store by default; ``p2p`` or ``auto`` as
``raypar train``).
``--idle K`` starts K idle Ray actors first (``raypar bench --all-together`` keeps every other contender's
processes up).
``RAY_worker_niceness=0`` puts the actors at this script's priority (Ray starts its workers at nice 15, a script stays
at 0). Prints each engine's median step and its ratio to the original's. VGG-16 x0.25 (``--width-mult``), batch 64
(``--batch``), one thread; ``--channels-last``: every engine and the original in that layout.
"""
import argparse
from dataclasses import replace

import torch
from turns import take_turns


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--splits", nargs="+", default=["5,7", "6,6"], help="block counts of N = 2 (default: %(default)s)")
    modes = ["raypar", "raypar-no-driver-segment", "raypar-coarse-in-actors",
             "raypar-no-driver-segment-coarse-in-actors"]
    p.add_argument("--modes", nargs="+", choices=modes + [m + "-no-defer-weights" for m in modes],
                   default=["raypar-no-defer-weights", "raypar-coarse-in-actors-no-defer-weights"],
                   metavar="MODE", help=f"any of {', '.join(modes)}, each also with -no-defer-weights "
                                        f"(default: %(default)s)")
    p.add_argument("--steps", type=int, default=30, help="steps of each, the first 3 untimed (default: %(default)s)")
    p.add_argument("--transport", default="object-store", choices=["object-store", "p2p", "auto"],
                   help="every engine's (default: %(default)s)")
    p.add_argument("--width-mult", type=float, default=0.25, help="VGG-16's width (default: %(default)s)")
    p.add_argument("--batch", type=int, default=64, help="(default: %(default)s)")
    p.add_argument("--channels-last", action="store_true",
                   help="every engine and the original in the channels-last layout (a time balance profiles in it too)")
    p.add_argument("--idle", type=int, default=0,
                   help="start this many idle Ray actors (torch imported, as a benchmark process) first, as raypar "
                        "bench --all-together has every other contender's processes up (default: %(default)s)")
    args = p.parse_args()
    torch.set_num_threads(1)
    import ray

    @ray.remote(num_cpus=0)
    class Idle:                     # an idle benchmark process: up, torch imported, doing nothing
        def ready(self) -> bool:
            return __import__("torch") is not None

    from raypar.tools.bench.config import BenchConfig
    from raypar.tools.bench.workload import _net
    from raypar.engine.driver import TURN_CPUS, PararealEngine, Resources
    cfg = BenchConfig(model="vgg16", width_mult=args.width_mult, batch=args.batch, channels_last=args.channels_last).validate()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    idle = [Idle.remote() for _ in range(args.idle)]
    ray.get([a.ready.remote() for a in idle])
    names, steps = [], []
    for split in args.splits:
        for mode in args.modes:
            driver_segment = "-no-driver-segment" not in mode
            coarse_in_actors, defer_weights = "-coarse-in-actors" in mode, not mode.endswith("-no-defer-weights")
            net = _net(replace(cfg, balance=[int(v) for v in split.split(",")]).validate(), 2,
                       driver_segment=driver_segment)
            engine = PararealEngine(net, cfg.optim, Resources(0, TURN_CPUS, driver_segment=driver_segment,
                                                              coarse_in_actors=coarse_in_actors,
                                                              defer_weights=defer_weights, transport=args.transport,
                                                              channels_last=args.channels_last))
            names.append(f"[{split}] {mode}")
            steps.append(engine.train_step)
    take_turns(names, steps, cfg, args.steps)
    ray.shutdown()


if __name__ == "__main__":
    main()
