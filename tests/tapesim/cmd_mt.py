"""mt (mt-st 1.x): status, rewind, offline/rewoffl/eject, load, tell and the motion commands.

Texts and exit codes follow mt.c of mt-st: a failed open() prints perror and exits 1,
a failed ioctl prints perror and returns 2. Commands that need a loaded tape open the
device in blocking mode, which the Linux st driver answers with ENOMEDIUM when the
drive is empty; ``status`` and ``load`` open it with O_NONBLOCK.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from . import state as st
from .state import JsonDict

DEFTAPE = "/dev/tape"

# (name, needs a loaded tape, needs a writable tape)
COMMANDS: list[tuple[str, bool, bool]] = [
    ("weof", True, True), ("wset", True, True), ("eof", True, False), ("fsf", True, False),
    ("fsfm", True, False), ("bsf", True, False), ("bsfm", True, False), ("fsr", True, False),
    ("bsr", True, False), ("fss", True, False), ("bss", True, False), ("rewind", True, False),
    ("offline", True, False), ("rewoffl", True, False), ("eject", True, False),
    ("retension", True, False), ("eod", True, False), ("seod", True, False), ("seek", True, False),
    ("tell", True, False), ("status", False, False), ("erase", True, True), ("setblk", False, False),
    ("lock", True, False), ("unlock", True, False), ("load", False, False),
    ("compression", False, False), ("setdensity", False, False), ("drvbuffer", False, False),
    ("stwrthreshold", False, False), ("stoptions", False, False), ("stsetoptions", False, False),
    ("stclearoptions", False, False), ("defblksize", False, False), ("defdensity", False, False),
    ("defdrvbuffer", False, False), ("defcompression", False, False), ("stsetcln", False, False),
    ("sttimeout", False, False), ("stlongtimeout", False, False), ("densities", False, False),
    ("setpartition", True, False), ("mkpartition", True, True), ("partseek", True, False),
    ("asf", True, False), ("stshowoptions", False, False),
]

DENSITY_NAMES = {0x00: "default", 0x58: "LTO-5", 0x5A: "LTO-6", 0x5C: "LTO-7", 0x5D: "LTO-7-M8",
                 0x5E: "LTO-8", 0x60: "LTO-9"}

# General status bits from linux/mtio.h, in the order mt prints them.
GMT_BITS = [("EOF", 0x80000000), ("BOT", 0x40000000), ("EOT", 0x20000000), ("SM", 0x10000000),
            ("EOD", 0x08000000), ("WR_PROT", 0x04000000), ("ONLINE", 0x01000000),
            ("D_6250", 0x00800000), ("D_1600", 0x00400000), ("D_800", 0x00200000),
            ("DR_OPEN", 0x00040000), ("IM_REP_EN", 0x00010000), ("CLN", 0x00008000)]


def usage(explain: bool, exit_code: int) -> int:
    sys.stderr.write("usage: mt [-v] [--version] [-h] [ -f device ] command [ count ]\n")
    sys.stderr.write(f"default tape device: {DEFTAPE}\n")
    if explain:
        names = [name for name, _, _ in COMMANDS]
        line = "commands: "
        for position, name in enumerate(names):
            line += name + ("." if position == len(names) - 1 else ", ")
            if len(line) >= 70 or position == len(names) - 1:
                sys.stderr.write(line + "\n")
                line = "          "
    return exit_code


def _perror(device: str, message: str) -> None:
    sys.stderr.write(f"{device}: {message}\n")


def _lookup(command: str) -> tuple[str, bool, bool] | None | str:
    matches = [entry for entry in COMMANDS if entry[0].startswith(command)]
    exact = [entry for entry in matches if entry[0] == command]
    if exact:
        return exact[0]
    if not matches:
        return None
    if len(matches) > 1:
        return "ambiguous"
    return matches[0]


def print_status(drive: JsonDict, cartridge: JsonDict | None) -> None:
    loaded = cartridge is not None and drive["threaded"]
    print("SCSI 2 tape drive:")
    if loaded:
        print("File number=0, block number=0, partition=0.")
        density = drive["density_code"]
    else:
        print("File number=-1, block number=-1, partition=0.")
        density = 0
    print(f"Tape block size 0 bytes. Density code 0x{density:x} ({DENSITY_NAMES.get(density, 'no translation')}).")
    print("Soft error count since last status=0")

    gstat = 0x00010000  # IM_REP_EN: the st driver always reports immediate report mode
    if loaded:
        gstat |= 0x40000000 | 0x01000000
        if cartridge["write_protected"]:
            gstat |= 0x04000000
    else:
        gstat |= 0x00040000
    print(f"General status bits on ({gstat:x}):")
    print("".join(f" {name}" for name, bit in GMT_BITS if gstat & bit))


def _touch_check(state: Path, drive: JsonDict, argv: list[str]) -> None:
    """Record an event when the drive is unloaded under a live ltfs process.

    If ltfs is mounted, it can no longer write its final index, so data written since
    its last index stays unreferenced and the volume is inconsistent. If it is writing
    an index right now, that index is cut off: the cartridge is marked damaged.
    """
    record = st.active_mount(state, drive["index"])
    if record is None:
        return

    st.record_event(state, "drive_touched_while_ltfs_active", command=[os.path.basename(argv[0]), *argv[1:]],
                    drive=drive["index"], barcode=drive["cartridge"], phase=record["phase"],
                    ltfs_pid=record["pid"])
    if record["phase"] == "writing_index":
        cartridge = st.load_cartridge(state, drive["cartridge"])
        if cartridge["volume"] is not None:
            cartridge["volume"]["index_damaged"] = True
            st.save_cartridge(state, cartridge)


def run_command(state: Path, device: str, name: str, needs_tape: bool, needs_write: bool,
                args: list[str], argv: list[str]) -> int:
    with st.locked(state):
        library = st.load_library(state)
        drive = st.find_drive(library, device)
        if drive is None:
            _perror(device, "No such file or directory")
            return 1

        cartridge = st.load_cartridge(state, drive["cartridge"]) if drive["cartridge"] else None
        loaded = cartridge is not None and drive["threaded"]

        # open(2): blocking opens fail on an empty drive; O_RDWR fails on a protected tape.
        if needs_tape and not loaded:
            _perror(device, "No medium found")
            return 1
        if needs_write and cartridge is not None and cartridge["write_protected"]:
            _perror(device, "Read-only file system")
            return 1

        if name == "status":
            print_status(drive, cartridge)
            return 0

        if name == "tell":
            print("At block 0.")
            return 0

        if name == "load":
            if cartridge is None:
                _perror(device, "Input/output error")
                return 2
            if not drive["threaded"]:
                drive["threaded"] = True
                st.save_library(state, library)
            return 0

        if name in ("offline", "rewoffl", "eject"):
            _touch_check(state, drive, argv)
            drive["threaded"] = False
            st.save_library(state, library)
            return 0

        if name == "erase":
            _touch_check(state, drive, argv)
            cartridge["volume"] = None
            st.save_cartridge(state, cartridge)
            return 0

        if name == "densities":
            return 0

        # Positioning and driver settings change nothing the simulator models.
        return 0


def main(argv: list[str]) -> int:
    device: str | None = None
    position = 1
    while position < len(argv) and argv[position].startswith("-"):
        arg = argv[position]
        if arg in ("-f", "-t"):
            if position + 1 >= len(argv):
                return usage(False, 1)
            device = argv[position + 1]
            position += 2
            continue
        if arg == "-h":
            return usage(True, 0)
        if arg in ("-v", "--version"):
            print("mt-st v. 1.7")
            print(f"default tape device: {DEFTAPE}")
            return 0
        return usage(False, 1)

    if device is None:
        device = os.environ.get("TAPE", DEFTAPE)
    if position >= len(argv):
        return usage(False, 1)

    command = argv[position]
    args = argv[position + 1:]
    entry = _lookup(command)
    if entry is None:
        sys.stderr.write(f'mt: unknown command "{command}"\n')
        return usage(True, 1)
    if entry == "ambiguous":
        sys.stderr.write(f'mt: ambiguous command "{command}"\n')
        return usage(True, 1)

    name, needs_tape, needs_write = entry  # type: ignore[misc]
    max_args = 2 if name == "partseek" else (255 if name.startswith("st") and "options" in name else 1)
    if name in ("rewind", "offline", "rewoffl", "eject", "retension", "eod", "seod", "tell",
                "status", "lock", "unlock", "densities"):
        max_args = 0
    if len(args) > max_args:
        sys.stderr.write(f"mt: too many arguments for the command '{name}'.\n")
        return 1

    state = st.state_dir_from_env()
    st.log_command(state, argv)
    return run_command(state, device, name, needs_tape, needs_write, args, argv)
