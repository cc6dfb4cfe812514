"""Lost processes and torn checkpoints: the run finishes, logs every epoch once, and ends bit-identical to an
uninterrupted run with the same seed."""
import math
import os
import queue
import re
import signal
import threading

import pytest
import torch
from mlflow.tracking import MlflowClient
from procs import free_port, nan_replica, stop_group

from raypar.training.config import TrainConfig
from raypar.training.tracking import checkpoints
from raypar.training.launch import fit

EPOCHS = 3


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("reliability")


def _cfg(store, name, **kw):
    base = dict(model="vgg11", width_mult=0.125, subnets=2, epochs=EPOCHS, batch_size=32, balance="flops",
                storage_path=str(store / "runs"), name=name, cpus_per_subnet=0.5, max_failures=2,
                tracking_uri=f"sqlite:///{store}/mlflow.db", experiment="reliability")
    base.update(kw)
    return TrainConfig.from_flat(**base)


def _train(cfg, kills=()):
    """fit() in a thread, watching its events; ``kills``: the processes to SIGKILL, one per start, in the middle of
    epoch 2 ("actor": the last fine actor; "driver": the Ray Train worker). Returns (result, start events)."""
    from ray.util.queue import Queue
    events = Queue(actor_options={"num_cpus": 0})
    box, starts, killed = {}, [], []
    thread = threading.Thread(target=lambda: box.update(result=fit(cfg, events)), daemon=True)
    thread.start()
    while thread.is_alive() or not events.empty():
        try:
            ev = events.get(timeout=0.5)
        except queue.Empty:
            continue
        if ev["kind"] == "start":
            starts.append(ev)
        elif (len(killed) < len(kills) and len(killed) < len(starts) and ev["kind"] == "step" and ev["epoch"] == 2
              and ev["done"] >= 5):
            victim = kills[len(killed)]
            os.kill(starts[-1]["actor_pids"][-1] if victim == "actor" else starts[-1]["driver_pid"], signal.SIGKILL)
            killed.append(victim)
    thread.join()
    assert "result" in box, "fit() raised"
    assert killed == list(kills)
    return box["result"], starts


def _final_weights(cfg, run_id):
    client = MlflowClient(cfg.run.tracking_uri)
    path = client.download_artifacts(run_id, "final_weights.pt", str(cfg.run.storage_path))
    return torch.load(path, weights_only=True)


def _assert_complete_record(cfg, run_id):
    client = MlflowClient(cfg.run.tracking_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in ("train_loss", "val_acc", "epoch_time_s", "time_fine_max_s"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == list(range(1, EPOCHS + 1)), key
    return run


@pytest.fixture(scope="module")
def uninterrupted(ray_local, store):
    """The run every interrupted one must match: (its config, its run id, its final weights)."""
    cfg = _cfg(store, "uninterrupted")
    result, starts = _train(cfg)
    _assert_complete_record(cfg, result.run_id)
    return cfg, result.run_id, _final_weights(cfg, result.run_id)


@pytest.fixture(scope="module")
def reference(uninterrupted):
    return uninterrupted[2]


def _assert_same_weights(got, want):
    assert set(got) == set(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_killed_actor_then_driver_restart_and_end_bit_identical(ray_local, store, reference):
    """A fine actor lost in epoch 2, then, in the restarted epoch 2, the driver: each time the run restarts from the
    epoch 1 checkpoint, and it ends with the weights of a run that was never interrupted."""
    cfg = _cfg(store, "kills")
    result, starts = _train(cfg, kills=("actor", "driver"))
    assert [(s["restarts"], s["epoch"]) for s in starts] == [(0, 0), (1, 1), (2, 1)]
    assert len({s["driver_pid"] for s in starts}) == 3               # a new driver (and new actors) at each start
    run = _assert_complete_record(cfg, result.run_id)
    assert run.data.tags["raypar.restarts"] == "2"
    _assert_same_weights(_final_weights(cfg, result.run_id), reference)


def test_torn_checkpoint_falls_back_to_the_previous_one(ray_local, store, uninterrupted):
    cfg, run_id, reference = uninterrupted             # tear the newest checkpoint of the finished reference run
    newest = checkpoints(cfg.run.storage_path, cfg.run.name)[0]
    state = os.path.join(newest.path, "state.pt")
    with open(state, "r+b") as f:                      # a crash in the middle of writing: truncated
        f.truncate(os.path.getsize(state) // 2)
    result, starts = _train(cfg)                       # the same command again: it must redo the last epoch
    assert result.run_id == run_id
    assert starts[0]["epoch"] == EPOCHS - 1            # resumed from the checkpoint before the torn one
    _assert_complete_record(cfg, result.run_id)
    _assert_same_weights(_final_weights(cfg, result.run_id), reference)


def test_nan_loss_stops_with_a_clear_error_and_the_run_ends_failed(ray_local, store, capsys):
    """A NaN loss ends the run at once, FAILED with the reason, and is not restarted: a resumed run would repeat the
    same steps bit for bit and meet the same NaN (--max-failures is for lost processes)."""
    from raypar.cli.main import main
    cfg = _cfg(store, "nan", epochs=2, lr=1e12, max_failures=2)
    assert main(["train", "--model", cfg.model.name, "--width-mult", str(cfg.model.width_mult), "--subnets", "2", "--epochs", "2",
                 "--batch-size", "32", "--balance", "flops", "--cpus-per-subnet", "0.5", "--lr", "1e12",
                 "--max-failures", "2", "--storage-path", cfg.run.storage_path, "--name", "nan",
                 "--tracking-uri", cfg.run.tracking_uri, "--experiment", "reliability"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.fullmatch(r"raypar: training stopped: the loss is (nan|inf|-inf) at epoch \d+, step \d+: .*lower --lr.*",
                        err.strip().splitlines()[-1])
    client = MlflowClient(cfg.run.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("reliability").experiment_id],
                              "tags.`raypar.run_key` LIKE '%/nan'")
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert runs[0].data.tags["raypar.error"].startswith("FloatingPointError: the loss is")
    assert runs[0].data.tags["raypar.starts"] == "1"                   # no restart


def test_nan_loss_on_one_replica_stops_every_replica_at_the_same_step():
    """R = 2: a NaN loss on replica 1 only. Both replicas stop at that step, each with a clear reason. (Had replica 0
    gone on, in a real run it would wait for replica 1 in its next gradient all-reduce until the group's timeout;
    the stand-in engine here, :class:`procs.NanOnOneReplica`, runs no collective in its steps, so it would finish the
    epoch.) raypar's epoch loop runs in two processes over a real gloo group."""
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    results, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=nan_replica, args=(rank, port, results)) for rank in (0, 1)]
    for p in procs:
        p.start()
    try:
        got = dict((rank, (error, steps)) for rank, error, steps in (results.get(timeout=120) for _ in procs))
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    stop = "at epoch 3, step 2: training stopped; the last good checkpoint is kept"
    assert got[1] == (f"FloatingPointError: the loss is nan {stop} (try a lower --lr, or --on-nonfinite skip)", 2)
    assert got[0] == (f"FloatingPointError: the loss of another replica is not finite {stop} (try a lower --lr, "
                      "or --on-nonfinite skip)", 2)


# ------------------------------------------------------------------------------------ running out of restarts
def test_run_out_of_restarts_ends_failed_and_fit_raises(ray_local, store):
    """max_failures = 0 (the default) and the fine actor SIGKILLed as the run starts: no restart, the run fails.
    (Restarts while some are left: test_killed_actor_then_driver_restart_and_end_bit_identical.)"""
    from ray.util.queue import Queue
    cfg = _cfg(store, "exhausted", epochs=1, max_failures=0)
    events = Queue(actor_options={"num_cpus": 0})
    box, starts = {}, []

    def run():
        try:
            box["result"] = fit(cfg, events)
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    while thread.is_alive() or not events.empty():
        try:
            ev = events.get(timeout=0.5)
        except queue.Empty:
            continue
        if ev["kind"] == "start":
            starts.append(ev)
            os.kill(ev["actor_pids"][0], signal.SIGKILL)
    thread.join()
    assert "error" in box and "result" not in box, "fit() must raise when the restarts run out"
    assert [s["restarts"] for s in starts] == [0]
    client = MlflowClient(cfg.run.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("reliability").experiment_id],
                              "tags.`raypar.run_key` LIKE '%/exhausted'")
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    tags = runs[0].data.tags
    assert tags["raypar.restarts"] == "0"
    reason = tags["raypar.error"].splitlines()[0]          # the reason first, on one line; the details below it
    assert reason.startswith("ActorDiedError: ") and "restarts" not in reason, reason     # none were allowed


def test_failure_reason_says_when_the_restarts_ran_out():
    from ray.exceptions import ActorDiedError, RayTaskError
    from ray.train import WorkerGroupError

    from raypar.training.launch import failure_reason
    lost = RayTaskError("train_loop", "Traceback (most recent call last): ...", ActorDiedError())
    error = WorkerGroupError("Training failed due to worker errors:", {0: lost})
    assert failure_reason(error, 0).startswith("ActorDiedError: ")
    assert failure_reason(error, 0) == failure_reason(error, 2).split(" (no restarts left")[0]
    assert failure_reason(error, 2).endswith(" (no restarts left: --max-failures 2)")


# ------------------------------------------------------------------------------------ --on-nonfinite skip
def _engine(skip: bool, coarse_in_actors: bool = False):
    from raypar import PararealNet, build
    from raypar.engine.driver import OptimConfig, PararealEngine, Resources
    torch.manual_seed(0)
    net = PararealNet(build("vgg11", width_mult=0.125), 2, balance="flops")
    return PararealEngine(net, OptimConfig(lr=0.1, epochs=2),
                          Resources(cpus_per_subnet=0.5, coarse_in_actors=coarse_in_actors), seed=0,
                          skip_nonfinite=skip)


def _everything(engine) -> dict:
    """Every tensor of the engine's state: weights, BatchNorm statistics, optimizer momenta, of driver and actors."""
    state = engine.get_state()
    flat = {f"driver.{k}": v for k, v in state["driver"].items()}
    for i, fine in enumerate(state["fine"]):
        flat.update({f"fine{i}.{k}": v for k, v in fine["module"].items()})
        flat.update({f"fine{i}.momentum.{k}": s["momentum_buffer"] for k, s in fine["optimizer"]["state"].items()})
    flat.update({f"driver.momentum.{k}": s["momentum_buffer"] for k, s in state["optimizer"]["state"].items()})
    return flat


@pytest.mark.parametrize("coarse_in_actors", [False, True])
def test_nonfinite_batch_is_skipped_everywhere_and_training_goes_on(ray_local, coarse_in_actors):
    from raypar.training.loop import _train_epoch
    g = torch.Generator().manual_seed(1)
    b1, b2, b3 = [(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in "123"]
    bad = (b1[0].clone(), b1[1])
    bad[0][3, 0, 5, 5] = float("nan")                  # one NaN pixel: NaN loss (and NaN BatchNorm statistics)
    engine, reference = _engine(True, coarse_in_actors), _engine(False, coarse_in_actors)
    try:
        engine.train_step(*b1)
        before = _everything(engine)
        loss, correct, st = engine.train_step(*bad)
        assert math.isnan(loss) and st.skipped == 1 and correct == 0
        after = _everything(engine)
        for k in before:                                # nothing changed: weights, BN statistics, momenta
            assert torch.equal(before[k], after[k]), k
        loss, _, st = engine.train_step(*b2)            # training goes on, every part in lockstep:
        assert math.isfinite(loss) and st.skipped == 0
        for x, y in (b1, b2):                           # the same as a run that never saw the bad batch
            reference.train_step(x, y)
        got, want = _everything(engine), _everything(reference)
        for k in want:
            assert torch.equal(got[k], want[k]), k
        # the epoch loop counts skipped batches and leaves them out of the loss and accuracy
        totals, loss_sum, _, seen = _train_epoch(engine, [b3, bad, bad], epoch=1, events=None)
        assert totals.skipped == 2 and totals.steps == 3 and seen == 16 and math.isfinite(loss_sum)
        with pytest.raises(FloatingPointError, match=r"every batch of epoch 2 had a non-finite loss"):
            _train_epoch(engine, [bad], epoch=2, events=None)
    finally:
        engine.shutdown()
        reference.shutdown()


# ------------------------------------------------------------------------------------ more than the cluster has
def test_fixed_cluster_fails_at_once_when_it_can_never_fit_the_run(ray_local):
    """The session's private Ray has no autoscaler: 7 CPUs asked of a 4-CPU cluster fail at once, not after the
    resource timeout (F_1 in the driver: 3 fine actors of 2 CPUs)."""
    import time

    from raypar.training.preflight import cluster_can_grow, wait_for_resources
    from raypar.errors import UserError
    assert cluster_can_grow() is False
    cfg = TrainConfig.from_flat(subnets=4, cpus_per_subnet=2, resource_timeout=120)
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"can never provide 4 bundles \(driver \+ 3 fine actors: 7 CPU, 0 GPU in all\)"
                                        r": it has 4 CPU, 0 GPU in total on 1 node\(s\) and no autoscaler"):
        wait_for_resources(cfg, 0)
    assert time.monotonic() - t0 < 30


def test_autoscaling_cluster_keeps_waiting(ray_local, monkeypatch):
    """When the autoscaler's status report names real node types (a `ray up` cluster), the run waits for new nodes
    up to --resource-timeout instead of failing at once."""
    import json
    import time

    import ray.experimental.internal_kv as kv

    from raypar.training.preflight import cluster_can_grow, wait_for_resources
    from raypar.errors import UserError
    node = ray_local.get_runtime_context().get_node_id()
    report = {"autoscaler_report": {"node_type_mapping": {"10.0.0.1": "head", "10.0.0.2": "gpu_1x"}}}
    real_get = kv._internal_kv_get
    monkeypatch.setattr("raypar.training.ray_compat.started_by_this_process", lambda: False)    # as if attached to a cluster
    monkeypatch.setattr(kv, "_internal_kv_get", lambda key, *a, **k: json.dumps(report).encode()
                        if key == "__autoscaling_status" else real_get(key, *a, **k))
    assert cluster_can_grow() is True
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"could not provide 2 bundles .* within 2 s"):
        wait_for_resources(TrainConfig.from_flat(resource_timeout=2), gpus=1)
    assert time.monotonic() - t0 >= 2
    report["autoscaler_report"]["node_type_mapping"] = {node: f"node_{node}"}       # read-only: fixed cluster
    assert cluster_can_grow() is False


def test_cli_gpus_the_cluster_can_never_have_exit_2_at_once(tmp_path):
    import subprocess
    import sys
    import time
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "raypar.cli", "train", "--gpus-per-subnet", "1"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)      # the default --resource-timeout is 300 s
    assert r.returncode == 2, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("raypar: error: the cluster can never provide 2 bundles (driver + 1 fine actor: "
                               "2 CPU, 2 GPU in all)") and "0 GPU in total" in lines[0] and "no autoscaler" in lines[0]
    assert time.monotonic() - t0 < 120
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "raypar_runs").exists()


# ------------------------------------------------------------------------------------ storage every node must see
@pytest.fixture(scope="module")
def blind_node(ray_local, tmp_path_factory):
    """A second node in the session's cluster (0 CPUs: nothing else lands there) that does not share one folder:
    `ray start --address` in its own mount namespace with an empty tmpfs over ``hidden``. Stopped by SIGTERM to its
    process group."""
    import shutil
    import subprocess
    import sys
    import time
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) for a node with its own mount namespace")
    tmp = tmp_path_factory.mktemp("blind")
    hidden = tmp / "hidden"
    hidden.mkdir()
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    here = ray_local.get_runtime_context().get_node_id()
    start = (f"mount -t tmpfs tmpfs {hidden} && exec {ray_bin} start --block "
             f"--address={ray_local.get_runtime_context().gcs_address} --num-cpus=0 --num-gpus=0 "
             f"--object-store-memory=80000000 --dashboard-agent-listen-port={free_port()} "
             f"--dashboard-agent-grpc-port={free_port()} --runtime-env-agent-port={free_port()} "
             f"--metrics-export-port={free_port()} --disable-usage-stats")
    env = dict(os.environ, RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "token"))
    env.pop("RAY_ADDRESS", None)
    log = open(tmp / "node.log", "w")

    def others():
        return [n for n in ray_local.nodes() if n["Alive"] and n["NodeID"] != here]
    for attempt in range(3):          # `ray start` gives its raylet a fixed 30 s: on a loaded machine, try again
        proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", start], stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.time() + 120
        while not others() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        if others():
            break
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    else:
        pytest.fail(f"the second node did not come up: {(tmp / 'node.log').read_text()[-2000:]}")
    yield others()[0], tmp
    stop_group(proc)
    log.close()
    deadline = time.time() + 60
    while others() and time.time() < deadline:          # gone before the next test plans its resources
        time.sleep(0.5)


def test_storage_a_node_cannot_see_fails_before_anything_is_written(blind_node):
    from raypar.errors import UserError
    node, tmp = blind_node
    storage = tmp / "hidden" / "runs"                   # on this machine only: the second node sees an empty tmpfs
    cfg = TrainConfig.from_flat(model="vgg11", width_mult=0.125, balance="flops", epochs=1, storage_path=str(storage),
                      name="blind", tracking_uri=f"sqlite:///{tmp}/mlflow.db", experiment="blind")
    with pytest.raises(UserError, match=rf"--storage-path {storage} is not shared: node \S+ \(node id "
                                        rf"{node['NodeID'][:12]}\) cannot see it; .*use shared storage \(s3://"):
        fit(cfg)
    assert not storage.exists() and not list((tmp / "hidden").iterdir())   # no marker, no checkpoint left
    assert not (tmp / "mlflow.db").exists()                                   # no MLflow run


def test_storage_that_cannot_be_written_fails_in_one_line(ray_local, tmp_path, capsys):
    from raypar.cli.main import main
    (tmp_path / "a-file").write_text("")
    storage = tmp_path / "a-file" / "runs"              # under a file: no folder can be made there, even as root
    assert main(["train", "--storage-path", str(storage), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
                 "--epochs", "1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"raypar: error: --storage-path {storage} cannot be written: Not a directory"]
    assert not (tmp_path / "mlflow.db").exists()                              # no MLflow run


def test_mistakes_a_worker_would_meet_are_one_line(ray_local, tmp_path, capsys, monkeypatch):
    from ray.exceptions import RayTaskError
    from ray.train import WorkerGroupError

    from raypar.cli.main import main
    from raypar.errors import UserError
    argv = ["train", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--storage-path", str(tmp_path / "runs")]
    # cuda-ipc on a cluster with no GPUs: known before anything starts (the session's Ray has none)
    assert main([*argv, "--transport", "cuda-ipc"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "raypar: error: --transport cuda-ipc needs GPUs, and this Ray cluster has none: use another --transport, "
        "or a cluster with GPUs"]
    assert not (tmp_path / "mlflow.db").exists()

    def fails(cfg, events=None, **options):          # what Ray Train raises for a UserError in rank 1's train_loop
        cause = RayTaskError("train_loop", "Traceback (most recent call last): ...", UserError("the worker's reason"))
        raise WorkerGroupError("Training failed due to worker errors:", {1: cause})
    monkeypatch.setattr("raypar.training.launch.fit", fails)
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["raypar: error: the worker's reason"]


def test_storage_every_node_sees_passes_and_leaves_nothing(blind_node):
    from raypar.training.preflight import check_shared_storage
    node, tmp = blind_node
    shared = tmp / "shared" / "runs"
    check_shared_storage(TrainConfig.from_flat(storage_path=str(shared)).resolved())
    assert not (tmp / "shared").exists()                # the marker and the folders made for it are gone
    check_shared_storage(TrainConfig.from_flat(storage_path="s3://bucket/runs").resolved())     # remote URIs: not checked


# ------------------------------------------------------------------------------------ one run: skip + no secrets
SECRET = "s3cret"


@pytest.fixture(scope="module")
def skip_run(ray_local, store):
    """One short run that diverges (lr 1e12) with --on-nonfinite skip, and a Ray address that holds a password
    (fit() itself never connects to it: the session's Ray is already up)."""
    cfg = _cfg(store, "skip", epochs=1, lr=1e12, on_nonfinite="skip", max_failures=0,
               address=f"ray://alice:{SECRET}@10.0.0.1:10001")
    return cfg, fit(cfg)


def test_skip_run_goes_on_and_logs_skipped_batches(skip_run):
    cfg, result = skip_run
    client = MlflowClient(cfg.run.tracking_uri)
    assert client.get_run(result.run_id).info.status == "FINISHED"
    (step, skipped), = [(m.step, m.value) for m in client.get_metric_history(result.run_id, "skipped_batches")]
    assert step == 1 and skipped >= 1
    assert math.isfinite(result.metrics["train_loss"])          # the skipped batches are not in the mean


def test_no_credentials_in_mlflow_params_artifacts_or_checkpoints(skip_run, tmp_path):
    cfg, result = skip_run
    client = MlflowClient(cfg.run.tracking_uri)
    run = client.get_run(result.run_id)
    for key, value in {**run.data.params, **run.data.tags}.items():
        assert SECRET not in value, key
    config = open(client.download_artifacts(result.run_id, "config.json", str(tmp_path))).read()
    assert SECRET not in config and '"address": "ray://alice:***@10.0.0.1:10001"' in config
    metas = [open(os.path.join(c.path, "raypar_meta.json")).read() for c in checkpoints(cfg.run.storage_path, cfg.run.name)]
    assert metas and all(SECRET not in m and "alice:***@10.0.0.1" in m for m in metas)


def test_redact():
    from raypar.training.tracking import redact, redact_config
    assert redact("http://user:password@host:5000") == "http://user:***@host:5000"
    assert redact("https://tok3n@host/x") == "https://***@host/x"
    assert (redact("cannot reach ray://u:p%40ss@10.0.0.1:10001: refused")
            == "cannot reach ray://u:***@10.0.0.1:10001: refused")
    assert redact("s3://b/p?X-Amz-Signature=abc&region=x") == "s3://b/p?X-Amz-Signature=***&region=x"
    for plain in ("sqlite:////tmp/a@b/mlflow.db", "raypar_runs", "gs://bucket/runs", "http://host:5000"):
        assert redact(plain) == plain
    assert redact_config({"a": ["http://u:pw@h"], "b": 1, "c": None}) == {"a": ["http://u:***@h"], "b": 1, "c": None}


def test_cli_messages_never_show_a_password(tmp_path):
    import subprocess
    import sys
    uri = f"http://alice:{SECRET}@127.0.0.1:1"
    r = subprocess.run([sys.executable, "-m", "raypar.cli", "train", "--tracking-uri", uri], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the MLflow tracking server http://alice:***@127.0.0.1:1" in lines[0]
    assert SECRET not in r.stdout + r.stderr


def test_mlflow_never_prints_a_tracking_uri_with_its_password(capsys, monkeypatch):
    """MLflow prints "View run ... at: <URI>" when a run against a tracking server ends; in a raypar process it does
    not (the URI would carry the password): the call returns before it even asks the server."""
    import raypar.training.tracking  # noqa: F401 - importing it is what switches the line off
    from mlflow.tracking import MlflowClient
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")   # with the line on: fail fast, not retry for minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    client = MlflowClient(f"http://alice:{SECRET}@127.0.0.1:1")
    client._tracking_client._log_url("0" * 32)          # with the line on, this asks the (absent) server for the run
    out, err = capsys.readouterr()
    assert SECRET not in out + err and "View run" not in out


def test_an_unreachable_tracking_store_is_waited_out_then_stops_the_run_in_one_line(tmp_path, monkeypatch):
    """A tracking server that drops out mid-run loses no metric: each write is tried again until it goes through;
    one that stays away stops the run with one line (the checkpoint stays, so nothing is lost silently)."""
    from mlflow.tracking import MlflowClient

    from raypar import UserError
    from raypar.training import tracking
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("outage")).info.run_id
    real, failures = MlflowClient.log_batch, [3]

    def flaky(self, *args, **kwargs):
        if failures[0]:
            failures[0] -= 1
            raise ConnectionError("connection refused")
        return real(self, *args, **kwargs)
    monkeypatch.setattr(MlflowClient, "log_batch", flaky)
    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    tracking.log_metrics(uri, run_id, {"val_acc": 0.5}, step=1)
    assert failures == [0] and [m.step for m in client.get_metric_history(run_id, "val_acc")] == [1]
    failures[0] = 10**6
    with pytest.raises(UserError, match="unreachable for 0 s.*--resume"):
        tracking.patiently(MlflowClient(uri).log_batch, run_id, outage_s=0)


@pytest.mark.unit
def test_patiently_turns_mlflows_own_retries_off_unless_the_user_set_them(monkeypatch):
    """MLflow's HTTP client backs off up to 120 s between its own retries: inside ``patiently`` they are off, so a
    write that failed is tried again on raypar's schedule (at most 15 s apart) once the server is back; a value the
    user set is kept."""
    import os

    from raypar.training import tracking
    monkeypatch.delenv(tracking.RETRIES_ENV, raising=False)
    seen = tracking.patiently(lambda: os.environ.get(tracking.RETRIES_ENV))
    assert seen == "0" and tracking.RETRIES_ENV not in os.environ
    monkeypatch.setenv(tracking.RETRIES_ENV, "5")
    assert tracking.patiently(lambda: os.environ.get(tracking.RETRIES_ENV)) == "5"
    assert os.environ[tracking.RETRIES_ENV] == "5"
