"""`raypar train` as a user meets it, in real processes: run identity, a quiet console, Ctrl-C and --resume, a
schedule that follows the epochs a run has, loopback-only sockets, a driver killed on the default 2-CPU budget, a
batch larger than the data."""
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.integration

TINY = ["--model", "vgg11", "--width-mult", "0.125", "--balance", "3,4"]
# what raypar itself prints; any other line on the console is someone else's chatter
OURS = re.compile(r"^(raypar( train)?: |\[ *\d+\.\d s\] |epoch \d+/\d+: |open the MLflow UI with:|  mlflow ui |[│╭╰])")


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    return dict(env, PYTHONUNBUFFERED="1")


def _train(cwd, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "raypar.cli", "train", *TINY, *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _runs(cwd):
    client = MlflowClient(f"sqlite:///{cwd}/mlflow.db")
    exp = client.get_experiment_by_name("raypar")
    return client, client.search_runs([exp.experiment_id]) if exp else []


def _steps(client, run_id, key="val_acc"):
    return [m.step for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_the_same_command_twice_makes_two_runs_and_the_console_is_raypars(tmp_path):
    """Two identical commands: two FINISHED runs, each its own name, checkpoint folder and log; every console line is
    raypar's, the first one at once, then a line per start-up phase. The commands ask for a batch larger than the
    data: it is clipped to the training set with a line, and no process grows past 2 GB. The name of a finished run is
    refused in one line."""
    from raypar.training import data
    n = len(data.load("digits").train)
    outs, peaks = [], []
    for _ in range(2):
        proc = subprocess.Popen([sys.executable, "-m", "raypar.cli", "train", *TINY, "--epochs", "1",
                                 "--batch-size", "100000"], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        peak = 0
        while proc.poll() is None:
            try:
                tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
                peak = max([peak, *(p.memory_info().rss for p in tree if p.is_running())])
            except psutil.Error:
                pass
            time.sleep(0.2)
        out, err = proc.communicate()
        assert proc.returncode == 0, out[-2000:] + err[-2000:]
        outs.append((out, err))
        peaks.append(peak)
    for out, err in outs:
        lines = out.splitlines()
        assert lines[0] == "raypar train: checking the settings"
        assert f"raypar train: --batch-size 100000 is more than the {n} training samples: using {n}" in lines
        phases = [ln for ln in lines if re.match(r"\[ *\d+\.\d s\] ", ln)]
        for phase in ("new run", "starting Ray", "starting the driver", "predicted speedup", "starting 1 fine actor",
                      "first step"):
            assert any(phase in ln for ln in phases), (phase, phases)          # a line per start-up phase
        strangers = [ln for ln in (out + err).splitlines() if ln.strip() and not OURS.match(ln)]
        assert not strangers, strangers
        assert "split 3,4" in out                                              # the summary shows the split
    assert max(peaks) < 2 * 2**30, peaks
    client, runs = _runs(tmp_path)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.params["batch_size"] for r in runs} == {str(n)}
    names = {r.info.run_name for r in runs}
    assert len(names) == 2
    assert names == {d for d in os.listdir(tmp_path / "raypar_runs") if not d.endswith(".log")}
    assert all((tmp_path / "raypar_runs" / f"{name}.log").exists() for name in names)
    again = _train(tmp_path, "--epochs", "1", "--batch-size", "100000", "--name", sorted(names)[0], timeout=120)
    assert again.returncode == 2
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and "already finished (1 of 1 epochs)" in lines[0], again.stderr
    assert len(_runs(tmp_path)[1]) == 2


def _started(cwd, *args):
    """A `raypar train` process and the list its output lines go into as they come (read by a thread)."""
    proc = subprocess.Popen([sys.executable, "-m", "raypar.cli", "train", *TINY, *args], cwd=cwd, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def read():
        for line in proc.stdout:
            lines.append(line)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return proc, lines, reader


def _listening_non_loopback(root_pid: int) -> list:
    try:
        procs = [psutil.Process(root_pid), *psutil.Process(root_pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    pids = {p.pid for p in procs}
    bad = []
    for c in psutil.net_connections(kind="inet"):
        if c.pid in pids and c.status == psutil.CONN_LISTEN and c.laddr.ip not in ("127.0.0.1", "::1",
                                                                                   "::ffff:127.0.0.1"):
            bad.append((c.pid, c.laddr))
    return bad


def test_ctrl_c_kills_the_run_and_resume_finishes_it_with_the_longer_schedule(tmp_path):
    """Ctrl-C after epoch 1: the MLflow run ends KILLED ("interrupted"), exit 130. `--resume --epochs 4` finishes it:
    each epoch logged once, no error left, and the LR follows a 4-epoch cosine from epoch 2 on. While it runs, no
    process of the run listens on anything but loopback."""
    proc, lines, reader = _started(tmp_path, "--epochs", "3", "--name", "c")
    sockets = []
    deadline = time.time() + 300
    while not any(ln.startswith("epoch 1/3") for ln in lines) and time.time() < deadline and proc.poll() is None:
        if any("first step" in ln for ln in lines) and not sockets:
            sockets.append(_listening_non_loopback(proc.pid))
        time.sleep(0.2)
    assert any(ln.startswith("epoch 1/3") for ln in lines), "".join(lines)
    sockets.append(_listening_non_loopback(proc.pid))
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, "".join(lines)
    reader.join(timeout=10)
    assert sockets and not any(sockets), sockets
    client, runs = _runs(tmp_path)
    run, = runs
    assert run.info.status == "KILLED" and run.data.tags["raypar.error"] == "interrupted"
    r = _train(tmp_path, "--epochs", "4", "--resume")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "resuming run c from the checkpoint of epoch" in r.stdout
    client, runs = _runs(tmp_path)
    run, = runs
    assert run.info.status == "FINISHED" and "raypar.error" not in run.data.tags
    assert _steps(client, run.info.run_id) == [1, 2, 3, 4]
    assert run.data.tags["raypar.epochs"].startswith("4 (was 3")
    done = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "lr")}
    resumed_at = min(s for s in done if s > 1 and f"epoch {s}/4" in r.stdout)
    for epoch in range(resumed_at, 5):                 # the 4-epoch cosine, from where the run stood
        assert done[epoch] == pytest.approx(0.05 * (1 + math.cos(math.pi * epoch / 4)) / 2, abs=1e-9), done


def test_ctrl_c_in_raypar_fit_raises_and_kills_the_run(tmp_path):
    """``raypar.fit`` called in a script's main thread (where Ray Train would install its own SIGINT handler and end
    ``fit`` as if the run had finished): Ctrl-C raises KeyboardInterrupt at once, the MLflow run ends KILLED
    ("interrupted") and no epoch after the signal is trained."""
    script = ("import ray, raypar\n"
              "ray.init(address='local', num_cpus=2, include_dashboard=False)\n"
              "cfg = raypar.TrainConfig.from_flat(width_mult=0.125, subnets=2, epochs=30, name='api')\n"
              "try:\n    raypar.fit(cfg)\nexcept KeyboardInterrupt:\n    print('interrupted', flush=True)\n"
              "    raise SystemExit(130)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline, run = time.time() + 300, None
    while run is None and time.time() < deadline and proc.poll() is None:
        time.sleep(1)
        try:
            client, runs = _runs(tmp_path)
            run = next((r for r in runs if client.get_metric_history(r.info.run_id, "val_acc")), None)
        except Exception:  # noqa: BLE001 - the store is still being made
            pass
    assert run is not None, proc.communicate(timeout=60)[0][-3000:]
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130 and "interrupted" in out, out[-3000:]
    client, runs = _runs(tmp_path)
    run, = runs
    assert (run.info.status, run.data.tags.get("raypar.error")) == ("KILLED", "interrupted")
    assert len(_steps(client, run.info.run_id)) < 30


def test_replicas_listen_on_loopback_only(tmp_path):
    """R = 2 drivers x N = 2 on a local run: the drivers' group, each segment's replica group and the interface
    transport all listen on loopback; the run finishes."""
    proc, lines, reader = _started(tmp_path, "--epochs", "2", "--replicas", "2", "--norm", "group")
    sockets = []
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if any(ln.startswith("epoch 1/2") for ln in lines) and not sockets:
            sockets.append(_listening_non_loopback(proc.pid))
        time.sleep(0.2)
    assert proc.wait(timeout=300) == 0, "".join(lines)
    reader.join(timeout=10)
    assert sockets == [[]], sockets
    client, runs = _runs(tmp_path)
    run, = runs
    assert run.info.status == "FINISHED" and run.data.params["replicas"] == "2"


def _weights(tmp_path, run_id):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    return torch.load(client.download_artifacts(run_id, "final_weights.pt", str(tmp_path)), weights_only=True)


def test_a_killed_driver_on_the_default_2_cpu_budget_is_survived(tmp_path):
    """SIGKILL of the driver (the Ray Train worker) after epoch 1, with the private Ray sized for the run alone: the
    restarted driver gets its actors' CPUs back, the run finishes with --max-failures 1, each epoch logged once, and
    its final weights equal an uninterrupted run's bit for bit."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain = _train(tmp_path / "a", "--epochs", "3", "--name", "plain")
    assert plain.returncode == 0, plain.stderr[-2000:]
    proc = subprocess.Popen([sys.executable, "-m", "raypar.cli", "train", *TINY, "--epochs", "3", "--name", "k",
                             "--max-failures", "1"], cwd=tmp_path / "b", env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = time.time() + 300
    while not any(ln.startswith("epoch 1/3") for ln in lines) and time.time() < deadline:
        time.sleep(0.2)
    drivers = [p for p in psutil.Process(proc.pid).children(recursive=True)
               if "RayTrainWorker" in " ".join(p.cmdline())]
    assert drivers, "".join(lines)
    for p in drivers:
        p.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=400) == 0, "".join(lines)[-3000:]
    reader.join(timeout=10)
    client, (run,) = _runs(tmp_path / "b")
    assert run.info.status == "FINISHED" and run.data.tags["raypar.restarts"] == "1"
    assert _steps(client, run.info.run_id) == [1, 2, 3]
    _, (ref,) = _runs(tmp_path / "a")
    got, want = _weights(tmp_path / "b", run.info.run_id), _weights(tmp_path / "a", ref.info.run_id)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the process's start is read from /proc")
def test_the_start_up_clock_counts_from_the_command_start():
    """The seconds on `raypar train`'s start-up lines count from the process's start (Python's and torch's imports
    included), not from the moment the command's function runs; a clock for one run of many (`raypar study`'s)
    counts from its own making."""
    code = ("import time; time.sleep(1.0); from raypar.cli.train import Clock; "
            "print(Clock(from_process_start=True)(), Clock()())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    command, run = map(float, out.stdout.split())
    assert 1.0 <= command < 30 and run < 0.5, out.stderr
