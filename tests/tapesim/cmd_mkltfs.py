"""mkltfs: format (or with --wipe, unformat) the cartridge in a simulated drive.

Messages, their order and the exit codes follow src/utils/mkltfs.c and
messages/bin_mkltfs/root.txt of the LTFS reference implementation (2.4):
0 formatted, 1 unformatted, 8 operational error, 16 usage error or refused medium.
"""

from __future__ import annotations

import getopt
import re
import sys
from pathlib import Path

from . import state as st
from . import volume as vol
from .state import ltfs_message as msg

MKLTFS_NO_ERRORS = 0
MKLTFS_UNFORMATTED = 1
MKLTFS_OPERATIONAL_ERROR = 8
MKLTFS_USAGE_SYNTAX_ERROR = 16

SHORT_OPTIONS = "i:e:d:b:s:n:r:cokwfqtxhpV"
LONG_OPTIONS = ["config=", "backend=", "device=", "blocksize=", "tape-serial=", "volume-name=",
                "rules=", "kmi-backend=", "no-compression", "no-override", "keep-capacity", "wipe",
                "long-wipe", "destructive", "force", "quiet", "trace", "syslogtrace", "fulltrace",
                "help", "advanced-help", "version"]


def show_usage(program: str) -> None:
    lines = [
        "", f"Usage: {program} <options>", "",
        "Available options are:",
        "  -d, --device=<name>       Tape device (required)",
        "  -f, --force               Force to format medium",
        "  -s, --tape-serial=<id>    Tape serial number (6 alphanumeric ASCII characters)",
        "  -n, --volume-name=<name>  Tape volume name (empty by default)",
        "  -r, --rules=<rules>       Rules for choosing files to write to the index partition.",
        "      --no-override         Disallow mount-time data placement policy changes",
        "  -w, --wipe                Restore the LTFS medium to an unpartitioned medium (format to a legacy scratch medium)",
        "  -q, --quiet               Suppress progress information and general messages",
        "  -t, --trace               Enable function call tracing",
        "      --syslogtrace               Enable diagnostic output to stderr and syslog",
        "  -V, --version             Version information",
        "  -h, --help                This help",
        "  -p, --advanced-help       Full help, including advanced options",
        "", "Usage example:",
        f'  {program} --device=/dev/sg0 --rules="size=100K"',
    ]
    sys.stderr.write("\n".join(lines) + "\n")


def getopt_error(program: str, error: getopt.GetoptError) -> None:
    """Print the error as glibc's getopt_long does."""
    option = error.opt
    if "requires argument" in error.msg:
        if len(option) == 1:
            sys.stderr.write(f"{program}: option requires an argument -- '{option}'\n")
        else:
            sys.stderr.write(f"{program}: option '--{option}' requires an argument\n")
    elif len(option) == 1:
        sys.stderr.write(f"{program}: invalid option -- '{option}'\n")
    else:
        sys.stderr.write(f"{program}: unrecognized option '--{option}'\n")


def main(argv: list[str]) -> int:
    program = argv[0].rsplit("/", 1)[-1]
    try:
        options, rest = getopt.gnu_getopt(argv[1:], SHORT_OPTIONS, LONG_OPTIONS)
    except getopt.GetoptError as error:
        getopt_error(program, error)
        show_usage(program)
        return MKLTFS_USAGE_SYNTAX_ERROR

    device = serial = name = None
    force = wipe = quiet = False
    for option, value in options:
        if option in ("-d", "--device"):
            device = value
        elif option in ("-s", "--tape-serial"):
            serial = value
        elif option in ("-n", "--volume-name"):
            name = value
        elif option in ("-f", "--force"):
            force = True
        elif option in ("-w", "--wipe", "--long-wipe"):
            wipe = True
        elif option in ("-q", "--quiet"):
            quiet = True
        elif option in ("-h", "--help", "-p", "--advanced-help"):
            show_usage(program)
            return 0
        elif option in ("-V", "--version"):
            msg("15059I", f"mkltfs version {st.LTFS_VERSION}.")
            msg("15059I", f"LTFS Format Specification version {st.LTFS_FORMAT_SPEC}.")
            return 0

    if rest:
        show_usage(program)
        return MKLTFS_USAGE_SYNTAX_ERROR

    state = st.state_dir_from_env()
    st.log_command(state, argv)

    info = (lambda message_id, text: None) if quiet else msg
    info("15000I", f"Starting mkltfs, LTFS version {st.LTFS_VERSION}, log level 2.")
    info("15041I", f'Launched by "{" ".join(argv)}".')
    info("15042I", "This binary is built for Linux (x86_64).")

    if serial is not None:
        if len(serial) != 6:
            msg("15029E", "Tape serial must be 6 characters.")
            show_usage(program)
            return MKLTFS_USAGE_SYNTAX_ERROR
        if not re.fullmatch(r"[0-9A-Z]{6}", serial):
            msg("15030E", "Tape serial must contain only ASCII digits and capital letters.")
            show_usage(program)
            return MKLTFS_USAGE_SYNTAX_ERROR
    if device is None:
        msg("15026E", "Device name must use the '-d' option.")
        msg("15002E", "Option validation failed.")
        show_usage(program)
        return MKLTFS_USAGE_SYNTAX_ERROR
    if name is not None and ("/" in name or name in ("", ".", "..")):
        msg("15031E", "Volume name must conform to file name rules.")
        msg("15002E", "Option validation failed.")
        show_usage(program)
        return MKLTFS_USAGE_SYNTAX_ERROR

    info("15003I", f"Formatting device '{device}'.")
    info("15004I", f"LTFS volume blocksize: {vol.LTFS_BLOCKSIZE}.")
    info("15005I", "Index partition placement policy: None.")
    if not quiet:
        sys.stderr.write("\n")

    with st.locked(state):
        return run_format(state, device, serial, name, force, wipe, info)


def run_format(state: Path, device: str, serial: str | None, name: str | None,
               force: bool, wipe: bool, info) -> int:  # type: ignore[no-untyped-def]
    failed_text = ("15039I", "Unformatting failed.") if wipe else ("15023I", "Formatting failed.")

    library = st.load_library(state)
    drive = st.find_drive(library, device)
    if drive is None:
        msg("15009E", f"Cannot open device '{device}' (-21700).")
        info(*failed_text)
        return MKLTFS_OPERATIONAL_ERROR

    if active := st.active_mount(state, drive["index"]):
        # The running ltfs holds a SCSI reservation on the drive.
        msg("15009E", f"Cannot open device '{device}' (-21719).")
        info(*failed_text)
        return MKLTFS_OPERATIONAL_ERROR

    if drive["cartridge"] is None:
        msg("15044E", "Cannot set up tape device.")
        info(*failed_text)
        return MKLTFS_OPERATIONAL_ERROR

    # mkltfs loads the tape itself (ltfs_load_tape) when it sits unthreaded in the drive.
    if not drive["threaded"]:
        drive["threaded"] = True
        st.save_library(state, library)
    cartridge = st.load_cartridge(state, drive["cartridge"])

    if wipe:
        if cartridge["write_protected"]:
            msg("15038E", "Failed to unformat the medium.")
            info(*failed_text)
            return MKLTFS_OPERATIONAL_ERROR
        vol.unformat_volume(state, cartridge)
        info("15040I", "Medium unformatted successfully.")
        return MKLTFS_UNFORMATTED

    if not force:
        info("15049I", "Checking the medium (mount).")
        if cartridge["volume"] is not None:
            msg("15047E", "Medium is already formatted (0).")
            info("15048I", "Need to specify -f or --force option to format this medium.")
            info(*failed_text)
            return MKLTFS_USAGE_SYNTAX_ERROR
    else:
        info("15049I", "Checking the medium (load).")

    info("15010I", "Creating data partition b on SCSI partition 1.")
    info("15011I", "Creating index partition a on SCSI partition 0.")
    if cartridge["write_protected"]:
        msg("11095E", "Cannot format: the medium is write protected.")
        msg("15012E", "Failed to format the medium.")
        info(*failed_text)
        return MKLTFS_USAGE_SYNTAX_ERROR

    info("11097I", "Partitioning the medium.")
    info("11100I", "Writing label to partition b.")
    info("11100I", "Writing label to partition a.")
    info("11278I", "Writing index to partition b.")
    info("11278I", "Writing index to partition a.")

    # NOTE: without -s the serial is the first six characters of the barcode; real mkltfs reads the
    # barcode from cartridge memory, and this simulator does not check how it shortens it.
    volume = vol.format_volume(state, cartridge, serial or cartridge["barcode"][:6], name)
    info("15013I", f"Volume UUID is: {volume['uuid']}.")
    sys.stderr.write("\n")
    gigabytes = (cartridge["capacity_bytes"] + 500_000_000) // 1_000_000_000
    info("15019I", f"Volume capacity is {gigabytes} GB.")
    info("15024I", "Medium formatted successfully.")
    return MKLTFS_NO_ERRORS
