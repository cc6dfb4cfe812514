"""`raypar bench` on a tiny configuration: every row present and the numbers consistent with each other.

No timing assertions: the machine is noisy. Left out here only for time (every process costs ~6 s of imports on
2 cores): data parallel in Ray Train's TorchTrainer (`--one-at-a-time`; its controller and worker group take ~45 s to
start) and parareal-1proc (the same code path as the original's, on a PararealNet).
"""
import json
import math

import pytest

from raypar import PararealNet, build
from raypar.tools.bench.cli import run_bench
from raypar.tools.bench.config import BenchConfig

CFG = dict(model="vgg11", width_mult=0.125, batch=16, warmup=1, steps=2, subnets=[1, 2], balance="flops",
           contenders=["original", "raypar", "raypar-no-driver-segment", "raypar-coarse-in-actors", "ddp", "pipe"])
NAMES = ["original", "raypar-N2", "raypar-N1-no-driver-segment", "raypar-N2-no-driver-segment",
         "raypar-N2-coarse-in-actors", "ddp-2", "pipe-2"]


@pytest.fixture(scope="module")
def bench(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    uri = f"sqlite:///{out}/mlflow.db"
    rows = run_bench(BenchConfig(**CFG), out=str(out), tracking_uri=uri)
    return rows, out, uri


def test_every_row_present_and_consistent(bench):
    rows, _, _ = bench
    by = {r["contender"]: r for r in rows}
    assert [r["contender"] for r in rows] == NAMES
    assert not [r.get("error") for r in rows if r.get("error")]
    base = by["original"]
    assert base["ratio_vs_original"] == 1.0
    for r in rows:
        assert r["samples_per_s"] > 0 and r["peak_rss_mb"] > 0
        assert r["samples_per_s"] == pytest.approx(CFG["batch"] / (r["step_ms"] / 1e3))
        # each contender against the original of its own pair (taking turns two by two, the default)
        ref = r["original_samples_per_s"] if r is not base else base["samples_per_s"]
        assert r["ratio_vs_original"] == pytest.approx(r["samples_per_s"] / ref)
        assert len(r["rss_per_process_mb"]) == r["processes"]
    assert [by[n]["processes"] for n in NAMES] == [1, 2, 2, 3, 2, 2, 2]
    for n in ("raypar-N2", "raypar-N1-no-driver-segment", "raypar-N2-no-driver-segment", "raypar-N2-coarse-in-actors"):
        r = by[n]
        assert r["driver_ms"] > 0 and r["fine_max_ms"] > 0 and r["transfer_ms"] >= 0
        assert r["efficiency"] == pytest.approx(r["ratio_vs_original"] / r["parallel_limit"])
        assert r["transport"] == "p2p"                          # auto, on CPUs
        assert len(r["fine_each_ms"]) == r["subnets"]
        assert max(r["fine_each_ms"]) <= r["fine_max_ms"] * (1 + 1e-9)       # a median of maxima bounds each


def test_each_contender_takes_turns_with_the_original_pair_after_pair(bench):
    rows, _, _ = bench
    assert all(r["taking_turns"] for r in rows)
    base, others = rows[0], rows[1:]
    assert len(base["step_ms_pairs"]) == len(others) and base["step_ms"] in base["step_ms_pairs"]
    last = 0.0
    for r in others:                      # o1 < c1 < o2 < c2 ..., each pair after the one before
        turns = [t for step in zip(r["original_step_started_s"], r["step_started_s"]) for t in step]
        assert turns == sorted(turns) and len(turns) == 2 * CFG["steps"] and turns[0] > last
        last = turns[-1]


def test_all_together_every_contender_takes_turns_step_by_step(ray_local):
    """``--all-together``: every contender's processes up at once, step i of each in turn."""
    from raypar.tools.bench.schedule import measure
    said = []
    names = ["original", "parareal-1proc", "raypar-N1-no-driver-segment"]
    rows = measure(BenchConfig(**{**CFG, "subnets": [1], "pairs": False,
                                  "contenders": ["original", "parareal-1proc", "raypar-no-driver-segment"]}),
                   log=said.append)
    assert "raypar bench: 3 contenders take turns, one step each" in said
    by = {r["contender"]: r["step_started_s"] for r in rows}
    assert list(by) == names and all(r["taking_turns"] and "original_samples_per_s" not in r for r in rows)
    turns = [t for step in zip(*by.values()) for t in step]
    assert turns == sorted(turns) and len(turns) == len(names) * CFG["steps"]    # o1 < p1 < n1 < o2 < ...


def test_raypar_ships_exactly_the_four_interface_tensors(bench):
    rows, _, _ = bench
    r = next(r for r in rows if r["contender"] == "raypar-N2-no-driver-segment")
    net = PararealNet(build("vgg11", width_mult=0.125), 2, balance=r["split"])
    minimum = sum(CFG["batch"] * 4 * (math.prod(s.in_shape) + math.prod(s.out_shape)) * 2 for s in net.segment_info)
    assert r["coarse_in_actors"] is False          # (without F_1 in the driver the sweep stays in the driver)
    assert r["bytes_per_step"] == r["bytes_min"] == minimum
    # the coarse sweep in the actors: the batch out, d_2 back, its gradient out (F_1 in the driver ships nothing)
    r = next(r for r in rows if r["contender"] == "raypar-N2-coarse-in-actors")
    assert r["coarse_in_actors"] is True
    out = math.prod(PararealNet(build("vgg11", width_mult=0.125), 2, balance=r["split"]).segment_info[1].out_shape)
    assert r["bytes_per_step"] == r["bytes_min"] == CFG["batch"] * 4 * (3 * 32 * 32 + 2 * out)


def test_json_png_and_mlflow_written(bench):
    rows, out, uri = bench
    data = json.loads((out / "bench.json").read_text())
    assert [r["contender"] for r in data["rows"]] == NAMES and data["config"]["batch"] == CFG["batch"]
    cs = data["environment"]["core_speeds"]          # every core timed alone and all at once
    assert len(cs["solo_ms"]) == len(cs["together_ms"]) == len(cs["cores"]) == data["environment"]["cpu_cores"]
    assert min(cs["solo_ms"]) > 0 and 0 < cs["capacity"] == pytest.approx(
        sum(min(cs["solo_ms"]) / t for t in cs["together_ms"]))
    from PIL import Image
    with Image.open(out / "bench.png") as im:
        assert im.size[0] > 100 and im.size[1] > 100
    from mlflow.tracking import MlflowClient
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("raypar-bench")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.params["batch"] == "16"
    assert run.data.metrics["original.ratio_vs_original"] == 1.0
    assert {"bench.json", "bench.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def test_rounds_merge_into_the_median_round_and_the_median_of_paired_ratios():
    from raypar.tools.bench.rows import finish_rows, merge_rounds

    def one(orig_ms, mine_ms, fail=False):
        rows = [{"contender": "original", "samples_per_s": 64e3 / orig_ms, "step_ms": orig_ms},
                {"contender": "raypar-N2", "samples_per_s": 64e3 / mine_ms, "step_ms": mine_ms, "parallel_limit": 2.0,
                 "driver_ms": mine_ms / 2}]
        if fail:
            rows[1] = {"contender": "raypar-N2", "samples_per_s": None, "step_ms": None, "error": "boom"}
        return {r["contender"]: r for r in finish_rows(rows)}

    rows = merge_rounds(["original", "raypar-N2"], [one(200, 100), one(300, 200), one(250, 150)])
    orig, mine = rows
    assert orig["step_ms"] == 250 and orig["ratio_vs_original"] == 1.0 and orig["step_ms_rounds"] == [200, 300, 250]
    assert mine["step_ms"] == 150 and mine["driver_ms"] == 75           # the median round, whole
    assert mine["ratio_rounds"] == pytest.approx([2.0, 1.5, 250 / 150])
    assert mine["ratio_vs_original"] == pytest.approx(250 / 150) and mine["efficiency"] == pytest.approx(250 / 300)
    failed = merge_rounds(["raypar-N2"], [one(200, 100), one(200, 100, fail=True)])[0]
    assert failed["error"] == "boom" and failed["step_ms_rounds"] == [100, None]
    assert merge_rounds(["raypar-N2"], [one(200, 100)])[0]["ratio_vs_original"] == 2.0   # one round: as measured


@pytest.mark.parametrize("contenders", [["original"], ["original", "ddp"], ["pipe", "raypar"]])
def test_plan_builds_only_what_is_asked(contenders):
    from raypar.tools.bench.contenders import plan
    got = [c.name for c in plan(BenchConfig(**{**CFG, "subnets": [2], "contenders": contenders}))]
    assert got == {"original": ["original"], "ddp": ["original", "ddp-2"]}.get(contenders[-1], ["raypar-N2", "pipe-2"])


def test_engine_rows_are_named_by_train_flags():
    """``raypar`` is the engine as train runs it by default (F_1 in the driver, the coarse sweep placed from the
    profile: None); the other raypar contenders add the train flags that make them, then a transport other than auto;
    N = 1 with F_1 in the driver is the original."""
    from raypar.tools.bench.config import CONTENDERS, DEFAULT_CONTENDERS, ENGINES
    from raypar.tools.bench.contenders import engine_label
    assert ENGINES == {"raypar": (True, None), "raypar-no-driver-segment": (False, None),
                       "raypar-coarse-in-actors": (True, True),
                       "raypar-no-driver-segment-coarse-in-actors": (False, True)}
    assert set(ENGINES) <= set(CONTENDERS) and {"raypar", "raypar-no-driver-segment"} <= set(DEFAULT_CONTENDERS)
    assert engine_label("raypar", 2, "auto") == "raypar-N2"
    assert engine_label("raypar-no-driver-segment", 1, "object-store") == "raypar-N1-no-driver-segment-object-store"
    assert engine_label("raypar-no-driver-segment-coarse-in-actors", 3, "auto") == (
        "raypar-N3-no-driver-segment-coarse-in-actors")


@pytest.mark.parametrize("old, new", [("raypar-f1", "raypar"), ("raypar-f1-ca", "raypar-coarse-in-actors"),
                                      ("raypar-ca", "raypar-no-driver-segment-coarse-in-actors")])
def test_a_former_contender_name_is_a_one_line_error_naming_the_new_one(old, new, tmp_path, capsys):
    from raypar.tools.bench import cli as bench
    assert bench.main(["--out", str(tmp_path / "out"), "--contenders", f"original,{old}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"raypar: error: contender {old} is now called {new} ") and "\n" not in err


def test_a_turn_times_the_step_after_an_untimed_one_and_leaves_the_engine_settled():
    """Taking turns, a contender's timed step starts as in a run, right after another (warm caches; a deferred
    engine's actors still on the weight gradients of the step before), and its engine's actors are done before the
    next contender's turn. The step function and engine here are stand-ins that log what runs."""
    from raypar.tools.bench.runner import Runner
    events = []

    class Engine:
        def settle(self):
            events.append("settle")

    def step_fn(x, y):
        events.append(f"step {x}")
        return 1.0, 0, None
    r = Runner.__new__(Runner)          # (its __init__ would pin this test process to one thread)
    r._begin(BenchConfig(**{**CFG, "warmup": 1}), step_fn, [(0, None), (1, None)], engine=Engine())
    r.step(0, True)
    r.step(1, True)
    assert events == ["step 0", "step 0", "settle", "step 1", "step 1", "settle"]
    assert len(r.times) == 1 and r.results == [(1.0, 0, None)]          # warm-up untimed; one step timed, not two
    events.clear()
    r.step(1)                                                             # alone (--one-at-a-time): just the step
    assert events == ["step 1"]


def test_core_speeds_that_cannot_run_leave_the_bench_going(capsys):
    from raypar.tools.bench.cores import core_speeds
    assert core_speeds(BenchConfig(**{**CFG, "model": "no-such-model"}), timeout_s=120) is None   # its workers die
    assert "could not time the cores" in capsys.readouterr().err


def test_rounds_alternate_the_order(ray_local):
    from raypar.tools.bench.schedule import measure
    said = []
    rows = measure(BenchConfig(**{**CFG, "subnets": [1], "contenders": ["original", "raypar-no-driver-segment"],
                                  "rounds": 2, "interleave": False}), log=said.append)        # --one-at-a-time
    assert not [m for m in said if "take turns" in m] and not any(r["taking_turns"] for r in rows)
    engine = "raypar-N1-no-driver-segment"
    assert [m for m in said if m.endswith("...")] == [f"raypar bench: {n} ..." for n in
                                                      ("original", engine, engine, "original")]
    assert [r["contender"] for r in rows] == ["original", engine]
    assert all(len(r["step_ms_rounds"]) == len(r["ratio_rounds"]) == 2 for r in rows)
    assert rows[1]["step_ms"] in rows[1]["step_ms_rounds"]


@pytest.mark.parametrize("kw, message", [
    ({"transports": ["pigeon"]}, "unknown transports"),
    ({"device": "tpu"}, "--device must be cpu or cuda"),
    ({"device": "cuda"}, "no CUDA GPU" if not __import__("torch").cuda.is_available() else "run on CPUs only")])
def test_bad_bench_settings_are_one_line_errors(kw, message):
    from raypar import UserError
    with pytest.raises(UserError, match=message):
        BenchConfig(**{**CFG, **kw}).validate()


def test_an_unusable_tracking_store_fails_in_one_line_before_measuring(tmp_path, capsys, monkeypatch):
    """A file path as the tracking URI (MLflow 3 refuses its old file store) stops the bench at once with a one-line
    error; ``none`` means no MLflow run."""
    from raypar.tools.bench import cli as bench
    measured = []
    monkeypatch.setattr(bench, "measure", lambda *a, **k: measured.append(1) or [])
    args = ["--out", str(tmp_path / "out"), "--tracking-uri", str(tmp_path / "runs")]
    assert bench.main(args) == 2 and not measured
    err = capsys.readouterr().err.strip()
    assert err.startswith("raypar: error: cannot reach the MLflow tracking store") and "\n" not in err
    assert bench.tracking_uri_of(bench.argparse.Namespace(tracking_uri="none")) is None


def test_gpu_memory_is_a_column_only_where_a_process_held_some():
    """On GPUs each process's peak of PyTorch's GPU allocator comes beside its RSS; CPU rows have none."""
    from raypar.tools.bench.output import table
    from raypar.tools.bench.rows import to_row
    base = {"times": [0.1, 0.3, 0.2], "rss": [100.0, None], "idle": 50.0, "processes": 2}
    gpu_row = to_row("gpu", {**base, "gpu": [10.0, None, 30.0]}, 64)
    cpu_row = to_row("cpu", dict(base), 64)
    assert gpu_row["gpu_peak_mb"] == 30.0 and gpu_row["gpu_per_process_mb"] == [10.0, 30.0]
    assert "gpu_peak_mb" not in cpu_row and cpu_row["step_ms"] == pytest.approx(200.0)
    cfg = BenchConfig(**CFG)
    for r in (gpu_row, cpu_row):
        r["ratio_vs_original"] = 1.0
    assert "GPU peak MB" in [c.header for c in table([gpu_row, cpu_row], cfg).columns]
    assert "GPU peak MB" not in [c.header for c in table([cpu_row], cfg).columns]


def test_the_default_line_up_on_gpus_leaves_out_what_runs_on_cpus_only():
    from raypar.tools.bench.cli import contenders_of
    from raypar.tools.bench.config import DEFAULT_CONTENDERS
    ns = __import__("argparse").Namespace
    assert contenders_of(ns(contenders=None, device="cpu")) == list(DEFAULT_CONTENDERS)
    assert contenders_of(ns(contenders=None, device="cuda")) == ["original", "parareal-1proc", "raypar",
                                                                 "raypar-no-driver-segment"]
    assert contenders_of(ns(contenders="original, ddp", device="cuda")) == ["original", "ddp"]    # asked: refused later
