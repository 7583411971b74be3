#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to this project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: tape_changer
short_description: Take inventory of a tape library, load a cartridge by barcode, unload it to its home slot
description:
  - Drives a SCSI medium changer with C(mtx), found on C(PATH).
  - O(state=inventory) returns the drives, slots and barcodes from C(mtx status) and changes nothing.
  - O(state=loaded) puts the cartridge with O(barcode) into O(drive). A cartridge already in that drive is
    left there (C(changed=false)); another cartridge in the drive is first returned to its home slot.
  - O(state=unloaded) returns the cartridge in O(drive) (or the one with O(barcode)) to its home slot, the slot
    it was loaded from, or to O(slot).
  - Before it moves a cartridge out of a drive, the module waits until no ltfs process uses O(drive_device),
    because the ltfs process writes the volume's index after C(umount) has returned.
  - In check mode reports the moves it would make and makes none.
version_added: "0.1.0"
author: orthanc-tape-archive contributors
options:
  changer:
    description:
      - SCSI generic node of the medium changer, for example C(/dev/sg4) (the C(mediumx) line of C(lsscsi -g);
        the tape_drive role returns it as C(tape_drive_changers[0].sg)).
    type: str
    required: true
  state:
    description:
      - What to make true.
    type: str
    choices: [inventory, loaded, unloaded]
    default: inventory
  barcode:
    description:
      - Barcode (volume tag) of the cartridge. Required for O(state=loaded).
    type: str
  drive:
    description:
      - Data transfer element number of the drive, counted from 0 as mtx does.
    type: int
    default: 0
  slot:
    description:
      - Storage element (slot) to unload to, counted from 1. Defaults to the cartridge's home slot.
    type: int
  drive_device:
    description:
      - Device node of the same drive as LTFS opens it (C(/dev/sg0)). When set, the module waits for any ltfs
        process on it to exit before a cartridge leaves the drive.
    type: str
  ltfs_wait_timeout:
    description:
      - Seconds to wait for that ltfs process.
    type: float
    default: 1800.0
seealso:
  - module: ltfs_volume
"""

EXAMPLES = r"""
- name: List the cartridges in the library
  tape_changer:
    changer: /dev/sg4
  register: library

- name: Load the next scratch cartridge into drive 0
  tape_changer:
    changer: /dev/sg4
    state: loaded
    barcode: ARC002L8
    drive: 0
    drive_device: /dev/sg0

- name: Return the cartridge in drive 0 to its home slot
  tape_changer:
    changer: /dev/sg4
    state: unloaded
    drive: 0
    drive_device: /dev/sg0
"""

RETURN = r"""
inventory:
  description: Drives and slots after the task (before it in check mode), as C(mtx status) reports them.
  returned: always
  type: dict
  contains:
    drives:
      description: One entry per drive, with C(index), C(loaded), C(barcode) and C(source_slot) (home slot).
      type: list
      elements: dict
    slots:
      description: One entry per slot, with C(number), C(import_export), C(full) and C(barcode).
      type: list
      elements: dict
barcodes:
  description: Every barcode in the library, sorted.
  returned: always
  type: list
  elements: str
moves:
  description: The moves made (or, in check mode, that would be made), such as C(unload drive 0 to slot 3).
  returned: always
  type: list
  elements: str
barcode:
  description: Barcode of the cartridge in O(drive) at the end of the task, or null when it is empty.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible.module_utils.ltfs_tools import find_ltfs_process, mount_entry, wait_for_exit
from ansible.module_utils.tape_tools import TapeToolError, all_barcodes, locate_barcode, parse_mtx_status


class Changer:
    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.mtx = module.get_bin_path("mtx")
        self.result = {"changed": False, "moves": []}
        if self.mtx is None:
            self.fail("mtx was not found on PATH: install it with the tape_drive role")

    def fail(self, message):
        self.module.fail_json(msg=message, **self.result)

    def mtx_run(self, *words):
        argv = [self.mtx, "-f", self.params["changer"], *[str(word) for word in words]]
        rc, out, err = self.module.run_command(argv)
        if rc != 0:
            detail = (err or out or "").strip().splitlines()
            self.fail(f"{' '.join(argv)} failed (exit code {rc}): {detail[-1] if detail else 'no output'}")
        return out

    def inventory(self):
        try:
            inventory = parse_mtx_status(self.mtx_run("status"))
        except TapeToolError as exc:
            self.fail(f"reading the inventory of {self.params['changer']} failed: {exc}")
        self.result["inventory"] = inventory
        self.result["barcodes"] = all_barcodes(inventory)
        return inventory

    def drive_entry(self, inventory, index):
        for drive in inventory["drives"]:
            if drive["index"] == index:
                return drive
        self.fail(f"drive {index} does not exist in {self.params['changer']}: the library has drives "
                  f"{[drive['index'] for drive in inventory['drives']]}")
        return None

    def wait_for_ltfs(self):
        device = self.params["drive_device"]
        process = find_ltfs_process(device=device) if device else None
        if process is None:
            return
        if process["mount_point"] and self._still_mounted(process["mount_point"]):
            self.fail(f"drive {self.params['drive']} ({device}) still has the LTFS volume mounted on "
                      f"{process['mount_point']}: unmount it with ltfs_volume state=unmounted first")
        try:
            wait_for_exit(process["pid"], self.params["ltfs_wait_timeout"])
        except TimeoutError as exc:
            self.fail(f"{exc} on {device}; it is still writing the volume index, so the cartridge stays in the drive")

    @staticmethod
    def _still_mounted(mount_point):
        entry = mount_entry(mount_point)
        return entry is not None and "fuse" in entry["fstype"]

    def home_slot(self, inventory, drive):
        slot = self.params["slot"] or drive["source_slot"]
        if slot is None:
            free = [entry["number"] for entry in inventory["slots"] if not entry["full"] and not entry["import_export"]]
            self.fail(f"the library does not know the home slot of cartridge {drive['barcode']} in drive "
                      f"{drive['index']}: pass slot, for example one of the empty slots {free[:5]}")
        for entry in inventory["slots"]:
            if entry["number"] == slot and entry["full"]:
                self.fail(f"slot {slot} already holds cartridge {entry['barcode']}, so cartridge {drive['barcode']} "
                          f"cannot be unloaded there: pass another slot")
        return slot

    def unload(self, inventory, drive):
        slot = self.home_slot(inventory, drive)
        self.result["moves"].append(f"unload {drive['barcode']} from drive {drive['index']} to slot {slot}")
        self.result["changed"] = True
        if not self.module.check_mode:
            self.wait_for_ltfs()
            self.mtx_run("unload", slot, drive["index"])

    def loaded(self):
        barcode = self.params["barcode"]
        index = self.params["drive"]
        inventory = self.inventory()
        drive = self.drive_entry(inventory, index)
        place = locate_barcode(inventory, barcode)

        if place is None:
            self.fail(f"cartridge {barcode} is not in the library {self.params['changer']} (it holds "
                      f"{', '.join(self.result['barcodes']) or 'no cartridges'}): insert cartridge {barcode} "
                      "through the import/export slot and run again")
        if place.get("drive") == index:
            self.result["barcode"] = barcode
            return
        if "drive" in place:
            self.fail(f"cartridge {barcode} is in drive {place['drive']}, not drive {index}: unload it from drive "
                      f"{place['drive']} first")

        if drive["loaded"]:
            self.unload(inventory, drive)
        self.result["moves"].append(f"load {barcode} from slot {place['slot']} into drive {index}")
        self.result["changed"] = True
        if not self.module.check_mode:
            self.mtx_run("load", place["slot"], index)
            self.inventory()
        self.result["barcode"] = barcode

    def unloaded(self):
        inventory = self.inventory()
        barcode = self.params["barcode"]
        index = self.params["drive"]
        if barcode:
            place = locate_barcode(inventory, barcode)
            if place is None:
                self.fail(f"cartridge {barcode} is not in the library {self.params['changer']}: nothing to unload")
            if "drive" not in place:
                self.result["barcode"] = self.drive_entry(inventory, index)["barcode"]
                return
            index = place["drive"]

        drive = self.drive_entry(inventory, index)
        if drive["loaded"]:
            self.unload(inventory, drive)
            if not self.module.check_mode:
                self.inventory()
        self.result["barcode"] = None


def main():
    module = AnsibleModule(
        argument_spec={
            "changer": {"type": "str", "required": True},
            "state": {"type": "str", "default": "inventory", "choices": ["inventory", "loaded", "unloaded"]},
            "barcode": {"type": "str"},
            "drive": {"type": "int", "default": 0},
            "slot": {"type": "int"},
            "drive_device": {"type": "str"},
            "ltfs_wait_timeout": {"type": "float", "default": 1800.0},
        },
        required_if=[("state", "loaded", ("barcode",))],
        supports_check_mode=True,
    )
    changer = Changer(module)
    state = module.params["state"]
    if state == "inventory":
        inventory = changer.inventory()
        changer.result["barcode"] = changer.drive_entry(inventory, module.params["drive"])["barcode"]
    elif state == "loaded":
        changer.loaded()
    else:
        changer.unloaded()
    module.exit_json(**changer.result)


if __name__ == "__main__":
    main()
