"""``raypar compare``: one row per configuration of the finished runs in an MLflow experiment (or of one study).

Runs are grouped by what defines a configuration — the recipe (model, width, data set, epochs, batch size, LR,
schedule, weight decay) and the parareal layout (N, K, replicas, coarse design) — so the seeds of one configuration
fall into one row. Each row is set against the N = 1 baseline of the same recipe: speedup = its samples/s over the
baseline's (training throughput), accuracy delta = its mean final val accuracy minus the baseline's. Works on any
MLflow store (``search_runs``): a local SQLite file or a tracking server.
"""
from __future__ import annotations

import csv
import io
import json
import os
import statistics
from dataclasses import asdict, dataclass, field

from ..errors import UserError

RECIPE_KEYS = ("model", "width_mult", "norm", "dataset", "epochs", "batch_size", "lr", "lr_schedule", "weight_decay")
LAYOUT_KEYS = ("num_subnets", "iterations", "replicas", "coarse_depth", "coarse_width", "coarse_kernel",
               "coarse_norm", "coarse_downsample")


@dataclass
class RunSummary:
    """What a comparison needs of one finished run."""
    run_id: str
    params: dict
    seed: int
    best_val_acc: float
    final_val_acc: float
    epoch_time_s: float            # mean over its epochs
    samples_per_s: float           # mean over its epochs
    history: dict = field(default_factory=dict)   # metric -> [(epoch, value)] for val_acc and epoch_time_s

    @property
    def recipe_key(self) -> tuple:
        return tuple(self.params.get(k, "") for k in RECIPE_KEYS)

    @property
    def key(self) -> tuple:
        return self.recipe_key + tuple(self.params.get(k, "") for k in LAYOUT_KEYS)


@dataclass
class Row:
    model: str
    dataset: str
    n: int
    k: int
    replicas: int
    recipe: str
    seeds: list[int]
    best_val_acc: float
    best_val_acc_std: float
    final_val_acc: float
    final_val_acc_std: float
    epoch_time_s: float
    samples_per_s: float
    speedup: float | None           # samples/s over the N = 1 baseline's; None without a baseline
    acc_delta: float | None         # mean final val accuracy minus the baseline's (fraction, not points)
    run_ids: list[str]


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(client, run) -> RunSummary:
    hist = {key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            for key in ("val_acc", "epoch_time_s", "samples_per_s")}
    if not hist["val_acc"]:
        raise ValueError("no val_acc")
    return RunSummary(run.info.run_id, dict(run.data.params), int(run.data.params.get("seed", 0)),
                      max(v for _, v in hist["val_acc"]), hist["val_acc"][-1][1],
                      statistics.fmean(v for _, v in hist["epoch_time_s"]) if hist["epoch_time_s"] else 0.0,
                      statistics.fmean(v for _, v in hist["samples_per_s"]) if hist["samples_per_s"] else 0.0,
                      {"val_acc": hist["val_acc"], "epoch_time_s": hist["epoch_time_s"]})


def finished_runs(tracking_uri: str, experiment: str | None = None, parent: str | None = None) -> list[RunSummary]:
    """The FINISHED training runs of ``experiment`` (default ``raypar``), or of the study with parent run ``parent``."""
    from mlflow.tracking import MlflowClient
    from ..training.tracking import PARENT_TAG
    path = tracking_uri[len("sqlite:///"):] if tracking_uri.startswith("sqlite:///") else None
    if path is not None and not os.path.exists(path):
        # reading must not create an empty database (and its folders) where a typo points
        raise UserError(f"no MLflow database at {path} ({tracking_uri}): check --tracking-uri / MLFLOW_TRACKING_URI, "
                        f"or train a run first")
    client = MlflowClient(tracking_uri)
    try:
        if parent:
            exp_ids = [client.get_run(parent).info.experiment_id]
            query = f"tags.`{PARENT_TAG}` = '{parent}'"
        else:
            exp = client.get_experiment_by_name(experiment or "raypar")
            if exp is None:
                raise UserError(f"no MLflow experiment {experiment or 'raypar'!r} in {tracking_uri}")
            exp_ids, query = [exp.experiment_id], ""
        runs = client.search_runs(exp_ids, query, max_results=50_000)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - an unreachable store or unknown run id: one line for the user
        raise UserError(f"cannot read MLflow at {tracking_uri!r}: {str(e).splitlines()[0][:200]}") from None
    out = []
    for run in runs:
        if run.info.status != "FINISHED" or "num_subnets" not in run.data.params:
            continue                           # running/failed runs and studies' parent runs are not compared
        try:
            out.append(summarize(client, run))
        except ValueError:
            continue
    return out


def rows(runs: list[RunSummary]) -> list[Row]:
    """One row per configuration, sorted by recipe, then N, K and replicas; each set against its N = 1 baseline."""
    groups: dict[tuple, list[RunSummary]] = {}
    for r in runs:
        groups.setdefault(r.key, []).append(r)
    base: dict[tuple, tuple[float, float]] = {}     # recipe -> (samples/s, final acc) of its N = 1, K = 1 runs
    for rs in groups.values():
        p = rs[0].params
        if p.get("num_subnets") == "1" and p.get("replicas", "1") == "1":
            base[rs[0].recipe_key] = (statistics.fmean(r.samples_per_s for r in rs),
                                      statistics.fmean(r.final_val_acc for r in rs))
    out = []
    for rs in groups.values():
        p = rs[0].params
        best, best_sd = _mean_std([r.best_val_acc for r in rs])
        final, final_sd = _mean_std([r.final_val_acc for r in rs])
        sps = statistics.fmean(r.samples_per_s for r in rs)
        b = base.get(rs[0].recipe_key)
        out.append(Row(p.get("model", "?"), p.get("dataset", "?"), int(p["num_subnets"]),
                       int(p.get("iterations", 1)), int(p.get("replicas", 1)),
                       p["recipe"] if p.get("recipe") not in (None, "", "None") else "-",
                       sorted(r.seed for r in rs), best, best_sd, final, final_sd,
                       statistics.fmean(r.epoch_time_s for r in rs), sps,
                       sps / b[0] if b and b[0] else None, final - b[1] if b else None,
                       [r.run_id for r in rs]))
    out.sort(key=lambda r: (r.model, r.dataset, r.recipe, r.n, r.k, r.replicas))
    return out


COLUMNS = ("model", "dataset", "N", "K", "R", "recipe", "seeds", "best val acc", "final val acc", "s/epoch",
           "samples/s", "speedup", "acc delta")


def _cells(r: Row) -> list[str]:
    return [r.model, r.dataset, str(r.n), str(r.k), str(r.replicas), r.recipe, ",".join(map(str, r.seeds)),
            f"{100 * r.best_val_acc:.2f} ± {100 * r.best_val_acc_std:.2f}",
            f"{100 * r.final_val_acc:.2f} ± {100 * r.final_val_acc_std:.2f}", f"{r.epoch_time_s:.1f}",
            f"{r.samples_per_s:.0f}", "-" if r.speedup is None else f"{r.speedup:.2f}x",
            "-" if r.acc_delta is None else f"{100 * r.acc_delta:+.2f}"]


def markdown(table: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in table]
    return "\n".join(lines) + "\n"


def render(table: list[Row], fmt: str) -> str:
    if fmt == "markdown":
        return markdown(table)
    if fmt == "json":
        return json.dumps([asdict(r) for r in table], indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        fields = [f for f in Row.__dataclass_fields__ if f != "run_ids"]
        w = csv.DictWriter(buf, fields + ["run_ids"])
        w.writeheader()
        for r in table:
            d = asdict(r)
            w.writerow(dict(d, seeds=" ".join(map(str, r.seeds)), run_ids=" ".join(r.run_ids)))
        return buf.getvalue()
    raise UserError(f"unknown format {fmt!r}; choose table, markdown, csv or json")


def rich_table(table: list[Row], title: str):
    from rich.table import Table
    t = Table(title=title)
    for col in COLUMNS:
        t.add_column(col, justify="left" if col in ("model", "dataset", "recipe", "seeds") else "right")
    for r in table:
        t.add_row(*_cells(r))
    return t


def cmd_compare(tracking_uri: str, experiment: str | None, parent: str | None, fmt: str) -> int:
    table = rows(finished_runs(tracking_uri, experiment, parent))
    if not table:
        where = f"study {parent}" if parent else f"experiment {experiment or 'raypar'!r}"
        raise UserError(f"no finished training runs in {where} of {tracking_uri}")
    if fmt == "table":
        from rich.console import Console
        Console(width=200).print(rich_table(table, "accuracy in %, speedup = samples/s over the N = 1 baseline's"))
    else:
        print(render(table, fmt), end="")
    return 0
