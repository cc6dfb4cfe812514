"""`raypar study` on a tiny configuration: nested MLflow runs, the report and its plots; `raypar compare` on that
store and on a store with known numbers."""
import json
import time

import pytest
from matplotlib.image import imread
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from raypar.cli.main import main
from raypar.tools.compare import rows
from raypar.training.recipes import get as get_recipe

DIGITS = get_recipe("digits-cpu").tag      # "digits-cpu@<its version>"


def test_study_writes_nested_runs_report_and_plots(ray_local, tmp_path, monkeypatch, capsys):
    """Two folds of one seed for N = 1 and N = 2 (one epoch each): four nested runs named by their fold, the params
    that re-read the study from MLflow alone, the paired table; the same command again retrains nothing."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    argv = ["study", "--recipe", "digits-cpu", "--width-mult", "0.125", "--epochs", "1", "--subnets", "1,2",
            "--seeds", "0", "--folds", "2", "--balance", "flops", "--cpus-per-subnet", "0.5", "--name", "tiny",
            "--tracking-uri", uri, "--experiment", "study-test"]
    rc = main(argv)
    assert rc == 0
    out = capsys.readouterr().out
    parent_id = out.strip().splitlines()[-1].split("parent run ")[-1]
    client = MlflowClient(uri)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["raypar.kind"] == "study"
    assert parent.data.params["recipe"] == DIGITS and parent.data.params["subnets"] == "1,2"
    assert parent.data.params["folds"] == "2"
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    names = {r.info.run_name: r for r in children}
    assert sorted(names) == ["tiny-n1-k1-s0-f0", "tiny-n1-k1-s0-f1", "tiny-n2-k1-s0-f0", "tiny-n2-k1-s0-f1"]
    for name, r in names.items():                     # N = 1 trains too, on every fold
        p = r.data.params
        assert r.info.status == "FINISHED" and p["recipe"] == DIGITS
        assert (p["num_subnets"], p["iterations"], p["seed"], p["folds"], p["fold"]) == (
            name[6], "1", "0", "2", name[-1])
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")] == [1]
        assert r.data.tags["raypar.split"] == ("7" if p["num_subnets"] == "1" else "3,4")    # the split trained
    # the table printed as it went: one line per run; Ray's and MLflow's lines in the study's log file
    assert all(name in out for name in names)
    log = (tmp_path / "raypar_runs" / "tiny.log").read_text()
    assert "mlflow" in log and "INFO mlflow" not in capsys.readouterr().err

    folder = tmp_path / "studies" / "tiny"
    report = (folder / "report.md").read_text()
    assert f"| vgg11 x0.125 | digits | 1 | 1 | 1 | {DIGITS} | 0 | 2 |" in report
    assert f"| vgg11 x0.125 | digits | 2 | 1 | 1 | {DIGITS} | 0 | 2 |" in report
    assert "validation accuracy on the held-out fold" in report and "test set stays untouched" in report
    assert "## Accuracy against the original network" in report
    assert f"| vgg11 x0.125 | digits | 2 | 1 | 1 | {DIGITS} | 2 |" in report          # its row of the paired table
    for name in ("val_acc.png", "epoch_time.png", "acc_vs_time.png"):
        assert imread(folder / name).shape[:2] == (500, 800), name
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"report.md", "val_acc.png", "epoch_time.png", "acc_vs_time.png", "results.json"} <= artifacts
    results = json.loads((folder / "results.json").read_text())
    assert [(r["n"], r["folds"], r["runs"], r["pairs"]) for r in results] == [(1, 2, 2, None), (2, 2, 2, 2)]

    assert main(["compare", "--parent", parent_id, "--tracking-uri", uri, "--format", "json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert [(r["n"], r["k"], r["seeds"]) for r in table] == [(1, 1, [0]), (2, 1, [0])]
    assert table[0]["speedup"] == 1.0 and table[0]["acc_delta"] == 0.0
    acc = {(r.data.params["num_subnets"], r.data.params["fold"]): r.data.metrics["val_acc"] for r in children}
    assert table[1]["final_val_acc"] == pytest.approx((acc["2", "0"] + acc["2", "1"]) / 2)
    assert table[1]["pair_mean"] == pytest.approx((acc["2", "0"] - acc["1", "0"] + acc["2", "1"] - acc["1", "1"]) / 2)
    assert table[0]["base_val_acc"] == pytest.approx((acc["1", "0"] + acc["1", "1"]) / 2)

    # the same command again: every run finished, none is trained again; the same four runs, the same numbers
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert again.count("(finished before)") == 4 and "epoch 1/1" not in again
    assert len(client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")) == 4
    assert json.loads((folder / "results.json").read_text()) == results


def _fake_run(client, exp, n, k, seed, accs, sps, recipe="r@1"):
    run = client.create_run(exp, tags={})
    rid = run.info.run_id
    params = dict(model="vgg11", width_mult="0.25", dataset="digits", epochs=str(len(accs)), batch_size="64",
                  lr="0.05", lr_schedule="cosine", weight_decay="0.0005", num_subnets=str(n), iterations=str(k),
                  replicas="1", coarse_depth="1", coarse_width="1.0", seed=str(seed), recipe=recipe)
    ts = int(time.time() * 1000)
    metrics = [Metric("val_acc", a, ts, e + 1) for e, a in enumerate(accs)]
    metrics += [Metric("samples_per_s", sps, ts, e + 1) for e in range(len(accs))]
    metrics += [Metric("epoch_time_s", 1000 / sps, ts, e + 1) for e in range(len(accs))]
    client.log_batch(rid, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
    client.set_terminated(rid, "FINISHED")
    return rid


def test_compare_groups_seeds_and_sets_rows_against_the_baseline(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("known")
    _fake_run(client, exp, 1, 1, 0, [0.5, 0.90], 100)
    _fake_run(client, exp, 1, 1, 1, [0.6, 0.92], 100)
    _fake_run(client, exp, 2, 1, 0, [0.7, 0.89], 180)
    _fake_run(client, exp, 2, 1, 1, [0.95, 0.87], 160)
    failed = _fake_run(client, exp, 4, 1, 0, [0.1], 1)
    client.set_terminated(failed, "FAILED")                      # not compared
    from raypar.tools.compare import finished_runs
    table = rows(finished_runs(uri, "known"))
    assert [(r.n, r.k, r.seeds) for r in table] == [(1, 1, [0, 1]), (2, 1, [0, 1])]
    base, par = table
    assert base.final_val_acc == pytest.approx(0.91) and base.final_val_acc_std == pytest.approx(0.0141421, 1e-4)
    assert par.best_val_acc == pytest.approx((0.89 + 0.95) / 2)      # best, not final, of each seed
    assert par.final_val_acc == pytest.approx(0.88)
    assert par.speedup == pytest.approx(1.7) and par.acc_delta == pytest.approx(-0.03)
    assert main(["compare", "--experiment", "known", "--tracking-uri", uri, "--format", "markdown"]) == 0
    md = capsys.readouterr().out.splitlines()
    assert md[2] == ("| vgg11 x0.25 | digits | 1 | 1 | 1 | r@1 | 0,1 | - | 91.00 ± 1.41 | 91.00 ± 1.41 | 10.0 | 100 "
                     "| 1.00x | +0.00 | - | - | - | 20.0 s |")
    # runs without fold params pair by seed: diffs -0.01 and -0.05; the mean curve never reaches 91 %
    assert md[3].endswith("| 1.70x | -3.00 | 2 | -3.00 ± 2.83 | [-28.41, +22.41] | never |")
    assert main(["compare", "--experiment", "known", "--tracking-uri", uri, "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("model,dataset,n,k,replicas,recipe,seeds")
    assert main(["compare", "--experiment", "absent", "--tracking-uri", uri]) == 2
    assert "no MLflow experiment 'absent'" in capsys.readouterr().err
    typo = f"sqlite:///{tmp_path}/no/such/mlflow.db"                 # reading never creates a database
    assert main(["compare", "--tracking-uri", typo]) == 2
    assert capsys.readouterr().err.strip() == (f"raypar: error: no MLflow database at {tmp_path}/no/such/mlflow.db "
                                               f"({typo}): check --tracking-uri / MLFLOW_TRACKING_URI, or train a "
                                               f"run first")
    assert not (tmp_path / "no").exists()


def _checkpoint(storage, name, epoch, epochs, run_id):
    """A readable checkpoint of run ``name`` at ``epoch`` of ``epochs``, as the training loop writes one."""
    import torch

    from raypar.training import checkpoints, tracking
    from raypar.training.config import TrainConfig
    folder = storage / name / f"checkpoint_{epoch:06d}"
    folder.mkdir(parents=True)
    torch.save({}, folder / tracking.STATE_FILE)
    config = TrainConfig.from_flat(epochs=epochs).to_dict()
    digest = checkpoints.sha256(folder / tracking.STATE_FILE)
    tracking.write_meta(str(folder), {"epoch": epoch, "mlflow_run_id": run_id, "metrics": {"val_acc": 0.5},
                                      "config": config, "state_sha256": digest})


@pytest.mark.unit
def test_an_explicit_split_is_the_parareal_runs_the_original_one_segment_and_the_report_says_it():
    from raypar.tools.study import plan, report
    from raypar.training.config import TrainConfig
    base = TrainConfig.from_flat(model="vgg11", balance=[2, 5], folds=5)
    runs = plan(base, [1, 2], [1, 2], [0, 1], "cut")
    assert {(r.model.subnets, r.model.iterations) for r in runs} == {(1, 1), (2, 1), (2, 2)}
    assert len(runs) == 3 * 2 * 5
    for r in runs:
        assert r.model.balance == ([7] if r.model.subnets == 1 else [2, 5])
    assert "; split 2+5; " in report([], base, "cut", "id", [0, 1])          # the report says which split


def test_a_recipes_splits_per_n_are_the_runs_of_that_n_and_the_report_names_them():
    from raypar.cli.main import build_parser
    from raypar.cli.options import config_and_splits
    from raypar.tools.study import plan, report
    args = build_parser().parse_args(["study", "--recipe", "digits-cpu", "--subnets", "1,2,3,4", "--folds", "5"])
    base, splits = config_and_splits(args, skip=("subnets", "iterations", "seed", "name"))
    assert splits == {2: [2, 5], 4: [1, 2, 2, 2]} and base.model.balance == "flops"
    runs = plan(base, [1, 2, 3, 4], [1], [0], "cv", splits=splits)
    assert {r.model.subnets: r.model.balance for r in runs} == {1: "flops", 2: [2, 5], 3: "flops", 4: [1, 2, 2, 2]}
    assert "; split 2+5 for N = 2, 1+2+2+2 for N = 4, other N by flops; " in report([], base, "cv", "id", [0], splits)


@pytest.mark.unit
def test_a_study_with_a_split_for_other_n_stops_in_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["study", "--recipe", "digits-cpu", "--model", "vgg16", "--subnets", "1,2", "--balance", "1,2,2,7",
                 "--folds", "5", "--name", "s"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["raypar: error: --balance 1,2,2,7 splits the network into 4 sub-networks; --subnets 1,2 asks "
                   "for others (an explicit split needs --subnets 1,4 or 4)"]
    assert list(tmp_path.iterdir()) == []


def test_a_resumed_study_reuses_finished_runs_and_refuses_other_epochs(tmp_path):
    from raypar.errors import UserError
    from raypar.tools.study import finished_run_id
    from raypar.training.config import TrainConfig
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("resume")
    died = client.create_run(exp).info.run_id                # the process died after its last checkpoint
    _checkpoint(tmp_path / "runs", "s-n1-k1-s0-f0", 2, 2, died)
    _checkpoint(tmp_path / "runs", "s-n2-k1-s0-f0", 1, 2, "unused")

    def cfg(name, epochs=2):
        return TrainConfig.from_flat(name=name, epochs=epochs, storage_path=str(tmp_path / "runs"), tracking_uri=uri)
    assert finished_run_id(cfg("s-n1-k1-s0-f0"), client) == died
    run = client.get_run(died)
    assert run.info.status == "FINISHED" and run.data.metrics["val_acc"] == 0.5       # logged, ended FINISHED
    assert finished_run_id(cfg("s-n2-k1-s0-f0"), client) is None                      # interrupted: fit resumes it
    assert finished_run_id(cfg("s-n4-k1-s0-f0"), client) is None                      # never started
    with pytest.raises(UserError, match="trained for 2 epochs .* the study asks for 3"):
        finished_run_id(cfg("s-n1-k1-s0-f0", epochs=3), client)
    with pytest.raises(UserError, match="started for 2 epochs"):
        finished_run_id(cfg("s-n2-k1-s0-f0", epochs=3), client)


@pytest.mark.unit
def test_ctrl_c_ends_the_study_killed(tmp_path):
    """Ctrl-C during a study's run: the study stops there, its parent run KILLED ("interrupted"), no run after it."""
    from raypar.tools.study import run_study
    from raypar.training.config import TrainConfig
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    base = TrainConfig.from_flat(width_mult=0.125, tracking_uri=uri, experiment="study-test",
                                 storage_path=str(tmp_path / "runs"))
    trained = []

    def fit(cfg):
        trained.append(cfg.run.name)
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_study(base, subnets=[1, 2], iterations=[1], seeds=[0], name="s", out=str(tmp_path / "out"),
                  init_ray=lambda cfg: None, fit=fit)
    assert trained == ["s-n1-k1-s0"]
    client = MlflowClient(uri)
    parent, = client.search_runs([client.get_experiment_by_name("study-test").experiment_id])
    assert (parent.info.status, parent.data.tags["raypar.error"]) == ("KILLED", "interrupted")
