# -*- coding: utf-8 -*-
# Copyright: contributors to this project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The archive volume: a mounted LTFS tape, or a plain folder standing in for one.

A volume has a serial (LTFS's volume serial, or an ID stored in a marker file for a plain folder),
a free space that already keeps a reserve back, and a sync that writes what is cached to the
medium (an LTFS index write). Everything this project writes goes below ARCHIVE_ROOT on the volume.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import secrets
import time
from typing import Any

ARCHIVE_ROOT = "orthanc-archive"
FOLDER_MARKER = ".orthanc-archive-volume.json"
MIB = 1024 * 1024

# LTFS virtual extended attributes on the mount root (LTFS reference implementation, xattr.c).
LTFS_SERIAL = "user.ltfs.volumeSerial"
LTFS_NAME = "user.ltfs.volumeName"
LTFS_TOTAL = "user.ltfs.mediaDataPartitionTotalCapacity"
LTFS_AVAILABLE = "user.ltfs.mediaDataPartitionAvailableSpace"
LTFS_GENERATION = "user.ltfs.indexGeneration"
LTFS_SYNC = "user.ltfs.sync"

SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")

VOLUME_ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "volume_path": {"type": "path", "required": True},
    "volume_reserve_bytes": {"type": "int", "default": 0},
    "lock_dir": {"type": "path", "default": "/run/lock"},
    "lock_timeout": {"type": "float", "default": 600.0},
}


class VolumeError(Exception):
    """The volume is missing, unusable or full."""


def safe_name(value: str, fallback: str = "unnamed", max_length: int = 64) -> str:
    """Turn any text into a file-name component of [A-Za-z0-9._-] that cannot be '.', '..' or empty."""
    cleaned = SAFE_NAME.sub("_", value or "")[:max_length].strip(".")
    return cleaned or fallback


def _read_xattr(path: str, name: str) -> str | None:
    try:
        return os.getxattr(path, name).decode("utf-8", "replace").strip()
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, getattr(errno, "ENOATTR", errno.ENODATA)):
            return None
        raise


class Volume:
    """One mounted volume (LTFS) or archive folder."""

    def __init__(self, path: str, reserve_bytes: int = 0):
        self.path = os.path.abspath(path)
        self.reserve_bytes = reserve_bytes
        if not os.path.isdir(self.path):
            raise VolumeError(
                f"volume path {self.path} is not a folder: mount the LTFS volume there, or create the folder"
            )
        self.is_ltfs = _read_xattr(self.path, LTFS_SERIAL) is not None

    # -- identity -------------------------------------------------------------------------------

    def serial(self, create: bool = True) -> str | None:
        """Return the LTFS volume serial, or the ID of a plain folder (created on first use unless create is False)."""
        if self.is_ltfs:
            return _read_xattr(self.path, LTFS_SERIAL)
        marker = os.path.join(self.path, FOLDER_MARKER)
        try:
            with open(marker, encoding="utf-8") as handle:
                return str(json.load(handle)["serial"])
        except FileNotFoundError:
            if not create:
                return None
        except (ValueError, KeyError) as exc:
            raise VolumeError(f"volume marker {marker} is damaged ({exc}); restore it or move the folder aside") from None
        serial = "DIR" + secrets.token_hex(3).upper()
        with open(marker + ".partial", "w", encoding="utf-8") as handle:
            json.dump({"serial": serial, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(marker + ".partial", marker)
        return serial

    def name(self) -> str | None:
        return _read_xattr(self.path, LTFS_NAME) if self.is_ltfs else None

    # -- space ----------------------------------------------------------------------------------

    def capacity_bytes(self) -> int:
        if self.is_ltfs:
            value = _read_xattr(self.path, LTFS_TOTAL)
            if value is not None:
                return int(float(value) * MIB)
        stats = os.statvfs(self.path)
        return stats.f_blocks * stats.f_frsize

    def available_bytes(self) -> int:
        """Return the space a new container may use: what the medium has left minus the reserve."""
        raw = None
        if self.is_ltfs:
            value = _read_xattr(self.path, LTFS_AVAILABLE)
            if value is not None:
                raw = int(float(value) * MIB)
        if raw is None:
            stats = os.statvfs(self.path)
            raw = stats.f_bavail * stats.f_frsize
        return max(0, raw - self.reserve_bytes)

    def index_generation(self) -> int | None:
        value = _read_xattr(self.path, LTFS_GENERATION) if self.is_ltfs else None
        return int(value) if value and value.isdigit() else None

    # -- writes ---------------------------------------------------------------------------------

    def sync(self) -> None:
        """Make what was written durable: an LTFS index write, or a filesystem sync for a folder."""
        if self.is_ltfs:
            # Setting ltfs.sync makes LTFS write its index to the tape now.
            os.setxattr(self.path, LTFS_SYNC, b"1")
        else:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def study_paths(self, server: str, study_date: str | None, study_id: str) -> tuple[str, str]:
        """Return the container and manifest paths, relative to the volume root, for one study.

        Only the server name (sanitized), the year of a well-formed StudyDate and the Orthanc study
        ID (already checked to be hex digits and dashes) are used, so no tag value can steer a path.
        """
        year = study_date[:4] if study_date and re.fullmatch(r"\d{8}", study_date) else "undated"
        folder = os.path.join(ARCHIVE_ROOT, safe_name(server, "server"), year)
        return os.path.join(folder, study_id + ".tar"), os.path.join(folder, study_id + ".json")

    def absolute(self, relative: str) -> str:
        """Return the absolute path of a path relative to the volume root, refusing anything outside it."""
        full = os.path.realpath(os.path.join(self.path, relative))
        if os.path.commonpath([full, os.path.realpath(self.path)]) != os.path.realpath(self.path):
            raise VolumeError(f"path {relative!r} points outside volume {self.path}")
        return full

    def facts(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "serial": self.serial(create=False),
            "kind": "ltfs" if self.is_ltfs else "folder",
            "name": self.name(),
            "capacity_bytes": self.capacity_bytes(),
            "available_bytes": self.available_bytes(),
            "reserve_bytes": self.reserve_bytes,
            "index_generation": self.index_generation(),
        }


class FileLock:
    """An exclusive flock on a file in lock_dir, so two runs never write one volume or reclaim one server at once."""

    def __init__(self, lock_dir: str, name: str, timeout: float):
        self.path = os.path.join(lock_dir, "orthanc-archive-" + safe_name(name) + ".lock")
        self.timeout = timeout
        self._fd: int | None = None

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.ftruncate(self._fd, 0)
                os.write(self._fd, f"{os.getpid()}\n".encode())
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = ""
                    try:
                        with open(self.path, encoding="utf-8") as handle:
                            holder = handle.read().strip()
                    except OSError:
                        pass
                    os.close(self._fd)
                    self._fd = None
                    raise VolumeError(
                        f"another run holds {self.path} (pid {holder or 'unknown'}) and did not release it within "
                        f"{self.timeout:.0f} s: wait for it to finish, or raise lock_timeout"
                    ) from None
                time.sleep(0.5)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()
