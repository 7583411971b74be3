# -*- coding: utf-8 -*-
# Copyright: contributors to this project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Find LTFS mounts and ltfs processes, and read LTFS's message IDs.

`umount` of an LTFS mount returns as soon as the kernel has detached it, while the ltfs process
goes on writing the index to tape. A cartridge moved or ejected before that process exits is left
without its final index, so every unmount here ends with `wait_for_exit` on the ltfs process
found before the unmount.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

# libltfs prints "<thread id> LTFS<number><severity> <text>", for example "LTFS16087E".
LTFS_MESSAGE = re.compile(r"\bLTFS(\d{5})([DEIW])\b")

# Message IDs (LTFS 2.4, messages/*/root.txt) that this project acts on.
MSG_INCONSISTENT = {"16087E", "16021E", "11220E"}
MSG_NOT_FORMATTED = {"11009E"}
MSG_ALREADY_FORMATTED = {"15047E"}
MSG_WRITE_PROTECTED = {"11095E", "14019I", "14078I"}


def message_ids(text: str) -> set[str]:
    """Return the LTFS message IDs (number and severity, such as '16087E') in a tool's output."""
    return {number + severity for number, severity in LTFS_MESSAGE.findall(text or "")}


def error_lines(text: str, limit: int = 5) -> str:
    """Return the LTFS error lines of an output (or its last lines), for a failure message."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"LTFS\d{5}E", line)]
    return " | ".join((errors or lines)[-limit:])


def mount_entry(mount_point: str) -> dict[str, str] | None:
    """Return the /proc/self/mountinfo entry (fstype, source, options) of a mount point, or None."""
    target = os.path.realpath(mount_point)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None

    for line in lines:
        before, _, after = line.partition(" - ")
        fields = before.split()
        if len(fields) < 5:
            continue
        path = fields[4].replace("\\040", " ")
        if path != target:
            continue
        rest = after.split()
        return {"mount_point": path, "fstype": rest[0] if rest else "", "source": rest[1] if len(rest) > 1 else "",
                "options": fields[5] if len(fields) > 5 else ""}
    return None


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            raw = handle.read()
    except OSError:
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def _devname(arguments: list[str]) -> str | None:
    """Return the devname= value from ltfs's -o options."""
    for position, value in enumerate(arguments):
        options = value
        if value == "-o" and position + 1 < len(arguments):
            options = arguments[position + 1]
        elif value.startswith("-o"):
            options = value[2:]
        for option in options.split(","):
            if option.startswith("devname="):
                return option[len("devname="):]
    return None


def ltfs_processes() -> list[dict[str, Any]]:
    """Return pid, devname and mount point of every running ltfs process.

    A process counts when the first or second word of its command line (the second for an
    interpreter running a script) is named `ltfs`.
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        arguments = _cmdline(int(entry))
        names = [os.path.basename(value) for value in arguments[:2]]
        if "ltfs" not in names:
            continue

        start = names.index("ltfs") + 1
        rest = arguments[start:]
        positional = []
        skip = False
        for value in rest:
            if skip:
                skip = False
                continue
            if value == "-o":
                skip = True
                continue
            if not value.startswith("-"):
                positional.append(value)
        if not pid_alive(int(entry)):
            continue
        found.append({
            "pid": int(entry),
            "devname": _devname(rest),
            "mount_point": os.path.realpath(positional[0]) if positional else None,
        })
    return found


def find_ltfs_process(mount_point: str | None = None, device: str | None = None) -> dict[str, Any] | None:
    """Return the ltfs process that serves a mount point or uses a device, if one runs."""
    target = os.path.realpath(mount_point) if mount_point else None
    for process in ltfs_processes():
        if target is not None and process["mount_point"] == target:
            return process
        if device is not None and process["devname"] == device:
            return process
    return None


def pid_alive(pid: int) -> bool:
    """Tell whether a process runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != "Z"


def wait_for_exit(pid: int, timeout: float, interval: float = 0.1) -> float:
    """Wait until the process exits; return the seconds waited, or raise TimeoutError."""
    started = time.monotonic()
    while pid_alive(pid):
        waited = time.monotonic() - started
        if waited >= timeout:
            raise TimeoutError(f"ltfs process {pid} still runs after {waited:.0f} s")
        time.sleep(interval)
    return time.monotonic() - started


def wait_for_mount(mount_point: str, timeout: float, interval: float = 0.1) -> bool:
    """Wait until an LTFS mount answers on the mount point; return False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = mount_entry(mount_point)
        if entry is not None and "fuse" in entry["fstype"]:
            return True
        time.sleep(interval)
    return False


def volume_serial_for_barcode(barcode: str) -> str:
    """Return the LTFS volume serial mkltfs uses for a barcode: its first six characters.

    LTO barcodes are six characters and a two-character media suffix (`ARC001L8`); LTFS volume
    serials are six characters of [0-9A-Z].
    """
    serial = barcode.strip().upper()[:6]
    if not re.fullmatch(r"[0-9A-Z]{6}", serial):
        raise ValueError(f"barcode {barcode!r} does not start with six characters of A-Z and 0-9, "
                         "so it cannot be an LTFS volume serial; pass volume_serial explicitly")
    return serial
