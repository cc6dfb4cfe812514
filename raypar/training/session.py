"""Starting Ray, or attaching to a cluster: the one place that calls ``ray.init``.

:func:`start_private` starts a private local Ray that lives and dies with this process, listening on the loopback
interface only, without the autoscaler's monitor and the log monitor; :func:`connect` picks between that, the cluster
of a Ray job (``ray job submit`` sets ``RAY_ADDRESS``) and an explicit ``--address``. Worker processes' output is
not copied to this console.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket

from ..errors import UserError
from .ray_compat import private_node
from .tracking import redact

LOOPBACK = "127.0.0.1"          # a private local Ray listens here only: it is reachable from this machine alone


@contextlib.contextmanager
def _quiet_auth_notice():
    """No "token authentication is enabled" notice for a cluster that lives and dies inside this process."""
    log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def start_private(num_cpus: int, num_gpus: int | None = None, *, one_thread: bool = False) -> bool:
    """Start a private local Ray with ``num_cpus`` CPUs (and ``num_gpus``, None: what Ray detects), unless one is
    running in this process already.

    Args:
        one_thread: every Ray process started here computes with one thread (``OMP_NUM_THREADS=1``), as the
            benchmarks and ``raypar tune`` measure.
    Returns:
        True when this call started it: the caller shuts it down.
    """
    import ray
    if ray.is_initialized():
        return False
    saved = os.environ.get("OMP_NUM_THREADS")
    if one_thread:
        os.environ["OMP_NUM_THREADS"] = "1"                  # inherited by every Ray process started here
    try:
        with _quiet_auth_notice(), private_node():
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                     configure_logging=False, log_to_driver=False, _node_ip_address=LOOPBACK)
    finally:
        if one_thread:
            if saved is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = saved
    return True


def check_address(address: str, timeout_s: float = 10.0) -> None:
    """A quick TCP check of ``host:port`` (also ``ray://host:port``): ``ray.init`` would retry for minutes.

    Raises:
        UserError: nothing answers there.
    """
    if address in ("auto", "local"):
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as e:
        raise UserError(f"cannot reach the Ray cluster at {redact(address)}: {e}; check --address "
                        f"(host:port of the head's GCS, default port 6379)") from None


def connect(cfg) -> None:
    """Make Ray ready for the run ``cfg`` (a :class:`~raypar.training.config.TrainConfig`): ``cfg.engine.address`` if
    given; else the job's cluster inside ``ray job submit``; else a private local Ray with a CPU for the driver and
    each fine actor of every replica (at least this machine's cores).

    Raises:
        UserError: the cluster cannot be reached.
    """
    import ray
    if ray.is_initialized():
        return
    if cfg.engine.address:
        target = cfg.engine.address
        check_address(target)
    elif os.environ.get("RAY_ADDRESS"):
        target = None                                       # inside `ray job submit`: attach to the job's cluster
    else:
        need = int(cfg.engine.replicas * (cfg.model.subnets * cfg.engine.cpus_per_subnet + 1) + 0.999)
        with _quiet_auth_notice(), private_node():
            ray.init(address="local", num_cpus=max(os.cpu_count() or 1, need), configure_logging=False,
                     log_to_driver=False, include_dashboard=False, _node_ip_address=LOOPBACK)
        return
    try:
        ray.init(address=target, configure_logging=False, log_to_driver=False)
    except ConnectionError as e:
        raise UserError(f"cannot reach the Ray cluster at {redact(target or os.environ.get('RAY_ADDRESS'))}: "
                        f"{redact(str(e).splitlines()[0][:200])}") from None
