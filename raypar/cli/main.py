"""The ``raypar`` command: ``info`` (the split of a model), ``train`` (parareal training on Ray), ``study`` and
``compare`` (runs side by side), ``recipes``, ``bench`` (every contender's throughput), ``plan`` (predicted speedup)
and ``tune`` (the split measured on the engine).

A user mistake prints one line ``raypar: error: ...`` and exits with code 2; internal errors keep their traceback.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import UserError
from ..training.session import connect
from ..training.tracking import redact


class _Parser(argparse.ArgumentParser):
    def error(self, message):          # one line, exit code 2 (argparse prints usage too by default)
        raise UserError(f"{self.prog}: {message}")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas like 1,2,4, got {text!r}")
    return values


def _add_model_args(p: argparse.ArgumentParser, d, fixed: bool = True, study: bool = False) -> None:
    """The model/split options. ``fixed``: real defaults (``info``); otherwise every default is None so that a
    recipe or config file can fill what the command line leaves out (``train``, ``study``: see config_from_args)."""
    def default(name):
        return getattr(d, name) if fixed else None

    def shown(name):
        return f"(default: {getattr(d, name)})"

    from ..network.coarse import DOWNSAMPLE
    g = p.add_argument_group("model and split")
    g.add_argument("--model", default=default("model"),
                   help=f"vgg11/13/16/19 or resnet<9n+2> (resnet20, resnet164, resnet1001) {shown('model')}")
    g.add_argument("--width-mult", type=float, default=default("width_mult"),
                   help=f"scale every channel count {shown('width_mult')}")
    if study:
        g.add_argument("--subnets", "-n", type=_int_list, default=[1, 2, 4],
                       help="the numbers N of fine sub-networks to train; N = 1 is the original network, run in one "
                            "process (default: 1,2,4)")
        g.add_argument("--iterations", "-k", type=_int_list, default=[1],
                       help="the parareal iterations K to train for each N (only K <= N is run) (default: 1)")
    else:
        g.add_argument("--subnets", "-n", type=int, default=default("subnets"),
                       help=f"number N of fine sub-networks {shown('subnets')}")
        g.add_argument("--iterations", "-k", type=int, default=default("iterations"),
                       help=f"parareal iterations K, 1..N; K = N reproduces the sequential network "
                            f"{shown('iterations')}")
    g.add_argument("--balance", default=default("balance"),
                   help=f"split by measured 'time', 'flops', 'params', or block counts like 5,7"
                        f"{'' if fixed else '; tune: run candidate splits on the engine first and keep the fastest'} "
                        f"{shown('balance')}")
    g.add_argument("--coarse-depth", type=int, default=default("coarse_depth"),
                   help=f"conv/BN/ReLU layers per coarse network {shown('coarse_depth')}")
    g.add_argument("--coarse-width", type=float, default=default("coarse_width"),
                   help=f"hidden channels of a coarse network relative to its output {shown('coarse_width')}")
    g.add_argument("--coarse-kernel", type=int, default=default("coarse_kernel"),
                   help=f"kernel size of the coarse convolutions (odd; 1 is cheapest) {shown('coarse_kernel')}")
    g.add_argument("--coarse-norm", default=default("coarse_norm"), choices=["group", "batch"],
                   help=f"the coarse networks' normalisation; BatchNorm's running statistics blend the coarse and "
                        f"correction sweeps' inputs and cost accuracy at evaluation (see raypar/coarse.py) "
                        f"{shown('coarse_norm')}")
    g.add_argument("--coarse-downsample", default=default("coarse_downsample"), choices=DOWNSAMPLE,
                   help=f"how a coarse network shrinks its input: average-pool to the output's size, then convolve "
                        f"(cheaper), or a strided convolution {shown('coarse_downsample')}")
    g.add_argument("--norm", default=default("norm"), choices=["batch", "group"],
                   help=f"normalisation layers of the built-in models: BatchNorm, or GroupNorm "
                        f"(independent of the batch: replicas compute exactly what one process would on the "
                        f"combined batch) {shown('norm')}")


def _add_train_args(p: argparse.ArgumentParser, d, study: bool = False) -> None:
    """Every option of a training run (``train``; ``study`` takes lists of N, K and seeds instead)."""
    def shown(name):
        return f"(default: {getattr(d, name)})"

    g = p.add_argument_group("recipe")
    g.add_argument("--recipe", default=None,
                   help="start from a named recipe (`raypar recipes` lists them); options given here override it")
    g.add_argument("--config", default=None, metavar="FILE",
                   help="start from a TOML file of settings (the recipe format: keys are the option names with "
                        "'_' for '-', e.g. lr_schedule = \"step\"); applied after --recipe, before the options here")
    _add_model_args(p, d, fixed=False, study=study)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=None,
                   help=f"digits (offline), cifar10, cifar100, svhn, mnist, imagefolder:PATH {shown('dataset')}")
    g.add_argument("--data-dir", default=None, help="where torchvision data sets are (or are downloaded to)")
    g.add_argument("--download", action="store_true", default=None,
                   help="download the data set into --data-dir (needs internet)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=None, help=shown("epochs"))
    g.add_argument("--batch-size", type=int, default=None, help=shown("batch_size"))
    g.add_argument("--lr", type=float, default=None, help=f"SGD learning rate {shown('lr')}")
    g.add_argument("--lr-schedule", default=None, choices=["cosine", "step"],
                   help=f"per-epoch LR schedule: cosine to 0, or x --lr-gamma at 50%% and 75%% of the epochs "
                        f"(lr_milestones in a config file) {shown('lr_schedule')}")
    g.add_argument("--lr-gamma", type=float, default=None, help=f"the step schedule's factor {shown('lr_gamma')}")
    g.add_argument("--momentum", type=float, default=None, help=shown("momentum"))
    g.add_argument("--weight-decay", type=float, default=None, help=shown("weight_decay"))
    g.add_argument("--on-nonfinite", default=None, choices=["stop", "skip"],
                   help=f"a NaN/inf loss: stop the run (the last good checkpoint stays), or skip that batch with no "
                        f"update anywhere, counted in the metric skipped_batches {shown('on_nonfinite')}")
    if study:
        g.add_argument("--seeds", type=_int_list, default=[0], help="seeds, one run each per configuration "
                                                                    "(default: 0)")
    else:
        g.add_argument("--seed", type=int, default=None, help=shown("seed"))
    g = p.add_argument_group("resources")
    g.add_argument("--gpus-per-subnet", type=float, default=None,
                   help="GPUs per fine actor, fractions allowed (default: 1 if the cluster has GPUs, else 0)")
    g.add_argument("--cpus-per-subnet", type=float, default=None, help=shown("cpus_per_subnet"))
    g.add_argument("--replicas", "-r", type=int, default=None,
                   help=f"R data-parallel replicas of the whole parareal network: R drivers x N fine actors, the "
                        f"data split between them, every part's gradients averaged before each step; --batch-size "
                        f"is per replica {shown('replicas')}")
    g.add_argument("--driver-segment", action="store_true", default=None,
                   help="run the first fine sub-network in the driver, overlapped with the actors: N processes "
                        "instead of N + 1 (faster when processes outnumber cores; see benchmarks/throughput)")
    g.add_argument("--coarse-in-actors", action="store_true", default=None,
                   help="K = 1 only: each fine actor computes its own input and coarse term from the batch (copies "
                        "of pre and the coarse networks, updated every step) and sends back their difference, so "
                        "that no actor waits for the driver's coarse sweep and the driver runs no coarse backward "
                        "after them; the same network and numbers (see benchmarks/throughput)")
    g.add_argument("--defer-weights", action=argparse.BooleanOptionalAction, default=None,
                   help="each fine actor sends dL/du back before it computes its weight gradients, which it computes "
                        "in its optimizer step while the driver goes on (its own backward, the next step's coarse "
                        "sweep); the same numbers (see benchmarks/throughput) (default: on)")
    g.add_argument("--channels-last", action="store_true", default=None,
                   help="keep weights and activations in the channels-last layout: faster convolutions on recent "
                        "CPUs and on GPUs; the results match the default layout up to rounding; a time balance "
                        "profiles in it (its split can differ: --balance tune measures it)")
    g.add_argument("--amp", default=None, choices=["off", "bf16", "fp16"],
                   help="mixed precision in the driver and every fine actor: bf16 autocast (GPUs from Ampere on), or "
                        "fp16 autocast with a dynamic loss scale shared by every process; weights stay float32 "
                        f"(slow on CPUs without bfloat16/float16 instructions) {shown('amp')}")
    g.add_argument("--placement", default=None, choices=["PACK", "SPREAD"],
                   help=f"placement group strategy for the fine actors {shown('placement')}")
    g.add_argument("--transport", default=None, choices=["auto", "object-store", "p2p", "cuda-ipc"],
                   help="how interface tensors travel: object-store (numpy through Ray's object store), p2p "
                        "(send/recv in a NCCL group between GPUs, gloo on CPUs), cuda-ipc (Ray Direct Transport, "
                        f"driver and actors sharing one GPU); auto: p2p on CPUs and with a GPU per process; on one "
                        f"shared GPU cuda-ipc from 24 MiB of interface tensors a step, the object store below; "
                        f"else the object store {shown('transport')}")
    g.add_argument("--address", default=None,
                   help="Ray cluster address (default: the job's cluster inside `ray job submit`, else an "
                        "in-process local Ray)")
    g.add_argument("--resource-timeout", dest="resource_timeout_s", type=float, default=None,
                   help=f"seconds to wait for the cluster (and its autoscaler) to provide the driver and every "
                        f"fine actor before failing with what was asked {shown('resource_timeout_s')}")
    g = p.add_argument_group("run bookkeeping")
    g.add_argument("--storage-path", default=None,
                   help=f"where Ray Train keeps checkpoints; shared storage (s3://, NFS) on multi-node clusters "
                        f"{shown('storage_path')}")
    if study:
        g.add_argument("--name", default=None,
                       help="the study's name: its MLflow parent run and the prefix of every run's name; the same "
                            "command again resumes the study (default: <recipe or model>-<dataset>)")
        g.add_argument("--out", default=None,
                       help="folder for the report and plots (default: studies/<name>)")
    else:
        g.add_argument("--name", default=None,
                       help="run name; a run with the same name and storage path resumes from its last checkpoint "
                            "(default: derived from model, data set, N, K and seed)")
    g.add_argument("--max-failures", type=int, default=None,
                   help=f"restarts from the last checkpoint after a lost worker or actor {shown('max_failures')}")
    g.add_argument("--num-to-keep", type=int, default=None, help=f"checkpoints kept {shown('num_to_keep')}")
    g.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    g.add_argument("--experiment", default=None, help=f"MLflow experiment {shown('experiment')}")
    if not study:
        g.add_argument("--run-name", default=None, help="MLflow run name (default: --name)")


def build_parser() -> argparse.ArgumentParser:
    from ..training.config import TrainConfig
    d = TrainConfig()
    parser = _Parser(prog="raypar", description="Parareal neural networks trained on Ray, tracked in MLflow.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    info = sub.add_parser("info", help="show how a model splits into sub-networks",
                          description="Print the split of a model into N sub-networks: blocks, parameters, "
                                      "cost, interface tensors, coarse/fine cost and the ideal speedup.")
    _add_model_args(info, TrainConfig(model="resnet164", width_mult=1.0, subnets=4))
    info.add_argument("--num-classes", type=int, default=10, help="classifier outputs (default: %(default)s)")
    info.add_argument("--in-channels", type=int, default=3, help="input channels (default: %(default)s)")
    info.add_argument("--image-size", type=int, default=32, help="input height = width (default: %(default)s)")
    info.add_argument("--batch", type=int, default=8, help="batch size of the profiling run (default: %(default)s)")
    info.set_defaults(func=cmd_info)

    train = sub.add_parser("train", help="train a parareal network on Ray (defaults: a small VGG on digits, N = 2)",
                           description="Train a parareal network: fine sub-networks in Ray actors, pre/coarse/post "
                                       "in the Ray Train driver, every run recorded in MLflow. With no arguments it "
                                       "trains a small VGG-11 on the offline digits data set with 2 sub-networks "
                                       "on an in-process Ray. Settings come from the defaults shown, replaced by "
                                       "--recipe, then by --config, then by the options given.")
    _add_train_args(train, d)
    train.set_defaults(func=cmd_train)

    study = sub.add_parser("study", help="train the original network and its parareal versions side by side",
                           description="Train, with one recipe and seed list, the original network (N = 1, in one "
                                       "process) and its parareal versions for every N and K asked for, as nested "
                                       "MLflow runs under one parent run; print a table as it goes; write a Markdown "
                                       "report and PNG plots into --out and onto the parent run. The same command "
                                       "again resumes an interrupted study (finished runs are not retrained).")
    _add_train_args(study, d, study=True)
    study.set_defaults(func=cmd_study)

    compare = sub.add_parser("compare", help="compare the runs of an MLflow experiment or study, one row per "
                                             "configuration",
                             description="Read finished runs from MLflow and print one row per configuration "
                                         "(model, data set, N, K, replicas, recipe): seeds, best and final val "
                                         "accuracy (mean ± std over seeds), time per epoch, samples/s, speedup and "
                                         "accuracy delta vs the N = 1 baseline of the same model and recipe.")
    compare.add_argument("--experiment", default=None, help="the MLflow experiment to read (default: raypar)")
    compare.add_argument("--parent", default=None, metavar="RUN_ID",
                         help="only the runs of one study (its parent run id)")
    compare.add_argument("--tracking-uri", default=None,
                         help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    compare.add_argument("--format", default="table", choices=["table", "markdown", "csv", "json"],
                         help="output format (default: %(default)s)")
    compare.set_defaults(func=cmd_compare)

    recipes = sub.add_parser("recipes", help="list the built-in recipes",
                             description="List the recipes that ship with raypar (name@version and what they "
                                         "train); `--show NAME` prints one as a TOML file to start your own from.")
    recipes.add_argument("--show", default=None, metavar="NAME", help="print this recipe's TOML file")
    recipes.set_defaults(func=cmd_recipes)

    from ..tools.bench import add_arguments as add_bench_arguments
    bench = sub.add_parser("bench", help="training throughput and memory: original vs parareal vs raypar vs DDP vs "
                                         "pipelining",
                           description="Train the same model, batch and threads per process as every contender "
                                       "(original, parareal-1proc, raypar-N on Ray, DDP, torch pipelining), taking turns step "
                                       "by step, and compare samples/s and peak memory per process; writes "
                                       "bench.json and bench.png into --out and logs an MLflow run with "
                                       "--tracking-uri.")
    add_bench_arguments(bench)
    bench.set_defaults(func=cmd_bench)

    from ..tools.tune import add_arguments as add_tune_arguments
    tune = sub.add_parser("tune", help="choose the split by measuring candidate splits on the engine",
                          description="Run the engine with the profile's split and its neighbours (one block "
                                      "boundary moved by up to --radius blocks), on the same synthetic batches, "
                                      "taking turns step by step on CPUs (one after the other on GPUs), and print "
                                      "each one's step time; the fastest is what `train --balance tune` would "
                                      "use with the same settings.")
    add_tune_arguments(tune)
    tune.set_defaults(func=cmd_tune)

    from ..tools.plan import add_arguments as add_plan_arguments
    plan = sub.add_parser("plan", help="predict step time and speedup for N = 1..G sub-networks, before running",
                          description="Predict, for N = 1..G sub-networks, the training step time and the speedup "
                                      "over the sequential network: Amdahl for the parareal structure (pre + coarse "
                                      "sweeps + K x max fine + post on the critical path) plus the interface "
                                      "transfers over --link-gbps, from per-part costs measured on this machine "
                                      "(one thread per process) and PararealNet's balanced split.")
    add_plan_arguments(plan)
    plan.set_defaults(func=cmd_plan)
    return parser


def cmd_study(args) -> int:
    from ..tools.study import run_study
    from ..training.loop import fit
    cfg = config_from_args(args, skip=("subnets", "iterations", "name"))
    return run_study(cfg, subnets=args.subnets, iterations=args.iterations, seeds=args.seeds, name=args.name,
                     out=args.out, init_ray=connect, fit=lambda c: _fit_with_progress(c, fit))


def cmd_compare(args) -> int:
    import os

    from ..tools.compare import cmd_compare as run_compare
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    return run_compare(uri, args.experiment, args.parent, args.format)


def cmd_recipes(args) -> int:
    from importlib import resources

    from ..training import recipes
    if args.show:
        recipes.get(args.show)                                  # an unknown name: one line, exit 2
        print(resources.files("raypar.training").joinpath("recipes", f"{args.show}.toml").read_text(), end="")
        return 0
    for r in recipes.available():
        v = r.values
        print(f"{r.tag:24s} {v['model']} x{v.get('width_mult', 1.0)} on {v['dataset']}, {v['epochs']} epochs, "
              f"N = {v.get('subnets', 2)}\n    {r.description}")
    print("\nrun one with `raypar train --recipe NAME` (options given override it); `raypar recipes --show NAME` "
          "prints its TOML")
    return 0


def cmd_bench(args) -> int:
    from ..tools.bench import cmd_bench as run_bench
    return run_bench(args)


def cmd_tune(args) -> int:
    from ..tools.tune import cmd_tune as run
    return run(args)


def cmd_plan(args) -> int:
    from ..tools.plan import cmd_plan as run_plan
    return run_plan(args)


def config_from_args(args, skip: tuple = ()):
    """The validated :class:`TrainConfig` of parsed ``train`` (or ``study``) arguments: the defaults, replaced by
    ``--recipe``, then by ``--config``, then by every option given on the command line (``skip``: options that are
    not TrainConfig values here, like a study's lists of N and K)."""
    import dataclasses
    import os

    from ..training import recipes
    from ..network.balance import parse_balance
    from ..training.config import TrainConfig, load_file
    values: dict = {}
    if args.recipe:
        recipe = recipes.get(args.recipe)
        values.update(recipe.values, recipe=recipe.tag)
    if args.config:
        from_file, meta = load_file(args.config)
        values.update(from_file)
        if meta.get("name"):
            values["recipe"] = f"{meta['name']}@{meta.get('version', 0)}"
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - set(skip) - {"recipe"}   # --recipe: a name
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if "balance" in given:
        given["balance"] = parse_balance(given["balance"], tune=True)
    values.update(given)
    if "tracking_uri" not in values:
        values["tracking_uri"] = os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    return TrainConfig(**values).validate()


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
            if ev["kind"] == "note":
                console.print(ev["text"])
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

    from ..training import data
    from ..training import tracking
    from ..training.loop import fit

    cfg = config_from_args(args)
    data.load(cfg.dataset, cfg.data_dir, cfg.download)          # a missing data set fails here, before any run
    tracking.check_reachable(cfg.tracking_uri)
    connect(cfg)
    try:
        result = _fit_with_progress(cfg, fit)
    except UserError:
        raise
    except FloatingPointError as e:                             # a non-finite loss: what to change, in one line
        print(redact(f"raypar: training stopped: {e}"), file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - an internal error: full traceback, then a clear last line
        import traceback

        from ..training.loop import root_cause
        cause = root_cause(e)
        if isinstance(cause, UserError):                        # a mistake only a worker could see: one line
            raise UserError(str(cause)) from None
        print(redact(traceback.format_exc()), end="", file=sys.stderr)
        print(redact(f"raypar: training failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"),
              file=sys.stderr)
        return 1
    m = result.metrics
    cfg = cfg.resolved()
    ui = (f"mlflow ui --backend-store-uri {cfg.tracking_uri}" if cfg.tracking_uri.startswith("sqlite")
          else f"open {redact(cfg.tracking_uri)}")
    lines = [f"model {cfg.model} x{cfg.width_mult} on {cfg.dataset}, N = {cfg.subnets}, K = {cfg.iterations}",
             (f"final val accuracy [bold]{m['val_acc']:.2%}[/bold] after epoch {m['epoch']}/{cfg.epochs}, "
              f"{m['samples_per_s']:.0f} samples/s, {m['epoch_time_s']:.1f} s/epoch" if "val_acc" in m
              else f"nothing to train: the checkpoint of {cfg.name!r} is already at epoch {cfg.epochs}"),
             f"MLflow run {result.run_id} (experiment {cfg.experiment!r}){' — resumed' if result.resumed else ''}",
             f"checkpoints: {redact(cfg.storage_path)}/{cfg.name}", f"open the UI: {ui}"]
    Console().print(Panel("\n".join(lines), title="raypar train", expand=False))
    print(f"raypar: training finished: run {result.run_id}")
    return 0


def cmd_info(args) -> int:
    from rich.console import Console

    from ..network.balance import parse_balance
    from ..network.coarse import CoarseSpec
    from ..network.models import build
    from ..network.reference import PararealNet
    from ..tools.report import split_table

    if args.batch < 1 or args.image_size < 1:
        raise UserError("--batch and --image-size must be >= 1")
    console = Console()
    staged = build(args.model, num_classes=args.num_classes, in_channels=args.in_channels,
                   width_mult=args.width_mult, image_size=args.image_size, norm=args.norm)
    with console.status(f"profiling {args.model} ({len(staged.blocks)} blocks)..."):
        coarse = CoarseSpec(args.coarse_depth, args.coarse_width, args.coarse_kernel, norm=args.coarse_norm,
                            downsample=args.coarse_downsample)
        net = PararealNet(staged, args.subnets, args.iterations, coarse,
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
        msg = redact(str(e).replace("\n", " "))
        print(msg if msg.startswith("raypar") else f"raypar: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raypar: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
