"""``raypar study``: the original network and its parareal versions, trained with one recipe and seed list, side by
side — nested MLflow runs under one parent run, a table printed as runs finish, and at the end a Markdown report and
PNG plots (validation accuracy per epoch, time per epoch, accuracy vs wall-clock time) in ``--out`` and on the parent.

N = 1 is the original network ``post(B_L(...B_1(pre(x))))`` trained in one process (the driver, no actor, no coarse
network), so its time per epoch is the honest baseline. Every run is an ordinary raypar run named
``<study>-n<N>-k<K>-s<seed>``, and with ``--folds F`` (cross-validation) one run per fold,
``<study>-n<N>-k<K>-s<seed>-f<fold>``: each (N, K) trains on the same folds and seeds as the original, so that
``raypar compare`` pairs them. Each run records ``num_subnets``, ``iterations``, ``seed``, ``folds`` and ``fold`` as
MLflow params and ``val_acc`` per epoch: the study can be re-read from MLflow alone. Running the same study again
resumes an interrupted run from its checkpoint and does not retrain a finished one.
"""
from __future__ import annotations

import os
from typing import Callable

from . import compare
from ..training import tracking
from ..training.config import TrainConfig
from ..errors import UserError, make_output_dir

STUDY_TAG = "raypar.study_key"


def run_name(study: str, n: int, k: int, seed: int, folds: int = 0, fold: int = 0) -> str:
    """The name of a study's run: ``<study>-n<N>-k<K>-s<seed>``, and ``-f<fold>`` with cross-validation."""
    return f"{study}-n{n}-k{k}-s{seed}" + (f"-f{fold}" if folds else "")


def plan(base: TrainConfig, subnets: list[int], iterations: list[int], seeds: list[int], name: str,
         parent_run_id: str = "", splits: dict[int, list[int]] | None = None) -> list[TrainConfig]:
    """The study's runs: every N with every K <= N (N = 1 once, with K = 1), for every seed and, with
    ``base.data.folds`` F >= 2, every fold 0..F-1 (else one run per seed, on the data set's own split). An explicit
    split (``balance`` a list of block counts) is the parareal runs'; N = 1 takes every block in one segment.
    ``splits`` (N -> block counts, a recipe's pinned splits) gives the runs with that N their split.

    Returns:
        The runs' configurations, by (N, K), then seed, then fold; each named by :func:`run_name` and nested under
        ``parent_run_id``.
    Raises:
        UserError: a run's settings are invalid.
    """
    layouts = sorted({(n, k if n > 1 else 1) for n in subnets for k in iterations if k <= n or n == 1})

    def balance(n: int):              # an explicit split is the parareal runs'; the original is one segment
        if n in (splits or {}):
            return splits[n]
        b = base.model.balance
        return [sum(b)] if n == 1 and isinstance(b, list) else b
    folds = base.data.folds
    runs = []
    for n, k in layouts:
        for seed in seeds:
            for fold in range(folds) if folds else [0]:
                runs.append(base.replace(subnets=n, iterations=k, seed=seed, fold=fold, balance=balance(n),
                                         name=run_name(name, n, k, seed, folds, fold),
                                         driver_segment=True if n == 1 else base.engine.driver_segment,
                                         extra=dict(base.extra, parent_run_id=parent_run_id)))
    return runs


def check(base: TrainConfig, subnets: list[int], iterations: list[int], seeds: list[int]) -> None:
    """Every mistake in the study's lists, before anything runs."""
    from ..training import data
    from ..network.specs import num_blocks
    if min(subnets) < 1 or min(iterations) < 1:
        raise UserError("--subnets and --iterations must list numbers >= 1")
    if not any(k <= n for n in subnets for k in iterations):
        raise UserError(f"no (N, K) pair with K <= N in --subnets {subnets} and --iterations {iterations}")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds lists a seed twice: {seeds}")
    split = base.model.balance
    if isinstance(split, list) and any(n > 1 and n != len(split) for n in subnets):
        raise UserError(f"--balance {','.join(map(str, split))} splits the network into {len(split)} sub-networks; "
                        f"--subnets {','.join(map(str, subnets))} asks for others (an explicit split needs "
                        f"--subnets 1,{len(split)} or {len(split)})")
    # a missing data set, or more folds than samples, fails here
    data.load(base.data.dataset, base.data.data_dir, base.data.download, base.data.folds, 0, seeds[0])
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
              "dataset": base.data.dataset, "folds": base.data.folds,
              "subnets": ",".join(map(str, subnets)),
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
    """Mean over seeds (and folds) of a per-epoch metric, over the epochs every run has: (epochs, values)."""
    curve = compare.mean_curve(runs, key)
    return [e for e, _ in curve], [v for _, v in curve]


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
    ax.set(xlabel="epoch", ylabel="validation accuracy (%), mean over runs")
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
    ax.set(xlabel="wall-clock training time (s), mean over runs", ylabel="validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, "acc_vs_time.png")
    return paths


def evaluation_note(base: TrainConfig) -> str:
    """What the study's accuracies measure: which samples validate, and what happens to an official test split."""
    dataset, folds = base.data.dataset, base.data.folds
    official = dataset != "digits"                 # torchvision sets and image folders have an official test split
    if folds:
        pool = ("the official training split" if official else "all 1797 samples of digits (every sample is "
                                                                 "validated once per seed)")
        test = ("The official test split is the test set, untouched: no run trains, validates or is chosen on it."
                if official else "digits has no official test split; with a data set that has one (CIFAR, SVHN, "
                                 "MNIST, an image folder's `val/`) the folds split its training split and the test "
                                 "set stays untouched.")
        return (f"Accuracies are **validation accuracy on the held-out fold**: {folds}-fold stratified "
                f"cross-validation of {pool}, the folds dealt from the seed; each run trains on the other "
                f"{'fold' if folds == 2 else f'{folds - 1} folds'}. {test}")
    if official:
        return ("Accuracies are validation accuracy on the data set's own validation split (a torchvision set's "
                "official test split; an image folder's `val/`); with `--folds` the study validates on held-out "
                "folds of the training split instead and leaves the test split untouched.")
    return ("Accuracies are validation accuracy on digits' fixed 20 % validation split (the same on every "
            "machine); `--folds` cross-validates on all 1797 samples instead.")


def split_text(balance, splits: dict[int, list[int]] | None = None) -> str:
    """How a study's runs split: ``2+5`` (block counts), ``by flops``; pinned splits per N first."""
    own = "+".join(map(str, balance)) if isinstance(balance, list) else f"by {balance}"
    if not splits:
        return own
    pinned = ", ".join(f"{'+'.join(map(str, c))} for N = {n}" for n, c in sorted(splits.items()))
    return f"{pinned}, other N {own}"


def report(table: list[compare.Row], base: TrainConfig, name: str, parent_run_id: str, seeds: list[int],
           splits: dict[int, list[int]] | None = None) -> str:
    """The study's Markdown report: the recipe, what the accuracies measure, the table of :mod:`compare`, the
    paired comparison against the original network, and the plots (PNG files beside it)."""
    folds = base.data.folds
    pairs = "fold and seed" if folds else "seed"
    lines = [f"# raypar study `{name}`", "",
             f"Recipe `{base.run.recipe or 'custom'}`: {base.model.name} x{base.model.width_mult} on {base.data.dataset}, "
             f"{base.optim.epochs} epochs, batch {base.optim.batch_size}, SGD lr {base.optim.lr} ({base.optim.lr_schedule}), weight decay "
             f"{base.optim.weight_decay}, "
             + (f"label smoothing {base.optim.label_smoothing}, " if base.optim.label_smoothing else "") +
             f"coarse depth {base.model.coarse_depth} width {base.model.coarse_width} kernel "
             f"{base.model.coarse_kernel} norm "
             f"{base.model.coarse_norm} downsample {base.model.coarse_downsample}; split "
             f"{split_text(base.model.balance, splits)}; seeds "
             f"{', '.join(map(str, seeds))}" + (f"; {folds} folds" if folds else "") +
             f". MLflow parent run `{parent_run_id}` (experiment `{base.run.experiment}`).", "",
             evaluation_note(base), "",
             "N = 1 is the original network trained in one process. Accuracies are in %, mean ± standard deviation "
             f"over the runs (seeds{' x folds' if folds else ''}); *speedup* is training samples/s over the N = 1 "
             "baseline's; *acc delta* is the mean final val accuracy minus the baseline's, in points.", "",
             compare.markdown(table),
             "## Accuracy against the original network", "",
             f"*paired diff*: each run's final validation accuracy minus the original network's (N = 1) on the same "
             f"{pairs}, in points: mean ± standard deviation over the *pairs*, and the 95 % confidence interval of "
             f"the mean by Student t (an interval that holds 0 finds no difference). *original acc*: the original's "
             f"mean final accuracy. *time to base acc*: the training seconds (cumulative time per epoch, mean "
             f"curve over the runs) until the mean validation accuracy first reaches the original's mean final "
             f"accuracy, or never.", "",
             compare.paired_markdown(table),
             "![validation accuracy per epoch](val_acc.png)", "",
             "![time per epoch](epoch_time.png)", "",
             "![accuracy vs wall-clock time](acc_vs_time.png)", "",
             f"Reproduce the table: `raypar compare --parent {parent_run_id} --format markdown`."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- the study
def finished_run_id(cfg: TrainConfig, client) -> str | None:
    """The MLflow run id of study run ``cfg`` (paths resolved) if it already finished, else None (no checkpoint yet,
    or an unfinished run that ``fit`` resumes).

    A run is finished when its newest readable checkpoint is at epoch ``cfg.optim.epochs``. A finished run whose
    MLflow run did not end FINISHED (the process died after its last checkpoint) gets its last epoch's metrics
    logged (where missing) and is ended FINISHED.

    Raises:
        UserError: the run trained, or was started for, another number of epochs (the study's name was used with
            another recipe), or its MLflow run is not in this tracking store.
    """
    from ..training.checkpoints import newest_readable_meta
    meta = newest_readable_meta(cfg.run.storage_path, cfg.run.name)
    if meta is None:
        return None
    done = int(meta.get("epoch", 0))
    had = int(((meta.get("config") or {}).get("optim") or {}).get("epochs", 0))
    epochs = cfg.optim.epochs
    if done < had == epochs:
        return None                                         # interrupted: fit resumes it
    if done != epochs or had != epochs:
        raise UserError(f"run {cfg.run.name!r} of this study was {'trained' if done >= had else 'started'} for "
                        f"{had} epochs (it has {done}), and the study asks for {epochs}: give the study another "
                        f"--name, or the epochs it had")
    run_id = meta.get("mlflow_run_id")
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - no such run in this store
        raise UserError(f"run {cfg.run.name!r} finished, but its MLflow run {run_id} is not in "
                        f"{tracking.redact(cfg.run.tracking_uri)}: give the --tracking-uri it was trained with, or "
                        f"the study another --name") from None
    if run.info.status != "FINISHED":
        tracking.log_metrics(cfg.run.tracking_uri, run_id, meta.get("metrics") or {}, step=done)
        tracking.close_run(cfg.run.tracking_uri, run_id)
    return run_id


def run_study(base: TrainConfig, subnets: list[int], iterations: list[int], seeds: list[int], name: str | None,
              out: str | None, init_ray: Callable, fit: Callable | None = None,
              splits: dict[int, list[int]] | None = None, quiet: Callable | None = None) -> int:
    """Train every run of the study (those already finished are kept), then write its report; returns the exit code.

    ``quiet``: called with the study's name before the tracking store or Ray is touched, to send Ray's and MLflow's
    own log lines off the console."""
    from mlflow.tracking import MlflowClient
    from rich.console import Console

    check(base, subnets, iterations, seeds)
    base = base.resolved()
    name = name or f"{(base.run.recipe or base.model.name).split('@')[0]}-{base.data.dataset.split(':')[0]}"
    out = os.path.abspath(out or os.path.join("studies", name))
    plan(base, subnets, iterations, seeds, name, splits=splits)  # every run's settings are valid
    make_output_dir(out)
    if quiet is not None:
        quiet(name)
    tracking.check_reachable(base.run.tracking_uri)
    init_ray(base.replace(subnets=max(subnets)))
    if fit is None:
        from ..training.launch import fit
    parent = open_parent(base, name, subnets, iterations, seeds)
    runs = plan(base, subnets, iterations, seeds, name, parent, splits)
    console = Console()
    console.print(f"study {name!r}: {len(runs)} runs (MLflow parent run {parent}, experiment {base.run.experiment!r})")
    width = max(28, *(len(cfg.run.name) for cfg in runs))
    print(f"{'run':{width}s} {'N':>2s} {'K':>2s} {'seed':>4s} {'fold':>4s} {'final val acc':>14s} {'best':>7s} "
          f"{'s/epoch':>8s} {'samples/s':>10s}", flush=True)
    client = MlflowClient(base.run.tracking_uri)
    try:
        for cfg in runs:
            run_id = finished_run_id(cfg, client)
            reused = run_id is not None                     # finished before: not trained again
            if not reused:
                run_id = fit(cfg).run_id
            s = compare.summarize(client, client.get_run(run_id))
            fold = str(cfg.data.fold) if cfg.data.folds else "-"
            print(f"{cfg.run.name:{width}s} {cfg.model.subnets:2d} {cfg.model.iterations:2d} {cfg.optim.seed:4d} "
                  f"{fold:>4s} {100 * s.final_val_acc:13.2f}% {100 * s.best_val_acc:6.2f}% {s.epoch_time_s:8.1f} "
                  f"{s.samples_per_s:10.0f}" + ("  (finished before)" if reused else ""), flush=True)
        summaries = compare.finished_runs(base.run.tracking_uri, parent=parent)
        table = compare.rows(summaries)
        os.makedirs(out, exist_ok=True)
        plots(summaries, out, f"{name}: {base.model.name} x{base.model.width_mult} on {base.data.dataset}")
        with open(os.path.join(out, "report.md"), "w") as f:
            f.write(report(table, base, name, parent, seeds, splits))
        with open(os.path.join(out, "results.json"), "w") as f:
            f.write(compare.render(table, "json"))
        tracking.log_artifacts(base.run.tracking_uri, parent, out)
    except (KeyboardInterrupt, SystemExit) as e:     # Ctrl-C: the study ends here, KILLED, as its run did
        tracking.close_run(base.run.tracking_uri, parent, e, reason=tracking.INTERRUPTED)
        raise
    except BaseException as e:
        tracking.close_run(base.run.tracking_uri, parent, e)
        raise
    tracking.close_run(base.run.tracking_uri, parent)
    Console(width=200).print(compare.rich_table(table, f"study {name}: accuracy in %, speedup vs N = 1"))
    console.print(f"report: {os.path.join(out, 'report.md')} (plots beside it; also on MLflow run {parent})")
    print(f"raypar: study finished: parent run {parent}")
    return 0
