"""Progress events: what a driver tells the command (``raypar train``'s console) while a run starts and trains.

An event is a dict with ``kind`` = ``phase`` (a start-up phase begins: ``text``), ``note`` (a line of text), ``start``,
``step`` or ``epoch``, put on a ``ray.util.queue.Queue`` (or nowhere: ``events`` None).
"""
from __future__ import annotations

from .config import TrainConfig


def emit(events, **event) -> None:
    """Put ``event`` on ``events`` without waiting: progress never slows training."""
    if events is not None:
        events.actor.put_nowait.remote(event)


def starting_actors(cfg: TrainConfig, events) -> int:
    """The number of fine actors the run starts, said as a start-up phase."""
    actors = cfg.model.subnets - int(cfg.engine.driver_segment)
    if actors:
        emit(events, kind="phase", text=f"starting {actors} fine actor{'s' if actors != 1 else ''}")
    return actors
