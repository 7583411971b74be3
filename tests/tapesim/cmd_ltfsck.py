"""ltfsck: check a simulated LTFS volume and roll it back to its last complete index.

Flow, messages and exit codes follow src/utils/ltfsck.c and messages/bin_ltfsck/root.txt
(LTFS 2.4): a successful check returns LTFSCK_CORRECTED (1) whether or not anything had
to be fixed, a volume that cannot be mounted returns LTFSCK_UNCORRECTED (4), a device
problem returns LTFSCK_OPERATIONAL_ERROR (8) and a bad argument 16.
"""

from __future__ import annotations

import getopt
import sys

from . import state as st
from . import volume as vol
from .cmd_mkltfs import getopt_error
from .state import ltfs_message as msg

LTFSCK_CORRECTED = 1
LTFSCK_UNCORRECTED = 4
LTFSCK_OPERATIONAL_ERROR = 8
LTFSCK_USAGE_SYNTAX_ERROR = 16

SHORT_OPTIONS = "g:rnflmjkqtxhpi:e:v:zV"
LONG_OPTIONS = ["generation=", "rollback", "no-rollback", "full-recovery", "list-rollback-points",
                "full-index-info", "erase-history", "keep-history", "quiet", "trace", "fulltrace",
                "help", "advanced-help", "config=", "backend=", "traverse=", "deep-recovery",
                "version", "kmi-backend=", "capture-index=", "syslogtrace", "salvage-rollback-points"]


def show_usage(program: str) -> None:
    lines = [
        "", f"Usage: {program} [options] filesys",
        "filesys                           Device file for the tape drive", "",
        "Available options are:",
        "  -g, --generation=<generation>   Specify the generation to roll back",
        "  -r, --rollback                  Roll back to the point specified by -g",
        "  -n, --no-rollback               Do not roll back. Verify the point specified by -g (default)",
        "  -f, --full-recovery             Recover extra data blocks into directory _ltfs_lostandfound",
        "  -l, --list-rollback-points      List rollback points",
        "  -q, --quiet                     Suppress informational messages",
        "  -t, --trace                     Enable diagnostic output",
        "  -h, --help                      This help",
        "  -p, --advanced-help             Full help, including advanced options",
    ]
    sys.stderr.write("\n".join(lines) + "\n")


def main(argv: list[str]) -> int:
    program = argv[0].rsplit("/", 1)[-1]
    try:
        options, rest = getopt.gnu_getopt(argv[1:], SHORT_OPTIONS, LONG_OPTIONS)
    except getopt.GetoptError as error:
        getopt_error(program, error)
        show_usage(program)
        return LTFSCK_USAGE_SYNTAX_ERROR

    quiet = False
    for option, _value in options:
        if option in ("-h", "--help", "-p", "--advanced-help"):
            show_usage(program)
            return 0
        if option in ("-V", "--version"):
            msg("16108I", f"ltfsck version {st.LTFS_VERSION}.")
            return 0
        if option in ("-q", "--quiet"):
            quiet = True
        if option in ("-g", "--generation", "-r", "--rollback", "-l", "--list-rollback-points",
                      "-f", "--full-recovery", "-z", "--deep-recovery", "--salvage-rollback-points"):
            sys.stderr.write(f"tapesim: ltfsck {option} is not simulated; only the default check is\n")
            return LTFSCK_USAGE_SYNTAX_ERROR

    state = st.state_dir_from_env()
    st.log_command(state, argv)
    info = (lambda message_id, text: None) if quiet else msg

    info("16000I", f"Starting ltfsck, LTFS version {st.LTFS_VERSION}, log level 2.")
    info("16088I", f'Launched by "{" ".join(argv)}".')
    info("16089I", "This binary is built for Linux (x86_64).")
    if len(rest) != 1:
        msg("16009E", "Must provide device name.")
        msg("16002E", "Option validation failed.")
        show_usage(program)
        return LTFSCK_USAGE_SYNTAX_ERROR
    device = rest[0]

    with st.locked(state):
        library = st.load_library(state)
        drive = st.find_drive(library, device)
        if drive is None or st.active_mount(state, drive["index"]) is not None:
            msg("16011E", f"Cannot open device '{device}'.")
            return LTFSCK_OPERATIONAL_ERROR
        if drive["cartridge"] is None:
            msg("16092E", f"Cannot set up tape drive ({device}).")
            return LTFSCK_OPERATIONAL_ERROR

        if not drive["threaded"]:
            drive["threaded"] = True
            st.save_library(state, library)
        cartridge = st.load_cartridge(state, drive["cartridge"])
        volume = cartridge["volume"]

        info("16014I", f"Checking LTFS file system on '{device}'.")
        if volume is None:
            msg("11009E", "Cannot read volume: failed to read partition labels.")
            msg("16021E", "Volume is inconsistent and was not corrected.")
            return LTFSCK_UNCORRECTED

        info("11005I", "Mounting the volume.")
        info("11026I", "Performing a full medium consistency check.")
        if vol.is_consistent(volume):
            info("11233I", "Updating MAM coherency data.")
        elif cartridge["write_protected"]:
            msg("11220E", "Medium check failed: extra blocks detected. Run ltfsck.")
            msg("16021E", "Volume is inconsistent and was not corrected.")
            return LTFSCK_UNCORRECTED
        else:
            last = vol.load_index(state, cartridge["barcode"], volume["generation"])
            info("11227I", "Preserve existing unreferred data blocks in the data partition, "
                 f"put the latest index at {vol.FIRST_INDEX_BLOCK + last['used_bytes'] // vol.LTFS_BLOCKSIZE}.")
            info("11230I", "Writing index(es) to restore consistency.")
            info("11278I", "Writing index to partition b.")
            info("11278I", "Writing index to partition a.")
            generation = vol.recover_volume(state, cartridge)
            st.record_event(state, "index_written", barcode=cartridge["barcode"],
                            generation=generation, reason="Recovery")

        info("16023I", "LTFS volume information:.")
        info("16024I", f"Volser (bar code) : {volume['serial']}.")
        info("16025I", f"Volume UUID     : {volume['uuid']}.")
        info("16027I", f"Block size      : {volume['blocksize']}.")
        info("16028I", "Compression     : Enabled.")
        info("16029I", "Index partition : ID = a, SCSI Partition = 0.")
        info("16030I", "Data partition  : ID = b, SCSI Partition = 1.")
        info("16022I", "Volume is consistent.")
        return LTFSCK_CORRECTED
