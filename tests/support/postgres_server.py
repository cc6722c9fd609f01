"""A real PostgreSQL server on loopback for tests (fixture `postgres_url`), from Debian's
`postgresql` package: a throwaway cluster (initdb) in a temp folder, started with `pg_ctl`.

A pytest plugin (tests/conftest.py lists it). PostgreSQL refuses to run as root, so under root
(CI containers) the cluster belongs to the package's `postgres` user and runs as it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helpers import free_port, unavailable


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _as_owner(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str]) -> None:
    result = subprocess.run(_as_owner(command), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of an empty database on a fresh PostgreSQL cluster."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        unavailable("PostgreSQL server not installed (Debian package `postgresql`)")
    # Directly under /tmp rather than pytest's tmp_path: the `postgres` user must reach it, and
    # pytest's folders are private to the user running the tests.
    folder = Path(tempfile.mkdtemp(prefix="imgclf-postgres-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        shutil.chown(folder, owner.pw_uid, owner.pw_gid)
    data, port = folder / "data", free_port()
    try:
        _run([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "imgclf"])
        options = f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off"
        _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options,
              "-l", str(folder / "server.log"), "-w", "start"])  # fmt: skip
        try:
            yield f"postgresql+psycopg://imgclf@127.0.0.1:{port}/postgres"
        finally:
            _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
