"""deploy/nginx/imgclf.conf in front of a REAL `bentoml serve` (the session's `champion_service`):
Debian's nginx, run as a non-daemon on free loopback ports, with a CA and server certificate made
here; every HTTPS request verifies the server against that CA.

The config is rendered into tmp_path by replacing its listen lines and paths (certificates,
upstream include, ACME root, access log): a path the rendering no longer finds fails the test,
so the config and this test cannot drift apart silently. Missing nginx skips the module, except
in CI (`CI` set), where it fails. The body limits and the token check are tested in
test_nginx_limits.py, the client timeouts in tests/integration/test_slow_clients.py, both with
the helpers here (`running`, `http1`, `read_answer`).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.support.helpers import REPO_ROOT, free_port, program, stop_process

CONF = REPO_ROOT / "deploy" / "nginx" / "imgclf.conf"
START_TIMEOUT = 15


def nginx_binary() -> str:
    return program("nginx", "nginx-light")


# --- certificates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Tls:
    ca: Path  # what clients trust
    cert: Path  # server chain (leaf + CA), as fullchain.pem
    key: Path


def make_tls(folder: Path) -> Tls:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imgclf test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    tls = Tls(folder / "ca.pem", folder / "fullchain.pem", folder / "privkey.pem")
    tls.ca.write_bytes(ca.public_bytes(pem))
    tls.cert.write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    tls.key.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return tls


# --- nginx ------------------------------------------------------------------------------------


def render(text: str, root: Path, http_port: int, https_port: int) -> str:
    """imgclf.conf with this test's ports and paths; every production path must be found."""
    replacements = {
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "listen 443 ssl http2;": f"listen 127.0.0.1:{https_port} ssl http2;",
        "/etc/nginx/imgclf-upstream.conf": str(root / "imgclf-upstream.conf"),
        "/etc/nginx/certs/": f"{root / 'certs'}/",
        "/var/www/acme": str(root / "acme"),
        "/var/log/nginx/access.log": str(root / "access.log"),
    }
    for old, new in replacements.items():
        assert old in text, f"{old!r} is no longer in {CONF.name}: update the test's rendering"
        text = text.replace(old, new)
    return text


class Nginx:
    """nginx -p ROOT -c ROOT/nginx.conf in the foreground, with imgclf.conf rendered into ROOT
    and `upstream` as the upstream include's one server."""

    def __init__(self, root: Path, upstream: str, conf_text: str) -> None:
        self.binary = nginx_binary()
        self.root = root
        self.http_port, self.https_port = free_port(), free_port()
        for folder in ("temp", "acme/.well-known/acme-challenge"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        self.tls = make_tls(root / "certs")
        (root / "imgclf-upstream.conf").write_text(f"server {upstream};\n")
        (root / "imgclf.conf").write_text(render(conf_text, root, self.http_port, self.https_port))
        (root / "nginx.conf").write_text(self._main_conf())
        self.access_log = root / "access.log"
        self.process: subprocess.Popen[bytes] | None = None

    def _main_conf(self) -> str:
        # As root, workers would drop to `nobody`, which cannot write into pytest's 0700 tmp.
        user = "user root root;\n" if os.geteuid() == 0 else ""
        temp = self.root / "temp"
        return (
            f"worker_processes 1;\n{user}events {{ worker_connections 256; }}\n"
            "http {\n"
            "  default_type application/octet-stream;\n"
            + "".join(f"  {kind}_temp_path {temp / kind};\n" for kind in ("client_body", "proxy"))
            + "".join(
                f"  {kind}_temp_path {temp / kind};\n" for kind in ("fastcgi", "uwsgi", "scgi")
            )
            + f"  include {self.root / 'imgclf.conf'};\n}}\n"
        )

    def args(self, *extra: str) -> list[str]:
        globals_ = (
            f"daemon off; pid {self.root / 'nginx.pid'}; error_log {self.root / 'error.log'} info;"
        )
        return [self.binary, *extra, "-p", str(self.root), "-c", "nginx.conf", "-g", globals_]

    def check(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.args("-t"), capture_output=True, text=True, timeout=30)

    def start(self) -> Nginx:
        self.process = subprocess.Popen(
            self.args(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own group: stop() also reaches the worker
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited:\n{self.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", self.https_port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"nginx did not listen within {START_TIMEOUT}s:\n{self.error_log()}")

    def stop(self) -> None:
        if self.process is not None:  # SIGQUIT: graceful, finish requests, then exit
            stop_process(self.process, 10, signal.SIGQUIT, group=True)

    def error_log(self) -> str:
        path = self.root / "error.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log_lines(self) -> list[dict]:
        """The JSON access log; every line must parse (that is the format's point)."""
        if not self.access_log.exists():
            return []
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line]

    def log_for(self, key: str, value: str, timeout: float = 5) -> dict:
        """The access log line whose `key` is `value` (nginx writes it after the answer)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_lines():
                if line.get(key) == value:
                    return line
            time.sleep(0.1)
        raise AssertionError(f"no access log line with {key}={value!r}: {self.log_lines()[-5:]}")


@contextlib.contextmanager
def running(root: Path, upstream: str, conf_text: str) -> Iterator[Nginx]:
    """An Nginx whose config passes `nginx -t`, started, and stopped afterwards."""
    nginx = Nginx(root, upstream, conf_text)
    checked = nginx.check()
    assert checked.returncode == 0, checked.stderr
    nginx.start()
    try:
        yield nginx
    finally:
        nginx.stop()


def tls_context(ca: Path, version: ssl.TLSVersion, legacy: bool = False) -> ssl.SSLContext:
    """A verifying client pinned to one TLS version. `legacy` re-enables what OpenSSL 3 turns off
    by default (TLS 1.0/1.1, SHA-1 suites), so the refusal can only come from the server."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca)
    if legacy:
        context.set_ciphers("ALL:@SECLEVEL=0")
    context.minimum_version = version
    context.maximum_version = version
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


def handshake(port: int, context: ssl.SSLContext) -> tuple[str | None, str | None]:
    """(TLS version, ALPN protocol) of a completed handshake; raises ssl.SSLError if refused."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return tls.version(), tls.selected_alpn_protocol()


@contextlib.contextmanager
def http1(nginx: Nginx, timeout: float = 10) -> Iterator[ssl.SSLSocket]:
    """A verified TLS 1.3 connection to nginx speaking HTTP/1.1, for requests written by hand
    (a head without its body, half a head)."""
    context = tls_context(nginx.tls.ca, ssl.TLSVersion.TLSv1_3)
    context.set_alpn_protocols(["http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", nginx.https_port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        yield tls


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: str


def read_answer(tls: ssl.SSLSocket) -> Answer:
    """One HTTP/1.1 answer (an interim `100 Continue` too). Stops at the body's end rather
    than at EOF: nginx lingers for a body that the tests never send."""
    answer = b""
    while b"\r\n\r\n" not in answer and (chunk := tls.recv(65536)):
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    while len(body) < int(headers.get("content-length", 0)) and (chunk := tls.recv(65536)):
        body += chunk
    return Answer(int(status_line.split()[1]), headers, body.decode())


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, champion_service) -> Iterator[Nginx]:
    upstream = f"127.0.0.1:{champion_service.port}"
    with running(tmp_path_factory.mktemp("nginx"), upstream, CONF.read_text()) as nginx:
        yield nginx


@pytest.fixture(scope="module")
def photos(sample_data_dir: Path) -> dict[str, Path]:
    return {label: sorted((sample_data_dir / label).glob("*.jpg"))[0] for label in ("cat", "dog")}


# --- tests ------------------------------------------------------------------------------------


def test_nginx_t_passes_on_the_rendered_config(tmp_path: Path) -> None:
    nginx = Nginx(tmp_path, "127.0.0.1:9", CONF.read_text())
    result = nginx.check()
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr and "test is successful" in result.stderr
    # No warnings either (e.g. a stapling or duplicate-directive one); nginx >= 1.25.1 warns
    # that `listen ... http2` is deprecated, which is not the config's fault on older ones.
    warnings = [x for x in result.stderr.splitlines() if "[warn]" in x and "http2" not in x]
    assert not warnings, result.stderr


def test_https_predict_with_a_real_photo(proxy: Nginx, champion_service, photos) -> None:
    trace = f"test-{uuid.uuid4().hex}"
    with photos["cat"].open("rb") as image:
        response = requests.post(
            f"{proxy.https}/predict",
            files={"image": (photos["cat"].name, image, "image/jpeg")},
            headers={**champion_service.headers(), "X-Request-ID": trace},
            verify=str(proxy.tls.ca),
            timeout=60,
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["label"] in ("cat", "dog") and 0.0 <= body["probability"] <= 1.0
    assert body["model_version"] == champion_service.version
    assert response.headers["Strict-Transport-Security"].startswith("max-age=63072000")

    line = proxy.log_for("request_id", trace)  # the caller's id reached the log...
    assert line["upstream_request_id"] == body["request_id"]  # ...joined with the service's
    assert line["status"] == 200 and line["method"] == "POST" and line["uri"] == "/predict"
    assert line["upstream_addr"] == f"127.0.0.1:{champion_service.port}"
    assert line["tls"] in ("TLSv1.2", "TLSv1.3")


def test_https_predict_batch_through_the_proxy(proxy: Nginx, champion_service, photos) -> None:
    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in photos.values()]
    response = requests.post(
        f"{proxy.https}/predict_batch",
        files=files,
        headers=champion_service.headers(),
        verify=str(proxy.tls.ca),
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert [item["index"] for item in response.json()] == [0, 1]


def test_the_certificate_is_really_verified(proxy: Nginx) -> None:
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{proxy.https}/readyz", timeout=10)  # system CAs do not know ours


def test_readyz_and_livez_through_the_proxy(proxy: Nginx) -> None:
    for path in ("/readyz", "/livez"):
        response = requests.get(f"{proxy.https}{path}", verify=str(proxy.tls.ca), timeout=10)
        assert response.status_code == 200, (path, response.text)


def test_http_redirects_to_https_except_acme(proxy: Nginx) -> None:
    response = requests.get(f"{proxy.http}/predict?x=1", allow_redirects=False, timeout=10)
    assert response.status_code == 301
    assert response.headers["Location"] == "https://127.0.0.1/predict?x=1"

    token = uuid.uuid4().hex
    (proxy.root / "acme" / ".well-known" / "acme-challenge" / token).write_text("proof")
    challenge = requests.get(
        f"{proxy.http}/.well-known/acme-challenge/{token}", allow_redirects=False, timeout=10
    )
    assert (challenge.status_code, challenge.text) == (200, "proof")


def test_metrics_only_from_loopback_or_vpc(proxy: Nginx) -> None:
    local = requests.get(f"{proxy.https}/metrics", verify=str(proxy.tls.ca), timeout=10)
    assert local.status_code == 200 and "imgclf" in local.text

    # 127.0.0.2 is loopback too, but not in the allow list: it stands for any outside address.
    adapter = requests.adapters.HTTPAdapter()
    adapter.init_poolmanager(1, 1, source_address=("127.0.0.2", 0))
    with requests.Session() as session:
        session.mount("https://", adapter)
        outside = session.get(f"{proxy.https}/metrics", verify=str(proxy.tls.ca), timeout=10)
        readyz = session.get(f"{proxy.https}/readyz", verify=str(proxy.tls.ca), timeout=10)
    assert outside.status_code == 403
    assert readyz.status_code == 200  # only /metrics is restricted

    # Through an ALB every request comes from a VPC address, with X-Forwarded-For: refused,
    # also when the path is percent-encoded to slip past a literal path rule on the ALB.
    for path in ("/metrics", "/%6detrics"):
        forwarded = requests.get(
            f"{proxy.https}{path}",
            headers={"X-Forwarded-For": "203.0.113.9"},
            verify=str(proxy.tls.ca),
            timeout=10,
        )
        assert forwarded.status_code == 403, path


def test_tls_1_2_and_1_3_with_http2_but_tls_1_1_refused(proxy: Nginx) -> None:
    assert handshake(proxy.https_port, tls_context(proxy.tls.ca, ssl.TLSVersion.TLSv1_3)) == (
        "TLSv1.3",
        "h2",
    )
    assert handshake(proxy.https_port, tls_context(proxy.tls.ca, ssl.TLSVersion.TLSv1_2)) == (
        "TLSv1.2",
        "h2",
    )
    with pytest.raises(ssl.SSLError):
        handshake(proxy.https_port, tls_context(proxy.tls.ca, ssl.TLSVersion.TLSv1_1, True))


def test_the_tls_1_1_probe_can_fail(tmp_path: Path) -> None:
    """Control: the same probe succeeds against a copy that allows TLS 1.1, so the refusal
    above is the config's doing, not the client's or OpenSSL's."""
    weak = re.sub(
        r"ssl_protocols [^;]+;", "ssl_protocols TLSv1.1 TLSv1.2 TLSv1.3;", CONF.read_text()
    )
    weak = re.sub(r"ssl_ciphers [^;]+;", "ssl_ciphers ALL:@SECLEVEL=0;", weak)
    nginx = Nginx(tmp_path, "127.0.0.1:9", weak).start()
    try:
        context = tls_context(nginx.tls.ca, ssl.TLSVersion.TLSv1_1, legacy=True)
        assert handshake(nginx.https_port, context)[0] == "TLSv1.1"
    finally:
        nginx.stop()


def test_nginx_status_is_local_only(proxy: Nginx) -> None:
    response = requests.get(f"{proxy.http}/nginx_status", allow_redirects=False, timeout=10)
    assert response.status_code == 200 and "Active connections" in response.text
