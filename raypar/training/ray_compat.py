"""Every use of Ray's private API, in one place: each shim says what it relies on and falls back when Ray's
internals are not as expected."""
from __future__ import annotations

import contextlib
import json
import logging
import time

from ..environ import env_default


@contextlib.contextmanager
def loopback_node():
    """Inside, ``ray.init(address="local", _node_ip_address="127.0.0.1")`` starts a node that listens on the
    loopback interface only: Ray turns a loopback node address into the host's address
    (``services.resolve_ip_for_localhost``), and every server of a node whose address is loopback binds to loopback.
    Where Ray has no such function, nothing changes."""
    import ray._private.services as services
    original = getattr(services, "resolve_ip_for_localhost", None)
    if original is None:
        yield
        return
    services.resolve_ip_for_localhost = lambda host: host if host == "127.0.0.1" else original(host)
    try:
        yield
    finally:
        services.resolve_ip_for_localhost = original


@contextlib.contextmanager
def private_node():
    """Inside, ``ray.init(address="local", _node_ip_address="127.0.0.1")`` starts a node for this process alone: it
    listens on the loopback interface only (:func:`loopback_node`), and it starts neither the autoscaler's monitor
    (one node that never grows) nor the log monitor (it copies the workers' output to a driver that asks for it with
    ``log_to_driver``, which raypar does not): two processes that import Ray beside the run's start
    (``benchmarks/startup/README.md``). Private API: where Ray's node parameters lack these two, they start."""
    import ray._private.parameter as parameter
    params = getattr(parameter, "RayParams", None)
    original = params.__init__ if params is not None else None

    def without_monitors(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if hasattr(self, "no_monitor") and hasattr(self, "include_log_monitor"):
            self.no_monitor, self.include_log_monitor = True, False

    if params is not None:
        params.__init__ = without_monitors
    try:
        with loopback_node():
            yield
    finally:
        if params is not None:
            params.__init__ = original


def quiet_train_logs() -> None:
    """Ray Train's per-report log lines at WARNING only, in this process (the progress bar says how the run goes).
    Ray Train V2 names one of its loggers by its file."""
    names = ["ray.train", *[n for n in logging.root.manager.loggerDict if n.startswith("ray.train")]]
    try:
        from ray.train.v2._internal.execution import context as train_context
        names.append(train_context.__file__)
    except ImportError:
        pass
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)


def started_by_this_process() -> bool:
    """Whether ``ray.init()`` in this process started the cluster (a private local Ray: ``ray.init`` cannot be given
    an autoscaling config, so such a cluster never grows)."""
    import ray._private.worker
    node = getattr(ray._private.worker, "_global_node", None)
    return bool(node is not None and getattr(node, "head", False))


def cluster_can_grow(wait_s: float = 5.0) -> bool | None:
    """Whether an autoscaler can add nodes to the current Ray cluster: True, False (a fixed cluster: a private local
    Ray, or nodes started by hand with ``ray start``), or None when the cluster does not say (then assume it can).

    A cluster that ``ray.init()`` started in this process cannot grow. Otherwise, read what Ray's autoscaler itself
    publishes in the GCS:
      - a cluster config (``ReportClusterConfig``, e.g. KubeRay / managed clusters): it can grow when a node group
        has ``max_count`` above its ``min_count`` (the rule Ray Data uses, ``is_autoscaling_enabled``);
      - otherwise the v1 monitor's status report (``__autoscaling_status``, what ``ray status`` shows). A cluster
        started without ``--autoscaling-config`` runs a read-only autoscaler that names every node's type after the
        node itself (``node_<id>``) and never launches one; with a cluster-launcher config (``ray up``) the types are
        the config's (``gpu_1x``, ...). The report is written every few seconds: wait up to ``wait_s`` for it.
    The v2 autoscaler publishes neither: None."""
    import ray._private.ray_constants as ray_constants
    import ray._private.state
    from ray.experimental.internal_kv import _internal_kv_get
    if started_by_this_process():
        return False
    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception:  # noqa: BLE001 - a private API: any failure means "not known"
        config = None
    if config is not None and config.node_group_configs:
        return any(g.max_count == -1 or g.max_count > g.min_count
                   for g in config.node_group_configs if g.resources and g.max_count != 0)
    try:
        from ray.autoscaler.v2.utils import is_autoscaler_v2
        if is_autoscaler_v2(fetch_from_server=True):
            return None
    except Exception:  # noqa: BLE001
        pass
    deadline = time.monotonic() + wait_s
    while True:
        try:
            raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        except Exception:  # noqa: BLE001
            return None
        if raw or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    try:
        mapping = (json.loads(raw).get("autoscaler_report") or {}).get("node_type_mapping") or {}
    except (TypeError, ValueError, AttributeError):
        return None
    if not mapping:
        return None
    return not all(node_type == f"node_{node}" for node, node_type in mapping.items())


def quick_to_stop(trainer_cls):
    """``trainer_cls`` whose controller ends its placement-group cleaner at once at the end of a run.

    Ray Train (2.60) starts a detached cleaner actor that polls the State API to see whether the controller still
    lives, so that it can remove the run's placement group if the controller dies without cleaning up. At the end of
    every run the controller asks it to stop and waits up to 12 s for its poll to return. Where the State API finds
    no answer — no dashboard, or a stale ``/tmp/ray/ray_current_cluster`` left by an earlier ``ray start`` on the
    machine — the poll hangs (40 s here): every run ended with a 12 s wait after its last epoch and a
    ``GetTimeoutError`` traceback from the controller on the console. At a clean stop (or the controller's own
    abort, which removes the placement group itself) the cleaner has nothing left to do, so it is killed instead,
    which is what its ``stop`` ends in; while the run lives it works as before. Private API: where Ray's classes
    are not as expected, ``trainer_cls`` itself."""
    try:
        from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    except ImportError:
        return trainer_cls
    if not (hasattr(trainer_cls, "_create_default_callbacks")
            and hasattr(PlacementGroupCleanerCallback, "_stop_cleaner")):
        return trainer_cls

    class KillCleanerAtStop(PlacementGroupCleanerCallback):
        def after_controller_start(self, train_run_context):
            """The cleaner as Ray starts it, told its own cluster's address: with several Ray instances on one
            machine its State API client would otherwise pick another one ("Found multiple active Ray
            instances")."""
            import ray
            try:
                from ray._common.constants import HEAD_NODE_RESOURCE_NAME
                from ray.train.v2._internal.execution.controller.placement_group_cleaner import PlacementGroupCleaner
                context = ray.get_runtime_context()
                self._controller_actor_id = context.get_actor_id()
                self._cleaner = ray.remote(num_cpus=0)(PlacementGroupCleaner).options(
                    lifetime="detached", get_if_exists=False, resources={HEAD_NODE_RESOURCE_NAME: 0.001},
                    runtime_env={"env_vars": {"RAY_ADDRESS": context.gcs_address}},
                ).remote(controller_actor_id=self._controller_actor_id, check_interval_s=self._check_interval_s,
                         get_actor_timeout_s=self._get_actor_timeout_s, stop_timeout=self._stop_timeout)
            except Exception:  # noqa: BLE001 - Ray's internals moved: start it as Ray does
                return super().after_controller_start(train_run_context)
            self._cleaner.start_monitoring.remote()

        def _stop_cleaner(self):
            import ray
            cleaner, self._cleaner = getattr(self, "_cleaner", None), None
            if cleaner is not None:
                try:
                    ray.kill(cleaner)
                except Exception:  # noqa: BLE001 - already gone
                    pass

    class QuickToStop(trainer_cls):
        def _create_default_callbacks(self):
            return [KillCleanerAtStop() if isinstance(c, PlacementGroupCleanerCallback) else c
                    for c in super()._create_default_callbacks()]
    return QuickToStop


PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def without_idle_helpers(trainer_cls):
    """``trainer_cls`` without the helper actors of Ray Train (2.60) that have no work in a raypar run. Each is one
    more process to start beside the run's own, about a second of a core before the first step:

      - Ray Data's ``DatasetManager`` (raypar hands Ray Train no Ray Datasets);

    and on a Ray cluster that this process started (:func:`started_by_this_process`: one node that never grows,
    gone with the process):

      - the placement-group cleaner (the placement group ends with the cluster);
      - the autoscaling coordinator that the scaling policy sends its resource requests to (there is no autoscaler);
      - the preemption watcher (nothing drains the node), unless ``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER`` is set.

    On any other cluster every helper but the first stays. Within one process that trains run after run on its own
    Ray (``raypar study``, a notebook after ``ray.init()``), a run whose controller dies without cleaning up leaves
    its placement group until Ray shuts down. Private API: where Ray's classes are not as expected, the helper
    stays."""
    try:
        from ray.train.v2._internal.callbacks import DatasetsCallback
        from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
        from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy
    except ImportError:
        return trainer_cls
    if not (hasattr(trainer_cls, "_create_default_callbacks")
            and hasattr(trainer_cls, "_initialize_and_run_controller")):
        return trainer_cls

    class FixedWithoutAutoscaler(FixedScalingPolicy):
        """Ray Train's fixed scaling policy without its resource requests (they start the autoscaling
        coordinator's actor)."""
        def after_controller_start(self, train_run_context):
            pass

        def _maybe_send_resource_request(self):
            pass

        def _send_resource_request(self):
            pass

        def _cancel_resource_request(self):
            pass

    class WithoutIdleHelpers(trainer_cls):
        def _create_default_callbacks(self):
            private = started_by_this_process()
            return [c for c in super()._create_default_callbacks()
                    if not (isinstance(c, DatasetsCallback) and not getattr(self, "datasets", None)
                            or isinstance(c, PlacementGroupCleanerCallback) and private)]

        def _initialize_and_run_controller(self, **kwargs):
            if not started_by_this_process():
                return super()._initialize_and_run_controller(**kwargs)
            if type(kwargs.get("scaling_policy")) is FixedScalingPolicy:
                kwargs["scaling_policy"] = FixedWithoutAutoscaler(kwargs["scaling_policy"].scaling_config)
            # read here into the controller's environment (which it reads when made); set while fit() runs
            with env_default(PREEMPTION_WATCHER_ENV, "0"):
                return super()._initialize_and_run_controller(**kwargs)
    return WithoutIdleHelpers


def interruptible(trainer_cls):
    """``trainer_cls`` whose ``fit()`` in the main thread leaves Ctrl-C to the caller, as a ``KeyboardInterrupt``.

    Ray Train (2.60) installs its own SIGINT handler when ``fit()`` runs in the main thread (``raypar.fit`` called
    from a script): it aborts the controller, and the caller got no KeyboardInterrupt and could not end the run KILLED
    (the script exited 1). Here the handler is not installed; the controller is kept as ``trainer.controller`` for
    :func:`abort`. Private API: where Ray has no
    ``_register_sigint_handler``, ``trainer_cls`` itself."""
    if not hasattr(trainer_cls, "_register_sigint_handler"):
        return trainer_cls

    class Interruptible(trainer_cls):
        controller = None

        def _register_sigint_handler(self, controller):
            self.controller = controller
    return Interruptible


def abort(trainer, timeout_s: float = 30.0) -> None:
    """Abort the run of an :func:`interruptible` trainer whose ``fit()`` was interrupted (its workers and actors
    stop, its placement group goes); nothing when it has no controller, or the controller is gone."""
    import ray
    controller = getattr(trainer, "controller", None)
    if controller is None:
        return
    try:
        ray.get(controller.abort.remote(), timeout=timeout_s)
    except Exception:  # noqa: BLE001 - gone already, or too slow: Ray's shutdown ends it
        pass
