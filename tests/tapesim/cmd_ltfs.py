"""ltfs: mount the LTFS volume of a simulated drive as a real FUSE file system.

Like the reference ltfs (src/main.c), the command checks the device and the volume in
the foreground, prints its messages to stderr and exits 1 on failure; once the volume
is mounted it daemonizes unless -f is given. The unmount index write runs after the
kernel has already dropped the mount, so ``umount`` returns while the daemon still works
for ``index_write_seconds``.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from . import state as st
from . import volume as vol
from .state import JsonDict
from .state import ltfs_message as msg

USAGE = """usage: ltfs mountpoint [options]

LTFS options:
    -o devname=<dev>          Tape device
    -o sync_type=<type>       Specify sync type (default: time@5)
    -o eject                  Eject the cartridge after unmount
    -o noeject                Do not eject the cartridge after unmount (default)
    -V, --version             Output version information and exit
    -h, --help                Display this help and exit
"""

PASSED_THROUGH_OPTIONS = {"allow_other", "default_permissions", "noatime", "atime", "quiet", "trace",
                          "fulltrace", "noeject", "big_writes", "ro", "rw", "auto_unmount"}


def parse_sync_type(value: str) -> tuple[str, float] | None:
    """Parse ``sync_type``; return (kind, seconds) or None after printing the LTFS error."""
    if value in ("close", "unmount"):
        return value, 0.0
    if value.startswith("time@"):
        text = value[len("time@"):]
        try:
            minutes = int(text)
        except ValueError:
            msg("14060E", f"Failed to convert the sync time ({text}).")
            return None
        if minutes < 0:
            msg("14066E", "Sync time should be a positive value.")
            return None
        if minutes == 0:
            return "unmount", 0.0
        return "time", minutes * 60.0
    msg("14061E", f"Unknown type of sync ({value}).")
    return None


def parse_arguments(argv: list[str]) -> JsonDict | int:
    """Split argv into options; return an exit code when the command is done already."""
    options: JsonDict = {"devname": None, "sync_type": "time@5", "eject": False,
                         "foreground": False, "mountpoint": None, "extra": []}
    position = 1
    while position < len(argv):
        arg = argv[position]
        if arg == "-o" or (arg.startswith("-o") and len(arg) > 2):
            if arg == "-o":
                if position + 1 >= len(argv):
                    sys.stderr.write(USAGE)
                    return 1
                text = argv[position + 1]
                position += 2
            else:
                text = arg[2:]
                position += 1
            for item in text.split(","):
                key, _, value = item.partition("=")
                if key == "devname":
                    options["devname"] = value
                elif key == "sync_type":
                    options["sync_type"] = value
                elif key == "eject":
                    options["eject"] = True
                elif key == "noeject":
                    options["eject"] = False
                elif key in PASSED_THROUGH_OPTIONS or key in ("uid", "gid", "umask", "fmask", "dmask",
                                                               "work_directory", "verbose", "config_file",
                                                               "tape_backend", "iosched_backend"):
                    if key in ("allow_other", "default_permissions"):
                        options["extra"].append(key)
                else:
                    msg("9010E", f"Invalid option '{item}'.")
                    return 1
            continue
        if arg == "-f":
            options["foreground"] = True
        elif arg in ("-d", "-s"):
            options["foreground"] = options["foreground"] or arg == "-d"
        elif arg in ("-h", "--help"):
            sys.stderr.write(USAGE)
            return 0
        elif arg in ("-V", "--version"):
            msg("14058I", f"LTFS version {st.LTFS_VERSION}.")
            msg("14058I", f"LTFS Format Specification version {st.LTFS_FORMAT_SPEC}.")
            return 0
        elif arg.startswith("-"):
            sys.stderr.write(f"fuse: unknown option(s): `{arg}'\n")
            return 1
        elif options["mountpoint"] is None:
            options["mountpoint"] = arg
        else:
            sys.stderr.write(f"fuse: invalid argument `{arg}'\n")
            return 1
        position += 1
    return options


def check_volume(state: Path, device: str) -> tuple[JsonDict, JsonDict] | int:
    """Open the drive and check the volume as ltfs_mount() does; the caller holds the lock."""
    library = st.load_library(state)
    drive = st.find_drive(library, device)
    if drive is None:
        msg("10004E", f"Cannot open device '{device}'.")
        return 1
    if st.active_mount(state, drive["index"]) is not None:
        # The running ltfs holds a persistent reservation on the drive.
        msg("10004E", f"Cannot open device '{device}'.")
        return 1

    msg("11330I", "Loading cartridge.")
    if drive["cartridge"] is None:
        msg("11331E", f"Failed to load the cartridge ({device}).")
        msg("14075E", "Cannot set up tape drive.")
        return 1
    if not drive["threaded"]:
        drive["threaded"] = True
        st.save_library(state, library)
    msg("11332I", "Load successful.")

    cartridge = st.load_cartridge(state, drive["cartridge"])
    msg("11005I", "Mounting the volume.")
    volume = cartridge["volume"]
    if volume is None:
        msg("11009E", "Cannot read volume: failed to read partition labels.")
        msg("14013E", f"Cannot mount the volume from {device}.")
        return 1
    if not vol.is_consistent(volume):
        msg("11026I", "Performing a full medium consistency check.")
        msg("11220E", "Medium check failed: extra blocks detected. Run ltfsck.")
        msg("11027E", "Cannot mount volume: medium consistency check failed.")
        msg("14013E", f"Cannot mount the volume from {device}.")
        return 1
    return drive, cartridge


def main(argv: list[str]) -> int:
    parsed = parse_arguments(argv)
    if isinstance(parsed, int):
        return parsed
    options = parsed

    state = st.state_dir_from_env()
    st.log_command(state, argv)

    msg("14000I", f"LTFS starting, LTFS version {st.LTFS_VERSION}, log level 2.")
    msg("14058I", f"LTFS Format Specification version {st.LTFS_FORMAT_SPEC}.")
    msg("14104I", f'Launched by "{" ".join(argv)}".')
    msg("14105I", "This binary is built for Linux (x86_64).")

    if options["devname"] is None:
        msg("14009E", "The backend 'sg' does not have a default device. "
            'Specify one using the "-o devname=" option.')
        return 1
    if options["mountpoint"] is None:
        sys.stderr.write("fuse: no mount point\n")
        return 1
    mountpoint = os.path.abspath(options["mountpoint"])
    if not os.path.isdir(mountpoint):
        sys.stderr.write(f"fuse: bad mount point `{mountpoint}': No such file or directory\n")
        return 1

    sync = parse_sync_type(options["sync_type"])
    if sync is None:
        return 1
    if sync[0] == "time":
        msg("14063I", f'Sync type is "time", Sync time is {int(sync[1])} sec.')
    else:
        msg("14064I", f'Sync type is "{sync[0]}".')

    try:
        from .ltfs_fs import run_filesystem
    except ImportError:
        sys.stderr.write("tapesim: ltfs needs the mfusepy package in the python3 that runs it\n")
        return 1

    with st.locked(state):
        checked = check_volume(state, options["devname"])
    if isinstance(checked, int):
        return checked
    drive, cartridge = checked

    read_only = cartridge["write_protected"]
    if read_only:
        msg("14019I", "Medium is write protected. Mounting read-only.")
    msg("14111I", "Initial setup completed successfully.")
    msg("14112I", "Invoke 'mount' command to check the result of final setup.")
    msg("14113I", "Specified mount point is listed if succeeded.")

    settings = {
        "state": state,
        "device": options["devname"],
        "drive_index": drive["index"],
        "barcode": cartridge["barcode"],
        "mountpoint": mountpoint,
        "read_only": read_only,
        "sync_kind": sync[0],
        "sync_seconds": sync[1],
        "eject": options["eject"],
        "extra_options": options["extra"],
    }
    if options["foreground"]:
        return run_filesystem(settings, ready_fd=None)
    return daemonize_and_run(settings, run_filesystem)


def daemonize_and_run(settings: JsonDict, run_filesystem: Callable[[JsonDict, int | None], int]) -> int:
    """Fork; the parent exits 0 once the child reports the mount ready, or 1 if it fails."""
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid > 0:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            answer = pipe.read(1)
        if answer == b"1":
            return 0
        os.waitpid(pid, 0)
        msg("14013E", f"Cannot mount the volume from {settings['device']}.")
        return 1

    os.close(read_end)
    os.setsid()
    os.chdir("/")
    log_path = Path(settings["state"]) / f"ltfs-drive{settings['drive_index']}.log"
    devnull = os.open(os.devnull, os.O_RDWR)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(log_fd, 2)
    os.close(devnull)
    os.close(log_fd)

    code = 1
    try:
        code = run_filesystem(settings, ready_fd=write_end)
    except Exception:  # the daemon has no caller to raise to: log the traceback and exit 1
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)

