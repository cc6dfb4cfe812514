"""`--balance tune` / `raypar tune`: candidate splits measured on the engine, the fastest kept."""
import json

import pytest

from raypar.cli.main import main
from raypar.engine.tuning import candidates


def test_candidates_move_one_boundary_at_a_time():
    assert candidates([3, 9], radius=2) == [[3, 9], [2, 10], [4, 8], [1, 11], [5, 7]]
    assert candidates([1, 2], radius=3) == [[1, 2], [2, 1]]                 # every segment keeps a block
    three = candidates([2, 2, 2], radius=1)
    assert three[0] == [2, 2, 2] and sorted(map(tuple, three[1:])) == [(1, 3, 2), (2, 1, 3), (2, 3, 1), (3, 1, 2)]
    assert candidates([4, 4], radius=0) == [[4, 4]]


def test_tune_command_measures_every_candidate(ray_local, capsys):
    code = main(["tune", "--model", "vgg11", "--width-mult", "0.125", "--batch-size", "16", "--radius", "1",
                 "--warmup", "1", "--steps", "2", "--driver-segment", "--coarse-in-actors", "--channels-last",
                 "--format", "json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    trials = out["trials"]
    assert [t["split"] for t in trials] == candidates(trials[0]["split"], 1) and trials[0]["profiled"]
    assert all(not t["error"] and t["step_ms"] > 0 and len(t["fine_ms"]) == 2 for t in trials)
    assert out["split"] == max(trials, key=lambda t: t["vs_profiled"])["split"]


class _Net:
    def __init__(self, split):
        self.split = split


class _Engine:
    """Stands in for PararealEngine: a step takes ``ms[split]`` ms of (fake) wall time."""
    clock = [0.0]

    def __init__(self, split, ms, fail=False, events=None):
        self.split, self.ms, self.fail, self.events = tuple(split), ms, fail, events if events is not None else []

    def train_step(self, x, y):
        if self.fail:
            raise RuntimeError("actor died")
        self.events.append(("step", self.split))
        _Engine.clock[0] += self.ms[self.split] / 1e3
        from raypar.engine.driver import StepStats
        return 1.0, 0, StepStats(driver=0.001, wait=0.0, fine_each=(0.001,))

    def settle(self):
        self.events.append(("settle", self.split))

    def shutdown(self):
        pass


def _driver(monkeypatch, ms, fail=(), started=None, events=None):
    from raypar.engine import tuning as tune
    monkeypatch.setattr(tune, "_clock", lambda: _Engine.clock[0])

    def start(net, optim, resources, seed, trial):
        if started is not None:
            started.append(tuple(net.split))
        return _Engine(net.split, ms, tuple(net.split) in fail, events)
    monkeypatch.setattr(tune._TuneDriver, "_start", staticmethod(start))
    return tune._TuneDriver()


@pytest.mark.parametrize("gpu", [False, True])
def test_every_candidate_timed_against_the_profiles_split(monkeypatch, gpu):
    """With stand-in engines of known step times, on both paths (CPUs: taking turns in groups; GPUs: each alone,
    twice): each candidate's own time and its ratio to the profile's split; a failing candidate is a row."""
    from raypar.engine.driver import Resources
    ms = {(3, 9): 100.0, (2, 10): 120.0, (4, 8): 80.0, (5, 7): 90.0, (1, 11): 150.0}
    started = []
    driver = _driver(monkeypatch, ms, fail={(1, 11)}, started=started)
    nets = [_Net(list(s)) for s in ms]
    batches = [(None, None)] * 4
    trials = driver.run(nets, None, Resources(driver_segment=True), 0, batches, 1, gpu, max_actors=2)
    assert [t.step_ms for t in trials[:4]] == pytest.approx([100.0, 120.0, 80.0, 90.0])
    assert [t.vs_profiled for t in trials[:4]] == pytest.approx([1.0, 100 / 120, 100 / 80, 100 / 90])
    assert trials[4].error == "RuntimeError: actor died" and trials[4].vs_profiled != trials[4].vs_profiled
    if gpu:                        # each alone, twice, the second time in reverse; a failed one is not tried again
        assert started == [s for s in ms] + [s for s in list(ms)[::-1] if s != (1, 11)]
    else:                          # groups of 2 (one actor each): the profile's split in every group
        assert sorted(started) == sorted([(3, 9)] * 4 + [(2, 10), (4, 8), (5, 7), (1, 11)])


def test_taking_turns_each_timed_step_follows_an_untimed_one_and_each_turn_ends_settled(monkeypatch):
    """A timed step starts as in a run, right after another of the same engine (its caches warm; deferred weight
    gradients of the step before still computing), and none of an engine's work runs into the next one's turn."""
    from raypar.engine.driver import Resources
    ms, events = {(3, 9): 100.0, (4, 8): 80.0}, []
    driver = _driver(monkeypatch, ms, events=events)
    trials = driver.run([_Net(list(s)) for s in ms], None, Resources(), 0, [(None, None)] * 3, 1, False)
    warm = [("step", (3, 9)), ("settle", (3, 9)), ("step", (4, 8)), ("settle", (4, 8))]        # 1 warm-up batch
    timed = [("step", (3, 9)), ("step", (3, 9)), ("settle", (3, 9)), ("step", (4, 8)), ("step", (4, 8)),
             ("settle", (4, 8))]
    assert events == warm + timed + timed
    assert [t.step_ms for t in trials] == pytest.approx([100.0, 80.0])          # one step's time, not two


def test_no_candidate_ranked_without_the_profiles_split(monkeypatch):
    from raypar.engine.driver import Resources
    ms = {(3, 9): 100.0, (4, 8): 80.0}
    driver = _driver(monkeypatch, ms, fail={(3, 9)})
    for gpu in (False, True):
        trials = driver.run([_Net(list(s)) for s in ms], None, Resources(), 0, [(None, None)] * 3, 1, gpu)
        assert trials[0].error and all(t.vs_profiled != t.vs_profiled for t in trials)      # NaN: not ranked


@pytest.mark.parametrize("argv, message", [
    (["tune", "--subnets", "1"], "--subnets must be >= 2"),
    (["tune", "--model", "alexnet"], "unknown model 'alexnet'"),
    (["tune", "--steps", "0"], "tuning needs warm-up >= 0, steps >= 1"),
    (["tune", "--coarse-in-actors", "--iterations", "2"], "--coarse-in-actors needs --iterations 1, got 2"),
    (["info", "--balance", "tune"], "--balance tune measures splits on the engine"),
    (["train", "--balance", "fastest"], "--balance must be one of time, flops, params, tune or block counts"),
])
def test_tune_bad_input_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
