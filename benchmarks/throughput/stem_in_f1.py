"""Where pre ends: the stem as pre (DESIGN.md, as built) against the stem as F_1's first block (pre the identity, C_1
from the image itself), F_1 in the driver, taking turns with the original network in this process.

    python benchmarks/throughput/stem_in_f1.py --splits 4,9

With the stem in F_1, C_1 reads 3 channels instead of 16 and the actor can start as soon as it has run; pre's backward
no longer waits for the actor's dL/dz_1. The original network is the same in both. VGG-16 x0.25, batch 64, one
thread; ``--splits``: block counts of the 13 blocks (the stem and the 12 others), each an engine of its own.
"""
import argparse
from dataclasses import replace

import torch
from torch import nn
from turns import take_turns


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--splits", nargs="+", default=["4,9"], help="with the stem in F_1 (default: %(default)s)")
    p.add_argument("--steps", type=int, default=40, help="steps of each, the first 3 untimed (default: %(default)s)")
    args = p.parse_args()
    torch.set_num_threads(1)
    import ray

    from raypar.tools.bench.config import BenchConfig
    from raypar.tools.bench.workload import _coarse, _model, _net
    from raypar.engine.driver import TURN_CPUS, PararealEngine, Resources
    from raypar.network.models import StagedModel
    from raypar.network.reference import PararealNet
    cfg = BenchConfig(model="vgg16").validate()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    resources = Resources(0, TURN_CPUS, driver_segment=True, transport="p2p")
    names = ["[3, 9] stem as pre"]
    steps = [PararealEngine(_net(replace(cfg, balance=[3, 9]).validate(), 2, driver_segment=True), cfg.optim,
                            resources).train_step]
    for split in args.splits:
        torch.manual_seed(cfg.seed)
        m = _model(cfg)
        staged = StagedModel(nn.Identity(), [m.pre, *m.blocks], m.post, input_shape=m.input_shape)
        net = PararealNet(staged, 2, coarse=_coarse(cfg), balance=[int(v) for v in split.split(",")],
                          input_shape=cfg.shape, profile_batch=cfg.batch, driver_segment=True)
        names.append(f"[{split}] stem in F_1")
        steps.append(PararealEngine(net, cfg.optim, resources).train_step)
    take_turns(names, steps, cfg, args.steps)
    ray.shutdown()


if __name__ == "__main__":
    main()
