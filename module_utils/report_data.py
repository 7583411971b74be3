# -*- coding: utf-8 -*-
# Copyright: contributors to this project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Collect the figures of the archive reports from the catalog and from each Orthanc server.

The result is plain JSON-ready data (see REPORT_FORMAT); report_render turns it into HTML and CSV.
Reports name studies by Orthanc ID and StudyDate only, never by patient.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

from ansible.module_utils.archive_catalog import COPY_STATES, Catalog
from ansible.module_utils.orthanc_client import OrthancClient, OrthancError

REPORT_FORMAT = "orthanc-archive-report/1"

SERVER_OPTIONS: dict[str, dict[str, Any]] = {
    "name": {"type": "str", "required": True},
    "url": {"type": "str"},
    "username": {"type": "str"},
    "password": {"type": "str", "no_log": True},
    "validate_certs": {"type": "bool", "default": True},
    "ca_path": {"type": "path"},
    "timeout": {"type": "float", "default": 60.0},
    "storage_directory": {"type": "path"},
}

REPORT_ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "dest": {"type": "path", "required": True},
    "servers": {"type": "list", "elements": "dict", "default": [], "options": SERVER_OPTIONS},
    "volume_serials": {"type": "list", "elements": "str", "default": []},
    "title": {"type": "str", "default": "Orthanc tape archive"},
    "formats": {"type": "list", "elements": "str", "default": ["html", "csv", "json"],
                "choices": ["html", "csv", "json"]},
}


def year_of(study_date: str | None) -> str:
    """Return the year of a DICOM date, or 'undated' for a missing or malformed one."""
    if study_date and len(study_date) >= 4 and study_date[:4].isdigit():
        return study_date[:4]
    return "undated"


def day_of(timestamp: str | None) -> str:
    return (timestamp or "")[:10] or "unknown"


def orthanc_figures(server: dict[str, Any]) -> dict[str, Any]:
    """Read /system, /statistics and every study's StudyDate from one Orthanc; return figures or an error."""
    figures: dict[str, Any] = {"reachable": False, "error": None, "years": {}}
    if not server.get("url"):
        figures["error"] = "no url given: only catalog figures are shown"
        return figures
    client = None
    try:
        client = OrthancClient(server["url"], server.get("username"), server.get("password"),
                               server.get("validate_certs", True), server.get("ca_path"),
                               server.get("timeout", 60.0), retries=1)
        features = client.features()
        statistics = client.statistics()
        years: dict[str, int] = {}
        # NOTE: Orthanc 1.10.1 has no count by StudyDate, so every study is listed once; on a server
        # with millions of studies this takes minutes.
        for study in client.list_studies():
            year = year_of((study.get("MainDicomTags") or {}).get("StudyDate"))
            years[year] = years.get(year, 0) + 1
    except OrthancError as exc:
        figures["error"] = str(exc)
        return figures
    finally:
        if client is not None:
            client.close()

    figures.update(
        reachable=True,
        version=features.version_text,
        storage_area_plugin=features.storage_area_plugin,
        disk_bytes=int(statistics.get("TotalDiskSize", 0)),
        uncompressed_bytes=int(statistics.get("TotalUncompressedSize", 0)),
        studies=int(statistics.get("CountStudies", 0)),
        instances=int(statistics.get("CountInstances", 0)),
        patients=int(statistics.get("CountPatients", 0)),
        years=years,
    )
    if server.get("storage_directory"):
        try:
            stats = os.statvfs(server["storage_directory"])
            figures["filesystem_bytes"] = stats.f_blocks * stats.f_frsize
            figures["filesystem_free_bytes"] = stats.f_bavail * stats.f_frsize
        except OSError as exc:
            figures["filesystem_error"] = f"cannot read {server['storage_directory']}: {exc.strerror}"
    return figures


def catalog_figures(catalog: Catalog, server: str) -> dict[str, Any]:
    """Return a server's copies by state, archive and deletion figures by year and by day, and pending copies."""
    copies = catalog.find_copies({"server": server}, states=COPY_STATES)
    states = {state: 0 for state in COPY_STATES}
    archived_years: dict[str, set[str]] = {}
    runs: dict[str, dict[str, Any]] = {}
    pending = []
    bytes_by_content: dict[tuple[str, str], int] = {}

    for row in copies:
        states[row["state"]] += 1
        if row["state"] not in ("written", "verified"):
            continue
        archived_years.setdefault(year_of(row["study_date"]), set()).add(row["orthanc_study_id"])
        bytes_by_content[(row["orthanc_study_id"], row["content_key"])] = int(row["study_bytes"] or 0)
        run = runs.setdefault(day_of(row["written_at"]), _empty_run())
        run["copies_written"] += 1
        run["bytes_archived"] += int(row["container_bytes"] or 0)
        if row["state"] == "written":
            pending.append({"orthanc_id": row["orthanc_study_id"], "volume_serial": row["volume_serial"],
                            "path": row["path"], "written_at": row["written_at"],
                            "bytes": int(row["container_bytes"] or 0)})

    # NOTE: one query per archived study, because the catalog offers deletions only per study.
    reclaimed_years: dict[str, int] = {}
    study_dates = {row["orthanc_study_id"]: row["study_date"] for row in copies}
    for study_id in sorted(study_dates):
        deletions = [row for row in catalog.deletions_of_study(server, study_id) if row["instances_deleted"]]
        if deletions:
            year = year_of(study_dates[study_id])
            reclaimed_years[year] = reclaimed_years.get(year, 0) + 1
        for row in deletions:
            run = runs.setdefault(day_of(row["deleted_at"]), _empty_run())
            run["studies_deleted"] += 1
            run["bytes_freed"] += bytes_by_content.get((study_id, row["content_key"]), 0)

    return {
        "copies": states,
        "archived_years": {year: len(ids) for year, ids in archived_years.items()},
        "reclaimed_years": reclaimed_years,
        "runs": [dict(run, date=date) for date, run in sorted(runs.items())],
        "pending": sorted(pending, key=lambda item: (item["written_at"] or "", item["orthanc_id"])),
        "volume_serials": sorted({row["volume_serial"] for row in copies if row["state"] in ("written", "verified")}),
    }


def _empty_run() -> dict[str, Any]:
    return {"copies_written": 0, "bytes_archived": 0, "studies_deleted": 0, "bytes_freed": 0}


def cartridge_figures(catalog: Catalog, serials: list[str] | None = None) -> list[dict[str, Any]]:
    """Return each volume's capacity, free space, bytes used by good copies, and copies by state."""
    cartridges = []
    for volume in catalog.volumes():
        if serials is not None and volume["serial"] not in serials:
            continue
        copies = catalog.copies_on_volume(volume["serial"])
        states = {state: sum(1 for row in copies if row["state"] == state) for state in COPY_STATES}
        used = sum(int(row["container_bytes"] or 0) for row in copies if row["state"] in ("written", "verified"))
        capacity = volume.get("capacity_bytes")
        cartridges.append({
            "serial": volume["serial"],
            "barcode": volume.get("barcode"),
            "kind": volume.get("kind"),
            "capacity_bytes": capacity,
            "available_bytes": volume.get("available_bytes"),
            "used_bytes": used,
            "used_percent": round(100.0 * used / capacity, 1) if capacity else None,
            "studies": len({(row["server"], row["orthanc_study_id"]) for row in copies
                            if row["state"] in ("written", "verified")}),
            "copies": states,
            "updated_at": volume.get("updated_at"),
        })
    return cartridges


def merge_years(orthanc: dict[str, int], archived: dict[str, int], reclaimed: dict[str, int]) -> list[dict[str, Any]]:
    years = sorted(set(orthanc) | set(archived) | set(reclaimed), key=lambda year: (year == "undated", year))
    return [{"year": year, "in_orthanc": orthanc.get(year, 0), "archived": archived.get(year, 0),
             "reclaimed": reclaimed.get(year, 0)} for year in years]


def server_report(catalog: Catalog, server: dict[str, Any]) -> dict[str, Any]:
    """Return one server's section: Orthanc figures, catalog figures and studies per year."""
    live = orthanc_figures(server)
    archive = catalog_figures(catalog, server["name"])
    return {
        "name": server["name"],
        "orthanc": {key: value for key, value in live.items() if key != "years"},
        "copies": archive["copies"],
        "studies_per_year": merge_years(live["years"], archive["archived_years"], archive["reclaimed_years"]),
        "runs": archive["runs"],
        "pending": archive["pending"],
        "volume_serials": archive["volume_serials"],
        "bytes_archived": sum(run["bytes_archived"] for run in archive["runs"]),
        "bytes_freed": sum(run["bytes_freed"] for run in archive["runs"]),
    }


def fleet_report(catalog: Catalog, servers: list[dict[str, Any]], title: str) -> dict[str, Any]:
    """Return the fleet report: every server's section, all cartridges, and totals."""
    sections = [server_report(catalog, server) for server in servers]
    years: dict[str, dict[str, Any]] = {}
    runs: dict[str, dict[str, Any]] = {}
    for section in sections:
        for row in section["studies_per_year"]:
            total = years.setdefault(row["year"], {"year": row["year"], "in_orthanc": 0, "archived": 0, "reclaimed": 0})
            for key in ("in_orthanc", "archived", "reclaimed"):
                total[key] += row[key]
        for run in section["runs"]:
            total = runs.setdefault(run["date"], dict(_empty_run(), date=run["date"]))
            for key in _empty_run():
                total[key] += run[key]
    return {
        "format": REPORT_FORMAT,
        "scope": "fleet",
        "title": title,
        "generated_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "servers": sections,
        "studies_per_year": sorted(years.values(), key=lambda row: (row["year"] == "undated", row["year"])),
        "runs": [runs[date] for date in sorted(runs)],
        "pending": [dict(item, server=section["name"]) for section in sections for item in section["pending"]],
        "cartridges": cartridge_figures(catalog),
        "totals": {
            "disk_bytes": sum(section["orthanc"].get("disk_bytes", 0) for section in sections),
            "bytes_archived": sum(section["bytes_archived"] for section in sections),
            "bytes_freed": sum(section["bytes_freed"] for section in sections),
            "pending": sum(len(section["pending"]) for section in sections),
            "unreachable": [section["name"] for section in sections if not section["orthanc"]["reachable"]],
        },
    }


def single_server_report(fleet: dict[str, Any], section: dict[str, Any]) -> dict[str, Any]:
    """Return the report of one server, cut from the fleet report."""
    serials = set(section["volume_serials"])
    return {
        "format": REPORT_FORMAT,
        "scope": "server",
        "title": f"{fleet['title']}: {section['name']}",
        "generated_at": fleet["generated_at"],
        "servers": [section],
        "studies_per_year": section["studies_per_year"],
        "runs": section["runs"],
        "pending": [dict(item, server=section["name"]) for item in section["pending"]],
        "cartridges": [item for item in fleet["cartridges"] if item["serial"] in serials],
        "totals": {
            "disk_bytes": section["orthanc"].get("disk_bytes", 0),
            "bytes_archived": section["bytes_archived"],
            "bytes_freed": section["bytes_freed"],
            "pending": len(section["pending"]),
            "unreachable": [] if section["orthanc"]["reachable"] else [section["name"]],
        },
    }


def volume_report(catalog: Catalog, serial: str, title: str, generated_at: str) -> dict[str, Any]:
    """Return the contents of one volume as the catalog lists them."""
    cartridges = cartridge_figures(catalog, [serial])
    copies = catalog.copies_on_volume(serial)
    return {
        "format": REPORT_FORMAT,
        "scope": "volume",
        "title": f"{title}: volume {serial}",
        "generated_at": generated_at,
        "cartridges": cartridges,
        "contents": [{"server": row["server"], "orthanc_id": row["orthanc_study_id"], "study_date": row["study_date"],
                      "instances": row["instance_count"], "bytes": int(row["container_bytes"] or 0),
                      "state": row["state"], "path": row["path"], "written_at": row["written_at"],
                      "verified_at": row["verified_at"]} for row in copies],
    }
