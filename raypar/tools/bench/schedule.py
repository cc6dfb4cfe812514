"""How the contenders run: each in fresh Ray actor processes (:class:`~.runner.Runner`), taking turns with the
original step by step (pair after pair, or all together) or each alone, round after round (:func:`measure`)."""
from __future__ import annotations

import statistics
from dataclasses import replace

from .config import BenchConfig
from .contenders import Contender, plan
from .rows import error_row, finish_rows, merge_rounds, to_row
from .runner import Runner

PRESTART = 6                     # benchmark processes started ahead together (a cap on their memory while idle)
INTERLEAVE_PROCESSES = 16        # at most this many processes up at once for interleaved contenders (a memory cap)


def measure(cfg: BenchConfig, log=print) -> list[dict]:
    """Run every contender in fresh processes, taking turns step by step (``cfg.interleave``, on CPUs) or one after
    the other; a contender that fails is a row with its error. With ``cfg.rounds`` > 1 the whole line-up runs that
    many times, in reverse order every other round, so a slow spell of the machine does not fall on one contender
    only (see :func:`~.rows.merge_rounds`). Returns one row per contender, in table order."""
    contenders = plan(cfg, log)
    rounds = []
    for r in range(cfg.rounds):
        if cfg.rounds > 1:
            log(f"raypar bench: round {r + 1} of {cfg.rounds}")
        order = contenders if r % 2 == 0 else contenders[::-1]
        rounds.append({row["contender"]: row for row in finish_rows(_measure_once(order, cfg, log))})
    return merge_rounds([c.name for c in contenders], rounds)


def _measure_once(contenders: list[Contender], cfg: BenchConfig, log) -> list[dict]:
    """One round: each contender takes turns with the original, one step each (:func:`_paired`), or with
    ``--all-together`` all of them at once (see :func:`_interleaved`); with ``--one-at-a-time``, and those beyond the
    memory cap, they run alone, one after the other."""
    original = next((c for c in contenders if c.name == "original"), None)
    if cfg.pairs and cfg.turns and original is not None and len(contenders) > 2:
        return _paired(original, contenders, cfg, log)
    together, used = [], 0
    for c in contenders:
        if cfg.turns and c.start is not None and used + c.processes <= INTERLEAVE_PROCESSES:
            together.append(c)
            used += c.processes
    rows = _interleaved(together, cfg, log) if len(together) > 1 else []
    return rows + _one_at_a_time([c for c in contenders if c not in together or len(together) == 1], cfg, log)


def _paired(original: Contender, contenders: list[Contender], cfg: BenchConfig, log) -> list[dict]:
    """Each contender takes turns with the original only, pair after pair, in fresh processes: while a pair runs, no
    other contender's processes are up, as in a training run (idle processes slow the contenders of several
    processes more than the original (measured: benchmarks/throughput/README.md)). A contender's ratio is against the
    original of its own pair (``original_samples_per_s``); the original's row is its median pair."""
    rows, originals = [], []
    for c in contenders:
        if c is original:
            continue
        pair = [original, c] if contenders.index(original) < contenders.index(c) else [c, original]
        log(f"raypar bench: {c.name} takes turns with the original")
        got = {r["contender"]: r for r in _measure_once(pair, replace(cfg, pairs=False), lambda *_: None)}
        row, base = got[c.name], got.get("original", {})
        if base.get("samples_per_s"):
            originals.append(base)
            row.update(original_samples_per_s=base["samples_per_s"], original_step_started_s=base["step_started_s"])
        else:                            # no ratio against another pair's original
            row.update(original_samples_per_s=None, original_error=base.get("error", "no original row"))
        rows.append(row)
    if originals:
        steps = [r["step_ms"] for r in originals]
        base = dict(next(r for r in originals if r["step_ms"] == statistics.median_low(steps)), step_ms_pairs=steps)
    else:
        base = error_row("original", RuntimeError("the original failed in every pair"))
    at = [c.name for c in contenders].index("original")
    return rows[:at] + [base] + rows[at:]


def _interleaved(contenders: list[Contender], cfg: BenchConfig, log) -> list[dict]:
    """Every contender's processes start and stay up; then step i of each contender runs in turn, for every i. A slow
    spell of a shared machine then falls on every contender alike, so their ratios stay paired (measured:
    benchmarks/throughput/README.md). Each step is timed in its own process."""
    import ray
    rows, live = [], []
    groups = start_runners([c.runners for c in contenders], cfg.gpu_share)
    for c, runners in zip(contenders, groups):
        log(f"raypar bench: {c.name} ...")
        try:
            ray.get(c.start(runners))
            live.append((c, runners))
        except Exception as e:  # noqa: BLE001 - reported in the table instead of stopping the benchmark
            rows.append(error_row(c.name, e))
            _kill(runners)
    log(f"raypar bench: {len(live)} contenders take turns, one step each")
    for i in range(cfg.warmup + cfg.steps):
        for c, runners in list(live):
            try:
                ray.get([a.step.remote(i, True) for a in runners])  # (a collective contender: all ranks at once)
            except Exception as e:  # noqa: BLE001
                rows.append(error_row(c.name, e))
                live.remove((c, runners))
                _kill(runners)
    for c, runners in live:
        try:
            rows.append(dict(to_row(c.name, c.post(ray.get([a.finish.remote() for a in runners])), cfg.batch),
                             taking_turns=True))
        except Exception as e:  # noqa: BLE001
            rows.append(error_row(c.name, e))
        finally:
            _kill(runners)
    return rows


def _one_at_a_time(contenders: list[Contender], cfg: BenchConfig, log) -> list[dict]:
    rows = []
    for chunk in _chunks(contenders, PRESTART):
        for c, runners in zip(chunk, start_runners([_alone(c) for c in chunk], cfg.gpu_share)):
            log(f"raypar bench: {c.name} ...")
            try:
                rows.append(dict(to_row(c.name, c.run(runners), cfg.batch), taking_turns=False))
            except Exception as e:  # noqa: BLE001 - reported in the table instead of stopping the benchmark
                rows.append(error_row(c.name, e))
            finally:
                _kill(runners)
    return rows


def _kill(runners: list) -> None:
    """End a contender's runner processes (and with them the engine actors they own)."""
    import ray
    for a in runners:
        ray.kill(a)


def _alone(c: Contender) -> int:
    """The runner processes a contender needs when it runs alone."""
    return c.runners if c.runners_alone is None else c.runners_alone


def _chunks(contenders: list[Contender], cap: int):
    """Consecutive groups needing at most ``cap`` runner processes together (at least one contender each)."""
    chunk, used = [], 0
    for c in contenders:
        if chunk and used + _alone(c) > cap:
            yield chunk
            chunk, used = [], 0
        chunk.append(c)
        used += _alone(c)
    if chunk:
        yield chunk


def start_runners(counts: list[int], gpus: float = 0.0) -> list[list]:
    """Start the processes of several contenders at once (``counts[i]`` runners for the i-th, each asking Ray for
    ``gpus`` GPUs) and wait until every one is up: process start-up runs in parallel, and no measurement ever
    overlaps it. Runners reserve no Ray CPU (each computes on one thread, one contender at a time), so idle ones never
    keep the engine's actors from starting. Returns the runner actors of each contender."""
    import ray
    cls = ray.remote(num_cpus=0, num_gpus=gpus, enable_tensor_transport=gpus > 0)(Runner)
    groups = [[cls.remote() for _ in range(k)] for k in counts]
    refs = [a.ready.remote() for g in groups for a in g]
    if refs:
        ray.wait(refs, num_returns=len(refs), timeout=600)
    return groups
