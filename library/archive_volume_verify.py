#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to this project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: archive_volume_verify
short_description: Read containers back from an archive volume and mark the good ones verified
description:
  - Reads back every container that the catalog lists on the mounted volume (in state C(written), or
    also C(verified) ones with O(scope=all)), in the order of their position on tape when LTFS reports
    it, and compares the instance count, every instance's size and SHA-256, and the container's
    SHA-256 with the catalog. The instance SHA-256 was computed when the instance was written, from
    the downloaded bytes whose size and MD5 matched what Orthanc stored.
  - A copy that matches becomes C(verified), the only state that allows M(orthanc_study_reclaim) to
    delete the study from Orthanc. A copy that does not match becomes C(failed) and counts for nothing.
  - Run it after the volume was unmounted and mounted again, so that the data comes from the tape and
    not from a cache. For a plain folder the module asks the kernel to drop the file's cached pages first.
  - In check mode reads and compares but changes no state in the catalog.
version_added: "0.1.0"
author: orthanc-tape-archive contributors
extends_documentation_fragment:
  - orthanc_connection.CATALOG
  - orthanc_connection.VOLUME
options:
  scope:
    description:
      - C(written) checks copies waiting for verification; C(all) also checks copies already verified.
    type: str
    choices: [written, all]
    default: written
  log_path:
    description:
      - File to which one line per container is appended.
    type: path
seealso:
  - module: orthanc_study_archive
"""

EXAMPLES = r"""
- name: Verify what this run wrote, after the remount
  archive_volume_verify:
    volume_path: /mnt/ltfs
    catalog_path: /var/lib/orthanc-archive/catalog.sqlite
  register: verification
"""

RETURN = r"""
volume_serial:
  description: Serial of the verified volume.
  returned: always
  type: str
verified_count:
  description: Copies that matched.
  returned: always
  type: int
failed_count:
  description: Copies that did not match or could not be read.
  returned: always
  type: int
failures:
  description: Orthanc study ID, container path and the problems found, for each failed copy.
  returned: always
  type: list
  elements: dict
verified_bytes:
  description: Container bytes read back and found correct.
  returned: always
  type: int
"""

import errno
import os

from ansible.module_utils.basic import AnsibleModule

from ansible.module_utils.archive_catalog import CATALOG_ARGUMENT_SPEC, CatalogError, open_catalog
from ansible.module_utils.archive_container import ContainerError, verify_container
from ansible.module_utils.archive_volume import VOLUME_ARGUMENT_SPEC, FileLock, Volume, VolumeError
from ansible.module_utils.module_support import merge_specs, progress_logger


def tape_order(volume, copies):
    """Sort copies by their LTFS start block, so the tape reads forward; plain folders keep catalog order."""

    def start_block(row):
        try:
            value = os.getxattr(volume.absolute(row["path"]), "user.ltfs.startblock")
            return int(value.decode().strip())
        except (OSError, ValueError):
            return 0

    if not volume.is_ltfs:
        return copies
    return sorted(copies, key=lambda row: (start_block(row), row["id"]))


def main():
    argument_spec = merge_specs(CATALOG_ARGUMENT_SPEC, VOLUME_ARGUMENT_SPEC, {
        "scope": {"type": "str", "default": "written", "choices": ["written", "all"]},
        "log_path": {"type": "path"},
    })
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    result = {"changed": False, "verified_count": 0, "failed_count": 0, "failures": [], "verified_bytes": 0}

    catalog = None
    lock = None
    try:
        volume = Volume(params["volume_path"], params["volume_reserve_bytes"])
        serial = volume.serial(create=False)
        result["volume_serial"] = serial
        if serial is None:
            module.exit_json(msg=f"{params['volume_path']} holds no archive volume yet; nothing to verify", **result)
        lock = FileLock(params["lock_dir"], "volume-" + serial, params["lock_timeout"])
        lock.acquire()
        catalog = open_catalog(params)
        log = progress_logger(params["log_path"], serial)
        states = ("written",) if params["scope"] == "written" else ("written", "verified")

        for row in tape_order(volume, catalog.copies_on_volume(serial, states)):
            try:
                path = volume.absolute(row["path"])
                problems = verify_container(path, row["container_sha256"], catalog.copy_instances(row["id"]))
                if len(catalog.copy_instances(row["id"])) != row["instance_count"]:
                    problems.append(f"catalog lists {len(catalog.copy_instances(row['id']))} instances, "
                                    f"the study had {row['instance_count']}")
            except (ContainerError, VolumeError) as exc:
                problems = [str(exc)]
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    problems = [f"container {row['path']} is missing from the volume"]
                else:
                    raise

            if problems:
                result["failed_count"] += 1
                result["failures"].append({"orthanc_id": row["orthanc_study_id"], "path": row["path"],
                                           "problems": problems[:10]})
                log(f"verification failed for study {row['orthanc_study_id']} at {row['path']}: {problems[0]}")
                if not module.check_mode:
                    catalog.mark_failed(row["id"], "verification failed: " + "; ".join(problems[:5]))
                    result["changed"] = True
                continue

            result["verified_count"] += 1
            result["verified_bytes"] += int(row["container_bytes"] or 0)
            if row["state"] != "verified":
                log(f"verified study {row['orthanc_study_id']} at {row['path']}")
                if not module.check_mode:
                    catalog.mark_verified(row["id"])
                result["changed"] = True
    except (CatalogError, VolumeError, OSError) as exc:
        module.fail_json(msg=f"verification of {params['volume_path']} failed: {exc}", **result)
    finally:
        if catalog is not None:
            catalog.close()
        if lock is not None:
            lock.release()

    if result["failed_count"]:
        module.warn(f"{result['failed_count']} containers on volume {result['volume_serial']} failed verification; "
                    "their studies stay in Orthanc and are archived again on the next run")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
