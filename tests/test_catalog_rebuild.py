"""Catalog rebuild from volumes alone: a deleted catalog comes back with the same copies and instances."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import helpers_archive as h
import helpers_restore as r
from ansible.module_utils.archive_catalog import SQLiteCatalog

# Columns that record when and in which row something happened, not what the volume holds.
VOLATILE_COLUMNS = {"id", "started_at", "written_at", "verified_at", "failed_at", "failure", "state"}


@pytest.fixture
def volume(orthanc: Any, tmp_path: Path) -> dict[str, Any]:
    """Three studies archived and verified on one folder volume, then the catalog snapshot and deleted."""
    ids = [h.put_study(orthanc, "tiny", study_date=f"20{year:02d}0101", seed=9000 + year, n_instances=year % 3 + 1)
           for year in (1, 7, 12)]
    h.wait_stable(orthanc, ids)
    outcome = r.archive_verify_reclaim(orthanc, tmp_path, ids, reclaim=True)
    snapshot = catalog_entries(outcome["catalog_path"])
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(outcome["catalog_path"] + suffix):
            os.remove(outcome["catalog_path"] + suffix)
    return {"handle": orthanc, "ids": ids, "snapshot": snapshot, "root": tmp_path, **outcome}


def catalog_entries(path: str) -> dict[str, Any]:
    """Return the catalog's copies and their instances, keyed by Orthanc study ID, without volatile columns."""
    entries = {}
    with SQLiteCatalog(path) as catalog:
        for row in catalog._rows("SELECT * FROM copies WHERE state IN ('written', 'verified')"):
            instances = [{key: value for key, value in item.items() if key != "copy_id"}
                         for item in catalog.copy_instances(row["id"])]
            copy = {key: value for key, value in row.items() if key not in VOLATILE_COLUMNS}
            entries[row["orthanc_study_id"]] = {"copy": copy, "state": row["state"], "instances": instances}
    return entries


def rebuild_args(volume: dict[str, Any], **options: Any) -> dict[str, Any]:
    args = {"catalog_path": volume["catalog_path"], "volume_paths": [volume["volume_path"]],
            "lock_dir": volume["lock_dir"]}
    args.update(options)
    return args


def test_verified_rebuild_matches_original(volume: dict[str, Any]) -> None:
    result = r.run_module("archive_catalog_rebuild", rebuild_args(volume, verify=True))
    rebuilt = catalog_entries(volume["catalog_path"])

    assert result["changed"] is True
    assert result["added"] == 3
    assert result["failed"] == 0
    assert set(rebuilt) == set(volume["snapshot"])
    for study_id, original in volume["snapshot"].items():
        assert rebuilt[study_id]["copy"] == original["copy"], study_id
        assert rebuilt[study_id]["instances"] == original["instances"], study_id
        assert rebuilt[study_id]["state"] == "verified"


def test_manifest_rebuild_is_written_only(volume: dict[str, Any]) -> None:
    result = r.run_module("archive_catalog_rebuild", rebuild_args(volume))
    rebuilt = catalog_entries(volume["catalog_path"])

    assert result["added"] == 3
    for study_id, original in volume["snapshot"].items():
        assert rebuilt[study_id]["state"] == "written"
        assert rebuilt[study_id]["copy"]["container_sha256"] is None
        assert rebuilt[study_id]["instances"] == original["instances"]


def test_second_run_changes_nothing(volume: dict[str, Any]) -> None:
    r.run_module("archive_catalog_rebuild", rebuild_args(volume, verify=True))
    again = r.run_module("archive_catalog_rebuild", rebuild_args(volume, verify=True))

    assert again["changed"] is False
    assert again["volumes"][0]["unchanged"] == 3


def test_verify_upgrades_written_copies(volume: dict[str, Any]) -> None:
    r.run_module("archive_catalog_rebuild", rebuild_args(volume))
    result = r.run_module("archive_catalog_rebuild", rebuild_args(volume, verify=True))

    assert result["changed"] is True
    assert result["verified"] == 3
    assert {entry["state"] for entry in catalog_entries(volume["catalog_path"]).values()} == {"verified"}


def test_check_mode_reports_contents(volume: dict[str, Any]) -> None:
    result = r.run_module("archive_catalog_rebuild", rebuild_args(volume), check_mode=True)
    contents = result["volumes"][0]["containers"]

    assert result["added"] == 3
    assert sorted(item["orthanc_id"] for item in contents) == sorted(volume["ids"])
    assert all(item["server"] == r.SERVER for item in contents)
    assert catalog_entries(volume["catalog_path"]) == {}


def test_missing_side_manifest_read_from_container(volume: dict[str, Any]) -> None:
    manifests = sorted(Path(volume["volume_path"]).rglob("*.json"))
    manifests = [path for path in manifests if path.name != ".orthanc-archive-volume.json"]
    manifests[0].unlink()
    result = r.run_module("archive_catalog_rebuild", rebuild_args(volume))

    assert result["added"] == 3
    assert result["failed"] == 0


def test_damaged_container_is_not_verified(volume: dict[str, Any]) -> None:
    container = sorted(Path(volume["volume_path"]).rglob("*.tar"))[0]
    data = bytearray(container.read_bytes())
    data[1500] ^= 0xFF
    container.write_bytes(bytes(data))
    result = r.run_module("archive_catalog_rebuild", rebuild_args(volume, verify=True))

    assert result["failed"] == 1
    assert result["added"] == 2
    assert container.stem not in catalog_entries(volume["catalog_path"])


def test_rebuilt_catalog_restores(volume: dict[str, Any]) -> None:
    r.run_module("archive_catalog_rebuild", rebuild_args(volume, verify=True))
    result = r.run_module("orthanc_study_restore", {
        **r.connection(volume["handle"]), "catalog_path": volume["catalog_path"], "server_name": r.SERVER,
        "volume_paths": [volume["volume_path"]], "orthanc_study_ids": volume["ids"]})

    assert result["restored"] == 3
    assert sorted(volume["handle"].get_json("/studies")) == sorted(volume["ids"])


def test_empty_folder_is_no_volume(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = r.run_module("archive_catalog_rebuild", {"catalog_path": str(tmp_path / "catalog.sqlite"),
                                                     "volume_paths": [str(tmp_path / "empty")],
                                                     "lock_dir": str(tmp_path / "locks")})

    assert result["failed"] is True
    assert "holds no archive volume" in result["msg"]
