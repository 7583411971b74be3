"""Security: credentials stay out of output and files, TLS is verified by default, archive files are private,
and identifying tags stay out of output and logs unless enabled."""

from __future__ import annotations

import socket
import ssl
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.driver import run_module
from tests.helpers_playbook import ArchiveSite
from tools import demo_data

PASSWORD = "Sec-ret_Pw-93c1"
PATIENT = demo_data.Patient(patient_id="SEC-PID-4711", name="Demo^Secretname", birth_date="19610203", sex="F")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tools.orthanc_local import LocalOrthanc

    server = LocalOrthanc(tmp_path_factory.mktemp("orthanc-security"), users={"archiver": PASSWORD},
                          stable_age=1, sync_storage=False).start()
    yield server
    server.stop()


def load_studies(server: Any, count: int = 3) -> list[str]:
    ids = set()
    with demo_data.Uploader(server.url, auth=("archiver", PASSWORD), threads=2) as uploader:
        for seed in range(count):
            study = demo_data.generate_study("tiny", n_instances=2, study_date=f"200{seed}0101", seed=900 + seed,
                                             patient=PATIENT)
            ids |= {result.study_id for result in demo_data.upload_study(uploader, study)}
    return sorted(ids)


def tree_bytes(folder: Path) -> Iterator[tuple[Path, bytes]]:
    for path in folder.rglob("*"):
        if path.is_file():
            yield path, path.read_bytes()


def test_playbook_keeps_password_out(orthanc: Any, tmp_path: Path) -> None:
    """Run archive.yml with reclaim at -vvv. The password appears in no output and in no file that the run wrote."""
    load_studies(orthanc)
    site = ArchiveSite(tmp_path / "site")
    site.add_server("pacs-sec", orthanc.url, orthanc_archive_username="archiver",
                    orthanc_archive_password=PASSWORD, orthanc_archive_only_stable=False)
    run = site.run("archive.yml", "-vvv", "-e", "archive_reclaim=true")
    assert run.returncode == 0, run.output[-4000:]
    assert run.server("pacs-sec")["deleted"] > 0
    assert PASSWORD not in run.output
    assert "Secretname" not in run.output
    assert "SEC-PID-4711" not in run.output
    for path, data in tree_bytes(site.directory):
        if path.name == "inventory.yml":
            continue  # the test wrote the password there, as a vault or AWX credential would provide it
        assert PASSWORD.encode() not in data, f"the password is in {path}"
    for folder in (site.directory / "logs", site.reports):
        for path, data in tree_bytes(folder):
            assert b"Secretname" not in data, f"the patient name is in {path}"
            assert b"SEC-PID-4711" not in data, f"the PatientID is in {path}"


def test_archive_files_private(orthanc: Any, tmp_path: Path) -> None:
    """Catalog, containers, manifests and logs are readable only by the archive's user."""
    study_ids = load_studies(orthanc)
    volume = tmp_path / "volume"
    volume.mkdir()
    common = {"catalog_path": str(tmp_path / "catalog" / "catalog.sqlite"), "lock_dir": str(tmp_path / "lock"),
              "log_path": str(tmp_path / "log" / "archive.log")}
    connection = {"url": orthanc.url, "username": "archiver", "password": PASSWORD, "retries": 0}
    archived = run_module("orthanc_study_archive", {**connection, **common, "server_name": "pacs-sec",
                                                    "studies": study_ids, "volume_path": str(volume)})
    assert archived["failed_count"] == 0, archived
    verified = run_module("archive_volume_verify", {**common, "volume_path": str(volume)})
    assert verified["verified_count"] >= len(study_ids)

    private = [tmp_path / "log" / "archive.log", *(tmp_path / "catalog").glob("catalog.sqlite*"),
               *(volume / "orthanc-archive").rglob("*.tar"), *(volume / "orthanc-archive").rglob("*.json")]
    assert any(path.suffix == ".tar" for path in private)
    for path in private:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} has mode {mode:o}"
    for folder in (tmp_path / "catalog", tmp_path / "log"):
        mode = stat.S_IMODE(folder.stat().st_mode)
        assert mode & 0o077 == 0, f"{folder} has mode {mode:o}"


def test_identifiers_only_when_enabled(orthanc: Any, tmp_path: Path) -> None:
    load_studies(orthanc)
    connection = {"url": orthanc.url, "username": "archiver", "password": PASSWORD, "retries": 0}
    query = {**connection, "server_name": "pacs-sec", "before_date": "2015-01-01", "only_stable": False,
             "catalog_path": str(tmp_path / "catalog.sqlite"), "oldest_count": 2}
    hidden = run_module("orthanc_study_info", query)
    assert hidden["selected_count"] > 0
    assert "SEC-PID-4711" not in str(hidden)
    assert "Secretname" not in str(hidden)
    assert "19610203" not in str(hidden)

    shown = run_module("orthanc_study_info", {**query, "include_identifiers": True})
    assert "SEC-PID-4711" in str(shown["studies"])


# -- TLS -----------------------------------------------------------------------------------------

def make_certificate(folder: Path) -> tuple[Path, Path]:
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(key),
                    "-out", str(cert), "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def tls_proxy(target_port: int, cert: Path, key: Path) -> tuple[int, Callable[[], None]]:
    """Start a TLS-terminating TCP proxy on 127.0.0.1 in front of target_port; return its port and a stop function."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    listener = socket.create_server(("127.0.0.1", 0))
    stopping = threading.Event()

    def pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                try:
                    end.close()
                except OSError:
                    pass

    def serve() -> None:
        while not stopping.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                secure = context.wrap_socket(client, server_side=True)
            except (ssl.SSLError, OSError):
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", target_port))
            threading.Thread(target=pipe, args=(secure, upstream), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, secure), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()

    def stop() -> None:
        stopping.set()
        listener.close()

    return listener.getsockname()[1], stop


def test_tls_verified_by_default(orthanc: Any, tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    port, stop = tls_proxy(orthanc.http_port, cert, key)
    url = f"https://127.0.0.1:{port}"
    query = {"url": url, "username": "archiver", "password": PASSWORD, "retries": 0, "server_name": "pacs-tls",
             "before_date": "2015-01-01", "only_stable": False, "catalog_path": str(tmp_path / "catalog.sqlite")}
    try:
        rejected = run_module("orthanc_study_info", query)
        trusted = run_module("orthanc_study_info", {**query, "ca_path": str(cert)})
        unverified = run_module("orthanc_study_info", {**query, "validate_certs": False})
    finally:
        stop()

    assert rejected.get("failed") is True
    assert "TLS verification failed" in rejected["msg"]
    assert "ca_path" in rejected["msg"]
    assert not trusted.get("failed"), trusted.get("msg")
    assert trusted["server"]["version"]
    assert not unverified.get("failed"), unverified.get("msg")
