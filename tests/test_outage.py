"""The MLflow tracking server of a run goes away for a minute mid-run and comes back (as a head's server restarted
by its supervisor would): the run waits it out and loses no metric."""
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from procs import free_port, stop_group

pytestmark = pytest.mark.cluster

OUTAGE_S = 60


def _server(tmp: Path, port: int) -> subprocess.Popen:
    """An MLflow server on loopback with its store in ``tmp``, up and answering."""
    mlflow = str(Path(sys.executable).parent / "mlflow")
    log = open(tmp / "server.log", "a")
    proc = subprocess.Popen([mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{tmp / 'store.db'}",
                             "--artifacts-destination", str(tmp / "artifacts")],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    stop_group(proc, timeout_s=5)
    pytest.fail(f"the MLflow server did not start: {(tmp / 'server.log').read_text()[-2000:]}")


def test_a_tracking_server_down_for_a_minute_mid_run_loses_no_metric(tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _server(tmp_path, port)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    train = subprocess.Popen([sys.executable, "-m", "raypar.cli", "train", "--name", "outage", "--epochs", "4",
                              "--width-mult", "0.125", "--tracking-uri", uri,
                              "--storage-path", str(tmp_path / "runs")],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in train.stdout:
            lines.append(line)
            if line.startswith("epoch 1/4"):
                os.killpg(server.pid, signal.SIGKILL)          # gone at once, mid-run: epochs 2-4 train meanwhile
                server.wait()
                break
        time.sleep(OUTAGE_S)
        assert train.poll() is None, "".join(lines)             # still waiting for the store, not failed
        server = _server(tmp_path, port)
        out, _ = train.communicate(timeout=600)
        lines.append(out)
    finally:
        if train.poll() is None:
            train.kill()
        stop_group(server, timeout_s=5)
    text = "".join(lines)
    assert train.returncode == 0, text[-4000:]
    # the server is stopped now: read its database
    client = MlflowClient(f"sqlite:///{tmp_path / 'store.db'}")
    run = client.search_runs(client.get_experiment_by_name("raypar").experiment_id)[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "outage"
    for key in ("val_acc", "train_loss", "samples_per_s"):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [1, 2, 3, 4], key
