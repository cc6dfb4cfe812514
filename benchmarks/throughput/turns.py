"""The loop that ``engines_ab.py`` and ``last_in_driver.py`` share: training steps taking turns in this process."""
import statistics
import time


def take_turns(names: list[str], steps: list, cfg, count: int, untimed: int = 3) -> None:
    """Add the original network of the bench config ``cfg`` last, then run step i of every ``steps[j](x, y)`` in
    turn on the bench's batches, for i < ``count`` (the order reversed every other i), each timed by the wall clock
    here after the first ``untimed``; print each one's median and its ratio to the original's."""
    from raypar.bench import _model, make_batches, optimizer, sgd_step
    model = _model(cfg).train()
    names, steps = [*names, "original"], [*steps, sgd_step(model, optimizer(model, cfg), cfg)]
    batches = make_batches(cfg)
    times = [[] for _ in steps]
    for i in range(count):
        x, y = batches[i % len(batches)]
        for j in (range(len(steps)) if i % 2 == 0 else reversed(range(len(steps)))):
            t0 = time.perf_counter()
            steps[j](x, y)
            if i >= untimed:
                times[j].append(time.perf_counter() - t0)
    medians = [statistics.median(t) for t in times]
    width = max(len(n) for n in names)
    for name, m in zip(names, medians):
        print(f"{name:{width}s} {1e3 * m:7.1f} ms   x{medians[-1] / m:.2f}")
