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
