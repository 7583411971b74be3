# -*- coding: utf-8 -*-
# Copyright: contributors to this project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Parse the output of lsscsi, mt (mt-st) and mtx into drives, changers, slots and barcodes.

Every function here takes a tool's output as text. The caller runs the tools
(AnsibleModule.run_command in modules) and finds them by name on PATH.
"""

from __future__ import annotations

import re
from typing import Any


class TapeToolError(Exception):
    """A tape tool failed or printed something this module cannot read."""


# lsscsi 0.3x: "[0:0:1:0]    tape    IBM      ULTRIUM-HH8      N9M1  /dev/st0   /dev/sg0"
# The vendor is 8 characters and the model 16, both padded with spaces, so they are cut by position
# after the type column (lsscsi.c, one_sdev_entry).
LSSCSI_LINE = re.compile(r"^\[(?P<hctl>[\d:]+)\]\s+(?P<type>\S+)\s+(?P<rest>.*)$")


def parse_lsscsi(text: str) -> list[dict[str, Any]]:
    """Return one dict per `lsscsi -g` line: hctl, type, vendor, model, revision, device, sg."""
    devices = []
    for line in text.splitlines():
        match = LSSCSI_LINE.match(line.rstrip())
        if not match:
            continue

        rest = match.group("rest")
        vendor = rest[0:8].strip()
        model = rest[9:25].strip()
        tail = rest[26:].split()
        revision = tail[0] if tail and not tail[0].startswith("/") and tail[0] != "-" else ""
        nodes = [value for value in tail if value.startswith("/dev/") or value == "-"]
        device = nodes[0] if nodes and nodes[0] != "-" else None
        sg = nodes[1] if len(nodes) > 1 and nodes[1] != "-" else None
        devices.append({
            "hctl": match.group("hctl"),
            "type": match.group("type"),
            "vendor": vendor,
            "model": model,
            "revision": revision,
            "device": device,
            "sg": sg,
        })
    return devices


def drives_and_changers(devices: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split parsed lsscsi rows into tape drives (with their nst node) and medium changers."""
    drives = []
    changers = []
    for device in devices:
        if device["type"] == "tape":
            node = device["device"] or ""
            nst = re.sub(r"^/dev/st", "/dev/nst", node) if node.startswith("/dev/st") else None
            drives.append({**device, "nst": nst})
        elif device["type"] == "mediumx":
            changers.append(dict(device))
    return drives, changers


# mt-st prints the general status bits by name on the line after "General status bits on (...)".
def parse_mt_status(text: str) -> dict[str, Any]:
    """Return online, write_protected, door_open, bot and the density from `mt -f DEV status`."""
    bits: set[str] = set()
    lines = text.splitlines()
    for position, line in enumerate(lines):
        if line.startswith("General status bits on") and position + 1 < len(lines):
            bits = set(lines[position + 1].split())

    density = None
    match = re.search(r"Density code (0x[0-9a-fA-F]+) \(([^)]*)\)", text)
    if match:
        density = {"code": match.group(1), "name": match.group(2)}

    return {
        "online": "ONLINE" in bits,
        "write_protected": "WR_PROT" in bits,
        "door_open": "DR_OPEN" in bits,
        "bot": "BOT" in bits,
        "density": density,
        "status_bits": sorted(bits),
    }


MTX_DRIVE = re.compile(
    r"^Data Transfer Element (?P<index>\d+):(?P<state>Empty|Full)"
    r"(?: \((?:Storage Element (?P<source>\d+)|Unknown Storage Element) Loaded\))?"
    r"(?::VolumeTag\s*=\s*(?P<tag>.*))?$"
)
MTX_SLOT = re.compile(
    r"^Storage Element (?P<number>\d+)(?P<ie> IMPORT/EXPORT)?:(?P<state>Empty|Full)\s*"
    r"(?::VolumeTag\s*=\s*(?P<tag>.*))?$"
)


def _barcode(tag: str | None) -> str | None:
    value = (tag or "").strip()
    return value or None


def parse_mtx_status(text: str) -> dict[str, Any]:
    """Return drives and slots from `mtx -f DEV status`.

    mtx counts drives from 0 and storage elements (slots) from 1. A drive's source_slot is the
    slot it was loaded from, the cartridge's home slot; None when the library does not know it.
    """
    drives = []
    slots = []
    for raw in text.splitlines():
        line = raw.strip()
        match = MTX_DRIVE.match(line)
        if match:
            full = match.group("state") == "Full"
            drives.append({
                "index": int(match.group("index")),
                "loaded": full,
                "barcode": _barcode(match.group("tag")) if full else None,
                "source_slot": int(match.group("source")) if match.group("source") else None,
            })
            continue

        match = MTX_SLOT.match(line)
        if match:
            full = match.group("state") == "Full"
            slots.append({
                "number": int(match.group("number")),
                "import_export": bool(match.group("ie")),
                "full": full,
                "barcode": _barcode(match.group("tag")) if full else None,
            })

    if not drives and not slots:
        raise TapeToolError("mtx status printed no Data Transfer Element or Storage Element lines:\n" + text[:500])
    return {"drives": drives, "slots": slots}


def locate_barcode(inventory: dict[str, Any], barcode: str) -> dict[str, Any] | None:
    """Return {'drive': index} or {'slot': number} for the element that contains the barcode."""
    for drive in inventory["drives"]:
        if drive["barcode"] == barcode:
            return {"drive": drive["index"]}
    for slot in inventory["slots"]:
        if slot["barcode"] == barcode:
            return {"slot": slot["number"]}
    return None


def all_barcodes(inventory: dict[str, Any]) -> list[str]:
    found = [drive["barcode"] for drive in inventory["drives"] if drive["barcode"]]
    found += [slot["barcode"] for slot in inventory["slots"] if slot["barcode"]]
    return sorted(found)
