"""Built-in models, each a :class:`StagedModel`: ``pre`` (stem), ``blocks`` (the "time steps"), ``post`` (head).

* CIFAR-style VGG-11/13/16/19 with BatchNorm: ``pre`` is the first conv/BN/ReLU (plus a pool if one follows it),
  every further conv/BN/ReLU (with the pool that follows it) is one block, ``post`` is pool + classifier.
* Pre-activation bottleneck ResNet of depth 9n+2 (He et al. 2016): ``resnet164`` (n=18), ``resnet1001`` (n=111),
  any ``resnet<D>`` with D = 9n+2 (``resnet20``, ``resnet29``, ...): ``pre`` is the 3x3 stem conv, each
  bottleneck unit is one block, ``post`` is BN/ReLU/avg-pool/linear.

``width_mult`` scales every channel count so that tiny versions run in tests.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..errors import UserError
from .specs import NORMS, VGG_CONFIGS, check_depth, check_name


class StagedModel(nn.Module):
    """``x --pre--> x0 --B_1--> ... --B_L--> h --post--> logits``; ``forward`` is the plain sequential network."""

    def __init__(self, pre: nn.Module, blocks: Sequence[nn.Module], post: nn.Module,
                 input_shape: tuple[int, ...] | None = None):
        super().__init__()
        self.pre = pre
        self.blocks = nn.ModuleList(blocks)
        self.post = post
        # shape of one sample (no batch dim), used for dry runs; None when unknown
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        if len(self.blocks) == 0:
            raise UserError("a staged model needs at least one block between pre and post")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre(x)
        for block in self.blocks:
            x = block(x)
        return self.post(x)


# ----------------------------------------------------------------------------------------------------- VGG
def _ch(c: int, width_mult: float) -> int:
    return max(1, int(round(c * width_mult)))





def norm_layer(kind: str, channels: int, flat: bool = False) -> nn.Module:
    """``batch``: BatchNorm (statistics of each process's own batch; ``flat``: BatchNorm1d for (B, D) tensors);
    ``group``: GroupNorm with up to 32 groups of at least 4 channels, which does not depend on the batch, so
    data-parallel replicas compute exactly what one process would on the combined batch."""
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, max(1, channels // 4)), channels)
    if kind == "batch":
        return nn.BatchNorm1d(channels) if flat else nn.BatchNorm2d(channels)
    raise UserError(f"unknown norm {kind!r}; choose {' or '.join(NORMS)}")


def vgg(name: str, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
        image_size: int = 32, norm: str = "batch") -> StagedModel:
    cfg = VGG_CONFIGS[name]
    units: list[list[nn.Module]] = []
    c_in = in_channels
    for v in cfg:
        if v == "M":
            units[-1].append(nn.MaxPool2d(2, 2))
        else:
            c_out = _ch(v, width_mult)
            units.append([nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), norm_layer(norm, c_out),
                          nn.ReLU(inplace=True)])
            c_in = c_out
    pre, *blocks = [nn.Sequential(*u) for u in units]
    post = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))
    return StagedModel(pre, blocks, post, input_shape=(in_channels, image_size, image_size))


# -------------------------------------------------------------------------------------------- PreAct ResNet
class PreActBottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1, norm: str = "batch"):
        super().__init__()
        c_out = planes * self.expansion
        self.bn1 = norm_layer(norm, c_in)
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn2 = norm_layer(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = norm_layer(norm, planes)
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.shortcut = (nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)
                         if stride != 1 or c_in != c_out else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        out = self.conv3(torch.relu(self.bn3(out)))
        return out + shortcut


def preact_resnet(depth: int, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
                  image_size: int = 32, norm: str = "batch") -> StagedModel:
    check_depth(depth)
    n = (depth - 2) // 9
    base = _ch(16, width_mult)
    pre = nn.Conv2d(in_channels, base, 3, padding=1, bias=False)
    blocks: list[nn.Module] = []
    c_in = base
    for stage, planes in enumerate([base, base * 2, base * 4]):
        for i in range(n):
            stride = 2 if (stage > 0 and i == 0) else 1
            blocks.append(PreActBottleneck(c_in, planes, stride, norm))
            c_in = planes * PreActBottleneck.expansion
    post = nn.Sequential(norm_layer(norm, c_in), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(c_in, num_classes))
    return StagedModel(pre, blocks, post, input_shape=(in_channels, image_size, image_size))


# ----------------------------------------------------------------------------------------------- registry
def memory_format(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``t`` in the channels-last layout (4-D tensors only) when ``channels_last``, else ``t`` itself. Convolutions
    on channels-last tensors and weights (``module.to(memory_format=torch.channels_last)``) are faster on recent CPUs
    (oneDNN) and on GPUs (tensor cores)."""
    return t.contiguous(memory_format=torch.channels_last) if channels_last and t.dim() == 4 else t


def build(name: str, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
          image_size: int = 32, norm: str = "batch") -> StagedModel:
    """Build a built-in model by name (``vgg16``, ``resnet164``, ``resnet20``, ...); ``norm``: see
    :func:`norm_layer`."""
    if norm not in NORMS:
        raise UserError(f"unknown norm {norm!r}; choose {' or '.join(NORMS)}")
    check_name(name)
    if width_mult <= 0:
        raise UserError(f"width_mult must be > 0, got {width_mult}")
    if num_classes < 1 or in_channels < 1:
        raise UserError("num_classes and in_channels must be >= 1")
    key = name.lower()
    if key in VGG_CONFIGS:
        return vgg(key, num_classes, in_channels, width_mult, image_size, norm)
    return preact_resnet(int(key[len("resnet"):]), num_classes, in_channels, width_mult, image_size, norm)
