"""Lost processes and torn checkpoints: the run finishes, logs every epoch once, and ends bit-identical to an
uninterrupted run with the same seed."""
import os
import queue
import signal
import threading

import pytest
import torch
from mlflow.tracking import MlflowClient

from raypar.config import TrainConfig
from raypar.tracking import checkpoints
from raypar.trainer import fit

EPOCHS = 3


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("reliability")


def _cfg(store, name, **kw):
    base = dict(model="vgg11", width_mult=0.125, subnets=2, epochs=EPOCHS, batch_size=32, balance="flops",
                storage_path=str(store / "runs"), name=name, cpus_per_subnet=0.5, max_failures=2,
                tracking_uri=f"sqlite:///{store}/mlflow.db", experiment="reliability")
    base.update(kw)
    return TrainConfig(**base).validate()


def _train(cfg, kill=None):
    """fit() in a thread, watching its events; ``kill`` = "actor" or "driver": SIGKILL that process once, in the
    middle of epoch 2. Returns (result, start events)."""
    from ray.util.queue import Queue
    events = Queue(actor_options={"num_cpus": 0})
    box, starts = {}, []
    thread = threading.Thread(target=lambda: box.update(result=fit(cfg, events)), daemon=True)
    thread.start()
    killed = False
    while thread.is_alive() or not events.empty():
        try:
            ev = events.get(timeout=0.5)
        except queue.Empty:
            continue
        if ev["kind"] == "start":
            starts.append(ev)
        elif kill and not killed and ev["kind"] == "step" and ev["epoch"] == 2 and ev["done"] >= 5:
            pid = starts[-1]["actor_pids"][1] if kill == "actor" else starts[-1]["driver_pid"]
            os.kill(pid, signal.SIGKILL)
            killed = True
    thread.join()
    assert "result" in box, "fit() raised"
    assert killed == bool(kill)
    return box["result"], starts


def _final_weights(cfg, run_id):
    client = MlflowClient(cfg.tracking_uri)
    path = client.download_artifacts(run_id, "final_weights.pt", str(cfg.storage_path))
    return torch.load(path, weights_only=True)


def _assert_complete_record(cfg, run_id):
    client = MlflowClient(cfg.tracking_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in ("train_loss", "val_acc", "epoch_time_s", "time_fine_max_s"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == list(range(1, EPOCHS + 1)), key
    return run


@pytest.fixture(scope="module")
def reference(ray_local, store):
    cfg = _cfg(store, "uninterrupted")
    result, starts = _train(cfg)
    _assert_complete_record(cfg, result.run_id)
    return _final_weights(cfg, result.run_id)


def _assert_same_weights(got, want):
    assert set(got) == set(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key


@pytest.mark.parametrize("victim", ["actor", "driver"])
def test_killed_process_restarts_and_ends_bit_identical(ray_local, store, reference, victim):
    cfg = _cfg(store, f"kill-{victim}")
    result, starts = _train(cfg, kill=victim)
    assert len(starts) == 2 and starts[1]["restarts"] == 1 and starts[1]["epoch"] == 1
    run = _assert_complete_record(cfg, result.run_id)
    assert run.data.tags["raypar.restarts"] == "1"
    _assert_same_weights(_final_weights(cfg, result.run_id), reference)


def test_torn_checkpoint_falls_back_to_the_previous_one(ray_local, store, reference):
    cfg = _cfg(store, "torn")
    first, _ = _train(cfg)
    newest = checkpoints(cfg.storage_path, cfg.name)[0]
    state = os.path.join(newest.path, "state.pt")
    with open(state, "r+b") as f:                      # a crash in the middle of writing: truncated
        f.truncate(os.path.getsize(state) // 2)
    result, starts = _train(cfg)                       # the same command again: it must redo the last epoch
    assert result.run_id == first.run_id
    assert starts[0]["epoch"] == EPOCHS - 1            # resumed from the checkpoint before the torn one
    _assert_complete_record(cfg, result.run_id)
    _assert_same_weights(_final_weights(cfg, result.run_id), reference)


def test_nan_loss_stops_with_a_clear_error_and_the_run_ends_failed(ray_local, store):
    cfg = _cfg(store, "nan", epochs=2, lr=1e12, max_failures=0)
    with pytest.raises(Exception, match=r"the loss is (nan|inf|-inf) at epoch \d+, step \d+"):
        fit(cfg)
    client = MlflowClient(cfg.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("reliability").experiment_id],
                              "tags.`raypar.run_key` LIKE '%/nan'")
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert "the loss is" in runs[0].data.tags["raypar.error"]
