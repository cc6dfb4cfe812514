"""The parareal network in one process: K = N exactness, K = 1 behaviour, gradients, balance, bad input."""
import pytest
import torch
import torchvision
from torch import nn

from raypar import CoarseSpec, PararealNet, UserError, build, parareal, staged_from
from raypar.network.balance import partition, partition_loaded_first, profile


def _exact(model, n, shape=(3, 32, 32), batch=3, balance="flops"):
    torch.manual_seed(0)
    model = model.double().eval()
    net = PararealNet(model, n, iterations=n, balance=balance, input_shape=shape).double().eval()
    x = torch.randn(batch, *shape, dtype=torch.float64)
    with torch.no_grad():
        return net(x), model(x), net


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("name", ["vgg16", "resnet20"])
def test_k_equals_n_reproduces_builtin(name, n):
    out, ref, _ = _exact(build(name, width_mult=0.25), n)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_k_equals_n_reproduces_torchvision_resnet(n):
    out, ref, _ = _exact(torchvision.models.resnet18(num_classes=10), n, batch=2)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_k_equals_n_reproduces_torchvision_vgg(n):
    from torchvision.models.vgg import VGG, make_layers
    vgg = VGG(make_layers([8, "M", 16, "M", 32, 32, "M", 64, "M", 512, "M"], batch_norm=True), num_classes=10)
    vgg.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, 10))
    out, ref, net = _exact(vgg, n, batch=2)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    assert sum(net.split) == 5


@pytest.mark.parametrize("n", [2, 3])
def test_k_equals_n_trains_the_original_network(n):
    """K = N runs every fine segment once, on the sequential network's states, and no correction term: three SGD steps
    leave every weight and BatchNorm statistic bit for bit where the original network's steps do (float32), so
    evaluation agrees bit for bit too."""
    import copy
    torch.manual_seed(0)
    net = PararealNet(build("vgg11", width_mult=0.25), n, iterations=n, balance="flops", input_shape=(3, 32, 32))
    twin = copy.deepcopy(net)
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4) for m in (net, twin)]
    for step in range(3):
        x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
        for m, run, opt in ((net, net, opts[0]), (twin, twin.sequential, opts[1])):
            m.train()
            opt.zero_grad()
            nn.functional.cross_entropy(run(x), y).backward()
            opt.step()
    for (name, a), b in zip(net.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), name
    net.eval()
    twin.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), twin.sequential(x))


def test_converted_models_compute_the_original():
    torch.manual_seed(0)
    for model in (torchvision.models.resnet18(num_classes=7).eval(),
                  torchvision.models.vgg11(num_classes=5).eval()):
        staged = staged_from(model, input_shape=(3, 32, 32)).eval()
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(staged(x), model(x), rtol=0, atol=0)


def test_sequential_inferred_and_given_pre_post():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    staged = staged_from(seq)
    assert len(staged.blocks) == 3 and staged.input_shape == (3, 32, 32)
    assert isinstance(staged.post[-1], nn.Linear) and isinstance(staged.pre[0], nn.Conv2d)
    out, ref, _ = _exact(seq, 3)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    given = staged_from(seq, pre=3, post=3)
    assert len(given.blocks) == 3 and len(given.pre) == 3 and isinstance(given.post[0], nn.AdaptiveAvgPool2d)
    mlp = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                        nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    out, ref, _ = _exact(mlp, 3, shape=(10,))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_k1_differs_l1_is_f1_and_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = build("vgg11", width_mult=0.25)
    net = PararealNet(model, 3, iterations=1, balance="flops")
    x = torch.randn(4, 3, 32, 32)
    net.eval()
    with torch.no_grad():
        assert not torch.allclose(net(x), net.sequential(x), atol=1e-3)
        x0 = net.pre(x)
        l = parareal(x0, net.coarse, net.fine_local, 1)
        assert torch.equal(l[0], net.segments[0](x0))         # l_1 = f_1, exactly
    net.train()
    net(x).square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert len(net.coarse) == 3


def test_n1_is_the_original_network():
    torch.manual_seed(0)
    model = build("resnet20", width_mult=0.25).eval()
    net = PararealNet(model, 1).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), model(x))
    assert len(net.coarse) == 0 and net.ideal_speedup() == 1.0


@pytest.mark.parametrize("measure", ["flops", "time"])
def test_balance_builtin_resnet_within_25_percent(measure):
    torch.manual_seed(0)
    staged = build("resnet164", width_mult=0.25)
    # the median of 3 timings per block: one timing a hiccup stretched would tip the balance
    _, blocks, _ = profile(staged, torch.randn(4, 3, 32, 32), measure, repeats=3)
    costs = [b.cost for b in blocks]
    counts = partition(costs, 4)
    sums, i = [], 0
    for c in counts:
        sums.append(sum(costs[i:i + c]))
        i += c
    assert sum(counts) == 54 and len(counts) == 4
    assert max(sums) <= 1.25 * (sum(sums) / 4)
    # the balanced split beats the naive equal-count split whenever costs differ
    naive = [sum(costs[j * 54 // 4:(j + 1) * 54 // 4]) for j in range(4)]
    assert max(sums) <= max(naive)


def test_partition_is_optimal_on_a_small_case():
    assert partition([1, 1, 1, 1, 4], 2) == [4, 1]
    assert partition([5, 1, 1, 1, 1, 1], 2) == [1, 5]
    assert partition([1, 2, 3], 3) == [1, 1, 1]


def _worst(costs, split, extra):
    loads, i = [], 0
    for c in split:
        loads.append(sum(costs[i:i + c]))
        i += c
    return max(loads[0] + extra(split), *loads[1:])


def test_partition_loaded_first_finds_the_best_split_when_the_extra_depends_on_it():
    """F_1 in the driver: the driver's extra work (its coarse networks) changes with the split. Every split tried
    (few candidates) is the brute-force optimum; the local search (many) ends where no move of one cut helps."""
    import itertools
    import random
    rng = random.Random(0)
    for _ in range(30):
        L, n = rng.randint(3, 9), rng.randint(2, 4)
        if n > L:
            continue
        costs = [rng.uniform(1, 10) for _ in range(L)]
        weights = [rng.uniform(0, 6) for _ in range(L)]          # the coarse cost of an interval: by where it ends
        extra = lambda split: sum(weights[e - 1] for e in itertools.accumulate(split))   # noqa: E731
        every = [[b - a for a, b in zip((0, *cuts), (*cuts, L))] for cuts in itertools.combinations(range(1, L), n - 1)]
        best = min(_worst(costs, s, extra) for s in every)
        got = partition_loaded_first(costs, n, extra)
        assert sum(got) == L and len(got) == n and _worst(costs, got, extra) == pytest.approx(best)
        searched = partition_loaded_first(costs, n, extra, max_candidates=0)
        assert sum(searched) == L and len(searched) == n and min(searched) >= 1
        cuts = list(itertools.accumulate(searched))[:-1]          # a local optimum: no move of one cut is better
        for i, d in itertools.product(range(n - 1), (-1, 1)):
            moved = cuts[:i] + [cuts[i] + d] + cuts[i + 1:]
            if all(a < b for a, b in zip([0, *moved], [*moved, L])):
                split = [b - a for a, b in zip([0, *moved], [*moved, L])]
                assert _worst(costs, split, extra) >= _worst(costs, searched, extra) - 1e-9
    # a split-independent extra: the same optimum as partition's first_extra
    assert partition_loaded_first([4, 4, 4, 4], 2, lambda split: 4.0) == partition([4, 4, 4, 4], 2, first_extra=4.0)
    # an extra that punishes the cut the plain balance picks moves the cut
    assert partition([3, 3, 3, 3], 2) == [2, 2]
    assert partition_loaded_first([3, 3, 3, 3], 2, lambda split: 10.0 if split == [2, 2] else 0.0) in ([1, 3], [3, 1])


def test_deferred_weight_gradients_move_work_into_the_actors():
    """--defer-weights: a remote segment keeps the driver waiting for its cost less its deferred part, with all of
    the driver's extra work E on that path; the split minimises that path, each actor's whole work and the work per
    process. Brute force over every split on random costs, and the measured case of VGG-16 x0.25 on a 2-core CPU."""
    import itertools
    import random
    rng = random.Random(1)

    def step(costs, deferred, split, extra):
        cuts = list(itertools.accumulate(split, initial=0))
        loads = [sum(costs[a:b]) for a, b in zip(cuts, cuts[1:])]
        waited = [f - min(sum(deferred[a:b]), f) for f, a, b in zip(loads[1:], cuts[1:], cuts[2:])]
        e = extra(split)
        return max(e + max(loads[0], *waited), *loads[1:], (e + sum(loads)) / len(split))
    for _ in range(30):
        L, n = rng.randint(3, 9), rng.randint(2, 4)
        if n > L:
            continue
        costs = [rng.uniform(1, 10) for _ in range(L)]
        deferred = [c * rng.uniform(0.2, 0.4) for c in costs]
        extra = lambda split: 2.0 + split[0] / 2            # noqa: E731 - any function of the split
        every = [[b - a for a, b in zip((0, *cuts), (*cuts, L))] for cuts in itertools.combinations(range(1, L), n - 1)]
        got = partition_loaded_first(costs, n, extra, deferred=deferred)
        assert step(costs, deferred, got, extra) == pytest.approx(min(step(costs, deferred, s, extra) for s in every))
    # the profile of 2026-11-26 (ms; pre + post 9.6, the driver's coarse networks 8.3 at [2, 10], 3.5 at [3, 9]): the
    # plain balance evens the totals at [2, 10]; with the actor's weight gradients off the driver's path [3, 9] is
    # faster (measured: 1.28x against 1.13x the original, taking turns in raypar bench)
    costs = [15.7, 4.06, 8.73, 3.06, 4.83, 6.27, 2.47, 4.3, 5.02, 1.81, 1.76, 1.96]
    deferred = [c * 0.3 for c in costs]
    extra = lambda split: 9.6 + {1: 10.0, 2: 8.3, 3: 3.5}.get(split[0], 3.0)        # noqa: E731
    assert partition_loaded_first(costs, 2, extra) == [2, 10]
    assert partition_loaded_first(costs, 2, extra, deferred=deferred) == [3, 9]


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_profile_times_the_layout_the_run_uses(monkeypatch, channels_last):
    """--channels-last: every block, coarse network and deferred weight gradient is timed in the channels-last layout
    (on CPUs its convolutions cost less, unevenly: VGG-16 x0.25 at [3, 9], one thread, pre and F_1 took 18.7 ms
    instead of 28.7, F_2 24.3 instead of 30.4); the network itself keeps its layout."""
    import raypar.network.balance as bal
    import raypar.network.split_backward as sb
    seen = []

    def layout(t):       # (a tensor whose two layouts differ, the channels-last one)
        return t.dim() == 4 and t.shape[1] > 1 and t.shape[2] * t.shape[3] > 1, \
            t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()

    def measure_part(part, x, *a, **k):
        seen.append(("part", [layout(x)] + [layout(m.weight) for m in part.modules() if isinstance(m, nn.Conv2d)]))
        return real_measure(part, x, *a, **k)

    def input_grad(out, grad, u, params):
        seen.append(("weights", [layout(u)]))
        return real_grad(out, grad, u, params)
    real_measure, real_grad = bal.measure_part, sb.input_grad
    monkeypatch.setattr(bal, "measure_part", measure_part)
    monkeypatch.setattr(sb, "input_grad", input_grad)
    model = build("vgg11", width_mult=0.25)
    net = PararealNet(model, 2, balance="time", profile_batch=2, driver_segment=True, defer_weights=True,
                      channels_last=channels_last)
    assert {kind for kind, _ in seen} == {"part", "weights"} and len(seen) > 2 * len(model.blocks)
    tensors = [cl for _, ts in seen for differ, cl in ts if differ]       # inputs and conv kernels alike
    assert len(tensors) > 2 * len(model.blocks) and all(cl == channels_last for cl in tensors)
    assert not any(layout(p)[1] for p in net.parameters())       # the profile converted copies only


def test_the_profile_times_parts_as_a_run_runs_them(monkeypatch):
    """pre's backward computes no gradient for the data (its input), as in training; a time profile runs in a process
    that keeps freed memory (as the engine's processes do: each repeat would fault its pages in again) and after one
    whole forward and backward, so the first part timed does not pay every first touch."""
    import raypar.network.balance as bal
    from raypar.network.balance import measure_part
    model = build("vgg11", width_mult=0.25)
    x = torch.randn(4, 3, 32, 32)
    pre_p, _, _ = profile(model, x, "flops")
    with_input_grad, _ = measure_part(model.pre, x, "flops", input_grad=True)
    without, _ = measure_part(model.pre, x, "flops", input_grad=False)
    assert pre_p.flops == without.flops < with_input_grad.flops
    calls = []
    monkeypatch.setattr(bal, "keep_freed_memory", lambda: calls.append("kept"))
    real, whole = bal.measure_part, type(model).forward
    monkeypatch.setattr(bal, "measure_part", lambda *a, **k: (calls.append("part"), real(*a, **k))[1])
    monkeypatch.setattr(type(model), "forward", lambda self, x: (calls.append("whole"), whole(self, x))[1])
    profile(model, x, "time")
    assert calls[:3] == ["kept", "whole", "part"] and calls.count("part") == len(model.blocks) + 2


def test_a_deferring_time_balance_times_each_block_in_one_pass():
    """With F_1 in the driver and --defer-weights, the profile times each block's backward in the two halves an actor
    runs (its weight gradients' share kept per block) in the same passes as the block's whole cost: one warm-up and
    the repeats, not a second profile for the weight gradients."""
    model = build("vgg11", width_mult=0.25)
    calls = []
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda *_, i=i: calls.append(i))
    net = PararealNet(model, 2, balance="time", profile_batch=4, driver_segment=True, defer_weights=True)
    # per block: the whole pass before the profile, then warm-up + 3 repeats (the last one's output feeds the next)
    assert all(calls.count(i) == 1 + 4 for i in range(len(model.blocks))), calls
    _, blocks, _ = profile(model, torch.randn(4, 3, 32, 32), "time", weight_grads=True)
    assert all(0 < b.weight_grad < b.cost for b in blocks)
    assert sum(net.split) == len(model.blocks)


@pytest.mark.parametrize("pre", ["identity", "pool", "frozen"])
def test_a_pre_with_nothing_to_train_is_profiled_and_split(pre):
    """pre without trainable parameters, on the data: its profile has no backward to run (none in a step either)."""
    from raypar.network.models import StagedModel
    model = build("vgg11", width_mult=0.25)
    first = {"identity": nn.Identity(), "pool": nn.AvgPool2d(1), "frozen": model.pre.requires_grad_(False)}[pre]
    staged = StagedModel(first, [model.pre if pre != "frozen" else nn.Identity(), *model.blocks], model.post,
                         input_shape=(3, 32, 32))
    for balance in ("time", "flops", "params", [3, 5]):
        net = PararealNet(staged, 2, balance=balance, profile_batch=2, driver_segment=True, defer_weights=True)
        assert sum(net.split) == len(staged.blocks) and net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_explicit_split_and_coarse_options():
    model = build("vgg11", width_mult=0.25)
    net = PararealNet(model, 2, balance=[3, 4], coarse=CoarseSpec(depth=2, width=0.5))
    assert net.split == [3, 4]
    convs = [m for m in net.coarse[0].modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2
    for info in net.segment_info:
        assert 0 < info.coarse_ratio < 1


@pytest.mark.parametrize("downsample", ["pool", "stride"])
@pytest.mark.parametrize("in_shape, out_shape", [((16, 32, 32), (64, 8, 8)), ((16, 12, 12), (32, 5, 5)),
                                                 ((8, 8, 8), (8, 8, 8)), ((8, 4, 4), (16, 8, 8))])
def test_coarse_downsampling(downsample, in_shape, out_shape):
    from raypar.network.coarse import build_coarse
    net = build_coarse(in_shape, out_shape, CoarseSpec(depth=2, width=0.5, downsample=downsample))
    x = torch.randn(3, *in_shape, requires_grad=True)
    y = net(x)
    assert y.shape == (3, *out_shape)
    y.sum().backward()
    reached = (x.grad != 0).float().mean()           # the share of input numbers that reach the output
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2
    smaller = out_shape[1] < in_shape[1]
    if downsample == "pool" and smaller:         # pool first: every convolution at the output's size, stride 1
        assert isinstance(net[0], (nn.AvgPool2d, nn.AdaptiveAvgPool2d))
        assert all(c.stride == (1, 1) for c in convs)
    elif smaller and in_shape[1] % out_shape[1] == 0:
        assert convs[0].stride == (in_shape[1] // out_shape[1],) * 2
        assert reached < 0.6                         # a stride-4 3x3 convolution skips 7 input pixels in 16
    if downsample == "pool":
        assert reached > 0.99
    if out_shape[1] >= in_shape[1]:               # never pool (or upsample) before convolving a larger output
        assert isinstance(net[0], nn.Conv2d)


@pytest.mark.parametrize("in_shape, out_shape, first", [
    ((16, 32, 32), (64, 8, 8), "patch"), ((16, 8, 8), (32, 4, 4), "patch"),     # s = 4, s = 2: one patch each
    ((16, 32, 32), (64, 4, 4), "pool"), ((16, 12, 12), (32, 5, 5), "pool"),     # s = 8, no integer s: pooled first
    ((8, 8, 8), (16, 8, 8), "conv3")])                                          # the same size: a 3x3 convolution
def test_patch_coarse_networks(in_shape, out_shape, first):
    """The default coarse design: up to stride 4, one s x s convolution of stride s, and every input number reaches
    the output; beyond (or where the sizes do not divide) the pooled design, every input number too."""
    from raypar.network.coarse import build_coarse
    net = build_coarse(in_shape, out_shape, CoarseSpec())
    x = torch.randn(3, *in_shape, requires_grad=True)
    y = net(x)
    assert y.shape == (3, *out_shape)
    y.sum().backward()
    assert (x.grad != 0).float().mean() > 0.99
    conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    if first == "patch":
        s = in_shape[1] // out_shape[1]
        assert isinstance(net[0], nn.Conv2d) and conv.kernel_size == (s, s) and conv.stride == (s, s)
    elif first == "pool":
        assert isinstance(net[0], (nn.AvgPool2d, nn.AdaptiveAvgPool2d)) and conv.kernel_size == (3, 3)
    else:
        assert isinstance(net[0], nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_subnets=0), "between 1 and the number of blocks"),
    (dict(num_subnets=8), "between 1 and the number of blocks"),
    (dict(num_subnets=2, iterations=0), "iterations K must be between 1"),
    (dict(num_subnets=2, iterations=3), "iterations K must be between 1"),
    (dict(num_subnets=2, balance=[3, 3]), "summing to 7"),
    (dict(num_subnets=2, balance="speed"), "unknown balance measure"),
])
def test_bad_network_arguments(kwargs, match):
    with pytest.raises(UserError, match=match):
        PararealNet(build("vgg11", width_mult=0.25), **kwargs)


def test_bad_model_names_and_modules():
    with pytest.raises(UserError, match="unknown model 'vgg17'.*vgg16"):
        build("vgg17")
    with pytest.raises(UserError, match="invalid ResNet depth 21"):
        build("resnet21")
    with pytest.raises(UserError, match="cannot convert a LSTM: supported are nn.Sequential"):
        staged_from(nn.LSTM(3, 3))


def test_last_coarse_net_runs_while_the_fine_propagators_do():
    """z_N = C_N(z_{N-1}) feeds only the correction sweep: parareal hands it to the fine map (``meanwhile``), which
    the engine runs after launching the actors — off the serial path before them. Same output as computing it first."""
    torch.manual_seed(0)
    net = PararealNet(build("vgg11", width_mult=0.25), 3, iterations=2, balance="flops").eval()
    log = []
    for j, c in enumerate(net.coarse):
        c.register_forward_hook(lambda *_, j=j: log.append(f"C{j + 1}"))

    def fine(k, first, inputs, meanwhile):
        log.append(f"launch{k}:{first + 1}-{first + len(inputs)}")
        meanwhile()
        return net.fine_local(k, first, inputs)

    x = torch.randn(2, 3, 32, 32)
    for k, want in [(1, ["C1", "C2", "launch1:1-3", "C3", "C2", "C3"]),
                    # K > 1: the first correction sweep stops before interval N, so z_N is never computed; iteration
                    # 2 runs F_2, F_3 only (F_1's input has not changed) and C_3 only (C_2's input has not either)
                    (2, ["C1", "C2", "launch1:1-2", "C2", "C3", "launch2:2-3", "C3"])]:
        log.clear()
        with torch.no_grad():
            out = parareal(net.pre(x), net.coarse, fine, k)
            assert log == want
            assert torch.equal(out[-1], parareal(net.pre(x), net.coarse, net.fine_local, k)[-1])
    with torch.no_grad():                       # K = N = 3 is still the sequential network
        torch.testing.assert_close(parareal(net.pre(x), net.coarse, fine, 3)[-1], net.segments[2](
            net.segments[1](net.segments[0](net.pre(x)))), rtol=1e-4, atol=1e-5)


START_UP = """
import sys
import torch
from raypar.network.models import build
from raypar.network.balance import profile
from raypar.engine.optim import make_optimizer, restore_scheduler
from raypar.engine.specs import OptimConfig
model, x = build("vgg11", width_mult=0.25), torch.randn(2, 3, 32, 32)
timed = profile(model, x, "time", repeats=1)
counted_yet = "torch.utils.flop_counter" in sys.modules
opt, sched = make_optimizer(model.parameters(), OptimConfig(epochs=2))
for _ in range(2):
    opt.zero_grad(set_to_none=True)
    model(x).sum().backward()
    opt.step()
    sched.step()
opt.load_state_dict(opt.state_dict())
restore_scheduler(opt, OptimConfig(epochs=2), sched.state_dict())
trained = "torch._dynamo" in sys.modules
both = profile(model, x, "time", repeats=1, count_flops=True)
print([p.flops for p in [timed[0], *timed[1], timed[2]]].count(None), len(timed[1]) + 2, counted_yet, trained,
      all(p.flops > 0 for p in [both[0], *both[1], both[2]]))
"""


def test_a_time_profile_and_the_optimizer_import_no_compiler():
    """What a run's start waits for: a time profile counts FLOPs only when asked (the counter's first use imports
    much of torch._dynamo), and raypar's optimizer steps, saves and restores without importing torch._dynamo
    (torch.optim's own methods import it on first call). In a fresh process: other tests import both."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", START_UP], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    nones, parts, counted_yet, trained, flops = r.stdout.split()
    assert nones == parts and counted_yet == "False" and trained == "False" and flops == "True"
