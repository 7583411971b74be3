"""Helpers for the archive tests: put studies into a test Orthanc, build the archive pipeline, verify copies.

Importing this module makes `ansible.module_utils.NAME` resolve to the repository's module_utils,
as docs/CONTRACTS.md describes, so the tests run the same code that Ansible ships to the host.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import ansible.module_utils

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "module_utils") not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(REPO / "module_utils"))

from ansible.module_utils.archive_catalog import Catalog, SQLiteCatalog  # noqa: E402
from ansible.module_utils.archive_container import verify_container  # noqa: E402
from ansible.module_utils.archive_volume import Volume  # noqa: E402
from ansible.module_utils.orthanc_client import OrthancClient  # noqa: E402
from ansible.module_utils.study_export import StudyExporter  # noqa: E402

from tools import demo_data  # noqa: E402
from tools.demo_data import Patient, generate_study  # noqa: E402

SERVER = "testpacs"
STABLE_TIMEOUT = 30.0


def client_for(handle: Any, **kwargs: Any) -> OrthancClient:
    """Return an OrthancClient for a test Orthanc, with no retries unless kwargs ask for them."""
    username, password = handle.auth if handle.auth else (None, None)
    options = {"retries": 0, "timeout": 60.0}
    options.update(kwargs)
    return OrthancClient(handle.url, username=username, password=password, **options)


def put_study(handle: Any, shape: str = "tiny", *, study_date: str | None = "20100101", seed: int = 1,
              n_instances: int = 1, patient: Patient | None = None, overrides: dict[str, Any] | None = None,
              rows: int | None = None, columns: int | None = None, n_series: int | None = None) -> str:
    """Upload one generated study and return its Orthanc study ID."""
    study = generate_study(shape, n_instances=n_instances, study_date=study_date, seed=seed, patient=patient,
                           overrides=overrides, rows=rows, columns=columns, n_series=n_series)
    with demo_data.Uploader(handle.url, auth=handle.auth, threads=2) as uploader:
        results = demo_data.upload_study(uploader, study)
    study_ids = {result.study_id for result in results}
    assert len(study_ids) == 1, f"the instances of one generated study landed in {study_ids}"
    return study_ids.pop()


def wait_stable(handle: Any, study_ids: list[str], timeout: float = STABLE_TIMEOUT) -> None:
    """Poll until Orthanc reports every study as stable (StableAge is 1 s in the test servers)."""
    deadline = time.monotonic() + timeout
    pending = list(study_ids)
    while pending:
        pending = [study_id for study_id in pending if not handle.get_json(f"/studies/{study_id}")["IsStable"]]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"studies {pending} did not become stable within {timeout} s")
        time.sleep(0.3)


def protect_patient_of(handle: Any, study_id: str) -> str:
    """Protect the patient of a study with PUT /patients/{id}/protected; return the patient's Orthanc ID."""
    patient_id = handle.get_json(f"/studies/{study_id}")["ParentPatient"]
    response = handle.session.put(f"{handle.url}/patients/{patient_id}/protected", data="1", timeout=30)
    response.raise_for_status()
    return patient_id


def instance_ids(handle: Any, study_id: str) -> list[str]:
    return sorted(item["ID"] for item in handle.get_json(f"/studies/{study_id}/instances"))


def study_exists(handle: Any, study_id: str) -> bool:
    response = handle.session.get(f"{handle.url}/studies/{study_id}", timeout=30)
    if response.status_code == 404:
        return False
    response.raise_for_status()
    return True


def open_sqlite_catalog(folder: Path) -> SQLiteCatalog:
    return SQLiteCatalog(str(folder / "catalog.sqlite"))


def make_volume(folder: Path, reserve_bytes: int = 0) -> Volume:
    folder.mkdir(parents=True, exist_ok=True)
    return Volume(str(folder), reserve_bytes)


def make_exporter(client: OrthancClient, catalog: Catalog, volume: Volume, **kwargs: Any) -> StudyExporter:
    options = {"connections": 2, "buffer_bytes": 4 * 1024 * 1024, "required_copies": 1}
    options.update(kwargs)
    return StudyExporter(client, catalog, volume, SERVER, **options)


def verify_volume(catalog: Catalog, volume: Volume) -> dict[str, list[str]]:
    """Read back every written copy on the volume and mark it verified or failed, as archive_volume_verify does."""
    outcome: dict[str, list[str]] = {"verified": [], "failed": []}
    for row in catalog.copies_on_volume(volume.serial(), ("written",)):
        problems = verify_container(volume.absolute(row["path"]), row["container_sha256"],
                                    catalog.copy_instances(row["id"]))
        if problems:
            catalog.mark_failed(row["id"], "; ".join(problems))
            outcome["failed"].append(row["orthanc_study_id"])
        else:
            catalog.mark_verified(row["id"])
            outcome["verified"].append(row["orthanc_study_id"])
    return outcome


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def files_under(folder: Path) -> set[str]:
    """Return every path below folder, relative to it, folders included."""
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command and return it with text output; a timeout keeps a hung child from hanging the suite."""
    kwargs.setdefault("timeout", 300)
    return subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def require_orthanc_binary() -> None:
    from tools.orthanc_local import ORTHANC_BINARY

    if not Path(ORTHANC_BINARY).exists():
        import pytest

        pytest.fail(f"Orthanc is not installed at {ORTHANC_BINARY}: run `apt-get install orthanc`", pytrace=False)


def start_module_orthanc(tmp_path_factory: Any, **kwargs: Any) -> Any:
    """Start an Orthanc for one test module (StableAge 1 s) and return a conftest OrthancHandle."""
    from conftest import OrthancHandle
    from tools.orthanc_local import LocalOrthanc

    kwargs.setdefault("stable_age", 1)
    server = LocalOrthanc(tmp_path_factory.mktemp("orthanc-module"), **kwargs).start()
    return OrthancHandle(server, server.session())


def stop_module_orthanc(handle: Any) -> None:
    handle.session.close()
    handle.server.stop()
