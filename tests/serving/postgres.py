"""A throw-away PostgreSQL server for the tests, and the ``db_url`` fixture that runs a test on both backends.

The server is Debian's ``postgresql`` package (``/usr/lib/postgresql/<version>/bin``, or ``initdb``
on ``PATH``), started once per test session with ``initdb`` + ``pg_ctl`` in a temporary folder, on
a free loopback port with its unix socket in that folder, and stopped at the end. PostgreSQL
refuses to run as root, so under root it runs as the ``postgres`` user (the package creates it).
Without the binaries the PostgreSQL half of the tests is skipped, saying how to install them
(``.ci/run`` does, so CI runs them). Each test gets a database of its own.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

INSTALL_HINT = "apt-get install -y postgresql (Debian), or put initdb and pg_ctl on PATH"


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class PostgresServer:
    """A running server: ``url(db)`` is the SQLAlchemy URL of database ``db`` on it."""

    port: int
    user: str

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str) -> None:
        """Run one statement outside a transaction (``CREATE DATABASE`` needs that)."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def create_database(self) -> str:
        name = f"clce_{uuid.uuid4().hex[:12]}"
        self.execute(f"CREATE DATABASE {name}")
        return name


def _run_as(user: pwd.struct_passwd | None) -> dict[str, Any]:
    return {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """Start PostgreSQL for the session (skipped, with the reason, when it is not installed)."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.skip(f"PostgreSQL binaries not found: {INSTALL_HINT}")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver is missing: pip install 'psycopg[binary]'")
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
    folder = Path(tempfile.mkdtemp(prefix="clce-pg-"))
    if owner is not None:
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    data, log = folder / "data", folder / "server.log"
    as_owner = _run_as(owner)
    env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
    subprocess.run(
        [bin_dir / "initdb", "-D", data, "-U", "clce", "--auth=trust", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
        env=env,
        **as_owner,
    )
    port = _free_port()
    options = (
        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    started = subprocess.run(
        [bin_dir / "pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "-t", "60", "start"],
        capture_output=True,
        text=True,
        env=env,
        **as_owner,
    )
    if started.returncode != 0:
        text = log.read_text() if log.exists() else ""
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {started.stderr}\n{text}")
    try:
        yield PostgresServer(port=port, user="clce")
    finally:
        subprocess.run(
            [bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"],
            capture_output=True,
            env=env,
            **as_owner,
        )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty support-set database on each backend: ``sqlite:///...`` and ``postgresql://...``."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'support.sqlite3'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.url(server.create_database())


def query(db_url: str, sql: str) -> list[tuple[Any, ...]]:
    """The rows of one SQL statement on the database at ``db_url`` (either backend), as tuples."""
    import sqlalchemy as sa

    from serving.store.database import parse_url

    engine = sa.create_engine(parse_url(db_url))
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(sql))]
    finally:
        engine.dispose()
