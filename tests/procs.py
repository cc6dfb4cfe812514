"""Helpers for tests that start real Ray processes (`ray start` heads and nodes) beside the session's own Ray."""
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli() -> str:
    """The `ray` command of this virtualenv."""
    here = Path(sys.executable).parent / "ray"
    return str(here) if here.exists() else shutil.which("ray")


def stop_group(proc: subprocess.Popen, timeout_s: float = 60) -> None:
    """SIGTERM to a process started with ``start_new_session=True`` and its children, SIGKILL after ``timeout_s``
    (never `ray stop`: it would end every other Ray instance on the machine). A head drains for up to 30 s on SIGTERM;
    a stand-alone test cluster has nothing to drain, so its tests pass a short timeout."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


class NanOnOneReplica:
    """Stands in for a :class:`raypar.engine.driver.PararealEngine` that is one of 2 replicas (the torch.distributed group
    is up): each step's loss is 1, except replica ``bad_rank``'s at step ``bad_step``, which is NaN."""

    def __init__(self, rank: int, bad_rank: int, bad_step: int):
        from raypar.engine.driver import Replica
        self.replica, self.bad, self.steps = Replica(rank, 2), (bad_rank, bad_step), 0

    def train_step(self, x, y):
        from raypar.engine.driver import StepStats
        self.steps += 1
        nan = (self.replica.rank, self.steps) == self.bad
        return float("nan") if nan else 1.0, 0, StepStats(steps=1)

    def all_sum(self, values):
        from raypar.engine import hybrid
        return hybrid.all_sum(values, 2, "cpu")


def nan_replica(rank: int, port: int, results) -> None:
    """One of 2 replicas running raypar's epoch loop on :class:`NanOnOneReplica` (replica 1 NaN at step 2 of 4):
    puts (rank, the error it stopped with, steps run) into ``results``."""
    import datetime

    import torch.distributed as dist

    from raypar.training.loop import _train_epoch
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=2, rank=rank,
                            timeout=datetime.timedelta(seconds=30))
    engine = NanOnOneReplica(rank, bad_rank=1, bad_step=2)
    try:
        _train_epoch(engine, [(None, [0] * 8)] * 4, epoch=3, events=None)
        results.put((rank, "no error", engine.steps))
    except Exception as e:  # noqa: BLE001
        results.put((rank, f"{type(e).__name__}: {e}", engine.steps))
    finally:
        dist.destroy_process_group()
