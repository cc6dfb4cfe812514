"""From the command to the first training step of `raypar train`, phase by phase, and what Ray itself costs.

    python benchmarks/startup/phases.py [--reps 3] [--against PYTHON] [-- extra raypar train options]

Runs the quickstart (`raypar train --epochs 1`, with any extra options) ``--reps`` times, one after the other, in
one fresh folder (the first run also creates the MLflow database), and reads the seconds since the command began
from each start-up line on its console. Then times Ray alone the same number of times, in fresh processes: a
private `ray.init` as `raypar train` starts it, and a Ray Train `DataParallelTrainer` with one worker whose
training function only imports torch (the controller, its worker process, torch), as Ray Train starts it and as
raypar starts it (without the helper actors that have no work in a raypar run). Prints, per phase, the median
and range over the repetitions, and the command's wall time.

``--against PYTHON``: another interpreter, a virtual environment with another raypar installed (the code before a
change); its runs alternate with this one's, each table is printed, then the paired differences of the first step
and of the command's time (Ray alone is not timed then).
"""
import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time

PHASE = re.compile(r"^\[\s*(\d+\.\d) s\] (.*)$")

RAY_ALONE = r"""
import time
t0 = time.time()
import ray
from raypar.training.ray_compat import private_node
with private_node():
    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _node_ip_address="127.0.0.1")
t1 = time.time()
from ray.train import RunConfig, ScalingConfig
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
import sys
import tempfile

def loop(config):
    import torch  # noqa: F401 - what every driver imports first
    open(config["mark"], "w").write(repr(time.time()))

trainer = DataParallelTrainer
if sys.argv[1:] == ["raypar"]:                  # as raypar starts it: without Ray Train's idle helpers
    from raypar.training.ray_compat import quick_to_stop, without_idle_helpers
    trainer = without_idle_helpers(quick_to_stop(DataParallelTrainer))
mark = tempfile.mktemp()
t2 = time.time()
trainer(loop, train_loop_config={"mark": mark}, scaling_config=ScalingConfig(num_workers=1),
        run_config=RunConfig(name="x", storage_path=tempfile.mkdtemp())).fit()
t3 = float(open(mark).read())
print(f"RESULT {t1 - t0:.2f} {t3 - t2:.2f}")
"""


def short(text: str) -> str:
    """A phase's name without its numbers (a run's name, a split, a prediction)."""
    text = re.sub(r"\(split [\d,]+\)", "", text)
    text = re.sub(r"new run \S+", "new run", text)
    text = re.sub(r"predicted speedup .*", "predicted speedup", text)
    return text.strip()


def one_run(folder: str, rep: int, extra: list[str],
            python: str = sys.executable) -> tuple[list[tuple[str, float]], float]:
    t0 = time.time()
    proc = subprocess.run([python, "-m", "raypar.cli", "train", "--epochs", "1", "--name", f"startup-{rep}", *extra],
                          cwd=folder, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode:
        sys.exit(f"raypar train failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    phases = [(short(m.group(2)), float(m.group(1))) for m in map(PHASE.match, proc.stdout.splitlines()) if m]
    return phases, wall


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):5.1f}  [{min(values):.1f}, {max(values):.1f}]"


def table(runs: list, title: str) -> None:
    names = [name for name, _ in runs[0][0]]
    print(title)
    print(f"{'phase begins':48s} {'at (s)':>18s} {'lasts (s)':>18s}")
    for i, name in enumerate(names):
        at = [dict(phases)[name] for phases, _ in runs if name in dict(phases)]
        nxt = names[i + 1] if i + 1 < len(names) else None
        lasts = [dict(ph)[nxt] - dict(ph)[name] for ph, _ in runs if nxt and nxt in dict(ph) and name in dict(ph)]
        print(f"{name:48s} {spread(at):>18s} {spread(lasts) if lasts else '':>18s}")
    print(f"{'command, start to exit (one epoch)':48s} {spread([w for _, w in runs]):>18s}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3, help="runs of each (default: %(default)s)")
    p.add_argument("--against", metavar="PYTHON", help="another interpreter (with another raypar installed): "
                   "runs alternate with it, and the paired differences are printed")
    p.add_argument("extra", nargs="*", help="options for raypar train (after --)")
    args = p.parse_args()
    folder = tempfile.mkdtemp()
    what = (f"raypar train --epochs 1 {' '.join(args.extra)}: seconds since the command began, median [range] of "
            f"{args.reps}")
    if args.against:
        pairs = [(one_run(folder, 2 * rep, args.extra, args.against), one_run(folder, 2 * rep + 1, args.extra))
                 for rep in range(args.reps)]
        table([a for a, _ in pairs], f"{args.against} ({what})")
        table([b for _, b in pairs], f"{sys.executable} ({what}, alternated)")
        first = [dict(a[0])["first step"] - dict(b[0])["first step"] for a, b in pairs]
        whole = [a[1] - b[1] for a, b in pairs]
        for name, d in (("first step", first), ("command", whole)):
            print(f"paired, {args.against} - {sys.executable}: {name} {spread(d)}, {sum(x > 0 for x in d)} of "
                  f"{len(d)} sooner here")
        return
    runs = [one_run(folder, rep, args.extra) for rep in range(args.reps)]
    table(runs, f"{what} (the first run creates the MLflow database)")
    init, train = [], {"ray": [], "raypar": []}
    for _ in range(args.reps):
        for how in train:                               # alternated
            out = subprocess.run([sys.executable, "-c", RAY_ALONE, how], capture_output=True, text=True).stdout
            a, b = map(float, next(ln for ln in out.splitlines() if ln.startswith("RESULT")).split()[1:])
            init.append(a)
            train[how].append(b)
    print("Ray alone, in fresh processes:")
    print(f"{'  ray.init (private, loopback)':48s} {spread(init):>18s}")
    print(f"{'  Ray Train fit() to its function (imports torch)':48s} {spread(train['ray']):>18s}")
    print(f"{'    the same without its idle helpers (raypar)':48s} {spread(train['raypar']):>18s}")


if __name__ == "__main__":
    main()
