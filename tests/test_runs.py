"""Which run a command trains (raypar.training.runs.decide): the rule, on checkpoint folders made here."""
import json
import os

import pytest

from raypar import UserError
from raypar.training.checkpoints import sha256
from raypar.training.config import TrainConfig
from raypar.training.runs import decide


def _cfg(tmp_path, **kw):
    return TrainConfig.from_flat(storage_path=str(tmp_path), **kw)


def _checkpoint(tmp_path, name, epoch, epochs, torn=False, index=None, **settings):
    """A checkpoint of run ``name`` at ``epoch`` of ``epochs``, as the training loop writes one."""
    folder = tmp_path / name / f"checkpoint_{index if index is not None else epoch:06d}"
    folder.mkdir(parents=True)
    (folder / "state.pt").write_bytes(b"state of epoch %d" % epoch)
    config = _cfg(tmp_path, name=name, epochs=epochs, **settings).to_dict()
    meta = {"epoch": epoch, "split": [3, 4], "mlflow_run_id": f"id-{name}", "metrics": {}, "config": config,
            "state_sha256": sha256(str(folder / "state.pt"))}
    (folder / "raypar_meta.json").write_text(json.dumps(meta))
    if torn:
        (folder / "state.pt").write_bytes(b"half")


def test_without_a_name_every_command_is_a_new_run(tmp_path):
    a, b = decide(_cfg(tmp_path)), decide(_cfg(tmp_path))
    assert not a.resumed and a.cfg.run.name.startswith("vgg16-x0.25-digits-n2-k1-s0-")
    os.makedirs(tmp_path / a.cfg.run.name)
    b = decide(_cfg(tmp_path))
    assert b.cfg.run.name != a.cfg.run.name and a.line() == f"new run {a.cfg.run.name}"


def test_a_named_unfinished_run_resumes_and_a_finished_one_is_refused(tmp_path):
    _checkpoint(tmp_path, "half", 2, 6)
    d = decide(_cfg(tmp_path, name="half", epochs=6))
    assert d.resumed and d.epoch == 2 and d.epochs_before is None
    assert d.line() == "resuming run half from the checkpoint of epoch 2"
    _checkpoint(tmp_path, "done", 6, 6)
    with pytest.raises(UserError, match="run 'done' already finished \\(6 of 6 epochs\\)"):
        decide(_cfg(tmp_path, name="done", epochs=6))
    with pytest.raises(UserError, match="already finished"):
        decide(_cfg(tmp_path, name="done", epochs=6), resume=True)        # nothing more to train
    more = decide(_cfg(tmp_path, name="done", epochs=8), resume=True)       # the explicit choice
    assert more.resumed and more.epoch == 6 and more.epochs_before == 6
    new = decide(_cfg(tmp_path, name="fresh"))
    assert not new.resumed and new.cfg.run.name == "fresh"


def test_a_torn_newest_checkpoint_counts_the_one_before(tmp_path):
    _checkpoint(tmp_path, "t", 5, 6)
    _checkpoint(tmp_path, "t", 6, 6, torn=True)
    d = decide(_cfg(tmp_path, name="t", epochs=6))
    assert d.resumed and d.epoch == 5


def test_resume_without_a_name_takes_the_newest_unfinished_run_with_the_same_settings(tmp_path):
    _checkpoint(tmp_path, "other", 1, 6, lr=0.01)                         # other settings
    _checkpoint(tmp_path, "finished", 6, 6)
    _checkpoint(tmp_path, "mine", 3, 6)
    d = decide(_cfg(tmp_path, epochs=6), resume=True)
    assert d.cfg.run.name == "mine" and d.epoch == 3
    d = decide(_cfg(tmp_path, epochs=9), resume=True)                      # more epochs: the same run, longer
    assert d.cfg.run.name == "mine" and d.epochs_before == 6
    with pytest.raises(UserError, match="--resume: no unfinished run with these settings"):
        decide(_cfg(tmp_path, lr=0.2), resume=True)
    with pytest.raises(UserError, match="--resume: run 'nothing' has no checkpoint"):
        decide(_cfg(tmp_path, name="nothing"), resume=True)


def test_resume_without_a_name_matches_any_placement_of_the_coarse_sweep_when_unset(tmp_path):
    """--coarse-in-actors left unset: a run that placed the sweep either way (or was made when the default was
    False) is resumed; given, the flag must match the run's."""
    _checkpoint(tmp_path, "placed", 2, 6, coarse_in_actors=True)
    assert decide(_cfg(tmp_path, epochs=6), resume=True).cfg.run.name == "placed"
    assert decide(_cfg(tmp_path, epochs=6, coarse_in_actors=True), resume=True).cfg.run.name == "placed"
    with pytest.raises(UserError, match="--resume: no unfinished run with these settings"):
        decide(_cfg(tmp_path, epochs=6, coarse_in_actors=False), resume=True)


def test_a_new_sqlite_store_is_made_in_the_background_and_undone_only_if_made_here(tmp_path):
    """`raypar train` makes a new MLflow database's tables while Ray starts; a command that stops before its run
    opens removes the database it made, never one that was there."""
    import sqlite3

    from raypar.training import tracking
    assert tracking.prepare_store("http://127.0.0.1:5000") is None and tracking.prepare_store("sqlite://") is None
    db = tmp_path / "mlflow.db"
    opening = tracking.prepare_store(f"sqlite:///{db}")
    opening.join()
    tables = {r[0] for r in sqlite3.connect(db).execute("select name from sqlite_master where type = 'table'")}
    assert {"experiments", "runs", "params"} <= tables
    again = tracking.prepare_store(f"sqlite:///{db}")
    again.undo()
    assert db.exists()                                        # it was there before: kept
    opening.undo()
    assert not db.exists()
