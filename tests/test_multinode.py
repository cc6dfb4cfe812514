"""R replicas x N sub-networks on a real multi-node Ray cluster on one machine: a head (3 CPUs, no GPU) and two
worker nodes started with `ray start` on loopback, each with 3 CPUs and 3 (CUDA-less) GPUs, so a replica (driver + 2
fine actors, one GPU each) fills one worker node. R = 2 x N = 2 trains, each replica's actors run on its driver's node,
and the weights match an R = 1 run on the combined batch (GroupNorm: no batch statistics, so the two compute the same
thing). A worker node stopped mid-epoch (every process of it killed, as a preempted machine) is survived on the other
node."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from mlflow.tracking import MlflowClient
from procs import free_port, ray_cli, stop_group



@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two nodes; stopped by SIGTERM to their process groups (never `ray stop`: other Ray instances live here)."""
    tmp = tmp_path_factory.mktemp("cluster")
    gcs = free_port()
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token")
    env.pop("RAY_ADDRESS", None)
    common = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=3", "--disable-usage-stats"]
    head = [ray_cli(), "start", "--head", f"--port={gcs}", "--include-dashboard=false",
            f"--ray-client-server-port={free_port()}", "--num-gpus=0", *common]
    procs, logs = [], []

    def start(cmd, name):
        log = open(tmp / f"{name}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))

    try:                                 # a node that does not come up: stop the others, leave nothing
        start(head, "head")
        address = f"127.0.0.1:{gcs}"
        status = None
        deadline = time.time() + 300
        while time.time() < deadline:
            status = subprocess.run([ray_cli(), "status", "--address", address], env=env, capture_output=True, text=True)
            if status.returncode == 0:
                break
            time.sleep(2)
        else:
            pytest.fail(f"head did not come up: {(tmp / 'head.log').read_text()[-2000:]}")
        workers = {}
        for name, gpus in (("worker-a", "3.0 GPU"), ("worker-b", "6.0 GPU")):     # one at a time: a 2-core machine
            start([ray_cli(), "start", f"--address={address}", "--num-gpus=3", *common], name)
            workers[name] = procs[-1]
            while time.time() < deadline:
                status = subprocess.run([ray_cli(), "status", "--address", address], env=env, capture_output=True,
                                        text=True)
                if f"/{gpus}" in status.stdout or f" {gpus}" in status.stdout:
                    break
                time.sleep(2)
            else:
                tails = " ".join((tmp / f"{w}.log").read_text()[-1000:] for w in workers)
                pytest.fail(f"the worker nodes did not join: {status.stdout[-2000:]} {tails}")
    except BaseException:
        for p in reversed(procs):
            stop_group(p, timeout_s=5)
        raise
    yield address, env, tmp, workers
    for p in reversed(procs):
        stop_group(p, timeout_s=5)       # nothing to drain: no 30 s grace period
    for log in logs:
        log.close()


def _command(cluster, name, *args) -> list[str]:
    address, env, tmp, _ = cluster
    return [sys.executable, "-m", "raypar.cli", "train", "--address", address, "--name", name,
            "--model", "vgg11", "--width-mult", "0.125", "--subnets", "2", "--gpus-per-subnet", "1",
            "--norm", "group", "--balance", "flops", "--epochs", "1", "--resource-timeout", "120", "--no-driver-segment",
            "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", "--storage-path", str(tmp / "runs"),
            "--experiment", "multinode", *args]


def _train(cluster, name, *args):
    address, env, tmp, _ = cluster
    uri = f"sqlite:///{tmp}/mlflow.db"
    r = subprocess.run(_command(cluster, name, *args), env=env, cwd=tmp, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    run_id = r.stdout.strip().splitlines()[-1].split("run ")[-1]
    client = MlflowClient(uri)
    weights = torch.load(client.download_artifacts(run_id, "final_weights.pt", str(tmp)), weights_only=True)
    return client.get_run(run_id), weights


def test_replicas_x_subnets_across_nodes_match_one_replica_on_the_combined_batch(cluster):
    # 1436 digits (an even number) in 2 steps: 2 replicas x 352 samples, or 1 replica x 704 — the same samples
    # the replicas ship interface tensors point to point (gloo here, NCCL between real GPUs; what "auto" picks on CPUs),
    # the single replica through the object store: the same numbers either way
    run2, w2 = _train(cluster, "r2", "--replicas", "2", "--batch-size", "352", "--transport", "p2p")
    assert run2.info.status == "FINISHED" and run2.data.params["replicas"] == "2"
    assert run2.data.tags["raypar.transport"] == "p2p"
    placement = json.loads(run2.data.tags["raypar.placement"])
    assert len(placement) == 2
    for replica in placement:                       # PACK: a replica's fine actors on its driver's node
        assert replica["actors"] == [replica["driver"]] * 2, placement
    assert placement[0]["driver"] != placement[1]["driver"], placement       # one replica per node

    run1, w1 = _train(cluster, "r1", "--replicas", "1", "--batch-size", "704", "--transport", "object-store")
    assert run1.data.params["replicas"] == "1" and run1.data.tags["raypar.transport"] == "object-store"
    assert set(w1) == set(w2)
    for key in w1:
        assert torch.allclose(w2[key].float(), w1[key].float(), rtol=1e-3, atol=2e-5), key
    assert run2.data.metrics["train_loss"] == pytest.approx(run1.data.metrics["train_loss"], rel=1e-5)
    assert run2.data.metrics["val_acc"] == run1.data.metrics["val_acc"]


def _node_of(pid: int, workers: dict) -> str | None:
    """The worker node (its name in ``workers``) whose `ray start` process has process ``pid`` below it (a raylet
    starts the workers of its node)."""
    import psutil
    try:
        ancestors = {p.pid for p in psutil.Process(pid).parents()}
    except psutil.NoSuchProcess:
        return None
    return next((name for name, p in workers.items() if p.pid in ancestors), None)


def test_a_node_stopped_mid_epoch_is_survived_on_another_node(cluster):
    """The node that holds the run's driver and fine actors is killed (raylet, driver, actors: SIGKILL to the whole
    node) in epoch 2 of 4; with --max-failures 1 Ray Train restarts the driver on the other worker node, which resumes
    from epoch 1's checkpoint: the run finishes, every epoch logged once."""
    import psutil
    address, env, tmp, workers = cluster
    proc = subprocess.Popen(_command(cluster, "preempted", "--epochs", "4", "--max-failures", "1"), env=env,
                            cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, victim = [], None
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("epoch 1/4"):
                drivers = sorted((p for p in psutil.process_iter(["cmdline", "create_time"])
                                  if "ray::RayTrainWorker" in " ".join(p.info["cmdline"] or [])),
                                 key=lambda p: p.info["create_time"], reverse=True)     # this run's: the newest
                victim = next((n for n in (_node_of(p.pid, workers) for p in drivers) if n), None)
                assert victim, f"no Ray Train worker on a worker node: {[p.pid for p in drivers]}"
                os.killpg(workers[victim].pid, signal.SIGKILL)
                break
        out, _ = proc.communicate(timeout=600)
        lines.append(out)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(lines)
    assert victim and proc.returncode == 0, text[-4000:]
    run_id = text.strip().splitlines()[-1].split("run ")[-1]
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run_id, "val_acc")
    assert sorted(m.step for m in history) == [1, 2, 3, 4], history         # each epoch once
    placement = json.loads(run.data.tags["raypar.placement"])              # where the restarted driver ran
    assert placement["actors"] == [placement["driver"]] * 2
    survivor = next(n for n in workers if n != victim)
    assert workers[survivor].poll() is None
