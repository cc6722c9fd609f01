"""S3 (or S3-compatible) prefixes, downloaded with boto3's usual credential chain."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from tqdm import tqdm

from imgclf.data.sources.archive import member_parts
from imgclf.data.sources.errors import OFFLINE_HINT, SourceError, one_line


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/prefix` -> (bucket, prefix)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise SourceError(f"bad S3 URI {uri!r}: expected s3://bucket/prefix")
    return parsed.netloc, parsed.path.lstrip("/")


def download_s3(
    uri: str,
    dest: Path,
    *,
    endpoint_url: str | None = None,
    threads: int = 8,
    progress: bool = True,
) -> list[Path]:
    """Download every object under `s3://bucket/prefix` into `dest` (key paths below the prefix
    kept). Credentials come from boto3's usual chain (env, profile, instance role), never params.
    """
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    bucket, prefix = parse_s3_uri(uri)
    where = f" at {endpoint_url}" if endpoint_url else ""
    # A fresh session: boto3's default one caches credentials from the first call on.
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url or None,
        config=Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 2}),
    )
    try:
        keys = _list_keys(client, bucket, prefix)
        if not keys:
            raise SourceError(f"no objects under {uri}{where}")
        jobs = []
        for key in keys:
            # s3://b/raw is the folder raw/ (not raw2/), or the single object raw (an archive).
            relative = PurePosixPath(key).name if key == prefix else key[len(prefix) :]
            jobs.append((key, dest.joinpath(*member_parts(relative.lstrip("/"), Path(uri)))))
        with (
            ThreadPoolExecutor(threads) as pool,
            tqdm(total=len(jobs), desc="s3", unit="file", disable=not progress, leave=False) as bar,
        ):
            for _ in pool.map(lambda job: _get_object(client, bucket, *job), jobs):
                bar.update()
        return [target for _, target in jobs]
    except NoCredentialsError:
        raise SourceError(
            f"no AWS credentials for {uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
            f"AWS_PROFILE) in the environment, never in params.yaml; or {OFFLINE_HINT}"
        ) from None
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise SourceError(
            f"S3 error for {uri}{where}: {error.get('Code', '?')} {error.get('Message', '')}"
            f"; check the bucket, prefix and credentials, or {OFFLINE_HINT}"
        ) from None
    except BotoCoreError as exc:
        raise SourceError(
            f"cannot reach S3 for {uri}{where} ({one_line(exc)}); {OFFLINE_HINT}"
        ) from None


def _list_keys(client, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(obj["Key"] for obj in page.get("Contents", []) if not obj["Key"].endswith("/"))
    folder = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    return sorted(key for key in keys if key == prefix or key.startswith(folder))


def _get_object(client, bucket: str, key: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    client.download_file(bucket, key, str(target))
