"""``raypar train``: one run, its start-up phases and progress on the console, a summary at the end.

The console carries raypar's own lines only: Ray's and MLflow's log lines go to the run's log file
(``<storage-path>/<name>.log`` for a local storage path), whose path the summary prints.
"""
from __future__ import annotations

import logging
import os
import sys
import time

from ..engine.auto import AUTO
from ..errors import UserError
from ..training.tracking import redact

# loggers whose chatter belongs in the log file, not on the console
CHATTY = ("ray", "mlflow", "alembic", "urllib3", "filelock", "py.warnings")


def quiet_console(log_path: str | None) -> None:
    """Send Ray's and MLflow's log lines (every level) to ``log_path`` instead of the console; without a path, keep
    only their errors."""
    import mlflow  # noqa: F401  (MLflow adds its console handler on import: import it first, then take it away)
    handler = logging.FileHandler(log_path) if log_path else None
    if handler:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in CHATTY:
        log = logging.getLogger(name)
        for h in list(log.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                log.removeHandler(h)
        log.propagate = False
        if handler:
            log.addHandler(handler)
            log.setLevel(logging.INFO)
        else:
            log.setLevel(logging.ERROR)
    logging.captureWarnings(True)


def log_file(storage_path: str, name: str) -> str | None:
    """Where a run's or study's Ray and MLflow log lines go: ``storage_path/<name>.log``, its folder made; None for
    remote storage (``s3://`` and the like). Raises UserError when the folder cannot be made."""
    if "://" in storage_path:
        return None
    try:
        os.makedirs(storage_path, exist_ok=True)
    except OSError as e:
        raise UserError(f"--storage-path {redact(storage_path)} cannot be written: {e.strerror or e}") from None
    return os.path.join(storage_path, f"{name}.log")


def process_age() -> float:
    """Seconds since this process started (from ``/proc``; 0.0 where that is not known)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


class Clock:
    """Seconds since a start, for the start-up lines: the process's (``from_process_start``: a command's, with
    Python's and torch's imports), or the clock's own making."""

    def __init__(self, from_process_start: bool = False):
        self.t0 = time.perf_counter() - (process_age() if from_process_start else 0.0)

    def __call__(self) -> float:
        return time.perf_counter() - self.t0


def fit_with_progress(cfg, fit, console, clock: Clock | None = None, resume: bool = False, opened: dict | None = None):
    """Run ``fit`` in a thread and show its progress: a line per start-up phase with the seconds since the command
    started, then a bar per epoch on a terminal (a line per epoch otherwise). Returns ``fit``'s result; re-raises
    its error. On Ctrl-C the MLflow run ends KILLED ("interrupted") and every epoch already reported is printed."""
    import queue as queue_mod
    import threading

    import ray
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    clock = clock or Clock()
    # the progress queue lives on this process's node: on a cluster, a worker node that dies (and takes its driver
    # with it, which Ray Train restarts elsewhere) must not take the queue this loop reads
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    events = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
    outcome: dict = {}
    opened = {} if opened is None else opened

    def run():
        try:
            outcome["result"] = fit(cfg, events, resume=resume, opened=opened)
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    epochs = cfg.optim.epochs
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[info]}"), console=console, disable=not console.is_terminal) as bars:
        tasks: dict = {}
        shown: set = set()                                   # epochs whose line is on the console

        def epoch_line(epoch, m):
            info = (f"train loss {m['train_loss']:.3f}  val acc {m['val_acc']:.2%}  "
                    f"{m['samples_per_s']:.0f} samples/s")
            shown.add(epoch)
            return info

        def show(ev):
            if ev["kind"] == "phase":                    # one line, however narrow the console
                console.print(f"[{clock():5.1f} s] {ev['text']}", highlight=False, soft_wrap=True)
            elif ev["kind"] == "note":                     # one line, however narrow the console
                console.print(ev["text"], highlight=False, soft_wrap=True)
            elif ev["kind"] == "start":
                if ev.get("metrics") and ev["epoch"] not in shown and tasks:    # saved, but its line was lost
                    console.print(f"epoch {ev['epoch']}/{epochs}: {epoch_line(ev['epoch'], ev['metrics'])}",
                                  highlight=False)
                if ev["restarts"]:
                    console.print(f"[{clock():5.1f} s] restarted (restart {ev['restarts']}) from the checkpoint of "
                                  f"epoch {ev['epoch']}", highlight=False)
                console.print(f"[{clock():5.1f} s] first step (split {','.join(map(str, ev['split']))})",
                              highlight=False)
            elif ev["kind"] in ("step", "epoch"):
                epoch = ev["epoch"]
                if epoch not in tasks:
                    tasks[epoch] = bars.add_task(f"epoch {epoch}/{epochs}", total=ev.get("total", 1), info="")
                if ev["kind"] == "step":
                    bars.update(tasks[epoch], completed=ev["done"], total=ev["total"])
                    return
                info = epoch_line(epoch, ev["metrics"])
                bars.update(tasks[epoch], info=info, completed=bars.tasks[tasks[epoch]].total)
                if not console.is_terminal:
                    print(f"epoch {epoch}/{epochs}: {info}", flush=True)

        try:
            while thread.is_alive() or not events.empty():
                try:
                    show(events.get(timeout=0.5))
                except queue_mod.Empty:
                    continue
        except KeyboardInterrupt:
            while True:                                   # every epoch already reported is printed
                try:
                    show(events.get_nowait())
                except Exception:  # noqa: BLE001 - empty, or the queue's actor is gone
                    break
            opened["interrupted"] = True                 # fit's own ending, still to come, must not say FAILED
            if opened.get("run_id"):
                from ..training import tracking
                try:
                    tracking.close_run(opened["tracking_uri"], opened["run_id"], reason=tracking.INTERRUPTED)
                except Exception:  # noqa: BLE001 - the run stays RUNNING; a resume reopens it
                    pass
            raise
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def cmd_train(args) -> int:
    """``raypar train``: see the module's docstring. Exit 0 when training finished, 1 when it stopped or failed,
    2 for a user mistake, 130 when interrupted."""
    clock = Clock(from_process_start=True)
    from rich.console import Console
    from rich.panel import Panel

    from ..training import data, tracking
    from ..training.launch import fit, root_cause
    from ..training.runs import decide
    from ..training.session import check_address, connect
    from .options import config_from_args

    console = Console(highlight=False)
    cfg = config_from_args(args)
    samples = data.train_size(cfg)                            # a missing data set (or a bad --folds) fails here
    batch = data.fitted_batch(samples, cfg.optim.batch_size, cfg.engine.replicas)
    if batch != cfg.optim.batch_size:
        print(f"raypar train: --batch-size {cfg.optim.batch_size} is more than the {samples} training "
              f"samples{' per replica' if cfg.engine.replicas > 1 else ''}: using {batch}", flush=True)
        cfg = cfg.replace(batch_size=batch)
    tracking.check_reachable(cfg.run.tracking_uri)
    if cfg.model.subnets == AUTO:                             # a number before the run's name and resources
        from ..training.subnets import resolve_subnets
        cfg, line = resolve_subnets(cfg, data.load_for(cfg))
        console.print(f"[{clock():5.1f} s] {line}", soft_wrap=True)
    decision = decide(cfg.resolved(), args.resume)
    cfg = decision.cfg
    if cfg.engine.address:
        check_address(cfg.engine.address)
    made = None if "://" in cfg.run.storage_path or os.path.exists(cfg.run.storage_path) else cfg.run.storage_path
    log_path = log_file(cfg.run.storage_path, cfg.run.name)
    quiet_console(log_path)
    console.print(f"[{clock():5.1f} s] {decision.line()}")
    store, opened = None, {}
    try:
        console.print(f"[{clock():5.1f} s] starting Ray")
        store = tracking.prepare_store(cfg.run.tracking_uri)     # a new database's tables made while Ray starts
        connect(cfg)
        if store is not None:
            store.join()
        result = fit_with_progress(cfg, fit, console, clock, resume=args.resume, opened=opened)
    except UserError:
        _forget(log_path, made, cfg)                    # a mistake found before training leaves nothing behind
        if store is not None and not opened.get("run_id"):
            store.undo()
        raise
    except FloatingPointError as e:                             # a non-finite loss: what to change, in one line
        print(redact(f"raypar: training stopped: {e}"), file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - an internal error: its cause in one line, the details in the log
        cause = root_cause(e)
        if isinstance(cause, UserError):                        # a mistake only a worker could see: one line
            raise UserError(str(cause)) from None
        import traceback
        if log_path:
            with open(log_path, "a") as f:
                f.write(redact(traceback.format_exc()))
        else:
            print(redact(traceback.format_exc()), end="", file=sys.stderr)
        print(redact(f"raypar: training failed: {failure_line(e, cfg.run.max_failures)}"), file=sys.stderr)
        if log_path:
            print(f"raypar: details in {redact(log_path)}", file=sys.stderr)
        return 1
    m = result.metrics
    ui = (f"mlflow ui --backend-store-uri {cfg.run.tracking_uri}" if cfg.run.tracking_uri.startswith("sqlite")
          else f"open {redact(cfg.run.tracking_uri)}")
    split = ",".join(map(str, result.split)) if result.split else "?"
    lines = [f"run {result.name}: {cfg.model.name} x{cfg.model.width_mult:g} on {cfg.data.dataset}, "
             f"N = {cfg.model.subnets}, K = {cfg.model.iterations}, split {split}",
             f"final val accuracy [bold]{m['val_acc']:.2%}[/bold] after epoch {m['epoch']}/{cfg.optim.epochs}, "
             f"{m['samples_per_s']:.0f} samples/s, {m['epoch_time_s']:.1f} s/epoch",
             f"{clock():.0f} s in all; MLflow run {result.run_id} (experiment {cfg.run.experiment!r})"
             f"{' — resumed' if result.resumed else ''}",
             f"checkpoints: {redact(cfg.run.storage_path)}/{cfg.run.name}"
             + (f"; log: {redact(log_path)}" if log_path else "")]
    console.print(Panel("\n".join(lines), title="raypar train", expand=False))
    print(f"open the MLflow UI with:\n  {ui}")
    print(f"raypar: training finished: run {result.run_id}")
    return 0


def _forget(log_path: str | None, made: str | None, cfg) -> None:
    """Remove the log file, and the storage folder if this command made it, when nothing was trained."""
    from ..training import tracking
    if tracking.checkpoints(cfg.run.storage_path, cfg.run.name):
        return
    for name in CHATTY:                                    # no logger keeps writing to the file removed here
        log = logging.getLogger(name)
        for h in list(log.handlers):
            if isinstance(h, logging.FileHandler):
                log.removeHandler(h)
                h.close()
    if log_path and os.path.exists(log_path):
        os.remove(log_path)
    if made and os.path.isdir(made) and not os.listdir(made):
        os.rmdir(made)


def failure_line(error: BaseException, max_failures: int) -> str:
    """One line for a run that failed: which process was lost and what to do, or the error's first line."""
    from ..training.launch import failure_reason
    reason = failure_reason(error, max_failures)
    if "ActorDiedError" in reason or "WorkerGroupError" in reason or "died" in reason.lower():
        reason += ("; a process of the run was lost. The last checkpoint is kept: run the same command with "
                   "--resume to continue, and --max-failures N to restart by itself")
    return reason
