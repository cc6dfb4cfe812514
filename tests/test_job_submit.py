"""Where users run: a real Ray head on loopback, `ray job submit --working-dir` through the real CLI, MLflow checked.
Also: a run whose resources the cluster cannot provide fails clearly within its timeout."""
import os
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from procs import free_port, ray_cli, stop_group

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """`ray start --head --block` on 127.0.0.1 with its own ports; stopped by SIGTERM to its process group (never
    `ray stop`, which would also end every other Ray instance on the machine)."""
    tmp = tmp_path_factory.mktemp("head")
    gcs, dash, agent, client_port = (free_port() for _ in range(4))
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    cmd = [ray_cli(), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
           "--num-cpus=4", "--num-gpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent}",
           f"--ray-client-server-port={client_port}", "--disable-usage-stats"]
    log = open(tmp / "head.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    job_env = dict(env, RAY_AUTH_MODE="token")
    while time.time() < deadline:
        r = subprocess.run([ray_cli(), "job", "list", "--address", address], env=job_env, capture_output=True,
                           text=True)
        if r.returncode == 0:
            break
        if proc.poll() is not None:
            pytest.fail(f"ray head exited: {(tmp / 'head.log').read_text()[-2000:]}")
        time.sleep(2)
    else:
        pytest.fail(f"ray head did not come up: {(tmp / 'head.log').read_text()[-2000:]}")
    yield address, job_env, tmp
    stop_group(proc, timeout_s=5)        # nothing to drain: no 30 s grace period
    log.close()


def _submit(address, env, *args, timeout=600):
    cmd = [ray_cli(), "job", "submit", "--address", address, "--working-dir", str(REPO), "--",
           "python", "jobs/train.py", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_ray_job_submit_trains_and_records_mlflow(ray_head):
    address, env, tmp = ray_head
    uri = f"sqlite:///{tmp}/mlflow.db"
    r = _submit(address, env, "--epochs", "1", "--width-mult", "0.125", "--balance", "flops",
                "--tracking-uri", uri, "--storage-path", str(tmp / "runs"), "--name", "job-test",
                "--experiment", "jobs")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "succeeded" in out.lower()
    assert "raypar: training finished: run " in out
    run_id = out.split("raypar: training finished: run ")[1].split()[0]
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["num_subnets"] == "2"
    assert [m.step for m in client.get_metric_history(run_id, "val_acc")] == [1]
    assert {"config.json", "final_weights.pt"} <= {a.path for a in client.list_artifacts(run_id)}


def test_unsatisfiable_resources_fail_clearly_within_timeout(ray_head):
    address, env, tmp = ray_head
    t0 = time.time()
    r = _submit(address, env, "--epochs", "1", "--gpus-per-subnet", "1", "--resource-timeout", "600",
                "--tracking-uri", f"sqlite:///{tmp}/mlflow2.db", "--storage-path", str(tmp / "runs2"),
                timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    # a `ray start` cluster has no autoscaler (Ray's monitor runs read-only): no waiting for --resource-timeout
    assert ("the cluster can never provide 2 bundles (driver + 1 fine actor:" in out and "0 GPU in total" in out
            and "no autoscaler" in out), out[-3000:]
    assert time.time() - t0 < 180
    assert not any((tmp / "runs2").glob("vgg16-*"))              # no run folder was made
