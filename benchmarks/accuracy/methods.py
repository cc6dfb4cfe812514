"""Candidate fixes for K = 1's accuracy, each paired with the original network on the same folds and seeds.

Trains raypar's in-process reference network (:class:`raypar.PararealNet`, the numbers the distributed engine
computes: the engine-vs-reference tests hold that) on scikit-learn's digits by stratified k-fold cross-validation,
with the recipe ``digits-cpu``'s settings (6 epochs, batch 64, SGD 0.05, momentum 0.9, weight decay 5e-4, cosine),
one process per core. It runs methods that only change the coarse networks, the loss or the optimizer in ways the
product exposes no option for (yet), so it trains in one process rather than through ``raypar study``; a method that
wins becomes an option and is measured again with ``raypar study``.

Usage::

    python benchmarks/accuracy/methods.py --model vgg11 --methods original,pool,patch,patch-n4 \\
        --folds 5 --seeds 0,1 --out results.jsonl

Each method is a name from :data:`METHODS`. Prints one JSON line per run and, at the end, a markdown table of the
paired differences (points) against ``original``: mean ± standard deviation, 95 % Student-t interval.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time

import torch
import torch.nn.functional as F

from raypar.engine.optim import make_optimizer
from raypar.engine.specs import OptimConfig
from raypar.network.specs import CoarseSpec
from raypar.network.models import build
from raypar.network.parareal import coarse_sweep
from raypar.network.reference import PararealNet
from raypar.tools.compare import paired
from raypar.training import data

# name -> settings: n (sub-networks), k (iterations), downsample, depth (coarse layers), consistency (weight of
# sum_j mse(z_j, l_j.detach()): the coarse sweep trained toward the fine states), coarse_lr (factor on the coarse
# networks' LR), epochs, lr; sequential_eval (evaluate the original network on the trained weights),
# sequential_last / sequential_first (train the original network in the last / first epochs, the parareal one
# otherwise; distill: meanwhile each C_j is trained toward F_j's output with this weight); coarse_ce / fine_ce (the
# loss adds this weight x the cross-entropy of the coarse sweep's z_N / of F_N(z_{N-1}) alone, through the head);
# split (block counts instead of the flops balance); smoothing (label smoothing); width (the coarse networks' hidden channels, with depth 2);
# warmup (epochs of linear LR warm-up, per step); norm (the coarse networks' normalisation); shift (training images
# translated by up to this many pixels, per sample); wd (weight decay, every part); batch (samples per step); mixup (training batches mixed with a shuffled copy of themselves,
# weight lambda ~ Beta(mixup, mixup), the loss mixed alike); detach (no gradient from F_2..F_N into the coarse sweep);
# nesterov (Nesterov momentum); ema (evaluate an exponential average of the weights, this decay a step)
METHODS = {
    "original": dict(n=1),
    "pool": dict(n=2, downsample="pool"),
    "stride": dict(n=2, downsample="stride"),
    "patch": dict(n=2, downsample="patch"),
    "pool-depth2": dict(n=2, downsample="pool", depth=2),
    "patch-depth2": dict(n=2, downsample="patch", depth=2),
    "pool-kernel1": dict(n=2, downsample="pool", kernel=1),
    "pool-consistency0.1": dict(n=2, downsample="pool", consistency=0.1),
    "pool-consistency1": dict(n=2, downsample="pool", consistency=1.0),
    "pool-consistency10": dict(n=2, downsample="pool", consistency=10.0),
    "patch-consistency1": dict(n=2, downsample="patch", consistency=1.0),
    "patch-coarse-lr3": dict(n=2, downsample="patch", coarse_lr=3.0),
    "patch-coarse-lr0.3": dict(n=2, downsample="patch", coarse_lr=0.3),
    "pool-lr0.1": dict(n=2, downsample="pool", lr=0.1),
    "pool-lr0.02": dict(n=2, downsample="pool", lr=0.02),
    "original-12epochs": dict(n=1, epochs=12),
    "pool-12epochs": dict(n=2, downsample="pool", epochs=12),
    "patch-k2": dict(n=2, k=2, downsample="patch"),
    "pool-n4": dict(n=4, downsample="pool"),
    "patch-n4": dict(n=4, downsample="patch"),
    "patch-n4-depth2": dict(n=4, downsample="patch", depth=2),
    "patch-n4-consistency1": dict(n=4, downsample="patch", consistency=1.0),
    "patch-n4-coarse-lr3": dict(n=4, downsample="patch", coarse_lr=3.0),
    "patch-n4-k2": dict(n=4, k=2, downsample="patch"),
    "pool-consistency1-sequential-eval": dict(n=2, downsample="pool", consistency=1.0, sequential_eval=True),
    "pool-sequential-last-epoch": dict(n=2, downsample="pool", sequential_last=1),
    "pool-sequential-first-epoch": dict(n=2, downsample="pool", sequential_first=1, distill=1.0),
    "pool-sequential-first-2-epochs": dict(n=2, downsample="pool", sequential_first=2, distill=1.0),
    "patch-coarse-ce0.3": dict(n=2, downsample="patch", coarse_ce=0.3),
    "patch-fine-ce0.3": dict(n=2, downsample="patch", fine_ce=0.3),
    "patch-fine-ce1": dict(n=2, downsample="patch", fine_ce=1.0),
    "patch-split-5-2": dict(n=2, downsample="patch", split=[5, 2]),
    "patch-split-2-5": dict(n=2, downsample="patch", split=[2, 5]),
    "patch-n4-split-1-2-2-2": dict(n=4, downsample="patch", split=[1, 2, 2, 2]),
    "patch-n4-split-2-2-2-1": dict(n=4, downsample="patch", split=[2, 2, 2, 1]),
    "patch-n4-split-1-1-1-4": dict(n=4, downsample="patch", split=[1, 1, 1, 4]),
    "patch-n4-split-3-2-1-1": dict(n=4, downsample="patch", split=[3, 2, 1, 1]),
    "patch-split-3-9": dict(n=2, downsample="patch", split=[3, 9]),
    "patch-split-9-3": dict(n=2, downsample="patch", split=[9, 3]),
    "patch-n4-split-1-1-1-9": dict(n=4, downsample="patch", split=[1, 1, 1, 9]),
    "patch-n4-split-1-2-2-7": dict(n=4, downsample="patch", split=[1, 2, 2, 7]),
    "original-lr0.02": dict(n=1, lr=0.02),
    "original-lr0.1": dict(n=1, lr=0.1),
    "patch-lr0.1": dict(n=2, downsample="patch", lr=0.1),
    "patch-n4-lr0.1": dict(n=4, downsample="patch", lr=0.1),
    "original-smoothing0.1": dict(n=1, smoothing=0.1),
    "patch-smoothing0.1": dict(n=2, downsample="patch", smoothing=0.1),
    "patch-width2-depth2": dict(n=2, downsample="patch", depth=2, width=2.0),
    "original-warmup1": dict(n=1, warmup=1),
}
# N = 4 at the best splits tried (VGG-11: 1, 2, 2, 2; VGG-16: 1, 2, 2, 7), with one change each: a linear LR warm-up
# over the first epoch, the coarse networks' LR x0.3, BatchNorm in the coarse networks, 12 epochs
for _split in ([1, 2, 2, 2], [1, 2, 2, 7]):
    _name = "patch-n4-split-" + "-".join(map(str, _split))
    METHODS[f"{_name}-warmup1"] = dict(n=4, downsample="patch", split=_split, warmup=1)
    METHODS[f"{_name}-coarse-lr0.3"] = dict(n=4, downsample="patch", split=_split, coarse_lr=0.3)
    METHODS[f"{_name}-batchnorm"] = dict(n=4, downsample="patch", split=_split, norm="batch")
    METHODS[f"{_name}-12epochs"] = dict(n=4, downsample="patch", split=_split, epochs=12)
# augmentation, paired with an original trained the same way: translations of up to 2 pixels
for _base, _n, _split in (("original", 1, "flops"), ("patch-n4-split-1-2-2-2", 4, [1, 2, 2, 2]),
                          ("patch-split-2-5", 2, [2, 5])):
    METHODS[f"{_base}-shift2"] = dict(n=_n, downsample="patch", split=_split, shift=2)
# N = 4 at 1, 2, 2, 2 (VGG-11), aimed at generalisation (the network fits its training folds as the original does):
# overlapping coarse convolutions (kernel 2s - 1, stride s: neighbouring patches share pixels, as the fine blocks'
# 3x3 convolutions do), dropout on the coarse states, Gaussian noise on the fine segments' (coarse) inputs, and 10x the
# weight decay on the coarse networks; each in training only
for _extra in (dict(overlap=True), dict(coarse_dropout=0.1), dict(coarse_dropout=0.2), dict(coarse_dropout=0.3),
               dict(z_noise=0.1), dict(coarse_wd=10.0)):
    _key, _value = next(iter(_extra.items()))
    _label = {"overlap": "overlap", "coarse_dropout": f"coarse-dropout{_value}", "z_noise": f"noise{_value}",
              "coarse_wd": f"coarse-wd{_value:g}"}[_key]
    METHODS[f"patch-n4-split-1-2-2-2-{_label}"] = dict(n=4, downsample="patch", split=[1, 2, 2, 2], **_extra)
# the auxiliary losses and label smoothing that came closest at N = 2, at N = 4 (1, 2, 2, 2)
for _extra, _label in ((dict(fine_ce=0.3), "fine-ce0.3"), (dict(coarse_ce=0.3), "coarse-ce0.3"),
                       (dict(smoothing=0.1), "smoothing0.1"),
                       (dict(smoothing=0.1, coarse_ce=0.3), "smoothing0.1-coarse-ce0.3")):
    METHODS[f"patch-n4-split-1-2-2-2-{_label}"] = dict(n=4, downsample="patch", split=[1, 2, 2, 2], **_extra)
METHODS["patch-split-2-5-smoothing0.1"] = dict(n=2, downsample="patch", split=[2, 5], smoothing=0.1)
# coarse networks whose correction C_j(l) - C_j(z) is linear in the fine defect l - z: the patch convolution alone
# (no norm, no ReLU), or with its GroupNorm and no ReLU
for _base, _n, _split in (("patch-n4-split-1-2-2-2", 4, [1, 2, 2, 2]), ("patch-split-2-5", 2, [2, 5])):
    METHODS[f"{_base}-linear"] = dict(n=_n, downsample="patch", split=_split, coarse_tail="none")
    METHODS[f"{_base}-no-relu"] = dict(n=_n, downsample="patch", split=_split, coarse_tail="norm")
# stronger label smoothing, and mixup, paired with an original trained the same way
for _base, _n, _split in (("original", 1, "flops"), ("patch-n4-split-1-2-2-2", 4, [1, 2, 2, 2]),
                          ("patch-split-2-5", 2, [2, 5])):
    for _extra, _label in ((dict(smoothing=0.2), "smoothing0.2"), (dict(mixup=0.2), "mixup0.2"),
                           (dict(mixup=0.2, smoothing=0.1), "mixup0.2-smoothing0.1")):
        METHODS[f"{_base}-{_label}"] = dict(n=_n, downsample="patch", split=_split, **_extra)
# the recipe's epochs doubled, for every network of the where-to-cut table
for _name in ("patch", "patch-n4", "patch-split-2-5"):
    METHODS[f"{_name}-12epochs"] = dict(METHODS[_name], epochs=12)
# with label smoothing 0.1 at N = 4 (1, 2, 2, 2), one more change to the recipe of both networks: 4x the weight
# decay, half the batch, twice the epochs (and four, eight times; four with half the batch), twice the LR (and 12 epochs)
for _base, _n, _split in (("original", 1, "flops"), ("patch-n4-split-1-2-2-2", 4, [1, 2, 2, 2])):
    for _extra, _label in ((dict(wd=2e-3), "wd2e-3"), (dict(batch=32), "batch32"), (dict(epochs=12), "12epochs"),
                           (dict(epochs=24), "24epochs"), (dict(epochs=12, batch=32), "12epochs-batch32"),
                           (dict(lr=0.1), "lr0.1"), (dict(lr=0.1, epochs=12), "lr0.1-12epochs"),
                           (dict(epochs=48), "48epochs"), (dict(epochs=24, batch=32), "24epochs-batch32")):
        METHODS[f"{_base}-smoothing0.1-{_label}"] = dict(n=_n, downsample="patch", split=_split, smoothing=0.1,
                                                          **_extra)
# with label smoothing 0.1 and 24 epochs at N = 4 (1, 2, 2, 2): no weight decay on the coarse networks
METHODS["patch-n4-split-1-2-2-2-smoothing0.1-24epochs-coarse-wd0"] = dict(
    METHODS["patch-n4-split-1-2-2-2-smoothing0.1-24epochs"], coarse_wd=0.0)
# with label smoothing 0.1 (6 epochs): the fine segments' inputs detached from the coarse sweep; Nesterov momentum and
# an exponential average of the weights (decay 0.95 per step), each in both networks
for _base, _n, _split in (("original", 1, "flops"), ("patch-n4-split-1-2-2-2", 4, [1, 2, 2, 2]),
                          ("patch-split-2-5", 2, [2, 5])):
    for _extra, _label in ((dict(detach=True), "detach"), (dict(nesterov=True), "nesterov"),
                           (dict(ema=0.95), "ema0.95")):
        if _n > 1 or "detach" not in _extra:
            METHODS[f"{_base}-smoothing0.1-{_label}"] = dict(n=_n, downsample="patch", split=_split, smoothing=0.1,
                                                              **_extra)
# with label smoothing 0.1, VGG-11 at N = 4 with a deeper last segment (as VGG-16's 1, 2, 2, 7)
for _split in ([1, 1, 1, 4], [1, 1, 2, 3]):
    METHODS["patch-n4-split-" + "-".join(map(str, _split)) + "-smoothing0.1"] = dict(n=4, downsample="patch",
                                                                                   split=_split, smoothing=0.1)
# label smoothing 0.1 on VGG-16's best N = 4 split, at 6 and 12 epochs (with the original and N = 2 trained alike)
for _name in ("original", "patch", "patch-n4-split-1-2-2-7"):
    METHODS[f"{_name}-smoothing0.1"] = dict(METHODS[_name], smoothing=0.1)
    METHODS[f"{_name}-12epochs-smoothing0.1"] = dict(METHODS[_name], smoothing=0.1, epochs=12)


def _optimizer(net: PararealNet, lr: float, epochs: int, coarse_lr: float, coarse_wd: float = 1.0,
               wd: float = 5e-4):
    optim = OptimConfig(lr=lr, epochs=epochs, weight_decay=wd)
    opt, sched = make_optimizer(net.parameters(), optim)
    if coarse_lr != 1.0 or coarse_wd != 1.0:
        coarse = {id(p) for p in net.coarse.parameters()}
        rest = [p for p in net.parameters() if id(p) not in coarse]
        opt.param_groups.clear()
        opt.add_param_group({"params": rest, "lr": lr, "initial_lr": lr})
        opt.add_param_group({"params": list(net.coarse.parameters()), "lr": lr * coarse_lr,
                             "initial_lr": lr * coarse_lr, "weight_decay": optim.weight_decay * coarse_wd})
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    return opt, sched


def _coarse_tail(net: PararealNet, keep: str) -> None:
    """The coarse networks' GroupNorm and ReLU removed (``keep="none"``) or their ReLU only (``keep="norm"``)."""
    drop = (torch.nn.ReLU,) if keep == "norm" else (torch.nn.ReLU, torch.nn.GroupNorm, torch.nn.BatchNorm2d)
    for j, coarse in enumerate(net.coarse):
        net.coarse[j] = torch.nn.Sequential(*[layer for layer in coarse if not isinstance(layer, drop)])


def _overlapping(net: PararealNet) -> None:
    """Each patch convolution (kernel = stride = s) of ``net``'s coarse networks replaced by one of kernel 2s - 1,
    stride s, padding s - 1: the same output shape, each output pixel reading its patch and a border around it."""
    for coarse in net.coarse:
        for i, layer in enumerate(coarse):
            if isinstance(layer, torch.nn.Conv2d) and layer.kernel_size[0] == layer.stride[0] > 1:
                s = layer.stride[0]
                coarse[i] = torch.nn.Conv2d(layer.in_channels, layer.out_channels, 2 * s - 1, stride=s,
                                            padding=s - 1, bias=False)


def _shifted(x: torch.Tensor, pixels: int, g: torch.Generator) -> torch.Tensor:
    """Each image translated by its own random (dy, dx) in [-pixels, pixels], zeros shifted in."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pixels, pixels, pixels, pixels))
    dy, dx = (torch.randint(0, 2 * pixels + 1, (b,), generator=g) for _ in range(2))
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


def _beta(a: float, g: torch.Generator) -> float:
    """One draw of Beta(a, a) from ``g`` (two Gamma(a) draws)."""
    u, v = (float(torch._standard_gamma(torch.full((1,), float(a)), generator=g)[0]) for _ in range(2))
    return u / (u + v)


def _k1_with_states(net: PararealNet, x0: torch.Tensor, dropout: float = 0.0, noise: float = 0.0,
                    detach: bool = False):
    """K = 1 written out (:func:`raypar.network.parareal.parareal`'s sums), keeping the coarse and fine states.
    ``dropout``: on every coarse state z_j (training); ``noise``: Gaussian noise of ``noise`` x z_j's standard
    deviation on the fine segments' inputs z_1..z_{N-1} (training); ``detach``: no gradient flows from a fine segment
    F_2..F_N into the coarse sweep that made its input (the coarse networks learn from the corrections alone)."""
    z = coarse_sweep(net.coarse, x0, cut=(lambda t: F.dropout(t, dropout)) if dropout else None)   # z_1 .. z_N
    inputs = [x0] + [u + noise * u.detach().std() * torch.randn_like(u) if noise else u for u in z[:-1]]
    if detach:
        inputs = [inputs[0]] + [u.detach() for u in inputs[1:]]
    f = [seg(u) for seg, u in zip(net.segments, inputs)]
    l = [f[0]]
    for j in range(1, net.num_subnets):
        l.append(f[j] + net.coarse[j](l[-1]) - z[j])
    return z, f, l


def train_one(model: str, width: float, method: str, fold: int, folds: int, seed: int) -> dict:
    """Train one method on one fold and seed; returns its validation accuracy (%) and seconds."""
    torch.set_num_threads(1)
    m = dict(METHODS[method])
    n, k = m.get("n", 2), m.get("k", 1)
    epochs, lr = m.get("epochs", 6), m.get("lr", 0.05)
    t0 = time.time()
    spec = data.digits(folds=folds, fold=fold, seed=seed)
    torch.manual_seed(seed)
    staged = build(model, num_classes=10, in_channels=1, width_mult=width, image_size=32)
    coarse = CoarseSpec(depth=m.get("depth", 1), kernel=m.get("kernel", 3), downsample=m.get("downsample", "patch"),
                        width=m.get("width", 1.0), norm=m.get("norm", "group"))
    net = PararealNet(staged, n, k, coarse, m.get("split", "flops"), input_shape=(1, 32, 32), profile_batch=64)
    if m.get("overlap"):
        _overlapping(net)
    if m.get("coarse_tail"):
        _coarse_tail(net, m["coarse_tail"])
    opt, sched = _optimizer(net, lr, epochs, m.get("coarse_lr", 1.0), m.get("coarse_wd", 1.0), m.get("wd", 5e-4))
    for g in opt.param_groups:
        g["nesterov"] = m.get("nesterov", False)
    ema = [p.detach().clone() for p in net.parameters()] if m.get("ema") else None
    weight = m.get("consistency", 0.0)
    batch = m.get("batch", 64)
    warm_steps, step = m.get("warmup", 0) * -(-len(spec.train) // batch), 0
    shift_g = torch.Generator().manual_seed(seed)
    mix_g = torch.Generator().manual_seed(seed + 1)
    for epoch in range(1, epochs + 1):
        net.train()
        for x, y in data.loader(spec.train, batch, True, seed, epoch):
            step += 1
            if m.get("shift"):
                x = _shifted(x, m["shift"], shift_g)
            lam, y2 = 1.0, y
            if m.get("mixup"):
                lam = _beta(m["mixup"], mix_g)
                perm = torch.randperm(len(y), generator=mix_g)
                x, y2 = lam * x + (1 - lam) * x[perm], y[perm]
            extra = 0.0
            if n == 1 or epoch > epochs - m.get("sequential_last", 0) or epoch <= m.get("sequential_first", 0):
                h = net.pre(x)
                for j, seg in enumerate(net.segments):
                    after = seg(h)
                    if m.get("distill") and j < n - 1:      # C_j toward F_j on the same input
                        extra = extra + m["distill"] * F.mse_loss(net.coarse[j](h.detach()), after.detach())
                    h = after
                out = net.post(h)
            elif k > 1:
                out = net(x)
            else:
                z, f, l = _k1_with_states(net, net.pre(x), m.get("coarse_dropout", 0.0), m.get("z_noise", 0.0),
                                          m.get("detach", False))
                out = net.post(l[-1])
                if weight:
                    extra = weight * sum(F.mse_loss(z[j], l[j].detach()) for j in range(n - 1))
                if m.get("coarse_ce"):
                    extra = extra + m["coarse_ce"] * F.cross_entropy(net.post(z[-1]), y)
                if m.get("fine_ce"):
                    extra = extra + m["fine_ce"] * F.cross_entropy(net.post(f[-1]), y)
            smoothing = m.get("smoothing", 0.0)
            loss = lam * F.cross_entropy(out, y, label_smoothing=smoothing) + extra
            if lam < 1.0:
                loss = loss + (1 - lam) * F.cross_entropy(out, y2, label_smoothing=smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            factor = min(1.0, step / warm_steps) if warm_steps else 1.0      # linear warm-up, per step
            lrs = [g["lr"] for g in opt.param_groups]
            for g in opt.param_groups:
                g["lr"] *= factor
            opt.step()
            for g, lr_ in zip(opt.param_groups, lrs):
                g["lr"] = lr_
            if ema is not None:
                with torch.no_grad():
                    for e, p in zip(ema, net.parameters()):
                        e.mul_(m["ema"]).add_(p, alpha=1 - m["ema"])
        sched.step()
    if ema is not None:                                  # evaluate the average (BN statistics: the last step's)
        with torch.no_grad():
            for e, p in zip(ema, net.parameters()):
                p.copy_(e)
    net.eval()
    seconds = round(time.time() - t0, 1)

    def accuracy(ds) -> float:
        right = seen = 0
        with torch.no_grad():
            for x, y in data.loader(ds, 256, False):
                sequential = n == 1 or m.get("sequential_eval") or m.get("sequential_last")
                out = net.sequential(x) if sequential else net(x)
                right += int((out.argmax(1) == y).sum())
                seen += len(y)
        return 100.0 * right / seen
    return {"model": model, "width": width, "method": method, "fold": fold, "seed": seed,
            "acc": accuracy(spec.val), "train_acc": accuracy(spec.train), "seconds": seconds}


def _train_one(job: tuple) -> dict:
    return train_one(*job)


def table(rows: list[dict], baseline: str = "original") -> str:
    """Markdown: per method, its accuracy and the paired difference against ``baseline`` on the same fold/seed."""
    base = {(r["fold"], r["seed"]): r["acc"] for r in rows if r["method"] == baseline}
    out = ["| method | val acc (%) | paired difference (points) | 95 % interval | pairs |", "|---|---:|---:|---|---:|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        these = [r for r in rows if r["method"] == method]
        accs = [r["acc"] for r in these]
        mean = sum(accs) / len(accs)
        if method == baseline:
            out.append(f"| {baseline} | {mean:.2f} | | | |")
            continue
        count, diff, std, lo, hi = paired([r["acc"] - base[(r["fold"], r["seed"])] for r in these
                                           if (r["fold"], r["seed"]) in base])
        interval = f"[{lo:+.2f}, {hi:+.2f}]" if lo is not None else ""
        spread = f" ± {std:.2f}" if std is not None else ""
        out.append(f"| {method} | {mean:.2f} | {diff:+.2f}{spread} | {interval} | {count} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vgg11")
    p.add_argument("--width-mult", type=float, default=0.25)
    p.add_argument("--methods", default="original,pool,patch", help=f"comma-separated, of: {', '.join(METHODS)}")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seeds", default="0")
    p.add_argument("--processes", type=int, default=2, help="runs at a time (one thread each)")
    p.add_argument("--baseline", default="original",
                   help="the method every other is paired with (an original network trained with the same recipe)")
    p.add_argument("--out", default=None, help="append every run as a JSON line here (and read it back: a run "
                                               "already there is not trained again)")
    a = p.parse_args(argv)
    methods = a.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        print(f"methods.py: unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}", file=sys.stderr)
        return 2
    done = []
    if a.out:
        try:
            with open(a.out) as f:
                done = [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            pass
    have = {(r["model"], r["width"], r["method"], r["fold"], r["seed"]) for r in done}
    todo = [(a.model, a.width_mult, m, fold, a.folds, int(s)) for s in a.seeds.split(",") for fold in range(a.folds)
            for m in methods if (a.model, a.width_mult, m, fold, int(s)) not in have]
    rows = [r for r in done if r["model"] == a.model and r["width"] == a.width_mult and r["method"] in methods]
    with mp.get_context("spawn").Pool(a.processes) as pool:
        for r in pool.imap_unordered(_train_one, todo) if todo else []:      # each run saved as it ends
            rows.append(r)
            if a.out:
                with open(a.out, "a") as f:
                    f.write(json.dumps(r) + "\n")
    print(f"{a.model} x{a.width_mult}, {a.folds} folds, seeds {a.seeds}\n")
    print(table(rows, a.baseline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
