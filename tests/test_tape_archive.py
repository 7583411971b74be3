"""archive.yml on the tape layer: real ansible-playbook runs against a real Orthanc and the tape simulator.

The simulated cartridges are small and keep a large part of their capacity for LTFS indexes.
LTFS's reported free space includes that part, so a study can start and then hit ENOSPC
mid-write. The partial file stays on tape as dead space, and the study must land complete on the
next cartridge.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tapesim.fixture import TapeLibrary, build_library, library_on_path
from tests.helpers_archive import put_study, wait_stable
from tests.helpers_playbook import ArchiveSite, PlaybookRun, study_ids

MIB = 1024 * 1024
# A 6 MiB cartridge of which LTFS writes 4 MiB of data: three studies of about 1 MiB fit, the
# fourth starts (LTFS still reports 2 MiB free) and fails with ENOSPC part way through.
CARTRIDGE_BYTES = 6 * MIB
INDEX_RESERVE_BYTES = 2 * MIB
BARCODES = ["TAPE01L8", "TAPE02L8", "TAPE03L8", "TAPE04L8", "TAPE05L8"]
SERVER = "pacs-tape"
DEVICE_BASE = 40


@pytest.fixture
def drive_count() -> int:
    return 1


@pytest.fixture
def tapes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, drive_count: int) -> Iterator[TapeLibrary]:
    """A simulated library with drive_count drives; its tools are on PATH for the playbook runs."""
    library = build_library(tmp_path / "tapesim", drives=drive_count, barcodes=BARCODES,
                            capacity_bytes=CARTRIDGE_BYTES, index_write_seconds=0.2, sync_write_seconds=0.01,
                            index_reserve_bytes=INDEX_RESERVE_BYTES, device_base=DEVICE_BASE)
    with library_on_path(library, monkeypatch):
        yield library


@pytest.fixture
def site(tmp_path: Path, tapes: TapeLibrary) -> ArchiveSite:
    site = ArchiveSite(tmp_path / "site")
    site.settings.update({
        "orthanc_archive_volume_kind": "ltfs",
        "orthanc_archive_tape_changer": tapes.changer,
        "orthanc_archive_tape_drives": [{"device": drive.sg, "drive": drive.number} for drive in tapes.drives],
        "orthanc_archive_scratch_barcodes": BARCODES[:3],
        "orthanc_archive_tape_unmount_timeout": 60,
        "orthanc_archive_tape_poll_seconds": 1,
    })
    return site


def put_studies(handle: Any, count: int) -> list[str]:
    """Upload count studies of about 1 MiB each (two 512 x 512 16-bit CT slices), dated 2005."""
    ids = [put_study(handle, "ct", study_date=f"2005{month:02d}01", seed=month, n_instances=2, rows=512,
                     columns=512, n_series=1)
           for month in range(1, count + 1)]
    wait_stable(handle, ids)
    return ids


@pytest.fixture
def orthanc_with(orthanc_factory: Callable[..., Any]) -> Callable[[int], tuple[Any, list[str]]]:
    def start(count: int) -> tuple[Any, list[str]]:
        handle = orthanc_factory()
        return handle, put_studies(handle, count)
    return start


def copies(site: ArchiveSite) -> list[dict[str, Any]]:
    with sqlite3.connect(site.catalog) as connection:
        connection.row_factory = sqlite3.Row
        return [dict(row) for row in connection.execute("SELECT * FROM copies ORDER BY id")]


def deletions(site: ArchiveSite) -> list[dict[str, Any]]:
    if not site.catalog.exists():
        return []
    with sqlite3.connect(site.catalog) as connection:
        connection.row_factory = sqlite3.Row
        return [dict(row) for row in connection.execute("SELECT * FROM deletions ORDER BY id")]


def failed_output(run: PlaybookRun) -> str:
    return run.output[-8000:]


def remounted_after_write(tapes: TapeLibrary, barcode: str) -> bool:
    """Tell whether the cartridge was mounted again after the last unmount that followed a data write."""
    events = [event for event in tapes.events() if event.get("barcode") == barcode]
    last_write = max((index for index, event in enumerate(events) if event["event"] == "index_written"), default=-1)
    return any(event["event"] == "ltfs_mounted" for event in events[last_write + 1:])


@pytest.mark.parametrize("drive_count", [2])
def test_full_cartridge_continues_on_next(site: ArchiveSite, tapes: TapeLibrary, orthanc_with: Any,
                                          drive_count: int) -> None:
    handle, ids = orthanc_with(8)
    site.settings["orthanc_archive_scratch_barcodes"] = BARCODES[:4]
    site.add_server(SERVER, handle.url)

    run = site.run("archive.yml", "-e", "archive_reclaim=true")
    assert run.returncode == 0, failed_output(run)
    entry = run.server(SERVER)
    assert entry["archived"] == 8
    assert entry["verified"] == 8
    assert entry["deleted"] == 8
    assert study_ids(handle.url) == set()

    # Each drive filled its first cartridge mid-study and went on to its second one.
    used = {cartridge["barcode"]: cartridge for cartridge in entry["cartridges"]}
    assert sorted(used) == BARCODES[:4]
    assert used["TAPE01L8"]["full"] and used["TAPE02L8"]["full"]
    assert used["TAPE01L8"]["partial_files"] == 1
    assert used["TAPE01L8"]["drive"] == 0
    assert used["TAPE02L8"]["drive"] == 1

    # The partial file is a failed copy; the same study is verified complete on the next cartridge.
    rows = copies(site)
    failed = [row for row in rows if row["state"] == "failed"]
    assert len(failed) == 2
    for row in failed:
        assert "dead space" in row["failure"]
        later = [other for other in rows if other["orthanc_study_id"] == row["orthanc_study_id"]
                 and other["state"] == "verified"]
        assert len(later) == 1
        assert later[0]["volume_serial"] != row["volume_serial"]
    assert sum(row["state"] == "verified" for row in rows) == 8

    # Verified after a remount, and deleted only after that.
    for barcode in BARCODES[:4]:
        assert remounted_after_write(tapes, barcode), barcode
    verified_at = {row["orthanc_study_id"]: row["verified_at"] for row in rows if row["state"] == "verified"}
    for deletion in deletions(site):
        assert deletion["deleted_at"] >= verified_at[deletion["orthanc_study_id"]]

    # The two drives wrote at the same time: drive 1 was mounted before drive 0 unmounted.
    events = tapes.events()
    first_unmount = next(index for index, event in enumerate(events)
                         if event["event"] == "ltfs_unmounted" and event["barcode"] == "TAPE01L8")
    assert any(event["event"] == "ltfs_mounted" and event["barcode"] == "TAPE02L8" for event in events[:first_unmount])

    # LTFS frees nothing on delete, and the catalog shows the cartridge's real free space.
    assert used["TAPE01L8"]["available_bytes"] < 3 * MIB

    second = site.run("archive.yml", "-e", "archive_reclaim=true")
    assert second.returncode == 0, failed_output(second)
    assert second.changed() == 0, failed_output(second)
    assert second.server(SERVER)["selected"] == 0


def test_pool_used_up_names_cartridge(site: ArchiveSite, tapes: TapeLibrary, orthanc_with: Any) -> None:
    handle, ids = orthanc_with(5)
    site.settings["orthanc_archive_scratch_barcodes"] = ["TAPE01L8"]
    site.add_server(SERVER, handle.url)

    run = site.run("archive.yml", "-e", "archive_reclaim=true")
    assert run.returncode != 0, failed_output(run)
    entry = run.server(SERVER)
    message = " ".join(entry["failures"])
    assert "needs another scratch cartridge" in message
    assert "TAPE01L8" in message
    assert "2 studies were not written" in message
    assert entry["deleted"] == 0
    assert study_ids(handle.url) == set(ids)
    assert deletions(site) == []
    # What did fit was still verified after a remount, ready for the next run's reclaim.
    assert sum(row["state"] == "verified" for row in copies(site)) == 3
    assert remounted_after_write(tapes, "TAPE01L8")


def test_write_protected_cartridge_is_skipped(site: ArchiveSite, tapes: TapeLibrary, orthanc_with: Any) -> None:
    handle, ids = orthanc_with(2)
    tapes.set_write_protected("TAPE01L8")
    site.add_server(SERVER, handle.url)

    run = site.run("archive.yml", "-e", "archive_reclaim=true")
    assert run.returncode == 0, failed_output(run)
    entry = run.server(SERVER)
    assert [cartridge["barcode"] for cartridge in entry["cartridges"]] == ["TAPE02L8"]
    assert entry["deleted"] == 2
    assert "cartridge TAPE01L8 is write-protected" in run.output
    assert tapes.cartridge("TAPE01L8").get("formatted") in (False, None)


def test_wrong_or_missing_cartridge_stops(site: ArchiveSite, tapes: TapeLibrary, orthanc_with: Any) -> None:
    handle, ids = orthanc_with(1)
    site.add_server(SERVER, handle.url)

    site.settings["orthanc_archive_scratch_barcodes"] = ["NOPE09L8"]
    missing = site.run("archive.yml", "-e", "archive_reclaim=true")
    assert missing.returncode != 0
    assert "cartridge NOPE09L8 is not in the library" in " ".join(missing.server(SERVER)["failures"])

    # TAPE02L8 carries the LTFS volume of another cartridge, as after a label mix-up.
    tapes.run("mtx", "-f", tapes.changer, "load", "2", "0", check=True)
    tapes.run("mkltfs", "-d", tapes.drives[0].sg, "-s", "OTHER1", check=False)
    tapes.run("mtx", "-f", tapes.changer, "unload", "2", "0", check=True)
    site.settings["orthanc_archive_scratch_barcodes"] = ["TAPE02L8"]
    wrong = site.run("archive.yml", "-e", "archive_reclaim=true")
    assert wrong.returncode != 0
    message = " ".join(wrong.server(SERVER)["failures"])
    assert "wrong cartridge" in message
    assert "TAPE02L8" in message
    assert study_ids(handle.url) == set(ids)
    assert deletions(site) == []


def leave_inconsistent(tapes: TapeLibrary, tmp_path: Path) -> None:
    """Format TAPE01L8, write a file and kill ltfs before it writes an index: an unclean unmount."""
    tapes.run("mtx", "-f", tapes.changer, "load", "1", "0", check=True)
    tapes.run("mkltfs", "-d", tapes.drives[0].sg, "-s", "TAPE01", check=True)
    mountpoint = tmp_path / "crash"
    assert tapes.mount(0, mountpoint, "-o", "sync_type=unmount").returncode == 0
    (mountpoint / "half-written.bin").write_bytes(b"x" * 4096)
    os.kill(tapes.ltfs_pid(0), signal.SIGKILL)
    tapes.cleanup()
    tapes.run("mtx", "-f", tapes.changer, "unload", "1", "0", check=True)


def test_unclean_unmount_needs_recover(site: ArchiveSite, tapes: TapeLibrary, orthanc_with: Any,
                                       tmp_path: Path) -> None:
    handle, ids = orthanc_with(1)
    leave_inconsistent(tapes, tmp_path)
    site.add_server(SERVER, handle.url)

    refused = site.run("archive.yml", "-e", "archive_reclaim=true")
    assert refused.returncode != 0
    message = " ".join(refused.server(SERVER)["failures"])
    assert "inconsistent" in message
    assert "recover=true" in message
    assert study_ids(handle.url) == set(ids)
    assert not any(record["argv"][0].endswith("ltfsck") for record in tapes.commands())

    site.settings["orthanc_archive_tape_recover"] = True
    recovered = site.run("archive.yml", "-e", "archive_reclaim=true")
    assert recovered.returncode == 0, failed_output(recovered)
    assert recovered.server(SERVER)["deleted"] == 1
    assert [cartridge["barcode"] for cartridge in recovered.server(SERVER)["cartridges"]] == ["TAPE01L8"]
    assert any(record["argv"][0].endswith("ltfsck") for record in tapes.commands())


def test_servers_sharing_drive_take_turns(site: ArchiveSite, tapes: TapeLibrary, orthanc_with: Any) -> None:
    """Two servers of one tape host write through the same drive in one run: one after the other."""
    first, first_ids = orthanc_with(2)
    second, second_ids = orthanc_with(2)
    site.settings["orthanc_archive_scratch_barcodes"] = ["TAPE01L8", "TAPE02L8"]
    site.add_server("pacs-a", first.url)
    site.add_server("pacs-b", second.url)

    # Check mode touches no drive, so both servers run in the first turn.
    check = site.run("archive.yml", "--check", "-e", "archive_reclaim=true")
    assert check.returncode == 0, failed_output(check)
    assert [check.server(name)["would_archive"] for name in ("pacs-a", "pacs-b")] == [2, 2]
    assert "item=turn 1 on localhost" in check.output
    assert "item=turn 2" not in check.output
    assert tapes.events("ltfs_mounted") == []

    run = site.run("archive.yml", "-e", "archive_reclaim=true")
    assert "item=turn 2 on localhost" in run.output
    assert run.returncode == 0, failed_output(run)
    for name, handle in (("pacs-a", first), ("pacs-b", second)):
        entry = run.server(name)
        assert entry["status"] == "ok", entry
        assert entry["verified"] == 2
        assert entry["deleted"] == 2
        assert study_ids(handle.url) == set()
    # The second server appended to the cartridge the first one left in the shared pool.
    verified = [row for row in copies(site) if row["state"] == "verified"]
    assert {row["server"] for row in verified if row["volume_serial"] == "TAPE01"} == {"pacs-a", "pacs-b"}

    # One cartridge at a time in the drive: every mount follows the unmount of the one before,
    # and nothing touched the drive while LTFS had it mounted.
    changes = [event["event"] for event in tapes.events() if event["event"] in ("ltfs_mounted", "ltfs_unmounted")]
    assert len(changes) >= 4
    assert changes == ["ltfs_mounted", "ltfs_unmounted"] * (len(changes) // 2)
    assert tapes.events("drive_touched_while_ltfs_active") == []

    # Both servers restore their studies from the same drive in one run.
    restore = site.run("playbooks/restore.yml", "-e", '{"restore_study_date_from": "20050101", '
                                                      '"restore_study_date_to": "20051231"}')
    assert restore.returncode == 0, failed_output(restore)
    assert study_ids(first.url) == set(first_ids)
    assert study_ids(second.url) == set(second_ids)
    changes = [event["event"] for event in tapes.events() if event["event"] in ("ltfs_mounted", "ltfs_unmounted")]
    assert changes == ["ltfs_mounted", "ltfs_unmounted"] * (len(changes) // 2)
    assert tapes.events("drive_touched_while_ltfs_active") == []


def test_cartridge_without_room_not_loaded(site: ArchiveSite, tapes: TapeLibrary, orthanc_with: Any) -> None:
    """A scratch cartridge that the catalog shows too full for the next study stays in its slot."""
    handle, ids = orthanc_with(3)
    site.add_server(SERVER, handle.url)
    first = site.run("archive.yml")
    assert first.returncode == 0, failed_output(first)
    [cartridge] = first.server(SERVER)["cartridges"]
    assert cartridge["barcode"] == "TAPE01L8"

    # A study of 3.5 MiB: more than TAPE01L8 has left, less than a blank cartridge takes.
    large = put_study(handle, "ct", study_date="20050901", seed=50, n_instances=7, rows=512, columns=512,
                      n_series=1)
    wait_stable(handle, [large])
    assert cartridge["available_bytes"] < 7 * 512 * 512 * 2
    mounts_before = len(tapes.events("ltfs_mounted"))

    second = site.run("archive.yml")
    assert second.returncode == 0, failed_output(second)
    entry = second.server(SERVER)
    assert [used["barcode"] for used in entry["cartridges"]] == ["TAPE02L8"]
    assert entry["verified"] == 1
    assert "cartridge TAPE01L8 was not loaded" in second.output
    assert {event["barcode"] for event in tapes.events("ltfs_mounted")[mounts_before:]} == {"TAPE02L8"}

    # With the skip off, the run loads TAPE01L8 again, as after the cartridge was erased.
    second_large = put_study(handle, "ct", study_date="20051001", seed=51, n_instances=7, rows=512,
                             columns=512, n_series=1)
    wait_stable(handle, [second_large])
    site.settings["orthanc_archive_tape_skip_without_room"] = False
    third = site.run("archive.yml")
    assert third.returncode == 0, failed_output(third)
    assert [used["barcode"] for used in third.server(SERVER)["cartridges"]][0] == "TAPE01L8"
    assert "was not loaded" not in third.output
