"""Speed where users train: ``raypar train`` itself (the CLI, Ray Train, MLflow) on a zoo of models, N = 2 with the
default engine settings against the original network, plus Ray Train data parallelism and plain PyTorch's step.

For every repetition, every model and every contender, in an order rotated by one each repetition (interleaved, so
that a drift of the machine does not favour one contender):

- ``original``: ``raypar train --subnets 1`` (the original network in one process, the driver);
- ``raypar``: ``raypar train --subnets 2`` with no engine flag (what a user gets);

each a run of its own (``--name``), read back from MLflow: the last epoch's ``samples_per_s`` and ``step_time_s``,
the start-of-run prediction (tag ``raypar.predicted_speedup``), where the run put the coarse sweep (tag
``raypar.coarse_in_actors``) and the seconds from the command to its first step (its console). Then once per model in the first ``--bench-reps`` repetitions, ``raypar bench --contenders
original,ddp --one-at-a-time``:
Ray Train data parallelism (DDP over gloo, 2 workers, the same global batch) and plain PyTorch's training step in one
process.

Prints the table (median and range over repetitions of each ratio to the original) and writes it with every run's
figures to ``--out`` (``runs.jsonl``; the same command again goes on where an interrupted one stopped). Usage::

    python benchmarks/train-path/run.py                      # the zoo, 3 repetitions, 2 epochs each
    python benchmarks/train-path/run.py --models vgg11:0.25 --reps 1 --epochs 1
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

ZOO = "vgg11:0.25,vgg16:0.25,resnet56:1,resnet110:0.5"
CONTENDERS = {"original": ["--subnets", "1"], "raypar": ["--subnets", "2"]}
FIRST_STEP = re.compile(r"\[\s*([\d.]+) s\] first step")


def _train(model: str, width: float, contender: str, rep: int, a, uri: str) -> dict:
    name = f"tp-{model}-x{width}-{contender}-r{rep}-{int(time.time())}"
    cmd = [sys.executable, "-m", "raypar.cli", "train", "--model", model, "--width-mult", str(width),
           "--epochs", str(a.epochs), "--name", name, "--tracking-uri", uri, "--experiment", "train-path",
           "--storage-path", os.path.join(a.out, "runs"), *CONTENDERS[contender]]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                                 if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")})
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {(r.stdout + r.stderr)[-2000:]}")
    from mlflow.tracking import MlflowClient
    client = MlflowClient(uri)
    run = client.search_runs(client.get_experiment_by_name("train-path").experiment_id,
                             f"attributes.run_name = '{name}'")[0]
    last = max(m.step for m in client.get_metric_history(run.info.run_id, "samples_per_s"))

    def at_last(key):
        return next(m.value for m in client.get_metric_history(run.info.run_id, key) if m.step == last)
    first = FIRST_STEP.search(r.stdout)
    predicted = run.data.tags.get("raypar.predicted_speedup")
    return {"model": model, "width": width, "contender": contender, "rep": rep, "run": name,
            "samples_per_s": at_last("samples_per_s"), "step_time_s": at_last("step_time_s"),
            "val_acc": at_last("val_acc"), "first_step_s": float(first.group(1)) if first else None,
            "wall_s": wall, "predicted_speedup": float(predicted) if predicted else None,
            "split": run.data.tags.get("raypar.split"), "coarse_in_actors": run.data.tags.get("raypar.coarse_in_actors")}


def _bench(model: str, width: float, rep: int, a) -> dict:
    """Ray Train DDP (2 workers) and plain PyTorch's step, from ``raypar bench`` (each alone, one after the other)."""
    out = os.path.join(a.out, f"bench-{model}-x{width}-r{rep}")
    cmd = [sys.executable, "-m", "raypar.cli", "bench", "--model", model, "--width-mult", str(width),
           "--in-channels", "1", "--batch", "64", "--subnets", "2", "--contenders", "original,ddp",
           "--one-at-a-time", "--steps", str(a.bench_steps), "--out", out]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {(r.stdout + r.stderr)[-2000:]}")
    with open(os.path.join(out, "bench.json")) as f:
        rows = {row["contender"]: row for row in json.load(f)["rows"]}
    ddp = next(row for name, row in rows.items() if name.startswith("ddp"))        # labelled ddp-<workers>
    return {"model": model, "width": width, "rep": rep, "plain_samples_per_s": rows["original"]["samples_per_s"],
            "ddp_samples_per_s": ddp["samples_per_s"]}


def _spread(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def table(runs: list[dict], benches: list[dict]) -> str:
    """The markdown table: per model, median (range) over repetitions of raypar's and data parallelism's samples/s
    over the original's (both measured in the same repetition), the prediction, and the original's step."""
    lines = ["| model | N = 2 defaults / original | predicted | measured / predicted | Ray Train DDP (2) / "
             "original | original step (ms) | plain PyTorch step (ms) | first step (s) | coarse sweep |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for model, width in dict.fromkeys((r["model"], r["width"]) for r in runs):
        def of(contender, rep):
            return next((r for r in runs if (r["model"], r["width"], r["contender"], r["rep"]) ==
                         (model, width, contender, rep)), None)
        reps = sorted({r["rep"] for r in runs if (r["model"], r["width"]) == (model, width)})
        ratios, predicted, shares, ddp, steps, plain, first, where = [], [], [], [], [], [], [], []
        for rep in reps:
            o, p = of("original", rep), of("raypar", rep)
            if not (o and p):
                continue
            ratio = p["samples_per_s"] / o["samples_per_s"]
            ratios.append(ratio)
            steps.append(1000 * o["step_time_s"])
            first.append(p["first_step_s"])
            where.append({"true": "actors", "false": "driver"}.get(p.get("coarse_in_actors"), "?"))
            if p["predicted_speedup"]:
                predicted.append(p["predicted_speedup"])
                shares.append(ratio / p["predicted_speedup"])
            b = next((b for b in benches if (b["model"], b["width"], b["rep"]) == (model, width, rep)), None)
            if b:
                ddp.append(b["ddp_samples_per_s"] / b["plain_samples_per_s"])
                plain.append(1000 * 64 / b["plain_samples_per_s"])
        lines.append(f"| {model} x{width:g} | {_spread(ratios)} | {_spread(predicted)} | {_spread(shares)} | "
                     f"{_spread(ddp)} | {_spread(steps)} | {_spread(plain)} | {_spread(first)} | "
                     f"{', '.join(f'{w} {where.count(w)}x' for w in dict.fromkeys(where))} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=ZOO, help="model:width_mult, comma-separated (default: %(default)s)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2, help="per run; the last epoch's samples/s is compared")
    p.add_argument("--bench-steps", type=int, default=20, help="timed steps of the data-parallel bench")
    p.add_argument("--bench-reps", type=int, default=1, help="repetitions that also run the data-parallel bench "
                                                             "(the first ones; 0: none)")
    p.add_argument("--out", default="train_path_out")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    uri = f"sqlite:///{os.path.abspath(os.path.join(a.out, 'mlflow.db'))}"
    models = [(m.split(":")[0], float(m.split(":")[1]) if ":" in m else 1.0) for m in a.models.split(",")]
    jobs = [(m, w, c) for m, w in models for c in CONTENDERS]
    runs, benches = [], []
    path = os.path.join(a.out, "runs.jsonl")
    if os.path.exists(path):                       # an interrupted benchmark goes on where it stopped
        with open(path) as f:
            for row in map(json.loads, f):
                (runs if "contender" in row else benches).append(row)
    log = open(path, "a")
    for rep in range(a.reps):
        shift = rep % len(jobs)
        for model, width, contender in jobs[shift:] + jobs[:shift]:          # interleaved, rotated per repetition
            if any((r["model"], r["width"], r["contender"], r["rep"]) == (model, width, contender, rep) for r in runs):
                continue
            row = _train(model, width, contender, rep, a, uri)
            runs.append(row)
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(f"rep {rep} {model} x{width:g} {contender}: {row['samples_per_s']:.1f} samples/s, first step "
                  f"{row['first_step_s']} s, wall {row['wall_s']:.1f} s", flush=True)
        if rep < a.bench_reps:
            for model, width in models:
                if any((b["model"], b["width"], b["rep"]) == (model, width, rep) for b in benches):
                    continue
                b = _bench(model, width, rep, a)
                benches.append(b)
                log.write(json.dumps(b) + "\n")
                log.flush()
                print(f"rep {rep} {model} x{width:g} bench: plain {b['plain_samples_per_s']:.1f}, ddp "
                      f"{b['ddp_samples_per_s']:.1f} samples/s", flush=True)
    text = table(runs, benches)
    print("\n" + text)
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
