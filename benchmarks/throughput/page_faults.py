"""Page faults a step in the driver, its actor and the original network's process, and the engine's ratio.

    RAYPAR_KEEP_FREED_MEMORY=0 python benchmarks/throughput/page_faults.py    # glibc's defaults
    python benchmarks/throughput/page_faults.py                               # raypar's (raypar/malloc.py)
    python benchmarks/throughput/page_faults.py --in-actor                    # driven from a Ray actor

The engine (N = 2, F_1 in the driver, deferred weight gradients, p2p; ``--split``) is driven from this process, or
with ``--in-actor`` from a Ray actor as in ``raypar bench`` and ``raypar train``; the original network runs in the
same process as the driver, so both take that process's allocator setting, and the fine actor inherits the
environment. First 20 steps of each with their minor page faults counted (``/proc/<pid>/stat``), then ``--steps``
steps taking turns (each turn an untimed step, then a timed one), the medians and their ratio. VGG-16 x0.25, batch
64, one thread per process. Run it both ways a few times, alternating: one run's ratio moves by 0.1 with the machine.
"""
import argparse
import os
import statistics
import time


def minor_faults(pid="self") -> int:
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[7])


def measure(split: list[int], steps: int) -> str:
    """In the driver's process: the engine and the original, faults and step times."""
    import ray
    import torch
    torch.set_num_threads(1)
    from raypar.tools.bench.config import BenchConfig
    from raypar.tools.bench.workload import _model, _net, make_batches, optimizer, sgd_step
    from raypar.engine.driver import TURN_CPUS, PararealEngine, Resources
    cfg = BenchConfig(model="vgg16").validate()
    net = _net(BenchConfig(model="vgg16", balance=split).validate(), 2, driver_segment=True)
    engine = PararealEngine(net, cfg.optim, Resources(0, TURN_CPUS, driver_segment=True, transport="p2p"))
    try:
        actor = ray.get(engine.actors[0].pid.remote())
        model = _model(cfg).train()
        original = sgd_step(model, optimizer(model, cfg), cfg)
        batches = make_batches(cfg)
        for i in range(5):
            x, y = batches[i % len(batches)]
            engine.train_step(x, y)
            original(x, y)
        engine.settle()
        a0, d0 = minor_faults(actor), minor_faults()
        for i in range(20):
            engine.train_step(*batches[i % len(batches)])
        engine.settle()
        a1, d1 = minor_faults(actor), minor_faults()
        for i in range(20):
            original(*batches[i % len(batches)])
        d2 = minor_faults()
        times = {"engine": [], "original": []}
        for i in range(steps):
            x, y = batches[i % len(batches)]
            for name, step in (("engine", engine.train_step), ("original", original)):
                step(x, y)
                t0 = time.perf_counter()
                step(x, y)
                times[name].append(time.perf_counter() - t0)
                if name == "engine":
                    engine.settle()
    finally:
        engine.shutdown()
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    return (f"page faults a step: driver {(d1 - d0) / 20:.0f}, actor {(a1 - a0) / 20:.0f}, original "
            f"{(d2 - d1) / 20:.0f}; engine {ms['engine']:.1f} ms, original {ms['original']:.1f} ms: "
            f"x{ms['original'] / ms['engine']:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", default="3,9", help="block counts of N = 2 (default: %(default)s)")
    p.add_argument("--steps", type=int, default=30, help="steps in turns (default: %(default)s)")
    p.add_argument("--in-actor", action="store_true", help="drive the engine from a Ray actor (as the bench does)")
    args = p.parse_args()
    import ray
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    split = [int(v) for v in args.split.split(",")]
    if args.in_actor:
        @ray.remote(num_cpus=0.5)
        class Driver:
            def run(self, split, steps):
                return measure(split, steps)
        line = ray.get(Driver.remote().run.remote(split, args.steps))
    else:
        line = measure(split, args.steps)
    where = "a Ray actor" if args.in_actor else "this process"
    print(f"RAYPAR_KEEP_FREED_MEMORY={os.environ.get('RAYPAR_KEEP_FREED_MEMORY', '(unset)')}, driver in {where}: "
          f"{line}")
    ray.shutdown()


if __name__ == "__main__":
    main()
