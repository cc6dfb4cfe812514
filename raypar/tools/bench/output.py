"""What the benchmark reports: the rich table, the machine's environment, ``bench.json``, ``bench.png`` and the
MLflow run."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict

import torch

from ...engine.cost import cpu_cores
from .config import BenchConfig


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _ms(values: list[float]) -> str:
    return " / ".join(f"{v:.0f}" for v in values) + " ms"


def table(rows: list[dict], cfg: BenchConfig):
    from rich.table import Table
    t = Table(title=f"{cfg.model} x{cfg.width_mult}{', channels-last' if cfg.channels_last else ''}"
                    f"{', amp ' + cfg.amp if cfg.amp != 'off' else ''}, "
                    f"batch {cfg.batch}, median of {cfg.steps} steps after "
                    f"{cfg.warmup} warm-up, 1 thread per process"
                    f"{f'; the median of {cfg.rounds} rounds (x orig: min–max over them)' if cfg.rounds > 1 else ''}",
              caption=_errors(rows) or None)
    gpu = any(r.get("gpu_peak_mb") for r in rows)
    for c in ("contender", "procs", "samples/s", "x orig", "step ms", "peak RSS MB (idle)",
              *(["GPU peak MB"] if gpu else []), "driver ms", "fine max ms", "transfer ms", "MB/step (min)", "limit",
              "eff"):
        t.add_column(c, justify="left" if c == "contender" else "right")
    for r in rows:
        if r.get("error"):
            t.add_row(r["contender"], *["-"] * (10 + gpu), "[red]error[/red]")
            continue
        mb = f"{r['bytes_per_step'] / 2**20:.2f} ({r['bytes_min'] / 2**20:.2f})" if "bytes_min" in r else "-"
        ratio = _fmt(r["ratio_vs_original"], ".2f")
        if len(r.get("ratio_rounds") or []) > 1:
            ratio += f" ({min(r['ratio_rounds']):.2f}–{max(r['ratio_rounds']):.2f})"
        t.add_row(r["contender"], str(r["processes"]), f"{r['samples_per_s']:.1f}", ratio, f"{r['step_ms']:.1f}",
                  f"{_fmt(r['peak_rss_mb'], '.0f')} ({_fmt(r['idle_rss_mb'], '.0f')})",
                  *([_fmt(r.get("gpu_peak_mb"), ".0f")] if gpu else []), _fmt(r.get("driver_ms"), ".1f"),
                  _fmt(r.get("fine_max_ms"), ".1f"), _fmt(r.get("transfer_ms"), ".1f"), mb,
                  _fmt(r.get("parallel_limit"), ".2f"), _fmt(r.get("efficiency"), ".0%"))
    return t


def _errors(rows: list[dict]) -> str:
    return "\n".join(f"{r['contender']}: {r['error']}" for r in rows if r.get("error"))


def environment() -> dict:
    import platform

    import ray
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() \
        else []
    return {"torch": torch.__version__, "ray": ray.__version__, "python": platform.python_version(),
            "cpu_cores": cpu_cores(), "threads_per_process": 1, "load_average_at_start": os.getloadavg(),
            "gpus": gpus}


def write_json(rows: list[dict], cfg: BenchConfig, env: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump({"config": asdict(cfg), "environment": env, "rows": rows}, f, indent=2)


def write_png(rows: list[dict], cfg: BenchConfig, path: str) -> None:
    """Two bar charts: samples/s, and peak RSS per process split into an idle process's share and the rest."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [r["contender"] for r in rows]
    speed = [r["samples_per_s"] or 0.0 for r in rows]
    peak = [r["peak_rss_mb"] or 0.0 for r in rows]
    idle = [min(r.get("idle_rss_mb") or 0.0, p) for r, p in zip(rows, peak)]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    bars = a.bar(names, speed, color=["#888" if n == "original" else "#3a7" for n in names])
    a.bar_label(bars, labels=["error" if r.get("error") else f"{v:.0f}" for r, v in zip(rows, speed)])
    a.set_title("training samples/s (higher is better)", fontsize=10)
    b.bar(names, idle, color="#ccc", label="idle process (Python + Ray + torch)")
    bars = b.bar(names, [p - i for p, i in zip(peak, idle)], bottom=idle, color="#37a", label="added by training")
    b.bar_label(bars, labels=["error" if r.get("error") else f"{v:.0f}" for r, v in zip(rows, peak)])
    b.set_title("peak RSS of the largest process, MB", fontsize=10)
    b.legend(loc="lower left", fontsize=8, framealpha=0.9)
    for ax in (a, b):
        ax.tick_params(axis="x", rotation=30)
        ax.margins(y=0.12)
    fig.suptitle(f"{cfg.model} x{cfg.width_mult}, batch {cfg.batch}, 1 thread per process, {cpu_cores()} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def log_mlflow(rows: list[dict], cfg: BenchConfig, folder: str, tracking_uri: str,
               experiment: str = "raypar-bench") -> str:
    """One MLflow run: the configuration as params, ``<contender>.<metric>`` metrics, the JSON and PNG."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from ...training.tracking import connect
    client = MlflowClient(tracking_uri)
    run = client.create_run(connect(tracking_uri, experiment), run_name=f"bench-{cfg.model}-b{cfg.batch}")
    rid, ts = run.info.run_id, int(time.time() * 1000)
    params = {k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in asdict(cfg).items()}
    metrics = [Metric(f"{r['contender']}.{k}", float(v), ts, 0) for r in rows for k, v in r.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    client.log_batch(rid, params=[Param(k, str(v)) for k, v in params.items()], metrics=metrics)
    for name in ("bench.json", "bench.png"):
        client.log_artifact(rid, os.path.join(folder, name))
    client.set_terminated(rid)
    return rid
