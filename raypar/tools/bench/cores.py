"""How fast each CPU core runs the original network's training step, alone and with every core busy: the ceiling of
any contender's speedup on this machine (:func:`core_speeds`)."""
from __future__ import annotations

import os
import statistics
import sys
from dataclasses import replace

import torch

from ...malloc import keep_freed_memory
from .config import BenchConfig
from .workload import _model, make_batches, optimizer, sgd_step, timed

MAX_TIMED_CORES = 8              # core_speeds times at most this many cores (one process each)


def _core_worker(conn, core: int, cfg: "BenchConfig") -> None:
    """One process pinned to ``core``: the original network's training step; each message (a step count) is answered
    with that many step times, None ends it."""
    os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    keep_freed_memory()
    model = _model(cfg)
    step = sgd_step(model, optimizer(model, cfg), cfg)
    x, y = make_batches(replace(cfg, warmup=0, steps=1))[0]
    step(x, y)                                          # warm-up
    conn.send("ready")
    while (msg := conn.recv()) is not None:
        conn.send(timed(step, [(x, y)] * msg, 0)[0])


def core_speeds(cfg: "BenchConfig", steps: int = 5, timeout_s: float = 300) -> dict | None:
    """How fast each CPU core (the first ``MAX_TIMED_CORES``) runs the original network's step, alone and with every
    core busy (one pinned process per core), ``steps`` steps each, waiting at most ``timeout_s`` for each answer. On
    a shared or virtual machine the cores are not equal: ``capacity`` is what all of them together are worth in units
    of the fastest core alone (``cores`` on an ideal machine), the ceiling of any contender's speedup over the
    original on its best core. Returns the cores, their step times alone and together (``solo_ms``,
    ``together_ms``) and ``capacity``; None where cores cannot be pinned, on GPUs, or where the timing fails."""
    if not hasattr(os, "sched_setaffinity") or cfg.device != "cpu":
        return None
    import multiprocessing as mp
    cores = sorted(os.sched_getaffinity(0))[:MAX_TIMED_CORES]
    ctx = mp.get_context("spawn")
    pipes, procs = [], []

    def answer(conn):
        if not conn.poll(timeout_s):
            raise TimeoutError(f"no answer within {timeout_s:g} s")
        return conn.recv()
    try:
        for c in cores:
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=_core_worker, args=(theirs, c, cfg), daemon=True)
            p.start()
            theirs.close()                              # a dead worker is then an EOFError here, not a hang
            pipes.append(mine)
            procs.append(p)
        for conn in pipes:
            answer(conn)
        solo = []
        for conn in pipes:                              # one core at a time, the others idle
            conn.send(steps)
            solo.append(statistics.median(answer(conn)))
        for conn in pipes:                              # every core at once
            conn.send(steps)
        together = [statistics.median(answer(conn)) for conn in pipes]
    except (OSError, EOFError, TimeoutError) as e:      # a diagnostic: the benchmark goes on without it
        print(f"raypar bench: could not time the cores ({type(e).__name__}: {e})", file=sys.stderr)
        return None
    finally:
        for conn in pipes:
            try:
                conn.send(None)
            except OSError:
                pass
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    fastest = min(solo)
    return {"cores": cores, "solo_ms": [1e3 * t for t in solo], "together_ms": [1e3 * t for t in together],
            "capacity": sum(fastest / t for t in together)}
