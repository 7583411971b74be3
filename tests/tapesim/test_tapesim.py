"""Tests of the tape simulator, run through its executables as the product runs them."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .fixture import TapeLibrary, build_library

MIB = 1024 * 1024


@pytest.fixture
def tapes(tmp_path: Path) -> Iterator[TapeLibrary]:
    library = build_library(tmp_path / "state", index_write_seconds=0.6)
    try:
        yield library
    finally:
        library.cleanup()


def load_and_format(tapes: TapeLibrary, slot: int = 1, drive: int = 0) -> None:
    tapes.run("mtx", "-f", tapes.changer, "load", str(slot), str(drive), check=True)
    result = tapes.run("mkltfs", "-d", tapes.drives[drive].sg, "-n", "archive")
    assert result.returncode == 0, result.stderr


def mount(tapes: TapeLibrary, mountpoint: Path, drive: int = 0, *options: str) -> None:
    result = tapes.mount(drive, mountpoint, *options)
    assert result.returncode == 0, result.stderr


def unmount_and_wait(tapes: TapeLibrary, mountpoint: Path, drive: int = 0) -> None:
    subprocess.run(["umount", str(mountpoint)], check=True)
    tapes.wait_for_ltfs_exit(drive)


def xattr(path: Path, name: str) -> str:
    return os.getxattr(path, f"user.ltfs.{name}").decode()


def available_mib(mountpoint: Path) -> int:
    return int(xattr(mountpoint, "mediaDataPartitionAvailableSpace"))


def test_lsscsi_lists_drives_and_changer(tapes: TapeLibrary) -> None:
    lines = tapes.run("lsscsi", "-g", check=True).stdout.splitlines()

    assert lines[0] == "[0:0:0:0]    tape    IBM      ULTRIUM-HH8      N9M1  /dev/st0   /dev/sg0 "
    assert lines[1] == "[0:0:1:0]    tape    IBM      ULTRIUM-HH8      N9M1  /dev/st1   /dev/sg1 "
    assert lines[2] == "[0:0:2:0]    mediumx IBM      3573-TL          F.11  -          /dev/sg2 "


def test_mtx_status_format(tapes: TapeLibrary) -> None:
    lines = tapes.run("mtx", "-f", "/dev/sg2", "status", check=True).stdout.splitlines()

    assert lines[0] == "  Storage Changer /dev/sg2:2 Drives, 9 Slots ( 1 Import/Export )"
    assert lines[1] == "Data Transfer Element 0:Empty"
    assert lines[3].rstrip() == "      Storage Element 1:Full :VolumeTag=TAPE01L8"
    assert lines[7] == "      Storage Element 5:Empty"
    assert lines[11] == "      Storage Element 9 IMPORT/EXPORT:Empty"


def test_mtx_load_unload_persists(tapes: TapeLibrary) -> None:
    loaded = tapes.run("mtx", "-f", tapes.changer, "load", "3", "1")
    assert loaded.returncode == 0
    assert loaded.stdout == "Loading media from Storage Element 3 into drive 1...done\n"

    status = tapes.run("mtx", "-f", tapes.changer, "status").stdout.splitlines()
    assert status[2].rstrip() == "Data Transfer Element 1:Full (Storage Element 3 Loaded):VolumeTag = TAPE03L8"
    assert status[5] == "      Storage Element 3:Empty"

    unloaded = tapes.run("mtx", "-f", tapes.changer, "unload", "6", "1")
    assert unloaded.stdout == "Unloading drive 1 into Storage Element 6...done\n"
    status = tapes.run("mtx", "-f", tapes.changer, "status").stdout.splitlines()
    assert status[2] == "Data Transfer Element 1:Empty"
    assert status[8].rstrip() == "      Storage Element 6:Full :VolumeTag=TAPE03L8"


def test_mtx_errors(tapes: TapeLibrary) -> None:
    tapes.run("mtx", "-f", tapes.changer, "load", "1", "0", check=True)

    full_drive = tapes.run("mtx", "-f", tapes.changer, "load", "2", "0")
    assert full_drive.returncode == 1
    assert full_drive.stderr == "mtx: Drive 0 Full (Storage Element 1 loaded)\n"

    empty_slot = tapes.run("mtx", "-f", tapes.changer, "load", "7", "1")
    assert empty_slot.returncode == 1
    assert empty_slot.stderr == "mtx: Source Element Address 4102 is Empty\n"

    full_slot = tapes.run("mtx", "-f", tapes.changer, "unload", "2", "0")
    assert full_slot.returncode == 1
    assert full_slot.stderr == "mtx: Storage Element 2 is Already Full\n"

    empty_drive = tapes.run("mtx", "-f", tapes.changer, "unload", "5", "1")
    assert empty_drive.stderr == "mtx: Data Transfer Element 1 is Empty\n"


def test_mt_status_empty_loaded_protected(tapes: TapeLibrary) -> None:
    empty = tapes.run("mt", "-f", "/dev/nst0", "status")
    assert empty.returncode == 0
    assert empty.stdout.splitlines()[-2:] == ["General status bits on (50000):", " DR_OPEN IM_REP_EN"]

    rewind = tapes.run("mt", "-f", "/dev/nst0", "rewind")
    assert (rewind.returncode, rewind.stderr) == (1, "/dev/nst0: No medium found\n")

    tapes.set_write_protected("TAPE01L8")
    tapes.run("mtx", "-f", tapes.changer, "load", "1", "0", check=True)
    loaded = tapes.run("mt", "-f", "/dev/nst0", "status").stdout.splitlines()
    assert loaded[1] == "File number=0, block number=0, partition=0."
    assert loaded[2] == "Tape block size 0 bytes. Density code 0x5e (LTO-8)."
    assert loaded[-1] == " BOT WR_PROT ONLINE IM_REP_EN"

    tapes.run("mt", "-f", "/dev/nst0", "offline", check=True)
    assert tapes.run("mt", "-f", "/dev/nst0", "status").stdout.splitlines()[-1] == " DR_OPEN IM_REP_EN"


def test_mkltfs_rejects_formatted_without_force(tapes: TapeLibrary) -> None:
    load_and_format(tapes)

    again = tapes.run("mkltfs", "-d", "/dev/sg0")
    assert again.returncode == 16
    assert "LTFS15047E Medium is already formatted (0)." in again.stderr
    assert "LTFS15048I Need to specify -f or --force option to format this medium." in again.stderr

    forced = tapes.run("mkltfs", "--device=/dev/sg0", "--force", "--tape-serial=ARC001")
    assert forced.returncode == 0, forced.stderr
    assert tapes.cartridge("TAPE01L8")["volume"]["serial"] == "ARC001"


def test_mkltfs_empty_drive_and_protected(tapes: TapeLibrary) -> None:
    empty = tapes.run("mkltfs", "-d", "/dev/sg1")
    assert empty.returncode == 8
    assert "LTFS15044E Cannot set up tape device." in empty.stderr

    tapes.set_write_protected("TAPE02L8")
    tapes.run("mtx", "-f", tapes.changer, "load", "2", "1", check=True)
    protected = tapes.run("mkltfs", "-d", "/dev/sg1")
    assert protected.returncode == 16
    assert "LTFS11095E Cannot format: the medium is write protected." in protected.stderr


def test_ltfs_refuses_unformatted(tapes: TapeLibrary, tmp_path: Path) -> None:
    tapes.run("mtx", "-f", tapes.changer, "load", "1", "0", check=True)

    result = tapes.mount(0, tmp_path / "mnt")
    assert result.returncode == 1
    assert "LTFS14013E Cannot mount the volume from /dev/sg0." in result.stderr


def test_data_xattrs_and_sync(tapes: TapeLibrary, tmp_path: Path) -> None:
    load_and_format(tapes)
    mnt = tmp_path / "mnt"
    mount(tapes, mnt)

    payload = os.urandom(3 * MIB + 17)
    (mnt / "study").mkdir()
    (mnt / "study" / "a.tar").write_bytes(payload)
    assert hashlib.sha256((mnt / "study" / "a.tar").read_bytes()).digest() == hashlib.sha256(payload).digest()

    assert xattr(mnt, "volumeSerial") == "TAPE01"
    assert xattr(mnt, "volumeName") == "archive"
    assert xattr(mnt, "mediaDataPartitionTotalCapacity") == "64"
    assert available_mib(mnt) == 60
    assert xattr(mnt, "mediaStorageAlert") == "0x0000000000000000"
    assert xattr(mnt / "study" / "a.tar", "partition") == "b"
    assert int(xattr(mnt / "study" / "a.tar", "startblock")) >= 4

    generation = int(xattr(mnt, "indexGeneration"))
    assert xattr(mnt, "sync") == ""
    assert int(xattr(mnt, "indexGeneration")) == generation + 1

    (mnt / "b").write_bytes(b"x")
    os.setxattr(mnt, "user.ltfs.sync", b"1")
    assert int(xattr(mnt, "indexGeneration")) == generation + 2

    unmount_and_wait(tapes, mnt)
    mount(tapes, mnt)
    assert (mnt / "study" / "a.tar").read_bytes() == payload


def test_enospc_keeps_partial_file(tapes: TapeLibrary, tmp_path: Path) -> None:
    load_and_format(tapes)
    mnt = tmp_path / "mnt"
    mount(tapes, mnt)

    with pytest.raises(OSError) as failure:
        with open(mnt / "big", "wb") as handle:
            for _ in range(80):
                handle.write(os.urandom(MIB))
    assert failure.value.errno == errno.ENOSPC

    partial = (mnt / "big").stat().st_size
    assert 60 * MIB < partial < 64 * MIB
    assert available_mib(mnt) <= 1

    (mnt / "big").unlink()
    assert available_mib(mnt) <= 1
    assert os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize <= MIB


def test_delete_and_overwrite_keep_space(tapes: TapeLibrary, tmp_path: Path) -> None:
    load_and_format(tapes)
    mnt = tmp_path / "mnt"
    mount(tapes, mnt)

    (mnt / "f").write_bytes(os.urandom(8 * MIB))
    after_write = available_mib(mnt)
    (mnt / "f").write_bytes(os.urandom(8 * MIB))
    assert available_mib(mnt) == after_write - 8

    (mnt / "f").unlink()
    assert available_mib(mnt) == after_write - 8


def test_write_protected_mounts_read_only(tapes: TapeLibrary, tmp_path: Path) -> None:
    load_and_format(tapes)
    tapes.run("mt", "-f", "/dev/nst0", "offline", check=True)
    tapes.set_write_protected("TAPE01L8")
    mnt = tmp_path / "mnt"

    result = tapes.mount(0, mnt)
    assert result.returncode == 0, result.stderr
    assert "LTFS14019I Medium is write protected. Mounting read-only." in result.stderr
    with pytest.raises(OSError) as failure:
        (mnt / "x").write_bytes(b"data")
    assert failure.value.errno == errno.EROFS


def test_umount_returns_before_ltfs_exits(tapes: TapeLibrary, tmp_path: Path) -> None:
    load_and_format(tapes)
    mnt = tmp_path / "mnt"
    mount(tapes, mnt)
    (mnt / "f").write_bytes(b"payload")
    pid = tapes.ltfs_pid(0)

    started = time.monotonic()
    subprocess.run(["umount", str(mnt)], check=True)
    assert time.monotonic() - started < 0.3
    assert pid is not None and os.path.exists(f"/proc/{pid}")

    tapes.wait_for_ltfs_exit(0)
    assert time.monotonic() - started >= 0.5
    written = tapes.events("index_written")
    assert written[-1]["reason"] == "Unmount"


def test_offline_during_index_write_is_recorded(tapes: TapeLibrary, tmp_path: Path) -> None:
    load_and_format(tapes)
    mnt = tmp_path / "mnt"
    mount(tapes, mnt)
    (mnt / "f").write_bytes(b"payload")

    subprocess.run(["umount", str(mnt)], check=True)
    tapes.run("mt", "-f", "/dev/nst0", "offline", check=True)
    tapes.wait_for_ltfs_exit(0)

    touched = tapes.events("drive_touched_while_ltfs_active")
    assert [event["phase"] for event in touched] == ["writing_index"]
    assert tapes.cartridge("TAPE01L8")["volume"]["index_damaged"] is True
    assert tapes.mount(0, mnt).returncode == 1


def test_mtx_unload_refused_while_mounted(tapes: TapeLibrary, tmp_path: Path) -> None:
    load_and_format(tapes)
    mnt = tmp_path / "mnt"
    mount(tapes, mnt)

    result = tapes.run("mtx", "-f", tapes.changer, "unload", "1", "0")
    assert result.returncode == 1
    assert "mtx: Request Sense: Additional Sense Code = 53" in result.stderr
    assert result.stderr.endswith("mtx: MOVE MEDIUM from Element Address 256 to 4096 Failed\n")
    assert tapes.events("drive_touched_while_ltfs_active")[0]["phase"] == "mounted"


def test_kill_then_ltfsck_recovers_last_index(tapes: TapeLibrary, tmp_path: Path) -> None:
    load_and_format(tapes)
    mnt = tmp_path / "mnt"
    mount(tapes, mnt)
    kept = os.urandom(2 * MIB)
    (mnt / "kept").write_bytes(kept)
    os.getxattr(mnt, "user.ltfs.sync")
    generation = int(xattr(mnt, "indexGeneration"))
    (mnt / "lost").write_bytes(os.urandom(MIB))

    pid = tapes.ltfs_pid(0)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    tapes.wait_for_ltfs_exit(0)
    subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=True)

    refused = tapes.mount(0, mnt)
    assert refused.returncode == 1
    assert "LTFS11220E Medium check failed: extra blocks detected. Run ltfsck." in refused.stderr

    checked = tapes.run("ltfsck", "/dev/sg0")
    assert checked.returncode == 1, checked.stderr
    assert "LTFS16022I Volume is consistent." in checked.stderr

    mount(tapes, mnt)
    assert (mnt / "kept").read_bytes() == kept
    assert not (mnt / "lost").exists()
    assert int(xattr(mnt, "indexGeneration")) == generation + 1


def test_flip_byte_changes_read_data(tapes: TapeLibrary, tmp_path: Path) -> None:
    load_and_format(tapes)
    mnt = tmp_path / "mnt"
    mount(tapes, mnt)
    (mnt / "f").write_bytes(b"\x00" * 100)
    unmount_and_wait(tapes, mnt)

    tapes.flip_byte("TAPE01L8", "f", 10)
    mount(tapes, mnt)
    data = (mnt / "f").read_bytes()
    assert data[10] == 0xFF
    assert data.count(0) == 99


def test_commands_logged_in_order(tapes: TapeLibrary) -> None:
    tapes.run("lsscsi", "-g")
    tapes.run("mtx", "-f", tapes.changer, "status")
    tapes.run("mt", "-f", "/dev/nst0", "status")

    assert [entry["argv"][0] for entry in tapes.commands()] == ["lsscsi", "mtx", "mt"]
    assert tapes.commands()[1]["argv"] == ["mtx", "-f", "/dev/sg2", "status"]


def test_standalone_drive(tmp_path: Path) -> None:
    library = build_library(tmp_path / "state", drives=1, changer=False, barcodes=["LONE01L8"],
                            index_write_seconds=0.1)
    try:
        assert library.changer is None
        assert library.run("lsscsi", "-g").stdout.count("\n") == 1

        library.insert("LONE01L8", 0)
        assert library.run("mkltfs", "-d", "/dev/sg0").returncode == 0
        mnt = tmp_path / "mnt"
        assert library.mount(0, mnt).returncode == 0
        (mnt / "f").write_bytes(b"abc")
        subprocess.run(["umount", str(mnt)], check=True)
        library.wait_for_ltfs_exit(0)
        assert library.cartridge("LONE01L8")["volume"]["generation"] == 2
    finally:
        library.cleanup()
