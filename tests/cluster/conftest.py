"""A Ray cluster of several nodes on this machine, the app deployed on it from configs/cluster.yaml.

`ray.cluster_utils.Cluster` starts one raylet per node (its own resources, its own worker
processes), all on 127.0.0.1: a head (Serve's controller and proxy, the dashboard that `serve
deploy` talks to), CPU nodes that declare `session_host_node` as configs/cluster.yaml asks, and
GPU nodes that declare one GPU each (fake: the renderer's network is simulated, its batches take
a GPU cost model's time; the head and GPU nodes run at a lower CPU priority, `other_machine`).
The app is deployed with the real CLI, `serve deploy`, from the cluster config with only what
this machine needs changed (`deploy_config`).
"""

from __future__ import annotations

import contextlib
import copy
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
import yaml
from ray import serve
from ray.cluster_utils import Cluster

from deployments.avatar.builder import build_avatar
from tests.leak_guard import _fail_on_leaked_tasks, _leaked_task_guard  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
CLUSTER_CONFIG = REPO / "configs" / "cluster.yaml"
SERVE = str(Path(sys.executable).with_name("serve"))
APP = "avatar"
OTHER_MACHINE_NICENESS = 10
SIMULATED_GPU = {"gpu": "l4", "max_utilisation": 0.03}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalCluster:
    """The running cluster: its nodes by role, the app's URL and the dashboard that deploys to it."""

    cluster: Cluster
    cpu_nodes: list[Any]
    gpu_nodes: list[Any]
    dashboard: str
    url: str
    config: dict[str, Any] = field(default_factory=dict)

    def node_id(self, node: Any) -> str:
        return node.node_id

    def deploy(self, config: dict[str, Any], tmp_dir: Path, timeout_s: float = 180.0) -> None:
        """`serve deploy` the config (as a user would) and wait until the app is RUNNING."""
        path = tmp_dir / f"deploy-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump(config))
        subprocess.run(["nice", "-n", "19", SERVE, "deploy", str(path), "--address", self.dashboard], check=True,
                       capture_output=True, timeout=60)
        self.config = copy.deepcopy(config)
        wait_running(self.dashboard, timeout_s)


def wait_running(dashboard: str, timeout_s: float) -> None:
    """Until every deployment of the app is HEALTHY (the app RUNNING, no update in progress)."""
    t_end = time.monotonic() + timeout_s
    status: Any = None
    while time.monotonic() < t_end:
        res = httpx.get(f"{dashboard}/api/serve/applications/", timeout=10)
        status = res.json().get("applications", {}).get(APP)
        if status and status["status"] == "RUNNING" and all(
                d["status"] == "HEALTHY" for d in status["deployments"].values()):
            return
        time.sleep(1.0)
    raise TimeoutError(f"app not RUNNING after {timeout_s} s: {status}")


def deploy_config(avatar_dir: Path, port: int) -> dict[str, Any]:
    """configs/cluster.yaml with what this machine needs: one HTTP proxy (every node here is
    127.0.0.1: proxies on every node would share a port), the test avatar, the renderer's GPU
    simulated (no GPU, no weights here), and fewer always-on replicas for 2 real cores.
    Placement (resources, GPU slices, replicas per node) is the file's own."""
    config = yaml.safe_load(CLUSTER_CONFIG.read_text())
    config["proxy_location"] = "HeadOnly"
    config["http_options"].update(host="127.0.0.1", port=port)
    (app,) = config["applications"]
    # wav2lip256 on simulated GPUs (`args.simulated_gpu`): each batch takes the time the cost model
    # gives an L4 held to 3% of its peak (~65 frames/s a replica, ~80 ms for a 4-frame chunk), so
    # a few synthetic sessions load a replica while costing this CPU only their mel features.
    app["args"].update(data_dir=str(avatar_dir), avatar_id="testface", model="wav2lip256", device="cpu",
                       simulated_gpu=SIMULATED_GPU)
    app["logging_config"]["encoding"] = "TEXT"
    deps = {d["name"]: d for d in app["deployments"]}
    for name in ("Api", "TTSService", "SpeechRecognizer"):
        deps[name]["autoscaling_config"].update(min_replicas=1, max_replicas=1)
    deps["TTSService"]["autoscaling_config"].update(min_replicas=2, max_replicas=2)  # a redeploy lowers it
    deps["AvatarRenderer"]["user_config"] = {"max_batch_size": 16, "batch_wait_timeout_s": 0.01}
    return config


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory) -> Iterator[LocalCluster]:
    """Head + 2 CPU nodes + 2 GPU nodes (1 fake GPU each), the app deployed from the cluster config."""
    tmp = tmp_path_factory.mktemp("cluster")
    build_avatar("testface", astronaut=True, out_dir=tmp / "avatars", idle_seconds=1.0, progress=False)
    # Each SessionHost must announce its own node ("node" in the config), not the test's override;
    # every node has the session secret (docs/CLUSTER.md), so tokens outlive a redeploy.
    saved_env = {name: os.environ.pop(name, None) for name in ("ICE_HOST_ADDRESSES", "AVATAR_SESSION_SECRET")}
    os.environ["AVATAR_SESSION_SECRET"] = secrets.token_hex(32)
    dashboard_port, http_port = free_port(), free_port()
    node = {"node_ip_address": "127.0.0.1", "object_store_memory": 80 * 1024 * 1024}
    cluster: Cluster | None = None
    try:
        with other_machine():
            cluster = Cluster(initialize_head=True, head_node_args={
                **node, "num_cpus": 2, "include_dashboard": True, "dashboard_host": "127.0.0.1",
                "dashboard_port": dashboard_port})
        cpu_nodes = [cluster.add_node(**node, num_cpus=2, resources={"session_host_node": 1}) for _ in range(2)]
        with other_machine():
            gpu_nodes = [cluster.add_node(**node, num_cpus=1, num_gpus=1) for _ in range(2)]
        ray.init(address=cluster.address, log_to_driver=False)
        local = LocalCluster(cluster, cpu_nodes, gpu_nodes, f"http://127.0.0.1:{dashboard_port}",
                             f"http://127.0.0.1:{http_port}")
        wait_dashboard(local.dashboard)
        local.deploy(deploy_config(tmp / "avatars", http_port), tmp)
        yield local
    finally:
        # Serve's client and its handles first: a handle's metrics thread left running calls
        # Ray again after `ray.shutdown()`, which starts a new local Ray in this process.
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        for name, value in saved_env.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


@contextlib.contextmanager
def other_machine(niceness: int = OTHER_MACHINE_NICENESS) -> Iterator[None]:
    """Nodes started inside run at a lower CPU priority (their processes and every worker they
    start inherit it), standing in for machines apart from the CPU nodes: on a real cluster the
    head's and the GPU nodes' work (Serve's controller, a lost node's replicas starting again
    elsewhere) never takes a CPU node's cores; here all nodes share 2. Not root (who alone may
    raise a priority again): the nodes run at the test's own priority."""
    if os.geteuid() != 0:  # only root may raise its priority back afterwards
        yield
        return
    before = os.getpriority(os.PRIO_PROCESS, 0)
    os.setpriority(os.PRIO_PROCESS, 0, before + niceness)
    try:
        yield
    finally:
        os.setpriority(os.PRIO_PROCESS, 0, before)


def wait_dashboard(dashboard: str, timeout_s: float = 60.0) -> None:
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        try:
            if httpx.get(f"{dashboard}/api/serve/applications/", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("the dashboard's Serve API did not answer")
