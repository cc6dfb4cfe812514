"""Streamed whole steps against a Ray call a step: one engine (F_1 in the driver, N = 2, p2p), taking turns.

    python benchmarks/throughput/streams_ab.py --split 3,9 --rounds 6

With ``p2p`` on CPUs and K = 1 each actor's whole steps of one shape in a row run in one Ray call
(``FineWorker.train_steps``), fed by point-to-point words (``DriverEnd.post_step``); before, each step was one Ray
call (``FineWorker.train_step``). The same engine switches between the two (``DriverEnd.streams``) every ``--block``
steps, the order alternating by round; prints the median step of each. VGG-16 x0.25, batch 64, one thread per process.
"""
import argparse
import statistics
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", default="3,9", help="block counts of N = 2 (default: %(default)s)")
    p.add_argument("--channels-last", action="store_true", help="weights and activations in the channels-last layout")
    p.add_argument("--rounds", type=int, default=6, help="rounds of one block each (default: %(default)s)")
    p.add_argument("--block", type=int, default=20, help="steps in a row of each, the first 2 untimed "
                                                         "(default: %(default)s)")
    args = p.parse_args()
    torch.set_num_threads(1)
    import ray

    from raypar.tools.bench import BenchConfig, _net, make_batches
    from raypar.engine.driver import PararealEngine, Resources
    cfg = BenchConfig(balance=[int(v) for v in args.split.split(",")], channels_last=args.channels_last).validate()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    eng = PararealEngine(_net(cfg, 2, driver_segment=True), cfg.optim,
                         Resources(0, 1.0, first_in_driver=True, transport="p2p", channels_last=args.channels_last))
    x, y = make_batches(cfg)[0]
    for _ in range(5):
        eng.train_step(x, y)
    steps: dict[bool, list[float]] = {False: [], True: []}
    for r in range(args.rounds):
        for streamed in (False, True) if r % 2 == 0 else (True, False):
            eng.settle()
            eng.tx.stop_streams()
            eng.tx.streams = streamed
            for i in range(args.block):
                t0 = time.perf_counter()
                eng.train_step(x, y)
                if i >= 2:
                    steps[streamed].append(time.perf_counter() - t0)
    eng.settle()
    med = {k: 1e3 * statistics.median(v) for k, v in steps.items()}
    print(f"[{args.split}]{' channels-last' if args.channels_last else ''}: a Ray call a step {med[False]:.2f} ms, "
          f"streamed {med[True]:.2f} ms (median of {len(steps[True])} steps each): "
          f"{med[False] / med[True]:.3f}x")
    eng.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
