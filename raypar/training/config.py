"""A training run's settings: one dataclass per concern, each field documented and validated where it is made.

:class:`TrainConfig` groups :class:`ModelConfig` (the network and its split), :class:`DataConfig`,
:class:`OptimConfig` (the recipe), :class:`EngineConfig` (where and how the parts run) and :class:`RunConfig`
(names, storage, tracking). Every field's ``metadata["help"]`` is its documentation: the command line
(:mod:`raypar.cli.options`) makes its options from it, so ``train``, ``study``, ``tune`` and ``info`` cannot drift.

A setting has one flat *key* everywhere — the option ``--key-name``, the TOML key ``key_name``, the MLflow param —
the field's name unless its metadata says otherwise (``ModelConfig.name`` is ``model``). TOML files (``raypar train
--config FILE``, the recipes of :mod:`raypar.training.recipes`) hold flat keys::

    [recipe]                      # optional: what this configuration is
    name = "vgg16-cifar10"
    version = 1
    description = "..."

    [train]                       # settings by key (the keys may also stand at the top level)
    model = "vgg16"
    lr = 0.05

    [splits]                      # optional: block counts per N, for this file's model; other N split by `balance`
    2 = [5, 7]
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field

from ..engine import specs as engine_specs
from ..engine.auto import AUTO
from ..engine.specs import AMP_MODES, TRANSPORTS
from ..errors import UserError
from ..network.specs import DOWNSAMPLE, MEASURES, TUNE, CoarseSpec, check_split

DATASETS = ("digits", "cifar10", "cifar100", "svhn", "mnist")


def setting(default=dataclasses.MISSING, help: str = "", *, key: str | None = None, short: str | None = None,
            choices: tuple | None = None, factory=None):
    """A documented field: ``help`` is its one-line documentation (and its ``--help`` text); ``key`` its flat name
    where it differs from the field's; ``short`` a one-letter option; ``choices`` the values it takes."""
    meta = {"help": help, "key": key, "short": short, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _at_least(name: str, value, lo) -> None:
    if not (isinstance(value, (int, float)) and value >= lo):
        raise UserError(f"--{name.replace('_', '-')} must be >= {lo}, got {value}")


def _positive(name: str, value) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise UserError(f"--{name.replace('_', '-')} must be a number > 0, got {value}")


@dataclass
class ModelConfig:
    """The network and how it is torn into sub-networks."""
    name: str = setting("vgg16", "vgg11/13/16/19 or resnet<9n+2> (resnet20, resnet56, resnet164, resnet1001)",
                        key="model")
    width_mult: float = setting(0.25, "scale every channel count")
    subnets: int | str = setting(2, "number N of fine sub-networks; 1 is the original network in one process; "
                                    "'auto' (raypar train): the N with the best predicted speedup on this machine's "
                                    "cores or GPUs, 1 when none reaches 1.1x", short="n")
    iterations: int = setting(1, "parareal iterations K, 1..N; K = N computes exactly the original network",
                              short="k")
    balance: str | list = setting("time", "split by measured 'time', 'flops', 'params', block counts like 5,7, or "
                                          "'tune': candidate splits measured on the engine first, the fastest kept")
    coarse_depth: int = setting(1, "conv/GroupNorm/ReLU layers per coarse network")
    coarse_width: float = setting(1.0, "hidden channels of a coarse network relative to its output")
    coarse_kernel: int = setting(3, "kernel size of the coarse convolutions (odd; 1 is cheapest)")
    coarse_norm: str = setting("group", "the coarse networks' normalisation; BatchNorm's running statistics blend "
                                        "the coarse and correction sweeps' inputs and cost accuracy",
                               choices=("group", "batch"))
    coarse_downsample: str = setting("patch", "how a coarse network shrinks its input: one convolution per "
                                              "stride x stride patch (every input pixel its own weight), average-pool "
                                              "to the output's size then convolve, or a strided convolution",
                                     choices=DOWNSAMPLE)
    norm: str = setting("batch", "normalisation of the built-in models: BatchNorm, or GroupNorm (independent of the "
                                 "batch: replicas compute exactly what one process would)", choices=("batch", "group"))

    def __post_init__(self):
        from ..network.specs import check_name
        check_name(self.name)
        _positive("width_mult", self.width_mult)
        if self.subnets == AUTO:                             # resolved to a number before a run starts
            if not (isinstance(self.iterations, int) and self.iterations >= 1):
                raise UserError(f"--iterations must be >= 1, got {self.iterations}")
            if isinstance(self.balance, list):
                raise UserError("--subnets auto picks N: give a measured --balance (time, flops, params or tune), "
                                "not block counts")
        else:
            if isinstance(self.subnets, (str, bool)):
                raise UserError(f"--subnets must be a number >= 1 or {AUTO}, got {self.subnets!r}")
            _at_least("subnets", self.subnets, 1)
            if not (isinstance(self.iterations, int) and 1 <= self.iterations <= self.subnets):
                raise UserError(f"--iterations must be between 1 and --subnets ({self.subnets}), "
                                f"got {self.iterations}")
        if isinstance(self.balance, str) and self.balance not in (*MEASURES, TUNE):
            raise UserError(f"--balance must be one of {', '.join(MEASURES)}, {TUNE} or block counts like 5,7")
        if self.subnets != AUTO:
            check_split(self.name, self.subnets, self.balance)
        self.coarse                                          # checks depth, width, kernel, norm and downsample
        if self.norm not in ("batch", "group"):
            raise UserError(f"--norm must be batch or group, got {self.norm!r}")

    @property
    def coarse(self) -> CoarseSpec:
        """The coarse networks' design."""
        return CoarseSpec(self.coarse_depth, self.coarse_width, self.coarse_kernel, norm=self.coarse_norm,
                          downsample=self.coarse_downsample)


@dataclass
class DataConfig:
    """The data set."""
    dataset: str = setting("digits", "digits (offline), cifar10, cifar100, svhn, mnist, imagefolder:PATH")
    data_dir: str | None = setting(None, "where torchvision data sets are (or are downloaded to)")
    download: bool = setting(False, "download the data set into --data-dir (needs internet)")
    folds: int = setting(0, "cross-validation: split the training pool into this many stratified folds, one of "
                            "which (--fold) validates; 0: the data set's own validation split")
    fold: int = setting(0, "with --folds: the fold that validates, 0..folds-1")

    def __post_init__(self):
        if self.dataset not in DATASETS and not self.dataset.startswith("imagefolder:"):
            raise UserError(f"unknown dataset {self.dataset!r}; available: {', '.join(DATASETS)}, imagefolder:PATH")
        if not (isinstance(self.folds, int) and (self.folds == 0 or self.folds >= 2)):
            raise UserError(f"--folds must be 0 (no cross-validation) or >= 2, got {self.folds}")
        if not (isinstance(self.fold, int) and 0 <= self.fold < max(1, self.folds)):
            raise UserError(f"--fold must be between 0 and --folds - 1 ({max(1, self.folds) - 1}), got {self.fold}")


@dataclass
class OptimConfig:
    """The training recipe: epochs, batch, SGD and its LR schedule, seed."""
    epochs: int = setting(6, "epochs to train")
    batch_size: int = setting(64, "samples per step (per replica)")
    lr: float = setting(0.05, "SGD learning rate")
    momentum: float = setting(0.9, "SGD momentum")
    weight_decay: float = setting(5e-4, "SGD weight decay")
    lr_schedule: str = setting("cosine", "per-epoch LR schedule: cosine to 0, or x --lr-gamma at each of "
                                         "lr_milestones (fractions of the epochs, in a config file)",
                               choices=engine_specs.SCHEDULES)
    lr_milestones: list = setting(help="fractions of the epochs where the step schedule multiplies the LR",
                                  factory=lambda: [0.5, 0.75])
    lr_gamma: float = setting(0.1, "the step schedule's factor")
    label_smoothing: float = setting(0.0, "label smoothing of the training loss: the cross-entropy's target puts "
                                          "this much of its weight evenly on every class (validation is unsmoothed)")
    seed: int = setting(0, "seed of the initial weights, the data order and every process's RNG")
    on_nonfinite: str = setting("stop", "a NaN/inf loss: stop the run (the last good checkpoint stays), or skip "
                                        "that batch with no update anywhere", choices=("stop", "skip"))

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            _at_least(name, getattr(self, name), 1)
        _positive("lr", self.lr)
        if not (math.isfinite(self.momentum) and 0 <= self.momentum < 1):
            raise UserError(f"--momentum must be in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UserError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not (math.isfinite(self.label_smoothing) and 0 <= self.label_smoothing < 1):
            raise UserError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.lr_schedule not in engine_specs.SCHEDULES:
            raise UserError(f"--lr-schedule must be one of {', '.join(engine_specs.SCHEDULES)}, "
                            f"got {self.lr_schedule!r}")
        if not isinstance(self.lr_milestones, list) or not all(
                isinstance(m, (int, float)) and 0 < m < 1 for m in self.lr_milestones):
            raise UserError(f"lr_milestones must be fractions of the epochs between 0 and 1, got {self.lr_milestones}")
        if not (math.isfinite(self.lr_gamma) and 0 < self.lr_gamma <= 1):
            raise UserError(f"--lr-gamma must be in (0, 1], got {self.lr_gamma}")
        if self.on_nonfinite not in ("stop", "skip"):
            raise UserError(f"--on-nonfinite must be stop or skip, got {self.on_nonfinite!r}")

    @property
    def sgd(self) -> engine_specs.OptimConfig:
        """What every part's optimizer and scheduler are made from."""
        return engine_specs.OptimConfig(self.lr, self.momentum, self.weight_decay, self.epochs, self.lr_schedule,
                                        list(self.lr_milestones), self.lr_gamma)


@dataclass
class EngineConfig:
    """Where the parts run and how they talk."""
    gpus_per_subnet: float | None = setting(None, "GPUs per fine actor, fractions allowed (default: 1 if the "
                                                  "cluster has GPUs, else 0)")
    cpus_per_subnet: float = setting(1.0, "CPUs per fine actor")
    replicas: int = setting(1, "R data-parallel replicas of the whole parareal network (R drivers x N fine actors, "
                               "gradients averaged; --batch-size is per replica)", short="r")
    placement: str = setting("PACK", "placement group strategy for the fine actors", choices=("PACK", "SPREAD"))
    driver_segment: bool = setting(True, "run the first fine sub-network in the driver, overlapped with the "
                                         "actors: N processes instead of N + 1 (--no-driver-segment: every fine "
                                         "sub-network in an actor of its own)")
    coarse_in_actors: bool | None = setting(None, "K = 1 only: each fine actor computes its own input from the "
                                                   "batch (copies of pre and the coarse networks), so no actor waits "
                                                   "for the driver's coarse sweep; the same network and numbers "
                                                   "(default: chosen at the start of a run from its time profile: in "
                                                   "the actors where K = 1, F_1 runs in the driver, the driver's path "
                                                   "is 1.2x the longest actor segment and the prediction gains 5%; "
                                                   "raypar tune measures in the driver)")
    defer_weights: bool = setting(True, "each fine actor answers dL/du first and computes its weight gradients in "
                                        "its optimizer step, while the driver goes on; the same numbers")
    transport: str = setting("auto", "how interface tensors travel: object-store, p2p (NCCL between GPUs, gloo on "
                                     "CPUs), cuda-ipc (one shared GPU); auto: p2p on CPUs and with a GPU per "
                                     "process; on one shared GPU cuda-ipc from 24 MiB of interface tensors a step, "
                                     "the object store below; else the object store", choices=TRANSPORTS)
    channels_last: bool = setting(False, "weights and activations in the channels-last layout (faster convolutions "
                                         "on recent CPUs and GPUs; the same results up to rounding)")
    amp: str = setting("off", "mixed precision in every process: bf16 autocast, or fp16 with one dynamic loss "
                              "scale; weights stay float32", choices=AMP_MODES)
    address: str | None = setting(None, "Ray cluster address (default: the job's cluster inside `ray job submit`, "
                                        "else a private local Ray)")
    resource_timeout_s: float = setting(300.0, "seconds to wait for the cluster (and its autoscaler) to provide the "
                                               "driver and every fine actor", key="resource_timeout")

    def __post_init__(self):
        if self.gpus_per_subnet is not None and not self.gpus_per_subnet >= 0:
            raise UserError("--gpus-per-subnet must be >= 0")
        if not self.cpus_per_subnet >= 0:
            raise UserError("--cpus-per-subnet must be >= 0")
        _at_least("replicas", self.replicas, 1)
        _positive("resource_timeout", self.resource_timeout_s)
        if self.placement not in ("PACK", "SPREAD"):
            raise UserError(f"--placement must be PACK or SPREAD, got {self.placement!r}")
        if self.transport not in TRANSPORTS:
            raise UserError(f"--transport must be one of {', '.join(TRANSPORTS)}, got {self.transport!r}")
        if self.amp not in AMP_MODES:
            raise UserError(f"--amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if self.transport == "cuda-ipc" and self.gpus_per_subnet == 0:
            raise UserError("--transport cuda-ipc needs GPUs: give --gpus-per-subnet a fraction of a GPU")


@dataclass
class RunConfig:
    """The run's name, where its checkpoints go, how it is tracked."""
    storage_path: str = setting("raypar_runs", "where checkpoints are kept (shared storage such as s3:// or NFS on "
                                               "multi-node clusters)")
    name: str | None = setting(None, "the run's name: its checkpoint folder and MLflow run; the name of an "
                                     "interrupted run resumes it (default: a new, unique name)")
    max_failures: int = setting(0, "restarts from the last checkpoint after a lost worker or actor (-1: no limit)")
    num_to_keep: int = setting(2, "checkpoints kept")
    tracking_uri: str = setting("sqlite:///mlflow.db", "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                                                       "sqlite:///mlflow.db here)")
    experiment: str = setting("raypar", "MLflow experiment")
    recipe: str | None = setting(None, "name@version of the recipe or config file the run came from")

    def __post_init__(self):
        if not (isinstance(self.max_failures, int) and self.max_failures >= -1):
            raise UserError("--max-failures must be >= 0 (or -1 for unlimited)")
        _at_least("num_to_keep", self.num_to_keep, 1)
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9._-]+", self.name):
            raise UserError(f"--name may use letters, digits, '.', '_' and '-' only, got {self.name!r}")


GROUPS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "engine": EngineConfig, "run": RunConfig}


def key_of(f: dataclasses.Field) -> str:
    """A field's flat key (option, TOML key, MLflow param)."""
    return f.metadata.get("key") or f.name


# flat key -> (group, field)
KEYS: dict[str, tuple[str, dataclasses.Field]] = {
    key_of(f): (group, f) for group, cls in GROUPS.items() for f in dataclasses.fields(cls)}


@dataclass
class TrainConfig:
    """One training run: every setting, by concern. ``TrainConfig.from_flat(model="vgg16", subnets=4)`` makes one
    from flat keys; each group is validated when it is made, and the groups together here."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    run: RunConfig = field(default_factory=RunConfig)
    extra: dict = field(default_factory=dict)            # what the system adds (the MLflow run id, a study's parent)

    def __post_init__(self):
        for group, cls in GROUPS.items():
            if isinstance(getattr(self, group), dict):   # from to_dict()
                setattr(self, group, cls(**getattr(self, group)))
        if self.engine.coarse_in_actors and self.model.iterations != 1:
            raise UserError(f"--coarse-in-actors needs --iterations 1, got {self.model.iterations}")

    @classmethod
    def from_flat(cls, **values) -> "TrainConfig":
        """A configuration from flat keys (``model``, ``subnets``, ``lr``, ...); unknown keys raise a
        :class:`UserError`."""
        groups: dict = {g: {} for g in GROUPS}
        extra = values.pop("extra", {})
        for key, value in values.items():
            if key not in KEYS:
                raise UserError(f"unknown setting {key!r}; known: {', '.join(sorted(KEYS))}")
            group, f = KEYS[key]
            groups[group][f.name] = value
        return cls(**{g: GROUPS[g](**v) for g, v in groups.items()}, extra=dict(extra))

    def flat(self) -> dict:
        """Every setting by flat key."""
        return {key: getattr(getattr(self, group), f.name) for key, (group, f) in KEYS.items()}

    def replace(self, **values) -> "TrainConfig":
        """A copy with some settings changed, by flat key (``extra`` too); validated as a new one is."""
        extra = values.pop("extra", self.extra)
        return TrainConfig.from_flat(**dict(self.flat(), **values), extra=extra)

    def resolved(self) -> "TrainConfig":
        """A copy with paths made absolute, as the workers will see it."""
        run, data = self.run, self.data
        changes: dict = {}
        if "://" not in run.storage_path:
            changes["storage_path"] = os.path.abspath(run.storage_path)
        uri = run.tracking_uri
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            changes["tracking_uri"] = "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
        if data.data_dir:
            changes["data_dir"] = os.path.abspath(data.data_dir)
        return self.replace(**changes)

    def to_dict(self) -> dict:
        """The configuration as plain data, by group (``TrainConfig(**d)`` makes it again)."""
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------- configuration files
def _accepts(tp, value) -> bool:
    """Whether a TOML value fits a field's annotation (``int | None``, ``str | list``, ``float``...)."""
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


def check_splits(model: str, splits: dict[int, list[int]], where: str = "") -> None:
    """Every pinned split (N -> block counts) fits ``model``'s blocks; else a one-line :class:`UserError`."""
    for n, counts in splits.items():
        try:
            check_split(model, n, counts)
        except UserError as e:
            raise UserError(f"{where}[splits] {n}: {e}") from None


def _splits(table, source: str, model: str | None) -> dict[int, list[int]]:
    """A ``[splits]`` table: N -> block counts, each checked against ``model`` (when the file names one)."""
    if not isinstance(table, dict):
        raise UserError(f"{source}: [splits] must be a table of N = [block counts]")
    out = {}
    for key, counts in table.items():
        if not (str(key).isdigit() and int(key) >= 2 and isinstance(counts, list)
                and all(isinstance(c, int) and not isinstance(c, bool) for c in counts)):
            raise UserError(f"{source}: [splits] {key} = {counts!r}: expected N >= 2 = [block counts], like 2 = [5, 7]")
        out[int(key)] = counts
    if model is not None:
        check_splits(model, out, f"{source}: ")
    return out


def values_from_toml(doc: dict, source: str) -> tuple[dict, dict]:
    """``(settings by flat key, [recipe] table)`` of a parsed TOML document; unknown keys or wrong types raise a
    :class:`UserError` naming ``source`` and the key. A ``[splits]`` table comes back as the [recipe] table's
    ``splits``: ``{N: [block counts]}``, each checked against the file's model."""
    meta = dict(doc.get("recipe", {})) if isinstance(doc.get("recipe", {}), dict) else None
    train = doc.get("train", {})
    if meta is None or not isinstance(train, dict):
        raise UserError(f"{source}: [recipe] and [train] must be tables")
    values = {k: v for k, v in doc.items() if k not in ("recipe", "train", "splits")}
    values.update(train)
    out = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in KEYS:
            raise UserError(f"{source}: unknown setting {key!r}; known: {', '.join(sorted(KEYS))}")
        f = KEYS[name][1]
        if not _accepts(f.type, value):
            raise UserError(f"{source}: {key} = {value!r} has the wrong type (expected {f.type})")
        out[name] = float(value) if f.type.startswith("float") and isinstance(value, int) else value
    if "splits" in doc:
        meta["splits"] = _splits(doc["splits"], source, out.get("model"))
    return out, meta


def load_file(path: str) -> tuple[dict, dict]:
    """``(settings, recipe meta)`` of a TOML configuration file; any problem is a one-line :class:`UserError`."""
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
