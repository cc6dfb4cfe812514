"""``raypar bench``: training throughput and peak memory of the original network, the parareal network in one
process, raypar on Ray, Ray Train data parallel and PyTorch pipelining — side by side, in one run.

Every contender trains the same model (same initial weights) on the same synthetic batches (fixed seed) with the
same SGD recipe, in fresh Ray actor processes that each compute with one thread: on a CPU machine the comparison is
about how the work is spread over processes, not about threads. Each contender takes turns with the original, one step
each (a shared machine's drift falls on both alike), pair after pair, with no other contender's processes up
(``--all-together``: all of them up, all taking turns); data parallelism then runs DDP over gloo in the benchmark's own
Ray actors, as Ray Train's ``prepare_model`` sets it up. ``--one-at-a-time`` runs each contender alone, one after the
other, and DDP in Ray Train's ``TorchTrainer``. ``--rounds`` repeats the whole line-up. A contender's step time
is the median over the timed steps after the warm-up steps; samples/s = batch / step time; its peak memory is the
max RSS of each of its processes (``resource.getrusage`` in the process itself, ``VmHWM`` from ``/proc`` for the
engine's fine actors; psutil is not needed), next to an idle process's RSS (Python + Ray + torch).

For raypar rows the step is broken down with the engine's own :class:`~raypar.engine.driver.StepStats` (driver, busiest
fine actor, transfer/idle, bytes shipped vs the 4-tensor minimum) and set against its parallel limit, from the split's
uncontended profile::

    limit = sequential / max(pre + coarse sweeps + max fine + post, total work / min(cores, N + 1))


The package, one module a job: :mod:`.config` (:class:`BenchConfig`, the contenders' names), :mod:`.workload` (the
model, batches and training step every process computes), :mod:`.runner` (the benchmark's Ray actor processes),
:mod:`.contenders` (what each contender starts and runs; :func:`plan`), :mod:`.schedule` (taking turns, rounds;
:func:`measure`), :mod:`.cores` (:func:`core_speeds`), :mod:`.rows` (a row's numbers and ratios), :mod:`.output`
(table, JSON, PNG, MLflow) and :mod:`.cli` (``raypar bench``'s options and :func:`run_bench`).
"""
from __future__ import annotations

from .cli import add_arguments, cmd_bench, config_from_args, contenders_of, main, run_bench, tracking_uri_of
from .config import CONTENDERS, CPU_ONLY, DEFAULT_CONTENDERS, ENGINES, BenchConfig
from .contenders import Contender, plan
from .cores import core_speeds
from .output import environment, table, write_json, write_png
from .rows import bytes_minimum, finish_rows, merge_rounds, to_row
from .runner import Runner
from .schedule import measure
from .workload import _coarse, _model, _net, make_batches, optimizer, sgd_step

__all__ = ["BenchConfig", "CONTENDERS", "CPU_ONLY", "Contender", "DEFAULT_CONTENDERS", "ENGINES", "Runner",
           "_coarse", "_model", "_net", "add_arguments", "bytes_minimum", "cmd_bench", "config_from_args",
           "contenders_of", "core_speeds", "environment", "finish_rows", "main", "make_batches", "measure",
           "merge_rounds", "optimizer", "plan", "run_bench", "sgd_step", "table", "to_row", "tracking_uri_of",
           "write_json", "write_png"]
