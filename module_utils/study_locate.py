# -*- coding: utf-8 -*-
# Copyright: contributors to this project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Find where a study's files are: under Orthanc's StorageDirectory, and on which archive volumes.

Orthanc's default storage area keeps each attachment at StorageDirectory/AA/BB/UUID, where AA and BB
are the first two and the next two characters of the attachment UUID (Orthanc core,
OrthancFramework/Sources/FileStorage/FilesystemStorage.cpp, FilesystemStorage::GetPath). With
StorageCompression the file at that path is zlib-compressed, not DICOM, and with a storage area
plugin (S3, Azure, Google Cloud, advanced storage, PostgreSQL storage) there is no such file at all.
"""

from __future__ import annotations

import ntpath
import os
import posixpath
import re
from typing import Any

from ansible.module_utils.archive_catalog import Catalog
from ansible.module_utils.orthanc_client import OrthancClient, OrthancNotFound, require_orthanc_id

LOCATE_ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "server_name": {"type": "str"},
    "orthanc_study_ids": {"type": "list", "elements": "str", "default": []},
    "study_instance_uids": {"type": "list", "elements": "str", "default": []},
    "accession_numbers": {"type": "list", "elements": "str", "default": [], "no_log": True},
    "patient_ids": {"type": "list", "elements": "str", "default": [], "no_log": True},
    "storage_directory": {"type": "str"},
    "path_style": {"type": "str", "default": "auto", "choices": ["auto", "posix", "windows"]},
    "check_files": {"type": "bool", "default": False},
    "check_compression": {"type": "bool", "default": True},
    "use_catalog": {"type": "bool", "default": True},
    "include_identifiers": {"type": "bool", "default": False},
}

# Selection option, the DICOM tag /tools/find matches, and the catalog column.
SELECTORS = (
    ("study_instance_uids", "StudyInstanceUID", "study_instance_uid"),
    ("accession_numbers", "AccessionNumber", "accession_number"),
    ("patient_ids", "PatientID", "patient_id"),
)

WINDOWS_PATH = re.compile(r"^([A-Za-z]:|\\\\)|\\")
UUID_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class LocateError(Exception):
    """A study could not be located; the message names the value and the fix."""


def detect_path_style(storage_directory: str, requested: str = "auto") -> str:
    """Return 'windows' or 'posix' for the StorageDirectory, guessing from drive letters and backslashes on auto."""
    if requested != "auto":
        return requested
    return "windows" if WINDOWS_PATH.search(storage_directory or "") else "posix"


def attachment_path(uuid: str, storage_directory: str | None, style: str) -> str:
    """Return the file path of an attachment: StorageDirectory/AA/BB/UUID, or AA/BB/UUID without a StorageDirectory."""
    if not UUID_PATTERN.match(uuid or ""):
        raise LocateError(f"invalid attachment UUID {uuid!r} returned by Orthanc")
    join = ntpath.join if style == "windows" else posixpath.join
    relative = join(uuid[0:2], uuid[2:4], uuid)
    return join(storage_directory, relative) if storage_directory else relative


def selection_given(params: dict[str, Any]) -> bool:
    return bool(params.get("orthanc_study_ids")) or any(params.get(option) for option, _, _ in SELECTORS)


def find_live_studies(client: OrthancClient, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Return the studies in Orthanc that match any selection value, keyed by Orthanc ID."""
    found: dict[str, dict[str, Any]] = {}
    for study_id in params.get("orthanc_study_ids") or []:
        try:
            found[study_id] = client.study(require_orthanc_id(study_id.strip(), "study"))
        except OrthancNotFound:
            continue
    for option, tag, _ in SELECTORS:
        for value in params.get(option) or []:
            if not value.strip():
                continue
            # NOTE: /tools/find treats '*' and '?' as wildcards; a value holding them matches more studies.
            for study in client.find_studies({tag: value.strip()}):
                found[study["ID"]] = study
    return found


def find_archived_copies(catalog: Catalog, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the written and verified copies in the catalog that match any selection value."""
    base = {"server": params["server_name"]} if params.get("server_name") else {}
    rows: dict[int, dict[str, Any]] = {}
    lookups = [("orthanc_study_id", value) for value in params.get("orthanc_study_ids") or []]
    for option, _, column in SELECTORS:
        lookups.extend((column, value) for value in params.get(option) or [])
    for column, value in lookups:
        if value.strip():
            for row in catalog.find_copies({**base, column: value.strip()}, states=("written", "verified")):
                rows[row["id"]] = row
    return sorted(rows.values(), key=lambda row: row["id"])


def locate_live_study(client: OrthancClient, study: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Return the storage paths of one study's DICOM files, and whether they are plain files."""
    features = client.features()
    storage_directory = params.get("storage_directory")
    style = detect_path_style(storage_directory or "", params.get("path_style", "auto"))
    entry: dict[str, Any] = {
        "orthanc_id": study["ID"],
        "in_orthanc": True,
        "study_date": (study.get("MainDicomTags") or {}).get("StudyDate"),
        "path_style": style,
        "plain_files": True,
        "reason": "",
        "instances": [],
        "folders": [],
    }

    if features.storage_area_plugin:
        entry.update(plain_files=False, reason=(
            f"Orthanc stores attachments through the storage area plugin {features.storage_area_plugin}, "
            "so there are no files under StorageDirectory; get instances through the REST API "
            "(/instances/ID/file) instead"))
        return entry

    compressed = 0
    folders: set[str] = set()
    for item in client.study_instances(study["ID"]):
        uuid = item.get("FileUuid") or ""
        path = attachment_path(uuid, storage_directory, style)
        instance = {"orthanc_id": item["ID"], "uuid": uuid, "path": path, "size": item.get("FileSize")}
        if params.get("check_compression", True):
            info = client.instance_attachment_info(item["ID"])
            is_compressed = (info.get("CompressedSize") != info.get("UncompressedSize")
                             or info.get("CompressedMD5") != info.get("UncompressedMD5"))
            instance["compressed"] = is_compressed
            instance["stored_size"] = info.get("CompressedSize")
            compressed += 1 if is_compressed else 0
        if params.get("check_files"):
            instance["exists"] = os.path.isfile(path)
        folders.add(path.rsplit("\\" if style == "windows" else "/", 1)[0])
        entry["instances"].append(instance)

    entry["folders"] = sorted(folders)
    if compressed:
        entry.update(plain_files=False, reason=(
            f"{compressed} of {len(entry['instances'])} files are zlib-compressed by Orthanc (StorageCompression): "
            "the files at these paths are not DICOM; get instances through the REST API (/instances/ID/file)"))
    if params.get("check_files"):
        missing = [item["path"] for item in entry["instances"] if not item["exists"]]
        entry["missing_files"] = len(missing)
        if missing:
            entry["reason"] = (entry["reason"] + " " if entry["reason"] else "") + (
                f"{len(missing)} files are not at their path on this host, first {missing[0]}: check storage_directory, "
                "and that the module runs on the Orthanc host")
    if not storage_directory:
        entry["reason"] = (entry["reason"] + " " if entry["reason"] else "") + (
            "Paths are relative to the server's StorageDirectory: set storage_directory for full paths")
    return entry


def describe_archived(row: dict[str, Any], barcodes: dict[str, str | None], deleted: bool) -> dict[str, Any]:
    return {
        "orthanc_id": row["orthanc_study_id"],
        "server": row["server"],
        "study_date": row["study_date"],
        "volume_serial": row["volume_serial"],
        "barcode": barcodes.get(row["volume_serial"]),
        "path": row["path"],
        "manifest_path": row["manifest_path"],
        "state": row["state"],
        "instances": row["instance_count"],
        "bytes": row["container_bytes"] or row["study_bytes"],
        "written_at": row["written_at"],
        "verified_at": row["verified_at"],
        "deleted_from_orthanc": deleted,
    }
