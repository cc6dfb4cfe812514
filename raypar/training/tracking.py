"""MLflow: one run per training run, opened by the CLI, written to by the driver of rank 0, closed by the CLI.

A run resumed from a checkpoint (same ``--name`` and ``--storage-path``) continues the same MLflow run: its id is
kept in every checkpoint's ``raypar_meta.json``.
"""
from __future__ import annotations

import json
import os
import platform
import re
import time

from ..environ import env_default
from ..errors import UserError

RUN_KEY_TAG = "raypar.run_key"
PARENT_TAG = "mlflow.parentRunId"          # MLflow's own nesting tag: the UI shows the runs under their parent
# MLflow prints "View run ... at: <tracking URI>" (a password in the URI included) when a run against a tracking
# server ends: never in this process or a worker that logs
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
META_FILE = "raypar_meta.json"
STARTED_OVER_TAG = "raypar.started_over_from"   # a run whose checkpoints were all torn: the MLflow run it replaces
INTERRUPTED = "interrupted"
STOPPED_TAG = "raypar.stopped"     # why the driver ended a run for good (a non-finite loss); "" while it runs
STATE_FILE = "state.pt"

# scheme://user:password@host -> scheme://user:***@host (scheme://token@host -> scheme://***@host), and the values of
# query parameters that look like secrets (?token=..., &password=..., X-Amz-Signature=...)
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s/@:?#]*)(?P<password>:[^\s/@?#]*)?@")
_SECRET_QUERY = re.compile(r"(?P<key>[?&][^\s=&#]*(?:token|passw|pwd|secret|key|signature|credential|auth)"
                           r"[^\s=&#]*=)[^\s&#]+", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the credentials in any URI it contains masked: ``http://user:***@host:5000``."""
    if not isinstance(text, str) or ("@" not in text and "=" not in text):
        return text

    def userinfo(m):
        if m.group("password") is not None:
            return f"{m.group('scheme')}{m.group('user')}:***@"
        return f"{m.group('scheme')}***@"
    return _SECRET_QUERY.sub(r"\g<key>***", _USERINFO.sub(userinfo, text))


def redact_config(obj):
    """A copy of a (nested) configuration with every string passed through :func:`redact`: what goes into MLflow
    params and artifacts, checkpoints and messages."""
    if isinstance(obj, dict):
        return {k: redact_config(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_config(v) for v in obj)
    return redact(obj) if isinstance(obj, str) else obj


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
    import base64
    from urllib.parse import unquote, urlsplit, urlunsplit
    parts = urlsplit(tracking_uri)
    userinfo, _, host = parts.netloc.rpartition("@")        # user:password@ goes in a header, not in the host
    request = urllib.request.Request(urlunsplit(parts._replace(netloc=host)).rstrip("/") + "/health")
    if userinfo:
        user, _, password = userinfo.partition(":")
        token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        urllib.request.urlopen(request, timeout=timeout_s).close()
    except (urllib.error.URLError, OSError) as e:
        raise UserError(f"cannot reach the MLflow tracking server {redact(tracking_uri)}: "
                        f"{redact(str(getattr(e, 'reason', e)))}; "
                        f"check --tracking-uri / MLFLOW_TRACKING_URI") from None


class StoreOpening:
    """A SQLite tracking store opened in a background thread (:func:`prepare_store`)."""

    def __init__(self, tracking_uri: str, path: str):
        import threading
        self.created = path if not os.path.exists(path) else None     # the database file this opening makes

        def open_store():
            try:
                from mlflow.tracking import MlflowClient
                MlflowClient(tracking_uri).search_experiments(max_results=1)
            except Exception:  # noqa: BLE001 - reported, with its one line, where the run opens the store
                pass
        self.thread = threading.Thread(target=open_store, name="raypar-mlflow-store", daemon=True)
        self.thread.start()

    def join(self) -> None:
        """Wait until the store is open (or failed to open)."""
        self.thread.join()

    def undo(self) -> None:
        """Remove the database file this opening created: a command that stops before its run opens leaves
        nothing behind."""
        self.join()
        if self.created and os.path.exists(self.created):
            os.remove(self.created)


def prepare_store(tracking_uri: str) -> StoreOpening | None:
    """Start opening the SQLite store ``tracking_uri`` in a background thread, so that a new database's tables are
    made while something else waits (Ray's start); ``join()`` it before the store is used. None for a tracking
    server or an in-memory database (nothing to make). An error is left to the store's first use to report.

    Why: a new database takes over a second of migrations on the first run's path to its first step (measured in
    ``benchmarks/startup/README.md``)."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix) or not tracking_uri[len(prefix):]:
        return None
    return StoreOpening(tracking_uri, tracking_uri[len(prefix):])


def connect(tracking_uri: str, experiment: str):
    """Set the tracking URI and experiment; fail with a one-line error when the store cannot be reached."""
    from mlflow.tracking import MlflowClient
    try:
        client = MlflowClient(tracking_uri)    # never mlflow.set_tracking_uri: it rewrites the process environment
        exp = client.get_experiment_by_name(experiment)
        return exp.experiment_id if exp else client.create_experiment(experiment)
    except Exception as e:  # noqa: BLE001 - any failure here means the store is unusable
        raise UserError(f"cannot reach the MLflow tracking store {redact(tracking_uri)!r}: "
                        f"{redact(str(e).splitlines()[0][:200])}") from None


def torch_version() -> str:
    """``torch.__version__`` (with its build tag, e.g. ``+cu130``), read from torch's ``version.py`` where it can be,
    so that a process that has not imported torch need not (the command's start)."""
    import importlib.util
    found = importlib.util.find_spec("torch")
    for folder in (found.submodule_search_locations or []) if found else []:
        try:
            with open(os.path.join(folder, "version.py")) as f:
                m = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", f.read(), re.M)
            if m:
                return m.group(1)
        except OSError:
            pass
    import torch
    return torch.__version__


def params_of(cfg) -> dict:
    import ray
    p = {k: v for k, v in redact_config(cfg.flat()).items() if k not in ("tracking_uri", "address")}
    p["num_subnets"] = p.pop("subnets")
    p["balance"] = ",".join(map(str, p["balance"])) if isinstance(p["balance"], list) else p["balance"]
    p.update(torch_version=torch_version(), ray_version=ray.__version__,
             python_version=platform.python_version())
    return p


def open_run(cfg, meta: dict | None = None) -> tuple[str, bool]:
    """Create the MLflow run for ``cfg`` or, when ``meta`` (the run's newest readable checkpoint's metadata) names
    one, reopen it. A run whose checkpoints are all torn starts over in a new MLflow run, tagged with the old one's
    id: the two histories never mix. Returns (id, resumed)."""
    from mlflow.tracking import MlflowClient
    exp_id = connect(cfg.run.tracking_uri, cfg.run.experiment)
    client = MlflowClient(cfg.run.tracking_uri)
    if meta and meta.get("mlflow_run_id"):
        try:
            client.update_run(meta["mlflow_run_id"], status="RUNNING")
            return meta["mlflow_run_id"], True
        except Exception:  # noqa: BLE001 - the old run is gone from this store: start a fresh one
            pass
    tags = {RUN_KEY_TAG: redact(f"{cfg.run.storage_path}/{cfg.run.name}")}
    torn = latest_meta(cfg.run.storage_path, cfg.run.name)
    if torn and torn.get("mlflow_run_id"):
        tags[STARTED_OVER_TAG] = torn["mlflow_run_id"]
    if cfg.extra.get("parent_run_id"):                  # a run of a study: nested under the study's parent run
        tags[PARENT_TAG] = cfg.extra["parent_run_id"]
    run = client.create_run(exp_id, run_name=cfg.run.name, tags=tags)
    from mlflow.entities import Param
    params = [Param(k, str(v)) for k, v in params_of(cfg).items()]
    client.log_batch(run.info.run_id, params=params)
    return run.info.run_id, False


OUTAGE_S = 180.0          # how long the training loop waits out an unreachable tracking store before it stops


RETRIES_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"


def patiently(call, *args, outage_s: float = OUTAGE_S, **kwargs):
    """``call(*args, **kwargs)``, tried again with growing pauses (1 s doubling to at most 15 s) while the tracking
    store cannot be reached, for up to ``outage_s`` seconds: a tracking server that restarts or drops out for a
    minute loses no metric, and the run goes on within 15 s of its return.

    MLflow's own HTTP retries are off inside (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``, unless the environment sets
    it): they back off up to 120 s per pause, so a run would sit out minutes after the server is back.

    Raises:
        UserError: the store stayed unreachable (the run stops; its last checkpoint is kept and a resume logs
            the checkpoint's metrics).
    """
    deadline, pause = time.monotonic() + outage_s, 1.0
    while True:
        try:
            with env_default(RETRIES_ENV, "0"):
                return call(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - MLflow wraps connection errors in several types
            if time.monotonic() + pause > deadline:
                raise UserError(f"the MLflow tracking store was unreachable for {outage_s:.0f} s: "
                                f"{redact(str(e).splitlines()[0][:200])}; the last checkpoint is kept: resume the "
                                f"run with --resume once the store is back") from None
            time.sleep(pause)
            pause = min(2 * pause, 15.0)


def log_metrics(tracking_uri: str, run_id: str, metrics: dict, step: int) -> None:
    """Log ``metrics`` at ``step``, skipping any already logged there: a run resumed from an older checkpoint (or
    after a crash between checkpoint and logging) never logs a step twice. Waits out an unreachable store
    (:func:`patiently`)."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri)
    ts = int(time.time() * 1000)

    def log():
        todo = [Metric(k, float(v), ts, step) for k, v in metrics.items()
                if step not in {m.step for m in client.get_metric_history(run_id, k)}]
        if todo:
            client.log_batch(run_id, metrics=todo)
    patiently(log)


def count_start(tracking_uri: str, run_id: str) -> int:
    """Count one more start of the training loop in the run's tags; returns the number of restarts so far."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri)
    starts = int(client.get_run(run_id).data.tags.get("raypar.starts", "0")) + 1
    client.set_tag(run_id, "raypar.starts", str(starts))
    client.set_tag(run_id, "raypar.restarts", str(starts - 1))
    return starts - 1


def set_tag(tracking_uri: str, run_id: str, key: str, value: str) -> None:
    """Set a tag of the run, waiting out an unreachable store (:func:`patiently`)."""
    from mlflow.tracking import MlflowClient
    patiently(MlflowClient(tracking_uri).set_tag, run_id, key, value)


def get_tag(tracking_uri: str, run_id: str, key: str) -> str | None:
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri).get_run(run_id).data.tags.get(key)


def log_artifacts(tracking_uri: str, run_id: str, folder: str) -> None:
    """Upload a folder's files as the run's artifacts, waiting out an unreachable store (:func:`patiently`)."""
    from mlflow.tracking import MlflowClient
    patiently(MlflowClient(tracking_uri).log_artifacts, run_id, folder)


def close_run(tracking_uri: str, run_id: str, error: BaseException | None = None, reason: str | None = None) -> None:
    """End the run: FINISHED (with no error tag left from an earlier attempt); KILLED with the tag ``raypar.error``
    = "interrupted" when ``reason`` is :data:`INTERRUPTED`; else FAILED with ``raypar.error`` = ``reason`` (one
    line) and the error's text. A finished run waits out an unreachable store (:func:`patiently`): its training is
    done and only its status is missing."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri)
    if error is None and reason is None:
        def finish():
            if "raypar.error" in client.get_run(run_id).data.tags:
                client.delete_tag(run_id, "raypar.error")
            client.set_terminated(run_id, status="FINISHED")
        patiently(finish)
        return
    if reason == INTERRUPTED:
        client.set_tag(run_id, "raypar.error", INTERRUPTED)
        client.set_terminated(run_id, status="KILLED")
        return
    text = f"{type(error).__name__}: {error}"
    client.set_tag(run_id, "raypar.error", redact(f"{reason}\n\n{text}" if reason else text)[:4000])
    client.set_terminated(run_id, status="FAILED")


def write_meta(folder: str, meta: dict) -> None:
    with open(os.path.join(folder, META_FILE), "w") as f:
        json.dump(meta, f)
