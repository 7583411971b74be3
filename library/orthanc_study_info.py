#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to this project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: orthanc_study_info
short_description: Select the studies of an Orthanc server that a retention policy marks as old
description:
  - Applies a retention policy to one Orthanc server and returns the selected studies, oldest first,
    with Orthanc ID, StudyInstanceUID, StudyDate, modalities, instance count and disk size.
  - Age is measured by StudyDate (O(age_basis=study_date)) or by when Orthanc last received an
    instance of the study (O(age_basis=received), the study's C(LastUpdate) metadata).
  - Reads through C(/tools/find) and C(/studies) in pages of O(page_size); never sends one unbounded request.
  - A missing or malformed StudyDate never makes a study old; a study whose modalities cannot be read
    is not selected while O(exclude_modalities) is set; a patient whose protection cannot be read is
    treated as protected.
  - Read-only; runs the same in check mode.
  - Patient names, PatientIDs, birth dates and accession numbers are left out of the result unless
    O(include_identifiers=true).
version_added: "0.1.0"
author: orthanc-tape-archive contributors
extends_documentation_fragment:
  - orthanc_connection
  - orthanc_connection.CATALOG
options:
  server_name:
    description:
      - Name of the server in the catalog, usually the inventory hostname.
      - Used with O(skip_archived) to leave out studies that already have an unchanged copy.
    type: str
    required: true
  age_basis:
    description:
      - What makes a study old. C(study_date) uses the StudyDate tag; C(received) uses when Orthanc
        last received an instance of the study.
      - With C(received), Orthanc 1.10.1 cannot filter by date, so every study is read once (paged).
    type: str
    choices: [study_date, received]
    default: study_date
  older_than_days:
    description:
      - A study is old when its date is more than this many days before today (UTC). Exclusive with O(before_date).
    type: int
  before_date:
    description:
      - A study is old when its date is before this day, written C(YYYY-MM-DD). Exclusive with O(older_than_days).
    type: str
  exclude_protected:
    description:
      - Leave out studies of patients that Orthanc marks as protected.
    type: bool
    default: true
  exclude_labels:
    description:
      - Leave out studies carrying any of these labels. Labels exist from Orthanc 1.12.0; on older
        servers the option has no effect and a warning says so.
    type: list
    elements: str
    default: []
  exclude_patient_ids:
    description:
      - Leave out studies of these PatientIDs (exact match after trimming spaces).
    type: list
    elements: str
    default: []
  exclude_modalities:
    description:
      - Leave out studies that contain a series of any of these modalities, for example C(MG).
    type: list
    elements: str
    default: []
  only_stable:
    description:
      - Leave out studies that Orthanc does not report as stable yet (an instance arrived within C(StableAge)).
    type: bool
    default: true
  max_studies:
    description:
      - Select at most this many studies. C(0) means no limit.
    type: int
    default: 100
  max_bytes:
    description:
      - Select studies until their uncompressed size would pass this many bytes. C(0) means no limit.
      - A single study larger than this is skipped and counted, so it never blocks the studies after it.
    type: int
    default: 0
  page_size:
    description:
      - How many studies one request to Orthanc asks for.
    type: int
    default: 500
  oldest_year:
    description:
      - Studies dated before this year are looked up in one query; later years one year at a time.
    type: int
    default: 1990
  skip_archived:
    description:
      - Leave out studies whose current content already has a written or verified copy in the catalog,
        so that a run without reclaim moves on to newer studies instead of selecting the same ones again.
    type: bool
    default: true
  keep_restored_days:
    description:
      - Leave out studies that the catalog shows as restored into this server (O(server_name)) within
        this many days. A restored study has a new C(LastUpdate), so without this hold the next run
        would archive it again and, with reclaim, delete it while it is still in use.
      - C(0) turns the hold off. The catalog must exist for the hold to apply.
    type: int
    default: 30
  include_identifiers:
    description:
      - Include PatientID, PatientName, PatientBirthDate and AccessionNumber in the result.
    type: bool
    default: false
  oldest_count:
    description:
      - Also return the N oldest studies of the server by StudyDate and by reception, whatever the policy.
    type: int
    default: 0
notes:
  - Orthanc before 1.12.5 cannot sort C(/tools/find) answers, so StudyDate ranges are read year by year
    from O(oldest_year) and sorted here; the cost follows the size of the batch, not of the server.
seealso:
  - module: orthanc_study_archive
"""

EXAMPLES = r"""
- name: Select studies older than ten years, at most 200 or 2 TB
  orthanc_study_info:
    url: https://pacs1.example.org:8042
    username: archiver
    password: "{{ vault_orthanc_password }}"
    server_name: pacs1
    older_than_days: 3650
    max_studies: 200
    max_bytes: 2000000000000
    exclude_modalities: [MG]
    catalog_path: /var/lib/orthanc-archive/catalog.sqlite
  register: selection

- name: List the ten oldest studies without selecting anything
  orthanc_study_info:
    url: http://127.0.0.1:8042
    server_name: local
    before_date: "1900-01-01"
    oldest_count: 10
  register: oldest
"""

RETURN = r"""
studies:
  description: Selected studies, oldest first.
  returned: always
  type: list
  elements: dict
  contains:
    orthanc_id: {description: Orthanc ID of the study., type: str}
    study_instance_uid: {description: StudyInstanceUID., type: str}
    study_date: {description: StudyDate as stored (YYYYMMDD)., type: str}
    last_update: {description: Orthanc's LastUpdate metadata (UTC)., type: str}
    modalities: {description: Modalities of the study's series., type: list, elements: str}
    instance_count: {description: Number of instances., type: int}
    disk_bytes: {description: Bytes the study uses on Orthanc's disk., type: int}
    uncompressed_bytes: {description: Bytes of the DICOM files, as written to the archive., type: int}
  sample:
    - orthanc_id: 7b5f82d7-011e7118-ffac48a8-9204a296-775e6f54
      study_instance_uid: 1.3.6.1.4.1.5962.1.2.4.20040826185059.5457
      study_date: "20040826"
      last_update: 20261204T194825
      modalities: [MR]
      instance_count: 1
      disk_bytes: 9830
      uncompressed_bytes: 9830
study_ids:
  description: Orthanc IDs of the selected studies, oldest first.
  returned: always
  type: list
  elements: str
selected_count:
  description: Number of selected studies.
  returned: always
  type: int
selected_bytes:
  description: Sum of the selected studies' uncompressed sizes.
  returned: always
  type: int
skipped:
  description: Number of old studies left out, per reason.
  returned: always
  type: dict
  sample: {"protected patient": 2, "not stable yet": 1, "restored recently": 1}
policy:
  description: The policy as applied, with the cutoff date.
  returned: always
  type: dict
server:
  description: Version and features of the Orthanc server, read from C(/system).
  returned: always
  type: dict
cartridge_free_bytes:
  description:
    - Free space that the catalog last recorded for each cartridge, by barcode, minus the reserve
      the writer kept back. A tape run leaves out a scratch cartridge that has less room than the
      next study, instead of loading it only to find it full.
    - Empty when the catalog does not exist yet or is not read (O(skip_archived) false and
      O(keep_restored_days) 0).
  returned: always
  type: dict
  sample: {"TAPE01L8": 7340032}
oldest:
  description: With O(oldest_count), the oldest studies by StudyDate and by reception.
  returned: when oldest_count > 0
  type: dict
  contains:
    by_study_date: {description: Oldest studies by StudyDate., type: list, elements: dict}
    by_reception: {description: Oldest studies by LastUpdate., type: list, elements: dict}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible.module_utils.archive_catalog import CATALOG_ARGUMENT_SPEC, CatalogError, open_catalog
from ansible.module_utils.module_support import merge_specs
from ansible.module_utils.orthanc_client import CONNECTION_ARGUMENT_SPEC, OrthancClient, OrthancError
from ansible.module_utils.retention_policy import (
    POLICY_ARGUMENT_SPEC,
    Policy,
    PolicyError,
    Selector,
    oldest_studies,
    public_study,
)


def archived_checker(catalog, server):
    """Return a function telling whether a selection entry already has a good copy of the same LastUpdate."""

    def already_archived(entry):
        for row in catalog.copies_of_study(server, entry["orthanc_id"], ("written", "verified")):
            if row["last_update"] == entry["last_update"] and row["instance_count"] == entry["instance_count"]:
                return True
        return False

    return already_archived


def restored_checker(catalog, server, days):
    """Return a function that reports whether a study was restored into server in the last `days` days."""

    def recently_restored(study_id):
        return catalog.restored_within(server, study_id, days)

    return recently_restored


def main():
    argument_spec = merge_specs(CONNECTION_ARGUMENT_SPEC, CATALOG_ARGUMENT_SPEC, POLICY_ARGUMENT_SPEC, {
        "server_name": {"type": "str", "required": True},
        "skip_archived": {"type": "bool", "default": True},
        "include_identifiers": {"type": "bool", "default": False},
        "oldest_count": {"type": "int", "default": 0},
        "keep_restored_days": {"type": "int", "default": 30},
    })
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           mutually_exclusive=[("older_than_days", "before_date")])
    params = module.params
    result = {"changed": False, "studies": [], "study_ids": [], "selected_count": 0, "selected_bytes": 0,
              "skipped": {}, "cartridge_free_bytes": {}}

    try:
        policy = Policy(params)
    except PolicyError as exc:
        module.fail_json(msg=str(exc), **result)
    if params["oldest_count"] < 0:
        module.fail_json(msg=f"invalid oldest_count {params['oldest_count']}: expected 0 or more", **result)
    if params["keep_restored_days"] < 0:
        module.fail_json(msg=f"invalid keep_restored_days {params['keep_restored_days']}: expected 0 or more "
                             "(0 turns the hold on restored studies off)", **result)

    catalog = None
    try:
        client = OrthancClient.from_module_params(params)
        result["server"] = client.features().as_dict()
        uses_catalog = params["skip_archived"] or params["keep_restored_days"] > 0
        if uses_catalog and (params["catalog_backend"] == "postgresql" or _catalog_exists(params)):
            catalog = open_catalog(params)
        archived = archived_checker(catalog, params["server_name"]) if catalog and params["skip_archived"] else None
        restored = (restored_checker(catalog, params["server_name"], params["keep_restored_days"])
                    if catalog and params["keep_restored_days"] > 0 else None)
        selector = Selector(client, policy, archived, restored)
        selected = selector.select()
        if params["oldest_count"]:
            result["oldest"] = oldest_studies(client, params, params["oldest_count"])
        if catalog is not None:
            result["cartridge_free_bytes"] = {
                volume["barcode"]: int(volume["available_bytes"]) for volume in catalog.volumes()
                if volume.get("barcode") and volume.get("available_bytes") is not None}
    except (OrthancError, CatalogError) as exc:
        module.fail_json(msg=f"selection on {params['server_name']} failed: {exc}", **result)
    finally:
        if catalog is not None:
            catalog.close()

    for warning in selector.warnings:
        module.warn(warning)
    result.update(
        studies=[public_study(entry, params["include_identifiers"]) for entry in selected],
        study_ids=[entry["orthanc_id"] for entry in selected],
        selected_count=len(selected),
        selected_bytes=sum(entry["uncompressed_bytes"] for entry in selected),
        skipped=selector.skipped,
        policy=policy.as_dict(),
    )
    module.exit_json(**result)


def _catalog_exists(params):
    import os
    return os.path.exists(params["catalog_path"])


if __name__ == "__main__":
    main()
