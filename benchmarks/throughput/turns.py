"""The loop that ``engines_ab.py`` and ``last_in_driver.py`` share: training steps taking turns in this process."""
import statistics
import time

import torch


def take_turns(names: list[str], steps: list, cfg, count: int, untimed: int = 3) -> None:
    """Add the original network of the bench config ``cfg`` last, then run step i of every ``steps[j](x, y)`` in
    turn on the bench's batches, for i < ``count`` (the order reversed every other i), each turn an untimed step and
    then the one timed by the wall clock here (after the first ``untimed`` turns); print each one's median and its
    ratio to the original's."""
    from raypar.tools.bench.workload import _model, make_batches, optimizer, sgd_step
    model = _model(cfg).train()
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    names, steps = [*names, "original"], [*steps, sgd_step(model, optimizer(model, cfg), cfg)]
    batches = make_batches(cfg)
    times = [[] for _ in steps]
    for i in range(count):
        x, y = batches[i % len(batches)]
        for j in (range(len(steps)) if i % 2 == 0 else reversed(range(len(steps)))):
            steps[j](x, y)     # untimed: the timed step starts as in a run, right after another (warm caches; an
            t0 = time.perf_counter()     # engine's actors still on the weight gradients of the step before)
            steps[j](x, y)
            took = time.perf_counter() - t0
            engine = getattr(steps[j], "__self__", None)
            if hasattr(engine, "settle"):                      # none of an engine's work runs into the next one's turn
                engine.settle()
            if i >= untimed:
                times[j].append(took)
    medians = [statistics.median(t) for t in times]
    width = max(len(n) for n in names)
    for name, m in zip(names, medians):
        print(f"{name:{width}s} {1e3 * m:7.1f} ms   x{medians[-1] / m:.2f}")
