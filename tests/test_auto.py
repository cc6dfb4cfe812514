"""Honest about N: the start-of-run prediction (and its advice below 1.1x) and ``--subnets auto``, which never picks an
N that the prediction says loses. No Ray: the prediction and the picking need none."""
import json
import random

import pytest
import torch

from raypar.cli.main import build_parser, main
from raypar.cli.options import config_from_args
from types import SimpleNamespace

from raypar.engine.auto import (ADVICE, COARSE_IN_ACTORS_GAIN, THRESHOLD, ProfiledSplit, choose_coarse_in_actors,
                                devices_in_use, pick_subnets, predict_subnets, predicted_speedup, prediction_lines,
                                run_prediction)
from raypar.errors import UserError
from raypar.network.models import build
from raypar.network.reference import PararealNet
from raypar.training.config import TrainConfig, load_file


@pytest.fixture(autouse=True)
def one_thread():
    """Profiles as the run's processes make them (one thread each), and quick on a busy machine."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


# ------------------------------------------------------------------------------------------------ the picking rule
@pytest.mark.parametrize("predictions, want", [
    ({1: 1.0, 2: 1.42, 3: 1.30}, 2),
    ({1: 1.0, 2: 1.2, 3: 1.5, 4: 1.49}, 3),
    ({2: 1.09, 3: 1.05}, 1),                      # none reaches 1.1x: the original network
    ({1: 1.0, 2: 0.8}, 1),
    ({1: 1.0}, 1),
    ({}, 1),
    ({2: 1.1, 3: 1.1}, 2),                        # exactly the threshold counts; a tie goes to fewer processes
    ({1: 1.0, 2: 0.9, 5: 1.3}, 5),
])
def test_pick_subnets_by_hand(predictions, want):
    assert pick_subnets(predictions) == want


def test_pick_subnets_never_picks_a_losing_n():
    rng = random.Random(0)
    for _ in range(500):
        predictions = {1: 1.0, **{n: rng.uniform(0.5, 2.0) for n in range(2, rng.randint(2, 9))}}
        n = pick_subnets(predictions)
        many = {k: s for k, s in predictions.items() if k >= 2}
        if n == 1:
            assert all(s < THRESHOLD for s in many.values())
        else:
            assert predictions[n] >= THRESHOLD and predictions[n] == max(many.values())
    assert pick_subnets({2: 1.3, 3: 1.3}, threshold=1.4) == 1


def test_devices_in_use():
    assert devices_in_use(1, True, 0.0, 8) == 1
    assert [devices_in_use(n, True, 0.0, 4) for n in (2, 4, 6)] == [2, 4, 4]      # cores cap the processes
    assert devices_in_use(2, False, 0.0, 8) == 3                                  # N + 1 without the driver segment
    assert devices_in_use(3, True, 1.0) == 3 and devices_in_use(4, True, 0.5) == 2     # GPUs held together


# ------------------------------------------------------------------------------------------------ the prediction
def test_prediction_below_the_threshold_prints_the_advice():
    lines = prediction_lines(1.05, 2, 1, 2, 0.0, "time")
    assert lines == ["predicted speedup 1.05x over the original network (N = 2, K = 1, 2 cores, time profile)", ADVICE]
    assert "--subnets 1" in ADVICE and "--replicas" in ADVICE and "1.1x" in ADVICE
    assert prediction_lines(1.42, 4, 2, 4, 1.0, "flops") == [
        "predicted speedup 1.42x over the original network (N = 4, K = 2, 4 GPUs, flops profile)"]
    assert "1 core," in prediction_lines(0.7, 2, 1, 1, 0.0, "time")[0]


def _net(n=2, balance="flops"):
    torch.manual_seed(0)
    return PararealNet(build("resnet20", width_mult=0.125), n, balance=balance, input_shape=(3, 32, 32),
                       profile_batch=8, driver_segment=True)


def test_the_prediction_is_raypar_infos_ideal_speedup_capped_by_the_devices():
    net = _net(3)
    assert predicted_speedup(net, 10 ** 6) == pytest.approx(net.ideal_speedup())       # raypar info's number
    assert predicted_speedup(net, 1) < 1.0 and predicted_speedup(net, 1) <= predicted_speedup(net, 3) <= net.ideal_speedup()
    assert predicted_speedup(_net(1), 4) == 1.0


def test_a_run_on_one_core_is_told_it_loses(monkeypatch):
    """The start-of-run prediction of a real (time-profiled) network: on one core N = 2 loses, and says so."""
    monkeypatch.setattr("raypar.engine.cost.cpu_cores", lambda: 1)
    net = _net(2, "time")
    predicted, lines = run_prediction(net, driver_segment=True, gpus=0.0)
    assert predicted < THRESHOLD
    assert lines[0].startswith(f"predicted speedup {predicted:.2f}x over the original network (N = 2, K = 1, 1 core, "
                               f"time profile)")
    assert lines[1] == ADVICE


def _profiled(pre, fine, coarse, post, k=1):
    """A profiled split with these costs (ms): what the prediction reads of a network."""
    cost = SimpleNamespace
    info = [cost(cost=f, coarse_cost=c) for f, c in zip(fine, coarse)]
    return ProfiledSplit([1] * len(fine), k, cost(cost=pre), cost(cost=post), info)


def test_the_coarse_sweep_in_the_actors_predicted_by_hand():
    """Interval j's process runs pre, C_1..C_j and F_j at once, then the driver runs the correction sweep C_2..C_N
    and post; every process's copies count in the work."""
    net = _profiled(2.0, [400.0, 300.0, 200.0], [10.0, 20.0, 30.0], 5.0)
    seq = 2 + 900 + 5
    each = [2 + 400, 2 + 10 + 20 + 300, 2 + 10 + 20 + 30 + 200]
    critical, work = max(each) + 50 + 5, sum(each) + 50 + 5
    assert predicted_speedup(net, 3, coarse_in_actors=True) == pytest.approx(min(seq / critical, 3 * seq / work))
    assert predicted_speedup(net, 2, coarse_in_actors=True) == pytest.approx(2 * seq / work)     # two cores: the work
    driver = seq / (2 + 5 + (10 + 20 + 30) + (20 + 30) + 400)     # the coarse and correction sweeps, the longest F_j
    assert predicted_speedup(net, 3) == pytest.approx(driver)
    with pytest.raises(UserError, match="--coarse-in-actors needs --iterations 1, got 2"):
        predicted_speedup(_profiled(2.0, [400.0, 300.0], [10.0, 20.0], 5.0, k=2), 2, coarse_in_actors=True)


@pytest.mark.parametrize("fine, coarse, want", [
    ([471.3, 398.8], [18.0, 40.3], True),        # a ResNet-56 x1 profile: the driver's coarse sweeps and F_1 bound it
    ([316.1, 395.9], [16.9, 23.5], False),       # a ResNet-110 x0.5 profile: F_2 bounds both placements alike
    ([41.5, 55.0], [5.7, 1.0], False),           # a VGG-16 x0.25 profile
    ([41.5, 50.0], [5.7, 1.0], False),           # the same, F_2 timed 10 % fast: the driver's path is not 1.2x F_2
    ([471.3, 398.8], [1.0, 1.0], False),         # the driver overloaded, but not by the coarse sweeps: no gain
])
def test_the_coarse_sweep_goes_to_the_actors_only_where_the_driver_is_overloaded(monkeypatch, fine, coarse, want):
    monkeypatch.setattr("raypar.engine.cost.cpu_cores", lambda: 2)
    net = _profiled(1.4, fine, coarse, 4.9)
    assert choose_coarse_in_actors(net, driver_segment=True, gpus=0.0) is want
    predicted, lines = run_prediction(net, True, 0.0, want)
    assert predicted == pytest.approx(predicted_speedup(net, 2, want))
    assert ("the coarse sweep in the actors" in lines[0]) == want
    # K > 1, or no F_1 in the driver, keeps the coarse sweep in the driver, whatever the costs
    assert choose_coarse_in_actors(_profiled(1.4, fine, coarse, 4.9, k=2), True, 0.0) is False
    assert choose_coarse_in_actors(net, driver_segment=False, gpus=0.0) is False


def test_the_rule_by_hand(monkeypatch):
    """Each condition decides alone: the driver's path against DRIVER_OVERLOAD x the longest actor segment, the
    predictions against COARSE_IN_ACTORS_GAIN (the gain alone is tested in the table above: an overloaded driver
    whose coarse sweeps cost next to nothing)."""
    monkeypatch.setattr("raypar.engine.cost.cpu_cores", lambda: 64)
    # driver path = 0 + 0 + (c1 + c2 + c2) + f1; actor path with the sweep in the actors: c1 + c2 + f2, then c2
    overloaded = _profiled(0.0, [100.0, 60.0], [5.0, 10.0], 0.0)          # driver 125 >= 1.2 x 60
    gain = predicted_speedup(overloaded, 64, True) / predicted_speedup(overloaded, 64, False)
    assert gain == pytest.approx(125 / 110) and gain >= COARSE_IN_ACTORS_GAIN
    assert choose_coarse_in_actors(overloaded, True, 0.0) is True
    even = _profiled(0.0, [100.0, 110.0], [5.0, 10.0], 0.0)               # driver 125 < 1.2 x 110
    assert choose_coarse_in_actors(even, True, 0.0) is False
    # a gain of 6 % (the sweep's 6 ms off a 106 ms driver path) but a driver only 1.18x the actor: the driver keeps it
    near = _profiled(0.0, [100.0, 90.0], [6.0, 0.0], 0.0)
    gain = predicted_speedup(near, 64, True) / predicted_speedup(near, 64, False)
    assert gain == pytest.approx(106 / 100) and gain >= COARSE_IN_ACTORS_GAIN
    assert choose_coarse_in_actors(near, True, 0.0) is False
    # a FLOPs profile (a split given as block counts): the rule, calibrated on times, keeps the sweep in the driver
    overloaded.balance_measure = "flops"
    assert choose_coarse_in_actors(overloaded, True, 0.0) is False


def test_predict_subnets_from_one_profile():
    torch.manual_seed(0)
    staged = build("resnet20", width_mult=0.125)
    before = [p.clone() for p in staged.parameters()]
    predictions = predict_subnets(staged, (3, 32, 32), 8, [1, 2, 3], balance="flops", devices_of=lambda n: 64)
    assert set(predictions) == {1, 2, 3} and predictions[1] == 1.0
    assert all(0 < s < n for n, s in predictions.items() if n > 1)
    assert all(torch.equal(a, b) for a, b in zip(before, staged.parameters()))         # the model is left alone
    with pytest.raises(UserError, match="between 1 and the number of blocks"):
        predict_subnets(staged, (3, 32, 32), 8, [1, 7])


def test_predict_subnets_places_the_coarse_sweep_as_a_run_would(monkeypatch):
    """--subnets auto predicts each N with the coarse sweep where that N's run would put it (a time balance: the
    rule; another balance, or --no-coarse-in-actors: the driver; --coarse-in-actors: the actors)."""
    import raypar.engine.auto as auto
    torch.manual_seed(0)
    staged = build("resnet20", width_mult=0.125)
    asked = {}

    def rule(profiled, driver_segment, gpus, devices):
        asked[profiled.num_subnets] = profiled, devices
        return profiled.num_subnets == 2                   # the actors for N = 2, the driver for N = 3
    monkeypatch.setattr(auto, "choose_coarse_in_actors", rule)
    predictions = predict_subnets(staged, (3, 32, 32), 8, [1, 2, 3], devices_of=lambda n: 4)
    assert sorted(asked) == [2, 3]
    for n, placed in ((2, True), (3, False)):
        profiled, devices = asked[n]
        assert devices == 4 and predictions[n] == pytest.approx(predicted_speedup(profiled, 4, placed))
    asked.clear()
    predict_subnets(staged, (3, 32, 32), 8, [2], balance="flops", devices_of=lambda n: 4)
    predict_subnets(staged, (3, 32, 32), 8, [2], devices_of=lambda n: 4, coarse_in_actors=False)
    assert not asked                                       # no rule: the driver


# ------------------------------------------------------------------------------------------------ the setting
def test_the_config_takes_auto(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert TrainConfig.from_flat(subnets="auto", iterations=3).model.subnets == "auto"
    args = build_parser("train").parse_args(["train", "--subnets", "auto"])
    assert config_from_args(args).model.subnets == "auto"
    assert config_from_args(build_parser("train").parse_args(["train", "-n", "3"])).model.subnets == 3
    path = tmp_path / "auto.toml"
    path.write_text('subnets = "auto"\n')
    assert TrainConfig.from_flat(**load_file(str(path))[0]).model.subnets == "auto"
    for command in ("info", "tune"):                       # commands that read N itself take numbers only
        with pytest.raises(UserError, match="invalid int value: 'auto'"):
            build_parser(command).parse_args([command, "--subnets", "auto"])


@pytest.mark.parametrize("args, message", [
    (["--subnets", "auto2"], "--subnets must be a number >= 1 or auto, got 'auto2'"),
    (["--subnets", "0"], "--subnets must be >= 1, got 0"),
    (["--subnets", "auto", "--balance", "3,4"], "--subnets auto picks N: give a measured --balance"),
])
def test_bad_subnets_exit_2_one_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["train", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


# ------------------------------------------------------------------------------------------------ the resolution
def _stop_before_ray(monkeypatch, seen):
    def connect(cfg):
        seen["cfg"] = cfg
        raise UserError("stopped before Ray")
    monkeypatch.setattr("raypar.training.session.connect", connect)


def test_auto_on_one_core_trains_the_original_network(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr("raypar.engine.cost.cpu_cores", lambda: 1)
    seen: dict = {}
    _stop_before_ray(monkeypatch, seen)
    assert main(["train", "--model", "resnet20", "--width-mult", "0.125", "--subnets", "auto", "--iterations", "1",
                 "--epochs", "1"]) == 2
    out = capsys.readouterr().out
    assert "--subnets auto: N = 1, the original network" in out, out
    cfg = seen["cfg"]
    assert (cfg.model.subnets, cfg.model.iterations) == (1, 1) and "-n1-k1-" in cfg.run.name
    assert json.loads(cfg.extra["subnets_auto"]) == {"1": 1.0}


def test_auto_picks_what_its_predictions_say(tmp_path, monkeypatch, capsys):
    """On 3 cores (as far as auto knows), a real profile: the N picked is the best prediction, never one below 1.1x,
    and the line names every candidate."""
    from raypar.training.subnets import resolve_subnets
    from raypar.training import data
    monkeypatch.setattr("raypar.engine.cost.cpu_cores", lambda: 3)
    cfg = TrainConfig.from_flat(model="resnet20", width_mult=0.125, subnets="auto", batch_size=32)
    picked, line = resolve_subnets(cfg, data.load_for(cfg))
    predictions = {int(n): s for n, s in json.loads(picked.extra["subnets_auto"]).items()}
    assert set(predictions) == {1, 2, 3}
    n = picked.model.subnets
    assert isinstance(n, int) and n == pick_subnets(predictions)
    assert n == 1 or predictions[n] >= THRESHOLD
    assert line.startswith(f"--subnets auto: N = {n}")
    assert all(f"N = {k}: {s:.2f}x" in line for k, s in predictions.items() if k not in (1, n))


def test_a_named_run_with_a_checkpoint_keeps_its_n(monkeypatch):
    from raypar.training.subnets import resolve_subnets
    from raypar.training import data
    monkeypatch.setattr("raypar.training.checkpoints.newest_readable_meta", lambda path, name: {"split": [3, 2, 2]})
    cfg = TrainConfig.from_flat(subnets="auto", name="mine")
    picked, line = resolve_subnets(cfg, data.load_for(cfg))
    assert picked.model.subnets == 3 and "run mine" in line

