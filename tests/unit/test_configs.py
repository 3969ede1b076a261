"""Every shipped `configs/*.yaml` is a valid Serve config whose args and user_configs our code accepts.

The GPU configs cannot run here (no GPU); this catches the mistakes that would otherwise show
only on a GPU node: a typo in an arg, a user_config key the deployment rejects, a deployment
name that is not in the graph, GPU slices that do not fit one GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from deployments.avatar.deployment import RendererConfig
from serve_app import AppArgs

pytestmark = pytest.mark.unit

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"
CONFIGS = sorted(CONFIGS_DIR.glob("*.yaml"))
CLUSTER = "cluster.yaml"  # many nodes, many GPUs: the one-GPU bound does not apply
GRAPH = {"Api", "SessionHost", "TTSService", "AvatarRenderer", "SpeechRecognizer"}
USER_CONFIGS = {"AvatarRenderer": RendererConfig}


def _app(path: Path) -> dict[str, Any]:
    config = yaml.safe_load(path.read_text())
    ServeDeploySchema.model_validate(config)  # Serve's own schema, as `serve run` / `serve deploy` use
    (app,) = config["applications"]
    return app


def test_there_are_cpu_and_gpu_configs() -> None:
    assert {p.name for p in CONFIGS} >= {"serve.yaml", "serve.gpu.yaml", "serve.musetalk.gpu.yaml", CLUSTER}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_is_accepted_by_serve_and_by_our_code(path: Path) -> None:
    app = _app(path)
    assert app["import_path"] == "serve_app:build"
    AppArgs(**app["args"])  # extra="forbid": a misspelt arg fails here
    gpus = 0.0
    for dep in app.get("deployments", []):
        assert dep["name"] in GRAPH, f"{path.name}: no deployment {dep['name']!r} in the graph"
        if "user_config" in dep:
            USER_CONFIGS[dep["name"]].model_validate(dep["user_config"])
        gpus += dep.get("ray_actor_options", {}).get("num_gpus", 0) * _most_replicas(dep)
    if path.name != CLUSTER:
        assert gpus <= 1.0, f"{path.name} asks for {gpus} GPUs on its one-GPU node"


def _most_replicas(dep: dict[str, Any]) -> int:
    return dep.get("autoscaling_config", {}).get("max_replicas", dep.get("num_replicas", 1))


def test_cluster_config_places_each_stage_on_its_own_nodes() -> None:
    """SessionHost: one per CPU node (the resource those nodes declare), a fixed count (Serve's
    downscaling would close sessions); renderers on GPU slices; the stateless stages autoscale."""
    deps = {d["name"]: d for d in _app(CONFIGS_DIR / CLUSTER)["deployments"]}
    host = deps["SessionHost"]
    assert host["ray_actor_options"]["resources"] == {"session_host_node": 1}
    assert host["max_replicas_per_node"] == 1 and "autoscaling_config" not in host
    assert host["ray_actor_options"]["num_cpus"] == 0, "its cores are the ones the node does not declare"
    assert deps["AvatarRenderer"]["ray_actor_options"] == {"num_gpus": 0.25, "num_cpus": 0}
    for name in ("Api", "TTSService", "SpeechRecognizer", "AvatarRenderer"):
        assert "autoscaling_config" in deps[name] and "num_replicas" not in deps[name], name
        assert deps[name].get("ray_actor_options", {}).get("num_gpus", 0) == (name == "AvatarRenderer") * 0.25
