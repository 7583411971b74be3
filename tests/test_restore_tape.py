"""restore.yml on the tape layer: real ansible-playbook runs against a real Orthanc and the tape simulator.

archive.yml writes five studies of about 1 MiB to small simulated cartridges (the first fills
up, so they span two), verifies and deletes them. restore.yml must then load each cartridge it
needs through the changer, mount it read-only, restore every instance byte for byte, and return
the cartridge to its slot.
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tapesim.fixture import TapeLibrary, build_library, library_on_path
from tests.helpers_archive import put_study, wait_stable
from tests.helpers_playbook import ArchiveSite, PlaybookRun, study_ids
from tests.helpers_restore import original_files

_SPEC = importlib.util.spec_from_file_location(
    "orthanc_archive_tape", Path(__file__).resolve().parents[1] / "roles/orthanc_archive/filter_plugins/orthanc_archive_tape.py")
tape_filters = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(tape_filters)

MIB = 1024 * 1024
BARCODES = ["RST001L8", "RST002L8", "RST003L8"]
SERVER = "pacs-restore"
# Device numbers no other suite uses: ltfs_volume and tape_changer find a drive's ltfs process by
# its devname on the whole host.
DEVICE_BASE = 60
# Dates of the five studies. The last two, of 2006, land on the second cartridge.
STUDY_DATES = ["20050101", "20050201", "20050301", "20060101", "20060201"]


@pytest.fixture
def tapes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TapeLibrary]:
    """A one-drive library with a changer and three 6 MiB cartridges (4 MiB of data each)."""
    library = build_library(tmp_path / "tapesim", drives=1, barcodes=BARCODES, capacity_bytes=6 * MIB,
                            index_write_seconds=0.2, sync_write_seconds=0.01, index_reserve_bytes=2 * MIB,
                            device_base=DEVICE_BASE)
    with library_on_path(library, monkeypatch):
        yield library


@pytest.fixture
def study_dates() -> list[str]:
    return STUDY_DATES


@pytest.fixture
def archived(tmp_path: Path, tapes: TapeLibrary, orthanc_factory: Any,
             study_dates: list[str]) -> tuple[ArchiveSite, Any, dict[str, bytes]]:
    """Archive, verify and delete one study per date with archive.yml; return the site, Orthanc and the original files."""
    handle = orthanc_factory()
    ids = [put_study(handle, "ct", study_date=date, seed=index, n_instances=2, rows=512, columns=512, n_series=1)
           for index, date in enumerate(study_dates, start=1)]
    wait_stable(handle, ids)
    originals = original_files(handle, ids)

    site = ArchiveSite(tmp_path / "site")
    site.settings.update({
        "orthanc_archive_volume_kind": "ltfs",
        "orthanc_archive_tape_changer": tapes.changer,
        "orthanc_archive_tape_drives": [{"device": drive.sg, "drive": drive.number} for drive in tapes.drives],
        "orthanc_archive_scratch_barcodes": BARCODES,
        "orthanc_archive_tape_unmount_timeout": 60,
        "orthanc_archive_tape_poll_seconds": 1,
    })
    site.add_server(SERVER, handle.url)
    run = site.run("archive.yml", "-e", "archive_reclaim=true")
    assert run.returncode == 0, run.output[-8000:]
    assert run.server(SERVER)["deleted"] == len(ids)
    assert study_ids(handle.url) == set()
    return site, handle, originals


def restore(site: ArchiveSite, extra_vars: dict[str, Any], *arguments: str) -> PlaybookRun:
    return site.run("restore.yml", "-e", json.dumps(extra_vars), *arguments)


def instance_files(handle: Any) -> dict[str, bytes]:
    return original_files(handle, sorted(study_ids(handle.url)))


def loads(tapes: TapeLibrary, since: int) -> list[str]:
    """Return the mtx load commands run after the first since commands, as 'load SLOT DRIVE'."""
    found = []
    for command in tapes.commands()[since:]:
        argv = [str(word) for word in command["argv"]]
        if "load" in argv:
            found.append(" ".join(argv[argv.index("load"):]))
    return found


def ltfs_mounts(tapes: TapeLibrary, since: int) -> list[list[str]]:
    return [[str(word) for word in command["argv"]] for command in tapes.commands()[since:]
            if Path(str(command["argv"][0])).name == "ltfs"]


def drives_empty(tapes: TapeLibrary) -> bool:
    status = tapes.run("mtx", "-f", tapes.changer, "status", check=True).stdout
    return "Data Transfer Element 0:Empty" in status


def volume_barcodes(site: ArchiveSite) -> dict[str, str | None]:
    with sqlite3.connect(site.catalog) as connection:
        return dict(connection.execute("SELECT serial, barcode FROM volumes"))


def test_restore_loads_each_cartridge(archived: tuple[ArchiveSite, Any, dict[str, bytes]],
                                      tapes: TapeLibrary) -> None:
    site, handle, originals = archived
    assert volume_barcodes(site) == {"RST001": "RST001L8", "RST002": "RST002L8"}
    everything = {"restore_study_date_from": "20000101", "restore_study_date_to": "20101231"}

    # Without a changer: a clear failure naming both cartridges, and nothing loaded or restored.
    before = len(tapes.commands())
    run = restore(site, {**everything, "orthanc_archive_tape_changer": ""})
    assert run.returncode != 0
    assert "RST001L8, RST002L8" in run.output, run.output[-4000:]
    assert "no tape changer" in run.output
    assert loads(tapes, before) == []
    assert study_ids(handle.url) == set()

    # Check mode lists the cartridges and loads nothing.
    before = len(tapes.commands())
    run = restore(site, everything, "--check")
    assert run.returncode == 0, run.output[-4000:]
    assert "Would load: RST001L8" in run.output
    assert "RST002L8" in run.output
    assert loads(tapes, before) == []
    assert ltfs_mounts(tapes, before) == []
    assert study_ids(handle.url) == set()

    # A catalog written before barcodes were recorded: the changer's barcode that starts with the
    # volume serial is loaded.
    with sqlite3.connect(site.catalog) as connection:
        connection.execute("UPDATE volumes SET barcode = NULL WHERE serial = 'RST002'")

    before = len(tapes.commands())
    events_before = len(tapes.events())
    run = restore(site, everything)
    assert run.returncode == 0, run.output[-8000:]
    assert loads(tapes, before) == ["load 1 0", "load 2 0"]
    mounts = ltfs_mounts(tapes, before)
    assert len(mounts) == 2
    for argv in mounts:
        assert "ro" in argv[argv.index("-o") + 1].split(","), argv
    assert drives_empty(tapes)
    # Read-only mounts write no index, so the restore leaves the cartridges as the archive wrote them.
    assert [event for event in tapes.events()[events_before:] if event["event"] == "index_written"] == []

    restored = instance_files(handle)
    assert set(restored) == set(originals)
    for instance_id, data in originals.items():
        assert restored[instance_id] == data, instance_id

    # Everything is back, so a second run loads nothing and changes nothing.
    before = len(tapes.commands())
    again = restore(site, everything)
    assert again.returncode == 0, again.output[-4000:]
    assert again.changed() == 0, again.output[-4000:]
    assert loads(tapes, before) == []


# Two studies, both on the first cartridge, keep the archive short.
@pytest.mark.parametrize("study_dates", [["20060101", "20060201"]])
def test_restore_damaged_container_unloads(archived: tuple[ArchiveSite, Any, dict[str, bytes]],
                                          tapes: TapeLibrary) -> None:
    site, handle, originals = archived
    with sqlite3.connect(site.catalog) as connection:
        damaged_study, path = connection.execute(
            "SELECT orthanc_study_id, path FROM copies WHERE state = 'verified' AND study_date = '20060101'").fetchone()
    # Past the first member's pax and tar headers, inside the DICOM data of its first instance.
    tapes.flip_byte("RST001L8", path, 4096)

    before = len(tapes.commands())
    run = restore(site, {"restore_study_date_from": "20060101", "restore_study_date_to": "20061231"})
    assert run.returncode != 0
    assert f"restore: study {damaged_study} from cartridge RST001L8" in run.output, run.output[-8000:]
    # The cartridge went back to its slot after the failure.
    assert loads(tapes, before) == ["load 1 0"]
    assert drives_empty(tapes)

    # The other study is back byte for byte, and no instance of the damaged one was uploaded.
    restored = instance_files(handle)
    assert damaged_study not in study_ids(handle.url)
    assert len(study_ids(handle.url)) == 1
    assert len(restored) == 2
    for instance_id, data in restored.items():
        assert originals[instance_id] == data, instance_id


def plan_entry(serial: str, barcode: str | None) -> dict[str, Any]:
    return {"volume_serial": serial, "barcode": barcode, "mounted": False, "studies": 1, "bytes": 1}


def test_restore_plan_deals_cartridges() -> None:
    needed = [plan_entry("AAA001", "AAA001L8"), plan_entry("AAA002", None), plan_entry("AAA003", "AAA003L8")]
    studies = [
        {"orthanc_id": "s1", "volume_serial": "AAA001", "status": "would restore"},
        {"orthanc_id": "s2", "volume_serial": "AAA002", "status": "would restore"},
        {"orthanc_id": "s3", "volume_serial": "AAA003", "status": "present"},
    ]
    drives = [{"device": "/dev/sg0", "drive": 0}, {"device": "/dev/sg1", "drive": 1}]
    state = tape_filters.tape_restore_start(needed, studies, drives, ["AAA001L8", "AAA002L7", "AAA003L8"], "/mnt")

    assert state["stop"] is None
    # AAA003 contains only a study already in the target, so it is not loaded.
    assert [[cartridge["barcode"] for cartridge in drive["written"]] for drive in state["drives"]] == \
        [["AAA001L8"], ["AAA002L7"]]
    assert state["drives"][1]["written"][0]["studies"] == ["s2"]

    job = tape_filters.tape_begin_verify(state, 0)["jobs"][1]
    assert job["studies"] == ["s2"]
    assert job["mount_point"] == "/mnt/drive1"


def test_restore_plan_stops_on_absent_cartridge() -> None:
    needed = [plan_entry("AAA001", "AAA001L8"), plan_entry("AAA002", None)]
    studies = [{"orthanc_id": "s1", "volume_serial": "AAA001", "status": "would restore"},
               {"orthanc_id": "s2", "volume_serial": "AAA002", "status": "would restore"}]
    state = tape_filters.tape_restore_start(needed, studies, [{"device": "/dev/sg0", "drive": 0}], ["BBB001L8"], "/mnt")

    assert "AAA001L8 (volume serial AAA001)" in state["stop"]
    assert "volume serial AAA002 (no barcode in the catalog" in state["stop"]
    assert tape_filters.tape_verify_rounds(state) == []
