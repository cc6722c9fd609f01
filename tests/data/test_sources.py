"""Getting the source: safe extraction, resumable HTTP over a real loopback server, S3 from a real
moto server, and one-line errors when offline or without credentials."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from imgclf.data.sources import Extractor, SourceError, open_source
from imgclf.data.sources.errors import UnsafeArchiveError
from imgclf.data.sources.http import download_http
from tests.support.s3_server import MotoServer


def jpeg(color: str = "red", size: tuple[int, int] = (48, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "JPEG")
    return buffer.getvalue()


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def add_tar_member(tf: tarfile.TarFile, name: str, data: bytes = b"", **attrs: object) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    tf.addfile(info, io.BytesIO(data))


def touch_source(source: str, root: Path, **options: object) -> None:
    """Open and close a source (the errors under test happen on the way in)."""
    options.setdefault("cache_dir", root / "cache")
    options.setdefault("progress", False)
    with open_source(source, root=root, **options):  # type: ignore[arg-type]
        pass


def assert_one_line(error: pytest.ExceptionInfo[BaseException], *words: str) -> None:
    text = str(error.value)
    assert "\n" not in text and "Traceback" not in text
    for word in words:
        assert word in text, text


# --------------------------------------------------------------------------------------------
# Archives
# --------------------------------------------------------------------------------------------


def test_zip_extracts_and_nested_archives_expand(tmp_path: Path) -> None:
    inner = make_zip(tmp_path / "train.zip", {"train/cat.1.jpg": jpeg()})
    outer = make_zip(
        tmp_path / "dogs-vs-cats.zip",
        {"train.zip": inner.read_bytes(), "PetImages/Dog/1.jpg": jpeg("blue")},
    )
    with open_source(str(outer), root=tmp_path, cache_dir=tmp_path / "cache") as folder:
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        assert files == ["PetImages/Dog/1.jpg", "train/train/cat.1.jpg"]
    assert not folder.exists()  # the temporary extraction is gone


@pytest.mark.parametrize("member", ["../evil.jpg", "a/../../evil.jpg", "..\\evil.jpg"])
def test_zip_slip_is_rejected(tmp_path: Path, member: str) -> None:
    archive = make_zip(tmp_path / "slip.zip", {"ok.jpg": jpeg(), member: b"x"})
    with pytest.raises(UnsafeArchiveError) as error:
        Extractor().extract(archive, tmp_path / "out")
    assert_one_line(error, "slip.zip", "zip-slip")
    assert not (tmp_path / "evil.jpg").exists()
    assert not (tmp_path / "out" / "ok.jpg").exists()  # checked before anything is written


def test_zip_absolute_member_is_rejected(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "abs.zip", {"/tmp/evil.jpg": b"x"})
    with pytest.raises(UnsafeArchiveError) as error:
        Extractor().extract(archive, tmp_path / "out")
    assert_one_line(error, "absolute path")


@pytest.mark.parametrize(
    ("name", "words"), [("../evil.jpg", "zip-slip"), ("/tmp/evil.jpg", "absolute path")]
)
def test_tar_slip_is_rejected(tmp_path: Path, name: str, words: str) -> None:
    archive = tmp_path / "slip.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        add_tar_member(tf, "cats/ok.jpg", jpeg())
        add_tar_member(tf, name)
    with pytest.raises(UnsafeArchiveError) as error:
        Extractor().extract(archive, tmp_path / "out")
    assert_one_line(error, words)
    assert not (tmp_path / "out" / "cats" / "ok.jpg").exists()
    assert not (tmp_path / "evil.jpg").exists()


def test_local_source_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as error:
        touch_source("nope", tmp_path)
    assert_one_line(error, "no such folder or archive")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(SourceError) as error:
        touch_source("notes.txt", tmp_path)
    assert_one_line(error, "neither a folder nor")


# --------------------------------------------------------------------------------------------
# HTTP over a real loopback server
# --------------------------------------------------------------------------------------------


class ArchiveServer(http.server.ThreadingHTTPServer):
    """Serves one payload at any path; honours `Range: bytes=N-`; can cut the first transfer."""

    def __init__(self, payload: bytes, cut_first_after: int | None, honour_range: bool) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.payload = payload
        self.cut_first_after = cut_first_after
        self.honour_range = honour_range
        self.ranges: list[str | None] = []  # the Range header of every request


class RangeHandler(http.server.BaseHTTPRequestHandler):
    server: ArchiveServer

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        payload, header = self.server.payload, self.headers.get("Range")
        self.server.ranges.append(header)
        start = 0
        if header and self.server.honour_range:
            start = int(header.removeprefix("bytes=").split("-")[0])
            if start >= len(payload):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(payload)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
        else:
            self.send_response(200)
        body = payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        cut = self.server.cut_first_after
        if cut is not None and len(self.server.ranges) == 1:
            self.wfile.write(body[:cut])  # then die: the client sees a short body
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def serve() -> Iterator:
    servers: list[ArchiveServer] = []

    def start(payload: bytes, cut_first_after: int | None = None, honour_range: bool = True):
        server = ArchiveServer(payload, cut_first_after, honour_range)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server, f"http://127.0.0.1:{server.server_address[1]}/kagglecatsanddogs.zip"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def archive_bytes(tmp_path: Path) -> bytes:
    # Stored (uncompressed) noise so the archive is big enough to cut in the middle.
    members = {f"PetImages/Cat/{i}.jpg": jpeg("red", (200 + i, 150)) for i in range(4)}
    members["PetImages/Dog/0.jpg"] = os.urandom(200_000)
    return make_zip(tmp_path / "payload.zip", members).read_bytes()


def test_http_download_resumes_with_range(tmp_path: Path, serve, archive_bytes: bytes) -> None:
    cut = 100_000
    server, url = serve(archive_bytes, cut_first_after=cut)
    cache = tmp_path / "cache"
    digest = hashlib.sha256(archive_bytes).hexdigest()
    with pytest.raises(SourceError) as error:
        download_http(url, cache, sha256=digest, retries=0, progress=False)
    assert_one_line(error, "interrupted", "run the stage again to resume")
    (part,) = cache.glob("*.part")
    assert part.stat().st_size == cut
    final = download_http(url, cache, sha256=digest, retries=0, progress=False)
    assert server.ranges == [None, f"bytes={cut}-"]
    assert final.read_bytes() == archive_bytes and not part.exists()
    # Cached: no third request.
    assert download_http(url, cache, sha256=digest, progress=False) == final
    assert len(server.ranges) == 2


def test_http_retries_within_one_call(tmp_path: Path, serve, archive_bytes: bytes) -> None:
    server, url = serve(archive_bytes, cut_first_after=50_000)
    final = download_http(url, tmp_path, retries=2, progress=False)
    assert server.ranges == [None, "bytes=50000-"]
    assert final.read_bytes() == archive_bytes


def test_http_server_ignoring_range_restarts(tmp_path: Path, serve, archive_bytes: bytes) -> None:
    server, url = serve(archive_bytes, cut_first_after=70_000, honour_range=False)
    final = download_http(url, tmp_path, retries=1, progress=False)
    assert server.ranges == [None, "bytes=70000-"]  # asked to resume, got a 200: start over
    assert final.read_bytes() == archive_bytes


def test_http_416_when_part_already_complete(tmp_path: Path, serve, archive_bytes: bytes) -> None:
    server, url = serve(archive_bytes)
    final = download_http(url, tmp_path, progress=False)
    final.rename(final.with_name(final.name + ".part"))  # as if killed before the rename
    assert download_http(url, tmp_path, progress=False).read_bytes() == archive_bytes
    assert server.ranges == [None, f"bytes={len(archive_bytes)}-"]


def test_http_sha256_mismatch_removes_file(tmp_path: Path, serve, archive_bytes: bytes) -> None:
    _, url = serve(archive_bytes)
    with pytest.raises(SourceError) as error:
        download_http(url, tmp_path / "cache", sha256="0" * 64, progress=False)
    assert_one_line(error, "sha256 mismatch", "removed")
    assert list((tmp_path / "cache").iterdir()) == []


def test_http_non_archive_is_not_cached(tmp_path: Path, serve) -> None:
    _, url = serve(b"<html>Sorry, this download has moved</html>")
    with pytest.raises(SourceError) as error:
        touch_source(url, tmp_path)
    assert_one_line(error, "did not return a complete zip or tar archive")
    assert list((tmp_path / "cache").iterdir()) == []


def test_http_source_end_to_end(tmp_path: Path, serve, archive_bytes: bytes) -> None:
    _, url = serve(archive_bytes)
    with open_source(url, root=tmp_path, cache_dir=tmp_path / "cache", progress=False) as folder:
        assert len(list(folder.glob("PetImages/Cat/*.jpg"))) == 4


def test_unreachable_url_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as error:
        touch_source("http://127.0.0.1:1/x.zip", tmp_path)
    assert_one_line(error, "cannot reach", "download.source=../shared/data/dogs-vs-cats")


# --------------------------------------------------------------------------------------------
# S3 from a real moto server
# --------------------------------------------------------------------------------------------


@pytest.fixture
def moto_endpoint(s3_server: MotoServer) -> str:
    """The session's moto server (tests/support/s3_server.py)."""
    return s3_server.url


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


def test_s3_source_from_moto(tmp_path: Path, moto_endpoint: str, aws_env: None) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket="pets")
    uploads = {
        "raw/cats/1.jpg": jpeg("red"),
        "raw/cats/2.jpg": jpeg("orange"),
        "raw/dogs/1.jpg": jpeg("blue"),
        "other/dogs/9.jpg": jpeg("green"),  # outside the prefix
        "raw2/cats/7.jpg": jpeg("green"),  # shares the prefix's letters, not its folder
    }
    for key, data in uploads.items():
        s3.put_object(Bucket="pets", Key=key, Body=data)
    with open_source(
        "s3://pets/raw",
        root=tmp_path,
        cache_dir=tmp_path / "cache",
        s3_endpoint_url=moto_endpoint,
        progress=False,
    ) as folder:
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.jpg")}
    assert files == {
        "cats/1.jpg": uploads["raw/cats/1.jpg"],
        "cats/2.jpg": uploads["raw/cats/2.jpg"],
        "dogs/1.jpg": uploads["raw/dogs/1.jpg"],
    }


def test_s3_single_archive_object(tmp_path: Path, moto_endpoint: str, aws_env: None) -> None:
    import boto3

    archive = make_zip(tmp_path / "pets.zip", {"PetImages/Cat/1.jpg": jpeg()})
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket="archives")
    s3.upload_file(str(archive), "archives", "2024/pets.zip")
    with open_source(
        "s3://archives/2024/pets.zip",
        root=tmp_path,
        cache_dir=tmp_path / "cache",
        s3_endpoint_url=moto_endpoint,
        progress=False,
    ) as folder:
        assert (folder / "pets/PetImages/Cat/1.jpg").read_bytes() == jpeg()


def test_s3_missing_bucket_is_one_line(tmp_path: Path, moto_endpoint: str, aws_env: None) -> None:
    with pytest.raises(SourceError) as error:
        touch_source("s3://no-such-bucket/x", tmp_path, s3_endpoint_url=moto_endpoint)
    assert_one_line(error, "NoSuchBucket")


def test_s3_unreachable_endpoint_is_one_line(tmp_path: Path, aws_env: None) -> None:
    with pytest.raises(SourceError) as error:
        touch_source("s3://pets/raw", tmp_path, s3_endpoint_url="http://127.0.0.1:1")
    assert_one_line(error, "cannot reach S3", "download.source")


def test_s3_without_credentials_is_one_line(
    tmp_path: Path, moto_endpoint: str, aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no slow instance-role probe
    with pytest.raises(SourceError) as error:
        touch_source("s3://pets/raw", tmp_path, s3_endpoint_url=moto_endpoint)
    assert_one_line(error, "no AWS credentials", "never in params.yaml")


# --------------------------------------------------------------------------------------------
# Kaggle
# --------------------------------------------------------------------------------------------


def test_kaggle_without_credentials_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(os.environ):
        if name.startswith("KAGGLE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / ".kaggle"))
    with pytest.raises(SourceError) as error:
        touch_source("kaggle://dogs-vs-cats", tmp_path)
    assert_one_line(error, "no Kaggle credentials", "kaggle.json")
    captured = capsys.readouterr()
    assert "Authentication required" not in captured.out + captured.err  # the page of help
