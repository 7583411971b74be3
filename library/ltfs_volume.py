#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to this project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: ltfs_volume
short_description: Mount, unmount, sync or format the LTFS volume on a tape drive
description:
  - Runs the LTFS reference tools found on C(PATH) (C(ltfs), C(mkltfs), C(ltfsck), C(umount)) against one drive.
  - O(state=mounted) mounts the volume of the cartridge in O(device) on O(mount_point) and returns its facts,
    read from LTFS's extended attributes. When the cartridge is not the expected one (O(barcode)) or is
    write-protected while O(writable=true), the volume is unmounted again and the task fails naming the cartridge.
  - A volume that an earlier ltfs left without its final index is inconsistent and LTFS will not mount it.
    With O(recover=true) the module runs C(ltfsck), which rolls the volume back to its last complete index,
    and mounts again; otherwise the task fails and names the fix.
  - O(state=unmounted) runs C(umount) and then waits until the ltfs process has written its index and exited,
    because C(umount) returns before that and moving the cartridge earlier leaves the volume inconsistent.
  - O(state=synced) makes LTFS write its index now (the C(user.ltfs.sync) attribute).
  - O(state=formatted) formats a blank cartridge with C(mkltfs). A cartridge that already holds an LTFS volume
    is left alone unless O(reformat_volume_serial) names its current volume serial exactly.
  - In check mode nothing is mounted, written or formatted; O(state=formatted) still mounts the volume briefly
    to learn whether the cartridge is blank.
version_added: "0.1.0"
author: orthanc-tape-archive contributors
options:
  state:
    description:
      - What to make true of the volume.
    type: str
    choices: [mounted, unmounted, synced, formatted]
    default: mounted
  device:
    description:
      - Tape device that LTFS opens, as given to C(ltfs -o devname=) and C(mkltfs -d). With the default C(sg)
        backend of LTFS 2.4 on Linux this is the drive's SCSI generic node, for example C(/dev/sg0).
      - Required for O(state=mounted) and O(state=formatted).
    type: str
  mount_point:
    description:
      - Folder on which the volume is mounted. Created when missing.
      - Required for O(state=mounted), O(state=unmounted) and O(state=synced).
    type: path
  barcode:
    description:
      - Barcode of the cartridge expected in the drive, as M(tape_changer) reports it.
      - With O(state=mounted), the volume serial must equal the barcode's first six characters, or the task fails.
      - With O(state=formatted), the new volume serial is the barcode's first six characters unless
        O(volume_serial) is set.
    type: str
  volume_serial:
    description:
      - Volume serial for a new volume, six characters of C(A-Z) and C(0-9). Defaults to the first six
        characters of O(barcode); without either, mkltfs takes them from the cartridge memory.
    type: str
  volume_name:
    description:
      - Volume name written by mkltfs when formatting.
    type: str
  reformat_volume_serial:
    description:
      - Volume serial of a cartridge that holds an LTFS volume and may be formatted anyway, losing its data.
      - Formatting happens only when the volume in the drive has exactly this serial; any other formatted
        cartridge makes the task fail.
    type: str
  writable:
    description:
      - Require a writable volume. A write-protected cartridge is mounted read-only by LTFS; with C(true)
        the module unmounts it again and fails.
    type: bool
    default: true
  recover:
    description:
      - Allow C(ltfsck) to roll an inconsistent volume back to its last complete index before mounting.
        Data written after that index stays on tape but no file refers to it any more.
    type: bool
    default: false
  sync_type:
    description:
      - LTFS C(sync_type) mount option. C(time@N) writes the index every N minutes, C(close) after each
        closed file, C(unmount) only at unmount.
    type: str
    default: time@5
  mount_options:
    description:
      - Further C(-o) options for ltfs, such as C(allow_other).
    type: list
    elements: str
    default: []
  mount_timeout:
    description:
      - Seconds to wait for the mount to appear after ltfs returned.
    type: float
    default: 120.0
  unmount_timeout:
    description:
      - Seconds to wait for the ltfs process to finish writing its index and exit after C(umount).
        An index of a full LTO cartridge with many files can take minutes.
    type: float
    default: 1800.0
  reserve_bytes:
    description:
      - Bytes of the available space to keep back in the returned C(volume.available_bytes), for index writes.
    type: int
    default: 0
seealso:
  - module: tape_changer
  - module: orthanc_study_archive
"""

EXAMPLES = r"""
- name: Mount the cartridge loaded in drive 0, recovering it if an earlier run crashed
  ltfs_volume:
    device: /dev/sg0
    mount_point: /mnt/ltfs0
    barcode: ARC001L8
    recover: true
  register: ltfs

- name: Write the LTFS index after a batch of studies
  ltfs_volume:
    state: synced
    mount_point: /mnt/ltfs0

- name: Unmount and wait until ltfs has written its index
  ltfs_volume:
    state: unmounted
    mount_point: /mnt/ltfs0

- name: Format a new scratch cartridge; a cartridge with data is left alone
  ltfs_volume:
    state: formatted
    device: /dev/sg0
    barcode: ARC002L8
    volume_name: orthanc-archive
"""

RETURN = r"""
volume:
  description: Facts of the mounted volume, read from LTFS's extended attributes on the mount root.
  returned: when the volume is mounted at the end of the task
  type: dict
  contains:
    serial: {description: LTFS volume serial., type: str}
    name: {description: LTFS volume name., type: str}
    capacity_bytes: {description: Size of the data partition., type: int}
    available_bytes: {description: Space left on the data partition minus O(reserve_bytes). Deleted files free nothing., type: int}
    index_generation: {description: Generation of the last index LTFS wrote., type: int}
read_only:
  description: Whether LTFS mounted the volume read-only (write-protected cartridge).
  returned: when the volume is mounted
  type: bool
recovered:
  description: Whether ltfsck rolled the volume back before it was mounted.
  returned: always
  type: bool
formatted:
  description: Whether mkltfs formatted the cartridge in this task.
  returned: always
  type: bool
ltfs_pid:
  description: Process ID of the ltfs process that served the mount.
  returned: when one was found
  type: int
waited_seconds:
  description: Seconds spent waiting for the ltfs process to exit after the unmount.
  returned: when O(state=unmounted)
  type: float
messages:
  description: LTFS message IDs the tools printed, such as C(14019I).
  returned: always
  type: list
  elements: str
"""

import os
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible.module_utils.archive_volume import Volume, VolumeError
from ansible.module_utils.ltfs_tools import (
    MSG_ALREADY_FORMATTED,
    MSG_INCONSISTENT,
    MSG_NOT_FORMATTED,
    MSG_WRITE_PROTECTED,
    error_lines,
    find_ltfs_process,
    message_ids,
    mount_entry,
    volume_serial_for_barcode,
    wait_for_exit,
    wait_for_mount,
)


class LtfsVolume:
    """One drive and mount point, driven through the LTFS command-line tools."""

    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.result = {"changed": False, "recovered": False, "formatted": False, "messages": []}

    def fail(self, message):
        self.module.fail_json(msg=message, **self.result)

    def tool(self, name):
        path = self.module.get_bin_path(name)
        if path is None:
            self.fail(f"{name} was not found on PATH: install LTFS with the ltfs role, or add its bin folder to PATH")
        return path

    def run(self, argv):
        rc, out, err = self.module.run_command(argv)
        output = (out or "") + (err or "")
        self.result["messages"] = sorted(set(self.result["messages"]) | message_ids(output))
        return rc, output

    # -- mount state ----------------------------------------------------------------------------

    def is_mounted(self, mount_point):
        entry = mount_entry(mount_point)
        return entry is not None and "fuse" in entry["fstype"]

    def wait_for_ltfs_exit(self, process, what):
        if process is None:
            return 0.0
        self.result["ltfs_pid"] = process["pid"]
        try:
            return wait_for_exit(process["pid"], self.params["unmount_timeout"])
        except TimeoutError as exc:
            self.fail(f"{exc} {what}; it is still writing the index of the volume, so do not touch the drive: "
                      "wait for it to exit, or raise unmount_timeout")
        return 0.0

    def wait_for_device(self, device):
        """Fail when another mount uses the drive; wait for an ltfs process that is only writing its index."""
        process = find_ltfs_process(device=device)
        if process is None:
            return
        if process["mount_point"] and self.is_mounted(process["mount_point"]):
            self.fail(f"{device} is in use by the LTFS volume mounted on {process['mount_point']} (ltfs process "
                      f"{process['pid']}): unmount it with state=unmounted first")
        self.wait_for_ltfs_exit(process, f"on {device}")

    def unmount(self, mount_point):
        """Run umount and wait for the ltfs process; return the seconds waited for it."""
        process = find_ltfs_process(mount_point=mount_point)
        rc, output = self.run([self.tool("umount"), mount_point])
        if rc != 0 and self.is_mounted(mount_point):
            self.fail(f"umount {mount_point} failed: {error_lines(output)}; close the files and shells that use "
                      "the volume (fuser -vm shows them) and run again")
        return self.wait_for_ltfs_exit(process, f"after umount {mount_point}")

    def mount_once(self, device, mount_point):
        options = [f"devname={device}", f"sync_type={self.params['sync_type']}", *self.params["mount_options"]]
        argv = [self.tool("ltfs"), "-o", ",".join(options), mount_point]
        return self.run(argv)

    def read_facts(self, mount_point):
        try:
            volume = Volume(mount_point, self.params["reserve_bytes"])
            if not volume.is_ltfs:
                self.fail(f"{mount_point} is mounted but has no user.ltfs.volumeSerial attribute, so it is not an "
                          "LTFS volume: unmount it and mount the tape with this module")
            facts = volume.facts()
        except (VolumeError, OSError) as exc:
            self.fail(f"reading the LTFS attributes of {mount_point} failed: {exc}")
        entry = mount_entry(mount_point) or {}
        self.result["volume"] = facts
        return facts, entry

    def check_cartridge(self, facts, read_only, mount_point):
        """Unmount and fail when the volume is not the expected cartridge or cannot be written."""
        barcode = self.params["barcode"]
        if barcode:
            try:
                expected = self.params["volume_serial"] or volume_serial_for_barcode(barcode)
            except ValueError as exc:
                self.unmount(mount_point)
                self.fail(str(exc))
            if facts["serial"] != expected:
                self.unmount(mount_point)
                self.fail(f"wrong cartridge in {self.params['device']}: expected barcode {barcode} (volume serial "
                          f"{expected}), found volume serial {facts['serial']}; load cartridge {barcode} with "
                          "tape_changer, or insert it into the drive")
        if read_only and self.params["writable"]:
            self.unmount(mount_point)
            name = barcode or facts["serial"]
            self.fail(f"cartridge {name} (volume serial {facts['serial']}) is write-protected, so LTFS mounted it "
                      "read-only: slide its write-protect tab to writable, or remove it from the scratch pool")

    # -- states ---------------------------------------------------------------------------------

    def mounted(self):
        device = self.require("device")
        mount_point = self.require("mount_point")

        if self.is_mounted(mount_point):
            process = find_ltfs_process(mount_point=mount_point)
            if process is not None:
                self.result["ltfs_pid"] = process["pid"]
                if process["devname"] not in (None, device):
                    self.fail(f"{mount_point} already serves the volume in {process['devname']}, not {device}: "
                              "unmount it first with state=unmounted")
            facts, entry = self.read_facts(mount_point)
            read_only = "ro" in entry.get("options", "").split(",")
            self.result["read_only"] = read_only
            self.check_cartridge(facts, read_only, mount_point)
            return

        if self.module.check_mode:
            self.result["changed"] = True
            return

        self.wait_for_device(device)
        if not os.path.isdir(mount_point):
            os.makedirs(mount_point, mode=0o755)

        rc, output = self.mount_once(device, mount_point)
        ids = message_ids(output)
        if rc != 0 and ids & MSG_INCONSISTENT:
            if not self.params["recover"]:
                self.fail(f"the LTFS volume in {device} is inconsistent: an earlier ltfs did not write its final "
                          f"index ({error_lines(output)}). Set recover=true to let ltfsck roll it back to its last "
                          f"complete index, or run 'ltfsck {device}' by hand")
            self.recover(device)
            rc, output = self.mount_once(device, mount_point)
            ids = message_ids(output)
        if rc != 0:
            self.fail(self.mount_failure(device, mount_point, ids, output))

        if not wait_for_mount(mount_point, self.params["mount_timeout"]):
            self.fail(f"ltfs returned but {mount_point} was not mounted within {self.params['mount_timeout']:.0f} s: "
                      f"see the ltfs messages in the system log ({error_lines(output)})")
        self.result["changed"] = True

        process = find_ltfs_process(mount_point=mount_point)
        if process is not None:
            self.result["ltfs_pid"] = process["pid"]
        facts, _entry = self.read_facts(mount_point)
        read_only = bool(ids & MSG_WRITE_PROTECTED)
        self.result["read_only"] = read_only
        self.check_cartridge(facts, read_only, mount_point)

    def mount_failure(self, device, mount_point, ids, output):
        if ids & MSG_NOT_FORMATTED:
            return (f"the cartridge in {device} holds no LTFS volume: format it with state=formatted if it is a "
                    f"scratch cartridge ({error_lines(output)})")
        if "11331E" in ids or "14075E" in ids:
            return f"no cartridge could be loaded in {device}: load one with tape_changer ({error_lines(output)})"
        if ids & MSG_INCONSISTENT:
            return (f"the LTFS volume in {device} is still inconsistent after ltfsck ({error_lines(output)}): "
                    f"run 'ltfsck --deep-recovery {device}' by hand and check what it reports")
        return f"mounting the LTFS volume in {device} on {mount_point} failed: {error_lines(output)}"

    def recover(self, device):
        rc, output = self.run([self.tool("ltfsck"), device])
        # ltfsck exits 0 (no errors) or 1 (errors corrected) when the volume is consistent afterwards.
        if rc not in (0, 1):
            self.fail(f"ltfsck {device} could not make the volume consistent (exit code {rc}): {error_lines(output)}")
        self.result["recovered"] = True
        self.result["changed"] = True

    def unmounted(self):
        mount_point = self.require("mount_point")
        device = self.params["device"]
        waited = 0.0

        if self.is_mounted(mount_point):
            self.result["changed"] = True
            if not self.module.check_mode:
                waited = self.unmount(mount_point)
        elif not self.module.check_mode:
            # A previous umount may have returned while ltfs still writes the index: wait for that too.
            process = find_ltfs_process(mount_point=mount_point) or (
                find_ltfs_process(device=device) if device else None)
            waited = self.wait_for_ltfs_exit(process, f"on {mount_point}")
        self.result["waited_seconds"] = round(waited, 3)

    def synced(self):
        mount_point = self.require("mount_point")
        if not self.is_mounted(mount_point):
            self.fail(f"{mount_point} is not mounted, so there is no LTFS index to write: mount it with state=mounted")
        try:
            volume = Volume(mount_point, self.params["reserve_bytes"])
            before = volume.index_generation()
            if not self.module.check_mode:
                volume.sync()
            self.result["changed"] = volume.index_generation() != before
        except (VolumeError, OSError) as exc:
            self.fail(f"writing the LTFS index of {mount_point} failed: {exc}; the data written since the last "
                      "index is not safe until an index is written")
        self.read_facts(mount_point)

    def formatted(self):
        device = self.require("device")
        serial = self.params["volume_serial"]
        if serial is None and self.params["barcode"]:
            try:
                serial = volume_serial_for_barcode(self.params["barcode"])
            except ValueError as exc:
                self.fail(str(exc))

        reformat_serial = self.params["reformat_volume_serial"]
        process = find_ltfs_process(device=device)
        if process is not None and process["mount_point"] and self.is_mounted(process["mount_point"]):
            # A volume that LTFS has mounted is formatted; formatting it again needs an unmount first.
            current = self.read_facts(process["mount_point"])[0]["serial"]
            self.result.pop("volume", None)
            if reformat_serial is not None:
                self.fail(f"{device} has LTFS volume {current} mounted on {process['mount_point']}: unmount it "
                          "with state=unmounted before formatting")
        else:
            self.wait_for_device(device)
            current = self.probe_serial(device)

        if current is not None:
            self.result["volume_serial"] = current
            if reformat_serial is None:
                self.result["msg"] = (f"the cartridge in {device} already holds LTFS volume {current}; left as is")
                return
            if current != reformat_serial:
                self.fail(f"the cartridge in {device} holds LTFS volume {current}, not {reformat_serial} as "
                          "reformat_volume_serial names: nothing was formatted; check which cartridge is loaded")

        self.result["changed"] = True
        if self.module.check_mode:
            return

        argv = [self.tool("mkltfs"), "-d", device]
        if serial:
            argv += ["-s", serial]
        if self.params["volume_name"]:
            argv += ["-n", self.params["volume_name"]]
        if current is not None:
            argv.append("-f")
        rc, output = self.run(argv)
        ids = message_ids(output)
        if rc != 0:
            if ids & MSG_WRITE_PROTECTED:
                self.fail(f"the cartridge in {device} is write-protected, so mkltfs cannot format it: slide its "
                          "write-protect tab to writable, or use another scratch cartridge")
            if ids & MSG_ALREADY_FORMATTED:
                self.fail(f"mkltfs found an LTFS volume on the cartridge in {device} that the check mount did not "
                          "see; nothing was formatted")
            self.fail(f"mkltfs -d {device} failed (exit code {rc}): {error_lines(output)}")
        self.result["formatted"] = True
        self.result["volume_serial"] = serial

    def probe_serial(self, device):
        """Mount the volume on a temporary folder and return its serial, or None for a blank cartridge."""
        folder = tempfile.mkdtemp(prefix="ltfs-probe-")
        try:
            rc, output = self.mount_once(device, folder)
            ids = message_ids(output)
            if rc != 0:
                if ids & MSG_NOT_FORMATTED:
                    return None
                if ids & MSG_INCONSISTENT:
                    self.fail(f"the cartridge in {device} holds an inconsistent LTFS volume, so it is not blank: "
                              "mount it with recover=true to use it, or name it in reformat_volume_serial after "
                              "checking it with ltfsck")
                self.fail(f"checking whether the cartridge in {device} is blank failed: {error_lines(output)}")
            if not wait_for_mount(folder, self.params["mount_timeout"]):
                self.fail(f"the check mount of {device} on {folder} did not appear: {error_lines(output)}")
            facts, _entry = self.read_facts(folder)
            self.result.pop("volume", None)
            self.unmount(folder)
            return facts["serial"]
        finally:
            if not self.is_mounted(folder):
                shutil.rmtree(folder, ignore_errors=True)

    def require(self, name):
        value = self.params[name]
        if not value:
            self.fail(f"{name} is required for state={self.params['state']}")
        return value


def main():
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "default": "mounted", "choices": ["mounted", "unmounted", "synced", "formatted"]},
            "device": {"type": "str"},
            "mount_point": {"type": "path"},
            "barcode": {"type": "str"},
            "volume_serial": {"type": "str"},
            "volume_name": {"type": "str"},
            "reformat_volume_serial": {"type": "str"},
            "writable": {"type": "bool", "default": True},
            "recover": {"type": "bool", "default": False},
            "sync_type": {"type": "str", "default": "time@5"},
            "mount_options": {"type": "list", "elements": "str", "default": []},
            "mount_timeout": {"type": "float", "default": 120.0},
            "unmount_timeout": {"type": "float", "default": 1800.0},
            "reserve_bytes": {"type": "int", "default": 0},
        },
        required_if=[
            ("state", "mounted", ("device", "mount_point")),
            ("state", "unmounted", ("mount_point",)),
            ("state", "synced", ("mount_point",)),
            ("state", "formatted", ("device",)),
        ],
        supports_check_mode=True,
    )
    volume = LtfsVolume(module)
    getattr(volume, module.params["state"])()
    module.exit_json(**volume.result)


if __name__ == "__main__":
    main()
