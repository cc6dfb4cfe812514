"""A finer unit of balance, by hand: the max-pool that ends VGG-16 x0.25's block 3 as a block of its own, so that
F_1 (in the driver) ends before it and the actor runs it, split [3, 10], against the usual [3, 9]; taking turns
with the original in this process (F_1 in the driver, p2p). VGG-16 x0.25, batch 64, one thread per process.

    python benchmarks/throughput/pool_block.py --steps 30
"""
import argparse

import torch
from torch import nn


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30, help="steps of each, the first 3 untimed (default: %(default)s)")
    args = p.parse_args()
    torch.set_num_threads(1)
    import ray
    from turns import take_turns

    from raypar import PararealNet
    from raypar.tools.bench.config import BenchConfig
    from raypar.tools.bench.workload import _coarse, _model
    from raypar.engine.driver import TURN_CPUS, PararealEngine, Resources
    from raypar.network.models import StagedModel
    cfg = BenchConfig(model="vgg16").validate()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)

    def pool_apart(j: int) -> StagedModel:
        torch.manual_seed(cfg.seed)
        m = _model(cfg)
        blocks = list(m.blocks)
        assert isinstance(blocks[j][-1], nn.MaxPool2d)
        blocks[j:j + 1] = [nn.Sequential(*list(blocks[j])[:-1]), nn.Sequential(blocks[j][-1])]
        return StagedModel(m.pre, blocks, m.post, input_shape=m.input_shape)

    torch.manual_seed(cfg.seed)
    names, steps = [], []
    for name, staged, split in [("[3, 9]", _model(cfg), [3, 9]), ("[3, 10], block 3's pool apart", pool_apart(2),
                                                                   [3, 10])]:
        net = PararealNet(staged, 2, coarse=_coarse(cfg), balance=split, input_shape=cfg.shape, driver_segment=True,
                          defer_weights=True)
        engine = PararealEngine(net, cfg.optim, Resources(0, TURN_CPUS, driver_segment=True, transport="p2p"))
        names.append(name)
        steps.append(engine.train_step)
    take_turns(names, steps, cfg, args.steps)
    ray.shutdown()


if __name__ == "__main__":
    main()
