"""`--balance tune` / `raypar tune`: candidate splits measured on the engine, the fastest kept."""
import json

import pytest

from raypar.cli import main
from raypar.tune import candidates


def test_candidates_move_one_boundary_at_a_time():
    assert candidates([3, 9], radius=2) == [[3, 9], [2, 10], [4, 8], [1, 11], [5, 7]]
    assert candidates([1, 2], radius=3) == [[1, 2], [2, 1]]                 # every segment keeps a block
    three = candidates([2, 2, 2], radius=1)
    assert three[0] == [2, 2, 2] and sorted(map(tuple, three[1:])) == [(1, 3, 2), (2, 1, 3), (2, 3, 1), (3, 1, 2)]
    assert candidates([4, 4], radius=0) == [[4, 4]]


def test_tune_command_measures_every_candidate(ray_local, capsys):
    code = main(["tune", "--model", "vgg11", "--width-mult", "0.125", "--batch", "16", "--radius", "1",
                 "--warmup", "1", "--steps", "2", "--driver-segment", "--format", "json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    trials = out["trials"]
    assert [t["split"] for t in trials] == candidates(trials[0]["split"], 1) and trials[0]["profiled"]
    assert all(not t["error"] and t["step_ms"] > 0 and len(t["fine_ms"]) == 2 for t in trials)
    assert trials[0]["vs_profiled"] == 1.0                   # one group: every ratio against the same steps
    for t in trials:
        assert t["vs_profiled"] == pytest.approx(trials[0]["step_ms"] / t["step_ms"])
    assert out["split"] == max(trials, key=lambda t: t["vs_profiled"])["split"]


def test_candidates_in_groups_each_against_the_profiles_split(ray_local):
    """More candidates than fit at once: groups, each with the profile's split, ranked by the ratio within a group."""
    import torch
    from raypar.models import build
    from raypar.optim import OptimConfig
    from raypar.tune import tune_split
    torch.manual_seed(0)
    split, trials = tune_split(build("vgg11", 10, 3, 0.125, 32), 2, driver_segment=True, input_shape=(3, 32, 32),
                               num_classes=10, batch=8, optim=OptimConfig(), radius=1, warmup=0, steps=2,
                               max_actors=1)                      # groups of 2: the profile's split and one other
    assert len(trials) == 3 and trials[0].profiled
    assert trials[0].vs_profiled == 1.0 and all(t.vs_profiled > 0 and not t.error for t in trials)
    assert split == max(trials, key=lambda t: t.vs_profiled).split


@pytest.mark.parametrize("argv, message", [
    (["tune", "--subnets", "1"], "--subnets must be >= 2"),
    (["tune", "--model", "alexnet"], "unknown model 'alexnet'"),
    (["tune", "--steps", "0"], "tuning needs warm-up >= 0, steps >= 1"),
    (["info", "--balance", "tune"], "--balance tune measures splits on the engine"),
    (["train", "--balance", "fastest"], "--balance must be one of time, flops, params, tune or block counts"),
])
def test_tune_bad_input_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
