"""``raypar bench`` on the command line: its options (:func:`add_arguments`), the configuration they give
(:func:`config_from_args`), and the whole run (:func:`run_bench`: measure, print, write, log)."""
from __future__ import annotations

import argparse
import os
import sys

import torch

from ...errors import UserError, make_output_dir
from ...network.specs import DOWNSAMPLE
from ...training.session import start_private
from .config import CONTENDERS, CPU_ONLY, DEFAULT_CONTENDERS, BenchConfig
from .cores import core_speeds
from .output import _ms, environment, log_mlflow, table, write_json, write_png
from .schedule import measure


def _ensure_ray(cfg: BenchConfig) -> bool:
    """Start a private local Ray big enough for the largest contender; True when this call started it."""
    return start_private(max(max(cfg.subnets) + 1, os.cpu_count() or 1),
                         torch.cuda.device_count() if cfg.device == "cuda" else 0, one_thread=True)


def run_bench(cfg: BenchConfig | None = None, out: str = "bench_out", tracking_uri: str | None = None,
              experiment: str = "raypar-bench", console=None) -> list[dict]:
    """Measure every contender, print the table, write ``bench.json`` and ``bench.png`` into ``out`` and, with a
    tracking URI, log one MLflow run. Returns the rows."""
    import ray
    from rich.console import Console
    cfg = cfg or BenchConfig()
    console = console or Console(width=None if sys.stdout.isatty() else 150)
    make_output_dir(out)
    if tracking_uri:
        from ...training.tracking import connect
        connect(tracking_uri, experiment)                  # a store that cannot be used fails now, not after the run
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                               # the split is profiled as the processes will run
    env, started = environment(), False
    try:
        if cfg.device == "cpu":
            console.print("timing every CPU core with the original network ...", style="dim")
        env["core_speeds"] = core_speeds(cfg)
        started = _ensure_ray(cfg)
        rows = measure(cfg, log=lambda m: console.print(m, style="dim"))
    finally:
        torch.set_num_threads(threads)
        if started:
            ray.shutdown()
    console.print(table(rows, cfg))
    console.print(f"{env['cpu_cores']} CPU cores, load average {env['load_average_at_start'][0]:.2f} at the start "
                  f"(other work on the machine skews the numbers); torch {env['torch']}, Ray {env['ray']}")
    if env["core_speeds"]:
        cs = env["core_speeds"]
        console.print(f"the original's step pinned to each core: {_ms(cs['solo_ms'])} alone, {_ms(cs['together_ms'])} "
                      f"with every core busy: together the cores are worth {cs['capacity']:.2f} of the fastest one "
                      f"alone ({len(cs['cores'])} on a machine of equal, independent cores), the ceiling of any "
                      f"speedup over the original")
    write_json(rows, cfg, env, os.path.join(out, "bench.json"))
    write_png(rows, cfg, os.path.join(out, "bench.png"))
    if tracking_uri:
        run_id = log_mlflow(rows, cfg, out, tracking_uri, experiment)
        console.print(f"MLflow run {run_id} in experiment {experiment!r} at {tracking_uri}")
    return rows


def add_arguments(p) -> None:
    """The options of ``raypar bench`` (and ``python -m raypar.tools.bench``)."""
    d = BenchConfig()
    p.add_argument("--model", default=d.model, help="vgg11/13/16/19 or resnet<9n+2> (default: %(default)s)")
    p.add_argument("--width-mult", type=float, default=d.width_mult, help="(default: %(default)s)")
    p.add_argument("--image-size", type=int, default=d.image_size, help="(default: %(default)s)")
    p.add_argument("--in-channels", type=int, default=d.in_channels, help="(default: %(default)s)")
    p.add_argument("--num-classes", type=int, default=d.num_classes, help="(default: %(default)s)")
    p.add_argument("--batch", type=int, default=d.batch, help="global batch of every contender (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed steps first (default: %(default)s)")
    p.add_argument("--steps", type=int, default=d.steps, help="timed steps (default: %(default)s)")
    p.add_argument("--subnets", default="1,2", help="raypar's N, comma-separated; ddp and pipe use the largest "
                                                   "(default: %(default)s)")
    p.add_argument("--microbatches", type=int, default=d.microbatches,
                   help="GPipe micro-batches (default: %(default)s)")
    p.add_argument("--balance", default=d.balance, help="split: time, flops, params or counts like 6,6; tune: each "
                                                        "raypar contender's split measured on the engine first "
                                                        "(raypar tune; parareal-1proc and pipe: time) "
                                                        "(default: %(default)s)")
    p.add_argument("--contenders", default=None,
                   help=f"any of {', '.join(CONTENDERS)}; raypar: the engine as `raypar train` runs it by default "
                        f"(F_1 in the driver), the others named by the train flags they add (--no-driver-segment: "
                        f"every segment in an actor; --coarse-in-actors) (default: {','.join(DEFAULT_CONTENDERS)}; "
                        f"with --device cuda without {' and '.join(CPU_ONLY)}, which run on CPUs only)")
    p.add_argument("--device", default=d.device, choices=["cpu", "cuda"],
                   help="where every process computes; with one GPU the processes share it (default: %(default)s)")
    p.add_argument("--transports", default="auto",
                   help="raypar rows for each of these interface-tensor transports: auto (train's default: p2p on "
                        "CPUs), object-store, p2p, cuda-ipc; the row of auto has no suffix (default: %(default)s)")
    p.add_argument("--coarse-kernel", type=int, default=d.coarse_kernel,
                   help="kernel size of the coarse convolutions (default: %(default)s)")
    p.add_argument("--coarse-downsample", default=d.coarse_downsample, choices=DOWNSAMPLE,
                   help="how the coarse networks shrink their input (default: %(default)s)")
    p.add_argument("--channels-last", action="store_true",
                   help="every contender's weights and activations in the channels-last layout")
    p.add_argument("--amp", default=d.amp, choices=["off", "bf16", "fp16"],
                   help="every contender under autocast (fp16 with loss scaling, except pipe's stages: no scaling) "
                        "(default: %(default)s)")
    p.add_argument("--defer-weights", action=argparse.BooleanOptionalAction, default=d.defer_weights,
                   help="raypar's fine actors send dL/du back before computing their weight gradients, in their "
                        "optimizer step, which the driver does not wait for (as train's option) (default: on)")
    p.add_argument("--rounds", type=int, default=d.rounds,
                   help="run the whole line-up this many times, in reverse order every other round; each row is "
                        "its median round, its ratio the median of its per-round ratios (default: %(default)s)")
    p.add_argument("--one-at-a-time", action="store_true",
                   help="run every contender alone, one after the other, DDP in Ray Train's TorchTrainer (by default "
                        "the contenders take turns, one step each, so their ratios are measured at the same moments, "
                        "and DDP runs in the benchmark's own Ray actors)")
    p.add_argument("--all-together", action="store_true",
                   help="taking turns, every contender's processes up at once and each contender's step in turn; by "
                        "default each contender takes turns with the original only, pair after pair, since idle "
                        "processes slow the contenders of several processes more than the original (measured: "
                        "benchmarks/throughput/README.md)")
    p.add_argument("--seed", type=int, default=d.seed, help="(default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="SGD learning rate (default: %(default)s)")
    p.add_argument("--out", default="bench_out", help="folder for bench.json and bench.png (default: %(default)s)")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                   help="log an MLflow run here; none: no MLflow run (default: $MLFLOW_TRACKING_URI, and no run "
                        "where it is unset)")
    p.add_argument("--experiment", default="raypar-bench", help="MLflow experiment (default: %(default)s)")


def _ints(text: str, what: str) -> list[int]:
    """``text``'s comma-separated integers; a :class:`UserError` naming the option ``what`` if they are not."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, got {text!r}") from None


def config_from_args(args) -> BenchConfig:
    """The validated :class:`BenchConfig` of ``raypar bench``'s parsed options."""
    from ...network.specs import parse_balance
    cfg = BenchConfig(model=args.model, width_mult=args.width_mult, image_size=args.image_size,
                      in_channels=args.in_channels, num_classes=args.num_classes, batch=args.batch,
                      warmup=args.warmup, steps=args.steps, subnets=_ints(args.subnets, "--subnets"),
                      microbatches=args.microbatches, balance=parse_balance(args.balance, tune=True),
                      contenders=contenders_of(args), seed=args.seed, lr=args.lr, device=args.device,
                      transports=[t.strip() for t in args.transports.split(",") if t.strip()],
                      coarse_kernel=args.coarse_kernel, channels_last=args.channels_last, amp=args.amp,
                      coarse_downsample=args.coarse_downsample, rounds=args.rounds,
                      interleave=not args.one_at_a_time, defer_weights=args.defer_weights,
                      pairs=not args.all_together)
    return cfg.validate()


def contenders_of(args) -> list[str]:
    """``--contenders``, or the default line-up for ``--device`` (on GPUs without the contenders that need CPUs)."""
    if args.contenders is None:
        return [c for c in DEFAULT_CONTENDERS if args.device == "cpu" or c not in CPU_ONLY]
    return [c.strip() for c in args.contenders.split(",") if c.strip()]


def tracking_uri_of(args) -> str | None:
    """``--tracking-uri``: None for no MLflow run (left out with $MLFLOW_TRACKING_URI unset, or ``none``)."""
    uri = (args.tracking_uri or "").strip()
    return None if uri.lower() in ("", "none") else uri


def cmd_bench(args) -> int:
    """``raypar bench``: run the benchmark that the parsed options ``args`` ask for; returns the exit status (0)."""
    run_bench(config_from_args(args), args.out, tracking_uri_of(args), args.experiment)
    print(f"raypar: bench written to {os.path.join(args.out, 'bench.json')} and bench.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m raypar.tools.bench [options]``: the same as ``raypar bench``. Returns the exit status (2 for a
    one-line user error)."""
    description = sys.modules[__package__].__doc__.splitlines()[0]      # the package's own first line
    p = argparse.ArgumentParser(prog="python -m raypar.tools.bench", description=description)
    add_arguments(p)
    try:
        return cmd_bench(p.parse_args(argv))
    except UserError as e:
        print(f"raypar: error: {e}", file=sys.stderr)
        return 2
