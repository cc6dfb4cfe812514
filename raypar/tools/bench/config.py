"""The benchmark's configuration: :class:`BenchConfig` (what ``raypar bench``'s options set) and its validation, and
the names of the contenders it can run."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...engine.specs import OptimConfig
from ...errors import UserError
from ...network.specs import check_split
from ...network.models import build

# the raypar contenders, named by raypar train's flags (plain raypar: train's defaults): (driver_segment,
# coarse_in_actors); None: where the network's profile says, as raypar train places the coarse sweep when
# --coarse-in-actors is unset
ENGINES = {"raypar": (True, None), "raypar-no-driver-segment": (False, None),
           "raypar-coarse-in-actors": (True, True), "raypar-no-driver-segment-coarse-in-actors": (False, True)}
CONTENDERS = ("original", "parareal-1proc", *ENGINES, "ddp", "pipe")
# the line-up without --contenders: not the coarse-in-actors ones, slower on CPUs (measured:
# benchmarks/throughput/README.md)
DEFAULT_CONTENDERS = ("original", "parareal-1proc", "raypar", "raypar-no-driver-segment", "ddp", "pipe")
CPU_ONLY = ("ddp", "pipe")        # the contenders that run on CPUs only, for now
# the contenders' former names: --contenders with one of them is an error that names the new one
RENAMED = {"raypar-f1": "raypar", "raypar-ca": "raypar-no-driver-segment-coarse-in-actors",
           "raypar-f1-ca": "raypar-coarse-in-actors"}


@dataclass
class BenchConfig:
    model: str = "vgg16"                     # the same default model as raypar train
    width_mult: float = 0.25
    image_size: int = 32
    in_channels: int = 3
    num_classes: int = 10
    batch: int = 64
    warmup: int = 3
    steps: int = 10
    subnets: list[int] = field(default_factory=lambda: [1, 2])
    microbatches: int = 4
    balance: object = "time"                 # the split of raypar and pipe: "time", "flops", "params" or counts
    contenders: list[str] = field(default_factory=lambda: list(DEFAULT_CONTENDERS))
    seed: int = 0
    lr: float = 0.05
    device: str = "cpu"                      # "cuda": every process on the GPU(s) (fractions of one GPU if one)
    transports: list[str] = field(default_factory=lambda: ["auto"])   # raypar rows, one set per transport (as train's)
    coarse_kernel: int = 3                   # the coarse convolutions' kernel (raypar.network.coarse.CoarseSpec)
    channels_last: bool = False              # every contender in the channels-last layout
    amp: str = "off"                         # every contender under autocast: off, bf16 or fp16 (raypar.engine.precision)
    coarse_downsample: str = "patch"         # how the coarse networks shrink their input (raypar.network.coarse.CoarseSpec)
    rounds: int = 1                          # the whole line-up this many times (order reversed every other round)
    interleave: bool = True                  # the contenders take turns step by step (False: each alone)
    defer_weights: bool = True               # raypar's actors compute weight gradients in their step (--defer-weights)
    pairs: bool = True                       # taking turns: each contender with the original only (False: all at once)

    def validate(self) -> "BenchConfig":
        build(self.model, self.num_classes, self.in_channels, self.width_mult, self.image_size)  # names, sizes
        if self.batch < 1 or self.warmup < 0 or self.steps < 1 or self.microbatches < 1 or self.rounds < 1:
            raise UserError("--batch, --steps, --microbatches and --rounds must be >= 1 and --warmup >= 0")
        if not self.subnets or min(self.subnets) < 1:
            raise UserError(f"--subnets must list numbers >= 1, got {self.subnets}")
        for n in self.subnets:                   # N = 1 has one split whatever the balance (see _net)
            check_split(self.model, n, self.balance if n > 1 else "flops")
        renamed = [c for c in self.contenders if c in RENAMED]
        if renamed:
            raise UserError(f"contender {renamed[0]} is now called {RENAMED[renamed[0]]} (raypar alone: train's "
                            f"defaults, F_1 in the driver; the rest named by train's flags)")
        unknown = sorted(set(self.contenders) - set(CONTENDERS))
        if unknown or not self.contenders:
            raise UserError(f"unknown contenders {unknown}; choose from {', '.join(CONTENDERS)}")
        from ...engine.specs import TRANSPORTS
        bad = sorted(set(self.transports) - set(TRANSPORTS)) if self.transports else ["(none)"]
        if bad:
            raise UserError(f"unknown transports {bad}; choose from {', '.join(TRANSPORTS)}")
        from ...engine.specs import check_amp
        check_amp(self.amp)
        if self.device not in ("cpu", "cuda"):
            raise UserError(f"--device must be cpu or cuda, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda: this machine has no CUDA GPU (torch.cuda.is_available() is False)")
        if self.device == "cuda" and set(CPU_ONLY) & set(self.contenders):
            raise UserError("--device cuda: the ddp and pipe contenders run on CPUs only for now; leave them out of "
                            "--contenders (e.g. --contenders original,parareal-1proc,raypar,raypar-no-driver-segment)")
        return self

    @property
    def turns(self) -> bool:
        """Whether the contenders take turns: asked for, and on CPUs (on GPUs every process would hold its share of
        a GPU all along)."""
        return self.interleave and self.device == "cpu"

    @property
    def gpu_share(self) -> float:
        """The GPUs each benchmark process asks Ray for: a whole GPU each where there are enough, else a slice of
        one (then N actors share a GPU: per-actor times and transfer costs, not a speedup)."""
        if self.device != "cuda":
            return 0.0
        return 1.0 if torch.cuda.device_count() >= max(self.subnets) + 1 else 0.1

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def optim(self) -> OptimConfig:
        return OptimConfig(lr=self.lr)

    @property
    def shape(self) -> tuple:
        return (self.in_channels, self.image_size, self.image_size)
