"""lsscsi: list the simulated drives and changer in lsscsi 0.3x's default layout.

Column widths follow one_sdev_entry() in lsscsi.c: "[H:C:T:L]" padded to 13, the
7-character short device type and a space, vendor %-8s, model %-16s, revision %-4s
and two spaces, the device node %-9s, and with -g two spaces and the sg node %-9s.
"""

from __future__ import annotations

import sys

from . import state as st

USAGE = """Usage: lsscsi   [--classic] [--device] [--generic] [--help] [--hosts]
                [--kname] [--list] [--lunhex] [--long] [--protection]
                [--scsi_id] [--size] [--sysfsroot=PATH] [--transport]
                [--unit] [--verbose] [--version] [--wwn] [<h:c:t:l>]
"""


def _hctl_key(hctl: str) -> tuple[int, ...]:
    return tuple(int(part) for part in hctl.split(":"))


def main(argv: list[str]) -> int:
    generic = False
    scsi_id = False
    for arg in argv[1:]:
        if arg in ("-g", "--generic"):
            generic = True
        elif arg in ("-i", "--scsi_id"):
            scsi_id = True
        elif arg in ("-h", "--help"):
            sys.stderr.write(USAGE)
            return 0
        elif arg.startswith("-") and len(arg) > 1 and not arg.startswith("--") and set(arg[1:]) <= {"g", "i"}:
            generic = generic or "g" in arg
            scsi_id = scsi_id or "i" in arg
        else:
            sys.stderr.write(f"lsscsi: unrecognized option '{arg}'\n")
            sys.stderr.write(USAGE)
            return 1

    state = st.state_dir_from_env()
    st.log_command(state, argv)
    library = st.load_library(state)

    rows = []
    for drive in library["drives"]:
        rows.append((drive["hctl"], "tape   ", drive, drive["st"]))
    if library["changer"] is not None:
        changer = library["changer"]
        rows.append((changer["hctl"], "mediumx", changer, "-"))
    rows.sort(key=lambda row: _hctl_key(row[0]))

    for hctl, kind, device, node in rows:
        line = f"{'[' + hctl + ']':<13}{kind} {device['vendor']:<8} {device['model']:<16} {device['revision']:<4}  {node:<9}"
        if generic:
            line += f"  {device['sg']:<9}"
        if scsi_id:
            # NOTE: lsscsi takes this column from /dev/disk/by-id, which udev fills only for disks;
            # its position after the sg column is not checked against a real tape library.
            line += f"  {'-':<9}"
        sys.stdout.write(line + "\n")
    return 0
