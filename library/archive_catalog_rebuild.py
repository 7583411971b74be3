#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to this project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: archive_catalog_rebuild
short_description: Rebuild the archive catalog from the containers and manifests on mounted volumes
description:
  - Scans each volume in O(volume_paths) for the containers this project wrote (below C(orthanc-archive/))
    and adds to the catalog one copy per container that the catalog does not list yet, with every
    instance's member name, size, MD5 and SHA-256 taken from the container's manifest.
  - Reads the manifest beside each container; when it is missing, reads the container to its last
    member, which holds the same manifest.
  - Rebuilt copies are C(written), not C(verified), because only the manifest was read. With
    O(verify=true) the module reads every container back in full, compares every instance with the
    manifest, and records the copies that match as C(verified), also upgrading C(written) copies
    already in the catalog. Containers that fail are reported and not added.
  - Records each volume in the catalog's volume list with its serial, kind, capacity and free space,
    and the barcode given in O(barcodes).
  - Also a report of each volume's contents, because RV(volumes) lists every container with its study,
    instance count and size. In check mode the module only returns this report and changes nothing.
  - Deletions from Orthanc and restores cannot be known from the volumes; the rebuilt catalog has no
    such rows, so M(orthanc_study_reclaim) sees the rebuilt studies as never deleted and checks Orthanc
    again before deleting anything.
version_added: "0.1.0"
author: orthanc-tape-archive contributors
extends_documentation_fragment:
  - orthanc_connection.CATALOG
options:
  volume_paths:
    description:
      - Mount points of the volumes (LTFS or plain folders) to read.
    type: list
    elements: path
    required: true
  verify:
    description:
      - Read every container back in full and record the matching copies as C(verified).
      - On tape this reads the whole cartridge, hours for a full LTO-9.
    type: bool
    default: false
  barcodes:
    description:
      - Cartridge barcode of each volume serial, recorded in the catalog's volume list.
      - 'For example C({"A00001": "A00001L9"}).'
    type: dict
    default: {}
  lock_dir:
    description:
      - Folder for the lock files that keep a rebuild and a write off one volume at once.
    type: path
    default: /run/lock
  lock_timeout:
    description:
      - Seconds to wait for another run to release a volume's lock before failing.
    type: float
    default: 600.0
  log_path:
    description:
      - File to which one line per rebuilt container is appended.
    type: path
seealso:
  - module: archive_volume_verify
  - module: orthanc_study_restore
"""

EXAMPLES = r"""
- name: Report what a cartridge holds, without touching the catalog
  archive_catalog_rebuild:
    volume_paths: [/mnt/ltfs]
    catalog_path: /var/lib/orthanc-archive/catalog.sqlite
  check_mode: true
  register: contents

- name: Rebuild a lost catalog from two mounted cartridges, reading every container back
  archive_catalog_rebuild:
    volume_paths: [/mnt/ltfs0, /mnt/ltfs1]
    verify: true
    barcodes:
      A00001: A00001L9
      A00002: A00002L9
    catalog_path: /var/lib/orthanc-archive/catalog.sqlite
"""

RETURN = r"""
volumes:
  description:
    - One entry per volume with C(volume_serial), C(barcode), C(kind), C(bytes), counts C(added),
      C(verified), C(unchanged) and C(failed), C(problems) (files that are not usable containers), and
      C(containers).
    - Each container has C(orthanc_id), C(server), C(study_date), C(instances), C(bytes), C(path),
      C(action) (C(added), C(verified), C(unchanged), C(failed)) and C(state).
  returned: always
  type: list
  elements: dict
added:
  description: Copies added to the catalog (in check mode, that would be added).
  returned: always
  type: int
verified:
  description: Copies already in the catalog as written that the read-back moved to verified.
  returned: always
  type: int
failed:
  description: Containers that could not be read or did not match their manifest.
  returned: always
  type: int
"""

from ansible.module_utils.basic import AnsibleModule

from ansible.module_utils.archive_catalog import CATALOG_ARGUMENT_SPEC, CatalogError, open_catalog
from ansible.module_utils.archive_container import ContainerError
from ansible.module_utils.archive_volume import FileLock, Volume, VolumeError
from ansible.module_utils.catalog_rebuild import REBUILD_ARGUMENT_SPEC, CatalogRebuilder, RebuildError
from ansible.module_utils.module_support import merge_specs, progress_logger


def main():
    argument_spec = merge_specs(CATALOG_ARGUMENT_SPEC, REBUILD_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    result = {"changed": False, "volumes": [], "added": 0, "verified": 0, "failed": 0}
    if not params["volume_paths"]:
        module.fail_json(msg="volume_paths is empty: give the mount point of at least one volume", **result)

    catalog = None
    try:
        catalog = open_catalog(params)
        log = progress_logger(params["log_path"], "rebuild") if not module.check_mode else (lambda line: None)
        rebuilder = CatalogRebuilder(catalog, params["verify"], log)
        for path in params["volume_paths"]:
            volume = Volume(path)
            serial = volume.serial(create=False)
            barcode = str(params["barcodes"].get(serial)) if serial in params["barcodes"] else None
            with FileLock(params["lock_dir"], f"volume-{serial or path}", params["lock_timeout"]):
                summary = rebuilder.rebuild(volume, barcode, module.check_mode)
            result["volumes"].append(summary)
    except (CatalogError, VolumeError, RebuildError, ContainerError, OSError) as exc:
        module.fail_json(msg=f"catalog rebuild failed: {exc}", **result)
    finally:
        if catalog is not None:
            catalog.close()

    for key in ("added", "verified", "failed"):
        result[key] = sum(summary[key] for summary in result["volumes"])
    result["changed"] = (result["added"] > 0 or result["verified"] > 0
                         or any(summary["volume_updated"] for summary in result["volumes"]))
    if result["failed"]:
        module.warn(f"{result['failed']} containers could not be rebuilt; see the problems of each in volumes")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
