# -*- coding: utf-8 -*-
# Copyright: contributors to this project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Rebuild catalog entries from what archive volumes hold: their containers and manifests.

Each container written by this project has its manifest beside it (same name, .json) and as its
last tar member, so a volume describes itself: study, content key, and every instance's member
name, size, MD5 and SHA-256. What a volume cannot tell is what happened elsewhere: which studies were
deleted from Orthanc (the deletions table), which were restored (the restores table), and which
copies failed. Those are not rebuilt.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from ansible.module_utils.archive_catalog import Catalog
from ansible.module_utils.archive_container import (
    MANIFEST_FORMAT,
    ContainerError,
    compare_members,
    drop_cache,
    read_container,
)
from ansible.module_utils.archive_volume import ARCHIVE_ROOT, Volume
from ansible.module_utils.orthanc_client import is_orthanc_id

REBUILD_ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "volume_paths": {"type": "list", "elements": "path", "required": True},
    "verify": {"type": "bool", "default": False},
    "barcodes": {"type": "dict", "default": {}},
    "lock_dir": {"type": "path", "default": "/run/lock"},
    "lock_timeout": {"type": "float", "default": 600.0},
    "log_path": {"type": "path"},
}

MANIFEST_KEYS = ("orthanc_study_id", "study_instance_uid", "last_update", "content_key", "instances", "source")
INSTANCE_KEYS = ("orthanc_instance_id", "orthanc_series_id", "member_name", "size", "md5", "sha256")


class RebuildError(Exception):
    """A volume cannot be read for a rebuild."""


def scan_volume(volume: Volume) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Return (containers, problems): every finished container below ARCHIVE_ROOT with its manifest path.

    A .partial file is a write that never finished and is ignored; a manifest without its container
    is reported as a problem.
    """
    containers: list[dict[str, str]] = []
    problems: list[dict[str, str]] = []
    root = os.path.join(volume.path, ARCHIVE_ROOT)
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        names = set(files)
        for name in sorted(files):
            relative = os.path.relpath(os.path.join(folder, name), volume.path)
            stem, extension = os.path.splitext(name)
            if extension == ".tar":
                containers.append({"path": relative, "manifest_path": os.path.join(os.path.dirname(relative), stem + ".json")})
            elif extension == ".json" and stem + ".tar" not in names:
                problems.append({"path": relative, "problem": "manifest without its container"})
    return containers, problems


def read_manifest(volume: Volume, item: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Return the manifest of a container, and the container's read-back when it had to be read for it.

    The manifest beside the container is read when present; otherwise the container is read to its
    last member, which is the same manifest.
    """
    path = volume.absolute(item["manifest_path"])
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle), None
    except FileNotFoundError:
        content = read_container(volume.absolute(item["path"]))
        return content["manifest"], content
    except (OSError, ValueError) as exc:
        raise ContainerError(f"manifest {item['manifest_path']} cannot be read: {exc}") from None


def copy_from_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """Return the study fields of a catalog copy from a manifest, after checking its shape."""
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ContainerError(f"manifest format {manifest.get('format')!r} is not {MANIFEST_FORMAT}")
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise ContainerError(f"manifest lacks {', '.join(missing)}")
    if not is_orthanc_id(manifest["orthanc_study_id"]):
        raise ContainerError(f"manifest names an invalid Orthanc study ID {manifest['orthanc_study_id']!r}")
    for item in manifest["instances"]:
        absent = [key for key in INSTANCE_KEYS if key not in item]
        if absent:
            raise ContainerError(f"an instance entry of the manifest lacks {', '.join(absent)}")
    study = manifest.get("study") or {}
    patient = manifest.get("patient") or {}
    return {
        "server": str((manifest.get("source") or {}).get("server") or ""),
        "orthanc_study_id": manifest["orthanc_study_id"],
        "study_instance_uid": manifest["study_instance_uid"] or "",
        "patient_id": patient.get("PatientID"),
        "accession_number": study.get("AccessionNumber"),
        "study_date": study.get("StudyDate"),
        "instance_count": int(manifest.get("instance_count", len(manifest["instances"]))),
        "study_bytes": int(manifest.get("study_bytes", sum(int(item["size"]) for item in manifest["instances"]))),
        "last_update": manifest["last_update"],
        "content_key": manifest["content_key"],
    }


class CatalogRebuilder:
    """Add to a catalog the copies found on volumes, as written, or verified after a full read-back."""

    def __init__(self, catalog: Catalog, verify: bool = False, log: Callable[[str], None] = lambda line: None):
        self.catalog = catalog
        self.verify = verify
        self.log = log

    def rebuild(self, volume: Volume, barcode: str | None, check_mode: bool) -> dict[str, Any]:
        serial = volume.serial(create=False)
        if serial is None:
            raise RebuildError(f"{volume.path} holds no archive volume (no LTFS serial and no marker file): "
                               "check that the cartridge is mounted there")
        containers, problems = scan_volume(volume)
        summary: dict[str, Any] = {
            "volume_serial": serial, "path": volume.path, "kind": "ltfs" if volume.is_ltfs else "folder",
            "barcode": barcode, "containers": [], "added": 0, "verified": 0, "unchanged": 0, "failed": 0,
            "bytes": 0, "problems": problems,
        }
        for item in containers:
            entry = self._rebuild_one(volume, serial, item, check_mode)
            summary["containers"].append(entry)
            summary["bytes"] += int(entry.get("bytes") or 0)
            for action in ("added", "verified", "unchanged", "failed"):
                summary[action] += 1 if entry["action"] == action else 0
        summary["volume_updated"] = self._update_volume(volume, serial, summary["kind"], barcode, check_mode)
        return summary

    def _update_volume(self, volume: Volume, serial: str, kind: str, barcode: str | None, check_mode: bool) -> bool:
        """Record the volume in the catalog's volume list unless it is there already with the same facts."""
        wanted = {"kind": kind, "name": volume.name(), "barcode": barcode,
                  "capacity_bytes": volume.capacity_bytes(), "available_bytes": volume.available_bytes()}
        known = next((row for row in self.catalog.volumes() if row["serial"] == serial), None)
        # Free space changes with every write anywhere on a shared filesystem, so it alone does not
        # count as a change. Values left unset (None) keep what the catalog has, as upsert_volume does.
        if known is not None and all(value is None or known.get(key) == value for key, value in wanted.items()
                                     if key != "available_bytes"):
            return False
        if not check_mode:
            self.catalog.upsert_volume(serial, kind, wanted["name"], barcode, wanted["capacity_bytes"],
                                       wanted["available_bytes"])
        return True

    def _rebuild_one(self, volume: Volume, serial: str, item: dict[str, str], check_mode: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {"path": item["path"], "manifest_path": item["manifest_path"]}
        try:
            manifest, content = read_manifest(volume, item)
            study = copy_from_manifest(manifest)
        except (ContainerError, OSError) as exc:
            entry.update(action="failed", problems=[str(exc)])
            self.log(f"cannot rebuild {item['path']} on volume {serial}: {exc}")
            return entry
        container_path = volume.absolute(item["path"])
        entry.update(orthanc_id=study["orthanc_study_id"], server=study["server"], study_date=study["study_date"],
                     instances=study["instance_count"], bytes=os.path.getsize(container_path))

        existing = [row for row in self.catalog.copies_of_study(study["server"], study["orthanc_study_id"])
                    if row["content_key"] == study["content_key"] and row["volume_serial"] == serial]
        known = existing[0] if existing and existing[0]["state"] in ("written", "verified") else None
        if known is not None and (known["state"] == "verified" or not self.verify):
            entry.update(action="unchanged", state=known["state"])
            return entry

        problems: list[str] = []
        sha256 = None
        if self.verify:
            if content is None:
                drop_cache(container_path)
                try:
                    content = read_container(container_path)
                except ContainerError as exc:
                    content = None
                    problems.append(str(exc))
            if content is not None:
                problems.extend(compare_members(content["members"], manifest["instances"], "the manifest's"))
                sha256 = content["sha256"]
                if content["manifest"].get("content_key") != study["content_key"]:
                    problems.append("the manifest inside the container differs from the one beside it")
        if problems:
            entry.update(action="failed", problems=problems[:10])
            self.log(f"container {item['path']} on volume {serial} failed its read-back: {problems[0]}")
            return entry

        state = "verified" if self.verify else "written"
        entry.update(action="verified" if known is not None else "added", state=state)
        if check_mode:
            return entry
        if known is not None:
            self.catalog.mark_verified(known["id"])
        else:
            copy_id = self.catalog.start_copy(study, serial, item["path"], item["manifest_path"])
            self.catalog.finish_copy(copy_id, entry["bytes"], sha256, manifest["instances"])
            if self.verify:
                self.catalog.mark_verified(copy_id)
        self.log(f"rebuilt study {study['orthanc_study_id']} from {item['path']} on volume {serial} as {state}")
        return entry
