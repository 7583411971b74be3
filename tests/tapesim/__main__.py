"""Command line for building and changing a simulated library.

    python -m tests.tapesim init --state DIR --drives 2 --slots 8 --cartridges ABC001L8,ABC002L8
    python -m tests.tapesim insert --state DIR --drive 0 --barcode ABC003L8
    python -m tests.tapesim write-protect --state DIR --barcode ABC001L8 [--off]
    python -m tests.tapesim flip-byte --state DIR --barcode ABC001L8 --path dir/file --offset 10
    python -m tests.tapesim env --state DIR
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from . import library as lib


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}
    if text[-1:].upper() in units:
        return int(float(text[:-1]) * units[text[-1].upper()])
    return int(text)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.tapesim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    init = commands.add_parser("init", help="create a library in an empty state folder")
    init.add_argument("--state", type=Path, required=True, help="state folder to create")
    init.add_argument("--drives", type=int, default=2, help="number of drives (default: 2)")
    init.add_argument("--slots", type=int, default=8, help="number of storage slots (default: 8)")
    init.add_argument("--import-export", type=int, default=1, help="number of import/export slots (default: 1)")
    init.add_argument("--no-changer", action="store_true", help="standalone drives without a changer")
    init.add_argument("--cartridges", default="", help="comma-separated barcodes, placed in slots 1, 2, ...")
    init.add_argument("--capacity", type=parse_size, default=64 * lib.MIB,
                      help="cartridge capacity in bytes, K/M/G suffixes allowed (default: 64M)")
    init.add_argument("--index-write-seconds", type=float, default=1.0,
                      help="time ltfs spends writing its index at unmount (default: 1.0)")

    insert = commands.add_parser("insert", help="put a cartridge into a drive by hand")
    insert.add_argument("--state", type=Path, required=True)
    insert.add_argument("--drive", type=int, required=True, help="drive number, from 0")
    insert.add_argument("--barcode", required=True)
    insert.add_argument("--capacity", type=parse_size, default=64 * lib.MIB)

    protect = commands.add_parser("write-protect", help="set or clear a cartridge's write-protect tab")
    protect.add_argument("--state", type=Path, required=True)
    protect.add_argument("--barcode", required=True)
    protect.add_argument("--off", action="store_true", help="clear the tab instead of setting it")

    flip = commands.add_parser("flip-byte", help="invert one byte of a file as stored on tape")
    flip.add_argument("--state", type=Path, required=True)
    flip.add_argument("--barcode", required=True)
    flip.add_argument("--path", required=True, help="file path inside the LTFS volume")
    flip.add_argument("--offset", type=int, default=0, help="byte offset in the file (default: 0)")

    env = commands.add_parser("env", help="print shell exports that put the simulator on PATH")
    env.add_argument("--state", type=Path, required=True)

    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            barcodes = [code for code in args.cartridges.split(",") if code]
            lib.create_library(args.state, drives=args.drives, slots=args.slots,
                               import_export=args.import_export, changer=not args.no_changer,
                               cartridges=barcodes, capacity_bytes=args.capacity,
                               index_write_seconds=args.index_write_seconds)
        elif args.command == "insert":
            lib.insert_cartridge(args.state, args.barcode, args.drive, args.capacity)
        elif args.command == "write-protect":
            lib.set_write_protected(args.state, args.barcode, not args.off)
        elif args.command == "flip-byte":
            lib.flip_byte(args.state, args.barcode, args.path, args.offset)
        elif args.command == "env":
            # Print only the variables the simulator changes, so that eval does not export the
            # whole environment again.
            for key, value in lib.environment_for(args.state.resolve()).items():
                if os.environ.get(key) != value:
                    print(f"export {key}={shlex.quote(value)}")
    except (ValueError, FileNotFoundError) as error:
        sys.stderr.write(f"tapesim: {error}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
