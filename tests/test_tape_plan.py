"""Unit tests of the tape run's bookkeeping filters (roles/orthanc_archive/filter_plugins/orthanc_archive_tape.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
_SPEC = importlib.util.spec_from_file_location(
    "orthanc_archive_tape", REPO / "roles/orthanc_archive/filter_plugins/orthanc_archive_tape.py")
tape = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(tape)

DRIVES = [{"device": "/dev/sg0", "drive": 0}, {"device": "/dev/sg1", "drive": 1}]


def export_result(job: dict[str, Any], statuses: list[str], archived_bytes: int = 100) -> dict[str, Any]:
    """Build an async_status loop result as Ansible registers it for one drive's export."""
    results = [{"orthanc_id": study, "status": status, "reason": "no space left on volume X writing a.tar"
                if status == "volume_full" else ""} for study, status in zip(job["studies"], statuses)]
    archived = statuses.count("archived")
    return {"item": {"ansible_job_id": "j1", "item": job}, "finished": 1, "results": results,
            "archived_count": archived, "archived_bytes": archived_bytes * archived, "skipped_count": 0,
            "volume_full": "volume_full" in statuses, "volume": {"serial": job["barcode"][:6], "available_bytes": 5}}


def test_start_deals_round_robin() -> None:
    state = tape.tape_start(["a", "b", "c"], DRIVES, ["T1", "T2", "T3"], True, "/mnt/archive")
    assert [drive["studies"] for drive in state["drives"]] == [["a", "c"], ["b"]]
    assert [drive["pool"] for drive in state["drives"]] == [["T1", "T3"], ["T2"]]
    assert state["drives"][1]["mount_point"] == "/mnt/archive/drive1"


def test_full_cartridge_carries_studies() -> None:
    state = tape.tape_begin_pass(tape.tape_start(["a", "b", "c"], DRIVES[:1], ["T1L8", "T2L8"], True, "/m"))
    job = state["jobs"][0]
    state = tape.tape_note(state, {"results": [export_result(job, ["archived", "volume_full", "not_attempted"])]},
                           "export")
    state = tape.tape_end_pass(state)
    drive = state["drives"][0]
    assert drive["studies"] == ["b", "c"]
    assert drive["position"] == 1
    assert drive["written"] == [{"barcode": "T1L8", "volume_serial": "T1L8"}]
    assert state["cartridges"][0]["partial_files"] == 1
    assert state["stop"] is None

    state = tape.tape_begin_pass(state)
    assert state["jobs"][0]["barcode"] == "T2L8"
    assert state["jobs"][0]["studies"] == ["b", "c"]


def test_pool_used_up_stops() -> None:
    state = tape.tape_start(["a"], DRIVES[:1], ["T1L8"], True, "/m")
    state["drives"][0]["position"] = 1
    state = tape.tape_begin_pass(state)
    assert state["jobs"] == []
    assert "needs another scratch cartridge" in state["stop"]
    assert "T1L8" in state["stop"]
    assert state["volume_full"]


def test_cartridge_without_room_not_loaded() -> None:
    studies = [{"orthanc_id": "a", "uncompressed_bytes": 500}, {"orthanc_id": "b", "uncompressed_bytes": 10}]
    free = {"T1L8": 499, "T2L8": 500}
    state = tape.tape_begin_pass(tape.tape_start(["a", "b"], DRIVES[:1], ["T1L8", "T2L8", "T3L8"], True, "/m",
                                                 studies=studies, free_bytes=free))
    assert [job["barcode"] for job in state["jobs"]] == ["T2L8"]
    assert state["jobs"][0]["studies"] == ["a", "b"]
    assert len(state["skipped"]) == 1
    assert "cartridge T1L8 was not loaded" in state["skipped"][0]
    assert "499 bytes free" in state["skipped"][0]
    assert "500 bytes" in state["skipped"][0]


def test_unknown_free_space_loads() -> None:
    studies = [{"orthanc_id": "a", "uncompressed_bytes": 500}]
    state = tape.tape_begin_pass(tape.tape_start(["a"], DRIVES[:1], ["T1L8"], True, "/m", studies=studies,
                                                 free_bytes={"OTHERL8": 1}))
    assert [job["barcode"] for job in state["jobs"]] == ["T1L8"]
    assert state["skipped"] == []


def test_no_cartridge_with_room_stops() -> None:
    studies = [{"orthanc_id": "a", "uncompressed_bytes": 500}]
    state = tape.tape_begin_pass(tape.tape_start(["a"], DRIVES[:1], ["T1L8"], True, "/m", studies=studies,
                                                 free_bytes={"T1L8": 100}))
    assert state["jobs"] == []
    assert "needs another scratch cartridge" in state["stop"]
    assert "cartridge T1L8 was not loaded" in state["skipped"][0]


def test_no_changer_asks_for_cartridge() -> None:
    state = tape.tape_start(["a"], DRIVES[:1], [], False, "/m")
    assert tape.tape_begin_pass(state)["jobs"][0]["barcode"] is None
    state["drives"][0]["position"] = 1
    stopped = tape.tape_begin_pass(state)
    assert "no tape changer" in stopped["stop"]
    assert "insert a blank scratch cartridge" in stopped["stop"]


def test_write_protected_moves_on() -> None:
    state = tape.tape_begin_pass(tape.tape_start(["a"], DRIVES[:1], ["T1L8", "T2L8"], True, "/m"))
    job = state["jobs"][0]
    failed = {"item": job, "failed": True, "read_only": True, "msg": "cartridge T1L8 is write-protected"}
    state = tape.tape_end_pass(tape.tape_note(state, {"results": [failed]}, "mount"))
    assert state["stop"] is None
    assert state["drives"][0]["position"] == 1
    assert state["drives"][0]["studies"] == ["a"]
    assert "T1L8 is write-protected" in state["skipped"][0]


def test_mount_failure_stops() -> None:
    state = tape.tape_begin_pass(tape.tape_start(["a"], DRIVES[:1], ["T1L8"], True, "/m"))
    failed = {"item": state["jobs"][0], "failed": True, "msg": "wrong cartridge in /dev/sg0"}
    state = tape.tape_end_pass(tape.tape_note(state, {"results": [failed]}, "mount"))
    assert "wrong cartridge" in state["stop"]
    assert "T1L8" in state["stop"]


def test_blank_mount_marks_job() -> None:
    state = tape.tape_begin_pass(tape.tape_start(["a"], DRIVES[:1], ["T1L8"], True, "/m"))
    blank = {"item": state["jobs"][0], "failed": False, "messages": ["11009E"], "msg": "no LTFS volume"}
    state = tape.tape_note(state, {"results": [blank]}, "mount", True)
    assert state["jobs"][0]["blank"]
    assert state["jobs"][0]["error"] is None


def test_study_too_large_for_empty_cartridge() -> None:
    state = tape.tape_begin_pass(tape.tape_start(["big", "b"], DRIVES[:1], ["T1L8", "T2L8"], True, "/m"))
    state["jobs"][0]["formatted"] = True
    job = state["jobs"][0]
    state = tape.tape_note(state, {"results": [export_result(job, ["volume_full", "not_attempted"])]}, "export")
    state = tape.tape_end_pass(state)
    assert state["drives"][0]["studies"] == ["b"]
    assert "study big did not fit on the empty cartridge T1L8" in state["failures"][0]
