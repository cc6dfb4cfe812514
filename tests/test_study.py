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
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    rc = main(["study", "--recipe", "digits-cpu", "--width-mult", "0.125", "--epochs", "2", "--subnets", "1,2",
               "--seeds", "0", "--balance", "flops", "--cpus-per-subnet", "0.5", "--name", "tiny",
               "--tracking-uri", uri, "--experiment", "study-test"])
    assert rc == 0
    out = capsys.readouterr().out
    parent_id = out.strip().splitlines()[-1].split("parent run ")[-1]
    client = MlflowClient(uri)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["raypar.kind"] == "study"
    assert parent.data.params["recipe"] == DIGITS and parent.data.params["subnets"] == "1,2"
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    assert sorted(r.data.params["num_subnets"] for r in children) == ["1", "2"]   # N = 1 trains too
    for r in children:
        assert r.info.status == "FINISHED" and r.data.params["recipe"] == DIGITS
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")] == [1, 2]
    # the table printed as it went: one line per run
    assert "tiny-n1-k1-s0" in out and "tiny-n2-k1-s0" in out

    folder = tmp_path / "studies" / "tiny"
    report = (folder / "report.md").read_text()
    assert f"| vgg11 | digits | 1 | 1 | 1 | {DIGITS} | 0 |" in report
    assert f"| vgg11 | digits | 2 | 1 | 1 | {DIGITS} | 0 |" in report
    for name in ("val_acc.png", "epoch_time.png", "acc_vs_time.png"):
        assert imread(folder / name).shape[:2] == (500, 800), name
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"report.md", "val_acc.png", "epoch_time.png", "acc_vs_time.png", "results.json"} <= artifacts

    assert main(["compare", "--parent", parent_id, "--tracking-uri", uri, "--format", "json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert [(r["n"], r["k"], r["seeds"]) for r in table] == [(1, 1, [0]), (2, 1, [0])]
    assert table[0]["speedup"] == 1.0 and table[0]["acc_delta"] == 0.0
    by_n = {r.data.params["num_subnets"]: r for r in children}
    assert table[1]["final_val_acc"] == pytest.approx(by_n["2"].data.metrics["val_acc"])


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
    assert md[2] == ("| vgg11 | digits | 1 | 1 | 1 | r@1 | 0,1 | 91.00 ± 1.41 | 91.00 ± 1.41 | 10.0 | 100 | 1.00x "
                     "| +0.00 |")
    assert md[3].endswith("| 1.70x | -3.00 |")
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
