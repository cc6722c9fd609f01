"""A real multi-node Ray cluster on this machine for tests and benchmarks/ray_engine.py:
`ray start --head` plus one `ray start --address` per worker node, as on a real cluster.

Each node is a `ray start --block` process in a process group of its own, with ports picked
free and every file under a temp dir of its own, so it never meets another Ray on the machine.
`stop()` ends exactly the processes it started and what they started (Ray's workers run in
process groups of their own, so the whole tree is collected first), never `ray stop`, which
would end every Ray of this user on the machine. Ray advertises the nodes at this machine's
interface address, not 127.0.0.1: the traffic stays on this machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

from tests.support.helpers import REPO_ROOT, VENV_BIN, free_port

START_TIMEOUT_S = 180.0  # two nodes on two busy cores take 30-60 s
OBJECT_STORE_BYTES = 100_000_000  # per node: small enough for CI, ample for test images


class RayCluster:
    """`node_cpus[0]` CPUs on the head, then one worker node per further entry, each with an
    object store of `object_store_bytes`. The nodes run the code under test (REPO_ROOT first on
    their PYTHONPATH) with `env` added to this process's."""

    def __init__(
        self,
        node_cpus: Sequence[int],
        env: Mapping[str, str] | None = None,
        object_store_bytes: int = OBJECT_STORE_BYTES,
    ) -> None:
        self.node_cpus = list(node_cpus)
        self.object_store_bytes = object_store_bytes
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Short: Ray's Unix sockets live under it, and their paths are limited to 107 bytes.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        self.env = {
            **os.environ,
            **(env or {}),
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
            ),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self.nodes: list[subprocess.Popen] = []

    def start(self) -> RayCluster:
        try:
            for number, cpus in enumerate(self.node_cpus):
                self.nodes.append(self._start_node(number, cpus))
                self._wait_for_node(number)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_node(self, number: int, cpus: int) -> subprocess.Popen:
        ports = {
            "--node-manager-port": free_port(),
            "--object-manager-port": free_port(),
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--runtime-env-agent-port": free_port(),
            "--metrics-export-port": free_port(),
        }
        if number == 0:
            role = ["--head", "--port", str(self.port), "--temp-dir", str(self.temp_dir)]
            role += ["--include-dashboard", "false", "--dashboard-port", str(free_port())]
            role += ["--ray-client-server-port", str(free_port())]
        else:
            role = ["--address", self.address]
        command = [
            str(VENV_BIN / "ray"), "start", "--block", *role,
            "--num-cpus", str(cpus),
            "--object-store-memory", str(self.object_store_bytes),
            "--disable-usage-stats",
            *(str(item) for pair in ports.items() for item in pair),
        ]  # fmt: skip
        log = open(self.temp_dir / f"node{number}.log", "wb")  # noqa: SIM115  (the child holds it)
        with log:
            return subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def _wait_for_node(self, number: int) -> None:
        """Until the node's `ray start` says its node is up (the head: serving; a worker node:
        registered with the head)."""
        log = self.temp_dir / f"node{number}.log"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.nodes[number].poll() is not None:
                raise RuntimeError(f"Ray node {number} exited:\n{self.log_tail()}")
            if "Ray runtime started" in log.read_text(errors="replace"):
                return
            time.sleep(0.5)
        raise TimeoutError(
            f"Ray node {number} not up after {START_TIMEOUT_S} s:\n{self.log_tail()}"
        )

    def log_tail(self, chars: int = 3000) -> str:
        return "\n".join(
            path.read_text(errors="replace")[-chars:]
            for path in sorted(self.temp_dir.glob("*.log"))
        )

    def processes(self) -> list[psutil.Process]:
        """Every live process of the cluster: the nodes and all they started."""
        found = []
        for node in self.nodes:
            try:
                root = psutil.Process(node.pid)
                found += [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
        return found

    def running(self, title: str) -> list[psutil.Process]:
        """The cluster's Ray workers that are executing `title` now (Ray names a worker's process
        `ray::<task>` while it runs a task, `ray::IDLE` between tasks)."""
        busy = []
        for process in self.processes():
            try:
                if " ".join(process.cmdline()).startswith(f"ray::{title}"):
                    busy.append(process)
            except psutil.Error:
                continue
        return busy

    def stop(self) -> None:
        """SIGTERM every process of the cluster, SIGKILL what is left after 5 s, then remove its
        files."""
        processes = self.processes()
        for process in processes:
            try:
                process.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                continue
        _, alive = psutil.wait_procs(processes, timeout=5)
        for process in alive:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                continue
        psutil.wait_procs(alive, timeout=5)
        for node in self.nodes:
            node.wait(timeout=5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
