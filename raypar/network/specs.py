"""What a run's configuration names and checks about the network, importable without torch: the built-in models
(their names and block counts), the measures a split is balanced by, the coarse networks' design. The modules that
build and measure take them from here: :mod:`raypar.network.models`, :mod:`raypar.network.balance`,
:mod:`raypar.network.coarse`."""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UserError

# ------------------------------------------------------------------------------------------ built-in models
VGG_CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}

NORMS = ("batch", "group")


def check_depth(depth: int) -> None:
    if depth < 11 or (depth - 2) % 9:
        raise UserError(f"invalid ResNet depth {depth}: the pre-activation bottleneck ResNet needs depth = 9n+2 "
                        f"with n >= 1 (e.g. 11, 20, 29, 164, 1001)")


def available() -> list[str]:
    return sorted(VGG_CONFIGS) + ["resnet<D> (D = 9n+2, e.g. resnet20, resnet164, resnet1001)"]


def num_blocks(name: str) -> int:
    """How many blocks (the units a split counts) ``build(name)`` has, without building it."""
    check_name(name)
    key = name.lower()
    if key in VGG_CONFIGS:
        return sum(v != "M" for v in VGG_CONFIGS[key]) - 1           # the first conv unit is pre
    return 3 * ((int(key[len("resnet"):]) - 2) // 9)


def check_name(name: str) -> None:
    """A :class:`UserError` unless ``name`` is a built-in model (checked without building it)."""
    key = name.lower()
    if key in VGG_CONFIGS:
        return
    m = re.fullmatch(r"resnet(\d+)", key)
    if not m:
        raise UserError(f"unknown model {name!r}; available: {', '.join(available())}")
    check_depth(int(m.group(1)))


# ------------------------------------------------------------------------------------------------- splits
MEASURES = ("time", "flops", "params")
TUNE = "tune"            # measured on the engine itself, candidate splits side by side (raypar.tools.tune)


def check_measure(measure: str) -> None:
    if measure == TUNE:
        raise UserError("--balance tune measures splits on the engine (raypar train and raypar bench; raypar tune "
                        "prints its table); here give time, flops, params or block counts")
    if measure not in MEASURES:
        raise UserError(f"unknown balance measure {measure!r}; choose one of {', '.join(MEASURES)} "
                        f"or give block counts like 5,7")


def check_counts(counts: list[int], n: int, num_blocks: int) -> list[int]:
    counts = [int(c) for c in counts]
    if len(counts) != n or any(c < 1 for c in counts) or sum(counts) != num_blocks:
        raise UserError(f"explicit split {counts} must be {n} positive block counts summing to {num_blocks}")
    return counts


def check_split(model: str, n: int, balance) -> None:
    """Before anything runs: ``n`` sub-networks fit the built-in ``model``'s blocks, and an explicit split (a list
    of block counts) has ``n`` positive counts that add up to them."""
    blocks = num_blocks(model)
    if not 1 <= n <= blocks:
        raise UserError(f"--subnets must be between 1 and {model}'s {blocks} blocks, got {n}")
    if isinstance(balance, list):
        check_counts(balance, n, blocks)


def parse_balance(text: str, tune: bool = False):
    """CLI form: ``time``/``flops``/``params`` (``tune`` too where ``tune``) or a comma-separated list of block counts
    like ``5,7``."""
    if text == TUNE and not tune:
        check_measure(text)                  # says where tuning is possible
    if text in MEASURES or text == TUNE:
        return text
    try:
        return [int(t) for t in text.split(",")]
    except ValueError:
        names = ", ".join(MEASURES + ((TUNE,) if tune else ()))
        raise UserError(f"--balance must be one of {names} or block counts like 5,7; got {text!r}") from None


# ------------------------------------------------------------------------------------------ coarse networks
DOWNSAMPLE = ("patch", "pool", "stride")
PATCH_MAX_STRIDE = 4     # beyond it a patch convolution costs more than 16/9 of the pooled design: pool first there


@dataclass(frozen=True)
class CoarseSpec:
    depth: int = 1          # number of conv/BN/ReLU layers
    width: float = 1.0      # hidden channels = width * output channels (only used when depth > 1)
    kernel: int = 3
    norm: str = "group"     # "group" (GroupNorm, the default) or "batch" (BatchNorm): see the module docstring
    downsample: str = "patch"  # "patch": an s x s convolution of stride s; "pool": average-pool to the output's size,
    #                            then convolve; "stride": a strided convolution

    def __post_init__(self):
        if self.norm not in ("batch", "group"):
            raise UserError(f"coarse norm must be batch or group, got {self.norm!r}")
        if self.downsample not in DOWNSAMPLE:
            raise UserError(f"coarse downsample must be {', '.join(DOWNSAMPLE[:-1])} or {DOWNSAMPLE[-1]}, "
                            f"got {self.downsample!r}")
        if self.depth < 1:
            raise UserError(f"coarse depth must be >= 1, got {self.depth}")
        if self.width <= 0:
            raise UserError(f"coarse width must be > 0, got {self.width}")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise UserError(f"coarse kernel must be an odd number >= 1, got {self.kernel}")
