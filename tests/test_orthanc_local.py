"""Tests of tools/orthanc_local.py against the real Orthanc binary."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests

from tools import demo_data
from tools.orthanc_local import (
    LOOPBACK,
    POSTGRESQL_INDEX_PLUGIN,
    LocalOrthanc,
    OrthancError,
    find_free_port,
    is_orthanc_process,
)

if TYPE_CHECKING:
    from conftest import OrthancHandle

REPO_ROOT = Path(__file__).resolve().parents[1]


def upload_tiny_study(handle: OrthancHandle, seed: int) -> str:
    study = demo_data.generate_study("tiny", seed=seed)
    with demo_data.Uploader(handle.url, auth=handle.auth, threads=1) as uploader:
        results = demo_data.upload_study(uploader, study)
    return str(results[0].study_id)


def test_start_writes_files_and_answers(orthanc: OrthancHandle) -> None:
    server = orthanc.server
    system = orthanc.get_json("/system")

    assert system["Version"] == "1.10.1"
    assert server.url == f"http://{LOOPBACK}:{server.http_port}"
    assert server.pid is not None
    assert is_orthanc_process(server.pid, server.config_path)
    assert server.log_path.exists()
    assert server.storage_dir.is_dir()
    assert server.index_dir.is_dir()

    config = json.loads(server.config_path.read_text())
    assert config["RemoteAccessAllowed"] is False
    assert config["DicomServerEnabled"] is False
    assert config["StableAge"] == 1
    assert config["Plugins"] == []
    assert config["StorageDirectory"] == str(server.storage_dir)


def test_stop_ends_process_and_frees_port(orthanc_factory: Callable[..., OrthancHandle]) -> None:
    server = orthanc_factory().server
    pid = server.pid
    assert pid is not None

    server.stop()

    assert not server.is_running()
    assert not server.pid_path.exists()
    assert not is_orthanc_process(pid, server.config_path)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/system", timeout=2)
    server.stop()


def test_restart_keeps_port_and_data(orthanc: OrthancHandle) -> None:
    study_id = upload_tiny_study(orthanc, seed=11)
    url_before = orthanc.url

    orthanc.server.restart()

    assert orthanc.url == url_before
    assert orthanc.get_json("/studies") == [study_id]


def test_context_manager_starts_and_stops(tmp_path: Path) -> None:
    with LocalOrthanc(tmp_path / "orthanc") as server:
        assert server.system()["ApiVersion"] == 16
        pid = server.pid
    assert pid is not None
    assert not is_orthanc_process(pid, server.config_path)


def test_authentication_on(orthanc_factory: Callable[..., OrthancHandle]) -> None:
    handle = orthanc_factory(users={"alice": "secret-a", "bob": "secret-b"})

    assert requests.get(f"{handle.url}/system", timeout=5).status_code == 401
    assert requests.get(f"{handle.url}/system", auth=("alice", "wrong"), timeout=5).status_code == 401
    assert requests.get(f"{handle.url}/system", auth=("bob", "secret-b"), timeout=5).status_code == 200
    assert handle.session.get(f"{handle.url}/system", timeout=5).status_code == 200


def test_authentication_without_users_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one user"):
        LocalOrthanc(tmp_path, authentication=True)


def test_authentication_off(orthanc_shared: OrthancHandle) -> None:
    assert orthanc_shared.auth is None
    assert requests.get(f"{orthanc_shared.url}/system", timeout=5).status_code == 200


def test_stable_age_applies(orthanc_shared: OrthancHandle) -> None:
    study_id = upload_tiny_study(orthanc_shared, seed=1012)
    deadline = time.monotonic() + 10
    stable = False
    while time.monotonic() < deadline and not stable:
        stable = orthanc_shared.get_json(f"/studies/{study_id}")["IsStable"]
        time.sleep(0.2)
    assert stable


def test_port_in_use_shows_log_tail(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind((LOOPBACK, 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        server = LocalOrthanc(tmp_path / "orthanc", http_port=port, start_timeout=10)

        with pytest.raises(OrthancError) as raised:
            server.start()

    message = str(raised.value)
    assert "last lines of" in message
    assert "already in use" in message
    assert not server.is_running()


def test_build_config_options(tmp_path: Path) -> None:
    server = LocalOrthanc(
        tmp_path,
        http_port=8999,
        enable_dicom=True,
        dicom_port=11112,
        stable_age=2,
        http_compression=False,
        storage_compression=True,
        overwrite_instances=True,
        postgresql={"ConnectionUri": "postgresql://orthanc@127.0.0.1:5432/orthanc"},
        extra_config={"MaximumStorageSize": 100},
    )

    config = server.build_config()

    assert config["HttpPort"] == 8999
    assert config["DicomServerEnabled"] is True
    assert config["DicomPort"] == 11112
    assert config["DicomAlwaysAllowStore"] is False
    assert config["HttpCompressionEnabled"] is False
    assert config["StorageCompression"] is True
    assert config["OverwriteInstances"] is True
    assert config["AuthenticationEnabled"] is False
    assert config["Plugins"] == [POSTGRESQL_INDEX_PLUGIN]
    assert config["PostgreSQL"]["EnableIndex"] is True
    assert config["PostgreSQL"]["ConnectionUri"].startswith("postgresql://")
    assert config["MaximumStorageSize"] == 100


def test_dicom_port_on_loopback_free_port(orthanc_factory: Callable[..., OrthancHandle]) -> None:
    handle = orthanc_factory(enable_dicom=True)

    assert handle.server.dicom_port is not None
    assert handle.get_json("/system")["DicomPort"] == handle.server.dicom_port
    with socket.create_connection((LOOPBACK, handle.server.dicom_port), timeout=5):
        pass


def test_find_free_port_is_bindable() -> None:
    port = find_free_port()
    with socket.socket() as probe:
        probe.bind((LOOPBACK, port))


def test_cli_start_status_stop(tmp_path: Path) -> None:
    directory = tmp_path / "cli"
    script = [sys.executable, str(REPO_ROOT / "tools" / "orthanc_local.py")]

    started = subprocess.run(
        [*script, "start", "--dir", str(directory), "--stable-age", "1", "--username", "u", "--password", "p"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    try:
        assert started.returncode == 0, started.stderr
        info = json.loads(started.stdout)
        assert requests.get(f"{info['url']}/system", auth=("u", "p"), timeout=5).status_code == 200

        status = subprocess.run([*script, "status", "--dir", str(directory)],
                                capture_output=True, text=True, timeout=60, check=False)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["version"] == "1.10.1"
    finally:
        stopped = subprocess.run([*script, "stop", "--dir", str(directory)],
                                 capture_output=True, text=True, timeout=60, check=False)

    assert stopped.returncode == 0, stopped.stderr
    after = subprocess.run([*script, "status", "--dir", str(directory)],
                           capture_output=True, text=True, timeout=60, check=False)
    assert after.returncode == 3
    assert json.loads(after.stdout)["running"] is False
