# -*- coding: utf-8 -*-
# Copyright: contributors to this project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Export one Orthanc study into a container on a volume, check it, and record it in the catalog.

Pipeline: several threads download instances over keep-alive connections (each download is
checked against Orthanc's stored MD5 and size) into a prefetch buffer bounded in bytes, while one
writer appends them to the tar in a fixed order. An instance larger than half the buffer is
streamed by the writer itself, so memory stays bounded whatever the study size.
"""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import time
from typing import Any, Callable, Iterator

from ansible.module_utils.archive_catalog import Catalog
from ansible.module_utils.archive_container import (
    ContainerError,
    ContainerWriter,
    member_name,
    verify_container,
    write_manifest_file,
)
from ansible.module_utils.archive_volume import Volume
from ansible.module_utils.module_support import transfer_settings_problem
from ansible.module_utils.orthanc_client import OrthancClient, OrthancError, require_orthanc_id

TOOL_NAME = "orthanc-tape-archive"
TOOL_VERSION = "0.1.0"

# Per-member tar overhead: a 512-byte header, a pax header record for long names, and padding.
TAR_MEMBER_OVERHEAD = 3 * 512
TAR_END_OVERHEAD = 20 * 512
MANIFEST_BYTES_PER_INSTANCE = 600

EXPORT_ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "connections": {"type": "int", "default": 4},
    "buffer_bytes": {"type": "int", "default": 64 * 1024 * 1024},
    "required_copies": {"type": "int", "default": 1},
    "read_back": {"type": "bool", "default": True},
}

STUDY_TAGS = ("StudyInstanceUID", "StudyDate", "StudyTime", "StudyDescription", "AccessionNumber", "StudyID",
              "InstitutionName", "ReferringPhysicianName")
PATIENT_TAGS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex")


class ExportError(Exception):
    """A study could not be exported; the copy is recorded as failed and nothing is deleted."""


class VolumeFull(ExportError):
    """The study does not fit in what is left of the volume."""


class StudyChanged(ExportError):
    """The study changed in Orthanc while it was exported; the next run exports it again."""


def content_key(last_update: str, instance_ids: list[str]) -> str:
    """Return a digest of what a study holds: its LastUpdate and the set of its instance IDs."""
    digest = hashlib.sha256(last_update.encode("ascii", "replace"))
    for instance_id in sorted(instance_ids):
        digest.update(b"\n" + instance_id.encode("ascii"))
    return digest.hexdigest()


def estimate_container_bytes(instances: list[dict[str, Any]]) -> int:
    total = sum(int(item["FileSize"]) for item in instances)
    return (total + len(instances) * (TAR_MEMBER_OVERHEAD + 511 + MANIFEST_BYTES_PER_INSTANCE)
            + TAR_END_OVERHEAD + 64 * 1024)


def describe_study(client: OrthancClient, server: str, study_id: str) -> dict[str, Any]:
    """Read what the export needs of a study: tags, series, instances in archive order, content key."""
    require_orthanc_id(study_id, "study")
    study = client.study(study_id)
    last_update = client.study_last_update(study_id)
    series = {item["ID"]: item for item in client.study_series(study_id)}
    instances = client.study_instances(study_id)
    for item in instances:
        require_orthanc_id(item.get("ID"), "instance")
        require_orthanc_id(item.get("ParentSeries"), "series")

    def order(item: dict[str, Any]) -> tuple[str, int, str]:
        index = item.get("IndexInSeries")
        return (item["ParentSeries"], index if isinstance(index, int) else 0, item["ID"])

    instances.sort(key=order)
    tags = study.get("MainDicomTags") or {}
    patient_tags = study.get("PatientMainDicomTags") or {}
    return {
        "server": server,
        "orthanc_study_id": study_id,
        "study_instance_uid": tags.get("StudyInstanceUID") or "",
        "patient_id": patient_tags.get("PatientID"),
        "accession_number": tags.get("AccessionNumber"),
        "study_date": tags.get("StudyDate"),
        "instance_count": len(instances),
        "study_bytes": sum(int(item["FileSize"]) for item in instances),
        "last_update": last_update,
        "content_key": content_key(last_update, [item["ID"] for item in instances]),
        "tags": {name: tags.get(name) for name in STUDY_TAGS if name in tags},
        "patient_tags": {name: patient_tags.get(name) for name in PATIENT_TAGS if name in patient_tags},
        "patient_orthanc_id": study.get("ParentPatient"),
        "series": series,
        "instances": instances,
    }


class _Download:
    """One instance fetched into memory and checked against Orthanc's stored size and MD5."""

    def __init__(self, data: bytes, md5: str, sha256: str):
        self.data = data
        self.md5 = md5
        self.sha256 = sha256


class StudyExporter:
    """Export studies of one server to one volume, recording each copy in the catalog."""

    def __init__(self, client: OrthancClient, catalog: Catalog, volume: Volume, server: str,
                 connections: int = 4, buffer_bytes: int = 64 * 1024 * 1024, required_copies: int = 1,
                 log: Callable[[str], None] = lambda line: None, read_back: bool = True):
        problem = transfer_settings_problem(connections, buffer_bytes)
        if problem:
            raise ExportError(problem)
        self.client = client
        self.catalog = catalog
        self.volume = volume
        self.server = server
        self.connections = connections
        self.buffer_bytes = buffer_bytes
        self.required_copies = required_copies
        self.log = log
        self.read_back = read_back
        self.volume_serial = volume.serial()

    # -- decisions ------------------------------------------------------------------------------

    def existing_copy(self, study: dict[str, Any]) -> dict[str, Any] | None:
        """Return a good copy of this exact content that makes writing it again pointless, if any."""
        good = [
            row for row in self.catalog.copies_of_study(self.server, study["orthanc_study_id"], ("written", "verified"))
            if row["content_key"] == study["content_key"]
        ]
        on_this_volume = [row for row in good if row["volume_serial"] == self.volume_serial]
        if on_this_volume:
            return on_this_volume[0]
        if len({row["volume_serial"] for row in good}) >= self.required_copies:
            return good[0]
        return None

    def plan(self, study_id: str) -> dict[str, Any]:
        """Describe what exporting one study would do, without writing anything."""
        study = describe_study(self.client, self.server, study_id)
        existing = self.existing_copy(study)
        container, manifest = self.volume.study_paths(self.server, study["study_date"], study_id)
        container, manifest = self._paths_for_content(study, container, manifest)
        return {
            "study": study,
            "existing": existing,
            "container_path": container,
            "manifest_path": manifest,
            "estimated_bytes": estimate_container_bytes(study["instances"]),
        }

    def _paths_for_content(self, study: dict[str, Any], container: str, manifest: str) -> tuple[str, str]:
        """Return paths that no copy of another content of this study uses on this volume.

        A study that changed after it was archived (an instance added, or removed by an interrupted
        reclaim) is archived again. Writing the new content over the old container would destroy the
        only copy of instances that Orthanc no longer holds while the catalog still lists that copy
        as verified, so a new content gets a file name with its content key.
        """
        taken = {
            row["path"] for row in self.catalog.copies_of_study(self.server, study["orthanc_study_id"],
                                                                ("writing", "written", "verified"))
            if row["volume_serial"] == self.volume_serial and row["content_key"] != study["content_key"]
        }
        if container not in taken:
            return container, manifest
        suffix = "." + study["content_key"][:16]
        return container[: -len(".tar")] + suffix + ".tar", manifest[: -len(".json")] + suffix + ".json"

    # -- export ---------------------------------------------------------------------------------

    def export(self, study_id: str) -> dict[str, Any]:
        """Export one study; return a result dict with status archived, skipped, changed or volume_full."""
        started = time.monotonic()
        plan = self.plan(study_id)
        study = plan["study"]
        result = {
            "orthanc_id": study_id,
            "volume_serial": self.volume_serial,
            "path": plan["container_path"],
            "instances": study["instance_count"],
            "bytes": 0,
        }
        if plan["existing"] is not None:
            result.update(status="skipped", reason="already archived", volume_serial=plan["existing"]["volume_serial"],
                          path=plan["existing"]["path"])
            return result
        if study["instance_count"] == 0:
            result.update(status="skipped", reason="study has no instances")
            return result

        needed = plan["estimated_bytes"]
        capacity = self.volume.capacity_bytes() - self.volume.reserve_bytes
        if needed > capacity:
            raise ExportError(
                f"study {study_id} needs about {needed} bytes but an empty volume of this kind holds {capacity}: "
                "it cannot be archived on one cartridge; exclude it from the policy or use larger media"
            )
        available = self.volume.available_bytes()
        if needed > available:
            result.update(status="volume_full", reason=f"needs about {needed} bytes, {available} available")
            return result

        copy_id = self.catalog.start_copy(study, self.volume_serial, plan["container_path"], plan["manifest_path"])
        try:
            written = self._write(study, plan)
        except VolumeFull as exc:
            self.catalog.mark_failed(copy_id, f"volume full while writing, partial file left as dead space: {exc}")
            result.update(status="volume_full", reason=str(exc))
            return result
        except StudyChanged as exc:
            self.catalog.mark_failed(copy_id, f"study changed during export: {exc}")
            result.update(status="changed", reason=str(exc))
            return result
        except (ExportError, ContainerError, OrthancError, OSError) as exc:
            self.catalog.mark_failed(copy_id, str(exc))
            raise ExportError(f"study {study_id}: export failed, nothing will be deleted: {exc}") from None

        self.catalog.finish_copy(copy_id, written["bytes"], written["sha256"], written["instances"])
        seconds = time.monotonic() - started
        result.update(status="archived", bytes=written["bytes"], container_sha256=written["sha256"],
                      seconds=round(seconds, 3), copy_id=copy_id)
        self.log(f"archived study {study_id} instances={study['instance_count']} bytes={written['bytes']} "
                 f"volume={self.volume_serial} seconds={seconds:.1f}")
        return result

    def _write(self, study: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
        container_path = self.volume.absolute(plan["container_path"])
        manifest_path = self.volume.absolute(plan["manifest_path"])
        study_id = study["orthanc_study_id"]
        writer = ContainerWriter(container_path, study_id)
        instances_out: list[dict[str, Any]] = []
        try:
            writer.open()
            for item, checked in self._fetch_in_order(study["instances"]):
                name = member_name(study_id, item["ParentSeries"], item["ID"])
                if isinstance(checked, _Download):
                    # The download thread already hashed these bytes, off the writer's critical path.
                    sums = writer.add_bytes(name, checked.data, digests={"md5": checked.md5, "sha256": checked.sha256})
                    expected_md5 = checked.md5
                else:
                    expected_md5, size, chunks, response = checked
                    try:
                        sums = writer.add_instance(name, size, chunks)
                    finally:
                        response.close()
                if sums["md5"] != expected_md5:
                    raise ExportError(f"instance {item['ID']}: MD5 {sums['md5']} differs from Orthanc's {expected_md5}")
                series = study["series"].get(item["ParentSeries"], {})
                instances_out.append({
                    "orthanc_instance_id": item["ID"],
                    "orthanc_series_id": item["ParentSeries"],
                    "sop_instance_uid": (item.get("MainDicomTags") or {}).get("SOPInstanceUID"),
                    "series_instance_uid": (series.get("MainDicomTags") or {}).get("SeriesInstanceUID"),
                    "member_name": name,
                    "size": sums["size"],
                    "md5": expected_md5,
                    "sha256": sums["sha256"],
                })

            # The study must still be what was described: same instance count and LastUpdate.
            statistics = self.client.study_statistics(study_id)
            last_update = self.client.study_last_update(study_id)
            if int(statistics.get("CountInstances", -1)) != len(instances_out) or last_update != study["last_update"]:
                raise StudyChanged(
                    f"Orthanc now reports {statistics.get('CountInstances')} instances and LastUpdate {last_update}, "
                    f"the export holds {len(instances_out)} instances of LastUpdate {study['last_update']}"
                )

            manifest = self._manifest(study, instances_out)
            container = writer.close(manifest)
            write_manifest_file(manifest_path, manifest)
        except OSError as exc:
            writer.abort()
            if exc.errno == errno.ENOSPC:
                raise VolumeFull(f"no space left on volume {self.volume_serial} writing {plan['container_path']}") from None
            raise
        except BaseException:
            writer.abort()
            raise

        # Without read_back the copy stays unchecked until archive_volume_verify reads it. On tape, that
        # pass reads the whole cartridge in one go instead of seeking back after every study.
        problems = verify_container(container_path, container["sha256"], instances_out) if self.read_back else []
        if problems:
            raise ExportError(f"read-back of {plan['container_path']} failed: " + "; ".join(problems[:5]))
        return {"bytes": container["bytes"], "sha256": container["sha256"], "instances": instances_out}

    def _manifest(self, study: dict[str, Any], instances: list[dict[str, Any]]) -> dict[str, Any]:
        features = self.client.features()
        series = []
        for series_id, item in sorted(study["series"].items()):
            tags = item.get("MainDicomTags") or {}
            series.append({
                "orthanc_series_id": series_id,
                "series_instance_uid": tags.get("SeriesInstanceUID"),
                "modality": tags.get("Modality"),
                "series_description": tags.get("SeriesDescription"),
                "series_number": tags.get("SeriesNumber"),
            })
        now = time.time()
        return {
            "format": "orthanc-archive-manifest/1",
            "tool": {"name": TOOL_NAME, "version": TOOL_VERSION},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "created_epoch": int(now),
            "source": {"server": self.server, "url": self.client.url, "orthanc_version": features.version_text,
                       "orthanc_name": features.name},
            "volume_serial": self.volume_serial,
            "orthanc_study_id": study["orthanc_study_id"],
            "orthanc_patient_id": study["patient_orthanc_id"],
            "study_instance_uid": study["study_instance_uid"],
            "last_update": study["last_update"],
            "content_key": study["content_key"],
            "study": study["tags"],
            "patient": study["patient_tags"],
            "series": series,
            "instance_count": len(instances),
            "study_bytes": sum(item["size"] for item in instances),
            "instances": instances,
        }

    # -- downloads ------------------------------------------------------------------------------

    def _stored_checksum(self, item: dict[str, Any], etag_md5: str | None) -> tuple[str, int]:
        """Return the MD5 and size that Orthanc stored for an instance's DICOM file.

        The MD5 comes from the download's ETag when it carries one, else from the attachment's info.
        The size comes from the instance list, which Orthanc reads from the same attachment record.
        """
        if etag_md5:
            return etag_md5, int(item["FileSize"])
        info = self.client.instance_attachment_info(item["ID"])
        md5 = info.get("UncompressedMD5") or ""
        if not md5:
            raise ExportError(
                f"Orthanc stores no MD5 for instance {item['ID']}, so the copy cannot be checked against it: "
                "set StoreMD5ForAttachments to true in Orthanc's configuration (the default) and store the study again"
            )
        return md5, int(info.get("UncompressedSize", item["FileSize"]))

    def _download(self, item: dict[str, Any]) -> _Download:
        instance_id = item["ID"]
        response, etag_md5 = self.client.open_instance_attachment(instance_id)
        try:
            # One read of the whole body: response.content would join it from 10 kB pieces.
            data = response.raw.read(decode_content=True)
        finally:
            response.close()
        expected_md5, expected_size = self._stored_checksum(item, etag_md5)
        if len(data) != expected_size:
            raise ExportError(f"instance {instance_id}: received {len(data)} bytes, Orthanc stores {expected_size}")
        actual = hashlib.md5(data).hexdigest()
        if actual != expected_md5:
            raise ExportError(f"instance {instance_id}: downloaded MD5 {actual} differs from Orthanc's {expected_md5}")
        return _Download(data, expected_md5, hashlib.sha256(data).hexdigest())

    def _open_stream(self, item: dict[str, Any]) -> tuple[str, int, Iterator[bytes], Any]:
        response, etag_md5 = self.client.open_instance_attachment(item["ID"])
        try:
            md5, size = self._stored_checksum(item, etag_md5)
        except BaseException:
            response.close()
            raise
        return md5, size, response.iter_content(chunk_size=1024 * 1024), response

    def _fetch_in_order(self, instances: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], Any]]:
        """Yield (instance, download) in the given order, prefetching in parallel within the byte budget.

        Only the calling (writer) thread touches in_flight and pending, so they need no lock.
        """
        stream_threshold = self.buffer_bytes // 2
        in_flight = 0
        pending: dict[int, concurrent.futures.Future] = {}
        next_to_submit = 0

        with concurrent.futures.ThreadPoolExecutor(max_workers=self.connections) as pool:
            try:
                for index, item in enumerate(instances):
                    next_to_submit = max(next_to_submit, index)
                    while next_to_submit < len(instances) and len(pending) < self.connections * 2:
                        size = int(instances[next_to_submit]["FileSize"])
                        if size > stream_threshold:
                            # A big instance is streamed by the writer when its turn comes; prefetch stops there.
                            if next_to_submit == index:
                                next_to_submit += 1
                            break
                        if in_flight and in_flight + size > self.buffer_bytes:
                            break
                        in_flight += size
                        pending[next_to_submit] = pool.submit(self._download, instances[next_to_submit])
                        next_to_submit += 1

                    if index in pending:
                        download = pending.pop(index).result()
                        in_flight -= int(item["FileSize"])
                        yield item, download
                    else:
                        yield item, self._open_stream(item)
            finally:
                for future in pending.values():
                    future.cancel()
