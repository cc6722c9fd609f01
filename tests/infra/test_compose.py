"""compose.yaml: `docker-compose config` (or `docker compose config`) accepts it without a Docker
daemon, every service the stack needs is there with health checks and ordered start-up, every
bind-mounted host path exists in the repository, and pinned versions agree with requirements.txt.

Missing compose skips the module, except in CI (`CI` set), where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.support.helpers import REPO_ROOT, unavailable

COMPOSE_FILE = REPO_ROOT / "compose.yaml"
REQUIRED_ENV = {
    "IMGCLF_JWT_SECRET": "0123456789abcdef0123456789abcdef",
    "MINIO_ROOT_PASSWORD": "compose-test-password",
    "GRAFANA_ADMIN_PASSWORD": "compose-test-password",
}
LONG_RUNNING = {"minio", "mlflow", "imgclf", "prometheus", "grafana", "nginx"}
ONE_SHOTS = {"createbuckets", "predictions-init", "certs"}
# Who waits for whom, and for what (start-up order is part of the design).
DEPENDS = {
    "createbuckets": {"minio": "service_healthy"},
    "mlflow": {"createbuckets": "service_completed_successfully"},
    "imgclf": {
        "mlflow": "service_healthy",
        "predictions-init": "service_completed_successfully",
    },
    "grafana": {"prometheus": "service_healthy"},
    "nginx": {"imgclf": "service_healthy", "certs": "service_completed_successfully"},
}


def compose_command() -> list[str]:
    """docker-compose v1 (Debian), else the docker CLI's compose v2 plugin."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    unavailable("neither docker-compose nor `docker compose` is installed")


def run_config(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in REQUIRED_ENV}
    return subprocess.run(
        [*compose_command(), "-f", str(COMPOSE_FILE), "config", *args],
        cwd=REPO_ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def config() -> dict:
    """The stack as compose resolves it (interpolated, normalised)."""
    result = run_config(REQUIRED_ENV)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def test_config_is_valid_and_holds_every_service(config: dict) -> None:
    assert set(config["services"]) == LONG_RUNNING | ONE_SHOTS


@pytest.mark.parametrize("name", sorted(REQUIRED_ENV))
def test_a_missing_secret_stops_the_stack(name: str) -> None:
    """No default secrets: compose refuses to interpolate without them."""
    result = run_config({k: v for k, v in REQUIRED_ENV.items() if k != name})
    assert result.returncode != 0
    assert name in result.stderr


def test_long_running_services_have_health_checks(config: dict) -> None:
    for name in LONG_RUNNING:
        assert config["services"][name].get("healthcheck", {}).get("test"), name


def test_start_up_order(config: dict) -> None:
    for service, waits_for in DEPENDS.items():
        depends = config["services"][service]["depends_on"]
        assert {k: v["condition"] for k, v in depends.items()} == waits_for, service
    for one_shot in ONE_SHOTS:
        assert config["services"][one_shot].get("restart") == "no", one_shot


def test_service_wiring(config: dict) -> None:
    service = config["services"]["imgclf"]
    env = service["environment"]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["IMGCLF_JWT_SECRET"] == REQUIRED_ENV["IMGCLF_JWT_SECRET"]
    assert env["IMGCLF_PREDICTION_DB_URL"].startswith("sqlite:////home/bentoml/predictions/")
    assert service["image"] == "imgclf:latest"
    volumes = [
        v if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in service["volumes"]
    ]
    assert any(v.startswith("predictions:/home/bentoml/predictions") for v in volumes)
    mlflow = config["services"]["mlflow"]
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "--artifacts-destination s3://mlflow/" in " ".join(mlflow["command"])
    assert "mlflow:5000" in " ".join(mlflow["command"])  # allowed Host of the service's calls


def test_image_override() -> None:
    result = run_config({**REQUIRED_ENV, "IMGCLF_IMAGE": "registry.example/imgclf:abc123"})
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["services"]["imgclf"]["image"].endswith("imgclf:abc123")


def bind_mounts(raw: dict) -> list[tuple[str, str]]:
    """(service, host path) of every bind mount: short syntax sources starting with . or /."""
    found = []
    for name, service in raw["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume["source"]
            if source.startswith((".", "/")):
                found.append((name, source))
    return found


def test_every_bind_mounted_path_exists(raw: dict) -> None:
    mounts = bind_mounts(raw)
    assert {s for s, _ in mounts} >= {"prometheus", "grafana", "nginx"}
    missing = [f"{service}: {path}" for service, path in mounts if not (REPO_ROOT / path).exists()]
    assert not missing, f"bind-mounted paths missing from the repository: {missing}"


def test_mounted_monitoring_files_are_the_ones_the_containers_read(raw: dict) -> None:
    """Prometheus reads prometheus.yml (+ alerts.yml next to it); Grafana reads provisioning
    yaml whose dashboard folder is where compose mounts the dashboards."""
    assert (REPO_ROOT / "monitoring/prometheus/prometheus.yml").is_file()
    provisioning = REPO_ROOT / "monitoring/grafana/provisioning/dashboards"
    paths = {
        provider["options"]["path"]
        for file in provisioning.glob("*.y*ml")
        for provider in yaml.safe_load(file.read_text()).get("providers", [])
    }
    grafana_targets = {
        v.split(":")[1] for v in raw["services"]["grafana"]["volumes"] if v.startswith(".")
    }
    assert paths and paths <= grafana_targets
    assert list((REPO_ROOT / "monitoring/grafana/dashboards").glob("*.json"))


def test_nginx_gets_the_repository_config(raw: dict) -> None:
    mounts = dict(v.split(":")[:2] for v in raw["services"]["nginx"]["volumes"])
    assert mounts["./deploy/nginx/imgclf.conf"] == "/etc/nginx/conf.d/default.conf"
    assert mounts["./deploy/nginx/compose-upstream.conf"] == "/etc/nginx/imgclf-upstream.conf"
    upstream = (REPO_ROOT / "deploy/nginx/compose-upstream.conf").read_text()
    assert re.search(r"^server imgclf:3000;$", upstream, flags=re.MULTILINE)


def pinned(requirement: str) -> str:
    text = (REPO_ROOT / "requirements.txt").read_text()
    match = re.search(rf"^{re.escape(requirement)}==([^\s;]+)", text, flags=re.MULTILINE)
    assert match, f"{requirement} is not pinned in requirements.txt"
    return match.group(1)


def test_versions_agree_with_requirements(raw: dict) -> None:
    """The registry server must speak the clients' MLflow version; boto3 as pinned."""
    mlflow = raw["services"]["mlflow"]
    assert mlflow["image"] == f"ghcr.io/mlflow/mlflow:v{pinned('mlflow')}"
    assert f"boto3=={pinned('boto3')}" in " ".join(mlflow["command"])


def test_images_are_pinned(raw: dict) -> None:
    for name, service in raw["services"].items():
        image = service["image"]
        if name == "imgclf":
            continue  # chosen by the deploy: ${IMGCLF_IMAGE}
        assert ":" in image and not image.endswith(":latest"), f"{name}: unpinned {image}"


def test_only_nginx_listens_beyond_loopback(raw: dict) -> None:
    for name, service in raw["services"].items():
        for port in service.get("ports", []):
            if name != "nginx":
                assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port}"
