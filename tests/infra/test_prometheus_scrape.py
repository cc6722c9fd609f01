"""Debian's Prometheus, started by the test with the project's own monitoring/prometheus config
(targets pointed at loopback, intervals shortened), scraping the real service of
tests/support/champion_service.py; values are read back through Prometheus' HTTP API."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from tests.support.champion_service import TEST_ACCURACY, ChampionService
from tests.support.helpers import REPO_ROOT, free_port, program, stop_process

CONFIG_DIR = REPO_ROOT / "monitoring" / "prometheus"
START_TIMEOUT_S = 60.0


def prometheus_binary() -> str:
    return program("prometheus", "prometheus")


def loopback_config(target: str, folder: Path) -> Path:
    """The committed config and rules, with job `imgclf` scraping `target` every second."""
    config = yaml.safe_load((CONFIG_DIR / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = "1s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["imgclf"].update(scrape_interval="1s", scrape_timeout="1s")
    jobs["imgclf"]["static_configs"] = [{"targets": [target]}]
    config["scrape_configs"] = [jobs["imgclf"]]
    for rules in config["rule_files"]:
        shutil.copy(CONFIG_DIR / rules, folder / rules)
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


class Prometheus:
    def __init__(self, config: Path, folder: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = folder / "prometheus.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    prometheus_binary(),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={folder / 'data'}",
                    f"--web.listen-address={self.url.removeprefix('http://')}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def api(self, path: str, **params: str) -> object:
        response = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=5)
        response.raise_for_status()
        return response.json()["data"]

    def wait_for(self, query: str, timeout: float = START_TIMEOUT_S) -> float:
        """Poll an instant query until it has a sample; return its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                result = self.api("query", query=query)["result"]
                if result:
                    return float(result[0]["value"][1])
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"no sample for {query}:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        stop_process(self.process, 20)


@pytest.fixture(scope="module")
def prometheus(champion_service: ChampionService, tmp_path_factory) -> Iterator[Prometheus]:
    folder = tmp_path_factory.mktemp("prometheus")
    config = loopback_config(f"127.0.0.1:{champion_service.port}", folder)
    server = Prometheus(config, folder)
    try:
        yield server
    finally:
        server.stop()


def test_prometheus_scrapes_the_service(
    prometheus: Prometheus, champion_service: ChampionService
) -> None:
    assert prometheus.wait_for('up{job="imgclf"} == 1') == 1
    assert prometheus.wait_for("imgclf_model_version") == float(champion_service.version)
    accuracy = prometheus.wait_for("imgclf_champion_test_accuracy")
    assert accuracy == pytest.approx(TEST_ACCURACY)
    assert prometheus.wait_for("imgclf_process_resident_memory_bytes") > 0
    # one live-recall series per class of the served (two-class) champion, no other
    assert prometheus.wait_for("count(imgclf_live_recall)") == 2


def test_prometheus_counts_requests_it_saw(
    prometheus: Prometheus, champion_service: ChampionService, sample_data_dir: Path
) -> None:
    query = 'sum(imgclf_requests_total{endpoint="predict",status="200"}) or vector(0)'
    before = prometheus.wait_for(query)
    photo = next((sample_data_dir / "dog").glob("*.jpg"))
    for _ in range(3):
        response = requests.post(
            champion_service.url + "/predict",
            files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
            headers=champion_service.headers(),
            timeout=60,
        )
        assert response.status_code == 200
    deadline = time.monotonic() + 30
    while prometheus.wait_for(query) < before + 3:
        assert time.monotonic() < deadline, "Prometheus never saw the three requests"
        time.sleep(0.5)


def test_the_alert_rules_are_loaded(prometheus: Prometheus) -> None:
    prometheus.wait_for('up{job="imgclf"}')
    groups = prometheus.api("rules")["groups"]
    alerts = {rule["name"] for group in groups for rule in group["rules"]}
    assert {"ImgclfApiDown", "ImgclfHighLatencyP95", "ImgclfHighErrorRate"} <= alerts
    assert "ImgclfAccuracyDrop" in alerts
    firing = {a["labels"]["alertname"] for a in prometheus.api("alerts")["alerts"]}
    assert not firing & {"ImgclfApiDown", "ImgclfNotReady"}  # the service is up and ready
