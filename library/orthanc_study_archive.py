#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to this project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: orthanc_study_archive
short_description: Write Orthanc studies to an archive volume as checked, catalogued tar containers
description:
  - Writes each study as one uncompressed POSIX tar container on the volume, named by its Orthanc ID,
    with a JSON manifest beside it (study, series and instance UIDs, main tags, per-instance size,
    MD5 and SHA-256, source server, Orthanc ID, time, tool version). The manifest is also the last
    member of the tar, so each container describes itself.
  - Downloads instances over O(connections) keep-alive connections into a buffer of at most
    O(buffer_bytes) while one writer appends them in order, so memory stays flat whatever the study size.
  - Writes strictly sequentially under a temporary name, fsyncs, then renames.
  - Checks every downloaded instance against the size and MD5 that Orthanc stored (the MD5 comes
    with the download, in the ETag of C(/instances/{id}/attachments/dicom/data)), checks after
    writing that Orthanc still reports the same instance count and LastUpdate, then (with O(read_back))
    reads the container back and compares every instance's size and SHA-256 before it records the
    copy as C(written) in the catalog.
    A copy becomes C(verified) only through M(archive_volume_verify), after the volume was remounted.
  - A study whose current content already has a written or verified copy on this volume (or on
    O(required_copies) volumes) is not written again and reports C(changed=false).
  - Stops and reports C(volume_full) when the next study does not fit in the volume's free space; a
    study larger than an empty volume is an error.
  - In check mode writes nothing and reports what would be written and about how many bytes.
version_added: "0.1.0"
author: orthanc-tape-archive contributors
extends_documentation_fragment:
  - orthanc_connection
  - orthanc_connection.CATALOG
  - orthanc_connection.VOLUME
options:
  server_name:
    description:
      - Name of the server in the catalog and in the volume's folder layout, usually the inventory hostname.
    type: str
    required: true
  studies:
    description:
      - Orthanc IDs of the studies to archive, in the order to write them (as returned by M(orthanc_study_info)).
    type: list
    elements: str
    required: true
  connections:
    description:
      - Parallel downloads from Orthanc.
    type: int
    default: 4
  buffer_bytes:
    description:
      - Bytes of downloaded instances that may wait in memory for the writer. Instances larger than
        half of this are streamed straight to the volume.
    type: int
    default: 67108864
  read_back:
    description:
      - Read each container back right after writing it, comparing every instance's size and SHA-256,
        before the copy is recorded as C(written).
      - The copy is C(verified), and its study may leave Orthanc, only after M(archive_volume_verify)
        has read it back, whatever the value of this option. On tape, reading back each study makes the
        drive stop and seek back after every study, so the C(orthanc_archive) role turns this off
        and relies on its verification pass over the whole cartridge after a remount.
    type: bool
    default: true
  required_copies:
    description:
      - Number of volumes that must hold a copy of a study. A study already written to this many
        volumes is skipped.
    type: int
    default: 1
  log_path:
    description:
      - File to which one line per study is appended while the module runs (Orthanc IDs only, no patient data).
    type: path
  stop_on_error:
    description:
      - Stop at the first study that fails. When false, the failure is recorded and the next study is tried.
    type: bool
    default: false
  barcode:
    description:
      - Barcode of the cartridge mounted at O(volume_path), recorded with its volume serial in the catalog's
        C(volumes) table so that a restore can load the cartridge through the changer.
    type: str
seealso:
  - module: orthanc_study_info
  - module: archive_volume_verify
  - module: orthanc_study_reclaim
"""

EXAMPLES = r"""
- name: Archive the selected studies to the mounted LTFS volume
  orthanc_study_archive:
    url: https://pacs1.example.org:8042
    username: archiver
    password: "{{ vault_orthanc_password }}"
    server_name: pacs1
    studies: "{{ selection.study_ids }}"
    volume_path: /mnt/ltfs
    volume_reserve_bytes: 10737418240
    catalog_path: /var/lib/orthanc-archive/catalog.sqlite
    log_path: /var/log/orthanc-archive/pacs1.log
  register: archived
"""

RETURN = r"""
results:
  description: One entry per requested study, in order.
  returned: always
  type: list
  elements: dict
  contains:
    orthanc_id: {description: Orthanc ID of the study., type: str}
    status:
      description: C(archived), C(skipped), C(changed) (modified during export; retried next run),
        C(volume_full), C(failed), C(not_attempted) (after a full volume), or C(would_archive) in check mode.
      type: str
    reason: {description: Why a study was not archived., type: str}
    volume_serial: {description: Serial of the volume holding the copy., type: str}
    path: {description: Container path relative to the volume root., type: str}
    bytes: {description: Container bytes written (estimated in check mode)., type: int}
    instances: {description: Number of instances in the container., type: int}
archived_count:
  description: Studies written in this run.
  returned: always
  type: int
archived_bytes:
  description: Container bytes written in this run.
  returned: always
  type: int
skipped_count:
  description: Studies that already had a copy.
  returned: always
  type: int
failed_count:
  description: Studies that failed; each has a C(reason). Per-study failures do not fail the task, so that
    the studies that succeeded still reach verification; the playbook's summary fails the run.
  returned: always
  type: int
volume_full:
  description: True when the run stopped because the next study did not fit on the volume.
  returned: always
  type: bool
volume:
  description: Serial, kind, capacity and available bytes of the volume after the run.
  returned: always
  type: dict
"""

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible.module_utils.archive_catalog import CATALOG_ARGUMENT_SPEC, CatalogError, open_catalog
from ansible.module_utils.archive_volume import VOLUME_ARGUMENT_SPEC, FileLock, Volume, VolumeError
from ansible.module_utils.module_support import merge_specs, progress_logger
from ansible.module_utils.orthanc_client import CONNECTION_ARGUMENT_SPEC, OrthancClient, OrthancError, is_orthanc_id
from ansible.module_utils.study_export import EXPORT_ARGUMENT_SPEC, ExportError, StudyExporter


def check_mode_results(exporter, study_ids):
    results = []
    for study_id in study_ids:
        plan = exporter.plan(study_id)
        entry = {"orthanc_id": study_id, "instances": plan["study"]["instance_count"], "path": plan["container_path"]}
        if plan["existing"] is not None:
            entry.update(status="skipped", reason="already archived", volume_serial=plan["existing"]["volume_serial"],
                         bytes=0)
        else:
            entry.update(status="would_archive", volume_serial=exporter.volume_serial, bytes=plan["estimated_bytes"])
        results.append(entry)
    return results


def main():
    argument_spec = merge_specs(CONNECTION_ARGUMENT_SPEC, CATALOG_ARGUMENT_SPEC, VOLUME_ARGUMENT_SPEC,
                                EXPORT_ARGUMENT_SPEC, {
                                    "server_name": {"type": "str", "required": True},
                                    "studies": {"type": "list", "elements": "str", "required": True},
                                    "log_path": {"type": "path"},
                                    "stop_on_error": {"type": "bool", "default": False},
                                    "barcode": {"type": "str"},
                                })
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    result = {"changed": False, "results": [], "archived_count": 0, "archived_bytes": 0, "skipped_count": 0,
              "failed_count": 0, "volume_full": False, "volume": {}}

    bad_ids = [value for value in params["studies"] if not is_orthanc_id(value)]
    if bad_ids:
        module.fail_json(msg=f"invalid Orthanc study ID {bad_ids[0]!r} in studies: pass the study_ids "
                             "returned by orthanc_study_info", **result)

    log = progress_logger(params["log_path"], params["server_name"]) if not module.check_mode else (lambda line: None)
    catalog = None
    lock = None
    try:
        volume = Volume(params["volume_path"], params["volume_reserve_bytes"])
        if module.check_mode and volume.serial(create=False) is None:
            # Writing any study would change the volume, so check mode reports changed as a real run would.
            module.exit_json(msg="the volume has not been used yet; every study would be written",
                             results=[{"orthanc_id": value, "status": "would_archive"} for value in params["studies"]],
                             **{key: value for key, value in result.items() if key not in ("results", "changed")},
                             changed=bool(params["studies"]))
        lock = FileLock(params["lock_dir"], "volume-" + volume.serial(), params["lock_timeout"])
        lock.acquire()
        catalog = open_catalog(params)
        client = OrthancClient.from_module_params(params)
        exporter = StudyExporter(client, catalog, volume, params["server_name"], params["connections"],
                                 params["buffer_bytes"], params["required_copies"], log, params["read_back"])

        if module.check_mode:
            result["results"] = check_mode_results(exporter, params["studies"])
        else:
            catalog.upsert_volume(volume.serial(), "ltfs" if volume.is_ltfs else "folder", volume.name(),
                                  barcode=params["barcode"], capacity_bytes=volume.capacity_bytes(), available_bytes=volume.available_bytes())
            run_exports(module, exporter, params, result, log)
            volume.sync()
            catalog.upsert_volume(volume.serial(), "ltfs" if volume.is_ltfs else "folder",
                                  available_bytes=volume.available_bytes())
        result["volume"] = volume.facts()
    except (OrthancError, CatalogError, VolumeError, ExportError) as exc:
        module.fail_json(msg=f"archive of {params['server_name']} to {params['volume_path']} failed: {exc}", **result)
    finally:
        if catalog is not None:
            catalog.close()
        if lock is not None:
            lock.release()

    summarize(result)
    if result["failed_count"]:
        # Per-study failures do not fail the task: the studies that did succeed still go on to verification.
        module.warn(f"{result['failed_count']} of {len(params['studies'])} studies of {params['server_name']} failed "
                    "to archive and will not be deleted; see results for the reasons, fix them and run again")
    module.exit_json(**result)


def run_exports(module, exporter, params, result, log):
    results = result["results"]
    for index, study_id in enumerate(params["studies"]):
        try:
            entry = exporter.export(study_id)
        except (ExportError, OrthancError, CatalogError, OSError) as exc:
            log(f"failed study {study_id}: {exc}")
            results.append({"orthanc_id": study_id, "status": "failed", "reason": str(exc)})
            if params["stop_on_error"]:
                break
            continue
        except Exception as exc:  # an unexpected fault must still name the study
            log(f"failed study {study_id}: {traceback.format_exc()}")
            results.append({"orthanc_id": study_id, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"})
            break
        results.append(entry)
        if entry["status"] == "volume_full":
            result["volume_full"] = True
            log(f"volume {exporter.volume_serial} full before study {study_id}: {entry.get('reason')}")
            for later in params["studies"][index + 1:]:
                results.append({"orthanc_id": later, "status": "not_attempted", "reason": "volume full"})
            break


def summarize(result):
    statuses = [entry["status"] for entry in result["results"]]
    result["archived_count"] = statuses.count("archived")
    result["archived_bytes"] = sum(entry.get("bytes", 0) for entry in result["results"] if entry["status"] == "archived")
    result["skipped_count"] = statuses.count("skipped")
    result["failed_count"] = statuses.count("failed")
    result["changed"] = result["archived_count"] > 0 or "would_archive" in statuses


if __name__ == "__main__":
    main()
