"""``raypar compare``: one row per configuration of the finished runs in an MLflow experiment (or of one study).

Runs are grouped by what defines a configuration — the recipe (model, width, data set, number of cross-validation
folds, epochs, batch size, LR, schedule, weight decay, label smoothing) and the parareal layout (N, K, replicas,
coarse design) — so the seeds and folds of one configuration fall into one row. Each row is set against the N = 1
baseline (the original network) of the same recipe:

- speedup: its samples/s over the baseline's (training throughput);
- acc delta: its mean final val accuracy minus the baseline's;
- paired difference: its final val accuracy minus the baseline's on the same fold and seed, over every such pair —
  their number, mean, standard deviation and 95 % confidence interval (Student t; :func:`paired`);
- time to accuracy: the training seconds (cumulative ``epoch_time_s``) until its mean validation curve first
  reaches the baseline's mean final accuracy (:func:`time_to_accuracy`), or never.

Works on any MLflow store (``search_runs``): a local SQLite file or a tracking server.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from dataclasses import asdict, dataclass, field

from ..errors import UserError

RECIPE_KEYS = ("model", "width_mult", "norm", "dataset", "folds", "epochs", "batch_size", "lr", "lr_schedule",
               "weight_decay", "label_smoothing")
LAYOUT_KEYS = ("num_subnets", "iterations", "replicas", "coarse_depth", "coarse_width", "coarse_kernel",
               "coarse_norm", "coarse_downsample")
# what a run logged before these settings existed ran with
_PARAM_DEFAULTS = {"folds": "0", "fold": "0", "label_smoothing": "0.0"}

# t(0.975, df) of Student's t for df = 1..30, where scipy is not installed
_T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
         2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
         2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` >= 1 degrees of freedom (the half-width factor of a two-sided
    95 % interval): from ``scipy.stats`` where it is importable, else from a table for df 1..30 and, beyond, the
    Cornish-Fisher expansion around the normal quantile (within 1e-5 of the exact value).

    Raises:
        ValueError: ``df`` < 1.
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    try:
        from scipy.stats import t
    except ImportError:
        if df <= len(_T975):
            return _T975[df - 1]
        z = 1.959963984540054
        return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
                + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))
    return float(t.ppf(0.975, df))


def paired(diffs: list[float]) -> tuple[int, float, float | None, float | None, float | None]:
    """Statistics of paired differences: ``(n, mean, std, lo, hi)``.

    ``std`` is the sample standard deviation (n - 1 in the denominator) and ``[lo, hi]`` the 95 % confidence
    interval of the mean by Student t: ``mean -+ t(0.975, n - 1) * std / sqrt(n)``. With one difference, ``std``,
    ``lo`` and ``hi`` are None (undefined).

    Raises:
        ValueError: no differences.
    """
    n = len(diffs)
    if n == 0:
        raise ValueError("no paired differences")
    mean = statistics.fmean(diffs)
    if n == 1:
        return 1, mean, None, None, None
    std = statistics.stdev(diffs)
    half = t975(n - 1) * std / math.sqrt(n)
    return n, mean, std, mean - half, mean + half


def time_to_accuracy(val_acc: list[tuple[int, float]], epoch_time_s: list[tuple[int, float]],
                     target: float) -> float | None:
    """The training seconds until a validation curve first reaches ``target``: the sum of ``epoch_time_s`` over the
    epochs up to and including the first whose ``val_acc`` is >= ``target`` (to within 1e-9, so that a curve
    reaches its own mean), or None when no epoch does. Both curves are ``[(epoch, value)]``; an epoch without a
    time counts 0 s."""
    times = dict(epoch_time_s)
    clock = 0.0
    for epoch, acc in sorted(val_acc):
        clock += times.get(epoch, 0.0)
        if acc >= target - 1e-9:
            return clock
    return None


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
    def fold(self) -> int:
        """The fold that validated the run (0 without cross-validation)."""
        return int(self.params.get("fold", _PARAM_DEFAULTS["fold"]))

    @property
    def pair_key(self) -> tuple[int, int]:
        """``(fold, seed)``: runs of one recipe with the same pair key trained and validated on the same data."""
        return self.fold, self.seed

    @property
    def recipe_key(self) -> tuple:
        return tuple(self.params.get(k, _PARAM_DEFAULTS.get(k, "")) for k in RECIPE_KEYS)

    @property
    def key(self) -> tuple:
        return self.recipe_key + tuple(self.params.get(k, "") for k in LAYOUT_KEYS)


def mean_curve(runs: list[RunSummary], key: str) -> list[tuple[int, float]]:
    """The mean over ``runs`` of a per-epoch metric of their ``history`` (``val_acc``, ``epoch_time_s``), over the
    epochs every run has: ``[(epoch, mean)]`` (empty for no runs)."""
    if not runs:
        return []
    epochs = sorted(set.intersection(*[{e for e, _ in r.history.get(key, [])} for r in runs]))
    return [(e, statistics.fmean(dict(r.history[key])[e] for r in runs)) for e in epochs]


@dataclass
class Row:
    """One configuration: its runs (seeds x folds) summarized and set against the N = 1 baseline of its recipe.

    Accuracies are fractions, not points. The ``pair_*`` fields are None for the baseline itself, without a
    baseline, or where no run has a baseline run of the same (fold, seed); ``pair_std``, ``pair_lo`` and
    ``pair_hi`` are None with a single pair."""
    model: str                      # the model and its width, e.g. "vgg11 x0.25"
    dataset: str
    n: int
    k: int
    replicas: int
    recipe: str
    seeds: list[int]                # the distinct seeds
    best_val_acc: float
    best_val_acc_std: float
    final_val_acc: float
    final_val_acc_std: float
    epoch_time_s: float
    samples_per_s: float
    speedup: float | None           # samples/s over the N = 1 baseline's; None without a baseline
    acc_delta: float | None         # mean final val accuracy minus the baseline's (fraction, not points)
    run_ids: list[str]
    folds: int = 0                  # cross-validation folds F (0: the data set's own validation split)
    runs: int = 0                   # runs in the row: one per (seed, fold) trained
    base_val_acc: float | None = None        # the baseline's mean final val accuracy (None: no baseline)
    pairs: int | None = None                 # runs matched to a baseline run of the same (fold, seed)
    pair_mean: float | None = None           # mean of (final val acc - the baseline's) over the pairs
    pair_std: float | None = None            # their sample standard deviation
    pair_lo: float | None = None             # 95 % confidence interval of pair_mean (Student t)
    pair_hi: float | None = None
    time_to_base_acc_s: float | None = None  # training seconds until the mean val curve reaches base_val_acc
    reaches_base_acc: bool | None = None     # whether it ever does (None: no baseline)


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


def _is_baseline(r: RunSummary) -> bool:
    return r.params.get("num_subnets") == "1" and r.params.get("replicas", "1") == "1"


def rows(runs: list[RunSummary]) -> list[Row]:
    """One row per configuration, sorted by recipe, then N, K and replicas; each set against its baseline: the
    original network's runs of the same recipe (N = 1, one replica). A paired difference matches a run to the
    baseline's run of the same (fold, seed) — the mean of several, if the baseline ran that pair more than once —
    and a run without a match is left out of the pairs."""
    groups: dict[tuple, list[RunSummary]] = {}
    for r in runs:
        groups.setdefault(r.key, []).append(r)
    base_runs: dict[tuple, list[RunSummary]] = {}        # recipe -> its N = 1, R = 1 runs
    for r in runs:
        if _is_baseline(r):
            base_runs.setdefault(r.recipe_key, []).append(r)
    base: dict[tuple, tuple[float, float]] = {}          # recipe -> (samples/s, mean final acc) of the baseline
    base_by_pair: dict[tuple, dict[tuple, float]] = {}   # recipe -> (fold, seed) -> the baseline's final acc
    for recipe, rs in base_runs.items():
        base[recipe] = (statistics.fmean(r.samples_per_s for r in rs), statistics.fmean(r.final_val_acc for r in rs))
        by_pair: dict[tuple, list[float]] = {}
        for r in rs:
            by_pair.setdefault(r.pair_key, []).append(r.final_val_acc)
        base_by_pair[recipe] = {k: statistics.fmean(v) for k, v in by_pair.items()}
    out = []
    for rs in groups.values():
        p = rs[0].params
        best, best_sd = _mean_std([r.best_val_acc for r in rs])
        final, final_sd = _mean_std([r.final_val_acc for r in rs])
        sps = statistics.fmean(r.samples_per_s for r in rs)
        b = base.get(rs[0].recipe_key)
        model = p.get("model", "?") + (f" x{float(p['width_mult']):g}" if p.get("width_mult") else "")
        row = Row(model, p.get("dataset", "?"), int(p["num_subnets"]),
                  int(p.get("iterations", 1)), int(p.get("replicas", 1)),
                  p["recipe"] if p.get("recipe") not in (None, "", "None") else "-",
                  sorted({r.seed for r in rs}), best, best_sd, final, final_sd,
                  statistics.fmean(r.epoch_time_s for r in rs), sps,
                  sps / b[0] if b and b[0] else None, final - b[1] if b else None,
                  [r.run_id for r in rs], folds=int(p.get("folds", _PARAM_DEFAULTS["folds"])), runs=len(rs))
        if b:
            row.base_val_acc = b[1]
            t = time_to_accuracy(mean_curve(rs, "val_acc"), mean_curve(rs, "epoch_time_s"), b[1])
            row.time_to_base_acc_s, row.reaches_base_acc = t, t is not None
            matched = base_by_pair[rs[0].recipe_key]
            diffs = [r.final_val_acc - matched[r.pair_key] for r in rs if r.pair_key in matched]
            if diffs and not _is_baseline(rs[0]):
                row.pairs, row.pair_mean, row.pair_std, row.pair_lo, row.pair_hi = paired(diffs)
        out.append(row)
    out.sort(key=lambda r: (r.model, r.dataset, r.recipe, r.folds, r.n, r.k, r.replicas))
    return out


COLUMNS = ("model", "dataset", "N", "K", "R", "recipe", "seeds", "folds", "best val acc", "final val acc",
           "s/epoch", "samples/s", "speedup", "acc delta", "pairs", "paired diff", "95% CI", "time to base acc")
PAIRED_COLUMNS = ("model", "dataset", "N", "K", "R", "recipe", "folds", "original acc", "final val acc", "pairs",
                  "paired diff", "95% CI", "s/epoch", "time to base acc")


def _points(x: float | None, sign: bool = True) -> str:
    return "-" if x is None else f"{100 * x:+.2f}" if sign else f"{100 * x:.2f}"


def _paired_cells(r: Row) -> dict[str, str]:
    """The cells of the paired and time-to-accuracy columns (accuracy differences in points)."""
    if r.pair_mean is None:
        diff = ci = "-"
    else:
        diff = _points(r.pair_mean) + ("" if r.pair_std is None else f" ± {100 * r.pair_std:.2f}")
        ci = "-" if r.pair_lo is None else f"[{_points(r.pair_lo)}, {_points(r.pair_hi)}]"
    time = ("-" if r.reaches_base_acc is None else "never" if not r.reaches_base_acc
            else f"{r.time_to_base_acc_s:.1f} s")
    return {"pairs": "-" if r.pairs is None else str(r.pairs), "paired diff": diff, "95% CI": ci,
            "time to base acc": time, "folds": str(r.folds) if r.folds else "-",
            "original acc": _points(r.base_val_acc, sign=False)}


def _cells(r: Row) -> list[str]:
    extra = _paired_cells(r)
    return [r.model, r.dataset, str(r.n), str(r.k), str(r.replicas), r.recipe, ",".join(map(str, r.seeds)),
            extra["folds"], f"{100 * r.best_val_acc:.2f} ± {100 * r.best_val_acc_std:.2f}",
            f"{100 * r.final_val_acc:.2f} ± {100 * r.final_val_acc_std:.2f}", f"{r.epoch_time_s:.1f}",
            f"{r.samples_per_s:.0f}", "-" if r.speedup is None else f"{r.speedup:.2f}x",
            "-" if r.acc_delta is None else f"{100 * r.acc_delta:+.2f}",
            extra["pairs"], extra["paired diff"], extra["95% CI"], extra["time to base acc"]]


def _md_table(columns: tuple, cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    return "\n".join(lines) + "\n"


def markdown(table: list[Row]) -> str:
    """The table as Markdown, one row per configuration (:data:`COLUMNS`)."""
    return _md_table(COLUMNS, [_cells(r) for r in table])


def paired_markdown(table: list[Row]) -> str:
    """The paired comparison as Markdown (:data:`PAIRED_COLUMNS`): every row's accuracy against the original
    network's of the same recipe — in %, differences in points — and its time to the original's mean accuracy."""
    out = []
    for r in table:
        c = _paired_cells(r)
        out.append([r.model, r.dataset, str(r.n), str(r.k), str(r.replicas), r.recipe, c["folds"],
                    c["original acc"], f"{100 * r.final_val_acc:.2f} ± {100 * r.final_val_acc_std:.2f}",
                    c["pairs"], c["paired diff"], c["95% CI"], f"{r.epoch_time_s:.1f}", c["time to base acc"]])
    return _md_table(PAIRED_COLUMNS, out)


def render(table: list[Row], fmt: str) -> str:
    """The table as ``markdown``, ``json`` (a list of :class:`Row` as objects; accuracies as fractions) or ``csv``
    (the same fields, lists space-separated).

    Raises:
        UserError: another format.
    """
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


TITLE = ("accuracy in %, speedup = samples/s over the N = 1 baseline's; paired diff = final val accuracy minus the "
         "baseline's on the same fold and seed (points, mean ± std, 95% CI by Student t)")


def cmd_compare(tracking_uri: str, experiment: str | None, parent: str | None, fmt: str) -> int:
    table = rows(finished_runs(tracking_uri, experiment, parent))
    if not table:
        where = f"study {parent}" if parent else f"experiment {experiment or 'raypar'!r}"
        raise UserError(f"no finished training runs in {where} of {tracking_uri}")
    if fmt == "table":
        from rich.console import Console
        Console(width=240).print(rich_table(table, TITLE))
    else:
        print(render(table, fmt), end="")
    return 0
