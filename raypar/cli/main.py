"""The ``raypar`` command: ``info`` (the split of a model), ``train`` (parareal training on Ray), ``study`` and
``compare`` (runs side by side), ``recipes``, ``bench`` (every contender's throughput), ``plan`` (predicted speedup)
and ``tune`` (the split measured on the engine).

A user mistake prints one line ``raypar: error: ...`` and exits with code 2; internal errors keep their traceback.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import UserError
from ..training.tracking import redact


class _Parser(argparse.ArgumentParser):
    def error(self, message):          # one line, exit code 2 (argparse prints usage too by default)
        raise UserError(f"{self.prog}: {message}")


def _add_train_args(p: argparse.ArgumentParser, study: bool = False) -> None:
    """Every setting of a training run (``train``; ``study`` takes lists of N, K and seeds, and names the study)."""
    g = p.add_argument_group("recipe")
    g.add_argument("--recipe", default=None,
                   help="start from a named recipe (`raypar recipes` lists them); options given here override it")
    g.add_argument("--config", default=None, metavar="FILE",
                   help="start from a TOML file of settings (the recipe format: keys are the option names with "
                        "'_' for '-', e.g. lr_schedule = \"step\"); applied after --recipe, before the options here")
    from .options import add_settings
    lists = None
    skip: tuple = ("recipe",)
    if study:
        lists = {"subnets": ("--subnets", "the numbers N of fine sub-networks to train; N = 1 is the original network, run in "
                             "one process (default: 1,2,4)", [1, 2, 4]),
                 "iterations": ("--iterations", "the parareal iterations K to train for each N (only K <= N is run) (default: 1)",
                                [1]),
                 "seed": ("--seeds", "seeds, one run each per configuration (default: 0)", [0])}
        skip += ("name", "folds", "fold")                # the study runs every fold: --folds is the study's own
    add_settings(p, ["model", "data", "optim", "engine", "run"], lists=lists, skip=skip)
    if study:
        g = p.add_argument_group("study")
        g.add_argument("--name", default=None,
                       help="the study's name: its MLflow parent run and the prefix of every run's name; the same "
                            "command again resumes the study (default: <recipe or model>-<dataset>)")
        g.add_argument("--out", default=None, help="folder for the report and plots (default: studies/<name>)")
        g.add_argument("--folds", type=int, default=None, metavar="F",
                       help="cross-validation: deal the training pool (digits: all samples; other data sets: the "
                            "official training split, the test split untouched) into F >= 2 stratified folds from "
                            "each seed, and train every N, K and seed once per fold, validated on that fold; 0: one "
                            "run per seed on the data set's own validation split (default: the recipe's, else 0)")


def _info_args(info: argparse.ArgumentParser) -> None:
    from ..training.config import TrainConfig
    from .options import add_settings
    add_settings(info, ["model"], defaults=TrainConfig(), skip=("balance",))
    add_settings(info, ["engine"], defaults=TrainConfig(), only=("driver_segment", "defer_weights", "cpus_per_subnet",
                                                                   "coarse_in_actors"))
    info.add_argument("--balance", default="time",
                      help="split by measured 'time', 'flops', 'params', or block counts like 5,7 (default: time)")
    info.add_argument("--num-classes", type=int, default=10, help="classifier outputs (default: %(default)s)")
    info.add_argument("--in-channels", type=int, default=3, help="input channels (default: %(default)s)")
    info.add_argument("--image-size", type=int, default=32, help="input height = width (default: %(default)s)")
    info.add_argument("--batch", type=int, default=8, help="batch size of the profiling run (default: %(default)s)")


def _train_only_args(train: argparse.ArgumentParser) -> None:
    _add_train_args(train)
    train.add_argument("--resume", action="store_true",
                       help="resume the run named by --name, or else the newest unfinished run with these settings; "
                            "with more --epochs, train a finished run further")


def _compare_args(compare: argparse.ArgumentParser) -> None:
    compare.add_argument("--experiment", default=None, help="the MLflow experiment to read (default: raypar)")
    compare.add_argument("--parent", default=None, metavar="RUN_ID",
                         help="only the runs of one study (its parent run id)")
    compare.add_argument("--tracking-uri", default=None,
                         help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    compare.add_argument("--format", default="table", choices=["table", "markdown", "csv", "json"],
                         help="output format (default: %(default)s)")


def _recipes_args(recipes: argparse.ArgumentParser) -> None:
    recipes.add_argument("--show", default=None, metavar="NAME", help="print this recipe's TOML file")


def _bench_args(bench: argparse.ArgumentParser) -> None:
    from ..tools.bench import add_arguments
    add_arguments(bench)


def _tune_args(tune: argparse.ArgumentParser) -> None:
    from .tune import add_arguments
    add_arguments(tune)


def _plan_args(plan: argparse.ArgumentParser) -> None:
    from ..tools.plan import add_arguments
    add_arguments(plan)


# name -> (one-line help, description, what adds its options, what runs it)
COMMANDS = {
    "info": ("show how a model splits into sub-networks",
             "Print the split of a model into N sub-networks: blocks, parameters, cost, interface tensors, "
             "coarse/fine cost, the ideal speedup, and the speedup `raypar train` predicts for that split on this "
             "machine's cores, with the coarse sweep where train would run it. The split is the one `raypar train` "
             "makes with the same options (F_1 in the driver unless --no-driver-segment); train profiles at its batch "
             "size, --batch here.", _info_args, "cmd_info"),
    "train": ("train a parareal network on Ray (defaults: a small VGG on digits, N = 2)",
              "Train a parareal network: fine sub-networks in Ray actors, pre/coarse/post in the Ray Train driver, "
              "every run recorded in MLflow. With no arguments it trains a small VGG-16 on the offline digits data "
              "set with 2 sub-networks on an in-process Ray. Settings come from the defaults shown, replaced by "
              "--recipe, then by --config, then by the options given.", _train_only_args, "cmd_train"),
    "study": ("train the original network and its parareal versions side by side",
              "Train, with one recipe and seed list, the original network (N = 1, in one process) and its parareal "
              "versions for every N and K asked for, as nested MLflow runs under one parent run; print a table as "
              "it goes; write a Markdown report and PNG plots into --out and onto the parent run. The same command "
              "again resumes an interrupted study (finished runs are not retrained).",
              lambda p: _add_train_args(p, study=True), "cmd_study"),
    "compare": ("compare the runs of an MLflow experiment or study, one row per configuration",
                "Read finished runs from MLflow and print one row per configuration (model, data set, N, K, "
                "replicas, recipe): seeds, best and final val accuracy (mean ± std over seeds), time per epoch, "
                "samples/s, speedup and accuracy delta vs the N = 1 baseline of the same model and recipe.",
                _compare_args, "cmd_compare"),
    "recipes": ("list the built-in recipes",
                "List the recipes that ship with raypar (name@version and what they train); `--show NAME` prints "
                "one as a TOML file to start your own from.", _recipes_args, "cmd_recipes"),
    "bench": ("training throughput and memory: original vs parareal vs raypar vs DDP vs pipelining",
              "Train the same model, batch and threads per process as every contender (original, parareal-1proc, "
              "raypar-N on Ray, DDP, torch pipelining), taking turns step by step, and compare samples/s and peak "
              "memory per process; writes bench.json and bench.png into --out and logs an MLflow run with "
              "--tracking-uri.", _bench_args, "cmd_bench"),
    "tune": ("choose the split by measuring candidate splits on the engine",
             "Run the engine with the profile's split and its neighbours (one block boundary moved by up to "
             "--radius blocks), on the same synthetic batches, taking turns step by step on CPUs (one after the "
             "other on GPUs), and print each one's step time; the fastest is what `train --balance tune` would use "
             "with the same settings.", _tune_args, "cmd_tune"),
    "plan": ("predict step time and speedup for N = 1..G sub-networks, before running",
             "Predict, for N = 1..G sub-networks, the training step time and the speedup over the sequential "
             "network: Amdahl for the parareal structure (pre + coarse sweeps + K x max fine + post on the critical "
             "path) plus the interface transfers over --link-gbps, from per-part costs measured on this machine "
             "(one thread per process) and PararealNet's balanced split.", _plan_args, "cmd_plan"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``raypar`` parser. ``only``: the command about to run; only its options are made (each command's options
    load that command's modules: ``raypar train`` loads no tool)."""
    parser = _Parser(prog="raypar", description="Parareal neural networks trained on Ray, tracked in MLflow.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (help_, description, add_args, func) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=description)
        if only in (None, name):
            add_args(p)
        p.set_defaults(func=globals()[func])
    return parser


def cmd_study(args) -> int:
    from rich.console import Console

    from ..tools.study import run_study
    from .train import fit_with_progress, log_file, quiet_console
    from ..training.launch import fit
    from ..training.session import connect
    from .options import config_and_splits
    cfg, splits = config_and_splits(args, skip=("subnets", "iterations", "seed", "name"))
    return run_study(cfg, subnets=args.subnets, iterations=args.iterations, seeds=args.seed, name=args.name,
                     out=args.out, init_ray=connect, fit=lambda c: fit_with_progress(c, fit, Console()), splits=splits,
                     quiet=lambda name: quiet_console(log_file(cfg.run.storage_path, name)))


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
              f"N = {v.get('subnets', 2)}" + (f" (split pinned for N = {', '.join(map(str, r.splits))})" if r.splits else "")
              + f"\n    {r.description}")
    print("\nrun one with `raypar train --recipe NAME` (options given override it); `raypar recipes --show NAME` "
          "prints its TOML")
    return 0


def cmd_bench(args) -> int:
    from ..tools.bench import cmd_bench as run_bench
    return run_bench(args)


def cmd_tune(args) -> int:
    from .tune import cmd_tune as run
    return run(args)


def cmd_plan(args) -> int:
    from ..tools.plan import cmd_plan as run_plan
    return run_plan(args)


def cmd_train(args) -> int:
    from .train import cmd_train as run
    return run(args)


def cmd_info(args) -> int:
    from rich.console import Console

    from ..network.specs import CoarseSpec, parse_balance
    from ..network.models import build
    from ..network.reference import PararealNet
    from ..tools.report import split_table

    if args.batch < 1 or args.image_size < 1:
        raise UserError("--batch and --image-size must be >= 1")
    if args.coarse_in_actors and args.iterations != 1:
        raise UserError(f"--coarse-in-actors needs --iterations 1, got {args.iterations}")
    console = Console()
    staged = build(args.model, num_classes=args.num_classes, in_channels=args.in_channels,
                   width_mult=args.width_mult, image_size=args.image_size, norm=args.norm)
    from ..engine.cost import num_threads
    # a training process computes with its CPUs' threads (Ray gives it that many): profiled the same way
    with console.status(f"profiling {args.model} ({len(staged.blocks)} blocks)..."), \
            num_threads(max(1, int(args.cpus_per_subnet))):
        coarse = CoarseSpec(args.coarse_depth, args.coarse_width, args.coarse_kernel, norm=args.coarse_norm,
                            downsample=args.coarse_downsample)
        net = PararealNet(staged, args.subnets, args.iterations, coarse, parse_balance(args.balance),
                          profile_batch=args.batch, driver_segment=args.driver_segment,
                          defer_weights=args.defer_weights)
    console.print(split_table(net, args.batch))
    from ..engine.auto import choose_coarse_in_actors, run_prediction
    # where `raypar train` would run the coarse sweep for this split, on this machine
    in_actors = net.num_subnets > 1 and (choose_coarse_in_actors(net, args.driver_segment, 0.0)
                                         if args.coarse_in_actors is None else args.coarse_in_actors)
    if in_actors:
        from ..engine.cost import parallel_limit
        console.print(f"ideal speedup over the sequential network: [bold]{parallel_limit(net, 10 ** 9, True):.2f}x"
                      f"[/bold] (sequential cost / (the longest of pre + C_1..C_j + F_j + the correction sweep + "
                      f"post), the coarse sweep in the actors)")
    else:
        console.print(f"ideal speedup over the sequential network: [bold]{net.ideal_speedup():.2f}x[/bold] "
                      f"(sequential cost / (pre + coarse + {'K x ' if net.iterations > 1 else ''}max fine + post))")
    if net.num_subnets > 1:               # what `raypar train` says at its start for this split, on this machine
        for line in run_prediction(net, args.driver_segment, 0.0, in_actors)[1]:
            console.print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"] and not {"-h", "--help"} & set(argv):
        print("raypar train: checking the settings", flush=True)      # at once: torch and Ray take seconds to load
    parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else None)
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
