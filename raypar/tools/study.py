"""``raypar study``: the original network and its parareal versions, trained with one recipe and seed list, side by
side — nested MLflow runs under one parent run, a table printed as runs finish, and at the end a Markdown report and
PNG plots (validation accuracy per epoch, time per epoch, accuracy vs wall-clock time) in ``--out`` and on the parent.

N = 1 is the original network ``post(B_L(...B_1(pre(x))))`` trained in one process (the driver, no actor, no coarse
network), so its time per epoch is the honest baseline. Every run is an ordinary raypar run named
``<study>-n<N>-k<K>-s<seed>``: running the same study again resumes an interrupted run from its checkpoint and does
not retrain a finished one.
"""
from __future__ import annotations

import os
from typing import Callable

from . import compare
from ..training import tracking
from ..training.config import TrainConfig
from ..errors import UserError, make_output_dir

STUDY_TAG = "raypar.study_key"


def plan(base: TrainConfig, subnets: list[int], iterations: list[int], seeds: list[int], name: str,
         parent_run_id: str = "") -> list[TrainConfig]:
    """The study's runs: every N with every K <= N (N = 1 once, with K = 1), for every seed."""
    layouts = sorted({(n, k if n > 1 else 1) for n in subnets for k in iterations if k <= n or n == 1})
    runs = []
    for n, k in layouts:
        for seed in seeds:
            run = f"{name}-n{n}-k{k}-s{seed}"
            runs.append(base.replace(subnets=n, iterations=k, seed=seed, name=run,
                                     driver_segment=True if n == 1 else base.engine.driver_segment,
                                     extra=dict(base.extra, parent_run_id=parent_run_id)))
    return runs


def check(base: TrainConfig, subnets: list[int], iterations: list[int], seeds: list[int]) -> None:
    """Every mistake in the study's lists, before anything runs."""
    from ..training import data
    from ..network.models import num_blocks
    if min(subnets) < 1 or min(iterations) < 1:
        raise UserError("--subnets and --iterations must list numbers >= 1")
    if not any(k <= n for n in subnets for k in iterations):
        raise UserError(f"no (N, K) pair with K <= N in --subnets {subnets} and --iterations {iterations}")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds lists a seed twice: {seeds}")
    data.load(base.data.dataset, base.data.data_dir, base.data.download)          # a missing data set fails here
    blocks = num_blocks(base.model.name)                                 # counted from the name: nothing is built
    if max(subnets) > blocks:
        raise UserError(f"--subnets {max(subnets)} is more than {base.model.name}'s {blocks} blocks")


def open_parent(base: TrainConfig, name: str, subnets, iterations, seeds) -> str:
    """The study's parent MLflow run (found again by its key when the study is resumed)."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient
    exp_id = tracking.connect(base.run.tracking_uri, base.run.experiment)
    client = MlflowClient(base.run.tracking_uri)
    key = tracking.redact(f"{base.run.storage_path}/{name}")
    found = client.search_runs([exp_id], f"tags.`{STUDY_TAG}` = '{key}'", max_results=1)
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    run = client.create_run(exp_id, run_name=name, tags={STUDY_TAG: key, "raypar.kind": "study"})
    params = {"study": name, "recipe": base.run.recipe or "-", "model": base.model.name, "width_mult": base.model.width_mult,
              "dataset": base.data.dataset, "subnets": ",".join(map(str, subnets)),
              "iterations": ",".join(map(str, iterations)), "seeds": ",".join(map(str, seeds)),
              "epochs": base.optim.epochs, "batch_size": base.optim.batch_size, "lr": base.optim.lr, "lr_schedule": base.optim.lr_schedule,
              "weight_decay": base.optim.weight_decay, "coarse_depth": base.model.coarse_depth, "coarse_norm": base.model.coarse_norm,
              "coarse_width": base.model.coarse_width, "coarse_kernel": base.model.coarse_kernel,
              "coarse_downsample": base.model.coarse_downsample}
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run.info.run_id


# --------------------------------------------------------------------------------------------------- plots
def _by_layout(runs: list[compare.RunSummary]) -> dict[tuple, list[compare.RunSummary]]:
    groups: dict[tuple, list] = {}
    for r in runs:
        groups.setdefault((int(r.params["num_subnets"]), int(r.params["iterations"])), []).append(r)
    return dict(sorted(groups.items()))


def _label(n: int, k: int) -> str:
    return "original (N = 1)" if n == 1 else f"N = {n}, K = {k}"


def _mean_curve(runs, key) -> tuple[list[int], list[float]]:
    """Mean over seeds of a per-epoch metric, over the epochs every run has."""
    epochs = sorted(set.intersection(*[{e for e, _ in r.history[key]} for r in runs]))
    values = [sum(dict(r.history[key])[e] for r in runs) / len(runs) for e in epochs]
    return epochs, values


def plots(runs: list[compare.RunSummary], out: str, title: str) -> list[str]:
    """Three PNG files (800 x 500 px) in ``out``; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = _by_layout(runs)
    paths = []

    def save(fig, name):
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        path = os.path.join(out, name)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)

    fig, ax = plt.subplots(figsize=(8, 5))
    for (n, k), rs in groups.items():
        e, v = _mean_curve(rs, "val_acc")
        ax.plot(e, [100 * x for x in v], marker="o", label=_label(n, k))
    ax.set(xlabel="epoch", ylabel="validation accuracy (%), mean over seeds")
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, "val_acc.png")

    fig, ax = plt.subplots(figsize=(8, 5))
    labels = [_label(n, k) for n, k in groups]
    means = [sum(r.epoch_time_s for r in rs) / len(rs) for rs in groups.values()]
    ax.bar(labels, means, color="tab:blue")
    for i, m in enumerate(means):
        ax.text(i, m, f"{m:.1f} s", ha="center", va="bottom")
    ax.set(ylabel="seconds per epoch (train + validation), mean")
    save(fig, "epoch_time.png")

    fig, ax = plt.subplots(figsize=(8, 5))
    for (n, k), rs in groups.items():
        e, acc = _mean_curve(rs, "val_acc")
        _, t = _mean_curve(rs, "epoch_time_s")
        clock = [sum(t[:i + 1]) for i in range(len(t))]
        ax.plot(clock[:len(acc)], [100 * x for x in acc[:len(clock)]], marker="o", label=_label(n, k))
    ax.set(xlabel="wall-clock training time (s), mean over seeds", ylabel="validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, "acc_vs_time.png")
    return paths


def report(table: list[compare.Row], base: TrainConfig, name: str, parent_run_id: str, seeds: list[int]) -> str:
    lines = [f"# raypar study `{name}`", "",
             f"Recipe `{base.run.recipe or 'custom'}`: {base.model.name} x{base.model.width_mult} on {base.data.dataset}, "
             f"{base.optim.epochs} epochs, batch {base.optim.batch_size}, SGD lr {base.optim.lr} ({base.optim.lr_schedule}), weight decay "
             f"{base.optim.weight_decay}, coarse depth {base.model.coarse_depth} width {base.model.coarse_width} kernel "
             f"{base.model.coarse_kernel} norm "
             f"{base.model.coarse_norm} downsample {base.model.coarse_downsample}; seeds "
             f"{', '.join(map(str, seeds))}. MLflow parent run `{parent_run_id}` (experiment "
             f"`{base.run.experiment}`).", "",
             "N = 1 is the original network trained in one process. Accuracies are in %, mean ± standard deviation "
             "over the seeds; *speedup* is training samples/s over the N = 1 baseline's; *acc delta* is the mean "
             "final val accuracy minus the baseline's, in points.", "",
             compare.markdown(table),
             "![validation accuracy per epoch](val_acc.png)", "",
             "![time per epoch](epoch_time.png)", "",
             "![accuracy vs wall-clock time](acc_vs_time.png)", "",
             f"Reproduce the table: `raypar compare --parent {parent_run_id} --format markdown`."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- the study
def run_study(base: TrainConfig, subnets: list[int], iterations: list[int], seeds: list[int], name: str | None,
              out: str | None, init_ray: Callable, fit: Callable | None = None) -> int:
    from mlflow.tracking import MlflowClient
    from rich.console import Console

    check(base, subnets, iterations, seeds)
    base = base.resolved()
    name = name or f"{(base.run.recipe or base.model.name).split('@')[0]}-{base.data.dataset.split(':')[0]}"
    out = os.path.abspath(out or os.path.join("studies", name))
    plan(base, subnets, iterations, seeds, name)                 # every run's settings are valid
    make_output_dir(out)
    tracking.check_reachable(base.run.tracking_uri)
    init_ray(base.replace(subnets=max(subnets)))
    if fit is None:
        from ..training.loop import fit
    parent = open_parent(base, name, subnets, iterations, seeds)
    runs = plan(base, subnets, iterations, seeds, name, parent)
    console = Console()
    console.print(f"study {name!r}: {len(runs)} runs (MLflow parent run {parent}, experiment {base.run.experiment!r})")
    print(f"{'run':28s} {'N':>2s} {'K':>2s} {'seed':>4s} {'final val acc':>14s} {'best':>7s} {'s/epoch':>8s} "
          f"{'samples/s':>10s}", flush=True)
    client = MlflowClient(base.run.tracking_uri)
    try:
        for cfg in runs:
            result = fit(cfg)
            s = compare.summarize(client, client.get_run(result.run_id))
            print(f"{cfg.run.name:28s} {cfg.model.subnets:2d} {cfg.model.iterations:2d} {cfg.optim.seed:4d} {100 * s.final_val_acc:13.2f}% "
                  f"{100 * s.best_val_acc:6.2f}% {s.epoch_time_s:8.1f} {s.samples_per_s:10.0f}", flush=True)
        summaries = compare.finished_runs(base.run.tracking_uri, parent=parent)
        table = compare.rows(summaries)
        os.makedirs(out, exist_ok=True)
        plots(summaries, out, f"{name}: {base.model.name} x{base.model.width_mult} on {base.data.dataset}")
        with open(os.path.join(out, "report.md"), "w") as f:
            f.write(report(table, base, name, parent, seeds))
        with open(os.path.join(out, "results.json"), "w") as f:
            f.write(compare.render(table, "json"))
        tracking.log_artifacts(base.run.tracking_uri, parent, out)
    except BaseException as e:
        tracking.close_run(base.run.tracking_uri, parent, e)
        raise
    tracking.close_run(base.run.tracking_uri, parent)
    Console(width=200).print(compare.rich_table(table, f"study {name}: accuracy in %, speedup vs N = 1"))
    console.print(f"report: {os.path.join(out, 'report.md')} (plots beside it; also on MLflow run {parent})")
    print(f"raypar: study finished: parent run {parent}")
    return 0
