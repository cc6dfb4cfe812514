"""The run configuration: one dataclass, validated in one place (:meth:`TrainConfig.validate`), and the TOML files
that hold one (``raypar train --config FILE``, the recipes of :mod:`raypar.training.recipes`)::

    [recipe]                      # optional: what this configuration is
    name = "vgg16-cifar10"
    version = 1
    description = "..."

    [train]                       # TrainConfig fields (the keys may also stand at the top level)
    model = "vgg16"
    lr = 0.05
"""
from __future__ import annotations

import dataclasses
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field

from ..network.balance import MEASURES, TUNE, check_split
from ..network.coarse import CoarseSpec
from ..errors import UserError
from ..engine.optim import SCHEDULES, OptimConfig

DATASETS = ("digits", "cifar10", "cifar100", "svhn", "mnist")


@dataclass
class TrainConfig:
    # model and split
    model: str = "vgg11"
    width_mult: float = 0.25
    subnets: int = 2
    iterations: int = 1
    balance: str | list = "time"
    coarse_depth: int = 1
    coarse_width: float = 1.0
    coarse_kernel: int = 3                   # kernel size of the coarse convolutions (1: a 1x1 conv, cheaper)
    coarse_norm: str = "group"               # the coarse networks' normalisation (see raypar/coarse.py)
    coarse_downsample: str = "pool"          # "pool" then convolve, or a strided convolution (see raypar/coarse.py)
    norm: str = "batch"                      # "batch" (BatchNorm, per replica) or "group" (GroupNorm: batch-free)
    # data
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    # optimisation
    epochs: int = 6
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "cosine"              # "cosine" or "step" (x lr_gamma at each of lr_milestones)
    lr_milestones: list = field(default_factory=lambda: [0.5, 0.75])   # fractions of the epochs
    lr_gamma: float = 0.1
    seed: int = 0
    on_nonfinite: str = "stop"               # a NaN/inf loss: "stop" the run, or "skip" the batch (no update)
    # resources
    gpus_per_subnet: float | None = None     # None: 1 when the cluster has GPUs, else 0
    cpus_per_subnet: float = 1.0
    replicas: int = 1                        # R data-parallel replicas of the whole parareal network (R x N actors)
    placement: str = "PACK"
    driver_segment: bool = False             # run F_1 in the driver: N processes (and GPUs) instead of N + 1
    coarse_in_actors: bool = False           # K = 1: each fine actor runs pre and the coarse sweep up to its interval
    defer_weights: bool = True               # actors answer dL/du first, their weight gradients in their step
    transport: str = "auto"                  # interface tensors: auto, object-store, p2p, cuda-ipc (raypar.engine.transport)
    channels_last: bool = False              # weights and activations in the channels-last layout (faster convs)
    amp: str = "off"                         # mixed precision: off, bf16 or fp16 (raypar.engine.precision)
    address: str | None = None               # None: in-process local Ray (or the cluster of a Ray job)
    resource_timeout_s: float = 300.0        # how long to wait for the cluster (or its autoscaler) to fit the run
    # run bookkeeping
    storage_path: str = "raypar_runs"
    name: str | None = None                  # Ray Train run name; None: derived from the settings
    max_failures: int = 0
    num_to_keep: int = 2
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "raypar"
    run_name: str | None = None
    recipe: str | None = None                # "name@version" of the recipe or config file this run came from
    extra: dict = field(default_factory=dict)

    def validate(self) -> "TrainConfig":
        """Check every field; raise :class:`UserError` naming the first bad one. Returns self."""
        from ..network.models import check_name
        check_name(self.model)
        if self.width_mult <= 0:
            raise UserError(f"--width-mult must be > 0, got {self.width_mult}")
        if self.subnets < 1:
            raise UserError(f"--subnets must be >= 1, got {self.subnets}")
        if not 1 <= self.iterations <= self.subnets:
            raise UserError(f"--iterations must be between 1 and --subnets ({self.subnets}), got {self.iterations}")
        if isinstance(self.balance, str) and self.balance not in (*MEASURES, TUNE):
            raise UserError(f"--balance must be one of {', '.join(MEASURES)}, {TUNE} or block counts like 5,7")
        check_split(self.model, self.subnets, self.balance)
        self.coarse                                          # checks depth, width, norm and downsample
        if self.norm not in ("batch", "group"):
            raise UserError(f"--norm must be batch or group, got {self.norm!r}")
        if self.coarse_in_actors and self.iterations != 1:
            raise UserError(f"--coarse-in-actors needs --iterations 1, got {self.iterations}")
        if self.replicas < 1:
            raise UserError(f"--replicas must be >= 1, got {self.replicas}")
        ds = self.dataset
        if ds not in DATASETS and not ds.startswith("imagefolder:"):
            raise UserError(f"unknown dataset {ds!r}; available: {', '.join(DATASETS)}, imagefolder:PATH")
        for name, lo in (("epochs", 1), ("batch_size", 1), ("num_to_keep", 1)):
            if getattr(self, name) < lo:
                raise UserError(f"--{name.replace('_', '-')} must be >= {lo}, got {getattr(self, name)}")
        if self.lr <= 0:
            raise UserError(f"--lr must be > 0, got {self.lr}")
        if self.lr_schedule not in SCHEDULES:
            raise UserError(f"--lr-schedule must be one of {', '.join(SCHEDULES)}, got {self.lr_schedule!r}")
        if not isinstance(self.lr_milestones, list) or not all(
                isinstance(m, (int, float)) and 0 < m < 1 for m in self.lr_milestones):
            raise UserError(f"lr_milestones must be fractions of the epochs between 0 and 1, "
                            f"got {self.lr_milestones}")
        if not 0 < self.lr_gamma <= 1:
            raise UserError(f"--lr-gamma must be in (0, 1], got {self.lr_gamma}")
        if self.on_nonfinite not in ("stop", "skip"):
            raise UserError(f"--on-nonfinite must be stop or skip, got {self.on_nonfinite!r}")
        if self.max_failures < -1:
            raise UserError("--max-failures must be >= 0 (or -1 for unlimited)")
        if self.gpus_per_subnet is not None and self.gpus_per_subnet < 0:
            raise UserError("--gpus-per-subnet must be >= 0")
        if self.cpus_per_subnet < 0:
            raise UserError("--cpus-per-subnet must be >= 0")
        if self.resource_timeout_s <= 0:
            raise UserError("--resource-timeout must be > 0 seconds")
        if self.placement not in ("PACK", "SPREAD"):
            raise UserError(f"--placement must be PACK or SPREAD, got {self.placement!r}")
        from ..engine.precision import check_name as check_amp
        from ..engine.transport import check_name
        check_name(self.transport)
        check_amp(self.amp)
        if self.transport == "cuda-ipc" and self.gpus_per_subnet == 0:
            raise UserError("--transport cuda-ipc needs GPUs: give --gpus-per-subnet a fraction of a GPU")
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9._-]+", self.name):
            raise UserError(f"--name may use letters, digits, '.', '_' and '-' only, got {self.name!r}")
        return self

    @property
    def coarse(self) -> CoarseSpec:
        return CoarseSpec(self.coarse_depth, self.coarse_width, self.coarse_kernel, norm=self.coarse_norm,
                          downsample=self.coarse_downsample)

    @property
    def optim(self) -> OptimConfig:
        return OptimConfig(self.lr, self.momentum, self.weight_decay, self.epochs, self.lr_schedule,
                           list(self.lr_milestones), self.lr_gamma)

    def resolved(self) -> "TrainConfig":
        """A copy with paths made absolute and a run name chosen, as the workers will see it."""
        c = dataclasses.replace(self)
        if "://" not in c.storage_path:
            c.storage_path = os.path.abspath(c.storage_path)
        if c.tracking_uri.startswith("sqlite:///") and not c.tracking_uri.startswith("sqlite:////"):
            c.tracking_uri = "sqlite:///" + os.path.abspath(c.tracking_uri[len("sqlite:///"):])
        if c.data_dir:
            c.data_dir = os.path.abspath(c.data_dir)
        if c.name is None:
            c.name = f"{c.model}-{c.dataset.split(':')[0]}-n{c.subnets}-k{c.iterations}-s{c.seed}"
        return c

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------- configuration files
_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig) if f.name != "extra"}


def _accepts(tp, value) -> bool:
    """Whether a TOML value fits a TrainConfig field's annotation (``int | None``, ``str | list``, ``float``...)."""
    if isinstance(tp, str):
        tp = eval(tp, vars(sys.modules[__name__]))          # the annotations are strings (postponed evaluation)
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return any(_accepts(t, value) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, typing.get_origin(tp) or tp)


def values_from_toml(doc: dict, source: str) -> tuple[dict, dict]:
    """``(TrainConfig values, [recipe] table)`` of a parsed TOML document; unknown keys or wrong types raise a
    :class:`UserError` naming ``source`` and the key."""
    meta = doc.get("recipe", {})
    train = doc.get("train", {})
    if not isinstance(meta, dict) or not isinstance(train, dict):
        raise UserError(f"{source}: [recipe] and [train] must be tables")
    values = {k: v for k, v in doc.items() if k not in ("recipe", "train")}
    values.update(train)
    out = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        f = _FIELDS.get(name)
        if f is None:
            raise UserError(f"{source}: unknown setting {key!r}; known: {', '.join(sorted(_FIELDS))}")
        if not _accepts(f.type, value):
            raise UserError(f"{source}: {key} = {value!r} has the wrong type (expected {f.type})")
        out[name] = float(value) if f.type.startswith("float") and isinstance(value, int) else value
    return out, meta


def load_file(path: str) -> tuple[dict, dict]:
    """``(values, recipe meta)`` of a TOML configuration file; any problem is a one-line :class:`UserError`."""
    import tomllib
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read config file {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {path} is not valid TOML: {e}") from None
    return values_from_toml(doc, f"config file {path}")
