"""The run configuration: one dataclass, validated in one place (:meth:`TrainConfig.validate`)."""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field

from .balance import MEASURES
from .coarse import CoarseSpec
from .errors import UserError

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
    seed: int = 0
    # resources
    gpus_per_subnet: float | None = None     # None: 1 when the cluster has GPUs, else 0
    cpus_per_subnet: float = 1.0
    placement: str = "PACK"
    driver_segment: bool = False             # run F_1 in the driver: N processes (and GPUs) instead of N + 1
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
    extra: dict = field(default_factory=dict)

    def validate(self) -> "TrainConfig":
        """Check every field; raise :class:`UserError` naming the first bad one. Returns self."""
        if self.width_mult <= 0:
            raise UserError(f"--width-mult must be > 0, got {self.width_mult}")
        if self.subnets < 1:
            raise UserError(f"--subnets must be >= 1, got {self.subnets}")
        if not 1 <= self.iterations <= self.subnets:
            raise UserError(f"--iterations must be between 1 and --subnets ({self.subnets}), got {self.iterations}")
        if isinstance(self.balance, str) and self.balance not in MEASURES:
            raise UserError(f"--balance must be one of {', '.join(MEASURES)} or block counts like 5,7")
        CoarseSpec(self.coarse_depth, self.coarse_width)
        ds = self.dataset
        if ds not in DATASETS and not ds.startswith("imagefolder:"):
            raise UserError(f"unknown dataset {ds!r}; available: {', '.join(DATASETS)}, imagefolder:PATH")
        for name, lo in (("epochs", 1), ("batch_size", 1), ("num_to_keep", 1)):
            if getattr(self, name) < lo:
                raise UserError(f"--{name.replace('_', '-')} must be >= {lo}, got {getattr(self, name)}")
        if self.lr <= 0:
            raise UserError(f"--lr must be > 0, got {self.lr}")
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
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9._-]+", self.name):
            raise UserError(f"--name may use letters, digits, '.', '_' and '-' only, got {self.name!r}")
        return self

    @property
    def coarse(self) -> CoarseSpec:
        return CoarseSpec(self.coarse_depth, self.coarse_width)

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
