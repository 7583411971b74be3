"""Throwaway PostgreSQL clusters for the catalog and fleet tests.

A cluster is created with Debian's postgresql-15 binaries in a fresh folder under /tmp (pytest's
own temporary folders are private to root, and the server must run as the postgres user), listens
on one address that the test chose (127.0.0.1 by default, or an address inside a network namespace
that the test created) and keeps its Unix socket in that folder. Password authentication
(scram-sha-256) is required on TCP, as on a real catalog server.

Test modules import the fixtures by name::

    from tests.pg_fixture import postgres_cluster, postgres_dsn  # noqa: F401
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postgres"
START_TIMEOUT = 30


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on host a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class PostgresCluster:
    """One PostgreSQL server owned by the postgres user, in its own folder under /tmp.

    netns names a network namespace to start the server in; host must then be an address of that
    namespace, and port is required because a free port cannot be probed from outside it.
    client_networks lists further CIDR networks allowed to log in with the password; initdb
    allows only 127.0.0.1 and ::1.
    """

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, netns: str | None = None,
                 client_networks: tuple[str, ...] = ()):
        self.host = host
        self.client_networks = client_networks
        self.netns = netns
        self.port = port if port is not None else free_port(host)
        self.password = secrets.token_urlsafe(18)
        self.directory = Path(tempfile.mkdtemp(prefix="orthanc-archive-pg-"))
        self.data_dir = self.directory / "data"
        self.log_path = self.directory / "server.log"

    def _as_postgres(self, *command: str, netns: bool = False) -> subprocess.CompletedProcess[str]:
        prefix = ["ip", "netns", "exec", self.netns] if netns and self.netns else []
        return subprocess.run(
            [*prefix, "runuser", "-u", PG_USER, "--", *command],
            capture_output=True, text=True, check=False, timeout=120,
        )

    def _check(self, result: subprocess.CompletedProcess[str], what: str) -> None:
        if result.returncode != 0:
            log = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
            raise RuntimeError(f"{what} failed with exit status {result.returncode}: {result.stderr.strip()}\n{log}")

    def start(self) -> "PostgresCluster":
        """Create the cluster with initdb and start it; raise RuntimeError with the server log on failure."""
        if not (PG_BIN / "initdb").exists():
            raise RuntimeError(f"PostgreSQL 15 is not installed at {PG_BIN}: run `apt-get install postgresql`")
        shutil.chown(self.directory, PG_USER, PG_USER)
        self.directory.chmod(0o700)
        password_file = self.directory / "password"
        password_file.write_text(self.password + "\n")
        shutil.chown(password_file, PG_USER, PG_USER)

        self._check(self._as_postgres(
            str(PG_BIN / "initdb"), "-D", str(self.data_dir), "-U", PG_USER, "--pwfile", str(password_file),
            "--auth-local=peer", "--auth-host=scram-sha-256", "--encoding=UTF8", "--no-instructions",
        ), "initdb")
        password_file.unlink()
        with open(self.data_dir / "pg_hba.conf", "a", encoding="ascii") as hba:
            for network in self.client_networks:
                hba.write(f"host all all {network} scram-sha-256\n")

        options = f"-c listen_addresses={self.host} -p {self.port} -c unix_socket_directories={self.directory} " \
                  "-c fsync=off -c full_page_writes=off -c max_connections=200"
        self._check(self._as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_path), "-o", options,
            "-w", "-t", str(START_TIMEOUT), "start", netns=True,
        ), "pg_ctl start")
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its folder."""
        if (self.data_dir / "postmaster.pid").exists():
            self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its name."""
        name = name or "catalog_" + secrets.token_hex(4)
        self._check(self._as_postgres(
            str(PG_BIN / "createdb"), "-h", str(self.directory), "-p", str(self.port), name,
        ), f"createdb {name}")
        return name

    def dsn(self, database: str) -> str:
        """Return a libpq keyword/value connection string for database, password included."""
        return f"host={self.host} port={self.port} dbname={database} user={PG_USER} password={self.password}"

    def uri(self, database: str) -> str:
        """Return a postgresql:// URI for database, as Orthanc's PostgreSQL plugin takes it."""
        return f"postgresql://{PG_USER}:{self.password}@{self.host}:{self.port}/{database}"

    def wait_until_accepting(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self._as_postgres(str(PG_BIN / "pg_isready"), "-h", str(self.directory), "-p", str(self.port))
            if result.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"PostgreSQL on {self.host}:{self.port} did not accept connections within {timeout:.0f} s")


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One PostgreSQL 15 server on 127.0.0.1 for the whole test session."""
    cluster = PostgresCluster()
    try:
        cluster.start()
    except RuntimeError as exc:
        cluster.stop()
        pytest.fail(str(exc), pytrace=False)
    yield cluster
    cluster.stop()


@pytest.fixture
def postgres_dsn(postgres_cluster: PostgresCluster) -> str:
    """Connection string of a new, empty database on the session's PostgreSQL server."""
    return postgres_cluster.dsn(postgres_cluster.create_database())
