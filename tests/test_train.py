"""Training on Ray end to end: the `raypar train` default run, its MLflow record, resume, N = 1."""
import os
import subprocess
import sys
import time

import pytest
import torch
from mlflow.tracking import MlflowClient

from raypar.training.config import TrainConfig
from raypar.training.launch import fit

METRICS = ["train_loss", "train_acc", "val_loss", "val_acc", "epoch_time_s", "samples_per_s",
           "time_pre_coarse_s", "time_fine_max_s", "time_transfer_s"]
PARAMS = ["model", "dataset", "num_subnets", "iterations", "replicas", "batch_size", "epochs", "lr", "seed",
          "width_mult"]


def _run_of(tracking_uri, run_id):
    client = MlflowClient(tracking_uri)
    return client, client.get_run(run_id)


def _dir(path) -> str:
    path.mkdir(exist_ok=True)
    return str(path)


def _history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_raypar_train_defaults_end_to_end(tmp_path):
    """The README's main command: no arguments, digits, N = 2, >= 90% val accuracy, a complete MLflow run."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    r = subprocess.run([sys.executable, "-m", "raypar.cli", "train"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run_id = r.stdout.strip().splitlines()[-1].split("run ")[-1]
    assert "final val accuracy" in r.stdout and "mlflow ui --backend-store-uri" in r.stdout
    for chatter in ("Reporting training result", "Requesting resources", "Started training worker group"):
        assert chatter not in r.stdout + r.stderr          # Ray Train's info lines stay out of the terminal
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client, run = _run_of(uri, run_id)
    assert run.info.status == "FINISHED"
    epochs = TrainConfig().optim.epochs
    for p in PARAMS:
        assert p in run.data.params, p
    assert run.data.params["num_subnets"] == "2" and run.data.params["dataset"] == "digits"
    for key in METRICS:
        assert [s for s, _ in _history(client, run_id, key)] == list(range(1, epochs + 1)), key
    assert run.data.metrics["val_acc"] >= 0.90
    # --coarse-in-actors unset (the param), the place chosen at the start: tagged and in the resolved configuration
    assert run.data.params["coarse_in_actors"] == "None"
    placed = run.data.tags["raypar.coarse_in_actors"]
    assert placed in ("true", "false")
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.json", "final_weights.pt"} <= artifacts
    import json
    config = json.load(open(client.download_artifacts(run_id, "config.json", str(tmp_path))))
    assert str(config["coarse_in_actors"]).lower() == placed
    weights = torch.load(client.download_artifacts(run_id, "final_weights.pt", str(tmp_path)), weights_only=True)
    assert any(k.startswith("segments.1.") for k in weights) and any(k.startswith("coarse.") for k in weights)


def _cfg(tmp_path, **kw):
    base = dict(model="vgg11", width_mult=0.125, subnets=2, epochs=1, batch_size=128, balance="flops",
                storage_path=str(tmp_path / "runs"), name="resume-test", cpus_per_subnet=0.5,
                tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="tests")
    base.update(kw)
    return TrainConfig.from_flat(**base)


def test_resume_continues_at_the_next_epoch_and_keeps_a_tuned_split(ray_local, tmp_path):
    """A second fit with --resume and more epochs trains the finished run further: nothing lost, nothing repeated. The run uses --balance tune (F_1 in the
    driver): it measures candidate splits on the engine before it starts, trains with the fastest, records it (tag,
    tuning.json, config.json), and the resumed run keeps it without tuning again."""
    import json
    first = fit(_cfg(tmp_path, epochs=1, balance="tune", driver_segment=True))
    assert first.metrics["epoch"] == 1 and not first.resumed
    client, run = _run_of(f"sqlite:///{tmp_path}/mlflow.db", first.run_id)
    split = [int(v) for v in run.data.tags["raypar.tuned_split"].split(",")]
    assert run.data.tags["raypar.split"] == run.data.tags["raypar.tuned_split"]          # the split trained
    trials = json.load(open(client.download_artifacts(first.run_id, "tuning.json", _dir(tmp_path / "a"))))
    measured = [t for t in trials if not t["error"]]
    assert len(trials) >= 2 and measured and all(t["step_ms"] > 0 for t in measured)
    assert split == max(measured, key=lambda t: t["vs_profiled"])["split"] and sum(t["profiled"] for t in trials) == 1
    # the coarse sweep's place (unset: chosen from the profile) is kept too: flipped in the checkpoint, the resumed
    # run takes the checkpoint's, not a new choice
    meta_path = os.path.join(first.checkpoint_path, "raypar_meta.json")
    meta = json.load(open(meta_path))
    assert run.data.tags["raypar.coarse_in_actors"] == str(meta["coarse_in_actors"]).lower()
    meta["coarse_in_actors"] = not meta["coarse_in_actors"]
    json.dump(meta, open(meta_path, "w"))
    second = fit(_cfg(tmp_path, epochs=2, balance="tune", driver_segment=True), resume=True)   # more epochs
    assert second.resumed and second.run_id == first.run_id
    assert second.metrics["epoch"] == 2
    resumed = json.load(open(os.path.join(second.checkpoint_path, "raypar_meta.json")))
    assert resumed["split"] == split and resumed["coarse_in_actors"] == meta["coarse_in_actors"]
    assert _run_of(f"sqlite:///{tmp_path}/mlflow.db", first.run_id)[1].data.tags["raypar.coarse_in_actors"] == (
        str(meta["coarse_in_actors"]).lower())
    # not tuned again: another tuning would have logged other timings
    assert json.load(open(client.download_artifacts(first.run_id, "tuning.json", _dir(tmp_path / "b")))) == trials
    config = json.load(open(client.download_artifacts(first.run_id, "config.json", _dir(tmp_path / "c"))))
    assert config["split"] == split and config["balance"] == "tune"
    client, run = _run_of(f"sqlite:///{tmp_path}/mlflow.db", first.run_id)
    assert run.info.status == "FINISHED"
    # epoch 1 once (from the first run), epoch 2 once (from the resumed one): nothing lost, nothing repeated
    assert [s for s, _ in _history(client, first.run_id, "val_acc")] == [1, 2]


def test_driver_segment_and_fp16_train(ray_local, tmp_path):
    """F_1 in the driver and the coarse sweep in the actors, with --amp fp16: it learns, and the loss scale is logged
    and checkpointed (a resumed run carries on with it)."""
    result = fit(_cfg(tmp_path, subnets=3, name="driver-segment", driver_segment=True, amp="fp16",
                      coarse_in_actors=True))
    assert result.metrics["epoch"] == 1 and result.metrics["val_acc"] > 0.1
    ckpt = torch.load(os.path.join(result.checkpoint_path, "state.pt"), weights_only=True)
    assert len(ckpt["fine"]) == 2 and any(k.startswith("segments.0.") for k in ckpt["driver"])
    client, run = _run_of(f"sqlite:///{tmp_path}/mlflow.db", result.run_id)
    assert run.data.params["amp"] == "fp16" and run.data.params["coarse_in_actors"] == "True"
    assert run.data.tags["raypar.coarse_in_actors"] == "true"
    assert run.data.metrics["loss_scale"] == ckpt["scaler"]["scale"] > 0
    assert 0 <= run.data.metrics["overflow_steps"] < 1797 / 128       # digits: 1797 images, some for validation



BAD_INPUT = [
    (["--subnets", "0"], "--subnets must be >= 1"),
    (["--subnets", "2", "--iterations", "3"], "--iterations must be between 1 and --subnets (2)"),
    (["--subnets", "2", "--iterations", "2", "--coarse-in-actors"], "--coarse-in-actors needs --iterations 1, got 2"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--dataset", "cifar10"], "needs --data-dir"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--balance", "fast"], "--balance must be one of"),
    (["--tracking-uri", "http://127.0.0.1:1"], "cannot reach the MLflow tracking server"),
    (["--address", "127.0.0.1:1"], "cannot reach the Ray cluster at 127.0.0.1:1"),
    (["--gpus-per-subnet", "-1"], "--gpus-per-subnet must be >= 0"),
    (["--dataset", "cifar10", "--data-dir", "."], "cifar10 not found or corrupt in"),
    (["--dataset", "imagefolder:no/such/folder"], "needs the subfolders train/ and val/"),
    (["--model", "vgg99"], "unknown model 'vgg99'"),
    (["--model", "resnet21"], "invalid ResNet depth 21"),
    (["--dataset", "cifar10", "--data-dir", "d", "--download"], "cifar10 could not be downloaded into"),
    (["--lr", "nan"], "--lr must be a number > 0, got nan"),
    (["--momentum", "1.5"], "--momentum must be in [0, 1)"),
    (["--label-smoothing", "1"], "--label-smoothing must be in [0, 1), got 1.0"),
    (["--data-dir", "/etc/hostname"], "--data-dir /etc/hostname is a file, not a folder"),
    (["--folds", "1"], "--folds must be 0 (no cross-validation) or >= 2"),
]


def _imagefolder(root, kind):
    for split in ("train", "val"):
        folder = root / split / "cat"
        folder.mkdir(parents=True)
        if kind == "text":
            (folder / "a.txt").write_text("not an image")
        elif kind == "broken":
            (folder / "a.png").write_bytes(b"not a png")


@pytest.mark.parametrize("kind, message", [("empty", "Found no valid file"), ("text", "Found no valid file"),
                                           ("broken", "is not a readable image")])
def test_imagefolder_mistakes_exit_2_one_line(tmp_path, monkeypatch, capsys, kind, message):
    from raypar.cli.main import main
    _imagefolder(tmp_path / "data", kind)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["train", "--dataset", f"imagefolder:{tmp_path / 'data'}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "raypar_runs").exists()


# --address is checked only where raypar starts Ray, which a fresh `raypar` process always does, but this test session
# may already have (ray_local): that case runs in a real process only (below)
@pytest.mark.parametrize("args, message", [case for case in BAD_INPUT if case[0][0] != "--address"])
def test_train_bad_input_exit_2_one_line(tmp_path, monkeypatch, capsys, args, message):
    """Every mistake: exit code 2, one line on stderr, nothing written (in this process, to keep the suite fast;
    the next test checks the same for a real `raypar` process)."""
    from raypar.cli.main import main
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["train", *args]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "raypar_runs").exists()


@pytest.mark.parametrize("args, message", [BAD_INPUT[0], *[case for case in BAD_INPUT if case[0][0] == "--address"]])
def test_train_bad_input_in_a_real_process(tmp_path, args, message):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    r = subprocess.run([sys.executable, "-m", "raypar.cli", "train", *args], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "raypar_runs").exists()


def test_the_trainer_starts_no_idle_helpers_on_a_private_cluster(ray_local, tmp_path):
    """On a Ray that this process started, raypar's trainer runs its function with Ray Train's controller, worker
    and synchronization actor only: no Ray Data dataset manager, placement-group cleaner, autoscaling coordinator or
    preemption watcher, each a process that Ray Train (2.60) would start beside the run's own."""
    import ray
    import ray._private.state as state
    from ray.train import RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from raypar.training.ray_compat import PREEMPTION_WATCHER_ENV, quick_to_stop, without_idle_helpers
    coordinator = {"name": "AutoscalingCoordinator", "namespace": "AutoscalingCoordinator"}   # one per cluster
    try:
        ray.kill(ray.get_actor(**coordinator))          # left by an earlier Ray Train run of this test session
    except ValueError:
        pass
    before = set(state.actors())
    mark = tmp_path / "ran"
    trainer = without_idle_helpers(quick_to_stop(DataParallelTrainer))(
        lambda config: mark.write_text("yes"), train_loop_config={},
        scaling_config=ScalingConfig(num_workers=1), run_config=RunConfig(name="lean", storage_path=str(tmp_path)))
    trainer.fit()
    assert mark.read_text() == "yes"
    started = sorted(a["ActorClassName"] for i, a in state.actors().items() if i not in before)
    assert started == ["RayTrainWorker", "SynchronizationActor", "TrainController"], started
    with pytest.raises(ValueError):
        ray.get_actor(**coordinator)
    assert PREEMPTION_WATCHER_ENV not in os.environ              # set while fit() runs only


PRIVATE_NODE = """
import ray, ray._private.parameter as parameter, ray._private.ray_constants as c, ray._private.worker as worker
from raypar.training.session import start_private
original = parameter.RayParams.__init__
assert start_private(2)
started = set(worker._global_node.all_processes)
print(sorted(started), ray.get(ray.remote(lambda: 1 + 1).remote()),
      parameter.RayParams.__init__ is original, c.PROCESS_TYPE_RAYLET in started,
      c.PROCESS_TYPE_MONITOR in started or c.PROCESS_TYPE_LOG_MONITOR in started)
ray.shutdown()
"""


def test_a_private_ray_starts_no_monitors():
    """A private local Ray (raypar train, bench and tune start one) runs tasks without the autoscaler's monitor (one
    node that never grows) or the log monitor (no worker output goes to the console); Ray's node parameters are
    as before once it has started. In a fresh process: the tests' own Ray is started by Ray's defaults."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = subprocess.run([sys.executable, "-c", PRIVATE_NODE], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    *_, two, restored, raylet, monitors = r.stdout.split()
    assert (two, restored, raylet, monitors) == ("2", "True", "True", "False"), r.stdout


def test_the_idle_helpers_stay_on_a_cluster_this_process_joined(monkeypatch):
    """On a cluster that this process did not start, only Ray Data's dataset manager goes (raypar passes no
    datasets): the placement-group cleaner, the autoscaler's resource requests and the preemption watcher stay."""
    from ray.train import ScalingConfig
    from ray.train.v2._internal.callbacks import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy

    from raypar.training import ray_compat
    datasets, cleaner = DatasetsCallback.__new__(DatasetsCallback), PlacementGroupCleanerCallback()
    policy = FixedScalingPolicy(ScalingConfig(num_workers=1))

    class Trainer:                                  # what the shim builds on: Ray Train's two hooks
        datasets = {}

        def _create_default_callbacks(self):
            return [datasets, cleaner, "other"]

        def _initialize_and_run_controller(self, **kwargs):
            return kwargs["scaling_policy"], os.environ.get(ray_compat.PREEMPTION_WATCHER_ENV)

    monkeypatch.delenv(ray_compat.PREEMPTION_WATCHER_ENV, raising=False)
    lean = ray_compat.without_idle_helpers(Trainer)()
    monkeypatch.setattr(ray_compat, "started_by_this_process", lambda: False)
    assert lean._create_default_callbacks() == [cleaner, "other"]
    assert lean._initialize_and_run_controller(scaling_policy=policy) == (policy, None)
    monkeypatch.setattr(ray_compat, "started_by_this_process", lambda: True)     # a private cluster
    assert lean._create_default_callbacks() == ["other"]
    got, watcher = lean._initialize_and_run_controller(scaling_policy=policy)
    assert isinstance(got, FixedScalingPolicy) and type(got) is not FixedScalingPolicy and watcher == "0"
    got.after_controller_start(None)               # no resource requests: nothing to send them to
    got.make_decision_for_non_running_worker_group()
    assert got._coordinator_client is None
    monkeypatch.setenv(ray_compat.PREEMPTION_WATCHER_ENV, "1")                  # the user's own setting wins
    assert lean._initialize_and_run_controller(scaling_policy=policy)[1] == "1"
    lean.datasets = {"train": object()}            # a trainer given datasets keeps Ray Data's callback
    assert lean._create_default_callbacks() == [datasets, "other"]


def test_the_trainer_ends_its_placement_group_cleaner_at_once(ray_local):
    """Ray Train's cleaner made every run wait 12 s at its end, with a traceback, where the State API does not answer
    (see trainer._quick_to_stop); raypar's trainer kills it at a clean stop instead, and keeps every other default
    callback."""
    import ray
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    from raypar.training.ray_compat import quick_to_stop as _quick_to_stop
    ours = _quick_to_stop(TorchTrainer)(lambda: None, scaling_config=ScalingConfig(num_workers=1))
    theirs = TorchTrainer(lambda: None, scaling_config=ScalingConfig(num_workers=1))
    got, want = ours._create_default_callbacks(), theirs._create_default_callbacks()
    def kinds(callbacks):
        return [isinstance(c, PlacementGroupCleanerCallback) or type(c) for c in callbacks]
    assert kinds(got) == kinds(want)                 # the same callbacks in the same order, the cleaner's our own
    cleaner, = [c for c in got if isinstance(c, PlacementGroupCleanerCallback)]
    assert type(cleaner) is not PlacementGroupCleanerCallback

    @ray.remote(num_cpus=0)
    class Hung:                                      # a cleaner whose poll never returns
        def stop(self):
            import time
            time.sleep(600)
    cleaner._cleaner = Hung.remote()
    ray.get(cleaner._cleaner.__ray_ready__.remote())
    handle = cleaner._cleaner
    t0 = time.time()
    cleaner._stop_cleaner()
    assert time.time() - t0 < 2 and cleaner._cleaner is None
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(handle.stop.remote(), timeout=30)    # killed
