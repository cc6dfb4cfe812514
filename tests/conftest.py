"""Test tiers and one small private Ray instance for the whole test session (never attaches to another cluster).

Every test is in one tier, by marker: ``unit`` (no Ray), ``integration`` (a private Ray on this machine),
``cluster`` (real ``ray start`` heads, ``ray job submit``), ``gpu`` (needs CUDA). ``pytest -q`` runs them all (the
gpu tier skips itself without a GPU); ``pytest -m unit`` is the quick inner loop.
"""
import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

TIERS = ("unit", "integration", "cluster", "gpu")
# whole files of one tier; any other test is integration if it takes the ray_local fixture, else unit
FILE_TIERS = {"test_job_submit.py": "cluster", "test_multinode.py": "cluster", "test_gpu.py": "gpu",
              "test_engine.py": "integration", "test_train.py": "integration", "test_reliability.py": "integration",
              "test_study.py": "integration", "test_bench.py": "integration", "test_malloc.py": "integration"}


def pytest_collection_modifyitems(items):
    for item in items:
        if any(item.get_closest_marker(t) for t in TIERS):
            continue
        tier = FILE_TIERS.get(item.path.name)
        if tier is None:
            tier = "integration" if "ray_local" in getattr(item, "fixturenames", ()) else "unit"
        item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def ray_local():
    import ray
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    yield ray
    ray.shutdown()
