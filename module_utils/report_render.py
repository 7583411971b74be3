# -*- coding: utf-8 -*-
# Copyright: contributors to this project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Render archive reports as one standalone HTML page, CSV tables and JSON.

The HTML page carries its CSS and its charts (inline SVG) itself and has no script, no font and no
image to fetch, so it opens offline, from a mail attachment or a file share. Every value from the
catalog or Orthanc goes through html.escape.
"""

from __future__ import annotations

import csv
import html
import io
import json
from typing import Any

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #1b1f24; max-width: 72em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccd; }
table { border-collapse: collapse; margin: 0.5em 0; } caption { text-align: left; font-weight: bold; }
th, td { border: 1px solid #ccd; padding: 0.25em 0.6em; text-align: right; } td { white-space: nowrap; }
th:first-child, td:first-child { text-align: left; } thead th { background: #eef1f6; }
.note { color: #555; } .warn { color: #a40000; font-weight: bold; }
.legend span { display: inline-block; width: 0.9em; height: 0.9em; margin: 0 0.3em 0 1em; vertical-align: middle; }
svg text { font-size: 11px; fill: #1b1f24; }
"""

SERIES = (("in_orthanc", "In Orthanc", "#3b6fb6"), ("archived", "Archived", "#5a9e4b"),
          ("reclaimed", "Deleted from Orthanc", "#c98a2b"))


def human_bytes(value: Any) -> str:
    """Format a byte count with SI units (kB, MB, GB, TB), as disk and tape vendors state capacity."""
    if value is None:
        return "unknown"
    number = float(value)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(number) < 1000 or unit == "TB":
            return f"{number:.0f} {unit}" if unit == "B" else f"{number:.1f} {unit}"
        number /= 1000
    return f"{number:.1f} PB"


def escape(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def table(caption: str, headers: list[str], rows: list[list[Any]], empty: str) -> str:
    if not rows:
        return f'<p class="note">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(item)}</th>" for item in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><caption>{escape(caption)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def year_chart(rows: list[dict[str, Any]], chart_id: str) -> str:
    """Return an SVG grouped bar chart of studies per year, with each bar's count written above it."""
    if not rows:
        return '<p class="note">No studies in Orthanc or in the catalog.</p>'
    group_width = 3 * 16 + 14
    width = 50 + group_width * len(rows)
    height = 240
    plot_height = 170
    top = max(max(row[key] for key, _, _ in SERIES) for row in rows) or 1
    parts = [f'<svg id="{escape(chart_id)}" class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="Studies per year">',
             f'<line x1="40" y1="{20 + plot_height}" x2="{width - 5}" y2="{20 + plot_height}" stroke="#889"/>',
             f'<text x="2" y="24">{top}</text>', f'<text x="2" y="{20 + plot_height}">0</text>']
    for index, row in enumerate(rows):
        left = 45 + index * group_width
        for offset, (key, label, color) in enumerate(SERIES):
            value = row[key]
            bar = round(plot_height * value / top)
            x = left + offset * 16
            y = 20 + plot_height - bar
            parts.append(f'<rect x="{x}" y="{y}" width="14" height="{bar}" fill="{color}" '
                         f'data-year="{escape(row["year"])}" data-series="{key}" data-value="{value}">'
                         f'<title>{escape(row["year"])}: {value} {escape(label.lower())}</title></rect>')
            if value:
                parts.append(f'<text x="{x + 7}" y="{y - 3}" text-anchor="middle">{value}</text>')
        parts.append(f'<text x="{left + 24}" y="{40 + plot_height}" text-anchor="middle">{escape(row["year"])}</text>')
    parts.append("</svg>")
    legend = "".join(f'<span style="background:{color}"></span>{escape(label)}' for _, label, color in SERIES)
    return f'<div class="legend">{legend}</div>' + "".join(parts)


def cartridge_chart(cartridges: list[dict[str, Any]]) -> str:
    """Return an SVG bar per cartridge: used share of its capacity, labelled with used and free bytes."""
    measured = [item for item in cartridges if item.get("capacity_bytes")]
    if not measured:
        return ""
    row_height = 22
    height = 10 + row_height * len(measured)
    parts = [f'<svg id="cartridge-chart" class="chart" xmlns="http://www.w3.org/2000/svg" width="720" '
             f'height="{height}" viewBox="0 0 720 {height}" role="img" aria-label="Cartridge use">']
    for index, item in enumerate(measured):
        y = 5 + index * row_height
        share = min(1.0, item["used_bytes"] / item["capacity_bytes"])
        label = item.get("barcode") or item["serial"]
        parts.append(f'<text x="0" y="{y + 14}">{escape(label)}</text>')
        parts.append(f'<rect x="110" y="{y}" width="400" height="16" fill="#e3e7ee"/>')
        parts.append(f'<rect x="110" y="{y}" width="{round(400 * share)}" height="16" fill="#3b6fb6">'
                     f'<title>{escape(label)}: {item["used_percent"]}% used</title></rect>')
        parts.append(f'<text x="520" y="{y + 14}">{escape(human_bytes(item["used_bytes"]))} used, '
                     f'{escape(human_bytes(item.get("available_bytes")))} free</text>')
    parts.append("</svg>")
    return "".join(parts)


def server_rows(report: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for section in report.get("servers", []):
        live = section["orthanc"]
        if live["reachable"]:
            disk = human_bytes(live["disk_bytes"])
            filesystem = ""
            if "filesystem_bytes" in live:
                filesystem = (f"{human_bytes(live['filesystem_free_bytes'])} free of "
                              f"{human_bytes(live['filesystem_bytes'])}")
            rows.append([section["name"], live["version"], live["studies"], live["instances"], disk, filesystem,
                         human_bytes(section["bytes_archived"]), human_bytes(section["bytes_freed"]),
                         len(section["pending"])])
        else:
            rows.append([section["name"], "unreachable: " + (live["error"] or ""), "", "", "", "",
                         human_bytes(section["bytes_archived"]), human_bytes(section["bytes_freed"]),
                         len(section["pending"])])
    return rows


def render_html(report: dict[str, Any]) -> str:
    """Return the report as one standalone HTML page."""
    title = escape(report["title"])
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{title}</title><style>{CSS}</style></head><body>",
             f"<h1>{title}</h1>", f'<p class="note">Generated {escape(report["generated_at"])} (UTC).</p>']

    if report["scope"] == "volume":
        parts.append(render_volume_body(report))
        parts.append("</body></html>")
        return "\n".join(parts)

    totals = report["totals"]
    if totals["unreachable"]:
        parts.append(f'<p class="warn">Not reachable: {escape(", ".join(totals["unreachable"]))}. '
                     "Their Orthanc figures are missing; catalog figures are shown.</p>")
    parts.append("<h2>Disk usage</h2>")
    parts.append(table("Servers", ["Server", "Orthanc", "Studies", "Instances", "Orthanc disk use", "Filesystem",
                                   "Archived", "Freed", "Waiting for verification"],
                       server_rows(report), "No servers in this report."))

    parts.append("<h2>Studies per year</h2>")
    parts.append('<p class="note">By StudyDate: studies in Orthanc now, studies with a good copy on tape, and '
                 "archived studies deleted from Orthanc.</p>")
    parts.append(year_chart(report["studies_per_year"], "studies-per-year"))
    parts.append(table("Studies per year", ["Year", "In Orthanc", "Archived", "Deleted from Orthanc"],
                       [[row["year"], row["in_orthanc"], row["archived"], row["reclaimed"]]
                        for row in report["studies_per_year"]], "No studies."))

    parts.append("<h2>Archive runs</h2>")
    parts.append('<p class="note">One row per UTC day: the catalog records when each copy was written and each '
                 "study deleted, not which run did it.</p>")
    parts.append(table("Archived and freed per day", ["Day", "Copies written", "Bytes archived", "Studies deleted",
                                                      "Bytes freed"],
                       [[run["date"], run["copies_written"], human_bytes(run["bytes_archived"]),
                         run["studies_deleted"], human_bytes(run["bytes_freed"])] for run in report["runs"]],
                       "Nothing archived yet."))

    parts.append("<h2>Cartridges</h2>")
    parts.append(cartridge_chart(report["cartridges"]))
    parts.append(table("Cartridge use", ["Volume serial", "Barcode", "Kind", "Studies", "Used", "Capacity", "Free",
                                         "Used %", "Verified", "Written", "Failed"],
                       [cartridge_row(item) for item in report["cartridges"]], "No volumes in the catalog."))

    parts.append("<h2>Waiting for verification</h2>")
    parts.append('<p class="note">Copies written but not yet read back after a remount. Their studies stay in '
                 "Orthanc until archive_volume_verify marks them verified.</p>")
    parts.append(table(f"{len(report['pending'])} copies waiting",
                       ["Orthanc study ID", "Server", "Volume serial", "Written", "Size"],
                       [[item["orthanc_id"], item["server"], item["volume_serial"], item["written_at"],
                         human_bytes(item["bytes"])] for item in report["pending"]],
                       "No copy is waiting for verification."))
    parts.append("</body></html>")
    return "\n".join(parts)


def cartridge_row(item: dict[str, Any]) -> list[Any]:
    copies = item["copies"]
    return [item["serial"], item.get("barcode") or "", item.get("kind") or "", item["studies"],
            human_bytes(item["used_bytes"]), human_bytes(item.get("capacity_bytes")),
            human_bytes(item.get("available_bytes")),
            "" if item["used_percent"] is None else item["used_percent"],
            copies["verified"], copies["written"], copies["failed"]]


def render_volume_body(report: dict[str, Any]) -> str:
    parts = [table("Volume", ["Volume serial", "Barcode", "Kind", "Studies", "Used", "Capacity", "Free", "Used %",
                              "Verified", "Written", "Failed"],
                   [cartridge_row(item) for item in report["cartridges"]], "This volume is not in the catalog.")]
    parts.append(table(f"{len(report['contents'])} containers", ["Orthanc study ID", "Server", "StudyDate",
                                                                   "Instances", "Size", "State", "Path"],
                       [[row["orthanc_id"], row["server"], row["study_date"], row["instances"],
                         human_bytes(row["bytes"]), row["state"], row["path"]] for row in report["contents"]],
                       "The catalog lists no container on this volume."))
    return "\n".join(parts)


def render_csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return buffer.getvalue()


def csv_tables(report: dict[str, Any]) -> dict[str, str]:
    """Return the report's tables as CSV text keyed by a file name suffix."""
    if report["scope"] == "volume":
        return {"contents": render_csv(report["contents"], ["server", "orthanc_id", "study_date", "instances", "bytes",
                                                             "state", "path", "written_at", "verified_at"])}
    servers = []
    for section in report["servers"]:
        live = section["orthanc"]
        servers.append({"server": section["name"], "reachable": live["reachable"], "version": live.get("version"),
                        "studies": live.get("studies"), "instances": live.get("instances"),
                        "disk_bytes": live.get("disk_bytes"), "filesystem_bytes": live.get("filesystem_bytes"),
                        "filesystem_free_bytes": live.get("filesystem_free_bytes"),
                        "bytes_archived": section["bytes_archived"], "bytes_freed": section["bytes_freed"],
                        "pending": len(section["pending"])})
    cartridges = [dict(item, verified=item["copies"]["verified"], written=item["copies"]["written"],
                       failed=item["copies"]["failed"]) for item in report["cartridges"]]
    return {
        "servers": render_csv(servers, list(servers[0]) if servers else ["server"]),
        "studies-per-year": render_csv(report["studies_per_year"], ["year", "in_orthanc", "archived", "reclaimed"]),
        "runs": render_csv(report["runs"], ["date", "copies_written", "bytes_archived", "studies_deleted", "bytes_freed"]),
        "cartridges": render_csv(cartridges, ["serial", "barcode", "kind", "studies", "used_bytes", "capacity_bytes",
                                              "available_bytes", "used_percent", "verified", "written", "failed"]),
        "pending": render_csv(report["pending"], ["orthanc_id", "server", "volume_serial", "path", "written_at", "bytes"]),
    }


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=1, sort_keys=True) + "\n"
