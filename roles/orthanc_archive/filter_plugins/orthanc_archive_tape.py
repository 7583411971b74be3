# -*- coding: utf-8 -*-
# Copyright: contributors to this project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters that plan the cartridge passes of a tape run and fold the task results back into one state.

tasks/volume_ltfs.yml keeps the whole tape run in one fact, orthanc_archive_tape, and changes it
only through these filters. So the decisions live here in plain Python instead of in Jinja: which
cartridge goes into which drive next, which studies move on to the next cartridge, and when the
run must stop and which cartridge it needs.

The state is a dict:
  drives   one entry per configured drive: index, device (what ltfs opens), element (mtx drive
           number), mount_point, pool (its share of the scratch barcodes), position (next pool
           entry), studies (Orthanc IDs still to write) and written (cartridges to verify). In a
           restore, written lists the cartridges to restore from.
  jobs     the cartridges of the current pass, one per busy drive, with the outcome of each step
  cartridges, skipped, counters, failures, stop, volume_full, and restores in a restore
  study_bytes and free_bytes
           each study's uncompressed size and each barcode's free space as the catalog recorded
           it, which decide whether a cartridge is worth loading
"""

from __future__ import annotations

import copy
from typing import Any

# Export statuses whose study goes on to the next cartridge of the same drive.
CARRIED_STATUSES = ("volume_full", "not_attempted")
# LTFS message ID that ltfs prints for a medium without an LTFS volume; ltfs_volume returns it in messages.
NOT_FORMATTED_MESSAGE = "11009E"


def _mount_point(base: str, drive: dict[str, Any]) -> str:
    return drive.get("mount_point") or f"{base.rstrip('/')}/drive{drive.get('drive', 0)}"


def tape_start(study_ids: list[str], drives: list[dict[str, Any]], barcodes: list[str], has_changer: bool,
               mount_base: str, studies: list[dict[str, Any]] | None = None,
               free_bytes: dict[str, int] | None = None) -> dict[str, Any]:
    """Build the first state: the studies and the scratch barcodes dealt out round-robin over the drives.

    With studies (orthanc_study_info's entries) and free_bytes (its cartridge_free_bytes), a pass
    leaves out a cartridge that has less room than the drive's next study.
    """
    count = len(drives)
    state_drives = []
    for index, drive in enumerate(drives):
        state_drives.append({
            "index": index,
            "device": drive["device"],
            "element": int(drive.get("drive", index)),
            "mount_point": _mount_point(mount_base, drive),
            "pool": list(barcodes[index::count]) if has_changer else list(barcodes[index:index + 1]),
            "position": 0,
            "studies": list(study_ids[index::count]),
            "written": [],
        })
    return {
        "has_changer": bool(has_changer),
        "drives": state_drives,
        "jobs": [],
        "pass": 0,
        "cartridges": [],
        "skipped": [],
        "archived": 0,
        "archived_bytes": 0,
        "already_archived": 0,
        "changed_during_export": 0,
        "verified": 0,
        "verified_bytes": 0,
        "failures": [],
        "stop": None,
        "volume_full": False,
        "study_bytes": {entry["orthanc_id"]: int(entry["uncompressed_bytes"]) for entry in studies or []
                        if entry.get("uncompressed_bytes") is not None},
        "free_bytes": {str(barcode): int(free) for barcode, free in (free_bytes or {}).items()},
    }


def _skip_cartridges_without_room(state: dict[str, Any], drive: dict[str, Any]) -> None:
    """Move the drive past pool cartridges that the catalog shows have less room than its next study.

    A study's container is larger than its uncompressed size, so such a cartridge cannot take it,
    and loading it would only cost a load, a mount and an unload.
    """
    size = state["study_bytes"].get(drive["studies"][0])
    while size is not None and drive["position"] < len(drive["pool"]):
        barcode = drive["pool"][drive["position"]]
        free = state["free_bytes"].get(barcode)
        if free is None or free >= size:
            return
        state["skipped"].append(f"cartridge {barcode} was not loaded: the catalog records {free} bytes free on it, "
                                f"less than the next study of drive {drive['element']} ({size} bytes). If it was "
                                "erased since, run once with orthanc_archive_tape_skip_without_room=false")
        drive["position"] += 1


def _needed_message(drive: dict[str, Any], has_changer: bool) -> str:
    remaining = len(drive["studies"])
    pool = ", ".join(drive["pool"]) or "none"
    if has_changer:
        return (f"drive {drive['element']} ({drive['device']}) needs another scratch cartridge: its share of "
                f"orthanc_archive_scratch_barcodes ({pool}) is used up and {remaining} studies were not written. "
                "Put a blank cartridge into the library, add its barcode to orthanc_archive_scratch_barcodes "
                "and run again")
    if drive["position"] < 1:
        return (f"drive {drive['device']} has no cartridge to write {remaining} studies to: insert a scratch "
                "cartridge and run again")
    return (f"the cartridge in drive {drive['device']} is full and this host has no tape changer, so "
            f"{remaining} studies were not written: unload it, insert a blank scratch cartridge and run again")


def _new_job(drive: dict[str, Any], barcode: str | None, studies: list[str], serial: str | None = None) -> dict[str, Any]:
    """Return the job of one drive for one cartridge in a round, before anything was done with it."""
    return {
        "index": drive["index"],
        "device": drive["device"],
        "element": drive["element"],
        "mount_point": drive["mount_point"],
        "barcode": barcode,
        "studies": list(studies),
        "error": None,
        "write_protected": False,
        "loaded": False,
        "mounted": False,
        "formatted": False,
        "blank": False,
        "serial": serial,
    }


def tape_begin_pass(state: dict[str, Any]) -> dict[str, Any]:
    """Start a write pass: one job per drive that has studies left and a cartridge to put them on."""
    state = copy.deepcopy(state)
    state["jobs"] = []
    if state["stop"]:
        return state

    has_changer = state["has_changer"]
    for drive in state["drives"]:
        if not drive["studies"]:
            continue
        if has_changer:
            _skip_cartridges_without_room(state, drive)
        if has_changer and drive["position"] >= len(drive["pool"]):
            state["stop"] = _needed_message(drive, True)
            state["volume_full"] = True
            continue
        if not has_changer and drive["position"] >= 1:
            state["stop"] = _needed_message(drive, False)
            state["volume_full"] = True
            continue

        barcode = drive["pool"][drive["position"]] if drive["position"] < len(drive["pool"]) else None
        state["jobs"].append(_new_job(drive, barcode, drive["studies"]))

    if state["stop"]:
        # One drive without a cartridge stops the run; the other drives write nothing more.
        state["jobs"] = []
    return state


def tape_note(state: dict[str, Any], registered: dict[str, Any] | None, step: str,
              format_blank: bool = False) -> dict[str, Any]:
    """Record the outcome of one looped task (load, format, mount, export, verify, unmount, unload) per job.

    With format_blank, a mount that fails because the cartridge has no LTFS volume marks the job
    blank instead of failed, so that the round formats the cartridge and mounts it again.
    """
    state = copy.deepcopy(state)
    outcomes = {}
    for result in (registered or {}).get("results", []):
        item = result.get("item") or {}
        # async_status loops carry the started job's result, whose own item is the job.
        if "ansible_job_id" in item and isinstance(item.get("item"), dict):
            item = item["item"]
        if result.get("skipped") or "index" not in item:
            continue
        outcomes[item["index"]] = result

    for job in state["jobs"]:
        result = outcomes.get(job["index"])
        if result is None:
            continue
        if (step == "mount" and format_blank and "volume" not in result
                and NOT_FORMATTED_MESSAGE in (result.get("messages") or [])):
            # tape_mount.yml lets this failure through as ok, so that the round formats the cartridge.
            job["blank"] = True
            continue
        if step == "restore":
            # A failed restore still lists each study's status and reason, which the summary needs.
            job["restore"] = {key: value for key, value in result.items()
                              if key not in ("invocation", "item", "ansible_job_id", "results_file", "started")}
        if result.get("failed"):
            message = str(result.get("msg") or "failed without a message")
            if job["error"] is None:
                job["error"] = f"{step} of cartridge {job['barcode'] or '(in the drive)'} in drive " \
                               f"{job['element']}: {message}"
            if step in ("format", "mount") and ("write-protected" in message or result.get("read_only")):
                job["write_protected"] = True
            if step == "unmount":
                job["unmount_failed"] = True
            continue

        if step == "load":
            job["loaded"] = True
        elif step == "format":
            job["formatted"] = bool(result.get("formatted"))
            job["blank"] = False
        elif step == "mount":
            job["mounted"] = True
            volume = result.get("volume") or {}
            job["serial"] = volume.get("serial")
            job["available_bytes_before"] = volume.get("available_bytes")
        elif step == "unmount":
            job["mounted"] = False
        elif step in ("export", "verify"):
            job[step] = {key: value for key, value in result.items()
                         if key not in ("invocation", "item", "ansible_job_id", "results_file", "started")}
    return state


def _fold_export(state: dict[str, Any], drive: dict[str, Any], job: dict[str, Any]) -> None:
    export = job["export"]
    results = export.get("results") or []
    carried = [entry["orthanc_id"] for entry in results if entry.get("status") in CARRIED_STATUSES]
    full = bool(export.get("volume_full"))
    archived = int(export.get("archived_count") or 0)

    if full and archived == 0 and job["formatted"] and carried:
        # The study did not fit on a cartridge formatted moments ago, so no other cartridge takes it either.
        state["failures"].append(f"export: study {carried[0]} did not fit on the empty cartridge {job['barcode']}: "
                                 "it is larger than a cartridge holds; exclude it from the policy or use larger media")
        carried = carried[1:]

    state["archived"] += archived
    state["archived_bytes"] += int(export.get("archived_bytes") or 0)
    state["already_archived"] += int(export.get("skipped_count") or 0)
    state["changed_during_export"] += sum(1 for entry in results if entry.get("status") == "changed")
    for entry in results:
        if entry.get("status") == "failed":
            state["failures"].append(f"export: study {entry['orthanc_id']}: {entry.get('reason', 'no reason given')}")

    volume = export.get("volume") or {}
    serial = volume.get("serial") or job["serial"]
    partial_files = sum(1 for entry in results if entry.get("status") == "volume_full" and "no space left" in
               str(entry.get("reason", "")))
    state["cartridges"].append({
        "barcode": job["barcode"],
        "volume_serial": serial,
        "drive": job["element"],
        "archived": archived,
        "archived_bytes": int(export.get("archived_bytes") or 0),
        "full": full,
        "partial_files": partial_files,
        "available_bytes": volume.get("available_bytes"),
    })
    if archived > 0:
        drive["written"].append({"barcode": job["barcode"], "volume_serial": serial})
    drive["studies"] = carried
    drive["position"] += 1


def tape_end_pass(state: dict[str, Any]) -> dict[str, Any]:
    """Close a write pass: carry the studies that did not fit to the next cartridge, or stop the run."""
    state = copy.deepcopy(state)
    drives = {drive["index"]: drive for drive in state["drives"]}
    for job in state["jobs"]:
        drive = drives[job["index"]]
        if job.get("export") is not None:
            _fold_export(state, drive, job)
        elif job["write_protected"] and not job.get("unmount_failed"):
            state["skipped"].append(f"cartridge {job['barcode']} is write-protected and was left out; slide its "
                                    "write-protect tab to writable or remove it from orthanc_archive_scratch_barcodes")
            drive["position"] += 1
        if job["error"] and not job["write_protected"] and not state["stop"]:
            state["stop"] = job["error"]
        elif job.get("unmount_failed") and not state["stop"]:
            state["stop"] = job["error"]
    state["pass"] += 1
    state["jobs"] = []
    return state


def tape_begin_verify(state: dict[str, Any], round_number: int) -> dict[str, Any]:
    """Start a verification or restore round: each drive reads its round_number-th cartridge of written."""
    state = copy.deepcopy(state)
    state["jobs"] = []
    for drive in state["drives"]:
        if round_number >= len(drive["written"]):
            continue
        cartridge = drive["written"][round_number]
        state["jobs"].append(_new_job(drive, cartridge["barcode"], cartridge.get("studies") or [],
                                      cartridge["volume_serial"]))
    return state


def tape_end_verify(state: dict[str, Any]) -> dict[str, Any]:
    """Close a verification or restore round: add up the verified copies, the restores and the failures."""
    state = copy.deepcopy(state)
    for job in state["jobs"]:
        if job.get("restore") is not None:
            _fold_restore(state, job)
        verify = job.get("verify")
        if verify is not None:
            state["verified"] += int(verify.get("verified_count") or 0)
            state["verified_bytes"] += int(verify.get("verified_bytes") or 0)
            for failure in verify.get("failures") or []:
                problems = failure.get("problems") or ["mismatch"]
                state["failures"].append(f"verify: study {failure.get('orthanc_id')} on cartridge {job['barcode']} "
                                         f"at {failure.get('path')}: {problems[0]}")
        if job["error"]:
            state["failures"].append(job["error"])
    state["jobs"] = []
    return state


def _serial_of_barcode(barcode: str) -> str:
    # mkltfs and ltfs_volume make the volume serial of the barcode's first six characters.
    return barcode.strip().upper()[:6]


def tape_restore_start(needed: list[dict[str, Any]], studies: list[dict[str, Any]], drives: list[dict[str, Any]],
                       library_barcodes: list[str], mount_base: str) -> dict[str, Any]:
    """Build the state of a restore: the cartridges to load, dealt out round-robin over the drives.

    needed and studies are the cartridges_needed and studies of an orthanc_study_restore plan (check
    mode). A cartridge is loaded only when one of its studies is missing from the target. A volume
    serial without a barcode in the catalog takes the library's barcode that starts with it. The
    state's stop names every cartridge that is not in the library or has no barcode, so that the
    restore stops before any cartridge is loaded.
    """
    state = tape_start([], drives, [], True, mount_base)
    state["restores"] = []
    cartridges = []
    missing = []
    for entry in needed:
        serial = entry["volume_serial"]
        study_ids = [study["orthanc_id"] for study in studies
                     if study.get("volume_serial") == serial and study.get("status") == "would restore"]
        if not study_ids:
            continue
        barcode = entry.get("barcode")
        if not barcode:
            matches = sorted(code for code in library_barcodes if _serial_of_barcode(code) == serial.upper())
            barcode = matches[0] if len(matches) == 1 else None
        if barcode is None:
            missing.append(f"volume serial {serial} (no barcode in the catalog, and the library holds no "
                           "single cartridge whose barcode starts with it)")
        elif barcode not in library_barcodes:
            missing.append(f"{barcode} (volume serial {serial})")
        cartridges.append({"barcode": barcode, "volume_serial": serial, "studies": study_ids})

    if missing:
        state["stop"] = (f"the restore needs cartridges that are not in the library: {', '.join(missing)}. "
                         "Put them into free slots and run again; no cartridge was loaded and nothing was restored")
        return state
    count = len(state["drives"])
    for index, cartridge in enumerate(cartridges):
        state["drives"][index % count]["written"].append(cartridge)
    return state


def _fold_restore(state: dict[str, Any], job: dict[str, Any]) -> None:
    restore = job["restore"]
    entries = restore.get("studies") or []
    state["restores"].append({
        "barcode": job["barcode"],
        "volume_serial": job["serial"],
        "drive": job["element"],
        "restored": int(restore.get("restored") or 0),
        "present": int(restore.get("present") or 0),
        "failed": int(restore.get("failed") or 0),
        "instances_uploaded": int(restore.get("instances_uploaded") or 0),
        "studies": entries,
    })
    for entry in entries:
        if entry.get("status") == "failed":
            state["failures"].append(f"restore: study {entry.get('orthanc_id')} from cartridge {job['barcode']}: "
                                     f"{entry.get('reason', 'no reason given')}")


def tape_verify_rounds(state: dict[str, Any]) -> list[int]:
    """Return the round numbers the verification needs: the most cartridges one drive wrote."""
    return list(range(max((len(drive["written"]) for drive in state["drives"]), default=0)))


def tape_result(result: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """Merge the tape run's counters, cartridges and failures into the role's orthanc_archive_result."""
    merged = dict(result)
    for key in ("archived", "archived_bytes", "already_archived", "changed_during_export", "verified",
                "verified_bytes"):
        merged[key] = state[key]
    serials = [entry["volume_serial"] for entry in state["cartridges"] if entry["archived"]]
    merged["volume_serial"] = ", ".join(serials) if serials else None
    merged["volume_full"] = state["volume_full"]
    merged["cartridges"] = state["cartridges"]
    merged["cartridges_skipped"] = state["skipped"]
    merged["failures"] = list(result.get("failures") or []) + state["failures"]
    return merged


class FilterModule:
    """Cartridge planning filters of the orthanc_archive role."""

    def filters(self) -> dict[str, Any]:
        return {
            "orthanc_archive_tape_start": tape_start,
            "orthanc_archive_tape_begin_pass": tape_begin_pass,
            "orthanc_archive_tape_note": tape_note,
            "orthanc_archive_tape_end_pass": tape_end_pass,
            "orthanc_archive_tape_begin_verify": tape_begin_verify,
            "orthanc_archive_tape_end_verify": tape_end_verify,
            "orthanc_archive_tape_verify_rounds": tape_verify_rounds,
            "orthanc_archive_tape_restore_start": tape_restore_start,
            "orthanc_archive_tape_result": tape_result,
        }
