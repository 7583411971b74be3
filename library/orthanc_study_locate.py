#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to this project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: orthanc_study_locate
short_description: Show where a study's files are, on the Orthanc server's disk and on archive cartridges
description:
  - For the studies selected by Orthanc study ID, StudyInstanceUID, accession number or PatientID
    (all the patient's studies), returns the path of every instance's file under the server's
    StorageDirectory (C(StorageDirectory/AA/BB/UUID), AA and BB being the first four characters of the
    attachment UUID), and the folders that hold them.
  - Builds Windows paths for a StorageDirectory such as C(D:\\Orthanc\\Storage) and Linux paths
    otherwise (see O(path_style)).
  - Says clearly when there are no plain DICOM files to find, because the server uses a storage area
    plugin, or because StorageCompression stored the files zlib-compressed.
  - When the catalog has copies of the study, returns the volume serial, the cartridge barcode (when
    known), the container path on the volume and the state of each copy, also for studies no longer in Orthanc.
  - Read-only; runs the same in check mode. PatientIDs and accession numbers given as input are not
    shown in output.
version_added: "0.1.0"
author: orthanc-tape-archive contributors
extends_documentation_fragment:
  - orthanc_connection
  - orthanc_connection.CATALOG
options:
  server_name:
    description:
      - Catalog name of the server. Unset looks up archived copies from every server.
    type: str
  orthanc_study_ids:
    description:
      - Orthanc IDs of the studies to locate.
    type: list
    elements: str
    default: []
  study_instance_uids:
    description:
      - StudyInstanceUIDs of the studies to locate.
    type: list
    elements: str
    default: []
  accession_numbers:
    description:
      - Accession numbers of the studies to locate. Not shown in output.
    type: list
    elements: str
    default: []
  patient_ids:
    description:
      - PatientIDs whose studies are all located. Not shown in output.
    type: list
    elements: str
    default: []
  storage_directory:
    description:
      - The server's C(StorageDirectory) setting as the Orthanc host sees it, for example
        C(/var/lib/orthanc/db) or C(C:\\Orthanc\\OrthancStorage). The REST API does not report it.
      - Unset returns paths relative to the StorageDirectory.
    type: str
  path_style:
    description:
      - Path syntax of the Orthanc host. C(auto) picks C(windows) when O(storage_directory) starts with
        a drive letter or contains a backslash, and C(posix) otherwise.
    type: str
    choices: [auto, posix, windows]
    default: auto
  check_files:
    description:
      - Check that each file exists at its path. Meaningful only when the module runs on the Orthanc host.
    type: bool
    default: false
  check_compression:
    description:
      - Ask Orthanc, for each instance, whether its file is stored compressed (one request per instance).
    type: bool
    default: true
  use_catalog:
    description:
      - Look up archived copies in the catalog. A SQLite catalog that does not exist yet is not created.
    type: bool
    default: true
  include_identifiers:
    description:
      - Include the StudyInstanceUID of each study found in Orthanc in the result.
    type: bool
    default: false
seealso:
  - module: orthanc_study_restore
"""

EXAMPLES = r"""
- name: Locate a patient's studies on the server's disk and on tape
  orthanc_study_locate:
    url: http://127.0.0.1:8042
    patient_ids: ["{{ locate_patient_id }}"]
    storage_directory: /var/lib/orthanc/db
    check_files: true
    catalog_path: /var/lib/orthanc-archive/catalog.sqlite
  register: located

- name: Locate one study on a Windows Orthanc
  orthanc_study_locate:
    url: https://pacs2.example.org:8042
    study_instance_uids: [1.2.840.113619.2.55.3.604688119.969.1268071029.320]
    storage_directory: 'D:\Orthanc\Storage'
    use_catalog: false
"""

RETURN = r"""
live:
  description:
    - One entry per study found in Orthanc, with C(orthanc_id), C(plain_files), C(reason) (why there are
      no plain files, empty otherwise), C(folders), and C(instances) (C(orthanc_id), C(uuid), C(path),
      C(size), and C(compressed), C(stored_size) and C(exists) when checked).
  returned: always
  type: list
  elements: dict
archived:
  description:
    - One entry per written or verified copy in the catalog, with C(orthanc_id), C(volume_serial),
      C(barcode), C(path), C(manifest_path), C(state), C(instances), C(bytes) and C(deleted_from_orthanc).
  returned: always
  type: list
  elements: dict
not_found:
  description: True when the selection matched no study in Orthanc and no copy in the catalog.
  returned: always
  type: bool
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible.module_utils.archive_catalog import CATALOG_ARGUMENT_SPEC, CatalogError, open_catalog
from ansible.module_utils.module_support import merge_specs
from ansible.module_utils.orthanc_client import CONNECTION_ARGUMENT_SPEC, OrthancClient, OrthancError
from ansible.module_utils.study_locate import (
    LOCATE_ARGUMENT_SPEC,
    LocateError,
    describe_archived,
    find_archived_copies,
    find_live_studies,
    locate_live_study,
    selection_given,
)


def catalog_available(params):
    if not params["use_catalog"]:
        return False
    if params["catalog_backend"] == "sqlite" and not os.path.exists(params["catalog_path"]):
        return False
    return True


def main():
    argument_spec = merge_specs(CONNECTION_ARGUMENT_SPEC, CATALOG_ARGUMENT_SPEC, LOCATE_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    result = {"changed": False, "live": [], "archived": [], "not_found": False}
    if not selection_given(params):
        module.fail_json(msg="no study selected: set orthanc_study_ids, study_instance_uids, accession_numbers "
                             "or patient_ids", **result)

    catalog = None
    try:
        client = OrthancClient.from_module_params(params)
        for study_id, study in sorted(find_live_studies(client, params).items()):
            entry = locate_live_study(client, study, params)
            if params["include_identifiers"]:
                entry["study_instance_uid"] = (study.get("MainDicomTags") or {}).get("StudyInstanceUID")
            result["live"].append(entry)

        if catalog_available(params):
            catalog = open_catalog(params)
            barcodes = {row["serial"]: row.get("barcode") for row in catalog.volumes()}
            live_ids = {entry["orthanc_id"] for entry in result["live"]}
            for row in find_archived_copies(catalog, params):
                deleted = row["orthanc_study_id"] not in live_ids and bool(
                    catalog.deletions_of_study(row["server"], row["orthanc_study_id"]))
                result["archived"].append(describe_archived(row, barcodes, deleted))
        elif params["use_catalog"]:
            module.warn(f"catalog {params['catalog_path']} does not exist: archived copies were not looked up")
    except (OrthancError, CatalogError, LocateError) as exc:
        module.fail_json(msg=f"locate failed: {exc}", **result)
    finally:
        if catalog is not None:
            catalog.close()

    result["not_found"] = not result["live"] and not result["archived"]
    module.exit_json(**result)


if __name__ == "__main__":
    main()
