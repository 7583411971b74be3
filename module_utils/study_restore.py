# -*- coding: utf-8 -*-
# Copyright: contributors to this project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore archived studies from their containers back into an Orthanc server.

Planning picks, for each selected study, the newest archived content and one verified copy of it,
preferring copies on volumes that are already mounted, then the volumes that hold the most of the
selected studies, so that as few cartridges as possible are loaded. Each volume is then read in
tape order (LTFS start block), and each container from start to end in one pass.

Every instance is checked against the catalog's size, MD5 and SHA-256 before it is uploaded, and
uploaded alone: Orthanc holds a whole request body in memory, so one POST per instance keeps the
server's memory bounded by the largest instance. After the upload, Orthanc's stored MD5 of every
instance and the study's instance list are compared with the catalog.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import os
import tarfile
import threading
from typing import Any, BinaryIO, Callable, Iterable

from ansible.module_utils.archive_catalog import Catalog
from ansible.module_utils.archive_container import MANIFEST_NAME, READ_CHUNK_SIZE, TAR_BUFFER_SIZE, drop_cache
from ansible.module_utils.archive_volume import Volume, VolumeError
from ansible.module_utils.module_support import transfer_settings_problem
from ansible.module_utils.orthanc_client import OrthancClient, OrthancNotFound

LTFS_START_BLOCK = "user.ltfs.startblock"

RESTORE_ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "server_name": {"type": "str"},
    "target_server_name": {"type": "str"},
    "orthanc_study_ids": {"type": "list", "elements": "str", "default": []},
    "study_instance_uids": {"type": "list", "elements": "str", "default": []},
    "accession_numbers": {"type": "list", "elements": "str", "default": [], "no_log": True},
    "patient_ids": {"type": "list", "elements": "str", "default": [], "no_log": True},
    "study_date_from": {"type": "str"},
    "study_date_to": {"type": "str"},
    "volume_paths": {"type": "list", "elements": "path", "default": []},
    "missing_volumes": {"type": "str", "default": "fail", "choices": ["fail", "skip"]},
    "connections": {"type": "int", "default": 2},
    "buffer_bytes": {"type": "int", "default": 256 * 1024 * 1024},
    "max_studies": {"type": "int", "default": 0},
    "include_identifiers": {"type": "bool", "default": False},
    "log_path": {"type": "path"},
}

# Selection options that name a catalog column, and the column each one matches.
LIST_SELECTORS = (
    ("orthanc_study_ids", "orthanc_study_id"),
    ("study_instance_uids", "study_instance_uid"),
    ("accession_numbers", "accession_number"),
    ("patient_ids", "patient_id"),
)


class RestoreError(Exception):
    """A study could not be restored; the message names the study by Orthanc ID and the cause."""


def start_block(volume: Volume, relative_path: str) -> int | None:
    """Return the LTFS start block of a file on the volume, or None on a plain folder or without the xattr."""
    try:
        value = os.getxattr(volume.absolute(relative_path), LTFS_START_BLOCK)
        return int(value.decode("ascii", "replace").strip())
    except (OSError, ValueError, VolumeError):
        return None


def check_date(value: str | None, option: str) -> None:
    if value is not None and (len(value) != 8 or not value.isdigit()):
        raise RestoreError(f"invalid {option} {value!r}: expected a DICOM date YYYYMMDD, for example 20190131")


def select_copies(catalog: Catalog, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the verified copies that match the selection options.

    Values within one option are alternatives (OR); different options narrow each other (AND).
    """
    check_date(params.get("study_date_from"), "study_date_from")
    check_date(params.get("study_date_to"), "study_date_to")
    lists = [(column, [value.strip() for value in params.get(option) or [] if value.strip()])
             for option, column in LIST_SELECTORS]
    lists = [(column, values) for column, values in lists if values]
    if not lists and not params.get("study_date_from") and not params.get("study_date_to"):
        raise RestoreError(
            "no study selected: set orthanc_study_ids, study_instance_uids, accession_numbers, patient_ids, "
            "or study_date_from/study_date_to"
        )

    base: dict[str, Any] = {}
    if params.get("server_name"):
        base["server"] = params["server_name"]
    if params.get("study_date_from"):
        base["study_date_from"] = params["study_date_from"]
    if params.get("study_date_to"):
        base["study_date_to"] = params["study_date_to"]

    # The first list goes to SQL, one query per value; the other lists filter the rows found.
    rows: dict[int, dict[str, Any]] = {}
    if lists:
        column, values = lists[0]
        for value in values:
            for row in catalog.find_copies({**base, column: value}, states=("verified",)):
                rows[row["id"]] = row
    else:
        for row in catalog.find_copies(base, states=("verified",)):
            rows[row["id"]] = row
    for column, values in lists[1:]:
        allowed = set(values)
        rows = {key: row for key, row in rows.items() if row.get(column) in allowed}
    return sorted(rows.values(), key=lambda row: row["id"])


def newest_content(copies: Iterable[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Group copies by (server, Orthanc study ID), keeping only the copies of each study's newest content.

    The newest content is the one whose copy was started last: later archive runs write a study
    again only when its content changed in Orthanc.
    """
    by_study: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in copies:
        by_study.setdefault((row["server"], row["orthanc_study_id"]), []).append(row)
    newest: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for key, rows in by_study.items():
        latest = max(rows, key=lambda row: (row["started_at"] or "", row["id"]))
        newest[key] = [row for row in rows if row["content_key"] == latest["content_key"]]
    return newest


def choose_copies(groups: dict[tuple[str, str], list[dict[str, Any]]],
                  mounted: dict[str, Volume]) -> list[dict[str, Any]]:
    """Pick one copy per study: on a mounted volume if possible, else on the volume needed by most studies."""
    chosen: dict[tuple[str, str], dict[str, Any]] = {}
    waiting: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for key, rows in groups.items():
        on_mounted = [row for row in rows if row["volume_serial"] in mounted]
        if on_mounted:
            chosen[key] = on_mounted[0]
        else:
            waiting[key] = rows

    # Greedy set cover: load first the cartridge that contains the most of the remaining studies.
    while waiting:
        counts: dict[str, int] = {}
        for rows in waiting.values():
            for serial in {row["volume_serial"] for row in rows}:
                counts[serial] = counts.get(serial, 0) + 1
        best = max(sorted(counts), key=lambda serial: counts[serial])
        for key in [key for key, rows in waiting.items() if any(row["volume_serial"] == best for row in rows)]:
            chosen[key] = next(row for row in waiting.pop(key) if row["volume_serial"] == best)
    return sorted(chosen.values(), key=lambda row: (row["volume_serial"], row["id"]))


def describe_copy(row: dict[str, Any], include_identifiers: bool) -> dict[str, Any]:
    entry = {
        "orthanc_id": row["orthanc_study_id"],
        "server": row["server"],
        "study_date": row["study_date"],
        "instances": row["instance_count"],
        "bytes": row["study_bytes"],
        "volume_serial": row["volume_serial"],
        "path": row["path"],
        "copy_id": row["id"],
    }
    if include_identifiers:
        entry.update(study_instance_uid=row["study_instance_uid"], patient_id=row["patient_id"],
                     accession_number=row["accession_number"])
    return entry


class _UploadBudget:
    """Bound the bytes of instances read from tape that wait for, or are in, an upload."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._condition = threading.Condition()

    def take(self, size: int) -> None:
        with self._condition:
            # An instance larger than the whole budget still goes through, alone.
            while self.used and self.used + size > self.limit:
                self._condition.wait()
            self.used += size

    def give_back(self, size: int) -> None:
        with self._condition:
            self.used -= size
            self._condition.notify_all()


class _HashingReader(io.RawIOBase):
    """Hash every byte read from the container file, for the whole-container SHA-256."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self.raw.readinto(buffer) or 0
        if count:
            self.sha256.update(memoryview(buffer)[:count])
        return count


class StudyRestorer:
    """Restore chosen copies into one target Orthanc, recording each restore in the catalog."""

    def __init__(self, client: OrthancClient, catalog: Catalog, target_server: str, connections: int = 2,
                 buffer_bytes: int = 256 * 1024 * 1024, log: Callable[[str], None] = lambda line: None):
        problem = transfer_settings_problem(connections, buffer_bytes)
        if problem:
            raise RestoreError(problem)
        self.client = client
        self.catalog = catalog
        self.target_server = target_server
        self.connections = connections
        self.buffer_bytes = buffer_bytes
        self.log = log

    def instances_in_target(self, study_id: str) -> set[str]:
        try:
            return {item["ID"] for item in self.client.study_instances(study_id)}
        except OrthancNotFound:
            return set()

    def missing_instances(self, copy: dict[str, Any]) -> tuple[list[dict[str, Any]], set[str]]:
        """Return the catalog's instance rows of a copy and the IDs of those the target lacks."""
        expected = self.catalog.copy_instances(copy["id"])
        if len(expected) != int(copy["instance_count"]):
            raise RestoreError(
                f"study {copy['orthanc_study_id']}: the catalog lists {len(expected)} instances for copy {copy['id']} "
                f"but the study had {copy['instance_count']}; rebuild the catalog entry from the volume"
            )
        present = self.instances_in_target(copy["orthanc_study_id"])
        return expected, {row["orthanc_instance_id"] for row in expected} - present

    def restore(self, copy: dict[str, Any], volume: Volume) -> dict[str, Any]:
        """Restore one study from one copy; return status present or restored with counts."""
        study_id = copy["orthanc_study_id"]
        expected, missing = self.missing_instances(copy)
        result = {"orthanc_id": study_id, "volume_serial": copy["volume_serial"], "path": copy["path"],
                  "instances": len(expected), "instances_uploaded": 0, "bytes_read": 0}
        if not missing:
            result.update(status="present", reason="the target already holds every archived instance")
            return result

        uploaded = self._read_and_upload(copy, volume, expected, missing, result)
        self._check_target(copy, expected)
        self.catalog.record_restore(copy, self.target_server, uploaded)
        result.update(status="restored", instances_uploaded=uploaded)
        self.log(f"restored study {study_id} instances={uploaded} from volume={copy['volume_serial']} "
                 f"path={copy['path']} to {self.target_server}")
        return result

    def _read_and_upload(self, copy: dict[str, Any], volume: Volume, expected: list[dict[str, Any]],
                         missing: set[str], result: dict[str, Any]) -> int:
        """Read the container once, check every member, and upload the missing instances; return the count."""
        study_id = copy["orthanc_study_id"]
        by_member = {row["member_name"]: row for row in expected}
        seen: set[str] = set()
        budget = _UploadBudget(self.buffer_bytes)
        futures: list[concurrent.futures.Future] = []
        uploaded = 0

        with concurrent.futures.ThreadPoolExecutor(max_workers=self.connections) as pool:

            def handle_member(name: str, data: bytes) -> None:
                nonlocal uploaded
                result["bytes_read"] += len(data)
                if name == f"{study_id}/{MANIFEST_NAME}":
                    self._check_manifest(copy, data)
                    return
                row = by_member.get(name)
                if row is None:
                    raise RestoreError(f"member {name} is not in the catalog's list for this copy")
                self._check_member(row, data)
                seen.add(name)
                if row["orthanc_instance_id"] in missing:
                    budget.take(len(data))
                    futures.append(pool.submit(self._upload, row, data, budget))
                # Stop reading as soon as an upload has failed.
                while futures and futures[0].done():
                    futures.pop(0).result()
                    uploaded += 1

            try:
                container_sha256 = self._read_members(copy, volume, handle_member)
                while futures:
                    futures.pop(0).result()
                    uploaded += 1
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

        absent = sorted(set(by_member) - seen)
        if absent:
            raise RestoreError(f"{len(absent)} instances listed in the catalog are missing from the container, "
                               f"first {absent[0]}")
        if copy["container_sha256"] and container_sha256 != copy["container_sha256"]:
            # Every instance matched its own checksums, so what was uploaded is right; the container
            # differs elsewhere (tar headers or manifest), which archive_volume_verify reports.
            self.log(f"container {copy['path']} SHA-256 differs from the catalog although every instance matched")
        return uploaded

    def _read_members(self, copy: dict[str, Any], volume: Volume,
                      handle_member: Callable[[str, bytes], None]) -> str:
        """Pass each member of the container to handle_member in one sequential pass; return the file's SHA-256."""
        path = volume.absolute(copy["path"])
        if not volume.is_ltfs:
            # A plain folder may still have the container in the page cache; read what is on disk.
            drop_cache(path)
        try:
            with open(path, "rb", buffering=0) as raw:
                hashing = _HashingReader(raw)
                stream = io.BufferedReader(hashing, buffer_size=READ_CHUNK_SIZE)
                with tarfile.open(fileobj=stream, mode="r|", bufsize=TAR_BUFFER_SIZE) as tar:
                    for info in tar:
                        handle = tar.extractfile(info) if info.isfile() else None
                        if handle is None:
                            raise RestoreError(f"unexpected non-file member {info.name!r} in {copy['path']}")
                        # NOTE: one instance is held in memory whole, because Orthanc needs it whole
                        # in one request body anyway; buffer_bytes bounds how many wait at once.
                        handle_member(info.name, handle.read())
                while stream.read(READ_CHUNK_SIZE):
                    pass
        except FileNotFoundError:
            raise RestoreError(f"container {copy['path']} is missing from volume {copy['volume_serial']}") from None
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise RestoreError(f"cannot read container {copy['path']} on volume {copy['volume_serial']}: {exc}") from None
        return hashing.sha256.hexdigest()

    def _check_manifest(self, copy: dict[str, Any], data: bytes) -> None:
        try:
            manifest = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise RestoreError(f"the manifest in {copy['path']} is not valid JSON: {exc}") from None
        if manifest.get("orthanc_study_id") != copy["orthanc_study_id"]:
            raise RestoreError(f"the manifest in {copy['path']} names study {manifest.get('orthanc_study_id')}, "
                               f"the catalog expects {copy['orthanc_study_id']}")
        if manifest.get("content_key") != copy["content_key"]:
            raise RestoreError(f"the manifest in {copy['path']} contains another content of the study than the catalog's copy")

    def _check_member(self, row: dict[str, Any], data: bytes) -> None:
        if len(data) != int(row["size"]):
            raise RestoreError(f"member {row['member_name']}: {len(data)} bytes on tape, the catalog expects {row['size']}")
        md5 = hashlib.md5(data).hexdigest()
        if md5 != row["md5"]:
            raise RestoreError(f"member {row['member_name']}: MD5 {md5} on tape, the catalog expects {row['md5']}")
        sha256 = hashlib.sha256(data).hexdigest()
        if sha256 != row["sha256"]:
            raise RestoreError(f"member {row['member_name']}: SHA-256 {sha256} on tape, the catalog expects {row['sha256']}")

    def _upload(self, row: dict[str, Any], data: bytes, budget: _UploadBudget) -> None:
        try:
            answer = self.client.upload_instance(data)
        finally:
            budget.give_back(len(data))
        if not isinstance(answer, dict) or answer.get("ID") != row["orthanc_instance_id"]:
            found = answer.get("ID") if isinstance(answer, dict) else answer
            raise RestoreError(f"instance {row['orthanc_instance_id']}: Orthanc stored it as {found!r}")
        if answer.get("Status") not in ("Success", "AlreadyStored"):
            raise RestoreError(f"instance {row['orthanc_instance_id']}: Orthanc returned status {answer.get('Status')!r}")

    def _check_target(self, copy: dict[str, Any], expected: list[dict[str, Any]]) -> None:
        """Compare the target's instances and their stored MD5s with the catalog."""
        study_id = copy["orthanc_study_id"]
        present = self.instances_in_target(study_id)
        absent = [row["orthanc_instance_id"] for row in expected if row["orthanc_instance_id"] not in present]
        if absent:
            raise RestoreError(f"after the upload the target lacks {len(absent)} of {len(expected)} instances, "
                               f"first {absent[0]}")
        statistics = self.client.study_statistics(study_id)
        if int(statistics.get("CountInstances", -1)) < len(expected):
            raise RestoreError(f"the target counts {statistics.get('CountInstances')} instances, "
                               f"the copy holds {len(expected)}")
        for row in expected:
            info = self.client.instance_attachment_info(row["orthanc_instance_id"])
            if info.get("UncompressedMD5") != row["md5"]:
                raise RestoreError(f"instance {row['orthanc_instance_id']}: Orthanc stored MD5 "
                                   f"{info.get('UncompressedMD5')}, the catalog expects {row['md5']}")


def order_on_tape(copies: list[dict[str, Any]], volume: Volume) -> list[dict[str, Any]]:
    """Sort the copies of one volume by LTFS start block, so the drive reads forward only."""
    blocks = {row["id"]: start_block(volume, row["path"]) for row in copies}
    return sorted(copies, key=lambda row: (blocks[row["id"]] is None, blocks[row["id"]] or 0, row["path"]))


def mounted_volumes(paths: Iterable[str]) -> dict[str, Volume]:
    """Open each volume path and map its serial to it; a path without an archive volume is an error."""
    volumes: dict[str, Volume] = {}
    for path in paths:
        volume = Volume(path)
        serial = volume.serial(create=False)
        if serial is None:
            raise RestoreError(f"{path} contains no archive volume (no LTFS serial and no marker file): "
                               "check that the cartridge is mounted there")
        volumes[serial] = volume
    return volumes


def cartridges_needed(chosen: list[dict[str, Any]], mounted: dict[str, Volume],
                      catalog: Catalog) -> list[dict[str, Any]]:
    """List the volumes the chosen copies are on, with barcode, study count, bytes and whether mounted."""
    barcodes = {row["serial"]: row.get("barcode") for row in catalog.volumes()}
    needed: dict[str, dict[str, Any]] = {}
    for row in chosen:
        serial = row["volume_serial"]
        entry = needed.setdefault(serial, {"volume_serial": serial, "barcode": barcodes.get(serial),
                                           "mounted": serial in mounted, "studies": 0, "bytes": 0})
        entry["studies"] += 1
        entry["bytes"] += int(row["container_bytes"] or row["study_bytes"] or 0)
    return [needed[serial] for serial in sorted(needed)]

