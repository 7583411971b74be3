"""Pytest helpers: build a simulated library, run tools against it, clean up mounts.

Typical use from a conftest.py::

    from tapesim.fixture import tape_library   # re-export the fixture

    def test_archive(tape_library):
        subprocess.run(["mtx", "-f", tape_library.changer, "load", "1", "0"],
                       env=tape_library.env, check=True)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from . import library as lib
from . import state as st
from .library import environment_for  # noqa: F401  (re-exported for callers)

@dataclass
class Drive:
    """Device nodes of one simulated drive; ``number`` is mtx's Data Transfer Element number."""

    number: int
    st: str
    nst: str
    sg: str


@dataclass
class TapeLibrary:
    """A simulated library on disk and the environment that puts its tools on PATH."""

    state: Path
    env: dict[str, str]
    drives: list[Drive]
    changer: str | None
    barcodes: list[str]
    mountpoints: list[Path] = field(default_factory=list)

    def run(self, *argv: str, check: bool = False, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a command with the simulator's environment; capture text output."""
        return subprocess.run(list(argv), env=self.env, text=True, capture_output=True,
                              check=check, timeout=timeout)

    def commands(self) -> list[dict[str, Any]]:
        """Return every logged tool invocation in order: {"argv", "time", "monotonic", "pid"}."""
        return st.read_jsonl(self.state / "commands.log")

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        records = st.read_jsonl(self.state / "events.jsonl")
        return [record for record in records if name is None or record["event"] == name]

    def cartridge(self, barcode: str) -> dict[str, Any]:
        return st.load_cartridge(self.state, barcode)

    def insert(self, barcode: str, drive: int = 0) -> None:
        lib.insert_cartridge(self.state, barcode, drive)

    def set_write_protected(self, barcode: str, protected: bool = True) -> None:
        lib.set_write_protected(self.state, barcode, protected)

    def flip_byte(self, barcode: str, path: str, offset: int = 0) -> None:
        lib.flip_byte(self.state, barcode, path, offset)

    def ltfs_pid(self, drive: int = 0) -> int | None:
        """Return the pid of the ltfs daemon serving a drive, or None."""
        record = st.active_mount(self.state, drive)
        return None if record is None else int(record["pid"])

    def mount(self, drive: int, mountpoint: Path, *options: str) -> subprocess.CompletedProcess[str]:
        """Run ``ltfs -o devname=<sg> MOUNTPOINT`` plus options; remember the mount for cleanup."""
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.mountpoints.append(mountpoint)
        return self.run("ltfs", "-o", f"devname={self.drives[drive].sg}", str(mountpoint), *options)

    def wait_for_ltfs_exit(self, drive: int = 0, timeout: float = 30) -> None:
        """Wait until no ltfs process serves the drive (after umount it still writes its index)."""
        deadline = time.monotonic() + timeout
        while st.active_mount(self.state, drive) is not None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"ltfs on drive {drive} still runs after {timeout} s")
            time.sleep(0.05)

    def cleanup(self) -> None:
        """Unmount every known mount and stop every ltfs daemon of this library."""
        mounted = set(_mounted_paths())
        for mountpoint in self.mountpoints:
            if str(mountpoint.resolve()) in mounted:
                subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
        for record_path in (self.state / "mounts").glob("drive*.json"):
            try:
                record = st.read_json(record_path)
            except (OSError, ValueError):
                continue
            if str(record.get("mountpoint")) in mounted:
                subprocess.run(["fusermount3", "-u", "-z", record["mountpoint"]], capture_output=True)
            _stop(int(record["pid"]))


def _mounted_paths() -> list[str]:
    with open("/proc/self/mounts") as handle:
        return [line.split()[1].replace("\\040", " ") for line in handle]


def _stop(pid: int, grace: float = 10) -> None:
    deadline = time.monotonic() + grace
    while st.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if st.pid_alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def build_library(
    state: Path,
    drives: int = 2,
    slots: int = 8,
    import_export: int = 1,
    changer: bool = True,
    barcodes: list[str] | None = None,
    capacity_bytes: int = 64 * lib.MIB,
    index_write_seconds: float = 1.0,
    sync_write_seconds: float = 0.05,
    index_reserve_bytes: int | None = None,
    device_base: int | None = None,
) -> TapeLibrary:
    """Create a library in ``state`` and return its description.

    Defaults: 2 drives (/dev/st0 /dev/nst0 /dev/sg0, /dev/st1 /dev/nst1 /dev/sg1), a changer
    at /dev/sg2 with 8 slots and 1 import/export slot (element 9), and cartridges
    TAPE01L8 ... TAPE04L8 of 64 MiB in slots 1-4. Without a changer the cartridges are
    created but not placed; put one into a drive with ``insert``.

    device_base renumbers the devices: drive N becomes /dev/st, nst and sg number device_base + N
    and the changer /dev/sg(device_base + 9). ltfs_volume and tape_changer find a drive's ltfs
    process by its device name on the whole host, so suites that may run at the same time need
    device numbers of their own.
    """
    if barcodes is None:
        barcodes = [f"TAPE{number:02d}L8" for number in range(1, 5)]

    description = lib.create_library(state, drives=drives, slots=slots, import_export=import_export,
                                     changer=changer, cartridges=barcodes if changer else [],
                                     capacity_bytes=capacity_bytes,
                                     index_write_seconds=index_write_seconds,
                                     sync_write_seconds=sync_write_seconds,
                                     index_reserve_bytes=index_reserve_bytes)
    if device_base is not None:
        library_file = state / "library.json"
        description = json.loads(library_file.read_text())
        for drive in description["drives"]:
            number = device_base + drive["index"]
            drive.update(st=f"/dev/st{number}", nst=f"/dev/nst{number}", sg=f"/dev/sg{number}")
        if description["changer"]:
            description["changer"]["sg"] = f"/dev/sg{device_base + 9}"
        library_file.write_text(json.dumps(description, indent=2))
    if not changer:
        with st.locked(state):
            for barcode in barcodes:
                lib.add_cartridge(state, barcode, capacity_bytes)

    drive_list = [Drive(number=d["index"], st=d["st"], nst=d["nst"], sg=d["sg"]) for d in description["drives"]]
    changer_path = description["changer"]["sg"] if description["changer"] else None
    return TapeLibrary(state=state, env=environment_for(state), drives=drive_list,
                       changer=changer_path, barcodes=list(barcodes))


@contextlib.contextmanager
def library_on_path(library: TapeLibrary, monkeypatch: pytest.MonkeyPatch) -> Iterator[TapeLibrary]:
    """Put the library's tools on PATH for ansible-playbook runs, and clean the library up afterwards."""
    monkeypatch.setenv("PATH", library.env["PATH"])
    monkeypatch.setenv("TAPESIM_STATE", str(library.state))
    # One process per module instead of a copied file, as the fleet's tape hosts run them.
    monkeypatch.setenv("ANSIBLE_PIPELINING", "1")
    try:
        yield library
    finally:
        library.cleanup()


@pytest.fixture
def tape_library(tmp_path: Path) -> Iterator[TapeLibrary]:
    """A default library (see build_library) that is unmounted and stopped after the test."""
    library = build_library(tmp_path / "tapesim")
    try:
        yield library
    finally:
        library.cleanup()
