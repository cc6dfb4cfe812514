"""Where a short `raypar.training.loop.fit` spends its time: start-up, training, and the end of the run.

    python benchmarks/startup/fit_phases.py [--runs 2] [--epochs 1]

Starts a private Ray (4 CPUs, no dashboard), then trains VGG-11 x0.125 on digits (N = 2, batch 32, a FLOP-balanced
split) ``--runs`` times in a row and prints, per run, seconds from the call to ``fit`` until the first ``start``
event (every process up and the engine built), the first step, the end of the last epoch, and ``fit``'s return.
The first run also pays for Ray's first worker processes; the later ones are the steady cost.
"""
import argparse
import queue
import tempfile
import threading
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=2, help="runs in a row (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=1, help="epochs per run (default: %(default)s)")
    args = p.parse_args()
    import ray
    from ray.util.queue import Queue

    from raypar.training.config import TrainConfig
    from raypar.training.loop import fit
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    folder = tempfile.mkdtemp()
    print(f"{'run':>3s} {'start event':>12s} {'first step':>11s} {'last epoch':>11s} {'fit returned':>13s}")
    for run in range(args.runs):
        cfg = TrainConfig.from_flat(model="vgg11", width_mult=0.125, subnets=2, epochs=args.epochs, batch_size=32,
                          balance="flops", cpus_per_subnet=0.5, storage_path=f"{folder}/runs", name=f"run{run}",
                          tracking_uri=f"sqlite:///{folder}/mlflow.db")
        events, marks = Queue(actor_options={"num_cpus": 0}), {}
        t0 = time.time()
        thread = threading.Thread(target=fit, args=(cfg, events))
        thread.start()
        while thread.is_alive() or not events.empty():
            try:
                ev = events.get(timeout=0.1)
            except queue.Empty:
                continue
            now = time.time() - t0
            if ev["kind"] == "start":
                marks.setdefault("start", now)
            elif ev["kind"] == "step" and ev["done"] == 1:
                marks.setdefault("step", now)
            elif ev["kind"] == "epoch":
                marks["epoch"] = now
        thread.join()
        marks["end"] = time.time() - t0
        print(f"{run + 1:3d} {marks['start']:12.1f} {marks['step']:11.1f} {marks['epoch']:11.1f} {marks['end']:13.1f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
