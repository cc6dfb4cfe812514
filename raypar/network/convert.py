"""``staged_from(module)``: turn a network this project did not write into a :class:`StagedModel`.

Supported: ``nn.Sequential`` (``pre``/``post`` given as modules or layer counts, or inferred), torchvision's ResNet
family (``resnet18`` ... ``wide_resnet101_2``, ``resnext*``) and VGG family (with or without BN). The staged model
shares the original's parameters and computes exactly what the original computes.
"""
from __future__ import annotations

from torch import nn

from ..errors import UserError
from .models import StagedModel

SUPPORTED = "nn.Sequential, torchvision ResNet/ResNeXt/Wide-ResNet, torchvision VGG (with or without BN)"

# layers that belong to the block of the weighted layer before them
_TRAILING = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.ReLU, nn.ReLU6, nn.LeakyReLU,
             nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.MaxPool2d, nn.AvgPool2d, nn.MaxPool1d,
             nn.AvgPool1d, nn.Dropout, nn.Identity)


def _units(layers: list[nn.Module]) -> list[list[nn.Module]]:
    """Group layers so that every unit starts with a layer that is not a norm/activation/pool/dropout."""
    units: list[list[nn.Module]] = []
    for layer in layers:
        if units and isinstance(layer, _TRAILING):
            units[-1].append(layer)
        else:
            units.append([layer])
    return units


def _seq(layers: list[nn.Module]) -> nn.Module:
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


def _as_part(part, layers: list[nn.Module], from_end: bool) -> tuple[nn.Module | None, list[nn.Module]]:
    """Resolve a user-given pre/post (a module or a layer count) against the remaining layers."""
    if part is None:
        return None, layers
    if isinstance(part, int):
        if part < 0 or part >= len(layers):
            raise UserError(f"pre/post layer count {part} leaves no block in a Sequential of {len(layers)} layers")
        taken = layers[len(layers) - part:] if from_end else layers[:part]
        rest = layers[:len(layers) - part] if from_end else layers[part:]
        return (_seq(taken) if taken else nn.Identity()), rest
    if isinstance(part, nn.Module):
        return part, layers
    raise UserError(f"pre/post must be an nn.Module or a layer count, got {type(part).__name__}")


def _from_sequential(seq: nn.Sequential, pre, post, input_shape) -> StagedModel:
    layers = list(seq)
    pre_m, layers = _as_part(pre, layers, from_end=False)
    post_m, layers = _as_part(post, layers, from_end=True)
    units = _units(layers)
    if post_m is None:
        # the head: the last unit, with any parameter-free layers (flatten, pooling) that precede it
        head = units.pop() if len(units) > 1 else []
        while len(units) > 1 and not any(p.requires_grad for u in units[-1] for p in u.parameters()):
            head = units.pop() + head
        post_m = _seq(head) if head else nn.Identity()
    if pre_m is None:
        pre_m = _seq(units.pop(0)) if len(units) > 1 else nn.Identity()
    if not units:
        raise UserError("the Sequential has no layers left for blocks between pre and post")
    if input_shape is None:
        first = next((m for m in seq.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
        if isinstance(first, nn.Conv2d):
            input_shape = (first.in_channels, 32, 32)
        elif isinstance(first, nn.Linear):
            input_shape = (first.in_features,)
    return StagedModel(pre_m, [_seq(u) for u in units], post_m, input_shape=input_shape)


def _from_torchvision_resnet(m, input_shape) -> StagedModel:
    pre = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool)
    blocks = [b for layer in (m.layer1, m.layer2, m.layer3, m.layer4) for b in layer]
    post = nn.Sequential(m.avgpool, nn.Flatten(1), m.fc)
    return StagedModel(pre, blocks, post, input_shape=input_shape or (3, 224, 224))


def _from_torchvision_vgg(m, input_shape) -> StagedModel:
    units = _units(list(m.features))
    pre = _seq(units.pop(0))
    post = nn.Sequential(m.avgpool, nn.Flatten(1), m.classifier)
    return StagedModel(pre, [_seq(u) for u in units], post, input_shape=input_shape or (3, 224, 224))


def staged_from(module: nn.Module, pre=None, post=None, input_shape=None) -> StagedModel:
    """Convert ``module`` into a :class:`StagedModel` that computes exactly what ``module`` computes.

    ``pre``/``post`` (``nn.Sequential`` only) are modules or numbers of leading/trailing layers; inferred when
    omitted. ``input_shape`` is one sample's shape (no batch dim) used for dry runs.
    """
    if isinstance(module, StagedModel):
        return module
    if isinstance(module, nn.Sequential):
        return _from_sequential(module, pre, post, input_shape)
    try:
        from torchvision.models import VGG, ResNet
    except ImportError:  # pragma: no cover - torchvision is a dependency
        VGG = ResNet = ()
    if isinstance(module, ResNet):
        return _from_torchvision_resnet(module, input_shape)
    if isinstance(module, VGG):
        return _from_torchvision_vgg(module, input_shape)
    raise UserError(f"cannot convert a {type(module).__name__}: supported are {SUPPORTED}")
