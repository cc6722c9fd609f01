"""deploy/release.sh end to end: real local processes as the releases (IMGCLF_RUNTIME=process),
a real upstream file, and a reload command that records what the proxy would have loaded.

Each release is a tiny Python HTTP server (written into tmp_path) that answers every path with
200 ("ok"), 503 ("bad"), 503 for its first seconds and then 200 ("slow"), or exits at once after
printing to stderr ("crash"). Every fake writes its pid into pids/<version>, so the tests can say
which version is alive and the fixture kills whatever is left. The docker runtime is exercised
with a fake `docker` on PATH that records its arguments and runs the same fake servers.

The way a deploy reaches a host is run too: deploy.yml's upload step puts the bundle into a real
S3 API (moto on loopback) with the real AWS CLI, and its HOST_SCRIPT fetches, checks and runs it
with `sh`, as SSM would, against the same fake host.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import yaml

from tests.support.helpers import REPO_ROOT, free_port, program
from tests.support.s3_server import MotoServer

RELEASE = REPO_ROOT / "deploy" / "release.sh"
DEPLOY_JOB = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / "deploy.yml").read_text())[
    "jobs"
]["deploy"]
HEALTH_TIMEOUT = 3  # seconds: long enough for a fake to start, short enough for the 503 cases

FAKE_SERVICE = """
import http.server, os, sys, time
mode, version, pids = sys.argv[1], sys.argv[2], sys.argv[3]
with open(os.path.join(pids, version), "w") as f:
    f.write(str(os.getpid()))
if mode == "crash":
    print(f"boom: {version} cannot start", file=sys.stderr, flush=True)
    sys.exit(3)
started = time.monotonic()

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        healthy = mode == "ok" or (mode == "slow" and time.monotonic() - started > 2)
        body = version.encode()
        self.send_response(200 if healthy else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print(fmt % args, flush=True)

http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""

# `docker` for the docker runtime: records argv, runs the fake server for `run`, answers
# inspect/logs/stop/rm from a folder of "containers" (name -> pid).
FAKE_DOCKER = """#!{python}
import json, os, signal, subprocess, sys
from pathlib import Path
state = Path({state!r})
(state / "containers").mkdir(parents=True, exist_ok=True)
with open(state / "calls.jsonl", "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
cmd, args = sys.argv[1], sys.argv[2:]

def pid_of(name):
    path = state / "containers" / name
    return int(path.read_text()) if path.exists() else None

def alive(pid):
    try:
        return not Path(f"/proc/{{pid}}/stat").read_text().rsplit(") ", 1)[1].startswith("Z")
    except OSError:
        return False

def kill(name):
    pid = pid_of(name)
    if pid:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass

if cmd == "pull":  # "expired": gone from the registry, still on this host; "missing": neither
    sys.exit(1 if "missing" in args[-1] or "expired" in args[-1] else 0)
if cmd == "image" and args[0] == "inspect":
    sys.exit(1 if "missing" in args[-1] else 0)
if cmd == "run":
    name = args[args.index("--name") + 1]
    port = args[args.index("-p") + 1].split(":")[1]
    version = args[-1].rsplit(":", 1)[1]
    process = subprocess.Popen(
        [{python!r}, {fake!r}, "ok", version, {pids!r}],
        env={{**os.environ, "PORT": port}}, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    (state / "containers" / name).write_text(str(process.pid))
    print("c0ffee")
elif cmd == "inspect":
    pid = pid_of(args[-1])
    if pid is None:
        sys.exit(1)
    print("running 0" if alive(pid) else "exited 0")
elif cmd == "logs":
    print("fake container log line")
elif cmd in ("stop", "rm"):
    kill(args[-1])
    if cmd == "rm":
        (state / "containers" / args[-1]).unlink(missing_ok=True)
"""


def alive(pid: int) -> bool:
    """Running and not a zombie (orphans may never be reaped in a container)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not stat.rsplit(") ", 1)[1].startswith("Z")


def kill_group(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


@dataclass
class Host:
    """One throwaway 'host': state dir, upstream file, ports, and the fake releases."""

    root: Path
    blue: int = field(default_factory=free_port)
    green: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.state = self.root / "state"
        self.upstream = self.root / "nginx" / "imgclf-upstream.conf"
        self.reloads = self.root / "reloads.log"
        self.pids = self.root / "pids"
        self.fake = self.root / "fake_service.py"
        for folder in (self.upstream.parent, self.pids):
            folder.mkdir(parents=True)
        self.fake.write_text(FAKE_SERVICE)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("IMGCLF_")},
            "IMGCLF_RELEASE_ENV": str(self.root / "release.env"),
            "IMGCLF_RUNTIME": "process",
            "IMGCLF_STATE_DIR": str(self.state),
            "IMGCLF_BLUE_PORT": str(self.blue),
            "IMGCLF_GREEN_PORT": str(self.green),
            "IMGCLF_UPSTREAM_FILE": str(self.upstream),
            # What nginx would load: the upstream file as it is at each reload.
            "IMGCLF_RELOAD_CMD": f"cat {shlex.quote(str(self.upstream))} >> {self.reloads}",
            "IMGCLF_HEALTH_TIMEOUT": str(HEALTH_TIMEOUT),
            "IMGCLF_HEALTH_INTERVAL": "0.1",
            "IMGCLF_DRAIN_SECONDS": "0",
            "IMGCLF_STOP_TIMEOUT": "5",
        }

    def image(self, mode: str, version: str) -> str:
        """A release for the process runtime: the command line of a fake server."""
        return shlex.join([sys.executable, str(self.fake), mode, version, str(self.pids)])

    def release(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(RELEASE), *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )

    def start(self, *args: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(RELEASE), *args],
            env={**self.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def pid(self, version: str) -> int:
        return int((self.pids / version).read_text())

    def answer(self, port: int) -> str | None:
        """The version serving on `port`, or None when nothing listens."""
        try:
            return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).text
        except requests.ConnectionError:
            return None

    def status(self) -> dict[str, str]:
        """`release.sh --status`: what nginx serves, by the host's own records."""
        lines = ok(self.release("--status")).stdout.splitlines()
        return dict(line.split("=", 1) for line in lines)

    def upstream_port(self) -> int:
        lines = [x for x in self.upstream.read_text().splitlines() if x.startswith("server ")]
        assert len(lines) == 1, self.upstream.read_text()
        return int(lines[0].removeprefix("server 127.0.0.1:").removesuffix(";"))

    def reload_count(self) -> int:
        if not self.reloads.exists():
            return 0
        return self.reloads.read_text().count("server 127.0.0.1:")

    def cleanup(self) -> None:
        """Kill every fake server ever started here (each leads its own process group)."""
        for path in self.pids.iterdir():
            kill_group(int(path.read_text()))
        for path in (self.root / "docker" / "containers").glob("*"):
            kill_group(int(path.read_text()))


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    host = Host(tmp_path)
    try:
        yield host
    finally:
        host.cleanup()


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def test_first_release_switches_to_blue(host: Host) -> None:
    ok(host.release(host.image("ok", "v1")))

    assert host.upstream_port() == host.blue
    assert host.answer(host.blue) == "v1"
    assert host.status()["active"] == "blue"
    assert host.status()["current"] == host.image("ok", "v1")
    assert host.status()["previous"] == ""
    assert host.reload_count() == 1
    assert ok(host.release("--status")).stdout.splitlines()[0] == "active=blue"


def test_second_release_switches_colour_and_stops_the_old_one(host: Host) -> None:
    ok(host.release(host.image("ok", "v1")))
    ok(host.release(host.image("ok", "v2")))

    assert host.upstream_port() == host.green
    assert host.answer(host.green) == "v2"
    assert not alive(host.pid("v1"))
    assert host.answer(host.blue) is None
    assert host.status()["active"] == "green"
    assert host.status()["previous"] == host.image("ok", "v1")
    assert host.reload_count() == 2


def test_unhealthy_release_leaves_the_old_one_serving(host: Host) -> None:
    ok(host.release(host.image("ok", "v1")))
    upstream_before = host.upstream.read_bytes()

    started = time.monotonic()
    result = host.release(host.image("bad", "v2"))
    elapsed = time.monotonic() - started

    assert result.returncode == 1, result.stdout + result.stderr
    assert "did not answer 200" in result.stderr and "status: 503" in result.stderr
    assert "GET /readyz" in result.stderr  # the tail of the new release's log
    assert HEALTH_TIMEOUT <= elapsed < HEALTH_TIMEOUT + 15
    assert host.upstream.read_bytes() == upstream_before
    assert host.answer(host.blue) == "v1"
    assert not alive(host.pid("v2"))
    assert host.answer(host.green) is None
    assert host.status()["current"] == host.image("ok", "v1")
    assert host.reload_count() == 1


def test_crashing_release_fails_fast_and_leaves_the_old_one_serving(host: Host) -> None:
    ok(host.release(host.image("ok", "v1")))
    upstream_before = host.upstream.read_bytes()

    started = time.monotonic()
    result = host.release(host.image("crash", "v2"), IMGCLF_HEALTH_TIMEOUT="60")

    assert result.returncode == 1
    assert time.monotonic() - started < 20  # noticed the exit, did not wait for the timeout
    assert "exited before answering 200" in result.stderr
    assert "boom: v2 cannot start" in result.stderr
    assert host.upstream.read_bytes() == upstream_before
    assert host.answer(host.blue) == "v1"
    assert host.status()["active"] == "blue"


def test_rollback_returns_to_the_previous_image(host: Host) -> None:
    first = host.release("--rollback")
    assert first.returncode == 1 and "nothing to roll back to" in first.stderr

    ok(host.release(host.image("ok", "v1")))
    ok(host.release(host.image("ok", "v2")))
    ok(host.release("--rollback"))

    assert host.upstream_port() == host.blue
    assert host.answer(host.blue) == "v1"  # a fresh process running v1's command
    assert not alive(host.pid("v2"))
    assert host.status()["current"] == host.image("ok", "v1")
    assert host.status()["previous"] == host.image("ok", "v2")  # a second rollback undoes it
    assert "\trollback\tblue\tok\t" in (host.state / "history.tsv").read_text()


def test_re_releasing_the_serving_image_keeps_the_rollback_target(host: Host) -> None:
    ok(host.release(host.image("ok", "v1")))
    ok(host.release(host.image("ok", "v2")))
    ok(host.release(host.image("ok", "v2")))  # e.g. a deploy workflow run again
    assert host.status()["previous"] == host.image("ok", "v1")
    ok(host.release("--rollback"))
    assert host.status()["current"] == host.image("ok", "v1")


def test_failed_reload_puts_the_old_upstream_back(host: Host) -> None:
    flag = host.root / "reload-fails"
    reload = f"test ! -e {flag} && {host.env['IMGCLF_RELOAD_CMD']}"
    ok(host.release(host.image("ok", "v1"), IMGCLF_RELOAD_CMD=reload))
    upstream_before = host.upstream.read_bytes()
    flag.touch()

    result = host.release(host.image("ok", "v2"), IMGCLF_RELOAD_CMD=reload)

    assert result.returncode == 1 and "reload" in result.stderr
    assert host.upstream.read_bytes() == upstream_before
    assert host.answer(host.blue) == "v1"
    assert not alive(host.pid("v2"))
    assert host.status()["current"] == host.image("ok", "v1")


def test_the_upstream_file_wins_over_a_stale_state(host: Host) -> None:
    """A release killed between the switch and the state update: nginx serves green, the state
    still says blue. The next release must go to blue, never stop the live green first."""
    ok(host.release(host.image("ok", "v1")))
    ok(host.release(host.image("ok", "v2")))
    (host.state / "active").write_text("blue\n")

    result = ok(host.release(host.image("ok", "v3")))

    assert "trusting nginx" in result.stderr
    assert host.upstream_port() == host.blue
    assert host.answer(host.blue) == "v3"
    assert host.status()["active"] == "blue"


def test_a_second_concurrent_release_fails_at_once(host: Host) -> None:
    first = host.start(host.image("slow", "v1"))  # ~2 s before it answers 200
    try:
        owner = host.state / "release.lock.owner"
        deadline = time.monotonic() + 10
        while not owner.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        started = time.monotonic()
        second = host.release(host.image("ok", "v2"))
        assert time.monotonic() - started < 2
        assert second.returncode == 75, second.stdout + second.stderr
        assert "another release is in progress" in second.stderr
        assert first.wait(timeout=30) == 0, first.stdout.read() if first.stdout else ""
    finally:
        if first.poll() is None:
            first.kill()
    assert not (host.pids / "v2").exists()  # the second never started anything
    assert host.status()["current"] == host.image("slow", "v1")
    assert host.answer(host.blue) == "v1"


def test_a_second_concurrent_release_waits_with_a_lock_timeout(host: Host) -> None:
    first = host.start(host.image("slow", "v1"))
    try:
        owner = host.state / "release.lock.owner"
        deadline = time.monotonic() + 10
        while not owner.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        second = host.release(host.image("ok", "v2"), IMGCLF_LOCK_TIMEOUT="30")
        ok(second)
        assert first.wait(timeout=30) == 0
    finally:
        if first.poll() is None:
            first.kill()
    assert host.status()["previous"] == host.image("slow", "v1")
    assert host.status()["current"] == host.image("ok", "v2")
    assert host.answer(host.green) == "v2"
    assert host.upstream_port() == host.green


def test_port_taken_by_a_stranger_is_refused(host: Host) -> None:
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", host.blue))
        stranger.listen()
        result = host.release(host.image("ok", "v1"))
    assert result.returncode == 1 and "in use" in result.stderr
    assert not host.upstream.exists()
    assert not (host.pids / "v1").exists()


def test_env_file_is_read_but_never_run_and_the_environment_wins(host: Host) -> None:
    port = free_port()
    pwned = host.root / "pwned"
    (host.root / "release.env").write_text(
        textwrap.dedent(f"""\
            # release settings
            IMGCLF_BLUE_PORT="{port}"
            IMGCLF_RELOAD_CMD=false
            touch {pwned}
            IMGCLF_HEALTH_PATH=$(touch {pwned})
            """)
    )
    env = {k: v for k, v in host.env.items() if k != "IMGCLF_BLUE_PORT"}
    result = subprocess.run([str(RELEASE), host.image("ok", "v1")], env=env, capture_output=True)
    assert result.returncode != 0  # the health path from the file is taken literally
    assert not pwned.exists()

    host.env = {**env, "IMGCLF_HEALTH_PATH": "/readyz"}
    ok(host.release(host.image("ok", "v1")))
    assert host.upstream_port() == port  # from the file
    assert host.reload_count() == 1  # the environment's reload command, not the file's `false`


@pytest.mark.parametrize(
    ("args", "env"),
    [
        ((), {}),
        (("a", "b"), {}),
        (("--bogus",), {}),
        (("x",), {"IMGCLF_RUNTIME": "podman"}),
        (("--rollback", "x"), {}),
        (("--deploy-id",), {}),
        (("--deploy-id", "a b", "x"), {}),  # recorded in files and logs: a plain word only
        (("--status", "--deploy-id", "d1"), {}),
    ],
)
def test_usage_and_config_errors_exit_2(host: Host, args: tuple[str, ...], env: dict) -> None:
    result = host.release(*args, **env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert not host.pids.joinpath("v1").exists()


def test_docker_runtime_runs_pulls_and_stops_containers(host: Host) -> None:
    docker_state = host.root / "docker"
    bin_dir = host.root / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(
        FAKE_DOCKER.format(
            python=sys.executable, state=str(docker_state), fake=str(host.fake), pids=str(host.pids)
        )
    )
    docker.chmod(0o755)
    service_env = host.root / "service.env"
    service_env.write_text("IMGCLF_JWT_SECRET=x\n")
    env = {
        "IMGCLF_RUNTIME": "docker",
        "IMGCLF_SERVICE_ENV_FILE": str(service_env),
        "IMGCLF_DOCKER_ARGS": "-v /srv/imgclf:/data --log-opt max-size=10m",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }

    ok(host.release("registry.example/imgclf:v1", **env))
    ok(host.release("registry.example/imgclf:v2", **env))
    failed = host.release("registry.example/missing:v3", **env)

    calls = [json.loads(line) for line in (docker_state / "calls.jsonl").read_text().splitlines()]
    runs = [c for c in calls if c[0] == "run"]
    assert [r[-1] for r in runs] == ["registry.example/imgclf:v1", "registry.example/imgclf:v2"]
    blue_run = runs[0]
    for expected in (
        ["--name", "imgclf-blue"],
        ["-p", f"127.0.0.1:{host.blue}:3000"],
        ["--env-file", str(service_env)],
        ["-v", "/srv/imgclf:/data"],
    ):
        assert any(blue_run[i : i + 2] == expected for i in range(len(blue_run))), blue_run
    assert ["stop", "-t", "5", "imgclf-blue"] in calls  # the old colour after the switch
    assert ["pull", "-q", "registry.example/imgclf:v2"] in calls
    assert failed.returncode == 1 and "docker pull" in failed.stderr
    assert host.upstream_port() == host.green
    assert host.answer(host.green) == "v2"
    assert host.status()["current"] == "registry.example/imgclf:v2"

    # A rollback target the registry has expired is released from the host's own copy.
    ok(host.release("registry.example/expired:v4", **env))
    assert host.status()["current"] == "registry.example/expired:v4"


def test_shellcheck_passes_on_the_deploy_scripts() -> None:
    shellcheck = program("shellcheck", "shellcheck")
    scripts = sorted((REPO_ROOT / "deploy").rglob("*.sh"))
    assert RELEASE in scripts
    assert os.access(RELEASE, os.X_OK), "deploy/release.sh must stay executable (git mode 755)"
    result = subprocess.run([shellcheck, *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_deploys_rollback_leaves_a_host_it_did_not_switch_alone(host: Host) -> None:
    ok(host.release("--deploy-id", "d1", host.image("ok", "v1")))
    assert host.release("--deploy-id", "d2", host.image("crash", "v2")).returncode == 1
    serving = host.pid("v1")

    result = ok(host.release("--rollback", "--deploy-id", "d2"))

    assert "nothing to roll back: deploy d2 did not make the live release" in result.stdout
    assert host.pid("v1") == serving and alive(serving)
    assert host.status() == {
        "active": "blue",
        "current": host.image("ok", "v1"),
        "previous": "",
        "deploy": "d1",
    }


# --- a deploy as it reaches a host: the bundle from S3, checked, then run --------------------


@dataclass
class Bundle:
    """deploy/ as deploy.yml's upload step left it in S3, and the sha256 the step recorded."""

    server: MotoServer
    bucket: str
    url: str
    sha256: str

    def on_host(self, host: Host, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """deploy.yml's HOST_SCRIPT as SSM runs it: by sh, as the lines after
        `set -- BUNDLE_URL SHA256 ARGS...`, with the host's settings in the environment."""
        script = f"set -- {shlex.join([self.url, self.sha256, *args])}\n"
        script += DEPLOY_JOB["env"]["HOST_SCRIPT"]
        return subprocess.run(
            ["sh", "-c", script],
            env={**host.env, **self.server.env(), "TMPDIR": str(host.root / "tmp"), **env},
            capture_output=True,
            text=True,
            timeout=120,
        )


@pytest.fixture
def bundle(s3_server: MotoServer, host: Host) -> Bundle:
    program("aws", "awscli")
    (host.root / "tmp").mkdir()
    bucket = s3_server.bucket("deploy")
    url = f"s3://{bucket}/imgclf/0123abc/deploy.tar.gz"
    output = host.root / "github-output"
    (upload,) = [s for s in DEPLOY_JOB["steps"] if s.get("id") == "bundle"]
    subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", upload["run"]],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            **s3_server.env(),
            "BUNDLE_URL": url,
            "RUNNER_TEMP": str(host.root),
            "GITHUB_OUTPUT": str(output),
        },
        check=True,
        timeout=120,
    )
    sha256 = output.read_text().strip().removeprefix("sha256=")
    return Bundle(s3_server, bucket, url, sha256)


def test_the_upload_records_the_sha256_of_the_bundle_it_uploaded(bundle: Bundle) -> None:
    key = bundle.url.removeprefix(f"s3://{bundle.bucket}/")
    stored = bundle.server.client().get_object(Bucket=bundle.bucket, Key=key)["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == bundle.sha256
    with tarfile.open(fileobj=io.BytesIO(stored)) as archive:
        script = archive.extractfile("deploy/release.sh")
        assert script is not None and script.read() == RELEASE.read_bytes()


def test_a_good_bundle_is_released_and_leaves_no_copy_behind(host: Host, bundle: Bundle) -> None:
    result = bundle.on_host(host, "--deploy-id", "d1", host.image("ok", "v1"))

    assert result.returncode == 0, result.stdout + result.stderr
    assert host.upstream_port() == host.blue and host.answer(host.blue) == "v1"
    assert host.status()["deploy"] == "d1"
    assert list((host.root / "tmp").iterdir()) == []  # a rollback fetches and checks it again


def test_a_tampered_bundle_is_refused_before_anything_runs(host: Host, bundle: Bundle) -> None:
    ok(bundle.on_host(host, "--deploy-id", "d1", host.image("ok", "v1")))
    upstream_before = host.upstream.read_bytes()
    # Someone who can write the bucket swaps release.sh for their own.
    pwned = host.root / "pwned"
    evil = f"#!/bin/sh\ntouch {shlex.quote(str(pwned))}\n".encode()
    tampered = io.BytesIO()
    with tarfile.open(fileobj=tampered, mode="w:gz") as archive:
        entry = tarfile.TarInfo("deploy/release.sh")
        entry.size, entry.mode = len(evil), 0o755
        archive.addfile(entry, io.BytesIO(evil))
    key = bundle.url.removeprefix(f"s3://{bundle.bucket}/")
    bundle.server.client().put_object(Bucket=bundle.bucket, Key=key, Body=tampered.getvalue())

    result = bundle.on_host(host, "--deploy-id", "d2", host.image("ok", "v2"))

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"REFUSED: {bundle.url} has sha256 " in result.stderr
    assert "nothing from it was run" in result.stderr
    assert not pwned.exists()
    assert not (host.pids / "v2").exists()
    assert host.upstream.read_bytes() == upstream_before
    assert host.answer(host.blue) == "v1" and host.status()["deploy"] == "d1"
    assert list((host.root / "tmp").iterdir()) == []


def test_rollback_reaches_a_host_whose_release_died_after_the_switch(
    host: Host, bundle: Bundle
) -> None:
    """SSM reports such a host timed out, not successful: the host's own record must say that
    deploy d2 switched it, and d2's rollback, sent to every host, must take it back."""
    v1, v2 = host.image("ok", "v1"), host.image("ok", "v2")
    ok(bundle.on_host(host, "--deploy-id", "d1", v1))
    # release.sh is killed the moment nginx has reloaded onto v2 (SSM's execution timeout).
    reload = f"{host.env['IMGCLF_RELOAD_CMD']} && kill -KILL $PPID"
    died = bundle.on_host(host, "--deploy-id", "d2", v2, IMGCLF_RELOAD_CMD=reload)
    assert died.returncode != 0
    assert host.upstream_port() == host.green and host.answer(host.green) == "v2"
    assert host.status() == {"active": "green", "current": v2, "previous": v1, "deploy": "d2"}

    other = ok(bundle.on_host(host, "--rollback", "--deploy-id", "d3"))
    assert "nothing to roll back" in other.stdout and host.upstream_port() == host.green

    ok(bundle.on_host(host, "--rollback", "--deploy-id", "d2"))
    assert host.upstream_port() == host.blue and host.answer(host.blue) == "v1"
    assert not alive(host.pid("v2"))
    assert host.status() == {"active": "blue", "current": v1, "previous": v2, "deploy": ""}

    again = ok(bundle.on_host(host, "--rollback", "--deploy-id", "d2"))  # a retried command
    assert "nothing to roll back" in again.stdout
    assert host.upstream_port() == host.blue and host.answer(host.blue) == "v1"
