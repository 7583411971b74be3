# -*- coding: utf-8 -*-
# Copyright: contributors to this project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters that turn the per-server result facts of an archive run into its summary.

Input of archive_summary_report: a mapping of server name to {"archive": orthanc_archive_result
or None, "reclaim": orthanc_reclaim_result or None}, as the archive_summary role collects it from
hostvars. A server without an archive result never reported back (for example it was unreachable
or the play stopped first) and counts as failed.
"""

from __future__ import annotations

from typing import Any

# Counters summed into the run's totals, in the order the JSON report lists them.
COUNTERS = (
    "selected", "selected_bytes", "archived", "archived_bytes", "already_archived",
    "would_archive", "would_archive_bytes", "verified", "verified_bytes",
    "deleted", "bytes_freed", "would_delete", "bytes_to_free", "changed_during_export",
)

ARCHIVE_FIELDS = (
    "selected", "selected_bytes", "archived", "archived_bytes", "already_archived", "would_archive",
    "would_archive_bytes", "verified", "verified_bytes", "changed_during_export",
)
RECLAIM_FIELDS = ("deleted", "bytes_freed", "would_delete", "bytes_to_free")


def _as_int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def server_entry(name: str, archive: dict[str, Any] | None, reclaim: dict[str, Any] | None) -> dict[str, Any]:
    """Build the summary entry of one server from its archive and reclaim result facts."""
    entry: dict[str, Any] = {"server": name, "status": "ok"}
    entry.update({field: 0 for field in COUNTERS})
    failures: list[str] = []

    if not archive:
        entry.update(endpoint=None, reclaim="not run", volume_serial=None, volume_full=False, skipped_by_policy={},
                     cartridges=[], cartridges_skipped=[])
        entry["status"] = "failed"
        entry["failures"] = ["no result: the server was unreachable or the play stopped before it reported"]
        return entry

    entry["server"] = archive.get("server") or name
    entry["endpoint"] = archive.get("endpoint")
    entry["orthanc_version"] = archive.get("orthanc_version")
    entry["volume_serial"] = archive.get("volume_serial")
    entry["volume_full"] = bool(archive.get("volume_full"))
    entry["skipped_by_policy"] = dict(archive.get("skipped_by_policy") or {})
    entry["cartridges"] = list(archive.get("cartridges") or [])
    entry["cartridges_skipped"] = list(archive.get("cartridges_skipped") or [])
    for field in ARCHIVE_FIELDS:
        entry[field] = _as_int(archive.get(field))
    failures.extend(str(item) for item in archive.get("failures") or [])
    if archive.get("status") not in ("ok", "failed"):
        failures.append("the archive stopped before it finished: the tape host became unreachable or the play "
                        "was aborted")

    if archive.get("stopped_at"):
        entry["reclaim"] = "skipped after the failed archive step"
    elif not reclaim or not reclaim.get("enabled"):
        entry["reclaim"] = "off"
    else:
        entry["reclaim"] = reclaim.get("status", "ok")
        for field in RECLAIM_FIELDS:
            entry[field] = _as_int(reclaim.get(field))
        entry["left_in_orthanc"] = _as_int(reclaim.get("left_in_orthanc"))
        failures.extend(str(item) for item in reclaim.get("failures") or [])
        if reclaim.get("status") not in ("ok", "failed"):
            failures.append("the reclaim stopped before it finished: the tape host became unreachable or the play "
                            "was aborted")

    entry["failures"] = failures
    if failures or archive.get("status") == "failed":
        entry["status"] = "failed"
    return entry


def archive_summary_report(servers: dict[str, Any], check_mode: bool = False,
                           generated_at: str | None = None) -> dict[str, Any]:
    """Build the JSON-ready summary of a run: one entry per server, totals and the failed servers."""
    entries = []
    for name in sorted(servers):
        results = servers[name] or {}
        entries.append(server_entry(name, results.get("archive"), results.get("reclaim")))

    totals = {field: sum(entry[field] for entry in entries) for field in COUNTERS}
    failed = [entry["server"] for entry in entries if entry["status"] != "ok"]
    return {
        "generated_at": generated_at,
        "check_mode": bool(check_mode),
        "servers": entries,
        "totals": totals,
        "failed_servers": failed,
        "ok": not failed,
    }


def human_bytes(value: Any) -> str:
    """Format a byte count with decimal units (kB = 1000 bytes), as disk and tape vendors do."""
    amount = float(_as_int(value))
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if amount < 1000 or unit == "TB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1000
    raise AssertionError("unreachable")


def archive_summary_text(report: dict[str, Any], report_path: str | None = None) -> str:
    """Render the summary as a fixed-width table followed by the failures, for the run's output."""
    check_mode = report.get("check_mode")
    if check_mode:
        headers = ("server", "status", "selected", "would archive", "already", "would delete", "bytes to archive",
                   "bytes to free")
        fields = ("selected", "would_archive", "already_archived", "would_delete", "would_archive_bytes",
                  "bytes_to_free")
    else:
        headers = ("server", "status", "selected", "archived", "verified", "deleted", "bytes archived",
                   "bytes freed")
        fields = ("selected", "archived", "verified", "deleted", "archived_bytes", "bytes_freed")

    def row(entry: dict[str, Any], label: str, status: str) -> list[str]:
        cells = [label, status]
        for field in fields:
            value = entry[field]
            cells.append(human_bytes(value) if "bytes" in field else str(value))
        return cells

    rows = [row(entry, entry["server"], entry["status"]) for entry in report["servers"]]
    rows.append(row(report["totals"], "total", "ok" if report.get("ok") else "FAILED"))
    widths = [max(len(headers[index]), *(len(cells[index]) for cells in rows)) for index in range(len(headers))]

    def line(cells: list[str] | tuple[str, ...]) -> str:
        parts = [cells[0].ljust(widths[0]), cells[1].ljust(widths[1])]
        parts += [cell.rjust(width) for cell, width in zip(cells[2:], widths[2:])]
        return "  ".join(parts).rstrip()

    mode = "check mode, nothing written or deleted" if check_mode else "archive run"
    lines = [f"Orthanc archive summary ({mode}) at {report.get('generated_at')}", line(headers)]
    lines += [line(cells) for cells in rows[:-1]]
    lines.append(line(rows[-1]))

    for entry in report["servers"]:
        notes = []
        if entry.get("reclaim") not in ("ok", "off"):
            notes.append(f"reclaim {entry.get('reclaim')}")
        if entry.get("cartridges"):
            notes.append("cartridges written: " + ", ".join(
                f"{cartridge['barcode'] or cartridge['volume_serial']} (drive {cartridge['drive']}, "
                f"{cartridge['archived']} studies{', full' if cartridge['full'] else ''})"
                for cartridge in entry["cartridges"]))
        notes.extend(entry.get("cartridges_skipped") or [])
        # A tape run names the cartridge it needs in its failure instead.
        if entry.get("volume_full") and not entry.get("cartridges"):
            notes.append(f"volume {entry.get('volume_serial')} is full: load an empty volume and run again")
        if entry.get("changed_during_export"):
            notes.append(f"{entry['changed_during_export']} studies changed during the export and are archived "
                         "again next run")
        for note in notes:
            lines.append(f"{entry['server']}: {note}")
        for failure in entry.get("failures", []):
            lines.append(f"{entry['server']}: FAILED {failure}")

    if any(entry.get("reclaim") == "off" for entry in report["servers"]):
        lines.append("Reclaim was off, so nothing was deleted from Orthanc; pass -e archive_reclaim=true to delete "
                     "the verified studies.")
    if report_path:
        lines.append(f"Report: {report_path}")
    return "\n".join(lines)


class FilterModule:
    """Summary filters of the archive_summary role."""

    def filters(self) -> dict[str, Any]:
        return {
            "archive_summary_report": archive_summary_report,
            "archive_summary_text": archive_summary_text,
        }
