"""Configuration files and recipes: precedence (defaults < --recipe < --config < options), one-line errors for
malformed files, every built-in recipe valid, the LR schedules."""
import subprocess
import sys

import pytest
import torch

from raypar.training import recipes
from raypar.cli.main import build_parser
from raypar.cli.options import config_from_args
from raypar.training.config import TrainConfig
from raypar.errors import UserError
from raypar.engine.optim import make_optimizer
from raypar.engine.specs import OptimConfig


def _cfg(*argv):
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_no_options_give_the_defaults(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert _cfg() == TrainConfig()


def test_recipe_then_config_file_then_options(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[recipe]\nname = "mine"\nversion = 4\n\n[train]\nepochs = 7\nlr = 1\nbalance = [13, 13, 14, 14]\n'
                    'lr_schedule = "step"\nlr_milestones = [0.25]\n')
    cfg = _cfg("--recipe", "resnet164-cifar10", "--config", str(path), "--lr", "0.2", "--seed", "5")
    r = recipes.get("resnet164-cifar10").values
    assert (cfg.model.name, cfg.data.dataset, cfg.optim.weight_decay, cfg.optim.batch_size) == (r["model"], r["dataset"], 1e-4, 128)
    assert (cfg.optim.epochs, cfg.model.balance, cfg.optim.lr_milestones) == (7, [13, 13, 14, 14], [0.25])      # the file over the recipe
    assert cfg.optim.lr == 0.2 and cfg.optim.seed == 5                                           # the options over both
    assert isinstance(cfg.optim.lr, float) and cfg.run.recipe == "mine@4"
    assert _cfg("--recipe", "vgg16-cifar10").run.recipe == "vgg16-cifar10@4"


def test_every_recipe_is_valid_and_versioned():
    found = recipes.available()
    names = {r.name for r in found}
    assert {"digits-cpu", "vgg16-cifar10", "vgg16-cifar100", "vgg16-svhn", "resnet164-cifar10",
            "resnet164-cifar100", "resnet1001-cifar10"} <= names
    for r in found:
        cfg = TrainConfig.from_flat(**r.values)
        assert r.version >= 1 and r.description
        assert cfg.optim.momentum == 0.9 and cfg.optim.weight_decay in (5e-4, 1e-4)
        # a recipe's numbers never change under one version: it pins every coarse setting whose default has changed
        assert {"balance", "coarse_depth", "coarse_width", "coarse_kernel", "coarse_norm",
                "coarse_downsample"} <= set(r.values) and r.values["balance"] == "flops"


def test_a_recipes_splits_pin_the_split_of_their_n_unless_balance_or_model_is_given(tmp_path):
    r = recipes.get("digits-cpu")
    assert r.splits == {2: [2, 5], 4: [1, 2, 2, 2]} and r.values["balance"] == "flops"
    assert _cfg("--recipe", "digits-cpu").model.balance == [2, 5]                  # the recipe's N = 2
    assert _cfg("--recipe", "digits-cpu", "-n", "4").model.balance == [1, 2, 2, 2]
    assert _cfg("--recipe", "digits-cpu", "-n", "3").model.balance == "flops"       # no pinned split: the balance
    assert _cfg("--recipe", "digits-cpu", "-n", "1").model.balance == "flops"
    assert _cfg("--recipe", "digits-cpu", "--balance", "time").model.balance == "time"
    assert _cfg("--recipe", "digits-cpu", "--balance", "5,2").model.balance == [5, 2]
    assert _cfg("--recipe", "digits-cpu", "--model", "vgg16", "-n", "4").model.balance == "flops"   # other blocks
    own = tmp_path / "own.toml"
    own.write_text("[splits]\n2 = [5, 2]\n")
    assert _cfg("--recipe", "digits-cpu", "--config", str(own)).model.balance == [5, 2]        # the file's table
    assert _cfg("--recipe", "digits-cpu", "--config", str(own), "-n", "4").model.balance == "flops"
    lr = tmp_path / "lr.toml"
    lr.write_text("lr = 0.1\n")
    assert _cfg("--recipe", "digits-cpu", "--config", str(lr)).model.balance == [2, 5]     # untouched by the file
    balance = tmp_path / "balance.toml"
    balance.write_text('balance = "params"\n')
    assert _cfg("--recipe", "digits-cpu", "--config", str(balance)).model.balance == "params"


@pytest.mark.parametrize("text, message", [
    ("epochs = [", "is not valid TOML"),
    ("epochz = 3", "unknown setting 'epochz'"),
    ('epochs = "three"', "epochs = 'three' has the wrong type"),
    ("subnets = 0", "--subnets must be >= 1"),
    ('lr_schedule = "linear"', "--lr-schedule must be one of cosine, step"),
    ("balance = [3, 3, 3]", "explicit split [3, 3, 3] must be 2 positive block counts summing to 12"),
    ("subnets = 20", "--subnets must be between 1 and vgg16's 12 blocks, got 20"),
    ("splits = 3", "[splits] must be a table of N = [block counts]"),
    ("[splits]\n1 = [7]", "[splits] 1 = [7]: expected N >= 2 = [block counts], like 2 = [5, 7]"),
    ('[splits]\n2 = "2,5"', "[splits] 2 = '2,5': expected N >= 2 = [block counts]"),
    ('model = "vgg11"\n[splits]\n2 = [3, 3]', "[splits] 2: explicit split [3, 3] must be 2 positive block counts "
                                              "summing to 7"),
    ("[splits]\n2 = [3, 3]", "[splits] 2: explicit split [3, 3] must be 2 positive block counts summing to 12"),
])
def test_bad_config_file_exit_2_one_line_nothing_written(tmp_path, monkeypatch, capsys, text, message):
    from raypar.cli.main import main
    (tmp_path / "bad.toml").write_text(text + "\n")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "bad.toml"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "raypar_runs").exists()


def test_malformed_config_file_in_a_real_process(tmp_path):
    (tmp_path / "bad.toml").write_text("epochs = [\n")
    r = subprocess.run([sys.executable, "-m", "raypar.cli", "train", "--config", "bad.toml"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not valid TOML" in lines[0], r.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "raypar_runs").exists()


def test_missing_config_file_and_unknown_recipe():
    from raypar.errors import UserError
    with pytest.raises(UserError, match="config file no/such.toml does not exist"):
        _cfg("--config", "no/such.toml")
    with pytest.raises(UserError, match="unknown recipe 'vgg99'; available: digits-cpu"):
        _cfg("--recipe", "vgg99")


def _lrs(o: OptimConfig) -> list[float]:
    opt, sched = make_optimizer([torch.zeros(1, requires_grad=True)], o)
    out = []
    for _ in range(o.epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_lr_schedules():
    step = _lrs(OptimConfig(lr=0.1, epochs=8, schedule="step", milestones=[0.5, 0.75], gamma=0.1))
    assert step == pytest.approx([0.1] * 4 + [0.01] * 2 + [0.001] * 2)
    cosine = _lrs(OptimConfig(lr=0.1, epochs=4, schedule="cosine"))
    assert cosine[0] == 0.1 and all(a > b for a, b in zip(cosine, cosine[1:]))


def test_the_optimizer_is_torchs_sgd_bit_for_bit():
    """raypar's SGD (torch.optim.SGD without its compiler guards) moves the weights as torch's does, and their
    state dicts load into each other: a checkpoint of either resumes in the other."""
    import copy
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 3))]
    nets.append(copy.deepcopy(nets[0]))
    o = OptimConfig(lr=0.1, epochs=3)
    ours, _ = make_optimizer(nets[0].parameters(), o)
    torchs = torch.optim.SGD(nets[1].parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for i in range(6):
        if i == 3:                                        # swap their states halfway
            a, b = ours.state_dict(), torchs.state_dict()
            ours.load_state_dict(b)
            torchs.load_state_dict(a)
        for net, opt in zip(nets, (ours, torchs)):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        assert all(torch.equal(p, q) for p, q in zip(*(n.parameters() for n in nets)))
    assert all(p.grad is not None for p in nets[0].parameters()) and torch.is_grad_enabled()


def test_coarse_kernel_and_transport_options():
    cfg = _cfg("--coarse-kernel", "1", "--transport", "p2p")
    assert cfg.model.coarse.kernel == 1 and cfg.engine.transport == "p2p"
    from raypar import UserError
    with pytest.raises(UserError, match="coarse kernel must be an odd number"):
        _cfg("--coarse-kernel", "2")
    assert _cfg().model.coarse.downsample == "patch"
    assert _cfg("--coarse-downsample", "stride").model.coarse.downsample == "stride"


def test_bad_coarse_downsample_in_a_config_file(tmp_path):
    from raypar import UserError
    path = tmp_path / "mine.toml"
    path.write_text('coarse_downsample = "max"\n')
    with pytest.raises(UserError, match="coarse downsample must be patch, pool or stride, got 'max'"):
        _cfg("--config", str(path))
    with pytest.raises(UserError, match="cuda-ipc needs GPUs"):
        _cfg("--transport", "cuda-ipc", "--gpus-per-subnet", "0")


def test_amp_option(tmp_path):
    from raypar import UserError
    assert _cfg().engine.amp == "off" and _cfg("--amp", "bf16").engine.amp == "bf16"
    path = tmp_path / "mine.toml"
    path.write_text('amp = "fp8"\n')
    with pytest.raises(UserError, match="--amp must be one of off, bf16, fp16, got 'fp8'"):
        _cfg("--config", str(path))


def test_splits_are_checked_before_anything_runs():
    """The block counts come from the model's name alone (specs.num_blocks), so a split that cannot fit fails in
    the config, not later in a Ray worker."""
    from raypar.tools.bench.config import BenchConfig
    from raypar.tools.bench.workload import _net
    from raypar.network.models import build
    from raypar.network.specs import num_blocks
    for name in ("vgg11", "vgg13", "vgg16", "vgg19", "resnet11", "resnet20"):
        assert num_blocks(name) == len(build(name, width_mult=0.125).blocks), name
    assert TrainConfig.from_flat(model="vgg16", subnets=3, balance=[4, 4, 4]).model.balance == [4, 4, 4]
    with pytest.raises(UserError, match=r"explicit split \[4, 4, 5\] must be 3 positive block counts summing to 12"):
        TrainConfig.from_flat(model="vgg16", subnets=3, balance=[4, 4, 5])
    with pytest.raises(UserError, match="--subnets must be between 1 and resnet20's 6 blocks, got 7"):
        TrainConfig.from_flat(model="resnet20", subnets=7)
    # the bench: an explicit split is for N > 1; N = 1 has its one split
    cfg = BenchConfig(model="vgg11", width_mult=0.125, subnets=[1, 2], balance=[3, 4]).validate()
    assert _net(cfg, 1).split == [7] and _net(cfg, 2).split == [3, 4]
    with pytest.raises(UserError, match=r"explicit split \[3, 4\] must be 3 positive block counts summing to 7"):
        BenchConfig(model="vgg11", subnets=[1, 3], balance=[3, 4]).validate()


@pytest.mark.parametrize("command", [["bench", "--contenders", "original", "--subnets", "1"],
                                     ["study", "--epochs", "1"]])
def test_an_output_folder_that_cannot_be_written_fails_before_any_work(tmp_path, capsys, command):
    from raypar.cli.main import main
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "out"                   # under a file: no folder can be made there, even as root
    assert main([*command, "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"raypar: error: --out {out} cannot be written: "
                                                            f"Not a directory"]


def test_every_command_defaults_to_the_same_model_width_and_n():
    """info, train, tune, plan and bench: the same model, width and N unless the command is told otherwise."""
    from raypar.cli.main import build_parser
    from raypar.tools.bench.config import BenchConfig
    want = ("vgg16", 0.25)
    for command in ("info", "tune", "plan", "bench"):
        args = build_parser(command).parse_args([command])
        assert (args.model, args.width_mult) == want, command
    assert (args.model, args.width_mult) == (BenchConfig().model, BenchConfig().width_mult)
    cfg = _cfg()
    assert (cfg.model.name, cfg.model.width_mult, cfg.model.subnets) == (*want, 2)
    assert build_parser("info").parse_args(["info"]).subnets == 2
    assert build_parser("tune").parse_args(["tune"]).subnets == 2


def test_every_command_with_the_driver_segment_defaults_to_train_s():
    """train, tune, plan and info: F_1 in the driver unless --no-driver-segment, with the same flag everywhere."""
    default = TrainConfig().engine.driver_segment
    assert default is True
    for command in ("train", "tune", "plan", "info"):
        p = build_parser(command)
        on = p.parse_args([command]).driver_segment
        assert (on if on is not None else default) is default, command        # (train: None, the config's)
        assert p.parse_args([command, "--no-driver-segment"]).driver_segment is False, command
        assert p.parse_args([command, "--driver-segment"]).driver_segment is True, command


def test_label_smoothing_from_the_recipe_an_option_and_the_run_params():
    from raypar.training.tracking import params_of
    assert _cfg().optim.label_smoothing == 0.0                                   # plain cross-entropy by default
    assert _cfg("--recipe", "digits-cpu").optim.label_smoothing == 0.1
    cfg = _cfg("--recipe", "digits-cpu", "--label-smoothing", "0")
    assert cfg.optim.label_smoothing == 0.0 and params_of(cfg)["label_smoothing"] == 0.0


def test_the_run_params_name_the_versions_torch_and_ray_report():
    """MLflow's ``torch_version`` is ``torch.__version__`` with its build tag, read without importing torch."""
    import ray

    from raypar.training.tracking import params_of, torch_version
    p = params_of(_cfg())
    assert p["torch_version"] == torch_version() == torch.__version__ and p["ray_version"] == ray.__version__
