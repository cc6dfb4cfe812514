"""The loop that ``engines_ab.py`` and ``last_in_driver.py`` share: training steps taking turns in this process."""
import statistics
import time


def take_turns(names: list[str], steps: list, batches: list, count: int, untimed: int = 3) -> None:
    """Run step i of every ``steps[j](x, y)`` in turn, for i < ``count`` (the order reversed every other i), each
    timed by the wall clock here after the first ``untimed``; print each one's median and its ratio to the last
    one's (the original network's)."""
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
