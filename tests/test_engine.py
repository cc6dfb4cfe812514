"""The distributed engine equals the in-process reference: same loss, same parameters after 1 and 3 steps."""
import copy
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from raypar import PararealNet, build, staged_from
from raypar import UserError
from raypar.engine.driver import OptimConfig, PararealEngine, Resources

OPT = OptimConfig(lr=0.1, momentum=0.9, weight_decay=5e-4, epochs=3)


def _reference_step(net, opt, x, y, label_smoothing=0.0):
    opt.zero_grad()
    loss = F.cross_entropy(net(x), y, label_smoothing=label_smoothing)
    loss.backward()
    opt.step()
    return loss.item()


@pytest.mark.parametrize("model, n, k, driver_segment, transport, channels_last, defer", [
    # defer: the actors' weight gradients computed in their optimizer step, which the driver does not wait for (the
    # default); False: inside their backward, the driver waiting for their steps
    ("vgg11", 2, 1, False, "object-store", False, False), ("vgg11", 3, 2, False, "object-store", False, True),
    ("resnet20", 3, 1, False, "object-store", False, True), ("vgg11", 1, 1, False, "object-store", False, True),
    ("vgg11", 2, 1, True, "object-store", False, True), ("vgg11", 3, 3, True, "object-store", False, False),
    # point-to-point in a gloo group (NCCL on GPUs: the same code)
    ("vgg11", 3, 2, False, "p2p", False, True), ("resnet20", 3, 1, True, "p2p", False, False),
    # every part in the channels-last layout: the same numbers up to rounding
    ("vgg11", 3, 3, True, "object-store", True, True), ("resnet20", 2, 1, False, "p2p", True, True)])
def test_engine_matches_reference(ray_local, model, n, k, driver_segment, transport, channels_last, defer):
    torch.manual_seed(0)
    # float64, so that the only difference (the order of float additions) stays far below the tolerance
    net = PararealNet(build(model, width_mult=0.25), n, iterations=k, balance="flops").double()
    ref = copy.deepcopy(net).train()
    if channels_last:
        ref.to(memory_format=torch.channels_last)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=OPT.lr, momentum=OPT.momentum, weight_decay=OPT.weight_decay)
    engine = PararealEngine(net, OPT, Resources(cpus_per_subnet=0.5, driver_segment=driver_segment,
                                                transport=transport, channels_last=channels_last,
                                                defer_weights=defer), seed=0)
    assert engine.tx.name == transport
    try:
        batches = [(torch.randn(8, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (8,))) for _ in range(3)]
        for i, (x, y) in enumerate(batches):
            loss, correct, stats = engine.train_step(x, y)
            assert bool(engine.stepping) == defer        # deferred: the actors' steps still run when it returns
            ref_loss = _reference_step(ref, ref_opt, x, y)
            assert loss == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
            if i in (0, 2):
                got, want = engine.state_dict(), ref.state_dict()
                assert set(got) == set(want)
                for key in want:
                    torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}")
            assert stats.wall > 0 and stats.bytes > 0
            assert len(stats.fine_each) == n
            if defer and i == 0:          # deferred: the actors' compute seconds arrive with the next step
                assert stats.fine_each[int(driver_segment):] == (0.0,) * (n - driver_segment)
            else:
                assert min(stats.fine_each) > 0 and stats.fine_max == max(stats.fine_each)
        # exactly 4 interface tensors per sub-network and iteration: u out, f back, dL/df out, dL/du back
        shipped = net.segment_info[1:] if driver_segment else net.segment_info      # F_1 in the driver: no transfer
        numel = [torch.Size(i.in_shape).numel() + torch.Size(i.out_shape).numel() for i in shipped]
        bound = k * 8 * 8 * 2 * sum(numel)                    # float64: 8 bytes
        # with K > 1, F_N runs only in the last iteration and some outputs never reach the loss
        assert stats.bytes == bound if k == 1 else 0 < stats.bytes < bound
        assert net.interface_bytes(8, driver_segment, 8) == bound
        ref.eval()
        x = batches[0][0]
        with torch.no_grad():
            torch.testing.assert_close(engine.predict(x), ref(x), rtol=1e-4, atol=1e-5)
    finally:
        engine.shutdown()


@pytest.mark.parametrize("model, n, driver_segment, transport, channels_last", [
    ("vgg11", 2, True, "object-store", False), ("vgg11", 3, False, "object-store", True),
    ("resnet20", 3, True, "p2p", False)])
def test_engine_coarse_in_actors_matches_reference(ray_local, model, n, driver_segment, transport, channels_last):
    """--coarse-in-actors: each actor computes its input and coarse term from the batch, with copies of pre and C_j
    that the driver updates every step; the same loss, weights and BatchNorm statistics as the reference. Per actor
    and step three tensors travel: the batch out, d_j back, dL/dd_j out."""
    torch.manual_seed(0)
    net = PararealNet(build(model, width_mult=0.25), n, balance="flops").double()
    ref = copy.deepcopy(net).train()
    if channels_last:
        ref.to(memory_format=torch.channels_last)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=OPT.lr, momentum=OPT.momentum, weight_decay=OPT.weight_decay)
    engine = PararealEngine(net, OPT, Resources(cpus_per_subnet=0.5, driver_segment=driver_segment,
                                                transport=transport, channels_last=channels_last,
                                                coarse_in_actors=True), seed=0)
    try:
        calls = {}                        # forwards in the driver: the actors run the coarse sweep, it does not
        for name, m in [("pre", engine.pre)] + [(f"C{j + 1}", c) for j, c in enumerate(engine.coarse)]:
            calls[name] = 0
            m.register_forward_hook(lambda *a, name=name: calls.__setitem__(name, calls[name] + 1))
        batches = [(torch.randn(8, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (8,))) for _ in range(3)]
        for i, (x, y) in enumerate(batches):
            loss, _, stats = engine.train_step(x, y)
            assert loss == pytest.approx(_reference_step(ref, ref_opt, x, y), rel=1e-5, abs=1e-6)
            if i in (0, 2):
                got, want = engine.state_dict(), ref.state_dict()
                assert set(got) == set(want)
                for key in want:
                    torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5,
                                               msg=lambda m, key=key: f"{key}: {m}")
            if i == 0:
                assert calls == {"pre": int(driver_segment), "C1": 0, **{f"C{j}": 1 for j in range(2, n + 1)}}
        shipped = net.segment_info[1:] if driver_segment else net.segment_info
        assert stats.bytes == 8 * 8 * sum(3 * 32 * 32 + 2 * torch.Size(i.out_shape).numel() for i in shipped)
        assert stats.bytes == net.interface_bytes(8, driver_segment, 8, coarse_in_actors=True)
        ref.eval()
        with torch.no_grad():
            torch.testing.assert_close(engine.predict(batches[0][0]), ref(batches[0][0]), rtol=1e-4, atol=1e-5)
    finally:
        engine.shutdown()
    with pytest.raises(UserError, match="--coarse-in-actors needs --iterations 1"):
        PararealEngine(PararealNet(build("vgg11", width_mult=0.125), 2, iterations=2, balance="flops"), OPT,
                       Resources(cpus_per_subnet=0.5, coarse_in_actors=True))


def test_fine_actors_started_first_become_the_engines_and_a_failed_engine_stops_them(ray_local):
    """Actors started before the network exists (as the training loop starts them, beside its data loading) are
    the ones the engine computes with, and they stop with it; an engine that cannot be built stops them too, and
    leaves no placement group behind."""
    import ray
    from ray.util import placement_group_table

    from raypar.engine.driver import FineActors

    def live_groups():
        return {k for k, v in placement_group_table().items() if v["state"] != "REMOVED"}
    before = live_groups()
    resources = Resources(cpus_per_subnet=0.5)
    standby = FineActors(2, resources)
    standby.ready()
    pids = ray.get([a.pid.remote() for a in standby.actors])
    torch.manual_seed(0)
    net = PararealNet(build("vgg11", width_mult=0.125), 2, balance="flops")
    ref = copy.deepcopy(net).train()
    engine = PararealEngine(net, OPT, resources, actors=standby)
    try:
        assert engine.actor_pids() == pids
        x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
        loss, _, _ = engine.train_step(x, y)
        assert loss == pytest.approx(F.cross_entropy(ref(x), y).item(), rel=1e-5)
    finally:
        engine.shutdown()
    assert live_groups() == before
    standby = FineActors(2, Resources(cpus_per_subnet=0.5, coarse_in_actors=True))
    standby.ready()
    with pytest.raises(UserError, match="--coarse-in-actors needs --iterations 1"):
        PararealEngine(PararealNet(build("vgg11", width_mult=0.125), 2, iterations=2, balance="flops"), OPT,
                       Resources(cpus_per_subnet=0.5, coarse_in_actors=True), actors=standby)
    assert live_groups() == before and standby.actors == []


def test_fine_actors_are_asked_for_without_torch(tmp_path):
    """A driver asks for its fine actors before it imports torch (raypar.training.launch.driver): making them imports
    none in the driver's process, and each actor's process has the engine loaded once it is up."""
    code = """
import sys
import ray
from raypar.engine.placement import FineActors, Resources
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
standby = FineActors(1, Resources(cpus_per_subnet=0.5, transport="auto"))
standby.ready()
there = ray.get(standby.actors[0].__ray_call__.remote(lambda self: sorted(
    m for m in ("torch", "raypar.engine.transport", "raypar.engine.optim") if m in sys.modules)))
print("torch here:", "torch" in sys.modules, "there:", there)
standby.shutdown()
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    want = "torch here: False there: ['raypar.engine.optim', 'raypar.engine.transport', 'torch']"
    assert r.stdout.strip().splitlines()[-1] == want, r.stdout


def test_transport_choice_on_cpu(ray_local, monkeypatch):
    """On CPUs "auto" takes p2p (gloo), told the bytes a step ships at the run's batch; CUDA IPC is refused at once,
    with nothing left running."""
    import ray

    import raypar.engine.transport as T
    told = []
    choose = T.choose
    monkeypatch.setattr(T, "choose", lambda *a: told.append(a[-1]) or choose(*a))

    def cpus():
        return ray.available_resources().get("CPU", 0.0)
    free = cpus()
    for _ in range(40):                    # what earlier tests freed may still be coming back: wait until it is stable
        time.sleep(0.5)
        free, before = cpus(), free
        if free == before:
            break
    net = PararealNet(build("vgg11", width_mult=0.25), 2, balance="flops")
    engine = PararealEngine(net, OPT, Resources(cpus_per_subnet=0.5, transport="auto", batch=16))
    try:
        assert engine.tx.name == "p2p"
        # u out, f back and their gradients, float32, for each of the two segments
        assert told == [16 * 4 * 2 * sum(torch.Size(i.in_shape).numel() + torch.Size(i.out_shape).numel()
                                         for i in net.segment_info)]
    finally:
        engine.shutdown()
    with pytest.raises(UserError, match="cuda-ipc needs GPUs"):
        PararealEngine(net, OPT, Resources(cpus_per_subnet=0.5, transport="cuda-ipc"))
    with pytest.raises(UserError, match="--transport must be one of"):
        PararealEngine(net, OPT, Resources(cpus_per_subnet=0.5, transport="carrier-pigeon"))
    for _ in range(100):                                          # no actor or placement group left behind
        if cpus() == free:
            break
        time.sleep(0.2)
    assert cpus() == free


@pytest.mark.parametrize("name, device, here, visible, there, want", [
    ("auto", "cpu", ("A", ()), 0, [("A", (), "cpu")] * 2, "p2p"),                       # gloo: faster on CPUs
    ("p2p", "cpu", ("A", ()), 0, [("A", (), "cpu"), ("B", (), "cpu")], "p2p"),
    ("auto", "cuda", ("A", (0,)), 1, [("A", (0,), "cuda")] * 3, "cuda-ipc"),           # one shared GPU
    ("auto", "cuda", ("A", (0,)), 1, [("A", (1,), "cuda"), ("B", (0,), "cuda")], "p2p"),  # own GPUs, two nodes
    ("auto", "cuda", ("A", (0, 1)), 2, [("A", (1, 0), "cuda")], "cuda-ipc"),          # the same GPUs, any order
    ("auto", "cuda", ("A", (1,)), 2, [("A", (1,), "cuda")], "object-store"),   # the driver sees a neighbour's GPU
    ("auto", "cuda", ("A", (0,)), 1, [("A", (0,), "cuda"), ("A", (1,), "cuda")], "object-store"),
    ("cuda-ipc", "cuda", ("A", (0,)), 1, [("A", (1,), "cuda")], "needs the driver and every fine actor"),
    ("p2p", "cuda", ("A", (0,)), 1, [("A", (0,), "cuda")], "NCCL refuses two ranks on one GPU"),
    ("cuda-ipc", "cpu", ("A", ()), 0, [("A", (), "cpu")], "needs the driver and every fine actor"),
    ("p2p", "cpu", ("A", ()), 0, [("A", (0,), "cuda")], "the driver computes on cpu but a fine actor on cuda"),
    ("auto", "cpu", ("A", ()), 0, [], "object-store")])                                  # no actor: no group
def test_transport_choice(name, device, here, visible, there, want):
    from raypar.engine.transport import choose
    if " " in want:
        with pytest.raises(UserError, match=want):
            choose(name, device, here, visible, there)
    else:
        assert choose(name, device, here, visible, there) == want


def test_auto_on_a_shared_gpu_sends_small_steps_through_the_object_store(capsys):
    """CUDA IPC's fixed cost per tensor outweighs the object store's copies at a few MB a step (measured on an H200,
    benchmarks/gpu/README.md): "auto" on one shared GPU takes CUDA IPC from IPC_MIN_BYTES a step, or when the step's
    size is unknown; a transport named outright, and "auto" with a GPU per process, do not depend on the size."""
    from raypar.engine.transport import IPC_MIN_BYTES, choose
    shared = ("cuda", ("A", (0,)), 1, [("A", (0,), "cuda")] * 2)
    own = ("cuda", ("A", (0,)), 1, [("A", (1,), "cuda")])
    assert choose("auto", *shared, IPC_MIN_BYTES - 1) == "object-store"
    assert choose("auto", *shared, IPC_MIN_BYTES) == "cuda-ipc"
    assert choose("auto", *shared, None) == "cuda-ipc"
    assert choose("cuda-ipc", *shared, 1) == "cuda-ipc"
    assert choose("auto", *own, 1) == "p2p"
    from raypar.cli.main import build_parser
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    assert f"cuda-ipc from {IPC_MIN_BYTES // 2**20} MiB" in " ".join(capsys.readouterr().out.split())   # --help says so


@pytest.mark.parametrize("amp, n, k, driver_segment, transport, coarse_in_actors, defer", [
    ("bf16", 2, 1, True, "object-store", False, True), ("fp16", 3, 2, False, "p2p", False, True),
    ("fp16", 2, 1, True, "object-store", True, False), ("fp16", 3, 1, True, "p2p", False, True)])
def test_engine_amp_matches_reference(ray_local, amp, n, k, driver_segment, transport, coarse_in_actors, defer):
    """--amp: the engine equals the reference network run under the same autocast (and, for fp16, the same loss
    scaling); the interface tensors travel in 16 bits; an fp16 overflow skips the step in every process."""
    from raypar.engine import precision
    torch.manual_seed(0)
    net = PararealNet(build("vgg11", width_mult=0.25), n, iterations=k, balance="flops")
    ref = copy.deepcopy(net).train()
    start = copy.deepcopy(ref.state_dict())
    ref_opt = torch.optim.SGD(ref.parameters(), lr=OPT.lr, momentum=OPT.momentum, weight_decay=OPT.weight_decay)
    scaler = precision.LossScaler() if amp == "fp16" else None
    engine = PararealEngine(net, OPT, Resources(cpus_per_subnet=0.5, driver_segment=driver_segment,
                                                transport=transport, amp=amp, coarse_in_actors=coarse_in_actors,
                                                defer_weights=defer), seed=0)

    if scaler:                        # 2^16, the default, overflows on this model's first step in both
        engine.scaler.scale = scaler.scale = 2.0 ** 8

    def reference_step(x, y):
        ref_opt.zero_grad()
        with precision.autocast("cpu", amp):
            logits = ref(x)
        loss = F.cross_entropy(logits.float(), y)
        scale = scaler.scale if scaler else 1.0
        (loss * scale).backward()
        found = precision.unscale(ref.parameters(), 1 / scale)
        if not found:
            ref_opt.step()
        if scaler:
            scaler.update(found)
        return loss.item(), int(found)

    try:
        batches = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))) for _ in range(2)]
        for i, (x, y) in enumerate(batches):
            loss, _, stats = engine.train_step(x, y)
            ref_loss, ref_overflow = reference_step(x, y)
            assert loss == pytest.approx(ref_loss, rel=1e-2)
            assert stats.overflow == ref_overflow == 0
            if i > 0:
                continue
            # Every tensor's change in the first step equals the reference's to 2 %. (16-bit rounding depends on the
            # order of sums: where pre's output gets gradients from F_1 and from the remote F_2, the reference and
            # the engine add them in different orders — far closer than 16 bits and float32, which differ by 15 %
            # of the update here; later steps magnify it.)
            got, want = engine.state_dict(), ref.state_dict()
            for key in want:
                change, err = (want[key] - start[key]).double().norm(), (got[key] - want[key]).double().norm()
                assert err <= 0.02 * change + 1e-7, f"{key}: {err:.3g} off a change of {change:.3g}"
            ref.eval()
            with torch.no_grad(), precision.autocast("cpu", amp):
                want = ref(x).float()
            ref.train()
            assert (engine.predict(x) - want).norm() <= 0.02 * want.norm()
        shipped = net.segment_info[1:] if driver_segment else net.segment_info
        numel = [torch.Size(i.in_shape).numel() + torch.Size(i.out_shape).numel() for i in shipped]
        bound = k * 8 * 2 * 2 * sum(numel)                     # 16 bits per number
        if coarse_in_actors:                                   # the float32 batch out, d_j and dL/dd_j in 16 bits
            bound = 8 * sum(4 * 3 * 32 * 32 + 2 * 2 * torch.Size(i.out_shape).numel() for i in shipped)
        assert stats.bytes == bound if k == 1 else 0 < stats.bytes < bound
        if scaler:                    # a scale so large that the float16 gradients overflow: nobody steps
            before = {key: v for key, v in engine.state_dict().items() if "running" not in key}
            engine.scaler.scale = 2.0 ** 40
            _, _, stats = engine.train_step(*batches[0])
            assert stats.overflow == 1 and engine.scaler.scale == 2.0 ** 39
            after = engine.state_dict()
            for key, v in before.items():
                if "num_batches_tracked" not in key:
                    torch.testing.assert_close(after[key], v, rtol=0, atol=0, msg=lambda m, key=key: f"{key}: {m}")
            assert engine.get_state()["scaler"]["scale"] == 2.0 ** 39
        if transport == "p2p" and k == 1:        # fp16: the actors' steps wait for the overflow decision, so steps 2
            # and 3 make a call ahead for each part of each actor's step, never one for the whole step
            assert engine.tx.ahead == 2 * 2 * (n - driver_segment) and engine.tx.idle
            assert engine.tx.sent_early == 0
    finally:
        engine.shutdown()


def test_engine_with_a_parameter_free_pre(ray_local):
    """A Sequential converted with pre=0 has an Identity stem: nothing to cut after it, nothing to backpropagate."""
    from torch import nn
    from raypar import staged_from
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
              nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)]
    staged = staged_from(nn.Sequential(*layers), pre=0, input_shape=(3, 16, 16))
    assert isinstance(staged.pre, nn.Identity)
    net = PararealNet(staged, 2, balance="flops").double()
    ref = copy.deepcopy(net).train()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=OPT.lr, momentum=OPT.momentum, weight_decay=OPT.weight_decay)
    engine = PararealEngine(net, OPT, Resources(cpus_per_subnet=0.5), seed=0)
    try:
        x, y = torch.randn(4, 3, 16, 16, dtype=torch.float64), torch.randint(0, 10, (4,))
        loss, _, _ = engine.train_step(x, y)
        assert loss == pytest.approx(_reference_step(ref, ref_opt, x, y), rel=1e-6)
        got, want = engine.state_dict(), ref.state_dict()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-7)
    finally:
        engine.shutdown()


def test_engine_with_label_smoothing_matches_reference_trained_so(ray_local):
    """--label-smoothing: the engine's training loss is the smoothed cross-entropy (its weights equal a reference
    trained with it, and differ from one trained without); evaluation's loss stays unsmoothed."""
    torch.manual_seed(0)
    net = PararealNet(build("vgg11", width_mult=0.25), 2, balance="flops").double()
    ref, plain = copy.deepcopy(net).train(), copy.deepcopy(net).train()
    opts = [torch.optim.SGD(m.parameters(), lr=OPT.lr, momentum=OPT.momentum, weight_decay=OPT.weight_decay)
            for m in (ref, plain)]
    engine = PararealEngine(net, OPT, Resources(cpus_per_subnet=0.5), seed=0, label_smoothing=0.2)
    try:
        for _ in range(2):
            x, y = torch.randn(8, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (8,))
            loss, _, _ = engine.train_step(x, y)
            assert loss == pytest.approx(_reference_step(ref, opts[0], x, y, label_smoothing=0.2), rel=1e-6)
            assert loss != pytest.approx(_reference_step(plain, opts[1], x, y), rel=1e-3)
        engine.settle()
        got = engine.state_dict()
        for key, want in ref.state_dict().items():
            torch.testing.assert_close(got[key], want, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(got["post.2.weight"], plain.state_dict()["post.2.weight"], rtol=1e-4, atol=1e-6)
        ref.eval()
        with torch.no_grad():
            want_loss = F.cross_entropy(ref(x), y).item()
        val_loss, _ = engine.evaluate([(x, y)])
        assert val_loss == pytest.approx(want_loss, rel=1e-5)
    finally:
        engine.shutdown()


def _p2p_engine_and_reference():
    """VGG-11 x0.25 in float64, N = 3 with F_1 in the driver (2 actors), p2p; its in-process twin and SGD."""
    torch.manual_seed(0)
    net = PararealNet(build("vgg11", width_mult=0.25), 3, balance="flops").double()
    ref = copy.deepcopy(net).train()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=OPT.lr, momentum=OPT.momentum, weight_decay=OPT.weight_decay)
    engine = PararealEngine(net, OPT, Resources(cpus_per_subnet=0.5, driver_segment=True, transport="p2p"), seed=0)
    return engine, ref, ref_opt


def test_p2p_calls_made_ahead_follow_the_batch_shape(ray_local):
    """p2p, K = 1: a step whose batch has the last step's shape is one call to each actor, made before the driver has
    its tensors (the actor waits in its receive); another shape makes a call for each part as it goes. After a whole
    step each actor posts the receive of the next step's input early; only a whole step of that shape sends to it (a
    step of another shape leaves it waiting for the next such step). Every step still equals the reference, and
    nothing stays posted."""
    engine, ref, ref_opt = _p2p_engine_and_reference()
    try:
        for i, b in enumerate([8, 8, 5, 5, 8, 8]):
            x, y = torch.randn(b, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (b,))
            loss, _, _ = engine.train_step(x, y)
            assert loss == pytest.approx(_reference_step(ref, ref_opt, x, y), rel=1e-6)
            if i == 4:
                engine.predict(x)                       # an evaluation between steps changes nothing
        # steps 2, 4 and 6, one call to each of 2 actors for its whole step; step 4 (5 samples) leaves the early
        # receive of step 2 (8 samples) posted, and step 6 sends to it
        assert engine.tx.ahead == 3 * 2 and engine.tx.idle
        assert engine.tx.sent_early == 2
        got, want = engine.state_dict(), ref.state_dict()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5)
    finally:
        engine.shutdown()


def test_p2p_whole_steps_stream_until_anything_else_calls_the_actors(ray_local):
    """p2p on CPUs, K = 1: whole steps of one shape in a row are one Ray call to each actor (``train_steps``), fed by
    point-to-point words, until something else must call the actors: a step of another shape, an evaluation, a
    checkpoint. Every step equals the reference, and the next whole step starts a new stream."""
    engine, ref, ref_opt = _p2p_engine_and_reference()
    try:
        streams = []
        for i, b in enumerate([8, 8, 8, 8, 8, 5, 5, 8, 8, 8, 8]):
            x, y = torch.randn(b, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (b,))
            loss, _, st = engine.train_step(x, y)
            assert loss == pytest.approx(_reference_step(ref, ref_opt, x, y), rel=1e-6)
            streams.append(engine.tx.streaming)
            if i == 3:
                engine.predict(x)                       # an evaluation ends the streams
            if i == 8:
                state = engine.get_state()              # a checkpoint too
                assert state["step"] == 9
        # each actor streams from step 2 on; the evaluation after step 4 ends that, step 5 starts another stream; the
        # first 5-sample step is a call for each part, the second a whole step of its own (the actor's early receive
        # is still the one for 8 samples); the first 8-sample step after them a call for each part again, then a
        # stream, ended by the checkpoint after step 9; step 10 starts the last. Steps 3, 4 and 11 went on a stream;
        # 8 steps were whole steps
        assert streams == [0, 2, 2, 2, 2, 0, 0, 0, 2, 2, 2]
        assert engine.tx.streamed == 2 * 3
        assert engine.tx.ahead == 2 * 8 and engine.tx.idle
        got, want = engine.state_dict(), ref.state_dict()
        assert engine.tx.streaming == 0                 # (state_dict asks the actors)
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5)
    finally:
        engine.shutdown()


def _tripwire(where: str) -> nn.Module:
    """A layer that raises in its third training forward (``where="forward"``), in the backward of that forward, or
    in the third computation of its weight's gradient (``"weights"``: deferred to the actor's optimizer step). Made in
    a function, so that Ray pickles its class by value: a fine actor cannot import this test module."""
    if where == "weights":
        class Tripwire(nn.Conv2d):
            def forward(self, x):
                if not hasattr(self, "calls"):             # (in the actor: hooks do not travel)
                    self.calls = 0

                    def hook(g):
                        self.calls += 1
                        if self.calls == 3:
                            raise ValueError("tripped in weights")
                    self.weight.register_hook(hook)
                return super().forward(x)
        return Tripwire(4, 4, 3, padding=1)

    class Trip(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            raise ValueError("tripped in backward")

    class Tripwire(nn.Module):
        def __init__(self):
            super().__init__()
            self.count = 0

        def forward(self, x):
            if self.training:
                self.count += 1
                if self.count == 3:
                    if where == "forward":
                        raise ValueError("tripped in forward")
                    return Trip.apply(x)
            return x

    return Tripwire()


@pytest.mark.parametrize("where", ["forward", "backward", "weights"])
def test_a_failure_inside_a_whole_step_call_raises_the_actors_error(ray_local, where):
    """p2p, K = 1: from the second step on, each actor's steps are one Ray call that the driver feeds by
    point-to-point sends. An error in the actor's forward or backward reaches the driver as that error, at once; one
    in its weight gradients (deferred to its optimizer step, which the driver does not wait for) with the next step:
    the driver does not wait forever in a receive."""
    torch.manual_seed(0)
    c = lambda: nn.Conv2d(4, 4, 3, padding=1)                       # noqa: E731
    seq = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), c(), nn.ReLU(), c(), nn.ReLU(), _tripwire(where),
                        c(), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    net = PararealNet(staged_from(seq, pre=0, input_shape=(3, 8, 8)), 2, balance=[2, 3])   # the tripwire is block 4
    assert any(type(m).__name__ == "Tripwire" for m in net.segments[1].modules())
    engine = PararealEngine(net, OPT, Resources(cpus_per_subnet=0.5, driver_segment=True, transport="p2p"), seed=0)
    try:
        x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
        engine.train_step(x, y)
        engine.train_step(x, y)
        assert engine.tx.ahead == 1                                 # the second step was one call
        t0 = time.perf_counter()
        with pytest.raises(Exception, match=f"tripped in {where}"):
            engine.train_step(x, y)
            if where == "weights":
                engine.train_step(x, y)
        assert time.perf_counter() - t0 < 30
    finally:
        engine.shutdown()


@pytest.mark.parametrize("n, k, driver_segment", [(3, 1, False), (2, 1, True), (3, 2, True)])
def test_engine_runs_each_driver_backward_once(ray_local, n, k, driver_segment):
    """pre and the coarse sweep run one backward per forward in a step, although the loss and each iteration's dL/du
    reach their outputs in separate backward passes (the graph is cut after them); with K = 1 that is every coarse
    network. (With K > 1 a correction term reused by the next iteration still runs its backward in two passes.)"""
    torch.manual_seed(0)
    net = PararealNet(build("vgg11", width_mult=0.125), n, iterations=k, balance="flops")
    engine = PararealEngine(net, OPT, Resources(cpus_per_subnet=0.5, driver_segment=driver_segment), seed=0)
    try:
        calls = {}
        for name, m in [("pre", engine.pre)] + [(f"C{j + 1}", c) for j, c in enumerate(engine.coarse)]:
            calls[name] = [0, 0]
            m.register_forward_hook(lambda *a, c=calls[name]: c.__setitem__(0, c[0] + 1))
            m.register_full_backward_hook(lambda *a, c=calls[name]: c.__setitem__(1, c[1] + 1))
        engine.train_step(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
        assert calls["pre"] == [1, 1] and calls["C1"] == [1, 1]        # C_1 runs only in the coarse sweep
        if k == 1:
            assert all(c == [2, 2] for name, c in calls.items() if name not in ("pre", "C1"))   # sweep, correction
    finally:
        engine.shutdown()
