"""Restore against real Orthanc servers: archive, verify, reclaim, restore, and compare every instance."""

from __future__ import annotations

import os
import shutil
import sqlite3
import tarfile
from pathlib import Path
from typing import Any

import pytest

import helpers_archive as h
import helpers_restore as r
from ansible.module_utils.archive_catalog import SQLiteCatalog
from ansible.module_utils.archive_volume import Volume
from ansible.module_utils.study_restore import order_on_tape
from tools.demo_data import Patient

PATIENT_ID = "RESTORE-PAT-7731"


@pytest.fixture
def archived(orthanc: Any, tmp_path: Path) -> dict[str, Any]:
    """Three studies (two of one patient) archived, verified and deleted from the test Orthanc."""
    patient = Patient(patient_id=PATIENT_ID, name="Restore^Test", birth_date="19600101", sex="O")
    ids = {
        "ct": h.put_study(orthanc, "ct", study_date="20030303", seed=7001, n_instances=5, n_series=2,
                          rows=64, columns=64, patient=patient),
        "mr": h.put_study(orthanc, "mr", study_date="20040404", seed=7002, n_instances=3, rows=64, columns=64,
                          patient=patient),
        "other": h.put_study(orthanc, "tiny", study_date="20100101", seed=7003, n_instances=2),
    }
    h.wait_stable(orthanc, list(ids.values()))
    originals = r.original_files(orthanc, list(ids.values()))
    outcome = r.archive_verify_reclaim(orthanc, tmp_path, list(ids.values()))
    assert orthanc.get_json("/studies") == []
    return {"handle": orthanc, "ids": ids, "originals": originals, "root": tmp_path, **outcome}


def restore_args(archived: dict[str, Any], handle: Any = None, **options: Any) -> dict[str, Any]:
    target = handle or archived["handle"]
    args = {**r.connection(target), "catalog_path": archived["catalog_path"], "server_name": r.SERVER,
            "volume_paths": [archived["volume_path"]]}
    args.update(options)
    return args


def stored_files(handle: Any, study_ids: list[str]) -> dict[str, bytes]:
    return r.original_files(handle, study_ids)


def test_playbook_restores_identical_instances(archived: dict[str, Any]) -> None:
    handle = archived["handle"]
    study_ids = sorted(archived["ids"].values())
    extra = {**r.playbook_vars(handle, archived), "restore_orthanc_study_ids": study_ids}
    process = r.run_playbook("restore.yml", extra, archived["root"])

    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-2000:]
    restored = stored_files(handle, study_ids)
    assert set(restored) == set(archived["originals"])
    for instance_id, original in archived["originals"].items():
        assert restored[instance_id] == original, f"instance {instance_id} differs from the original"


def test_restore_records_and_skips_present(archived: dict[str, Any]) -> None:
    first = r.run_module("orthanc_study_restore", restore_args(archived, orthanc_study_ids=[archived["ids"]["ct"]]))
    second = r.run_module("orthanc_study_restore", restore_args(archived, orthanc_study_ids=[archived["ids"]["ct"]]))
    with SQLiteCatalog(archived["catalog_path"]) as catalog:
        restores = catalog._rows("SELECT * FROM restores")

    assert first["changed"] is True
    assert first["restored"] == 1
    assert first["instances_uploaded"] == 5
    assert second["changed"] is False
    assert second["present"] == 1
    assert second["studies"][0]["status"] == "present"
    assert len(restores) == 1
    assert restores[0]["instances_restored"] == 5
    assert restores[0]["target_server"] == r.SERVER


def test_restore_by_patient_hides_identifier(archived: dict[str, Any]) -> None:
    result = r.run_module("orthanc_study_restore", restore_args(archived, patient_ids=[PATIENT_ID]))

    assert result["restored"] == 2
    assert {item["orthanc_id"] for item in result["studies"]} == {archived["ids"]["ct"], archived["ids"]["mr"]}
    assert PATIENT_ID not in str(result)
    assert "patient_id" not in result["studies"][0]
    assert not h.study_exists(archived["handle"], archived["ids"]["other"])


def test_restore_by_date_range(archived: dict[str, Any]) -> None:
    result = r.run_module("orthanc_study_restore", restore_args(
        archived, study_date_from="20040101", study_date_to="20101231"))

    assert {item["orthanc_id"] for item in result["studies"]} == {archived["ids"]["mr"], archived["ids"]["other"]}
    assert result["restored"] == 2


def test_check_mode_lists_cartridges(archived: dict[str, Any]) -> None:
    serial = Volume(archived["volume_path"]).serial(create=False)
    result = r.run_module("orthanc_study_restore", restore_args(
        archived, volume_paths=[], study_instance_uids=[], orthanc_study_ids=list(archived["ids"].values())),
        check_mode=True)

    assert result["changed"] is True
    assert result["would_restore"] == 3
    assert result["not_mounted"] == [serial]
    assert result["studies"][0]["mounted"] is False
    assert result["cartridges_needed"][0]["studies"] == 3
    assert archived["handle"].get_json("/studies") == []


def test_check_mode_counts_would_restore(archived: dict[str, Any]) -> None:
    result = r.run_module("orthanc_study_restore", restore_args(
        archived, orthanc_study_ids=list(archived["ids"].values())), check_mode=True)

    assert result["would_restore"] == 3
    assert result["changed"] is True
    assert archived["handle"].get_json("/studies") == []


def test_missing_cartridge_names_barcode(archived: dict[str, Any]) -> None:
    serial = Volume(archived["volume_path"]).serial(create=False)
    with SQLiteCatalog(archived["catalog_path"]) as catalog:
        catalog.upsert_volume(serial, "folder", barcode="TEST01L9")
    result = r.run_module("orthanc_study_restore", restore_args(
        archived, volume_paths=[], orthanc_study_ids=[archived["ids"]["ct"]]))

    assert result["failed"] is True
    assert "TEST01L9" in result["msg"]
    assert result["not_mounted"] == ["TEST01L9"]
    assert archived["handle"].get_json("/studies") == []


def test_restore_to_another_server(archived: dict[str, Any], orthanc_factory: Any) -> None:
    other = orthanc_factory()
    result = r.run_module("orthanc_study_restore", restore_args(
        archived, handle=other, target_server_name="other", orthanc_study_ids=[archived["ids"]["mr"]]))
    restored = stored_files(other, [archived["ids"]["mr"]])

    assert result["restored"] == 1
    assert archived["handle"].get_json("/studies") == []
    assert len(restored) == 3
    for instance_id, data in restored.items():
        assert data == archived["originals"][instance_id]


def test_partly_present_uploads_missing(archived: dict[str, Any]) -> None:
    handle = archived["handle"]
    study_id = archived["ids"]["ct"]
    for instance_id in _instances_of(archived, study_id)[:2]:
        handle.session.post(f"{handle.url}/instances", data=archived["originals"][instance_id], timeout=60).raise_for_status()
    result = r.run_module("orthanc_study_restore", restore_args(archived, orthanc_study_ids=[study_id]))

    assert result["restored"] == 1
    assert result["instances_uploaded"] == 3
    assert len(h.instance_ids(handle, study_id)) == 5


def _instances_of(archived: dict[str, Any], study_id: str) -> list[str]:
    with SQLiteCatalog(archived["catalog_path"]) as catalog:
        copy = catalog.find_copies({"orthanc_study_id": study_id})[0]
        return [row["orthanc_instance_id"] for row in catalog.copy_instances(copy["id"])]


def test_damaged_member_is_not_uploaded(archived: dict[str, Any]) -> None:
    study_id = archived["ids"]["mr"]
    with SQLiteCatalog(archived["catalog_path"]) as catalog:
        copy = catalog.find_copies({"orthanc_study_id": study_id})[0]
    path = Path(archived["volume_path"]) / copy["path"]
    with tarfile.open(path) as tar:
        members = [info for info in tar.getmembers() if info.name.endswith(".dcm")]
        offset = members[-1].offset_data + members[-1].size - 10
        damaged_instance = members[-1].name.rsplit("/", 1)[1].removesuffix(".dcm")
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    result = r.run_module("orthanc_study_restore", restore_args(archived, orthanc_study_ids=[study_id]))

    assert result["failed"] is True
    assert result["studies"][0]["status"] == "failed"
    assert "MD5" in result["studies"][0]["reason"]
    present = h.instance_ids(archived["handle"], study_id) if h.study_exists(archived["handle"], study_id) else []
    assert damaged_instance not in present
    with SQLiteCatalog(archived["catalog_path"]) as catalog:
        assert catalog._rows("SELECT * FROM restores") == []


def test_unverified_copy_is_not_used(archived: dict[str, Any]) -> None:
    with SQLiteCatalog(archived["catalog_path"]) as catalog:
        catalog.conn.execute("UPDATE copies SET state = 'written'")
        catalog.conn.commit()
    result = r.run_module("orthanc_study_restore", restore_args(archived, orthanc_study_ids=[archived["ids"]["ct"]]))

    assert result["changed"] is False
    assert result["studies"] == []
    assert "no verified copy" in result["msg"]


def test_invalid_date_names_value(archived: dict[str, Any]) -> None:
    result = r.run_module("orthanc_study_restore", restore_args(archived, study_date_from="2004-01-01"))

    assert result["failed"] is True
    assert "2004-01-01" in result["msg"]
    assert "YYYYMMDD" in result["msg"]


def test_tape_order_follows_start_block(tmp_path: Path) -> None:
    volume_path = tmp_path / "volume"
    volume_path.mkdir()
    volume = Volume(str(volume_path))
    rows = []
    for index, block in enumerate((900, 12, 450)):
        name = f"study{index}.tar"
        (volume_path / name).write_bytes(b"x")
        try:
            os.setxattr(volume_path / name, "user.ltfs.startblock", str(block).encode())
        except OSError:
            pytest.skip(f"{tmp_path} does not keep user.* extended attributes")
        rows.append({"id": index + 1, "path": name})

    ordered = order_on_tape(rows, volume)

    assert [row["path"] for row in ordered] == ["study1.tar", "study2.tar", "study0.tar"]


def test_container_copy_on_second_volume(archived: dict[str, Any], tmp_path: Path) -> None:
    """A copy on a mounted second volume is chosen over one on an unmounted volume."""
    study_id = archived["ids"]["other"]
    second = tmp_path / "second"
    shutil.copytree(archived["volume_path"], second)
    (second / ".orthanc-archive-volume.json").write_text('{"serial": "DIRSECOND"}', encoding="utf-8")
    with SQLiteCatalog(archived["catalog_path"]) as catalog:
        copy = catalog.find_copies({"orthanc_study_id": study_id})[0]
        study = {key: copy[key] for key in ("server", "orthanc_study_id", "study_instance_uid", "patient_id",
                                            "accession_number", "study_date", "instance_count", "study_bytes",
                                            "last_update", "content_key")}
        copy_id = catalog.start_copy(study, "DIRSECOND", copy["path"], copy["manifest_path"])
        catalog.finish_copy(copy_id, copy["container_bytes"], copy["container_sha256"], catalog.copy_instances(copy["id"]))
        catalog.mark_verified(copy_id)
    result = r.run_module("orthanc_study_restore", restore_args(
        archived, volume_paths=[str(second)], orthanc_study_ids=[study_id]))

    assert result["restored"] == 1
    assert result["studies"][0]["volume_serial"] == "DIRSECOND"
    assert result["not_mounted"] == []


def test_restored_study_held_from_selection(archived: dict[str, Any]) -> None:
    # A restored study has a new LastUpdate, so only the hold keeps the next archive run from taking it again.
    handle, study_id = archived["handle"], archived["ids"]["ct"]
    restored = r.run_module("orthanc_study_restore", restore_args(archived, orthanc_study_ids=[study_id]))
    assert restored["restored"] == 1
    h.wait_stable(handle, [study_id])
    selection = {**r.connection(handle), "catalog_path": archived["catalog_path"], "server_name": r.SERVER,
                 "before_date": "2012-01-01"}

    within_hold = r.run_module("orthanc_study_info", selection)
    off = r.run_module("orthanc_study_info", {**selection, "keep_restored_days": 0})
    connection = sqlite3.connect(archived["catalog_path"])
    with connection:
        connection.execute("UPDATE restores SET restored_at = '2001-01-01T00:00:00Z'")
    connection.close()
    expired = r.run_module("orthanc_study_info", selection)
    negative = r.run_module("orthanc_study_info", {**selection, "keep_restored_days": -1})

    assert within_hold["study_ids"] == []
    assert within_hold["skipped"] == {"restored recently": 1}
    assert off["study_ids"] == [study_id]
    assert expired["study_ids"] == [study_id]
    assert negative["failed"] is True
    assert "invalid keep_restored_days -1" in negative["msg"]
