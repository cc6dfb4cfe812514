"""What every benchmark process computes: the model and its parareal split, the synthetic batches, the optimizer and
the training step, the same for every contender; and how a process times its steps and reads its peak memory."""
from __future__ import annotations

import resource
import time

import torch
import torch.nn.functional as F
from torch import nn

from ...engine import precision
from ...engine.driver import Resources
from ...engine.optim import make_optimizer
from ...network.specs import TUNE, CoarseSpec
from ...network.models import build, memory_format
from ...network.reference import PararealNet
from .config import BenchConfig


def make_batches(cfg: BenchConfig, device: torch.device | str = "cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The warm-up and timed batches: synthetic, the same in every process (fixed seed)."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    return [(memory_format(torch.randn(cfg.batch, *cfg.shape, generator=g).to(device), cfg.channels_last),
             torch.randint(0, cfg.num_classes, (cfg.batch,), generator=g).to(device))
            for _ in range(cfg.warmup + cfg.steps)]


def peak_rss_mb(pid: int | None = None) -> float | None:
    """Peak resident memory of this process (getrusage) or of another local one (``VmHWM`` in /proc)."""
    if pid is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024       # KiB on Linux
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def timed(step, batches, warmup: int) -> tuple[list[float], list]:
    """Run ``step(x, y)`` on every batch; return the seconds and results of the steps after the warm-up."""
    times, results = [], []
    for i, (x, y) in enumerate(batches):
        t0 = time.perf_counter()
        out = step(x, y)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            results.append(out)
    return times, results


def optimizer(model: nn.Module, cfg: BenchConfig):
    """raypar's own optimizer (SGD with momentum and weight decay), the same for every contender."""
    return make_optimizer(model.parameters(), cfg.optim)[0]


def sgd_step(model: nn.Module, opt, cfg: BenchConfig) -> callable:
    """One training step of a whole model (or a data-parallel replica): under the run's autocast, with
    ``torch.amp.GradScaler``'s loss scaling for fp16."""
    scaler = torch.amp.GradScaler(cfg.device, enabled=cfg.amp == "fp16")

    def step(x, y):
        with precision.autocast(cfg.device, cfg.amp):
            logits = model(x)
        loss = F.cross_entropy(precision.full(logits), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss.item()
    return step


def _model(cfg: BenchConfig):
    torch.manual_seed(cfg.seed)
    return build(cfg.model, cfg.num_classes, cfg.in_channels, cfg.width_mult, cfg.image_size)


def _coarse(cfg: BenchConfig) -> CoarseSpec:
    return CoarseSpec(kernel=cfg.coarse_kernel, downsample=cfg.coarse_downsample)


def _net(cfg: BenchConfig, n: int, driver_segment: bool = False, balance=None) -> PararealNet:
    torch.manual_seed(cfg.seed)                  # every contender starts from the same weights
    balance = balance or ("time" if cfg.balance == TUNE else cfg.balance)
    if n == 1 and isinstance(balance, list):
        balance = [sum(balance)]                 # an explicit split is for the largest N; N = 1 has just one
    return PararealNet(_model(cfg), n, coarse=_coarse(cfg), balance=balance, input_shape=cfg.shape,
                       profile_batch=cfg.batch, driver_segment=driver_segment, defer_weights=cfg.defer_weights,
                       measure="time" if cfg.balance == TUNE else None,   # a tuned split's limit: by time too
                       profile_device=cfg.torch_device, channels_last=cfg.channels_last)


def _engine_net(cfg: BenchConfig, n: int, driver_segment: bool, log=print,
                coarse_in_actors: bool = False) -> PararealNet:
    """A raypar contender's network: with ``--balance tune`` its split is the fastest of the candidates measured on
    the engine (:mod:`raypar.tools.tune`, over the first of ``--transports``; every transport's rows use it), else the one
    the balance gives."""
    if cfg.balance != TUNE or n < 2:
        return _net(cfg, n, driver_segment)
    from ..tune import tune_split
    split, _ = tune_split(_model(cfg), n, coarse=_coarse(cfg), driver_segment=driver_segment, input_shape=cfg.shape,
                          num_classes=cfg.num_classes, batch=cfg.batch, optim=cfg.optim,
                          resources=Resources(cfg.gpu_share, 1.0, channels_last=cfg.channels_last, amp=cfg.amp,
                                              transport=cfg.transports[0], coarse_in_actors=coarse_in_actors,
                                              defer_weights=cfg.defer_weights),
                          seed=cfg.seed, log=log)
    return _net(cfg, n, driver_segment, split)
