"""Checkpoints of a run: every part's state in one file, its hash and the run's metadata beside it.

A checkpoint folder holds ``state.pt`` (the engine's state: every part's weights, optimizer, scheduler and RNG)
and ``raypar_meta.json`` (epoch, split, where the coarse sweep runs, MLflow run id, the epoch's metrics, the
configuration, the state's SHA-256), written last: a folder without it, or whose state does not match the hash, is
torn and skipped. Only writing and reading a state import torch: the command that decides whether a run is new reads
the metadata alone.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys

from . import tracking
from .config import TrainConfig


def write(folder: str, engine, meta: dict) -> None:
    import torch
    path = os.path.join(folder, tracking.STATE_FILE)
    torch.save(engine.get_state(), path)
    meta = dict(meta, state_sha256=sha256(path))
    tracking.write_meta(folder, meta)               # written last: a checkpoint without it is treated as torn


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read(folder: str) -> tuple[dict, dict]:
    """(meta, state) of a checkpoint folder; raises if it is torn (missing meta, bad hash, unreadable state)."""
    with open(os.path.join(folder, tracking.META_FILE)) as f:
        meta = json.load(f)
    path = os.path.join(folder, tracking.STATE_FILE)
    if sha256(path) != meta.get("state_sha256"):
        raise ValueError(f"checkpoint {folder} is torn: {tracking.STATE_FILE} does not match its hash")
    import torch
    # weights_only: a checkpoint can never run code on load
    return meta, torch.load(path, weights_only=True, map_location="cpu")


def load_latest(cfg: TrainConfig) -> tuple[dict | None, dict | None]:
    """The newest readable checkpoint of this run, or (None, None).

    Candidates are Ray's latest (``ray.train.get_checkpoint()``) and every checkpoint folder under
    ``storage_path/name``, newest first: a driver killed right after reporting may die before Ray's controller
    registers that checkpoint, and a torn newest checkpoint falls back to the one before it."""
    import ray.train
    listed = tracking.checkpoints(cfg.run.storage_path, cfg.run.name)
    latest = ray.train.get_checkpoint()
    if latest is not None and latest.path.rstrip("/") not in {c.path.rstrip("/") for c in listed}:
        listed.insert(0, latest)
    for ckpt in listed:
        try:
            with ckpt.as_directory() as folder:
                return read(folder)
        except Exception as e:  # noqa: BLE001 - any damage means: fall back to an older checkpoint
            print(f"raypar: warning: skipping unreadable checkpoint {ckpt.path}: {e}", file=sys.stderr)
    return None, None


def newest_readable_meta(storage_path: str, name: str) -> dict | None:
    """The metadata of the newest checkpoint of run ``name`` whose state matches its hash, or None (no checkpoint,
    or every one torn)."""
    for ckpt in tracking.checkpoints(storage_path, name):
        try:
            with ckpt.as_directory() as folder:
                with open(os.path.join(folder, tracking.META_FILE)) as f:
                    meta = json.load(f)
                if sha256(os.path.join(folder, tracking.STATE_FILE)) == meta.get("state_sha256"):
                    return meta
        except Exception:  # noqa: BLE001 - a torn checkpoint: try the one before
            continue
    return None
