"""Coarse networks ``C_j``: cheap maps from ``F_j``'s input shape to ``F_j``'s output shape.

Default (``downsample="patch"``): where the output is smaller by an integer stride s <= 4, one s x s convolution
with stride s (each output pixel a learned map of its own s x s patch of the input, channels chosen to match the
shapes) + GroupNorm + ReLU; where the sizes are equal, a 3x3 convolution; where s > 4 (or not an integer), the pooled
design. ``depth`` adds more 3x3 conv/norm/ReLU
layers at the output's resolution, ``width`` scales the hidden channels (relative to the output channels). Flat
(B, D) interfaces get Linear + norm + ReLU instead.

Why patches: with K = 1 every path from the input to the output passes through one fine segment, and the others'
places are taken by coarse networks, so what a coarse network throws away no later segment sees. Averaging a patch
first (``downsample="pool"``, then a 3x3 convolution at the output's resolution) throws away the patch's detail; a
strided 3x3 convolution (``downsample="stride"``) reads only part of the input when s > 3. A patch convolution keeps
every pixel and costs s^2/9 of the pooled design's convolution: less for s = 2, 16/9 for s = 4, 7x for s = 8, where
the driver's serial coarse work would eat the speedup (VGG-16 x0.25's last interface, 8x8 to 1x1): above s = 4 the
pooled design stays. Measured in benchmarks/accuracy/README.md.

Why GroupNorm and not BatchNorm (``norm="batch"``): a coarse network sees two kinds of input every step — the coarse
sweep's ``z`` and the correction sweep's ``l`` — so BatchNorm's running statistics blend the two distributions, and
evaluation (which uses them) normalises both paths with the blend, unlike training. GroupNorm has no running
statistics: training and evaluation agree. Both choices are measured in benchmarks/accuracy/README.md and
benchmarks/throughput/README.md.
"""
from __future__ import annotations

from torch import nn

from ..errors import UserError
from .models import norm_layer
from .specs import PATCH_MAX_STRIDE, CoarseSpec


def _layer(c_in: int, c_out: int, kernel: int, stride: int, norm: str) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
            norm_layer(norm, c_out), nn.ReLU(inplace=True)]


def build_coarse(in_shape: tuple, out_shape: tuple, spec: CoarseSpec = CoarseSpec()) -> nn.Module:
    """A coarse network mapping one sample of ``in_shape`` to ``out_shape`` (shapes without batch dim)."""
    if len(in_shape) == 1 and len(out_shape) == 1:
        layers: list[nn.Module] = []
        d_in = in_shape[0]
        hidden = max(1, int(round(spec.width * out_shape[0])))
        for i in range(spec.depth):
            d_out = out_shape[0] if i == spec.depth - 1 else hidden
            layers += [nn.Linear(d_in, d_out, bias=False), norm_layer(spec.norm, d_out, flat=True),
                       nn.ReLU(inplace=True)]
            d_in = d_out
        return nn.Sequential(*layers)
    if len(in_shape) != 3 or len(out_shape) != 3:
        raise UserError(f"no coarse network for interface shapes {in_shape} -> {out_shape}: "
                        f"supported are (C, H, W) and (D,) tensors")
    (c_in, h_in, w_in), (c_out, h_out, w_out) = in_shape, out_shape
    exact = h_in % h_out == 0 and w_in % w_out == 0 and h_in // h_out == w_in // w_out
    stride = h_in // h_out if exact else 1
    hidden = max(1, int(round(spec.width * c_out)))
    layers = []
    smaller = h_out <= h_in and w_out <= w_in and (h_in, w_in) != (h_out, w_out)
    patch = spec.downsample == "patch" and exact and 1 < stride <= PATCH_MAX_STRIDE
    pool_first = spec.downsample in ("pool", "patch") and smaller and not patch    # (patch: s > 4 or no integer)
    if pool_first:                     # then every convolution runs at the output's resolution, stride 1
        layers.append(nn.AvgPool2d(stride) if exact else nn.AdaptiveAvgPool2d((h_out, w_out)))
        stride = 1
    for i in range(spec.depth):
        last = i == spec.depth - 1
        if i == 0 and patch:
            # one convolution per stride x stride patch: every input pixel counts with its own weight
            layers += [nn.Conv2d(c_in, c_out if last else hidden, stride, stride=stride, bias=False),
                       norm_layer(spec.norm, c_out if last else hidden), nn.ReLU(inplace=True)]
        else:
            layers += _layer(c_in, c_out if last else hidden, spec.kernel, stride if i == 0 else 1, spec.norm)
        c_in = hidden
    if not exact and not pool_first:
        layers.append(nn.AdaptiveAvgPool2d((h_out, w_out)))
    return nn.Sequential(*layers)
