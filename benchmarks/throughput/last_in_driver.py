"""A layout raypar does not ship, measured: F_N in the driver, F_1 in an actor that needs nothing from the driver.

    RAY_worker_niceness=0 python benchmarks/throughput/last_in_driver.py --check
    RAY_worker_niceness=0 python benchmarks/throughput/last_in_driver.py --splits 3,9 4,8 \
        --driver-segment-splits 5,7 4,8

N = 2, K = 1. With ``--driver-segment`` (``driver-segment`` below) the driver runs pre and C_1 before its actor can
start F_2, and C_1's and pre's backward after the actor's dL/dz_1 comes back: about a quarter of the step with one
core idle. Here (``fN``) the actor gets the batch, runs a copy of pre and F_1 and sends f_1 back; the driver
meanwhile runs pre, C_1, F_2 and C_2(z_1), then ``l_2 = F_2(z_1) + C_2(f_1) - C_2(z_1)``, post and the loss; it
sends dL/df_1 first (through post and C_2 only), then runs its own backward while the actor runs F_1's and pre's;
the actor returns its copy's pre gradients, which the driver adds to its own before its step (the copy gets the
driver's pre weights every step). Neither process waits for the other at the start or the end of a step, at the cost
of pre run twice.

``--check`` runs 3 steps of this layout in float64 against :class:`raypar.PararealNet` in one process (same weights,
same SGD): the losses and every weight must agree to rounding. Without it the layouts take turns step by step in
this process beside the original network (as ``engines_ab.py``), each with the splits given; prints the median step
and its ratio to the original's. VGG-16 x0.25, batch 64, one thread per process.
"""
import argparse
import copy

import numpy as np
import torch
from turns import take_turns
import torch.nn.functional as F


def make_layout(ray, turn_cpus: float):
    from raypar.engine.optim import make_optimizer

    @ray.remote(num_cpus=turn_cpus)
    class First:
        """pre (a copy) and F_1: forward from the batch, backward from dL/df_1; returns the copy's pre gradients."""

        def __init__(self, pre, segment, optim, dtype):
            torch.set_num_threads(1)
            torch.set_default_dtype(dtype)
            self.pre, self.segment = pre, segment
            self.opt = make_optimizer(segment.parameters(), optim)[0]
            self.pre_params = list(pre.parameters())

        def forward(self, x: np.ndarray, pre_weights: list) -> np.ndarray:
            with torch.no_grad():
                for p, w in zip(self.pre_params, pre_weights):
                    p.copy_(torch.from_numpy(w))
            self.out = self.segment(self.pre(torch.from_numpy(x)))
            return self.out.detach().numpy()

        def backward(self, grad: np.ndarray) -> list:
            for p in self.pre_params:
                p.grad = None
            self.opt.zero_grad(set_to_none=True)
            self.out.backward(torch.from_numpy(grad))
            self.out = None
            pre_grads = [p.grad.numpy() for p in self.pre_params]
            self.opt.step()
            return pre_grads

    class LastInDriver:
        """The driver: pre, C_1, C_2, F_2, post and their optimizer; F_1 in a :class:`First` actor."""

        def __init__(self, net, optim):
            self.pre, self.post, (self.c1, self.c2), self.f2 = net.pre, net.post, net.coarse, net.segments[1]
            parts = (self.pre, self.c1, self.c2, self.f2, self.post)
            self.opt = make_optimizer([p for m in parts for p in m.parameters()], optim)[0]
            self.pre_params = list(self.pre.parameters())
            self.actor = First.remote(copy.deepcopy(net.pre), net.segments[0], optim, torch.get_default_dtype())

        def train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
            weights = ray.put([p.detach().numpy() for p in self.pre_params])
            f1_ref = self.actor.forward.remote(x.numpy(), weights)
            z1 = self.c1(self.pre(x))
            f2, c2z = self.f2(z1), self.c2(z1)
            f1 = torch.from_numpy(ray.get(f1_ref).copy()).requires_grad_()
            c2f = self.c2(f1)
            out = (f2 + c2f - c2z).detach().requires_grad_()      # cut: post's backward runs once
            loss = F.cross_entropy(self.post(out), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            c2f.backward(out.grad)                                # dL/df_1 first: the actor starts its backward
            pre_grads = self.actor.backward.remote(f1.grad.numpy())
            (f2 - c2z).backward(out.grad)                         # F_2, C_2, C_1, pre
            for p, g in zip(self.pre_params, ray.get(pre_grads)):
                p.grad += torch.from_numpy(g)
            self.opt.step()
            return loss.item()

    return LastInDriver


def check(ray, cfg, layout) -> None:
    from raypar.tools.bench.config import BenchConfig
    from raypar.tools.bench.workload import _net, make_batches
    from raypar.engine.optim import make_optimizer
    torch.set_default_dtype(torch.float64)
    bench = BenchConfig(model="vgg16", balance=[4, 8]).validate()
    net = _net(bench, 2).double()
    ref = copy.deepcopy(net)
    driver, opt = layout(net, cfg.optim), make_optimizer(ref.parameters(), cfg.optim)[0]
    for x, y in make_batches(bench)[:3]:
        x = x.double()
        got = driver.train_step(x, y)
        opt.zero_grad(set_to_none=True)
        want = F.cross_entropy(ref(x), y)
        want.backward()
        opt.step()
        print(f"loss {got:.15f} reference {want.item():.15f} diff {abs(got - want.item()):.1e}")
        assert abs(got - want.item()) < 1e-12
    f1 = ray.get(driver.actor.__ray_call__.remote(lambda a: a.segment.state_dict()))
    pairs = [(f1[k], v) for k, v in ref.segments[0].state_dict().items()]
    pairs += [(a, b) for m in ("pre", "coarse", "post") for a, b in zip(getattr(net, m).parameters(),
                                                                         getattr(ref, m).parameters())]
    pairs += list(zip(net.segments[1].parameters(), ref.segments[1].parameters()))
    worst = max((a.double() - b.double()).abs().max().item() for a, b in pairs)
    print(f"largest weight difference after 3 steps: {worst:.1e}")
    assert worst < 1e-12


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--splits", nargs="+", default=["3,9", "4,8"], help="block counts for fN (default: %(default)s)")
    p.add_argument("--driver-segment-splits", nargs="*", default=["5,7", "4,8"],
                   help="block counts for raypar's --driver-segment engine beside it (default: %(default)s)")
    p.add_argument("--steps", type=int, default=40, help="steps of each, the first 3 untimed (default: %(default)s)")
    p.add_argument("--check", action="store_true", help="only check the layout against PararealNet in float64")
    args = p.parse_args()
    torch.set_num_threads(1)
    import ray

    from raypar.tools.bench.config import BenchConfig
    from raypar.tools.bench.workload import _net
    from raypar.engine.driver import TURN_CPUS, PararealEngine, Resources
    cfg = BenchConfig(model="vgg16").validate()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    layout = make_layout(ray, TURN_CPUS)
    if args.check:
        check(ray, cfg, layout)
        return
    names, steps = [], []
    for split in args.driver_segment_splits:
        net = _net(BenchConfig(model="vgg16", balance=[int(v) for v in split.split(",")]).validate(), 2, driver_segment=True)
        steps.append(PararealEngine(net, cfg.optim, Resources(0, TURN_CPUS, driver_segment=True)).train_step)
        names.append(f"[{split}] driver-segment")
    for split in args.splits:
        net = _net(BenchConfig(model="vgg16", balance=[int(v) for v in split.split(",")]).validate(), 2)
        steps.append(layout(net, cfg.optim).train_step)
        names.append(f"[{split}] fN")
    take_turns(names, steps, cfg, args.steps)
    ray.shutdown()


if __name__ == "__main__":
    main()
