"""``raypar plan``: predict the training step time and speedup of N = 1..G sub-networks before running anything.

The model and its formulas are :mod:`raypar.engine.cost`'s. ``--devices`` counts devices: GPUs, or on a CPU machine
cores (one process each). The default link is :data:`~raypar.engine.cost.LINK_GBPS` and
:data:`~raypar.engine.cost.CALL_LATENCY_MS`; ``--measure-link`` measures this machine's (:func:`measure_link`).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict

from ..errors import UserError
from ..engine.cost import (CALL_LATENCY_MS, LINK_GBPS, Link, Planner, PlanRow, check_inputs, cpu_cores,
                           predict)
from ..network.specs import MEASURES

def measure_link(size_bytes: int = 4 << 20, repeats: int = 15) -> Link:
    """Driver <-> actor through this machine's local Ray object store, as the engine ships interface tensors (numpy
    arrays, out and back): latency = the median round trip of a tiny argument, rate = 2 * size / (the median round
    trip of a ``size_bytes`` array - latency). Starts (and stops) a private local Ray unless one is running."""
    import numpy as np
    import ray
    from ..training.session import start_private
    started = start_private(2)
    try:
        echo = ray.remote(num_cpus=0)(_Echo).remote()
        small, big = np.zeros(1, np.float32), np.ones(size_bytes // 4, np.float32)

        def med(a):
            ray.get(echo.echo.remote(a))                     # warm-up
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                ray.get(echo.echo.remote(a))
                ts.append(time.perf_counter() - t0)
            return statistics.median(ts)
        lat, rt = med(small), med(big)
        ray.kill(echo)
    finally:
        if started:
            ray.shutdown()
    return Link(gbps=2 * big.nbytes * 8 / max(rt - lat, 1e-9) / 1e9, latency_ms=1e3 * lat, measured=True)


class _Echo:
    def echo(self, a):
        return a


# ------------------------------------------------------------------------------------------- rendering
def render(rows: list[PlanRow], title: str = "", caption: str | None = None):
    from rich.table import Table
    t = Table(title=title or None, caption=caption)
    for col in ("N", "procs", "split", "step ms", "speedup", "eff ≤", "MB/step", "transfer ms", "coarse share",
                "limited by"):
        t.add_column(col, justify="left" if col in ("split", "limited by") else "right")
    for r in rows:
        t.add_row(str(r.subnets), str(r.processes), ",".join(map(str, r.split)), f"{r.step_ms:.1f}",
                  f"{r.speedup:.2f}", f"{r.efficiency:.0%}", f"{r.bytes_per_step / 2**20:.2f}",
                  f"{r.transfer_ms:.1f}", f"{r.coarse_share:.0%}", r.bound)
    return t


def to_json(rows: list[PlanRow], meta: dict) -> str:
    return json.dumps({**meta, "rows": [asdict(r) for r in rows]}, indent=2)


# ----------------------------------------------------------------------------- predicted vs bench.json
def against_bench(path: str, link: Link, planner: Planner | None = None, capacity: float | None = None) -> list[dict]:
    """Predict the contenders of a ``raypar bench`` run (its ``bench.json``: model, batch, balance, cores, and the
    cores' measured capacity unless ``capacity`` is given) and put the prediction next to the measurement: original =
    N = 1; raypar-N{n}[-no-driver-segment][-coarse-in-actors] (the engine, N = 1 with its one actor included)."""
    try:
        with open(path) as f:
            data = json.load(f)
        cfg, env, rows = data["config"], data["environment"], data["rows"]
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"cannot read a raypar bench result from {path}: {e}") from None
    if not isinstance(cfg.get("balance"), str):
        raise UserError(f"{path}: the bench used an explicit split {cfg.get('balance')}; plan needs time/flops/params")
    # a tuned bench (--balance tune): every row has its split; the rest of the plan balances by time
    planner = planner or Planner(cfg["model"], cfg["width_mult"], cfg["image_size"], cfg["in_channels"],
                                 cfg["num_classes"], cfg["batch"],
                                 balance=cfg["balance"] if cfg["balance"] in MEASURES else "time",
                                 coarse_kernel=cfg.get("coarse_kernel", 3),
                                 coarse_downsample=cfg.get("coarse_downsample", "stride"),   # older benches: strided
                                 channels_last=bool(cfg.get("channels_last", False)))
    cores = int(env.get("cpu_cores") or os.cpu_count() or 1)
    if capacity is None:                       # what the bench measured the cores to be worth, where it did
        capacity = (env.get("core_speeds") or {}).get("capacity")
        if capacity is not None and not capacity >= 1:
            raise UserError(f"{path}: core_speeds.capacity must be >= 1, got {capacity}")
    seq = planner.sequential_s() * 1e3
    out = []
    for r in rows:
        name = r["contender"]
        if not r.get("step_ms"):
            continue
        if name == "original":
            p = planner.row(1, cores, link, capacity=capacity)
        elif name.startswith("raypar-N"):
            n, driver_segment, coarse_in_actors = engine_options(r)
            p = planner.row(n, cores, link, driver_segment=driver_segment, in_process=False,
                            split=r.get("split") if n > 1 else None, capacity=capacity,
                            coarse_in_actors=coarse_in_actors,
                            defer_weights=cfg.get("defer_weights", False))      # older benches: not deferred
        else:
            continue
        out.append({"contender": name, "processes": p.processes, "split": p.split, "measured_ms": r["step_ms"],
                    "predicted_ms": p.step_ms, "step_error": p.step_ms / r["step_ms"] - 1,
                    "measured_speedup": r.get("ratio_vs_original"), "predicted_speedup": seq / p.step_ms,
                    "speedup_error": (seq / p.step_ms / r["ratio_vs_original"] - 1) if r.get("ratio_vs_original")
                    else None, "predicted_transfer_ms": p.transfer_ms, "measured_transfer_ms": r.get("transfer_ms"),
                    "load_average_at_start": (env.get("load_average_at_start") or [None])[0],
                    "capacity": capacity})
    return out


def engine_options(row: dict) -> tuple[int, bool, bool]:
    """N, driver_segment and coarse_in_actors of a bench row of the engine, ``raypar-N{n}`` and the train flags it
    adds (``-no-driver-segment``, ``-coarse-in-actors``, then a transport). F_1 ran in the driver where the row's
    processes are N (N > 1): a bench.json written before the rows were named by train's flags (``raypar-N{n}``
    without F_1 in the driver, ``-f1`` with it, ``-ca`` for the coarse sweep in the actors) reads the same. A row
    that records ``coarse_in_actors`` (where the bench placed an unnamed sweep, as train does) is read by it."""
    n, _, rest = row["contender"][len("raypar-N"):].partition("-")
    n, words = int(n), rest.split("-")
    driver_segment = n > 1 and ("no-driver-segment" not in rest if row.get("processes") is None
                                else row["processes"] == n)
    named = "coarse-in-actors" in rest or "ca" in words
    return n, driver_segment, bool(row.get("coarse_in_actors", named))


def _load(rows: list[dict]) -> str:
    v = rows[0]["load_average_at_start"] if rows else None
    return "-" if v is None else f"{v:.2f}"


def render_against(rows: list[dict], title: str):
    from rich.table import Table
    t = Table(title=title)
    for col in ("contender", "procs", "split", "measured ms", "predicted ms", "error", "measured x", "predicted x",
                "error", "transfer ms meas / pred"):
        t.add_column(col, justify="left" if col == "contender" else "right")

    def pct(v):
        return "-" if v is None else f"{v:+.0%}"
    for r in rows:
        mx = r["measured_speedup"]
        mt = r["measured_transfer_ms"]
        t.add_row(r["contender"], str(r["processes"]), ",".join(map(str, r["split"])), f"{r['measured_ms']:.1f}",
                  f"{r['predicted_ms']:.1f}", pct(r["step_error"]), "-" if mx is None else f"{mx:.2f}",
                  f"{r['predicted_speedup']:.2f}", pct(r["speedup_error"]),
                  f"{'-' if mt is None else format(mt, '.1f')} / {r['predicted_transfer_ms']:.1f}")
    return t


# -------------------------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``raypar plan``."""
    p.add_argument("--model", default="vgg16", help="vgg11/13/16/19 or resnet<9n+2> (default: %(default)s, as train)")
    p.add_argument("--width-mult", type=float, default=0.25, help="scale every channel count (default: %(default)s)")
    p.add_argument("--devices", type=int, default=cpu_cores(),
                   help="devices to plan for, one process per device: GPUs, or on a CPU-only machine cores (each "
                        "process computes with one thread). Rows go N = 1..G; raypar needs N processes with F_1 in "
                        "the driver (--driver-segment, the default), N + 1 with --no-driver-segment. The step times "
                        "are measured on this machine's CPU with one thread (default: this machine's cores, "
                        "%(default)s)")
    p.add_argument("--link-gbps", type=float, default=None,
                   help=f"bandwidth of the driver's link in Gbit/s; every interface tensor goes through it (default: "
                        f"{LINK_GBPS:g}, a local Ray object store; --measure-link measures this machine's)")
    p.add_argument("--latency-ms", type=float, default=None,
                   help=f"round trip of one remote call; 2 per iteration are on the critical path (the forward "
                        f"trips, then the backward trips) (default: {CALL_LATENCY_MS:g}, measured with the link)")
    p.add_argument("--capacity", type=float, default=None,
                   help="what the devices together are worth in units of one alone (default: --devices, i.e. equal, "
                        "independent devices); on a shared CPU machine less: `raypar bench` measures it (the "
                        "cores' capacity it prints), and --bench reads it from bench.json unless this is given")
    p.add_argument("--measure-link", action="store_true",
                   help="measure the link and latency on this machine (a local Ray object store, driver <-> actor, "
                        "4 MiB arrays; 10-30 s) instead of the defaults; --link-gbps/--latency-ms still win")
    p.add_argument("--batch", type=int, default=64, help="global batch per step (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=32, help="input height = width (default: %(default)s)")
    p.add_argument("--in-channels", type=int, default=3, help="(default: %(default)s)")
    p.add_argument("--num-classes", type=int, default=10, help="(default: %(default)s)")
    p.add_argument("--iterations", "-k", type=int, default=1,
                   help="parareal iterations K (capped at N for each row) (default: %(default)s)")
    p.add_argument("--coarse-kernel", type=int, default=3, help="kernel size of the coarse convolutions "
                   "(default: %(default)s)")
    from ..network.specs import DOWNSAMPLE
    p.add_argument("--coarse-downsample", default="patch", choices=DOWNSAMPLE,
                   help="how a coarse network shrinks its input (default: %(default)s)")
    p.add_argument("--coarse-depth", type=int, default=1, help="conv/GroupNorm/ReLU layers per coarse network "
                                                               "(default: %(default)s)")
    p.add_argument("--coarse-width", type=float, default=1.0, help="hidden channels of a coarse network relative to "
                                                                   "its output (default: %(default)s)")
    p.add_argument("--balance", default="time", choices=MEASURES,
                   help="the split's cost measure, as in train (the times are always measured) (default: %(default)s)")
    p.add_argument("--driver-segment", action=argparse.BooleanOptionalAction, default=True,
                   help="F_1 runs in the driver: N processes instead of N + 1, no transfers for F_1, as `raypar "
                        "train` does by default (default: %(default)s)")
    p.add_argument("--channels-last", action="store_true",
                   help="profile every part in the channels-last layout, as train --channels-last computes")
    p.add_argument("--coarse-in-actors", action="store_true",
                   help="K = 1: each fine process computes its input from the batch (pre and C_1..C_j again), the "
                        "driver only the correction sweep; the batch travels instead of u_j, and no dL/du_j")
    p.add_argument("--defer-weights", action=argparse.BooleanOptionalAction, default=True,
                   help="the fine actors compute their weight gradients in their optimizer step, after answering "
                        "the driver, as `raypar train` does by default (default: %(default)s)")
    p.add_argument("--format", default="table", choices=["table", "json"], help="(default: %(default)s)")
    p.add_argument("--bench", default=None, metavar="BENCH_JSON",
                   help="instead: predict the contenders of a `raypar bench` result (its bench.json; model, batch "
                        "and cores from it) and print predicted vs measured")


def cmd_plan(args) -> int:
    check_inputs(args.devices, args.link_gbps, args.latency_ms, args.iterations, args.capacity)
    from rich.console import Console
    console = Console(width=None if sys.stdout.isatty() else 150)
    link = measure_link() if args.measure_link else Link()
    link = Link(args.link_gbps if args.link_gbps is not None else link.gbps,
                args.latency_ms if args.latency_ms is not None else link.latency_ms, link.measured)
    where = "measured here" if link.measured else "default"
    link_text = f"link {link.gbps:.2f} Gbit/s, {link.latency_ms:.2f} ms per call round trip ({where} unless given)"
    if args.bench:
        rows = against_bench(args.bench, link, capacity=args.capacity)
        if args.format == "json":
            print(json.dumps({"bench": args.bench, "link_gbps": link.gbps, "latency_ms": link.latency_ms,
                              "rows": rows}, indent=2))
        else:
            console.print(render_against(rows, f"predicted vs measured: {args.bench}"))
            cap = rows[0]["capacity"] if rows else None
            console.print(f"{link_text}; the devices worth {'as many as there are' if cap is None else f'{cap:.2f}'}"
                          f"; the prediction profiles this machine now, the bench measured then "
                          f"(load average at its start: {_load(rows)})")
        return 0
    planner = Planner(args.model, args.width_mult, args.image_size, args.in_channels, args.num_classes, args.batch,
                      args.coarse_depth, args.coarse_width, args.balance, coarse_kernel=args.coarse_kernel,
                      coarse_downsample=args.coarse_downsample, channels_last=args.channels_last)
    rows = predict(devices=args.devices, link_gbps=link.gbps, latency_ms=link.latency_ms, iterations=args.iterations,
                   driver_segment=args.driver_segment, planner=planner, capacity=args.capacity,
                   coarse_in_actors=args.coarse_in_actors, defer_weights=args.defer_weights)
    meta = {"model": args.model, "width_mult": args.width_mult, "batch": args.batch, "devices": args.devices,
            "iterations": args.iterations, "driver_segment": args.driver_segment,
            "coarse_in_actors": args.coarse_in_actors, "defer_weights": args.defer_weights,
            "channels_last": args.channels_last, "link_gbps": link.gbps,
            "latency_ms": link.latency_ms, "link_measured": link.measured, "blocks": planner.num_blocks,
            "capacity": args.capacity,
            "sequential_ms": 1e3 * planner.sequential_s()}
    if args.format == "json":
        print(to_json(rows, meta))
        return 0
    notes = []
    if args.devices > planner.num_blocks:
        notes.append(f"stopped at N = {planner.num_blocks}: {args.model} has {planner.num_blocks} blocks")
    console.print(render(rows, f"{args.model} x{args.width_mult}, batch {args.batch}, {args.devices} device(s), "
                               f"K = {args.iterations}{', F_1 in the driver' if args.driver_segment else ''}"
                               f"{', the coarse sweep in the actors' if args.coarse_in_actors else ''}"
                               f"{', channels-last' if args.channels_last else ''}",
                         caption="\n".join(notes) or None))
    console.print(f"sequential step {meta['sequential_ms']:.1f} ms (fwd+bwd+optimizer, one thread, measured now); "
                  f"{link_text}. eff ≤ = speedup / devices in use; raypar needs N processes "
                  f"(N + 1 with --no-driver-segment)")
    return 0
