"""cluster.yaml: valid under Ray's own cluster-launcher schema (after Ray's AWS defaults are merged in), and safe.

Offline and fast: ``prepare_config`` only merges ray/autoscaler/aws/defaults.yaml into the config and
``validate_config`` only checks it against ray/autoscaler/ray-schema.json; neither talks to AWS (that happens in
``ray up``), and the tests below make sure of it by refusing every socket connection.
"""
import copy
import re
import shutil
import socket
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).parent.parent / "cluster.yaml"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("cluster config validation must not touch the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture
def cfg(raw) -> dict:
    return copy.deepcopy(raw)


def check(config: dict) -> dict:
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def workers(cfg: dict) -> dict:
    return {name: t for name, t in cfg["available_node_types"].items() if name != cfg["head_node_type"]}


def head_ray_start(cfg: dict) -> str:
    [cmd] = [c for c in cfg["head_start_ray_commands"] if "ray start --head" in c]
    return cmd


def mlflow_server(cfg: dict) -> str:
    [cmd] = [c for c in cfg["head_start_ray_commands"] if "mlflow server" in c]
    return cmd


def all_commands(cfg: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    return [c for k in keys for c in cfg.get(k) or []]


# --- Ray's schema -----------------------------------------------------------------------------------------------

def test_valid_under_ray_schema_with_defaults_merged(cfg):
    prepared = check(cfg)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["cluster_name"] == "raypar"
    assert set(prepared["available_node_types"]) == set(cfg["available_node_types"])   # ours, not the defaults'
    # Ray prepends setup_commands to the head's and the workers' own lists.
    assert prepared["head_setup_commands"] == cfg["setup_commands"] + cfg["head_setup_commands"]


def rename(d: dict, old: str, new: str) -> None:
    d[new] = d.pop(old)


@pytest.mark.parametrize("typo, mutate", [
    ("max_worker", lambda c: rename(c, "max_workers", "max_worker")),
    ("available_node_type", lambda c: rename(c, "available_node_types", "available_node_type")),
    ("idle_timeout_minute", lambda c: rename(c, "idle_timeout_minutes", "idle_timeout_minute")),
    ("min_worker", lambda c: rename(c["available_node_types"]["gpu_1x"], "min_workers", "min_worker")),
    ("max_worker", lambda c: rename(c["available_node_types"]["gpu_4x"], "max_workers", "max_worker")),
    ("resources", lambda c: rename(c["available_node_types"]["gpu_1x"], "resources", "resource")),
])
def test_typo_fails_schema_validation(cfg, typo, mutate):
    mutate(cfg)
    with pytest.raises(jsonschema.ValidationError, match=typo):
        check(cfg)


def test_fractional_resources_fail_schema_validation(cfg):
    cfg["available_node_types"]["gpu_1x"]["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        check(cfg)


def test_unknown_head_node_type_is_a_value_error(cfg):
    cfg["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError, match="head_node_type"):
        check(cfg)


# --- what the file promises -------------------------------------------------------------------------------------

def test_autoscaling_settings(cfg):
    assert cfg["provider"]["type"] == "aws" and cfg["provider"]["region"]
    assert cfg["provider"]["cache_stopped_nodes"] is False
    assert isinstance(cfg["idle_timeout_minutes"], (int, float)) and cfg["idle_timeout_minutes"] > 0
    assert cfg["upscaling_speed"] > 0
    assert isinstance(cfg["max_workers"], int) and cfg["max_workers"] > 0


def test_head_is_cpu_only_and_explicit(cfg):
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert "CPU" in head["resources"]                 # explicit, not auto-detected
    assert head["resources"].get("GPU", 0) == 0
    assert head["resources"]["CPU"] == 0              # no training lands on the head


def test_every_worker_type_scales_from_zero_with_explicit_resources(cfg):
    ws = workers(cfg)
    assert ws
    for name, t in ws.items():
        assert t["min_workers"] == 0, name
        assert isinstance(t["max_workers"], int) and 0 < t["max_workers"] <= cfg["max_workers"], name
        assert t["resources"].get("CPU", 0) >= 1, name
        assert t["resources"].get("GPU", 0) >= 1, name
        assert t["resources"]["CPU"] >= t["resources"]["GPU"], name
        assert t["node_config"]["InstanceType"], name
        assert t["node_config"]["ImageId"].startswith("ami-"), name


def test_one_gpu_and_multi_gpu_worker_types(cfg):
    gpus = {name: t["resources"]["GPU"] for name, t in workers(cfg).items()}
    assert 1 in gpus.values()
    assert any(g > 1 for g in gpus.values()), "a multi-GPU type lets a PACK placement group share one machine"


def test_spot_is_an_option(cfg):
    spot = [name for name, t in workers(cfg).items()
            if t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"]
    assert spot
    on_demand = [name for name, t in workers(cfg).items() if "InstanceMarketOptions" not in t["node_config"]]
    assert on_demand


def test_dashboard_bound_to_localhost(cfg):
    cmd = head_ray_start(cfg)
    assert re.findall(r"--dashboard-host[= ](\S+)", cmd) == ["127.0.0.1"]
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in cmd


def test_token_auth_stays_on(cfg):
    assert "RAY_AUTH_MODE=disabled" not in CLUSTER_YAML.read_text()
    head = cfg["head_start_ray_commands"]
    gen = next(i for i, c in enumerate(head) if "ray get-auth-token --generate" in c)
    assert gen < head.index(head_ray_start(cfg))
    assert "RAY_AUTH_MODE=token" in head_ray_start(cfg)
    [worker_start] = [c for c in cfg["worker_start_ray_commands"] if "ray start" in c]
    assert "RAY_AUTH_MODE=token" in worker_start
    assert "~/.ray/auth_token" in cfg["cluster_synced_files"]     # the head's token reaches every worker


def test_mlflow_server_on_the_head_never_on_all_interfaces(cfg):
    cmd = mlflow_server(cfg)
    head = cfg["head_start_ray_commands"]
    assert head.index(cmd) > head.index(head_ray_start(cfg))      # after `ray start --head`
    hosts = re.findall(r"--host[= ]+(\S+)", cmd)
    assert len(hosts) == 1
    host = hosts[0].strip("\"'")
    assert host not in ("0.0.0.0", "::", "[::]", "*", "")
    # 127.0.0.1, or the head's private address that head_setup_commands wrote down
    assert host in ("127.0.0.1", "localhost") or (host == "$HEAD_IP" and 'HEAD_IP="$(cat ~/mlflow/head_ip)"' in cmd)
    if host == "$HEAD_IP":
        assert any("> ~/mlflow/head_ip" in c and "src" in c for c in cfg["head_setup_commands"])
    assert re.search(r"--port[= ]5000\b", cmd)
    assert "nohup " in cmd and re.search(r"&\s*(fi)?\s*$", cmd)   # in the background: `ray up` goes on
    assert "--backend-store-uri sqlite:////home/ubuntu/mlflow/" in cmd
    assert "--serve-artifacts" in cmd and "--artifacts-destination" in cmd
    assert not any("0.0.0.0" in c for c in all_commands(cfg))


def test_jobs_get_the_tracking_uri(cfg):
    assert "MLFLOW_TRACKING_URI=" in head_ray_start(cfg)
    assert any("mkdir -p ~/mlflow" in c for c in cfg["head_setup_commands"])


def test_setup_installs_pinned_ray_and_mlflow(cfg):
    setup = " ".join(cfg["setup_commands"])
    assert re.search(r'"ray\[default,train\]==\d+\.\d+\.\d+"', setup)
    assert "mlflow" in setup


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_every_command_is_valid_bash(cfg):
    for cmd in all_commands(cfg):
        r = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        assert r.returncode == 0, f"{cmd!r}: {r.stderr}"
