"""MLflow: one run per training run, opened by the CLI, written to by the driver of rank 0, closed by the CLI.

A run resumed from a checkpoint (same ``--name`` and ``--storage-path``) continues the same MLflow run: its id is
kept in every checkpoint's ``raypar_meta.json``.
"""
from __future__ import annotations

import json
import os
import platform
import time

from .errors import UserError

RUN_KEY_TAG = "raypar.run_key"
META_FILE = "raypar_meta.json"
STATE_FILE = "state.pt"


def _fs(path: str):
    import pyarrow.fs
    if "://" in path:
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), path


def checkpoints(storage_path: str, name: str) -> list:
    """Every checkpoint of run ``name`` under ``storage_path`` as ``ray.train.Checkpoint``, newest first."""
    import pyarrow.fs
    from ray.train import Checkpoint
    fs, root = _fs(storage_path.rstrip("/") + "/" + name)
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    except OSError:
        return []
    dirs = sorted((i.path for i in infos if i.type == pyarrow.fs.FileType.Directory
                   and i.base_name.startswith("checkpoint_")), reverse=True)
    return [Checkpoint(d, filesystem=fs) for d in dirs]


def latest_meta(storage_path: str, name: str) -> dict | None:
    """The metadata of the newest checkpoint of run ``name`` that has one, or None."""
    for ckpt in checkpoints(storage_path, name):
        try:
            with ckpt.filesystem.open_input_stream(ckpt.path + "/" + META_FILE) as f:
                return json.loads(f.read().decode())
        except (OSError, ValueError):
            continue                                        # a torn checkpoint: fall back to the one before
    return None


def check_reachable(tracking_uri: str, timeout_s: float = 10.0) -> None:
    """Fail with one line, before anything starts, when an HTTP tracking server does not answer."""
    import urllib.error
    import urllib.request
    if not tracking_uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout_s).close()
    except (urllib.error.URLError, OSError) as e:
        raise UserError(f"cannot reach the MLflow tracking server {tracking_uri}: {getattr(e, 'reason', e)}; "
                        f"check --tracking-uri / MLFLOW_TRACKING_URI") from None


def connect(tracking_uri: str, experiment: str):
    """Set the tracking URI and experiment; fail with a one-line error when the store cannot be reached."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri)        # never mlflow.set_tracking_uri: it rewrites the process environment
    try:
        exp = client.get_experiment_by_name(experiment)
        return exp.experiment_id if exp else client.create_experiment(experiment)
    except Exception as e:  # noqa: BLE001 - any failure here means the store is unusable
        raise UserError(f"cannot reach the MLflow tracking store {tracking_uri!r}: "
                        f"{str(e).splitlines()[0][:200]}") from None


def params_of(cfg) -> dict:
    import ray
    import torch
    p = {k: v for k, v in cfg.to_dict().items() if k not in ("extra", "tracking_uri", "address")}
    p["num_subnets"] = p.pop("subnets")
    p["balance"] = ",".join(map(str, p["balance"])) if isinstance(p["balance"], list) else p["balance"]
    p.update(replicas=1, torch_version=torch.__version__, ray_version=ray.__version__,
             python_version=platform.python_version())
    return p


def open_run(cfg) -> tuple[str, bool]:
    """Create the MLflow run for ``cfg`` or, when resuming from a checkpoint, reopen its run. Returns (id, resumed)."""
    from mlflow.tracking import MlflowClient
    exp_id = connect(cfg.tracking_uri, cfg.experiment)
    client = MlflowClient(cfg.tracking_uri)
    meta = latest_meta(cfg.storage_path, cfg.name)
    if meta and meta.get("mlflow_run_id"):
        try:
            client.update_run(meta["mlflow_run_id"], status="RUNNING")
            return meta["mlflow_run_id"], True
        except Exception:  # noqa: BLE001 - the old run is gone from this store: start a fresh one
            pass
    run = client.create_run(exp_id, run_name=cfg.run_name or cfg.name,
                            tags={RUN_KEY_TAG: f"{cfg.storage_path}/{cfg.name}"})
    from mlflow.entities import Param
    params = [Param(k, str(v)) for k, v in params_of(cfg).items()]
    client.log_batch(run.info.run_id, params=params)
    return run.info.run_id, False


def log_metrics(tracking_uri: str, run_id: str, metrics: dict, step: int) -> None:
    """Log ``metrics`` at ``step``, skipping any already logged there: a run resumed from an older checkpoint (or
    after a crash between checkpoint and logging) never logs a step twice."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri)
    ts = int(time.time() * 1000)
    todo = [Metric(k, float(v), ts, step) for k, v in metrics.items()
            if step not in {m.step for m in client.get_metric_history(run_id, k)}]
    if todo:
        client.log_batch(run_id, metrics=todo)


def count_start(tracking_uri: str, run_id: str) -> int:
    """Count one more start of the training loop in the run's tags; returns the number of restarts so far."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri)
    starts = int(client.get_run(run_id).data.tags.get("raypar.starts", "0")) + 1
    client.set_tag(run_id, "raypar.starts", str(starts))
    client.set_tag(run_id, "raypar.restarts", str(starts - 1))
    return starts - 1


def log_artifacts(tracking_uri: str, run_id: str, folder: str) -> None:
    from mlflow.tracking import MlflowClient
    MlflowClient(tracking_uri).log_artifacts(run_id, folder)


def close_run(tracking_uri: str, run_id: str, error: BaseException | None = None) -> None:
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri)
    if error is not None:
        client.set_tag(run_id, "raypar.error", f"{type(error).__name__}: {str(error)[:4000]}")
    client.set_terminated(run_id, status="FAILED" if error is not None else "FINISHED")


def write_meta(folder: str, meta: dict) -> None:
    with open(os.path.join(folder, META_FILE), "w") as f:
        json.dump(meta, f)
