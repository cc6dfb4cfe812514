"""One engine alone (F_1 in the driver, N = 2): the median step over many, then one step's timeline phase by phase.

    python benchmarks/throughput/step_timeline.py --split 3,9 --transport p2p

``--show 3`` (the default): three steps in a row, after two others, as in a run (the actor may still be computing
the last step's deferred weight gradients when the next one starts). Times every phase of the driver (pre, C_j, F_1,
post, the transport's calls and gathers, the backward passes, the optimizer step) and every call of the fine actor
(forward, backward's input gradient, the weight gradients and step; each receive and send inside them), in ms from the
start of the first step shown, on one clock (one machine). VGG-16 x0.25, batch 64, one thread per process.
"""
import argparse
import statistics
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", default="3,9", help="block counts of N = 2 (default: %(default)s)")
    p.add_argument("--transport", default="p2p", choices=["object-store", "p2p"])
    p.add_argument("--channels-last", action="store_true", help="weights and activations in the channels-last layout")
    p.add_argument("--steps", type=int, default=30, help="timed steps for the median (default: %(default)s)")
    p.add_argument("--show", type=int, default=3,
                   help="consecutive steps in the timeline, as in a run: each starts while the actor may still be "
                        "busy with the last one's deferred work (default: %(default)s)")
    args = p.parse_args()
    torch.set_num_threads(1)
    import ray

    import raypar.engine.driver as E
    from raypar.engine.actors import FineWorker
    from raypar.tools.bench.config import BenchConfig
    from raypar.tools.bench.workload import _net

    class Timed(FineWorker):                      # (defined here: Ray ships it by value, with the logging)
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.log_ = []
            for attr, name in (("receive", "actor receive (waits for the tensor)"), ("reply", "actor send")):
                fn = getattr(self.end, attr)
                setattr(self.end, attr, lambda *a, fn=fn, name=name: self._timed(name, fn, *a))

        def _timed(self, name, fn, *a):
            t = time.time()
            r = fn(*a)
            self.log_.append((name, t, time.time()))
            return r

        def forward(self, key, x):
            return self._timed("actor forward (receive, compute, send)", super().forward, key, x)

        def backward(self, key, g):
            return self._timed("actor input gradient (receive, compute, send)", super().backward, key, g)

        def step(self, skip=False):
            return self._timed("actor weight gradients + step", super().step, skip)

        def log(self):
            out, self.log_ = self.log_, []
            return out
    E.FineWorker = Timed
    split = [int(v) for v in args.split.split(",")]
    cfg = BenchConfig(model="vgg16", balance=split, channels_last=args.channels_last).validate()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    eng = E.PararealEngine(_net(cfg, 2, driver_segment=True), cfg.optim,
                           E.Resources(0, 1.0, driver_segment=True, transport=args.transport,
                                       channels_last=args.channels_last))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g)
    for _ in range(5):
        eng.train_step(x, y)
    walls, stats = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        stats.append(eng.train_step(x, y)[2])
        walls.append(time.perf_counter() - t0)
    med = lambda v: round(1e3 * statistics.median(v), 1)     # noqa: E731
    print(f"[{args.split}] {args.transport}: step {med(walls)} ms, the driver's own {med(s.driver for s in stats)} "
          f"ms, waiting {med(s.wait for s in stats)} ms (median of {args.steps})")

    log = []
    def span(mod, name):
        mod.register_forward_pre_hook(lambda m, i: log.append((name + " start", time.time(), None)))
        mod.register_forward_hook(lambda m, i, o: log.append((name + " end", time.time(), None)))
    span(eng.pre, "pre")
    span(eng.post, "post")
    span(eng.local[0], "F_1")
    for j, c in enumerate(eng.coarse):
        span(c, f"C_{j + 1}")

    def timed(obj, attr, name):
        fn = getattr(obj, attr)
        def wrapper(*a, **k):
            t = time.time()
            r = fn(*a, **k)
            log.append((name, t, time.time()))
            return r
        setattr(obj, attr, wrapper)
    for meth in ("forward", "gather", "call"):
        timed(eng.tx, meth, f"transport {meth}")
    timed(eng.opt, "step", "optimizer step")
    # every backward pass goes through torch.autograd.backward: the loss's, each iteration's from dL/du, then one for
    # each cut (the coarse sweep's outputs and pre's, last first)
    timed(torch.autograd, "backward", "backward (the loss's, from dL/du, then C_j's and pre's)")
    eng.train_step(x, y)
    eng.settle()
    eng.tx.stop_streams()                # (a streaming actor takes no Ray call)
    ray.get(eng.actors[0].log.remote())
    for _ in range(2):                  # the timeline's steps follow others, as in a run (not a settled actor)
        eng.train_step(x, y)
    log.clear()
    start = time.time()
    for i in range(args.show):
        log.append((f"(step {i + 1} starts)", time.time(), None))
        eng.train_step(x, y)
    log.append(("(the last step returns)", time.time(), None))
    eng.settle()
    eng.tx.stop_streams()
    rows = [(t, "driver", n, e) for n, t, e in log] + [(t, "actor ", n, e) for n, t, e in
                                                       ray.get(eng.actors[0].log.remote())]
    for t, who, name, end in sorted(rows):
        took = f"{1e3 * (end - t):6.1f}" if end else " " * 6
        print(f"{1e3 * (t - start):7.1f} ms  {who} {took}  {name}")
    eng.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
