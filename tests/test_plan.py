"""`raypar plan`: the predicted step time and speedup for N = 1..G, and its one-line errors."""
import functools
import itertools
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from raypar.tools.bench.rows import bytes_minimum
from raypar.network.models import build
from raypar.network.reference import PararealNet
from raypar.engine.cost import Link, Planner, predict
from raypar.tools.plan import against_bench

TINY = dict(model="vgg11", width_mult=0.125, batch=8, balance="flops")       # 7 blocks; the split is deterministic


@pytest.fixture(scope="module")
def planner():
    return Planner(TINY["model"], TINY["width_mult"], batch=TINY["batch"], balance=TINY["balance"])


@functools.lru_cache(maxsize=None)
def pararealnet(n, **kw):
    torch.manual_seed(0)
    return PararealNet(build("vgg11", 10, 3, 0.125, 32), n, balance="flops", input_shape=(3, 32, 32),
                       profile_batch=TINY["batch"], **kw)


def test_one_row_per_n_and_n1_is_the_original(planner):
    rows = predict(devices=4, planner=planner)
    assert [r.subnets for r in rows] == [1, 2, 3, 4]
    one = rows[0]
    assert one.speedup == 1.0 and one.efficiency == 1.0
    assert one.split == [7] and one.processes == 1 and one.bytes_per_step == 0
    assert one.transfer_ms == 0.0 and one.coarse_share == 0.0
    assert one.step_ms == pytest.approx(1e3 * planner.sequential_s())
    for r in rows[1:]:
        assert r.processes == r.subnets + 1 and r.devices == min(4, r.processes)
        assert r.speedup == pytest.approx(rows[0].step_ms / r.step_ms)
        assert r.efficiency == pytest.approx(r.speedup / r.devices)
        assert 0 < r.coarse_share < 1 and r.coarse_ms > 0
        # the step is the largest of the critical path, the work spread over the devices in use, and one actor's work
        assert r.step_ms == pytest.approx(max(r.critical_ms, r.work_ms / r.devices, r.actor_ms))
        assert r.critical_ms == pytest.approx(1e3 * (planner.costs.pre_s + planner.costs.post_s)
                                              + r.coarse_ms + r.fine_max_ms + r.transfer_ms)


def test_split_is_pararealnets(planner):
    for n in (2, 4):
        assert planner.row(n, 8, Link()).split == pararealnet(n).split
        assert planner.row(n, 8, Link(), driver_segment=True).split == pararealnet(n, driver_segment=True).split


def test_transfer_bytes_are_4_interface_tensors_per_remote_segment(planner):
    batch = TINY["batch"]
    for n in (2, 3):
        net = pararealnet(n)
        per_segment = [batch * 4 * 2 * (math.prod(s.in_shape) + math.prod(s.out_shape)) for s in net.segment_info]
        assert planner.row(n, 8, Link()).bytes_per_step == sum(per_segment) == bytes_minimum(net, batch)
        # F_1 in the driver ships nothing
        net = pararealnet(n, driver_segment=True)
        row = planner.row(n, 8, Link(), driver_segment=True)
        assert row.processes == n
        assert row.bytes_per_step == bytes_minimum(net, batch, driver_segment=True)
    # K = 2: the first iteration runs (and ships) F_1 only, the second F_1 and F_2
    first = pararealnet(2, iterations=2).segment_info[0]
    k2 = planner.row(2, 8, Link(), iterations=2)
    assert k2.iterations == 2
    assert k2.bytes_per_step == (planner.row(2, 8, Link()).bytes_per_step
                                 + batch * 4 * 2 * (math.prod(first.in_shape) + math.prod(first.out_shape)))


def test_coarse_in_actors_row(planner):
    """--coarse-in-actors: every fine process runs pre and C_1..C_j before F_j, all at once; the driver then runs the
    correction sweep and post; the batch goes out instead of u_j, and no dL/du_j comes back."""
    c, batch = planner.costs, TINY["batch"]
    for n, driver_segment in ((2, True), (3, False)):
        net = pararealnet(n, driver_segment=driver_segment)
        row = planner.row(n, 8, Link(), driver_segment=driver_segment, coarse_in_actors=True, defer_weights=False)
        assert row.split == net.split and row.processes == (n if driver_segment else n + 1) and row.iterations == 1
        assert row.bytes_per_step == bytes_minimum(net, batch, driver_segment, coarse_in_actors=True)
        coarse = planner.coarse_seconds(n, 1, driver_segment)
        bounds = [0, *itertools.accumulate(net.split)]
        each = [c.pre_s + sum(coarse[:j + 1] if j else []) + sum(c.blocks_s[a:b])
                for j, (a, b) in enumerate(zip(bounds, bounds[1:]))]
        assert row.fine_max_ms == pytest.approx(1e3 * max(each))
        assert row.critical_ms == pytest.approx(row.fine_max_ms + 1e3 * (sum(coarse[1:]) + c.post_s)
                                                + row.transfer_ms)
        assert row.work_ms == pytest.approx(1e3 * (sum(each) + sum(coarse[1:]) + c.post_s))
        assert row.step_ms == pytest.approx(max(row.critical_ms, row.work_ms / row.devices, row.actor_ms))
        assert row.actor_ms == pytest.approx(1e3 * max(each[1 if driver_segment else 0:]))
    with pytest.raises(Exception, match="--coarse-in-actors needs --iterations 1"):
        planner.row(2, 8, Link(), iterations=2, coarse_in_actors=True)


def test_deferred_weight_gradients_leave_the_critical_path_not_the_actor(planner):
    """--defer-weights: a remote F_j's weight gradients (measured per block) come off the critical path; F_1 in the
    driver keeps them; every actor still does all of its work once per step."""
    c = planner.costs
    assert len(c.deferred_s) == len(c.blocks_s) and all(w > 0 for w in c.deferred_s)
    for n, driver_segment in ((1, False), (2, False), (2, True), (3, True)):
        now = planner.row(n, 8, Link(), driver_segment=driver_segment, in_process=False)
        later = planner.row(n, 8, Link(), driver_segment=driver_segment, in_process=False, defer_weights=False)
        bounds = [0, *itertools.accumulate(now.split)]
        fines = [sum(c.blocks_s[a:b]) for a, b in zip(bounds, bounds[1:])]
        waited = [f - (min(f, sum(c.deferred_s[a:b])) if j >= int(driver_segment) else 0.0)
                  for j, (f, a, b) in enumerate(zip(fines, bounds, bounds[1:]))]
        # (no --capacity: the devices are equal and independent, the segments do not slow each other down)
        assert later.fine_max_ms == pytest.approx(1e3 * max(fines))
        assert now.fine_max_ms == pytest.approx(1e3 * max(waited)) and now.fine_max_ms <= later.fine_max_ms
        assert driver_segment or now.fine_max_ms < later.fine_max_ms     # every segment remote: each waits less
        assert now.actor_ms == later.actor_ms == pytest.approx(1e3 * max(fines[int(driver_segment):]))
        assert now.work_ms == pytest.approx(later.work_ms) and now.step_ms <= later.step_ms
        assert now.step_ms >= now.actor_ms
    # more processes than devices: the deferred work takes the same cores, nothing comes off the critical path
    crowded = planner.row(2, 2, Link())                                 # 3 processes on 2 devices
    assert crowded.step_ms == planner.row(2, 2, Link(), defer_weights=False).step_ms
    # the local original network defers nothing
    assert planner.row(1, 8, Link()).step_ms == planner.row(1, 8, Link(), defer_weights=False).step_ms


def test_faster_link_never_slower(planner):
    steps = {gbps: [r.step_ms for r in predict(devices=3, link_gbps=gbps, latency_ms=0.5, planner=planner)]
             for gbps in (0.01, 0.1, 1.0, 10.0, 100.0)}
    slow_to_fast = list(steps.values())
    for a, b in zip(slow_to_fast, slow_to_fast[1:]):
        assert a[0] == b[0]                                   # N = 1: one process, nothing moves
        assert all(x >= y for x, y in zip(a[1:], b[1:]))
    assert all(x > y for x, y in zip(steps[0.01][1:], steps[0.1][1:]))   # transfer-bound: strictly faster
    transfer = [planner.row(2, 3, Link(g, 0.5)).transfer_ms for g in (0.1, 1.0, 10.0)]
    assert transfer[0] > transfer[1] > transfer[2] > 0


def test_devices_bound_and_stop_at_the_number_of_blocks(planner):
    assert len(predict(devices=9, planner=planner)) == 7                  # vgg11 has 7 blocks
    one_device = planner.row(3, 1, Link(1e6, 0.0))
    assert one_device.devices == 1 and one_device.bound == "devices"
    assert one_device.step_ms == pytest.approx(one_device.work_ms)     # every process on one device: all the work
    assert one_device.speedup < 1                                      # the coarse work makes it slower


def test_capacity_slows_the_parallel_rows_only(planner):
    """Devices worth less than their count (a shared CPU): the fine segments that run at once slow down, and the
    work bound shrinks; N = 1 runs one process at a time and does not change."""
    link = Link(3.5, 1.5)
    for n, driver_segment in ((1, False), (2, False), (2, True), (3, True)):
        full = planner.row(n, 3, link, driver_segment=driver_segment)
        assert planner.row(n, 3, link, driver_segment=driver_segment, capacity=3).step_ms == pytest.approx(full.step_ms)
        shared = planner.row(n, 3, link, driver_segment=driver_segment, capacity=1.5)
        assert shared.step_ms == pytest.approx(full.step_ms) if n == 1 else shared.step_ms > full.step_ms
        assert planner.row(n, 3, link, driver_segment=driver_segment, capacity=1.0).speedup <= 1.0 + 1e-9


def test_against_a_bench_result(planner, tmp_path):
    rows = [{"contender": "original", "step_ms": 100.0, "ratio_vs_original": 1.0},
            {"contender": "raypar-N1-no-driver-segment", "step_ms": 120.0, "ratio_vs_original": 100 / 120,
             "split": [7]},
            {"contender": "raypar-N2-no-driver-segment", "step_ms": 80.0, "ratio_vs_original": 1.25, "split": [3, 4]},
            {"contender": "raypar-N2", "step_ms": 70.0, "ratio_vs_original": 100 / 70, "split": [2, 5]},
            {"contender": "ddp-2", "step_ms": 60.0, "ratio_vs_original": 100 / 60}]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"config": {"model": "vgg11", "width_mult": 0.125, "image_size": 32, "in_channels": 3,
                                           "num_classes": 10, "batch": 8, "balance": "flops"},
                                "environment": {"cpu_cores": 2, "load_average_at_start": [0.5, 0.5, 0.5]},
                                "rows": rows}))
    out = {r["contender"]: r for r in against_bench(str(path), Link(), planner)}
    data = json.loads(path.read_text())
    data["environment"]["core_speeds"] = {"capacity": 1.25}
    path.write_text(json.dumps(data))
    shared = {r["contender"]: r for r in against_bench(str(path), Link(), planner)}     # the measured cores
    one, two = "raypar-N1-no-driver-segment", "raypar-N2-no-driver-segment"
    assert all(r["capacity"] == 1.25 for r in shared.values()) and out[two]["capacity"] is None
    assert shared[two]["predicted_ms"] > out[two]["predicted_ms"]
    assert shared[one]["predicted_ms"] == pytest.approx(out[one]["predicted_ms"])
    given = against_bench(str(path), Link(), planner, capacity=2.0)
    assert [r["predicted_ms"] for r in given] == pytest.approx([r["predicted_ms"] for r in out.values()])
    assert list(out) == ["original", one, two, "raypar-N2"]                          # no prediction for DDP
    assert [out[n]["processes"] for n in out] == [1, 2, 3, 2]
    assert out[two]["split"] == [3, 4] and out["raypar-N2"]["split"] == [2, 5]       # the bench's own split
    assert out[one]["predicted_transfer_ms"] > 0 == out["original"]["predicted_transfer_ms"]
    for r in out.values():
        assert r["step_error"] == pytest.approx(r["predicted_ms"] / r["measured_ms"] - 1)
        assert r["speedup_error"] == pytest.approx(r["predicted_speedup"] / r["measured_speedup"] - 1)


@pytest.mark.parametrize("row, options", [
    ({"contender": "raypar-N2"}, (2, True, False)),
    ({"contender": "raypar-N3-no-driver-segment-object-store"}, (3, False, False)),
    ({"contender": "raypar-N2-coarse-in-actors-cuda-ipc"}, (2, True, True)),
    ({"contender": "raypar-N2-no-driver-segment-coarse-in-actors"}, (2, False, True)),
    ({"contender": "raypar-N1-no-driver-segment"}, (1, False, False)),
    ({"contender": "raypar-N2", "coarse_in_actors": True}, (2, True, True)),     # placed as train places it
    # a bench.json from before the rows were named by train's flags: its processes tell
    ({"contender": "raypar-N2", "processes": 3}, (2, False, False)),
    ({"contender": "raypar-N2-f1-ca", "processes": 2}, (2, True, True)),
    ({"contender": "raypar-N2-ca", "processes": 3}, (2, False, True)),
    ({"contender": "raypar-N1", "processes": 2}, (1, False, False))])
def test_a_bench_row_names_its_engine_options(row, options):
    from raypar.tools.plan import engine_options
    assert engine_options(row) == options


def test_a_channels_last_plan_profiles_in_channels_last(monkeypatch, tmp_path):
    """plan --channels-last (and --bench of a channels-last bench) profile every part as such a run computes it."""
    import raypar.network.balance as bal
    seen = []
    real_profile, real_weights = bal.profile, bal.weight_grad_times
    monkeypatch.setattr(bal, "profile", lambda *a, **k: (seen.append(("profile", k.get("channels_last"))),
                                                         real_profile(*a, **k))[1])
    monkeypatch.setattr(bal, "weight_grad_times", lambda *a, **k: (seen.append(("weights", k.get("channels_last"))),
                                                                   real_weights(*a, **k))[1])
    rows = predict(TINY["model"], width_mult=TINY["width_mult"], batch=TINY["batch"], devices=2, driver_segment=True,
                   channels_last=True)
    assert rows[1].speedup > 0 and seen and all(cl for _, cl in seen)
    assert {kind for kind, _ in seen} == {"profile", "weights"}
    seen.clear()
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"config": {"model": "vgg11", "width_mult": 0.125, "image_size": 32, "in_channels": 3,
                                           "num_classes": 10, "batch": 8, "balance": "flops", "channels_last": True},
                                "environment": {"cpu_cores": 2},
                                "rows": [{"contender": "original", "step_ms": 100.0, "ratio_vs_original": 1.0}]}))
    assert against_bench(str(path), Link())[0]["contender"] == "original"
    assert seen and all(cl for _, cl in seen)


# ------------------------------------------------------------------------------------------- the CLI
def run(*args):
    return subprocess.run([sys.executable, "-m", "raypar.cli", "plan", *args], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, COLUMNS="160"))


def test_cli_json():
    r = run("--model", "vgg11", "--width-mult", "0.125", "--batch", "8", "--balance", "flops", "--devices", "2",
            "--link-gbps", "5", "--format", "json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["link_gbps"] == 5 and out["blocks"] == 7
    assert [row["subnets"] for row in out["rows"]] == [1, 2] and out["rows"][0]["speedup"] == 1.0
    assert out["rows"][1]["split"] == pararealnet(2, driver_segment=True).split and out["channels_last"] is False
    assert out["driver_segment"] is True and out["rows"][1]["processes"] == 2        # as train: F_1 in the driver


@pytest.mark.parametrize("args, message", [
    (["--model", "alexnet"], "unknown model 'alexnet'"),
    (["--devices", "0"], "--devices must be >= 1, got 0"),
    (["--link-gbps", "-1"], "--link-gbps must be a positive number of Gbit/s, got -1.0"),
    (["--latency-ms", "-0.5"], "--latency-ms must be >= 0, got -0.5"),
    (["--iterations", "0"], "--iterations K must be >= 1, got 0"),
    (["--batch", "0"], "--batch and --image-size must be >= 1"),
    (["--balance", "5,2"], "argument --balance: invalid choice: '5,2'"),
    (["--coarse-depth", "0"], "coarse depth must be >= 1, got 0"),
    (["--capacity", "0.5"], "--capacity must be >= 1"),
])
def test_bad_input_exit_2_one_line(args, message, capsys):
    """In process (the same main() the console script runs); the subprocess test below checks the real exit."""
    from raypar.cli.main import main
    assert main(["plan", "--model", "vgg11", "--width-mult", "0.125", "--batch", "8", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_cli_bad_input_exit_2_one_line():
    r = run("--model", "vgg11", "--devices", "0")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--devices must be >= 1, got 0" in lines[0], r.stderr
