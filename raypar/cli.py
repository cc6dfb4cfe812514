"""The ``raypar`` command: ``info`` (the split of a model) and ``train`` (parareal training on Ray).

A user mistake prints one line ``raypar: error: ...`` and exits with code 2; internal errors keep their traceback.
"""
from __future__ import annotations

import argparse
import sys

from .errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message):          # one line, exit code 2 (argparse prints usage too by default)
        raise UserError(f"{self.prog}: {message}")


def _add_model_args(p: argparse.ArgumentParser, defaults) -> None:
    g = p.add_argument_group("model and split")
    g.add_argument("--model", default=defaults.model,
                   help="vgg11/13/16/19 or resnet<9n+2> (resnet20, resnet164, resnet1001) (default: %(default)s)")
    g.add_argument("--width-mult", type=float, default=defaults.width_mult,
                   help="scale every channel count (default: %(default)s)")
    g.add_argument("--subnets", "-n", type=int, default=defaults.subnets,
                   help="number N of fine sub-networks (default: %(default)s)")
    g.add_argument("--iterations", "-k", type=int, default=defaults.iterations,
                   help="parareal iterations K, 1..N; K = N reproduces the sequential network (default: %(default)s)")
    g.add_argument("--balance", default="time",
                   help="split by measured 'time', 'flops', 'params', or block counts like 5,7 (default: time)")
    g.add_argument("--coarse-depth", type=int, default=defaults.coarse_depth,
                   help="conv/BN/ReLU layers per coarse network (default: %(default)s)")
    g.add_argument("--coarse-width", type=float, default=defaults.coarse_width,
                   help="hidden channels of a coarse network relative to its output (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    from .config import TrainConfig
    d = TrainConfig()
    parser = _Parser(prog="raypar", description="Parareal neural networks trained on Ray, tracked in MLflow.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    info = sub.add_parser("info", help="show how a model splits into sub-networks",
                          description="Print the split of a model into N sub-networks: blocks, parameters, "
                                      "cost, interface tensors, coarse/fine cost and the ideal speedup.")
    _add_model_args(info, d)
    info.add_argument("--num-classes", type=int, default=10, help="classifier outputs (default: %(default)s)")
    info.add_argument("--in-channels", type=int, default=3, help="input channels (default: %(default)s)")
    info.add_argument("--image-size", type=int, default=32, help="input height = width (default: %(default)s)")
    info.add_argument("--batch", type=int, default=8, help="batch size of the profiling run (default: %(default)s)")
    info.set_defaults(func=cmd_info, width_mult=1.0, model="resnet164", subnets=4)

    train = sub.add_parser("train", help="train a parareal network on Ray (defaults: a small VGG on digits, N = 2)",
                           description="Train a parareal network: fine sub-networks in Ray actors, pre/coarse/post "
                                       "in the Ray Train driver, every run recorded in MLflow. With no arguments it "
                                       "trains a small VGG-11 on the offline digits data set with 2 sub-networks "
                                       "on an in-process Ray.")
    _add_model_args(train, d)
    g = train.add_argument_group("data")
    g.add_argument("--dataset", default=d.dataset,
                   help="digits (offline), cifar10, cifar100, svhn, mnist, imagefolder:PATH (default: %(default)s)")
    g.add_argument("--data-dir", default=None, help="where torchvision data sets are (or are downloaded to)")
    g.add_argument("--download", action="store_true", help="download the data set into --data-dir (needs internet)")
    g = train.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d.epochs, help="(default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="(default: %(default)s)")
    g.add_argument("--lr", type=float, default=d.lr, help="SGD learning rate, cosine schedule (default: %(default)s)")
    g.add_argument("--momentum", type=float, default=d.momentum, help="(default: %(default)s)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="(default: %(default)s)")
    g.add_argument("--seed", type=int, default=d.seed, help="(default: %(default)s)")
    g = train.add_argument_group("resources")
    g.add_argument("--gpus-per-subnet", type=float, default=None,
                   help="GPUs per fine actor, fractions allowed (default: 1 if the cluster has GPUs, else 0)")
    g.add_argument("--cpus-per-subnet", type=float, default=d.cpus_per_subnet, help="(default: %(default)s)")
    g.add_argument("--driver-segment", action="store_true",
                   help="run the first fine sub-network in the driver, overlapped with the actors: N processes "
                        "instead of N + 1 (faster when processes outnumber cores; see benchmarks/throughput)")
    g.add_argument("--placement", default=d.placement, choices=["PACK", "SPREAD"],
                   help="placement group strategy for the fine actors (default: %(default)s)")
    g.add_argument("--address", default=None,
                   help="Ray cluster address (default: the job's cluster inside `ray job submit`, else an "
                        "in-process local Ray)")
    g.add_argument("--resource-timeout", dest="resource_timeout_s", type=float, default=d.resource_timeout_s,
                   help="seconds to wait for the cluster (and its autoscaler) to provide the driver and every "
                        "fine actor before failing with what was asked (default: %(default)s)")
    g = train.add_argument_group("run bookkeeping")
    g.add_argument("--storage-path", default=d.storage_path,
                   help="where Ray Train keeps checkpoints; shared storage (s3://, NFS) on multi-node clusters "
                        "(default: %(default)s)")
    g.add_argument("--name", default=None,
                   help="run name; a run with the same name and storage path resumes from its last checkpoint "
                        "(default: derived from model, data set, N, K and seed)")
    g.add_argument("--max-failures", type=int, default=d.max_failures,
                   help="restarts from the last checkpoint after a lost worker or actor (default: %(default)s)")
    g.add_argument("--num-to-keep", type=int, default=d.num_to_keep, help="checkpoints kept (default: %(default)s)")
    g.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    g.add_argument("--experiment", default=d.experiment, help="MLflow experiment (default: %(default)s)")
    g.add_argument("--run-name", default=None, help="MLflow run name (default: --name)")
    train.set_defaults(func=cmd_train)

    from .bench import add_arguments as add_bench_arguments
    bench = sub.add_parser("bench", help="training throughput and memory: original vs parareal vs raypar vs DDP vs "
                                         "pipelining",
                           description="Train the same model, batch and threads per process as every contender "
                                       "(original, parareal-1proc, raypar-N on Ray, Ray Train DDP, torch pipelining) "
                                       "and compare samples/s and peak memory per process; writes bench.json and "
                                       "bench.png into --out and logs an MLflow run with --tracking-uri.")
    add_bench_arguments(bench)
    bench.set_defaults(func=cmd_bench)
    return parser


def cmd_bench(args) -> int:
    from .bench import cmd_bench as run_bench
    return run_bench(args)


def config_from_args(args):
    """The validated :class:`TrainConfig` of parsed ``train`` arguments."""
    import dataclasses
    import os

    from .balance import parse_balance
    from .config import TrainConfig
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    values["balance"] = parse_balance(args.balance)
    values["tracking_uri"] = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    return TrainConfig(**values).validate()


def _check_address(address: str, timeout_s: float = 10.0) -> None:
    """A quick TCP check of ``host:port`` (also ``ray://host:port``): ray.init would retry for minutes."""
    import socket
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as e:
        raise UserError(f"cannot reach the Ray cluster at {address}: {e}; check --address "
                        f"(host:port of the head's GCS, default port 6379)") from None


def _init_ray(cfg) -> None:
    import os

    import ray
    if ray.is_initialized():
        return
    if cfg.address:
        target = cfg.address
        _check_address(target)
    elif os.environ.get("RAY_ADDRESS"):
        target = None                                 # inside `ray job submit`: attach to the job's cluster
    else:                                             # a private in-process Ray sized for this run
        need = int(cfg.subnets * cfg.cpus_per_subnet + 1.999)
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, need), configure_logging=False)
        return
    try:
        ray.init(address=target, configure_logging=False)
    except ConnectionError as e:
        raise UserError(f"cannot reach the Ray cluster at {target or os.environ.get('RAY_ADDRESS')}: "
                        f"{str(e).splitlines()[0][:200]}") from None


def _fit_with_progress(cfg, fit):
    """Run ``fit`` in a thread and show its progress: a bar per epoch on a terminal, a line per epoch otherwise."""
    import queue as queue_mod
    import threading

    from ray.util.queue import Queue
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    events = Queue(actor_options={"num_cpus": 0})
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = fit(cfg, events)
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    console = Console()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[info]}"), console=console, disable=not console.is_terminal) as bars:
        tasks: dict = {}
        while thread.is_alive() or not events.empty():
            try:
                ev = events.get(timeout=0.5)
            except queue_mod.Empty:
                continue
            epoch = ev["epoch"]
            if ev["kind"] == "start":
                if ev["restarts"]:
                    console.print(f"restarted (restart {ev['restarts']}) from the checkpoint of epoch {epoch}")
                continue
            if epoch not in tasks:
                tasks[epoch] = bars.add_task(f"epoch {epoch}/{cfg.epochs}", total=ev.get("total", 1), info="")
            if ev["kind"] == "step":
                bars.update(tasks[epoch], completed=ev["done"], total=ev["total"])
            else:
                m = ev["metrics"]
                info = (f"train loss {m['train_loss']:.3f}  val acc {m['val_acc']:.2%}  "
                        f"{m['samples_per_s']:.0f} samples/s")
                bars.update(tasks[epoch], info=info, completed=bars.tasks[tasks[epoch]].total)
                if not console.is_terminal:
                    print(f"epoch {epoch}/{cfg.epochs}: {info}", flush=True)
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def cmd_train(args) -> int:
    from rich.console import Console
    from rich.panel import Panel

    from . import data, tracking
    from .trainer import fit

    cfg = config_from_args(args)
    data.load(cfg.dataset, cfg.data_dir, cfg.download)          # a missing data set fails here, before any run
    tracking.check_reachable(cfg.tracking_uri)
    _init_ray(cfg)
    try:
        result = _fit_with_progress(cfg, fit)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - an internal error: full traceback, then a clear last line
        import traceback
        traceback.print_exc()
        print(f"raypar: training failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
              file=sys.stderr)
        return 1
    m = result.metrics
    cfg = cfg.resolved()
    ui = (f"mlflow ui --backend-store-uri {cfg.tracking_uri}" if cfg.tracking_uri.startswith("sqlite")
          else f"open {cfg.tracking_uri}")
    lines = [f"model {cfg.model} x{cfg.width_mult} on {cfg.dataset}, N = {cfg.subnets}, K = {cfg.iterations}",
             (f"final val accuracy [bold]{m['val_acc']:.2%}[/bold] after epoch {m['epoch']}/{cfg.epochs}, "
              f"{m['samples_per_s']:.0f} samples/s, {m['epoch_time_s']:.1f} s/epoch" if "val_acc" in m
              else f"nothing to train: the checkpoint of {cfg.name!r} is already at epoch {cfg.epochs}"),
             f"MLflow run {result.run_id} (experiment {cfg.experiment!r}){' — resumed' if result.resumed else ''}",
             f"checkpoints: {cfg.storage_path}/{cfg.name}", f"open the UI: {ui}"]
    Console().print(Panel("\n".join(lines), title="raypar train", expand=False))
    print(f"raypar: training finished: run {result.run_id}")
    return 0


def cmd_info(args) -> int:
    from rich.console import Console

    from .balance import parse_balance
    from .coarse import CoarseSpec
    from .models import build
    from .network import PararealNet
    from .report import split_table

    if args.batch < 1 or args.image_size < 1:
        raise UserError("--batch and --image-size must be >= 1")
    console = Console()
    staged = build(args.model, num_classes=args.num_classes, in_channels=args.in_channels,
                   width_mult=args.width_mult, image_size=args.image_size)
    with console.status(f"profiling {args.model} ({len(staged.blocks)} blocks)..."):
        net = PararealNet(staged, args.subnets, args.iterations, CoarseSpec(args.coarse_depth, args.coarse_width),
                          parse_balance(args.balance), profile_batch=args.batch)
    console.print(split_table(net, args.batch))
    console.print(f"ideal speedup over the sequential network: [bold]{net.ideal_speedup():.2f}x[/bold] "
                  f"(sequential cost / (pre + coarse + {'K x ' if net.iterations > 1 else ''}max fine + post))")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return args.func(args)
    except UserError as e:
        msg = str(e).replace("\n", " ")
        print(msg if msg.startswith("raypar") else f"raypar: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raypar: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
