"""A contender's row of the table: its step time, throughput and memory from the raw outputs of its processes
(:func:`to_row`), the engine's per-step breakdown for raypar rows (:func:`raypar_row`), the ratios against the
original (:func:`finish_rows`) and one row per contender from several rounds (:func:`merge_rounds`)."""
from __future__ import annotations

import statistics

from torch import nn

from ...engine.cost import cpu_cores, parallel_limit
from ...network.reference import PararealNet
from .config import BenchConfig


def bytes_minimum(net: PararealNet, batch: int, driver_segment: bool = False, element: int = 4,
                  coarse_in_actors: bool = False) -> int:
    """The fewest bytes a step ships (:meth:`PararealNet.interface_bytes`; ``element``: 2 with --amp)."""
    return net.interface_bytes(batch, driver_segment, element, coarse_in_actors)


def local_row(out: dict, model: nn.Module) -> dict:
    out = dict(out, processes=1)
    if isinstance(model, PararealNet):
        out.update(subnets=model.num_subnets, split=model.split)
    return out


def engine_processes(net: PararealNet, driver_segment: bool) -> int:
    """The driver and its fine actors (F_1 in the driver with ``driver_segment``)."""
    n = net.num_subnets
    return n if driver_segment and n > 1 else n + 1


def raypar_row(out: dict, net: PararealNet, cfg: BenchConfig, driver_segment: bool = False,
               coarse_in_actors: bool = False) -> dict:
    out = dict(out)
    stats, n = out.pop("stats"), net.num_subnets
    procs = engine_processes(net, driver_segment)
    med = {k: statistics.median(s[k] for s in stats) for k in ("driver", "fine_max", "wait")}
    each = [1e3 * statistics.median(t) for t in zip(*(s["fine_each"] for s in stats))] if stats else []
    return dict(out, processes=procs, subnets=n, split=net.split, driver_ms=1e3 * med["driver"],
                fine_max_ms=1e3 * med["fine_max"], transfer_ms=1e3 * max(0.0, med["wait"] - med["fine_max"]),
                fine_each_ms=each,
                bytes_per_step=max(s["bytes"] for s in stats),
                bytes_min=bytes_minimum(net, cfg.batch, driver_segment=driver_segment,
                                        element=4 if cfg.amp == "off" else 2,
                                        coarse_in_actors=coarse_in_actors),
                coarse_in_actors=bool(coarse_in_actors),
                parallel_limit=parallel_limit(net, min(cpu_cores(), procs), bool(coarse_in_actors)))


def ranks_row(outs: list[dict]) -> dict:
    """One row from the ranks of a collective contender (DDP, pipeline): a step lasts as long as its slowest rank."""
    return {"times": [max(t) for t in zip(*(o["times"] for o in outs))], "rss": [o["rss"][0] for o in outs],
            "idle": outs[0]["idle"], "processes": len(outs), "step_started_s": outs[0]["step_started_s"]}


def pipe_row(outs: list[dict], net: PararealNet, cfg: BenchConfig) -> dict:
    return dict(ranks_row(outs), split=net.split, microbatches=cfg.microbatches)


def to_row(name: str, out: dict, batch: int) -> dict:
    times, rss = out.pop("times"), [r for r in out.pop("rss") if r is not None]
    gpu = [g for g in out.pop("gpu", None) or [] if g is not None]
    step = statistics.median(times)
    return {"contender": name, "processes": out.pop("processes"), "samples_per_s": batch / step,
            "ratio_vs_original": None, "step_ms": 1e3 * step, "peak_rss_mb": max(rss) if rss else None,
            "rss_per_process_mb": rss, "idle_rss_mb": out.pop("idle"),
            **({"gpu_peak_mb": max(gpu), "gpu_per_process_mb": gpu} if gpu else {}), **out}


def finish_rows(rows: list[dict]) -> list[dict]:
    """Ratios against the original; for raypar rows the efficiency = speedup over the original / parallel limit."""
    base = next((r for r in rows if r["contender"] == "original" and r.get("samples_per_s")), None)
    for r in rows:
        ref = r["original_samples_per_s"] if "original_samples_per_s" in r else (base or {}).get("samples_per_s")
        if not ref or not r.get("samples_per_s"):
            continue
        r["ratio_vs_original"] = r["samples_per_s"] / ref
        if "parallel_limit" in r:
            r["efficiency"] = r["ratio_vs_original"] / r["parallel_limit"]
    return rows


def error_row(name: str, e: BaseException) -> dict:
    return {"contender": name, "processes": None, "samples_per_s": None, "ratio_vs_original": None, "step_ms": None,
            "peak_rss_mb": None, "error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"}


def merge_rounds(names: list[str], rounds: list[dict]) -> list[dict]:
    """One row per contender from several rounds: the round with the median step time (its breakdown, memory and
    bytes as measured together), and, with more than one round, the ratio to the original = the median over the
    rounds of each round's own ratio (a contender against the original measured in the same round), with every
    round's step time and ratio listed (``step_ms_rounds``, ``ratio_rounds``)."""
    rows = []
    for name in names:
        runs = [r[name] for r in rounds]
        failed = next((r for r in runs if r.get("error")), None)
        steps = [r["step_ms"] for r in runs]
        if failed is not None:                       # (what the other rounds measured stays in the row)
            rows.append(dict(failed, step_ms_rounds=steps) if len(runs) > 1 else failed)
            continue
        row = dict(next(r for r in runs if r["step_ms"] == statistics.median_low(steps)))
        if len(runs) > 1:
            ratios = [r["ratio_vs_original"] for r in runs if r["ratio_vs_original"] is not None]
            row.update(step_ms_rounds=steps, ratio_rounds=ratios,
                       ratio_vs_original=statistics.median(ratios) if ratios else None)
            if row.get("parallel_limit") and row["ratio_vs_original"] is not None:
                row["efficiency"] = row["ratio_vs_original"] / row["parallel_limit"]
        rows.append(row)
    return rows
