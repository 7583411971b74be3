# -*- coding: utf-8 -*-
# Copyright: contributors to this project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Delete archived studies from Orthanc: the one place in this project that deletes.

The rule: a study leaves Orthanc only when the catalog shows its current content verified on at
least required_copies volumes (read back from the medium, every instance's checksum and the
instance count checked), its patient is not protected, and Orthanc still reports the same
LastUpdate and the same instances as when it was archived.

Orthanc has no conditional delete, so an instance could arrive between the last check and the
delete. To lose nothing even then, this module deletes instance by instance, and only the
instances listed in the verified copy: an instance that arrived late stays in Orthanc, keeps the
study alive there, and makes the next archive run export the study again.
"""

from __future__ import annotations

from typing import Any, Callable

from ansible.module_utils.archive_catalog import Catalog
from ansible.module_utils.orthanc_client import OrthancClient, OrthancNotFound
from ansible.module_utils.study_export import content_key

RECLAIM_ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "required_copies": {"type": "int", "default": 1},
    "max_studies": {"type": "int", "default": 0},
}


class ReclaimError(Exception):
    """Reclaim could not proceed."""


class Reclaimer:
    """Check and delete the verified studies of one server."""

    def __init__(self, client: OrthancClient, catalog: Catalog, server: str, required_copies: int = 1,
                 log: Callable[[str], None] = lambda line: None):
        if required_copies < 1:
            raise ReclaimError(f"invalid required_copies {required_copies}: expected 1 or more")
        self.client = client
        self.catalog = catalog
        self.server = server
        self.required_copies = required_copies
        self.log = log

    def current_state(self, study_id: str) -> dict[str, Any] | None:
        """Return the study's current patient, LastUpdate and instances in Orthanc, or None when it is gone."""
        try:
            study = self.client.study(study_id)
            last_update = self.client.study_last_update(study_id)
            instances = self.client.study_instances(study_id)
        except OrthancNotFound:
            return None
        ids = [item["ID"] for item in instances]
        return {
            "patient": study.get("ParentPatient"),
            "last_update": last_update,
            "instance_ids": set(ids),
            "content_key": content_key(last_update, ids),
        }

    def check(self, study_id: str, key: str) -> tuple[str, str, dict[str, Any] | None]:
        """Decide for one candidate: ('delete' | 'skip' | 'gone', reason, verified copy)."""
        copies = [row for row in self.catalog.copies_of_study(self.server, study_id, ("verified",))
                  if row["content_key"] == key]
        if len({row["volume_serial"] for row in copies}) < self.required_copies:
            return "skip", f"verified on fewer than {self.required_copies} volumes", None
        copy = copies[0]

        current = self.current_state(study_id)
        if current is None:
            return "gone", "no longer in Orthanc", copy
        if current["content_key"] != key:
            return "skip", "changed since it was archived (new or removed instances, or a new LastUpdate)", copy
        if self.client.patient_is_protected(current["patient"]):
            return "skip", "patient is protected", copy

        archived = {row["orthanc_instance_id"] for row in self.catalog.copy_instances(copy["id"])}
        if archived != current["instance_ids"] or len(archived) != copy["instance_count"]:
            return "skip", "the catalog's instance list does not match Orthanc's", copy
        return "delete", "verified and unchanged", copy

    def reclaim(self, check_mode: bool = False, max_studies: int = 0) -> dict[str, Any]:
        """Delete every eligible study (or, in check mode, list them); return counts and per-study results."""
        before = self.client.statistics()
        results: list[dict[str, Any]] = []
        deleted = 0
        candidates = self.catalog.reclaim_candidates(self.server, self.required_copies)
        for candidate in candidates:
            study_id = candidate["orthanc_study_id"]
            if max_studies and deleted >= max_studies:
                break
            decision, reason, copy = self.check(study_id, candidate["content_key"])
            entry = {"orthanc_id": study_id, "decision": decision, "reason": reason}
            if copy is not None:
                entry.update(volume_serial=copy["volume_serial"], instances=copy["instance_count"],
                             bytes=copy["study_bytes"])
            if decision == "gone":
                if not check_mode:
                    self.catalog.record_deletion(self.server, study_id, copy["study_instance_uid"], copy["content_key"], 0,
                                                 "already absent from Orthanc")
                continue
            if decision == "delete":
                if check_mode:
                    entry["decision"] = "would delete"
                else:
                    entry.update(self._delete(study_id, copy))
                deleted += 1
            results.append(entry)
        after = before if check_mode else self.client.statistics()
        freed = int(before.get("TotalDiskSize", 0)) - int(after.get("TotalDiskSize", 0))
        return {
            "studies": results,
            "deleted": sum(1 for item in results if item["decision"] == "deleted"),
            "would_delete": sum(1 for item in results if item["decision"] == "would delete"),
            "skipped": sum(1 for item in results if item["decision"] == "skip"),
            "bytes_freed": max(freed, 0),
            "bytes_to_free": sum(item.get("bytes", 0) for item in results if item["decision"] == "would delete"),
            "disk_bytes_before": int(before.get("TotalDiskSize", 0)),
            "disk_bytes_after": int(after.get("TotalDiskSize", 0)),
        }

    def _delete(self, study_id: str, copy: dict[str, Any]) -> dict[str, Any]:
        # Last check right before deleting, to keep the window for late instances as short as possible.
        current = self.current_state(study_id)
        if current is None or current["content_key"] != copy["content_key"]:
            return {"decision": "skip", "reason": "changed just before deletion"}

        removed = 0
        for row in self.catalog.copy_instances(copy["id"]):
            if self.client.delete_instance(row["orthanc_instance_id"]):
                removed += 1
        remaining = self.current_state(study_id)
        note = ""
        if remaining is not None:
            note = f"{len(remaining['instance_ids'])} instances arrived during deletion and stay in Orthanc"
        self.catalog.record_deletion(self.server, study_id, copy["study_instance_uid"], copy["content_key"], removed, note)
        self.log(f"deleted study {study_id} instances={removed} volume={copy['volume_serial']} {note}".rstrip())
        return {"decision": "deleted", "instances_deleted": removed, "note": note}
