"""Which run a command trains: a run's identity is its name, the folder of its checkpoints under ``--storage-path`` and
the name of its MLflow run.

The rule (docs/reliability.md, "Runs and resume"):

- no ``--name``: a new run with a new, unique name;
- ``--name`` of no run yet: a new run of that name;
- ``--name`` of an interrupted or failed run: it resumes from its last checkpoint;
- ``--name`` of a finished run: refused, unless ``--resume`` with more ``--epochs`` asks to train it further;
- ``--resume`` without ``--name``: the newest unfinished run in ``--storage-path`` with the same settings resumes.

A run is finished when its newest readable checkpoint is at its last epoch; a run whose checkpoints are all
torn starts over. A finished run is never trained again silently.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from ..errors import UserError
from . import tracking
from .checkpoints import newest_readable_meta
from .config import TrainConfig

# settings that do not change what a run computes: a run resumed with other values of these is the same run
BOOKKEEPING = {"name", "storage_path", "max_failures", "num_to_keep", "tracking_uri", "experiment", "recipe",
               "address", "resource_timeout", "epochs"}


@dataclass
class Decision:
    """The run a command trains: ``cfg`` (with its name), whether it resumes, and from which epoch."""
    cfg: TrainConfig
    resumed: bool
    epoch: int = 0                    # the epoch of the checkpoint it resumes from (0: a new run)
    epochs_before: int | None = None  # a run resumed with other --epochs: the epochs it had
    meta: dict | None = None          # the metadata of the checkpoint it resumes from (read and hash-checked once)

    def line(self) -> str:
        """The start line that says which run this is."""
        if not self.resumed:
            return f"new run {self.cfg.run.name}"
        if self.epochs_before is not None:
            return (f"resuming run {self.cfg.run.name} from the checkpoint of epoch {self.epoch}, now for "
                    f"{self.cfg.optim.epochs} epochs (it had {self.epochs_before})")
        return f"resuming run {self.cfg.run.name} from the checkpoint of epoch {self.epoch}"


def _epochs_of(meta: dict) -> int:
    config = meta.get("config") or {}
    return int(config.get("optim", {}).get("epochs", 0))


def _settings_of(meta: dict) -> dict:
    """A checkpoint's settings by flat key, less the bookkeeping ones."""
    try:
        flat = TrainConfig(**{k: v for k, v in meta["config"].items() if k != "extra"}).flat()
    except Exception:  # noqa: BLE001 - a checkpoint of another version: it matches nothing
        return {}
    return {k: v for k, v in flat.items() if k not in BOOKKEEPING}


def _settings_like(meta: dict, wanted: dict) -> bool:
    """A checkpoint's settings are ``wanted``; where ``wanted``'s ``coarse_in_actors`` is unset (None), whatever
    placement the checkpoint's run had (a run keeps the one it started with)."""
    have = _settings_of(meta)
    if wanted.get("coarse_in_actors", False) is None:
        have, wanted = ({k: v for k, v in d.items() if k != "coarse_in_actors"} for d in (have, wanted))
    return bool(have) and have == wanted


def _unique_name(cfg: TrainConfig) -> str:
    m, seed = cfg.model, cfg.optim.seed
    base = (f"{m.name}-x{m.width_mult:g}-{cfg.data.dataset.split(':')[0]}-n{m.subnets}-k{m.iterations}-s{seed}"
            f"-{time.strftime('%Y%m%d-%H%M%S')}")
    name, i = base, 1
    while tracking.checkpoints(cfg.run.storage_path, name) or _exists(cfg.run.storage_path, name):
        i += 1
        name = f"{base}-{i}"
    return name


def _exists(storage_path: str, name: str) -> bool:
    return "://" not in storage_path and os.path.exists(os.path.join(storage_path, name))


def _run_names(storage_path: str) -> list[str]:
    """The run folders under a local ``storage_path``, newest first."""
    if "://" in storage_path or not os.path.isdir(storage_path):
        return []
    folders = [e for e in os.scandir(storage_path) if e.is_dir()]
    return [e.name for e in sorted(folders, key=lambda e: e.stat().st_mtime, reverse=True)]


def decide(cfg: TrainConfig, resume: bool = False) -> Decision:
    """The run that ``cfg`` (as the command line gave it, paths resolved) trains, by the rule above.

    Raises:
        UserError: ``--name`` of a finished run without ``--resume`` and more epochs; ``--resume`` with nothing to
            resume.
    """
    run = cfg.run
    if run.name is None and not resume:
        return Decision(cfg.replace(name=_unique_name(cfg)), resumed=False)
    if run.name is None:                                       # --resume: the newest unfinished run like this one
        wanted = {k: v for k, v in cfg.flat().items() if k not in BOOKKEEPING}
        for name in _run_names(run.storage_path):
            meta = newest_readable_meta(run.storage_path, name)
            if meta and meta["epoch"] < _epochs_of(meta) and _settings_like(meta, wanted):
                had = _epochs_of(meta)
                return Decision(cfg.replace(name=name), resumed=True, epoch=meta["epoch"],
                                epochs_before=had if had != cfg.optim.epochs else None, meta=meta)
        raise UserError(f"--resume: no unfinished run with these settings in {tracking.redact(run.storage_path)}; "
                        f"name one with --name, or leave out --resume to start a new run")
    meta = newest_readable_meta(run.storage_path, run.name)
    if meta is None:
        if resume:
            raise UserError(f"--resume: run {run.name!r} has no checkpoint in {tracking.redact(run.storage_path)}")
        return Decision(cfg, resumed=False)
    done, had = meta["epoch"], _epochs_of(meta)
    if done < had:
        return Decision(cfg, resumed=True, epoch=done, epochs_before=had if had != cfg.optim.epochs else None,
                        meta=meta)
    if resume and cfg.optim.epochs > done:
        return Decision(cfg, resumed=True, epoch=done, epochs_before=had, meta=meta)
    raise UserError(f"run {run.name!r} already finished ({done} of {had} epochs): give --resume with more --epochs "
                    f"to train it further, or another --name (or none) for a new run")
