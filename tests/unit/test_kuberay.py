"""deploy/kuberay/rayservice.yaml runs configs/cluster.yaml, on pods that declare what it places."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
MANIFEST = yaml.safe_load((REPO / "deploy" / "kuberay" / "rayservice.yaml").read_text())
CLUSTER = yaml.safe_load((REPO / "configs" / "cluster.yaml").read_text())


def _groups() -> dict[str, dict]:
    return {g["groupName"]: g for g in MANIFEST["spec"]["rayClusterConfig"]["workerGroupSpecs"]}


def test_serve_config_is_the_cluster_config() -> None:
    serve_config = yaml.safe_load(MANIFEST["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_config)
    assert serve_config == CLUSTER, "keep serveConfigV2 equal to configs/cluster.yaml"


def test_session_pods_declare_the_session_host_resource_and_match_its_replicas() -> None:
    sessions = _groups()["sessions"]
    # rayStartParams values are strings; KubeRay passes `resources` as a quoted JSON string.
    assert json.loads(json.loads(sessions["rayStartParams"]["resources"])) == {"session_host_node": 1}
    host = {d["name"]: d for d in CLUSTER["applications"][0]["deployments"]}["SessionHost"]
    assert sessions["minReplicas"] == sessions["maxReplicas"] == host["num_replicas"]
    assert sessions["template"]["spec"]["hostNetwork"] is True, "ICE host candidates are the node's address"


def test_gpu_pods_have_one_gpu_each_for_four_renderers() -> None:
    gpus = _groups()["gpus"]
    assert gpus["rayStartParams"]["num-gpus"] == "1"
    (container,) = gpus["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
