#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to this project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: orthanc_study_restore
short_description: Restore archived studies from tape containers into an Orthanc server
description:
  - Looks up in the catalog the studies selected by Orthanc study ID, StudyInstanceUID, accession
    number, PatientID (all the patient's studies) or a StudyDate range, and restores each one from a
    C(verified) copy into the Orthanc server given by O(url), which may be the original server or another.
  - For each study, restores the newest archived content. Among its verified copies, prefers one on a
    volume listed in O(volume_paths), then the volume that holds the most of the selected studies, so
    that as few cartridges as possible are needed.
  - When a needed volume is not among O(volume_paths), fails before restoring anything and names the
    cartridges (barcode when the catalog has one, else the volume serial) that must be loaded and
    mounted; with O(missing_volumes=skip) restores what is mounted and lists the rest.
  - Reads each volume's containers in the order of their LTFS start block (C(user.ltfs.startblock)),
    so the drive does not reposition, and each container in one sequential pass.
  - Checks every instance's size, MD5 and SHA-256 against the catalog before uploading it, uploads
    instance by instance (Orthanc loads a whole request body into memory), then checks that Orthanc
    holds every instance of the copy with the archived MD5 and reports at least as many instances.
  - A study whose instances are all already in the target is left alone and reported as C(present).
    A partly present study gets only its missing instances.
  - Records each restore in the catalog's C(restores) table.
  - In check mode, reads the target's instance lists but uploads and records nothing, and returns the
    studies that would be restored and the cartridges needed.
  - PatientIDs and accession numbers given as input are never shown in output, and StudyInstanceUIDs,
    PatientIDs and accession numbers of the restored studies only with O(include_identifiers=true).
version_added: "0.1.0"
author: orthanc-tape-archive contributors
extends_documentation_fragment:
  - orthanc_connection
  - orthanc_connection.CATALOG
options:
  server_name:
    description:
      - Catalog name of the server the studies were archived from. Unset selects from every server.
    type: str
  target_server_name:
    description:
      - Name recorded in the catalog's C(restores) table for the target server.
      - Defaults to O(server_name), or to O(url) when O(server_name) is unset.
    type: str
  orthanc_study_ids:
    description:
      - Orthanc IDs of the studies to restore.
    type: list
    elements: str
    default: []
  study_instance_uids:
    description:
      - StudyInstanceUIDs of the studies to restore.
    type: list
    elements: str
    default: []
  accession_numbers:
    description:
      - Accession numbers of the studies to restore. Not shown in output.
    type: list
    elements: str
    default: []
  patient_ids:
    description:
      - PatientIDs whose archived studies are all restored. Not shown in output.
    type: list
    elements: str
    default: []
  study_date_from:
    description:
      - First StudyDate (C(YYYYMMDD)) of the studies to restore, inclusive.
      - Combined with the other selection options, it narrows them; alone, it selects every study of the range.
    type: str
  study_date_to:
    description:
      - Last StudyDate (C(YYYYMMDD)) of the studies to restore, inclusive.
    type: str
  volume_paths:
    description:
      - Mount points of the volumes (LTFS or plain folders) available for reading.
    type: list
    elements: path
    default: []
  missing_volumes:
    description:
      - What to do when a needed volume is not mounted. C(fail) restores nothing and names the cartridges;
        C(skip) restores the studies on mounted volumes and lists the others in RV(not_mounted).
    type: str
    choices: [fail, skip]
    default: fail
  connections:
    description:
      - Parallel uploads to Orthanc while the container is read.
    type: int
    default: 2
  buffer_bytes:
    description:
      - Bytes of instances read from the volume that may wait in memory for an upload.
        A single instance larger than this is still uploaded, alone.
    type: int
    default: 268435456
  max_studies:
    description:
      - Restore at most this many studies in one run. C(0) means no limit.
    type: int
    default: 0
  include_identifiers:
    description:
      - Include StudyInstanceUID, PatientID and accession number of each study in the result.
    type: bool
    default: false
  log_path:
    description:
      - File to which one line per restored study is appended (Orthanc IDs only).
    type: path
notes:
  - Only copies in state C(verified) are used. A catalog rebuilt from volumes holds C(written) copies
    until M(archive_volume_verify) or M(archive_catalog_rebuild) with C(verify=true) has read them back.
  - Loading cartridges is left to the playbook (see C(restore.yml)); this module only reads mounted volumes.
seealso:
  - module: orthanc_study_archive
  - module: archive_volume_verify
  - module: archive_catalog_rebuild
"""

EXAMPLES = r"""
- name: List what restoring a patient's studies needs, without restoring
  orthanc_study_restore:
    url: https://pacs1.example.org:8042
    username: archiver
    password: "{{ vault_orthanc_password }}"
    server_name: pacs1
    patient_ids: ["{{ restore_patient_id }}"]
    catalog_path: /var/lib/orthanc-archive/catalog.sqlite
  check_mode: true
  register: restore_plan

- name: Restore one study into a test server from the mounted cartridge
  orthanc_study_restore:
    url: http://orthanc-test.example.org:8042
    server_name: pacs1
    target_server_name: orthanc-test
    study_instance_uids: [1.2.840.113619.2.55.3.604688119.969.1268071029.320]
    volume_paths: [/mnt/ltfs]
    catalog_path: /var/lib/orthanc-archive/catalog.sqlite
"""

RETURN = r"""
studies:
  description:
    - One entry per selected study with C(orthanc_id), C(volume_serial), C(path), C(instances) and
      C(status) (C(restored), C(present), C(would restore), C(not mounted) or C(failed)).
  returned: always
  type: list
  elements: dict
cartridges_needed:
  description: Volumes holding the chosen copies, with C(volume_serial), C(barcode), C(mounted), C(studies) and C(bytes).
  returned: always
  type: list
  elements: dict
not_mounted:
  description: Barcodes (or volume serials when no barcode is known) of needed volumes that are not mounted.
  returned: always
  type: list
  elements: str
restored:
  description: Studies restored in this run.
  returned: always
  type: int
present:
  description: Selected studies whose instances were all already in the target.
  returned: always
  type: int
would_restore:
  description: In check mode, studies that would be restored.
  returned: always
  type: int
failed:
  description: Studies whose restore failed; the reason is in RV(studies).
  returned: always
  type: int
instances_uploaded:
  description: Instances uploaded in this run.
  returned: always
  type: int
"""

from ansible.module_utils.basic import AnsibleModule

from ansible.module_utils.archive_catalog import CATALOG_ARGUMENT_SPEC, CatalogError, open_catalog
from ansible.module_utils.archive_volume import VolumeError
from ansible.module_utils.module_support import merge_specs, progress_logger
from ansible.module_utils.orthanc_client import CONNECTION_ARGUMENT_SPEC, OrthancClient, OrthancError
from ansible.module_utils.study_restore import (
    RESTORE_ARGUMENT_SPEC,
    RestoreError,
    StudyRestorer,
    cartridges_needed,
    choose_copies,
    describe_copy,
    mounted_volumes,
    newest_content,
    order_on_tape,
    select_copies,
)


def restore_all(module, client, catalog, chosen, mounted, result):
    """Restore the chosen copies volume by volume in tape order, filling result in place."""
    params = module.params
    target = params["target_server_name"] or params["server_name"] or client.url
    log = progress_logger(params["log_path"], target) if not module.check_mode else (lambda line: None)
    restorer = StudyRestorer(client, catalog, target, params["connections"], params["buffer_bytes"], log)
    done = 0

    for serial in sorted({row["volume_serial"] for row in chosen}):
        copies = [row for row in chosen if row["volume_serial"] == serial]
        if serial not in mounted and not module.check_mode:
            for row in copies:
                result["studies"].append(dict(describe_copy(row, params["include_identifiers"]), status="not mounted"))
            continue
        if serial in mounted:
            copies = order_on_tape(copies, mounted[serial])
        for row in copies:
            if params["max_studies"] and done >= params["max_studies"]:
                return
            entry = describe_copy(row, params["include_identifiers"])
            entry["mounted"] = serial in mounted
            result["studies"].append(entry)
            if module.check_mode:
                # The target's instance lists are read even for unmounted volumes: no cartridge is needed.
                expected, missing = restorer.missing_instances(row)
                entry.update(status="would restore" if missing else "present", instances_missing=len(missing))
                done += 1 if missing else 0
                continue
            try:
                outcome = restorer.restore(row, mounted[serial])
            except (RestoreError, OrthancError, VolumeError) as exc:
                entry.update(status="failed", reason=str(exc))
                log(f"restore of study {row['orthanc_study_id']} failed: {exc}")
                continue
            entry.update(status=outcome["status"], instances_uploaded=outcome["instances_uploaded"])
            result["instances_uploaded"] += outcome["instances_uploaded"]
            done += 1 if outcome["status"] == "restored" else 0


def main():
    argument_spec = merge_specs(CONNECTION_ARGUMENT_SPEC, CATALOG_ARGUMENT_SPEC, RESTORE_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    result = {"changed": False, "studies": [], "cartridges_needed": [], "not_mounted": [], "restored": 0,
              "present": 0, "would_restore": 0, "failed": 0, "instances_uploaded": 0}
    if params["max_studies"] < 0:
        module.fail_json(msg=f"invalid max_studies {params['max_studies']}: expected 0 (no limit) or more", **result)

    catalog = None
    try:
        catalog = open_catalog(params)
        mounted = mounted_volumes(params["volume_paths"])
        chosen = choose_copies(newest_content(select_copies(catalog, params)), mounted)
        result["cartridges_needed"] = cartridges_needed(chosen, mounted, catalog)
        result["not_mounted"] = [item["barcode"] or item["volume_serial"]
                                 for item in result["cartridges_needed"] if not item["mounted"]]
        if not chosen:
            module.exit_json(msg="no verified copy in the catalog matches the selection", **result)
        if result["not_mounted"] and params["missing_volumes"] == "fail" and not module.check_mode:
            module.fail_json(
                msg=f"the selected studies need cartridges that are not mounted: {', '.join(result['not_mounted'])}. "
                    "Load and mount them and add their mount points to volume_paths, or set missing_volumes=skip "
                    "to restore only what is on the mounted volumes",
                **result,
            )
        client = OrthancClient.from_module_params(params)
        client.features()
        restore_all(module, client, catalog, chosen, mounted, result)
    except (CatalogError, OrthancError, RestoreError, VolumeError) as exc:
        module.fail_json(msg=f"restore failed: {exc}", **result)
    finally:
        if catalog is not None:
            catalog.close()

    for status, key in (("restored", "restored"), ("present", "present"), ("would restore", "would_restore"),
                        ("failed", "failed")):
        result[key] = sum(1 for item in result["studies"] if item["status"] == status)
    result["changed"] = result["restored"] > 0 or result["would_restore"] > 0 or result["instances_uploaded"] > 0
    if result["failed"]:
        module.fail_json(msg=f"{result['failed']} of {len(result['studies'])} studies could not be restored; "
                             "the reason for each is in studies. Fix it and run again: studies already "
                             "restored are left alone", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
