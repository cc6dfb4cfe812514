"""On a CUDA machine: the engine on GPUs equals the in-process reference with every transport that can run there, and
"auto" picks the device-to-device path. Skipped without CUDA (CI has none); run with ``pytest tests/test_gpu.py``
on a GPU machine. With one GPU the driver and its actors share it (fractional GPUs): the object store and CUDA IPC
run; NCCL point-to-point needs a GPU per process and is refused with a clear error. With 2 or 3 GPUs and more, a GPU per
process runs NCCL point-to-point too."""
import copy
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SHARE = 0.1                       # the GPU slice of the driver and of each actor when they share one GPU


@pytest.fixture(scope="module")
def ray_gpu():
    import ray
    from ray import cloudpickle
    if ray.is_initialized():
        if not ray.cluster_resources().get("GPU"):
            pytest.skip("this session's Ray has no GPU")
    else:
        ray.init(address="local", num_cpus=8, num_gpus=torch.cuda.device_count(), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])     # the driver below runs in a Ray actor
    yield ray


def _compare(model: str, n: int, k: int, driver_segment: bool, transport: str, steps: int = 3,
             amp: str = "off", share: float = SHARE, batch: int = 0) -> dict:
    """In a Ray actor holding a slice of the GPU: train the engine and the reference side by side; the largest
    differences seen (with ``amp``: float32 weights under autocast, and each tensor's change in the steps against the
    reference's, relative). ``batch``: the engine's batch hint (``Resources.batch``; 0: none); the steps use 8."""
    import torch.nn.functional as F

    from raypar import PararealNet, build, precision
    from raypar.engine.driver import OptimConfig, PararealEngine, Resources
    opt_cfg = OptimConfig(lr=0.1, momentum=0.9, weight_decay=5e-4, epochs=3)
    torch.manual_seed(0)
    dtype = torch.float64 if amp == "off" else torch.float32
    net = PararealNet(build(model, width_mult=0.25), n, iterations=k, balance="flops").to(dtype)
    start = copy.deepcopy(net.state_dict())
    ref = copy.deepcopy(net).cuda().train()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=opt_cfg.lr, momentum=opt_cfg.momentum,
                              weight_decay=opt_cfg.weight_decay)
    engine = PararealEngine(net, opt_cfg, Resources(gpus_per_subnet=share, cpus_per_subnet=1,
                                                    driver_segment=driver_segment, transport=transport,
                                                    amp=amp, batch=batch), seed=0)
    out = {"transport": engine.tx.name, "device": str(engine.device), "loss": 0.0, "weights": 0.0, "ahead": 0}
    scale = 2.0 ** 8 if amp == "fp16" else 1.0            # the same fixed loss scale in both (no overflow at 2^8)
    if engine.scaler:
        engine.scaler.scale = scale
    try:
        for _ in range(steps):
            x = torch.randn(8, 3, 32, 32, dtype=dtype, device="cuda")
            y = torch.randint(0, 10, (8,), device="cuda")
            loss, _, stats = engine.train_step(x, y)
            ref_opt.zero_grad()
            with precision.autocast("cuda", amp):
                logits = ref(x)
            ref_loss = F.cross_entropy(precision.full(logits), y)
            (ref_loss * scale).backward()
            if not precision.unscale(ref.parameters(), 1 / scale):
                ref_opt.step()
            out["loss"] = max(out["loss"], abs(loss - ref_loss.item()))
            out["bytes"] = stats.bytes
        out["ahead"] = engine.tx.ahead
        out["gpu_peaks"] = engine.gpu_peaks_mb()
        got, want = engine.state_dict(), ref.state_dict()
        out["keys_match"] = set(got) == set(want)
        out["weights"] = max(float((got[key].cpu() - want[key].cpu()).abs().max()) for key in want)
        out["relative_change_error"] = max(
            float((got[key].cpu() - want[key].cpu()).double().norm() /
                  ((want[key].cpu() - start[key]).double().norm() + 1e-12)) for key in want if "weight" in key)
        ref.eval()
        with torch.no_grad(), precision.autocast("cuda", amp):
            out["predict"] = float((engine.predict(x).cpu() - precision.full(ref(x)).cpu()).abs().max())
    finally:
        engine.shutdown()
    return out


def _run(ray, *args, share: float = SHARE, **kw) -> dict:
    driver = ray.remote(num_cpus=1, num_gpus=share)(_compare)
    return ray.get(driver.remote(*args, share=share, **kw), timeout=600)


@pytest.mark.parametrize("model, n, k, driver_segment, transport, batch, expect", [
    ("vgg11", 2, 1, False, "object-store", 0, "object-store"),
    ("vgg11", 3, 2, False, "cuda-ipc", 0, "cuda-ipc"),
    ("resnet20", 3, 1, True, "cuda-ipc", 0, "cuda-ipc"),
    ("vgg11", 2, 1, False, "auto", 0, "cuda-ipc"),           # a shared GPU, the batch unknown: auto takes CUDA IPC
    ("vgg11", 2, 1, False, "auto", 8, "object-store")])      # 8 samples in float64, 0.8 MB a step: the object store
def test_engine_on_gpu_matches_reference(ray_gpu, model, n, k, driver_segment, transport, batch, expect):
    out = _run(ray_gpu, model, n, k, driver_segment, transport, batch=batch)
    assert out["transport"] == expect and out["device"].startswith("cuda")
    assert out["keys_match"] and out["bytes"] > 0
    assert len(out["gpu_peaks"]) == 1 + n - driver_segment and all(m > 0 for m in out["gpu_peaks"])
    assert out["loss"] < 1e-8 and out["weights"] < 1e-8 and out["predict"] < 1e-8, out


@pytest.mark.parametrize("amp, transport", [("bf16", "cuda-ipc"), ("fp16", "object-store")])
def test_amp_on_gpu_matches_reference_under_the_same_autocast(ray_gpu, amp, transport):
    """One step; each tensor's change equals the reference's to 2 % (16-bit sums in another order: see
    tests/test_engine.py)."""
    out = _run(ray_gpu, "vgg11", 2, 1, True, transport, 1, amp)
    assert out["transport"] == transport and out["keys_match"]
    assert out["relative_change_error"] < 0.02, out


def test_p2p_on_a_shared_gpu_is_refused(ray_gpu):
    if torch.cuda.device_count() > 2:
        pytest.skip("enough GPUs for a GPU per process")
    with pytest.raises(Exception, match="needs the driver's GPU to be its own"):
        _run(ray_gpu, "vgg11", 2, 1, False, "p2p")


@pytest.mark.parametrize("driver_segment", [False, True])
def test_nccl_with_a_gpu_per_process_matches_reference(ray_gpu, driver_segment):
    """A whole GPU for the driver and for each actor: auto takes NCCL point-to-point; from the second step on the
    calls of each actor's forward and backward are made ahead of their tensors (whole-step calls and early receives
    are for gloo only)."""
    n = 2
    if torch.cuda.device_count() < 1 + n - driver_segment:
        pytest.skip(f"needs {1 + n - driver_segment} GPUs")
    out = _run(ray_gpu, "vgg11", n, 1, driver_segment, "auto", share=1.0)
    assert out["transport"] == "p2p" and out["keys_match"] and out["ahead"] == 2 * 2 * (n - driver_segment)
    assert out["loss"] < 1e-8 and out["weights"] < 1e-8 and out["predict"] < 1e-8, out


def test_a_time_balance_for_a_gpu_run_profiles_on_the_gpu():
    """The blocks are timed where they will train (the network itself stays on the CPU); the split covers them."""
    from raypar import PararealNet, build
    from raypar.network.balance import weight_grad_times
    staged = build("vgg11", width_mult=0.25)
    net = PararealNet(staged, 2, balance="time", profile_batch=32, driver_segment=True, defer_weights=True,
                      profile_device="cuda")
    assert sum(net.split) == len(staged.blocks) and min(net.split) >= 1
    assert all(p.device.type == "cpu" for p in net.parameters())
    assert all(s.cost > 0 for s in net.segment_info)
    assert all(t > 0 for t in weight_grad_times(staged, torch.randn(4, 3, 32, 32, device="cuda")))
