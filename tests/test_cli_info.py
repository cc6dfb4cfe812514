"""`raypar info` end to end, through the installed console script, and its one-line errors."""
import os
import shutil
import subprocess
import sys

import pytest

RAYPAR = shutil.which("raypar") or ""


def run(*args):
    cmd = [RAYPAR, *args] if RAYPAR else [sys.executable, "-m", "raypar.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, COLUMNS="160"))


def test_info_prints_the_split():
    r = run("info", "--model", "vgg16", "--subnets", "2", "--width-mult", "0.25", "--balance", "flops")
    assert r.returncode == 0, r.stderr
    for text in ("F_1", "F_2", "pre", "post", "ideal speedup", "GF"):
        assert text in r.stdout
    assert "F_3" not in r.stdout
    assert "predicted speedup" in r.stdout and "(N = 2, K = 1, 2 cores, flops profile)" in r.stdout


def test_info_splits_as_train_does_with_f1_in_the_driver_unless_told_otherwise(capsys):
    """VGG-11 x0.25, N = 4, flops: F_1 in the driver carries pre, the coarse sweeps and post, so its segment is the
    shortest (train's split); without it the flops are balanced over four processes."""
    from raypar.cli.main import main
    import re
    splits = {}
    for flag in ("--driver-segment", "--no-driver-segment"):
        assert main(["info", "--model", "vgg11", "--width-mult", "0.25", "--subnets", "4", "--balance", "flops",
                     flag]) == 0
        out = capsys.readouterr().out
        splits[flag] = [int(n) for n in re.findall(r"F_\d\s+│\s+\S+\s+\((\d+)\)", out)]
        assert "predicted speedup" in out
    assert splits == {"--driver-segment": [1, 2, 2, 2], "--no-driver-segment": [2, 1, 1, 3]}


BAD_INPUT = [
    (["--subnets", "0"], "number of sub-networks must be between 1 and the number of blocks"),
    (["--subnets", "13", "--model", "vgg16"], "between 1 and the number of blocks (12), got 13"),
    (["--subnets", "2", "--iterations", "0"], "iterations K must be between 1"),
    (["--subnets", "2", "--iterations", "3"], "iterations K must be between 1"),
    (["--model", "alexnet"], "unknown model 'alexnet'"),
    (["--model", "resnet100"], "invalid ResNet depth 100"),
    (["--subnets", "two"], "invalid int value: 'two'"),
]


@pytest.mark.parametrize("args, message", BAD_INPUT)
def test_info_bad_input_exit_2_one_line(capsys, args, message):
    """In this process (each `raypar` process costs seconds of imports); the next test runs the console script."""
    from raypar.cli.main import main
    try:
        rc = main(["info", "--width-mult", "0.25", *args])
    except SystemExit as e:                          # argparse's own errors
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("args, message", [BAD_INPUT[0], BAD_INPUT[-1]])
def test_info_bad_input_in_a_real_process(args, message):
    r = run("info", "--width-mult", "0.25", *args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_info_profiles_with_the_threads_a_training_process_has(monkeypatch, capsys):
    """A fine actor or driver computes with one thread per CPU Ray gives it (--cpus-per-subnet, default 1); a time
    profile with all of this machine's threads would give other costs, another split and another prediction."""
    import torch
    from raypar.cli.main import main
    from raypar.network import reference
    seen = []
    init = reference.PararealNet.__init__

    def spy(self, *a, **kw):
        seen.append(torch.get_num_threads())
        init(self, *a, **kw)
    monkeypatch.setattr(reference.PararealNet, "__init__", spy)
    before = torch.get_num_threads()
    assert main(["info", "--width-mult", "0.125", "--balance", "flops"]) == 0
    assert main(["info", "--width-mult", "0.125", "--balance", "flops", "--cpus-per-subnet", "2"]) == 0
    assert seen == [1, 2] and torch.get_num_threads() == before


def test_info_says_where_the_coarse_sweep_runs(capsys):
    """--coarse-in-actors / --no-coarse-in-actors fix where train would run the coarse sweep (unset: the rule of
    raypar.engine.auto.choose_coarse_in_actors); the ideal speedup and the prediction are that placement's."""
    from raypar.cli.main import main
    common = ["info", "--width-mult", "0.125", "--balance", "flops", "--subnets", "3"]
    assert main([*common, "--coarse-in-actors"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "the coarse sweep in the actors)" in out and "F_j + the correction sweep" in out
    assert main([*common, "--no-coarse-in-actors"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "coarse sweep in the actors" not in out and "(sequential cost / (pre + coarse + max fine + post))" in out
    assert main([*common, "--coarse-in-actors", "--iterations", "2"]) == 2
    assert "--coarse-in-actors needs --iterations 1, got 2" in capsys.readouterr().err
