#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to this project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: orthanc_study_reclaim
short_description: Delete from Orthanc the studies that are verified on tape and unchanged
description:
  - Deletes from one Orthanc server the studies whose current content the catalog shows as
    C(verified) on at least O(required_copies) volumes.
  - Before deleting, checks that Orthanc still reports the same LastUpdate and the same set of
    instances as the archived copy, and that the patient is not protected. A changed study is skipped
    and archived again by the next archive run; it is never deleted.
  - Deletes instance by instance, and only the instances listed in the verified copy, so that an
    instance arriving during the deletion stays in Orthanc.
  - Reports the bytes freed as the difference of Orthanc's C(/statistics) TotalDiskSize before and after.
  - In check mode deletes nothing and lists what would be deleted with its size.
version_added: "0.1.0"
author: orthanc-tape-archive contributors
extends_documentation_fragment:
  - orthanc_connection
  - orthanc_connection.CATALOG
options:
  server_name:
    description:
      - Name of the server in the catalog, the same as given to M(orthanc_study_archive).
    type: str
    required: true
  required_copies:
    description:
      - Number of distinct volumes on which a study must be verified before it may be deleted.
    type: int
    default: 1
  max_studies:
    description:
      - Delete at most this many studies in one run. C(0) means no limit.
    type: int
    default: 0
  lock_dir:
    description:
      - Folder for the lock file that keeps two reclaim runs off one server.
    type: path
    default: /run/lock
  lock_timeout:
    description:
      - Seconds to wait for another run to release the lock before failing.
    type: float
    default: 600.0
  log_path:
    description:
      - File to which one line per deleted study is appended.
    type: path
seealso:
  - module: orthanc_study_archive
  - module: archive_volume_verify
"""

EXAMPLES = r"""
- name: Free the space of verified studies, keeping two tape copies of each
  orthanc_study_reclaim:
    url: https://pacs1.example.org:8042
    username: archiver
    password: "{{ vault_orthanc_password }}"
    server_name: pacs1
    required_copies: 2
    catalog_path: /var/lib/orthanc-archive/catalog.sqlite
  register: reclaimed
"""

RETURN = r"""
studies:
  description: One entry per candidate study with its decision (C(deleted), C(would delete), C(skip)) and reason.
  returned: always
  type: list
  elements: dict
deleted:
  description: Studies deleted in this run.
  returned: always
  type: int
would_delete:
  description: In check mode, studies that would be deleted.
  returned: always
  type: int
skipped:
  description: Candidates left in Orthanc, each with its reason in O(studies).
  returned: always
  type: int
bytes_freed:
  description: Decrease of Orthanc's TotalDiskSize during this run.
  returned: always
  type: int
bytes_to_free:
  description: In check mode, the archived size of the studies that would be deleted.
  returned: always
  type: int
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible.module_utils.archive_catalog import CATALOG_ARGUMENT_SPEC, CatalogError, open_catalog
from ansible.module_utils.archive_volume import FileLock, VolumeError
from ansible.module_utils.module_support import merge_specs, progress_logger
from ansible.module_utils.orthanc_client import CONNECTION_ARGUMENT_SPEC, OrthancClient, OrthancError
from ansible.module_utils.study_reclaim import RECLAIM_ARGUMENT_SPEC, ReclaimError, Reclaimer


def main():
    argument_spec = merge_specs(CONNECTION_ARGUMENT_SPEC, CATALOG_ARGUMENT_SPEC, RECLAIM_ARGUMENT_SPEC, {
        "server_name": {"type": "str", "required": True},
        "lock_dir": {"type": "path", "default": "/run/lock"},
        "lock_timeout": {"type": "float", "default": 600.0},
        "log_path": {"type": "path"},
    })
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    result = {"changed": False, "studies": [], "deleted": 0, "would_delete": 0, "skipped": 0, "bytes_freed": 0,
              "bytes_to_free": 0}
    if params["max_studies"] < 0:
        module.fail_json(msg=f"invalid max_studies {params['max_studies']}: expected 0 (no limit) or more", **result)

    if module.check_mode and params["catalog_backend"] == "sqlite" and not os.path.exists(params["catalog_path"]):
        # No catalog means no verified copy, so nothing would be deleted; opening it would create the file.
        module.exit_json(msg=f"no catalog at {params['catalog_path']} yet, so no study would be deleted", **result)

    catalog = None
    lock = None
    try:
        lock = FileLock(params["lock_dir"], "server-" + params["server_name"], params["lock_timeout"])
        lock.acquire()
        catalog = open_catalog(params)
        client = OrthancClient.from_module_params(params)
        client.features()
        log = progress_logger(params["log_path"], params["server_name"]) if not module.check_mode else (lambda line: None)
        reclaimer = Reclaimer(client, catalog, params["server_name"], params["required_copies"], log)
        result.update(reclaimer.reclaim(check_mode=module.check_mode, max_studies=params["max_studies"]))
    except (OrthancError, CatalogError, VolumeError, ReclaimError) as exc:
        module.fail_json(msg=f"reclaim on {params['server_name']} failed: {exc}. No study was deleted after "
                             "this error; run again once it is fixed", **result)
    finally:
        if catalog is not None:
            catalog.close()
        if lock is not None:
            lock.release()

    result["changed"] = result["deleted"] > 0 or result["would_delete"] > 0
    module.exit_json(**result)


if __name__ == "__main__":
    main()
