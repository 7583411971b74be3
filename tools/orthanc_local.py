"""Start and stop a throwaway Orthanc server on 127.0.0.1 for the demo, tests and benchmarks.

Each server lives in one folder::

    DIR/orthanc.json   configuration written by this module
    DIR/storage/       StorageDirectory (DICOM files)
    DIR/index/         IndexDirectory (SQLite index)
    DIR/tmp/           TemporaryDirectory (ZIP archives, uploads)
    DIR/orthanc.pid    process id of the running server
    DIR/orthanc.log    Orthanc's standard output and error

Option names follow OrthancServer/Resources/Configuration.json of Orthanc 1.10.1
(Debian 12 ships the same file as /etc/orthanc/orthanc.json).

NOTE: Orthanc 1.10.1 has no option for the listening address. Its HTTP server
(CivetWeb, given only the port number) and its DICOM server listen on 0.0.0.0.
With "RemoteAccessAllowed": false Orthanc rejects HTTP requests from other hosts
with 403, and the DICOM server stays off unless a DICOM port is requested.

Command line::

    python tools/orthanc_local.py start --dir DIR [--port P] [--stable-age S] ...
    python tools/orthanc_local.py status --dir DIR
    python tools/orthanc_local.py stop --dir DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

LOG = logging.getLogger("orthanc_local")

ORTHANC_BINARY = "/usr/sbin/Orthanc"
POSTGRESQL_INDEX_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so"
LOOPBACK = "127.0.0.1"

CONFIG_NAME = "orthanc.json"
PID_NAME = "orthanc.pid"
LOG_NAME = "orthanc.log"

DEFAULT_STABLE_AGE = 2
DEFAULT_START_TIMEOUT = 30.0
DEFAULT_STOP_TIMEOUT = 15.0
LOG_TAIL_LINES = 30

# Orthanc 1.10.1 logs this text when CivetWeb cannot open the HTTP port
# (ErrorCode_HttpPortInUse, OrthancFramework/Sources/HttpServer/HttpServer.cpp).
PORT_IN_USE_MARKERS = ("The TCP port of the HTTP server is privileged or already in use",)
FREE_PORT_ATTEMPTS = 3


class OrthancError(RuntimeError):
    """Raised when a local Orthanc fails to start, stop or respond."""


def find_free_port() -> int:
    """Return a TCP port that was free on 127.0.0.1 a moment ago.

    The port comes from binding to port 0 and closing the socket, so another
    process can take it before Orthanc does. start() retries with a new port then.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def read_log_tail(log_path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """Return the last lines of an Orthanc log file, or a note that it is missing."""
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return f"(no log file at {log_path})"
    return "\n".join(text.splitlines()[-lines:])


def is_orthanc_process(pid: int, config_path: Path) -> bool:
    """Check that pid is alive and is an Orthanc started with config_path.

    The command-line check keeps stop() from signalling an unrelated process
    that reused the pid of a server that exited long ago.
    """
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    arguments = [part.decode(errors="replace") for part in cmdline.split(b"\0") if part]
    return any(arg.endswith("Orthanc") for arg in arguments[:1]) and str(config_path) in arguments


class LocalOrthanc:
    """A private Orthanc server whose configuration, storage, index and log live in one folder.

    Ports default to free ones picked at start(). Once picked they stay fixed,
    so restart() keeps the same url. With users, "AuthenticationEnabled" is true
    and session() sends the first user's credentials.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        http_port: int | None = None,
        dicom_port: int | None = None,
        enable_dicom: bool = False,
        stable_age: int = DEFAULT_STABLE_AGE,
        users: Mapping[str, str] | None = None,
        authentication: bool | None = None,
        http_compression: bool = True,
        storage_compression: bool = False,
        overwrite_instances: bool = False,
        sync_storage: bool = True,
        plugins: Sequence[str] = (),
        postgresql: Mapping[str, Any] | None = None,
        name: str = "LocalOrthanc",
        extra_config: Mapping[str, Any] | None = None,
        binary: str = ORTHANC_BINARY,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        verbose: bool = False,
    ) -> None:
        """Describe a server. Nothing is written or started before start().

        dicom_port enables the DICOM server on that port, and enable_dicom alone
        picks a free one. postgresql is the "PostgreSQL" configuration section (for example
        {"ConnectionUri": "postgresql://..."}); it loads the PostgreSQL index plugin.
        sync_storage=False sets "SyncStorageArea" to false: Orthanc then skips the
        fsync() after each stored file, which makes uploads several times faster
        and a crash can lose recent instances. extra_config is merged last and
        overrides every other key.
        """
        self.directory = Path(directory).resolve()
        self.http_port = http_port
        self.dicom_port = dicom_port
        self.enable_dicom = enable_dicom or dicom_port is not None
        self.stable_age = stable_age
        self.users = dict(users or {})
        self.authentication = bool(self.users) if authentication is None else authentication
        self.http_compression = http_compression
        self.storage_compression = storage_compression
        self.overwrite_instances = overwrite_instances
        self.sync_storage = sync_storage
        self.plugins = list(plugins)
        self.postgresql = dict(postgresql) if postgresql is not None else None
        self.name = name
        self.extra_config = dict(extra_config or {})
        self.binary = binary
        self.start_timeout = start_timeout
        self.verbose = verbose
        self._process: subprocess.Popen[bytes] | None = None
        self._auto_http_port = http_port is None
        self._auto_dicom_port = dicom_port is None

        if self.authentication and not self.users:
            # Orthanc 1.10.1 starts, logs "no user is declared" and returns 401 to every request.
            raise ValueError("authentication=True needs at least one user in users")

    # Paths and addresses

    @property
    def config_path(self) -> Path:
        return self.directory / CONFIG_NAME

    @property
    def pid_path(self) -> Path:
        return self.directory / PID_NAME

    @property
    def log_path(self) -> Path:
        return self.directory / LOG_NAME

    @property
    def storage_dir(self) -> Path:
        return self.directory / "storage"

    @property
    def index_dir(self) -> Path:
        return self.directory / "index"

    @property
    def temporary_dir(self) -> Path:
        return self.directory / "tmp"

    @property
    def url(self) -> str:
        """Base URL of the REST API, without a trailing slash."""
        if self.http_port is None:
            raise OrthancError(f"the Orthanc in {self.directory} has no HTTP port yet: call start() first")
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def auth(self) -> tuple[str, str] | None:
        """Credentials of the first registered user, for requests' auth argument."""
        if not self.authentication or not self.users:
            return None
        username = next(iter(self.users))
        return username, self.users[username]

    @property
    def pid(self) -> int | None:
        """Process id from the pid file, or None when the file is missing."""
        try:
            return int(self.pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def session(self) -> requests.Session:
        """Return a keep-alive requests session that authenticates as the first user."""
        session = requests.Session()
        session.auth = self.auth
        return session

    # Configuration

    def build_config(self) -> dict[str, Any]:
        """Return the Orthanc configuration as a dict, ports included."""
        plugins = list(self.plugins)
        config: dict[str, Any] = {
            "Name": self.name,
            "StorageDirectory": str(self.storage_dir),
            "IndexDirectory": str(self.index_dir),
            "TemporaryDirectory": str(self.temporary_dir),
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": self.authentication,
            "RegisteredUsers": dict(self.users),
            "HttpCompressionEnabled": self.http_compression,
            "StorageCompression": self.storage_compression,
            "OverwriteInstances": self.overwrite_instances,
            "SyncStorageArea": self.sync_storage,
            "StableAge": self.stable_age,
            "DicomServerEnabled": self.enable_dicom,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "Plugins": plugins,
            "LuaScripts": [],
        }

        if self.enable_dicom:
            config["DicomPort"] = self.dicom_port
            # The DICOM server listens on 0.0.0.0 in 1.10.1, so it accepts only
            # modalities listed in "DicomModalities" at their configured host.
            config["DicomAlwaysAllowEcho"] = False
            config["DicomAlwaysAllowStore"] = False
            config["DicomCheckModalityHost"] = True

        if self.postgresql is not None:
            section = {"EnableIndex": True, "EnableStorage": False}
            section.update(self.postgresql)
            config["PostgreSQL"] = section
            if POSTGRESQL_INDEX_PLUGIN not in plugins:
                plugins.append(POSTGRESQL_INDEX_PLUGIN)

        config.update(self.extra_config)
        return config

    def write_config(self) -> Path:
        """Create the folders and write the configuration file; return its path."""
        for folder in (self.directory, self.storage_dir, self.index_dir, self.temporary_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.build_config(), indent=2) + "\n", encoding="utf-8")
        return self.config_path

    # Life cycle

    def is_running(self) -> bool:
        """Check whether the server process recorded in the pid file is alive."""
        if self._process is not None and self._process.poll() is None:
            return True
        pid = self.pid
        return pid is not None and is_orthanc_process(pid, self.config_path)

    def start(self) -> LocalOrthanc:
        """Write the configuration, start Orthanc and wait until /system returns 200.

        Raises OrthancError with the tail of the log when Orthanc exits early or
        does not respond within start_timeout seconds.
        """
        if self.is_running():
            raise OrthancError(
                f"an Orthanc is already running from {self.directory} (pid {self.pid}); stop it first"
            )
        if not Path(self.binary).exists():
            raise OrthancError(f"Orthanc binary not found at {self.binary}: run `apt-get install orthanc`")

        auto_ports = self._auto_http_port or (self.enable_dicom and self._auto_dicom_port)
        attempts = FREE_PORT_ATTEMPTS if auto_ports else 1
        for attempt in range(1, attempts + 1):
            if self._auto_http_port:
                self.http_port = find_free_port()
            if self.enable_dicom and self._auto_dicom_port:
                self.dicom_port = find_free_port()
            try:
                self._launch()
                return self
            except OrthancError as error:
                port_taken = any(marker in str(error) for marker in PORT_IN_USE_MARKERS)
                if not (port_taken and attempt < attempts):
                    raise
                LOG.warning("port %s was taken before Orthanc bound it, retrying with another", self.http_port)
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        self.write_config()
        command = [self.binary]
        if self.verbose:
            command.append("--verbose")
        command.append(str(self.config_path))

        started = time.monotonic()
        with open(self.log_path, "ab") as log_file:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=True,
            )
        self.pid_path.write_text(f"{self._process.pid}\n")
        LOG.info("started Orthanc pid %s from %s on %s", self._process.pid, self.directory, self.url)

        try:
            self.wait_until_ready(self.start_timeout)
        except OrthancError:
            self._terminate(DEFAULT_STOP_TIMEOUT)
            raise
        LOG.info("Orthanc on %s answered after %.2f s", self.url, time.monotonic() - started)

    def wait_until_ready(self, timeout: float) -> dict[str, Any]:
        """Poll /system until it returns 200; return its JSON."""
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        with self.session() as session:
            while time.monotonic() < deadline:
                if self._process is not None and self._process.poll() is not None:
                    raise OrthancError(
                        f"Orthanc exited with status {self._process.returncode} while starting from "
                        f"{self.config_path}; last lines of {self.log_path}:\n{read_log_tail(self.log_path)}"
                    )
                try:
                    response = session.get(f"{self.url}/system", timeout=2)
                    if response.status_code == 200:
                        return dict(response.json())
                    last_error = f"HTTP {response.status_code}"
                except requests.RequestException as error:
                    last_error = str(error)
                time.sleep(0.05)
        raise OrthancError(
            f"Orthanc on {self.url} did not respond to /system within {timeout:.0f} s (last error: {last_error}); "
            f"last lines of {self.log_path}:\n{read_log_tail(self.log_path)}"
        )

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Stop the server with SIGTERM, then SIGKILL after timeout seconds; no-op when stopped."""
        self._terminate(timeout)
        self.pid_path.unlink(missing_ok=True)

    def _terminate(self, timeout: float) -> None:
        if self._process is not None:
            process = self._process
            self._process = None
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    LOG.warning("Orthanc pid %s ignored SIGTERM for %.0f s, sending SIGKILL", process.pid, timeout)
                    process.kill()
                    process.wait()
            LOG.info("stopped Orthanc pid %s (exit status %s)", process.pid, process.returncode)
            return

        # Started by another process (the CLI): only the pid file is known.
        pid = self.pid
        if pid is None or not is_orthanc_process(pid, self.config_path):
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not is_orthanc_process(pid, self.config_path):
                LOG.info("stopped Orthanc pid %s", pid)
                return
            time.sleep(0.05)
        LOG.warning("Orthanc pid %s ignored SIGTERM for %.0f s, sending SIGKILL", pid, timeout)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return

    def detach(self) -> None:
        """Forget the child process so that it keeps running; stop() then works from the pid file."""
        self._process = None

    def restart(self) -> LocalOrthanc:
        """Stop and start again with the same ports, folders and data."""
        self.stop()
        self._auto_http_port = False
        self._auto_dicom_port = False
        return self.start()

    def system(self) -> dict[str, Any]:
        """Return the JSON of GET /system."""
        with self.session() as session:
            response = session.get(f"{self.url}/system", timeout=10)
            response.raise_for_status()
            return dict(response.json())

    def __enter__(self) -> LocalOrthanc:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @classmethod
    def from_directory(cls, directory: str | os.PathLike[str]) -> LocalOrthanc:
        """Rebuild a LocalOrthanc from the configuration file that start() left in directory."""
        path = Path(directory).resolve() / CONFIG_NAME
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as error:
            raise OrthancError(f"no Orthanc configuration at {path}: run `start --dir {directory}` first") from error
        server = cls(
            directory,
            http_port=config["HttpPort"],
            dicom_port=config.get("DicomPort") if config.get("DicomServerEnabled") else None,
            users=config.get("RegisteredUsers") or {},
            authentication=bool(config.get("AuthenticationEnabled")),
        )
        return server


def parse_users(values: Sequence[str]) -> dict[str, str]:
    """Parse repeated USER:PASSWORD arguments."""
    users: dict[str, str] = {}
    for value in values:
        username, separator, password = value.partition(":")
        if not separator or not username:
            raise argparse.ArgumentTypeError(f"invalid --user value {value!r}: expected USER:PASSWORD")
        users[username] = password
    return users


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Start, stop or check a local Orthanc that listens on 127.0.0.1.")
    parser.add_argument("command", choices=("start", "stop", "status"))
    parser.add_argument("--dir", required=True, help="folder for the configuration, storage, index, pid and log")
    parser.add_argument("--port", type=int, help="HTTP port (default: a free port)")
    parser.add_argument("--dicom-port", type=int, help="enable the DICOM server on this port (default: off)")
    parser.add_argument("--dicom", action="store_true", help="enable the DICOM server on a free port")
    parser.add_argument(
        "--stable-age", type=int, default=DEFAULT_STABLE_AGE, help="seconds without new instances before a study is stable"
    )
    parser.add_argument("--username", help="registered user; enables authentication")
    parser.add_argument("--password", help="password of --username")
    parser.add_argument("--user", action="append", default=[], metavar="USER:PASSWORD", help="another registered user")
    parser.add_argument("--no-http-compression", action="store_true", help="set HttpCompressionEnabled to false")
    parser.add_argument("--storage-compression", action="store_true", help="set StorageCompression to true")
    parser.add_argument("--overwrite-instances", action="store_true", help="set OverwriteInstances to true")
    parser.add_argument("--no-sync-storage", action="store_true", help="set SyncStorageArea to false (no fsync per file)")
    parser.add_argument("--plugin", action="append", default=[], metavar="PATH", help="plugin library or folder to load")
    parser.add_argument(
        "--postgresql-uri", help="load the PostgreSQL index plugin with this ConnectionUri (postgresql://...)"
    )
    parser.add_argument("--timeout", type=float, default=DEFAULT_START_TIMEOUT, help="seconds to wait for /system")
    parser.add_argument("--verbose", action="store_true", help="start Orthanc with --verbose")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)

    if args.command == "start":
        users = parse_users(args.user)
        if args.username:
            if args.password is None:
                raise SystemExit("--username needs --password")
            users = {args.username: args.password, **users}
        server = LocalOrthanc(
            args.dir,
            http_port=args.port,
            dicom_port=args.dicom_port,
            enable_dicom=args.dicom,
            stable_age=args.stable_age,
            users=users,
            http_compression=not args.no_http_compression,
            storage_compression=args.storage_compression,
            overwrite_instances=args.overwrite_instances,
            sync_storage=not args.no_sync_storage,
            plugins=args.plugin,
            postgresql={"ConnectionUri": args.postgresql_uri} if args.postgresql_uri else None,
            start_timeout=args.timeout,
            verbose=args.verbose,
        )
        try:
            server.start()
        except OrthancError as error:
            print(error, file=sys.stderr)
            return 1
        server.detach()
        print(json.dumps({"url": server.url, "pid": server.pid, "dir": str(server.directory)}))
        return 0

    try:
        server = LocalOrthanc.from_directory(args.dir)
    except OrthancError as error:
        if args.command == "stop":
            print(json.dumps({"running": False, "dir": args.dir}))
            return 0
        print(error, file=sys.stderr)
        return 1

    if args.command == "stop":
        server.stop()
        print(json.dumps({"running": False, "dir": str(server.directory)}))
        return 0

    status: dict[str, Any] = {"running": server.is_running(), "pid": server.pid, "url": server.url}
    if status["running"]:
        try:
            system = server.system()
            status["version"] = system.get("Version")
            status["api_version"] = system.get("ApiVersion")
        except requests.RequestException as error:
            status["error"] = str(error)
    print(json.dumps(status))
    return 0 if status["running"] else 3


if __name__ == "__main__":
    sys.exit(main())
