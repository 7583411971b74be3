"""Regression tests for the bugs the fault suite found, each reduced to its smallest case."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.faults import invariant
from tests.faults.driver import run_module
from tests.faults.proxy import FaultProxy, Rule
from tests.helpers_archive import client_for, put_study

SERVER = "regress"


def pipeline_args(handle: Any, tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    connection = {"url": handle.url, "retries": 0}
    common = {"catalog_path": str(tmp_path / "catalog.sqlite"), "lock_dir": str(tmp_path / "lock")}
    return connection, common


def test_rearchive_keeps_older_container(orthanc: Any, tmp_path: Path) -> None:
    """A reclaim interrupted between two instance DELETEs, then a new run: the first copy stays readable."""
    study_id = put_study(orthanc, "tiny", n_instances=2, seed=41)
    instances = sorted(item["ID"] for item in orthanc.get_json(f"/studies/{study_id}/instances"))
    originals = invariant.Originals()
    for instance_id in instances:
        info = orthanc.get_json(f"/instances/{instance_id}/attachments/dicom/info")
        originals.add(study_id, instance_id, info["UncompressedMD5"])
    volume = tmp_path / "volume"
    volume.mkdir()
    connection, common = pipeline_args(orthanc, tmp_path)

    def archive_and_verify() -> dict[str, Any]:
        archived = run_module("orthanc_study_archive", {**connection, **common, "server_name": SERVER,
                                                        "studies": [study_id], "volume_path": str(volume)})
        assert archived["archived_count"] == 1, archived
        verified = run_module("archive_volume_verify", {**common, "volume_path": str(volume)})
        assert verified["failed_count"] == 0, verified
        return archived["results"][0]

    first = archive_and_verify()
    # What a reclaim killed after its first DELETE leaves behind: one instance gone from Orthanc.
    orthanc.session.delete(f"{orthanc.url}/instances/{instances[0]}", timeout=30).raise_for_status()
    second = archive_and_verify()

    assert second["path"] != first["path"]
    assert invariant.container_md5s(str(volume / first["path"])) == originals.studies[study_id]
    lost = invariant.check(originals, orthanc.url, None, {"catalog_path": common["catalog_path"]}, SERVER,
                           lambda serial, path: str(volume / path))
    assert lost == {}


def test_truncated_answer_retried(orthanc_factory: Callable[..., Any]) -> None:
    handle = orthanc_factory()
    proxy = FaultProxy(handle.url).start()
    try:
        proxy.rules = [Rule("truncate", 1, method="GET", path_prefix="/system")]
        client = client_for(handle, retries=1, retry_backoff=0.0)
        client.url = proxy.url
        features = client.features()
    finally:
        proxy.stop()
    assert features.version_text
    assert proxy.injected[0][3] == "truncate"
    assert proxy.by_method["GET"] == 2
