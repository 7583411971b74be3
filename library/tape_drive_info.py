#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to this project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: tape_drive_info
short_description: Discover the tape drives and medium changers of a host
description:
  - Runs C(lsscsi -g) and returns every C(tape) device as a drive and every C(mediumx) device as a changer,
    with vendor, model, revision and device nodes (C(st), C(nst), C(sg)).
  - Reads each device's serial number with C(sg_inq) from sg3-utils when it is on C(PATH); the serial is
    null otherwise or when sg_inq fails.
  - With O(check_ready=true) runs C(mt -f NST status) on each drive and returns whether it answered, whether a
    cartridge is loaded and whether that cartridge is write-protected.
  - Changes nothing, so it runs the same way in check mode.
version_added: "0.1.0"
author: orthanc-tape-archive contributors
options:
  device:
    description:
      - A drive to select from the ones found, by device node (C(/dev/nst0), C(/dev/st0), C(/dev/sg0)) or serial
        number. Its entry is returned as RV(selected); the module does not fail when it is absent.
    type: str
    default: ""
  check_ready:
    description:
      - Ask each drive for its status with C(mt).
    type: bool
    default: true
seealso:
  - module: tape_changer
"""

EXAMPLES = r"""
- name: Discover drives and changers
  tape_drive_info:
  register: tape
"""

RETURN = r"""
drives:
  description: Tape drives, ordered by SCSI address.
  returned: always
  type: list
  elements: dict
  contains:
    hctl: {description: SCSI host, channel, target and LUN., type: str}
    vendor: {description: Vendor from the SCSI inquiry., type: str}
    model: {description: Model from the SCSI inquiry., type: str}
    revision: {description: Firmware revision., type: str}
    serial: {description: Unit serial number from sg_inq, or null., type: str}
    devices:
      description: Device nodes C(st) (rewinding), C(nst) (non-rewinding) and C(sg) (SCSI generic, used by LTFS).
      type: dict
    answered: {description: Whether C(mt status) succeeded (only with O(check_ready))., type: bool}
    loaded: {description: Whether a cartridge is loaded and online., type: bool}
    write_protected: {description: Whether the loaded cartridge is write-protected., type: bool}
    status_error: {description: What mt printed when it failed., type: str}
selected:
  description: The drive that O(device) names, or the first drive when O(device) is empty; null when none matches.
  returned: always
  type: dict
changers:
  description: Medium changers, with C(hctl), C(vendor), C(model), C(revision), C(serial) and C(devices.sg).
  returned: always
  type: list
  elements: dict
"""

import re

from ansible.module_utils.basic import AnsibleModule

from ansible.module_utils.tape_tools import drives_and_changers, parse_lsscsi, parse_mt_status


def read_serial(module, sg_inq, node):
    if sg_inq is None or node is None:
        return None
    rc, out, _err = module.run_command([sg_inq, node])
    if rc != 0:
        return None
    match = re.search(r"Unit serial number:\s*(\S+)", out)
    return match.group(1) if match else None


def drive_status(module, mt, node):
    rc, out, err = module.run_command([mt, "-f", node, "status"])
    if rc != 0:
        return {"answered": False, "loaded": False, "write_protected": False,
                "status_error": (err or out).strip()}
    status = parse_mt_status(out)
    return {"answered": True, "loaded": status["online"], "write_protected": status["write_protected"]}


def select_drive(drives, name):
    """Return the drive whose device node or serial equals name, or the first drive when name is empty."""
    if not name:
        return drives[0] if drives else None
    for drive in drives:
        if name == drive["serial"] or name in drive["devices"].values():
            return drive
    return None


def main():
    module = AnsibleModule(argument_spec={"device": {"type": "str", "default": ""},
                                          "check_ready": {"type": "bool", "default": True}},
                           supports_check_mode=True)
    lsscsi = module.get_bin_path("lsscsi")
    if lsscsi is None:
        module.fail_json(msg="lsscsi was not found on PATH: install it with the tape_drive role")
    mt = module.get_bin_path("mt")
    if module.params["check_ready"] and mt is None:
        module.fail_json(msg="mt (mt-st) was not found on PATH: install it with the tape_drive role")
    sg_inq = module.get_bin_path("sg_inq")

    rc, out, err = module.run_command([lsscsi, "-g"])
    if rc != 0:
        module.fail_json(msg=f"lsscsi -g failed (exit code {rc}): {err.strip() or out.strip()}")
    found_drives, found_changers = drives_and_changers(parse_lsscsi(out))

    drives = []
    for device in found_drives:
        entry = {
            "hctl": device["hctl"], "vendor": device["vendor"], "model": device["model"],
            "revision": device["revision"], "serial": read_serial(module, sg_inq, device["sg"]),
            "devices": {"st": device["device"], "nst": device["nst"], "sg": device["sg"]},
        }
        if module.params["check_ready"] and device["nst"]:
            entry.update(drive_status(module, mt, device["nst"]))
        drives.append(entry)

    changers = []
    for device in found_changers:
        changers.append({
            "hctl": device["hctl"], "vendor": device["vendor"], "model": device["model"],
            "revision": device["revision"], "serial": read_serial(module, sg_inq, device["sg"]),
            "devices": {"sg": device["sg"]},
        })

    module.exit_json(changed=False, drives=drives, changers=changers,
                     selected=select_drive(drives, module.params["device"]))


if __name__ == "__main__":
    main()
