"""mtx 1.3.12: status, inventory, inquiry, load, unload, transfer, first/last/next/previous.

Output and errors follow mtx.c and mtxl.c: FatalError() prints "<argv0>: <message>" to
stderr and exits 1; a failed MOVE MEDIUM prints the request sense block first. Commands
run in argv order, so "unload 3 0 load 4 0" works as with the real tool.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from . import state as st
from .state import JsonDict

VERSION = "1.3.12"

USAGE = """Usage:
\tmtx --version
\tmtx [ -f <loader-dev> ] noattach <more commands>
\tmtx [ -f <loader-dev> ] inquiry | inventory 
\tmtx [ -f <loader-dev> ] [altres] [nobarcode] status
\tmtx [ -f <loader-dev> ] [altres] first [<drive#>]
\tmtx [ -f <loader-dev> ] [altres] last [<drive#>]
\tmtx [ -f <loader-dev> ] [altres] previous [<drive#>]
\tmtx [ -f <loader-dev> ] [altres] next [<drive#>]
\tmtx [ -f <loader-dev> ] [altres] [invert] load <storage-element-number> [<drive#>]
\tmtx [ -f <loader-dev> ] [altres] [invert] unload [<storage-element-number>][<drive#>]
\tmtx [ -f <loader-dev> ] [altres] [eepos eepos-number] transfer <storage-element-number> <storage-element-number>
\tmtx [ -f <loader-dev> ] [altres] [eepos eepos-number][invert][invert2] exchange <storage-element-number> <storage-element-number>
\tmtx [ -f <loader-dev> ] [altres] position <storage-element-number>
\tmtx [ -f <loader-dev> ] eject
"""

# name -> number of numeric arguments, as in mtx.c's command_table
COMMAND_ARGS = {"inquiry": 0, "status": 0, "invert": 0, "noattach": 0, "eepos": 1, "load": 2,
                "unload": 2, "transfer": 2, "first": 1, "last": 1, "previous": 1, "next": 1,
                "--version": 0, "inventory": 0, "eject": 0, "erase": 0, "nobarcode": 0,
                "position": 1, "invert2": 0, "exchange": 3, "altres": 0}

SENSE_KEYS = {2: "Not Ready", 5: "Illegal Request", 6: "Unit Attention"}


class MtxExit(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class Mtx:
    def __init__(self, state: Path, argv: list[str]) -> None:
        self.state = state
        self.argv = argv
        self.argv0 = os.path.basename(argv[0])
        self.device: str | None = None
        self.no_barcodes = False

    def fatal(self, message: str) -> None:
        sys.stdout.flush()
        sys.stderr.write(f"{self.argv0}: {message}\n")
        sys.stderr.flush()
        raise MtxExit(1)

    def usage(self) -> None:
        sys.stderr.write(USAGE)
        raise MtxExit(1)

    def open_device(self, device: str) -> None:
        library = st.load_library(self.state)
        changer = library["changer"]
        if changer is None or device != changer["sg"]:
            # scsi_linux.c: SCSI_OpenDevice() fails open() and calls FatalError.
            self.fatal(f"cannot open SCSI device '{device}' - No such file or directory")
        self.device = device

    def print_request_sense(self, sense_key: int, asc: int, ascq: int) -> None:
        lines = [
            "Long Report=yes", "Valid Residual=no", "Error Code=70 (Current)",
            f"Sense Key={SENSE_KEYS[sense_key]}", "FileMark=no", "EOM=no", "ILI=no",
            f"Additional Sense Code = {asc:02X}", f"Additional Sense Qualifier = {ascq:02X}",
            "BPV=no", "Error in CDB=no", "SKSV=no",
        ]
        sys.stdout.flush()
        for line in lines:
            sys.stderr.write(f"mtx: Request Sense: {line}\n")

    # Element helpers; slot numbers are 1-based, drive numbers 0-based.

    def slot(self, library: JsonDict, number: int) -> JsonDict:
        return library["slots"][number - 1]

    def move(self, library: JsonDict, source: JsonDict, destination: JsonDict) -> None:
        """Run MOVE MEDIUM between two elements (drives or slots) of ``library``."""
        src_address = source.get("element_address", source.get("address"))
        dst_address = destination.get("element_address", destination.get("address"))

        if source["cartridge"] is None:
            self.fatal(f"Source Element Address {src_address} is Empty")
        if destination["cartridge"] is not None:
            self.fatal(f"Destination Element Address {dst_address} is Already Full")

        for element in (source, destination):
            if "index" in element:
                record = st.active_mount(self.state, element["index"])
                if record is not None:
                    # LTFS keeps PREVENT MEDIUM REMOVAL set while it has the volume open,
                    # so the library refuses to take the cartridge out of the drive.
                    st.record_event(self.state, "drive_touched_while_ltfs_active",
                                    command=[self.argv0, *self.argv[1:]], drive=element["index"],
                                    barcode=element["cartridge"], phase=record["phase"],
                                    ltfs_pid=record["pid"])
                    self.print_request_sense(5, 0x53, 0x03)
                    self.fatal(f"MOVE MEDIUM from Element Address {src_address} to {dst_address} Failed")

        barcode = source["cartridge"]
        source["cartridge"] = None
        destination["cartridge"] = barcode
        if "index" in source:
            source.update(threaded=False, source_slot=None)
        if "index" in destination:
            # The library threads the tape after the move; slot numbers are remembered so that
            # "unload" without a slot returns the cartridge where it came from.
            origin = source.get("number") if "number" in source else None
            destination.update(threaded=True, source_slot=origin)
        st.save_library(self.state, library)

    # Commands

    def status(self, library: JsonDict) -> None:
        slots = library["slots"]
        import_export = sum(1 for slot in slots if slot["import_export"])
        print(f"  Storage Changer {self.device}:{len(library['drives'])} Drives, "
              f"{len(slots)} Slots ( {import_export} Import/Export )")

        for drive in library["drives"]:
            line = f"Data Transfer Element {drive['index']}:"
            if drive["cartridge"] is None:
                line += "Empty"
            else:
                if drive["source_slot"] is not None:
                    line += f"Full (Storage Element {drive['source_slot']} Loaded)"
                else:
                    line += "Full (Unknown Storage Element Loaded)"
                if not self.no_barcodes:
                    line += f":VolumeTag = {self.volume_tag(drive['cartridge'])}"
            print(line)

        for slot in slots:
            line = f"      Storage Element {slot['number']}{' IMPORT/EXPORT' if slot['import_export'] else ''}:"
            line += "Full " if slot["cartridge"] is not None else "Empty"
            if slot["cartridge"] is not None and not self.no_barcodes:
                line += f":VolumeTag={self.volume_tag(slot['cartridge'])}"
            print(line)

    @staticmethod
    def volume_tag(barcode: str) -> str:
        # The primary volume tag field is 32 bytes; libraries pad the barcode with spaces
        # and mtx prints the field as it is.
        return f"{barcode:<32}"

    def inquiry(self, library: JsonDict) -> None:
        changer = library["changer"]
        print("Product Type: Medium Changer")
        print(f"Vendor ID: '{changer['vendor']:<8}'")
        print(f"Product ID: '{changer['model']:<16}'")
        print(f"Revision: '{changer['revision']:<4}'")
        print("Attached Changer API: No")

    def load(self, library: JsonDict, slot_number: int, drive_number: int) -> None:
        if slot_number < 1:
            self.fatal("No source specified")
        if drive_number < 0:
            drive_number = 0
        if slot_number > len(library["slots"]):
            self.fatal(f"Invalid <storage-element-number> argument '{slot_number}' to 'load' command")
        if drive_number >= len(library["drives"]):
            self.fatal(f"illegal <drive-number> argument '{drive_number}' to 'load' command")

        drive = library["drives"][drive_number]
        if drive["cartridge"] is not None:
            self.fatal(f"Drive {drive_number} Full (Storage Element {self._source_number(drive)} loaded)")

        sys.stdout.write(f"Loading media from Storage Element {slot_number} into drive {drive_number}...")
        sys.stdout.flush()
        self.move(library, self.slot(library, slot_number), drive)
        print("done")

    @staticmethod
    def _source_number(drive: JsonDict) -> int:
        # mtx prints DataTransferElementSourceStorageElementNumber + 1, which is 0 when unknown.
        return drive["source_slot"] if drive["source_slot"] is not None else 0

    def unload(self, library: JsonDict, slot_number: int, drive_number: int) -> None:
        if drive_number < 0:
            drive_number = 0
        if drive_number >= len(library["drives"]):
            self.fatal(f"illegal <drive-number> argument '{drive_number}' to 'unload' command")

        drive = library["drives"][drive_number]
        if slot_number < 0:
            if drive["source_slot"] is None:
                self.fatal(f"No Source for tape in drive {drive_number}!")
            slot_number = drive["source_slot"]
        if slot_number > len(library["slots"]) or slot_number == 0:
            self.fatal(f"illegal <storage-element-number> argument '{slot_number}' to 'unload' command")
        if drive["cartridge"] is None:
            self.fatal(f"Data Transfer Element {drive_number} is Empty")

        slot = self.slot(library, slot_number)
        if slot["cartridge"] is not None:
            self.fatal(f"Storage Element {slot_number} is Already Full")

        sys.stdout.write(f"Unloading drive {drive_number} into Storage Element {slot_number}...")
        sys.stdout.flush()
        self.move(library, drive, slot)
        print("done")

    def transfer(self, library: JsonDict, source: int, destination: int) -> None:
        if source < 1:
            self.fatal("No source specified")
        if destination < 1:
            self.fatal("No destination specified")
        if source > len(library["slots"]):
            self.fatal("Invalid source")
        if destination > len(library["slots"]):
            self.fatal("Invalid destination")
        self.move(library, self.slot(library, source), self.slot(library, destination))

    def step(self, library: JsonDict, name: str, drive_arg: int) -> None:
        """Run first, last, next or previous as mtx.c does: unload the drive, then load."""
        drive_number = drive_arg if 0 <= drive_arg < len(library["drives"]) else 0
        drive = library["drives"][drive_number]
        storage = [slot["number"] for slot in library["slots"] if not slot["import_export"]]
        current = drive["source_slot"] if drive["cartridge"] is not None else None

        if name == "first":
            if current == 1:
                print("loading...done.")
                return
            candidates = [1]
        elif name == "last":
            if current is not None and current >= storage[-1]:
                print("loading...done.")
                return
            candidates = [storage[-1]]
        elif name == "next":
            start = current if current is not None else 0
            candidates = [n for n in storage if n > start and self.slot(library, n)["cartridge"]]
        else:
            start = current if current is not None else storage[-1] + 1
            if current == 1:
                self.fatal("No More Media")
            candidates = [n for n in reversed(storage) if n < start and self.slot(library, n)["cartridge"]]

        if drive["cartridge"] is not None:
            self.unload(library, -1, drive_number)
        if not candidates:
            self.fatal("No More Media")
        self.load(library, candidates[0], drive_number)

    def run(self) -> int:
        args = self.argv[1:]
        position = 0
        try:
            if not args:
                self.usage()
            while position < len(args):
                arg = args[position]
                if arg == "-f":
                    if position + 1 >= len(args):
                        self.usage()
                    self.open_device(args[position + 1])
                    position += 2
                    continue

                if arg not in COMMAND_ARGS:
                    self.usage()
                position += 1
                numbers: list[int] = []
                while len(numbers) < COMMAND_ARGS[arg] and position < len(args) and args[position][:1].isdigit():
                    numbers.append(int("".join(ch for ch in args[position] if ch.isdigit()) or "0"))
                    position += 1
                self.execute(arg, numbers)
            return 0
        except MtxExit as stop:
            return stop.code

    def execute(self, name: str, numbers: list[int]) -> None:
        if name == "--version":
            sys.stderr.write(f"mtx version {VERSION}\n\n")
            self.usage()
        if name == "nobarcode":
            self.no_barcodes = True
            return
        if name in ("invert", "invert2", "noattach", "altres", "eepos"):
            return

        if self.device is None:
            device = os.environ.get("CHANGER") or os.environ.get("TAPE") or "/dev/changer"
            self.open_device(device)

        arg1 = numbers[0] if numbers else -1
        arg2 = numbers[1] if len(numbers) > 1 else -1
        with st.locked(self.state):
            library = st.load_library(self.state)
            if name == "status":
                self.status(library)
            elif name == "inquiry":
                self.inquiry(library)
            elif name == "inventory":
                pass
            elif name == "load":
                self.load(library, arg1, arg2)
            elif name == "unload":
                self.unload(library, arg1, arg2)
            elif name == "transfer":
                self.transfer(library, arg1, arg2)
            elif name in ("first", "last", "next", "previous"):
                self.step(library, name, arg1)
            else:
                sys.stderr.write(f"tapesim: mtx {name} is not simulated\n")
                raise MtxExit(1)


def main(argv: list[str]) -> int:
    state = st.state_dir_from_env()
    st.log_command(state, argv)
    return Mtx(state, argv).run()
