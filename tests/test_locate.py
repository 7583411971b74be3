"""Locate against real Orthanc servers: storage paths of a live study, cartridges of an archived one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import helpers_archive as h
import helpers_restore as r
from ansible.module_utils.study_locate import attachment_path, detect_path_style
from tools.demo_data import Patient

PATIENT_ID = "LOCATE-PAT-5512"


@pytest.fixture
def located(orthanc: Any, tmp_path: Path) -> dict[str, Any]:
    """One live study and one archived and deleted study of the same patient."""
    patient = Patient(patient_id=PATIENT_ID, name="Locate^Test", birth_date="19700101", sex="O")
    live = h.put_study(orthanc, "ct", study_date="20180808", seed=8001, n_instances=3, rows=32, columns=32,
                       patient=patient)
    gone = h.put_study(orthanc, "tiny", study_date="20020202", seed=8002, n_instances=2, patient=patient)
    h.wait_stable(orthanc, [live, gone])
    outcome = r.archive_verify_reclaim(orthanc, tmp_path, [gone])
    return {"handle": orthanc, "live": live, "gone": gone, "root": tmp_path, **outcome}


def locate_args(located: dict[str, Any], **options: Any) -> dict[str, Any]:
    args = {**r.connection(located["handle"]), "catalog_path": located["catalog_path"], "server_name": r.SERVER,
            "storage_directory": str(located["handle"].storage_dir)}
    args.update(options)
    return args


def test_live_study_paths_exist(located: dict[str, Any]) -> None:
    result = r.run_module("orthanc_study_locate", locate_args(located, orthanc_study_ids=[located["live"]],
                                                              check_files=True))
    entry = result["live"][0]
    storage = str(located["handle"].storage_dir)

    assert result["changed"] is False
    assert entry["plain_files"] is True
    assert entry["missing_files"] == 0
    assert len(entry["instances"]) == 3
    for instance in entry["instances"]:
        uuid = instance["uuid"]
        assert instance["path"] == f"{storage}/{uuid[:2]}/{uuid[2:4]}/{uuid}"
        assert instance["exists"] is True
        assert instance["compressed"] is False
        assert Path(instance["path"]).read_bytes() == located["handle"].session.get(
            f"{located['handle'].url}/instances/{instance['orthanc_id']}/file", timeout=60).content


def test_patient_lookup_finds_both_places(located: dict[str, Any]) -> None:
    result = r.run_module("orthanc_study_locate", locate_args(located, patient_ids=[PATIENT_ID]))

    assert [entry["orthanc_id"] for entry in result["live"]] == [located["live"]]
    assert [entry["orthanc_id"] for entry in result["archived"]] == [located["gone"]]
    assert result["archived"][0]["deleted_from_orthanc"] is True
    assert result["archived"][0]["state"] == "verified"
    assert result["archived"][0]["path"].endswith(f"/2002/{located['gone']}.tar")
    assert PATIENT_ID not in str(result)


def test_windows_storage_directory(located: dict[str, Any]) -> None:
    result = r.run_module("orthanc_study_locate", locate_args(
        located, orthanc_study_ids=[located["live"]], storage_directory="D:\\Orthanc\\Storage"))
    entry = result["live"][0]
    uuid = entry["instances"][0]["uuid"]

    assert entry["path_style"] == "windows"
    assert entry["instances"][0]["path"] == f"D:\\Orthanc\\Storage\\{uuid[:2]}\\{uuid[2:4]}\\{uuid}"
    assert entry["folders"][0].startswith("D:\\Orthanc\\Storage\\")


def test_compressed_storage_has_no_plain_files(orthanc_factory: Any, tmp_path: Path) -> None:
    server = orthanc_factory(storage_compression=True)
    study_id = h.put_study(server, "tiny", study_date="20150505", seed=8003, n_instances=1)
    result = r.run_module("orthanc_study_locate", {**r.connection(server), "orthanc_study_ids": [study_id],
                                                   "use_catalog": False})
    entry = result["live"][0]

    assert entry["plain_files"] is False
    assert "compressed" in entry["reason"]
    assert entry["instances"][0]["compressed"] is True


def test_unknown_study_not_found(located: dict[str, Any]) -> None:
    result = r.run_module("orthanc_study_locate", locate_args(located, study_instance_uids=["1.2.3.4.5.6.7"]))

    assert result["not_found"] is True
    assert result["live"] == []


def test_missing_selection_fails(located: dict[str, Any]) -> None:
    result = r.run_module("orthanc_study_locate", locate_args(located))

    assert result["failed"] is True
    assert "no study selected" in result["msg"]


def test_playbook_answers_live_and_archived(located: dict[str, Any]) -> None:
    extra = {**r.playbook_vars(located["handle"], located),
             "locate_orthanc_study_ids": [located["live"], located["gone"]],
             "locate_storage_directory": str(located["handle"].storage_dir)}
    process = r.run_playbook("locate.yml", extra, located["root"])

    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-2000:]
    assert str(located["handle"].storage_dir) in process.stdout
    assert f"{located['gone']}.tar" in process.stdout
    assert "deleted_from_orthanc: true" in process.stdout


@pytest.mark.parametrize(("directory", "style"), [
    ("/var/lib/orthanc/db", "posix"),
    ("C:\\Orthanc", "windows"),
    ("\\\\server\\share\\orthanc", "windows"),
    ("relative/db", "posix"),
])
def test_path_style_detection(directory: str, style: str) -> None:
    assert detect_path_style(directory) == style


def test_attachment_path_rejects_bad_uuid() -> None:
    with pytest.raises(Exception, match="invalid attachment UUID"):
        attachment_path("../../etc/passwd", "/var/lib/orthanc/db", "posix")
