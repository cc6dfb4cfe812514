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
    return parser


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
