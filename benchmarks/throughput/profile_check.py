"""Each block's time as the balance profiles it (alone, a few repeats) against its time inside whole training passes.

    python benchmarks/throughput/profile_check.py --model vgg16 --width-mult 0.25 [--channels-last]

The second column times every part of the model (pre, each block, post) in a plain forward and backward of the whole
network: the forward between hooks, the backward between the moments the gradient reaches the part's output and its
input (tensor hooks on every interface). Batch 64, one thread, freed memory kept as in a run.
"""
import argparse
import statistics
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vgg16")
    p.add_argument("--width-mult", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--passes", type=int, default=8, help="whole passes, the first 2 untimed (default: %(default)s)")
    args = p.parse_args()
    torch.set_num_threads(1)
    from raypar.network import balance
    from raypar.network import models
    from raypar.malloc import keep_freed_memory
    keep_freed_memory()
    model = models.build(args.model, width_mult=args.width_mult).train()
    x = torch.randn(args.batch, *model.input_shape)
    pre_p, block_p, post_p = balance.profile(model, x, "time", channels_last=args.channels_last)
    profiled = [p.cost * 1e3 for p in (pre_p, *block_p, post_p)]
    model, x = balance.in_layout(model, x, args.channels_last)
    parts = [model.pre, *model.blocks, model.post]
    runs = []
    for _ in range(args.passes):
        reached, forward, h = {}, [], x
        for i, part in enumerate(parts):
            t0 = time.perf_counter()
            h = part(h)
            forward.append(time.perf_counter() - t0)
            if i < len(parts) - 1:     # the moment dL/d(output of part i) exists
                h.register_hook(lambda g, i=i: reached.__setitem__(i, time.perf_counter()))
        t0 = time.perf_counter()
        h.sum().backward()
        t_end = time.perf_counter()
        n = len(parts)
        backward = [(t_end if i == 0 else reached[i - 1]) - (t0 if i == n - 1 else reached[i]) for i in range(n)]
        runs.append([f + b for f, b in zip(forward, backward)])
        model.zero_grad(set_to_none=True)
    inside = [statistics.median(r[i] for r in runs[2:]) * 1e3 for i in range(len(parts))]
    names = ["pre"] + [f"block {i}" for i in range(len(model.blocks))] + ["post"]
    print(f"{'part':>9s}  profiled ms  in a pass ms")
    for name, a, b in zip(names, profiled, inside):
        print(f"{name:>9s}  {a:11.2f}  {b:12.2f}")
    print(f"{'blocks':>9s}  {sum(profiled[1:-1]):11.2f}  {sum(inside[1:-1]):12.2f}")


if __name__ == "__main__":
    main()
