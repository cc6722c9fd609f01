"""deploy/ray/cluster.yaml, the AWS cluster for the ray engine: valid for Ray's own cluster
launcher (its JSON schema, after it fills in its AWS defaults, as `ray up` does), and naming the
image of the pinned Ray version, the instance types and the autoscaling bounds docs/cluster.md
describes."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO_ROOT / "deploy" / "ray" / "cluster.yaml"
DOCKERFILE = REPO_ROOT / "deploy" / "ray" / "Dockerfile"


def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def pinned_ray() -> str:
    pins = (REPO_ROOT / "requirements.txt").read_text()
    return re.search(r"^ray==(\S+)", pins, re.MULTILINE).group(1)


def test_rays_launcher_accepts_the_cluster_yaml() -> None:
    config = cluster()
    validate_config(config)
    validate_config(prepare_config(copy.deepcopy(config)))


def test_the_schema_check_catches_a_misspelt_key() -> None:
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        validate_config({**cluster(), "max_worker": 3})


def test_every_node_runs_the_image_of_the_pinned_ray_and_this_project() -> None:
    version = pinned_ray()
    image = cluster()["docker"]["image"]
    assert re.fullmatch(
        rf"\d{{12}}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com/imgclf-ray:{re.escape(version)}-py311",
        image,
    ), image
    dockerfile = DOCKERFILE.read_text()
    assert f"FROM rayproject/ray:{version}-py311-cpu\n" in dockerfile
    assert "requirements.txt" in dockerfile and "COPY --chown=ray:users imgclf " in dockerfile


def test_instance_types_and_autoscaling_bounds() -> None:
    config = cluster()
    nodes = config["available_node_types"]
    head, workers = nodes[config["head_node_type"]], nodes["cpu_workers"]
    assert head["node_config"]["InstanceType"] == "m7i.xlarge"
    assert workers["node_config"]["InstanceType"] == "c7i.4xlarge"
    assert head["resources"] == {"CPU": 0}  # drivers only: the work goes to the worker group
    assert workers["min_workers"] == 0  # scales to zero between jobs
    assert 0 < workers["max_workers"] <= config["max_workers"]
    assert config["idle_timeout_minutes"] > 0
    assert "--num-cpus=0" in " ".join(config["head_start_ray_commands"])
    profiles = {node["node_config"]["IamInstanceProfile"]["Arn"] for node in nodes.values()}
    assert profiles == {"arn:aws:iam::123456789012:instance-profile/imgclf-ray-node"}
